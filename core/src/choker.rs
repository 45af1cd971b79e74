//! The choker: which peers we upload to (tit-for-tat, BEP 3).
//!
//! Every round (10 s by default) the session calls [`Choker::handle_timeout`] with every connected
//! peer as a [`Candidate`], then drains [`Choker::poll_decision`] until `None` and sends the
//! `choke` / `unchoke` messages it lists. [`Choker::poll_timeout`] says when the next round is due;
//! an early or repeated call does nothing, so the session may call it on any wakeup.
//!
//! The rules:
//! - while downloading, the [`ChokerConfig::upload_slots`] interested peers that give us the best
//!   download rate are unchoked (snubbed ones excluded): uploading to those who upload to us is
//!   what makes them keep uploading;
//! - while seeding, the interested peers we upload to fastest, who make the best use of our
//!   upload;
//! - plus one optimistic unchoke among the other interested peers, kept for
//!   [`ChokerConfig::optimistic_rounds`] rounds (30 s) then rotated, chosen at random with
//!   peers connected less than a minute ago three times as likely: it is how a newcomer gets its
//!   first pieces and how we discover peers better than our current ones;
//! - everyone else is choked.
//!
//! Equal rates are ordered by a shuffle drawn from the seed, so equal peers take turns and the
//! same inputs always give the same decisions, whatever order the candidates come in.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::id::PeerHandle;
use crate::time::Time;

/// A peer connected for less than this is "new": three times as likely to get the optimistic
/// unchoke.
pub const NEW_PEER_AGE: Duration = Duration::from_secs(60);

/// Settings of a [`Choker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChokerConfig {
    /// Peers unchoked for their rate, besides the optimistic unchoke. Default 4.
    pub upload_slots: usize,
    /// Time between rounds. Default 10 s.
    pub round: Duration,
    /// Rounds an optimistic unchoke lasts before it rotates. Default 3 (30 s).
    pub optimistic_rounds: u32,
}

impl Default for ChokerConfig {
    fn default() -> ChokerConfig {
        ChokerConfig {
            upload_slots: 4,
            round: Duration::from_secs(10),
            optimistic_rounds: 3,
        }
    }
}

/// What the choker needs to know about one connected peer at a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerHandle,
    /// It is interested in our pieces; only interested peers are unchoked.
    pub interested: bool,
    /// Bytes per second it sends us.
    pub download_rate: u64,
    /// Bytes per second we send it.
    pub upload_rate: u64,
    /// When the connection was established.
    pub connected_at: Time,
    /// It has sent us nothing for a long while although we asked: not unchoked for its rate.
    pub snubbed: bool,
}

/// A change to send to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Send `choke`: stop serving its requests.
    Choke,
    /// Send `unchoke`: it may request blocks.
    Unchoke,
}

/// Tit-for-tat choker for one torrent; see the [module documentation](self).
#[derive(Debug)]
pub struct Choker {
    config: ChokerConfig,
    rng: ChaCha8Rng,
    next_round: Time,
    /// Rounds the current optimistic unchoke has lasted.
    optimistic_age: u32,
    optimistic: Option<PeerHandle>,
    unchoked: BTreeSet<PeerHandle>,
    decisions: VecDeque<(PeerHandle, Decision)>,
}

impl Choker {
    /// A choker whose random choices come from `seed`. The first round is due at once.
    pub fn new(config: ChokerConfig, seed: u64) -> Choker {
        Choker {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_round: Time::ZERO,
            optimistic_age: 0,
            optimistic: None,
            unchoked: BTreeSet::new(),
            decisions: VecDeque::new(),
        }
    }

