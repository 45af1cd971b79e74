//! Peer sockets in the event loop: connecting, accepting, reading within a budget, flushing
//! with backpressure, and handing the session what the sockets did.

use std::collections::VecDeque;
use std::io;

use kp_torrent_core::id::PeerHandle;
use kp_torrent_core::session::Input;
use kp_torrent_core::time::Time;
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::limit::Limited;
use super::{Client, PEER_BASE, READ_BUDGET, SEND_QUEUE_LIMIT};
use crate::conn::{ReadOutcome, SendQueue, read_budgeted};
use crate::disk::{Job, WRITE_BACKLOG_LIMIT};

/// A connection's socket and buffers, indexed by the session's handle.
pub(super) struct PeerSock {
    pub(super) stream: TcpStream,
    pub(super) out: SendQueue,
    pub(super) connecting: bool,
    /// Disk reads the session asked for while this peer's send queue was full.
    pub(super) deferred_reads: VecDeque<(u32, u32, u32)>,
}

impl Client {
    pub(super) fn set_peer(&mut self, peer: PeerHandle, sock: PeerSock) {
        if self.peers.len() <= peer.0 {
            self.peers.resize_with(peer.0 + 1, || None);
        }
        if let Some(mut old) = self.peers[peer.0].replace(sock) {
            let _ = self.poll.registry().deregister(&mut old.stream);
        }
    }

    pub(super) fn drop_peer(&mut self, idx: usize) {
        if let Some(slot) = self.peers.get_mut(idx)
            && let Some(mut p) = slot.take()
        {
            let _ = self.poll.registry().deregister(&mut p.stream);
        }
        self.read_pending.remove(&idx);
    }

    /// The socket failed or closed: tell the session.
    pub(super) fn lost_peer(&mut self, now: Time, idx: usize, connecting: bool) {
        self.drop_peer(idx);
        let peer = PeerHandle(idx);
        if connecting {
            self.input(now, Input::ConnectFailed { peer });
        } else {
            self.input(now, Input::Closed { peer });
        }
    }

    pub(super) fn flush_peer(&mut self, now: Time, idx: usize) {
        let Some(Some(p)) = self.peers.get_mut(idx) else {
            return;
        };
        let mut w = Limited {
            inner: &mut p.stream,
            bucket: &mut self.up,
        };
        match p.out.flush_to(&mut w) {
            Ok(_) => self.resume_reads(idx),
            Err(e) => {
                log::debug!("send to peer {idx}: {e}");
                self.lost_peer(now, idx, false);
            }
        }
    }

    /// Queues deferred disk reads for a peer whose send queue has room again.
    pub(super) fn resume_reads(&mut self, idx: usize) {
        let peer = PeerHandle(idx);
        let queued = self.disk.queued_read_bytes(peer);
        let Some(Some(p)) = self.peers.get_mut(idx) else {
            return;
        };
        let mut budget = (SEND_QUEUE_LIMIT as u64).saturating_sub(p.out.len() as u64 + queued);
        while budget > 0 {
            let Some((piece, begin, length)) = p.deferred_reads.pop_front() else {
                break;
            };
            budget = budget.saturating_sub(u64::from(length));
            self.disk.submit(Job::Read {
                peer,
                piece,
                begin,
                length,
            });
        }
    }

    /// True when a peer has more queued for it than [`SEND_QUEUE_LIMIT`]: it is not read until it
    /// drains, so a peer that sends requests but never reads cannot grow our replies without bound.
    pub(super) fn send_blocked(&self, idx: usize) -> bool {
        self.peers
            .get(idx)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.out.len() > SEND_QUEUE_LIMIT)
    }

    pub(super) fn read_peer(&mut self, now: Time, idx: usize) {
        if self.send_blocked(idx) {
            self.read_pending.insert(idx);
            return;
        }
        if self.disk.queued_write_bytes() > WRITE_BACKLOG_LIMIT {
            self.read_pending.insert(idx);
            return;
        }
        let budget = (self.down.available().min(READ_BUDGET as u64)) as usize;
        if budget == 0 {
            self.read_pending.insert(idx);
            return;
        }
        let Some(Some(p)) = self.peers.get_mut(idx) else {
            return;
        };
        let mut received = Vec::new();
        let outcome = read_budgeted(&mut p.stream, &mut self.buf, budget, |chunk| {
            received.extend_from_slice(chunk)
        });
        self.down.spend(received.len() as u64);
        if !received.is_empty() {
            self.input(
                now,
                Input::Received {
                    peer: PeerHandle(idx),
                    bytes: &received,
                },
            );
        }
        match outcome {
            Ok(ReadOutcome::Drained) => {
                self.read_pending.remove(&idx);
            }
            Ok(ReadOutcome::BudgetSpent) => {
                self.read_pending.insert(idx);
            }
            Ok(ReadOutcome::Closed) => {
                if self.peers.get(idx).is_some_and(Option::is_some) {
                    self.lost_peer(now, idx, false);
                }
            }
            Err(e) => {
                log::debug!("read from peer {idx}: {e}");
                if self.peers.get(idx).is_some_and(Option::is_some) {
                    self.lost_peer(now, idx, false);
                }
            }
        }
    }

    pub(super) fn peer_event(&mut self, now: Time, idx: usize, event: &mio::event::Event) {
        let Some(Some(p)) = self.peers.get_mut(idx) else {
            return;
        };
        if p.connecting {
            let failed = match p.stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match p.stream.peer_addr() {
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => true,
                },
            };
            if failed {
                self.lost_peer(now, idx, true);
                return;
            }
            p.connecting = false;
            let _ = p.stream.set_nodelay(true);
            self.input(
                now,
                Input::Connected {
                    peer: PeerHandle(idx),
                },
            );
        }
        if event.is_writable() {
            self.flush_peer(now, idx);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_peer(now, idx);
        }
    }

    /// Takes waiting connections; while the task checks its data they wait in the listen
    /// queue (edge-triggered readiness is remembered in `accept_pending`).
    pub(super) fn accept(&mut self, now: Time) {
        loop {
            let Some(peer) = self
                .session
                .next_handle()
                .filter(|_| self.session.accepts_peers())
            else {
                self.accept_pending = true;
                return;
            };
            match self.listener.accept() {
                Ok((mut stream, addr)) => {
                    let token = Token(PEER_BASE + peer.0);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.set_peer(
                        peer,
                        PeerSock {
                            stream,
                            out: SendQueue::default(),
                            connecting: false,
                            deferred_reads: VecDeque::new(),
                        },
                    );
                    self.input(now, Input::Incoming { addr });
                    // Bytes may already be waiting; edge-triggered readiness won't repeat them.
                    self.read_pending.insert(peer.0);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }
}
