//! Carries out the tracker manager's actions on real sockets inside the mio loop: name lookups,
//! TCP connections (plain or TLS) for HTTP(S) trackers, and UDP datagrams for BEP 15 trackers.
//!
//! The manager ([`TrackerManager`]) decides everything; this module only moves bytes and reports
//! what the sockets did, through the manager's `handle_*` calls.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use kp_torrent_core::engine::TorrentId;
use kp_torrent_core::time::Time;
use kp_torrent_core::tracker::manager::{ConnId, TrackerAction, TrackerId, TrackerManager};

/// Where the sockets' news goes: the owning torrent's tracker inputs (the loop feeds them to the
/// engine, which records them per torrent); a bare [`TrackerManager`] takes them directly and
/// ignores the torrent. Datagrams name no torrent: the engine routes them by transaction id.
pub trait TrackerPort {
    /// A lookup for a UDP tracker finished (empty: it failed).
    fn handle_resolved(
        &mut self,
        now: Time,
        torrent: TorrentId,
        tracker: TrackerId,
        addrs: &[SocketAddr],
    );
    /// A TCP (or TLS) connection could not be made.
    fn handle_connect_failed(&mut self, now: Time, torrent: TorrentId, conn: ConnId, why: String);
    /// A TCP connection is open.
    fn handle_tcp_connected(&mut self, now: Time, torrent: TorrentId, conn: ConnId);
    /// Bytes arrived on a TCP connection.
    fn handle_tcp_data(&mut self, now: Time, torrent: TorrentId, conn: ConnId, bytes: &[u8]);
    /// A TCP connection ended (`error` when it broke).
    fn handle_tcp_closed(
        &mut self,
        now: Time,
        torrent: TorrentId,
        conn: ConnId,
        error: Option<String>,
    );
    /// A datagram arrived on a tracker UDP socket.
    fn handle_udp_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]);
}

impl TrackerPort for TrackerManager {
    fn handle_resolved(
        &mut self,
        now: Time,
        _: TorrentId,
        tracker: TrackerId,
        addrs: &[SocketAddr],
    ) {
        TrackerManager::handle_resolved(self, now, tracker, addrs);
    }
    fn handle_connect_failed(&mut self, now: Time, _: TorrentId, conn: ConnId, why: String) {
        TrackerManager::handle_connect_failed(self, now, conn, why);
    }
    fn handle_tcp_connected(&mut self, now: Time, _: TorrentId, conn: ConnId) {
        TrackerManager::handle_tcp_connected(self, now, conn);
    }
    fn handle_tcp_data(&mut self, now: Time, _: TorrentId, conn: ConnId, bytes: &[u8]) {
        TrackerManager::handle_tcp_data(self, now, conn, bytes);
    }
    fn handle_tcp_closed(&mut self, now: Time, _: TorrentId, conn: ConnId, error: Option<String>) {
        TrackerManager::handle_tcp_closed(self, now, conn, error);
    }
    fn handle_udp_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        TrackerManager::handle_udp_datagram(self, now, from, bytes);
    }
}
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token, Waker};
use slab::Slab;

use crate::conn::{ReadOutcome, SendQueue, read_budgeted};
use crate::resolver::{self, LookupKey, Resolver};
use crate::tls::{self, ReadState, TlsStream};

/// Bytes read from one tracker connection per readiness event at most: more than any reply the
/// manager accepts (its head and body caps), so a tracker streaming faster than we read cannot
/// keep the loop here or grow this buffer without bound; the manager rejects the reply anyway.
const TCP_READ_LIMIT: usize = 8 << 20;
/// Datagrams read from a tracker UDP socket per readiness event at most. Any host can send to it;
/// datagrams left over are read at the next event (trackers retransmit lost exchanges).
const UDP_READ_LIMIT: usize = 1024;

/// Most tracker TCP connections open at once; the tokens `conn_base..conn_base + MAX_CONNS` are ours.
pub const MAX_CONNS: usize = 1024;

/// The mio tokens this module may use.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    /// The IPv4 UDP socket.
    pub udp4: Token,
    /// The IPv6 UDP socket.
    pub udp6: Token,
    /// First token of the TCP connections.
    pub conn_base: usize,
}

