//! Properties of BEP 9 (`kp_torrent_core::metadata`): the message decoder never panics on any
//! bytes, messages round-trip, and the fetcher, driven by any sequence of hostile messages from
//! several peers, never completes with bytes whose SHA-1 is not the info-hash; with one honest
//! peer among liars it completes and never blames the honest one.

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
