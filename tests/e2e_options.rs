//! Download options through the real binary: `--files` fetches only the selected files, and
//! `--download-limit` keeps a download below its rate.

use std::time::{Duration, Instant};

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

#[test]
fn files_option_fetches_only_the_selected_file() {
    let dir = TempDir::new("e2e-files");
    // 16 KiB pieces and 160 KiB files: file boundaries fall on piece boundaries, so no piece of
    // file 1 touches files 0 or 2.
    let files: Vec<(String, usize)> = (0..3).map(|i| (format!("f{i}.bin"), 160 * 1024)).collect();
    let data = Dataset::multi(dir.path(), "album", &files, 16 * 1024, 3);
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let dest = dir.path().join("out");
    let peer = format!("127.0.0.1:{}", seeder.port());
    let mut leech = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--files", "1", "--peer", &peer, "--timeout", "30"],
        dir.path(),
    );
    leech.wait_success(Duration::from_secs(40));
    let (path1, want1) = &data.files[1];
    assert_eq!(&std::fs::read(data.file_path(&dest, path1)).unwrap(), want1);
    for (path, _) in [&data.files[0], &data.files[2]] {
        let file = data.file_path(&dest, path);
        // Unselected files may exist (sparse, at their size) but hold no downloaded byte, and
        // no disk space was reserved for them (the selected file's was).
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{} received data although it was not selected",
                file.display()
            );
            let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap());
            assert_eq!(used, 0, "{} had space reserved", file.display());
        }
    }
}

#[test]
fn download_limit_keeps_the_rate_below_the_limit() {
    let dir = TempDir::new("e2e-limit");
    let data = Dataset::single(dir.path(), "file.bin", 2 << 20, 64 * 1024, 4);
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let peer = format!("127.0.0.1:{}", seeder.port());
    let dest = dir.path().join("out");
    let started = Instant::now();
    let mut leech = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &[
            "--download-limit",
            "512k",
            "--peer",
            &peer,
            "--timeout",
            "60",
        ],
        dir.path(),
    );
    leech.wait_success(Duration::from_secs(70));
    let took = started.elapsed();
    data.assert_same(&dest);
    // 2 MiB at 512 KiB/s needs 4 s; unlimited it takes a fraction of a second on loopback.
    // Half the nominal time leaves room for the bucket's initial burst.
    assert!(
        took >= Duration::from_secs(2),
        "2 MiB arrived in {took:?} despite --download-limit 512k"
    );
}

#[test]
fn seeding_and_downloading_over_ipv6_loopback() {
    use std::process::{Command, Stdio};
    let dir = TempDir::new("e2e-ipv6");
    let data = Dataset::single(dir.path(), "file.bin", 300 * 1024 + 7, 16 * 1024, 6);
    let bin = kp_torrent_tests::kp_torrent_bin();
    let port = kp_torrent_tests::real::free_port().to_string();
    let mut seeder = Command::new(&bin)
        .arg("seed")
        .arg(&data.torrent.path)
        .arg("-s")
        .arg(&data.source)
        .args(["--bind", "::1", "--port", &port, "--quiet", "--no-dht"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("::1", port.parse::<u16>().unwrap())).is_err() {
        if Instant::now() > deadline {
            let _ = seeder.kill();
            panic!("the seeder did not listen on [::1]:{port} (no IPv6 loopback here?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dest = dir.path().join("out");
    let out = Command::new(&bin)
        .arg("download")
        .arg(&data.torrent.path)
        .arg("-d")
        .arg(&dest)
        .args([
            "--bind",
            "::1",
            "--port",
            &kp_torrent_tests::real::free_port().to_string(),
        ])
        .args([
            "--peer",
            &format!("[::1]:{port}"),
            "--timeout",
            "30",
            "--quiet",
            "--no-dht",
        ])
        .output()
        .unwrap();
    let _ = seeder.kill();
    let _ = seeder.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    data.assert_same(&dest);
}
