//! kp-torrent against real clients, both directions each, on 127.0.0.1: libtorrent (Python
//! bindings), Transmission 3.00 and aria2 1.36, through opentracker or a direct `--peer`. Every test
//! runs the built `kp-torrent` binary as a process and checks the received bytes against the source.
//!
//! The settings of the real clients (uTP off, plaintext allowed, DHT/LSD/PEX off, 127.0.0.1 only)
//! live in `kp_torrent_tests::real`; tests/real_clients.rs shows them working between themselves, so a
//! failure here points at kp-torrent.
//!
//! The binary is the driver package's: `cargo test --workspace` builds it, but a targeted
//! `cargo test --test interop` does not, so run `cargo build -p kp-torrent` first or it tests a
//! stale binary. `KP_KEEP_LOGS=DIR` (with `RUST_LOG=debug`) keeps kp-torrent's whole logs (see
//! `kp_torrent_tests::real::kp`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::kp::with_peers;
use kp_torrent_tests::real::{
    Aria2, Dataset, Encryption, KpTorrent, Libtorrent, LibtorrentOptions, Opentracker, Torrent,
    Transmission,
};

/// Bound on one transfer of a few MiB on loopback; Transmission alone needs ~10 s to start one.
const DONE: Duration = Duration::from_secs(25);
/// Bound on a peer's announce showing up in a scrape.
const SWARM: Duration = Duration::from_secs(10);

/// 3 MiB and a partial last piece of 64 KiB pieces.
const SIZE: usize = 3 * 1024 * 1024 + 12_345;

/// `kp-torrent download TORRENT -d DEST --peer P...`, giving up after the test's own bound; its
/// log goes into `dir`.
fn download(dir: &TempDir, torrent: &Torrent, dest: &Path, peers: &[SocketAddr]) -> KpTorrent {
    let name = "kp-torrent-leecher";
    KpTorrent::download_from(name, torrent, dest, DONE, &[], peers, dir.path())
}

/// `kp-torrent seed TORRENT -s SOURCE --peer P...`; seeds until dropped. Its log goes into `dir`.
fn seed(dir: &TempDir, torrent: &Torrent, source: &Path, peers: &[SocketAddr]) -> KpTorrent {
    let args = with_peers(&[], peers);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let name = "kp-torrent-seeder";
    KpTorrent::seed(name, &torrent.path, source, &args, dir.path())
}

/// Waits until a download has exited 0 (complete, verified, announced) without running out its
/// shutdown grace (the trackers answer `stopped` at once here).
fn wait_done(kp: &mut KpTorrent, timeout: Duration) {
    kp.wait_success(timeout);
    if kp.log().contains(": leaving after") {
        kp.fail("waited out its shutdown grace");
    }
}

/// One file `data.bin` of [`SIZE`] bytes from `seed` in `dir/source/` and its torrent (64 KiB
/// pieces, no tracker).
fn single_file(dir: &TempDir, seed: u64) -> Dataset {
    single_file_with_pieces(dir, seed, 64 * 1024)
}

/// [`single_file`] with pieces of `piece_length` bytes.
fn single_file_with_pieces(dir: &TempDir, seed: u64, piece_length: u64) -> Dataset {
    Dataset::single(dir.path(), "data.bin", SIZE, piece_length, seed)
}

/// The folder `album` of the multi-file tests in `dir/source/` and its torrent (32 KiB pieces, no
/// tracker): pieces span files, one file is smaller than a piece, one is empty, the last piece is
/// partial.
fn album(dir: &TempDir) -> Dataset {
    let files = [
        ("a.bin", 1_000_000),
        ("sub/b.bin", 30_000),
        ("sub/empty", 0),
        ("sub/c.bin", 1_500_001),
    ]
    .map(|(path, len)| (path.to_string(), len));
    Dataset::multi(dir.path(), "album", &files, 32 * 1024, 21)
}

/// Checks every file of `album` under `dest/album/`; the empty one may be missing only when
/// `empty_created` is false (Transmission 3.00 does not create empty files).
fn assert_album(album: &Dataset, dest: &Path, empty_created: bool) {
    for (path, want) in &album.files {
        let file = album.file_path(dest, path);
        if want.is_empty() && !empty_created && !file.exists() {
            continue;
        }
        assert_same_file(&file, want);
    }
}

/// A tracker for `torrent` and a copy of the torrent announcing to it (`url_of` picks HTTP or UDP).
fn tracked(
    dir: &TempDir,
    torrent: &Torrent,
    url_of: fn(&Opentracker) -> String,
) -> Option<(Opentracker, Torrent)> {
    let tracker = Opentracker::start(&[torrent.info_hash])?;
    let announced = torrent.with_announce(&url_of(&tracker), &dir.path().join("tracked.torrent"));
    Some((tracker, announced))
}

fn assert_same_file(got: &Path, want: &[u8]) {
    let got_bytes = std::fs::read(got).unwrap_or_else(|e| panic!("read {}: {e}", got.display()));
    assert!(
        got_bytes == want,
        "{} differs from the source ({} bytes, expected {})",
        got.display(),
        got_bytes.len(),
        want.len()
    );
}

/// libtorrent accepts only plaintext (kp-torrent's encrypted dial falls back to it at once).
fn plaintext() -> LibtorrentOptions {
    LibtorrentOptions {
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    }
}

