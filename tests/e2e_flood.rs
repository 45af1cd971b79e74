//! A flood of idle connections must not lock a real peer out: 300 connections to a kp-torrent
//! seeder that send nothing or half a handshake, then a real leecher — which must be served at
//! once (it gets 4 s for the whole download; the handshake timeout alone is 10 s, so waiting for
//! the flood to time out would fail it).

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{Dataset, KpTorrent};

#[test]
fn a_real_peer_gets_in_while_300_idle_connections_are_held() {
    let dir = TempDir::new("e2e-flood");
    let data = Dataset::single(dir.path(), "data.bin", 512 * 1024 + 3, 32 * 1024, 9);
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let addr = seeder.addr();
    let mut flood = Vec::new();
    for i in 0..300 {
        let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
        else {
            continue;
        };
        if i % 2 == 0 {
            // Half a handshake: the protocol string, then silence.
            let _ = s.write_all(b"\x13BitTorrent protocol");
        }
        flood.push(s);
    }
    assert!(
        flood.len() >= 250,
        "only {} connections opened",
        flood.len()
    );
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--peer", &addr, "--timeout", "4"],
        dir.path(),
    );
    leecher.wait_success(Duration::from_secs(20));
    data.assert_same(&dest);
    // The flood is still held open on our side of the test while the leecher got in.
    drop(flood);
}
