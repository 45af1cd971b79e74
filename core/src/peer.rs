//! One peer connection's protocol state, without a socket.
//!
//! A [`Peer`] turns the bytes a connection delivers into [`PeerEvent`]s (handshake done, bitfield,
//! choke, request, block, …) and keeps the per-connection timers: handshake deadline, keep-alive,
//! idle drop, request timeouts and snub detection. The [`Session`](crate::session::Session) owns
//! every `Peer`, routes its events to the picker and choker, and asks it to send messages through
//! the application calls (`send_*`), which append to an outgoing buffer the session hands to the
//! driver as one `Send` action per turn.
//!
//! Method kinds, as in quinn-proto's `Connection`:
//! - getters (`is_established`, `has`, `download_rate`, …);
//! - input: [`Peer::handle_bytes`] and [`Peer::handle_timeout`];
//! - application calls: `send_*`, [`Peer::add_request`], [`Peer::close`];
//! - output: [`Peer::poll_event`], [`Peer::take_output`] and [`Peer::poll_timeout`].
//!
//! A protocol violation never panics: the peer closes itself with a readable reason
//! ("bitfield length 12, expected 13") reported as [`PeerEvent::Closed`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::id::{InfoHash, PeerId};
use crate::rate::Rate;
use crate::time::Time;
use crate::wire::{self, BlockRequest, ExtendedHandshake, Handshake, Message};

/// How long a peer has to complete its handshake after the connection opened.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// We send a keep-alive after this long without sending anything.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
/// A peer that sends nothing for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// A request not answered within this time is given back to the picker for another peer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer that delivers no block for this long while requests are outstanding is snubbed.
pub const SNUB_TIMEOUT: Duration = Duration::from_secs(60);
/// Hard limit on the requests we keep outstanding with one peer, whatever its rate.
pub const MAX_PIPELINE: usize = 250;
/// Requests outstanding with a peer whose rate is not yet known.
pub const MIN_PIPELINE: usize = 4;
/// Most allowed-fast pieces remembered per peer (BEP 6 suggests about 10; libtorrent sends 5).
pub const MAX_ALLOWED_FAST: usize = 64;
/// Rates are averaged over this window: long enough to be stable, short enough to follow a
/// peer that speeds up or stalls.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Seconds of the peer's measured rate we keep in flight (the bandwidth-delay product with slack).
const PIPELINE_SECONDS: f64 = 1.5;
/// Our `v` in the extended handshake.
const CLIENT_VERSION: &str = concat!("kp-torrent ", env!("CARGO_PKG_VERSION"));
/// The id peers send us `ut_pex` messages under (our extended handshake's `m`).
pub const OUR_PEX_ID: u8 = 1;
/// The id peers send us `ut_metadata` messages under (our extended handshake's `m`).
pub const OUR_METADATA_ID: u8 = 2;
/// Highest piece count a peer's `have`s may name before the metadata tells the real one: the
/// pieces of the largest info dictionary we accept (20 bytes of hash each).
const MAX_PIECES_WITHOUT_METADATA: u32 = (crate::metadata::DEFAULT_MAX_METADATA_SIZE / 20) as u32;
/// Longest message body we accept that is not a bitfield or a block: extended messages are small.
const MAX_OTHER_MESSAGE: usize = 1 << 18;

/// Fixed facts a connection needs about its torrent and about us.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The torrent's info-hash; a handshake naming another one is refused.
    pub info_hash: InfoHash,
    /// Our peer id; a handshake carrying it means we connected to ourselves.
    pub our_id: PeerId,
    /// Number of pieces, for bitfield lengths and index checks; `None` until the metadata of a
    /// magnet link is known (the peer's piece set is then kept raw until
    /// [`Peer::set_piece_count`]).
    pub piece_count: Option<u32>,
    /// The size of the info dictionary we serve (BEP 9, advertised as `metadata_size`); `None`
    /// when we have none to serve. We offer `ut_metadata` when we serve it or need it.
    pub metadata_size: Option<u64>,
    /// Our listening port, advertised as `p` in the extended handshake (0: not advertised).
    pub listen_port: u16,
    /// The most requests we queue for one peer (advertised as `reqq`).
    pub max_serve_queue: usize,
    /// Offer BEP 11 peer exchange (`ut_pex` in our extended handshake).
    pub pex: bool,
    /// Our DHT node's UDP port (BEP 5): advertised by the handshake's DHT bit and sent in a
    /// `port` message to peers that set it too; 0: no DHT (the peer's `port` messages are then
    /// ignored).
    pub dht_port: u16,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Waiting for the peer's handshake (we may or may not have sent ours).
    Handshaking,
    /// Handshakes exchanged; messages flow.
    Established,
    /// Closed; the session removes it after draining its events.
    Closed,
}

