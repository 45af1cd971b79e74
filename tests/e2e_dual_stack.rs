//! Without `--bind`, one process listens on IPv4 and IPv6 at the same port: a leecher over
//! 127.0.0.1 and another over ::1 both fetch from one seeder.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, free_port, kp::binary};

/// Kills the seeder however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn one_port_serves_ipv4_and_ipv6_peers() {
    if TcpStream::connect_timeout(&"[::1]:9".parse().unwrap(), Duration::from_millis(200))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable)
    {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let dir = TempDir::new("e2e-dual");
    let data = Dataset::single(dir.path(), "data.bin", 700_001, 32 * 1024, 4);
    let port = free_port();
    let seeder = Command::new(binary())
        .args(["seed", data.torrent.path.to_str().unwrap(), "-s"])
        .arg(&data.source)
        .args(["--port", &port.to_string(), "--quiet", "--no-dht"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the seeder");
    let _seeder = Killed(seeder);
    // Listening once both families accept a connection (the check of the data comes first).
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while [v4, v6]
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err())
    {
        assert!(
            Instant::now() < deadline,
            "the seeder does not listen on both families"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, peer, bind) in [("v4", v4, "127.0.0.1"), ("v6", v6, "::1")] {
        let dest = dir.path().join(name);
        let peer = peer.to_string();
        let args = [
            "download",
            data.torrent.path.to_str().unwrap(),
            "-d",
            dest.to_str().unwrap(),
            "--peer",
            &peer,
            "--timeout",
            "20",
        ];
        let out = Command::new(binary())
            .args(args)
            .args(["--bind", bind, "--port", "0", "--quiet", "--no-dht"])
            .stdin(Stdio::null())
            .output()
            .expect("run the leecher");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        data.assert_same(&dest);
    }
}
