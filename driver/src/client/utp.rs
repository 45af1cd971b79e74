//! uTP in the event loop: the core's uTP [`Endpoint`] on the shared UDP socket, its
//! connections carried as peer sockets exactly like TCP ones.
//!
//! A peer socket's [`Stream`] is a TCP stream or a uTP connection handle; [`StreamIo`] reads
//! and writes either through `std::io`, so the read budget, the send queue, the rate limits and
//! the engine's view of a connection are the same for both. Datagrams that [`is_utp`] accepts
//! go to the endpoint (see [`super::engine::Port`]); [`Client::utp_service`] fires its timers,
//! turns its events into socket news and sends what it has to send.
//!
//! Dialing: a peer is dialed over uTP first (as libtorrent and Transmission do) with one SYN;
//! when that fails (no answer within 1 s, or a reset) the same peer handle is dialed over TCP,
//! and the torrent never notices which transport carried it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use kp_torrent_core::engine::{EngineInput, TorrentId};
use kp_torrent_core::id::PeerHandle;
use kp_torrent_core::session::Input;
use kp_torrent_core::time::Time;
use kp_torrent_core::utp::{ConnectionHandle, Endpoint, Event, UtpConfig};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::peers::{Owner, PeerSock};
use super::{Client, PEER_BASE};
use crate::conn::SendQueue;

/// SYNs a uTP dial sends before the peer is dialed over TCP instead: one, so a peer without
/// uTP waits one initial retransmission timeout (1 s) for its TCP dial.
const DIAL_SYNS: u32 = 1;

/// The endpoint's settings in this client.
pub(super) fn config(seed: u64) -> UtpConfig {
    UtpConfig {
        seed,
        max_syns: DIAL_SYNS,
        ..UtpConfig::default()
    }
}

/// What carries a peer connection's bytes.
#[derive(Debug)]
pub(super) enum Stream {
    /// A TCP socket registered with the poll under the peer socket's token.
    Tcp(TcpStream),
    /// A connection of the client's uTP endpoint.
    Utp(ConnectionHandle),
}

/// Reads and writes a [`Stream`]; a uTP connection with nothing to give or no room says
/// `WouldBlock`, as a non-blocking socket does (its end comes as an endpoint event).
pub(super) struct StreamIo<'a> {
    pub(super) stream: &'a mut Stream,
    pub(super) utp: Option<&'a mut Endpoint>,
}

impl StreamIo<'_> {
    fn endpoint(&mut self) -> io::Result<&mut Endpoint> {
        self.utp
            .as_deref_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Read for StreamIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.stream {
            Stream::Tcp(s) => s.read(buf),
            Stream::Utp(h) => {
                let h = *h;
                match self.endpoint()?.read(h, buf) {
                    0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            }
        }
    }
}

