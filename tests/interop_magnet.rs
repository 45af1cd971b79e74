//! Magnet links (BEP 9 `ut_metadata`) between kp-torrent and real clients on 127.0.0.1.
//!
//! We serve the metadata: a libtorrent, Transmission or aria2 magnet leecher knows only the
//! info-hash, gets the info dictionary from our `kp-torrent seed`, then the data.
//!
//! We fetch the metadata: `kp-torrent download 'magnet:?xt=urn:btih:HEX&dn=NAME&tr=URL&x.pe=ADDR'
//! -d DIR` finds a libtorrent seeder through a tracker or `x.pe`, writes the data to `DIR/NAME`,
//! keeps the fetched torrent as `DIR/.kp-torrent/HEX.torrent`, and a rerun with nobody reachable
//! finishes from that file and the data on disk.
//!
//! Every real client runs with DHT, LSD, PEX and UPnP off (`kp_torrent_tests::real`), so the
//! only way to a peer is the tracker or address the test gives. tests/libtorrent_magnet_harness.rs
//! shows the libtorrent side working between libtorrent peers. As in tests/interop.rs, run
//! `cargo build -p kp-torrent` first when running this file alone.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::kp::saved_torrent_path;
use kp_torrent_tests::real::{
    Aria2, Dataset, Encryption, KpTorrent, Libtorrent, LibtorrentOptions, Opentracker, Torrent,
    Transmission,
};

/// Bound on fetching the metadata and a few MiB on loopback.
const DONE: Duration = Duration::from_secs(30);
/// Transmission decides interest every 10 s: allow for a few of its rounds.
const TRANSMISSION_DONE: Duration = Duration::from_secs(45);
/// Bound on a peer's announce showing up in a scrape.
const SWARM: Duration = Duration::from_secs(10);
/// kp-torrent's own `--timeout` for a download, below the test's wait on its exit.
const KP_TIMEOUT: &str = "30";
/// How long the test waits for a kp-torrent download to exit.
const KP_EXIT: Duration = Duration::from_secs(40);

/// 16 KiB pieces, so even a few MiB make an info dictionary of some KiB.
const PIECE: u64 = 16 * 1024;
/// 4 MiB and a partial last piece.
const SIZE: usize = 4 * 1024 * 1024 + 12_345;
/// Size of one `ut_metadata` piece: an info dictionary above it travels in several.
const METADATA_PIECE: usize = 16 * 1024;

/// `data.bin` of [`SIZE`] bytes from `seed` in `dir/source/`, and its torrent (no tracker).
fn single_file(dir: &Path, seed: u64) -> Dataset {
    Dataset::single(dir, "data.bin", SIZE, PIECE, seed)
}

/// The folder `many` of 400 files (about 6 MiB, pieces spanning files, one empty file): its info
/// dictionary is over 16 KiB, so the metadata moves as two `ut_metadata` pieces.
fn many_files(dir: &Path, seed: u64) -> Dataset {
    let files: Vec<(String, usize)> = (0..400)
        .map(|i| {
            let len = if i == 7 { 0 } else { 10_000 + i * 37 };
            (format!("d{}/file-{i:03}.bin", i % 5), len)
        })
        .collect();
    let data = Dataset::multi(dir, "many", &files, PIECE, seed);
    let len = info_len(&data.torrent);
    assert!(
        len > METADATA_PIECE,
        "the info dictionary is {len} bytes, meant to need two metadata pieces"
    );
    data
}

/// Length of the bencoded info dictionary of `torrent` (what `ut_metadata` moves).
fn info_len(torrent: &Torrent) -> usize {
    let bytes = std::fs::read(&torrent.path).expect("read torrent");
    let value = kp_torrent_core::bencode::decode(&bytes).expect("torrent is bencoded");
    value
        .as_dict()
        .and_then(|d| d.get_dict(b"info"))
        .expect("torrent has an info dictionary")
        .raw()
        .len()
}