enum Lookup {
    Udp {
        torrent: TorrentId,
        tracker: TrackerId,
        port: u16,
    },
    /// For the connection `id` in slot `key`: the slot may hold another connection by the time
    /// the answer comes (the manager gave up on a slow lookup and opened a new one).
    Tcp { key: usize, id: (TorrentId, ConnId) },
}

enum State {
    Resolving,
    Connecting {
        stream: TcpStream,
        /// Addresses still to try if this one fails.
        rest: Vec<SocketAddr>,
    },
    Open {
        stream: TcpStream,
    },
}

struct TcpConn {
    /// The owning torrent and the connection's id there.
    id: (TorrentId, ConnId),
    host: String,
    tls_wanted: bool,
    tls: Option<TlsStream>,
    state: State,
    out: SendQueue,
}

/// The tracker sockets of one client.
pub struct TrackerIo {
    tokens: Tokens,
    conns: Slab<TcpConn>,
    by_id: BTreeMap<(TorrentId, ConnId), usize>,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    bind_ip: Option<IpAddr>,
    resolver: Resolver,
    lookups: BTreeMap<LookupKey, Lookup>,
    next_lookup: LookupKey,
    extra_ca: Option<PathBuf>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    buf: Vec<u8>,
}

impl TrackerIo {
    /// Sets up lookups (answers wake `waker`) and remembers the tokens to use. `bind_ip` is the
    /// local address for outgoing sockets (`--bind`); `extra_ca` adds trust roots for HTTPS.
    pub fn new(
        tokens: Tokens,
        waker: Arc<Waker>,
        bind_ip: Option<IpAddr>,
        extra_ca: Option<PathBuf>,
    ) -> io::Result<TrackerIo> {
        Ok(TrackerIo {
            tokens,
            conns: Slab::new(),
            by_id: BTreeMap::new(),
            udp4: None,
            udp6: None,
            bind_ip,
            resolver: Resolver::new(waker)?,
            lookups: BTreeMap::new(),
            next_lookup: 0,
            extra_ca,
            tls_config: None,
            buf: vec![0; 64 * 1024],
        })
    }

    /// True when `token` belongs to a tracker socket.
    pub fn owns(&self, token: Token) -> bool {
        token == self.tokens.udp4
            || token == self.tokens.udp6
            || (self.tokens.conn_base..self.tokens.conn_base + MAX_CONNS).contains(&token.0)
    }

    /// Drains a bare manager's actions and carries them out (for tools and tests that run a
    /// manager without a torrent; `torrent` only tags its connections).
    pub fn run_actions(
        &mut self,
        registry: &Registry,
        now: Time,
        torrent: TorrentId,
        mgr: &mut TrackerManager,
    ) {
        while let Some(action) = mgr.poll_action() {
            self.execute(registry, now, torrent, action, mgr);
        }
    }

