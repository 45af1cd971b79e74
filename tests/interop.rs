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
//! stale binary. `KP_KEEP_LOGS=DIR` (with `RUST_LOG=debug`) keeps kp-torrent's whole logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};
use kp_torrent_tests::real::{
    Aria2, Encryption, Libtorrent, LibtorrentOptions, Opentracker, RealProcess, Torrent,
    Transmission, content, wait_for,
};
use kp_torrent_tests::{TempDir, kp_torrent_bin};

/// Bound on one transfer of a few MiB on loopback; Transmission alone needs ~10 s to start one.
const DONE: Duration = Duration::from_secs(25);
/// Bound on a peer's announce showing up in a scrape.
const SWARM: Duration = Duration::from_secs(10);
/// Bound on kp-torrent checking its data and opening its listening socket.
const LISTEN: Duration = Duration::from_secs(15);

/// 3 MiB and a partial last piece of 64 KiB pieces.
const SIZE: usize = 3 * 1024 * 1024 + 12_345;

/// A running `kp-torrent download` or `kp-torrent seed`, killed when dropped.
struct Kp {
    process: RealProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Kp {
    /// `kp-torrent download TORRENT -d DEST --peer P...` on 127.0.0.1, a free port, giving up after
    /// the test's own bound.
    fn download(torrent: &Torrent, dest: &Path, peers: &[SocketAddr]) -> Kp {
        let mut args = vec![
            "download".to_string(),
            abs(&torrent.path),
            "-d".into(),
            abs(dest),
            "--timeout".into(),
            DONE.as_secs().to_string(),
        ];
        args.extend(
            peers
                .iter()
                .flat_map(|p| ["--peer".to_string(), p.to_string()]),
        );
        Kp::start("kp-torrent-leecher", args)
    }

    /// `kp-torrent seed TORRENT -s SOURCE --peer P...` on 127.0.0.1, a free port; seeds until
    /// killed.
    fn seed(torrent: &Torrent, source: &Path, peers: &[SocketAddr]) -> Kp {
        let mut args = vec![
            "seed".to_string(),
            abs(&torrent.path),
            "-s".into(),
            abs(source),
        ];
        args.extend(
            peers
                .iter()
                .flat_map(|p| ["--peer".to_string(), p.to_string()]),
        );
        Kp::start("kp-torrent-seeder", args)
    }

    fn start(name: &str, mut args: Vec<String>) -> Kp {
        args.extend(["--bind", "127.0.0.1", "--port", "0"].map(String::from));
        let dir = TempDir::new(name);
        let mut process = RealProcess::spawn(name, &kp_torrent_bin(), &args, dir.path());
        let addr = wait_for(LISTEN, || {
            if let Some(addr) = listening(&process.log()) {
                return Some(Ok(addr));
            }
            process
                .exit_status()
                .map(|s| Err(format!("exited ({s}) before listening")))
        });
        match addr {
            Some(Ok(addr)) => Kp {
                process,
                addr,
                _dir: dir,
            },
            Some(Err(e)) => process.fail(&e),
            None => process.fail(&format!("did not listen within {LISTEN:?}")),
        }
    }

    /// Waits until a download has exited 0 (complete, verified, announced) without running out
    /// its shutdown grace (the trackers answer `stopped` at once here).
    fn wait_done(&mut self, timeout: Duration) {
        match wait_for(timeout, || self.process.exit_status()) {
            Some(s) if s.success() && self.process.log().contains(": leaving after") => {
                self.process.fail("waited out its shutdown grace")
            }
            Some(s) if s.success() => {}
            Some(s) => self.process.fail(&format!("exited with {s}")),
            None => self
                .process
                .fail(&format!("did not finish the download within {timeout:?}")),
        }
    }
}

impl Drop for Kp {
    fn drop(&mut self) {
        // The temp folder goes with the test; KP_KEEP_LOGS=DIR keeps our whole log (a panic
        // message holds only its tail), e.g. with RUST_LOG=debug.
        if let Some(keep) = std::env::var_os("KP_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            let name = format!("{}-{}.log", self.process.pid(), self.addr.port());
            let _ = std::fs::copy(self.process.log_path(), keep.join(name));
        }
    }
}

/// The address of the first `NAME: listening on ADDR` line.
fn listening(log: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|l| l.split_once(": listening on ").map(|(_, a)| a.trim()))
        .and_then(|a| a.parse().ok())
}

