//! One torrent's swarm: every peer connection, the picker, the choker and piece verification.
//!
//! [`Session`] is shaped like quinn-proto's `Endpoint`: it keeps its connections ([`Peer`]s) in a
//! [`Slab`] addressed by [`PeerHandle`], routes inputs to them and merges their outputs. Every input
//! goes through [`Session::handle_input`] (the `handle_*` methods are shorthands for it), so a trace
//! of [`Input`]s replays a run exactly. After each input the caller drains [`Session::poll_action`]
//! (what the driver must do: connect, send, close, read, write, hash, announce) and
//! [`Session::poll_event`] (what the user interface shows) until `None`, then sleeps until
//! [`Session::poll_timeout`] and calls [`Session::handle_timeout`].
//!
//! A piece counts only after its SHA-1 matched: blocks are written as they arrive, the driver
//! hashes the finished piece and reports the digest, and only then is the piece announced with
//! HAVE, counted and served. Senders of a failed piece are tracked; when the piece later passes,
//! the blocks that differ from the failed attempt prove who sent bad data.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use core::net::SocketAddr;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use slab::Slab;

mod choke;
mod connect;
mod exchange;
mod io;
mod magnet;
mod requests;
mod torrent;
mod verify;
mod webseed;

use verify::{BlockSource, PieceProgress, fingerprint};

pub use io::{Action, AnnounceEvent, Event, Input};
pub use torrent::{FileSpan, SessionConfig, Torrent};
pub use webseed::{MAX_WEB_SEED_BACKLOG, web_seed_handle};

use crate::bitfield::Bitfield;
use crate::choker::{Choker, ChokerConfig};
use crate::id::{InfoHash, PeerHandle, PeerId};
use crate::metadata::{FetcherConfig, MetadataFetcher};
use crate::peer::{Peer, PeerConfig, PeerEvent};
use crate::picker::{Block, Picker, PickerConfig, Received};
use crate::time::Time;
use crate::wire::BlockRequest;

/// An outgoing connection that neither opens nor fails within this time is given up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay after a failed connection; doubles with each failure.
pub const RETRY_BASE: Duration = Duration::from_secs(10);
/// Delay before reconnecting to a peer whose working connection closed; doubles with each drop
/// of a connection that lasted less than [`STABLE_CONNECTION`].
pub const RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the reconnection backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(120);
/// Connection attempts in flight at once.
const MAX_HALF_OPEN: usize = 8;

/// A known address and how connecting to it went.
#[derive(Debug, Clone)]
struct Candidate {
    failures: u32,
    /// Working connections that closed soon after opening, for the reconnection backoff.
    drops: u32,
    next_attempt: Time,
    connected: bool,
    /// Discovery order, the tie-break among addresses due at the same time.
    seq: u64,
}

/// One slot of the slab: a connection being opened, or open.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    outgoing: bool,
    opened: Time,
    /// `None` while an outgoing connection is being opened.
    peer: Option<Peer>,
    /// The picker was told about this peer's pieces (so it must hear it is gone).
    in_picker: bool,
    /// Peer exchange with this peer, once both sides offered it.
    pex: Option<Box<exchange::Exchange>>,
}