    /// Carries out one action of `torrent`'s trackers; what the sockets say at once goes to
    /// `mgr`.
    pub fn execute(
        &mut self,
        registry: &Registry,
        now: Time,
        torrent: TorrentId,
        action: TrackerAction,
        mgr: &mut dyn TrackerPort,
    ) {
        match action {
            TrackerAction::Resolve {
                tracker,
                host,
                port,
            } => match resolver::literal(&host, port) {
                Some(addr) => mgr.handle_resolved(now, torrent, tracker, &[addr]),
                None => {
                    let key = self.lookup_key(Lookup::Udp {
                        torrent,
                        tracker,
                        port,
                    });
                    self.resolver.resolve(key, &host, port);
                }
            },
            TrackerAction::OpenTcp {
                conn,
                host,
                port,
                tls,
                ..
            } => {
                if self.conns.len() >= MAX_CONNS {
                    mgr.handle_connect_failed(
                        now,
                        torrent,
                        conn,
                        "too many tracker connections".into(),
                    );
                    return;
                }
                let key = self.conns.insert(TcpConn {
                    id: (torrent, conn),
                    host: host.clone(),
                    tls_wanted: tls,
                    tls: None,
                    state: State::Resolving,
                    out: SendQueue::default(),
                });
                self.by_id.insert((torrent, conn), key);
                match resolver::literal(&host, port) {
                    Some(addr) => self.connect(registry, now, key, vec![addr], mgr),
                    None => {
                        let lookup = self.lookup_key(Lookup::Tcp {
                            key,
                            id: (torrent, conn),
                        });
                        self.resolver.resolve(lookup, &host, port);
                    }
                }
            }
            TrackerAction::SendTcp { conn, bytes } => {
                let Some(&key) = self.by_id.get(&(torrent, conn)) else {
                    return;
                };
                let c = &mut self.conns[key];
                let queued = match &mut c.tls {
                    Some(t) => t.write_plaintext(&bytes).map_err(|e| e.to_string()),
                    None => {
                        c.out.push(bytes);
                        Ok(())
                    }
                };
                match queued {
                    Ok(()) => self.flush(registry, now, key, mgr),
                    Err(e) => self.fail_open(registry, now, key, e, mgr),
                }
            }
            TrackerAction::CloseTcp { conn } => {
                if let Some(key) = self.by_id.remove(&(torrent, conn)) {
                    self.drop_conn(registry, key);
                }
            }
            TrackerAction::SendUdp { addr, bytes, .. } => {
                match self.udp_socket(registry, addr) {
                    // A datagram lost to a full buffer is retransmitted by the manager's timer.
                    Ok(sock) => {
                        let _ = sock.send_to(&bytes, addr);
                    }
                    Err(e) => log::warn!("tracker UDP socket for {addr}: {e}"),
                }
            }
        }
    }

