//! MSE/PE at the seam between the driver and the torrents (see [`crate::mse`] for the
//! protocol).
//!
//! Everything a torrent's connection carries passes through [`Engine::torrent_input`] (what the
//! driver reports) and [`outgoing`] (what the torrent sends). A connection with no [`Link`] is
//! plain and passes untouched. A connection we dialed with MSE holds the torrent's bytes until
//! its handshake is established, then sends them encrypted; an RC4 connection decrypts what
//! arrives before the torrent sees it and encrypts what the torrent sends. So a torrent, and
//! the trace recorded of it, only ever deals in plaintext. Accepted connections run their
//! responder while they are still the engine's (`Pending`), before any torrent has them.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::{Engine, EngineAction, IncomingId, RefuseReason, TorrentId};
use crate::id::PeerHandle;
use crate::mse::{Cipher, Handshake, MAX_IA, Method, MseEvent, Policy};
use crate::session::{Action, Input};
use crate::time::Time;
use crate::torrent::{TorrentAction, TorrentInput};

/// An encrypted dial that has not completed its handshake by then is given up (under
/// [`Policy::Prefer`]: redialed in plaintext). Half the torrent's own handshake time, so a
/// plain retry still has time to show its handshake.
pub(super) const DIAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Addresses remembered as needing plaintext, at most; the oldest is forgotten first.
pub(super) const MAX_PLAIN_ONLY: usize = 1024;

/// Dials marked for a plain handshake at once ([`Engine::plain_handshake`]), at most.
const MAX_PLAIN_DIALS: usize = 1024;

/// The MSE state of one torrent connection.
#[derive(Debug)]
pub(super) enum Link {
    /// The torrent is being told its dial connected: what it sends is caught for the
    /// handshake about to start.
    Opening {
        /// The torrent's bytes so far.
        sent: Vec<u8>,
    },
    /// Our initiator handshake runs; the torrent's bytes wait.
    Dialing {
        hs: Box<Handshake>,
        /// Everything the torrent sent, in order (kept whole for a plaintext redial).
        sent: Vec<u8>,
        /// How many bytes of `sent` the handshake carries as `IA`.
        ia: usize,
        addr: SocketAddr,
        policy: Policy,
        since: Time,
    },
    /// The encrypted attempt failed; a plain connection is opening with the torrent's bytes
    /// queued on it. Its `Connected` is the engine's, not news for the torrent.
    Redialing { addr: SocketAddr },
    /// RC4 in both directions.
    Rc4(Cipher),
}

