//! uTP (BEP 29) against real clients on 127.0.0.1: python3-libtorrent with TCP off both ways
//! (so every byte it moves goes over uTP) seeding to kp-torrent and leeching from it,
//! Transmission 3.00 with uTP on in both directions, and kp-torrent to itself with uTP and with
//! `--no-utp`. Every transfer's bytes are checked against the source, and kp-torrent's own count
//! of connections per transport (printed when it exits) says which one carried them.
//!
//! Transmission never dials 127.x, so kp-torrent dials it in both directions. As in
//! tests/interop.rs, build the binary first (`cargo build -p kp-torrent`) when running this
//! file alone.

use std::net::SocketAddr;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Dataset, KpTorrent, Libtorrent, LibtorrentOptions, Transmission, TransmissionOptions, Transport,
};

/// Bound on one transfer of a few MiB on loopback; Transmission alone needs ~10 s to start one.
const DONE: Duration = Duration::from_secs(40);

/// 6 MiB and a partial last piece of 256 KiB pieces: thousands of uTP packets.
const SIZE: usize = 6 * 1024 * 1024 + 1234;

fn data(dir: &TempDir, seed: u64) -> Dataset {
    Dataset::single(dir.path(), "data.bin", SIZE, 256 * 1024, seed)
}

/// Stops a seeding kp-torrent cleanly and returns its (TCP, uTP) connection counts.
fn stop_and_count(mut kp: KpTorrent) -> (u64, u64) {
    kp.signal("INT");
    kp.wait_exit(Duration::from_secs(20));
    kp.connections()
        .unwrap_or_else(|| kp.fail("printed no connection count"))
}

/// The process moved its data over uTP only.
fn assert_utp_only(kp: &KpTorrent, counts: Option<(u64, u64)>) {
    match counts {
        Some((0, utp)) if utp > 0 => {}
        other => kp.fail(&format!(
            "connections (TCP, uTP) {other:?}, expected uTP only"
        )),
    }
}

/// A kp-torrent leecher dialing `seeder` gets every byte, over uTP only.
fn leech_over_utp_only(dir: &TempDir, data: &Dataset, seeder: SocketAddr) {
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download_from(
        "kp-torrent-leecher",
        &data.torrent,
        &dest,
        DONE,
        &[],
        &[seeder],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    assert_utp_only(&leecher, leecher.connections());
}

/// A seeding kp-torrent, stopped, moved its data over uTP only.
fn assert_seeded_over_utp_only(seeder: KpTorrent) {
    let counts = stop_and_count(seeder);
    assert!(
        counts.0 == 0 && counts.1 > 0,
        "seeder connections (TCP, uTP) {counts:?}"
    );
}

fn utp_only() -> LibtorrentOptions {
    LibtorrentOptions {
        transport: Transport::Utp,
        ..LibtorrentOptions::default()
    }
}

#[test]
fn libtorrent_over_utp_only_seeds_kp_torrent() {
    let dir = TempDir::new("utp-lt-kp");
    let data = data(&dir, 71);
    let Some(seeder) = Libtorrent::seed(&data.torrent, &data.source, &utp_only()) else {
        return;
    };
    leech_over_utp_only(&dir, &data, seeder.addr());
}

#[test]
fn kp_torrent_seeds_libtorrent_over_utp_only() {
    let dir = TempDir::new("utp-kp-lt");
    let data = data(&dir, 72);
    let seeder = KpTorrent::seed_to("kp-torrent-seeder", &data, &[], &[], dir.path());
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.socket_addr()],
        ..utp_only()
    };
    let Some(mut leecher) = Libtorrent::download(&data.torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    assert_seeded_over_utp_only(seeder);
}

fn with_utp() -> TransmissionOptions {
    TransmissionOptions {
        utp: true,
        ..TransmissionOptions::default()
    }
}

#[test]
fn transmission_with_utp_seeds_kp_torrent_over_utp() {
    let dir = TempDir::new("utp-tr-kp");
    let data = data(&dir, 73);
    let Some(seeder) = Transmission::seed_with(&data.torrent, &data.source, &with_utp()) else {
        return;
    };
    leech_over_utp_only(&dir, &data, seeder.addr());
}

#[test]
fn kp_torrent_seeds_transmission_with_utp_over_utp() {
    let dir = TempDir::new("utp-kp-tr");
    let data = data(&dir, 74);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download_with(&data.torrent, &dest, &with_utp()) else {
        return;
    };
    let seeder = KpTorrent::seed_to(
        "kp-torrent-seeder",
        &data,
        &[],
        &[leecher.addr()],
        dir.path(),
    );
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    assert_seeded_over_utp_only(seeder);
}

#[test]
fn kp_torrent_to_itself_over_utp_and_over_tcp_with_no_utp() {
    let dir = TempDir::new("utp-kp-kp");
    let data = data(&dir, 75);
    let seeder = KpTorrent::seed_to("kp-torrent-seeder", &data, &[], &[], dir.path());
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download_from(
        "kp-torrent-leecher",
        &data.torrent,
        &dest,
        DONE,
        &[],
        &[seeder.socket_addr()],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    assert_utp_only(&leecher, leecher.connections());
    // --no-utp on the leecher: TCP carries it (the seeder still speaks both).
    let dest = dir.path().join("dest-tcp");
    let mut leecher = KpTorrent::download_from(
        "kp-torrent-leecher-tcp",
        &data.torrent,
        &dest,
        DONE,
        &["--no-utp"],
        &[seeder.socket_addr()],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    match leecher.connections() {
        Some((tcp, 0)) if tcp > 0 => {}
        other => leecher.fail(&format!("--no-utp connections (TCP, uTP) {other:?}")),
    }
    let counts = stop_and_count(seeder);
    assert!(
        counts.0 > 0 && counts.1 > 0,
        "seeder connections (TCP, uTP) {counts:?}"
    );
}

#[test]
fn a_peer_without_utp_is_reached_over_tcp() {
    // libtorrent with uTP off: our uTP dial is not answered, TCP takes over.
    let dir = TempDir::new("utp-fallback");
    let data = data(&dir, 76);
    let Some(seeder) = Libtorrent::seed(&data.torrent, &data.source, &LibtorrentOptions::default())
    else {
        return;
    };
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download_from(
        "kp-torrent-leecher",
        &data.torrent,
        &dest,
        DONE,
        &[],
        &[seeder.addr()],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
    match leecher.connections() {
        Some((tcp, 0)) if tcp > 0 => {}
        other => leecher.fail(&format!("connections (TCP, uTP) {other:?}")),
    }
}
