//! Body for the peer state machine ([`Peer`]) driven by arbitrary bytes, timer firings and
//! application calls.

use std::time::Duration;

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::peer::{MAX_PIPELINE, Peer, PeerConfig, PeerEvent, PeerState};
use kp_torrent_core::time::Time;
use kp_torrent_core::wire::{
    self, BLOCK_SIZE, BlockRequest, DEFAULT_MAX_MESSAGE_LEN, Decoder, ExtendedHandshake, Handshake,
    Message,
};

use super::Bytes;
use super::formats::check_message;

const INFO_HASH: InfoHash = InfoHash([0x11; 20]);
const OUR_ID: PeerId = PeerId([0x22; 20]);
const THEIR_ID: PeerId = PeerId([0x33; 20]);
/// Most steps one input runs, so every input finishes quickly.
const MAX_STEPS: usize = 400;

/// Input: the torrent's piece count, our port and serve-queue size, the direction, how the peer's
/// handshake looks (so most inputs get past it), then a script of steps, each chosen by one byte:
/// raw bytes, a well-formed message, time passing, a timer firing exactly when due, or one of the
/// application calls the session makes (choke, interest, requests, serving, have, close).
///
/// Checks: nothing is emitted after [`PeerEvent::Closed`] and `Closed` comes exactly when the state
/// becomes closed; a timer call before [`Peer::poll_timeout`], or a second call at the same time,
/// does nothing; what we send is our handshake followed by well-formed messages, never anything
/// before it; events name only pieces in range and requests we really had outstanding or queued.
pub fn peer(data: &[u8]) {
    let mut b = Bytes::new(data);
    let piece_count = u32::from(b.u8()) + 1;
    let listen_port = b.u16();
    let config = PeerConfig {
        info_hash: INFO_HASH,
        our_id: OUR_ID,
        piece_count: Some(piece_count),
        metadata_size: None,
        listen_port,
        max_serve_queue: usize::from(b.u8() % 8),
        pex: b.bool(),
        // Derived, not read, so the committed inputs keep their meaning; 0 half the time.
        dht_port: if listen_port.is_multiple_of(2) {
            0
        } else {
            listen_port
        },
    };
    let max_serve_queue = config.max_serve_queue;
    let pex = config.pex;
    let dht = config.dht_port != 0;
    let outgoing = b.bool();
    let mut h = Harness {
        peer: Peer::new(config, outgoing, Time::ZERO),
        now: Time::ZERO,
        piece_count,
        max_serve_queue,
        closed: false,
        handshaked: false,
        sent: Decoder::new(DEFAULT_MAX_MESSAGE_LEN),
        our_handshake_seen: false,
        asked: Vec::new(),
        pex,
        dht,
    };
    h.after_step(&Snapshot::default());

    let shape = b.u8();
    if shape & 3 != 0 {
        let mut reserved = [0u8; 8];
        if shape & 4 != 0 {
            reserved[7] |= 0x04;
        }
        if shape & 8 != 0 {
            reserved[5] |= 0x10;
        }
        let peer_id = if shape & 0x30 == 0x30 {
            OUR_ID
        } else {
            THEIR_ID
        };
        let info_hash = if shape & 0xc0 == 0xc0 {
            InfoHash([0x44; 20])
        } else {
            INFO_HASH
        };
        let mut hs = Vec::new();
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
        .encode(&mut hs);
        h.step(|p, now| p.handle_bytes(now, &hs));
    }

    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        h.run_op(&mut b);
    }
}

struct Harness {
    peer: Peer,
    now: Time,
    piece_count: u32,
    max_serve_queue: usize,
    /// `Closed` has been reported.
    closed: bool,
    handshaked: bool,
    /// Everything we sent, checked as a stream.
    sent: Decoder,
    our_handshake_seen: bool,
    /// Requests the peer sent us (candidates for `queue_request`).
    asked: Vec<BlockRequest>,
    /// We offered `ut_pex`: only then may its messages come out as events.
    pex: bool,
    dht: bool,
}

/// What the peer held before a step, to check the step's events against.
#[derive(Default)]
struct Snapshot {
    outstanding: Vec<BlockRequest>,
    serve_queue: Vec<BlockRequest>,
}