/// A torrent's swarm state machine. See the module documentation for the call contract.
///
/// Methods come in four kinds: getters (`have`, `progress`, `peer_count`, …), inputs (`handle_*`,
/// all through [`Session::handle_input`]), and outputs ([`Session::poll_action`],
/// [`Session::poll_event`], [`Session::poll_timeout`]).
pub struct Session {
    config: SessionConfig,
    torrent: Torrent,
    our_id: PeerId,
    now: Time,
    peers: Slab<Slot>,
    picker: Picker,
    have: Bitfield,
    wanted: Bitfield,
    /// Wanted pieces not yet verified.
    needed: u32,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    candidates: BTreeMap<SocketAddr, Candidate>,
    next_seq: u64,
    /// Peers that sent corrupt data: refused after their handshake.
    banned_ids: BTreeSet<[u8; 20]>,
    /// Addresses never dialed again: banned peers' listening addresses, and our own.
    banned_addrs: BTreeSet<SocketAddr>,
    strikes: BTreeMap<[u8; 20], u32>,
    /// The address each peer id last connected from, for ban reports after it left.
    known_ids: BTreeMap<[u8; 20], SocketAddr>,
    pieces: BTreeMap<u32, PieceProgress>,
    /// The block sources of each piece's last failed attempt, kept until the piece passes.
    failed_attempts: BTreeMap<u32, Vec<BlockSource>>,
    /// The one peer re-fetching each failed piece.
    retry_owner: BTreeMap<u32, PeerHandle>,
    choker: Choker,
    shutting_down: bool,
    downloaded: u64,
    uploaded: u64,
    wasted: u64,
    pick_buf: Vec<Block>,
    /// Addresses the peer list took from peer exchange (bounded).
    pex_candidates: usize,
    /// While a magnet link's metadata is missing: its fetch (complete once it arrived, until
    /// [`Session::set_torrent`]).
    magnet: Option<Box<MetadataFetcher>>,
    /// The picker's seed, kept for the picker a magnet link's session builds later.
    picker_seed: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("info_hash", &self.torrent.info_hash)
            .field("have", &self.have)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `torrent`, with the pieces in `have` already verified (from a resume check).
    /// Queues the `started` announce. `now` is the session's starting time.
    pub fn new(config: SessionConfig, torrent: Torrent, have: Bitfield, now: Time) -> Session {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let our_id = match config.peer_id {
            Some(id) => PeerId(id),
            None => PeerId::generate(&mut rng),
        };
        let count = torrent.piece_count();
        let have = if have.len() == count {
            have
        } else {
            Bitfield::new(count)
        };
        let picker_seed = rng.random::<u64>();
        let picker_config = PickerConfig {
            sequential: config.sequential,
            ..PickerConfig::default()
        };
        let picker = Picker::new(
            torrent.piece_length,
            torrent.total_length,
            &have,
            picker_seed,
            picker_config,
        );
        let wanted = Bitfield::full(count);
        let choker = Choker::new(
            ChokerConfig {
                upload_slots: config.upload_slots,
                ..ChokerConfig::default()
            },
            rng.random::<u64>(),
        );
        let mut s = Session {
            config,
            torrent,
            our_id,
            now,
            peers: Slab::new(),
            picker,
            have,
            wanted,
            needed: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            candidates: BTreeMap::new(),
            next_seq: 0,
            banned_ids: BTreeSet::new(),
            banned_addrs: BTreeSet::new(),
            strikes: BTreeMap::new(),
            known_ids: BTreeMap::new(),
            pieces: BTreeMap::new(),
            failed_attempts: BTreeMap::new(),
            retry_owner: BTreeMap::new(),
            choker,
            shutting_down: false,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            pick_buf: Vec::new(),
            pex_candidates: 0,
            magnet: None,
            picker_seed,
        };
        s.recount_needed();
        s.actions.push_back(Action::Announce {
            event: AnnounceEvent::Started,
        });
        s
    }

    /// A session for a magnet link: only the info-hash is known. It connects to peers and fetches
    /// the metadata from them (BEP 9), reports [`Event::MetadataReceived`], and downloads once
    /// [`Session::set_torrent`] gives it the torrent. Queues the `started` announce.
    pub fn new_magnet(config: SessionConfig, info_hash: InfoHash, now: Time) -> Session {
        let mut s = Session::new(config, Torrent::unknown(info_hash), Bitfield::new(0), now);
        s.magnet = Some(Box::new(MetadataFetcher::new(
            info_hash,
            FetcherConfig::default(),
        )));
        s
    }

