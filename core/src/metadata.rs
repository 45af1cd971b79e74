//! BEP 9 (`ut_metadata`): fetching a torrent's info dictionary from peers, for magnet links, and
//! serving ours.
//!
//! Three parts, none of which knows about sessions or sockets:
//! - [`MetadataMessage`]: the codec of the extension's messages (`request`, `data`, `reject`), the
//!   payload of a BEP 10 `Message::Extended` sent under the id the receiver gave `ut_metadata` in
//!   its extended handshake.
//! - [`MetadataFetcher`]: the state machine that downloads the info dictionary in 16 KiB pieces from
//!   several peers and hands it over only once its SHA-1 equals the info-hash.
//! - [`serve`]: our answer to a peer's `request`, from the info dictionary we have.
//!
//! # Driving the fetcher
//!
//! Like the crate's other state machines: feed inputs with `handle_*(now, …)` — a peer advertised
//! a `metadata_size` in its extended handshake ([`MetadataFetcher::handle_peer`]), a peer sent a
//! `data` or `reject` message ([`MetadataFetcher::handle_message`]), a peer went away
//! ([`MetadataFetcher::handle_peer_gone`]), a deadline passed
//! ([`MetadataFetcher::handle_timeout`], idempotent) — then drain
//! [`MetadataFetcher::poll_action`] (requests to send) and [`MetadataFetcher::poll_event`]
//! (completion, misbehaving peers) until `None`, and wake up at
//! [`MetadataFetcher::poll_timeout`].
//!
//! # Hostile peers
//!
//! A peer is asked only for the size it advertised. A `data` message whose `total_size` differs
//! from that size, whose piece is out of range, or whose length is not the piece's length proves
//! the peer broken: it is reported with [`MetadataEvent::BadPeer`] and never asked again. A piece
//! we already have or expect from another peer is ignored; a late answer to a request that timed
//! out is used while its piece is still missing (the hash check judges it like any other). When the assembled bytes fail the hash check and came
//! from one peer, that peer is reported; when they came from several, the fetcher keeps the failed
//! pieces and from then on fetches from one peer at a time: an attempt that fails convicts its
//! only source, and one that succeeds convicts every earlier peer whose piece differs from the
//! verified bytes. So the fetcher never completes with bytes whose SHA-1 is not the info-hash, and
//! it never bans an honest peer for another's lie.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::bencode::{self, Limits, Owned};
use crate::id::{InfoHash, PeerHandle};
use crate::time::Time;

#[cfg(test)]
mod tests;

/// The extension's name in the BEP 10 handshake's `m` dictionary.
pub const EXTENSION_NAME: &str = "ut_metadata";

/// Every piece of the info dictionary is this long, except the last one.
pub const PIECE_SIZE: u32 = 16 * 1024;

/// The default for [`FetcherConfig::max_metadata_size`]: 16 MiB.
///
/// An info dictionary is mostly 20 bytes of SHA-1 per piece, so 16 MiB holds about 800,000 piece
/// hashes (a 3 TiB torrent with 4 MiB pieces) or a large file list; real torrents' dictionaries
/// are rarely over 1 MiB. The fetcher holds at most twice this much (the assembly and the pieces
/// kept from a failed attempt to find the culprit), so the limit also caps what one magnet link
/// can make us allocate.
pub const DEFAULT_MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;

/// msg_type values of the three messages.
mod msg_type {
    pub(super) const REQUEST: i64 = 0;
    pub(super) const DATA: i64 = 1;
    pub(super) const REJECT: i64 = 2;
}

/// The bencode limits for a message's dictionary: it holds two or three integers; a little room
/// is left for keys other clients add.
const MESSAGE_LIMITS: Limits = Limits {
    max_depth: 4,
    max_items: 64,
};