impl Harness {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            outstanding: self.peer.outstanding().collect(),
            serve_queue: self.peer.serve_queue().iter().copied().collect(),
        }
    }

    /// Runs one call on the peer and checks everything it emitted.
    fn step<T>(&mut self, f: impl FnOnce(&mut Peer, Time) -> T) -> T {
        let before = self.snapshot();
        let r = f(&mut self.peer, self.now);
        self.after_step(&before);
        r
    }

    /// Fires the timer at `now`, first checking that an early call does nothing.
    fn timeout(&mut self) {
        let due = self.peer.poll_timeout();
        if due.is_none_or(|d| self.now < d) {
            self.quiet(
                |p, now| p.handle_timeout(now),
                "handle_timeout before its deadline",
            );
        }
        self.step(|p, now| p.handle_timeout(now));
        self.quiet(
            |p, now| p.handle_timeout(now),
            "a second handle_timeout at the same time",
        );
    }

    /// Runs `f` and asserts it emitted no event and no bytes.
    fn quiet(&mut self, f: impl FnOnce(&mut Peer, Time), what: &str) {
        f(&mut self.peer, self.now);
        assert_eq!(self.peer.poll_event(), None, "{what} emitted an event");
        assert!(self.peer.take_output().is_empty(), "{what} sent bytes");
    }

    fn after_step(&mut self, before: &Snapshot) {
        let pc = self.piece_count;
        let was_closed = self.closed;
        while let Some(ev) = self.peer.poll_event() {
            assert!(!self.closed, "event after Closed: {ev:?}");
            match &ev {
                PeerEvent::Closed(reason) => {
                    check_message(reason);
                    self.closed = true;
                }
                PeerEvent::Handshaked { peer_id } => {
                    assert!(!self.handshaked, "second Handshaked");
                    assert_ne!(*peer_id, OUR_ID, "a connection to ourselves was accepted");
                    self.handshaked = true;
                }
                PeerEvent::Have(i) | PeerEvent::AllowedFast(i) | PeerEvent::Suggest(i) => {
                    assert!(*i < pc, "piece {i} of {pc} in {ev:?}");
                }
                PeerEvent::Bitfield => assert_eq!(self.peer.has().len(), pc),
                PeerEvent::Pex(_) => {
                    assert!(self.pex, "ut_pex message although we never offered it")
                }
                PeerEvent::DhtPort(port) => {
                    assert!(self.dht, "a DHT port reported although we run no DHT");
                    assert_ne!(*port, 0, "DHT port 0 reported");
                }
                PeerEvent::Metadata(_) => {
                    panic!("ut_metadata message although we neither serve nor need metadata")
                }
                PeerEvent::Request(r) => {
                    assert!(
                        r.index < pc && r.length > 0 && r.length <= BLOCK_SIZE,
                        "{r:?}"
                    );
                    if self.asked.len() < 64 {
                        self.asked.push(*r);
                    }
                }
                PeerEvent::Cancel(r) => {
                    assert!(before.serve_queue.contains(r), "cancel of unqueued {r:?}");
                }
                PeerEvent::Block {
                    index,
                    begin,
                    data,
                    requested,
                } => {
                    assert!(*index < pc);
                    let was_asked = before.outstanding.iter().any(|o| {
                        o.index == *index && o.begin == *begin && o.length as usize == data.len()
                    });
                    assert!(
                        !*requested || was_asked,
                        "block counted as requested but was not"
                    );
                }
                PeerEvent::Choked { dropped } | PeerEvent::RequestsTimedOut(dropped) => {
                    for r in dropped {
                        assert!(before.outstanding.contains(r), "{ev:?} returns {r:?}");
                    }
                }
                PeerEvent::Rejected(r) => assert!(before.outstanding.contains(r)),
                PeerEvent::Unchoked
                | PeerEvent::Interested
                | PeerEvent::NotInterested
                | PeerEvent::ExtendedHandshake
                | PeerEvent::Snubbed(_) => {}
            }
        }
        assert_eq!(
            self.peer.state() == PeerState::Closed,
            self.closed,
            "Closed reported without closing, or closed without Closed"
        );
        assert_eq!(self.peer.is_established(), self.handshaked && !self.closed);
        let out = self.peer.take_output();
        assert!(
            !was_closed || out.is_empty(),
            "{} bytes sent after Closed",
            out.len()
        );
        self.check_sent(&out);
        let depth = self.peer.pipeline_depth(self.now);
        assert!(
            (1..=MAX_PIPELINE).contains(&depth),
            "pipeline depth {depth}"
        );
        assert!(self.peer.has().len() == pc);
        if !self.closed {
            assert!(self.peer.serve_queue().len() <= self.max_serve_queue);
        }
        let _ = (
            self.peer.download_rate(self.now),
            self.peer.upload_rate(self.now),
        );
        let _ = (
            self.peer.can_request(),
            self.peer.reqq(),
            self.peer.client(),
        );
    }

    /// What we send is our handshake, then whole well-formed messages.
    fn check_sent(&mut self, out: &[u8]) {
        if out.is_empty() {
            return;
        }
        self.sent.feed(out);
        if !self.our_handshake_seen {
            match self.sent.next_handshake() {
                Ok(Some(h)) => {
                    assert_eq!((h.info_hash, h.peer_id), (INFO_HASH, OUR_ID));
                    assert!(h.supports_extended() && h.supports_fast());
                    self.our_handshake_seen = true;
                }
                Ok(None) => return,
                Err(e) => panic!("we sent something else before our handshake: {e}"),
            }
        }
        loop {
            match self.sent.next_message() {
                Ok(Some(Message::Extended { id: 0, payload })) => {
                    ExtendedHandshake::decode(payload).expect("our extended handshake decodes");
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("we sent a malformed message: {e}"),
            }
        }
    }

    fn block(&self, b: &mut Bytes<'_>) -> BlockRequest {
        let index = u32::from(b.u8()) % (self.piece_count + 2);
        let begin = u32::from(b.u8() % 4) * BLOCK_SIZE;
        let length = match b.u8() % 4 {
            0 => BLOCK_SIZE,
            1 => u32::from(b.u8()),
            2 => b.u32(),
            _ => BLOCK_SIZE / 2,
        };
        BlockRequest {
            index,
            begin,
            length,
        }
    }

    /// A request the peer holds (outstanding, queued or asked), or an arbitrary one.
    fn pick(&self, b: &mut Bytes<'_>, from: &[BlockRequest]) -> BlockRequest {
        let i = usize::from(b.u8());
        match from.get(i) {
            Some(r) if i < from.len() => *r,
            _ => self.block(b),
        }
    }

    fn run_op(&mut self, b: &mut Bytes<'_>) {
        match b.u8() % 16 {
            0 => {
                let bytes = b.short_slice();
                self.step(|p, now| p.handle_bytes(now, bytes));
            }
            1 => {
                let msg = self.message(b);
                self.step(|p, now| p.handle_bytes(now, &msg));
            }
            2 => {
                self.now += Duration::from_millis(u64::from(b.u16()) * 10);
                self.timeout();
            }
            3 => {
                if let Some(t) = self.peer.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            4 => {
                let choke = b.bool();
                let queue: Vec<BlockRequest> = self.peer.serve_queue().iter().copied().collect();
                let dropped = self.step(|p, now| p.set_choking(now, choke));
                for r in &dropped {
                    assert!(
                        queue.contains(r),
                        "choking drops {r:?}, which was not queued"
                    );
                }
            }
            5 => {
                let interested = b.bool();
                self.step(|p, now| p.set_interested(now, interested));
            }
            6 => {
                let r = self.block(b);
                if self.peer.outstanding_count() < 300 {
                    self.step(|p, now| p.add_request(now, r));
                }
            }
            7 => {
                let outstanding: Vec<BlockRequest> = self.peer.outstanding().collect();
                let r = self.pick(b, &outstanding);
                let had = outstanding.contains(&r);
                let done = self.step(|p, now| p.cancel_request(now, r));
                assert_eq!(done, had, "cancel_request result");
            }
            8 => {
                let asked = self.asked.clone();
                let r = self.pick(b, &asked);
                let queued = self.step(|p, now| p.queue_request(now, r));
                assert!(
                    !queued || self.peer.serve_queue().contains(&r),
                    "queued but not in the queue"
                );
            }
            9 => {
                let queue: Vec<BlockRequest> = self.peer.serve_queue().iter().copied().collect();
                let r = self.pick(b, &queue);
                let len = if b.bool() {
                    r.length.min(BLOCK_SIZE)
                } else {
                    u32::from(b.u8())
                };
                let data = vec![0xab; len as usize];
                let was_queued = queue
                    .iter()
                    .any(|q| q.index == r.index && q.begin == r.begin && q.length == len);
                let sent = self.step(|p, now| p.send_block(now, r.index, r.begin, &data));
                assert_eq!(sent, was_queued, "send_block result");
            }
            10 => {
                let queue: Vec<BlockRequest> = self.peer.serve_queue().iter().copied().collect();
                let r = self.pick(b, &queue);
                if b.bool() {
                    self.step(|p, now| p.reject(now, r));
                } else {
                    self.step(|p, now| p.drop_queued(now, r));
                    let count =
                        |q: &mut dyn Iterator<Item = &BlockRequest>| q.filter(|q| **q == r).count();
                    let before = count(&mut queue.iter());
                    let after = count(&mut self.peer.serve_queue().iter());
                    assert_eq!(
                        after,
                        before.saturating_sub(1),
                        "drop_queued removes one copy"
                    );
                }
            }
            11 => {
                let piece = u32::from(b.u8()) % self.piece_count;
                self.step(|p, now| p.send_have(now, piece));
            }
            12 => {
                let have = self.bitfield(b);
                self.step(|p, now| p.send_piece_set(now, &have));
            }
            13 => {
                let reason = String::from_utf8_lossy(b.short_slice()).into_owned();
                let reason = if reason.trim().is_empty() {
                    "closed by the test".to_owned()
                } else {
                    reason.replace('\n', " ")
                };
                self.step(|p, _| p.close(reason));
            }
            14 => {
                // Bytes split at every position: the peer must not care where reads end.
                let msg = self.message(b);
                for byte in msg.chunks(1) {
                    self.step(|p, now| p.handle_bytes(now, byte));
                }
            }
            _ => {
                self.now += Duration::from_millis(u64::from(b.u8()));
            }
        }
    }

    fn bitfield(&self, b: &mut Bytes<'_>) -> Bitfield {
        match b.u8() % 3 {
            0 => Bitfield::new(self.piece_count),
            1 => Bitfield::full(self.piece_count),
            _ => {
                let len = (self.piece_count as usize).div_ceil(8);
                let bytes: Vec<u8> = (0..len).map(|_| b.u8()).collect();
                Bitfield::from_bytes(&bytes, self.piece_count).expect("length is right")
            }
        }
    }

    /// A well-formed message from the peer (with a length prefix), mostly with in-range fields.
    fn message(&self, b: &mut Bytes<'_>) -> Vec<u8> {
        let piece = |b: &mut Bytes<'_>| u32::from(b.u8()) % (self.piece_count + 1);
        let kind = b.u8();
        let bits;
        let data;
        let payload;
        let msg = match kind % 20 {
            0 => Message::KeepAlive,
            1 => Message::Choke,
            2 => Message::Unchoke,
            3 => Message::Interested,
            4 => Message::NotInterested,
            5 => Message::Have(piece(b)),
            6 => {
                let right = (self.piece_count as usize).div_ceil(8);
                let len = if b.bool() {
                    right
                } else {
                    usize::from(b.u8() % 40)
                };
                bits = (0..len).map(|_| b.u8()).collect::<Vec<u8>>();
                Message::Bitfield(&bits)
            }
            7 => Message::Request(self.block(b)),
            8 => {
                let outstanding: Vec<BlockRequest> = self.peer.outstanding().collect();
                let r = self.pick(b, &outstanding);
                let len = if b.bool() {
                    r.length.min(BLOCK_SIZE)
                } else {
                    u32::from(b.u8())
                };
                data = vec![0xcd; len as usize];
                Message::Piece {
                    index: r.index,
                    begin: r.begin,
                    data: &data,
                }
            }
            9 => Message::Cancel(self.block(b)),
            10 => Message::Port(b.u16()),
            11 => Message::Suggest(piece(b)),
            12 => Message::HaveAll,
            13 => Message::HaveNone,
            14 => {
                let outstanding: Vec<BlockRequest> = self.peer.outstanding().collect();
                Message::Reject(self.pick(b, &outstanding))
            }
            15 => Message::AllowedFast(piece(b)),
            16 => {
                let ext = ExtendedHandshake {
                    v: b.bool().then(|| "fuzz 1.0".to_owned()),
                    p: b.bool().then(|| b.u16()),
                    reqq: b.bool().then(|| b.u32()),
                    metadata_size: b.bool().then(|| u64::from(b.u32())),
                    yourip: b.bool().then(|| b.short_slice().to_vec()),
                    ..ExtendedHandshake::default()
                };
                payload = ext.encode();
                Message::Extended {
                    id: 0,
                    payload: &payload,
                }
            }
            17 => Message::Extended {
                id: b.u8(),
                payload: b.short_slice(),
            },
            _ => Message::Unknown {
                id: 21 + b.u8() % 200,
                payload: b.short_slice(),
            },
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        debug_assert!(wire::decode(&out, u32::MAX).is_ok());
        out
    }
}
