//! Properties of BEP 9 (`kp_torrent_core::metadata`): the message decoder never panics on any
//! bytes, messages round-trip, and the fetcher, driven by any sequence of hostile messages from
//! several peers, never completes with bytes whose SHA-1 is not the info-hash; with one honest
//! peer among liars it completes and never blames the honest one. The same holds one level up,
//! for a magnet link's `Session` fed hostile peers' wire bytes.

use std::collections::BTreeSet;
use std::time::Duration;

use kp_torrent_core::id::{InfoHash, PeerHandle};
use kp_torrent_core::metadata::{
    FetcherConfig, MetadataAction, MetadataEvent, MetadataFetcher, MetadataMessage, PIECE_SIZE,
    serve,
};
use kp_torrent_core::time::Time;
use quickcheck::{Arbitrary, Gen, TestResult};

/// Deterministic info bytes of `len`.
fn info_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[derive(Clone, Debug)]
struct AnyMessage {
    kind: u8,
    piece: u32,
    total_size: u64,
    data: Vec<u8>,
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let len = if bool::arbitrary(g) {
            usize::from(u16::arbitrary(g)) % (PIECE_SIZE as usize + 1)
        } else {
            usize::from(u8::arbitrary(g))
        };
        AnyMessage {
            kind: u8::arbitrary(g) % 3,
            piece: u32::arbitrary(g),
            total_size: u64::arbitrary(g) >> (u8::arbitrary(g) % 64),
            data: (0..len).map(|_| u8::arbitrary(g)).collect(),
        }
    }
}

impl AnyMessage {
    fn message(&self) -> MetadataMessage<'_> {
        match self.kind {
            0 => MetadataMessage::Request { piece: self.piece },
            1 => MetadataMessage::Data {
                piece: self.piece,
                // Bencode integers are i64.
                total_size: self.total_size.min(i64::MAX as u64),
                data: &self.data,
            },
            _ => MetadataMessage::Reject { piece: self.piece },
        }
    }
}

#[test]
fn messages_round_trip() {
    fn prop(m: AnyMessage) -> bool {
        let msg = m.message();
        MetadataMessage::decode(&msg.encode()) == Ok(msg)
    }
    kp_torrent_tests::quickcheck("messages_round_trip", 2000)
        .quickcheck(prop as fn(AnyMessage) -> bool);
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    fn prop(bytes: Vec<u8>) -> bool {
        let _ = MetadataMessage::decode(&bytes);
        true
    }
    kp_torrent_tests::quickcheck("arbitrary_bytes_never_panic_the_decoder", 5000)
        .quickcheck(prop as fn(Vec<u8>) -> bool);
}

#[test]
fn mutated_messages_never_panic_the_decoder() {
    fn prop(m: AnyMessage, edits: Vec<(u16, u8)>, cut: u16) -> bool {
        let mut bytes = m.message().encode();
        for (at, b) in edits {
            if !bytes.is_empty() {
                let i = usize::from(at) % bytes.len();
                bytes[i] = b;
            }
        }
        let keep = usize::from(cut) % (bytes.len() + 1);
        let _ = MetadataMessage::decode(&bytes[..keep]);
        let _ = MetadataMessage::decode(&bytes);
        true
    }
    kp_torrent_tests::quickcheck("mutated_messages_never_panic_the_decoder", 3000)
        .quickcheck(prop as fn(AnyMessage, Vec<(u16, u8)>, u16) -> bool);
}