/// Why a metadata message or a peer's metadata is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// The message does not start with bencode.
    Bencode(bencode::DecodeError),
    /// The message's bencoded value is not a dictionary.
    NotDict,
    /// The dictionary has no integer `msg_type`.
    MissingMsgType,
    /// A `msg_type` other than 0 (request), 1 (data) and 2 (reject).
    UnknownMsgType(i64),
    /// The dictionary has no `piece`, or one that is not an integer from 0 to 2^32 - 1.
    BadPieceIndex,
    /// A `data` message without a non-negative integer `total_size`.
    BadTotalSize,
    /// A `data` message carrying more than one piece's worth of bytes.
    DataTooLong {
        /// Bytes after the dictionary.
        len: usize,
    },
    /// A peer advertised a `metadata_size` of zero.
    ZeroSize,
    /// A peer advertised a `metadata_size` over [`FetcherConfig::max_metadata_size`].
    SizeTooLarge {
        /// The size advertised.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A `data` message's `total_size` is not the size the peer advertised.
    SizeChanged {
        /// The `metadata_size` of the peer's extended handshake.
        advertised: u64,
        /// The `total_size` of its `data` message.
        sent: u64,
    },
    /// A `data` message for a piece past the end of the metadata.
    PieceOutOfRange {
        /// The piece sent.
        piece: u32,
        /// How many pieces the metadata has.
        pieces: u32,
    },
    /// A `data` message whose bytes are not as long as its piece.
    WrongLength {
        /// The piece sent.
        piece: u32,
        /// Bytes received.
        len: usize,
        /// The piece's length.
        expected: usize,
    },
    /// The metadata fetched from this peer alone does not hash to the info-hash.
    HashMismatch,
    /// This peer's piece differs from the metadata that later verified.
    WrongPiece {
        /// The piece that differed.
        piece: u32,
    },
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Bencode(e) => write!(f, "ut_metadata message: {e}"),
            MetadataError::NotDict => f.write_str("ut_metadata message: not a bencoded dictionary"),
            MetadataError::MissingMsgType => {
                f.write_str("ut_metadata message: no integer msg_type")
            }
            MetadataError::UnknownMsgType(t) => write!(
                f,
                "ut_metadata message: unknown msg_type {t} (expected 0, 1 or 2)"
            ),
            MetadataError::BadPieceIndex => f.write_str(
                "ut_metadata message: missing piece index, or not an integer from 0 to 4294967295",
            ),
            MetadataError::BadTotalSize => {
                f.write_str("ut_metadata data: missing or negative total_size")
            }
            MetadataError::DataTooLong { len } => write!(
                f,
                "ut_metadata data: {len} bytes of payload, more than one {PIECE_SIZE}-byte piece"
            ),
            MetadataError::ZeroSize => f.write_str("peer advertised a metadata_size of 0"),
            MetadataError::SizeTooLarge { size, limit } => write!(
                f,
                "peer advertised a metadata_size of {size} bytes, over the limit of {limit}"
            ),
            MetadataError::SizeChanged { advertised, sent } => write!(
                f,
                "ut_metadata data: total_size {sent}, but the peer advertised metadata_size {advertised}"
            ),
            MetadataError::PieceOutOfRange { piece, pieces } => write!(
                f,
                "ut_metadata data: piece {piece} out of range (the metadata has {pieces} pieces)"
            ),
            MetadataError::WrongLength {
                piece,
                len,
                expected,
            } => write!(
                f,
                "ut_metadata data: piece {piece} has {len} bytes, expected {expected}"
            ),
            MetadataError::HashMismatch => {
                f.write_str("the metadata this peer sent does not match the info-hash")
            }
            MetadataError::WrongPiece { piece } => write!(
                f,
                "piece {piece} of the metadata this peer sent differs from the verified metadata"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

/// One `ut_metadata` message (BEP 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// msg_type 0: please send piece `piece`.
    Request {
        /// The piece wanted.
        piece: u32,
    },
    /// msg_type 1: piece `piece` of metadata `total_size` bytes long.
    Data {
        /// The piece sent.
        piece: u32,
        /// The size of the whole info dictionary.
        total_size: u64,
        /// The piece's bytes (the raw bytes after the dictionary).
        data: &'a [u8],
    },
    /// msg_type 2: the sender will not send piece `piece` (it has no metadata, or limits us).
    Reject {
        /// The piece refused.
        piece: u32,
    },
}

impl<'a> MetadataMessage<'a> {
    /// Decodes the payload of an extended message sent under our `ut_metadata` id.
    ///
    /// Keys other than `msg_type`, `piece` and `total_size` are ignored, as are bytes after the
    /// dictionary of a `request` or `reject`. The decode is bounded: a handful of bencode values,
    /// at most one piece of data.
    pub fn decode(payload: &'a [u8]) -> Result<MetadataMessage<'a>, MetadataError> {
        let (value, used) =
            bencode::decode_prefix_with(payload, MESSAGE_LIMITS).map_err(MetadataError::Bencode)?;
        let dict = value.as_dict().ok_or(MetadataError::NotDict)?;
        let kind = dict
            .get_int(b"msg_type")
            .ok_or(MetadataError::MissingMsgType)?;
        if !matches!(kind, msg_type::REQUEST | msg_type::DATA | msg_type::REJECT) {
            return Err(MetadataError::UnknownMsgType(kind));
        }
        let piece = dict
            .get_int(b"piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(MetadataError::BadPieceIndex)?;
        match kind {
            msg_type::REQUEST => Ok(MetadataMessage::Request { piece }),
            msg_type::REJECT => Ok(MetadataMessage::Reject { piece }),
            _ => {
                let total_size = dict
                    .get_int(b"total_size")
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or(MetadataError::BadTotalSize)?;
                let data = payload.get(used..).unwrap_or_default();
                if data.len() > PIECE_SIZE as usize {
                    return Err(MetadataError::DataTooLong { len: data.len() });
                }
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data,
                })
            }
        }
    }

    /// Appends the payload to `out`, to send as `Message::Extended { id, payload }` with the id
    /// the receiving peer gave `ut_metadata`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (kind, piece) = match *self {
            MetadataMessage::Request { piece } => (msg_type::REQUEST, piece),
            MetadataMessage::Data { piece, .. } => (msg_type::DATA, piece),
            MetadataMessage::Reject { piece } => (msg_type::REJECT, piece),
        };
        let mut dict = vec![
            (b"msg_type".as_slice(), Owned::Int(kind)),
            (b"piece".as_slice(), Owned::Int(i64::from(piece))),
        ];
        if let MetadataMessage::Data { total_size, .. } = *self {
            // No info dictionary comes near i64::MAX bytes.
            dict.push((
                b"total_size".as_slice(),
                Owned::Int(i64::try_from(total_size).unwrap_or(i64::MAX)),
            ));
        }
        dict.into_iter().collect::<Owned>().encode_into(out);
        if let MetadataMessage::Data { data, .. } = *self {
            out.extend_from_slice(data);
        }
    }

    /// The payload as a new vector (see [`MetadataMessage::encode_into`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// How many pieces metadata of `size` bytes has.
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(u64::from(PIECE_SIZE))
}

