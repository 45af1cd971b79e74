//! One iterative lookup (Kademlia's node lookup, BEP 5's `find_node` / `get_peers` traversal)
//! as its own state machine.
//!
//! It starts from the closest nodes we know (and, with an empty table, from bootstrap addresses
//! whose ids we do not know yet) and keeps [`LookupConfig::alpha`] queries going to the closest
//! candidates that have not been asked, adding the nodes each answer names. It is done when the
//! [`LookupConfig::k`] closest candidates that did not fail have all answered, or when nothing
//! is left to ask. A `get_peers` lookup also collects the `values` (peers) answers carry and the
//! tokens of the nodes that answered, for the announce that follows.
//!
//! # Driving it
//!
//! Drain [`Lookup::poll_query`] (each is a query to send: [`Lookup::method`] to the address
//! given), feed what comes back with [`Lookup::handle_response`] or [`Lookup::handle_failure`]
//! (an error reply, or the caller's own timeout), call [`Lookup::handle_timeout`] at
//! [`Lookup::poll_timeout`], drain [`Lookup::poll_peer`], and repeat until [`Lookup::is_done`].
//! A query unanswered after [`LookupConfig::slow_after`] stops counting against alpha (one slow
//! node does not stall the lookup) and fails after [`LookupConfig::query_timeout`]; a late
//! answer is still used.
//!
//! # Bounds
//!
//! At most [`LookupConfig::max_candidates`] candidates are kept (the closest; in-flight ones are
//! never dropped), at most [`LookupConfig::max_queries`] queries are sent, so a node that names
//! ever closer fake nodes cannot keep a lookup going, and at most [`LookupConfig::max_peers`]
//! peers are collected. The set of addresses already seen (each is asked once) holds at most
//! the seeds plus `max_queries` answers' nodes (a 4 KiB answer names at most 157).

use core::net::SocketAddr;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use super::krpc::{Method, NodeInfo, Response};
use super::node_id::NodeId;
use super::table::Family;
use crate::time::Time;

/// Parameters of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupConfig {
    /// Queries in flight at once (Kademlia's alpha). Default 3.
    pub alpha: usize,
    /// How many of the closest nodes must have answered (Kademlia's k). Default 8.
    pub k: usize,
    /// A query unanswered this long stops counting against alpha. Default 2 s.
    pub slow_after: Duration,
    /// A query unanswered this long has failed. Default 10 s.
    pub query_timeout: Duration,
    /// Candidates kept. Default 100.
    pub max_candidates: usize,
    /// Queries sent at most. Default 100.
    pub max_queries: usize,
    /// Peers collected at most. Default 1,000.
    pub max_peers: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            alpha: 3,
            k: 8,
            slow_after: Duration::from_secs(2),
            query_timeout: Duration::from_secs(10),
            max_candidates: 100,
            max_queries: 100,
            max_peers: 1000,
        }
    }
}

/// What a lookup asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// `find_node`: the nodes closest to the target.
    FindNode,
    /// `get_peers`: peers of the target info-hash, and the closest nodes with their tokens.
    GetPeers,
}

/// A query the lookup wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupQuery {
    /// Where to send [`Lookup::method`].
    pub addr: SocketAddr,
    /// The id we expect to answer, when known (not for bootstrap addresses).
    pub id: Option<NodeId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight { sent: Time },
    Responded,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    info: NodeInfo,
    state: State,
    token: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Bootstrap {
    addr: SocketAddr,
    state: State,
}

/// An iterative lookup (see the module doc).
#[derive(Debug, Clone)]
pub struct Lookup {
    own_id: NodeId,
    target: NodeId,
    kind: LookupKind,
    family: Family,
    config: LookupConfig,
    /// Sorted by distance to the target; ids unique.
    candidates: Vec<Candidate>,
    bootstrap: Vec<Bootstrap>,
    /// Every address ever queried or a candidate: each is asked at most once.
    known_addrs: BTreeSet<SocketAddr>,
    queries_sent: usize,
    peers: BTreeSet<SocketAddr>,
    new_peers: VecDeque<SocketAddr>,
    now: Time,
}

