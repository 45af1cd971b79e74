//! BEP 11 (`ut_pex`): peer exchange.
//!
//! Connected peers tell each other, at most once a minute, which peers they connected to
//! (`added`) and disconnected from (`dropped`) since their last message. Three parts, none of
//! which knows about sessions or sockets:
//! - [`PexMessage`]: the codec (compact IPv4 and IPv6 addresses with one flags byte each), the
//!   payload of a BEP 10 `Message::Extended` sent under the id the receiver gave `ut_pex`.
//! - [`PexSender`]: one per connected peer that supports `ut_pex`; given our current set of
//!   connected peers it says what to send that peer and when.
//! - [`PexReceiver`]: one per connected peer; it checks what a peer sent (no port 0, no
//!   unspecified or multicast address, bounded counts, no more than one message per interval)
//!   before the caller adds the addresses to its peer list.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::bencode::{self, Limits, Owned};
use crate::time::Time;

#[cfg(test)]
mod tests;

/// The extension's name in the BEP 10 handshake's `m` dictionary.
pub const EXTENSION_NAME: &str = "ut_pex";

/// BEP 11: at most this many `added` and this many `dropped` addresses in one message (each
/// family's lists together).
pub const MAX_PER_MESSAGE: usize = 50;

/// BEP 11: peers send at most one message per minute.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Decoding keeps at most this many addresses of each of the four lists, whatever a peer sends:
/// more than BEP 11 allows, since some clients overshoot, and few enough to bound the work.
pub const MAX_DECODED_PER_LIST: usize = 200;

/// Bencode limits for a message: six strings and their keys, with room for extra keys.
const MESSAGE_LIMITS: Limits = Limits {
    max_depth: 4,
    max_items: 256,
};

/// The flags byte BEP 11 attaches to each added peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: the peer prefers encrypted connections.
    pub const ENCRYPTION: PexFlags = PexFlags(0x01);
    /// 0x02: the peer is a seed (or only uploads): a seed need not dial it.
    pub const SEED: PexFlags = PexFlags(0x02);
    /// 0x04: the peer supports uTP.
    pub const UTP: PexFlags = PexFlags(0x04);
    /// 0x08: the peer supports `ut_holepunch`.
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// 0x10: the sender reached the peer by dialling it, so it accepts incoming connections.
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    /// True when every bit of `other` is set here.
    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for PexFlags {
    type Output = PexFlags;
    fn bitor(self, rhs: PexFlags) -> PexFlags {
        PexFlags(self.0 | rhs.0)
    }
}

/// Why a PEX message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PexError {
    /// The payload is not bencode.
    Bencode(bencode::DecodeError),
    /// The payload is bencode but not a dictionary.
    NotDict,
    /// A second message within [`PexReceiver`]'s interval; BEP 11 allows one a minute.
    TooFrequent {
        /// Time since the previous message.
        since_last: Duration,
        /// The shortest gap accepted.
        min: Duration,
    },
}

impl fmt::Display for PexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PexError::Bencode(e) => write!(f, "ut_pex message: {e}"),
            PexError::NotDict => f.write_str("ut_pex message: not a bencoded dictionary"),
            PexError::TooFrequent { since_last, min } => write!(
                f,
                "ut_pex message {:.1} s after the previous one (at most one every {} s); ignored",
                since_last.as_secs_f64(),
                min.as_secs()
            ),
        }
    }
}

impl std::error::Error for PexError {}

/// One `ut_pex` message: peers the sender connected to and disconnected from since its last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers connected, with their flags; IPv4 and IPv6 together, in the order received.
    pub added: Vec<(SocketAddr, PexFlags)>,
    /// Peers disconnected; IPv4 and IPv6 together.
    pub dropped: Vec<SocketAddr>,
}

impl PexMessage {
    /// True when the message has nothing to say.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// Decodes a `ut_pex` payload.
    ///
    /// Lenient where real clients differ, strict on size: a list that is not a byte string is
    /// treated as absent, a trailing partial address in a compact list is ignored, a flags list
    /// shorter than its address list gives the rest flags 0 (longer, the extra bytes are
    /// ignored), and each list keeps at most [`MAX_DECODED_PER_LIST`] addresses. The addresses
    /// are not checked here: see [`PexReceiver`].
    pub fn decode(payload: &[u8]) -> Result<PexMessage, PexError> {
        let value = bencode::decode_with(payload, MESSAGE_LIMITS).map_err(PexError::Bencode)?;
        let dict = value.as_dict().ok_or(PexError::NotDict)?;
        let list = |key: &[u8]| dict.get_bytes(key).unwrap_or_default();
        let mut msg = PexMessage::default();
        for (addrs, flags, width) in [
            (list(b"added"), list(b"added.f"), 6),
            (list(b"added6"), list(b"added6.f"), 18),
        ] {
            for (i, chunk) in addrs
                .chunks_exact(width)
                .take(MAX_DECODED_PER_LIST)
                .enumerate()
            {
                let f = flags.get(i).copied().unwrap_or(0);
                msg.added.push((compact_addr(chunk), PexFlags(f)));
            }
        }
        for (addrs, width) in [(list(b"dropped"), 6), (list(b"dropped6"), 18)] {
            msg.dropped.extend(
                addrs
                    .chunks_exact(width)
                    .take(MAX_DECODED_PER_LIST)
                    .map(compact_addr),
            );
        }
        Ok(msg)
    }

