//! A hostile peer against the real binary: one that sends requests without ever reading our
//! replies must not make the client buffer replies without bound.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kp_torrent_core::id::PeerId;
use kp_torrent_core::wire::{BlockRequest, Handshake, Message};
use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn a_peer_that_requests_but_never_reads_cannot_grow_our_buffers() {
    let dir = TempDir::new("e2e-hostile");
    let data = Dataset::single(dir.path(), "file.bin", 1 << 20, 16384, 5);
    let mut seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    // One connection, never retried: it must find the torrent past its start-up check.
    seeder.wait_seeding(Duration::from_secs(20));
    let before = rss_kib(seeder.process().pid());

    let mut sock = TcpStream::connect(("127.0.0.1", seeder.port())).unwrap();
    let mut hs = Vec::new();
    Handshake::new(data.torrent.info_hash, PeerId(*b"-XX0001-hostilepeer!")).encode(&mut hs);
    sock.write_all(&hs).unwrap();
    let mut theirs = [0u8; Handshake::LEN];
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.read_exact(&mut theirs).unwrap();
    // From here on we never read: every request we send is answered with a reject (we are
    // choked), which must pile up in the seeder unless it stops reading us.
    let mut batch = Vec::new();
    for _ in 0..4096 {
        Message::Request(BlockRequest {
            index: 0,
            begin: 0,
            length: 16384,
        })
        .encode(&mut batch);
    }
    sock.set_nonblocking(true).unwrap();
    let target: usize = 256 << 20;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut offset = 0;
    while sent < target && Instant::now() < deadline {
        match sock.write(&batch[offset..]) {
            Ok(n) => {
                sent += n;
                offset = (offset + n) % batch.len();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break, // the seeder hung up on us: also bounded
        }
    }
    let after = rss_kib(seeder.process().pid());
    // 256 MiB of requests would queue ~256 MiB of rejects if the seeder kept reading.
    assert!(
        after < before + 64 * 1024,
        "seeder grew from {before} KiB to {after} KiB after {sent} bytes of requests"
    );
}
