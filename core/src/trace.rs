//! Recording a torrent's run to a compact trace, and replaying it to check that a fresh task
//! does exactly the same.
//!
//! A [`TorrentTask`] (start-up check, swarm and trackers) is a pure function of its construction
//! arguments and its inputs, so a trace of those replays the run: the [`Recorder`] wraps a task
//! with the same `handle_input` / `poll_*` surface and writes every input it is given and every
//! action and event it returns; [`replay`] feeds the recorded inputs to a fresh task, drains it
//! after each input exactly as the recorder did, and compares the outputs one by one. The first
//! difference is reported as a [`Divergence`]: which input, which output after it, where in the
//! trace, expected and actual. Core never opens files: the driver hands the recorder a
//! [`std::io::Write`] and the replayer a byte slice or a [`std::io::Read`].
//!
//! # Format, version 4
//!
//! Integers are little-endian. A *varint* is an unsigned LEB128 number (7 bits per byte, lowest
//! first, high bit set on every byte but the last, at most 10 bytes). *bytes* is a varint length
//! followed by that many bytes; text is UTF-8 bytes; an *optional* is `0`, or `1` and the value.
//! An *address* is `4`, 4 octets, port `u16`; or `6`, 16 octets, port `u16`, flow info varint,
//! scope id varint. A *duration* is a varint of nanoseconds.
//!
//! Header:
//! - magic `KPTR`, version `u16` (= 5; versions 3 and 4 are still read: 3 lacks the DHT port,
//!   read as 0, and both lack the web seeds, read as none), flags `u8` (bit 0: events are
//!   recorded);
//! - the [`SessionConfig`](crate::session::SessionConfig): seed `u64`, peer id (optional, 20
//!   bytes), listen port `u16`, then varints max peers, upload slots, max serve queue, ban after
//!   failures, max connect failures, sequential and pex `u8`s, and the DHT port `u16`;
//! - the [`ManagerConfig`](crate::tracker::manager::ManagerConfig): HTTP timeout, connect
//!   timeout, receive timeout, fallback delay, UDP
//!   retransmission base, retransmissions (varint), connection-id lifetime, HTTP head, body and
//!   redirect limits, numwant and peers per reply (varints), default interval, shortest and
//!   longest re-announce, retry base and maximum, stop timeout; then our IPs (count, each `4` +
//!   4 octets or `6` + 16 octets);
//! - the tiers: count, then per tier a count and its URLs as text;
//! - the web seed URLs: count, then each as text;
//! - the [`Torrent`]: info-hash (20 bytes), piece length, total length and piece count (varints),
//!   the piece SHA-1s (20 bytes each), file count (varint), then per file offset and length
//!   (varints) and padding `u8`, then private `u8`, then the info dictionary served to peers
//!   (bytes; empty when none);
//! - the start state: `0` (check what is on disk), or `1`, then the verified pieces' bit count
//!   (varint) and bitfield bytes (BEP 3 order), or `2` (a magnet link: the torrent is all zeros
//!   but its info-hash);
//! - the start time: varint nanoseconds.
//!
//! Then records, each one tag byte and its fields, in the order they happened: the actions (and
//! events) the task queued when constructed, then for every input the input record followed by
//! the actions it produced (in [`TorrentTask::poll_action`] order) and then its events; finally
//! the end record `0xff`, written by [`Recorder::finish`]. A trace without it (a killed process)
//! replays up to its last whole record and says it is unfinished.
//!
//! Every input record starts with its time: a zigzag varint of the signed difference in
//! nanoseconds from the previous input's time (the first from the start time), so a typical
//! input spends one to three bytes on time. Then, per tag:
//!
//! | tag | input | fields (varints unless noted) |
//! |-----|-------|-------------------------------|
//! | 01 | timeout | — |
//! | 02 | incoming | address |
//! | 03, 04, 06 | connected, connect failed, closed | peer |
//! | 05 | received | peer, bytes |
//! | 07 | write done | piece, begin |
//! | 08 | write failed | piece, begin, text |
//! | 09 | read done | peer, piece, begin, bytes |
//! | 0a | read failed | peer, piece, begin, text |
//! | 0b | piece hashed | piece, digest (20 bytes) |
//! | 0c | peers discovered | count, addresses |
//! | 0d | select files | count, flags packed 8 per byte, lowest bit first |
//! | 0e | shutdown | — |
//! | 0f | hash failed | piece, text |
//! | 10 | start | file count, per file an optional (size, zigzag mtime, zigzag nanoseconds); optional resume bytes |
//! | 11 | tracker connected | connection |
//! | 12 | tracker data | connection, bytes |
//! | 13 | tracker closed | connection, optional error text |
//! | 14 | tracker connect failed | connection, text |
//! | 15 | tracker resolved | tracker, count, addresses |
//! | 16 | tracker datagram | address, bytes |
//!
//! | tag | action | fields |
//! |-----|--------|--------|
//! | 20 | connect | peer, address |
//! | 21 | send | peer, length, hash (`u64`) |
//! | 22 | close | peer, reason text |
//! | 23 | write block | piece, begin, length, hash (`u64`) |
//! | 24 | read block | peer, piece, begin, length |
//! | 25 | hash piece | piece |
//! | 27 | resolve | tracker, host text, port `u16` |
//! | 28 | open tracker connection | connection, tracker, host text, port `u16`, TLS `u8` |
//! | 29 | send on tracker connection | connection, length, hash (`u64`) |
//! | 2a | close tracker connection | connection |
//! | 2b | send datagram | tracker, address, length, hash (`u64`) |
//!
//! | tag | event | fields |
//! |-----|-------|--------|
//! | 40 | peer connected | peer, address, peer id (20 bytes) |
//! | 41 | peer disconnected | peer, address, reason text |
//! | 42, 43 | piece verified, hash failed | piece |
//! | 44 | complete | — |
//! | 45 | peer banned | address, peer id (20 bytes) |
//! | 46 | error | text |
//! | 47 | any other task event (check, resume, tracker) | its one-line text |
//!
//! # Why actions are fingerprints
//!
//! Received bytes are stored once, in the input that delivered them; that is what makes the run
//! reproducible. The payloads of actions (bytes sent, blocks written) are functions of the inputs,
//! so storing them again would double a download's trace for nothing: the task computes them
//! again on replay. An action is stored as its kind, key fields, payload length and a 64-bit hash
//! of the payload ([`payload_hash`]), about 15 bytes, so a 64 MiB download records about 64 MiB
//! and a few hundred kilobytes. The hash is not cryptographic; it only has to notice that a replay
//! computed different bytes, and any change confined to one aligned 8-byte word is always noticed
//! (every step is a bijection of the state). Blocks read from disk to serve a peer are inputs and
//! are stored whole: a seeder's trace is as large as what it uploaded.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};