/// One input to the fetcher from a hostile world.
#[derive(Clone, Debug)]
enum Op {
    /// A peer advertises a size: the right one, or another.
    Peer {
        peer: u8,
        size: Option<u32>,
    },
    /// A peer sends a data message built from the right bytes, with some lies.
    Data {
        peer: u8,
        piece: u32,
        total_size: Option<u64>,
        flip: Option<u16>,
        cut: Option<u16>,
    },
    /// A peer sends random bytes as a piece.
    Junk {
        peer: u8,
        piece: u8,
        bytes: Vec<u8>,
    },
    /// A peer answers its oldest outstanding request honestly, or with a flipped byte.
    Answer {
        peer: u8,
        flip: Option<u16>,
    },
    Reject {
        peer: u8,
        piece: u32,
    },
    Gone {
        peer: u8,
    },
    Wait {
        secs: u8,
    },
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let peer = u8::arbitrary(g) % 5;
        let small_piece = |g: &mut Gen| {
            if u8::arbitrary(g) < 230 {
                u32::from(u8::arbitrary(g) % 6)
            } else {
                u32::arbitrary(g)
            }
        };
        match u8::arbitrary(g) % 10 {
            0 => Op::Peer {
                peer,
                size: if bool::arbitrary(g) {
                    None
                } else {
                    Some(u32::arbitrary(g) % (6 * PIECE_SIZE))
                },
            },
            1 | 2 => Op::Data {
                peer,
                piece: small_piece(g),
                total_size: if u8::arbitrary(g) < 200 {
                    None
                } else {
                    Some(u64::from(u32::arbitrary(g)))
                },
                flip: Option::<u16>::arbitrary(g),
                cut: if u8::arbitrary(g) < 220 {
                    None
                } else {
                    Some(u16::arbitrary(g))
                },
            },
            3 => Op::Junk {
                peer,
                piece: u8::arbitrary(g) % 6,
                bytes: Vec::arbitrary(g),
            },
            4..=6 => Op::Answer {
                peer,
                flip: if bool::arbitrary(g) {
                    None
                } else {
                    Some(u16::arbitrary(g))
                },
            },
            7 => Op::Reject {
                peer,
                piece: small_piece(g),
            },
            8 => Op::Gone { peer },
            _ => Op::Wait {
                secs: u8::arbitrary(g),
            },
        }
    }
}

fn piece_of(info: &[u8], piece: u32) -> Vec<u8> {
    match serve(info, piece) {
        MetadataMessage::Data { data, .. } => data.to_vec(),
        _ => Vec::new(),
    }
}

#[test]
fn hostile_peers_never_make_the_fetcher_complete_with_wrong_bytes() {
    fn prop(len: u16, ops: Vec<Op>) -> TestResult {
        let len = 1 + usize::from(len) % (5 * PIECE_SIZE as usize);
        let info = info_bytes(len, 7);
        let hash = InfoHash::of(&info);
        let mut f = MetadataFetcher::new(hash, FetcherConfig::default());
        let mut now = Time::ZERO;
        let mut outstanding: Vec<Vec<u32>> = vec![Vec::new(); 5];
        for op in ops {
            match op {
                Op::Peer { peer, size } => {
                    let size = size.map_or(len as u64, u64::from);
                    let _ = f.handle_peer(now, PeerHandle(peer.into()), size);
                }
                Op::Data {
                    peer,
                    piece,
                    total_size,
                    flip,
                    cut,
                } => {
                    let mut data = piece_of(&info, piece);
                    if let (Some(at), false) = (flip, data.is_empty()) {
                        let i = usize::from(at) % data.len();
                        data[i] ^= 1;
                    }
                    if let Some(c) = cut {
                        data.truncate(usize::from(c) % (data.len() + 1));
                    }
                    let msg = MetadataMessage::Data {
                        piece,
                        total_size: total_size.unwrap_or(len as u64),
                        data: &data,
                    };
                    f.handle_message(now, PeerHandle(peer.into()), &msg);
                }
                Op::Junk { peer, piece, bytes } => {
                    let mut bytes = bytes;
                    bytes.truncate(PIECE_SIZE as usize);
                    let msg = MetadataMessage::Data {
                        piece: piece.into(),
                        total_size: len as u64,
                        data: &bytes,
                    };
                    f.handle_message(now, PeerHandle(peer.into()), &msg);
                }
                Op::Answer { peer, flip } => {
                    let q = &mut outstanding[usize::from(peer)];
                    if !q.is_empty() {
                        let piece = q.remove(0);
                        let mut data = piece_of(&info, piece);
                        if let (Some(at), false) = (flip, data.is_empty()) {
                            let i = usize::from(at) % data.len();
                            data[i] ^= 0x80;
                        }
                        let msg = MetadataMessage::Data {
                            piece,
                            total_size: len as u64,
                            data: &data,
                        };
                        f.handle_message(now, PeerHandle(peer.into()), &msg);
                    }
                }
                Op::Reject { peer, piece } => f.handle_message(
                    now,
                    PeerHandle(peer.into()),
                    &MetadataMessage::Reject { piece },
                ),
                Op::Gone { peer } => {
                    outstanding[usize::from(peer)].clear();
                    f.handle_peer_gone(now, PeerHandle(peer.into()));
                }
                Op::Wait { secs } => {
                    now += Duration::from_secs(secs.into());
                    f.handle_timeout(now);
                }
            }
            while let Some(MetadataAction::Request { peer, piece }) = f.poll_action() {
                if let Some(q) = outstanding.get_mut(peer.0) {
                    q.push(piece);
                } else {
                    return TestResult::error(format!("request to unknown {peer}"));
                }
            }
            while let Some(e) = f.poll_event() {
                if let MetadataEvent::Complete { info: got } = e
                    && (InfoHash::of(&got) != hash || got != info)
                {
                    return TestResult::error("completed with wrong bytes");
                }
            }
        }
        TestResult::passed()
    }
    kp_torrent_tests::quickcheck(
        "hostile_peers_never_make_the_fetcher_complete_with_wrong_bytes",
        1000,
    )
    .quickcheck(prop as fn(u16, Vec<Op>) -> TestResult);
}

