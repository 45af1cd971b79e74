//! Interest and requests: what we tell each peer we want, and keeping its pipeline full.

use super::{Session, request_of};
use crate::bitfield::Bitfield;
use crate::id::PeerHandle;
use crate::time::Time;

/// Requests a peer may have outstanding in endgame before it is given duplicates of others'.
const ENDGAME_DEPTH: usize = 2;

impl Session {
    pub(super) fn recount_needed(&mut self) {
        self.needed = self
            .wanted
            .iter_ones()
            .filter(|&p| !self.have.get(p))
            .count() as u32;
    }

    /// True when `has` holds a wanted piece we lack.
    pub(super) fn interesting(&self, has: &Bitfield) -> bool {
        if self.needed == 0 {
            return false;
        }
        has.as_bytes()
            .iter()
            .zip(self.wanted.as_bytes())
            .zip(self.have.as_bytes())
            .any(|((h, w), o)| h & w & !o != 0)
    }

    pub(super) fn update_interest(&mut self, now: Time, h: PeerHandle) {
        let Some(p) = self.peer(h) else { return };
        if !p.is_established() {
            return;
        }
        let want = self.interesting(p.has());
        if let Some(p) = self.peer_mut(h) {
            p.set_interested(now, want);
        }
    }

    pub(super) fn update_all_interest(&mut self, now: Time) {
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.update_interest(now, PeerHandle(k));
        }
    }

    pub(super) fn fill_all(&mut self, now: Time) {
        if self.needed == 0 {
            return;
        }
        let keys: Vec<usize> = self.peers.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.fill_requests(now, PeerHandle(k));
        }
    }

    /// Tops up a peer's pipeline from the picker.
    pub(super) fn fill_requests(&mut self, now: Time, h: PeerHandle) {
        if self.needed == 0 {
            return;
        }
        let Some(p) = self.peer(h) else { return };
        if !p.can_request() || !p.am_interested() {
            return;
        }
        let mut depth = p.pipeline_depth(now);
        if self.picker.in_endgame() {
            // Every block is requested already: what we would ask for now are copies. A peer
            // asks for a copy only once its own queue runs low, so fast peers finish the last
            // blocks without the duplicates eating everyone's upload.
            depth = depth.min(ENDGAME_DEPTH);
        }
        let n = depth.saturating_sub(p.outstanding_count());
        if n == 0 {
            return;
        }
        let mut has = p.has().clone();
        if p.peer_choking() {
            let mut allowed = Bitfield::new(has.len());
            for &i in p.allowed_fast() {
                if has.get(i) {
                    allowed.set(i);
                }
            }
            has = allowed;
        }
        // A piece that failed its check is fetched again from one peer only, so the next
        // attempt, pass or fail, says who sent bad data. A peer that sent part of the failed
        // attempt does not get it while a peer that did not has it.
        if let Some(me) = p.remote_id() {
            for (&piece, sources) in &self.failed_attempts {
                if !has.get(piece) {
                    continue;
                }
                if let Some(&owner) = self.retry_owner.get(&piece) {
                    if owner != h {
                        has.clear(piece);
                    }
                    continue;
                }
                let suspect = sources.iter().any(|s| s.sender == me.0);
                let innocent_has_it = self.peers.iter().any(|(k, s)| {
                    k != h.0
                        && s.peer.as_ref().is_some_and(|o| {
                            o.has().get(piece)
                                && o.remote_id()
                                    .is_some_and(|id| !sources.iter().any(|src| src.sender == id.0))
                        })
                });
                if suspect && innocent_has_it {
                    has.clear(piece);
                }
            }
        }
        let mut out = std::mem::take(&mut self.pick_buf);
        out.clear();
        self.picker.pick(h, &has, n, &mut out);
        for b in &out {
            if self.failed_attempts.contains_key(&b.piece) {
                self.retry_owner.entry(b.piece).or_insert(h);
            }
        }
        if let Some(p) = self.peer_mut(h) {
            for b in &out {
                p.add_request(now, request_of(*b));
            }
        }
        self.pick_buf = out;
    }
}
