//! The peers other nodes announced to us (`announce_peer`), to hand out in `get_peers` replies.
//!
//! Each announced peer expires [`StoreConfig::ttl`] after its latest announce (BEP 5 leaves it
//! open; 30 minutes is what deployed nodes use, and announcers repeat every 15 to 30 minutes).
//! An info-hash keeps at most [`StoreConfig::max_peers_per_torrent`] peers, and a new one pushes
//! out the one announced longest ago; at most [`StoreConfig::max_torrents`] info-hashes are kept,
//! and a new one pushes out the info-hash announced to longest ago. So the store holds at most
//! `max_torrents × max_peers_per_torrent` peers (50,000 by default), each costing about 100
//! bytes across its map entry and its expiry index entry: about 5 MB at worst.
//!
//! The tokens (see [`super::token`]) already bind an announce to its sender's IP, but one IP may
//! announce many ports: the per-info-hash cap bounds what it can fill.
//!
//! [`PeerStore::get`] returns a sample drawn from a ChaCha8 RNG seeded at construction, so a
//! replay hands out the same peers.

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::id::InfoHash;
use crate::time::Time;

/// Bounds and lifetime of a [`PeerStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// How long an announce counts. Default 30 minutes.
    pub ttl: Duration,
    /// Peers kept per info-hash. Default 100.
    pub max_peers_per_torrent: usize,
    /// Info-hashes kept. Default 500.
    pub max_torrents: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ttl: Duration::from_secs(30 * 60),
            max_peers_per_torrent: 100,
            max_torrents: 500,
        }
    }
}

/// What [`PeerStore::handle_announce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new peer for the info-hash.
    Added,
    /// The peer was there; its announce time is now.
    Refreshed,
    /// Port 0, or an unspecified or multicast address.
    Rejected,
}

/// The announced peers of one info-hash: address → time of the latest announce.
#[derive(Debug, Clone, Default)]
struct Swarm {
    peers: BTreeMap<SocketAddr, Time>,
    latest: Time,
}

/// Announced peers by info-hash, bounded and expiring (see the module doc).
#[derive(Debug)]
pub struct PeerStore {
    config: StoreConfig,
    torrents: BTreeMap<InfoHash, Swarm>,
    /// (announce time, info-hash, peer) of every peer, oldest first: expiry in order.
    by_time: BTreeSet<(Time, InfoHash, SocketAddr)>,
    /// (latest announce, info-hash) of every info-hash: the one to push out first.
    by_activity: BTreeSet<(Time, InfoHash)>,
    rng: ChaCha8Rng,
    now: Time,
}

impl PeerStore {
    /// An empty store; `seed` drives the samples [`PeerStore::get`] draws.
    pub fn new(config: StoreConfig, seed: u64) -> PeerStore {
        PeerStore {
            config,
            torrents: BTreeMap::new(),
            by_time: BTreeSet::new(),
            by_activity: BTreeSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Time::ZERO,
        }
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Info-hashes with at least one peer (expired ones included until the next timeout).
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    /// Peers over all info-hashes.
    pub fn peer_count(&self) -> usize {
        self.by_time.len()
    }

    /// Call when a valid `announce_peer` (token checked, port resolved) says `peer` takes part
    /// in `info_hash`.
    pub fn handle_announce(&mut self, now: Time, info_hash: InfoHash, peer: SocketAddr) -> Stored {
        let now = self.advance(now);
        if peer.port() == 0 || peer.ip().is_unspecified() || peer.ip().is_multicast() {
            return Stored::Rejected;
        }
        if self.config.max_torrents == 0 || self.config.max_peers_per_torrent == 0 {
            return Stored::Rejected;
        }
        if !self.torrents.contains_key(&info_hash)
            && self.torrents.len() >= self.config.max_torrents
            && let Some(&(_, stale)) = self.by_activity.first()
        {
            self.remove_torrent(&stale);
        }
        let swarm = self.torrents.entry(info_hash).or_default();
        self.by_activity.remove(&(swarm.latest, info_hash));
        swarm.latest = now;
        self.by_activity.insert((now, info_hash));
        if let Some(t) = swarm.peers.get_mut(&peer) {
            self.by_time.remove(&(*t, info_hash, peer));
            *t = now;
            self.by_time.insert((now, info_hash, peer));
            return Stored::Refreshed;
        }
        if swarm.peers.len() >= self.config.max_peers_per_torrent
            && let Some((&old, &t)) = swarm.peers.iter().min_by_key(|(a, t)| (**t, **a))
        {
            swarm.peers.remove(&old);
            self.by_time.remove(&(t, info_hash, old));
        }
        swarm.peers.insert(peer, now);
        self.by_time.insert((now, info_hash, peer));
        Stored::Added
    }

    /// Up to `max` peers of `info_hash` announced less than the ttl before `now`: all of them
    /// when there are no more than `max`, else a random sample (from the store's seeded RNG).
    pub fn get(&mut self, now: Time, info_hash: &InfoHash, max: usize) -> Vec<SocketAddr> {
        let now = self.advance(now);
        let ttl = self.config.ttl;
        let Some(swarm) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let mut live: Vec<SocketAddr> = swarm
            .peers
            .iter()
            .filter(|(_, t)| now.saturating_since(**t) < ttl)
            .map(|(a, _)| *a)
            .collect();
        let n = max.min(live.len());
        for i in 0..n {
            let j = self.rng.random_range(i..live.len());
            live.swap(i, j);
        }
        live.truncate(n);
        live
    }

    /// When the oldest announce expires.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.by_time.first().map(|(t, ..)| *t + self.config.ttl)
    }

    /// Call at [`PeerStore::poll_timeout`]: drops expired peers, and info-hashes left without
    /// any. Early or extra calls do nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.advance(now);
        while let Some(&(t, info_hash, peer)) = self.by_time.first() {
            if now.saturating_since(t) < self.config.ttl {
                break;
            }
            self.by_time.pop_first();
            let Some(swarm) = self.torrents.get_mut(&info_hash) else {
                continue;
            };
            swarm.peers.remove(&peer);
            if swarm.peers.is_empty() {
                let latest = swarm.latest;
                self.torrents.remove(&info_hash);
                self.by_activity.remove(&(latest, info_hash));
            }
        }
    }

    fn remove_torrent(&mut self, info_hash: &InfoHash) {
        if let Some(swarm) = self.torrents.remove(info_hash) {
            self.by_activity.remove(&(swarm.latest, *info_hash));
            for (peer, t) in swarm.peers {
                self.by_time.remove(&(t, *info_hash, peer));
            }
        }
    }

    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    /// Panics unless the maps and both indexes agree and the bounds hold.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert!(self.torrents.len() <= self.config.max_torrents);
        assert_eq!(self.by_activity.len(), self.torrents.len());
        let mut n = 0;
        for (ih, swarm) in &self.torrents {
            assert!(!swarm.peers.is_empty());
            assert!(swarm.peers.len() <= self.config.max_peers_per_torrent);
            assert!(self.by_activity.contains(&(swarm.latest, *ih)));
            assert_eq!(swarm.peers.values().max(), Some(&swarm.latest));
            for (a, t) in &swarm.peers {
                assert!(self.by_time.contains(&(*t, *ih, *a)));
                n += 1;
            }
        }
        assert_eq!(n, self.by_time.len());
    }
}
