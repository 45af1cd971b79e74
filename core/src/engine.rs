//! Many torrents behind one listener and one UDP socket: the router above the [`TorrentTask`]s.
//!
//! [`Engine`] is shaped like quinn-proto's `Endpoint`. It keeps the torrents in a [`Slab`]
//! addressed by [`TorrentId`] (index plus generation, so a completion meant for a removed torrent
//! can never land on the one that reused its slot) and routes the process's shared resources to
//! them:
//! - **Incoming connections** are the engine's until their handshake names an info-hash: the
//!   driver reports [`EngineInput::Incoming`] and the bytes that follow; once the first 48 bytes
//!   are in, the engine either hands the connection to that torrent ([`EngineAction::Adopt`],
//!   after which the socket belongs to that torrent's peer handle) or closes it. Connections that
//!   have not shown a handshake have their own small budget: when it is full the oldest one gives
//!   way to the newcomer, so a flood of idle connections cannot lock real peers out, and each
//!   gets [`EngineConfig::handshake_timeout`] at most.
//! - **Outgoing connection attempts** of every torrent share [`EngineConfig::max_half_open`]:
//!   attempts beyond it wait in a queue (in order) until one finishes.
//! - **Datagrams** on the shared UDP socket are told apart by their first byte: a bencoded
//!   dictionary (`d`) is KRPC and goes to the DHT node, anything else goes to the torrent whose
//!   tracker request it answers, matched by source address and BEP 15 transaction id.
//! - **The DHT** ([`EngineConfig::dht`]): one [`Dht`] node for the process. The engine
//!   bootstraps it (again with backoff while it finds nobody), looks up and announces every
//!   torrent that accepts peers and is not private (BEP 27) every
//!   [`EngineConfig::dht_announce_interval`], sooner while lookups find no node, and hands the
//!   peers found to the torrent as its `PeersDiscovered` input (so the torrent's trace has
//!   them). Peers' BEP 5 `port` messages become pings, which put answering nodes in the table.
//!   The DHT node's own inputs are not traced.
//! - **Stream encryption** (MSE/PE, [`EngineConfig::encryption`], [`crate::mse`]) sits at the
//!   seam between the driver and the torrents: an accepted connection whose first bytes are not
//!   a plain handshake runs the responder (the torrent found by its `SKEY` hash among all the
//!   engine's torrents) and is adopted with the decrypted bytes once it is established; a
//!   connection a torrent opened runs the initiator, carrying what the torrent sent meanwhile.
//!   After that every byte received is decrypted before it reaches the torrent and every byte
//!   the torrent sends is encrypted on its way to the driver. Under [`Policy::Prefer`], a dial
//!   whose encrypted handshake fails is redialed in plaintext at once (the torrent never
//!   notices) and its address remembered. The driver only carries bytes; the torrents, and so
//!   their traces, see plaintext only.
//!
//! Inputs go through [`Engine::handle_input`]; drain [`Engine::poll_action`] and
//! [`Engine::poll_event`] until `None` after each, and feed [`EngineInput::Timeout`] at
//! [`Engine::poll_timeout`]. Each torrent keeps its own trace: everything the engine routes to a
//! torrent enters it as that torrent's ordinary inputs (a handed-over connection as
//! `Incoming` plus the bytes received so far).

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Write};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use slab::Slab;

use crate::dht::state::SavedState;
use crate::dht::{self, Dht, DhtConfig, DhtEvent, LookupId};
use crate::id::{InfoHash, PeerHandle};
use crate::mse::{Handshake, MseError, Policy, SkeyTable};
use crate::session::{Action, Event, Input, Torrent};
use crate::time::Time;
use crate::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput, TorrentTask, TrackerInput,
};
use crate::trace::Recorder;
use crate::tracker::manager::TrackerAction;

/// Where a recorded torrent's trace goes (the driver opens the file; core only writes to it).
pub type TraceSink = Box<dyn Write + Send>;

/// Bytes of a handshake up to and including the info-hash.
const HANDSHAKE_PREFIX: usize = 48;
const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";
/// UDP tracker exchanges remembered for routing replies; older ones are forgotten.
const MAX_UDP_ROUTES: usize = 4096;
/// How long a UDP tracker request waits for its reply before its route is forgotten.
const UDP_ROUTE_TTL: Duration = Duration::from_secs(120);
/// A torrent's DHT lookup that reached no node is retried after this, doubling per failure...
const DHT_RETRY_BASE: Duration = Duration::from_secs(5);
/// ... up to this.
const DHT_RETRY_MAX: Duration = Duration::from_secs(300);
/// A bootstrap that reached no node is retried after this, doubling per failure up to
/// [`DHT_RETRY_MAX`].
const DHT_BOOTSTRAP_RETRY: Duration = Duration::from_secs(15);
/// Node contacts from peers' `port` messages waiting to be pinged, at most.
const MAX_DHT_CONTACTS: usize = 256;

/// A torrent of the engine: its slot and the generation of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TorrentId {
    /// Slot in the engine's slab.
    pub index: usize,
    /// Bumped each time the slot is reused.
    pub generation: u32,
}

