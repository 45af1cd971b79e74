//! The DHT end to end between kp-torrent processes on 127.0.0.1: a trackerless magnet link is
//! found through a DHT node that a seeder announced to, and the routing table is saved.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use kp_torrent_core::dht::state::SavedState;
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

const DONE: Duration = Duration::from_secs(60);

fn state_dir(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// The hub: a kp-torrent seeding a small torrent (content from `seed`) in `dir`, a DHT node
/// whose one contact never answers, so it only answers others. Returns it and its DHT address.
fn start_hub(dir: &Path, seed: u64) -> (KpTorrent, String) {
    let other = Dataset::single(dir, "other", 50_000, 16 * 1024, seed);
    let hub_state = state_dir(dir, "hub-state");
    let mut hub = KpTorrent::seed(
        "hub",
        &other.torrent.path,
        &other.source,
        &["--dht-bootstrap", "127.0.0.1:9", "--state-dir", &hub_state],
        dir,
    );
    let hub_dht = hub.dht_addr().to_string();
    (hub, hub_dht)
}

/// Hub: a DHT node (a kp-torrent seeding something else). Seeder: announces the torrent to the
/// hub. Leecher: a bare magnet link (no tracker, no peer) and the hub as its only contact.
#[test]
fn a_trackerless_magnet_is_found_through_the_dht_and_the_table_is_saved() {
    let dir = TempDir::new("e2e-dht");
    let data = Dataset::single(dir.path(), "wanted", 700_000, 32 * 1024, 4);
    let (mut hub, hub_dht) = start_hub(dir.path(), 3);

    let seeder_state = state_dir(dir.path(), "seeder-state");
    let mut seeder = KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--dht-bootstrap", &hub_dht, "--state-dir", &seeder_state],
        dir.path(),
    );
    seeder.dht_addr();

    let dest = dir.path().join("dest");
    let leecher_state = dir.path().join("leecher-state");
    let uri = format!("magnet:?xt=urn:btih:{}", data.torrent.info_hash.to_hex());
    let mut leecher = KpTorrent::download_magnet(
        "leecher",
        &uri,
        &dest,
        &[
            "--dht-bootstrap",
            &hub_dht,
            "--state-dir",
            leecher_state.to_str().unwrap(),
        ],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    assert!(
        leecher.log().contains("wanted: done, "),
        "{}",
        leecher.log()
    );

    // The leecher saved its routing table: it holds the hub (and maybe the seeder).
    let saved = std::fs::read(leecher_state.join("dht.dat")).expect("dht.dat written at exit");
    let state = SavedState::decode(&saved).expect("a valid state file");
    let hub_addr: SocketAddr = hub_dht.parse().unwrap();
    assert!(state.nodes.contains(&hub_addr), "{state:?}");
    seeder.kill();
    hub.kill();
}

/// A first run learns the hub through `--dht-bootstrap` and saves its table in `--state-dir`; a
/// second run with the same `--state-dir` and no `--dht-bootstrap` (so no public router either:
/// a saved table replaces them) finds the seeder of another trackerless magnet link through the
/// saved nodes alone, and keeps its node id.
#[test]
fn a_second_run_bootstraps_from_the_saved_table_alone() {
    let dir = TempDir::new("e2e-dht-restart");
    let first = Dataset::single(dir.path(), "first", 300_000, 32 * 1024, 7);
    let second = Dataset::single(dir.path(), "second", 400_000, 32 * 1024, 8);
    let (mut hub, hub_dht) = start_hub(dir.path(), 6);

    // Two seeders announce to the hub: one torrent for each run of the leecher.
    let mut seeders = Vec::new();
    for (name, data) in [("seeder-1", &first), ("seeder-2", &second)] {
        let state = state_dir(dir.path(), &format!("{name}-state"));
        let mut s = KpTorrent::seed(
            name,
            &data.torrent.path,
            &data.source,
            &["--dht-bootstrap", &hub_dht, "--state-dir", &state],
            dir.path(),
        );
        s.dht_addr();
        seeders.push(s);
    }

    let state = dir.path().join("leecher-state");
    let state_arg = state.to_str().unwrap();
    let magnet = |d: &Dataset| format!("magnet:?xt=urn:btih:{}", d.torrent.info_hash.to_hex());
    let dest1 = dir.path().join("dest1");
    let uri = magnet(&first);
    let mut run1 = KpTorrent::download_magnet(
        "run1",
        &uri,
        &dest1,
        &["--dht-bootstrap", &hub_dht, "--state-dir", state_arg],
        dir.path(),
    );
    run1.wait_success(DONE);
    first.assert_same(&dest1);
    let saved = SavedState::decode(&std::fs::read(state.join("dht.dat")).expect("dht.dat"))
        .expect("a valid state file");
    let hub_addr: SocketAddr = hub_dht.parse().unwrap();
    assert!(saved.nodes.contains(&hub_addr), "{saved:?}");

    let dest2 = dir.path().join("dest2");
    let uri = magnet(&second);
    let dest2_arg = dest2.to_str().unwrap();
    let mut run2 = KpTorrent::start_with_dht(
        "run2",
        &["download", &uri, "-d", dest2_arg, "--state-dir", state_arg],
        dir.path(),
    );
    run2.dht_addr();
    run2.wait_success(DONE);
    second.assert_same(&dest2);
    assert!(run2.log().contains("second: done, "), "{}", run2.log());
    let again = SavedState::decode(&std::fs::read(state.join("dht.dat")).expect("dht.dat"))
        .expect("a valid state file");
    assert_eq!(again.node_id, saved.node_id, "the node id is kept");
    for mut s in seeders {
        s.kill();
    }
    hub.kill();
}

/// Two runs at once with one `--state-dir` that holds a saved node id: the first owns the folder
/// (its lock) and takes the saved id; the second takes a fresh one and says so, since two nodes
/// with one id refuse each other. The seeder (the second) still reaches the hub (the first), and
/// a leecher finds it there.
#[test]
fn a_second_run_sharing_a_state_folder_at_once_takes_a_fresh_node_id() {
    let dir = TempDir::new("e2e-dht-shared-state");
    let shared = dir.path().join("shared-state");
    std::fs::create_dir_all(&shared).unwrap();
    let saved = SavedState {
        node_id: kp_torrent_core::dht::node_id::NodeId([0x42; 20]),
        nodes: Vec::new(),
    };
    std::fs::write(shared.join("dht.dat"), saved.encode()).unwrap();
    let shared_arg = shared.to_str().unwrap();
    let other = Dataset::single(dir.path(), "other", 50_000, 16 * 1024, 13);
    let data = Dataset::single(dir.path(), "shared", 300_000, 32 * 1024, 14);
    let mut hub = KpTorrent::seed(
        "hub",
        &other.torrent.path,
        &other.source,
        &["--dht-bootstrap", "127.0.0.1:9", "--state-dir", shared_arg],
        dir.path(),
    );
    let hub_dht = hub.dht_addr().to_string();
    let mut seeder = KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--dht-bootstrap", &hub_dht, "--state-dir", shared_arg],
        dir.path(),
    );
    seeder.wait_log(
        Duration::from_secs(10),
        "the shared-folder warning",
        |log| log.contains("is in use by another kp-torrent"),
    );
    assert!(!hub.log().contains("in use by another"), "{}", hub.log());

    let dest = dir.path().join("dest");
    let uri = format!("magnet:?xt=urn:btih:{}", data.torrent.info_hash.to_hex());
    let mut leecher = KpTorrent::download_magnet(
        "leecher",
        &uri,
        &dest,
        &["--dht-bootstrap", &hub_dht],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    seeder.kill();
    hub.signal("TERM");
    hub.wait_success(Duration::from_secs(10));
    // The owner saved its state, with the saved id; the seeder wrote nothing over it.
    let after = SavedState::decode(&std::fs::read(shared.join("dht.dat")).unwrap()).unwrap();
    assert_eq!(after.node_id, saved.node_id);
}

/// `--no-dht` runs no node: no UDP port is opened for it and nothing is saved.
#[test]
fn no_dht_opens_no_node_and_saves_nothing() {
    let dir = TempDir::new("e2e-no-dht");
    let data = Dataset::single(dir.path(), "solo", 40_000, 16 * 1024, 5);
    let state = state_dir(dir.path(), "state");
    let mut seeder = KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--state-dir", &state],
        dir.path(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!seeder.log().contains("DHT node"), "{}", seeder.log());
    seeder.kill();
    assert!(!Path::new(&state).join("dht.dat").exists());
}

/// The same over IPv6 (BEP 32): hub, seeder and leecher bound to ::1 only, so every DHT message
/// (`nodes6`, 18-byte `values`) and the peer connection go over IPv6. Skipped only where the
/// machine has no ::1.
#[test]
fn a_trackerless_magnet_is_found_through_the_dht_over_ipv6() {
    if let Err(e) = std::net::UdpSocket::bind("[::1]:0") {
        eprintln!("skipping: no IPv6 loopback (::1) here: {e}");
        return;
    }
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let dir = TempDir::new("e2e-dht6");
    let other = Dataset::single(dir.path(), "other6", 50_000, 16 * 1024, 11);
    let data = Dataset::single(dir.path(), "wanted6", 600_000, 32 * 1024, 12);
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let seed_args = |d: &Dataset, bootstrap: &str| {
        [
            "seed".to_owned(),
            path(&d.torrent.path),
            "-s".to_owned(),
            path(&d.source),
            "--dht-bootstrap".to_owned(),
            bootstrap.to_owned(),
        ]
    };
    let args = seed_args(&other, "[::1]:9");
    let mut hub = KpTorrent::start_on(v6, "hub6", &args.each_ref().map(String::as_str), dir.path());
    let hub_dht = hub.dht_addr();
    assert!(hub_dht.is_ipv6(), "{hub_dht}");
    let hub_arg = hub_dht.to_string();
    let args = seed_args(&data, &hub_arg);
    let mut seeder = KpTorrent::start_on(
        v6,
        "seeder6",
        &args.each_ref().map(String::as_str),
        dir.path(),
    );
    seeder.dht_addr();

    let dest = dir.path().join("dest");
    let state = dir.path().join("leecher-state");
    let uri = format!("magnet:?xt=urn:btih:{}", data.torrent.info_hash.to_hex());
    let (dest_arg, state_arg) = (path(&dest), path(&state));
    let mut leecher = KpTorrent::start_on(
        v6,
        "leecher6",
        &[
            "download",
            &uri,
            "-d",
            &dest_arg,
            "--dht-bootstrap",
            &hub_arg,
            "--state-dir",
            &state_arg,
        ],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    assert!(
        leecher.log().contains("wanted6: done, "),
        "{}",
        leecher.log()
    );
    // Its table is an IPv6 one, saved as `nodes6`, and holds the hub.
    let saved = std::fs::read(state.join("dht.dat")).expect("dht.dat written at exit");
    let saved = SavedState::decode(&saved).expect("a valid state file");
    assert!(saved.nodes.contains(&hub_dht), "{saved:?}");
    assert!(saved.nodes.iter().all(SocketAddr::is_ipv6), "{saved:?}");
    seeder.kill();
    hub.kill();
}
