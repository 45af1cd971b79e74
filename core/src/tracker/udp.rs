//! UDP trackers (BEP 15): one [`UdpTracker`] per tracker runs the connect / announce / scrape
//! exchanges, keeps the connection id for its lifetime (one minute) and retransmits on BEP 15's
//! doubling schedule (`base·2^n` seconds for n = 0..=`max_retransmits`, then failure).
//!
//! BEP 15's own numbers (base 15 s, 8 retransmissions) keep one exchange going for over an hour and
//! a silent tracker would hold up a torrent that long, so [`UdpConfig::default`] is much shorter:
//! datagrams at 0, 2 and 6 s and failure at 14 s (each phase, connect and request, once). libtorrent
//! gives up on a silent UDP tracker after 10 s without retransmitting (`tracker_receive_timeout`);
//! two retransmissions survive a lost datagram or two in about the same time. A tracker that fails
//! is retried later by the manager, with backoff.
//!
//! It never sees a socket: the manager sends what [`UdpTracker::poll_transmit`] returns to the
//! tracker's address and hands back datagrams that came from it. Replies with another transaction
//! id, an unexpected action or a short length are ignored, so a stale or forged datagram cannot
//! end an exchange.

use core::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::http::{compact_peers_v4, compact_peers_v6, tracker_text};
use super::{AnnounceParams, AnnounceReply, PeerFilter, ScrapeCounts, TrackerError};
use crate::id::InfoHash;
use crate::time::Time;

/// The magic `protocol_id` of a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_SCRAPE: u32 = 2;
const ACTION_ERROR: u32 = 3;

/// Timing of UDP exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// First retransmission delay, doubled after each retransmission (BEP 15 says 15 s; the
    /// default is 2 s).
    pub retransmit_base: Duration,
    /// Retransmissions of one packet before giving up: the exchange fails `base·(2^(n+1) − 1)`
    /// after the first send (BEP 15 says 8; the default is 2, so 14 s).
    pub max_retransmits: u32,
    /// How long a connection id stays usable (BEP 15: one minute).
    pub connection_id_ttl: Duration,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            retransmit_base: Duration::from_secs(2),
            max_retransmits: 2,
            connection_id_ttl: Duration::from_secs(60),
        }
    }
}

/// What to ask a UDP tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    /// An announce.
    Announce(AnnounceParams),
    /// A scrape of one torrent.
    Scrape(InfoHash),
}

/// How a UDP exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpOutcome {
    /// The announce succeeded.
    Announced(AnnounceReply),
    /// The scrape succeeded.
    Scraped(ScrapeCounts),
    /// The exchange failed (error action or no answer after the last retransmission).
    Failed(TrackerError),
}

/// A BEP 15 connect request.
pub fn connect_packet(txid: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    p.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    p.extend_from_slice(&txid.to_be_bytes());
    p
}

