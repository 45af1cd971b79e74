//! Faults in the middle of a download, through the built binary: the destination's disk fills up,
//! turns read-only or is deleted, a peer vanishes half way through a block, every tracker is
//! down. Each failure ends the run with status 1 and one line `kp-torrent: TORRENT: what
//! happened` (with `--quiet`), never a panic; the pieces verified before it stay on disk, and the
//! next run fetches only what was missing and ends with the original bytes.
//!
//! The disk faults run the leecher inside a private mount namespace holding a small tmpfs
//! ([`MountNs`], root only: skipped elsewhere unless `KP_REQUIRE_TOOLS=1`). The seeder runs
//! outside, throttled to 1 MiB/s, so a 6 MiB download lasts about six seconds: time to strike
//! after a quarter of it is verified on disk.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::kp::{binary, parse_size};
use kp_torrent_tests::real::{
    Dataset, KpTorrent, MountNs, RealProcess, Torrent, free_port, wait_for,
};

const SIZE: usize = 6 * 1024 * 1024 + 777;
const PIECE: u64 = 64 * 1024;
/// At 1 MiB/s the 6 MiB torrent takes about 6 s.
const SEED_LIMIT: &str = "1M";
/// A whole download, with room for a loaded machine.
const DONE: Duration = Duration::from_secs(30);
/// From the fault to the exit of the failing run.
const FAIL_EXIT: Duration = Duration::from_secs(20);

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn seeder(dir: &TempDir, data: &Dataset) -> KpTorrent {
    KpTorrent::seed(
        "seeder",
        &data.torrent.path,
        &data.source,
        &["--upload-limit", SEED_LIMIT],
        dir.path(),
    )
}