impl Write for StreamIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Utp(h) => {
                let h = *h;
                match self.endpoint()?.write(h, buf) {
                    0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match &mut *self.stream {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Utp(h) => {
                let h = *h;
                let ep = self.endpoint()?;
                let mut total = 0;
                for buf in bufs {
                    let n = ep.write(h, buf);
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                if total == 0 && bufs.iter().any(|b| !b.is_empty()) {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(total)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.stream {
            Stream::Tcp(s) => s.flush(),
            Stream::Utp(_) => Ok(()),
        }
    }
}

/// Logs a uTP packet's header at trace level (`RUST_LOG=trace`).
pub(super) fn trace_packet(dir: &str, addr: SocketAddr, bytes: &[u8]) {
    if log::log_enabled!(log::Level::Trace)
        && let Ok(p) = kp_torrent_core::utp::packet::decode(bytes)
    {
        let h = p.header;
        log::trace!(
            "uTP {dir} {addr}: {:?} id {} seq {} ack {} wnd {} sack {} len {}",
            h.ty,
            h.conn_id,
            h.seq_nr,
            h.ack_nr,
            h.wnd_size,
            p.sack.map_or(0, <[u8]>::len),
            p.payload.len()
        );
    }
}

impl Client {
    /// Opens a TCP connection to `addr` for the peer socket `key`.
    pub(super) fn tcp_dial(&self, addr: SocketAddr, key: usize) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect(addr)?;
        self.poll.registry().register(
            &mut stream,
            Token(PEER_BASE + key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    /// Dials a torrent's peer: over uTP when it runs (TCP if that fails), else over TCP.
    pub(super) fn dial(
        &mut self,
        now: Time,
        torrent: TorrentId,
        peer: PeerHandle,
        addr: SocketAddr,
    ) {
        let key = self.socks.vacant_key();
        let utp = self.utp.as_mut().map(|ep| ep.connect(now, addr));
        let stream = match utp {
            Some(Ok(h)) => {
                self.by_utp.insert(h, key);
                Ok(Stream::Utp(h))
            }
            Some(Err(e)) => {
                log::debug!("uTP dial {addr}: {e}; dialing TCP");
                self.tcp_dial(addr, key).map(Stream::Tcp)
            }
            None => self.tcp_dial(addr, key).map(Stream::Tcp),
        };
        match stream {
            Ok(stream) => {
                let fallback = matches!(stream, Stream::Utp(_)).then_some(addr);
                self.socks.insert(PeerSock {
                    owner: Owner::Peer(torrent, peer),
                    stream,
                    out: SendQueue::default(),
                    connecting: true,
                    deferred_reads: VecDeque::new(),
                    read_run: None,
                    fallback,
                });
                self.by_peer.insert((torrent, peer), key);
            }
            Err(e) => {
                log::debug!("connect {addr}: {e}");
                self.engine.handle_input(
                    now,
                    EngineInput::Torrent {
                        torrent,
                        input: kp_torrent_core::torrent::TorrentInput::Session(
                            Input::ConnectFailed { peer },
                        ),
                    },
                );
            }
        }
    }

    /// Fires the endpoint's due timers, carries out its events and sends its datagrams, until
    /// it has nothing more to say.
    pub(super) fn utp_service(&mut self, now: Time) {
        let Some(ep) = self.utp.as_mut() else {
            return;
        };
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        let mut out = std::mem::take(&mut self.utp_buf);
        for _ in 0..64 {
            let mut worked = false;
            while let Some(ev) = self.utp.as_mut().and_then(Endpoint::poll_event) {
                worked = true;
                self.utp_event(now, ev);
            }
            while let Some(to) = self
                .utp
                .as_mut()
                .and_then(|ep| ep.poll_transmit(now, &mut out))
            {
                worked = true;
                trace_packet("to", to, &out);
                self.tracker_io
                    .send_datagram(self.poll.registry(), to, &out);
            }
            if !worked {
                break;
            }
        }
        self.utp_buf = out;
    }

    fn utp_event(&mut self, now: Time, ev: Event) {
        match ev {
            Event::Incoming { handle, from } => {
                let key = self.socks.vacant_key();
                let conn = self.engine.next_incoming();
                self.socks.insert(PeerSock {
                    owner: Owner::Pending(conn),
                    stream: Stream::Utp(handle),
                    out: SendQueue::default(),
                    connecting: false,
                    deferred_reads: VecDeque::new(),
                    read_run: None,
                    fallback: None,
                });
                self.by_utp.insert(handle, key);
                self.by_incoming.insert(conn, key);
                self.connections[1] += 1;
                log::debug!("uTP connection from {from}");
                self.feed(now, EngineInput::Incoming { addr: from });
                self.read_pending.insert(key);
            }
            Event::Connected(h) => {
                let Some(&key) = self.by_utp.get(&h) else {
                    return;
                };
                let Some(p) = self.socks.get_mut(key) else {
                    return;
                };
                p.connecting = false;
                p.fallback = None;
                self.connections[1] += 1;
                if let Owner::Peer(t, peer) = p.owner {
                    log::debug!("{t} {peer}: connected over uTP");
                    self.engine.plain_handshake(t, peer);
                    self.input(now, t, Input::Connected { peer });
                }
                self.flush_sock(now, key);
            }
            Event::Readable(h) => {
                if let Some(&key) = self.by_utp.get(&h) {
                    self.read_sock(now, key);
                }
            }
            Event::Writable(h) => {
                if let Some(&key) = self.by_utp.get(&h) {
                    self.flush_sock(now, key);
                }
            }
            Event::Closed { handle, reason } => {
                let Some(key) = self.by_utp.remove(&handle) else {
                    return;
                };
                let fallback = self
                    .socks
                    .get(key)
                    .filter(|p| p.connecting)
                    .and_then(|p| p.fallback);
                if let Some(addr) = fallback {
                    log::debug!("uTP dial {addr}: {reason}; dialing TCP");
                    match self.tcp_dial(addr, key) {
                        Ok(stream) => {
                            let p = &mut self.socks[key];
                            p.stream = Stream::Tcp(stream);
                            p.fallback = None;
                            return;
                        }
                        Err(e) => log::debug!("connect {addr}: {e}"),
                    }
                } else {
                    log::debug!("uTP connection {handle}: {reason}");
                }
                self.lost_sock(now, key);
            }
        }
    }
}