impl Lookup {
    /// A lookup of `target` in the `family` DHT by the node `own_id` (never queried), starting
    /// from `seeds` (the closest nodes our table knows).
    pub fn new(
        own_id: NodeId,
        target: NodeId,
        kind: LookupKind,
        family: Family,
        config: LookupConfig,
        seeds: impl IntoIterator<Item = NodeInfo>,
    ) -> Lookup {
        let mut l = Lookup {
            own_id,
            target,
            kind,
            family,
            config,
            candidates: Vec::new(),
            bootstrap: Vec::new(),
            known_addrs: BTreeSet::new(),
            queries_sent: 0,
            peers: BTreeSet::new(),
            new_peers: VecDeque::new(),
            now: Time::ZERO,
        };
        for s in seeds {
            l.add_candidate(s);
        }
        l.trim();
        l
    }

    /// Also asks `addr`, a node whose id we do not know (a bootstrap router or a node from
    /// configuration). Its answer's id places it among the candidates.
    pub fn add_bootstrap(&mut self, addr: SocketAddr) {
        if self.usable(&addr) && self.known_addrs.insert(addr) {
            self.bootstrap.push(Bootstrap {
                addr,
                state: State::Fresh,
            });
        }
    }

    /// The id looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// `find_node` or `get_peers`.
    pub fn kind(&self) -> LookupKind {
        self.kind
    }

    /// The query to send to every address [`Lookup::poll_query`] gives (the caller adds its own
    /// id and `want`).
    pub fn method(&self) -> Method {
        match self.kind {
            LookupKind::FindNode => Method::FindNode {
                target: self.target,
            },
            LookupKind::GetPeers => Method::GetPeers {
                info_hash: self.target.into(),
            },
        }
    }

    /// Queries sent so far.
    pub fn queries_sent(&self) -> usize {
        self.queries_sent
    }

    /// The next query to send, if alpha allows one now.
    pub fn poll_query(&mut self, now: Time) -> Option<LookupQuery> {
        let now = self.advance(now);
        if self.is_done() || self.queries_sent >= self.config.max_queries {
            return None;
        }
        if self.active(now) >= self.config.alpha {
            return None;
        }
        if let Some(b) = self.bootstrap.iter_mut().find(|b| b.state == State::Fresh) {
            b.state = State::InFlight { sent: now };
            self.queries_sent += 1;
            return Some(LookupQuery {
                addr: b.addr,
                id: None,
            });
        }
        let k = self.config.k;
        let c = self
            .candidates
            .iter_mut()
            .filter(|c| c.state != State::Failed)
            .take(k)
            .find(|c| c.state == State::Fresh)?;
        c.state = State::InFlight { sent: now };
        self.queries_sent += 1;
        Some(LookupQuery {
            addr: c.info.addr,
            id: Some(c.info.id),
        })
    }

    /// Call with the response that came from `from` to a query of this lookup. A response from
    /// an address the lookup did not ask, or whose id is not the one we asked, is not used.
    pub fn handle_response(&mut self, now: Time, from: SocketAddr, response: &Response) {
        self.advance(now);
        if self.is_done() {
            return;
        }
        if let Some(b) = self
            .bootstrap
            .iter_mut()
            .find(|b| b.addr == from && b.state != State::Fresh)
        {
            b.state = State::Responded;
            let info = NodeInfo {
                id: response.id,
                addr: from,
            };
            // Placed among the candidates as one that answered (unless it is us or known).
            if info.id != self.own_id && !self.candidates.iter().any(|c| c.info.id == info.id) {
                let at = self.insert_at(&info.id);
                self.candidates.insert(
                    at,
                    Candidate {
                        info,
                        state: State::Responded,
                        token: response.token.clone(),
                    },
                );
            }
        } else {
            let Some(c) = self.candidates.iter_mut().find(|c| {
                c.info.addr == from && matches!(c.state, State::InFlight { .. } | State::Failed)
            }) else {
                return;
            };
            if c.info.id != response.id {
                c.state = State::Failed;
                return;
            }
            c.state = State::Responded;
            c.token = response.token.clone();
        }
        for n in &response.nodes {
            self.add_candidate(*n);
        }
        if self.kind == LookupKind::GetPeers {
            for p in &response.values {
                if self.peers.len() >= self.config.max_peers {
                    break;
                }
                if p.port() != 0 && !p.ip().is_unspecified() && self.peers.insert(*p) {
                    self.new_peers.push_back(*p);
                }
            }
        }
        self.trim();
    }

    /// Call when the query to `from` failed (an error reply, an unreachable port, the caller's
    /// own timeout). It no longer counts among the closest nodes.
    pub fn handle_failure(&mut self, now: Time, from: SocketAddr) {
        self.advance(now);
        for b in &mut self.bootstrap {
            if b.addr == from && matches!(b.state, State::InFlight { .. }) {
                b.state = State::Failed;
            }
        }
        for c in &mut self.candidates {
            if c.info.addr == from && matches!(c.state, State::InFlight { .. }) {
                c.state = State::Failed;
            }
        }
    }

