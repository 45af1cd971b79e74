//! The DHT (BEP 5, with BEP 32 for IPv6): a DHT node as a pure state machine, and its parts.
//!
//! - [`krpc`]: the KRPC message codec (queries, responses, errors), bounded and tolerant.
//! - [`node_id`]: 160-bit ids, the XOR metric, ranges of ids.
//! - [`table`]: the routing table of k-buckets, with liveness, replacement caches and refresh.
//! - [`token`]: announce tokens bound to the requester's IP, with rotating secrets.
//! - [`store`]: the peers other nodes announced to us, bounded and expiring.
//! - [`lookup`]: one iterative lookup (find_node or get_peers) as its own state machine.
//! - [`ratelimit`]: per-address token buckets for the queries we answer.
//! - [`state`]: what a node saves across restarts (its id and its nodes' addresses).
//! - [`secure_id`]: node ids bound to the external IP (BEP 42).
//! - [`Dht`] (here): one node tying them together.
//!
//! Nothing here reads a clock or draws from a global RNG: time is an argument, randomness comes
//! from the seed in [`DhtConfig`].
//!
//! # Driving a [`Dht`]
//!
//! Feed one [`Input`] with [`Dht::handle_input`] (a datagram that arrived on the DHT's UDP
//! socket, a deadline, or a request: look up peers, announce, bootstrap), then drain
//! [`Dht::poll_transmit`] (datagrams to send, each to its address from the socket of its
//! family) and [`Dht::poll_event`] (peers found, lookups finished, announces done) until
//! `None`, and wake up at [`Dht::poll_timeout`]. `Input::Timeout` early or twice does nothing
//! extra. Time must not go backwards; an earlier `now` counts as the latest seen.
//!
//! # Abuse
//!
//! Queries are answered only within a per-IP rate limit ([`ratelimit`]); others are dropped
//! unanswered. A reply is never longer than [`DhtConfig::amplification`] times the query that
//! asked for it: values, then nodes, are left out until it fits, so the node cannot be used to
//! amplify a spoofed flood. Responses count only when their transaction id is one we sent, to
//! the address that answers. Read-only nodes (BEP 43 `ro`) are not put in the routing table.
//!
//! # Memory
//!
//! Bounded by configuration: two routing tables ([`table`]: at most 2,560 entries each), two
//! peer stores ([`store::StoreConfig`]), at most [`DhtConfig::max_transactions`] queries in
//! flight, [`DhtConfig::max_lookups`] lookups (each bounded as [`lookup`] says), and the rate
//! limiter's [`ratelimit::RateConfig::max_tracked`] addresses. Output queues hold what one
//! input produced; the caller drains them after every input.

pub mod krpc;
pub mod lookup;
pub mod node_id;
pub mod ratelimit;
pub mod secure_id;
pub mod state;
pub mod store;
pub mod table;
pub mod token;

#[cfg(test)]
mod tests;

use core::net::SocketAddr;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use self::krpc::{
    Body, ErrorReply, KrpcError, Malformed, Message, Method, NodeInfo, Query, Response,
    TransactionId, Want,
};
use self::lookup::{Lookup, LookupConfig, LookupKind};
use self::node_id::NodeId;
use self::ratelimit::{RateConfig, RateLimiter};
use self::store::{PeerStore, StoreConfig};
use self::table::{Family, K, RoutingTable, TableAction};
use self::token::TokenSecrets;
use crate::id::InfoHash;
use crate::time::Time;

/// Our `v` (client and version, as libtorrent's extension describes it): "KP" 0.1.
pub const VERSION: &[u8; 4] = b"KP\x00\x01";

