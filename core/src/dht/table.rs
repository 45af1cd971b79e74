//! The routing table (BEP 5): k-buckets of at most [`K`] nodes that split only around our own
//! id, node liveness, a replacement cache per bucket and bucket refresh.
//!
//! # Shape
//!
//! Buckets are kept as a list: bucket `i` below the last holds the nodes whose id shares exactly
//! `i` leading bits with ours; the last bucket holds every node sharing at least as many bits,
//! our own id's range. Only that last bucket splits, when it is full and a verified node wants
//! in, so the table is detailed near our id and coarse far from it, as Kademlia wants.
//!
//! # Liveness
//!
//! Only nodes that answered one of our queries enter a bucket ([`RoutingTable::handle_response`]).
//! A node that merely queried us or that another node told us about
//! ([`RoutingTable::handle_query`], [`RoutingTable::handle_heard_of`]) is asked to be pinged
//! first, and only when the table has room for it. A node is [`Liveness::Good`] while it
//! answered or queried us within [`QUESTIONABLE_AFTER`] and its last query did not fail,
//! [`Liveness::Questionable`] otherwise, and [`Liveness::Bad`] after [`BAD_AFTER_FAILURES`]
//! failed queries in a row ([`RoutingTable::handle_failure`]).
//!
//! When a verified newcomer finds its bucket full: a bad node is replaced at once; otherwise the
//! newcomer waits in the bucket's replacement cache, and every questionable node of the bucket
//! is to be pinged ([`TableAction::Ping`]). A questionable node that answers stays; one that
//! fails twice is replaced by the most recently seen node of the cache. A bucket full of good
//! nodes keeps them: long-lived nodes are the most likely to stay.
//!
//! # Driving it
//!
//! The table sends nothing. After each `handle_*` call, drain [`RoutingTable::poll_action`]:
//! pings to send and refresh lookups to run (a bucket unchanged for [`REFRESH_INTERVAL`] asks
//! for a `find_node` of a random id in its range). Call [`RoutingTable::handle_timeout`] at
//! [`RoutingTable::poll_timeout`] (early or extra calls do nothing). An IPv4 and an IPv6 table
//! are separate objects: each refuses addresses of the other family.
//!
//! # Memory
//!
//! At most [`MAX_BUCKETS`] buckets of [`K`] nodes and [`REPLACEMENTS`] cached nodes each
//! (2,560 entries in all, a few hundred KiB; a real table has about 20 buckets), an address
//! index of at most as many entries as there are nodes, at most [`MAX_PENDING_PINGS`] pings of
//! unknown nodes outstanding and at most [`MAX_ACTIONS`] queued actions (more are dropped, which
//! only happens when the caller does not drain them).

use core::net::SocketAddr;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use super::krpc::NodeInfo;
use super::node_id::{ID_BITS, NodeId};
use crate::time::Time;

/// Nodes per bucket (BEP 5's k).
pub const K: usize = 8;

/// Nodes kept in each bucket's replacement cache.
pub const REPLACEMENTS: usize = K;

/// Most buckets: one per bit of the id.
pub const MAX_BUCKETS: usize = ID_BITS;

/// A node not heard from for this long is questionable (BEP 5: 15 minutes).
pub const QUESTIONABLE_AFTER: Duration = Duration::from_secs(15 * 60);

/// A bucket unchanged for this long is refreshed (BEP 5: 15 minutes).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Failed queries in a row that make a node bad.
pub const BAD_AFTER_FAILURES: u8 = 2;

/// Pings of nodes not in the table that may be outstanding at once.
pub const MAX_PENDING_PINGS: usize = 64;

/// Actions queued at most; the caller drains them after every input.
pub const MAX_ACTIONS: usize = 256;

/// A ping requested this long ago without a response or failure reported may be requested again.
pub const PING_RETRY: Duration = Duration::from_secs(60);

