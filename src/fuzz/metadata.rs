//! Body for BEP 9 (`ut_metadata`): the message codec, [`serve`], and the [`MetadataFetcher`]
//! driven by a few peers that advertise sizes, answer, lie, reject, leave and come back.

use std::fmt::{self, Write as _};
use std::time::Duration;

use kp_torrent_core::id::{InfoHash, PeerHandle};
use kp_torrent_core::metadata::{
    DEFAULT_MAX_METADATA_SIZE, FetcherConfig, MetadataAction, MetadataEvent, MetadataFetcher,
    MetadataMessage, PIECE_SIZE, piece_count, piece_len, serve,
};
use kp_torrent_core::time::Time;

use super::Bytes;
use super::formats::check_message;

/// Peer handles the script uses (few, so handles are reused after a peer leaves).
const PEERS: usize = 4;
/// Most steps one input runs.
const MAX_STEPS: usize = 300;
/// The largest metadata a script fetches: a few pieces, so the last piece is short or full.
const MAX_TRUE_SIZE: u64 = 3 * PIECE_SIZE as u64 + 100;

/// Input: a mode byte; mode 0 is the codec on the rest, any other a fetcher script.
///
/// Codec: decoding never panics, errors are one line, a `data` message's bytes are the payload's
/// tail and at most one piece, and what decodes re-encodes to bytes that decode equal (and
/// re-encode identically). [`serve`] splits the same bytes into pieces that join back to them.
///
/// Script: the true info dictionary (size and contents from the input) and the fetcher's
/// settings, then steps chosen by one byte: a peer advertises a size (the true one, one off,
/// zero, huge, arbitrary), sends a true piece (one it was asked for or any), a corrupted one, an
/// arbitrary `data`, a reject, a request, an arbitrary payload; a peer leaves; time passes; the
/// timer fires when due. Checks: the fetcher completes only with bytes whose SHA-1 is the
/// info-hash, once; it never asks a peer it banned (until that handle leaves and is reused), a
/// peer that is not a source, or for a piece past the peer's size, nor more than
/// `max_in_flight_per_peer` at once; it never bans a peer that only ever told the truth (under
/// its handle, since the handle was last given up); a peer
/// is banned at most once; a timer call before [`MetadataFetcher::poll_timeout`] or a second one
/// at the same time does nothing; progress stays within the limit; what it holds stays within
/// twice the largest size it accepted (checked when the mode byte's top bit is set).
pub fn metadata(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    if mode == 0 {
        let payload = b.rest();
        let _ = codec(payload);
        serving(payload);
        return;
    }
    // The memory check formats the fetcher's state, which costs more than the script: half the
    // inputs do it.
    fetch(b, mode & 0x80 != 0);
}

/// Decodes `payload` and checks the round trip; the message when it decodes.
fn codec(payload: &[u8]) -> Option<MetadataMessage<'_>> {
    let msg = match MetadataMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            check_message(&e);
            return None;
        }
    };
    if let MetadataMessage::Data { data, .. } = msg {
        assert!(
            data.len() <= PIECE_SIZE as usize,
            "{} data bytes",
            data.len()
        );
        assert!(payload.ends_with(data), "data is not the payload's tail");
    }
    let encoded = msg.encode();
    let again = MetadataMessage::decode(&encoded).expect("a re-encoded message decodes");
    assert_eq!(again, msg, "decode(encode(m)) != m");
    assert_eq!(again.encode(), encoded, "encoding is not canonical");
    Some(msg)
}

/// [`serve`] on `info`: every piece in range is its slice, the rest are rejects.
fn serving(info: &[u8]) {
    let size = info.len() as u64;
    let count = piece_count(size);
    let mut joined = Vec::with_capacity(info.len());
    for piece in (0..=count + 1).map(|p| p as u32).chain([u32::MAX]) {
        match serve(info, piece) {
            MetadataMessage::Data {
                piece: p,
                total_size,
                data,
            } => {
                assert_eq!((p, total_size), (piece, size));
                assert_eq!(Some(data.len()), piece_len(size, piece));
                assert!(data.len() == PIECE_SIZE as usize || u64::from(piece) + 1 == count);
                joined.extend_from_slice(data);
                let encoded = serve(info, piece).encode();
                assert_eq!(
                    MetadataMessage::decode(&encoded),
                    Ok(serve(info, piece)),
                    "a served piece does not decode to itself"
                );
            }
            MetadataMessage::Reject { piece: p } => {
                assert_eq!(p, piece);
                assert!(
                    u64::from(piece) >= count,
                    "piece {piece} of {count} rejected"
                );
                assert_eq!(piece_len(size, piece), None);
            }
            MetadataMessage::Request { .. } => panic!("serve answered with a request"),
        }
    }
    assert_eq!(joined, info, "served pieces do not join to the metadata");
}