/// Addresses dialed in plaintext because an encrypted handshake with them failed (bounded,
/// first in first out). An address leaves again when a plaintext dial to it is closed before
/// the peer sent a byte: a failed encrypted handshake can be a slow one, and a peer that
/// requires encryption must not be locked out by it for good. Such a peer is then dialed
/// encrypted and plain by turns.
#[derive(Debug, Default)]
pub(super) struct PlainMemory {
    set: BTreeSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

impl PlainMemory {
    pub(super) fn insert(&mut self, addr: SocketAddr) {
        if self.set.insert(addr) {
            self.order.push_back(addr);
            if self.order.len() > MAX_PLAIN_ONLY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    pub(super) fn remove(&mut self, addr: &SocketAddr) {
        if self.set.remove(addr) {
            self.order.retain(|a| a != addr);
        }
    }

    pub(super) fn contains(&self, addr: &SocketAddr) -> bool {
        self.set.contains(addr)
    }

    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

/// What the engine knows about dialing without MSE under [`Policy::Prefer`].
#[derive(Debug, Default)]
pub(super) struct Plaintext {
    /// Addresses whose encrypted handshake failed: dialed in plaintext from now on.
    pub(super) memory: PlainMemory,
    /// Dials that open with a plain handshake whatever the policy allows beyond it (see
    /// [`Engine::plain_handshake`]); forgotten once connected or closed.
    pub(super) marked: BTreeSet<(TorrentId, PeerHandle)>,
    /// Plaintext dials to an address in `memory` that have received nothing yet: one that ends
    /// so takes the address out again (the peer may want encryption after all).
    pub(super) probes: BTreeMap<(TorrentId, PeerHandle), SocketAddr>,
}

impl Plaintext {
    /// A connection ended (closed by either side, or its dial failed): its plain-handshake mark
    /// goes, and a plaintext dial to a remembered address that heard nothing sends that address
    /// back to encryption for the next dial.
    pub(super) fn dial_ended(&mut self, key: (TorrentId, PeerHandle)) {
        self.marked.remove(&key);
        if let Some(addr) = self.probes.remove(&key) {
            self.memory.remove(&addr);
        }
    }

    /// Forgets a removed torrent's connections (the address memory is the process's).
    pub(super) fn forget_torrent(&mut self, id: TorrentId) {
        self.marked.retain(|(t, _)| *t != id);
        self.probes.retain(|(t, _), _| *t != id);
    }
}

/// What becomes of bytes a torrent sends to `peer`: `Some` to send (encrypted if the link is
/// RC4), `None` when they wait for the handshake.
pub(super) fn outgoing(
    links: &mut BTreeMap<(TorrentId, PeerHandle), Link>,
    id: TorrentId,
    peer: PeerHandle,
    mut bytes: Vec<u8>,
) -> Option<Vec<u8>> {
    match links.get_mut(&(id, peer)) {
        Some(Link::Opening { sent } | Link::Dialing { sent, .. }) => {
            sent.extend_from_slice(&bytes);
            None
        }
        Some(Link::Rc4(cipher)) => {
            cipher.encrypt(&mut bytes);
            Some(bytes)
        }
        Some(Link::Redialing { .. }) | None => Some(bytes),
    }
}

impl Engine {
    /// Addresses whose encrypted handshake failed, remembered for plaintext dials.
    pub fn plaintext_fallbacks(&self) -> usize {
        self.plain.memory.len()
    }

    /// Under [`Policy::Prefer`], the dial of `peer` (connecting now) opens with a plain
    /// BitTorrent handshake instead of MSE. The driver asks this for uTP dials: Transmission
    /// 3.00 over uTP loses what follows our handshake in the same packet once an MSE handshake
    /// selected plaintext, and under Prefer plaintext is what the stream carries anyway.
    /// `Require` and `Disable` are unaffected.
    pub fn plain_handshake(&mut self, torrent: TorrentId, peer: PeerHandle) {
        if self.config.encryption == Policy::Prefer && self.plain.marked.len() < MAX_PLAIN_DIALS {
            self.plain.marked.insert((torrent, peer));
        }
    }

    /// An input for one torrent from the driver: connection news passes through the
    /// connection's MSE state first.
    pub(super) fn torrent_input(&mut self, id: TorrentId, input: TorrentInput<'_>) {
        let TorrentInput::Session(session_input) = &input else {
            self.feed(id, input);
            return;
        };
        match *session_input {
            Input::Closed { peer } | Input::ConnectFailed { peer } => {
                self.plain.dial_ended((id, peer));
            }
            Input::Received { peer, bytes } if !bytes.is_empty() => {
                self.plain.probes.remove(&(id, peer));
            }
            _ => {}
        }
        match *session_input {
            Input::Connected { peer } => self.on_dial_connected(id, peer),
            Input::Received { peer, bytes } if self.links.contains_key(&(id, peer)) => {
                self.link_received(id, peer, bytes);
            }
            Input::Closed { peer } => match self.links.remove(&(id, peer)) {
                Some(Link::Dialing {
                    addr,
                    policy: Policy::Prefer,
                    sent,
                    ..
                }) => self.redial_plain(id, peer, addr, sent),
                _ => self.feed(id, input),
            },
            Input::ConnectFailed { peer } => match self.links.remove(&(id, peer)) {
                // The torrent's connection was open already: to it, it closed.
                Some(Link::Redialing { .. }) => {
                    self.feed(id, TorrentInput::Session(Input::Closed { peer }))
                }
                _ => self.feed(id, input),
            },
            _ => self.feed(id, input),
        }
    }

    /// The policy a dial to `addr` starts its handshake with; `None`: plaintext.
    fn dial_policy(&self, addr: &SocketAddr) -> Option<Policy> {
        match self.config.encryption {
            Policy::Disable => None,
            Policy::Require => Some(Policy::Require),
            Policy::Prefer if self.plain.memory.contains(addr) => None,
            Policy::Prefer => Some(Policy::Prefer),
        }
    }

    fn on_dial_connected(&mut self, id: TorrentId, peer: PeerHandle) {
        let connected = TorrentInput::Session(Input::Connected { peer });
        if let Some(Link::Redialing { addr }) = self.links.get(&(id, peer)) {
            // The plain redial opened; the torrent's bytes are queued on it already.
            self.plain.probes.insert((id, peer), *addr);
            self.links.remove(&(id, peer));
            self.half_open.remove(&(id, peer));
            return;
        }
        let Some(task) = self.torrent(id) else {
            return;
        };
        let info_hash = task.torrent().info_hash;
        let addr = task.session().and_then(|s| s.peer_addr(peer));
        let addr = addr.filter(|_| !self.plain.marked.remove(&(id, peer)));
        let Some((addr, policy)) = addr.and_then(|a| Some((a, self.dial_policy(&a)?))) else {
            if let Some(a) = addr.filter(|a| self.plain.memory.contains(a)) {
                self.plain.probes.insert((id, peer), a);
            }
            self.feed(id, connected);
            return;
        };
        self.links
            .insert((id, peer), Link::Opening { sent: Vec::new() });
        self.feed(id, connected);
        // The torrent may have closed it meanwhile (and dropped the link).
        let Some(Link::Opening { sent }) = self.links.remove(&(id, peer)) else {
            return;
        };
        let ia = sent.len().min(MAX_IA);
        let mut hs = Box::new(Handshake::initiator(
            policy,
            info_hash,
            sent[..ia].to_vec(),
            &mut self.rng,
        ));
        self.send_raw(id, peer, &mut hs);
        self.links.insert(
            (id, peer),
            Link::Dialing {
                hs,
                sent,
                ia,
                addr,
                policy,
                since: self.now,
            },
        );
    }

    fn link_received(&mut self, id: TorrentId, peer: PeerHandle, bytes: &[u8]) {
        let key = (id, peer);
        match self.links.remove(&key) {
            Some(Link::Rc4(mut cipher)) => {
                let mut plain = bytes.to_vec();
                cipher.decrypt(&mut plain);
                // Back before the torrent answers: its answer is encrypted too.
                self.links.insert(key, Link::Rc4(cipher));
                self.feed(
                    id,
                    TorrentInput::Session(Input::Received {
                        peer,
                        bytes: &plain,
                    }),
                );
            }
            Some(Link::Dialing {
                mut hs,
                mut sent,
                ia,
                addr,
                policy,
                since,
            }) => {
                if let Err(e) = hs.handle_input(bytes) {
                    self.dial_failed(id, peer, addr, policy, sent, &e.to_string());
                    return;
                }
                self.send_raw(id, peer, &mut hs);
                match hs.poll_event() {
                    None => {
                        let dialing = Link::Dialing {
                            hs,
                            sent,
                            ia,
                            addr,
                            policy,
                            since,
                        };
                        self.links.insert(key, dialing);
                    }
                    Some(MseEvent::Established(est)) => {
                        let mut cipher = est.cipher;
                        let mut held = sent.split_off(ia);
                        if !held.is_empty() {
                            cipher.encrypt(&mut held);
                            self.actions.push_back(EngineAction::Torrent {
                                torrent: id,
                                action: TorrentAction::Session(Action::Send { peer, bytes: held }),
                            });
                        }
                        if cipher.method() == Method::Rc4 {
                            self.links.insert(key, Link::Rc4(cipher));
                        }
                        if !est.rest.is_empty() {
                            self.feed(
                                id,
                                TorrentInput::Session(Input::Received {
                                    peer,
                                    bytes: &est.rest,
                                }),
                            );
                        }
                    }
                    Some(MseEvent::Plaintext { .. }) => {
                        // Only a responder reports this; an initiator that did is broken.
                        let why = "MSE: the handshake ended without encryption";
                        self.dial_failed(id, peer, addr, policy, sent, why);
                    }
                }
            }
            other => {
                if let Some(link) = other {
                    self.links.insert(key, link);
                }
                self.feed(id, TorrentInput::Session(Input::Received { peer, bytes }));
            }
        }
    }

    /// An encrypted dial failed before its handshake completed: under [`Policy::Prefer`] it
    /// goes again in plaintext, otherwise the torrent hears that the connection closed.
    fn dial_failed(
        &mut self,
        id: TorrentId,
        peer: PeerHandle,
        addr: SocketAddr,
        policy: Policy,
        sent: Vec<u8>,
        why: &str,
    ) {
        if policy == Policy::Prefer && !self.shutting_down {
            self.actions.push_back(EngineAction::Torrent {
                torrent: id,
                action: TorrentAction::Session(Action::Close {
                    peer,
                    reason: format!("{why}; dialing again in plaintext"),
                }),
            });
            self.redial_plain(id, peer, addr, sent);
            return;
        }
        self.actions.push_back(EngineAction::Torrent {
            torrent: id,
            action: TorrentAction::Session(Action::Close {
                peer,
                reason: why.to_owned(),
            }),
        });
        self.feed(id, TorrentInput::Session(Input::Closed { peer }));
    }

    /// Opens the torrent's connection again without MSE, its bytes so far queued on it, and
    /// remembers `addr` for plaintext. The torrent never hears of the first attempt.
    fn redial_plain(&mut self, id: TorrentId, peer: PeerHandle, addr: SocketAddr, sent: Vec<u8>) {
        if self.shutting_down {
            self.feed(id, TorrentInput::Session(Input::Closed { peer }));
            return;
        }
        self.plain.memory.insert(addr);
        self.half_open.insert((id, peer));
        self.actions.push_back(EngineAction::Torrent {
            torrent: id,
            action: TorrentAction::Session(Action::Connect { peer, addr }),
        });
        if !sent.is_empty() {
            self.actions.push_back(EngineAction::Torrent {
                torrent: id,
                action: TorrentAction::Session(Action::Send { peer, bytes: sent }),
            });
        }
        self.links.insert((id, peer), Link::Redialing { addr });
    }

    /// When the oldest encrypted dial's handshake times out.
    pub(super) fn links_timeout(&self) -> Option<Time> {
        self.links
            .values()
            .filter_map(|l| match l {
                Link::Dialing { since, .. } => Some(*since + DIAL_HANDSHAKE_TIMEOUT),
                _ => None,
            })
            .min()
    }

    /// Gives up encrypted dials whose handshake took too long.
    pub(super) fn expire_links(&mut self, now: Time) {
        let late: Vec<(TorrentId, PeerHandle)> = self
            .links
            .iter()
            .filter(|(_, l)| {
                matches!(l, Link::Dialing { since, .. } if *since + DIAL_HANDSHAKE_TIMEOUT <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for (id, peer) in late {
            if let Some(Link::Dialing {
                addr, policy, sent, ..
            }) = self.links.remove(&(id, peer))
            {
                self.dial_failed(id, peer, addr, policy, sent, "MSE: no handshake in time");
            }
        }
    }

    /// The first bytes of an accepted connection are not a plain handshake: MSE it is.
    pub(super) fn start_responder(&mut self, conn: IncomingId, first: &[u8]) {
        let Some(p) = self.pending.get_mut(conn.0) else {
            return;
        };
        let lookup = Arc::clone(&self.skeys);
        let policy = self.config.encryption;
        p.mse = Some(Box::new(Handshake::responder(
            policy,
            lookup,
            &mut self.rng,
        )));
        self.incoming_mse(conn, first);
    }

    /// Bytes for an accepted connection's responder; once established, the connection goes
    /// to its torrent with the decrypted bytes.
    pub(super) fn incoming_mse(&mut self, conn: IncomingId, bytes: &[u8]) {
        let Some(hs) = self.pending.get_mut(conn.0).and_then(|p| p.mse.as_mut()) else {
            return;
        };
        if let Err(e) = hs.handle_input(bytes) {
            self.refuse(conn, RefuseReason::Encryption(e));
            return;
        }
        while let Some(bytes) = hs.poll_transmit() {
            self.actions
                .push_back(EngineAction::SendIncoming { conn, bytes });
        }
        match hs.poll_event() {
            None => {}
            Some(MseEvent::Established(est)) => {
                let mut first = est.initial_payload;
                first.extend_from_slice(&est.rest);
                let cipher = (est.cipher.method() == Method::Rc4).then_some(est.cipher);
                self.adopt(conn, est.info_hash, first, cipher);
            }
            Some(MseEvent::Plaintext { received }) => {
                // A plain handshake after all: the usual way, from its first byte.
                if let Some(p) = self.pending.get_mut(conn.0) {
                    p.mse = None;
                    p.buf.clear();
                }
                self.on_incoming_data(conn, &received);
            }
        }
    }

    /// Queues what a dialing handshake has to send, as the connection's own bytes.
    fn send_raw(&mut self, id: TorrentId, peer: PeerHandle, hs: &mut Handshake) {
        while let Some(bytes) = hs.poll_transmit() {
            self.actions.push_back(EngineAction::Torrent {
                torrent: id,
                action: TorrentAction::Session(Action::Send { peer, bytes }),
            });
        }
    }
}
