//! Magnet links end to end between kp-torrent processes on 127.0.0.1: the metadata comes from a
//! peer (BEP 9) named by `x.pe` or `--peer`, the data follows over the same connections, the
//! fetched `.torrent` is saved so a later run needs no peer, and a magnet runs beside `.torrent`
//! files in one process.

use std::path::Path;
use std::time::Duration;

use kp_torrent_core::id::InfoHash;
use kp_torrent_core::metainfo::Metainfo;
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

const DONE: Duration = Duration::from_secs(40);

fn magnet(info_hash: &InfoHash, extra: &str) -> String {
    format!("magnet:?xt=urn:btih:{}{extra}", info_hash.to_hex())
}

fn saved_torrent(dest: &Path, info_hash: &InfoHash) -> Metainfo {
    let path = dest
        .join(".kp-torrent")
        .join(format!("{}.torrent", info_hash.to_hex()));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Metainfo::from_bytes(&bytes).expect("the saved torrent parses")
}

/// A multi-file torrent (so the fetched metadata must carry the file tree), from `x.pe` alone;
/// then the same magnet again with no peer at all finishes from the saved torrent and the data.
#[test]
fn a_magnet_downloads_from_an_x_pe_peer_and_runs_again_without_peers() {
    let dir = TempDir::new("e2e-magnet");
    let files = [
        ("docs/readme.txt".to_string(), 5_000),
        ("data/big.bin".to_string(), 1_500_000),
        ("empty.txt".to_string(), 0),
        ("tail.bin".to_string(), 77_777),
    ];
    let data = Dataset::multi(dir.path(), "bundle", &files, 32 * 1024, 11);
    let torrent = data.torrent.path.to_str().unwrap();
    let source = data.source.to_str().unwrap();
    let seeder = KpTorrent::start("seeder", &["seed", torrent, "-s", source], dir.path());

    let dest = dir.path().join("dest");
    let uri = magnet(
        &data.torrent.info_hash,
        &format!("&dn=bundle&x.pe={}", seeder.addr()),
    );
    let d = dest.to_str().unwrap();
    let mut leecher = KpTorrent::start("leecher", &["download", &uri, "-d", d], dir.path());
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    let log = leecher.log();
    assert!(log.contains("bundle: fetching metadata"), "{log}");
    assert!(log.contains("bundle: done, "), "{log}");
    let saved = saved_torrent(&dest, &data.torrent.info_hash);
    assert_eq!(saved.info_hash, data.torrent.info_hash);
    assert_eq!(saved.info.name, "bundle");
    assert_eq!(saved.info.files.len(), files.len());

    // Again, with the seeder gone and no peer named: the saved torrent and the data suffice.
    drop(seeder);
    let bare = magnet(&data.torrent.info_hash, "");
    let mut again = KpTorrent::start("again", &["download", &bare, "-d", d], dir.path());
    again.wait_success(DONE);
    let log = again.log();
    assert!(!log.contains("fetching metadata"), "{log}");
    assert!(log.contains("bundle: done, "), "{log}");
    data.assert_same(&dest);
}

/// Two `.torrent` files and a magnet link (its peer given with `--peer`) in one process, one port.
#[test]
fn a_magnet_and_two_torrents_in_one_process() {
    let dir = TempDir::new("e2e-magnet-multi");
    let sets = [
        Dataset::single(dir.path(), "first.bin", 700_001, 16 * 1024, 1),
        Dataset::single(dir.path(), "second.bin", 1_200_000, 64 * 1024, 2),
        Dataset::single(dir.path(), "third.bin", 300_000, 16 * 1024, 3),
    ];
    let torrents: Vec<&str> = sets
        .iter()
        .map(|s| s.torrent.path.to_str().unwrap())
        .collect();
    let mut seed_args = vec!["seed"];
    seed_args.extend(&torrents);
    seed_args.extend(["-s", sets[0].source.to_str().unwrap()]);
    let seeder = KpTorrent::start("seeder", &seed_args, dir.path());

    let dest = dir.path().join("dest");
    let uri = magnet(&sets[1].torrent.info_hash, "");
    let peer = seeder.addr();
    let args = [
        "download",
        torrents[0],
        &uri,
        torrents[2],
        "-d",
        dest.to_str().unwrap(),
        "--peer",
        &peer,
    ];
    let mut leecher = KpTorrent::start("leecher", &args, dir.path());
    leecher.wait_success(DONE);
    let log = leecher.log();
    for s in &sets {
        s.assert_same(&dest);
        assert!(log.contains(&format!("{}: done, ", s.spec.name)), "{log}");
    }
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
    assert_eq!(
        saved_torrent(&dest, &sets[1].torrent.info_hash).info.name,
        "second.bin"
    );
}

