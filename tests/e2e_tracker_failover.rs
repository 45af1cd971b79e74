//! A tracker that does not answer must not hold up the others (BEP 12 tiers): a kp-torrent
//! seeder announces to opentracker; the leecher's torrent (same info dictionary, so same
//! info-hash) lists a tracker that never answers in tier 0 and opentracker in tier 1. The leecher
//! runs the real binary with `--timeout 20` and must finish with the right bytes: a UDP tracker
//! that drops every datagram, an HTTP tracker that accepts and never replies, and host names under
//! `.invalid` (RFC 6761: they never resolve), over HTTP and UDP; and all of them in one tier.

use std::path::Path;
use std::time::{Duration, Instant};

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Dataset, KpTorrent, Opentracker, SilentTcpTracker, SilentUdpTracker, Torrent,
};

/// How long the seeder may take to appear in the tracker's counts.
const SWARM: Duration = Duration::from_secs(10);
/// The leecher's own `--timeout`: the bound the issue sets for peers from a working tier 1.
const TIMEOUT_SECS: &str = "20";
/// How long the test waits for the leecher to exit: its timeout, plus the `completed` announce
/// and shutdown (`stopped` waits 5 s at most).
const EXIT: Duration = Duration::from_secs(45);

/// Seeds `data` through opentracker, downloads it with a torrent whose tiers are `tier0` then the
/// same opentracker (over HTTP or UDP), and checks the bytes. False when skipped (no opentracker
/// outside CI).
fn leecher_reaches_tier_1(label: &str, tier0: &[String], tier1_udp: bool) -> bool {
    let dir = TempDir::new(label);
    let data = Dataset::single(
        dir.path(),
        "failover.bin",
        6 * 1024 * 1024 + 777,
        256 * 1024,
        11,
    );
    let Some(tracker) = Opentracker::start(&[data.torrent.info_hash]) else {
        return false;
    };
    let seeder_torrent = data.torrent.with_announce(
        &tracker.http_announce_url(),
        &dir.path().join("seeder.torrent"),
    );
    let _seeder = KpTorrent::seed(
        "seeder",
        &seeder_torrent.path,
        &data.source,
        &[],
        dir.path(),
    );
    tracker.wait_for_swarm(&data.torrent.info_hash, SWARM, "the seeder", |s| {
        s.seeders >= 1
    });

    let tier1 = if tier1_udp {
        tracker.udp_announce_url()
    } else {
        tracker.http_announce_url()
    };
    let leecher_torrent = with_tiers(
        &data,
        vec![tier0.to_vec(), vec![tier1]],
        &dir.path().join("leecher.torrent"),
    );
    assert_eq!(leecher_torrent.info_hash, data.torrent.info_hash);
    let dest = dir.path().join("dest");
    let started = Instant::now();
    let mut leecher = KpTorrent::download(
        "leecher",
        &leecher_torrent.path,
        &dest,
        &["--timeout", TIMEOUT_SECS],
        dir.path(),
    );
    leecher.wait_success(EXIT);
    eprintln!(
        "{label}: leecher done and exited {:.1} s after start; {}",
        started.elapsed().as_secs_f64(),
        leecher.summary().unwrap_or_default()
    );
    data.assert_same(&dest);
    let got = leecher
        .summary_downloaded()
        .unwrap_or_else(|| leecher.fail("no summary line"));
    // The summary rounds to three significant digits.
    let size = data.total_len();
    assert!(
        got.abs_diff(size) <= size / 100,
        "summary says {got} bytes downloaded, the torrent has {size}"
    );
    true
}

/// The torrent of `data` with `tiers` as its announce-list (the info dictionary is unchanged).
fn with_tiers(data: &Dataset, tiers: Vec<Vec<String>>, out: &Path) -> Torrent {
    let mut spec = data.spec.clone();
    spec.trackers = tiers;
    Torrent::from_spec(&spec, out)
}

#[test]
fn silent_udp_tracker_in_tier_0() {
    let dead = SilentUdpTracker::start();
    if leecher_reaches_tier_1("failover-udp", &[dead.url()], true) {
        assert!(
            dead.datagrams() > 0,
            "the leecher never tried the tier 0 UDP tracker"
        );
    }
}

#[test]
fn tcp_tracker_that_accepts_and_never_answers_in_tier_0() {
    let dead = SilentTcpTracker::start();
    if leecher_reaches_tier_1("failover-tcp", &[dead.url()], false) {
        assert!(
            dead.connections() > 0,
            "the leecher never connected to the tier 0 HTTP tracker"
        );
    }
}

#[test]
fn unresolvable_hosts_in_tier_0() {
    let tier0 = [
        "http://no-such-tracker.invalid/announce".to_string(),
        "udp://no-such-tracker.invalid:6969/announce".to_string(),
    ];
    leecher_reaches_tier_1("failover-dns", &tier0, true);
}

#[test]
fn every_kind_of_dead_tracker_in_one_tier_0() {
    let udp = SilentUdpTracker::start();
    let tcp = SilentTcpTracker::start();
    let tier0 = [
        udp.url(),
        tcp.url(),
        "http://no-such-tracker.invalid/announce".to_string(),
        "udp://no-such-tracker.invalid:6969/announce".to_string(),
    ];
    leecher_reaches_tier_1("failover-mixed", &tier0, false);
}