    /// The next time a query turns slow or fails, while the lookup runs.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.is_done() {
            return None;
        }
        let cfg = &self.config;
        self.in_flight_times()
            .map(|sent| {
                if self.now < sent + cfg.slow_after {
                    sent + cfg.slow_after
                } else {
                    sent + cfg.query_timeout
                }
            })
            .min()
    }

    /// Call at [`Lookup::poll_timeout`]: queries unanswered for
    /// [`LookupConfig::query_timeout`] fail (slow ones stopped counting against alpha already).
    /// Early or extra calls do nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.advance(now);
        let timeout = self.config.query_timeout;
        let expired = |s: &State| matches!(*s, State::InFlight { sent } if sent + timeout <= now);
        for b in &mut self.bootstrap {
            if expired(&b.state) {
                b.state = State::Failed;
            }
        }
        for c in &mut self.candidates {
            if expired(&c.state) {
                c.state = State::Failed;
            }
        }
    }

    /// The next peer a `get_peers` answer named (each peer once).
    pub fn poll_peer(&mut self) -> Option<SocketAddr> {
        self.new_peers.pop_front()
    }

    /// Every peer collected so far.
    pub fn peers(&self) -> &BTreeSet<SocketAddr> {
        &self.peers
    }

    /// True when the k closest candidates that did not fail have answered, or when there is
    /// nothing left to ask and nothing in flight.
    pub fn is_done(&self) -> bool {
        let boot_pending = self
            .bootstrap
            .iter()
            .any(|b| matches!(b.state, State::Fresh | State::InFlight { .. }));
        if boot_pending && self.queries_sent < self.config.max_queries {
            return false;
        }
        let mut window = self
            .candidates
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(self.config.k);
        if self.queries_sent >= self.config.max_queries {
            // Out of queries: done once nothing we wait for is still out.
            return !window.any(|c| matches!(c.state, State::InFlight { .. })) && !boot_pending;
        }
        window.all(|c| c.state == State::Responded)
    }

    /// Up to k of the closest nodes that answered, closest first, with the token each gave (for
    /// `announce_peer` after a `get_peers` lookup).
    pub fn closest_responded(&self) -> Vec<(NodeInfo, Option<Vec<u8>>)> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Responded)
            .take(self.config.k)
            .map(|c| (c.info, c.token.clone()))
            .collect()
    }

    fn usable(&self, addr: &SocketAddr) -> bool {
        Family::of(addr) == self.family
            && addr.port() != 0
            && !addr.ip().is_unspecified()
            && !addr.ip().is_multicast()
    }

    fn insert_at(&self, id: &NodeId) -> usize {
        let d = id.distance(&self.target);
        self.candidates
            .partition_point(|c| c.info.id.distance(&self.target) < d)
    }

    fn add_candidate(&mut self, info: NodeInfo) {
        if info.id == self.own_id
            || !self.usable(&info.addr)
            || self.known_addrs.contains(&info.addr)
        {
            return;
        }
        let at = self.insert_at(&info.id);
        if self
            .candidates
            .get(at)
            .is_some_and(|c| c.info.id == info.id)
        {
            return;
        }
        self.known_addrs.insert(info.addr);
        self.candidates.insert(
            at,
            Candidate {
                info,
                state: State::Fresh,
                token: None,
            },
        );
    }

    /// Drops the farthest candidates that are not in flight, down to `max_candidates`.
    fn trim(&mut self) {
        let mut i = self.candidates.len();
        while self.candidates.len() > self.config.max_candidates && i > 0 {
            i -= 1;
            if !matches!(self.candidates[i].state, State::InFlight { .. }) {
                self.candidates.remove(i);
            }
        }
    }

    fn in_flight_times(&self) -> impl Iterator<Item = Time> + '_ {
        let sent = |s: &State| match *s {
            State::InFlight { sent } => Some(sent),
            _ => None,
        };
        self.bootstrap
            .iter()
            .filter_map(move |b| sent(&b.state))
            .chain(self.candidates.iter().filter_map(move |c| sent(&c.state)))
    }

    /// Queries in flight that are not slow yet.
    fn active(&self, now: Time) -> usize {
        let slow = self.config.slow_after;
        self.in_flight_times()
            .filter(|&sent| now < sent + slow)
            .count()
    }

    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }
}