fn abs(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

/// One file `data.bin` of [`SIZE`] bytes from `seed` in `dir/seed/` and its torrent (64 KiB pieces,
/// no tracker): the data, the torrent and the folder holding the file.
fn single_file(dir: &TempDir, seed: u64) -> (Vec<u8>, Torrent, PathBuf) {
    single_file_with_pieces(dir, seed, 64 * 1024)
}

/// [`single_file`] with pieces of `piece_length` bytes.
fn single_file_with_pieces(
    dir: &TempDir,
    seed: u64,
    piece_length: u64,
) -> (Vec<u8>, Torrent, PathBuf) {
    let data = content(SIZE, seed);
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("data.bin"), &data).unwrap();
    let spec = TorrentSpec {
        name: "data.bin".into(),
        piece_length,
        files: vec![(Vec::new(), SIZE as u64)],
        piece_hashes: hash_pieces(&data, piece_length),
        ..TorrentSpec::default()
    };
    let torrent = Torrent::from_spec(&spec, &dir.path().join("bare.torrent"));
    (data, torrent, seed_dir)
}

/// The files of the multi-file test: pieces span files, one file is smaller than a piece, one is
/// empty, the last piece is partial.
const ALBUM: [(&[&str], usize, u64); 4] = [
    (&["a.bin"], 1_000_000, 21),
    (&["sub", "b.bin"], 30_000, 22),
    (&["sub", "empty"], 0, 0),
    (&["sub", "c.bin"], 1_500_001, 23),
];

/// Writes [`ALBUM`] under `dir/seed/album/` and returns its torrent (32 KiB pieces, no tracker)
/// and the folder holding `album`.
fn album(dir: &TempDir) -> (Torrent, PathBuf) {
    let seed_dir = dir.path().join("seed");
    let root = seed_dir.join("album");
    let mut all = Vec::new();
    for (path, len, seed) in ALBUM {
        let file = path.iter().fold(root.clone(), |p, c| p.join(c));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let bytes = content(len, seed);
        std::fs::write(&file, &bytes).unwrap();
        all.extend_from_slice(&bytes);
    }
    let piece_length = 32 * 1024;
    let spec = TorrentSpec {
        name: "album".into(),
        piece_length,
        files: ALBUM
            .iter()
            .map(|(path, len, _)| (path.iter().map(|c| c.to_string()).collect(), *len as u64))
            .collect(),
        piece_hashes: hash_pieces(&all, piece_length),
        ..TorrentSpec::default()
    };
    (
        Torrent::from_spec(&spec, &dir.path().join("album.torrent")),
        seed_dir,
    )
}