#[test]
fn libtorrent_seeds_kp_torrent_through_udp_tracker() {
    let dir = TempDir::new("io-lt-kp");
    let data = single_file(&dir, 31);
    let Some((tracker, torrent)) = tracked(&dir, &data.torrent, Opentracker::udp_announce_url)
    else {
        return;
    };
    let Some(_seeder) = Libtorrent::seed(&torrent, &data.source, &plaintext()) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = download(&dir, &torrent, &dest, &[]);
    wait_done(&mut leecher, DONE);
    data.assert_same(&dest);
}

#[test]
fn kp_torrent_seeds_libtorrent_multi_file_by_direct_dial() {
    let dir = TempDir::new("io-kp-lt");
    let data = album(&dir);
    let seeder = seed(&dir, &data.torrent, &data.source.join("album"), &[]);
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.socket_addr()],
        ..plaintext()
    };
    let Some(mut leecher) = Libtorrent::download(&data.torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_album(&data, &dest, true);
}

#[test]
fn kp_torrent_dials_transmission_seeder_from_http_tracker() {
    let dir = TempDir::new("io-tr-kp");
    let data = single_file(&dir, 32);
    let Some((tracker, torrent)) = tracked(&dir, &data.torrent, Opentracker::http_announce_url)
    else {
        return;
    };
    let Some(_seeder) = Transmission::seed(&torrent, &data.source) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = download(&dir, &torrent, &dest, &[]);
    wait_done(&mut leecher, DONE);
    data.assert_same(&dest);
}

#[test]
fn kp_torrent_seeder_dials_transmission_leecher_from_tracker() {
    let dir = TempDir::new("io-kp-tr");
    let data = single_file(&dir, 33);
    let Some((tracker, torrent)) = tracked(&dir, &data.torrent, Opentracker::udp_announce_url)
    else {
        return;
    };
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download(&torrent, &dest) else {
        return;
    };
    // Transmission will not dial 127.0.0.1: our seeder must find it in its first announce reply.
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one leecher", |s| {
        s.leechers >= 1
    });
    let _seeder = seed(&dir, &torrent, &data.source.join("data.bin"), &[]);
    leecher.wait_done(DONE);
    data.assert_same(&dest);
}

#[test]
fn aria2_seeds_kp_torrent_through_http_tracker_1_mib_pieces() {
    let dir = TempDir::new("io-aria2-kp");
    // Pieces of 1 MiB: 64 blocks each, the last piece partial.
    let data = single_file_with_pieces(&dir, 34, 1 << 20);
    let Some((tracker, torrent)) = tracked(&dir, &data.torrent, Opentracker::http_announce_url)
    else {
        return;
    };
    let Some(_seeder) = Aria2::seed(&torrent, &data.source, None) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = download(&dir, &torrent, &dest, &[]);
    wait_done(&mut leecher, DONE);
    data.assert_same(&dest);
}

#[test]
fn kp_torrent_seeds_aria2_multi_file_through_http_tracker() {
    let dir = TempDir::new("io-kp-aria2");
    let data = album(&dir);
    let Some((tracker, torrent)) = tracked(&dir, &data.torrent, Opentracker::http_announce_url)
    else {
        return;
    };
    let _seeder = seed(&dir, &torrent, &data.source, &[]);
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Aria2::download(&torrent, &dest, None) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_album(&data, &dest, true);
}

#[test]
fn kp_torrent_dials_libtorrent_seeder_with_peer_option_multi_file() {
    let dir = TempDir::new("io-lt-kp-peer");
    let data = album(&dir);
    let Some(seeder) = Libtorrent::seed(&data.torrent, &data.source, &plaintext()) else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = download(&dir, &data.torrent, &dest, &[seeder.addr()]);
    wait_done(&mut leecher, DONE);
    assert_album(&data, &dest, true);
}

#[test]
fn kp_torrent_dials_transmission_seeder_with_peer_option() {
    let dir = TempDir::new("io-tr-kp-peer");
    let data = single_file(&dir, 36);
    let Some(seeder) = Transmission::seed(&data.torrent, &data.source) else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = download(&dir, &data.torrent, &dest, &[seeder.addr()]);
    wait_done(&mut leecher, DONE);
    data.assert_same(&dest);
}

#[test]
fn kp_torrent_seeder_dials_transmission_leecher_with_peer_option_multi_file() {
    let dir = TempDir::new("io-kp-tr-peer");
    let data = album(&dir);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download(&data.torrent, &dest) else {
        return;
    };
    let _seeder = seed(&dir, &data.torrent, &data.source, &[leecher.addr()]);
    leecher.wait_done(DONE);
    assert_album(&data, &dest, false);
}

#[test]
fn kp_torrent_seeds_libtorrent_that_offers_encryption_first() {
    // libtorrent's default policy (pe_enabled) dials with an encrypted handshake first, which
    // kp-torrent (--encryption prefer by default) accepts. tests/interop_encryption.rs forces it.
    let dir = TempDir::new("io-kp-lt-enc");
    let data = single_file(&dir, 37);
    let seeder = seed(&dir, &data.torrent, &data.source.join("data.bin"), &[]);
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.socket_addr()],
        encryption: Encryption::Enabled,
        ..LibtorrentOptions::default()
    };
    let Some(mut leecher) = Libtorrent::download(&data.torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    data.assert_same(&dest);
}