/// How a peer in the liveness property behaves.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Flips a bit of every piece it sends.
    Flipper,
    /// Flips a bit of one piece only.
    OnePieceLiar(u8),
    /// Advertises a wrong size and serves consistent garbage of that size.
    WrongSize(u16),
    /// Sends a wrong total_size.
    SizeChanger,
    /// Never answers.
    Silent,
    /// Rejects everything.
    Rejecter,
}

impl Arbitrary for Behaviour {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 6 {
            0 => Behaviour::Flipper,
            1 => Behaviour::OnePieceLiar(u8::arbitrary(g)),
            2 => Behaviour::WrongSize(u16::arbitrary(g)),
            3 => Behaviour::SizeChanger,
            4 => Behaviour::Silent,
            _ => Behaviour::Rejecter,
        }
    }
}

#[test]
fn one_honest_peer_among_liars_is_enough_and_is_never_blamed() {
    fn prop(len: u16, liars: Vec<Behaviour>, honest_at: u8) -> TestResult {
        let liars: Vec<Behaviour> = liars.into_iter().take(6).collect();
        let len = 1 + usize::from(len) % (5 * PIECE_SIZE as usize);
        let info = info_bytes(len, 3);
        let hash = InfoHash::of(&info);
        let honest = usize::from(honest_at) % (liars.len() + 1);
        let mut f = MetadataFetcher::new(hash, FetcherConfig::default());
        let mut now = Time::ZERO;
        // behaviours[i] is peer i's; None is the honest one.
        let mut behaviours: Vec<Option<Behaviour>> = liars.into_iter().map(Some).collect();
        behaviours.insert(honest, None);
        let garbage: Vec<Vec<u8>> = behaviours
            .iter()
            .map(|b| match b {
                Some(Behaviour::WrongSize(s)) => info_bytes(1 + usize::from(*s), 99),
                _ => Vec::new(),
            })
            .collect();
        for (i, b) in behaviours.iter().enumerate() {
            let size = match b {
                Some(Behaviour::WrongSize(_)) => garbage[i].len(),
                _ => len,
            };
            let _ = f.handle_peer(now, PeerHandle(i), size as u64);
        }
        let mut banned = BTreeSet::new();
        for _round in 0..2000 {
            let mut requests = Vec::new();
            while let Some(MetadataAction::Request { peer, piece }) = f.poll_action() {
                requests.push((peer, piece));
            }
            for (peer, piece) in requests {
                let b = behaviours[peer.0];
                match b {
                    None => f.handle_message(now, peer, &serve(&info, piece)),
                    Some(Behaviour::Silent) => {}
                    Some(Behaviour::Rejecter) => {
                        f.handle_message(now, peer, &MetadataMessage::Reject { piece })
                    }
                    Some(Behaviour::WrongSize(_)) => {
                        f.handle_message(now, peer, &serve(&garbage[peer.0], piece))
                    }
                    Some(Behaviour::SizeChanger) => {
                        let data = piece_of(&info, piece);
                        let msg = MetadataMessage::Data {
                            piece,
                            total_size: len as u64 + 1,
                            data: &data,
                        };
                        f.handle_message(now, peer, &msg);
                    }
                    Some(Behaviour::Flipper) | Some(Behaviour::OnePieceLiar(_)) => {
                        let mut data = piece_of(&info, piece);
                        let lie = match b {
                            Some(Behaviour::OnePieceLiar(k)) => {
                                u64::from(piece)
                                    == u64::from(k) % len.div_ceil(PIECE_SIZE as usize) as u64
                            }
                            _ => true,
                        };
                        if lie {
                            data[0] ^= 1;
                        }
                        let msg = MetadataMessage::Data {
                            piece,
                            total_size: len as u64,
                            data: &data,
                        };
                        f.handle_message(now, peer, &msg);
                    }
                }
            }
            while let Some(e) = f.poll_event() {
                match e {
                    MetadataEvent::Complete { info: got } => {
                        if got != info {
                            return TestResult::error("completed with wrong bytes");
                        }
                        if banned.contains(&honest) {
                            return TestResult::error("the honest peer was blamed");
                        }
                        return TestResult::passed();
                    }
                    MetadataEvent::BadPeer { peer, reason } => {
                        if peer.0 == honest {
                            return TestResult::error(format!("honest peer blamed: {reason}"));
                        }
                        banned.insert(peer.0);
                    }
                    MetadataEvent::HashFailed { .. } => {}
                }
            }
            now += Duration::from_secs(5);
            if f.poll_timeout().is_some_and(|t| t <= now) {
                f.handle_timeout(now);
            }
        }
        TestResult::error(format!(
            "no completion after 2000 rounds; banned {banned:?}, behaviours {behaviours:?}"
        ))
    }
    kp_torrent_tests::quickcheck(
        "one_honest_peer_among_liars_is_enough_and_is_never_blamed",
        300,
    )
    .quickcheck(prop as fn(u16, Vec<Behaviour>, u8) -> TestResult);
}