use core::net::SocketAddr;

mod codec;
mod replay;
#[cfg(test)]
mod tests;

pub use codec::InputRecord;
pub use replay::{
    Divergence, Output, ReplayError, ReplayReport, TraceReader, TraceRecord, replay, replay_from,
};

use crate::id::{PeerHandle, to_hex};
use crate::session::{AnnounceEvent, Event, Torrent};
use crate::time::Time;
use crate::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput, TorrentTask,
};
use crate::tracker::manager::{ConnId, TrackerId};

/// Everything a task was constructed with, as a trace's header stores it.
#[derive(Debug, Clone)]
pub struct TraceHeader {
    /// True when the trace records events as well as actions.
    pub events: bool,
    /// The task's settings (with its seed) and tracker tiers.
    pub config: TorrentConfig,
    /// The torrent.
    pub torrent: Torrent,
    /// How the task learnt which pieces it has.
    pub start_state: StartState,
    /// The task's start time.
    pub start: Time,
}

impl TraceHeader {
    /// A fresh task built exactly as the recorded one was.
    pub fn task(&self) -> TorrentTask {
        TorrentTask::new(
            self.config.clone(),
            self.torrent.clone(),
            self.start_state.clone(),
            self.start,
        )
    }
}

/// The 64-bit hash a trace stores for an action's payload. Fast (four independent lanes of
/// 8-byte words), stable across platforms and versions, not cryptographic.
pub fn payload_hash(data: &[u8]) -> u64 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    fn word(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        let n = b.len().min(8);
        w[..n].copy_from_slice(&b[..n]);
        u64::from_le_bytes(w)
    }
    let mut lanes = [K1, K2, K1.rotate_left(17), K2.rotate_left(41)];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(b.chunks_exact(8)) {
            *lane = (*lane ^ word(w)).wrapping_mul(K1).rotate_left(31);
        }
    }
    let mut h = (data.len() as u64) ^ K2;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K2).rotate_left(27);
    }
    for w in blocks.remainder().chunks(8) {
        h = (h ^ word(w)).wrapping_mul(K1).rotate_left(31);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(K2);
    h ^ (h >> 29)
}