impl fmt::Display for TorrentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torrent {}.{}", self.index, self.generation)
    }
}

/// An accepted connection whose handshake has not named its torrent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IncomingId(pub usize);

impl fmt::Display for IncomingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incoming {}", self.0)
    }
}

/// Process-wide limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Connections open in all torrents at most (incoming ones beyond it are refused).
    pub max_connections: usize,
    /// Outgoing connection attempts in flight in all torrents at most.
    pub max_half_open: usize,
    /// Accepted connections waiting for their handshake at most.
    pub max_pending: usize,
    /// Of those, from one IP address at most.
    pub max_pending_per_ip: usize,
    /// Time an accepted connection has to show its handshake.
    pub handshake_timeout: Duration,
    /// Peers unchoked in all torrents at most (besides each torrent's optimistic unchoke),
    /// shared among the torrents that have peers interested in them ([`upload_shares`]).
    pub upload_slots: usize,
    /// Run a DHT node (BEP 5) with these settings on the shared UDP socket(s); `None`: no DHT.
    pub dht: Option<DhtConfig>,
    /// How often each public torrent is looked up and announced in the DHT. Default 15 min.
    pub dht_announce_interval: Duration,
    /// MSE/PE stream encryption: what we offer when dialing and accept from incoming
    /// connections. Default [`Policy::Prefer`].
    pub encryption: Policy,
    /// Seeds the engine's own randomness (MSE keys and pads).
    pub seed: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_connections: 500,
            max_half_open: 16,
            max_pending: 64,
            max_pending_per_ip: 16,
            handshake_timeout: Duration::from_secs(10),
            upload_slots: 8,
            dht: None,
            dht_announce_interval: Duration::from_secs(15 * 60),
            encryption: Policy::Prefer,
            seed: 0,
        }
    }
}

/// Everything that can happen to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineInput<'a> {
    /// An input for one torrent (its disk completions, its sockets, its timers are all routed
    /// by the driver with the torrent's id).
    Torrent {
        /// The torrent.
        torrent: TorrentId,
        /// The input.
        input: TorrentInput<'a>,
    },
    /// A connection from `addr` was accepted; it gets the id [`Engine::next_incoming`] gave.
    Incoming {
        /// The remote address.
        addr: SocketAddr,
    },
    /// Bytes arrived on an accepted connection not yet handed to a torrent.
    IncomingData {
        /// The connection.
        conn: IncomingId,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// An accepted connection closed before it was handed to a torrent.
    IncomingClosed {
        /// The connection.
        conn: IncomingId,
    },
    /// A datagram arrived on the shared UDP socket.
    Datagram {
        /// Its source.
        from: SocketAddr,
        /// Its bytes.
        bytes: &'a [u8],
    },
    /// More DHT bootstrap contacts (names resolved after start): a bootstrap follows at once.
    /// Ignored without a DHT.
    DhtBootstrap {
        /// The addresses.
        addrs: &'a [SocketAddr],
    },
    /// Timers may be due.
    Timeout,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum EngineAction {
    /// An action of one torrent.
    Torrent {
        /// The torrent.
        torrent: TorrentId,
        /// The action.
        action: TorrentAction,
    },
    /// The accepted connection now belongs to `torrent` as `peer`: route its socket's news
    /// there from now on (its bytes so far were handed over already).
    Adopt {
        /// The connection.
        conn: IncomingId,
        /// Its torrent.
        torrent: TorrentId,
        /// Its handle in that torrent.
        peer: PeerHandle,
    },
    /// Send bytes on an accepted connection not yet handed to a torrent (its MSE handshake).
    SendIncoming {
        /// The connection.
        conn: IncomingId,
        /// The bytes, in order after any sent before.
        bytes: Vec<u8>,
    },
    /// Close an accepted connection that was not handed to a torrent.
    CloseIncoming {
        /// The connection.
        conn: IncomingId,
        /// Why, for logs.
        reason: RefuseReason,
    },
    /// Send a DHT datagram from the shared UDP socket of `to`'s family.
    SendDatagram {
        /// Where to.
        to: SocketAddr,
        /// The bytes.
        data: Vec<u8>,
    },
}

/// Why an accepted connection was closed before reaching a torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Its first bytes are not a BitTorrent handshake.
    NotBitTorrent,
    /// Its handshake names a torrent we do not have (or one still checking its data).
    UnknownTorrent,
    /// It sent no handshake in time.
    HandshakeTimeout,
    /// A newer connection took its place in the pre-handshake budget.
    Evicted,
    /// The process holds its most connections.
    Full,
    /// The engine is shutting down.
    ShuttingDown,
    /// A plain handshake, but encryption is required ([`Policy::Require`]).
    PlaintextRefused,
    /// Its MSE handshake failed.
    Encryption(MseError),
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefuseReason::NotBitTorrent => "not a BitTorrent handshake",
            RefuseReason::UnknownTorrent => "handshake for a torrent we do not serve",
            RefuseReason::HandshakeTimeout => "no handshake in time",
            RefuseReason::Evicted => "made room for a newer connection",
            RefuseReason::Full => "too many connections",
            RefuseReason::ShuttingDown => "shutting down",
            RefuseReason::PlaintextRefused => "plain handshake, but encryption is required",
            RefuseReason::Encryption(e) => return e.fmt(f),
        })
    }
}

