//! Interrupted and damaged downloads, as real processes of the built binary: a leecher killed with
//! `kill -9` or stopped with SIGTERM finishes on the next run without fetching again what it had
//! verified, and a file damaged on disk after a download is found by the check and repaired.

use std::path::Path;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent, wait_for};

const DONE: Duration = Duration::from_secs(25);
/// At 1 MiB/s the 6 MiB torrent takes about 6 s: time to interrupt it part way.
const SEED_LIMIT: &str = "1M";
const SIZE: usize = 6 * 1024 * 1024 + 777;
const PIECE: u64 = 64 * 1024;

/// Starts a throttled seeder of a fresh 6 MiB file and a leecher, and waits until at least a
/// quarter of the pieces are verified on disk (but not all).
fn part_way(dir: &TempDir) -> (Dataset, KpTorrent, KpTorrent) {
    let data = Dataset::single(dir.path(), "movie.bin", SIZE, PIECE, 77);
    let seeder = KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--upload-limit", SEED_LIMIT],
        dir.path(),
    );
    let leecher = KpTorrent::download(
        "leecher-run1",
        &data.torrent.path,
        &dest(dir),
        &["--peer", &seeder.addr()],
        dir.path(),
    );
    let quarter = data.total_len() / 4;
    wait_for(DONE, || {
        (data.verified_on_disk(&dest(dir)).1 >= quarter).then_some(())
    })
    .unwrap_or_else(|| leecher.fail("a quarter of the data never arrived"));
    (data, seeder, leecher)
}

fn dest(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("dest")
}

/// Runs the leecher again to the end and checks it fetched no more than what was missing (plus a
/// few pieces of slack for blocks in flight and rounding in the summary).
fn finish_again(dir: &TempDir, data: &Dataset, seeder: &KpTorrent, kept: u64) {
    let mut again = KpTorrent::download(
        "leecher-run2",
        &data.torrent.path,
        &dest(dir),
        &["--peer", &seeder.addr()],
        dir.path(),
    );
    again.wait_success(DONE);
    data.assert_same(&dest(dir));
    let downloaded = again
        .summary_downloaded()
        .unwrap_or_else(|| again.fail("no summary line"));
    let size = data.total_len();
    let missing = size - kept;
    eprintln!("second run: downloaded {downloaded} of {size} bytes, {missing} were missing");
    assert!(
        downloaded <= missing + 4 * PIECE + size / 200,
        "the second run downloaded {downloaded} bytes, but only {missing} of {size} were missing"
    );
}

#[test]
fn kill_9_mid_download_then_resume() {
    let dir = TempDir::new("e2e-kill9");
    let (data, seeder, mut leecher) = part_way(&dir);
    leecher.kill();
    let (_, kept) = data.verified_on_disk(&dest(&dir));
    assert!(
        kept < data.total_len(),
        "the download finished before it was killed: raise the size or lower the limit"
    );
    finish_again(&dir, &data, &seeder, kept);
}

#[test]
fn sigterm_exits_130_then_a_new_run_resumes() {
    let dir = TempDir::new("e2e-sigterm");
    let (data, seeder, mut leecher) = part_way(&dir);
    leecher.signal("TERM");
    let status = leecher.wait_exit(Duration::from_secs(10));
    if status.code() != Some(130) {
        leecher.fail(&format!("exited with {status} on SIGTERM, expected 130"));
    }
    let log = leecher.log();
    assert!(
        log.contains("interrupted with") && !log.contains("panicked"),
        "{log}"
    );
    let (_, kept) = data.verified_on_disk(&dest(&dir));
    assert!(kept < data.total_len(), "finished before SIGTERM");
    finish_again(&dir, &data, &seeder, kept);
}

/// Flips a few bytes in the middle of `file`.
fn corrupt(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read file to corrupt");
    assert!(bytes.len() > 100, "{} too small to corrupt", file.display());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 10] {
        *b ^= 0x5a;
    }
    std::fs::write(file, bytes).expect("write corrupted file");
}

#[test]
fn damaged_file_is_found_by_the_check_and_repaired() {
    let dir = TempDir::new("e2e-corrupt");
    let files: Vec<(String, usize)> = vec![
        ("a.bin".into(), 700_000),
        ("sub/b.bin".into(), 1_300_000),
        ("sub/empty".into(), 0),
        ("sub/deeper/c.bin".into(), 900_001),
    ];
    let data = Dataset::multi(dir.path(), "set", &files, 32 * 1024, 9);
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let mut first = KpTorrent::download(
        "leecher-run1",
        &data.torrent.path,
        &dest(&dir),
        &["--peer", &seeder.addr()],
        dir.path(),
    );
    first.wait_success(DONE);
    data.assert_same(&dest(&dir));

    let damaged = data.file_path(&dest(&dir), &["sub".into(), "b.bin".into()]);
    corrupt(&damaged);
    let (_, kept) = data.verified_on_disk(&dest(&dir));
    assert!(kept < data.total_len());

    let mut second = KpTorrent::download(
        "leecher-run2",
        &data.torrent.path,
        &dest(&dir),
        &["--peer", &seeder.addr()],
        dir.path(),
    );
    second.wait_success(DONE);
    data.assert_same(&dest(&dir));
    let downloaded = second
        .summary_downloaded()
        .unwrap_or_else(|| second.fail("no summary line"));
    eprintln!("repair: downloaded {downloaded} bytes");
    assert!(
        downloaded > 0,
        "the damage was not repaired from the seeder"
    );
    assert!(
        downloaded <= 4 * 32 * 1024,
        "{downloaded} bytes downloaded to repair ten bytes: the check should keep the rest"
    );
}