/// The length of piece `piece` of metadata of `size` bytes, or `None` past the end.
pub fn piece_len(size: u64, piece: u32) -> Option<usize> {
    let start = u64::from(piece) * u64::from(PIECE_SIZE);
    if start >= size {
        return None;
    }
    // At most PIECE_SIZE, so it fits.
    Some((size - start).min(u64::from(PIECE_SIZE)) as usize)
}

/// Our answer to a peer's `request` for `piece` of `info` (the bencoded info dictionary exactly
/// as the torrent file holds it): the piece's `data`, or a `reject` when it is out of range.
pub fn serve(info: &[u8], piece: u32) -> MetadataMessage<'_> {
    let size = info.len() as u64;
    match piece_len(size, piece) {
        Some(len) => {
            let start = piece as usize * PIECE_SIZE as usize;
            MetadataMessage::Data {
                piece,
                total_size: size,
                data: &info[start..start + len],
            }
        }
        None => MetadataMessage::Reject { piece },
    }
}

/// Settings of a [`MetadataFetcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetcherConfig {
    /// Peers advertising a larger `metadata_size` are refused. Default
    /// [`DEFAULT_MAX_METADATA_SIZE`].
    pub max_metadata_size: u64,
    /// Requests outstanding at once to one peer. Default 2.
    pub max_in_flight_per_peer: usize,
    /// A request not answered within this is given to another peer. Default 20 s.
    pub request_timeout: Duration,
    /// A peer that rejected a request or let one time out is not asked again for this long.
    /// Default 30 s.
    pub backoff: Duration,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            max_in_flight_per_peer: 2,
            request_timeout: Duration::from_secs(20),
            backoff: Duration::from_secs(30),
        }
    }
}

