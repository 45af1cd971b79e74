//! Sockets in the event loop: connecting, accepting, reading within a budget, flushing with
//! backpressure, and handing the engine what the sockets did.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use kp_torrent_core::engine::{EngineInput, IncomingId, TorrentId};
use kp_torrent_core::id::PeerHandle;
use kp_torrent_core::session::Input;
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::TorrentInput;
use mio::{Interest, Token};

use super::limit::Limited;
use super::utp::{Stream, StreamIo};
use super::{COALESCE_AFTER, COALESCE_FOR, Client, PEER_BASE, READ_BUDGET, SEND_QUEUE_LIMIT};
use crate::conn::{ReadOutcome, SendQueue, read_within};
use crate::disk::{self, Job, READ_RUN_LIMIT, StoreId, WRITE_BACKLOG_LIMIT};

/// Who a socket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// Accepted, its handshake not yet routed by the engine.
    Pending(IncomingId),
    /// A torrent's peer.
    Peer(TorrentId, PeerHandle),
}

/// A connection's socket and buffers.
pub(super) struct PeerSock {
    pub(super) owner: Owner,
    pub(super) stream: Stream,
    pub(super) out: SendQueue,
    pub(super) connecting: bool,
    /// Disk reads the torrent asked for while this peer's send queue was full.
    pub(super) deferred_reads: VecDeque<(u32, u32, u32)>,
    /// Blocks asked for this turn that follow each other in one piece: piece, first offset,
    /// lengths. Submitted as one read when the run breaks, reaches [`READ_RUN_LIMIT`], or the
    /// turn ends.
    pub(super) read_run: Option<(u32, u32, Vec<u32>)>,
    /// A uTP dial's address, dialed over TCP if the uTP dial fails.
    pub(super) fallback: Option<std::net::SocketAddr>,
}

impl Client {
    /// Deregisters and forgets a socket (its owner's mapping too).
    pub(super) fn drop_sock(&mut self, key: usize) {
        let Some(mut p) = self.socks.try_remove(key) else {
            return;
        };
        match &mut p.stream {
            Stream::Tcp(stream) => {
                let _ = self.poll.registry().deregister(stream);
            }
            Stream::Utp(h) => {
                if let Some(ep) = self.utp.as_mut() {
                    ep.close(*h);
                }
                self.by_utp.remove(h);
            }
        }
        match p.owner {
            Owner::Pending(conn) => {
                self.by_incoming.remove(&conn);
            }
            Owner::Peer(t, peer) => {
                if self.by_peer.get(&(t, peer)) == Some(&key) {
                    self.by_peer.remove(&(t, peer));
                }
            }
        }
        self.read_pending.remove(&key);
        self.unflushed.remove(&key);
        self.read_runs.remove(&key);
    }

    /// The socket failed or closed: tell its owner.
    pub(super) fn lost_sock(&mut self, now: Time, key: usize) {
        let Some(p) = self.socks.get(key) else {
            return;
        };
        let (owner, connecting) = (p.owner, p.connecting);
        self.drop_sock(key);
        match owner {
            Owner::Pending(conn) => self.feed(now, EngineInput::IncomingClosed { conn }),
            Owner::Peer(t, peer) if connecting => self.input(now, t, Input::ConnectFailed { peer }),
            Owner::Peer(t, peer) => self.input(now, t, Input::Closed { peer }),
        }
    }

    pub(super) fn flush_sock(&mut self, now: Time, key: usize) {
        match self.write_out(key) {
            Some(Ok(_)) => self.resume_reads(key),
            Some(Err(e)) => {
                log::debug!("send on socket {key}: {e}");
                self.lost_sock(now, key);
            }
            None => {}
        }
    }

    /// Writes what the socket takes of its queue, within the upload limit (`None`: no socket).
    fn write_out(&mut self, key: usize) -> Option<io::Result<bool>> {
        let p = self.socks.get_mut(key)?;
        let mut io = StreamIo {
            stream: &mut p.stream,
            utp: self.utp.as_mut(),
        };
        let mut w = Limited {
            inner: &mut io,
            bucket: &mut self.up,
        };
        Some(p.out.flush_to(&mut w))
    }

    /// Ends a turn's batch: submits the runs of disk reads gathered, and flushes the sockets
    /// that were sent bytes since their last flush (flushing can gather more reads, and a lost
    /// socket's news can make the engine send elsewhere: a few rounds, then the next turn).
    pub(super) fn flush_unflushed(&mut self, now: Time) {
        for _ in 0..8 {
            self.disk.hand_over();
            self.submit_read_runs();
            if self.unflushed.is_empty() {
                return;
            }
            for key in std::mem::take(&mut self.unflushed) {
                self.flush_sock(now, key);
            }
        }
        self.disk.hand_over();
        self.submit_read_runs();
    }

