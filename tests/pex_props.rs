//! Properties of BEP 11 (`kp_torrent_core::pex`): the decoder never panics on any bytes,
//! messages round-trip, the sender's messages stay within BEP 11's limits and, applied in order,
//! tell the peer exactly our current set (less itself), and the receiver only hands out usable
//! addresses within its caps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::pex::{
    INTERVAL, MAX_PER_MESSAGE, PexFlags, PexMessage, PexReceiver, PexSender, ReceiverConfig,
};
use kp_torrent_core::time::Time;
use quickcheck::{Arbitrary, Gen};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Addr(SocketAddr);

impl Arbitrary for Addr {
    fn arbitrary(g: &mut Gen) -> Self {
        // A small space, so sets overlap and repeat.
        let port = u16::arbitrary(g) % 8;
        let host = u8::arbitrary(g) % 16;
        Addr(if u8::arbitrary(g) < 200 {
            SocketAddr::from(([10, 0, 0, host], port))
        } else {
            SocketAddr::from((
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host.into()),
                port,
            ))
        })
    }
}

#[derive(Clone, Debug)]
struct AnyMessage(PexMessage);

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let added: Vec<(Addr, u8)> = Vec::arbitrary(g);
        let dropped: Vec<Addr> = Vec::arbitrary(g);
        let mut added: Vec<(SocketAddr, PexFlags)> =
            added.into_iter().map(|(a, f)| (a.0, PexFlags(f))).collect();
        let mut dropped: Vec<SocketAddr> = dropped.into_iter().map(|a| a.0).collect();
        // Decoding gives IPv4 entries first: arrange the same order.
        added.sort_by_key(|(a, _)| a.is_ipv6());
        dropped.sort_by_key(|a| a.is_ipv6());
        AnyMessage(PexMessage { added, dropped })
    }
}

#[test]
fn messages_round_trip() {
    fn prop(m: AnyMessage) -> bool {
        PexMessage::decode(&m.0.encode()) == Ok(m.0)
    }
    kp_torrent_tests::quickcheck("messages_round_trip", 2000)
        .quickcheck(prop as fn(AnyMessage) -> bool);
}

#[test]
fn arbitrary_and_mutated_bytes_never_panic_the_decoder() {
    fn prop(m: AnyMessage, noise: Vec<u8>, edits: Vec<(u16, u8)>, cut: u16) -> bool {
        let _ = PexMessage::decode(&noise);
        let mut bytes = m.0.encode();
        for (at, b) in edits {
            if !bytes.is_empty() {
                let i = usize::from(at) % bytes.len();
                bytes[i] = b;
            }
        }
        let keep = usize::from(cut) % (bytes.len() + 1);
        let _ = PexMessage::decode(&bytes[..keep]);
        if let Ok(msg) = PexMessage::decode(&bytes) {
            // Whatever decodes is bounded.
            assert!(msg.added.len() <= 400 && msg.dropped.len() <= 400);
        }
        let mut r = PexReceiver::new(ReceiverConfig::default());
        if let Ok(msg) = r.handle_message(Time::ZERO, &bytes) {
            assert!(msg.added.len() <= MAX_PER_MESSAGE && msg.dropped.len() <= MAX_PER_MESSAGE);
            assert!(
                msg.added
                    .iter()
                    .all(|(a, _)| a.port() != 0 && !a.ip().is_unspecified())
            );
        }
        true
    }
    kp_torrent_tests::quickcheck("arbitrary_and_mutated_bytes_never_panic_the_decoder", 3000)
        .quickcheck(prop as fn(AnyMessage, Vec<u8>, Vec<(u16, u8)>, u16) -> bool);
}

#[test]
fn the_sender_converges_on_our_set_within_the_limits() {
    fn prop(me: Addr, steps: Vec<(Vec<(Addr, bool)>, u8)>) -> bool {
        let mut sender = PexSender::new(me.0);
        let mut now = Time::from_secs(1);
        let mut last_sent: Option<Time> = None;
        // What the peer believes, from the messages it got.
        let mut believed: BTreeMap<SocketAddr, PexFlags> = BTreeMap::new();
        for (set, wait) in steps {
            let current: BTreeMap<SocketAddr, PexFlags> = set
                .into_iter()
                .map(|(a, seed)| (a.0, if seed { PexFlags::SEED } else { PexFlags(0) }))
                .collect();
            now += Duration::from_secs(u64::from(wait));
            // Send until caught up, as a peer would see over the following minutes: ask at
            // once, and again when the sender says its next message is due.
            for _ in 0..40 {
                let Some(msg) = sender.handle_timeout(now, &current) else {
                    match sender.poll_timeout() {
                        Some(due) if due > now => {
                            now = due;
                            continue;
                        }
                        _ => break,
                    }
                };
                assert!(msg.added.len() <= MAX_PER_MESSAGE);
                assert!(msg.dropped.len() <= MAX_PER_MESSAGE);
                assert!(!msg.is_empty());
                if let Some(t) = last_sent {
                    assert!(now.saturating_since(t) >= INTERVAL, "sent within a minute");
                }
                last_sent = Some(now);
                for a in &msg.dropped {
                    assert!(believed.remove(a).is_some(), "dropped {a} never added");
                }
                let mut seen = BTreeSet::new();
                for &(a, f) in &msg.added {
                    assert!(seen.insert(a), "{a} twice in one message");
                    assert_ne!(a, me.0, "told the peer about itself");
                    assert_ne!(a.port(), 0);
                    believed.insert(a, f);
                }
            }
            let mut want = current.clone();
            want.remove(&me.0);
            want.retain(|a, _| a.port() != 0);
            assert_eq!(believed, want);
        }
        true
    }
    kp_torrent_tests::quickcheck("the_sender_converges_on_our_set_within_the_limits", 500)
        .quickcheck(prop as fn(Addr, Vec<(Vec<(Addr, bool)>, u8)>) -> bool);
}
