//! The DHT (BEP 5) between kp-torrent and libtorrent-rasterbar on 127.0.0.1: trackerless magnet
//! links found only through DHT nodes of the other implementation.
//!
//! - We find a libtorrent seeder: it announced its torrent only to a libtorrent DHT node, which
//!   is our only contact (`--dht-bootstrap`); `kp-torrent download 'magnet:?xt=urn:btih:IH'`
//!   gets the peer from that node, the metadata and the data from the seeder.
//! - libtorrent finds our seeder: `kp-torrent seed` announces to a libtorrent DHT node; a
//!   libtorrent magnet leecher with no tracker and that node as its only contact finds us.
//! - Our node is the DHT: a libtorrent seeder announces to a kp-torrent node, and a libtorrent
//!   magnet leecher whose only contact is that node finds the seeder.
//!
//! The libtorrent side runs with the loopback DHT settings of `LibtorrentOptions::dht`; LSD,
//! UPnP, NAT-PMP and PEX are off everywhere, and no torrent names a tracker, so the DHT is the
//! only way to a peer. Data is compared byte for byte. Run `cargo build -p kp-torrent` first when
//! running this file alone.

use std::net::SocketAddr;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, Encryption, KpTorrent, Libtorrent, LibtorrentOptions};

/// Bound on a DHT node learning its first contact.
const JOIN: Duration = Duration::from_secs(20);
/// Bound on an announce reaching the node it is meant for (libtorrent announces again every 5 s
/// here; kp-torrent retries a lookup that found nobody after 5 s, then 10 s).
const ANNOUNCE: Duration = Duration::from_secs(40);
/// Bound on finding the peer, fetching the metadata and a few MiB on loopback.
const DONE: Duration = Duration::from_secs(60);
/// kp-torrent's own `--timeout` for a download, below [`DONE`].
const KP_TIMEOUT: &str = "50";

/// 2 MiB and a partial last piece, 32 KiB pieces.
fn dataset(dir: &std::path::Path, name: &str, seed: u64) -> Dataset {
    Dataset::single(dir, name, 2 * 1024 * 1024 + 4_321, 32 * 1024, seed)
}

/// A libtorrent peer with its DHT on and `contacts` as its only DHT nodes, plaintext (as
/// kp-torrent speaks), serving and fetching magnet metadata.
fn dht_options(contacts: &[SocketAddr]) -> LibtorrentOptions {
    LibtorrentOptions {
        dht: true,
        dht_contacts: contacts.to_vec(),
        encryption: Encryption::Plaintext,
        extensions: vec!["ut_metadata".into()],
        ..LibtorrentOptions::default()
    }
}

/// A bare libtorrent DHT node, the test's bootstrap node; `None` (skip) without libtorrent.
fn libtorrent_node() -> Option<(Libtorrent, SocketAddr)> {
    let mut node = Libtorrent::dht_node(&LibtorrentOptions::default())?;
    let addr = node.dht_addr();
    Some((node, addr))
}

/// Waits until libtorrent `node` logs an incoming announce of `info_hash` from port `port`.
fn wait_announce(node: &mut Libtorrent, info_hash: &str, port: u16) {
    // libtorrent's dht_announce_alert: "incoming dht announce: 127.0.0.1:PORT (HEX)".
    let want = format!("127.0.0.1:{port} ({info_hash})");
    node.wait_log(ANNOUNCE, &format!("DHT announce {want}"), |log| {
        log.lines()
            .any(|l| l.contains("alert dht_announce") && l.contains(&want))
    });
}

/// Panics unless the libtorrent leecher's DHT lookups returned peers. (It had no other source of
/// peers; its `peers` lines may not show the seeder at all, since 2 MiB on loopback can come and
/// the seed-to-seed connection close between two of its 100 ms reports.)
fn assert_found_through_dht(leecher: &Libtorrent) {
    let log = leecher.process().log();
    // libtorrent's dht_reply_alert: "... received DHT peers: N".
    let found = log
        .lines()
        .filter_map(|l| l.split("received DHT peers: ").nth(1))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .any(|n| n > 0);
    assert!(
        found,
        "no DHT reply with peers in the leecher's log:\n{log}"
    );
}