    /// Writes what the socket takes of its queue now, ignoring errors (it is about to close).
    pub(super) fn flush_quietly(&mut self, key: usize) {
        if self.socks.get(key).is_some_and(|p| !p.connecting) {
            let _ = self.write_out(key);
        }
    }

    /// Queues deferred disk reads for a peer whose send queue has room again.
    pub(super) fn resume_reads(&mut self, key: usize) {
        let Some(Owner::Peer(t, peer)) = self.socks.get(key).map(|p| p.owner) else {
            return;
        };
        let Some(store) = self.store_of(t) else {
            return;
        };
        let mut budget =
            (SEND_QUEUE_LIMIT as u64).saturating_sub(self.bytes_ahead(key, store, peer));
        while budget > 0 {
            let Some(p) = self.socks.get_mut(key) else {
                return;
            };
            let Some((piece, begin, length)) = p.deferred_reads.pop_front() else {
                break;
            };
            budget = budget.saturating_sub(u64::from(length));
            self.queue_read(key, store, piece, begin, length);
        }
    }

    /// The disk pool's name for torrent `t`'s files, once they are open.
    pub(super) fn store_of(&self, t: TorrentId) -> Option<StoreId> {
        self.runs.get(&t)?.files.as_ref().map(|f| f.store)
    }

    /// Bytes on their way to the socket `key` of `peer`: queued to send, being read from the
    /// disk, and gathered in its run of reads. No more reads are queued past
    /// [`SEND_QUEUE_LIMIT`].
    pub(super) fn bytes_ahead(&self, key: usize, store: StoreId, peer: PeerHandle) -> u64 {
        let Some(p) = self.socks.get(key) else {
            return 0;
        };
        let run = p.read_run.as_ref().map_or(0, |r| disk::run_bytes(&r.2));
        p.out.len() as u64 + self.disk.queued_read_bytes(store, peer) + run
    }

    /// True when nothing is on its way to socket `key`: no bytes queued for it, and no disk
    /// reads for its peer queued or running.
    fn nothing_ahead(&self, key: usize) -> bool {
        let Some(p) = self.socks.get(key) else {
            return false;
        };
        match p.owner {
            Owner::Peer(t, peer) => self.store_of(t).map_or(p.out.is_empty(), |store| {
                self.bytes_ahead(key, store, peer) == 0
            }),
            Owner::Pending(_) => p.out.is_empty(),
        }
    }

    /// Adds a block to the socket's run of reads, submitting the run first when the block does
    /// not continue it, and the run once it is [`READ_RUN_LIMIT`] long.
    pub(super) fn queue_read(
        &mut self,
        key: usize,
        store: StoreId,
        piece: u32,
        begin: u32,
        length: u32,
    ) {
        let Some(p) = self.socks.get_mut(key) else {
            return;
        };
        let continues = p.read_run.as_ref().is_some_and(|(rp, rb, lengths)| {
            *rp == piece && u64::from(*rb) + disk::run_bytes(lengths) == u64::from(begin)
        });
        if !continues {
            self.submit_read_run(key, store);
        }
        let Some(p) = self.socks.get_mut(key) else {
            return;
        };
        let run = p.read_run.get_or_insert_with(|| (piece, begin, Vec::new()));
        run.2.push(length);
        if disk::run_bytes(&run.2) >= READ_RUN_LIMIT {
            self.submit_read_run(key, store);
        } else {
            self.read_runs.insert(key);
        }
    }

    /// Submits the socket's run of reads, if it has one.
    fn submit_read_run(&mut self, key: usize, store: StoreId) {
        let Some(p) = self.socks.get_mut(key) else {
            return;
        };
        let Owner::Peer(_, peer) = p.owner else {
            return;
        };
        if let Some((piece, begin, lengths)) = p.read_run.take() {
            self.disk.submit(
                store,
                Job::Read {
                    peer,
                    piece,
                    begin,
                    lengths,
                },
            );
        }
        self.read_runs.remove(&key);
    }

    /// Submits every run of reads gathered this turn.
    pub(super) fn submit_read_runs(&mut self) {
        for key in std::mem::take(&mut self.read_runs) {
            let Some(Owner::Peer(t, _)) = self.socks.get(key).map(|p| p.owner) else {
                continue;
            };
            if let Some(store) = self.store_of(t) {
                self.submit_read_run(key, store);
            }
        }
    }

