//! Traces recorded by kp-torrent while downloading from real libtorrent, Transmission and aria2
//! seeders (committed in `tests/fixtures/`, made by `cargo run --example record_fixtures`) replay
//! with zero divergences: the engine, given the same bytes from those clients, still does exactly
//! what it did. Runs everywhere — the clients are not needed to replay.

use std::path::PathBuf;

use kp_torrent_core::trace::replay;
use kp_torrent_tests::real::content;

/// Size of the fixture torrent's content (see examples/record_fixtures.rs).
const CONTENT: u64 = 5 * 16384 + 1234;

fn check(name: &str, peer_id_prefix: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The handshake bytes of the other client are in the trace: it really came from that client.
    assert!(
        bytes
            .windows(peer_id_prefix.len())
            .any(|w| w == peer_id_prefix),
        "{name} holds no handshake from {}",
        String::from_utf8_lossy(peer_id_prefix)
    );
    let report = replay(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.finished, "{name}: unfinished trace: {report}");
    assert!(
        report.received_bytes >= CONTENT,
        "{name}: only {} bytes received",
        report.received_bytes
    );
    if let Some(d) = &report.divergence {
        panic!("{name}: {d}");
    }
}

#[test]
fn trace_from_libtorrent_replays() {
    check("from-libtorrent.trace", b"-LT2080-");
}

#[test]
fn trace_from_transmission_replays() {
    check("from-transmission.trace", b"-TR3000-");
}

#[test]
fn trace_from_aria2_replays() {
    check("from-aria2.trace", b"A2-1-36-0-");
}

#[test]
fn a_changed_byte_in_a_fixture_is_caught() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/from-libtorrent.trace");
    let mut bytes = std::fs::read(path).unwrap();
    // The fixture's content is known (same generator and seed as the recorder): find a stretch of
    // it among the received bytes and change one byte there.
    let data = content(CONTENT as usize, 2026);
    let needle = &data[40_000..40_064];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the received content is stored in the trace");
    bytes[at + 7] ^= 0x40;
    let report = replay(&bytes).expect("the trace is still well-formed");
    let d = report
        .divergence
        .expect("a changed received byte must diverge");
    assert!(d.to_string().contains("expected"), "{d}");
}