    /// When the next round is due: call [`Choker::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_round)
    }

    /// Runs a round if one is due at `now` (otherwise does nothing), given every connected peer
    /// and whether we are seeding. Then drain [`Choker::poll_decision`].
    pub fn handle_timeout(&mut self, now: Time, candidates: &[Candidate], seeding: bool) {
        if now < self.next_round {
            return;
        }
        self.next_round = now + self.config.round;
        self.round(now, candidates, seeding);
    }

    /// Runs a round now, whatever the timer says (for example when an unchoked peer left or lost
    /// interest and its slot should not wait for the next round). The timer restarts.
    pub fn force_round(&mut self, now: Time, candidates: &[Candidate], seeding: bool) {
        self.next_round = now + self.config.round;
        self.round(now, candidates, seeding);
    }

    /// The next change to send, until `None`. A peer appears at most once per round.
    pub fn poll_decision(&mut self) -> Option<(PeerHandle, Decision)> {
        self.decisions.pop_front()
    }

    /// The peers unchoked now, the optimistic one included.
    pub fn unchoked(&self) -> &BTreeSet<PeerHandle> {
        &self.unchoked
    }

    /// True when `peer` is unchoked now.
    pub fn is_unchoked(&self, peer: PeerHandle) -> bool {
        self.unchoked.contains(&peer)
    }

    /// The optimistic unchoke, if any.
    pub fn optimistic(&self) -> Option<PeerHandle> {
        self.optimistic
    }

    /// Unchoke at most `slots` peers (besides the optimistic one) from the next round on.
    pub fn set_upload_slots(&mut self, slots: usize) {
        self.config.upload_slots = slots;
    }

    /// A peer disconnected: forget it (its handle may be reused), without a decision.
    pub fn peer_gone(&mut self, peer: PeerHandle) {
        self.unchoked.remove(&peer);
        if self.optimistic == Some(peer) {
            self.optimistic = None;
        }
        self.decisions.retain(|&(p, _)| p != peer);
    }

    fn round(&mut self, now: Time, candidates: &[Candidate], seeding: bool) {
        // Sorted by handle (and deduplicated) so the caller's order cannot change the outcome.
        let mut all: Vec<Candidate> = candidates.to_vec();
        all.sort_by_key(|c| c.peer);
        all.dedup_by_key(|c| c.peer);
        let interested: Vec<Candidate> = all.iter().copied().filter(|c| c.interested).collect();

        let mut ranked: Vec<Candidate> = interested
            .iter()
            .copied()
            .filter(|c| seeding || !c.snubbed)
            .collect();
        for i in (1..ranked.len()).rev() {
            let j = self.rng.random_range(0..=i);
            ranked.swap(i, j);
        }
        ranked.sort_by_key(|c| {
            std::cmp::Reverse(if seeding {
                c.upload_rate
            } else {
                c.download_rate
            })
        });
        let regular: BTreeSet<PeerHandle> = ranked
            .iter()
            .take(self.config.upload_slots)
            .map(|c| c.peer)
            .collect();

        self.optimistic_age = self.optimistic_age.saturating_add(1);
        let keep = self.optimistic.is_some_and(|o| {
            self.optimistic_age <= self.config.optimistic_rounds
                && !regular.contains(&o)
                && interested.iter().any(|c| c.peer == o)
        });
        if !keep {
            let previous = self.optimistic;
            let pool: Vec<Candidate> = interested
                .iter()
                .copied()
                .filter(|c| !regular.contains(&c.peer))
                .collect();
            // Rotate away from the previous one unless it is the only choice.
            let others: Vec<Candidate> = pool
                .iter()
                .copied()
                .filter(|c| Some(c.peer) != previous)
                .collect();
            let pool = if others.is_empty() { pool } else { others };
            self.optimistic = self.draw_weighted(now, &pool);
            self.optimistic_age = 1;
        }

        let mut next = regular;
        if let Some(o) = self.optimistic {
            next.insert(o);
        }
        let present: BTreeSet<PeerHandle> = all.iter().map(|c| c.peer).collect();
        // Chokes first, so the number of unchoked peers never exceeds the slots on the wire.
        for &p in self.unchoked.difference(&next) {
            if present.contains(&p) {
                self.decisions.push_back((p, Decision::Choke));
            }
        }
        for &p in next.difference(&self.unchoked) {
            self.decisions.push_back((p, Decision::Unchoke));
        }
        self.unchoked = next;
    }

    /// One of `pool` at random, new peers weighing three times as much.
    fn draw_weighted(&mut self, now: Time, pool: &[Candidate]) -> Option<PeerHandle> {
        let weight = |c: &Candidate| -> u64 {
            if now.saturating_since(c.connected_at) < NEW_PEER_AGE {
                3
            } else {
                1
            }
        };
        let total: u64 = pool.iter().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.random_range(0..total);
        for c in pool {
            let w = weight(c);
            if x < w {
                return Some(c.peer);
            }
            x -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests;