/// `magnet:?xt=urn:btih:HEX&dn=NAME`, then a `tr=` for each tracker and an `x.pe=` for each peer.
fn magnet(torrent: &Torrent, trackers: &[String], peers: &[SocketAddr]) -> String {
    let mut uri = format!(
        "magnet:?xt=urn:btih:{}&dn={}",
        torrent.info_hash,
        percent_encode(&torrent.name)
    );
    for t in trackers {
        uri.push_str(&format!("&tr={}", percent_encode(t)));
    }
    for p in peers {
        uri.push_str(&format!("&x.pe={p}"));
    }
    uri
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as magnet links carry URLs.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// libtorrent speaking plaintext (as kp-torrent does) with the plugins named.
fn libtorrent_options(extensions: &[&str]) -> LibtorrentOptions {
    LibtorrentOptions {
        extensions: extensions.iter().map(|e| e.to_string()).collect(),
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    }
}

/// Panics unless `dest/.kp-torrent/<hex>.torrent` is a torrent whose info-hash and name are
/// `torrent`'s (the same info-hash means the same info dictionary).
fn assert_saved_torrent(dest: &Path, torrent: &Torrent) {
    let path = saved_torrent_path(dest, &torrent.info_hash);
    assert!(
        path.is_file(),
        "{} is missing: the fetched torrent was not kept",
        path.display()
    );
    let saved = Torrent::load(&path);
    assert_eq!(saved.info_hash, torrent.info_hash, "{}", path.display());
    assert_eq!(saved.name, torrent.name, "{}", path.display());
    // It must also be a torrent kp-torrent itself accepts, not just an info dictionary.
    kp_torrent_core::metainfo::Metainfo::from_bytes(&std::fs::read(&path).expect("read"))
        .unwrap_or_else(|e| panic!("{} is not a valid torrent: {e}", path.display()));
}

// --- We serve the metadata. ---

#[test]
fn libtorrent_magnet_leecher_gets_metadata_and_data_from_kp_torrent() {
    let dir = TempDir::new("mag-kp-lt");
    let data = many_files(dir.path(), 61);
    let us = KpTorrent::seed(
        "kp-torrent-seeder",
        &data.torrent.path,
        &data.source,
        &[],
        dir.path(),
    );
    // Only the info-hash and name; no tracker, no peer in the link.
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Libtorrent::download_magnet(
        &magnet(&data.torrent, &[], &[]),
        &dest,
        &libtorrent_options(&["ut_metadata"]),
    ) else {
        return;
    };
    // Told only our address, after it started.
    leecher.connect_peer(us.socket_addr());
    leecher.wait_metadata(DONE);
    leecher.wait_done(DONE);
    data.assert_same(&dest);
}

#[test]
fn transmission_magnet_leecher_gets_metadata_and_data_from_kp_torrent_via_tracker() {
    let dir = TempDir::new("mag-kp-tr");
    let data = single_file(dir.path(), 62);
    let hash = data.torrent.info_hash;
    let Some(tracker) = Opentracker::start(&[hash]) else {
        return;
    };
    let url = tracker.http_announce_url();
    let tracked = data
        .torrent
        .with_announce(&url, &dir.path().join("tracked.torrent"));
    let dest = dir.path().join("dest");
    let Some(mut leecher) =
        Transmission::download_magnet(&magnet(&data.torrent, &[url], &[]), &dest)
    else {
        return;
    };
    // Transmission never dials 127.x: our seeder must find it in its first announce's reply.
    tracker.wait_for_swarm(&hash, SWARM, "Transmission announced", |s| {
        s.seeders + s.leechers >= 1
    });
    let _us = KpTorrent::seed(
        "kp-torrent-seeder",
        &tracked.path,
        &data.source,
        &[],
        dir.path(),
    );
    leecher.wait_done(TRANSMISSION_DONE);
    data.assert_same(&dest);
}

#[test]
fn aria2_magnet_leecher_gets_metadata_and_data_from_kp_torrent_via_tracker() {
    let dir = TempDir::new("mag-kp-aria2");
    let data = single_file(dir.path(), 63);
    let hash = data.torrent.info_hash;
    let Some(tracker) = Opentracker::start(&[hash]) else {
        return;
    };
    let url = tracker.http_announce_url();
    let tracked = data
        .torrent
        .with_announce(&url, &dir.path().join("tracked.torrent"));
    let _us = KpTorrent::seed(
        "kp-torrent-seeder",
        &tracked.path,
        &data.source,
        &[],
        dir.path(),
    );
    tracker.wait_for_swarm(&hash, SWARM, "our seeder announced", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Aria2::download_magnet(&magnet(&data.torrent, &[url], &[]), &dest)
    else {
        return;
    };
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    // aria2 ran the link as two downloads: the metadata (in memory), then the data.
    let log = leecher.process().log();
    assert!(
        log.contains("[METADATA]"),
        "aria2 reports no metadata download:\n{log}"
    );
}

// --- We fetch the metadata. ---

/// A libtorrent seeder of `data` that serves metadata, announcing to `trackers` when given.
fn libtorrent_seeder(data: &Dataset, trackers: &[String]) -> Option<Libtorrent> {
    Libtorrent::seed(
        &data.torrent,
        &data.source,
        &LibtorrentOptions {
            trackers: trackers.to_vec(),
            ..libtorrent_options(&["ut_metadata"])
        },
    )
}

/// `kp-torrent download 'URI' -d DEST --timeout 30` plus `extra`.
fn kp_magnet(dir: &TempDir, name: &str, uri: &str, dest: &Path, extra: &[&str]) -> KpTorrent {
    let args = [&["--timeout", KP_TIMEOUT][..], extra].concat();
    KpTorrent::download_magnet(name, uri, dest, &args, dir.path())
}

#[test]
fn kp_torrent_fetches_magnet_metadata_from_libtorrent_found_through_tracker() {
    let dir = TempDir::new("mag-lt-kp-tr");
    let data = single_file(dir.path(), 64);
    let hash = data.torrent.info_hash;
    let Some(tracker) = Opentracker::start(&[hash]) else {
        return;
    };
    let url = tracker.udp_announce_url();
    let Some(_seeder) = libtorrent_seeder(&data, std::slice::from_ref(&url)) else {
        return;
    };
    tracker.wait_for_swarm(&hash, SWARM, "the seeder announced", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let uri = magnet(&data.torrent, &[url], &[]);
    let mut us = kp_magnet(&dir, "kp-torrent-magnet", &uri, &dest, &[]);
    us.wait_success(KP_EXIT);
    data.assert_same(&dest);
    assert_saved_torrent(&dest, &data.torrent);
}

#[test]
fn kp_torrent_fetches_magnet_metadata_from_libtorrent_named_in_x_pe() {
    let dir = TempDir::new("mag-lt-kp-pe");
    // Over 16 KiB of metadata: fetched as two pieces.
    let data = many_files(dir.path(), 65);
    let Some(seeder) = libtorrent_seeder(&data, &[]) else {
        return;
    };
    let dest = dir.path().join("dest");
    let uri = magnet(&data.torrent, &[], &[seeder.addr()]);
    let mut us = kp_magnet(&dir, "kp-torrent-magnet", &uri, &dest, &[]);
    us.wait_success(KP_EXIT);
    data.assert_same(&dest);
    assert_saved_torrent(&dest, &data.torrent);
}

#[test]
fn kp_torrent_downloads_a_magnet_between_two_torrent_files_in_one_process() {
    let dir = TempDir::new("mag-mixed");
    // A and B: one `kp-torrent seed` process seeds both from one folder.
    let ab = dir.path().join("ab");
    std::fs::create_dir_all(&ab).unwrap();
    let a = Dataset::single(&ab, "a.bin", 2 * 1024 * 1024 + 1, PIECE, 66);
    let b = Dataset::single(&ab, "b.bin", 3 * 1024 * 1024 - 7, PIECE, 67);
    // M: the magnet, from a libtorrent seeder named in its x.pe.
    let m_dir = dir.path().join("m");
    std::fs::create_dir_all(&m_dir).unwrap();
    let m = Dataset::single(&m_dir, "m.bin", SIZE, PIECE, 68);
    let Some(m_seeder) = libtorrent_seeder(&m, &[]) else {
        return;
    };
    let (a_path, b_path) = (path_str(&a.torrent.path), path_str(&b.torrent.path));
    let source = path_str(&a.source);
    let ab_seeder = KpTorrent::start(
        "kp-torrent-seeder",
        &["seed", &a_path, &b_path, "-s", &source],
        dir.path(),
    );
    let dest = dir.path().join("dest");
    let uri = magnet(&m.torrent, &[], &[m_seeder.addr()]);
    let peer = ab_seeder.addr();
    let mut us = KpTorrent::download_all(
        "kp-torrent-mixed",
        &[&a_path, &uri, &b_path],
        &dest,
        &["--peer", &peer, "--timeout", KP_TIMEOUT],
        dir.path(),
    );
    us.wait_success(KP_EXIT);
    a.assert_same(&dest);
    m.assert_same(&dest);
    b.assert_same(&dest);
    assert_saved_torrent(&dest, &m.torrent);
}

#[test]
fn kp_torrent_reruns_a_finished_magnet_from_the_saved_torrent_with_nobody_reachable() {
    let dir = TempDir::new("mag-rerun");
    let data = single_file(dir.path(), 69);
    let hash = data.torrent.info_hash;
    let Some(tracker) = Opentracker::start(&[hash]) else {
        return;
    };
    let url = tracker.http_announce_url();
    let Some(mut seeder) = libtorrent_seeder(&data, std::slice::from_ref(&url)) else {
        return;
    };
    let uri = magnet(&data.torrent, &[url], &[seeder.addr()]);
    let dest = dir.path().join("dest");
    let mut first = kp_magnet(&dir, "kp-torrent-first", &uri, &dest, &[]);
    first.wait_success(KP_EXIT);
    data.assert_same(&dest);
    assert_saved_torrent(&dest, &data.torrent);

    // Nobody left: the link's tracker and peer now refuse connections.
    seeder.kill();
    drop(tracker);
    let mut again = kp_magnet(&dir, "kp-torrent-again", &uri, &dest, &[]);
    again.wait_success(KP_EXIT);
    data.assert_same(&dest);
    assert_saved_torrent(&dest, &data.torrent);

    // The control: the same link into an empty folder cannot finish, so the rerun's success
    // came from what the first run left in `dest`.
    let empty = dir.path().join("empty");
    let mut control = KpTorrent::download_magnet(
        "kp-torrent-control",
        &uri,
        &empty,
        &["--timeout", "3"],
        dir.path(),
    );
    let status = control.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "a magnet with no reachable peer finished in an empty folder"
    );
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}
