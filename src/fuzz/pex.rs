//! Body for BEP 11 (`ut_pex`): the message codec, [`PexReceiver`] on arbitrary payloads and
//! [`PexSender`] diffs of a changing peer set.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::pex::{
    MAX_DECODED_PER_LIST, MAX_PER_MESSAGE, PexError, PexFlags, PexMessage, PexReceiver, PexSender,
    ReceiverConfig,
};
use kp_torrent_core::time::Time;

use super::Bytes;
use super::formats::check_message;

/// Most steps one input runs.
const MAX_STEPS: usize = 300;
/// Most peers in the sender's connected set: several messages' worth, few enough to be quick.
const MAX_CONNECTED: usize = 160;

/// Input: a mode byte; even modes run the codec and a receiver, odd ones a sender.
///
/// Codec and receiver: the receiver's settings (minimum interval, caps), then messages, each a
/// time step and a payload (arbitrary bytes, or a message built from the input and encoded).
/// Checks: decoding never panics and errors are one line; what decodes keeps at most
/// [`MAX_DECODED_PER_LIST`] addresses per list and survives encode and decode; the receiver
/// refuses a message sooner than its interval after the last accepted one and accepts it
/// otherwise when it decodes; what it returns is, in order, the usable (port, not unspecified,
/// broadcast or multicast) distinct addresses of the message, never more than its caps, and all
/// of them when under the caps.
///
/// Sender: the peer's address, the interval, then steps that change our connected set (add,
/// remove, change flags, many at once), give the peer another address of its own, or let time
/// pass and ask for the message. Checks: nothing before the interval; a message is never empty,
/// holds at most [`MAX_PER_MESSAGE`] added and dropped, never the peer itself (any of its
/// addresses) or a port 0, adds only connected peers with their current flags and nothing the
/// peer was already told, drops only what the peer was told and we are no longer connected to,
/// and encodes to bytes that decode to itself; when it says nothing is due, the peer's view
/// (the messages so far, applied in order) is exactly our connected set without the peer itself.
pub fn pex(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.u8() & 1 == 0 {
        receive(b);
    } else {
        send(b);
    }
}

/// Decodes `payload` and checks the round trip; the message when it decodes.
fn codec(payload: &[u8]) -> Option<PexMessage> {
    let msg = match PexMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            check_message(&e);
            return None;
        }
    };
    let count = |v4: bool, list: &mut dyn Iterator<Item = SocketAddr>| {
        list.filter(|a| a.is_ipv4() == v4).count()
    };
    for v4 in [true, false] {
        let added = count(v4, &mut msg.added.iter().map(|&(a, _)| a));
        let dropped = count(v4, &mut msg.dropped.iter().copied());
        assert!(
            added <= MAX_DECODED_PER_LIST && dropped <= MAX_DECODED_PER_LIST,
            "{added} added, {dropped} dropped kept"
        );
    }
    // IPv4 entries come first in each list, as the encoder writes them.
    assert!(
        msg.added
            .windows(2)
            .all(|w| w[0].0.is_ipv4() || w[1].0.is_ipv6())
    );
    assert!(
        msg.dropped
            .windows(2)
            .all(|w| w[0].is_ipv4() || w[1].is_ipv6())
    );
    let encoded = msg.encode();
    assert_eq!(
        PexMessage::decode(&encoded).as_ref(),
        Ok(&msg),
        "decode(encode(m)) != m"
    );
    Some(msg)
}

/// An address one could dial (the receiver's rule, restated).
fn usable(a: SocketAddr) -> bool {
    a.port() != 0
        && match a.ip() {
            IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()),
            IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
        }
}

/// An address from a small space, so that duplicates, our own and unusable ones come up often.
fn addr(b: &mut Bytes<'_>) -> SocketAddr {
    let kind = b.u8();
    let port = match kind >> 5 {
        0 => 0,
        1 => u16::MAX,
        _ => 6881 + u16::from(kind & 3),
    };
    let ip = match kind & 0x1c {
        0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        4 => IpAddr::V4(Ipv4Addr::BROADCAST),
        8 => IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1 + (kind & 1))),
        12 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        16 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
        20 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(b.u8() % 4),
        )),
        _ => IpAddr::V4(Ipv4Addr::new(127, 0, 0, b.u8() % 8)),
    };
    SocketAddr::new(ip, port)
}