/// Starts `kp-torrent download TORRENT -d DEST --peer ... --bind 127.0.0.1 --port 0`, inside
/// `ns` when given. `--quiet` for a run expected to fail (its output must be the error line);
/// without it a successful run prints the summary whose byte count the tests check.
fn leech(
    ns: Option<&MountNs>,
    name: &str,
    torrent: &Path,
    dest: &Path,
    peers: &[String],
    extra: &[&str],
    log_dir: &Path,
) -> RealProcess {
    let mut args: Vec<String> = ["download", s(torrent), "-d", s(dest)]
        .map(String::from)
        .to_vec();
    for p in peers {
        args.extend(["--peer".to_string(), p.clone()]);
    }
    args.extend(["--bind", "127.0.0.1", "--port", "0", "--no-dht"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    match ns {
        Some(ns) => ns.spawn(name, &binary(), &args, log_dir),
        None => RealProcess::spawn(name, &binary(), &args, log_dir),
    }
}

/// Waits until at least a quarter of the data is verified in `dest` (as this process sees it)
/// while the download still runs.
fn part_way(run: &mut RealProcess, data: &Dataset, dest: &Path) {
    let quarter = data.total_len() / 4;
    let reached = wait_for(DONE, || {
        if data.verified_on_disk(dest).1 >= quarter {
            return Some(true);
        }
        run.exit_status().map(|_| false)
    });
    match reached {
        Some(true) => {}
        Some(false) => run.fail("exited before a quarter of the data was verified"),
        None => run.fail("a quarter of the data never arrived"),
    }
}

/// Waits for a run that must fail and returns its error line, after checking: status 1, no
/// panic, exactly one `kp-torrent: ` line and it is the last. With `only_line`, it must also be
/// the only line; without, the other lines may only be log records (`[time LEVEL target] ...`).
fn error_line(run: &mut RealProcess, only_line: bool) -> String {
    let status = wait_for(FAIL_EXIT, || run.exit_status())
        .unwrap_or_else(|| run.fail(&format!("still running {FAIL_EXIT:?} after the fault")));
    let log = run.log();
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    assert_eq!(status.code(), Some(1), "{status}, output:\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("kp-torrent: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{log}");
    assert_eq!(
        lines.last(),
        Some(&errors[0]),
        "the error line is not last:\n{log}"
    );
    if only_line {
        assert_eq!(lines.len(), 1, "expected only the error line, got:\n{log}");
    } else {
        for l in &lines[..lines.len() - 1] {
            assert!(
                l.starts_with('['),
                "a line that is neither the error nor a log record: {l}\n{log}"
            );
        }
    }
    errors[0].to_string()
}

/// Bytes the `NAME: done, SIZE in TIME ...` summary says were downloaded.
fn summary_downloaded(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(": done, "))?;
    parse_size(line.split(": done, ").nth(1)?.split(" in ").next()?)
}

/// Runs the leecher again (inside `ns` when given) with the seeder until it exits 0, checks the
/// data is the original and that it downloaded no more than what was missing when `kept` bytes
/// were verified (plus a few pieces of slack for blocks in flight and the summary's rounding).
/// `within` bounds the run.
#[allow(clippy::too_many_arguments)]
fn finish_again(
    ns: Option<&MountNs>,
    dir: &TempDir,
    torrent: &Path,
    data: &Dataset,
    dest: &Path,
    seen_dest: &Path,
    seeder: &KpTorrent,
    kept: u64,
    within: Duration,
) {
    let mut again = leech(
        ns,
        "leecher-run2",
        torrent,
        dest,
        &[seeder.addr()],
        &[],
        dir.path(),
    );
    let status = wait_for(within, || again.exit_status())
        .unwrap_or_else(|| again.fail(&format!("still running after {within:?}")));
    let log = again.log();
    if !status.success() || log.contains("panicked") || log.contains("kp-torrent: ") {
        again.fail(&format!("the second run failed: {status}"));
    }
    data.assert_same(seen_dest);
    let downloaded = summary_downloaded(&log).unwrap_or_else(|| again.fail("no summary line"));
    let size = data.total_len();
    let missing = size - kept;
    eprintln!("second run: downloaded {downloaded} of {size} bytes, {missing} were missing");
    assert!(
        downloaded <= missing + 4 * PIECE + size / 200,
        "the second run downloaded {downloaded} bytes, but only {missing} of {size} were missing"
    );
}

/// The disk fills up (another file takes the last free byte) a quarter into the download.
fn disk_full(only_line: bool) {
    let dir = TempDir::new("e2e-fault-full");
    let Some(ns) = MountNs::tmpfs(&dir.path().join("mnt"), "16m", dir.path()) else {
        return;
    };
    let data = Dataset::single(dir.path(), "movie.bin", SIZE, PIECE, 41);
    let seeder = seeder(&dir, &data);
    let dest = ns.mount_point().join("dest");
    let seen = ns.outside(&dest);
    let torrent = &data.torrent.path;
    // Sparse files: with their space reserved at the start (the default) the disk could not
    // fill up under the download.
    let mut run = leech(
        Some(&ns),
        "leecher-run1",
        torrent,
        &dest,
        &[seeder.addr()],
        &["--quiet", "--sparse"],
        dir.path(),
    );
    part_way(&mut run, &data, &seen);
    let filler = ns.mount_point().join("filler");
    let filled = ns.fill("filler");
    eprintln!("filler took the last {filled} bytes");
    let line = error_line(&mut run, only_line);
    assert!(
        line.contains("disk full") && line.contains("movie.bin") && line.contains("run again"),
        "{line}"
    );
    let (_, kept) = data.verified_on_disk(&seen);
    assert!(
        kept >= data.total_len() / 4,
        "verified pieces were lost: {kept} bytes left"
    );
    assert!(kept < data.total_len(), "finished before the disk was full");
    ns.run_ok("rm", &[s(&filler)]);
    finish_again(
        Some(&ns),
        &dir,
        torrent,
        &data,
        &dest,
        &seen,
        &seeder,
        kept,
        DONE,
    );
}

/// By default a download reserves its files' space first: a torrent bigger than the free space
/// fails at once with the one disk-full line, and gives back what it had reserved.
#[test]
fn a_torrent_bigger_than_the_free_space_fails_at_the_start() {
    let dir = TempDir::new("e2e-fault-prealloc");
    let Some(ns) = MountNs::tmpfs(&dir.path().join("mnt"), "4m", dir.path()) else {
        return;
    };
    let data = Dataset::single(dir.path(), "movie.bin", SIZE, PIECE, 44);
    let dest = ns.mount_point().join("dest");
    let seen = ns.outside(&dest);
    let mut run = leech(
        Some(&ns),
        "leecher",
        &data.torrent.path,
        &dest,
        &[],
        &["--quiet"],
        dir.path(),
    );
    let line = error_line(&mut run, true);
    assert!(
        line.contains("disk full") && line.contains("movie.bin"),
        "{line}"
    );
    let file = seen.join("movie.bin");
    let len = std::fs::metadata(&file).map_or(0, |m| m.len());
    assert_eq!(len, 0, "the reserved space was not given back");
    // Sparse, the same run starts (and would fail only when a write does).
    let mut run = leech(
        Some(&ns),
        "leecher-sparse",
        &data.torrent.path,
        &dest,
        &[],
        &["--quiet", "--sparse", "--timeout", "2"],
        dir.path(),
    );
    let status = wait_for(DONE, || run.exit_status()).expect("the sparse run never ended");
    let log = run.log();
    assert!(!log.contains("disk full"), "{log}");
    assert!(!status.success(), "nothing to download from, yet: {log}");
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len()).ok(),
        Some(SIZE as u64),
        "{log}"
    );
}