    /// True when a peer has more queued for it than [`SEND_QUEUE_LIMIT`]: it is not read until it
    /// drains, so a peer that sends requests but never reads cannot grow our replies without bound.
    pub(super) fn send_blocked(&self, key: usize) -> bool {
        self.socks
            .get(key)
            .is_some_and(|p| p.out.len() > SEND_QUEUE_LIMIT)
    }

    pub(super) fn read_sock(&mut self, now: Time, key: usize) {
        let send_queued = self.socks.get(key).map_or(0, |p| p.out.len());
        let budget = read_budget(
            send_queued,
            self.disk.queued_write_bytes(),
            self.down.available(),
        );
        if budget == 0 {
            self.read_pending.insert(key);
            return;
        }
        if !self.socks.contains(key) {
            self.read_pending.remove(&key);
            return;
        }
        // What is read from a TCP socket counts toward the turn's pause (`coalesce_pause`), even
        // if the engine closes the socket meanwhile; uTP's datagrams wait in a small socket
        // buffer, so its reads do not.
        let tcp = matches!(
            self.socks.get(key),
            Some(PeerSock {
                stream: Stream::Tcp(_),
                ..
            })
        );
        // Each read goes to the engine as it comes, straight from the loop's buffer.
        let mut buf = std::mem::take(&mut self.buf);
        let mut total = 0;
        let outcome = loop {
            // The engine may have closed the socket, or redialed under its key, meanwhile.
            let Some(p) = self.socks.get_mut(key).filter(|p| !p.connecting) else {
                break Ok(ReadOutcome::Drained);
            };
            let owner = p.owner;
            let mut io = StreamIo {
                stream: &mut p.stream,
                utp: self.utp.as_mut(),
            };
            let n = match read_within(&mut io, &mut buf, budget - total) {
                Ok(Ok(n)) => n,
                Ok(Err(outcome)) => break Ok(outcome),
                Err(e) => break Err(e),
            };
            total += n;
            self.down.spend(n as u64);
            let bytes = &buf[..n];
            let input = match owner {
                Owner::Pending(conn) => EngineInput::IncomingData { conn, bytes },
                Owner::Peer(torrent, peer) => EngineInput::Torrent {
                    torrent,
                    input: TorrentInput::Session(Input::Received { peer, bytes }),
                },
            };
            self.feed(now, input);
        };
        self.buf = buf;
        if tcp {
            self.read_turn += total;
        }
        // The blocks of this read go to the disk together.
        self.disk.hand_over();
        // The engine may have handed the socket over (or closed it) meanwhile; a socket that
        // is connecting under the same key is a new one (a redial), not this.
        let still_ours = self.socks.get(key).is_some_and(|p| !p.connecting);
        if still_ours && total > 0 && self.nothing_ahead(key) {
            // No reply of ours is on its way to carry the acknowledgement (`conn::quick_ack`).
            if let Some(PeerSock {
                stream: Stream::Tcp(stream),
                ..
            }) = self.socks.get(key)
            {
                crate::conn::quick_ack(stream);
            }
        }
        match outcome {
            Ok(ReadOutcome::Drained) => {
                self.read_pending.remove(&key);
            }
            Ok(ReadOutcome::BudgetSpent) if still_ours => {
                self.read_pending.insert(key);
            }
            Ok(ReadOutcome::BudgetSpent) => {
                self.read_pending.remove(&key);
            }
            Ok(ReadOutcome::Closed) => {
                if still_ours {
                    self.lost_sock(now, key);
                }
            }
            Err(e) => {
                log::debug!("read from socket {key}: {e}");
                if still_ours {
                    self.lost_sock(now, key);
                }
            }
        }
    }