/// A BEP 15 announce request (98 bytes).
pub fn announce_packet(conn_id: u64, txid: u32, a: &AnnounceParams) -> Vec<u8> {
    let mut p = Vec::with_capacity(98);
    p.extend_from_slice(&conn_id.to_be_bytes());
    p.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    p.extend_from_slice(&txid.to_be_bytes());
    p.extend_from_slice(&a.info_hash.0);
    p.extend_from_slice(&a.peer_id.0);
    p.extend_from_slice(&a.downloaded.to_be_bytes());
    p.extend_from_slice(&a.left.to_be_bytes());
    p.extend_from_slice(&a.uploaded.to_be_bytes());
    p.extend_from_slice(&a.event.udp_code().to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // IP: let the tracker use the sender's
    p.extend_from_slice(&a.key.to_be_bytes());
    p.extend_from_slice(&a.numwant.min(i32::MAX as u32).to_be_bytes());
    p.extend_from_slice(&a.port.to_be_bytes());
    p
}

/// A BEP 15 scrape request for one torrent.
pub fn scrape_packet(conn_id: u64, txid: u32, info_hash: &InfoHash) -> Vec<u8> {
    let mut p = Vec::with_capacity(36);
    p.extend_from_slice(&conn_id.to_be_bytes());
    p.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    p.extend_from_slice(&txid.to_be_bytes());
    p.extend_from_slice(&info_hash.0);
    p
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Requesting,
}

#[derive(Debug)]
struct Op {
    request: UdpRequest,
    phase: Phase,
    txid: u32,
    attempt: u32,
    deadline: Time,
    connected_once: bool,
    packet: Vec<u8>,
}

/// One UDP tracker's exchanges, one at a time.
#[derive(Debug)]
pub struct UdpTracker {
    config: UdpConfig,
    rng: ChaCha8Rng,
    filter: PeerFilter,
    ipv6: bool,
    conn_id: Option<(u64, Time)>,
    op: Option<Op>,
    transmit: Option<Vec<u8>>,
}

impl UdpTracker {
    /// A tracker whose transaction ids come from `seed`; `filter` drops bad peers from replies.
    pub fn new(config: UdpConfig, seed: u64, filter: PeerFilter) -> UdpTracker {
        UdpTracker {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            filter,
            ipv6: false,
            conn_id: None,
            op: None,
            transmit: None,
        }
    }

    /// Tells whether the tracker's address is IPv6: its announce replies then carry 18-byte peers.
    pub fn set_ipv6(&mut self, ipv6: bool) {
        self.ipv6 = ipv6;
    }

    /// True while an exchange is in progress.
    pub fn is_busy(&self) -> bool {
        self.op.is_some()
    }

    /// Starts an exchange, abandoning any in progress. Drain [`UdpTracker::poll_transmit`] after.
    pub fn start(&mut self, now: Time, request: UdpRequest) {
        let mut op = Op {
            request,
            phase: Phase::Connecting,
            txid: 0,
            attempt: 0,
            deadline: now,
            connected_once: false,
            packet: Vec::new(),
        };
        let phase = if self.conn_id_valid(now) {
            Phase::Requesting
        } else {
            Phase::Connecting
        };
        self.begin_phase(now, &mut op, phase);
        self.op = Some(op);
    }

    /// Abandons the exchange in progress, if any.
    pub fn cancel(&mut self) {
        self.op = None;
        self.transmit = None;
    }

    fn conn_id_valid(&self, now: Time) -> bool {
        self.conn_id
            .is_some_and(|(_, at)| now.saturating_since(at) < self.config.connection_id_ttl)
    }

    fn begin_phase(&mut self, now: Time, op: &mut Op, phase: Phase) {
        op.phase = phase;
        op.txid = self.rng.random::<u32>();
        op.packet = match (phase, self.conn_id) {
            (Phase::Requesting, Some((cid, _))) => match &op.request {
                UdpRequest::Announce(a) => announce_packet(cid, op.txid, a),
                UdpRequest::Scrape(ih) => scrape_packet(cid, op.txid, ih),
            },
            _ => {
                op.phase = Phase::Connecting;
                connect_packet(op.txid)
            }
        };
        self.send(now, op);
    }

    fn send(&mut self, now: Time, op: &mut Op) {
        let factor = 2u32.checked_pow(op.attempt).unwrap_or(u32::MAX);
        let wait = self
            .config
            .retransmit_base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX);
        op.deadline = now + wait;
        self.transmit = Some(op.packet.clone());
    }

    /// The next datagram to send to the tracker.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.take()
    }

    /// When [`UdpTracker::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.op.as_ref().map(|op| op.deadline)
    }

    /// Retransmits or gives up when the deadline has passed; an early call does nothing.
    pub fn handle_timeout(&mut self, now: Time) -> Option<UdpOutcome> {
        let mut op = self.op.take()?;
        if now < op.deadline {
            self.op = Some(op);
            return None;
        }
        if op.attempt >= self.config.max_retransmits {
            return Some(UdpOutcome::Failed(TrackerError::Timeout));
        }
        op.attempt += 1;
        if op.phase == Phase::Requesting && !self.conn_id_valid(now) {
            // The id expired while we waited: it must be renewed before asking again.
            self.conn_id = None;
            self.begin_phase(now, &mut op, Phase::Connecting);
        } else {
            self.send(now, &mut op);
        }
        self.op = Some(op);
        None
    }

    /// A datagram from the tracker's address; `Some` when it ends the exchange.
    pub fn handle_datagram(&mut self, now: Time, data: &[u8]) -> Option<UdpOutcome> {
        let op = self.op.as_mut()?;
        let action = be_u32(data, 0)?;
        if be_u32(data, 4)? != op.txid {
            return None;
        }
        if action == ACTION_ERROR {
            self.op = None;
            let msg = tracker_text(data.get(8..).unwrap_or_default());
            return Some(UdpOutcome::Failed(TrackerError::UdpError(msg)));
        }
        match (op.phase, action, &op.request) {
            (Phase::Connecting, ACTION_CONNECT, _) => {
                let cid = be_u64(data, 8)?;
                self.conn_id = Some((cid, now));
                let mut op = self.op.take()?;
                if !op.connected_once {
                    // The retransmission count restarts for the request itself, but only once per
                    // exchange, so a tracker that answers connects and nothing else still ends.
                    op.attempt = 0;
                    op.connected_once = true;
                }
                self.begin_phase(now, &mut op, Phase::Requesting);
                self.op = Some(op);
                None
            }
            (Phase::Requesting, ACTION_ANNOUNCE, UdpRequest::Announce(_)) => {
                if data.len() < 20 {
                    return None;
                }
                let peers = data.get(20..).unwrap_or_default();
                let mut reply = AnnounceReply {
                    interval: be_u32(data, 8),
                    incomplete: be_u32(data, 12),
                    complete: be_u32(data, 16),
                    ..AnnounceReply::default()
                };
                if self.ipv6 {
                    compact_peers_v6(peers, &self.filter, &mut reply.peers);
                } else {
                    compact_peers_v4(peers, &self.filter, &mut reply.peers);
                }
                self.op = None;
                Some(UdpOutcome::Announced(reply))
            }
            (Phase::Requesting, ACTION_SCRAPE, UdpRequest::Scrape(_)) => {
                let counts = ScrapeCounts {
                    complete: be_u32(data, 8)?,
                    downloaded: be_u32(data, 12)?,
                    incomplete: be_u32(data, 16)?,
                };
                self.op = None;
                Some(UdpOutcome::Scraped(counts))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PeerId;
    use crate::tracker::AnnounceEvent;
    use core::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn params() -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([0xaa; 20]),
            peer_id: PeerId([0xbb; 20]),
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: AnnounceEvent::Started,
            numwant: 50,
            key: 0x0102_0304,
        }
    }

    fn filter() -> PeerFilter {
        PeerFilter {
            own_port: 6881,
            own_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))],
            max_peers: 2000,
        }
    }

    /// A tracker on BEP 15's own schedule (`base·2^n`, eight retransmissions).
    fn tracker(base_secs: u64) -> UdpTracker {
        let config = UdpConfig {
            retransmit_base: Duration::from_secs(base_secs),
            max_retransmits: 8,
            ..UdpConfig::default()
        };
        UdpTracker::new(config, 7, filter())
    }

    fn txid(p: &[u8]) -> u32 {
        be_u32(p, 12).unwrap()
    }

    fn connect_reply(txid: u32, cid: u64) -> Vec<u8> {
        [
            &0u32.to_be_bytes()[..],
            &txid.to_be_bytes(),
            &cid.to_be_bytes(),
        ]
        .concat()
    }

    fn announce_reply(txid: u32, peers: &[u8]) -> Vec<u8> {
        [
            &1u32.to_be_bytes()[..],
            &txid.to_be_bytes(),
            &1800u32.to_be_bytes(),
            &4u32.to_be_bytes(),
            &9u32.to_be_bytes(),
            peers,
        ]
        .concat()
    }

    /// Connects and returns the announce packet sent afterwards.
    fn connect(t: &mut UdpTracker, now: Time, cid: u64) -> Vec<u8> {
        let c = t.poll_transmit().unwrap();
        answer_connect(t, now, cid, &c)
    }

    /// Answers the connect packet `c`; returns the request sent afterwards.
    fn answer_connect(t: &mut UdpTracker, now: Time, cid: u64, c: &[u8]) -> Vec<u8> {
        assert_eq!(t.handle_datagram(now, &connect_reply(txid(c), cid)), None);
        t.poll_transmit().unwrap()
    }

    #[test]
    fn packets_have_the_bep15_layout() {
        let c = connect_packet(0x1122_3344);
        assert_eq!(
            c,
            [
                0, 0, 4, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44
            ]
        );
        let a = announce_packet(0x0102_0304_0506_0708, 9, &params());
        assert_eq!(a.len(), 98);
        assert_eq!(&a[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(be_u32(&a, 8), Some(1));
        assert_eq!(be_u32(&a, 12), Some(9));
        assert_eq!(&a[16..36], &[0xaa; 20]);
        assert_eq!(&a[36..56], &[0xbb; 20]);
        assert_eq!(
            (be_u64(&a, 56), be_u64(&a, 64), be_u64(&a, 72)),
            (Some(2), Some(3), Some(1))
        );
        assert_eq!(
            (be_u32(&a, 80), be_u32(&a, 84), be_u32(&a, 88)),
            (Some(2), Some(0), Some(0x0102_0304))
        );
        assert_eq!((be_u32(&a, 92), &a[96..]), (Some(50), &[0x1a, 0xe1][..]));
        let s = scrape_packet(5, 6, &InfoHash([3; 20]));
        assert_eq!(
            (s.len(), be_u32(&s, 8), &s[16..]),
            (36, Some(2), &[3u8; 20][..])
        );
    }

    #[test]
    fn connect_then_announce() {
        let mut t = tracker(15);
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let a = connect(&mut t, Time::from_secs(1), 0xfeed);
        assert_eq!(be_u64(&a, 0), Some(0xfeed));
        let mut peers = vec![10, 0, 0, 1, 0x1a, 0xe2];
        peers.extend_from_slice(&[198, 51, 100, 1, 0x1a, 0xe1]); // ourselves
        peers.extend_from_slice(&[10, 0, 0, 2, 0, 0]); // port 0
        let out = t.handle_datagram(Time::from_secs(2), &announce_reply(txid(&a), &peers));
        let expected = AnnounceReply {
            interval: Some(1800),
            incomplete: Some(4),
            complete: Some(9),
            peers: vec!["10.0.0.1:6882".parse::<SocketAddr>().unwrap()],
            ..AnnounceReply::default()
        };
        assert_eq!(out, Some(UdpOutcome::Announced(expected)));
        assert!(!t.is_busy() && t.poll_timeout().is_none());
    }

    #[test]
    fn ipv6_tracker_replies_carry_18_byte_peers() {
        let mut t = tracker(15);
        t.set_ipv6(true);
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let a = connect(&mut t, Time::ZERO, 1);
        let mut peer = "2001:db8::7"
            .parse::<core::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        peer.extend_from_slice(&7000u16.to_be_bytes());
        let Some(UdpOutcome::Announced(r)) =
            t.handle_datagram(Time::ZERO, &announce_reply(txid(&a), &peer))
        else {
            panic!("no announce reply");
        };
        assert_eq!(
            r.peers,
            vec!["[2001:db8::7]:7000".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn scrape_and_error_action() {
        let mut t = tracker(15);
        t.start(Time::ZERO, UdpRequest::Scrape(InfoHash([3; 20])));
        let s = connect(&mut t, Time::ZERO, 1);
        assert_eq!(be_u32(&s, 8), Some(2));
        let reply = [
            &2u32.to_be_bytes()[..],
            &txid(&s).to_be_bytes(),
            &[0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7],
        ]
        .concat();
        assert_eq!(
            t.handle_datagram(Time::ZERO, &reply),
            Some(UdpOutcome::Scraped(ScrapeCounts {
                complete: 5,
                downloaded: 6,
                incomplete: 7
            }))
        );
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let a = t.poll_transmit().unwrap();
        assert_eq!(be_u32(&a, 8), Some(1), "the connection id is reused");
        let err = [
            &3u32.to_be_bytes()[..],
            &txid(&a).to_be_bytes(),
            b"unregistered torrent",
        ]
        .concat();
        assert_eq!(
            t.handle_datagram(Time::ZERO, &err),
            Some(UdpOutcome::Failed(TrackerError::UdpError(
                "unregistered torrent".into()
            )))
        );
    }

    #[test]
    fn wrong_transaction_action_or_length_is_ignored() {
        let mut t = tracker(15);
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let c = t.poll_transmit().unwrap();
        let id = txid(&c);
        let ignored = [
            connect_reply(id.wrapping_add(1), 5), // wrong transaction id
            announce_reply(id, &[]),              // wrong action for a connect
            connect_reply(id, 5)[..12].to_vec(),  // too short
            vec![0, 0, 0],                        // shorter than a header
            [
                &3u32.to_be_bytes()[..],
                &id.wrapping_add(1).to_be_bytes(),
                b"x",
            ]
            .concat(), // error, wrong id
        ];
        for d in &ignored {
            assert_eq!(t.handle_datagram(Time::ZERO, d), None);
            assert!(t.poll_transmit().is_none(), "{d:?} was not ignored");
        }
        let a = answer_connect(&mut t, Time::ZERO, 5, &c);
        let id = txid(&a);
        for d in [
            announce_reply(id ^ 1, &[]),
            connect_reply(id, 5),
            announce_reply(id, &[])[..19].to_vec(),
        ] {
            assert_eq!(t.handle_datagram(Time::ZERO, &d), None);
        }
        assert!(t.is_busy());
        assert!(matches!(
            t.handle_datagram(Time::ZERO, &announce_reply(id, &[])),
            Some(UdpOutcome::Announced(_))
        ));
    }

    /// The waits between sends of one packet until the exchange fails, in seconds.
    fn schedule(t: &mut UdpTracker) -> Vec<u64> {
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let first = t.poll_transmit().unwrap();
        let mut now = Time::ZERO;
        let mut waits = Vec::new();
        loop {
            let deadline = t.poll_timeout().unwrap();
            // An early call does nothing.
            assert_eq!(
                t.handle_timeout(Time::from_nanos(deadline.as_nanos() - 1)),
                None
            );
            assert!(t.poll_transmit().is_none());
            waits.push(deadline.saturating_since(now).as_secs());
            now = deadline;
            match t.handle_timeout(now) {
                None => assert_eq!(
                    t.poll_transmit().as_ref(),
                    Some(&first),
                    "same packet resent"
                ),
                Some(out) => {
                    assert_eq!(out, UdpOutcome::Failed(TrackerError::Timeout));
                    break;
                }
            }
        }
        assert!(!t.is_busy());
        waits
    }

    #[test]
    fn bep15_retransmission_schedule_then_failure() {
        let base = 15;
        let expected: Vec<u64> = (0..=8).map(|n| base << n).collect();
        assert_eq!(schedule(&mut tracker(base)), expected);
    }

    #[test]
    fn default_schedule_gives_up_on_a_silent_tracker_within_15_s() {
        let mut t = UdpTracker::new(UdpConfig::default(), 7, filter());
        let waits = schedule(&mut t);
        assert_eq!(waits, [2, 4, 8], "sends at 0, 2 and 6 s, failure at 14 s");
    }

    #[test]
    fn connect_answered_late_restarts_the_count_once() {
        // A tracker that answers the connect only after its last retransmission, then goes
        // silent: the request gets its own full schedule, and then the exchange ends.
        let mut t = UdpTracker::new(UdpConfig::default(), 7, filter());
        t.start(Time::ZERO, UdpRequest::Announce(params()));
        let c = t.poll_transmit().unwrap();
        assert_eq!(t.handle_timeout(Time::from_secs(2)), None);
        assert_eq!(t.handle_timeout(Time::from_secs(6)), None);
        let _ = t.poll_transmit();
        let a = answer_connect(&mut t, Time::from_secs(13), 5, &c);
        assert_eq!(be_u32(&a, 8), Some(1));
        assert_eq!(t.poll_timeout(), Some(Time::from_secs(15)));
        assert_eq!(t.handle_timeout(Time::from_secs(15)), None);
        assert_eq!(t.handle_timeout(Time::from_secs(19)), None);
        assert_eq!(
            t.handle_timeout(Time::from_secs(27)),
            Some(UdpOutcome::Failed(TrackerError::Timeout))
        );
    }

    #[test]
    fn connection_id_expires_after_a_minute() {
        let mut t = tracker(15);
        t.start(Time::ZERO, UdpRequest::Scrape(InfoHash([1; 20])));
        let s = connect(&mut t, Time::ZERO, 77);
        let reply = [&2u32.to_be_bytes()[..], &txid(&s).to_be_bytes(), &[0; 12]].concat();
        assert!(t.handle_datagram(Time::ZERO, &reply).is_some());
        // Within the minute the id is reused.
        t.start(Time::from_secs(59), UdpRequest::Announce(params()));
        let a = t.poll_transmit().unwrap();
        assert_eq!(be_u64(&a, 0), Some(77));
        t.cancel();
        // After it, a new connect comes first.
        t.start(Time::from_secs(60), UdpRequest::Announce(params()));
        let c = t.poll_transmit().unwrap();
        assert_eq!(be_u64(&c, 0), Some(PROTOCOL_ID));
        // An id that expires while a request is being retransmitted is renewed before resending.
        let a = answer_connect(&mut t, Time::from_secs(60), 78, &c);
        assert_eq!(be_u64(&a, 0), Some(78));
        assert_eq!(t.handle_timeout(Time::from_secs(75)), None);
        assert_eq!(be_u64(&t.poll_transmit().unwrap(), 0), Some(78));
        assert_eq!(t.handle_timeout(Time::from_secs(105)), None);
        assert_eq!(
            be_u64(&t.poll_transmit().unwrap(), 0),
            Some(78),
            "45 s old: still valid"
        );
        assert_eq!(t.handle_timeout(Time::from_secs(165)), None);
        assert_eq!(be_u64(&t.poll_transmit().unwrap(), 0), Some(PROTOCOL_ID));
    }

    #[test]
    fn transaction_ids_come_from_the_seed() {
        let ids = |seed| {
            let mut t = UdpTracker::new(UdpConfig::default(), seed, filter());
            (0..4)
                .map(|_| {
                    t.start(Time::ZERO, UdpRequest::Scrape(InfoHash([0; 20])));
                    txid(&t.poll_transmit().unwrap())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(1), ids(1));
        assert_ne!(ids(1), ids(2));
    }
}
