//! The peer list: accepting and dialing connections, backoff, and forgetting closed ones.

use core::net::SocketAddr;

use super::{
    Action, Event, MAX_HALF_OPEN, RECONNECT_DELAY, RETRY_BASE, STABLE_CONNECTION, Session, Slot,
    block_of,
};
use crate::id::PeerHandle;
use crate::peer::Peer;
use crate::time::Time;

impl Session {
    pub(super) fn on_incoming(&mut self, now: Time, addr: SocketAddr) {
        let peer = Peer::new(self.peer_config(), false, now);
        let k = self.peers.insert(Slot {
            addr,
            outgoing: false,
            opened: now,
            peer: Some(peer),
            in_picker: false,
            pex: None,
        });
        if self.peers.len() > self.config.max_peers {
            self.remove_peer(PeerHandle(k), "too many connections".into(), true);
        } else if self.banned_addrs.contains(&addr) {
            self.remove_peer(PeerHandle(k), "banned".into(), true);
        }
    }

    pub(super) fn on_connected(&mut self, now: Time, h: PeerHandle) {
        let config = self.peer_config();
        if let Some(slot) = self.peers.get_mut(h.0)
            && slot.peer.is_none()
        {
            slot.peer = Some(Peer::new(config, true, now));
        }
    }

    pub(super) fn on_connect_failed(&mut self, now: Time, h: PeerHandle) {
        let Some(slot) = self.peers.get(h.0) else {
            return;
        };
        if slot.peer.is_some() {
            // Already open: treat as a close.
            self.remove_peer(h, "connection failed".into(), false);
            return;
        }
        let addr = slot.addr;
        self.peers.remove(h.0);
        self.connect_failed(now, addr);
        self.maybe_connect(now);
    }

    /// Backs off an address after a failed attempt, forgetting it after too many.
    pub(super) fn connect_failed(&mut self, now: Time, addr: SocketAddr) {
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.connected = false;
            c.failures += 1;
            if c.failures >= self.config.max_connect_failures {
                self.candidates.remove(&addr);
            } else {
                let delay = RETRY_BASE * 2u32.saturating_pow(c.failures - 1).min(64);
                c.next_attempt = now + delay;
            }
        }
    }

    pub(super) fn next_connect_time(&self) -> Option<Time> {
        if self.peers.len() >= self.config.max_peers || self.half_open() >= MAX_HALF_OPEN {
            return None;
        }
        self.candidates
            .values()
            .filter(|c| !c.connected)
            .map(|c| c.next_attempt)
            .min()
    }

    pub(super) fn half_open(&self) -> usize {
        self.peers.iter().filter(|(_, s)| s.peer.is_none()).count()
    }

    pub(super) fn maybe_connect(&mut self, now: Time) {
        while self.peers.len() < self.config.max_peers && self.half_open() < MAX_HALF_OPEN {
            let next = self
                .candidates
                .iter()
                .filter(|(_, c)| !c.connected && c.next_attempt <= now)
                .min_by_key(|(_, c)| (c.next_attempt, c.seq))
                .map(|(a, _)| *a);
            let Some(addr) = next else {
                break;
            };
            if let Some(c) = self.candidates.get_mut(&addr) {
                c.connected = true;
            }
            let k = self.peers.insert(Slot {
                addr,
                outgoing: true,
                opened: now,
                peer: None,
                in_picker: false,
                pex: None,
            });
            self.actions.push_back(Action::Connect {
                peer: PeerHandle(k),
                addr,
            });
        }
    }

    /// Forgets a connection: returns its requests to the picker, updates the address book, and
    /// tells the driver to close it when `tell_driver` (it knows already when the peer closed).
    pub(super) fn remove_peer(&mut self, h: PeerHandle, reason: String, tell_driver: bool) {
        if !self.peers.contains(h.0) {
            return;
        }
        let slot = self.peers.remove(h.0);
        let now = self.now;
        if tell_driver {
            self.actions.push_back(Action::Close {
                peer: h,
                reason: reason.clone(),
            });
        }
        self.retry_owner.retain(|_, o| *o != h);
        self.metadata_peer_gone(now, h);
        let was_unchoked = self.choker.is_unchoked(h);
        self.choker.peer_gone(h);
        let mut was_established = false;
        let mut was_seed = false;
        let mut was_self = false;
        if let Some(peer) = &slot.peer {
            was_self = peer.is_self_connection();
            was_established = peer.remote_id().is_some();
            was_seed = peer.has().is_full();
            for r in peer.outstanding() {
                self.picker.request_dropped(h, block_of(r));
            }
            if slot.in_picker {
                self.picker.peer_gone(h, peer.has(), peer.has().is_full());
            }
        }
        if slot.outgoing {
            if was_self {
                // Our own listening address (a tracker lists us too): never again.
                self.candidates.remove(&slot.addr);
                self.banned_addrs.insert(slot.addr);
            } else if was_established && was_seed && self.is_complete() {
                // Two seeds have nothing to say to each other: do not come back.
                self.candidates.remove(&slot.addr);
            } else if was_established {
                if let Some(c) = self.candidates.get_mut(&slot.addr) {
                    c.connected = false;
                    c.failures = 0;
                    if now.saturating_since(slot.opened) >= STABLE_CONNECTION {
                        c.drops = 0;
                    }
                    c.next_attempt = now + RECONNECT_DELAY * (1u32 << c.drops.min(7));
                    c.drops += 1;
                }
            } else {
                self.connect_failed(now, slot.addr);
            }
        }
        if was_established {
            self.events.push_back(Event::PeerDisconnected {
                peer: h,
                addr: slot.addr,
                reason,
            });
        }
        if was_unchoked && !self.shutting_down {
            // Its upload slot goes to someone else now.
            self.choke_round(now, true);
        }
        self.fill_all(now);
        self.maybe_connect(now);
    }
}
