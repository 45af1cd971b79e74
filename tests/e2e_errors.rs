//! Errors a user can hit, through the built binary: each ends the run with status 1 and one line
//! `kp-torrent: SUBJECT: what is wrong` on stderr, never a panic. (SIGTERM during a download, exit
//! 130, is in `e2e_resume.rs`.)

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::kp::binary;
use kp_torrent_tests::real::{Dataset, RealProcess, free_port, wait_for};

/// Runs `kp-torrent ARGS` in `dir` and returns its only output line, after checking the status
/// is 1, the output is that one line, and nothing panicked.
fn one_line_error(dir: &Path, name: &str, args: &[&str]) -> String {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if matches!(args.first().map(String::as_str), Some("download" | "seed")) {
        args.push("--no-dht".into());
    }
    let mut p = RealProcess::spawn(name, &binary(), &args, dir);
    let status = wait_for(Duration::from_secs(15), || p.exit_status())
        .unwrap_or_else(|| p.fail("still running after 15 s"));
    let log = p.log();
    assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    assert_eq!(status.code(), Some(1), "{name}: {status}, output:\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: expected one line, got:\n{log}");
    assert!(lines[0].starts_with("kp-torrent: "), "{}", lines[0]);
    lines[0].to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn small(dir: &Path) -> Dataset {
    Dataset::single(dir, "small.bin", 300_000, 32 * 1024, 3)
}

#[test]
fn invalid_or_missing_torrent_file() {
    let dir = TempDir::new("e2e-err-torrent");
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infoi3ee").unwrap();
    let dest = dir.path().join("dest");
    let line = one_line_error(
        dir.path(),
        "invalid",
        &["download", s(&bad), "-d", s(&dest)],
    );
    assert!(line.contains("bad.torrent"), "{line}");

    let garbage = dir.path().join("garbage.torrent");
    std::fs::write(&garbage, b"this is not bencode").unwrap();
    let line = one_line_error(dir.path(), "garbage", &[s(&garbage), "-d", s(&dest)]);
    assert!(line.contains("garbage.torrent"), "{line}");

    let missing = dir.path().join("missing.torrent");
    let line = one_line_error(
        dir.path(),
        "missing",
        &["download", s(&missing), "-d", s(&dest)],
    );
    assert!(line.contains("missing.torrent"), "{line}");
}

#[test]
fn destination_under_a_regular_file() {
    let dir = TempDir::new("e2e-err-dest");
    let data = small(dir.path());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let dest = file.join("sub");
    let line = one_line_error(
        dir.path(),
        "dest",
        &["download", s(&data.torrent.path), "-d", s(&dest)],
    );
    assert!(line.contains("a-file/sub"), "{line}");
}

#[test]
fn port_in_use() {
    let dir = TempDir::new("e2e-err-port");
    let data = small(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dest = dir.path().join("dest");
    let line = one_line_error(
        dir.path(),
        "port",
        &[
            "download",
            s(&data.torrent.path),
            "-d",
            s(&dest),
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
        ],
    );
    assert!(
        line.contains("port in use") && line.contains(&port),
        "{line}"
    );
}

#[test]
fn seeding_missing_or_damaged_data() {
    let dir = TempDir::new("e2e-err-seed");
    let data = small(dir.path());
    let torrent = s(&data.torrent.path);
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let seed = |name: &str, source: &Path| {
        let args = ["seed", torrent, "-s", s(source), "--bind", "127.0.0.1"];
        one_line_error(
            dir.path(),
            name,
            &[&args[..], &["--port", "0", "--quiet"]].concat(),
        )
    };
    let line = seed("missing", &empty);
    assert!(line.contains("incomplete or damaged"), "{line}");

    let file = data.file_path(&data.source, &[]);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let line = seed("damaged", &data.source);
    assert!(line.contains("incomplete or damaged"), "{line}");
}

/// A torrent whose tracker does not exist, and no `--peer`: `--timeout 3` ends the run.
fn times_out_without_tracker(label: &str, scheme: &str) {
    let dir = TempDir::new(label);
    let data = small(dir.path());
    // Nobody listens there: free a moment ago, and nothing here binds it.
    let url = format!("{scheme}://127.0.0.1:{}/announce", free_port());
    let torrent = data
        .torrent
        .with_announce(&url, &dir.path().join("dead.torrent"));
    let dest = dir.path().join("dest");
    let line = one_line_error(
        dir.path(),
        label,
        &[
            "download",
            s(&torrent.path),
            "-d",
            s(&dest),
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--timeout",
            "3",
            "--quiet",
        ],
    );
    assert!(line.contains("timed out after 3s"), "{line}");
}

#[test]
fn no_http_tracker_no_peers_times_out() {
    times_out_without_tracker("e2e-err-http", "http");
}

#[test]
fn no_udp_tracker_no_peers_times_out() {
    times_out_without_tracker("e2e-err-udp", "udp");
}