/// What the user interface may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// An event of one torrent.
    Torrent {
        /// The torrent.
        torrent: TorrentId,
        /// The event.
        event: TorrentEvent,
    },
    /// A DHT lookup finished (for logs).
    DhtLookup {
        /// The torrent it was for; `None` for the node's bootstrap.
        torrent: Option<TorrentId>,
        /// Peers it found.
        peers: usize,
        /// Of the closest nodes, how many answered (or, for an announce, confirmed it).
        nodes: usize,
        /// It announced our peer (else it only looked peers up).
        announced: bool,
    },
}

#[derive(Debug)]
struct Pending {
    addr: SocketAddr,
    since: Time,
    buf: Vec<u8>,
    /// Its MSE handshake, once its first bytes showed it is not a plain one.
    mse: Option<Box<Handshake>>,
}

/// A torrent's task, plain or behind a trace recorder.
enum Runner {
    Plain(Box<TorrentTask>),
    Recording(Box<Recorder<TraceSink>>),
}

impl Runner {
    fn task(&self) -> &TorrentTask {
        match self {
            Runner::Plain(t) => t,
            Runner::Recording(r) => r.task(),
        }
    }
    fn handle_input(&mut self, now: Time, input: TorrentInput<'_>) {
        match self {
            Runner::Plain(t) => t.handle_input(now, input),
            Runner::Recording(r) => r.handle_input(now, input),
        }
    }
    fn poll_action(&mut self) -> Option<TorrentAction> {
        match self {
            Runner::Plain(t) => t.poll_action(),
            Runner::Recording(r) => r.poll_action(),
        }
    }
    fn poll_event(&mut self) -> Option<TorrentEvent> {
        match self {
            Runner::Plain(t) => t.poll_event(),
            Runner::Recording(r) => r.poll_event(),
        }
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Runner::Plain(t) => t.fmt(f),
            Runner::Recording(r) => f.debug_tuple("Recording").field(r.task()).finish(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    runner: Runner,
}

/// The router above every torrent. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    torrents: Slab<Slot>,
    /// Generations of freed slots, so a reused slot gets a fresh one.
    freed: BTreeMap<usize, u32>,
    by_hash: BTreeMap<InfoHash, TorrentId>,
    pending: Slab<Pending>,
    /// Pending connections in arrival order, for eviction (key, arrival sequence).
    pending_order: BTreeSet<(u64, usize)>,
    pending_seq: BTreeMap<usize, u64>,
    next_seq: u64,
    half_open: BTreeSet<(TorrentId, PeerHandle)>,
    connect_queue: VecDeque<(TorrentId, PeerHandle, SocketAddr)>,
    udp_routes: BTreeMap<(SocketAddr, [u8; 4]), (TorrentId, Time)>,
    dht: Option<Box<Dht>>,
    /// Running torrent lookups: their torrent and the peers they found so far.
    dht_lookups: BTreeMap<LookupId, (TorrentId, usize)>,
    /// Each torrent's next lookup and how many lookups in a row reached no node.
    dht_next: BTreeMap<TorrentId, (Time, u32)>,
    /// The running bootstrap, when it is due again, and failures in a row.
    dht_bootstrap: (Option<LookupId>, Option<Time>, u32),
    next_lookup: u64,
    /// Nodes heard of from peers, to ping.
    dht_contacts: Vec<SocketAddr>,
    /// The MSE state of torrents' connections that have one (dialing, or RC4).
    links: BTreeMap<(TorrentId, PeerHandle), Link>,
    /// Where dials go without MSE under [`Policy::Prefer`], and why.
    plain: Plaintext,
    /// Every torrent's `SKEY` hash, for incoming MSE handshakes (each holds a snapshot).
    skeys: Arc<SkeyTable>,
    rng: ChaCha8Rng,
    now: Time,
    shutting_down: bool,
    actions: VecDeque<EngineAction>,
    events: VecDeque<EngineEvent>,
}

impl Engine {
    /// An engine with no torrents.
    pub fn new(config: EngineConfig, now: Time) -> Engine {
        let dht = config.dht.clone().map(|c| Box::new(Dht::new(c, now)));
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut engine = Engine {
            config,
            torrents: Slab::new(),
            freed: BTreeMap::new(),
            by_hash: BTreeMap::new(),
            pending: Slab::new(),
            pending_order: BTreeSet::new(),
            pending_seq: BTreeMap::new(),
            next_seq: 0,
            half_open: BTreeSet::new(),
            connect_queue: VecDeque::new(),
            udp_routes: BTreeMap::new(),
            dht,
            dht_lookups: BTreeMap::new(),
            dht_next: BTreeMap::new(),
            dht_bootstrap: (None, Some(now), 0),
            next_lookup: 1,
            dht_contacts: Vec::new(),
            links: BTreeMap::new(),
            plain: Plaintext::default(),
            skeys: Arc::new(SkeyTable::new()),
            rng,
            now,
            shutting_down: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        engine.dht_settle();
        engine
    }

    // ---- getters ----

    /// A torrent's task, while the engine has it.
    pub fn torrent(&self, id: TorrentId) -> Option<&TorrentTask> {
        self.torrents
            .get(id.index)
            .filter(|s| s.generation == id.generation)
            .map(|s| s.runner.task())
    }

    /// Every torrent, in slot order.
    pub fn torrents(&self) -> impl Iterator<Item = (TorrentId, &TorrentTask)> + '_ {
        self.torrents.iter().map(|(index, s)| {
            let id = TorrentId {
                index,
                generation: s.generation,
            };
            (id, s.runner.task())
        })
    }