/// An action as a trace stores it: kind, key fields, and for payloads their length and
/// [`payload_hash`] instead of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionPrint {
    /// [`Action::Connect`].
    Connect {
        /// Handle for the new connection.
        peer: PeerHandle,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// [`Action::Send`].
    Send {
        /// The connection.
        peer: PeerHandle,
        /// Bytes sent.
        len: u64,
        /// Their hash.
        hash: u64,
    },
    /// [`Action::Close`].
    Close {
        /// The connection.
        peer: PeerHandle,
        /// Why.
        reason: String,
    },
    /// [`Action::WriteBlock`].
    WriteBlock {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Block length.
        len: u64,
        /// Hash of the block.
        hash: u64,
    },
    /// [`Action::ReadBlock`].
    ReadBlock {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Length in bytes.
        length: u32,
    },
    /// [`Action::HashPiece`].
    HashPiece {
        /// Piece index.
        piece: u32,
    },
    /// [`Action::Announce`] (a task handles these itself, so traces hold none).
    Announce {
        /// The event.
        event: AnnounceEvent,
    },
    /// [`TrackerAction::Resolve`](crate::tracker::manager::TrackerAction::Resolve).
    Resolve {
        /// The tracker.
        tracker: TrackerId,
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
    /// [`TrackerAction::OpenTcp`](crate::tracker::manager::TrackerAction::OpenTcp).
    OpenTcp {
        /// The connection.
        conn: ConnId,
        /// The tracker.
        tracker: TrackerId,
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// Wrapped in TLS.
        tls: bool,
    },
    /// [`TrackerAction::SendTcp`](crate::tracker::manager::TrackerAction::SendTcp).
    SendTcp {
        /// The connection.
        conn: ConnId,
        /// Bytes sent.
        len: u64,
        /// Their hash.
        hash: u64,
    },
    /// [`TrackerAction::CloseTcp`](crate::tracker::manager::TrackerAction::CloseTcp).
    CloseTcp {
        /// The connection.
        conn: ConnId,
    },
    /// [`TrackerAction::SendUdp`](crate::tracker::manager::TrackerAction::SendUdp).
    SendUdp {
        /// The tracker.
        tracker: TrackerId,
        /// Destination.
        addr: SocketAddr,
        /// Datagram length.
        len: u64,
        /// Its hash.
        hash: u64,
    },
}

impl fmt::Display for ActionPrint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionPrint::Connect { peer, addr } => write!(f, "connect {peer} to {addr}"),
            ActionPrint::Send { peer, len, hash } => {
                write!(f, "send {len} bytes to {peer} (hash {hash:016x})")
            }
            ActionPrint::Close { peer, reason } => write!(f, "close {peer}: {reason}"),
            ActionPrint::WriteBlock {
                piece,
                begin,
                len,
                hash,
            } => write!(
                f,
                "write piece {piece} at {begin}, {len} bytes (hash {hash:016x})"
            ),
            ActionPrint::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => write!(
                f,
                "read piece {piece} at {begin}, {length} bytes for {peer}"
            ),
            ActionPrint::HashPiece { piece } => write!(f, "hash piece {piece}"),
            ActionPrint::Announce { event } => write!(f, "announce ({event:?})"),
            ActionPrint::Resolve {
                tracker,
                host,
                port,
            } => write!(f, "resolve {host}:{port} for tracker {}", tracker.0),
            ActionPrint::OpenTcp {
                conn,
                tracker,
                host,
                port,
                tls,
            } => write!(
                f,
                "open {} connection {} to {host}:{port} for tracker {}",
                if *tls { "TLS" } else { "TCP" },
                conn.0,
                tracker.0
            ),
            ActionPrint::SendTcp { conn, len, hash } => write!(
                f,
                "send {len} bytes on tracker connection {} (hash {hash:016x})",
                conn.0
            ),
            ActionPrint::CloseTcp { conn } => write!(f, "close tracker connection {}", conn.0),
            ActionPrint::SendUdp {
                tracker,
                addr,
                len,
                hash,
            } => write!(
                f,
                "send a {len}-byte datagram to {addr} for tracker {} (hash {hash:016x})",
                tracker.0
            ),
        }
    }
}