/// Settings of a [`Dht`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// Our node id; `None` draws one from the seed. Either way, once the nodes we query agree
    /// on our external IP (the `ip` of their replies, BEP 42) and the id does not fit it, the
    /// node takes an id that does ([`secure_id`]); local addresses never ask for that.
    pub node_id: Option<NodeId>,
    /// Everything random (ids, transaction ids, secrets, samples) derives from this.
    pub seed: u64,
    /// The driver has an IPv4 socket for the DHT.
    pub ipv4: bool,
    /// The driver has an IPv6 socket for the DHT (BEP 32).
    pub ipv6: bool,
    /// Nodes to bootstrap from (routers or known nodes), of either family.
    pub bootstrap: Vec<SocketAddr>,
    /// A query unanswered this long has failed. Default 10 s.
    pub query_timeout: Duration,
    /// Queries we have in flight at most. Default 256.
    pub max_transactions: usize,
    /// Lookups running at most (refreshes beyond it are skipped). Default 32.
    pub max_lookups: usize,
    /// A reply is at most this many times as long as its query. Default 8.
    pub amplification: usize,
    /// Peers put in one `get_peers` reply at most (fewer when the reply would be too long).
    /// Default 50.
    pub max_values: usize,
    /// Each lookup's parameters.
    pub lookup: LookupConfig,
    /// Each family's peer store.
    pub store: StoreConfig,
    /// Rate limits on the queries we answer.
    pub rate: RateConfig,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            node_id: None,
            seed: 0,
            ipv4: true,
            ipv6: false,
            bootstrap: Vec::new(),
            query_timeout: Duration::from_secs(10),
            max_transactions: 256,
            max_lookups: 32,
            amplification: 8,
            max_values: 50,
            lookup: LookupConfig::default(),
            store: StoreConfig::default(),
            rate: RateConfig::default(),
        }
    }
}

/// A lookup the user started ([`Input::GetPeers`], [`Input::Announce`], [`Input::Bootstrap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// Everything a [`Dht`] can be told: one enum, so a trace of it records all the node saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A datagram arrived on the DHT socket.
    Datagram {
        /// Its source.
        from: SocketAddr,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// A deadline passed ([`Dht::poll_timeout`]).
    Timeout,
    /// Find peers of `info_hash` ([`DhtEvent::Peers`], then [`DhtEvent::LookupDone`]).
    GetPeers {
        /// The lookup's handle, chosen by the caller.
        id: LookupId,
        /// The torrent.
        info_hash: InfoHash,
    },
    /// Find peers of `info_hash`, then announce our peer to the closest nodes
    /// ([`DhtEvent::Announced`]).
    Announce {
        /// The lookup's handle, chosen by the caller.
        id: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// Our peer's TCP port.
        port: u16,
        /// Ask the nodes to use our UDP source port instead (behind a NAT that maps both alike).
        implied_port: bool,
    },
    /// Look up our own id from the configured bootstrap nodes and the table (at start, and
    /// whenever the table runs empty).
    ///
    /// For all three requests: a handle that is already running, or a request beyond
    /// [`DhtConfig::max_lookups`], finishes at once with nothing found.
    Bootstrap {
        /// The lookup's handle, chosen by the caller.
        id: LookupId,
    },
    /// A node heard of outside the DHT (a peer's BEP 5 `port` message): it is pinged and put in
    /// the routing table if it answers. Ignored for a disabled family or while a ping to the
    /// same address is in flight.
    Ping {
        /// The node's UDP address.
        addr: SocketAddr,
    },
    /// More addresses to bootstrap from (names resolved after start, say), used by the next
    /// [`Input::Bootstrap`]; at most [`MAX_BOOTSTRAP`] are kept in all.
    AddBootstrap {
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
}

/// Replies that must name the same external IP, from distinct nodes, before we believe it.
pub const EXTERNAL_IP_VOTES: usize = 3;
/// The latest reported external IPs kept for the vote (one per replying address).
const MAX_IP_VOTES: usize = 16;

/// Bootstrap addresses kept at most ([`DhtConfig::bootstrap`] and [`Input::AddBootstrap`]).
pub const MAX_BOOTSTRAP: usize = 64;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What happened, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// A lookup found peers (each peer is reported once per lookup).
    Peers {
        /// The lookup.
        id: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// The new peers.
        peers: Vec<SocketAddr>,
    },
    /// A get_peers or bootstrap lookup finished.
    LookupDone {
        /// The lookup.
        id: LookupId,
        /// How many of the closest nodes answered (over both families).
        nodes: usize,
    },
    /// An announce finished: `acked` of the closest nodes confirmed it.
    Announced {
        /// The lookup.
        id: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// Nodes that confirmed.
        acked: usize,
    },
}

