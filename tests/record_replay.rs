//! `--record` and `kp-torrent replay` through the real binary: a download between two kp-torrent
//! processes over 127.0.0.1 is recorded on both sides and replays without divergence; a changed
//! byte of received data makes replay fail with the expected and actual outputs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};
use kp_torrent_tests::real::{content, free_port};
use kp_torrent_tests::{TempDir, kp_torrent_bin};

#[test]
fn recorded_runs_replay_and_a_changed_byte_diverges() {
    let dir = TempDir::new("record-replay");
    let data = content(3 * 1024 * 1024 + 12_345, 9);
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/file.bin"), &data).unwrap();
    let spec = TorrentSpec {
        name: "file.bin".into(),
        piece_length: 256 * 1024,
        files: vec![(vec![], data.len() as u64)],
        piece_hashes: hash_pieces(&data, 256 * 1024),
        ..TorrentSpec::default()
    };
    let torrent = dir.path().join("t.torrent");
    std::fs::write(&torrent, spec.to_bytes()).unwrap();
    let bin = kp_torrent_bin();
    let seed_port = free_port().to_string();
    let mut seeder = Command::new(&bin)
        .args(["seed", torrent.to_str().unwrap(), "-s"])
        .arg(dir.path().join("src"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &seed_port,
            "--quiet",
            "--no-dht",
            "--record",
        ])
        .arg(dir.path().join("seed.trace"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", seed_port.parse::<u16>().unwrap())).is_err() {
        assert!(Instant::now() < deadline, "seeder did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let leech = Command::new(&bin)
        .args(["download", torrent.to_str().unwrap(), "-d"])
        .arg(dir.path().join("out"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--quiet",
            "--no-dht",
        ])
        .args([
            "--timeout",
            "30",
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
            "--record",
        ])
        .arg(dir.path().join("leech.trace"))
        .output()
        .unwrap();
    // SIGTERM: the seeder shuts down cleanly and finishes its trace.
    let _ = Command::new("kill").arg(seeder.id().to_string()).status();
    let _ = seeder.wait();
    assert!(
        leech.status.success(),
        "{}",
        String::from_utf8_lossy(&leech.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("out/file.bin")).unwrap(),
        data
    );

    for trace in ["leech.trace", "seed.trace"] {
        let out = Command::new(&bin)
            .arg("replay")
            .arg(dir.path().join(trace))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{trace}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with("replayed without divergence"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("unfinished"),
            "{trace} was not finished: {stdout}"
        );
    }

    // Flip a byte of received piece data (stored raw in the trace, so it can be found there).
    let mut bytes = std::fs::read(dir.path().join("leech.trace")).unwrap();
    let needle = &data[1_000_000..1_000_064];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("received data is stored in the trace");
    bytes[at + 10] ^= 0x01;
    std::fs::write(dir.path().join("bad.trace"), &bytes).unwrap();
    let out = Command::new(&bin)
        .arg("replay")
        .arg(dir.path().join("bad.trace"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("diverged after input "), "{stdout}");
    assert!(
        stdout.contains("expected:") && stdout.contains("actual:"),
        "{stdout}"
    );
}