/// What the fetcher wants the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum MetadataAction {
    /// Send `MetadataMessage::Request { piece }` to `peer`, under the id `peer` gave
    /// [`EXTENSION_NAME`] in its extended handshake.
    Request {
        /// The peer to ask.
        peer: PeerHandle,
        /// The piece to ask for.
        piece: u32,
    },
}

impl MetadataAction {
    /// True when the action is addressed to `peer`.
    fn is_for(&self, peer: PeerHandle) -> bool {
        match *self {
            MetadataAction::Request { peer: p, .. } => p == peer,
        }
    }
}

/// What happened, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataEvent {
    /// The info dictionary: its SHA-1 is the info-hash. The fetcher is done and stays idle.
    Complete {
        /// The bencoded info dictionary.
        info: Vec<u8>,
    },
    /// `peer` is proven to send wrong metadata or to break BEP 9; it is never asked again (the
    /// caller may disconnect it).
    BadPeer {
        /// The culprit.
        peer: PeerHandle,
        /// What it did.
        reason: MetadataError,
    },
    /// Metadata assembled from several peers did not match the info-hash; from now on the
    /// fetcher takes every piece of an attempt from one peer, to find out which of them lied.
    HashFailed {
        /// The peers whose pieces were in the failed attempt.
        peers: Vec<PeerHandle>,
    },
}

/// One peer the fetcher may ask.
#[derive(Debug, Clone)]
struct PeerState {
    /// The `metadata_size` it advertised.
    size: u64,
    /// Proven broken: never asked again.
    banned: bool,
    /// Not asked before this time (after a reject or a timeout).
    backoff_until: Option<Time>,
    /// Outstanding requests: piece and deadline.
    in_flight: Vec<(u32, Time)>,
    /// Requests it rejected or let time out: peers with fewer are asked first, so a few slow
    /// peers taking turns cannot keep a willing one from ever being asked.
    strikes: u32,
}

/// Where one piece of the current attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Missing,
    Requested(PeerHandle),
    Have(PeerHandle, Vec<u8>),
}

/// The fetch of metadata of one size.
#[derive(Debug, Clone)]
struct Attempt {
    size: u64,
    slots: Vec<Slot>,
    /// In one-peer-at-a-time mode, the peer every piece of this attempt comes from.
    source: Option<PeerHandle>,
}

/// The pieces of an attempt that failed the hash check, kept to convict their senders once the
/// right metadata is known.
#[derive(Debug, Clone)]
struct Suspects {
    size: u64,
    pieces: BTreeMap<u32, (PeerHandle, Vec<u8>)>,
}