/// An event as a trace stores it: swarm events whole (they carry no payloads), the task's
/// other events (start-up check, trackers) as their one-line text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPrint {
    /// A swarm event.
    Session(Event),
    /// Another event's text.
    Other(String),
}

impl fmt::Display for EventPrint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventPrint::Session(e @ Event::PeerConnected { peer_id, .. }) => {
                write!(f, "event: {e} (id {})", to_hex(peer_id))
            }
            EventPrint::Session(e) => write!(f, "event: {e}"),
            EventPrint::Other(text) => write!(f, "event: {text}"),
        }
    }
}

/// Writes a trace record by record. Use it directly when something else owns the task (or a
/// bare session, as a simulation does) and reports each input and output through hooks;
/// otherwise use a [`Recorder`].
///
/// I/O errors do not panic and do not stop the caller: the first one is kept (see
/// [`TraceWriter::error`]), later records are dropped, and [`TraceWriter::finish`] returns it.
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    last: Time,
    events: bool,
    error: Option<io::Error>,
}

/// Buffered records are written out once they reach this size.
const FLUSH_AT: usize = 64 * 1024;

impl<W: Write> TraceWriter<W> {
    /// Starts a trace with its header. Record the actions (and events, when `header.events`)
    /// the task queued at construction before the first input.
    pub fn new(out: W, header: &TraceHeader) -> TraceWriter<W> {
        let mut buf = Vec::with_capacity(FLUSH_AT + 1024);
        codec::encode_header(&mut buf, header);
        TraceWriter {
            out,
            buf,
            last: header.start,
            events: header.events,
            error: None,
        }
    }

    /// Records an input, before the task gets it.
    pub fn input(&mut self, now: Time, input: &TorrentInput<'_>) {
        if self.error.is_some() {
            return;
        }
        let payload = codec::encode_input(&mut self.buf, self.last, now, input);
        self.last = now;
        if let Some(p) = payload {
            if self.buf.len() + p.len() > FLUSH_AT {
                // Large payloads go straight out instead of through the buffer.
                self.write_buf();
                self.write(p);
            } else {
                self.buf.extend_from_slice(p);
            }
        }
        self.maybe_flush();
    }

    /// Records an action the task returned, in [`TorrentTask::poll_action`] order.
    pub fn action(&mut self, action: &TorrentAction) {
        if self.error.is_none() {
            ActionPrint::of(action).encode(&mut self.buf);
            self.maybe_flush();
        }
    }

    /// Records a swarm input of a bare [`Session`](crate::session::Session) that stands in for
    /// a task without trackers (a simulation's node), as that task would record it.
    pub fn session_input(&mut self, now: Time, input: &crate::session::Input<'_>) {
        self.input(now, &TorrentInput::Session(input.clone()));
    }

    /// Records a bare session's action as its task would: announces stay inside a task, so
    /// they are left out.
    pub fn session_action(&mut self, action: &crate::session::Action) {
        if self.error.is_none() && !matches!(action, crate::session::Action::Announce { .. }) {
            ActionPrint::of_session(action).encode(&mut self.buf);
            self.maybe_flush();
        }
    }

    /// Records an event as a trace stores it (for tools that rewrite traces).
    pub fn event_print(&mut self, event: &EventPrint) {
        if self.events && self.error.is_none() {
            event.encode(&mut self.buf);
            self.maybe_flush();
        }
    }

