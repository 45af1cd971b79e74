//! End to end, our seeder to our leecher, as real processes of the built binary on 127.0.0.1:
//! directly with `--peer`, and through opentracker over HTTP and over UDP; a single file with a
//! partial last piece and a multi-file torrent of nested folders with an empty file.

use std::path::Path;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent, Opentracker, Torrent};

/// Bound for a few MiB over loopback, with room for a loaded machine.
const DONE: Duration = Duration::from_secs(25);
const SWARM: Duration = Duration::from_secs(10);

/// 3 MiB and a bit: the last 64 KiB piece is partial.
fn single(dir: &Path) -> Dataset {
    let data = Dataset::single(dir, "data.bin", 3 * 1024 * 1024 + 12_345, 64 * 1024, 11);
    assert_ne!(data.total_len() % data.spec.piece_length, 0);
    data
}

/// 24 files in nested folders (one empty, several smaller than a block, several spanning pieces)
/// with a partial last 32 KiB piece.
fn album(dir: &Path) -> Dataset {
    let folders = ["", "disc1/", "disc1/extras/", "disc2/deep/er/"];
    let mut files: Vec<(String, usize)> = (0..23)
        .map(|i| {
            let len = (i * 48_271 + 977) % 190_000 + i * 13;
            (
                format!("{}track{i:02}.bin", folders[i % folders.len()]),
                len,
            )
        })
        .collect();
    files.insert(7, ("disc1/empty.txt".to_string(), 0));
    let data = Dataset::multi(dir, "album", &files, 32 * 1024, 21);
    assert!(data.files.len() >= 20);
    assert_ne!(data.total_len() % data.spec.piece_length, 0);
    data
}

/// Seeds `torrent` from `data`, downloads it with `leecher_args` (plus the torrent and folder), and
/// checks the exit, the summary and every byte.
fn transfer(dir: &TempDir, data: &Dataset, torrent: &Torrent, tracker: Option<&Opentracker>) {
    let logs = dir.path();
    let seeder = KpTorrent::seed("seeder", &torrent.path, &data.source, &[], logs);
    let dest = dir.path().join("dest");
    let mut leecher = match tracker {
        Some(tracker) => {
            // Opentracker's interval is 30 minutes: the seeder must be listed before the leecher
            // asks, or nobody would ever dial anybody.
            tracker.wait_for_swarm(&torrent.info_hash, SWARM, "the seeder", |s| s.seeders >= 1);
            // The historic form `kp-torrent FILE.torrent -d DIR`.
            let args = [torrent.path.to_str().unwrap(), "-d", dest.to_str().unwrap()];
            KpTorrent::start("leecher", &args, logs)
        }
        None => KpTorrent::download(
            "leecher",
            &torrent.path,
            &dest,
            &["--peer", &seeder.addr()],
            logs,
        ),
    };
    leecher.wait_success(DONE);
    let summary = leecher
        .summary()
        .unwrap_or_else(|| leecher.fail("no summary line"));
    assert!(
        summary.starts_with(&format!("{}: done, ", data.spec.name)),
        "{summary}"
    );
    assert!(summary.contains("1 peer used"), "{summary}");
    assert!(!leecher.log().contains("panicked"));
    data.assert_same(&dest);
    if let Some(tracker) = tracker {
        // The leecher told the tracker `completed` before it exited (counted as a download),
        // then `stopped`, which takes it off the list: only the seeder remains.
        tracker.wait_for_swarm(
            &torrent.info_hash,
            SWARM,
            "one completed download and only the seeder",
            |s| s.downloaded == 1 && s.seeders == 1 && s.leechers == 0,
        );
    }
    drop(seeder);
}

#[test]
fn single_file_with_peer_option() {
    let dir = TempDir::new("e2e-peer-single");
    let data = single(dir.path());
    transfer(&dir, &data, &data.torrent, None);
}

#[test]
fn multi_file_with_peer_option() {
    let dir = TempDir::new("e2e-peer-multi");
    let data = album(dir.path());
    transfer(&dir, &data, &data.torrent, None);
}

fn through_tracker(label: &str, data: fn(&Path) -> Dataset, udp: bool) {
    let dir = TempDir::new(label);
    let data = data(dir.path());
    let Some(tracker) = Opentracker::start(&[data.torrent.info_hash]) else {
        return;
    };
    let url = if udp {
        tracker.udp_announce_url()
    } else {
        tracker.http_announce_url()
    };
    let torrent = data
        .torrent
        .with_announce(&url, &dir.path().join("tracked.torrent"));
    transfer(&dir, &data, &torrent, Some(&tracker));
}

#[test]
fn single_file_through_http_tracker() {
    through_tracker("e2e-http-single", single, false);
}

#[test]
fn multi_file_through_http_tracker() {
    through_tracker("e2e-http-multi", album, false);
}

#[test]
fn single_file_through_udp_tracker() {
    through_tracker("e2e-udp-single", single, true);
}

#[test]
fn multi_file_through_udp_tracker() {
    through_tracker("e2e-udp-multi", album, true);
}
