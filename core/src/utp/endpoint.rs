//! The endpoint: every uTP connection of one UDP socket, routed by (address, connection id).

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use slab::Slab;

use super::UtpConfig;
use super::conn::{CloseReason, ConnEvent, Connection};
use super::packet::{self, Header, PacketType};
use crate::time::Time;

/// Resets queued for packets of unknown connections; more are dropped.
const MAX_QUEUED_RESETS: usize = 64;
/// Random picks tried for a free connection id before a dial gives up.
const ID_ATTEMPTS: usize = 32;

/// One connection of an [`Endpoint`]: slab index plus generation, so a stale handle never
/// reaches the connection that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionHandle {
    index: u32,
    generation: u32,
}

impl fmt::Display for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "utp#{}.{}", self.index, self.generation)
    }
}

/// What the endpoint tells the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A peer's connection was accepted (its SYN and a second packet arrived).
    Incoming {
        /// The new connection.
        handle: ConnectionHandle,
        /// The peer.
        from: SocketAddr,
    },
    /// A connection we dialed was answered.
    Connected(ConnectionHandle),
    /// Bytes arrived: call [`Endpoint::read`] until it returns 0.
    Readable(ConnectionHandle),
    /// After a short [`Endpoint::write`], the send buffer has room again.
    Writable(ConnectionHandle),
    /// The connection ended; its handle is dead.
    Closed {
        /// The connection.
        handle: ConnectionHandle,
        /// Why.
        reason: CloseReason,
    },
}

/// Why [`Endpoint::connect`] refused a dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// [`UtpConfig::max_connections`] are open.
    TooManyConnections,
    /// [`UtpConfig::max_half_open`] dials wait for an answer.
    TooManyHalfOpen,
    /// No free connection id was found for that address.
    NoConnectionId,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectError::TooManyConnections => "too many uTP connections open",
            ConnectError::TooManyHalfOpen => "too many uTP dials waiting for an answer",
            ConnectError::NoConnectionId => "no free uTP connection id for that address",
        })
    }
}

impl std::error::Error for ConnectError {}

/// A snapshot of one connection's congestion state (tests, statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer.
    pub remote: SocketAddr,
    /// Congestion window in bytes.
    pub cwnd: usize,
    /// Smoothed round-trip time, once measured.
    pub srtt: Option<Duration>,
    /// Retransmission timeout.
    pub rto: Duration,
    /// Slots of the receive reorder buffer in use.
    pub reorder_len: usize,
    /// Bytes held in the receive reorder buffer.
    pub reorder_bytes: usize,
    /// Bytes received and not yet read.
    pub readable: usize,
}

#[derive(Debug)]
struct Entry {
    remote: SocketAddr,
    conn: Connection,
    generation: u32,
    /// In `Endpoint::pending`.
    queued: bool,
    /// Dialed by us (reported as `Connected`) rather than accepted (`Incoming`).
    outgoing: bool,
    opened: Time,
}

/// Every uTP connection on one UDP socket.
#[derive(Debug)]
pub struct Endpoint {
    config: UtpConfig,
    rng: ChaCha8Rng,
    now: Time,
    conns: Slab<Entry>,
    /// (peer, our receive id) to slab index.
    routes: BTreeMap<(SocketAddr, u16), usize>,
    next_generation: u32,
    /// Connections that may have something to send, in round-robin order.
    pending: VecDeque<usize>,
    events: VecDeque<Event>,
    resets: VecDeque<(SocketAddr, Header)>,
}

impl Endpoint {
    /// An endpoint with no connections.
    pub fn new(config: UtpConfig) -> Endpoint {
        Endpoint {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            now: Time::ZERO,
            conns: Slab::new(),
            routes: BTreeMap::new(),
            next_generation: 0,
            pending: VecDeque::new(),
            events: VecDeque::new(),
            resets: VecDeque::new(),
        }
    }

