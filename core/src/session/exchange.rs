//! BEP 11 peer exchange for the swarm: what each `ut_pex` peer is told about our other peers,
//! and the addresses it tells us, which join the peer list like a tracker's.

use std::collections::BTreeMap;

use core::net::SocketAddr;

use super::{PeerHandle, Session};
use crate::pex::{PexFlags, PexReceiver, PexSender, ReceiverConfig};
use crate::time::Time;

/// One peer's exchange state.
#[derive(Debug)]
pub(super) struct Exchange {
    sender: PexSender,
    receiver: PexReceiver,
}

/// Addresses learnt by PEX are kept at most this many at once in the peer list.
pub(super) const MAX_PEX_CANDIDATES: usize = 1000;

impl Session {
    /// True when this torrent may exchange peers at all (never a private one, BEP 27).
    pub(super) fn pex_allowed(&self) -> bool {
        self.config.pex && !self.torrent.private
    }

    /// The peer's extended handshake arrived: start exchanging with it if both sides offer it.
    pub(super) fn pex_start(&mut self, now: Time, h: PeerHandle) {
        let Some(slot) = self.peers.get_mut(h.0) else {
            return;
        };
        let Some(p) = slot.peer.as_ref().filter(|p| p.supports_pex()) else {
            return;
        };
        if slot.pex.is_none() {
            let mut sender = PexSender::new(slot.addr);
            if let Some(port) = p.listen_port().filter(|&p| p != 0) {
                sender.add_own_addr(SocketAddr::new(slot.addr.ip(), port));
            }
            slot.pex = Some(Box::new(Exchange {
                sender,
                receiver: PexReceiver::new(ReceiverConfig::default()),
            }));
        }
        self.pex_round(now, Some(h));
    }

    /// A `ut_pex` message from `h`: its usable addresses join the peer list.
    pub(super) fn pex_received(&mut self, now: Time, h: PeerHandle, payload: &[u8]) {
        let Some(x) = self.peers.get_mut(h.0).and_then(|s| s.pex.as_mut()) else {
            return;
        };
        // A malformed or too frequent message costs the peer nothing but its contents.
        let Ok(msg) = x.receiver.handle_message(now, payload) else {
            return;
        };
        let room = MAX_PEX_CANDIDATES.saturating_sub(self.pex_candidates);
        let addrs: Vec<SocketAddr> = msg
            .added
            .iter()
            .map(|&(a, _)| a)
            .filter(|a| !self.candidates.contains_key(a))
            .take(room)
            .collect();
        self.pex_candidates += addrs.len();
        if !addrs.is_empty() {
            self.add_candidates(now, &addrs);
        }
    }

    /// Sends every due peer (or only `only`) the changes in our connected set.
    pub(super) fn pex_round(&mut self, now: Time, only: Option<PeerHandle>) {
        let due = |x: &Exchange| x.sender.poll_timeout().is_none_or(|t| t <= now);
        let any_due = self
            .peers
            .iter()
            .any(|(k, s)| only.is_none_or(|h| h.0 == k) && s.pex.as_deref().is_some_and(due));
        if !any_due {
            return;
        }
        // Our connected peers by the address they can be reached at.
        let mut current = BTreeMap::new();
        for (_, s) in &self.peers {
            let Some(p) = s.peer.as_ref().filter(|p| p.is_established()) else {
                continue;
            };
            let addr = if s.outgoing {
                s.addr
            } else {
                match p.listen_port().filter(|&port| port != 0) {
                    Some(port) => SocketAddr::new(s.addr.ip(), port),
                    None => continue,
                }
            };
            let mut flags = PexFlags(0);
            if p.has().is_full() {
                flags = PexFlags(flags.0 | PexFlags::SEED.0);
            }
            if s.outgoing {
                flags = PexFlags(flags.0 | PexFlags::REACHABLE.0);
            }
            current.insert(addr, flags);
        }
        for (k, s) in self.peers.iter_mut() {
            if only.is_some_and(|h| h.0 != k) {
                continue;
            }
            let (Some(x), Some(p)) = (s.pex.as_mut(), s.peer.as_mut()) else {
                continue;
            };
            if let Some(msg) = x.sender.handle_timeout(now, &current) {
                p.send_pex(now, &msg.encode());
            }
        }
    }

    /// The earliest time a peer may be told something new.
    pub(super) fn pex_timeout(&self) -> Option<Time> {
        self.peers
            .iter()
            .filter_map(|(_, s)| s.pex.as_ref()?.sender.poll_timeout())
            .min()
    }
}