#[test]
fn kp_torrent_finds_a_libtorrent_seeder_through_a_libtorrent_dht_node() {
    let Some((mut node, node_addr)) = libtorrent_node() else {
        return;
    };
    let dir = TempDir::new("interop-dht-kp-leech");
    let data = dataset(dir.path(), "from-libtorrent.bin", 91);
    let hex = data.torrent.info_hash.to_hex();
    let mut seeder = Libtorrent::seed(&data.torrent, &data.source, &dht_options(&[node_addr]))
        .expect("libtorrent is there: the node started");
    seeder.wait_dht_nodes(JOIN, 1);
    wait_announce(&mut node, &hex, seeder.port());

    let dest = dir.path().join("dest");
    let uri = format!("magnet:?xt=urn:btih:{hex}");
    let node_arg = node_addr.to_string();
    let mut leecher = KpTorrent::download_magnet(
        "kp-leecher",
        &uri,
        &dest,
        &["--dht-bootstrap", &node_arg, "--timeout", KP_TIMEOUT],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    // The only contact kp-torrent had was the libtorrent node, and the node gave it the seeder.
    let log = leecher.log();
    assert!(log.contains("from-libtorrent.bin: done, "), "{log}");
    seeder.kill();
    node.kill();
}

#[test]
fn a_libtorrent_magnet_leecher_finds_the_kp_torrent_seeder_through_a_libtorrent_dht_node() {
    let Some((mut node, node_addr)) = libtorrent_node() else {
        return;
    };
    let dir = TempDir::new("interop-dht-lt-leech");
    let data = dataset(dir.path(), "from-kp.bin", 92);
    let hex = data.torrent.info_hash.to_hex();
    let node_arg = node_addr.to_string();
    let mut seeder = KpTorrent::seed(
        "kp-seeder",
        &data.torrent.path,
        &data.source,
        &["--dht-bootstrap", &node_arg],
        dir.path(),
    );
    seeder.dht_addr();
    // kp-torrent announces its TCP port (no implied_port): the node stores that address.
    wait_announce(&mut node, &hex, seeder.port());

    let dest = dir.path().join("dest");
    std::fs::create_dir_all(&dest).expect("create dest");
    let uri = format!("magnet:?xt=urn:btih:{hex}");
    let mut leecher = Libtorrent::download_magnet(&uri, &dest, &dht_options(&[node_addr]))
        .expect("libtorrent is there: the node started");
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    assert_found_through_dht(&leecher);
    seeder.kill();
    node.kill();
}

#[test]
fn libtorrent_peers_find_each_other_through_a_kp_torrent_dht_node() {
    if !kp_torrent_tests::require_python_libtorrent() {
        return;
    }
    let dir = TempDir::new("interop-dht-kp-node");
    let other = Dataset::single(dir.path(), "other.bin", 40_000, 16 * 1024, 93);
    let data = dataset(dir.path(), "through-kp.bin", 94);
    let hex = data.torrent.info_hash.to_hex();
    // A kp-torrent seeding something else is the DHT node; its own contact never answers.
    let mut hub = KpTorrent::seed(
        "kp-node",
        &other.torrent.path,
        &other.source,
        &["--dht-bootstrap", "127.0.0.1:9"],
        dir.path(),
    );
    let hub_addr = hub.dht_addr();

    let mut seeder = Libtorrent::seed(&data.torrent, &data.source, &dht_options(&[hub_addr]))
        .expect("libtorrent is there");
    seeder.wait_dht_nodes(JOIN, 1);
    let dest = dir.path().join("dest");
    std::fs::create_dir_all(&dest).expect("create dest");
    let uri = format!("magnet:?xt=urn:btih:{hex}");
    let mut leecher = Libtorrent::download_magnet(&uri, &dest, &dht_options(&[hub_addr]))
        .expect("libtorrent is there");
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    assert_found_through_dht(&leecher);
    seeder.kill();
    hub.kill();
}