#[test]
fn disk_full_mid_download_stops_with_an_error_and_the_next_run_resumes() {
    disk_full(false);
}

#[test]
fn disk_full_mid_download_prints_one_line_only() {
    disk_full(true);
}

/// The destination turns read-only a quarter into the download. Linux refuses to remount a
/// filesystem read-only while a file on it is open for writing, so a read-only bind of the
/// destination is mounted over it: every open from then on fails with EROFS. The torrent has more
/// files (200) than the leecher keeps open (128), so it soon opens one and fails.
fn read_only(only_line: bool) {
    let dir = TempDir::new("e2e-fault-ro");
    let Some(ns) = MountNs::tmpfs(&dir.path().join("mnt"), "32m", dir.path()) else {
        return;
    };
    let files: Vec<(String, usize)> = (0..200)
        .map(|i| (format!("part{i:03}.bin"), 32 * 1024 + 13))
        .collect();
    let data = Dataset::multi(dir.path(), "set", &files, PIECE, 43);
    let seeder = seeder(&dir, &data);
    let dest = ns.mount_point().join("dest");
    let seen = ns.outside(&dest);
    let torrent = &data.torrent.path;
    let mut run = leech(
        Some(&ns),
        "leecher-run1",
        torrent,
        &dest,
        &[seeder.addr()],
        &["--quiet"],
        dir.path(),
    );
    part_way(&mut run, &data, &seen);
    ns.bind_read_only(&dest);
    let line = error_line(&mut run, only_line);
    assert!(
        line.contains("Read-only file system") && line.contains("/dest/set/part"),
        "{line}"
    );
    let (_, kept) = data.verified_on_disk(&seen);
    assert!(
        kept >= data.total_len() / 4,
        "verified pieces were lost: {kept} bytes left"
    );
    assert!(
        kept < data.total_len(),
        "finished before the folder turned read-only"
    );
    ns.unmount(&dest);
    finish_again(
        Some(&ns),
        &dir,
        torrent,
        &data,
        &dest,
        &seen,
        &seeder,
        kept,
        DONE,
    );
}

#[test]
fn destination_read_only_mid_download_stops_with_an_error_and_the_next_run_resumes() {
    read_only(false);
}

#[test]
fn destination_read_only_mid_download_prints_one_line_only() {
    read_only(true);
}

/// The destination folder is deleted a quarter into the download (no namespace needed). The data
/// is gone, so the next run fetches everything again; the first must not claim success.
fn deleted(only_line: bool) {
    let dir = TempDir::new("e2e-fault-deleted");
    let data = Dataset::single(dir.path(), "movie.bin", SIZE, PIECE, 47);
    let seeder = seeder(&dir, &data);
    let dest = dir.path().join("dest");
    let torrent = &data.torrent.path;
    let mut run = leech(
        None,
        "leecher-run1",
        torrent,
        &dest,
        &[seeder.addr()],
        &["--quiet"],
        dir.path(),
    );
    part_way(&mut run, &data, &dest);
    std::fs::remove_dir_all(&dest).expect("delete the destination");
    let line = error_line(&mut run, only_line);
    assert!(
        line.contains("dest/movie.bin was deleted or moved during the download"),
        "{line}"
    );
    assert!(!dest.exists(), "the deleted destination was made again");
    finish_again(None, &dir, torrent, &data, &dest, &dest, &seeder, 0, DONE);
}

#[test]
fn destination_deleted_mid_download_stops_with_an_error_and_the_next_run_fetches_it_anew() {
    deleted(false);
}

#[test]
fn destination_deleted_mid_download_prints_one_line_only() {
    deleted(true);
}