/// Checks every file of [`ALBUM`] under `dest/album/`; the empty one may be missing only when
/// `empty_created` is false (Transmission 3.00 does not create empty files).
fn assert_album(dest: &Path, empty_created: bool) {
    for (path, len, seed) in ALBUM {
        let file = path.iter().fold(dest.join("album"), |p, c| p.join(c));
        if len == 0 && !empty_created && !file.exists() {
            continue;
        }
        assert_same_file(&file, &content(len, seed));
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

/// libtorrent accepts only plaintext, as kp-torrent speaks it.
fn plaintext() -> LibtorrentOptions {
    LibtorrentOptions {
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    }
}

#[test]
fn libtorrent_seeds_kp_torrent_through_udp_tracker() {
    let dir = TempDir::new("io-lt-kp");
    let (data, bare, seed_dir) = single_file(&dir, 31);
    let Some((tracker, torrent)) = tracked(&dir, &bare, Opentracker::udp_announce_url) else {
        return;
    };
    let Some(_seeder) = Libtorrent::seed(&torrent, &seed_dir, &plaintext()) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = Kp::download(&torrent, &dest, &[]);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn kp_torrent_seeds_libtorrent_multi_file_by_direct_dial() {
    let dir = TempDir::new("io-kp-lt");
    let (torrent, seed_dir) = album(&dir);
    let seeder = Kp::seed(&torrent, &seed_dir.join("album"), &[]);
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.addr],
        ..plaintext()
    };
    let Some(mut leecher) = Libtorrent::download(&torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_album(&dest, true);
}

#[test]
fn kp_torrent_dials_transmission_seeder_from_http_tracker() {
    let dir = TempDir::new("io-tr-kp");
    let (data, bare, seed_dir) = single_file(&dir, 32);
    let Some((tracker, torrent)) = tracked(&dir, &bare, Opentracker::http_announce_url) else {
        return;
    };
    let Some(_seeder) = Transmission::seed(&torrent, &seed_dir) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = Kp::download(&torrent, &dest, &[]);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn kp_torrent_seeder_dials_transmission_leecher_from_tracker() {
    let dir = TempDir::new("io-kp-tr");
    let (data, bare, seed_dir) = single_file(&dir, 33);
    let Some((tracker, torrent)) = tracked(&dir, &bare, Opentracker::udp_announce_url) else {
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
    let _seeder = Kp::seed(&torrent, &seed_dir.join("data.bin"), &[]);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn aria2_seeds_kp_torrent_through_http_tracker_1_mib_pieces() {
    let dir = TempDir::new("io-aria2-kp");
    // Pieces of 1 MiB: 64 blocks each, the last piece partial.
    let (data, bare, seed_dir) = single_file_with_pieces(&dir, 34, 1 << 20);
    let Some((tracker, torrent)) = tracked(&dir, &bare, Opentracker::http_announce_url) else {
        return;
    };
    let Some(_seeder) = Aria2::seed(&torrent, &seed_dir, None) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = Kp::download(&torrent, &dest, &[]);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn kp_torrent_seeds_aria2_multi_file_through_http_tracker() {
    let dir = TempDir::new("io-kp-aria2");
    let (bare, seed_dir) = album(&dir);
    let Some((tracker, torrent)) = tracked(&dir, &bare, Opentracker::http_announce_url) else {
        return;
    };
    let _seeder = Kp::seed(&torrent, &seed_dir, &[]);
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Aria2::download(&torrent, &dest, None) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_album(&dest, true);
}

#[test]
fn kp_torrent_dials_libtorrent_seeder_with_peer_option_multi_file() {
    let dir = TempDir::new("io-lt-kp-peer");
    let (torrent, seed_dir) = album(&dir);
    let Some(seeder) = Libtorrent::seed(&torrent, &seed_dir, &plaintext()) else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = Kp::download(&torrent, &dest, &[seeder.addr()]);
    leecher.wait_done(DONE);
    assert_album(&dest, true);
}

#[test]
fn kp_torrent_dials_transmission_seeder_with_peer_option() {
    let dir = TempDir::new("io-tr-kp-peer");
    let (data, torrent, seed_dir) = single_file(&dir, 36);
    let Some(seeder) = Transmission::seed(&torrent, &seed_dir) else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = Kp::download(&torrent, &dest, &[seeder.addr()]);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn kp_torrent_seeder_dials_transmission_leecher_with_peer_option_multi_file() {
    let dir = TempDir::new("io-kp-tr-peer");
    let (torrent, seed_dir) = album(&dir);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download(&torrent, &dest) else {
        return;
    };
    let _seeder = Kp::seed(&torrent, &seed_dir, &[leecher.addr()]);
    leecher.wait_done(DONE);
    assert_album(&dest, false);
}

#[test]
fn kp_torrent_seeds_libtorrent_that_offers_encryption_first() {
    // libtorrent's default policy (pe_enabled) dials with an encrypted handshake first; kp-torrent
    // speaks plaintext only, so libtorrent must fall back to it.
    let dir = TempDir::new("io-kp-lt-enc");
    let (data, torrent, seed_dir) = single_file(&dir, 37);
    let seeder = Kp::seed(&torrent, &seed_dir.join("data.bin"), &[]);
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.addr],
        encryption: Encryption::Enabled,
        ..LibtorrentOptions::default()
    };
    let Some(mut leecher) = Libtorrent::download(&torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}