/// Counters, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DhtStats {
    /// Queries answered.
    pub answered: u64,
    /// Queries dropped by the rate limit.
    pub rate_limited: u64,
    /// Datagrams that were not valid KRPC.
    pub malformed: u64,
    /// Responses and errors that matched none of our transactions.
    pub unexpected: u64,
    /// announce_peer queries refused for a bad token.
    pub bad_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A ping the routing table asked for.
    Ping,
    /// A query of the lookup `(task, family)`.
    Lookup(LookupId, Family),
    /// An announce_peer of the task.
    Announce(LookupId),
}

#[derive(Debug, Clone)]
struct Transaction {
    to: SocketAddr,
    expect: Option<NodeId>,
    sent: Time,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    Bootstrap,
    Refresh,
    GetPeers,
    Announce { port: u16, implied_port: bool },
}

#[derive(Debug)]
struct Task {
    kind: TaskKind,
    target: NodeId,
    lookups: BTreeMap<Family, Lookup>,
    answered: usize,
    /// Announce phase: queries outstanding and confirmed.
    announcing: Option<(usize, usize)>,
}

/// One DHT node (see the module doc for the driving loop).
#[derive(Debug)]
pub struct Dht {
    config: DhtConfig,
    own_id: NodeId,
    rng: ChaCha8Rng,
    tables: BTreeMap<Family, RoutingTable>,
    stores: BTreeMap<Family, PeerStore>,
    tokens: TokenSecrets,
    limiter: RateLimiter,
    transactions: BTreeMap<TransactionId, Transaction>,
    tasks: BTreeMap<LookupId, Task>,
    /// Internal lookups (refreshes) count down from the top so they never meet the user's ids.
    next_internal: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DhtEvent>,
    stats: DhtStats,
    /// The latest `(replying node, our IP as it saw it)` of replies to our queries.
    ip_votes: VecDeque<(SocketAddr, core::net::IpAddr)>,
    /// Our external IP, once [`EXTERNAL_IP_VOTES`] replies agreed on it.
    external_ip: Option<core::net::IpAddr>,
    now: Time,
}

impl Dht {
    /// A node with empty tables at `now`. Send [`Input::Bootstrap`] to join the network.
    pub fn new(config: DhtConfig, now: Time) -> Dht {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let own_id = config.node_id.unwrap_or_else(|| NodeId::random(&mut rng));
        let mut tables = BTreeMap::new();
        let mut stores = BTreeMap::new();
        for (family, on) in [(Family::V4, config.ipv4), (Family::V6, config.ipv6)] {
            let table_seed = rng.random();
            let store_seed = rng.random();
            if on {
                tables.insert(family, RoutingTable::new(own_id, family, table_seed, now));
                stores.insert(family, PeerStore::new(config.store, store_seed));
            }
        }
        let tokens = TokenSecrets::new(now, &mut rng);
        let limiter = RateLimiter::new(config.rate);
        Dht {
            config,
            own_id,
            rng,
            tables,
            stores,
            tokens,
            limiter,
            transactions: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_internal: u64::MAX,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DhtStats::default(),
            ip_votes: VecDeque::new(),
            external_ip: None,
            now,
        }
    }

    /// Our external IP as the nodes we query report it (BEP 42), once enough agree.
    pub fn external_ip(&self) -> Option<core::net::IpAddr> {
        self.external_ip
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.own_id
    }

    /// The routing table of `family`, if that family is enabled.
    pub fn table(&self, family: Family) -> Option<&RoutingTable> {
        self.tables.get(&family)
    }

    /// The counters.
    pub fn stats(&self) -> DhtStats {
        self.stats
    }

    /// Queries in flight.
    pub fn transactions(&self) -> usize {
        self.transactions.len()
    }

    /// Lookups running (the user's and refreshes).
    pub fn lookups(&self) -> usize {
        self.tasks.len()
    }

