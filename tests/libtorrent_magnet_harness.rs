//! The libtorrent harness for magnet links and peer exchange, proven between libtorrent peers:
//! plugins by name (`ut_metadata`, `ut_pex`), a download from a magnet URI, and dialling a peer
//! while it runs. When these pass, a failing magnet or PEX interop test of kp-torrent against the
//! same harness points at kp-torrent.

use std::path::Path;
use std::time::Duration;

use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Encryption, Libtorrent, LibtorrentOptions, Torrent, content, peer_source,
};

/// Bound on fetching the metadata and a few MiB on loopback.
const DONE: Duration = Duration::from_secs(30);

/// 16 KiB pieces over 16 MiB and a bit: 1025 piece hashes, so the info dictionary is over 20 KiB
/// and travels as two `ut_metadata` pieces (one full, one partial).
const PIECE: u64 = 16 * 1024;
const SIZE: usize = 16 * 1024 * 1024 + 12_345;

/// `data.bin` of [`SIZE`] deterministic bytes in `dir/seed/` and its torrent (no tracker).
fn single_file(dir: &TempDir, seed: u64) -> (Vec<u8>, Torrent) {
    let data = content(SIZE, seed);
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("data.bin"), &data).unwrap();
    let spec = TorrentSpec {
        name: "data.bin".into(),
        piece_length: PIECE,
        files: vec![(Vec::new(), SIZE as u64)],
        piece_hashes: hash_pieces(&data, PIECE),
        ..TorrentSpec::default()
    };
    let torrent = Torrent::from_spec(&spec, &dir.path().join("data.torrent"));
    (data, torrent)
}

/// A magnet link with the info-hash and name only: no tracker, no peer.
fn magnet(torrent: &Torrent) -> String {
    format!(
        "magnet:?xt=urn:btih:{}&dn={}",
        torrent.info_hash, torrent.name
    )
}

fn options(extensions: &[&str]) -> LibtorrentOptions {
    LibtorrentOptions {
        extensions: extensions.iter().map(|e| e.to_string()).collect(),
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    }
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

#[test]
fn a_magnet_leecher_fetches_the_metadata_and_the_data_from_the_one_seeder_it_dials() {
    let dir = TempDir::new("lt-magnet");
    let (data, torrent) = single_file(&dir, 41);
    let Some(seeder) = Libtorrent::seed(
        &torrent,
        &dir.path().join("seed"),
        &options(&["ut_metadata"]),
    ) else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = Libtorrent::download_magnet(
        &magnet(&torrent),
        &dest,
        &LibtorrentOptions {
            peers: vec![seeder.addr()],
            ..options(&["ut_metadata"])
        },
    )
    .expect("libtorrent was available for the seeder");
    leecher.wait_metadata(DONE);
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
    let log = leecher.process().log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("infohash {}", torrent.info_hash))),
        "the magnet's info-hash is the torrent's"
    );
}

#[test]
fn without_ut_metadata_a_magnet_leecher_never_gets_the_metadata() {
    let dir = TempDir::new("lt-magnet-none");
    let (_data, torrent) = single_file(&dir, 42);
    // The seeder has no plugin: it cannot serve the metadata.
    let Some(seeder) = Libtorrent::seed(&torrent, &dir.path().join("seed"), &options(&[])) else {
        return;
    };
    let mut leecher = Libtorrent::download_magnet(
        &magnet(&torrent),
        &dir.path().join("dest"),
        &LibtorrentOptions {
            peers: vec![seeder.addr()],
            ..options(&["ut_metadata"])
        },
    )
    .expect("libtorrent was available for the seeder");
    // Connected, yet no metadata: the plugin list really is what the test asked for.
    leecher.wait_peer(DONE, "the seeder", |p| p.addr == seeder.addr());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !leecher
            .process()
            .log()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("metadata")),
        "metadata arrived from a seeder without ut_metadata"
    );
    assert_eq!(leecher.progress().map(|(_, total)| total), Some(0));
}

#[test]
fn a_third_peer_learns_the_seeder_from_the_magnet_leecher_through_pex() {
    let dir = TempDir::new("lt-pex");
    let (data, torrent) = single_file(&dir, 43);
    let both = ["ut_metadata", "ut_pex"];
    // libtorrent drops a connection between two seeds, and a leecher that completed no longer
    // lists the seeder: the seeder's upload limit (1 MiB/s, so about 16 s for the file) keeps the
    // leecher downloading from it while the third peer comes.
    // The seeder has no ut_pex: it cannot learn about the third peer from the leecher and dial
    // it, so the only way the two meet is the third peer dialling an address PEX gave it.
    let Some(seeder) = Libtorrent::seed(
        &torrent,
        &dir.path().join("seed"),
        &LibtorrentOptions {
            upload_limit: 1024 * 1024,
            ..options(&["ut_metadata"])
        },
    ) else {
        return;
    };
    // The leecher knows only the seeder.
    let leecher_dest = dir.path().join("leecher");
    let mut leecher = Libtorrent::download_magnet(
        &magnet(&torrent),
        &leecher_dest,
        &LibtorrentOptions {
            peers: vec![seeder.addr()],
            keep_running: true,
            ..options(&both)
        },
    )
    .expect("libtorrent was available for the seeder");
    leecher.wait_metadata(DONE);
    leecher.wait_peer(DONE, "the seeder", |p| p.addr == seeder.addr());

    // The third peer is told nobody at start; it dials the leecher while running, and only PEX
    // can tell it where the seeder listens.
    let third_dest = dir.path().join("third");
    let mut third = Libtorrent::download_magnet(&magnet(&torrent), &third_dest, &options(&both))
        .expect("libtorrent was available for the seeder");
    third.connect_peer(leecher.addr());
    let found = third.wait_peer(DONE, "the seeder, learnt through PEX", |p| {
        p.addr == seeder.addr()
    });
    assert!(
        found.source & peer_source::PEX != 0,
        "the seeder reached the third peer through {:#x}, not PEX",
        found.source
    );
    assert_eq!(
        found.source & peer_source::INCOMING,
        0,
        "the third peer dialled the seeder"
    );
    let (have, total) = leecher.progress().expect("the leecher reports progress");
    assert!(
        have < total,
        "the leecher finished before PEX could be tested"
    );
    third.wait_done(DONE);
    assert_same_file(&third_dest.join("data.bin"), &data);
    leecher.wait_done(DONE);
    assert_same_file(&leecher_dest.join("data.bin"), &data);
}
