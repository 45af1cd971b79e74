//! Many torrents in one process: one `kp-torrent seed` process seeds three torrents on one port,
//! one `kp-torrent download` process fetches all three from it; and, through the library, a
//! torrent added while another runs.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use kp_torrent::client::{self, Options, TorrentOptions};
use kp_torrent_core::metainfo::Metainfo;
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

const DONE: Duration = Duration::from_secs(40);

fn datasets(dir: &std::path::Path) -> Vec<Dataset> {
    let files = [
        ("a/one.bin".to_string(), 300_000),
        ("two.bin".to_string(), 70_000),
    ];
    vec![
        Dataset::single(dir, "first.bin", 2 * 1024 * 1024 + 77, 64 * 1024, 1),
        Dataset::multi(dir, "second", &files, 32 * 1024, 2),
        Dataset::single(dir, "third.bin", 900_001, 16 * 1024, 3),
    ]
}

#[test]
fn three_torrents_in_one_seeder_and_one_leecher_process() {
    let dir = TempDir::new("e2e-multi");
    let data = datasets(dir.path());
    let logs = dir.path();
    let torrents: Vec<String> = data
        .iter()
        .map(|d| d.torrent.path.to_str().unwrap().to_string())
        .collect();
    let source = data[0].source.to_str().unwrap().to_string();
    let mut seed_args = vec!["seed".to_string()];
    seed_args.extend(torrents.iter().cloned());
    seed_args.extend(["-s".to_string(), source]);
    let seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
    let seeder = KpTorrent::start("seeder", &seed_args, logs);

    let dest = dir.path().join("dest");
    let peer = seeder.addr();
    let mut args = vec!["download"];
    args.extend(torrents.iter().map(String::as_str));
    args.extend(["-d", dest.to_str().unwrap(), "--peer", &peer]);
    let mut leecher = KpTorrent::start("leecher", &args, logs);
    leecher.wait_success(DONE);
    let log = leecher.log();
    for d in &data {
        d.assert_same(&dest);
        assert!(
            log.contains(&format!("{}: done, ", d.spec.name)),
            "no summary for {}: {log}",
            d.spec.name
        );
    }
    // One process, one port: a single listening line names all three.
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
    assert!(!log.contains("panicked"));
}

#[test]
fn the_same_torrent_twice_is_refused_and_the_other_still_runs() {
    let dir = TempDir::new("e2e-multi-dup");
    let data = datasets(dir.path());
    let logs = dir.path();
    let seeder = KpTorrent::seed("seeder", &data[2].torrent.path, &data[2].source, &[], logs);
    let dest = dir.path().join("dest");
    let t = data[2].torrent.path.to_str().unwrap();
    let peer = seeder.addr();
    let args = [
        "download",
        t,
        t,
        "-d",
        dest.to_str().unwrap(),
        "--peer",
        &peer,
    ];
    let mut leecher = KpTorrent::start("leecher", &args, logs);
    let status = leecher.wait_exit(DONE);
    assert_eq!(status.code(), Some(1), "{}", leecher.log());
    let log = leecher.log();
    assert!(log.contains("already being run"), "{log}");
    data[2].assert_same(&dest);
}

#[test]
fn a_torrent_added_while_another_runs_completes_too() {
    let dir = TempDir::new("e2e-multi-add");
    let data = datasets(dir.path());
    let logs = dir.path();
    let mut seed_args = vec!["seed".to_string()];
    seed_args.extend(
        data[..2]
            .iter()
            .map(|d| d.torrent.path.to_str().unwrap().to_string()),
    );
    seed_args.extend(["-s".to_string(), data[0].source.to_str().unwrap().into()]);
    let seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
    let seeder = KpTorrent::start("seeder", &seed_args, logs);
    let peer: SocketAddr = seeder.addr().parse().unwrap();
    let dest = dir.path().join("dest");
    let load =
        |d: &Dataset| Metainfo::from_bytes(&std::fs::read(&d.torrent.path).unwrap()).unwrap();
    let torrent = |d: &Dataset| TorrentOptions {
        peers: vec![peer],
        ..TorrentOptions::download(load(d), dest.clone())
    };

    let (add, added) = mpsc::channel();
    let (listening, on_listen) = mpsc::channel();
    let opts = Options {
        add: Some(added),
        on_listen: Some(listening),
        handle_signals: false,
        quiet: true,
        timeout: Some(DONE),
        rng_seed: 77,
        ..Options::new(vec![torrent(&data[0])], "127.0.0.1:0".parse().unwrap())
    };
    let run = std::thread::spawn(move || client::run(opts));
    on_listen
        .recv_timeout(Duration::from_secs(20))
        .expect("the client listens");
    add.send(torrent(&data[1])).unwrap();
    drop(add);
    let outcomes = run.join().expect("no panic").expect("the loop ran");
    let mut names: Vec<&str> = outcomes.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["first.bin", "second"]);
    for o in &outcomes {
        let s = o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", o.name));
        assert!(s.complete, "{}: {s:?}", o.name);
    }
    data[0].assert_same(&dest);
    data[1].assert_same(&dest);
    drop(seeder);
}