    pub(super) fn sock_event(&mut self, now: Time, key: usize, event: &mio::event::Event) {
        let Some(p) = self.socks.get_mut(key) else {
            return;
        };
        if p.connecting {
            // Only TCP sockets have poll events; a uTP dial's answer is an endpoint event.
            let Stream::Tcp(stream) = &p.stream else {
                return;
            };
            let failed = match stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => true,
                },
            };
            if failed {
                self.lost_sock(now, key);
                return;
            }
            p.connecting = false;
            let _ = stream.set_nodelay(true);
            self.connections[0] += 1;
            if let Owner::Peer(t, peer) = p.owner {
                self.input(now, t, Input::Connected { peer });
            }
        }
        if event.is_writable() {
            self.flush_sock(now, key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_sock(now, key);
        }
    }

    /// Takes every waiting connection of listener `which`; the engine decides from its handshake
    /// where it goes.
    pub(super) fn accept(&mut self, now: Time, which: usize) {
        loop {
            let Some(listener) = self.listeners.get(which) else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
                    let addr = match addr {
                        std::net::SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                            Some(v4) => std::net::SocketAddr::new(v4.into(), a.port()),
                            None => addr,
                        },
                        v4 => v4,
                    };
                    let key = self.socks.vacant_key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(PEER_BASE + key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = self.engine.next_incoming();
                    self.socks.insert(PeerSock {
                        owner: Owner::Pending(conn),
                        stream: Stream::Tcp(stream),
                        out: SendQueue::default(),
                        connecting: false,
                        deferred_reads: VecDeque::new(),
                        read_run: None,
                        fallback: None,
                    });
                    self.by_incoming.insert(conn, key);
                    self.connections[0] += 1;
                    self.feed(now, EngineInput::Incoming { addr });
                    // Bytes may already be waiting; edge-triggered readiness won't repeat them.
                    self.read_pending.insert(key);
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

/// How many bytes one socket may be read this turn: none while its send queue holds more than
/// [`SEND_QUEUE_LIMIT`] (a peer that asks but never reads), none while disk writes are more
/// than [`WRITE_BACKLOG_LIMIT`] behind (received blocks would pile up in memory), otherwise
/// the download rate limit's tokens up to [`READ_BUDGET`] (one fast peer cannot starve the
/// rest; a socket with more to give is read again next turn).
pub(super) fn read_budget(send_queued: usize, writes_behind: u64, rate_tokens: u64) -> usize {
    if send_queued > SEND_QUEUE_LIMIT || writes_behind > WRITE_BACKLOG_LIMIT {
        return 0;
    }
    rate_tokens.min(READ_BUDGET as u64) as usize
}

/// How long to pause before the next poll when the turn read `read_turn` bytes from TCP peers
/// and the loop would otherwise wait up to `wait`: [`COALESCE_FOR`] (or less, when a deadline
/// is nearer) after a turn of bulk reads, nothing when there is work now or the turn read
/// little (a lone request or a handshake is answered at once).
pub(super) fn coalesce_pause(read_turn: usize, wait: Duration) -> Option<Duration> {
    (read_turn >= COALESCE_AFTER && !wait.is_zero()).then(|| wait.min(COALESCE_FOR))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{COALESCE_AFTER, COALESCE_FOR, SEND_QUEUE_LIMIT, coalesce_pause, read_budget};

    #[test]
    fn a_socket_is_read_within_its_budget_and_not_while_the_disk_or_its_send_queue_is_behind() {
        const KIB: u64 = 1024;
        // 256 KiB a turn at most, fewer when the rate limit has fewer tokens.
        assert_eq!(read_budget(0, 0, u64::MAX), 256 * 1024);
        assert_eq!(read_budget(0, 0, 1000), 1000);
        assert_eq!(read_budget(0, 0, 0), 0);
        // Disk writes 4 MiB behind are still read; one byte more and no socket is.
        assert_eq!(read_budget(0, 4096 * KIB, u64::MAX), 256 * 1024);
        assert_eq!(read_budget(0, 4096 * KIB + 1, u64::MAX), 0);
        // A send queue at the limit is still read; beyond it the peer is not.
        assert_eq!(read_budget(SEND_QUEUE_LIMIT, 0, u64::MAX), 256 * 1024);
        assert_eq!(read_budget(SEND_QUEUE_LIMIT + 1, 0, u64::MAX), 0);
    }

    #[test]
    fn a_turn_of_bulk_reads_pauses_before_the_next_poll_and_a_quiet_one_does_not() {
        let second = Duration::from_secs(1);
        // Bulk reads and nothing due: the loop pauses for the coalescing time.
        assert_eq!(coalesce_pause(COALESCE_AFTER, second), Some(COALESCE_FOR));
        assert_eq!(coalesce_pause(10 << 20, second), Some(COALESCE_FOR));
        // A deadline sooner than that shortens the pause.
        let soon = COALESCE_FOR / 4;
        assert_eq!(coalesce_pause(COALESCE_AFTER, soon), Some(soon));
        // Work waiting now, or a turn that read little (a request, a handshake): no pause.
        assert_eq!(coalesce_pause(10 << 20, Duration::ZERO), None);
        assert_eq!(coalesce_pause(COALESCE_AFTER - 1, second), None);
        assert_eq!(coalesce_pause(0, second), None);
    }
}