// ---- a magnet session fed hostile peers' bytes ----

mod session {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr, SocketAddr};
    use kp_torrent_core::id::PeerId;
    use kp_torrent_core::peer::OUR_METADATA_ID;
    use kp_torrent_core::session::{Action, Event, Session, SessionConfig};
    use kp_torrent_core::wire::{self, ExtendedHandshake, Handshake, Message};

    /// The id our hostile peers give `ut_metadata`.
    const THEIR_ID: u8 = 3;
    const PEERS: usize = 4;

    /// What a peer says in its extended handshake.
    #[derive(Clone, Copy, Debug)]
    enum Offer {
        /// `ut_metadata` with the right size.
        Right,
        /// `ut_metadata` with another size (0, small, huge…).
        Size(u64),
        /// `ut_metadata` without a size.
        NoSize,
        /// No `ut_metadata` at all.
        Nothing,
    }

    impl Arbitrary for Offer {
        fn arbitrary(g: &mut Gen) -> Self {
            match u8::arbitrary(g) % 8 {
                0 => Offer::Size(u64::from(u32::arbitrary(g) % (4 * PIECE_SIZE))),
                1 => Offer::Size(
                    [
                        0,
                        1,
                        16 * 1024 * 1024 + 1,
                        u64::from(u32::MAX),
                        i64::MAX as u64,
                    ][usize::from(u8::arbitrary(g)) % 5],
                ),
                2 => Offer::NoSize,
                3 => Offer::Nothing,
                _ => Offer::Right,
            }
        }
    }

    /// One thing a hostile peer (or the clock) does.
    #[derive(Clone, Debug)]
    enum WireOp {
        /// Answers its oldest outstanding request, maybe with a flipped byte, a cut, or another
        /// `total_size`.
        Answer {
            peer: u8,
            flip: Option<u16>,
            cut: Option<u16>,
            total_size: Option<u32>,
        },
        /// A data message nobody asked for (any piece, maybe lying).
        Data {
            peer: u8,
            piece: u32,
            flip: Option<u16>,
            total_size: Option<u32>,
        },
        /// An honest data message with bytes of its payload overwritten.
        Mutated {
            peer: u8,
            piece: u8,
            edits: Vec<(u16, u8)>,
        },
        Reject {
            peer: u8,
            piece: u32,
        },
        /// The peer asks us (we have nothing to give yet).
        Request {
            peer: u8,
            piece: u32,
        },
        /// Any payload under our `ut_metadata` id.
        Garbage {
            peer: u8,
            payload: Vec<u8>,
        },
        /// A new extended handshake.
        Rehello {
            peer: u8,
            offer: Offer,
        },
        /// The connection drops (or, when closed, the peer connects again).
        Toggle {
            peer: u8,
        },
        Wait {
            secs: u8,
        },
    }

    impl Arbitrary for WireOp {
        fn arbitrary(g: &mut Gen) -> Self {
            let peer = u8::arbitrary(g) % PEERS as u8;
            let piece = |g: &mut Gen| {
                if u8::arbitrary(g) < 230 {
                    u32::from(u8::arbitrary(g) % 5)
                } else {
                    u32::arbitrary(g)
                }
            };
            // Mostly honest answers, so that fetches get far; each kind of lie about one time in six.
            let rarely = |g: &mut Gen| u8::arbitrary(g) < 40;
            match u8::arbitrary(g) % 16 {
                0..=5 => WireOp::Answer {
                    peer,
                    flip: rarely(g).then(|| u16::arbitrary(g)),
                    cut: rarely(g).then(|| u16::arbitrary(g)),
                    total_size: rarely(g).then(|| u32::arbitrary(g)),
                },
                6 => WireOp::Data {
                    peer,
                    piece: piece(g),
                    flip: Option::arbitrary(g),
                    total_size: rarely(g).then(|| u32::arbitrary(g)),
                },
                7 => WireOp::Mutated {
                    peer,
                    piece: u8::arbitrary(g) % 4,
                    edits: Vec::arbitrary(g),
                },
                8 => WireOp::Reject {
                    peer,
                    piece: piece(g),
                },
                9 => WireOp::Request {
                    peer,
                    piece: piece(g),
                },
                10 => WireOp::Garbage {
                    peer,
                    payload: Vec::arbitrary(g),
                },
                11 => WireOp::Rehello {
                    peer,
                    offer: Offer::arbitrary(g),
                },
                12 => WireOp::Toggle { peer },
                _ => WireOp::Wait {
                    secs: u8::arbitrary(g),
                },
            }
        }
    }

    /// One of the hand-driven peers.
    struct Remote {
        id: [u8; 20],
        addr: SocketAddr,
        offer: Offer,
        /// Its connection, while open.
        handle: Option<kp_torrent_core::id::PeerHandle>,
        /// Metadata pieces we asked it for, oldest first.
        asked: Vec<u32>,
    }

    /// The world around the magnet session.
    struct World {
        s: Session,
        info: Vec<u8>,
        hash: InfoHash,
        now: Time,
        remotes: Vec<Remote>,
        received: usize,
        /// Peers closed for sending wrong metadata, and for undecodable messages.
        bad_metadata_closes: usize,
        garbage_closes: usize,
        /// The metadata arrived before the honest peer came.
        hostile_received: bool,
    }

    fn ext_message(offer: Offer, size: u64) -> Vec<u8> {
        let mut ext = ExtendedHandshake::default();
        match offer {
            Offer::Right => {
                ext.m
                    .insert(kp_torrent_core::metadata::EXTENSION_NAME.into(), THEIR_ID);
                ext.metadata_size = Some(size);
            }
            Offer::Size(other) => {
                ext.m
                    .insert(kp_torrent_core::metadata::EXTENSION_NAME.into(), THEIR_ID);
                ext.metadata_size = Some(other);
            }
            Offer::NoSize => {
                ext.m
                    .insert(kp_torrent_core::metadata::EXTENSION_NAME.into(), THEIR_ID);
            }
            Offer::Nothing => {}
        }
        let mut out = Vec::new();
        Message::Extended {
            id: 0,
            payload: &ext.encode(),
        }
        .encode(&mut out);
        out
    }

    fn under_our_id(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Message::Extended {
            id: OUR_METADATA_ID,
            payload,
        }
        .encode(&mut out);
        out
    }

    impl World {
        fn new(len: usize, offers: &[Offer]) -> World {
            let info = info_bytes(len, 11);
            let hash = InfoHash::of(&info);
            let mut s = Session::new_magnet(
                SessionConfig {
                    seed: len as u64,
                    ..SessionConfig::default()
                },
                hash,
                Time::ZERO,
            );
            while s.poll_action().is_some() {}
            let remotes = offers
                .iter()
                .enumerate()
                .map(|(i, &offer)| Remote {
                    id: [40 + i as u8; 20],
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 40 + i as u8)), 6881),
                    offer,
                    handle: None,
                    asked: Vec::new(),
                })
                .collect();
            World {
                s,
                info,
                hash,
                now: Time::ZERO,
                remotes,
                received: 0,
                bad_metadata_closes: 0,
                garbage_closes: 0,
                hostile_received: false,
            }
        }

        fn open(&mut self, k: usize) -> Result<(), String> {
            let r = &mut self.remotes[k];
            let h = self.s.handle_incoming(self.now, r.addr);
            r.handle = Some(h);
            r.asked.clear();
            let mut hello = Vec::new();
            Handshake::new(self.hash, PeerId(r.id)).encode(&mut hello);
            hello.extend(ext_message(r.offer, self.info.len() as u64));
            self.s.handle_received(self.now, h, &hello);
            self.settle()
        }

        fn send(&mut self, k: usize, bytes: &[u8]) -> Result<(), String> {
            if let Some(h) = self.remotes[k].handle {
                self.s.handle_received(self.now, h, bytes);
            }
            self.settle()
        }

        /// Drains the session, routing its sends to the remotes; checks every metadata event.
        fn settle(&mut self) -> Result<(), String> {
            while let Some(a) = self.s.poll_action() {
                match a {
                    Action::Send { peer, bytes } => {
                        let Some(r) = self.remotes.iter_mut().find(|r| r.handle == Some(peer))
                        else {
                            return Err(format!("send to unknown {peer}"));
                        };
                        let mut rest = &bytes[..];
                        if Handshake::decode(rest).is_ok_and(|h| h.is_some()) {
                            rest = &rest[Handshake::LEN..];
                        }
                        while let Ok(Some((m, used))) = wire::decode(rest, 1 << 20) {
                            rest = &rest[used..];
                            let Message::Extended { id, payload } = m else {
                                continue;
                            };
                            if id == 0 {
                                continue;
                            }
                            if id != THEIR_ID {
                                return Err(format!("extended message under id {id}"));
                            }
                            match MetadataMessage::decode(payload) {
                                Ok(MetadataMessage::Request { piece }) => r.asked.push(piece),
                                Ok(MetadataMessage::Reject { .. }) => {}
                                Ok(MetadataMessage::Data { .. }) => {
                                    return Err("served metadata it does not have".into());
                                }
                                Err(e) => return Err(format!("sent a bad message: {e}")),
                            }
                        }
                        if !rest.is_empty() {
                            return Err("sent an undecodable message".into());
                        }
                    }
                    Action::Close { peer, reason } => {
                        if reason.starts_with("bad metadata") {
                            self.bad_metadata_closes += 1;
                        }
                        if reason.starts_with("bad ut_metadata") {
                            self.garbage_closes += 1;
                        }
                        for r in &mut self.remotes {
                            if r.handle == Some(peer) {
                                r.handle = None;
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(e) = self.s.poll_event() {
                if let Event::MetadataReceived { info } = e {
                    if InfoHash::of(&info) != self.hash || info != self.info {
                        return Err("MetadataReceived with bytes that are not the metadata".into());
                    }
                    self.received += 1;
                    if self.received > 1 {
                        return Err("MetadataReceived twice".into());
                    }
                }
            }
            Ok(())
        }

        fn piece(&self, piece: u32) -> Vec<u8> {
            piece_of(&self.info, piece)
        }

        fn data(&self, piece: u32, total_size: Option<u32>, data: &[u8]) -> Vec<u8> {
            under_our_id(
                &MetadataMessage::Data {
                    piece,
                    total_size: total_size.map_or(self.info.len() as u64, u64::from),
                    data,
                }
                .encode(),
            )
        }

        fn apply(&mut self, op: WireOp) -> Result<(), String> {
            match op {
                WireOp::Answer {
                    peer,
                    flip,
                    cut,
                    total_size,
                } => {
                    let k = usize::from(peer);
                    if self.remotes[k].asked.is_empty() {
                        return Ok(());
                    }
                    let piece = self.remotes[k].asked.remove(0);
                    let mut data = self.piece(piece);
                    if let (Some(at), false) = (flip, data.is_empty()) {
                        let i = usize::from(at) % data.len();
                        data[i] ^= 0x20;
                    }
                    if let Some(c) = cut {
                        data.truncate(usize::from(c) % (data.len() + 1));
                    }
                    let bytes = self.data(piece, total_size, &data);
                    self.send(k, &bytes)
                }
                WireOp::Data {
                    peer,
                    piece,
                    flip,
                    total_size,
                } => {
                    let mut data = self.piece(piece);
                    if let (Some(at), false) = (flip, data.is_empty()) {
                        let i = usize::from(at) % data.len();
                        data[i] ^= 1;
                    }
                    let bytes = self.data(piece, total_size, &data);
                    self.send(usize::from(peer), &bytes)
                }
                WireOp::Mutated { peer, piece, edits } => {
                    let data = self.piece(piece.into());
                    let mut payload = MetadataMessage::Data {
                        piece: piece.into(),
                        total_size: self.info.len() as u64,
                        data: &data,
                    }
                    .encode();
                    for (at, b) in edits {
                        let i = usize::from(at) % payload.len();
                        payload[i] = b;
                    }
                    self.send(usize::from(peer), &under_our_id(&payload))
                }
                WireOp::Reject { peer, piece } => {
                    let bytes = under_our_id(&MetadataMessage::Reject { piece }.encode());
                    self.send(usize::from(peer), &bytes)
                }
                WireOp::Request { peer, piece } => {
                    let bytes = under_our_id(&MetadataMessage::Request { piece }.encode());
                    self.send(usize::from(peer), &bytes)
                }
                WireOp::Garbage { peer, payload } => {
                    self.send(usize::from(peer), &under_our_id(&payload))
                }
                WireOp::Rehello { peer, offer } => {
                    let k = usize::from(peer);
                    self.remotes[k].offer = offer;
                    let bytes = ext_message(offer, self.info.len() as u64);
                    self.send(k, &bytes)
                }
                WireOp::Toggle { peer } => {
                    let k = usize::from(peer);
                    match self.remotes[k].handle.take() {
                        Some(h) => {
                            self.s.handle_peer_closed(self.now, h);
                            self.settle()
                        }
                        None => self.open(k),
                    }
                }
                WireOp::Wait { secs } => {
                    self.now += Duration::from_secs(secs.into());
                    self.s.handle_timeout(self.now);
                    self.settle()
                }
            }
        }

        /// Every hostile peer leaves and an honest one comes: the metadata must arrive, exactly.
        fn honest_ending(&mut self) -> Result<(), String> {
            if self.received > 0 {
                self.hostile_received = true;
                return Ok(());
            }
            for k in 0..self.remotes.len() {
                if let Some(h) = self.remotes[k].handle.take() {
                    self.s.handle_peer_closed(self.now, h);
                    self.settle()?;
                }
            }
            self.remotes.push(Remote {
                id: [99; 20],
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)), 6881),
                offer: Offer::Right,
                handle: None,
                asked: Vec::new(),
            });
            let honest = self.remotes.len() - 1;
            self.open(honest)?;
            for _ in 0..50 {
                while !self.remotes[honest].asked.is_empty() {
                    self.apply(WireOp::Answer {
                        peer: honest as u8,
                        flip: None,
                        cut: None,
                        total_size: None,
                    })?;
                }
                if self.received > 0 {
                    return Ok(());
                }
                if self.remotes[honest].handle.is_none() {
                    return Err("the honest peer was dropped".into());
                }
                self.apply(WireOp::Wait { secs: 10 })?;
            }
            Err("an honest peer alone did not deliver the metadata".into())
        }
    }

    thread_local! {
        /// Cases run, and how many reached the states the property is about.
        static STATS: std::cell::RefCell<[usize; 4]> = const { std::cell::RefCell::new([0; 4]) };
    }

    #[test]
    fn a_magnet_session_never_reports_metadata_that_is_not_the_info_hash() {
        fn prop(len: u16, offers: Vec<Offer>, ops: Vec<WireOp>) -> TestResult {
            let len = 1 + usize::from(len) % (3 * PIECE_SIZE as usize);
            let mut offers: Vec<Offer> = offers.into_iter().take(PEERS).collect();
            offers.resize(PEERS, Offer::Right);
            let mut w = World::new(len, &offers);
            let run = (|| {
                for k in 0..PEERS {
                    w.open(k)?;
                }
                for op in ops {
                    w.apply(op)?;
                }
                w.honest_ending()
            })();
            STATS.with(|st| {
                let mut st = st.borrow_mut();
                st[0] += 1;
                st[1] += usize::from(w.hostile_received);
                st[2] += usize::from(w.bad_metadata_closes > 0);
                st[3] += usize::from(w.garbage_closes > 0);
            });
            match run {
                Ok(()) => TestResult::passed(),
                Err(e) => TestResult::error(e),
            }
        }
        kp_torrent_tests::quickcheck(
            "a_magnet_session_never_reports_metadata_that_is_not_the_info_hash",
            1000,
        )
        .quickcheck(prop as fn(u16, Vec<Offer>, Vec<WireOp>) -> TestResult);
        let [cases, early, banned, garbage] = STATS.with(|st| *st.borrow());
        eprintln!(
            "{cases} cases: the metadata arrived from the hostile peers in {early}, a peer was \
             closed for wrong metadata in {banned}, for an undecodable message in {garbage}"
        );
        // Measured with the default seed: about a fifth of the cases complete before the honest
        // peer comes, over half close a liar and over half a sender of garbage. Much less means
        // the generator no longer reaches those states (or the session stopped asking).
        if cases >= 500 {
            assert!(
                early * 10 >= cases,
                "only {early} of {cases} fetched from the hostile peers"
            );
            assert!(
                banned * 3 >= cases,
                "only {banned} of {cases} caught a liar"
            );
            assert!(
                garbage * 3 >= cases,
                "only {garbage} of {cases} closed a garbage sender"
            );
        }
    }
}