    /// Records an event the task returned; ignored when the header says no events.
    pub fn event(&mut self, event: &TorrentEvent) {
        if self.events && self.error.is_none() {
            EventPrint::of(event).encode(&mut self.buf);
            self.maybe_flush();
        }
    }

    /// The first I/O error met, if any: the trace is incomplete from there on.
    pub fn error(&self) -> Option<&io::Error> {
        self.error.as_ref()
    }

    /// Writes the end record and flushes; returns the writer, or the first I/O error.
    pub fn finish(mut self) -> io::Result<W> {
        if self.error.is_none() {
            self.buf.push(codec::END);
            self.write_buf();
        }
        if self.error.is_none()
            && let Err(e) = self.out.flush()
        {
            self.error = Some(e);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }

    fn maybe_flush(&mut self) {
        if self.buf.len() >= FLUSH_AT {
            self.write_buf();
        }
    }

    fn write_buf(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.write(&buf);
        self.buf = buf;
        self.buf.clear();
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.error.is_none()
            && let Err(e) = self.out.write_all(bytes)
        {
            self.error = Some(e);
        }
    }
}

/// A [`TorrentTask`] that records its run: use it in place of the task (`--record`). Its
/// `handle_input` / `poll_*` methods behave like the task's.
///
/// After each input it drains the task's actions and events at once (recording them) and
/// hands them out from its own queues, so the trace's order is the task's order whatever the
/// caller does in between. Getters go through [`Recorder::task`] (for example
/// [`TorrentTask::next_handle`] before an [`Input::Incoming`](crate::session::Input::Incoming)).
#[derive(Debug)]
pub struct Recorder<W: Write> {
    task: TorrentTask,
    writer: TraceWriter<W>,
    actions: VecDeque<TorrentAction>,
    events: VecDeque<TorrentEvent>,
}

impl<W: Write> Recorder<W> {
    /// Builds the task as [`TorrentTask::new`] does and starts a trace of it on `out`.
    pub fn new(
        out: W,
        config: TorrentConfig,
        torrent: Torrent,
        start_state: StartState,
        now: Time,
    ) -> Recorder<W> {
        let header = TraceHeader {
            events: true,
            config,
            torrent,
            start_state,
            start: now,
        };
        let writer = TraceWriter::new(out, &header);
        let mut r = Recorder {
            task: header.task(),
            writer,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        r.drain();
        r
    }

    /// Records one input and gives it to the task (see [`TorrentTask::handle_input`]).
    pub fn handle_input(&mut self, now: Time, input: TorrentInput<'_>) {
        self.writer.input(now, &input);
        self.task.handle_input(now, input);
        self.drain();
    }

    /// The next thing the driver must do, until `None` (see [`TorrentTask::poll_action`]).
    pub fn poll_action(&mut self) -> Option<TorrentAction> {
        self.actions.pop_front()
    }

    /// The next thing to show the user, until `None` (see [`TorrentTask::poll_event`]).
    pub fn poll_event(&mut self) -> Option<TorrentEvent> {
        self.events.pop_front()
    }

    /// When the next timeout is due (see [`TorrentTask::poll_timeout`]).
    pub fn poll_timeout(&self) -> Option<Time> {
        self.task.poll_timeout()
    }

    /// The recorded task, for its getters.
    pub fn task(&self) -> &TorrentTask {
        &self.task
    }

    /// The first I/O error met while writing the trace, if any. The task runs on regardless.
    pub fn error(&self) -> Option<&io::Error> {
        self.writer.error()
    }

    /// Ends the trace (end record, flush) and returns the task and the writer, or the first
    /// I/O error.
    pub fn finish(self) -> (TorrentTask, io::Result<W>) {
        (self.task, self.writer.finish())
    }

    fn drain(&mut self) {
        while let Some(a) = self.task.poll_action() {
            self.writer.action(&a);
            self.actions.push_back(a);
        }
        while let Some(e) = self.task.poll_event() {
            self.writer.event(&e);
            self.events.push_back(e);
        }
    }
}