/// A magnet download recorded with `--record` replays without divergence: the trace covers the
/// metadata exchange, the check that follows and the download.
#[test]
fn a_recorded_magnet_download_replays() {
    let dir = TempDir::new("e2e-magnet-replay");
    let data = Dataset::single(dir.path(), "rec.bin", 900_000, 32 * 1024, 5);
    let torrent = data.torrent.path.to_str().unwrap();
    let source = data.source.to_str().unwrap();
    let seeder = KpTorrent::start("seeder", &["seed", torrent, "-s", source], dir.path());
    let dest = dir.path().join("dest");
    let trace = dir.path().join("magnet.trace");
    let uri = magnet(&data.torrent.info_hash, "");
    let peer = seeder.addr();
    let args = [
        "download",
        &uri,
        "-d",
        dest.to_str().unwrap(),
        "--peer",
        &peer,
        "--record",
        trace.to_str().unwrap(),
    ];
    let mut leecher = KpTorrent::start("leecher", &args, dir.path());
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    let out = std::process::Command::new(kp_torrent_tests::kp_torrent_bin())
        .arg("replay")
        .arg(&trace)
        .output()
        .expect("run replay");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no divergence"), "{text}");
}

/// `--files` with a magnet link applies once the metadata tells the files: a valid selection
/// downloads only those files; an index the torrent lacks ends the run with one line.
#[test]
fn files_of_a_magnet_are_selected_once_its_metadata_arrived() {
    let dir = TempDir::new("e2e-magnet-files");
    let files = [
        ("one.bin".to_string(), 200_000),
        ("two.bin".to_string(), 300_000),
    ];
    let data = Dataset::multi(dir.path(), "pair", &files, 16 * 1024, 21);
    let torrent = data.torrent.path.to_str().unwrap();
    let source = data.source.to_str().unwrap();
    let seeder = KpTorrent::start("seeder", &["seed", torrent, "-s", source], dir.path());
    let uri = magnet(&data.torrent.info_hash, "");
    let peer = seeder.addr();

    let bad = dir.path().join("bad");
    let args = [
        "download",
        &uri,
        "-d",
        bad.to_str().unwrap(),
        "--peer",
        &peer,
        "--files",
        "5",
    ];
    let mut run = KpTorrent::start("bad", &args, dir.path());
    let status = run.wait_exit(DONE);
    let log = run.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("--files: no file 5: the torrent has 2"),
        "{log}"
    );

    let dest = dir.path().join("dest");
    let args = [
        "download",
        &uri,
        "-d",
        dest.to_str().unwrap(),
        "--peer",
        &peer,
        "--files",
        "1",
    ];
    let mut run = KpTorrent::start("good", &args, dir.path());
    run.wait_success(DONE);
    let second = data.file_path(&dest, &["two.bin".to_string()]);
    assert_eq!(std::fs::read(&second).unwrap(), data.files[1].1);
    // The other file holds at most the pieces it shares with the selected one.
    let (pieces, _) = data.verified_on_disk(&dest);
    assert!(
        pieces < data.spec.piece_hashes.len(),
        "everything was fetched"
    );
}