/// One file of a multi-file download is deleted after all its blocks were written, while other
/// files still download. Nothing writes to it again, so only a look at the files before the end
/// can notice: the run must not end with "done" and status 0 while the file is gone.
#[test]
fn a_finished_file_deleted_mid_download_is_not_reported_done() {
    let dir = TempDir::new("e2e-fault-deleted-file");
    let files: Vec<(String, usize)> = (0..24)
        .map(|i| (format!("part{i:02}.bin"), 256 * 1024 + 7))
        .collect();
    let data = Dataset::multi(dir.path(), "set", &files, PIECE, 61);
    let seeder = seeder(&dir, &data);
    let dest = dir.path().join("dest");
    let torrent = &data.torrent.path;
    let mut run = leech(
        None,
        "leecher-run1",
        torrent,
        &dest,
        &[seeder.addr()],
        &["--quiet"],
        dir.path(),
    );
    // The first file to be complete, while the download goes on.
    let complete = |run: &mut RealProcess| {
        if run.exit_status().is_some() {
            return Some(None);
        }
        data.files
            .iter()
            .map(|(path, bytes)| (data.file_path(&dest, path), bytes))
            .find(|(file, bytes)| std::fs::read(file).is_ok_and(|got| got == **bytes))
            .map(|(file, _)| Some(file))
    };
    let finished = match wait_for(DONE, || complete(&mut run)) {
        Some(Some(file)) => file,
        Some(None) => run.fail("exited before a file was complete"),
        None => run.fail("no file complete"),
    };
    std::fs::remove_file(&finished).expect("delete a finished file");
    let line = error_line(&mut run, true);
    let name = finished
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        line.contains(name) && line.contains("was deleted or moved during the download"),
        "{line}"
    );
    let (_, kept) = data.verified_on_disk(&dest);
    finish_again(
        None, &dir, torrent, &data, &dest, &dest, &seeder, kept, DONE,
    );
}

/// Every tracker is down (an HTTP one refuses connections, a UDP one never answers); the only
/// peer is a throttled seeder given with `--peer`, too slow to finish before `--timeout 3`. The
/// run times out naming the last tracker error; the next one, same torrent, finishes.
#[test]
fn every_tracker_down_times_out_naming_the_last_error_and_the_next_run_finishes() {
    let dir = TempDir::new("e2e-fault-trackers");
    let data = Dataset::single(dir.path(), "movie.bin", SIZE, PIECE, 53);
    let seeder = seeder(&dir, &data);
    // Nobody listens on the HTTP port; the UDP socket is bound but never read.
    let http = format!("http://127.0.0.1:{}/announce", free_port());
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP port");
    let udp = format!(
        "udp://{}/announce",
        silent.local_addr().expect("local addr")
    );
    let mut spec = data.spec.clone();
    spec.trackers = vec![vec![http.clone()], vec![udp]];
    let torrent = Torrent::from_spec(&spec, &dir.path().join("dead-trackers.torrent"));
    assert_eq!(torrent.info_hash, data.torrent.info_hash);
    let dest = dir.path().join("dest");
    let mut run = leech(
        None,
        "leecher-run1",
        &torrent.path,
        &dest,
        &[seeder.addr()],
        &["--timeout", "3", "--quiet"],
        dir.path(),
    );
    let line = error_line(&mut run, true);
    assert!(line.contains("timed out after 3s with "), "{line}");
    assert!(
        line.contains(&format!("(last tracker error: {http}: cannot connect")),
        "{line}"
    );
    let (_, kept) = data.verified_on_disk(&dest);
    assert!(kept > 0, "nothing arrived from the seeder in 3 s");
    assert!(kept < data.total_len(), "finished before the timeout");
    // A finished download waits up to 15 s for a `completed` announce no tracker will take.
    let within = DONE + Duration::from_secs(25);
    finish_again(
        None,
        &dir,
        &torrent.path,
        &data,
        &dest,
        &dest,
        &seeder,
        kept,
        within,
    );
    drop(silent);
}

/// What the half-block peer did.
#[derive(Debug)]
struct Served {
    requests: usize,
    full_blocks: usize,
}

/// A fake seeder on 127.0.0.1: accepts one connection, handshakes, offers every piece, unchokes,
/// answers `full_blocks` requests with their blocks, then sends the header and half the payload
/// of the next block and closes the connection. Its listener closes with it, so redials fail.
struct HalfBlockPeer {
    addr: String,
    thread: JoinHandle<Result<Served, String>>,
}

impl HalfBlockPeer {
    fn start(data: &Dataset, full_blocks: usize) -> HalfBlockPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake peer");
        let addr = listener.local_addr().expect("local addr").to_string();
        let bytes = Arc::new(data.all_bytes());
        let info_hash = data.torrent.info_hash.0;
        let pieces = data.spec.piece_hashes.len();
        let piece_len = data.spec.piece_length;
        let thread = std::thread::spawn(move || {
            let stream = accept_within(&listener, Duration::from_secs(15))?;
            drop(listener);
            serve_then_vanish(stream, info_hash, pieces, piece_len, &bytes, full_blocks)
        });
        HalfBlockPeer { addr, thread }
    }

    fn served(self) -> Served {
        match self.thread.join() {
            Ok(Ok(served)) => served,
            Ok(Err(e)) => panic!("the half-block peer: {e}"),
            Err(_) => panic!("the half-block peer panicked"),
        }
    }
}