/// A `fmt::Write` that only counts what is written.
struct Count(u64);

impl fmt::Write for Count {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len() as u64;
        Ok(())
    }
}

/// What the script knows about one peer handle since it last left.
#[derive(Debug, Clone, Default)]
struct PeerModel {
    /// The size the fetcher accepted from it, while it is a source.
    size: Option<u64>,
    /// Reported with `BadPeer`.
    banned: bool,
    /// Something it did was not the truth (a wrong size, a false piece, a malformed answer).
    lied: bool,
    /// Pieces the fetcher asked it for (the latest few), for answers that fit.
    asked: Vec<u32>,
}

struct Harness {
    fetcher: MetadataFetcher,
    info: Vec<u8>,
    info_hash: InfoHash,
    max_size: u64,
    max_in_flight: usize,
    now: Time,
    peers: [PeerModel; PEERS],
    complete: bool,
    /// A peer that lied has left: its pieces may still be in the attempt, and fail it.
    departed_liar: bool,
    /// The largest size the fetcher accepted, for the memory bound.
    largest: u64,
}

fn fetch(mut b: Bytes<'_>, check_memory: bool) {
    let size = 1 + u64::from(b.u16()) % MAX_TRUE_SIZE;
    let fill = b.u8();
    let info: Vec<u8> = (0..size as usize)
        .map(|i| (i.wrapping_mul(31) ^ (i / 251)) as u8 ^ fill)
        .collect();
    let max_size = match b.u8() % 4 {
        0 => DEFAULT_MAX_METADATA_SIZE,
        1 => size,
        2 => size - 1,
        _ => u64::from(b.u16()) * 4,
    };
    let config = FetcherConfig {
        max_metadata_size: max_size,
        max_in_flight_per_peer: usize::from(b.u8() % 5),
        request_timeout: Duration::from_millis(1 + u64::from(b.u16()) * 10),
        backoff: Duration::from_millis(1 + u64::from(b.u16()) * 10),
    };
    let info_hash = InfoHash::of(&info);
    let mut h = Harness {
        fetcher: MetadataFetcher::new(info_hash, config),
        info,
        info_hash,
        max_size,
        max_in_flight: config.max_in_flight_per_peer,
        now: Time::ZERO,
        peers: Default::default(),
        complete: false,
        departed_liar: false,
        largest: 0,
    };
    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        h.run_op(&mut b);
    }
    if check_memory {
        h.check_memory();
    }
}

impl Harness {
    fn size(&self) -> u64 {
        self.info.len() as u64
    }

    /// The true bytes of `piece` (empty past the end).
    fn true_piece(&self, piece: u32) -> &[u8] {
        match piece_len(self.size(), piece) {
            Some(len) => {
                let start = piece as usize * PIECE_SIZE as usize;
                &self.info[start..start + len]
            }
            None => &[],
        }
    }

