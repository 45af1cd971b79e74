//! A DHT of many nodes in one process: the core's sans-IO [`Dht`] nodes on a simulated network
//! with latency, loss and churn, all from one seed, in virtual time.
//!
//! [`DhtSim::build`] lets `nodes` nodes join one batch after another, each bootstrapping from a
//! node that joined before it; [`DhtSim::announce`] has some nodes announce info-hashes;
//! [`DhtSim::churn`] takes nodes down (their datagrams are lost) and lets fresh ones join;
//! [`DhtSim::measure_lookups`] runs `get_peers` lookups from random nodes at once and reports
//! for each whether it found the announced peer, how many hops that took and how many messages
//! it cost.
//!
//! Hops: a node the looker knew (its table, its bootstrap contacts) is at depth 1; a node first
//! named in a reply of a node at depth `d` is at depth `d + 1`. A lookup's hops are the depth of
//! the first node whose reply carried the peer. Messages: the looker's `get_peers` queries for
//! the lookup's info-hash, and the replies to them that arrived.
//!
//! Deterministic: the same [`SimConfig`] gives the same run, datagram for datagram (maps are
//! ordered; every random choice comes from the seeded ChaCha8).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::dht::krpc::{Body, Message, Method};
use kp_torrent_core::dht::table::Family;
use kp_torrent_core::dht::{Dht, DhtConfig, DhtEvent, Input, LookupId};
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::time::Time;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// The shape of a simulated network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Nodes that join at the start.
    pub nodes: usize,
    /// Everything random derives from this.
    pub seed: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// One-way latency, drawn uniformly from this range per datagram.
    pub latency: (Duration, Duration),
    /// Nodes joining at once while the network is built.
    pub join_batch: usize,
}

impl SimConfig {
    /// `nodes` nodes, 1% loss, 10–150 ms latency, joining in batches of a twentieth of the
    /// network (at least 10).
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            loss: 0.01,
            latency: (Duration::from_millis(10), Duration::from_millis(150)),
            join_batch: (nodes / 20).max(10),
        }
    }
}

/// What one measured lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupReport {
    /// The announced peer was among the peers found.
    pub found: bool,
    /// Depth of the first reply carrying the peer (see the module doc); `None` if none did.
    pub hops: Option<u32>,
    /// `get_peers` queries the looker sent for this lookup.
    pub queries: u64,
    /// Replies to them that reached the looker.
    pub replies: u64,
    /// Virtual time from start to `LookupDone`.
    pub duration: Duration,
}

/// Counters over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetStats {
    /// Datagrams sent by all nodes.
    pub sent: u64,
    /// Of those, lost on the way (loss, or a node that is down).
    pub lost: u64,
}

/// One looker being measured.
#[derive(Debug)]
struct Watch {
    id: LookupId,
    info_hash: InfoHash,
    peer: SocketAddr,
    depth: BTreeMap<SocketAddr, u32>,
    /// The queries of the lookup, by address and transaction id: only their replies count.
    asked: BTreeSet<(SocketAddr, Vec<u8>)>,
    hops: Option<u32>,
    queries: u64,
    replies: u64,
    found: bool,
    done_at: Option<Time>,
}

/// The simulated network (see the module doc).
pub struct DhtSim {
    config: SimConfig,
    nodes: Vec<Dht>,
    addrs: Vec<SocketAddr>,
    by_addr: BTreeMap<SocketAddr, usize>,
    up: Vec<bool>,
    /// In flight: (arrival, sequence) → (from node, to, bytes).
    wire: BTreeMap<(Time, u64), (usize, SocketAddr, Vec<u8>)>,
    seq: u64,
    timers: BinaryHeap<Reverse<(Time, usize)>>,
    next_timer: Vec<Option<Time>>,
    now: Time,
    rng: ChaCha8Rng,
    events: Vec<(usize, DhtEvent)>,
    next_lookup: u64,
    stats: NetStats,
    /// The lookers being measured, by node.
    watches: BTreeMap<usize, Watch>,
    /// Announced info-hashes and the peer address each announcer gave.
    announced: Vec<(InfoHash, SocketAddr)>,
}

/// Bootstraps a joining node tries at most while nobody answers.
const JOIN_TRIES: u32 = 3;

/// Bound on virtual time for one step (a batch of joins, the announces, one lookup).
const STEP: Duration = Duration::from_secs(120);