fn accept_within(listener: &TcpListener, limit: Duration) -> Result<TcpStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("no connection within {limit:?}: {e}")),
        }
    }
}

fn message(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = (payload.len() as u32 + 1).to_be_bytes().to_vec();
    m.push(id);
    m.extend_from_slice(payload);
    m
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn serve_then_vanish(
    mut stream: TcpStream,
    info_hash: [u8; 20],
    pieces: usize,
    piece_len: u64,
    bytes: &[u8],
    full_blocks: usize,
) -> Result<Served, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io("timeout"))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io("timeout"))?;
    let mut theirs = [0u8; 68];
    stream
        .read_exact(&mut theirs)
        .map_err(io("read handshake"))?;
    if theirs[28..48] != info_hash {
        return Err("handshake for another torrent".into());
    }
    let mut hello = vec![19u8];
    hello.extend_from_slice(b"BitTorrent protocol");
    hello.extend_from_slice(&[0; 8]);
    hello.extend_from_slice(&info_hash);
    hello.extend_from_slice(b"-KPFAKE-halfblock-00");
    let mut bits = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bits[i / 8] |= 0x80 >> (i % 8);
    }
    hello.extend(message(5, &bits));
    hello.extend(message(1, &[]));
    stream.write_all(&hello).map_err(io("write handshake"))?;
    let mut served = Served {
        requests: 0,
        full_blocks: 0,
    };
    loop {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(io("read length"))?;
        let len = be32(&len) as usize;
        if len > 1 << 20 {
            return Err(format!("a message of {len} bytes"));
        }
        let mut msg = vec![0u8; len];
        stream.read_exact(&mut msg).map_err(io("read message"))?;
        if len != 13 || msg[0] != 6 {
            continue; // keep-alive, interested, have...: not a request
        }
        served.requests += 1;
        let (index, begin, length) = (be32(&msg[1..]), be32(&msg[5..]), be32(&msg[9..]));
        let start = (u64::from(index) * piece_len + u64::from(begin)) as usize;
        let block = bytes
            .get(start..start + length as usize)
            .ok_or_else(|| format!("a request past the end: {index} {begin} {length}"))?;
        let mut piece = (9 + length).to_be_bytes().to_vec();
        piece.push(7);
        piece.extend_from_slice(&index.to_be_bytes());
        piece.extend_from_slice(&begin.to_be_bytes());
        if served.full_blocks < full_blocks {
            piece.extend_from_slice(block);
            stream.write_all(&piece).map_err(io("write block"))?;
            served.full_blocks += 1;
            continue;
        }
        piece.extend_from_slice(&block[..block.len() / 2]);
        stream.write_all(&piece).map_err(io("write half a block"))?;
        stream.flush().map_err(io("flush"))?;
        let _ = stream.shutdown(Shutdown::Both);
        return Ok(served);
    }
}

/// A peer that sends a few blocks, then half of one and vanishes; a real seeder has the rest. The
/// download finishes with the original bytes and prints nothing (`--quiet`).
#[test]
fn a_peer_vanishing_mid_block_does_not_spoil_the_download() {
    let dir = TempDir::new("e2e-fault-halfblock");
    let data = Dataset::single(dir.path(), "movie.bin", 3 * 1024 * 1024 + 5, PIECE, 59);
    let fake = HalfBlockPeer::start(&data, 3);
    let seeder = seeder(&dir, &data);
    let dest = dir.path().join("dest");
    let mut run = leech(
        None,
        "leecher",
        &data.torrent.path,
        &dest,
        &[fake.addr.clone(), seeder.addr()],
        // The fake peer reads a plain handshake from its one TCP connection.
        &["--quiet", "--encryption", "disable", "--no-utp"],
        dir.path(),
    );
    let status = wait_for(DONE, || run.exit_status())
        .unwrap_or_else(|| run.fail(&format!("still running after {DONE:?}")));
    let served = fake.served();
    eprintln!("the half-block peer: {served:?}");
    assert!(
        served.requests > served.full_blocks,
        "the leecher never asked the fake peer for the block it cut"
    );
    let log = run.log();
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.trim().is_empty(), "--quiet printed something:\n{log}");
    data.assert_same(&dest);
}