/// The address family a table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (BEP 5: `nodes`).
    V4,
    /// IPv6 (BEP 32: `nodes6`).
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// How much a node can be trusted to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    /// Heard from within [`QUESTIONABLE_AFTER`], and its last query did not fail.
    Good,
    /// Silent for longer, or its last query failed.
    Questionable,
    /// [`BAD_AFTER_FAILURES`] failed queries in a row.
    Bad,
}

/// One node of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    info: NodeInfo,
    last_seen: Time,
    failures: u8,
    ping_requested: Option<Time>,
}

impl Entry {
    fn new(id: NodeId, addr: SocketAddr, now: Time) -> Entry {
        Entry {
            info: NodeInfo { id, addr },
            last_seen: now,
            failures: 0,
            ping_requested: None,
        }
    }

    /// The node's id and address.
    pub fn info(&self) -> NodeInfo {
        self.info
    }

    /// When it last answered us (or, being verified, queried us).
    pub fn last_seen(&self) -> Time {
        self.last_seen
    }

    /// Failed queries in a row.
    pub fn failures(&self) -> u8 {
        self.failures
    }

    /// Its liveness at `now`.
    pub fn liveness(&self, now: Time) -> Liveness {
        if self.failures >= BAD_AFTER_FAILURES {
            Liveness::Bad
        } else if self.failures == 0 && now.saturating_since(self.last_seen) < QUESTIONABLE_AFTER {
            Liveness::Good
        } else {
            Liveness::Questionable
        }
    }

    fn may_ping(&self, now: Time) -> bool {
        self.ping_requested
            .is_none_or(|t| now.saturating_since(t) >= PING_RETRY)
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    nodes: Vec<Entry>,
    cache: Vec<Entry>,
    last_changed: Time,
}

impl Bucket {
    fn new(now: Time) -> Bucket {
        Bucket {
            nodes: Vec::with_capacity(K),
            cache: Vec::new(),
            last_changed: now,
        }
    }

    fn position(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|e| e.info.id == *id)
    }
}

/// What the table asks its owner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum TableAction {
    /// Ping this node and report the outcome with [`RoutingTable::handle_response`] or
    /// [`RoutingTable::handle_failure`].
    Ping(NodeInfo),
    /// A bucket went unchanged for [`REFRESH_INTERVAL`]: run a `find_node` lookup of `target`, a
    /// random id in its range.
    Refresh {
        /// The id to look up.
        target: NodeId,
    },
}

/// What [`RoutingTable::handle_response`] did with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// The node is new in its bucket.
    Added,
    /// The node was there already; it is now good.
    Updated,
    /// Its bucket is full: the node waits in the replacement cache.
    Cached,
    /// Not acceptable: our own id, the other family, an unusable address, or an address that a
    /// live node with another id holds.
    Rejected,
}

/// The routing table of one address family (see the module doc).
#[derive(Debug)]
pub struct RoutingTable {
    own_id: NodeId,
    family: Family,
    buckets: Vec<Bucket>,
    /// Address → id of every node in a bucket (not of cached ones).
    by_addr: BTreeMap<SocketAddr, NodeId>,
    /// Pings requested for nodes not in a bucket, by address, with when.
    pending: BTreeMap<SocketAddr, Time>,
    actions: VecDeque<TableAction>,
    rng: ChaCha8Rng,
    now: Time,
}

impl RoutingTable {
    /// An empty table for `family` around `own_id`; `seed` feeds the refresh targets.
    pub fn new(own_id: NodeId, family: Family, seed: u64, now: Time) -> RoutingTable {
        RoutingTable {
            own_id,
            family,
            buckets: vec![Bucket::new(now)],
            by_addr: BTreeMap::new(),
            pending: BTreeMap::new(),
            actions: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own_id
    }

    /// The family this table serves.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Nodes in buckets (cached ones not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// True when no bucket holds a node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes waiting in replacement caches.
    pub fn cached_len(&self) -> usize {
        self.buckets.iter().map(|b| b.cache.len()).sum()
    }

    /// How many buckets there are.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The nodes of bucket `index` (empty past the last bucket).
    pub fn bucket(&self, index: usize) -> &[Entry] {
        self.buckets.get(index).map_or(&[], |b| &b.nodes)
    }

    /// The replacement cache of bucket `index`.
    pub fn bucket_cache(&self, index: usize) -> &[Entry] {
        self.buckets.get(index).map_or(&[], |b| &b.cache)
    }

    /// The node with this id, if it is in a bucket.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let b = &self.buckets[self.bucket_index(id)];
        b.position(id).map(|i| &b.nodes[i])
    }