    /// The torrent with this info-hash.
    pub fn find(&self, info_hash: &InfoHash) -> Option<TorrentId> {
        self.by_hash.get(info_hash).copied()
    }

    /// The id the next accepted connection will get ([`EngineInput::Incoming`]).
    pub fn next_incoming(&self) -> IncomingId {
        IncomingId(self.pending.vacant_key())
    }

    /// Accepted connections waiting for their handshake.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Connections open or opening in all torrents.
    pub fn connection_count(&self) -> usize {
        self.torrents()
            .filter_map(|(_, t)| t.session())
            .map(|s| s.peer_count())
            .sum()
    }

    /// The DHT node, when there is one.
    pub fn dht(&self) -> Option<&Dht> {
        self.dht.as_deref()
    }

    /// Nodes in the DHT routing tables, when there is a DHT.
    pub fn dht_nodes(&self) -> Option<usize> {
        self.dht.as_ref().map(|d| d.node_count())
    }

    /// What the DHT node should save for the next start, when there is one.
    pub fn dht_state(&self) -> Option<SavedState> {
        self.dht.as_ref().map(|d| d.saved_state())
    }

    /// True after [`Engine::shutdown`] once every torrent is stopped.
    pub fn is_stopped(&self) -> bool {
        self.shutting_down && self.torrents().all(|(_, t)| t.is_stopped())
    }

    // ---- application calls ----

    /// Adds a torrent; `None` when one with the same info-hash is already there. With
    /// `record`, the torrent's run is traced there (see [`crate::trace`]).
    pub fn add_torrent(
        &mut self,
        now: Time,
        config: TorrentConfig,
        torrent: Torrent,
        start: StartState,
        record: Option<TraceSink>,
    ) -> Option<TorrentId> {
        let now = self.tick(now);
        if self.by_hash.contains_key(&torrent.info_hash) {
            return None;
        }
        let info_hash = torrent.info_hash;
        let runner = match record {
            None => Runner::Plain(Box::new(TorrentTask::new(config, torrent, start, now))),
            Some(out) => {
                Runner::Recording(Box::new(Recorder::new(out, config, torrent, start, now)))
            }
        };
        let index = self.torrents.vacant_key();
        let generation = self.freed.remove(&index).unwrap_or(0);
        self.torrents.insert(Slot { generation, runner });
        let id = TorrentId { index, generation };
        self.by_hash.insert(info_hash, id);
        Arc::make_mut(&mut self.skeys).insert(info_hash);
        self.drain_torrent(id);
        self.dispatch_connects();
        self.dht_settle();
        Some(id)
    }

    /// Forgets a torrent (stop it first: feed it `Input::Shutdown` and wait for
    /// [`TorrentTask::is_stopped`]). Its queued connection attempts are dropped. A recorded
    /// torrent's trace is ended: the result says whether it was written whole.
    pub fn remove_torrent(&mut self, id: TorrentId) -> Option<(TorrentTask, io::Result<()>)> {
        self.torrent(id)?;
        let slot = self.torrents.remove(id.index);
        self.freed.insert(id.index, slot.generation.wrapping_add(1));
        let (task, trace) = match slot.runner {
            Runner::Plain(t) => (*t, Ok(())),
            Runner::Recording(r) => {
                let (t, out) = r.finish();
                (t, out.and_then(|mut w| w.flush()))
            }
        };
        self.by_hash.remove(&task.torrent().info_hash);
        Arc::make_mut(&mut self.skeys).remove(&task.torrent().info_hash);
        self.links.retain(|(t, _), _| *t != id);
        self.plain.forget_torrent(id);
        self.half_open.retain(|(t, _)| *t != id);
        self.connect_queue.retain(|(t, _, _)| *t != id);
        self.udp_routes.retain(|_, (t, _)| *t != id);
        self.dht_next.remove(&id);
        self.dht_lookups.retain(|_, (t, _)| *t != id);
        self.dispatch_connects();
        Some((task, trace))
    }

    /// Stops everything: every torrent gets `Input::Shutdown`, pending connections close.
    pub fn shutdown(&mut self, now: Time) {
        self.tick(now);
        self.shutting_down = true;
        let keys: Vec<usize> = self.pending.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.refuse(IncomingId(k), RefuseReason::ShuttingDown);
        }
        let ids: Vec<TorrentId> = self.torrents().map(|(id, _)| id).collect();
        for id in ids {
            self.feed(id, TorrentInput::Session(Input::Shutdown));
        }
        self.connect_queue.clear();
    }

    // ---- outputs ----

