//! MSE/PE stream encryption against peers that insist on it, on 127.0.0.1: libtorrent forcing
//! RC4 (`out_enc_policy`/`in_enc_policy` `pe_forced`, `allowed_enc_level` `pe_rc4`) seeding to
//! kp-torrent and leeching from it, Transmission 3.00 with `"encryption": 2` (required) both
//! ways, and kp-torrent `--encryption require` to itself (and refusing a plaintext-only peer).
//! Every transfer's bytes are checked against the source.
//!
//! Transmission never dials 127.x, so kp-torrent dials it in both directions (our initiator);
//! libtorrent dials and is dialed (both of our roles). As in tests/interop.rs, build the binary
//! first (`cargo build -p kp-torrent`) when running this file alone.

use std::net::SocketAddr;
use std::time::Duration;

use kp_torrent_tests::TempDir;
use kp_torrent_tests::real::{
    Dataset, Encryption, KpTorrent, Libtorrent, LibtorrentOptions, Torrent, Transmission,
    TransmissionEncryption, TransmissionOptions,
};

/// Bound on one transfer of a few MiB on loopback; Transmission alone needs ~10 s to start one.
const DONE: Duration = Duration::from_secs(30);

/// 2 MiB and a partial last piece of 64 KiB pieces.
const SIZE: usize = 2 * 1024 * 1024 + 4321;

fn data(dir: &TempDir, seed: u64) -> Dataset {
    Dataset::single(dir.path(), "data.bin", SIZE, 64 * 1024, seed)
}

fn forced_rc4() -> LibtorrentOptions {
    LibtorrentOptions {
        encryption: Encryption::ForcedRc4,
        ..LibtorrentOptions::default()
    }
}

/// Upload limit of the seeders facing libtorrent: the transfer then lasts about 2 s, long enough
/// for libtorrent's peer list (polled every 0.1 s) to show the connection and its encryption.
const SLOW: u64 = 1 << 20;
const SLOW_ARG: &str = "1M";

/// libtorrent reported only RC4 connections (and at least one).
fn assert_rc4_only(peer: &Libtorrent) {
    let seen = peer.encryption_seen();
    assert_eq!(
        seen,
        vec!["rc4".to_string()],
        "libtorrent's connections were not all RC4:\n{}",
        peer.process().log()
    );
}

/// A kp-torrent leecher that will not encrypt gets nothing from `seeder` (it gives up after its
/// `--timeout`, which is all a plaintext leecher of an encrypting seeder can do).
fn assert_plaintext_refused(dir: &TempDir, torrent: &Torrent, seeder: SocketAddr) {
    let dest = dir.path().join("plain");
    let timeout = Duration::from_secs(6);
    let mut plain = KpTorrent::download_from(
        "kp-torrent-leecher",
        torrent,
        &dest,
        timeout,
        &["--encryption", "disable"],
        &[seeder],
        dir.path(),
    );
    let status = plain.wait_exit(DONE);
    let log = plain.log();
    assert!(
        !status.success() && log.contains("timed out after 6s with 0 of"),
        "a plaintext leecher of a seeder that requires encryption: {status}\n{log}"
    );
}

/// From `seeder`, which requires encryption: a plaintext kp-torrent leecher gets nothing, one
/// with `--encryption require` gets every byte.
fn refused_then_downloaded_encrypted(dir: &TempDir, data: &Dataset, seeder: SocketAddr) {
    assert_plaintext_refused(dir, &data.torrent, seeder);
    let dest = dir.path().join("dest");
    let args = ["--encryption", "require"];
    let mut leecher = KpTorrent::download_from(
        "kp-torrent-leecher",
        &data.torrent,
        &dest,
        DONE,
        &args,
        &[seeder],
        dir.path(),
    );
    leecher.wait_success(DONE);
    data.assert_same(&dest);
}

fn required() -> TransmissionOptions {
    TransmissionOptions {
        encryption: TransmissionEncryption::Required,
        ..TransmissionOptions::default()
    }
}

#[test]
fn libtorrent_forcing_rc4_seeds_kp_torrent_that_prefers_encryption() {
    let dir = TempDir::new("enc-lt-kp");
    let data = data(&dir, 61);
    let opts = LibtorrentOptions {
        upload_limit: SLOW,
        ..forced_rc4()
    };
    let Some(seeder) = Libtorrent::seed(&data.torrent, &data.source, &opts) else {
        return;
    };
    let dest = dir.path().join("dest");
    // The default policy: kp-torrent dials with MSE and offers both methods.
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
    assert_rc4_only(&seeder);
}

/// kp-torrent, seeding with `policy` (`--encryption`), to a libtorrent that forces RC4 and dials
/// it: our responder.
fn kp_torrent_seeds_libtorrent_forcing_rc4(name: &str, seed_of_data: u64, policy: &str) {
    let dir = TempDir::new(name);
    let data = data(&dir, seed_of_data);
    let args = ["--encryption", policy, "--upload-limit", SLOW_ARG];
    let seeder = KpTorrent::seed_to("kp-torrent-seeder", &data, &args, &[], dir.path());
    let dest = dir.path().join("dest");
    let opts = LibtorrentOptions {
        peers: vec![seeder.socket_addr()],
        ..forced_rc4()
    };
    let Some(mut leecher) = Libtorrent::download(&data.torrent, &dest, &opts) else {
        return;
    };
    leecher.wait_done(DONE);
    data.assert_same(&dest);
    assert_rc4_only(&leecher);
}

#[test]
fn kp_torrent_requiring_encryption_seeds_libtorrent_forcing_rc4() {
    kp_torrent_seeds_libtorrent_forcing_rc4("enc-kp-lt", 62, "require");
}

#[test]
fn kp_torrent_preferring_encryption_seeds_libtorrent_forcing_rc4() {
    kp_torrent_seeds_libtorrent_forcing_rc4("enc-kp-lt-prefer", 63, "prefer");
}

#[test]
fn transmission_requiring_encryption_seeds_kp_torrent_that_requires_it() {
    let dir = TempDir::new("enc-tr-kp");
    let data = data(&dir, 64);
    let Some(seeder) = Transmission::seed_with(&data.torrent, &data.source, &required()) else {
        return;
    };
    // Transmission really insists.
    refused_then_downloaded_encrypted(&dir, &data, seeder.addr());
}

#[test]
fn kp_torrent_preferring_encryption_seeds_transmission_that_requires_it() {
    let dir = TempDir::new("enc-kp-tr");
    let data = data(&dir, 65);
    let dest = dir.path().join("dest");
    let Some(mut leecher) = Transmission::download_with(&data.torrent, &dest, &required()) else {
        return;
    };
    let _seeder = KpTorrent::seed_to(
        "kp-torrent-seeder",
        &data,
        &[],
        &[leecher.addr()],
        dir.path(),
    );
    leecher.wait_done(DONE);
    data.assert_same(&dest);
}

#[test]
fn kp_torrent_requiring_encryption_seeds_itself_and_refuses_plaintext() {
    let dir = TempDir::new("enc-kp-kp");
    let data = data(&dir, 66);
    let seeder = KpTorrent::seed_to(
        "kp-torrent-seeder",
        &data,
        &["--encryption", "require"],
        &[],
        dir.path(),
    );
    refused_then_downloaded_encrypted(&dir, &data, seeder.socket_addr());
}