/// A message built from the input: the four lists, with flags lists of any length.
fn built(b: &mut Bytes<'_>) -> Vec<u8> {
    let mut msg = PexMessage::default();
    let added = usize::from(b.u8());
    for _ in 0..added {
        let a = addr(b);
        msg.added.push((a, PexFlags(b.u8())));
    }
    let dropped = usize::from(b.u8() % 64);
    for _ in 0..dropped {
        msg.dropped.push(addr(b));
    }
    // Sorting by family keeps the message equal to what its encoding decodes to.
    msg.added.sort_by_key(|(a, _)| a.is_ipv6());
    msg.dropped.sort_by_key(|a| a.is_ipv6());
    msg.encode()
}

fn receive(mut b: Bytes<'_>) {
    let config = ReceiverConfig {
        min_interval: Duration::from_millis(u64::from(b.u16()) * 10),
        max_added: usize::from(b.u8() % 80),
        max_dropped: usize::from(b.u8() % 80),
    };
    let mut receiver = PexReceiver::new(config);
    let mut now = Time::ZERO;
    let mut last: Option<Time> = None;
    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        now += Duration::from_millis(u64::from(b.u16()) * 10);
        let payload = match b.u8() % 3 {
            0 => built(&mut b),
            1 => b.short_slice().to_vec(),
            _ => {
                let n = usize::from(b.u16()) % 8192;
                b.take(n).to_vec()
            }
        };
        let decoded = codec(&payload);
        let too_soon = last.is_some_and(|l| now.saturating_since(l) < config.min_interval);
        match receiver.handle_message(now, &payload) {
            Err(PexError::TooFrequent { since_last, min }) => {
                assert!(too_soon, "refused as too frequent after {since_last:?}");
                assert_eq!(min, config.min_interval);
            }
            Err(e) => {
                check_message(&e);
                assert!(!too_soon, "a message too soon was decoded: {e}");
                assert!(decoded.is_none(), "the receiver refuses what decodes: {e}");
            }
            Ok(kept) => {
                assert!(!too_soon, "accepted a message too soon");
                let msg = decoded.expect("the receiver accepts what does not decode");
                check_kept(
                    &msg.added.iter().map(|&(a, _)| a).collect::<Vec<_>>(),
                    &kept.added.iter().map(|&(a, _)| a).collect::<Vec<_>>(),
                    config.max_added,
                );
                check_kept(&msg.dropped, &kept.dropped, config.max_dropped);
                for (a, f) in &kept.added {
                    assert!(
                        msg.added.iter().any(|(m, g)| m == a && g == f),
                        "{a} kept with flags {f:?} it was not sent with"
                    );
                }
                last = Some(now);
            }
        }
    }
}

/// `kept` is the usable distinct addresses of `sent`, in order, at most `cap`, all when fewer.
fn check_kept(sent: &[SocketAddr], kept: &[SocketAddr], cap: usize) {
    assert!(
        kept.len() <= cap,
        "{} kept, over the cap of {cap}",
        kept.len()
    );
    let distinct: BTreeSet<&SocketAddr> = kept.iter().collect();
    assert_eq!(
        distinct.len(),
        kept.len(),
        "an address kept twice: {kept:?}"
    );
    for a in kept {
        assert!(usable(*a), "kept unusable {a}");
    }
    let mut rest = sent.iter();
    for a in kept {
        assert!(rest.any(|s| s == a), "{a} kept out of order or never sent");
    }
    let usable_sent: BTreeSet<&SocketAddr> = sent.iter().filter(|a| usable(**a)).collect();
    if kept.len() < cap {
        assert_eq!(
            usable_sent.len(),
            kept.len(),
            "usable addresses dropped under the cap"
        );
    }
}