impl DhtSim {
    /// Builds the network: node 0 first, then the others in batches of
    /// [`SimConfig::join_batch`], each bootstrapping from a random node of an earlier batch.
    ///
    /// # Panics
    /// When a batch does not finish its bootstraps within 120 s of virtual time.
    pub fn build(config: SimConfig) -> DhtSim {
        DhtSim::build_with_progress(config, |_, _| {})
    }

    /// As [`DhtSim::build`], calling `progress(nodes joined, virtual time)` after each batch.
    pub fn build_with_progress(config: SimConfig, mut progress: impl FnMut(usize, Time)) -> DhtSim {
        let mut sim = DhtSim {
            config,
            nodes: Vec::with_capacity(config.nodes),
            addrs: Vec::with_capacity(config.nodes),
            by_addr: BTreeMap::new(),
            up: Vec::with_capacity(config.nodes),
            wire: BTreeMap::new(),
            seq: 0,
            timers: BinaryHeap::new(),
            next_timer: Vec::with_capacity(config.nodes),
            now: Time::ZERO,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            events: Vec::new(),
            next_lookup: 1,
            stats: NetStats::default(),
            watches: BTreeMap::new(),
            announced: Vec::new(),
        };
        sim.add_node(None);
        let mut joined = 1;
        while joined < config.nodes {
            let batch = config.join_batch.min(config.nodes - joined);
            sim.join(batch, joined);
            joined += batch;
            progress(joined, sim.now);
        }
        sim
    }

    /// Nodes in the network, up or down.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when there is no node (never after [`DhtSim::build`]).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes up.
    pub fn live(&self) -> usize {
        self.up.iter().filter(|u| **u).count()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Dht {
        &self.nodes[i]
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Virtual time now.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The info-hashes announced so far, with the peer address announced for each.
    pub fn announced(&self) -> &[(InfoHash, SocketAddr)] {
        &self.announced
    }

    /// `count` random live nodes each announce a fresh random info-hash (peer port 7000 + its
    /// index), all at once; returns how many of the closest nodes confirmed each announce.
    ///
    /// # Panics
    /// When the announces do not finish within 120 s of virtual time.
    pub fn announce(&mut self, count: usize) -> Vec<usize> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let node = self.random_live();
            let info_hash = InfoHash(self.rng.random());
            let port = 7000 + (node % 50_000) as u16;
            let id = self.lookup_id();
            ids.push((node, id));
            self.announced
                .push((info_hash, SocketAddr::new(self.addrs[node].ip(), port)));
            self.input(
                node,
                Input::Announce {
                    id,
                    info_hash,
                    port,
                    implied_port: false,
                },
            );
        }
        let deadline = self.now + STEP;
        let done = self.run_until(deadline, |s| {
            ids.iter().all(|&(n, id)| s.announced_acks(n, id).is_some())
        });
        assert!(done, "announces did not finish in {STEP:?}");
        let acks = ids
            .iter()
            .map(|&(n, id)| self.announced_acks(n, id).unwrap_or(0))
            .collect();
        self.events.clear();
        acks
    }

    /// Takes `leave` random live nodes down for good (nothing reaches them; what they sent is
    /// still delivered) and lets `join` fresh nodes join (bootstrapping from random live nodes).
    ///
    /// # Panics
    /// When the joins do not finish within 120 s of virtual time.
    pub fn churn(&mut self, leave: usize, join: usize) {
        for _ in 0..leave {
            let i = self.random_live();
            self.up[i] = false;
        }
        if join > 0 {
            let from = self.nodes.len();
            self.join(join, from);
        }
    }

