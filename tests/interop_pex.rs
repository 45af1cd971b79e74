//! Peer exchange (BEP 11) with libtorrent 2.0.8 on 127.0.0.1, both ways: kp-torrent learns a
//! seeder from a libtorrent peer's `ut_pex` messages, and a libtorrent peer learns a third peer
//! from ours (under an upload limit, which once starved every message but the blocks).

use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Dataset, Encryption, KpTorrent, Libtorrent, LibtorrentOptions, peer_source,
};

const DONE: Duration = Duration::from_secs(40);
const PIECE: u64 = 16 * 1024;
/// 8 MiB: at the 64 KiB/s the middle peer is allowed to upload, it alone could not deliver it
/// within [`DONE`].
const SIZE: usize = 8 * 1024 * 1024;

fn options(extensions: &[&str]) -> LibtorrentOptions {
    LibtorrentOptions {
        extensions: extensions.iter().map(|e| e.to_string()).collect(),
        encryption: Encryption::Plaintext,
        ..LibtorrentOptions::default()
    }
}

#[test]
fn kp_torrent_learns_the_seeder_from_a_libtorrent_peer() {
    let dir = TempDir::new("pex-in");
    let data = Dataset::single(dir.path(), "data.bin", SIZE, PIECE, 5);
    let torrent = &data.torrent;
    // C: the seeder, without ut_pex (it cannot learn about us and dial us), throttled so that B
    // is still downloading from it when we come.
    let Some(seeder) = Libtorrent::seed(
        torrent,
        &data.source,
        &LibtorrentOptions {
            upload_limit: 1024 * 1024,
            ..options(&[])
        },
    ) else {
        return;
    };
    // B: knows C, speaks ut_pex, has little to spare (64 KiB/s).
    let middle = Libtorrent::download(
        torrent,
        &dir.path().join("middle"),
        &LibtorrentOptions {
            peers: vec![seeder.addr()],
            upload_limit: 64 * 1024,
            keep_running: true,
            ..options(&["ut_pex"])
        },
    )
    .expect("libtorrent was available for the seeder");
    let mut middle = middle;
    middle.wait_peer(DONE, "the seeder", |p| p.addr == seeder.addr());
    // We know only B.
    let dest = dir.path().join("dest");
    let peer = middle.addr().to_string();
    let mut us = KpTorrent::download(
        "kp",
        &torrent.path,
        &dest,
        &["--peer", &peer, "--timeout", "40"],
        dir.path(),
    );
    us.wait_success(DONE + Duration::from_secs(5));
    // B alone would need over two minutes for the file, and C knows no way to us (no tracker,
    // no ut_pex): finishing within the timeout means we dialled C, learnt from B's PEX.
    data.assert_same(&dest);
}

#[test]
fn a_libtorrent_peer_learns_another_from_kp_torrent() {
    let dir = TempDir::new("pex-out");
    let data = Dataset::single(dir.path(), "data.bin", SIZE, PIECE, 6);
    let torrent = &data.torrent;
    // We seed, throttled so the leechers stay connected while PEX happens.
    let us = KpTorrent::seed(
        "kp",
        &torrent.path,
        &data.source,
        &["--upload-limit", "512k"],
        dir.path(),
    );
    let our_addr = us.addr().parse().unwrap();
    let Some(mut first) = Libtorrent::download(
        torrent,
        &dir.path().join("first"),
        &LibtorrentOptions {
            peers: vec![our_addr],
            keep_running: true,
            ..options(&["ut_pex"])
        },
    ) else {
        return;
    };
    first.wait_peer(DONE, "kp-torrent", |p| p.addr == our_addr);
    // The second knows only us; it must hear of the first from our ut_pex message and dial it.
    let mut second = Libtorrent::download(
        torrent,
        &dir.path().join("second"),
        &LibtorrentOptions {
            peers: vec![our_addr],
            keep_running: true,
            ..options(&["ut_pex"])
        },
    )
    .expect("libtorrent was available");
    let found = second.wait_peer(DONE, "the first leecher, learnt through our PEX", |p| {
        p.addr == first.addr()
    });
    assert!(
        found.source & peer_source::PEX != 0,
        "the second leecher reached the first through {:#x}, not PEX",
        found.source
    );
}