    /// Nodes in the routing tables (both families).
    pub fn node_count(&self) -> usize {
        self.tables.values().map(RoutingTable::len).sum()
    }

    /// What to save for the next start: our id and the addresses of the table's nodes that are
    /// not bad, at most [`state::MAX_SAVED_NODES`].
    pub fn saved_state(&self) -> state::SavedState {
        let now = self.now;
        let nodes = self
            .tables
            .values()
            .flat_map(RoutingTable::entries)
            .filter(|e| e.liveness(now) != table::Liveness::Bad)
            .map(|e| e.info().addr)
            .take(state::MAX_SAVED_NODES)
            .collect();
        state::SavedState {
            node_id: self.own_id,
            nodes,
        }
    }

    /// The announce token a `get_peers` reply to `ip` carries now.
    #[cfg(test)]
    pub(crate) fn token_for(&self, ip: core::net::IpAddr) -> [u8; token::TOKEN_LEN] {
        self.tokens.token(ip)
    }

    /// Feeds one input; drain the outputs afterwards.
    pub fn handle_input(&mut self, now: Time, input: Input) {
        let now = self.advance(now);
        match input {
            Input::Datagram { from, data } => self.handle_datagram(now, from, &data),
            Input::Timeout => self.handle_timeout(now),
            Input::GetPeers { id, info_hash } => {
                self.start(id, TaskKind::GetPeers, info_hash.into())
            }
            Input::Announce {
                id,
                info_hash,
                port,
                implied_port,
            } => self.start(
                id,
                TaskKind::Announce { port, implied_port },
                info_hash.into(),
            ),
            Input::Bootstrap { id } => self.start(id, TaskKind::Bootstrap, self.own_id),
            Input::Ping { addr } => self.ping(now, addr),
            Input::AddBootstrap { addrs } => {
                for a in addrs {
                    if self.config.bootstrap.len() >= MAX_BOOTSTRAP {
                        break;
                    }
                    if !self.config.bootstrap.contains(&a) {
                        self.config.bootstrap.push(a);
                    }
                }
            }
        }
        self.pump(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// The next deadline: a query's timeout, a lookup's, a bucket refresh, a token rotation or
    /// a stored peer's expiry.
    pub fn poll_timeout(&self) -> Option<Time> {
        let query_timeout = self.config.query_timeout;
        let tx = self
            .transactions
            .values()
            .map(|t| t.sent + query_timeout)
            .min();
        let tables = self
            .tables
            .values()
            .filter_map(RoutingTable::poll_timeout)
            .min();
        let stores = self
            .stores
            .values()
            .filter_map(PeerStore::poll_timeout)
            .min();
        let lookups = self
            .tasks
            .values()
            .flat_map(|t| t.lookups.values())
            .filter_map(Lookup::poll_timeout)
            .min();
        [
            tx,
            tables,
            stores,
            lookups,
            Some(self.tokens.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Time) {
        let timeout = self.config.query_timeout;
        let expired: Vec<TransactionId> = self
            .transactions
            .iter()
            .filter(|(_, t)| t.sent + timeout <= now)
            .map(|(tid, _)| *tid)
            .collect();
        for tid in expired {
            if let Some(t) = self.transactions.remove(&tid) {
                self.failed(now, t, true);
            }
        }
        for table in self.tables.values_mut() {
            table.handle_timeout(now);
        }
        for store in self.stores.values_mut() {
            store.handle_timeout(now);
        }
        for task in self.tasks.values_mut() {
            for l in task.lookups.values_mut() {
                l.handle_timeout(now);
            }
        }
        self.tokens.handle_timeout(now, &mut self.rng);
    }

    fn handle_datagram(&mut self, now: Time, from: SocketAddr, data: &[u8]) {
        let family = Family::of(&from);
        if !self.tables.contains_key(&family) {
            return;
        }
        match Message::decode(data) {
            Ok(msg) => match msg.body {
                Body::Query(q) => {
                    if !self.limiter.allow(now, from.ip()) {
                        self.stats.rate_limited += 1;
                        return;
                    }
                    if !msg.read_only
                        && let Some(table) = self.tables.get_mut(&family)
                    {
                        table.handle_query(now, q.id, from);
                    }
                    self.answer(now, from, msg.tid, &q, data.len());
                }
                Body::Response(r) => {
                    let seen_as = msg.ip;
                    self.handle_response(now, from, msg.tid, &r, msg.read_only, seen_as);
                }
                Body::Error(_) => {
                    match self.transactions.get(&msg.tid) {
                        Some(t) if t.to == from => {
                            // The node is alive but refused: no failure for the table.
                            let t = self.transactions.remove(&msg.tid).expect("present");
                            self.failed(now, t, false);
                        }
                        _ => self.stats.unexpected += 1,
                    }
                }
            },
            Err(Malformed { error, query_tid }) => {
                self.stats.malformed += 1;
                let Some(tid) = query_tid else {
                    return;
                };
                if !self.limiter.allow(now, from.ip()) {
                    self.stats.rate_limited += 1;
                    return;
                }
                let code = if matches!(error, KrpcError::UnknownMethod(_)) {
                    ErrorReply::METHOD_UNKNOWN
                } else {
                    ErrorReply::PROTOCOL
                };
                self.send_error(from, tid, code, &error.to_string(), data.len());
            }
        }
    }

    fn handle_response(
        &mut self,
        now: Time,
        from: SocketAddr,
        tid: TransactionId,
        r: &Response,
        read_only: bool,
        seen_as: Option<SocketAddr>,
    ) {
        let Some(t) = self.transactions.get(&tid) else {
            self.stats.unexpected += 1;
            return;
        };
        if t.to != from {
            self.stats.unexpected += 1;
            return;
        }
        let t = self.transactions.remove(&tid).expect("present");
        if let Some(ip) = seen_as {
            self.vote_external_ip(now, from, ip.ip());
        }
        let id_ok = t.expect.is_none_or(|id| id == r.id);
        if id_ok
            && !read_only
            && let Some(table) = self.tables.get_mut(&Family::of(&from))
        {
            let _ = table.handle_response(now, r.id, from);
        }
        match t.purpose {
            Purpose::Ping => {}
            Purpose::Lookup(task, family) => {
                if let Some(l) = self
                    .tasks
                    .get_mut(&task)
                    .and_then(|t| t.lookups.get_mut(&family))
                {
                    l.handle_response(now, from, r);
                }
            }
            Purpose::Announce(task) => {
                if let Some((pending, acked)) = self
                    .tasks
                    .get_mut(&task)
                    .and_then(|t| t.announcing.as_mut())
                {
                    *pending = pending.saturating_sub(1);
                    *acked += 1;
                }
            }
        }
    }

    /// Counts one reply's view of our IP; when [`EXTERNAL_IP_VOTES`] distinct nodes among the
    /// latest agree on a public IP our id does not fit, takes an id for it (BEP 42) and re-files
    /// the routing table's nodes under it.
    fn vote_external_ip(&mut self, now: Time, from: SocketAddr, ip: core::net::IpAddr) {
        let ip = match ip {
            core::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, core::net::IpAddr::V4),
            v4 => v4,
        };
        if ip.is_unspecified() || ip.is_multicast() {
            return;
        }
        self.ip_votes.retain(|(voter, _)| *voter != from);
        if self.ip_votes.len() >= MAX_IP_VOTES {
            self.ip_votes.pop_front();
        }
        self.ip_votes.push_back((from, ip));
        let agreeing = self.ip_votes.iter().filter(|(_, v)| *v == ip).count();
        if agreeing < EXTERNAL_IP_VOTES || self.external_ip == Some(ip) {
            return;
        }
        self.external_ip = Some(ip);
        if secure_id::is_valid(&self.own_id, ip) {
            return;
        }
        self.own_id = secure_id::id_for(ip, &mut self.rng);
        let own_id = self.own_id;
        for (family, table) in self.tables.iter_mut() {
            let seed = self.rng.random();
            let old = std::mem::replace(table, RoutingTable::new(own_id, *family, seed, now));
            for e in old.entries() {
                let _ = table.handle_response(now, e.info().id, e.info().addr);
            }
        }
    }

    /// A query of ours failed: it timed out, or the node answered with an error.
    fn failed(&mut self, now: Time, t: Transaction, timed_out: bool) {
        if timed_out
            && let (Some(id), Some(table)) = (t.expect, self.tables.get_mut(&Family::of(&t.to)))
        {
            table.handle_failure(now, id, t.to);
        }
        match t.purpose {
            Purpose::Ping => {}
            Purpose::Lookup(task, family) => {
                if let Some(l) = self
                    .tasks
                    .get_mut(&task)
                    .and_then(|t| t.lookups.get_mut(&family))
                {
                    l.handle_failure(now, t.to);
                }
            }
            Purpose::Announce(task) => {
                if let Some((pending, _)) = self
                    .tasks
                    .get_mut(&task)
                    .and_then(|t| t.announcing.as_mut())
                {
                    *pending = pending.saturating_sub(1);
                }
            }
        }
    }

    /// Answers a query from `from` that was `query_len` bytes long.
    fn answer(
        &mut self,
        now: Time,
        from: SocketAddr,
        tid: TransactionId,
        q: &Query,
        query_len: usize,
    ) {
        let family = Family::of(&from);
        let mut r = Response {
            id: self.own_id,
            ..Response::default()
        };
        match &q.method {
            Method::Ping => {}
            Method::FindNode { target } => r.nodes = self.nodes_for(target, family, q.want),
            Method::GetPeers { info_hash } => {
                r.nodes = self.nodes_for(&NodeId::from(*info_hash), family, q.want);
                r.token = Some(self.tokens.token(from.ip()).to_vec());
                let max = self.config.max_values;
                if let Some(store) = self.stores.get_mut(&family) {
                    r.values = store.get(now, info_hash, max);
                }
            }
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.verify(now, from.ip(), token) {
                    self.stats.bad_tokens += 1;
                    self.send_error(from, tid, ErrorReply::PROTOCOL, "bad token", query_len);
                    return;
                }
                let port = if *implied_port { from.port() } else { *port };
                if let Some(store) = self.stores.get_mut(&family) {
                    let _ =
                        store.handle_announce(now, *info_hash, SocketAddr::new(from.ip(), port));
                }
            }
        }
        self.stats.answered += 1;
        let budget = query_len.saturating_mul(self.config.amplification);
        if let Some(data) = fit_reply(tid, r, from, budget) {
            self.transmits.push_back(Transmit { to: from, data });
        }
    }

    /// The nodes to name in a reply: of the families `want` asks for (the query's own family
    /// when it does not say), from the tables we have.
    fn nodes_for(&self, target: &NodeId, family: Family, want: Want) -> Vec<NodeInfo> {
        let (v4, v6) = if want.is_unspecified() {
            (family == Family::V4, family == Family::V6)
        } else {
            (want.n4, want.n6)
        };
        let mut nodes = Vec::new();
        for (f, on) in [(Family::V4, v4), (Family::V6, v6)] {
            if on && let Some(t) = self.tables.get(&f) {
                nodes.extend(t.closest(target, K));
            }
        }
        nodes
    }

    fn send_error(
        &mut self,
        to: SocketAddr,
        tid: TransactionId,
        code: i64,
        text: &str,
        query_len: usize,
    ) {
        let budget = query_len.saturating_mul(self.config.amplification);
        let mut message: String = text.chars().take(100).collect();
        loop {
            let data = Message {
                tid,
                body: Body::Error(ErrorReply {
                    code,
                    message: message.clone(),
                }),
                version: Some(VERSION.to_vec()),
                ip: None,
                read_only: false,
            }
            .encode();
            if data.len() <= budget {
                self.transmits.push_back(Transmit { to, data });
                return;
            }
            if message.is_empty() {
                return;
            }
            let keep = message.chars().count() / 2;
            message = message.chars().take(keep).collect();
        }
    }

    fn start(&mut self, id: LookupId, kind: TaskKind, target: NodeId) {
        if self.tasks.contains_key(&id) || self.tasks.len() >= self.config.max_lookups {
            // Refused: a duplicate handle or too many lookups. Reported as finished at once.
            self.finish_event(id, kind, target, 0, 0);
            return;
        }
        let mut lookups = BTreeMap::new();
        let lookup_kind = match kind {
            TaskKind::Bootstrap | TaskKind::Refresh => LookupKind::FindNode,
            TaskKind::GetPeers | TaskKind::Announce { .. } => LookupKind::GetPeers,
        };
        for (family, table) in &self.tables {
            let mut l = Lookup::new(
                self.own_id,
                target,
                lookup_kind,
                *family,
                self.config.lookup,
                table.closest(&target, self.config.lookup.k),
            );
            if kind == TaskKind::Bootstrap {
                for b in &self.config.bootstrap {
                    l.add_bootstrap(*b);
                }
            }
            lookups.insert(*family, l);
        }
        self.tasks.insert(
            id,
            Task {
                kind,
                target,
                lookups,
                answered: 0,
                announcing: None,
            },
        );
    }

    fn ping(&mut self, now: Time, addr: SocketAddr) {
        let family_on = self.tables.contains_key(&Family::of(&addr));
        let in_flight = self
            .transactions
            .values()
            .any(|t| t.to == addr && t.purpose == Purpose::Ping);
        if family_on && !in_flight && addr.port() != 0 {
            self.send_query(now, addr, None, Method::Ping, Purpose::Ping);
        }
    }

    /// After every input: the tables' requests, lookups' queries, finished lookups.
    fn pump(&mut self, now: Time) {
        let families: Vec<Family> = self.tables.keys().copied().collect();
        for family in families {
            while let Some(action) = self
                .tables
                .get_mut(&family)
                .and_then(RoutingTable::poll_action)
            {
                match action {
                    TableAction::Ping(n) => {
                        let q = Method::Ping;
                        self.send_query(now, n.addr, Some(n.id), q, Purpose::Ping);
                    }
                    TableAction::Refresh { target } => {
                        if self.tasks.len() < self.config.max_lookups {
                            let id = LookupId(self.next_internal);
                            self.next_internal -= 1;
                            self.start_refresh(id, family, target);
                        }
                    }
                }
            }
        }
        let ids: Vec<LookupId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.pump_task(now, id);
        }
    }

    fn start_refresh(&mut self, id: LookupId, family: Family, target: NodeId) {
        let Some(table) = self.tables.get(&family) else {
            return;
        };
        let l = Lookup::new(
            self.own_id,
            target,
            LookupKind::FindNode,
            family,
            self.config.lookup,
            table.closest(&target, self.config.lookup.k),
        );
        self.tasks.insert(
            id,
            Task {
                kind: TaskKind::Refresh,
                target,
                lookups: BTreeMap::from([(family, l)]),
                answered: 0,
                announcing: None,
            },
        );
    }

    fn pump_task(&mut self, now: Time, id: LookupId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let mut queries = Vec::new();
        let mut peers = Vec::new();
        let room = self
            .config
            .max_transactions
            .saturating_sub(self.transactions.len());
        for (family, l) in task.lookups.iter_mut() {
            while queries.len() < room
                && let Some(q) = l.poll_query(now)
            {
                queries.push((q, *family, l.method()));
            }
            while let Some(p) = l.poll_peer() {
                peers.push(p);
            }
        }
        let target = task.target;
        let kind = task.kind;
        if !peers.is_empty() {
            self.events.push_back(DhtEvent::Peers {
                id,
                info_hash: target.into(),
                peers,
            });
        }
        for (q, family, method) in queries {
            self.send_query(now, q.addr, q.id, method, Purpose::Lookup(id, family));
        }
        let task = self.tasks.get_mut(&id).expect("present");
        if let Some((pending, acked)) = task.announcing {
            if pending == 0 {
                self.tasks.remove(&id);
                self.events.push_back(DhtEvent::Announced {
                    id,
                    info_hash: target.into(),
                    acked,
                });
            }
            return;
        }
        if !task.lookups.values().all(Lookup::is_done) {
            return;
        }
        task.answered = task
            .lookups
            .values()
            .map(|l| l.closest_responded().len())
            .sum();
        let answered = task.answered;
        if let TaskKind::Announce { port, implied_port } = kind {
            let targets: Vec<(NodeInfo, Vec<u8>)> = task
                .lookups
                .values()
                .flat_map(Lookup::closest_responded)
                .filter_map(|(n, token)| token.map(|t| (n, t)))
                .collect();
            task.announcing = Some((0, 0));
            let mut sent = 0;
            for (n, token) in targets {
                let method = Method::AnnouncePeer {
                    info_hash: target.into(),
                    port,
                    implied_port,
                    token,
                };
                if self.send_query(now, n.addr, Some(n.id), method, Purpose::Announce(id)) {
                    sent += 1;
                }
            }
            if let Some(task) = self.tasks.get_mut(&id) {
                task.announcing = Some((sent, 0));
            }
            if sent == 0 {
                self.tasks.remove(&id);
                self.finish_event(id, kind, target, answered, 0);
            }
            return;
        }
        self.tasks.remove(&id);
        self.finish_event(id, kind, target, answered, 0);
    }

    fn finish_event(
        &mut self,
        id: LookupId,
        kind: TaskKind,
        target: NodeId,
        nodes: usize,
        acked: usize,
    ) {
        match kind {
            TaskKind::Refresh => {}
            TaskKind::Bootstrap | TaskKind::GetPeers => {
                self.events.push_back(DhtEvent::LookupDone { id, nodes })
            }
            TaskKind::Announce { .. } => self.events.push_back(DhtEvent::Announced {
                id,
                info_hash: target.into(),
                acked,
            }),
        }
    }

    /// Sends a query, unless too many are in flight. Returns whether it went out.
    fn send_query(
        &mut self,
        now: Time,
        to: SocketAddr,
        expect: Option<NodeId>,
        method: Method,
        purpose: Purpose,
    ) -> bool {
        if self.transactions.len() >= self.config.max_transactions {
            return false;
        }
        let tid = loop {
            let b: [u8; 4] = self.rng.random();
            let tid = TransactionId::new(&b).expect("4 bytes");
            if !self.transactions.contains_key(&tid) {
                break tid;
            }
        };
        let data = Message {
            tid,
            body: Body::Query(Query {
                id: self.own_id,
                method,
                want: Want::default(),
            }),
            version: Some(VERSION.to_vec()),
            ip: None,
            read_only: false,
        }
        .encode();
        self.transactions.insert(
            tid,
            Transaction {
                to,
                expect,
                sent: now,
                purpose,
            },
        );
        self.transmits.push_back(Transmit { to, data });
        true
    }

    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }
}

/// Encodes the reply, leaving out values, then nodes, until it is at most `budget` bytes; `None`
/// when even the bare reply is longer.
fn fit_reply(
    tid: TransactionId,
    mut r: Response,
    to: SocketAddr,
    budget: usize,
) -> Option<Vec<u8>> {
    loop {
        let data = Message {
            tid,
            body: Body::Response(r.clone()),
            version: Some(VERSION.to_vec()),
            ip: Some(to),
            read_only: false,
        }
        .encode();
        if data.len() <= budget {
            return Some(data);
        }
        let mut excess = data.len() - budget;
        if !r.values.is_empty() {
            // Drop values from the end until their encoding covers the excess: "6:" and 6
            // bytes for IPv4, "18:" and 18 for IPv6 (the list's own bytes go with the last).
            while excess > 0
                && let Some(v) = r.values.pop()
            {
                excess = excess.saturating_sub(if v.is_ipv4() { 8 } else { 21 });
            }
        } else if !r.nodes.is_empty() {
            while excess > 0
                && let Some(n) = r.nodes.pop()
            {
                excess = excess.saturating_sub(if n.addr.is_ipv4() { 26 } else { 38 });
            }
        } else {
            return None;
        }
    }
}