    /// True when `msg` from a peer tells the truth about our metadata.
    fn is_true(&self, msg: &MetadataMessage<'_>) -> bool {
        match *msg {
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                total_size == self.size()
                    && piece_len(self.size(), piece).is_some()
                    && data == self.true_piece(piece)
            }
            MetadataMessage::Request { .. } | MetadataMessage::Reject { .. } => true,
        }
    }

    fn peer(b: &mut Bytes<'_>) -> usize {
        usize::from(b.u8()) % PEERS
    }

    /// A piece index: one the peer was asked for, or any near the range.
    fn piece(&self, b: &mut Bytes<'_>, peer: usize) -> u32 {
        let asked = &self.peers[peer].asked;
        let i = usize::from(b.u8());
        if i < 128 && !asked.is_empty() {
            asked[i % asked.len()]
        } else {
            u32::from(b.u8()) % (piece_count(self.size()) as u32 + 2)
        }
    }

    fn run_op(&mut self, b: &mut Bytes<'_>) {
        match b.u8() % 12 {
            0 | 11 => {
                let peer = Self::peer(b);
                let size = match b.u8() % 8 {
                    0..=3 => self.size(),
                    4 => self.size() + 1,
                    5 => self.size() - 1,
                    6 => 0,
                    _ => match b.u8() % 3 {
                        0 => u64::MAX,
                        1 => u64::from(b.u32()),
                        _ => self.max_size.saturating_add(1),
                    },
                };
                self.advertise(peer, size);
            }
            1 => {
                let peer = Self::peer(b);
                let piece = self.piece(b, peer);
                let msg = MetadataMessage::Data {
                    piece,
                    total_size: self.size(),
                    data: self.true_piece(piece),
                };
                self.message(peer, &msg.encode());
            }
            2 => {
                let peer = Self::peer(b);
                let piece = self.piece(b, peer);
                let mut data = self.true_piece(piece).to_vec();
                if !data.is_empty() {
                    let at = usize::from(b.u16()) % data.len();
                    data[at] ^= 1 | b.u8();
                }
                let msg = MetadataMessage::Data {
                    piece,
                    total_size: self.size(),
                    data: &data,
                };
                self.message(peer, &msg.encode());
            }
            3 => {
                let peer = Self::peer(b);
                let piece = match b.u8() % 4 {
                    0 => b.u32(),
                    _ => self.piece(b, peer),
                };
                let total_size = match b.u8() % 4 {
                    0 => u64::from(b.u32()),
                    1 => self.size() + 1,
                    _ => self.size(),
                };
                let data = match b.u8() % 3 {
                    0 => b.short_slice().to_vec(),
                    1 => vec![b.u8(); piece_len(total_size, piece).unwrap_or(0)],
                    _ => vec![b.u8(); usize::from(b.u16()) % (PIECE_SIZE as usize + 2)],
                };
                let msg = MetadataMessage::Data {
                    piece,
                    total_size,
                    data: &data,
                };
                self.message(peer, &msg.encode());
            }
            4 => {
                let peer = Self::peer(b);
                let piece = self.piece(b, peer);
                self.message(peer, &MetadataMessage::Reject { piece }.encode());
            }
            5 => {
                let peer = Self::peer(b);
                let piece = self.piece(b, peer);
                self.message(peer, &MetadataMessage::Request { piece }.encode());
            }
            6 => {
                let peer = Self::peer(b);
                let payload = b.short_slice();
                self.message(peer, payload);
            }
            7 => {
                let peer = Self::peer(b);
                self.fetcher.handle_peer_gone(self.now, PeerHandle(peer));
                self.departed_liar |= self.peers[peer].lied;
                self.peers[peer] = PeerModel::default();
                self.drain();
            }
            8 => {
                self.now += Duration::from_millis(u64::from(b.u16()) * 10);
                self.timeout();
            }
            9 => {
                if let Some(t) = self.fetcher.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            _ => self.now += Duration::from_millis(u64::from(b.u8())),
        }
    }

    fn advertise(&mut self, peer: usize, size: u64) {
        let result = self.fetcher.handle_peer(self.now, PeerHandle(peer), size);
        let model = &mut self.peers[peer];
        if size != self.info.len() as u64 {
            model.lied = true;
        }
        match result {
            Ok(()) => {
                assert!(size > 0 && size <= self.max_size, "size {size} accepted");
                if model.size != Some(size) {
                    model.asked.clear();
                }
                model.size = Some(size);
                self.largest = self.largest.max(size);
            }
            Err(e) => {
                check_message(&e);
                assert!(
                    size == 0 || size > self.max_size,
                    "size {size} refused: {e}"
                );
                if !model.banned {
                    model.size = None;
                    model.asked.clear();
                }
            }
        }
        self.drain();
    }

    /// A `ut_metadata` payload from `peer`, fed when it decodes (a session closes the peer
    /// otherwise, which the script models with a separate leave step).
    fn message(&mut self, peer: usize, payload: &[u8]) {
        let Some(msg) = codec(payload) else { return };
        if !self.is_true(&msg) {
            self.peers[peer].lied = true;
        }
        self.fetcher
            .handle_message(self.now, PeerHandle(peer), &msg);
        self.drain();
    }

    /// Fires the timer at `now`, first checking that an early call does nothing.
    fn timeout(&mut self) {
        let due = self.fetcher.poll_timeout();
        if due.is_none_or(|d| self.now < d) {
            self.fetcher.handle_timeout(self.now);
            self.quiet("handle_timeout before its deadline");
        }
        self.fetcher.handle_timeout(self.now);
        self.drain();
        self.fetcher.handle_timeout(self.now);
        self.quiet("a second handle_timeout at the same time");
        if let Some(next) = self.fetcher.poll_timeout() {
            assert!(
                next > self.now,
                "poll_timeout {next} not after {}",
                self.now
            );
        }
    }

    fn quiet(&mut self, what: &str) {
        assert_eq!(
            self.fetcher.poll_action(),
            None,
            "{what} asked for something"
        );
        assert_eq!(self.fetcher.poll_event(), None, "{what} reported something");
    }

    /// Drains the fetcher and checks what came out.
    fn drain(&mut self) {
        let mut asked = [0usize; PEERS];
        let mut batch = Vec::new();
        while let Some(MetadataAction::Request { peer, piece }) = self.fetcher.poll_action() {
            assert!(!self.complete, "request after completion");
            let Some(model) = self.peers.get_mut(peer.0) else {
                panic!("request to unknown handle {peer}");
            };
            assert!(!model.banned, "asked banned {peer} for piece {piece}");
            let Some(size) = model.size else {
                panic!("asked {peer}, which offers no metadata, for piece {piece}");
            };
            assert!(
                piece_len(size, piece).is_some(),
                "asked {peer} for piece {piece} of {size} bytes"
            );
            assert!(
                !batch.contains(&(peer, piece)),
                "asked {peer} twice for {piece}"
            );
            batch.push((peer, piece));
            asked[peer.0] += 1;
            assert!(
                asked[peer.0] <= self.max_in_flight,
                "{} requests at once to {peer}",
                asked[peer.0]
            );
            if model.asked.len() == 8 {
                model.asked.remove(0);
            }
            model.asked.push(piece);
        }
        while let Some(ev) = self.fetcher.poll_event() {
            match ev {
                MetadataEvent::Complete { info } => {
                    assert!(!self.complete, "completed twice");
                    assert_eq!(
                        InfoHash::of(&info),
                        self.info_hash,
                        "completed with metadata of another hash"
                    );
                    self.complete = true;
                }
                MetadataEvent::BadPeer { peer, reason } => {
                    check_message(&reason);
                    let model = &mut self.peers[peer.0];
                    assert!(!model.banned, "{peer} banned twice ({reason})");
                    assert!(
                        model.lied,
                        "{peer} only told the truth, yet banned: {reason}"
                    );
                    model.banned = true;
                }
                MetadataEvent::HashFailed { peers } => {
                    assert!(!self.complete);
                    assert!(peers.len() >= 2, "one peer's failure is a ban: {peers:?}");
                    assert!(peers.windows(2).all(|w| w[0] < w[1]), "{peers:?}");
                    assert!(
                        self.departed_liar || peers.iter().any(|p| self.peers[p.0].lied),
                        "the hash failed, yet {peers:?} only told the truth"
                    );
                }
            }
        }
        assert_eq!(self.fetcher.is_complete(), self.complete);
        if self.complete {
            assert_eq!(
                self.fetcher.poll_timeout(),
                None,
                "a timer after completion"
            );
        }
        for (i, model) in self.peers.iter().enumerate() {
            assert_eq!(
                self.fetcher.is_banned(PeerHandle(i)),
                model.banned,
                "peer {i}"
            );
        }
        if let Some((have, total)) = self.fetcher.progress() {
            assert!(have < total, "progress {have}/{total}");
            assert!(
                u64::from(total) <= piece_count(self.max_size),
                "{total} pieces, over the limit"
            );
        }
    }

    /// The fetcher's state (its debug form, which lists every byte it keeps) stays within the
    /// assembly and the pieces kept from one failed attempt, each at most the largest size
    /// accepted.
    fn check_memory(&self) {
        let mut held = Count(0);
        write!(held, "{:?}", self.fetcher).expect("counting cannot fail");
        let held = held.0;
        let pieces = piece_count(self.largest);
        let bound = 2 * (5 * self.largest + 64 * pieces) + 2048 * PEERS as u64 + 4096;
        assert!(
            held <= bound,
            "the fetcher holds {held} bytes of state, over {bound} (largest size {})",
            self.largest
        );
    }
}