/// What happened on a connection, for the session to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer's handshake arrived and was accepted (ours has been sent too).
    Handshaked {
        /// The peer's id.
        peer_id: PeerId,
    },
    /// The peer's piece set was replaced (bitfield, have all or have none); read [`Peer::has`].
    Bitfield,
    /// The peer now has this piece.
    Have(u32),
    /// The peer choked us. Without the fast extension the listed requests are void.
    Choked {
        /// Our requests the choke cancelled; give them back to the picker.
        dropped: Vec<BlockRequest>,
    },
    /// The peer unchoked us.
    Unchoked,
    /// The peer became interested in our pieces.
    Interested,
    /// The peer lost interest.
    NotInterested,
    /// The peer asks for a block (range not yet checked against the torrent).
    Request(BlockRequest),
    /// The peer withdrew a request; already removed from the serve queue.
    Cancel(BlockRequest),
    /// A block arrived.
    Block {
        /// Piece index.
        index: u32,
        /// Offset in the piece.
        begin: u32,
        /// The bytes.
        data: Vec<u8>,
        /// False when we had not requested it (or no longer: timed out, cancelled).
        requested: bool,
    },
    /// The peer refused one of our requests (fast extension).
    Rejected(BlockRequest),
    /// The peer lets us request this piece even while it chokes us (fast extension).
    AllowedFast(u32),
    /// The peer suggests this piece (fast extension); a hint we may ignore.
    Suggest(u32),
    /// The peer's extended handshake arrived; read [`Peer::reqq`] and [`Peer::client`].
    ExtendedHandshake,
    /// A `ut_pex` message (its bencoded payload, not yet checked) from a peer we offered it to.
    Pex(Vec<u8>),
    /// The peer runs a DHT node on this UDP port of its address (BEP 5 `port`); reported only
    /// when we run one too, and only when the port changed.
    DhtPort(u16),
    /// A `ut_metadata` message (its payload, not yet checked) from a peer we offered it to.
    Metadata(Vec<u8>),
    /// These requests got no answer in time; give them back to the picker.
    RequestsTimedOut(Vec<BlockRequest>),
    /// The peer was snubbed (no block for [`SNUB_TIMEOUT`] with requests outstanding) or recovered.
    Snubbed(bool),
    /// The connection must be closed, for this reason. Nothing follows.
    Closed(String),
}

/// What a peer said about its pieces before we knew how many there are (magnet links).
#[derive(Debug, Clone, Default)]
struct RawPieces {
    /// Its bitfield message, unchecked.
    bitfield: Option<Vec<u8>>,
    /// It sent `have all`.
    all: bool,
    /// The pieces of its `have` messages and of late bitfields, one bit each, grown as needed.
    haves: Vec<u8>,
}

/// A request we sent and are waiting on.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    req: BlockRequest,
    sent: Time,
}

/// One peer connection's protocol state machine.
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
    outgoing: bool,
    state: PeerState,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<PeerEvent>,
    remote_id: Option<PeerId>,
    fast: bool,
    extended: bool,
    /// The peer's handshake set the DHT bit.
    remote_dht: bool,
    /// We sent our `port` message.
    port_sent: bool,
    /// The DHT port the peer last told us.
    remote_dht_port: Option<u16>,
    handshake_sent: bool,
    /// True until the first message after the handshake, not counting the ones that say nothing
    /// about pieces (keep-alive, port, extended, allowed fast, suggest, unknown ids), which some
    /// clients send before their bitfield.
    first_message: bool,

    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    has: Bitfield,
    /// Before the piece count is known: what the peer said about its pieces.
    raw: Option<Box<RawPieces>>,
    allowed_fast: Vec<u32>,
    requests: Vec<Outstanding>,
    serve_queue: VecDeque<BlockRequest>,

    reqq: Option<u32>,
    client: Option<String>,
    listen_port: Option<u16>,
    /// The id the peer wants `ut_pex` messages under (0 or `None`: it does not take them).
    remote_pex: Option<u8>,
    /// The id the peer wants `ut_metadata` messages under (0 or `None`: it does not take them).
    remote_metadata: Option<u8>,
    /// The `metadata_size` from the peer's extended handshake.
    remote_metadata_size: Option<u64>,

    opened: Time,
    last_recv: Time,
    last_sent: Time,
    /// Since when we wait for a block with requests outstanding (kept across request timeouts,
    /// which are themselves a sign of a snub).
    waiting_since: Option<Time>,
    snubbed: bool,
    self_connection: bool,
    down: Rate,
    up: Rate,
}

impl Peer {
    /// A connection that just opened at `now`. For an outgoing one our handshake goes out at once;
    /// for an incoming one it follows the peer's (so we can check its info-hash first).
    pub fn new(config: PeerConfig, outgoing: bool, now: Time) -> Peer {
        let known = config.piece_count;
        let mut p = Peer {
            config,
            outgoing,
            state: PeerState::Handshaking,
            inbuf: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            remote_id: None,
            fast: false,
            remote_dht: false,
            port_sent: false,
            remote_dht_port: None,
            extended: false,
            handshake_sent: false,
            first_message: true,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            has: Bitfield::new(known.unwrap_or(0)),
            raw: known.is_none().then(Box::default),
            allowed_fast: Vec::new(),
            requests: Vec::new(),
            serve_queue: VecDeque::new(),
            reqq: None,
            client: None,
            listen_port: None,
            remote_pex: None,
            remote_metadata: None,
            remote_metadata_size: None,
            opened: now,
            last_recv: now,
            last_sent: now,
            waiting_since: None,
            snubbed: false,
            self_connection: false,
            down: Rate::new(RATE_WINDOW),
            up: Rate::new(RATE_WINDOW),
        };
        if outgoing {
            p.send_handshake(now);
        }
        p
    }