    /// The bencoded payload, to send as `Message::Extended { id, payload }` with the id the
    /// receiving peer gave `ut_pex`. IPv4 lists are always present (libtorrent sends them even
    /// when empty); IPv6 lists only when they have entries.
    pub fn encode(&self) -> Vec<u8> {
        let (mut added, mut added_f, mut added6, mut added6_f) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(addr, flags) in &self.added {
            match addr {
                SocketAddr::V4(a) => {
                    put_v4(&a, &mut added);
                    added_f.push(flags.0);
                }
                SocketAddr::V6(a) => {
                    put_v6(&a, &mut added6);
                    added6_f.push(flags.0);
                }
            }
        }
        let (mut dropped, mut dropped6) = (Vec::new(), Vec::new());
        for addr in &self.dropped {
            match addr {
                SocketAddr::V4(a) => put_v4(a, &mut dropped),
                SocketAddr::V6(a) => put_v6(a, &mut dropped6),
            }
        }
        let mut dict = vec![
            (b"added".as_slice(), Owned::Bytes(added)),
            (b"added.f".as_slice(), Owned::Bytes(added_f)),
            (b"dropped".as_slice(), Owned::Bytes(dropped)),
        ];
        if !added6.is_empty() {
            dict.push((b"added6".as_slice(), Owned::Bytes(added6)));
            dict.push((b"added6.f".as_slice(), Owned::Bytes(added6_f)));
        }
        if !dropped6.is_empty() {
            dict.push((b"dropped6".as_slice(), Owned::Bytes(dropped6)));
        }
        dict.into_iter().collect::<Owned>().encode()
    }
}

/// A compact address: 4 or 16 bytes of IP, then the port, big-endian. `chunk` is 6 or 18 bytes.
fn compact_addr(chunk: &[u8]) -> SocketAddr {
    let n = chunk.len();
    let port = u16::from_be_bytes([chunk[n - 2], chunk[n - 1]]);
    let ip = match <[u8; 4]>::try_from(&chunk[..n - 2]) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => {
            let mut v6 = [0u8; 16];
            v6.copy_from_slice(&chunk[..16]);
            IpAddr::V6(Ipv6Addr::from(v6))
        }
    };
    SocketAddr::new(ip, port)
}

fn put_v4(a: &SocketAddrV4, out: &mut Vec<u8>) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn put_v6(a: &SocketAddrV6, out: &mut Vec<u8>) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// What we tell one peer about our other peers (BEP 11's sender side).
///
/// The caller keeps, per torrent, the set of peers it is connected to (their listening
/// addresses, with flags) and, per `ut_pex` peer, a `PexSender`. When
/// [`PexSender::poll_timeout`] has passed it calls [`PexSender::handle_timeout`] with that set
/// and sends the message it returns, if any.
#[derive(Debug, Clone)]
pub struct PexSender {
    /// The addresses of the peer itself, never told about itself.
    own: BTreeSet<SocketAddr>,
    /// What the peer has been told is connected, with the flags it was told.
    told: BTreeMap<SocketAddr, PexFlags>,
    /// When the next message may go: an interval after the last one, or after the last look
    /// that found nothing new; `None` before the first message.
    next_due: Option<Time>,
    interval: Duration,
}

impl PexSender {
    /// A sender for the peer at `peer_addr` (the address of its connection), with BEP 11's
    /// one-minute interval. Its first message may go at once.
    pub fn new(peer_addr: SocketAddr) -> PexSender {
        PexSender::with_interval(peer_addr, INTERVAL)
    }

    /// [`PexSender::new`] with another interval (tests; never below BEP 11's in production).
    pub fn with_interval(peer_addr: SocketAddr, interval: Duration) -> PexSender {
        PexSender {
            own: BTreeSet::from([peer_addr]),
            told: BTreeMap::new(),
            next_due: None,
            interval,
        }
    }