    /// Runs `count` `get_peers` lookups at once, each from another random live node, lookup `i`
    /// for announced info-hash number `i` (modulo their number), and reports on each.
    ///
    /// # Panics
    /// When nothing was announced, there are fewer live nodes than `count`, or the lookups do
    /// not finish within 120 s of virtual time.
    pub fn measure_lookups(&mut self, count: usize) -> Vec<LookupReport> {
        assert!(!self.announced.is_empty(), "nothing announced");
        assert!(self.live() >= count, "fewer live nodes than lookups");
        let start = self.now;
        let mut order = Vec::with_capacity(count);
        for which in 0..count {
            let (info_hash, peer) = self.announced[which % self.announced.len()];
            let node = loop {
                let n = self.random_live();
                if !self.watches.contains_key(&n) {
                    break n;
                }
            };
            let mut depth = BTreeMap::new();
            if let Some(t) = self.nodes[node].table(Family::V4) {
                for e in t.entries() {
                    depth.insert(e.info().addr, 1);
                }
            }
            let id = self.lookup_id();
            self.watches.insert(
                node,
                Watch {
                    id,
                    info_hash,
                    peer,
                    depth,
                    asked: BTreeSet::new(),
                    hops: None,
                    queries: 0,
                    replies: 0,
                    found: false,
                    done_at: None,
                },
            );
            order.push(node);
            self.input(node, Input::GetPeers { id, info_hash });
        }
        let deadline = self.now + STEP;
        let done = self.run_until(deadline, |s| {
            let now = s.now;
            for (i, e) in s.events.drain(..) {
                let Some(w) = s.watches.get_mut(&i) else {
                    continue;
                };
                match e {
                    DhtEvent::Peers { id, peers, .. } if id == w.id => {
                        w.found |= peers.contains(&w.peer);
                    }
                    DhtEvent::LookupDone { id, .. } if id == w.id => w.done_at = Some(now),
                    _ => {}
                }
            }
            s.watches.values().all(|w| w.done_at.is_some())
        });
        assert!(done, "lookups did not finish in {STEP:?}");
        let reports = order
            .iter()
            .map(|n| {
                let w = self.watches.remove(n).expect("watched");
                LookupReport {
                    found: w.found,
                    hops: w.hops,
                    queries: w.queries,
                    replies: w.replies,
                    duration: w.done_at.unwrap_or(start).saturating_since(start),
                }
            })
            .collect();
        self.events.clear();
        reports
    }