    /// The next thing the driver must do, until `None`.
    pub fn poll_action(&mut self) -> Option<EngineAction> {
        self.actions.pop_front()
    }

    /// The next thing to show the user, until `None`.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// When to feed [`EngineInput::Timeout`] next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let torrents = self.torrents().filter_map(|(_, t)| t.poll_timeout());
        let pending = self
            .pending
            .iter()
            .map(|(_, p)| p.since + self.config.handshake_timeout);
        torrents
            .chain(pending)
            .chain(self.dht_timeout())
            .chain(self.links_timeout())
            .min()
    }

    // ---- input ----

    /// Feeds one input. `now` earlier than a previous input's is treated as that time.
    pub fn handle_input(&mut self, now: Time, input: EngineInput<'_>) {
        let now = self.tick(now);
        match input {
            EngineInput::Torrent { torrent, input } => self.torrent_input(torrent, input),
            EngineInput::Incoming { addr } => self.on_incoming(now, addr),
            EngineInput::IncomingData { conn, bytes } => self.on_incoming_data(conn, bytes),
            EngineInput::IncomingClosed { conn } => {
                if self.pending.contains(conn.0) {
                    self.forget_pending(conn);
                }
            }
            EngineInput::Datagram { from, bytes } => self.on_datagram(from, bytes),
            EngineInput::DhtBootstrap { addrs } => {
                if let Some(dht) = self.dht.as_mut() {
                    let addrs = addrs.iter().map(|a| unmap(*a)).collect();
                    dht.handle_input(now, dht::Input::AddBootstrap { addrs });
                    self.dht_bootstrap.1 = Some(now);
                    self.dht_bootstrap.2 = 0;
                }
            }
            EngineInput::Timeout => self.on_timeout(now),
        }
        self.dht_settle();
    }

    fn tick(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    fn runner_mut(&mut self, id: TorrentId) -> Option<&mut Runner> {
        self.torrents
            .get_mut(id.index)
            .filter(|s| s.generation == id.generation)
            .map(|s| &mut s.runner)
    }

    /// Gives one torrent one input and takes its outputs.
    fn feed(&mut self, id: TorrentId, input: TorrentInput<'_>) {
        let now = self.now;
        // Connection attempts finishing free a half-open slot.
        if let TorrentInput::Session(
            Input::Connected { peer } | Input::ConnectFailed { peer } | Input::Closed { peer },
        ) = &input
        {
            self.half_open.remove(&(id, *peer));
        }
        let Some(runner) = self.runner_mut(id) else {
            return;
        };
        runner.handle_input(now, input);
        self.drain_torrent(id);
        self.dispatch_connects();
    }

    fn drain_torrent(&mut self, id: TorrentId) {
        let Some(slot) = self
            .torrents
            .get_mut(id.index)
            .filter(|s| s.generation == id.generation)
        else {
            return;
        };
        let task = &mut slot.runner;
        while let Some(action) = task.poll_action() {
            match action {
                TorrentAction::Session(Action::Connect { peer, addr }) => {
                    self.connect_queue.push_back((id, peer, addr));
                }
                TorrentAction::Session(Action::Send { peer, bytes }) => {
                    if let Some(bytes) = encryption::outgoing(&mut self.links, id, peer, bytes) {
                        self.actions.push_back(EngineAction::Torrent {
                            torrent: id,
                            action: TorrentAction::Session(Action::Send { peer, bytes }),
                        });
                    }
                }
                TorrentAction::Session(Action::Close { peer, reason }) => {
                    self.links.remove(&(id, peer));
                    self.plain.dial_ended((id, peer));
                    // A queued attempt that its torrent gave up never reaches the driver.
                    let before = self.connect_queue.len();
                    self.connect_queue
                        .retain(|(t, p, _)| !(*t == id && *p == peer));
                    self.half_open.remove(&(id, peer));
                    if self.connect_queue.len() == before {
                        self.actions.push_back(EngineAction::Torrent {
                            torrent: id,
                            action: TorrentAction::Session(Action::Close { peer, reason }),
                        });
                    }
                }
                TorrentAction::Tracker(TrackerAction::SendUdp {
                    tracker,
                    addr,
                    bytes,
                }) => {
                    if let Some(tid) = bytes.get(12..16).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                        if self.udp_routes.len() >= MAX_UDP_ROUTES
                            && let Some(oldest) = self
                                .udp_routes
                                .iter()
                                .min_by_key(|(_, (_, t))| *t)
                                .map(|(k, _)| *k)
                        {
                            self.udp_routes.remove(&oldest);
                        }
                        self.udp_routes.insert((unmap(addr), tid), (id, self.now));
                    }
                    self.actions.push_back(EngineAction::Torrent {
                        torrent: id,
                        action: TorrentAction::Tracker(TrackerAction::SendUdp {
                            tracker,
                            addr,
                            bytes,
                        }),
                    });
                }
                other => self.actions.push_back(EngineAction::Torrent {
                    torrent: id,
                    action: other,
                }),
            }
        }
        while let Some(event) = task.poll_event() {
            if let TorrentEvent::Session(Event::DhtNode { addr, .. }) = event {
                if self.dht.is_some() && self.dht_contacts.len() < MAX_DHT_CONTACTS {
                    self.dht_contacts.push(unmap(addr));
                }
                continue;
            }
            self.events
                .push_back(EngineEvent::Torrent { torrent: id, event });
        }
    }

    /// Lets queued connection attempts go while the half-open budget allows.
    fn dispatch_connects(&mut self) {
        while self.half_open.len() < self.config.max_half_open {
            let Some((id, peer, addr)) = self.connect_queue.pop_front() else {
                return;
            };
            self.half_open.insert((id, peer));
            self.actions.push_back(EngineAction::Torrent {
                torrent: id,
                action: TorrentAction::Session(Action::Connect { peer, addr }),
            });
        }
    }

    fn on_incoming(&mut self, now: Time, addr: SocketAddr) {
        let conn = IncomingId(self.pending.insert(Pending {
            addr,
            since: now,
            buf: Vec::new(),
            mse: None,
        }));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_order.insert((seq, conn.0));
        self.pending_seq.insert(conn.0, seq);
        if self.shutting_down {
            self.refuse(conn, RefuseReason::ShuttingDown);
            return;
        }
        // The newcomer always gets in: the oldest waiting connection from its address (or,
        // when the whole budget is used, the oldest of all) makes room.
        let ip = addr.ip();
        let same_ip: Vec<usize> = self
            .pending_order
            .iter()
            .map(|&(_, k)| k)
            .filter(|&k| k != conn.0 && self.pending[k].addr.ip() == ip)
            .collect();
        if same_ip.len() >= self.config.max_pending_per_ip {
            self.refuse(IncomingId(same_ip[0]), RefuseReason::Evicted);
        }
        while self.pending.len() > self.config.max_pending {
            let Some(&(_, oldest)) = self.pending_order.iter().find(|&&(_, k)| k != conn.0) else {
                break;
            };
            self.refuse(IncomingId(oldest), RefuseReason::Evicted);
        }
    }

    fn on_incoming_data(&mut self, conn: IncomingId, bytes: &[u8]) {
        let Some(p) = self.pending.get_mut(conn.0) else {
            return;
        };
        if p.mse.is_some() {
            self.incoming_mse(conn, bytes);
            return;
        }
        let take = bytes
            .len()
            .min(HANDSHAKE_PREFIX.saturating_sub(p.buf.len()));
        p.buf.extend_from_slice(&bytes[..take]);
        let rest = &bytes[take..];
        let have = p.buf.len().min(PROTOCOL.len());
        if p.buf[..have] != PROTOCOL[..have] {
            if self.config.encryption == Policy::Disable {
                self.refuse(conn, RefuseReason::NotBitTorrent);
            } else {
                let mut first = std::mem::take(&mut p.buf);
                first.extend_from_slice(rest);
                self.start_responder(conn, &first);
            }
            return;
        }
        if have == PROTOCOL.len() && !self.config.encryption.accepts_plaintext_handshake() {
            self.refuse(conn, RefuseReason::PlaintextRefused);
            return;
        }
        if p.buf.len() < HANDSHAKE_PREFIX {
            return;
        }
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&p.buf[28..48]);
        let mut bytes = std::mem::take(&mut p.buf);
        bytes.extend_from_slice(rest);
        self.adopt(conn, InfoHash(hash), bytes, None);
    }

    /// Hands an accepted connection whose handshake names `info_hash` to that torrent, with
    /// `bytes` (plaintext) as the first it received and `cipher` for the rest of its stream.
    fn adopt(
        &mut self,
        conn: IncomingId,
        info_hash: InfoHash,
        bytes: Vec<u8>,
        cipher: Option<crate::mse::Cipher>,
    ) {
        let target = self
            .by_hash
            .get(&info_hash)
            .copied()
            .filter(|&id| self.torrent(id).is_some_and(TorrentTask::accepts_peers));
        let Some(id) = target else {
            self.refuse(conn, RefuseReason::UnknownTorrent);
            return;
        };
        if self.connection_count() >= self.config.max_connections {
            self.refuse(conn, RefuseReason::Full);
            return;
        }
        let Some(p) = self.forget_pending(conn) else {
            return;
        };
        let Some(peer) = self.torrent(id).and_then(TorrentTask::next_handle) else {
            return;
        };
        self.actions.push_back(EngineAction::Adopt {
            conn,
            torrent: id,
            peer,
        });
        self.feed(id, TorrentInput::Session(Input::Incoming { addr: p.addr }));
        // The torrent may have refused it at once (its own limits); then no bytes follow.
        if self
            .torrent(id)
            .and_then(|t| t.session())
            .is_some_and(|s| s.peer_addr(peer) == Some(p.addr))
        {
            if let Some(cipher) = cipher {
                self.links.insert((id, peer), Link::Rc4(cipher));
            }
            if !bytes.is_empty() {
                self.feed(
                    id,
                    TorrentInput::Session(Input::Received {
                        peer,
                        bytes: &bytes,
                    }),
                );
            }
        }
    }

    fn forget_pending(&mut self, conn: IncomingId) -> Option<Pending> {
        let p = self.pending.try_remove(conn.0)?;
        if let Some(seq) = self.pending_seq.remove(&conn.0) {
            self.pending_order.remove(&(seq, conn.0));
        }
        Some(p)
    }

    fn refuse(&mut self, conn: IncomingId, reason: RefuseReason) {
        if self.forget_pending(conn).is_some() {
            self.actions
                .push_back(EngineAction::CloseIncoming { conn, reason });
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let from = unmap(from);
        // KRPC is a bencoded dictionary; a UDP tracker's reply starts with its action, 0 to 3.
        if bytes.first() == Some(&b'd') {
            if let Some(dht) = self.dht.as_mut() {
                let data = bytes.to_vec();
                dht.handle_input(self.now, dht::Input::Datagram { from, data });
            }
            return;
        }
        let Some(tid) = bytes.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
            return;
        };
        // The route stays until it expires: a retransmitted request keeps its transaction id,
        // and a duplicate reply is the tracker manager's to ignore.
        let Some(&(id, _)) = self.udp_routes.get(&(from, tid)) else {
            return;
        };
        self.feed(
            id,
            TorrentInput::Tracker(TrackerInput::Datagram { from, bytes }),
        );
    }

    fn on_timeout(&mut self, now: Time) {
        let late: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since + self.config.handshake_timeout <= now)
            .map(|(k, _)| k)
            .collect();
        for k in late {
            self.refuse(IncomingId(k), RefuseReason::HandshakeTimeout);
        }
        self.expire_links(now);
        self.udp_routes
            .retain(|_, (_, since)| *since + UDP_ROUTE_TTL > now);
        let due: Vec<TorrentId> = self
            .torrents()
            .filter(|(_, t)| t.poll_timeout().is_some_and(|d| d <= now))
            .map(|(id, _)| id)
            .collect();
        for id in due {
            self.feed(id, TorrentInput::Session(Input::Timeout));
        }
        self.share_upload_slots();
        if let Some(dht) = self.dht.as_mut()
            && dht.poll_timeout().is_some_and(|t| t <= now)
        {
            dht.handle_input(now, dht::Input::Timeout);
        }
    }

    // ---- the DHT ----

    /// True when `task` takes part in the DHT now.
    fn dht_wanted(&self, task: &TorrentTask) -> bool {
        self.dht.is_some() && !self.shutting_down && task.accepts_peers() && !task.torrent().private
    }

    /// The DHT's next deadline, the bootstrap's, and each waiting torrent's next lookup.
    fn dht_timeout(&self) -> Option<Time> {
        let dht = self.dht.as_ref()?;
        let (running, bootstrap_due, _) = self.dht_bootstrap;
        let lookups = if running.is_some() {
            None
        } else {
            self.torrents()
                .filter(|(id, t)| {
                    self.dht_wanted(t) && !self.dht_lookups.values().any(|(x, _)| x == id)
                })
                .map(|(id, _)| self.dht_next.get(&id).map_or(self.now, |(due, _)| *due))
                .min()
        };
        let bootstrap = if running.is_some() || self.shutting_down {
            None
        } else {
            bootstrap_due
        };
        [dht.poll_timeout(), bootstrap, lookups]
            .into_iter()
            .flatten()
            .min()
    }

    fn next_lookup_id(&mut self) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        id
    }

    /// After every input: pings the nodes peers told us of, carries the DHT's output out, and
    /// starts the bootstrap and torrent lookups that are due.
    fn dht_settle(&mut self) {
        if self.dht.is_none() {
            return;
        }
        let now = self.now;
        // Each round may feed torrents (peers found), which may name more contacts; bounded.
        for _ in 0..8 {
            let contacts = std::mem::take(&mut self.dht_contacts);
            let Some(dht) = self.dht.as_mut() else {
                return;
            };
            for addr in contacts {
                dht.handle_input(now, dht::Input::Ping { addr });
            }
            self.dht_start_due(now);
            let Some(dht) = self.dht.as_mut() else {
                return;
            };
            while let Some(t) = dht.poll_transmit() {
                self.actions.push_back(EngineAction::SendDatagram {
                    to: t.to,
                    data: t.data,
                });
            }
            let events: Vec<DhtEvent> = std::iter::from_fn(|| dht.poll_event()).collect();
            if events.is_empty() && self.dht_contacts.is_empty() {
                return;
            }
            for e in events {
                self.on_dht_event(now, e);
            }
        }
    }

    fn dht_start_due(&mut self, now: Time) {
        if self.shutting_down {
            return;
        }
        let (running, due, _) = self.dht_bootstrap;
        if running.is_none() && due.is_some_and(|t| t <= now) {
            let id = self.next_lookup_id();
            self.dht_bootstrap.0 = Some(id);
            self.dht_bootstrap.1 = None;
            if let Some(dht) = self.dht.as_mut() {
                dht.handle_input(now, dht::Input::Bootstrap { id });
            }
            return;
        }
        if running.is_some() {
            // Lookups wait for the table the bootstrap is filling.
            return;
        }
        let due: Vec<(TorrentId, InfoHash, u16)> = self
            .torrents()
            .filter(|(id, t)| {
                self.dht_wanted(t)
                    && !self.dht_lookups.values().any(|(x, _)| x == id)
                    && self.dht_next.get(id).is_none_or(|(t, _)| *t <= now)
            })
            .map(|(id, t)| (id, t.torrent().info_hash, t.config().session.listen_port))
            .collect();
        for (torrent, info_hash, port) in due {
            let id = self.next_lookup_id();
            self.dht_lookups.insert(id, (torrent, 0));
            let input = if port == 0 {
                dht::Input::GetPeers { id, info_hash }
            } else {
                dht::Input::Announce {
                    id,
                    info_hash,
                    port,
                    implied_port: false,
                }
            };
            if let Some(dht) = self.dht.as_mut() {
                dht.handle_input(now, input);
            }
        }
    }

    fn on_dht_event(&mut self, now: Time, e: DhtEvent) {
        let (id, nodes, announced) = match e {
            DhtEvent::Peers { id, peers, .. } => {
                if let Some((torrent, found)) = self.dht_lookups.get_mut(&id) {
                    *found += peers.len();
                    let torrent = *torrent;
                    self.feed(
                        torrent,
                        TorrentInput::Session(Input::PeersDiscovered { addrs: &peers }),
                    );
                }
                return;
            }
            DhtEvent::LookupDone { id, nodes } => (id, nodes, false),
            DhtEvent::Announced { id, acked, .. } => (id, acked, true),
        };
        if self.dht_bootstrap.0 == Some(id) {
            let failures = if nodes == 0 {
                self.dht_bootstrap.2 + 1
            } else {
                0
            };
            self.dht_bootstrap = (
                None,
                (nodes == 0).then(|| now + backoff(DHT_BOOTSTRAP_RETRY, failures)),
                failures,
            );
            if nodes > 0 {
                // Lookups that failed for want of a table may go again at once.
                for (due, streak) in self.dht_next.values_mut() {
                    if *streak > 0 {
                        *due = now;
                    }
                }
            }
            self.events.push_back(EngineEvent::DhtLookup {
                torrent: None,
                peers: 0,
                nodes,
                announced: false,
            });
            return;
        }
        let Some((torrent, peers)) = self.dht_lookups.remove(&id) else {
            return;
        };
        let streak = self.dht_next.get(&torrent).map_or(0, |(_, s)| *s);
        // Nobody reached, or nobody has the torrent yet: try again soon, backing off.
        let next = if nodes == 0 || peers == 0 {
            (now + backoff(DHT_RETRY_BASE, streak + 1), streak + 1)
        } else {
            (now + self.config.dht_announce_interval, 0)
        };
        self.dht_next.insert(torrent, next);
        self.events.push_back(EngineEvent::DhtLookup {
            torrent: Some(torrent),
            peers,
            nodes,
            announced,
        });
    }

    /// Gives each torrent its share of the process-wide upload slots, as an input it records,
    /// when the share changed.
    fn share_upload_slots(&mut self) {
        let running: Vec<(TorrentId, usize, usize)> = self
            .torrents()
            .filter_map(|(id, t)| {
                t.session()
                    .map(|s| (id, s.interested_count(), s.upload_slots()))
            })
            .collect();
        let demand: Vec<usize> = running.iter().map(|&(_, wants, _)| wants).collect();
        let shares = upload_shares(self.config.upload_slots, &demand);
        for (&(id, _, current), share) in running.iter().zip(shares) {
            if share != current {
                self.feed(
                    id,
                    TorrentInput::Session(Input::UploadSlots { slots: share }),
                );
            }
        }
    }
}