fn send(mut b: Bytes<'_>) {
    let peer = addr(&mut b);
    let interval = Duration::from_millis(u64::from(b.u16()) * 10);
    let mut sender = PexSender::with_interval(peer, interval);
    let mut own = BTreeSet::from([peer]);
    let mut current: BTreeMap<SocketAddr, PexFlags> = BTreeMap::new();
    // What the peer was told, applying every message in order.
    let mut told: BTreeMap<SocketAddr, PexFlags> = BTreeMap::new();
    let mut now = Time::ZERO;
    // When the sender may next speak: an interval after a message, or after a look that
    // found nothing new once the first message went.
    let mut next_due: Option<Time> = None;
    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        match b.u8() % 8 {
            0 | 1 => {
                let a = addr(&mut b);
                current.insert(a, PexFlags(b.u8() & 0x1f));
            }
            2 => {
                let a = addr(&mut b);
                current.remove(&a);
            }
            3 => {
                // Many peers come or go at once: more than one message's worth.
                let n = usize::from(b.u8());
                let base = b.u8();
                let add = b.bool();
                for i in 0..n {
                    let a = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(
                            10,
                            base,
                            (i / 200) as u8,
                            (i % 200) as u8 + 1,
                        )),
                        6881,
                    );
                    if add && current.len() < MAX_CONNECTED {
                        current.insert(a, PexFlags(0));
                    } else {
                        current.remove(&a);
                    }
                }
            }
            4 => {
                let a = addr(&mut b);
                sender.add_own_addr(a);
                own.insert(a);
                // The sender forgets what it told the peer about this address.
                told.remove(&a);
            }
            5 => current.clear(),
            _ => {
                now += Duration::from_millis(u64::from(b.u16()) * 10);
                let due = sender.poll_timeout();
                assert_eq!(due, next_due);
                let msg = sender.handle_timeout(now, &current);
                if due.is_some_and(|d| now < d) {
                    assert_eq!(msg, None, "a message before the interval");
                    continue;
                }
                match msg {
                    Some(msg) => {
                        check_sent(&msg, &current, &own, &told);
                        for a in &msg.dropped {
                            told.remove(a);
                        }
                        for &(a, f) in &msg.added {
                            told.insert(a, f);
                        }
                        next_due = Some(now + interval);
                        assert_eq!(sender.poll_timeout(), next_due);
                    }
                    None => {
                        let expected: BTreeMap<SocketAddr, PexFlags> = current
                            .iter()
                            .filter(|(a, _)| !own.contains(a) && a.port() != 0)
                            .map(|(&a, &f)| (a, f))
                            .collect();
                        assert_eq!(told, expected, "nothing sent, but the peer's view is stale");
                        if next_due.is_some() {
                            next_due = Some(now + interval);
                        }
                        assert_eq!(sender.poll_timeout(), next_due, "a deadline left behind");
                    }
                }
            }
        }
    }
}

fn check_sent(
    msg: &PexMessage,
    current: &BTreeMap<SocketAddr, PexFlags>,
    own: &BTreeSet<SocketAddr>,
    told: &BTreeMap<SocketAddr, PexFlags>,
) {
    assert!(!msg.is_empty(), "an empty message");
    assert!(
        msg.added.len() <= MAX_PER_MESSAGE,
        "{} added",
        msg.added.len()
    );
    assert!(
        msg.dropped.len() <= MAX_PER_MESSAGE,
        "{} dropped",
        msg.dropped.len()
    );
    for &(a, f) in &msg.added {
        assert!(!own.contains(&a), "told the peer about itself at {a}");
        assert_ne!(a.port(), 0, "told the peer about port 0");
        assert_eq!(
            current.get(&a),
            Some(&f),
            "added {a} {f:?}, not connected so"
        );
        assert_ne!(told.get(&a), Some(&f), "told the peer {a} again");
    }
    let added: BTreeSet<SocketAddr> = msg.added.iter().map(|&(a, _)| a).collect();
    assert_eq!(added.len(), msg.added.len(), "an address added twice");
    let dropped: BTreeSet<SocketAddr> = msg.dropped.iter().copied().collect();
    assert_eq!(dropped.len(), msg.dropped.len(), "an address dropped twice");
    for a in &msg.dropped {
        assert!(
            told.contains_key(a),
            "dropped {a}, which the peer was never told"
        );
        assert!(!current.contains_key(a), "dropped {a}, still connected");
    }
    let mut sorted = msg.clone();
    sorted.added.sort_by_key(|(a, _)| a.is_ipv6());
    sorted.dropped.sort_by_key(|a| a.is_ipv6());
    assert_eq!(
        PexMessage::decode(&msg.encode()),
        Ok(sorted),
        "a sent message does not decode to itself"
    );
}