/// Downloads and verifies a torrent's info dictionary from peers (see the module doc).
///
/// Methods: `handle_*` for inputs, `poll_*` to drain outputs, getters
/// ([`MetadataFetcher::is_complete`], [`MetadataFetcher::progress`]).
#[derive(Debug, Clone)]
pub struct MetadataFetcher {
    info_hash: InfoHash,
    config: FetcherConfig,
    now: Time,
    peers: BTreeMap<PeerHandle, PeerState>,
    attempt: Option<Attempt>,
    /// Set after the first failed multi-peer attempt: every later attempt has one source.
    one_source: bool,
    /// The latest one-peer-at-a-time source chosen, where the round robin resumes.
    last_source: Option<PeerHandle>,
    suspects: Option<Suspects>,
    complete: bool,
    actions: VecDeque<MetadataAction>,
    events: VecDeque<MetadataEvent>,
}

impl MetadataFetcher {
    /// A fetcher for the info dictionary whose SHA-1 is `info_hash`.
    pub fn new(info_hash: InfoHash, config: FetcherConfig) -> MetadataFetcher {
        MetadataFetcher {
            info_hash,
            config,
            now: Time::ZERO,
            peers: BTreeMap::new(),
            attempt: None,
            one_source: false,
            last_source: None,
            suspects: None,
            complete: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// True once [`MetadataEvent::Complete`] was emitted.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Pieces received and pieces in total of the current attempt, if one is running.
    pub fn progress(&self) -> Option<(u32, u32)> {
        let a = self.attempt.as_ref()?;
        let have = a
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Have(..)))
            .count();
        Some((have as u32, a.slots.len() as u32))
    }