    /// Takes lookup answers after the loop's waker fired.
    pub fn handle_wakeup(&mut self, registry: &Registry, now: Time, mgr: &mut dyn TrackerPort) {
        while let Some(answer) = self.resolver.try_take() {
            match self.lookups.remove(&answer.key) {
                Some(Lookup::Udp {
                    torrent,
                    tracker,
                    port,
                }) => {
                    let addrs: Vec<SocketAddr> = answer
                        .result
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| SocketAddr::new(a.ip(), port))
                        .collect();
                    mgr.handle_resolved(now, torrent, tracker, &addrs);
                }
                Some(Lookup::Tcp { key, id }) => {
                    let waiting = self
                        .conns
                        .get(key)
                        .is_some_and(|c| c.id == id && matches!(c.state, State::Resolving));
                    if !waiting {
                        continue;
                    }
                    match answer.result {
                        Ok(addrs) => self.connect(registry, now, key, addrs, mgr),
                        Err(e) => {
                            let id = self.conns[key].id;
                            self.forget(registry, key);
                            mgr.handle_connect_failed(now, id.0, id.1, e);
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Handles readiness of one of our tokens.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        now: Time,
        event: &mio::event::Event,
        mgr: &mut dyn TrackerPort,
    ) {
        let token = event.token();
        if token == self.tokens.udp4 || token == self.tokens.udp6 {
            self.read_udp(now, token == self.tokens.udp6, mgr);
        } else {
            let key = token.0 - self.tokens.conn_base;
            if self.conns.contains(key) {
                if matches!(self.conns[key].state, State::Connecting { .. }) {
                    self.finish_connect(registry, now, key, mgr);
                }
                if self.conns.contains(key) && matches!(self.conns[key].state, State::Open { .. }) {
                    self.flush(registry, now, key, mgr);
                    if self.conns.contains(key) {
                        self.read_tcp(registry, now, key, mgr);
                    }
                }
            }
        }
    }

    fn lookup_key(&mut self, lookup: Lookup) -> LookupKey {
        let key = self.next_lookup;
        self.next_lookup += 1;
        self.lookups.insert(key, lookup);
        key
    }

    fn connect(
        &mut self,
        registry: &Registry,
        now: Time,
        key: usize,
        mut addrs: Vec<SocketAddr>,
        mgr: &mut dyn TrackerPort,
    ) {
        addrs.reverse();
        let mut last_err = String::from("no address");
        while let Some(addr) = addrs.pop() {
            match self.start_connect(registry, key, addr) {
                Ok(stream) => {
                    self.conns[key].state = State::Connecting {
                        stream,
                        rest: addrs,
                    };
                    return;
                }
                Err(e) => last_err = format!("{addr}: {e}"),
            }
        }
        let id = self.conns[key].id;
        self.forget(registry, key);
        mgr.handle_connect_failed(now, id.0, id.1, last_err);
    }

    fn start_connect(
        &mut self,
        registry: &Registry,
        key: usize,
        addr: SocketAddr,
    ) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect(addr)?;
        registry.register(
            &mut stream,
            Token(self.tokens.conn_base + key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    fn finish_connect(
        &mut self,
        registry: &Registry,
        now: Time,
        key: usize,
        mgr: &mut dyn TrackerPort,
    ) {
        let c = &mut self.conns[key];
        let State::Connecting { stream, rest } = &mut c.state else {
            return;
        };
        let failure = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                // Spurious wake-up: still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e.to_string()),
            },
        };
        match failure {
            Some(e) => {
                let rest = std::mem::take(rest);
                let _ = registry.deregister(stream);
                if rest.is_empty() {
                    let id = c.id;
                    self.forget(registry, key);
                    mgr.handle_connect_failed(now, id.0, id.1, e);
                } else {
                    self.connect(registry, now, key, rest, mgr);
                }
            }
            None => {
                let State::Connecting { stream, .. } =
                    std::mem::replace(&mut c.state, State::Resolving)
                else {
                    return;
                };
                c.state = State::Open { stream };
                if c.tls_wanted {
                    let started = self
                        .tls_config()
                        .and_then(|cfg| TlsStream::new(cfg, &self.conns[key].host));
                    match started {
                        Ok(t) => self.conns[key].tls = Some(t),
                        Err(e) => {
                            let id = self.conns[key].id;
                            self.forget(registry, key);
                            mgr.handle_connect_failed(now, id.0, id.1, e.to_string());
                            return;
                        }
                    }
                }
                let id = self.conns[key].id;
                mgr.handle_tcp_connected(now, id.0, id.1);
            }
        }
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, tls::TlsError> {
        if let Some(cfg) = &self.tls_config {
            return Ok(cfg.clone());
        }
        let cfg = tls::client_config(self.extra_ca.as_deref())?;
        self.tls_config = Some(cfg.clone());
        Ok(cfg)
    }

    fn flush(&mut self, registry: &Registry, now: Time, key: usize, mgr: &mut dyn TrackerPort) {
        let c = &mut self.conns[key];
        let State::Open { stream } = &mut c.state else {
            return;
        };
        let result = match &mut c.tls {
            Some(t) => t.write_tls_to(stream).map_err(|e| e.to_string()),
            None => c
                .out
                .flush_to(stream)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            self.fail_open(registry, now, key, e, mgr);
        }
    }

    fn read_tcp(&mut self, registry: &Registry, now: Time, key: usize, mgr: &mut dyn TrackerPort) {
        let c = &mut self.conns[key];
        let State::Open { stream } = &mut c.state else {
            return;
        };
        let id = c.id;
        let mut data = Vec::new();
        let outcome = match &mut c.tls {
            Some(t) => match t.read_tls_from(stream, &mut data, TCP_READ_LIMIT) {
                Ok(ReadState::WouldBlock) => Ok(false),
                Ok(ReadState::Closed) => Ok(true),
                Err(e) => Err(e.to_string()),
            },
            None => read_budgeted(stream, &mut self.buf, TCP_READ_LIMIT, |chunk| {
                data.extend_from_slice(chunk)
            })
            .map_err(|e| e.to_string())
            .and_then(|o| match o {
                ReadOutcome::Closed => Ok(true),
                ReadOutcome::Drained => Ok(false),
                ReadOutcome::BudgetSpent => Err("tracker reply larger than any accepted".into()),
            }),
        };
        // A TLS session may need to answer (key updates, alerts) after reading.
        if outcome.is_ok() {
            self.flush(registry, now, key, mgr);
        }
        if !data.is_empty() {
            mgr.handle_tcp_data(now, id.0, id.1, &data);
        }
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                if self.by_id.get(&id) == Some(&key) {
                    self.forget(registry, key);
                    mgr.handle_tcp_closed(now, id.0, id.1, None);
                }
            }
            Err(e) => {
                if self.by_id.get(&id) == Some(&key) {
                    self.fail_open(registry, now, key, e, mgr);
                }
            }
        }
    }

    fn fail_open(
        &mut self,
        registry: &Registry,
        now: Time,
        key: usize,
        why: String,
        mgr: &mut dyn TrackerPort,
    ) {
        let id = self.conns[key].id;
        self.forget(registry, key);
        mgr.handle_tcp_closed(now, id.0, id.1, Some(why));
    }

    /// Drops a connection and its id mapping.
    fn forget(&mut self, registry: &Registry, key: usize) {
        let id = self.conns[key].id;
        self.by_id.remove(&id);
        self.drop_conn(registry, key);
    }

    fn drop_conn(&mut self, registry: &Registry, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let c = self.conns.remove(key);
        if let State::Connecting { mut stream, .. } | State::Open { mut stream } = c.state {
            let _ = registry.deregister(&mut stream);
        }
    }

    /// Opens the shared UDP sockets now, on `port` where it is free (else on any port), for the
    /// DHT: its node must be reachable at a fixed port from the start. Returns the IPv4 and
    /// IPv6 sockets' ports (`None` for a family that could not be opened).
    pub fn open_udp(&mut self, registry: &Registry, port: u16) -> (Option<u16>, Option<u16>) {
        let mut ports = [None, None];
        for (i, v6) in [false, true].into_iter().enumerate() {
            if self.bind_ip.is_some_and(|ip| ip.is_ipv6() != v6) {
                continue;
            }
            let ip = match self.bind_ip {
                Some(ip) => ip,
                None if v6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let token = if v6 {
                self.tokens.udp6
            } else {
                self.tokens.udp4
            };
            let sock = UdpSocket::bind(SocketAddr::new(ip, port))
                .or_else(|_| UdpSocket::bind(SocketAddr::new(ip, 0)));
            let Ok(mut sock) = sock else {
                continue;
            };
            if registry
                .register(&mut sock, token, Interest::READABLE)
                .is_err()
            {
                continue;
            }
            ports[i] = sock.local_addr().ok().map(|a| a.port());
            if v6 {
                self.udp6 = Some(sock);
            } else {
                self.udp4 = Some(sock);
            }
        }
        (ports[0], ports[1])
    }

    /// Sends a datagram (the DHT's) from the shared socket of `to`'s family. A datagram lost to
    /// a full buffer is the sender's to retry, as UDP goes.
    pub fn send_datagram(&mut self, registry: &Registry, to: SocketAddr, data: &[u8]) {
        match self.udp_socket(registry, to) {
            Ok(sock) => {
                if let Err(e) = sock.send_to(data, to) {
                    log::trace!("UDP send of {} bytes to {to}: {e}", data.len());
                }
            }
            Err(e) => log::debug!("UDP socket for {to}: {e}"),
        }
    }

    fn udp_socket(&mut self, registry: &Registry, to: SocketAddr) -> io::Result<&UdpSocket> {
        let v6 = to.is_ipv6();
        let (slot, token) = if v6 {
            (&mut self.udp6, self.tokens.udp6)
        } else {
            (&mut self.udp4, self.tokens.udp4)
        };
        if slot.is_none() {
            let ip = match self.bind_ip {
                Some(ip) if ip.is_ipv6() == v6 => ip,
                _ if v6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            };
            let mut sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            registry.register(&mut sock, token, Interest::READABLE)?;
            *slot = Some(sock);
        }
        slot.as_ref()
            .ok_or_else(|| io::Error::other("UDP socket missing"))
    }

    fn read_udp(&mut self, now: Time, v6: bool, mgr: &mut dyn TrackerPort) {
        let sock = if v6 { &self.udp6 } else { &self.udp4 };
        let Some(sock) = sock else {
            return;
        };
        // Readiness is edge-triggered, so this normally reads until the socket is empty; a flood
        // is cut at UDP_READ_LIMIT so it cannot hold the loop here.
        for _ in 0..UDP_READ_LIMIT {
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => mgr.handle_udp_datagram(now, from, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}