    // ---- getters ----

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.our_id
    }
    /// The torrent this session downloads or seeds.
    pub fn torrent(&self) -> &Torrent {
        &self.torrent
    }
    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }
    /// True when every wanted piece is verified (never while the metadata is missing).
    pub fn is_complete(&self) -> bool {
        self.needed == 0 && self.magnet.is_none()
    }
    /// Verified bytes of wanted pieces, and the wanted total.
    pub fn progress(&self) -> (u64, u64) {
        let mut done = 0;
        let mut total = 0;
        for p in self.wanted.iter_ones() {
            let size = self.torrent.piece_size(p);
            total += size;
            if self.have.get(p) {
                done += size;
            }
        }
        (done, total)
    }
    /// Bytes still to fetch (for trackers' `left`). Without metadata the size is unknown; like
    /// libtorrent we then say 16 KiB, so trackers count us as a leecher.
    pub fn left(&self) -> u64 {
        if self.magnet.is_some() {
            return 16 * 1024;
        }
        let (done, total) = self.progress();
        total - done
    }
    /// Payload bytes received and accepted.
    pub fn downloaded(&self) -> u64 {
        self.downloaded
    }
    /// Payload bytes sent.
    pub fn uploaded(&self) -> u64 {
        self.uploaded
    }
    /// Payload bytes received that were duplicates or belonged to failed pieces.
    pub fn wasted(&self) -> u64 {
        self.wasted
    }
    /// The peers we may unchoke now (besides the optimistic one).
    pub fn upload_slots(&self) -> usize {
        self.config.upload_slots
    }
    /// Established peers interested in our pieces: those the upload slots are for.
    pub fn interested_count(&self) -> usize {
        self.peers
            .iter()
            .filter(|(_, s)| {
                s.peer
                    .as_ref()
                    .is_some_and(|p| p.is_established() && p.peer_interested())
            })
            .count()
    }
    /// Connections open or opening.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
    /// Connections with both handshakes done, and how many of those peers have every piece.
    pub fn established_count(&self) -> (usize, usize) {
        let mut n = 0;
        let mut seeds = 0;
        for (_, s) in &self.peers {
            if let Some(p) = s.peer.as_ref().filter(|p| p.is_established()) {
                n += 1;
                if p.has().is_full() {
                    seeds += 1;
                }
            }
        }
        (n, seeds)
    }
    /// Download and upload rates summed over peers, in bytes per second.
    pub fn rates(&self) -> (u64, u64) {
        let mut down = 0;
        let mut up = 0;
        for (_, s) in &self.peers {
            if let Some(p) = &s.peer {
                down += p.download_rate(self.now);
                up += p.upload_rate(self.now);
            }
        }
        (down, up)
    }
    /// The connection behind a handle, while it is open.
    pub fn peer(&self, h: PeerHandle) -> Option<&Peer> {
        self.peers.get(h.0).and_then(|s| s.peer.as_ref())
    }
    /// The remote address of a connection.
    pub fn peer_addr(&self, h: PeerHandle) -> Option<SocketAddr> {
        self.peers.get(h.0).map(|s| s.addr)
    }
    /// True when the peer id was banned for sending corrupt data.
    pub fn is_banned(&self, peer_id: &[u8; 20]) -> bool {
        self.banned_ids.contains(peer_id)
    }
    /// The handle the next accepted connection will get ([`Input::Incoming`]).
    pub fn next_handle(&self) -> PeerHandle {
        PeerHandle(self.peers.vacant_key())
    }
    /// The latest time the session has seen.
    pub fn now(&self) -> Time {
        self.now
    }

    // ---- outputs ----

    /// The next thing the driver must do, until `None`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next thing to show the user, until `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Session::handle_timeout`] next; `None` after shutdown.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.shutting_down {
            return None;
        }
        let mut t = self
            .choker
            .poll_timeout()
            .unwrap_or(self.now + Duration::from_secs(10));
        for (_, s) in &self.peers {
            let due = match &s.peer {
                None => Some(s.opened + CONNECT_TIMEOUT),
                Some(p) => p.poll_timeout(),
            };
            if let Some(d) = due {
                t = t.min(d);
            }
        }
        if let Some(c) = self.next_connect_time() {
            t = t.min(c);
        }
        if let Some(x) = self.pex_timeout() {
            t = t.min(x);
        }
        if let Some(x) = self.metadata_deadline() {
            t = t.min(x);
        }
        Some(t.max(self.now))
    }

    // ---- inputs ----

    /// Feeds one input. Every other `handle_*` method calls this, so recording its arguments
    /// records the run. `now` earlier than a previous input's is treated as that time (the
    /// session's clock never goes backwards).
    pub fn handle_input(&mut self, now: Time, input: Input<'_>) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        if self.shutting_down {
            // After shutdown only the bookkeeping of closing connections matters.
            match input {
                Input::Closed { peer } | Input::ConnectFailed { peer }
                    if self.peers.contains(peer.0) =>
                {
                    self.peers.remove(peer.0);
                }
                Input::Incoming { .. } => self.actions.push_back(Action::Close {
                    peer: self.next_handle(),
                    reason: "shutting down".into(),
                }),
                _ => {}
            }
            return;
        }
        match input {
            Input::Timeout => self.on_timeout(now),
            Input::Incoming { addr } => self.on_incoming(now, addr),
            Input::Connected { peer } => self.on_connected(now, peer),
            Input::ConnectFailed { peer } => self.on_connect_failed(now, peer),
            Input::Received { peer, bytes } => {
                if let Some(p) = self.peers.get_mut(peer.0).and_then(|s| s.peer.as_mut()) {
                    p.handle_bytes(now, bytes);
                    self.drive_peer(peer);
                }
            }
            Input::Closed { peer } => {
                if self.peers.contains(peer.0) {
                    self.remove_peer(peer, "closed by the peer".into(), false);
                }
            }
            Input::WriteDone { piece, begin: _ } => self.on_write_done(piece, false),
            Input::WriteFailed {
                piece,
                begin,
                error,
            } => {
                self.events.push_back(Event::Error {
                    message: format!("writing piece {piece} at {begin} failed: {error}"),
                });
                self.on_write_done(piece, true);
            }
            Input::ReadDone {
                peer,
                piece,
                begin,
                data,
            } => {
                if let Some(p) = self.peers.get_mut(peer.0).and_then(|s| s.peer.as_mut())
                    && p.send_block(now, piece, begin, data)
                {
                    self.uploaded += data.len() as u64;
                }
            }
            Input::ReadFailed {
                peer,
                piece,
                begin,
                error,
            } => {
                self.events.push_back(Event::Error {
                    message: format!("reading piece {piece} at {begin} failed: {error}"),
                });
                if let Some(p) = self.peers.get_mut(peer.0).and_then(|s| s.peer.as_mut()) {
                    let queued = p
                        .serve_queue()
                        .iter()
                        .find(|r| r.index == piece && r.begin == begin)
                        .copied();
                    if let Some(r) = queued {
                        p.drop_queued(now, r);
                    }
                }
            }
            Input::PieceHashed { piece, digest } => self.on_piece_hashed(now, piece, digest),
            Input::HashFailed { piece, error } => {
                self.events.push_back(Event::Error {
                    message: format!("reading piece {piece} to hash it failed: {error}"),
                });
                self.on_hash_unreadable(now, piece);
            }
            Input::PeersDiscovered { addrs } => self.add_candidates(now, addrs),
            Input::SelectFiles { wanted } => {
                self.wanted = self.torrent.pieces_for_files(wanted);
                self.picker.set_wanted(&self.wanted);
                let was_complete = self.is_complete();
                self.recount_needed();
                self.update_all_interest(now);
                if self.is_complete() && !was_complete {
                    self.events.push_back(Event::Complete);
                }
                self.fill_all(now);
            }
            Input::UploadSlots { slots } => {
                let slots = slots.max(1);
                if slots != self.config.upload_slots {
                    self.config.upload_slots = slots;
                    self.choker.set_upload_slots(slots);
                    self.choke_round(now, true);
                }
            }
            Input::Shutdown => {
                let handles: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
                for k in handles {
                    self.remove_peer(PeerHandle(k), "shutting down".into(), true);
                }
                self.actions.push_back(Action::Announce {
                    event: AnnounceEvent::Stopped,
                });
                self.shutting_down = true;
            }
        }
        self.flush();
    }

    /// New addresses join the peer list (known and banned ones are ignored).
    fn add_candidates(&mut self, now: Time, addrs: &[SocketAddr]) {
        for &addr in addrs {
            if self.banned_addrs.contains(&addr) || self.candidates.contains_key(&addr) {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.candidates.insert(
                addr,
                Candidate {
                    failures: 0,
                    drops: 0,
                    next_attempt: now,
                    connected: false,
                    seq,
                },
            );
        }
        self.maybe_connect(now);
    }

    /// The timers are due (or might be): runs everything scheduled up to `now`. Idempotent.
    pub fn handle_timeout(&mut self, now: Time) {
        self.handle_input(now, Input::Timeout);
    }

    /// A connection from `addr` was accepted; returns its handle (possibly followed by an
    /// [`Action::Close`] when we are full).
    pub fn handle_incoming(&mut self, now: Time, addr: SocketAddr) -> PeerHandle {
        let h = self.next_handle();
        self.handle_input(now, Input::Incoming { addr });
        h
    }

    /// An outgoing connection opened.
    pub fn handle_connected(&mut self, now: Time, peer: PeerHandle) {
        self.handle_input(now, Input::Connected { peer });
    }

    /// An outgoing connection failed to open.
    pub fn handle_connect_failed(&mut self, now: Time, peer: PeerHandle) {
        self.handle_input(now, Input::ConnectFailed { peer });
    }

    /// Bytes arrived from a peer.
    pub fn handle_received(&mut self, now: Time, peer: PeerHandle, bytes: &[u8]) {
        self.handle_input(now, Input::Received { peer, bytes });
    }

    /// A peer's connection closed.
    pub fn handle_peer_closed(&mut self, now: Time, peer: PeerHandle) {
        self.handle_input(now, Input::Closed { peer });
    }

    /// A block write completed.
    pub fn handle_write_done(&mut self, now: Time, piece: u32, begin: u32) {
        self.handle_input(now, Input::WriteDone { piece, begin });
    }

    /// A block write failed.
    pub fn handle_write_failed(&mut self, now: Time, piece: u32, begin: u32, error: String) {
        self.handle_input(
            now,
            Input::WriteFailed {
                piece,
                begin,
                error,
            },
        );
    }

    /// A block read for a peer completed.
    pub fn handle_read_done(
        &mut self,
        now: Time,
        peer: PeerHandle,
        piece: u32,
        begin: u32,
        data: &[u8],
    ) {
        self.handle_input(
            now,
            Input::ReadDone {
                peer,
                piece,
                begin,
                data,
            },
        );
    }

    /// A block read for a peer failed.
    pub fn handle_read_failed(
        &mut self,
        now: Time,
        peer: PeerHandle,
        piece: u32,
        begin: u32,
        error: String,
    ) {
        self.handle_input(
            now,
            Input::ReadFailed {
                peer,
                piece,
                begin,
                error,
            },
        );
    }

    /// The SHA-1 of a stored piece; the session compares it with the torrent's.
    pub fn handle_piece_hashed(&mut self, now: Time, piece: u32, digest: [u8; 20]) {
        self.handle_input(now, Input::PieceHashed { piece, digest });
    }

    /// Peer addresses from a tracker or the command line.
    pub fn handle_peers_discovered(&mut self, now: Time, addrs: &[SocketAddr]) {
        self.handle_input(now, Input::PeersDiscovered { addrs });
    }

    /// Selects the files to download (`wanted[i]` for file `i`).
    pub fn handle_select_files(&mut self, now: Time, wanted: &[bool]) {
        self.handle_input(now, Input::SelectFiles { wanted });
    }

    /// Closes every connection and announces `stopped`; later inputs are ignored.
    pub fn handle_shutdown(&mut self, now: Time) {
        self.handle_input(now, Input::Shutdown);
    }

    // ---- internals: connections ----

    fn peer_config(&self) -> PeerConfig {
        PeerConfig {
            info_hash: self.torrent.info_hash,
            our_id: self.our_id,
            piece_count: self.magnet.is_none().then(|| self.torrent.piece_count()),
            metadata_size: self.served_metadata_size(),
            listen_port: self.config.listen_port,
            max_serve_queue: self.config.max_serve_queue,
            pex: self.pex_allowed(),
            dht_port: if self.torrent.private {
                0
            } else {
                self.config.dht_port
            },
        }
    }

    /// Hands each peer's pending bytes to the driver, in handle order.
    fn flush(&mut self) {
        for (k, s) in self.peers.iter_mut() {
            if let Some(p) = s.peer.as_mut() {
                let bytes = p.take_output();
                if !bytes.is_empty() {
                    self.actions.push_back(Action::Send {
                        peer: PeerHandle(k),
                        bytes,
                    });
                }
            }
        }
    }

    fn on_timeout(&mut self, now: Time) {
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in keys {
            let h = PeerHandle(k);
            let Some(slot) = self.peers.get_mut(k) else {
                continue;
            };
            match slot.peer.as_mut() {
                None => {
                    if now >= slot.opened + CONNECT_TIMEOUT {
                        let addr = slot.addr;
                        self.peers.remove(k);
                        self.actions.push_back(Action::Close {
                            peer: h,
                            reason: "connect timed out".into(),
                        });
                        self.connect_failed(now, addr);
                    }
                }
                Some(p) => {
                    p.handle_timeout(now);
                    self.drive_peer(h);
                }
            }
        }
        self.choke_round(now, false);
        self.maybe_connect(now);
        self.pex_round(now, None);
        self.metadata_timeout(now);
    }

    // ---- internals: peer events ----

    fn peer_mut(&mut self, h: PeerHandle) -> Option<&mut Peer> {
        self.peers.get_mut(h.0).and_then(|s| s.peer.as_mut())
    }

    /// Routes a peer's events until it has none left (or is gone).
    fn drive_peer(&mut self, h: PeerHandle) {
        while let Some(ev) = self.peer_mut(h).and_then(Peer::poll_event) {
            self.on_peer_event(h, ev);
        }
    }

    fn on_peer_event(&mut self, h: PeerHandle, ev: PeerEvent) {
        let now = self.now;
        match ev {
            PeerEvent::Handshaked { peer_id } => self.on_handshaked(now, h, peer_id),
            PeerEvent::Bitfield => {
                let complete = self.is_complete();
                let Some(slot) = self.peers.get_mut(h.0) else {
                    return;
                };
                let Some(p) = slot.peer.as_ref() else { return };
                let full = p.has().is_full();
                if full {
                    self.picker.peer_has_all(h);
                } else {
                    self.picker.peer_has_bitfield(h, p.has());
                }
                slot.in_picker = true;
                if complete && full {
                    self.remove_peer(h, "both seeding".into(), true);
                    return;
                }
                self.update_interest(now, h);
                self.fill_requests(now, h);
            }
            PeerEvent::Have(i) => {
                if let Some(slot) = self.peers.get_mut(h.0) {
                    if slot.in_picker {
                        self.picker.peer_has_piece(h, i);
                    } else if let Some(p) = &slot.peer {
                        // The peer sent no bitfield: its first have introduces it to the picker.
                        self.picker.peer_has_bitfield(h, p.has());
                        slot.in_picker = true;
                    }
                }
                if self.is_complete() && self.peer(h).is_some_and(|p| p.has().is_full()) {
                    self.remove_peer(h, "both seeding".into(), true);
                    return;
                }
                if self.wanted.get(i)
                    && !self.have.get(i)
                    && let Some(p) = self.peer_mut(h)
                {
                    p.set_interested(now, true);
                }
                self.fill_requests(now, h);
            }
            PeerEvent::Choked { dropped } => {
                if !dropped.is_empty() {
                    self.retry_owner.retain(|_, o| *o != h);
                }
                for r in dropped {
                    self.picker.request_dropped(h, block_of(r));
                }
                self.fill_all(now);
            }
            PeerEvent::Unchoked | PeerEvent::AllowedFast(_) => self.fill_requests(now, h),
            PeerEvent::Interested => {
                // A free upload slot goes to the newcomer now rather than at the next round.
                if self.choker.unchoked().len() <= self.config.upload_slots {
                    self.choke_round(now, true);
                }
            }
            PeerEvent::NotInterested => {
                if self.choker.is_unchoked(h) {
                    self.choke_round(now, true);
                }
            }
            PeerEvent::Request(r) => self.on_request(now, h, r),
            PeerEvent::ExtendedHandshake => {
                self.pex_start(now, h);
                self.metadata_peer(now, h);
            }
            PeerEvent::Pex(payload) => self.pex_received(now, h, &payload),
            PeerEvent::DhtPort(port) => {
                if let Some(addr) = self.peer_addr(h) {
                    self.events.push_back(Event::DhtNode {
                        peer: h,
                        addr: SocketAddr::new(addr.ip(), port),
                    });
                }
            }
            PeerEvent::Metadata(payload) => self.metadata_received(now, h, &payload),
            PeerEvent::Cancel(_) | PeerEvent::Suggest(_) => {}
            PeerEvent::Snubbed(_) => {}
            PeerEvent::Block {
                index,
                begin,
                data,
                requested: _,
            } => self.on_block(now, h, index, begin, data),
            PeerEvent::Rejected(r) => self.picker.request_dropped(h, block_of(r)),
            PeerEvent::RequestsTimedOut(v) => {
                self.retry_owner.retain(|_, o| *o != h);
                for r in v {
                    self.picker.request_dropped(h, block_of(r));
                }
                // The blocks go to the others; the slow peer gets more when it delivers again.
                let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
                for k in keys.into_iter().filter(|&k| k != h.0) {
                    self.fill_requests(now, PeerHandle(k));
                }
            }
            PeerEvent::Closed(reason) => self.remove_peer(h, reason, true),
        }
    }

    fn on_handshaked(&mut self, now: Time, h: PeerHandle, peer_id: PeerId) {
        if self.banned_ids.contains(&peer_id.0) {
            if let Some(slot) = self.peers.get(h.0).filter(|s| s.outgoing) {
                let addr = slot.addr;
                self.banned_addrs.insert(addr);
                self.candidates.remove(&addr);
            }
            self.remove_peer(h, "banned peer".into(), true);
            return;
        }
        let duplicate = self.peers.iter().any(|(k, s)| {
            k != h.0
                && s.peer
                    .as_ref()
                    .is_some_and(|p| p.remote_id() == Some(peer_id))
        });
        if duplicate {
            self.remove_peer(h, "already connected to this peer".into(), true);
            return;
        }
        let Some(slot) = self.peers.get_mut(h.0) else {
            return;
        };
        let addr = slot.addr;
        if let Some(p) = slot.peer.as_mut() {
            p.send_piece_set(now, &self.have);
        }
        self.known_ids.insert(peer_id.0, addr);
        self.events.push_back(Event::PeerConnected {
            peer: h,
            addr,
            peer_id: peer_id.0,
        });
    }

    fn on_request(&mut self, now: Time, h: PeerHandle, r: BlockRequest) {
        let size = self.torrent.piece_size(r.index);
        if u64::from(r.begin) + u64::from(r.length) > size {
            let reason = format!(
                "request beyond the end of piece {} ({}+{} > {size})",
                r.index, r.begin, r.length
            );
            self.remove_peer(h, reason, true);
            return;
        }
        let have = self.have.get(r.index);
        let Some(p) = self.peer_mut(h) else { return };
        if !have || p.am_choking() {
            // Requests racing our choke are normal; requests for pieces we never announced are
            // odd but harmless. Either way: refuse, politely when the protocol allows.
            p.reject(now, r);
            return;
        }
        if p.queue_request(now, r) {
            self.actions.push_back(Action::ReadBlock {
                peer: h,
                piece: r.index,
                begin: r.begin,
                length: r.length,
            });
        } else {
            self.drive_peer(h);
        }
    }

    fn on_block(&mut self, now: Time, h: PeerHandle, index: u32, begin: u32, data: Vec<u8>) {
        let block = Block {
            piece: index,
            begin,
            length: data.len() as u32,
        };
        let sender = self
            .peer(h)
            .and_then(Peer::remote_id)
            .map_or([0; 20], |id| id.0);
        self.accept_block(now, h, sender, block, data);
        self.fill_requests(now, h);
    }

    /// A block from `h` (a peer, or a web seed's pseudo handle) into the write-and-verify path.
    fn accept_block(
        &mut self,
        now: Time,
        h: PeerHandle,
        sender: [u8; 20],
        block: Block,
        data: Vec<u8>,
    ) {
        let len = data.len() as u64;
        let (index, begin) = (block.piece, block.begin);
        match self.picker.block_received(h, block) {
            Received::Accepted {
                piece_complete,
                cancel,
            } => {
                self.downloaded += len;
                let progress = self.pieces.entry(index).or_default();
                progress.pending_writes += 1;
                progress.sources.push(BlockSource {
                    begin,
                    sender,
                    fingerprint: fingerprint(&data),
                });
                if piece_complete {
                    progress.complete = true;
                }
                self.actions.push_back(Action::WriteBlock {
                    piece: index,
                    begin,
                    data,
                });
                for (other, b) in cancel {
                    if other != h
                        && let Some(p) = self.peer_mut(other)
                    {
                        p.cancel_request(now, request_of(b));
                    }
                }
            }
            _ => self.wasted += len,
        }
    }
}

fn block_of(r: BlockRequest) -> Block {
    Block {
        piece: r.index,
        begin: r.begin,
        length: r.length,
    }
}

fn request_of(b: Block) -> BlockRequest {
    BlockRequest {
        index: b.piece,
        begin: b.begin,
        length: b.length,
    }
}

#[cfg(test)]
mod tests;
