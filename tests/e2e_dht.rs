//! The DHT end to end between kp-torrent processes on 127.0.0.1: a trackerless magnet link is
//! found through a DHT node that a seeder announced to, and the routing table is saved.

use std::path::Path;
use std::time::Duration;

use kp_torrent_core::dht::state::SavedState;
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

const DONE: Duration = Duration::from_secs(60);

/// The UDP port the process's DHT node said it runs on.
fn dht_port(p: &mut KpTorrent) -> u16 {
    p.wait_log(Duration::from_secs(10), "its DHT port", |log| {
        log.contains("DHT node on UDP port ")
    });
    let log = p.log();
    let line = log
        .lines()
        .find_map(|l| l.split("DHT node on UDP port ").nth(1))
        .expect("the DHT line");
    line.trim().parse().expect("a port")
}

fn state_dir(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// Hub: a DHT node (a kp-torrent seeding something else). Seeder: announces the torrent to the
/// hub. Leecher: a bare magnet link (no tracker, no peer) and the hub as its only contact.
#[test]
fn a_trackerless_magnet_is_found_through_the_dht_and_the_table_is_saved() {
    let dir = TempDir::new("e2e-dht");
    let other = Dataset::single(dir.path(), "other", 50_000, 16 * 1024, 3);
    let data = Dataset::single(dir.path(), "wanted", 700_000, 32 * 1024, 4);
    let hub_state = state_dir(dir.path(), "hub-state");
    let mut hub = KpTorrent::seed(
        "hub",
        &other.torrent.path,
        &other.source,
        // A contact that never answers: the hub only answers others.
        &["--dht-bootstrap", "127.0.0.1:9", "--state-dir", &hub_state],
        dir.path(),
    );
    let hub_dht = format!("127.0.0.1:{}", dht_port(&mut hub));

    let seeder_state = state_dir(dir.path(), "seeder-state");
    let mut seeder = KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--dht-bootstrap", &hub_dht, "--state-dir", &seeder_state],
        dir.path(),
    );
    dht_port(&mut seeder);

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
    let hub_addr: std::net::SocketAddr = hub_dht.parse().unwrap();
    assert!(state.nodes.contains(&hub_addr), "{state:?}");
    seeder.kill();
    hub.kill();
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
