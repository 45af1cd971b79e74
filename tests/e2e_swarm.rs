//! One seeder and four leechers joining one after another through opentracker, as real processes
//! of the built binary: all finish with the right data, and the leechers trade pieces among
//! themselves instead of each taking the whole torrent from the seeder.

use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent, Opentracker};

const SWARM: Duration = Duration::from_secs(10);
const DONE: Duration = Duration::from_secs(25);
const LEECHERS: usize = 4;

#[test]
fn four_leechers_share_pieces_from_a_throttled_seeder() {
    let dir = TempDir::new("e2e-swarm");
    let data = Dataset::single(
        dir.path(),
        "swarm.bin",
        4 * 1024 * 1024 + 4321,
        64 * 1024,
        5,
    );
    let Some(tracker) = Opentracker::start(&[data.torrent.info_hash]) else {
        return;
    };
    let torrent = data.torrent.with_announce(
        &tracker.http_announce_url(),
        &dir.path().join("tracked.torrent"),
    );
    // The limit makes the seeder the bottleneck: the leechers only finish in time by passing
    // pieces on.
    let mut seeder = KpTorrent::seed(
        "seeder",
        &torrent.path,
        &data.source,
        &["--upload-limit", "1M"],
        dir.path(),
    );
    // Opentracker's interval is 30 minutes: whoever must be dialled announces first.
    tracker.wait_for_swarm(&torrent.info_hash, SWARM, "the seeder", |s| s.seeders >= 1);
    let mut leechers = Vec::new();
    for i in 0..LEECHERS {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(750));
        }
        let dest = dir.path().join(format!("dest{i}"));
        let name = format!("leecher{i}");
        leechers.push((
            KpTorrent::download(&name, &torrent.path, &dest, &[], dir.path()),
            dest,
        ));
    }
    for (leecher, dest) in &mut leechers {
        leecher.wait_success(DONE);
        if leecher.summary().is_none() {
            leecher.fail("no summary line");
        }
        data.assert_same(dest);
    }

    seeder.signal("TERM");
    let status = seeder.wait_exit(SWARM);
    if !status.success() {
        seeder.fail(&format!("seeder exited with {status} on SIGTERM"));
    }
    let uploaded = seeder
        .seed_uploaded()
        .unwrap_or_else(|| seeder.fail("no `stopped seeding` line with the upload total"));
    let size = data.total_len();
    eprintln!("the seeder uploaded {uploaded} bytes for {LEECHERS} leechers of {size}");
    // Four complete copies left the swarm; if the seeder sent less than two, at least half of
    // the data the leechers got came from each other.
    assert!(
        uploaded < 2 * size,
        "the seeder uploaded {uploaded} bytes for {LEECHERS} leechers of {size}: pieces did not flow between leechers"
    );
    assert!(
        uploaded >= size,
        "the seeder uploaded {uploaded} bytes, less than one copy of {size}: its total is wrong"
    );
}