    /// Connections open (half-open and closing ones included).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    fn advance(&mut self, now: Time) {
        if now > self.now {
            self.now = now;
        }
    }

    fn entry(&self, h: ConnectionHandle) -> Option<&Entry> {
        self.conns
            .get(h.index as usize)
            .filter(|e| e.generation == h.generation)
    }

    fn index_of(&self, h: ConnectionHandle) -> Option<usize> {
        self.entry(h).map(|_| h.index as usize)
    }

    fn handle_of(&self, index: usize) -> ConnectionHandle {
        ConnectionHandle {
            index: index as u32,
            generation: self.conns[index].generation,
        }
    }

    fn insert(&mut self, remote: SocketAddr, conn: Connection, outgoing: bool) -> usize {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = (remote, conn.recv_id());
        let index = self.conns.insert(Entry {
            remote,
            conn,
            generation,
            queued: false,
            outgoing,
            opened: self.now,
        });
        self.routes.insert(key, index);
        index
    }

    fn remove(&mut self, index: usize) {
        let e = self.conns.remove(index);
        self.routes.remove(&(e.remote, e.conn.recv_id()));
    }

    /// After a connection changed: move its events out, queue it to transmit, forget it if done.
    fn touched(&mut self, index: usize) {
        let handle = self.handle_of(index);
        let e = &mut self.conns[index];
        while let Some(ev) = e.conn.poll_event() {
            self.events.push_back(match ev {
                ConnEvent::Connected if e.outgoing => Event::Connected(handle),
                ConnEvent::Connected => Event::Incoming {
                    handle,
                    from: e.remote,
                },
                ConnEvent::Readable => Event::Readable(handle),
                ConnEvent::Writable => Event::Writable(handle),
                ConnEvent::Closed(reason) => Event::Closed { handle, reason },
            });
        }
        if e.conn.is_done() {
            self.remove(index);
        } else if !e.queued {
            e.queued = true;
            self.pending.push_back(index);
        }
    }

    /// Dials `remote`; `Connected` or `Closed` follows.
    pub fn connect(
        &mut self,
        now: Time,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, ConnectError> {
        self.advance(now);
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let dialing = self
            .conns
            .iter()
            .filter(|(_, e)| e.outgoing && e.conn.is_syn_sent())
            .count();
        if dialing >= self.config.max_half_open {
            return Err(ConnectError::TooManyHalfOpen);
        }
        let mut id = None;
        for _ in 0..ID_ATTEMPTS {
            let candidate: u16 = self.rng.random();
            if !self.routes.contains_key(&(remote, candidate)) {
                id = Some(candidate);
                break;
            }
        }
        let id = id.ok_or(ConnectError::NoConnectionId)?;
        let seq: u16 = self.rng.random();
        let conn = Connection::connect(self.config, self.now, id, seq);
        let index = self.insert(remote, conn, true);
        self.touched(index);
        Ok(self.handle_of(index))
    }

    /// Handles one datagram from `from`. Anything that does not decode is ignored.
    pub fn handle_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        self.advance(now);
        let Ok(p) = packet::decode(bytes) else {
            return;
        };
        let h = p.header;
        if h.ty == PacketType::Syn {
            let key = (from, h.conn_id.wrapping_add(1));
            if let Some(&index) = self.routes.get(&key) {
                self.conns[index].conn.handle_packet(self.now, &p);
                self.touched(index);
                return;
            }
            if !self.config.accept {
                return;
            }
            if self.conns.len() >= self.config.max_connections {
                self.queue_reset(from, &h);
                return;
            }
            self.make_half_open_room();
            let seq: u16 = self.rng.random();
            let conn = Connection::accept(self.config, self.now, &h, seq);
            let index = self.insert(from, conn, false);
            self.touched(index);
            return;
        }
        let index = match self.routes.get(&(from, h.conn_id)) {
            Some(&i) => Some(i),
            // A reset may carry the id we send with rather than the one we receive on.
            None if h.ty == PacketType::Reset => self
                .routes
                .range((from, 0)..=(from, u16::MAX))
                .map(|(_, &i)| i)
                .find(|&i| self.conns[i].conn.send_id() == h.conn_id),
            None => None,
        };
        match index {
            Some(i) => {
                self.conns[i].conn.handle_packet(self.now, &p);
                self.touched(i);
            }
            None if matches!(h.ty, PacketType::Data | PacketType::Fin) => {
                self.queue_reset(from, &h)
            }
            None => {}
        }
    }

    /// Evicts the oldest accepted-but-unconfirmed connection while the half-open budget is full.
    fn make_half_open_room(&mut self) {
        loop {
            let half_open = self.conns.iter().filter(|(_, e)| e.conn.is_syn_recv());
            let (count, oldest) = half_open.fold((0, None::<(Time, usize)>), |(n, o), (i, e)| {
                let o = match o {
                    Some((t, _)) if t <= e.opened => o,
                    _ => Some((e.opened, i)),
                };
                (n + 1, o)
            });
            match oldest {
                Some((_, i)) if count >= self.config.max_half_open => self.remove(i),
                _ => return,
            }
        }
    }

    fn queue_reset(&mut self, to: SocketAddr, h: &Header) {
        if self.resets.len() >= MAX_QUEUED_RESETS {
            return;
        }
        let reset = Header {
            ty: PacketType::Reset,
            conn_id: h.conn_id,
            timestamp_us: (self.now.as_nanos() / 1_000) as u32,
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: self.rng.random(),
            ack_nr: h.seq_nr,
        };
        self.resets.push_back((to, reset));
    }

    /// Queues bytes on a connection; returns how many it took (0 for a dead handle, after
    /// `close`, or with a full send buffer, when [`Event::Writable`] follows).
    pub fn write(&mut self, handle: ConnectionHandle, bytes: &[u8]) -> usize {
        let Some(i) = self.index_of(handle) else {
            return 0;
        };
        let n = self.conns[i].conn.write(bytes);
        self.touched(i);
        n
    }

    /// Reads received bytes into `buf`; returns how many (0 when none wait or the handle is
    /// dead).
    pub fn read(&mut self, handle: ConnectionHandle, buf: &mut [u8]) -> usize {
        let Some(i) = self.index_of(handle) else {
            return 0;
        };
        let n = self.conns[i].conn.read(buf);
        self.touched(i);
        n
    }

    /// Closes a connection: queued bytes and a FIN still go out (for at most 30 s); no event
    /// for the handle follows.
    pub fn close(&mut self, handle: ConnectionHandle) {
        if let Some(i) = self.index_of(handle) {
            self.conns[i].conn.advance(self.now);
            self.conns[i].conn.close();
            self.touched(i);
        }
    }

    /// The peer of a connection.
    pub fn remote(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        self.entry(handle).map(|e| e.remote)
    }

    /// A connection's congestion state.
    pub fn info(&self, handle: ConnectionHandle) -> Option<ConnectionInfo> {
        self.entry(handle).map(|e| ConnectionInfo {
            remote: e.remote,
            cwnd: e.conn.cwnd(),
            srtt: e.conn.srtt(),
            rto: e.conn.rto(),
            reorder_len: e.conn.reorder_len(),
            reorder_bytes: e.conn.reorder_bytes(),
            readable: e.conn.readable_len(),
        })
    }

    /// Writes the next datagram into `out` (cleared first) and returns where it goes. `now`
    /// stamps the packet and starts its retransmission timer.
    pub fn poll_transmit(&mut self, now: Time, out: &mut Vec<u8>) -> Option<SocketAddr> {
        self.advance(now);
        if let Some((to, h)) = self.resets.pop_front() {
            out.clear();
            packet::encode(&h, None, &[], out);
            return Some(to);
        }
        while let Some(index) = self.pending.pop_front() {
            let Some(e) = self.conns.get_mut(index) else {
                continue;
            };
            e.conn.advance(self.now);
            if e.conn.poll_transmit(out) {
                self.pending.push_back(index);
                return Some(e.remote);
            }
            e.queued = false;
            if e.conn.is_done() {
                self.remove(index);
            }
        }
        None
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.conns
            .iter()
            .filter_map(|(_, e)| e.conn.poll_timeout())
            .min()
    }

    /// Fires every connection timer due at `now`; an early or repeated call does nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.poll_timeout().is_some_and(|t| t <= self.now))
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.conns[i].conn.handle_timeout(self.now);
            self.touched(i);
        }
    }
}