    /// True when `peer` was reported with [`MetadataEvent::BadPeer`].
    pub fn is_banned(&self, peer: PeerHandle) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.banned)
    }

    /// Call when `peer`'s extended handshake advertised `ut_metadata` with `metadata_size`
    /// (again when a later handshake changes it). A size of zero or over the limit is refused:
    /// the peer is not asked, and the error says why.
    pub fn handle_peer(
        &mut self,
        now: Time,
        peer: PeerHandle,
        metadata_size: u64,
    ) -> Result<(), MetadataError> {
        self.advance(now);
        let refused = if metadata_size == 0 {
            Some(MetadataError::ZeroSize)
        } else if metadata_size > self.config.max_metadata_size {
            Some(MetadataError::SizeTooLarge {
                size: metadata_size,
                limit: self.config.max_metadata_size,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            // A convicted peer stays convicted whatever it advertises next.
            if !self.is_banned(peer) {
                self.forget_peer(peer);
            }
            self.schedule();
            return Err(e);
        }
        match self.peers.get_mut(&peer) {
            Some(p) if p.size == metadata_size => {}
            Some(p) => {
                // A new size: what it had in flight was for the old one.
                let banned = p.banned;
                self.forget_peer(peer);
                self.peers
                    .insert(peer, PeerState::new(metadata_size, banned));
            }
            None => {
                self.peers
                    .insert(peer, PeerState::new(metadata_size, false));
            }
        }
        self.schedule();
        Ok(())
    }

    /// Call when `peer` disconnected (or stopped supporting `ut_metadata`); its handle may be
    /// reused afterwards for another peer.
    pub fn handle_peer_gone(&mut self, now: Time, peer: PeerHandle) {
        self.advance(now);
        self.forget_peer(peer);
        if let Some(s) = &mut self.suspects {
            // A reused handle must not inherit this peer's guilt.
            s.pieces.retain(|_, (p, _)| *p != peer);
        }
        self.schedule();
    }

    /// Call with a `ut_metadata` message from `peer` (decode it with
    /// [`MetadataMessage::decode`]; a message that does not decode is the caller's to punish).
    /// Requests are not the fetcher's business (see [`serve`]) and are ignored.
    pub fn handle_message(&mut self, now: Time, peer: PeerHandle, message: &MetadataMessage<'_>) {
        self.advance(now);
        match *message {
            MetadataMessage::Request { .. } => {}
            MetadataMessage::Reject { piece } => self.on_reject(peer, piece),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => self.on_data(peer, piece, total_size, data),
        }
        self.schedule();
    }

    /// Call when [`MetadataFetcher::poll_timeout`] has passed: requests past their deadline go
    /// to other peers. Calling it early or twice does nothing extra.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        let now = self.now;
        let backoff = self.config.backoff;
        let mut freed = Vec::new();
        for (&handle, p) in &mut self.peers {
            if p.backoff_until.is_some_and(|t| t <= now) {
                p.backoff_until = None;
            }
            let before = p.in_flight.len();
            p.in_flight.retain(|&(piece, deadline)| {
                let due = deadline <= now;
                if due {
                    freed.push((handle, piece));
                }
                !due
            });
            if p.in_flight.len() != before {
                p.backoff_until = Some(now + backoff);
                p.strikes = p.strikes.saturating_add(1);
            }
        }
        for (handle, piece) in freed {
            self.release(handle, piece);
        }
        self.schedule();
    }

    /// The next request to send, in order; drain until `None` after every input.
    pub fn poll_action(&mut self) -> Option<MetadataAction> {
        self.actions.pop_front()
    }

    /// The next event, in order; drain until `None` after every input.
    pub fn poll_event(&mut self) -> Option<MetadataEvent> {
        self.events.pop_front()
    }

    /// When [`MetadataFetcher::handle_timeout`] is next due: the earliest request deadline or end
    /// of a backoff; `None` when nothing waits on time.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.complete {
            return None;
        }
        self.peers
            .values()
            .flat_map(|p| p.in_flight.iter().map(|&(_, d)| d).chain(p.backoff_until))
            .min()
    }

    /// Time never goes backwards here: an earlier `now` counts as the latest seen.
    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Drops `peer` and returns what it had in flight to the pool.
    fn forget_peer(&mut self, peer: PeerHandle) {
        self.actions.retain(|a| !a.is_for(peer));
        if let Some(p) = self.peers.remove(&peer) {
            for (piece, _) in p.in_flight {
                self.release(peer, piece);
            }
        }
        if let Some(a) = &mut self.attempt {
            if a.source == Some(peer) {
                // Its pieces cannot be checked against anyone else's: start over.
                a.source = None;
                a.slots.fill(Slot::Missing);
            } else {
                // Its handle may come back as another connection, which must not answer for
                // these bytes when they fail the hash.
                for slot in &mut a.slots {
                    if matches!(slot, Slot::Have(p, _) if *p == peer) {
                        *slot = Slot::Missing;
                    }
                }
            }
        }
    }

    /// Piece `piece` requested from `peer` is no longer expected from it.
    fn release(&mut self, peer: PeerHandle, piece: u32) {
        if let Some(a) = &mut self.attempt
            && let Some(slot) = a.slots.get_mut(piece as usize)
            && *slot == Slot::Requested(peer)
        {
            *slot = Slot::Missing;
        }
    }

    fn ban(&mut self, peer: PeerHandle, reason: MetadataError) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.banned {
            return;
        }
        p.banned = true;
        self.actions.retain(|a| !a.is_for(peer));
        let in_flight = std::mem::take(&mut p.in_flight);
        for (piece, _) in in_flight {
            self.release(peer, piece);
        }
        if let Some(a) = &mut self.attempt {
            if a.source == Some(peer) {
                a.source = None;
                a.slots.fill(Slot::Missing);
            } else {
                // Its pieces are worthless now.
                for slot in &mut a.slots {
                    if matches!(slot, Slot::Have(p, _) if *p == peer) {
                        *slot = Slot::Missing;
                    }
                }
            }
        }
        self.events
            .push_back(MetadataEvent::BadPeer { peer, reason });
    }

    fn on_reject(&mut self, peer: PeerHandle, piece: u32) {
        let backoff_until = self.now + self.config.backoff;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let before = p.in_flight.len();
        p.in_flight.retain(|&(q, _)| q != piece);
        if p.in_flight.len() != before {
            p.backoff_until = Some(backoff_until);
            p.strikes = p.strikes.saturating_add(1);
            self.release(peer, piece);
        }
    }

    fn on_data(&mut self, peer: PeerHandle, piece: u32, total_size: u64, data: &[u8]) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.banned || self.complete {
            return;
        }
        let size = p.size;
        if total_size != size {
            self.ban(
                peer,
                MetadataError::SizeChanged {
                    advertised: size,
                    sent: total_size,
                },
            );
            return;
        }
        let Some(expected) = piece_len(size, piece) else {
            let pieces = u32::try_from(piece_count(size)).unwrap_or(u32::MAX);
            self.ban(peer, MetadataError::PieceOutOfRange { piece, pieces });
            return;
        };
        if data.len() != expected {
            self.ban(
                peer,
                MetadataError::WrongLength {
                    piece,
                    len: data.len(),
                    expected,
                },
            );
            return;
        }
        p.in_flight.retain(|&(q, _)| q != piece);
        let Some(a) = &mut self.attempt else {
            return;
        };
        if a.size != size || a.source.is_some_and(|s| s != peer) {
            return;
        }
        let slot = &mut a.slots[piece as usize];
        // A late answer to a request that timed out is as good as a timely one; a piece we have
        // or expect from another peer is not wanted.
        match slot {
            Slot::Requested(q) if *q == peer => {}
            Slot::Missing => {}
            _ => return,
        }
        *slot = Slot::Have(peer, data.to_vec());
        if a.slots.iter().all(|s| matches!(s, Slot::Have(..))) {
            self.verify();
        }
    }

    /// Checks the complete attempt against the info-hash.
    fn verify(&mut self) {
        let Some(a) = self.attempt.take() else {
            return;
        };
        let mut info = Vec::with_capacity(usize::try_from(a.size).unwrap_or(0));
        let mut sources = BTreeSet::new();
        for slot in &a.slots {
            if let Slot::Have(p, bytes) = slot {
                info.extend_from_slice(bytes);
                sources.insert(*p);
            }
        }
        if InfoHash::of(&info) == self.info_hash {
            if let Some(s) = self.suspects.take().filter(|s| s.size == a.size) {
                let mut convicted = BTreeMap::new();
                for (piece, (p, bytes)) in s.pieces {
                    let start = piece as usize * PIECE_SIZE as usize;
                    if info.get(start..start + bytes.len()) != Some(bytes.as_slice()) {
                        convicted.entry(p).or_insert(piece);
                    }
                }
                for (p, piece) in convicted {
                    self.ban(p, MetadataError::WrongPiece { piece });
                }
            }
            self.complete = true;
            for p in self.peers.values_mut() {
                p.in_flight.clear();
                p.backoff_until = None;
            }
            self.events.push_back(MetadataEvent::Complete { info });
            return;
        }
        if sources.len() == 1 {
            if let Some(&p) = sources.first() {
                self.ban(p, MetadataError::HashMismatch);
            }
            return;
        }
        self.one_source = true;
        let mut pieces = BTreeMap::new();
        for (i, slot) in a.slots.into_iter().enumerate() {
            if let Slot::Have(p, bytes) = slot {
                pieces.insert(i as u32, (p, bytes));
            }
        }
        self.suspects = Some(Suspects {
            size: a.size,
            pieces,
        });
        self.events.push_back(MetadataEvent::HashFailed {
            peers: sources.into_iter().collect(),
        });
    }

    /// A peer that may be asked for a piece right now.
    fn is_ready(p: &PeerState, now: Time) -> bool {
        !p.banned && p.backoff_until.is_none_or(|t| t <= now)
    }

    /// Starts or continues an attempt and queues the requests it needs.
    fn schedule(&mut self) {
        if self.complete {
            return;
        }
        let now = self.now;
        if let Some(a) = &self.attempt {
            let nobody_left = !self.peers.values().any(|p| !p.banned && p.size == a.size);
            // Until a piece arrives, follow the size most peers agree on.
            let untouched = !a.slots.iter().any(|s| matches!(s, Slot::Have(..)));
            if nobody_left || (untouched && self.pick_size() != Some(a.size)) {
                let size = a.size;
                for p in self.peers.values_mut().filter(|p| p.size == size) {
                    p.in_flight.clear();
                }
                self.attempt = None;
            }
        }
        if self.attempt.is_none() {
            let Some(size) = self.pick_size() else {
                return;
            };
            let pieces = piece_count(size) as usize;
            self.attempt = Some(Attempt {
                size,
                slots: vec![Slot::Missing; pieces],
                source: None,
            });
        }
        let majority = self.pick_size();
        let Some(a) = &mut self.attempt else {
            return;
        };
        let mut emptied = false;
        if self.one_source {
            let current_ready = a
                .source
                .and_then(|s| self.peers.get(&s))
                .is_some_and(|p| Self::is_ready(p, now));
            if !current_ready {
                // Round robin from the last source, so peers that keep stalling cannot starve
                // the others of their turn.
                let after = self.last_source;
                let eligible = |(&h, p): (&PeerHandle, &PeerState)| {
                    (p.size == a.size && Self::is_ready(p, now)).then_some(h)
                };
                let next = self
                    .peers
                    .iter()
                    .filter(|&(&h, _)| after.is_none_or(|l| h > l))
                    .find_map(eligible)
                    .or_else(|| self.peers.iter().find_map(eligible));
                if let Some(next) = next
                    && a.source != Some(next)
                {
                    // Requests still out to the old source are abandoned: its pieces go.
                    if let Some(old) = a.source.and_then(|s| self.peers.get_mut(&s)) {
                        old.in_flight.clear();
                    }
                    a.source = Some(next);
                    self.last_source = Some(next);
                    emptied = a.slots.iter().any(|s| *s != Slot::Missing);
                    a.slots.fill(Slot::Missing);
                }
            }
        }
        if emptied && majority != Some(a.size) {
            // Emptied by the switch, the attempt follows the majority size now, as an untouched
            // one does above (not at the next call: a second timer call must do nothing).
            let size = a.size;
            for p in self.peers.values_mut().filter(|p| p.size == size) {
                p.in_flight.clear();
            }
            self.attempt = None;
            return self.schedule();
        }
        let deadline = now + self.config.request_timeout;
        let max = self.config.max_in_flight_per_peer;
        let mut order: Vec<(u32, PeerHandle)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.size == a.size && Self::is_ready(p, now))
            .map(|(&h, p)| (p.strikes, h))
            .collect();
        order.sort_unstable();
        for (_, handle) in order {
            let Some(p) = self.peers.get_mut(&handle) else {
                continue;
            };
            if self.one_source && a.source != Some(handle) {
                continue;
            }
            while p.in_flight.len() < max {
                let Some(i) = a.slots.iter().position(|s| *s == Slot::Missing) else {
                    break;
                };
                a.slots[i] = Slot::Requested(handle);
                let piece = i as u32;
                p.in_flight.push((piece, deadline));
                self.actions.push_back(MetadataAction::Request {
                    peer: handle,
                    piece,
                });
            }
        }
    }

    /// The size advertised by the most peers still in good standing; ties go to the smaller.
    /// Peers backed off (they rejected or let requests time out) do not vote while others may
    /// be asked, so silent peers agreeing on a wrong size cannot keep an honest one unasked.
    fn pick_size(&self) -> Option<u64> {
        let now = self.now;
        let any_ready = self.peers.values().any(|p| Self::is_ready(p, now));
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let voters = self
            .peers
            .values()
            .filter(|p| !p.banned && (!any_ready || Self::is_ready(p, now)));
        for p in voters {
            *votes.entry(p.size).or_default() += 1;
        }
        let best = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|&(_, n)| n == best)
            .map(|(size, _)| size)
    }
}

impl PeerState {
    fn new(size: u64, banned: bool) -> PeerState {
        PeerState {
            size,
            banned,
            backoff_until: None,
            in_flight: Vec::new(),
            strikes: 0,
        }
    }
}