    // ---- getters ----

    /// Where the connection is in its life.
    pub fn state(&self) -> PeerState {
        self.state
    }
    /// True once both handshakes are exchanged and the connection is not closed.
    pub fn is_established(&self) -> bool {
        self.state == PeerState::Established
    }
    /// True when we opened the connection.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }
    /// The id from the peer's handshake.
    pub fn remote_id(&self) -> Option<PeerId> {
        self.remote_id
    }
    /// True when both sides support the fast extension (BEP 6).
    pub fn fast(&self) -> bool {
        self.fast
    }
    /// True when both sides support the extension protocol (BEP 10).
    pub fn extended(&self) -> bool {
        self.extended
    }
    /// The pieces the peer has.
    pub fn has(&self) -> &Bitfield {
        &self.has
    }
    /// Pieces the peer lets us request while choked.
    pub fn allowed_fast(&self) -> &[u32] {
        &self.allowed_fast
    }
    /// True while we choke the peer.
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }
    /// True while we told the peer we are interested.
    pub fn am_interested(&self) -> bool {
        self.am_interested
    }
    /// True while the peer chokes us.
    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }
    /// True while the peer is interested in our pieces.
    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }
    /// The requests we wait on.
    pub fn outstanding(&self) -> impl Iterator<Item = BlockRequest> + '_ {
        self.requests.iter().map(|o| o.req)
    }
    /// Number of requests we wait on.
    pub fn outstanding_count(&self) -> usize {
        self.requests.len()
    }
    /// The peer's requests we accepted and have not answered yet.
    pub fn serve_queue(&self) -> &VecDeque<BlockRequest> {
        &self.serve_queue
    }
    /// The peer's `reqq` (how many requests it queues), from its extended handshake.
    pub fn reqq(&self) -> Option<u32> {
        self.reqq
    }
    /// The peer's client name (`v`), from its extended handshake.
    pub fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }
    /// The peer's listening port (`p`), from its extended handshake.
    pub fn listen_port(&self) -> Option<u16> {
        self.listen_port
    }

    /// The id the peer takes `ut_metadata` messages under, when it offered the extension.
    pub fn remote_metadata_id(&self) -> Option<u8> {
        self.remote_metadata
            .filter(|&id| id != 0 && self.offers_metadata())
    }
    /// The `metadata_size` the peer advertised (it has the metadata to serve).
    pub fn remote_metadata_size(&self) -> Option<u64> {
        self.remote_metadata_size
    }
    /// The piece count, once known.
    pub fn piece_count(&self) -> Option<u32> {
        self.config.piece_count
    }

    /// True when both sides offered `ut_pex`: [`Peer::send_pex`] reaches the peer.
    pub fn supports_pex(&self) -> bool {
        self.config.pex && self.remote_pex.is_some_and(|id| id != 0)
    }
    /// True when the peer has sent no block for a while although we wait on requests.
    pub fn is_snubbed(&self) -> bool {
        self.snubbed
    }
    /// True when the handshake showed this connection leads back to us.
    pub fn is_self_connection(&self) -> bool {
        self.self_connection
    }
    /// When the connection opened.
    pub fn opened(&self) -> Time {
        self.opened
    }
    /// Payload bytes per second the peer sends us.
    pub fn download_rate(&self, now: Time) -> u64 {
        self.down.bytes_per_sec(now)
    }
    /// Payload bytes per second we send the peer.
    pub fn upload_rate(&self, now: Time) -> u64 {
        self.up.bytes_per_sec(now)
    }
    /// Payload bytes received from the peer.
    pub fn downloaded(&self) -> u64 {
        self.down.total()
    }
    /// Payload bytes sent to the peer.
    pub fn uploaded(&self) -> u64 {
        self.up.total()
    }

    /// How many requests to keep outstanding: about 1.5 s of the peer's measured
    /// rate, at least [`MIN_PIPELINE`], at most its `reqq` and [`MAX_PIPELINE`]; one when snubbed.
    pub fn pipeline_depth(&self, now: Time) -> usize {
        if self.snubbed {
            return 1;
        }
        let blocks = (self.down.bytes_per_sec(now) as f64 * PIPELINE_SECONDS
            / wire::BLOCK_SIZE as f64)
            .ceil() as usize;
        let cap = self
            .reqq
            .map_or(MAX_PIPELINE, |q| (q as usize).clamp(1, MAX_PIPELINE));
        blocks.max(MIN_PIPELINE).min(cap)
    }

    /// True when we may send requests now: established, and unchoked (or allowed fast pieces).
    pub fn can_request(&self) -> bool {
        self.is_established() && (!self.peer_choking || !self.allowed_fast.is_empty())
    }

    // ---- input ----

    /// Feeds bytes read from the connection, split anywhere.
    pub fn handle_bytes(&mut self, now: Time, bytes: &[u8]) {
        if self.state == PeerState::Closed || bytes.is_empty() {
            return;
        }
        self.last_recv = now;
        // Whole messages are decoded straight from `bytes`; only a partial one is kept. Later
        // bytes complete it with just what it lacks (so a message trickling in byte by byte
        // costs linear time), and the rest is decoded in place again: apart from the message
        // that straddles two reads, no byte is copied here.
        let mut rest = bytes;
        while !self.inbuf.is_empty() && !rest.is_empty() && self.state != PeerState::Closed {
            let take = self.held_lacks().min(rest.len());
            let (now_part, later) = rest.split_at(take);
            rest = later;
            let mut held = std::mem::take(&mut self.inbuf);
            held.extend_from_slice(now_part);
            let pos = self.decode_from(now, &held);
            held.drain(..pos.min(held.len()));
            self.inbuf = held;
        }
        if self.state == PeerState::Closed {
            self.inbuf = Vec::new();
            return;
        }
        if self.inbuf.is_empty() {
            let pos = self.decode_from(now, rest);
            if self.state != PeerState::Closed {
                self.inbuf = rest.get(pos..).unwrap_or(&[]).to_vec();
            }
        } else {
            // Only reached with `rest` empty: everything went into the held message.
            debug_assert!(rest.is_empty());
        }
    }

    /// How many more bytes the held partial unit (handshake, length prefix or message) needs
    /// before it can be decoded (at least 1): feeding more than that would copy bytes that can
    /// be decoded where they are.
    fn held_lacks(&self) -> usize {
        let have = self.inbuf.len();
        let whole = match self.state {
            PeerState::Handshaking => Handshake::LEN,
            _ => match self.inbuf.first_chunk::<4>() {
                Some(prefix) => 4 + u32::from_be_bytes(*prefix) as usize,
                None => 4,
            },
        };
        whole.saturating_sub(have).max(1)
    }

    /// Decodes the handshake (while handshaking) and whole messages from `buf`; returns how many
    /// bytes were used.
    fn decode_from(&mut self, now: Time, buf: &[u8]) -> usize {
        let mut pos = 0;
        if self.state == PeerState::Handshaking {
            match Handshake::decode(buf) {
                Ok(None) => {}
                Ok(Some(h)) => {
                    pos = Handshake::LEN;
                    self.on_handshake(now, h);
                }
                Err(e) => self.close(format!("bad handshake: {e}")),
            }
        }
        while self.state == PeerState::Established {
            let rest = buf.get(pos..).unwrap_or(&[]);
            match wire::decode(rest, self.max_message_len() as u32) {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    pos += used;
                    self.on_message(now, msg);
                }
                Err(e) => self.close(format!("{e}")),
            }
        }
        pos
    }

    /// Fires the timers due at `now`: handshake deadline, keep-alive, idle drop, request
    /// timeouts and snub detection. Calling it early or twice does nothing extra.
    pub fn handle_timeout(&mut self, now: Time) {
        match self.state {
            PeerState::Closed => {}
            PeerState::Handshaking => {
                if now >= self.opened + HANDSHAKE_TIMEOUT {
                    self.close("no handshake within 10 s".into());
                }
            }
            PeerState::Established => {
                if now >= self.last_recv + IDLE_TIMEOUT {
                    self.close("silent for 180 s".into());
                    return;
                }
                if now >= self.last_sent + KEEPALIVE_INTERVAL {
                    self.push(now, &Message::KeepAlive);
                }
                let mut timed_out = Vec::new();
                self.requests.retain(|o| {
                    let expired = now >= o.sent + REQUEST_TIMEOUT;
                    if expired {
                        timed_out.push(o.req);
                    }
                    !expired
                });
                if !timed_out.is_empty() {
                    // Tell the peer not to bother, so a late answer does not waste its upload.
                    for r in &timed_out {
                        self.push(now, &Message::Cancel(*r));
                    }
                    self.events
                        .push_back(PeerEvent::RequestsTimedOut(timed_out));
                }
                if !self.snubbed && self.waiting_since.is_some_and(|w| now >= w + SNUB_TIMEOUT) {
                    self.snubbed = true;
                    self.events.push_back(PeerEvent::Snubbed(true));
                }
            }
        }
    }

    // ---- application calls ----

    /// Closes the connection with `reason`; a [`PeerEvent::Closed`] reports it.
    pub fn close(&mut self, reason: String) {
        if self.state == PeerState::Closed {
            return;
        }
        self.state = PeerState::Closed;
        self.requests.clear();
        self.serve_queue.clear();
        self.inbuf = Vec::new();
        self.events.push_back(PeerEvent::Closed(reason));
    }

    /// Sends our piece set right after the handshake: have all / have none with the fast
    /// extension when they fit, else a bitfield (nothing when we have nothing and no fast ext).
    pub fn send_piece_set(&mut self, now: Time, have: &Bitfield) {
        if have.is_empty() {
            // No torrent yet (a magnet link's metadata is missing): we have nothing.
            if self.fast {
                self.push(now, &Message::HaveNone);
            }
        } else if self.fast && have.is_full() {
            self.push(now, &Message::HaveAll);
        } else if self.fast && have.count() == 0 {
            self.push(now, &Message::HaveNone);
        } else if have.count() > 0 {
            self.push(now, &Message::Bitfield(have.as_bytes()));
        }
        // BEP 5: after the piece set (which must come first), our DHT port.
        if self.config.dht_port != 0 && self.remote_dht && !self.port_sent {
            self.port_sent = true;
            self.push(now, &Message::Port(self.config.dht_port));
        }
    }

    /// Tells the peer we verified `piece`.
    pub fn send_have(&mut self, now: Time, piece: u32) {
        if self.is_established() {
            self.push(now, &Message::Have(piece));
        }
    }

    /// Chokes or unchokes the peer. Choking voids its queued requests: with the fast extension
    /// each is rejected explicitly; they are returned so pending disk reads can be ignored.
    pub fn set_choking(&mut self, now: Time, choke: bool) -> Vec<BlockRequest> {
        if !self.is_established() || self.am_choking == choke {
            return Vec::new();
        }
        self.am_choking = choke;
        if choke {
            self.push(now, &Message::Choke);
            let dropped: Vec<BlockRequest> = self.serve_queue.drain(..).collect();
            if self.fast {
                for r in &dropped {
                    self.push(now, &Message::Reject(*r));
                }
            }
            dropped
        } else {
            self.push(now, &Message::Unchoke);
            Vec::new()
        }
    }

    /// Tells the peer whether we are interested; sends only on change.
    pub fn set_interested(&mut self, now: Time, interested: bool) {
        if !self.is_established() || self.am_interested == interested {
            return;
        }
        self.am_interested = interested;
        let msg = if interested {
            Message::Interested
        } else {
            Message::NotInterested
        };
        self.push(now, &msg);
    }

    /// Sends a request and starts its timer.
    pub fn add_request(&mut self, now: Time, req: BlockRequest) {
        if !self.is_established() {
            return;
        }
        self.waiting_since.get_or_insert(now);
        self.requests.push(Outstanding { req, sent: now });
        self.push(now, &Message::Request(req));
    }

    /// Withdraws a request (the block came from elsewhere in endgame). Returns false when it was
    /// not outstanding.
    pub fn cancel_request(&mut self, now: Time, req: BlockRequest) -> bool {
        let before = self.requests.len();
        self.requests.retain(|o| o.req != req);
        if self.requests.len() == before {
            return false;
        }
        self.stop_waiting_if_idle();
        self.push(now, &Message::Cancel(req));
        true
    }

    /// Queues a peer request we accepted (the caller issues the disk read). Returns false, with
    /// a reject (fast extension) or a close, when the queue is full.
    pub fn queue_request(&mut self, now: Time, req: BlockRequest) -> bool {
        if self.state != PeerState::Established {
            return false;
        }
        if self.serve_queue.len() >= self.config.max_serve_queue {
            if self.fast {
                self.push(now, &Message::Reject(req));
            } else {
                self.close(format!(
                    "more than {} requests queued",
                    self.config.max_serve_queue
                ));
            }
            return false;
        }
        self.serve_queue.push_back(req);
        true
    }

    /// Refuses a request: a reject with the fast extension, silence without (the peer learns
    /// from our choke, or re-requests after its timeout).
    pub fn reject(&mut self, now: Time, req: BlockRequest) {
        if self.fast && self.is_established() {
            self.push(now, &Message::Reject(req));
        }
    }

    /// Sends a block read from disk if the request is still queued (not cancelled or choked away).
    /// Returns true when it was sent.
    pub fn send_block(&mut self, now: Time, index: u32, begin: u32, data: &[u8]) -> bool {
        if self.state != PeerState::Established {
            return false;
        }
        let Some(pos) = self
            .serve_queue
            .iter()
            .position(|r| r.index == index && r.begin == begin && r.length as usize == data.len())
        else {
            return false;
        };
        self.serve_queue.remove(pos);
        self.up.record(now, data.len() as u64);
        self.push(now, &Message::Piece { index, begin, data });
        true
    }

    /// Removes a queued request whose disk read failed; rejects it with the fast extension.
    pub fn drop_queued(&mut self, now: Time, req: BlockRequest) {
        if let Some(pos) = self.serve_queue.iter().position(|r| *r == req) {
            self.serve_queue.remove(pos);
            self.reject(now, req);
        }
    }

    // ---- output ----

    /// The next event, until `None`.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Takes the bytes to send (empty when there are none).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Sends a `ut_pex` message (its bencoded payload); nothing when the peer does not take them.
    pub fn send_pex(&mut self, now: Time, payload: &[u8]) {
        if self.state != PeerState::Established || !self.supports_pex() {
            return;
        }
        if let Some(id) = self.remote_pex {
            self.push(now, &Message::Extended { id, payload });
        }
    }

    /// Sends a `ut_metadata` message (its payload); nothing when the peer does not take them.
    pub fn send_metadata(&mut self, now: Time, payload: &[u8]) {
        if let Some(id) = self.remote_metadata_id() {
            self.push(now, &Message::Extended { id, payload });
        }
    }

    /// The metadata arrived: the torrent has `count` pieces and we serve an info dictionary of
    /// `metadata_size` bytes (`None`: we do not serve it). What the peer said about its pieces
    /// is checked against `count` now (a bitfield of the wrong length or a `have` out of range
    /// closes the connection) and reported as one [`PeerEvent::Bitfield`]. Does nothing when the
    /// count was already known.
    pub fn set_piece_count(&mut self, now: Time, count: u32, metadata_size: Option<u64>) {
        let Some(raw) = self.raw.take() else {
            return;
        };
        self.config.piece_count = Some(count);
        self.config.metadata_size = metadata_size;
        self.has = Bitfield::new(count);
        if self.state == PeerState::Closed {
            return;
        }
        if metadata_size.is_some() {
            self.send_extended_handshake(now);
        }
        let said = raw.all || raw.bitfield.is_some() || raw.haves.iter().any(|&b| b != 0);
        if raw.all {
            self.has = Bitfield::full(count);
        } else if let Some(bytes) = &raw.bitfield {
            match Bitfield::from_bytes(bytes, count) {
                Ok(b) => self.has = b,
                Err(e) => {
                    self.close(e.to_string());
                    return;
                }
            }
        }
        for (byte_index, &byte) in raw.haves.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (0x80 >> bit) == 0 {
                    continue;
                }
                let i = byte_index as u32 * 8 + bit;
                if i >= count {
                    self.close(format!("have for piece {i}, torrent has {count}"));
                    return;
                }
                self.has.set(i);
            }
        }
        if said {
            self.events.push_back(PeerEvent::Bitfield);
        }
    }

    /// When [`Peer::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.state {
            PeerState::Closed => None,
            PeerState::Handshaking => Some(self.opened + HANDSHAKE_TIMEOUT),
            PeerState::Established => {
                let mut t =
                    (self.last_recv + IDLE_TIMEOUT).min(self.last_sent + KEEPALIVE_INTERVAL);
                if let Some(oldest) = self.requests.iter().map(|o| o.sent).min() {
                    t = t.min(oldest + REQUEST_TIMEOUT);
                }
                if let Some(w) = self.waiting_since.filter(|_| !self.snubbed) {
                    t = t.min(w + SNUB_TIMEOUT);
                }
                Some(t)
            }
        }
    }

    // ---- internals ----

    /// We offer `ut_metadata` when we serve the metadata or still need it.
    fn offers_metadata(&self) -> bool {
        self.config.metadata_size.is_some() || self.config.piece_count.is_none()
    }

    /// A bitfield before the piece count is known: the first is kept whole, a late one (aria2)
    /// counts as `have`s, like [`Peer::late_haves`].
    fn raw_bitfield(&mut self, first: bool, bytes: &[u8]) {
        let Some(raw) = self.raw.as_mut() else { return };
        if first {
            raw.bitfield = Some(bytes.to_vec());
            return;
        }
        if raw.haves.len() < bytes.len() {
            raw.haves.resize(bytes.len(), 0);
        }
        for (h, b) in raw.haves.iter_mut().zip(bytes) {
            *h |= b;
        }
    }

    /// A `have` before the piece count is known, kept as a bit (bounded by the largest metadata
    /// we accept).
    fn raw_have(&mut self, i: u32) {
        if i >= MAX_PIECES_WITHOUT_METADATA {
            self.close(format!(
                "have for piece {i}, more than any torrent we accept"
            ));
            return;
        }
        let Some(raw) = self.raw.as_mut() else { return };
        let byte = (i / 8) as usize;
        if raw.haves.len() <= byte {
            raw.haves.resize(byte + 1, 0);
        }
        raw.haves[byte] |= 0x80 >> (i % 8);
    }

    /// The pipeline emptied for a reason other than a timeout: we are no longer waiting.
    fn stop_waiting_if_idle(&mut self) {
        if self.requests.is_empty() {
            self.waiting_since = None;
        }
    }

    fn max_message_len(&self) -> usize {
        // A block message is 13 bytes of header plus the block; a bitfield one byte per 8 pieces.
        let pieces = self
            .config
            .piece_count
            .unwrap_or(MAX_PIECES_WITHOUT_METADATA);
        let bitfield = (pieces as usize).div_ceil(8) + 1;
        MAX_OTHER_MESSAGE
            .max(bitfield)
            .max(wire::BLOCK_SIZE as usize + 13)
    }

    /// Queues a message. Nothing goes out before both handshakes or after the connection
    /// closed, whatever the caller asks.
    fn push(&mut self, now: Time, msg: &Message<'_>) {
        if self.state != PeerState::Established {
            return;
        }
        msg.encode(&mut self.out);
        self.last_sent = now;
    }

    fn send_handshake(&mut self, now: Time) {
        let mut h = Handshake::new(self.config.info_hash, self.config.our_id);
        if self.config.dht_port != 0 {
            h = h.with_dht();
        }
        h.encode(&mut self.out);
        self.last_sent = now;
        self.handshake_sent = true;
    }

    fn on_handshake(&mut self, now: Time, h: Handshake) {
        if h.info_hash != self.config.info_hash {
            self.close(format!(
                "handshake for another torrent ({})",
                h.info_hash.to_hex()
            ));
            return;
        }
        if h.peer_id == self.config.our_id {
            self.self_connection = true;
            self.close("connected to ourselves".into());
            return;
        }
        if !self.handshake_sent {
            self.send_handshake(now);
        }
        self.fast = h.supports_fast();
        self.extended = h.supports_extended();
        self.remote_dht = h.supports_dht();
        self.remote_id = Some(h.peer_id);
        self.state = PeerState::Established;
        self.send_extended_handshake(now);
        self.events
            .push_back(PeerEvent::Handshaked { peer_id: h.peer_id });
    }

    /// Our BEP 10 handshake: the extensions we offer and facts about us (again after a magnet
    /// link's metadata arrived, so the peer learns we now serve it).
    fn send_extended_handshake(&mut self, now: Time) {
        if self.extended {
            let mut m = std::collections::BTreeMap::new();
            if self.config.pex {
                m.insert(crate::pex::EXTENSION_NAME.to_owned(), OUR_PEX_ID);
            }
            if self.offers_metadata() {
                m.insert(crate::metadata::EXTENSION_NAME.to_owned(), OUR_METADATA_ID);
            }
            let ext = ExtendedHandshake {
                m,
                metadata_size: self.config.metadata_size,
                v: Some(CLIENT_VERSION.to_string()),
                reqq: Some(u32::try_from(self.config.max_serve_queue).unwrap_or(u32::MAX)),
                p: (self.config.listen_port != 0).then_some(self.config.listen_port),
                ..ExtendedHandshake::default()
            };
            let payload = ext.encode();
            self.push(
                now,
                &Message::Extended {
                    id: 0,
                    payload: &payload,
                },
            );
        }
    }

    /// True when `index` names a piece; closes the connection when it is out of range. Before the
    /// piece count is known nothing can be checked and nothing is true.
    fn check_index(&mut self, what: &str, index: u32) -> bool {
        let Some(count) = self.config.piece_count else {
            return false;
        };
        if index >= count {
            self.close(format!("{what} for piece {index}, torrent has {count}"));
            return false;
        }
        true
    }

    /// Pieces announced after the first message (late bitfield or `have all`), as `have`s.
    fn late_haves(&mut self, pieces: impl Iterator<Item = u32>) {
        for i in pieces {
            if !self.has.get(i) {
                self.has.set(i);
                self.events.push_back(PeerEvent::Have(i));
            }
        }
    }

    fn on_message(&mut self, now: Time, msg: Message<'_>) {
        let neutral = matches!(
            msg,
            Message::KeepAlive
                | Message::Port(_)
                | Message::Unknown { .. }
                | Message::Extended { .. }
                | Message::AllowedFast(_)
                | Message::Suggest(_)
        );
        let first = self.first_message;
        if !neutral {
            self.first_message = false;
        }
        match msg {
            // Unknown message ids are ignored, as BEP 3 asks, so future extensions do not break us.
            Message::KeepAlive | Message::Unknown { .. } => {}
            Message::Port(port) => {
                if self.config.dht_port != 0 && port != 0 && self.remote_dht_port != Some(port) {
                    self.remote_dht_port = Some(port);
                    self.events.push_back(PeerEvent::DhtPort(port));
                }
            }
            Message::Extended { id, payload } => {
                if !self.extended {
                    self.close("extended message without the extension bit".into());
                } else if id == 0 {
                    // Unknown keys and extensions are ignored; a malformed dictionary is too, as
                    // nothing we rely on is lost without it.
                    if let Ok(ext) = ExtendedHandshake::decode(payload) {
                        self.reqq = ext.reqq;
                        self.client = ext.v;
                        self.listen_port = ext.p;
                        // A later handshake may turn the extension off (id 0) or move it.
                        self.remote_pex = ext.m.get(crate::pex::EXTENSION_NAME).copied();
                        self.remote_metadata = ext.m.get(crate::metadata::EXTENSION_NAME).copied();
                        self.remote_metadata_size = ext.metadata_size;
                        self.events.push_back(PeerEvent::ExtendedHandshake);
                    }
                } else if id == OUR_PEX_ID && self.config.pex {
                    self.events.push_back(PeerEvent::Pex(payload.to_vec()));
                } else if id == OUR_METADATA_ID && self.offers_metadata() {
                    self.events.push_back(PeerEvent::Metadata(payload.to_vec()));
                }
                // Extension messages under ids we did not give out are ignored.
            }
            Message::Bitfield(bytes) if self.raw.is_some() => self.raw_bitfield(first, bytes),
            Message::Bitfield(bytes) => {
                let count = self.config.piece_count.unwrap_or(0);
                match Bitfield::from_bytes(bytes, count) {
                    Ok(b) if first => {
                        self.has = b;
                        self.events.push_back(PeerEvent::Bitfield);
                    }
                    // aria2 sends its whole bitfield again mid-connection when that is shorter than
                    // the `have` messages it replaces: take it as those `have`s (a peer loses no piece).
                    Ok(b) => self.late_haves(b.iter_ones()),
                    Err(e) => self.close(e.to_string()),
                }
            }
            Message::HaveAll | Message::HaveNone => {
                let all = matches!(msg, Message::HaveAll);
                let name = if all { "have all" } else { "have none" };
                if !self.fast {
                    self.close(format!("{name} without the fast extension"));
                } else if !first && !all {
                    self.close(format!("{name} after other messages"));
                } else if let Some(raw) = self.raw.as_mut() {
                    raw.all |= all;
                } else if !first {
                    // aria2 sends `have all` mid-connection once it completes, like a late bitfield.
                    self.late_haves(0..self.config.piece_count.unwrap_or(0));
                } else {
                    let count = self.config.piece_count.unwrap_or(0);
                    self.has = if all {
                        Bitfield::full(count)
                    } else {
                        Bitfield::new(count)
                    };
                    self.events.push_back(PeerEvent::Bitfield);
                }
            }
            Message::Have(i) if self.raw.is_some() => self.raw_have(i),
            Message::Have(i) => {
                if self.check_index("have", i) && !self.has.get(i) {
                    self.has.set(i);
                    self.events.push_back(PeerEvent::Have(i));
                }
            }
            Message::Choke => {
                if !self.peer_choking {
                    self.peer_choking = true;
                    // With the fast extension the peer rejects what it will not serve; without,
                    // every pending request is void.
                    let dropped = if self.fast {
                        Vec::new()
                    } else {
                        let keep: Vec<u32> = self.allowed_fast.clone();
                        let mut dropped = Vec::new();
                        self.requests.retain(|o| {
                            let k = keep.contains(&o.req.index);
                            if !k {
                                dropped.push(o.req);
                            }
                            k
                        });
                        dropped
                    };
                    self.stop_waiting_if_idle();
                    self.events.push_back(PeerEvent::Choked { dropped });
                }
            }
            Message::Unchoke => {
                if self.peer_choking {
                    self.peer_choking = false;
                    self.events.push_back(PeerEvent::Unchoked);
                }
            }
            Message::Interested => {
                if !self.peer_interested {
                    self.peer_interested = true;
                    self.events.push_back(PeerEvent::Interested);
                }
            }
            Message::NotInterested => {
                if self.peer_interested {
                    self.peer_interested = false;
                    self.events.push_back(PeerEvent::NotInterested);
                }
            }
            Message::Request(r) => {
                if r.length > wire::BLOCK_SIZE || r.length == 0 {
                    self.close(format!("request of {} bytes", r.length));
                } else if self.config.piece_count.is_none() {
                    // We have no piece before the metadata, and said so (or said nothing).
                    self.reject(now, r);
                } else if self.check_index("request", r.index) {
                    self.events.push_back(PeerEvent::Request(r));
                }
            }
            Message::Cancel(r) => {
                if let Some(pos) = self.serve_queue.iter().position(|q| *q == r) {
                    self.serve_queue.remove(pos);
                    self.events.push_back(PeerEvent::Cancel(r));
                }
            }
            Message::Piece { index, begin, data } => {
                if !self.check_index("block", index) {
                    return;
                }
                let len = data.len() as u32;
                let pos = self.requests.iter().position(|o| {
                    o.req.index == index && o.req.begin == begin && o.req.length == len
                });
                let requested = pos.is_some();
                if let Some(p) = pos {
                    self.requests.swap_remove(p);
                }
                self.down.record(now, data.len() as u64);
                self.waiting_since = (!self.requests.is_empty()).then_some(now);
                if self.snubbed {
                    self.snubbed = false;
                    self.events.push_back(PeerEvent::Snubbed(false));
                }
                self.events.push_back(PeerEvent::Block {
                    index,
                    begin,
                    data: data.to_vec(),
                    requested,
                });
            }
            Message::Reject(r) => {
                if !self.fast {
                    self.close("reject without the fast extension".into());
                    return;
                }
                // A reject for a request we no longer track (timed out, cancelled) is normal.
                if let Some(p) = self.requests.iter().position(|o| o.req == r) {
                    self.requests.swap_remove(p);
                    self.stop_waiting_if_idle();
                    self.events.push_back(PeerEvent::Rejected(r));
                }
            }
            Message::AllowedFast(i) => {
                if !self.fast {
                    self.close("allowed fast without the fast extension".into());
                } else if self.config.piece_count.is_some_and(|n| i < n)
                    && self.allowed_fast.len() < MAX_ALLOWED_FAST
                    && !self.allowed_fast.contains(&i)
                {
                    // Out-of-range indices and sets beyond MAX_ALLOWED_FAST are ignored (BEP 6
                    // lets the set be advisory); the cap keeps a flood from costing n² lookups.
                    self.allowed_fast.push(i);
                    self.events.push_back(PeerEvent::AllowedFast(i));
                }
            }
            Message::Suggest(i) => {
                if !self.fast {
                    self.close("suggest without the fast extension".into());
                } else if self.config.piece_count.is_some_and(|n| i < n) {
                    self.events.push_back(PeerEvent::Suggest(i));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
