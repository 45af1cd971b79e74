//! Records the trace fixtures in `tests/fixtures/`: kp-torrent downloading a small torrent from
//! real libtorrent, Transmission and aria2 seeders on 127.0.0.1, with `--record`.
//!
//! Run it when the trace format or the engine's behaviour changes on purpose (the replay test in
//! `tests/trace_fixtures.rs` then fails until the fixtures are recorded again):
//!
//! ```sh
//! cargo build -p kp-torrent && cargo run --example record_fixtures
//! ```
//!
//! It needs the real clients (see `.ci/run`); it talks only to 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};
use kp_torrent_tests::real::{
    Aria2, Libtorrent, LibtorrentOptions, Opentracker, Torrent, Transmission, content, free_port,
};
use kp_torrent_tests::{TempDir, kp_torrent_bin};

/// The fixture content: small, with a short last piece, so traces stay small.
const SIZE: usize = 5 * 16384 + 1234;
const PIECE: u64 = 16384;

fn download(bin: &Path, torrent: &Torrent, peer: std::net::SocketAddr, dest: &Path, trace: &Path) {
    let out = Command::new(bin)
        .arg("download")
        .arg(&torrent.path)
        .arg("-d")
        .arg(dest)
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--peer", &peer.to_string(), "--timeout", "60", "--quiet"])
        .args(["--rng-seed", "1"])
        .arg("--record")
        .arg(trace)
        .output()
        .expect("run kp-torrent");
    assert!(
        out.status.success(),
        "download for {} failed: {}",
        trace.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let bin = kp_torrent_bin();
    assert!(
        bin.exists(),
        "build the binary first: cargo build -p kp-torrent"
    );
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    let dir = TempDir::new("fixtures");
    let data = content(SIZE, 2026);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("fixture.bin"), &data).unwrap();
    let spec = TorrentSpec {
        name: "fixture.bin".into(),
        piece_length: PIECE,
        files: vec![(vec![], SIZE as u64)],
        piece_hashes: hash_pieces(&data, PIECE),
        ..TorrentSpec::default()
    };
    let plain = Torrent::from_spec(&spec, &dir.path().join("plain.torrent"));
    let tracker = Opentracker::start(&[plain.info_hash]).expect("opentracker");
    let torrent = plain.with_announce(&tracker.http_announce_url(), &dir.path().join("t.torrent"));

    let check = |dest: &Path| assert_eq!(std::fs::read(dest.join("fixture.bin")).unwrap(), data);

    {
        let lt =
            Libtorrent::seed(&torrent, &src, &LibtorrentOptions::default()).expect("libtorrent");
        let dest = dir.path().join("from-lt");
        download(
            &bin,
            &torrent,
            lt.addr(),
            &dest,
            &fixtures.join("from-libtorrent.trace"),
        );
        check(&dest);
    }
    {
        let mut tr = Transmission::seed(&torrent, &src).expect("transmission");
        let dest = dir.path().join("from-tr");
        download(
            &bin,
            &torrent,
            tr.addr(),
            &dest,
            &fixtures.join("from-transmission.trace"),
        );
        check(&dest);
        tr.kill();
    }
    {
        let mut a2 =
            Aria2::seed(&torrent, &src, Some(&tracker.http_announce_url())).expect("aria2");
        std::thread::sleep(Duration::from_millis(500));
        let dest = dir.path().join("from-aria2");
        download(
            &bin,
            &torrent,
            a2.addr(),
            &dest,
            &fixtures.join("from-aria2.trace"),
        );
        check(&dest);
        a2.kill();
    }
    eprintln!("fixtures written to {}", fixtures.display());
}