    /// Call when the peer's listening address is learnt (its extended handshake's `p` with the
    /// connection's IP): it is not told about itself under that address either.
    pub fn add_own_addr(&mut self, addr: SocketAddr) {
        self.own.insert(addr);
        self.told.remove(&addr);
    }

    /// When the next message may be sent: `None` before the first one (it may go at any time).
    /// Once it has passed, [`PexSender::handle_timeout`] moves it an interval on, whether it
    /// sends or finds nothing new, so a caller that waits for it never spins.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.next_due
    }

    /// The message to send now, given every peer we are connected to (`current`, listening
    /// addresses with flags), or `None` when it is too early or nothing changed since the last
    /// one. At most [`MAX_PER_MESSAGE`] added and dropped; the rest wait for the next message.
    #[must_use]
    pub fn handle_timeout(
        &mut self,
        now: Time,
        current: &BTreeMap<SocketAddr, PexFlags>,
    ) -> Option<PexMessage> {
        if self.next_due.is_some_and(|due| now < due) {
            return None;
        }
        let mut msg = PexMessage::default();
        let dropped: Vec<SocketAddr> = self
            .told
            .keys()
            .filter(|a| !current.contains_key(a))
            .take(MAX_PER_MESSAGE)
            .copied()
            .collect();
        for a in &dropped {
            self.told.remove(a);
        }
        msg.dropped = dropped;
        for (&addr, &flags) in current {
            if msg.added.len() == MAX_PER_MESSAGE {
                break;
            }
            if self.own.contains(&addr) || addr.port() == 0 {
                continue;
            }
            // A peer whose flags changed (it became a seed) is announced again.
            if self.told.get(&addr) != Some(&flags) {
                self.told.insert(addr, flags);
                msg.added.push((addr, flags));
            }
        }
        if msg.is_empty() {
            // Look again an interval from now (before the first message: whenever called).
            if self.next_due.is_some() {
                self.next_due = Some(now + self.interval);
            }
            return None;
        }
        self.next_due = Some(now + self.interval);
        Some(msg)
    }
}

/// Settings of a [`PexReceiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Messages closer together than this are ignored. Default 45 s: BEP 11's minute less some
    /// slack for the sender's timer.
    pub min_interval: Duration,
    /// Most added addresses kept from one message. Default [`MAX_PER_MESSAGE`].
    pub max_added: usize,
    /// Most dropped addresses kept from one message. Default [`MAX_PER_MESSAGE`].
    pub max_dropped: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            min_interval: Duration::from_secs(45),
            max_added: MAX_PER_MESSAGE,
            max_dropped: MAX_PER_MESSAGE,
        }
    }
}

/// What one peer told us through PEX (BEP 11's receiver side): decodes and checks its messages.
#[derive(Debug, Clone)]
pub struct PexReceiver {
    config: ReceiverConfig,
    last: Option<Time>,
}

impl PexReceiver {
    /// A receiver for one peer.
    pub fn new(config: ReceiverConfig) -> PexReceiver {
        PexReceiver { config, last: None }
    }

    /// Call with the payload of a `ut_pex` message from the peer: the addresses worth adding to
    /// the peer list (`added`) and those the peer no longer sees (`dropped`).
    ///
    /// Dropped: port 0, unspecified (0.0.0.0, ::), broadcast and multicast addresses, duplicates,
    /// anything past the configured caps. An error is the peer's fault but not fatal: a message
    /// that is not bencode, or comes sooner than [`ReceiverConfig::min_interval`] after the
    /// previous accepted one (its contents are ignored).
    pub fn handle_message(&mut self, now: Time, payload: &[u8]) -> Result<PexMessage, PexError> {
        if let Some(last) = self.last {
            let since_last = now.saturating_since(last);
            if since_last < self.config.min_interval {
                return Err(PexError::TooFrequent {
                    since_last,
                    min: self.config.min_interval,
                });
            }
        }
        let msg = PexMessage::decode(payload)?;
        self.last = Some(now);
        Ok(self.filter(msg))
    }

    /// Keeps the usable, distinct addresses of `msg`, within the caps.
    fn filter(&self, msg: PexMessage) -> PexMessage {
        let mut seen = BTreeSet::new();
        let added = msg
            .added
            .into_iter()
            .filter(|&(a, _)| usable(a) && seen.insert(a))
            .take(self.config.max_added)
            .collect();
        let mut seen = BTreeSet::new();
        let dropped = msg
            .dropped
            .into_iter()
            .filter(|&a| usable(a) && seen.insert(a))
            .take(self.config.max_dropped)
            .collect();
        PexMessage { added, dropped }
    }
}

/// An address one could dial: a port, and an IP that names one host.
fn usable(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    }
}