/// Splits `total` upload slots among torrents with `interested[i]` interested peers each: the
/// torrents with interested peers share `total` evenly (the first ones in order get the
/// remainder, and each at least 1), no torrent gets more than it has interested peers unless
/// nobody else needs them, and a torrent nobody is interested in keeps 1 (so a newcomer is
/// unchoked at once).
pub fn upload_shares(total: usize, interested: &[usize]) -> Vec<usize> {
    let total = total.max(1);
    let mut shares = vec![1usize; interested.len()];
    let active: Vec<usize> = (0..interested.len())
        .filter(|&i| interested[i] > 0)
        .collect();
    if active.is_empty() {
        return vec![total; interested.len()];
    }
    // Hand out slots one at a time, round robin, to the torrents that can still use one;
    // the rest go round robin to all active torrents.
    let mut given: Vec<usize> = vec![0; interested.len()];
    let mut left = total.max(active.len());
    while left > 0 {
        let mut progressed = false;
        for &i in &active {
            if left == 0 {
                break;
            }
            if given[i] < interested[i] {
                given[i] += 1;
                left -= 1;
                progressed = true;
            }
        }
        if !progressed {
            for &i in active.iter().cycle().take(left) {
                given[i] += 1;
            }
            left = 0;
        }
    }
    for &i in &active {
        shares[i] = given[i].max(1);
    }
    shares
}

/// `base` doubled for each failure after the first, at most [`DHT_RETRY_MAX`].
fn backoff(base: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    base.saturating_mul(1 << shift).min(DHT_RETRY_MAX)
}

/// A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6 addresses.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

mod encryption;
#[cfg(test)]
mod tests;

use encryption::{Link, Plaintext};
