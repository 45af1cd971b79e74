//! The `kp_torrent_tests::real` harness proven between the real clients themselves: each test moves a
//! few MiB from one real client to another on 127.0.0.1 and checks the bytes. When these pass, a
//! failing end-to-end test of kp-torrent against the same harness points at kp-torrent.

use std::path::Path;
use std::time::Duration;

use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Aria2, Encryption, Libtorrent, LibtorrentOptions, Opentracker, Torrent, Transmission, content,
};

/// Generous bound for a few MiB on loopback; Transmission alone needs ~10 s to start a transfer.
const DONE: Duration = Duration::from_secs(25);
const SWARM: Duration = Duration::from_secs(10);

/// 3 MiB and a partial last piece of 64 KiB pieces.
const SIZE: usize = 3 * 1024 * 1024 + 12_345;

/// One file `data.bin` of [`SIZE`] deterministic bytes in `dir/seed/`, its torrent (64 KiB pieces),
/// and an opentracker for it; the returned torrent announces to `announce(&tracker)`.
fn single_file(
    dir: &TempDir,
    seed: u64,
    announce: fn(&Opentracker) -> String,
) -> Option<(Vec<u8>, Torrent, Opentracker)> {
    let data = content(SIZE, seed);
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("data.bin"), &data).unwrap();
    let bare = Torrent::create(
        &seed_dir.join("data.bin"),
        16,
        &dir.path().join("bare.torrent"),
    )?;
    let tracker = Opentracker::start(&[bare.info_hash])?;
    let torrent = bare.with_announce(&announce(&tracker), &dir.path().join("data.torrent"));
    assert_eq!(torrent.info_hash, bare.info_hash);
    Some((data, torrent, tracker))
}

fn http(t: &Opentracker) -> String {
    t.http_announce_url()
}