    /// Every node in a bucket, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// The index of the bucket whose range holds `id`.
    pub fn bucket_index(&self, id: &NodeId) -> usize {
        self.own_id
            .common_prefix_len(id)
            .min(self.buckets.len() - 1)
    }

    /// Up to `n` nodes that are not bad, closest to `target` first.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<NodeInfo> {
        let mut all: Vec<NodeInfo> = self
            .entries()
            .filter(|e| e.failures < BAD_AFTER_FAILURES)
            .map(Entry::info)
            .collect();
        all.sort_by_key(|info| info.id.distance(target));
        all.truncate(n);
        all
    }

    /// The next refresh deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.buckets
            .iter()
            .map(|b| b.last_changed + REFRESH_INTERVAL)
            .min()
    }

    /// The next action to carry out, drained after every input.
    pub fn poll_action(&mut self) -> Option<TableAction> {
        self.actions.pop_front()
    }

    /// Call at [`RoutingTable::poll_timeout`]: buckets unchanged for [`REFRESH_INTERVAL`] ask
    /// for a refresh lookup, and count as changed now.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.advance(now);
        let last = self.buckets.len() - 1;
        for i in 0..self.buckets.len() {
            if self.buckets[i].last_changed + REFRESH_INTERVAL > now {
                continue;
            }
            self.buckets[i].last_changed = now;
            let target = if i < last {
                self.own_id
                    .flip_bit(i)
                    .random_in_range(i + 1, &mut self.rng)
            } else {
                self.own_id.random_in_range(i, &mut self.rng)
            };
            self.push(TableAction::Refresh { target });
        }
    }

    /// Call when the node `id` at `addr` answered one of our queries: it is verified, and
    /// enters its bucket when there is room (see the module doc).
    pub fn handle_response(&mut self, now: Time, id: NodeId, addr: SocketAddr) -> Insert {
        let now = self.advance(now);
        self.pending.remove(&addr);
        if !self.acceptable(&id, &addr) {
            return Insert::Rejected;
        }
        // A cached entry with this id or address is stale now: the node answered from here.
        for bucket in &mut self.buckets {
            bucket
                .cache
                .retain(|e| e.info.id != id && e.info.addr != addr);
        }
        if let Some(&holder) = self.by_addr.get(&addr)
            && holder != id
        {
            // One address, one id: a new id at a live node's address is refused; a bad
            // node's address may be taken over.
            if self
                .get(&holder)
                .is_some_and(|e| e.failures < BAD_AFTER_FAILURES)
            {
                return Insert::Rejected;
            }
            self.remove(&holder);
        }
        let mut b = self.bucket_index(&id);
        if let Some(i) = self.buckets[b].position(&id) {
            let bucket = &mut self.buckets[b];
            let e = &mut bucket.nodes[i];
            if e.info.addr != addr {
                if e.failures < BAD_AFTER_FAILURES {
                    return Insert::Rejected;
                }
                self.by_addr.remove(&e.info.addr);
                self.by_addr.insert(addr, id);
                e.info.addr = addr;
            }
            e.last_seen = now;
            e.failures = 0;
            e.ping_requested = None;
            bucket.last_changed = now;
            return Insert::Updated;
        }
        loop {
            let last = self.buckets.len() - 1;
            let bucket = &mut self.buckets[b];
            if bucket.nodes.len() < K {
                bucket.nodes.push(Entry::new(id, addr, now));
                bucket.last_changed = now;
                self.by_addr.insert(addr, id);
                return Insert::Added;
            }
            if b == last && self.buckets.len() < MAX_BUCKETS {
                self.split();
                b = self.bucket_index(&id);
                continue;
            }
            break;
        }
        let bucket = &mut self.buckets[b];
        let worst = bucket
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, e)| e.failures >= BAD_AFTER_FAILURES)
            .max_by_key(|(_, e)| (e.failures, std::cmp::Reverse(e.last_seen)))
            .map(|(i, _)| i);
        if let Some(i) = worst {
            let old = std::mem::replace(&mut bucket.nodes[i], Entry::new(id, addr, now));
            bucket.last_changed = now;
            self.by_addr.remove(&old.info.addr);
            self.by_addr.insert(addr, id);
            return Insert::Added;
        }
        if bucket.cache.len() >= REPLACEMENTS
            && let Some(oldest) = bucket
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(i, _)| i)
        {
            bucket.cache.remove(oldest);
        }
        bucket.cache.push(Entry::new(id, addr, now));
        let mut pings = Vec::new();
        for e in &mut bucket.nodes {
            if e.liveness(now) == Liveness::Questionable && e.may_ping(now) {
                e.ping_requested = Some(now);
                pings.push(e.info);
            }
        }
        for info in pings {
            self.push(TableAction::Ping(info));
        }
        Insert::Cached
    }

    /// Call when a node queried us. A known node at the same address counts as seen (it
    /// answered us before, so it is good again unless its last query to it failed); an unknown
    /// one is handled as [`RoutingTable::handle_heard_of`].
    pub fn handle_query(&mut self, now: Time, id: NodeId, addr: SocketAddr) {
        let now = self.advance(now);
        let b = self.bucket_index(&id);
        if let Some(i) = self.buckets[b].position(&id) {
            let e = &mut self.buckets[b].nodes[i];
            if e.info.addr == addr {
                e.last_seen = now;
            }
            return;
        }
        self.handle_heard_of(now, id, addr);
    }

    /// Call when we learn of a node we have not verified (from a `nodes` list, a bootstrap
    /// list, or its query). When its bucket could take it, the table asks for a ping; the
    /// answer goes to [`RoutingTable::handle_response`].
    pub fn handle_heard_of(&mut self, now: Time, id: NodeId, addr: SocketAddr) {
        let now = self.advance(now);
        if !self.acceptable(&id, &addr) || self.by_addr.contains_key(&addr) {
            return;
        }
        let b = self.bucket_index(&id);
        let bucket = &self.buckets[b];
        if bucket.position(&id).is_some() {
            return;
        }
        let splittable = b == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS;
        let useful = bucket.nodes.len() < K
            || splittable
            || bucket
                .nodes
                .iter()
                .any(|e| e.liveness(now) != Liveness::Good);
        if !useful {
            return;
        }
        if let Some(&t) = self.pending.get(&addr)
            && now.saturating_since(t) < PING_RETRY
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING_PINGS {
            self.pending
                .retain(|_, t| now.saturating_since(*t) < PING_RETRY);
            if self.pending.len() >= MAX_PENDING_PINGS {
                return;
            }
        }
        self.pending.insert(addr, now);
        self.push(TableAction::Ping(NodeInfo { id, addr }));
    }

    /// Call when a query to the node at `addr` timed out or was refused. A node in a bucket
    /// counts one more failure; a bad one is replaced by the freshest cached node, and a
    /// questionable one with a replacement waiting is pinged again.
    pub fn handle_failure(&mut self, now: Time, id: NodeId, addr: SocketAddr) {
        let now = self.advance(now);
        self.pending.remove(&addr);
        let b = self.bucket_index(&id);
        let Some(i) = self.buckets[b].position(&id) else {
            return;
        };
        let bucket = &mut self.buckets[b];
        if bucket.nodes[i].info.addr != addr {
            return;
        }
        let e = &mut bucket.nodes[i];
        e.failures = e.failures.saturating_add(1);
        e.ping_requested = None;
        if bucket.cache.is_empty() {
            return;
        }
        if e.failures >= BAD_AFTER_FAILURES {
            let freshest = bucket
                .cache
                .iter()
                .enumerate()
                .max_by_key(|(_, c)| c.last_seen)
                .map(|(j, _)| j)
                .unwrap_or(0);
            let new = bucket.cache.remove(freshest);
            let old = std::mem::replace(&mut bucket.nodes[i], new);
            bucket.last_changed = now;
            let new = bucket.nodes[i].info;
            self.by_addr.remove(&old.info.addr);
            self.by_addr.insert(new.addr, new.id);
        } else {
            e.ping_requested = Some(now);
            let info = e.info;
            self.push(TableAction::Ping(info));
        }
    }

    /// Removes the node `id` from its bucket (and from the caches), e.g. when it turned out to be
    /// read-only or hostile; the freshest cached node of its bucket takes its place.
    pub fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let b = self.bucket_index(id);
        let bucket = &mut self.buckets[b];
        bucket.cache.retain(|e| e.info.id != *id);
        let i = bucket.position(id)?;
        let old = bucket.nodes.swap_remove(i);
        self.by_addr.remove(&old.info.addr);
        if let Some(j) = bucket
            .cache
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| c.last_seen)
            .map(|(j, _)| j)
        {
            let new = bucket.cache.remove(j);
            self.by_addr.insert(new.info.addr, new.info.id);
            bucket.nodes.push(new);
        }
        Some(old)
    }

    fn acceptable(&self, id: &NodeId, addr: &SocketAddr) -> bool {
        *id != self.own_id
            && Family::of(addr) == self.family
            && addr.port() != 0
            && !addr.ip().is_unspecified()
            && !addr.ip().is_multicast()
    }

    /// Splits the last bucket: the nodes (and cached nodes) sharing one more bit with our id
    /// move to a new last bucket.
    fn split(&mut self) {
        let depth = self.buckets.len() - 1;
        let own = self.own_id;
        let old = self.buckets.last_mut().expect("at least one bucket");
        let deeper = |e: &Entry| own.common_prefix_len(&e.info.id) > depth;
        let mut new = Bucket::new(old.last_changed);
        let (moved, kept): (Vec<Entry>, Vec<Entry>) = old.nodes.drain(..).partition(deeper);
        old.nodes = kept;
        new.nodes = moved;
        let (moved, kept): (Vec<Entry>, Vec<Entry>) = old.cache.drain(..).partition(deeper);
        old.cache = kept;
        new.cache = moved;
        self.buckets.push(new);
    }

    fn push(&mut self, action: TableAction) {
        if self.actions.len() < MAX_ACTIONS {
            self.actions.push_back(action);
        }
    }

    /// Time never goes backwards: an earlier `now` counts as the latest seen.
    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    /// Panics unless the table's structure holds: bucket sizes, every node in its bucket's
    /// range, no id or address twice, the address index matching the buckets.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        use std::collections::BTreeSet;
        let last = self.buckets.len() - 1;
        assert!(self.buckets.len() <= MAX_BUCKETS);
        assert!(self.actions.len() <= MAX_ACTIONS);
        assert!(self.pending.len() <= MAX_PENDING_PINGS);
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeMap::new();
        for (i, b) in self.buckets.iter().enumerate() {
            assert!(b.nodes.len() <= K, "bucket {i} has {} nodes", b.nodes.len());
            assert!(b.cache.len() <= REPLACEMENTS);
            for e in b.nodes.iter().chain(&b.cache) {
                let cpl = self.own_id.common_prefix_len(&e.info.id);
                assert!(
                    if i < last { cpl == i } else { cpl >= last },
                    "node with prefix {cpl} in bucket {i} of {}",
                    last + 1
                );
                assert!(self.acceptable(&e.info.id, &e.info.addr));
            }
            for e in &b.nodes {
                assert!(ids.insert(e.info.id), "id twice: {:?}", e.info.id);
                assert!(
                    addrs.insert(e.info.addr, e.info.id).is_none(),
                    "address twice: {}",
                    e.info.addr
                );
            }
            for c in &b.cache {
                assert!(b.position(&c.info.id).is_none(), "cached and in the bucket");
            }
        }
        assert_eq!(addrs, self.by_addr);
    }
}