    /// Lets virtual time pass (timers fire, refreshes run) for `d`.
    pub fn idle(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until, |_| false);
        self.now = self.now.max(until);
        self.events.clear();
    }

    fn lookup_id(&mut self) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        id
    }

    fn announced_acks(&self, node: usize, id: LookupId) -> Option<usize> {
        self.events.iter().find_map(|(i, e)| match e {
            DhtEvent::Announced { id: x, acked, .. } if *i == node && *x == id => Some(*acked),
            _ => None,
        })
    }

    /// A random live node among the first `n`.
    fn random_live_below(&mut self, n: usize) -> usize {
        loop {
            let i = self.rng.random_range(0..n);
            if self.up[i] {
                return i;
            }
        }
    }

    fn random_live(&mut self) -> usize {
        self.random_live_below(self.nodes.len())
    }

    /// Adds a node (10.x.y.z:6881, from its index) bootstrapping from `bootstrap`; returns it.
    fn add_node(&mut self, bootstrap: Option<SocketAddr>) -> usize {
        let i = self.nodes.len();
        let n = i as u32 + 1;
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)),
            6881,
        );
        let dht = Dht::new(
            DhtConfig {
                seed: self.config.seed ^ (u64::from(n) << 20),
                bootstrap: bootstrap.into_iter().collect(),
                ..DhtConfig::default()
            },
            self.now,
        );
        self.nodes.push(dht);
        self.addrs.push(addr);
        self.by_addr.insert(addr, i);
        self.up.push(true);
        self.next_timer.push(None);
        i
    }

    /// Adds `count` nodes, each bootstrapping from a random live node among the first
    /// `known`, and runs until all of them finished their bootstrap.
    fn join(&mut self, count: usize, known: usize) {
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let j = self.random_live_below(known);
            let contact = self.addrs[j];
            let i = self.add_node(Some(contact));
            let id = self.lookup_id();
            ids.push((i, id));
            self.input(i, Input::Bootstrap { id });
        }
        let deadline = self.now + STEP;
        let mut pending: BTreeSet<(usize, LookupId)> = ids.into_iter().collect();
        let mut tries = vec![1u32; self.nodes.len()];
        let done = self.run_until(deadline, |s| {
            let events: Vec<(usize, DhtEvent)> = s.events.drain(..).collect();
            for (i, e) in events {
                if let DhtEvent::LookupDone { id, nodes } = e
                    && pending.remove(&(i, id))
                    && nodes == 0
                    && tries[i] < JOIN_TRIES
                {
                    // Nobody answered (the contact's reply was lost): as the engine does, try
                    // again, through another contact.
                    tries[i] += 1;
                    let j = s.random_live_below(known);
                    let contact = s.addrs[j];
                    let id = s.lookup_id();
                    pending.insert((i, id));
                    s.input(
                        i,
                        Input::AddBootstrap {
                            addrs: vec![contact],
                        },
                    );
                    s.input(i, Input::Bootstrap { id });
                }
            }
            pending.is_empty()
        });
        assert!(done, "{} joins did not finish in {STEP:?}", pending.len());
    }

    /// Feeds `input` to node `i` and carries its output.
    fn input(&mut self, i: usize, input: Input) {
        self.nodes[i].handle_input(self.now, input);
        self.collect(i);
    }

    fn collect(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.stats.sent += 1;
            if let Some(w) = self.watches.get_mut(&i) {
                w.outgoing(&t.to, &t.data);
            }
            if self.rng.random_bool(self.config.loss) {
                self.stats.lost += 1;
                continue;
            }
            let (lo, hi) = self.config.latency;
            let lat = lo + (hi.saturating_sub(lo)).mul_f64(self.rng.random::<f64>());
            self.seq += 1;
            self.wire
                .insert((self.now + lat, self.seq), (i, t.to, t.data));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
        let t = self.nodes[i].poll_timeout();
        if t != self.next_timer[i] {
            self.next_timer[i] = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, i)));
            }
        }
    }

    /// Delivers datagrams and fires timers in time order until `done` holds (true) or the next
    /// thing to happen is after `until` (false).
    fn run_until(&mut self, until: Time, mut done: impl FnMut(&mut DhtSim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            // Drop timers that were replaced by a later poll_timeout.
            while let Some(&Reverse((t, i))) = self.timers.peek() {
                if self.next_timer[i] == Some(t) && self.up[i] {
                    break;
                }
                self.timers.pop();
            }
            let next_msg = self.wire.keys().next().map(|k| k.0);
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let Some(next) = [next_msg, next_timer].into_iter().flatten().min() else {
                return false;
            };
            if next > until {
                return false;
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let (_, (from, to, data)) = self.wire.pop_first().expect("a datagram");
                self.deliver(from, to, data);
            } else {
                let Reverse((_, i)) = self.timers.pop().expect("a timer");
                self.next_timer[i] = None;
                self.input(i, Input::Timeout);
                // A node still due after its timeout would have its driver spin.
                if let Some(t) = self.nodes[i].poll_timeout().filter(|t| *t <= self.now) {
                    panic!(
                        "node {i} still asks to be woken at {t} after its timeout at {}: {:?}",
                        self.now,
                        self.nodes[i].stats()
                    );
                }
            }
        }
    }

    fn deliver(&mut self, from: usize, to: SocketAddr, data: Vec<u8>) {
        let Some(&j) = self.by_addr.get(&to) else {
            self.stats.lost += 1;
            return;
        };
        if !self.up[j] {
            self.stats.lost += 1;
            return;
        }
        let from = self.addrs[from];
        if let Some(w) = self.watches.get_mut(&j) {
            w.incoming(&from, &data);
        }
        self.input(j, Input::Datagram { from, data });
    }
}

impl Watch {
    fn outgoing(&mut self, to: &SocketAddr, data: &[u8]) {
        let Ok(m) = Message::decode(data) else {
            return;
        };
        if let Body::Query(q) = &m.body
            && matches!(q.method, Method::GetPeers { info_hash } if info_hash == self.info_hash)
        {
            self.queries += 1;
            self.asked.insert((*to, m.tid.as_bytes().to_vec()));
            self.depth.entry(*to).or_insert(1);
        }
    }

    fn incoming(&mut self, from: &SocketAddr, data: &[u8]) {
        let Ok(m) = Message::decode(data) else {
            return;
        };
        let Body::Response(r) = &m.body else {
            return;
        };
        if !self.asked.remove(&(*from, m.tid.as_bytes().to_vec())) {
            return;
        }
        self.replies += 1;
        let d = self.depth.get(from).copied().unwrap_or(1);
        for n in &r.nodes {
            self.depth.entry(n.addr).or_insert(d + 1);
        }
        if self.hops.is_none() && r.values.contains(&self.peer) {
            self.hops = Some(d);
        }
    }
}