fn udp(t: &Opentracker) -> String {
    t.udp_announce_url()
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
fn libtorrent_seeds_aria2_through_http_tracker() {
    let dir = TempDir::new("rc-lt-aria2");
    let Some((data, torrent, tracker)) = single_file(&dir, 1, http) else {
        return;
    };
    let Some(_seeder) = Libtorrent::seed(
        &torrent,
        &dir.path().join("seed"),
        &LibtorrentOptions::default(),
    ) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Aria2::download(&torrent, &dest, Some(&tracker.http_announce_url()))
    else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn libtorrent_seeds_libtorrent_through_udp_tracker_multi_file() {
    let dir = TempDir::new("rc-lt-lt");
    // Pieces span files, one file is smaller than a piece, one is empty, the last piece is partial.
    let files: [(&[&str], usize, u64); 4] = [
        (&["a.bin"], 1_000_000, 2),
        (&["sub", "b.bin"], 30_000, 3),
        (&["sub", "empty"], 0, 0),
        (&["sub", "c.bin"], 1_500_001, 4),
    ];
    let root = dir.path().join("seed").join("album");
    let mut all = Vec::new();
    for (path, len, seed) in files {
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
        files: files
            .iter()
            .map(|(path, len, _)| (path.iter().map(|c| c.to_string()).collect(), *len as u64))
            .collect(),
        piece_hashes: hash_pieces(&all, piece_length),
        ..TorrentSpec::default()
    };
    let bare = Torrent::from_spec(&spec, &dir.path().join("bare.torrent"));
    let Some(tracker) = Opentracker::start(&[bare.info_hash]) else {
        return;
    };
    let torrent = bare.with_announce(
        &tracker.udp_announce_url(),
        &dir.path().join("album.torrent"),
    );
    let Some(_seeder) = Libtorrent::seed(
        &torrent,
        &dir.path().join("seed"),
        &LibtorrentOptions::default(),
    ) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut leecher = Libtorrent::download(&torrent, &dest, &LibtorrentOptions::default())
        .expect("libtorrent was available for the seeder");
    leecher.wait_done(DONE);
    for (path, len, seed) in files {
        let file = path.iter().fold(dest.join("album"), |p, c| p.join(c));
        assert_same_file(&file, &content(len, seed));
    }
}

#[test]
fn aria2_seeds_libtorrent_trackers_given_on_the_command_line() {
    let dir = TempDir::new("rc-aria2-lt");
    let data = content(SIZE, 5);
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("data.bin"), &data).unwrap();
    // No tracker in the torrent: both peers get theirs as options.
    let Some(torrent) = Torrent::create(
        &seed_dir.join("data.bin"),
        16,
        &dir.path().join("data.torrent"),
    ) else {
        return;
    };
    let Some(tracker) = Opentracker::start(&[torrent.info_hash]) else {
        return;
    };
    let Some(_seeder) = Aria2::seed(&torrent, &seed_dir, Some(&tracker.http_announce_url())) else {
        return;
    };
    // aria2 announces only after checking every piece: the tracker says when it is a seeder.
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        trackers: vec![tracker.udp_announce_url()],
        ..LibtorrentOptions::default()
    };
    let Some(mut leecher) = Libtorrent::download(&torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn libtorrent_seeder_dials_transmission_leecher() {
    let dir = TempDir::new("rc-lt-tr");
    let Some((data, torrent, tracker)) = single_file(&dir, 6, http) else {
        return;
    };
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download(&torrent, &dest) else {
        return;
    };
    // Transmission will not dial 127.0.0.1: the seeder must find it in its first announce reply
    // (opentracker's interval is ~30 min, so there is no second chance).
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one leecher", |s| {
        s.leechers >= 1
    });
    let Some(_seeder) = Libtorrent::seed(
        &torrent,
        &dir.path().join("seed"),
        &LibtorrentOptions::default(),
    ) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn transmission_seeds_libtorrent() {
    let dir = TempDir::new("rc-tr-lt");
    let Some((data, torrent, tracker)) = single_file(&dir, 7, udp) else {
        return;
    };
    let Some(_seeder) = Transmission::seed(&torrent, &dir.path().join("seed")) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Libtorrent::download(&torrent, &dest, &LibtorrentOptions::default())
    else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn libtorrent_dials_transmission_seeder_without_tracker() {
    let dir = TempDir::new("rc-tr-lt-peer");
    let data = content(SIZE, 8);
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    std::fs::write(seed_dir.join("data.bin"), &data).unwrap();
    let Some(torrent) = Torrent::create(
        &seed_dir.join("data.bin"),
        16,
        &dir.path().join("data.torrent"),
    ) else {
        return;
    };
    let Some(seeder) = Transmission::seed(&torrent, &seed_dir) else {
        return;
    };
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.addr()],
        // Plaintext only, as kp-torrent speaks it: Transmission must accept it.
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    };
    let Some(mut leecher) = Libtorrent::download(&torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}

#[test]
fn libtorrent_leecher_killed_midway_resumes_from_its_partial_data() {
    let dir = TempDir::new("rc-lt-resume");
    let Some((data, torrent, tracker)) = single_file(&dir, 9, http) else {
        return;
    };
    // Slow enough that the leecher is seen with some but not all pieces.
    let slow = LibtorrentOptions {
        upload_limit: 1024 * 1024,
        ..LibtorrentOptions::default()
    };
    let Some(_seeder) = Libtorrent::seed(&torrent, &dir.path().join("seed"), &slow) else {
        return;
    };
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "one seeder", |s| s.seeders >= 1);
    let dest = dir.path().join("dest");
    let mut first = Libtorrent::download(&torrent, &dest, &LibtorrentOptions::default())
        .expect("libtorrent was available for the seeder");
    let (had, total) = first.wait_progress(DONE, "some but not all pieces", |have, total| {
        have > 0 && have < total
    });
    first.kill();
    let mut second = Libtorrent::download(&torrent, &dest, &LibtorrentOptions::default())
        .expect("libtorrent was available for the seeder");
    // Its file check keeps what the first one verified.
    let (kept, _) = second.wait_progress(DONE, "checked", |have, _| have > 0);
    assert!(
        kept > 0 && kept < total,
        "restart kept {kept} of {total} pieces (had {had})"
    );
    second.wait_done(DONE);
    assert_same_file(&dest.join("data.bin"), &data);
}
