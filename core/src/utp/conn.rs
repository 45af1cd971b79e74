//! One uTP connection: packets and time in, packets, events and a deadline out.
//!
//! The [`super::Endpoint`] owns these and routes datagrams to them by (address, connection id);
//! a `Connection` knows neither its address nor the socket. Methods:
//! - `handle_packet(now, packet)`, `handle_timeout(now)`: network and timer input;
//! - `write`, `read`, `close`: the application's byte stream;
//! - `poll_transmit(out)`, `poll_event()`, `poll_timeout()`: drained after every input.
//!
//! Acknowledgements are produced lazily by `poll_transmit`, so several datagrams handled before
//! a drain are answered by one `ST_STATE` (or by the data packet that carries the ack anyway).

use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;

use super::delay::DelayTracker;
use super::packet::{self, Header, MAX_SACK_BYTES, Packet, PacketType};
use super::{MAX_PAYLOAD, UtpConfig};
use crate::time::Time;

/// Lowest retransmission timeout: BEP 29's `max(rtt + 4 * rtt_var, 500 ms)`.
pub const MIN_RTO: Duration = Duration::from_millis(500);
/// Retransmission timeout before the first RTT sample (RFC 6298).
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Highest retransmission timeout after backoff.
pub const MAX_RTO: Duration = Duration::from_secs(30);
/// Consecutive retransmission timeouts after which the connection is given up.
pub const MAX_TIMEOUTS: u32 = 6;
/// SYNs sent before a dial fails by default (at 0, 1 and 3 s; failure at 7 s); see
/// [`UtpConfig::max_syns`].
pub const MAX_SYNS: u32 = 3;
/// An `ST_STATE` goes out after this long without sending anything (NAT bindings, and the
/// peer's idle timer).
pub const KEEPALIVE: Duration = Duration::from_secs(29);
/// A connection that hears nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// An accepted connection whose initiator never sends a second packet is forgotten after this.
pub const SYN_RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// After `close` (or the peer's FIN), the FIN exchange and the queued data get this long.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most packets in flight (and so the furthest ahead a receiver must buffer): below the peer's
/// reorder window (ours is [`MAX_REORDER`]) and far below half the sequence space.
pub const MAX_UNACKED: usize = 1000;
/// Furthest ahead of `ack_nr` a received packet is kept; beyond it packets are dropped.
pub const MAX_REORDER: usize = 1024;
/// LEDBAT gain: at most one MSS of growth per RTT when the delay is far below target.
const GAIN: i64 = 1;
/// Duplicate acks (or packets selectively acked after a hole) that declare a packet lost.
const DUP_ACK_THRESHOLD: usize = 3;
/// Initial congestion window, in packets (RFC 6817).
const INITIAL_CWND_PACKETS: usize = 2;
/// Slow start ends at this window (then LEDBAT's ack-clocked growth takes over): doubling
/// further sends bursts that overflow a receiver's socket buffer (about 100 full packets with
/// Linux's default 208 KiB) before any delay shows.
const INITIAL_SSTHRESH: usize = 64 * MAX_PAYLOAD;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer finished its stream (`ST_FIN`) and every byte before it was read.
    Finished,
    /// The peer reset the connection (`ST_RESET`).
    Reset,
    /// The peer answered our SYN with a reset.
    Refused,
    /// No answer to [`UtpConfig::max_syns`] SYNs.
    ConnectTimeout,
    /// Data went unacknowledged through [`MAX_TIMEOUTS`] retransmission timeouts.
    TimedOut,
    /// Nothing heard for [`IDLE_TIMEOUT`].
    Idle,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Finished => "the peer closed the uTP stream",
            CloseReason::Reset => "the peer reset the uTP connection",
            CloseReason::Refused => "the peer refused the uTP connection",
            CloseReason::ConnectTimeout => "no answer to the uTP SYN",
            CloseReason::TimedOut => "uTP data unacknowledged through repeated timeouts",
            CloseReason::Idle => "nothing heard on the uTP connection for 2 minutes",
        })
    }
}

/// What a connection tells its application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    Connected,
    Readable,
    Writable,
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We sent a SYN and wait for the `ST_STATE` answering it.
    SynSent,
    /// We answered a SYN and wait for the initiator's next packet (not yet told to the app).
    SynRecv,
    Connected,
    /// Nothing more to send or receive (a reset may still be queued).
    Closed,
}

/// A packet we sent and the peer has not acknowledged cumulatively.
#[derive(Debug)]
struct Sent {
    seq: u16,
    fin: bool,
    payload: Vec<u8>,
    sent_at: Time,
    transmissions: u32,
    /// Acknowledged by a selective ACK (its bytes no longer count in flight).
    sacked: bool,
    /// Declared lost, waiting to be sent again (its bytes no longer count in flight).
    lost: bool,
    /// Already resent after a duplicate ack or SACK hole; only a timeout resends it again.
    fast_resent: bool,
}

/// `a < b` in wrapping sequence arithmetic.
fn seq_lt(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) < 0
}

fn micros(now: Time) -> u32 {
    (now.as_nanos() / 1_000) as u32
}

/// One uTP connection's state machine.
#[derive(Debug)]
pub(crate) struct Connection {
    config: UtpConfig,
    state: State,
    recv_id: u16,
    send_id: u16,
    now: Time,
    events: VecDeque<ConnEvent>,

    // Send side.
    /// Sequence number of the next packet we send.
    seq_nr: u16,
    syn_seq: u16,
    syn_pending: bool,
    syns_sent: u32,
    unacked: VecDeque<Sent>,
    /// Payload bytes of `unacked`, selectively acknowledged ones included: they sit in the
    /// peer's reorder buffer, so they count against its advertised window.
    unacked_bytes: usize,
    unsent: VecDeque<u8>,
    /// Payload bytes sent, not acknowledged, not declared lost.
    in_flight: usize,
    resend_pending: usize,
    cwnd: usize,
    ssthresh: usize,
    slow_start: bool,
    /// A send was held back by the congestion window since the last ack (growth only then).
    cwnd_limited: bool,
    /// Losses of packets sent before this sequence number belong to the last window halving.
    recovery_until: Option<u16>,
    dup_acks: usize,
    peer_wnd: usize,
    want_writable: bool,

    // Round trip.
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    timeouts: u32,
    rto_deadline: Option<Time>,
    delay: DelayTracker,

    // Receive side.
    /// Last sequence number received in order.
    ack_nr: u16,
    /// Index `i` holds packet `ack_nr + 1 + i` if it arrived early.
    reorder: VecDeque<Option<Vec<u8>>>,
    reorder_bytes: usize,
    readable: VecDeque<u8>,
    readable_notified: bool,
    peer_fin: Option<u16>,
    eof: bool,
    ack_pending: bool,
    /// Our clock minus the peer's timestamp, from its latest packet.
    reply_micro: u32,
    last_adv_wnd: usize,

    // Timers and closing.
    last_recv: Time,
    last_send: Time,
    /// The application is gone (it closed, or was told `Closed`): drop incoming bytes.
    app_gone: bool,
    close_requested: bool,
    fin_acked: bool,
    fin_sent: bool,
    close_deadline: Option<Time>,
    reset_pending: bool,
}

impl Connection {
    fn new(config: UtpConfig, now: Time, recv_id: u16, send_id: u16, seq: u16) -> Connection {
        Connection {
            state: State::SynSent,
            recv_id,
            send_id,
            now,
            events: VecDeque::new(),
            seq_nr: seq,
            syn_seq: seq,
            syn_pending: false,
            syns_sent: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            unsent: VecDeque::new(),
            in_flight: 0,
            resend_pending: 0,
            cwnd: INITIAL_CWND_PACKETS * MAX_PAYLOAD,
            ssthresh: INITIAL_SSTHRESH.min(config.max_cwnd),
            slow_start: true,
            cwnd_limited: false,
            recovery_until: None,
            dup_acks: 0,
            peer_wnd: config.recv_buffer,
            want_writable: false,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            timeouts: 0,
            rto_deadline: None,
            delay: DelayTracker::new(now),
            ack_nr: 0,
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            readable: VecDeque::new(),
            readable_notified: false,
            peer_fin: None,
            eof: false,
            ack_pending: false,
            reply_micro: 0,
            last_adv_wnd: config.recv_buffer,
            last_recv: now,
            last_send: now,
            app_gone: false,
            close_requested: false,
            fin_acked: false,
            fin_sent: false,
            close_deadline: None,
            reset_pending: false,
            config,
        }
    }

    /// A connection we dial: its SYN goes out at the next `poll_transmit`.
    pub(crate) fn connect(config: UtpConfig, now: Time, recv_id: u16, seq: u16) -> Connection {
        let mut c = Connection::new(config, now, recv_id, recv_id.wrapping_add(1), seq);
        c.seq_nr = seq.wrapping_add(1);
        c.syn_pending = true;
        c
    }

    /// A connection answering `syn` (whose `conn_id` is the initiator's receive id).
    pub(crate) fn accept(config: UtpConfig, now: Time, syn: &Header, seq: u16) -> Connection {
        let mut c = Connection::new(config, now, syn.conn_id.wrapping_add(1), syn.conn_id, seq);
        c.state = State::SynRecv;
        c.ack_nr = syn.seq_nr;
        c.syn_seq = syn.seq_nr;
        c.peer_wnd = syn.wnd_size as usize;
        c.reply_micro = micros(now).wrapping_sub(syn.timestamp_us);
        c.ack_pending = true;
        c
    }

    /// The id the peer puts in the packets it sends us.
    pub(crate) fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// The id we put in the packets we send.
    pub(crate) fn send_id(&self) -> u16 {
        self.send_id
    }

    /// Whether this is a dial still waiting for its answer.
    pub(crate) fn is_syn_sent(&self) -> bool {
        self.state == State::SynSent
    }

    /// Whether this connection waits for its initiator's second packet (not reported yet).
    pub(crate) fn is_syn_recv(&self) -> bool {
        self.state == State::SynRecv
    }

    /// Whether the connection can be forgotten: closed with nothing left to send.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Closed && !self.reset_pending && !self.ack_pending
    }

    /// The current congestion window in bytes.
    pub(crate) fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// The smoothed round-trip time, once measured.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The current retransmission timeout.
    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }

    /// Packets held in the receive reorder buffer (slots, including holes).
    pub(crate) fn reorder_len(&self) -> usize {
        self.reorder.len()
    }

    /// Bytes held out of order.
    pub(crate) fn reorder_bytes(&self) -> usize {
        self.reorder_bytes
    }

    /// Bytes received in order and not yet read.
    pub(crate) fn readable_len(&self) -> usize {
        self.readable.len()
    }

    pub(crate) fn advance(&mut self, now: Time) {
        // Time never goes backwards here: a late `now` counts as the latest seen.
        if now > self.now {
            self.now = now;
        }
    }

    fn recv_window(&self) -> usize {
        self.config
            .recv_buffer
            .saturating_sub(self.readable.len() + self.reorder_bytes)
    }

    fn send_space(&self) -> usize {
        let queued = self.unsent.len() + self.unacked_bytes;
        self.config.send_buffer.saturating_sub(queued)
    }

    /// Queues bytes to send; returns how many were taken (fewer when the send buffer is full,
    /// and then `Writable` follows once space frees). Nothing is taken after `close`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> usize {
        if self.close_requested || self.state == State::Closed {
            return 0;
        }
        let n = bytes.len().min(self.send_space());
        self.unsent.extend(&bytes[..n]);
        if n < bytes.len() {
            self.want_writable = true;
        }
        n
    }

    /// Copies received bytes into `buf`; returns how many (0 when none are waiting).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> usize {
        let before = self.recv_window();
        let n = buf.len().min(self.readable.len());
        let (a, b) = self.readable.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.readable.drain(..n);
        if self.readable.is_empty() {
            self.readable_notified = false;
        }
        let after = self.recv_window();
        // Tell a sender that stopped at our window that it reopened.
        let half = self.config.recv_buffer / 2;
        if self.state == State::Connected
            && self.last_adv_wnd < half
            && after >= half
            && before < half
        {
            self.ack_pending = true;
        }
        self.check_finished();
        n
    }

    /// The application is done: queued bytes still go out, then a FIN; nothing more is read.
    pub(crate) fn close(&mut self) {
        self.app_gone = true;
        self.readable.clear();
        self.begin_close();
        if self.state == State::SynSent || self.state == State::SynRecv {
            // Nothing was established: just leave (a reset tells an acceptor at once).
            self.reset_pending = self.state == State::SynRecv || self.syns_sent > 0;
            self.state = State::Closed;
        }
    }

    fn begin_close(&mut self) {
        if !self.close_requested {
            self.close_requested = true;
            self.close_deadline = Some(self.now + CLOSE_TIMEOUT);
        }
    }

    /// Ends the connection: `reason` goes to the application unless it is gone already.
    fn terminate(&mut self, reason: CloseReason, send_reset: bool) {
        if self.state == State::Closed {
            return;
        }
        let told = self.state != State::SynRecv;
        self.state = State::Closed;
        self.ack_pending = false;
        self.reset_pending = send_reset;
        self.unsent.clear();
        self.readable.clear();
        if told && !self.app_gone {
            self.events.push_back(ConnEvent::Closed(reason));
        }
        self.app_gone = true;
    }

    /// Once the peer's FIN is in order and everything before it was read: `Closed(Finished)`.
    fn check_finished(&mut self) {
        if self.eof && !self.app_gone && self.readable.is_empty() {
            self.events
                .push_back(ConnEvent::Closed(CloseReason::Finished));
            self.app_gone = true;
        }
        if self.eof && self.fin_acked && self.state != State::Closed {
            self.state = State::Closed;
        }
    }

    /// Handles one packet addressed to this connection.
    pub(crate) fn handle_packet(&mut self, now: Time, p: &Packet<'_>) {
        self.advance(now);
        if self.state == State::Closed {
            return;
        }
        let h = &p.header;
        if h.ty == PacketType::Reset {
            let reason = if self.state == State::SynSent {
                CloseReason::Refused
            } else {
                CloseReason::Reset
            };
            self.terminate(reason, false);
            return;
        }
        self.last_recv = self.now;
        self.reply_micro = micros(self.now).wrapping_sub(h.timestamp_us);
        self.peer_wnd = h.wnd_size as usize;
        if h.timestamp_diff_us != 0 {
            self.delay.sample(self.now, h.timestamp_diff_us);
        }
        match self.state {
            State::SynSent => {
                if h.ty != PacketType::State || h.ack_nr != self.syn_seq {
                    return;
                }
                self.state = State::Connected;
                self.syn_pending = false;
                self.rto_deadline = None;
                // The SYN-ACK's seq_nr is the acceptor's next packet.
                self.ack_nr = h.seq_nr.wrapping_sub(1);
                if self.syns_sent == 1 {
                    self.rtt_sample(self.now.saturating_since(self.last_send));
                }
                self.events.push_back(ConnEvent::Connected);
                return;
            }
            State::SynRecv => {
                if h.ty == PacketType::Syn {
                    if h.seq_nr == self.syn_seq {
                        self.ack_pending = true;
                    }
                    return;
                }
                self.state = State::Connected;
                self.events.push_back(ConnEvent::Connected);
            }
            State::Connected => {
                if h.ty == PacketType::Syn {
                    // A retransmitted SYN: our SYN-ACK was lost.
                    if h.seq_nr == self.syn_seq {
                        self.ack_pending = true;
                    }
                    return;
                }
            }
            State::Closed => return,
        }
        self.on_ack(h.ack_nr, p.sack, h.ty == PacketType::State);
        if matches!(h.ty, PacketType::Data | PacketType::Fin) {
            self.on_data(h.seq_nr, h.ty == PacketType::Fin, p.payload);
        }
        self.check_finished();
        self.check_writable();
    }

    fn check_writable(&mut self) {
        if self.want_writable
            && !self.close_requested
            && self.state == State::Connected
            && self.send_space() >= self.config.send_buffer / 4
        {
            self.want_writable = false;
            self.events.push_back(ConnEvent::Writable);
        }
    }

    fn rtt_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + err / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO);
    }

    /// Takes a packet off the flight count (acked, or declared lost).
    fn leave_flight(p: &Sent, in_flight: &mut usize) {
        if !p.sacked && !p.lost {
            *in_flight -= p.payload.len();
        }
    }

    fn on_ack(&mut self, ack_nr: u16, sack: Option<&[u8]>, is_state: bool) {
        let Some(front) = self.unacked.front() else {
            return;
        };
        let base = front.seq;
        let acked = usize::from(ack_nr.wrapping_sub(base).wrapping_add(1));
        if acked > self.unacked.len() {
            // An old ack, or one for packets never sent: ignore it.
            return;
        }
        let mut acked_bytes = 0;
        let mut sample = None;
        for _ in 0..acked {
            let Some(p) = self.unacked.pop_front() else {
                break;
            };
            self.unacked_bytes -= p.payload.len();
            Self::leave_flight(&p, &mut self.in_flight);
            if p.lost {
                self.resend_pending -= 1;
            }
            if !p.sacked {
                acked_bytes += p.payload.len();
                if p.transmissions == 1 {
                    sample = Some(self.now.saturating_since(p.sent_at));
                }
            }
            if p.fin {
                self.fin_acked = true;
            }
        }
        if acked > 0 {
            self.dup_acks = 0;
            self.timeouts = 0;
        } else if is_state && sack.is_none() {
            self.dup_acks += 1;
            if self.dup_acks == DUP_ACK_THRESHOLD {
                self.declare_lost(0);
            }
        }
        if let Some(mask) = sack {
            // Bit i is ack_nr + 2 + i, which is unacked[i + 1] now that ack_nr + 1 leads.
            let bits = (mask.len() * 8).min(self.unacked.len().saturating_sub(1));
            for i in 0..bits {
                if !packet::sack_bit(mask, i) {
                    continue;
                }
                let p = &mut self.unacked[i + 1];
                if p.sacked {
                    continue;
                }
                Self::leave_flight(p, &mut self.in_flight);
                if p.lost {
                    p.lost = false;
                    self.resend_pending -= 1;
                }
                p.sacked = true;
                acked_bytes += p.payload.len();
                if p.transmissions == 1 {
                    sample = Some(self.now.saturating_since(p.sent_at));
                }
            }
            // A packet with DUP_ACK_THRESHOLD selectively acked packets after it is lost.
            let mut later = 0;
            for i in (0..=bits).rev() {
                if self.unacked[i].sacked {
                    later += 1;
                } else if later >= DUP_ACK_THRESHOLD {
                    self.declare_lost(i);
                }
            }
        }
        if let Some(r) = sample {
            self.rtt_sample(r);
        }
        if acked_bytes > 0 {
            self.grow_cwnd(acked_bytes);
        }
        if acked > 0 || acked_bytes > 0 {
            self.rto_deadline = if self.in_flight > 0 || self.unacked.iter().any(|p| !p.sacked) {
                Some(self.now + self.rto)
            } else {
                None
            };
        }
        self.cwnd_limited = false;
    }

    /// Declares `unacked[i]` lost by a duplicate ack or SACK hole: resend it, halve the window.
    fn declare_lost(&mut self, i: usize) {
        let Some(p) = self.unacked.get_mut(i) else {
            return;
        };
        if p.sacked || p.lost || p.fast_resent {
            return;
        }
        Self::leave_flight(p, &mut self.in_flight);
        p.lost = true;
        p.fast_resent = true;
        self.resend_pending += 1;
        let seq = p.seq;
        if self.recovery_until.is_none_or(|until| !seq_lt(seq, until)) {
            self.cwnd = (self.cwnd / 2).max(MAX_PAYLOAD);
            self.ssthresh = self.cwnd;
            self.slow_start = false;
            self.recovery_until = Some(self.seq_nr);
        }
    }

    /// LEDBAT (RFC 6817): grow while the queuing delay is below target, shrink above it.
    fn grow_cwnd(&mut self, acked: usize) {
        let target = i64::try_from(self.config.target_delay.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let queuing = i64::from(self.delay.queuing_us().unwrap_or(0));
        if self.slow_start && queuing > target / 2 {
            self.slow_start = false;
            self.ssthresh = self.cwnd;
        }
        let cwnd = self.cwnd as i64;
        let acked = acked as i64;
        let delta = if self.slow_start {
            if self.cwnd_limited { acked } else { 0 }
        } else {
            let off = (target - queuing).clamp(-target, target);
            let d = GAIN * off * acked * MAX_PAYLOAD as i64 / (target * cwnd);
            if d > 0 && !self.cwnd_limited {
                0
            } else {
                d.max(-acked)
            }
        };
        let max = self.config.max_cwnd as i64;
        self.cwnd = (cwnd + delta).clamp(MAX_PAYLOAD as i64, max.max(MAX_PAYLOAD as i64)) as usize;
        if self.slow_start && self.cwnd >= self.ssthresh {
            self.slow_start = false;
        }
    }

    fn on_data(&mut self, seq: u16, fin: bool, payload: &[u8]) {
        self.ack_pending = true;
        if self.eof {
            return;
        }
        let dist = usize::from(seq.wrapping_sub(self.ack_nr.wrapping_add(1)));
        if dist >= MAX_REORDER {
            // Old (a duplicate) or beyond our window: the ack says where we are.
            return;
        }
        if self.peer_fin.is_some_and(|end| seq_lt(end, seq)) {
            // Nothing after the FIN counts.
            return;
        }
        if fin {
            if self.peer_fin.is_some_and(|end| end != seq) {
                return;
            }
            self.peer_fin = Some(seq);
        }
        let keep = if self.app_gone { 0 } else { payload.len() };
        if dist == 0 {
            if keep > 0 && self.readable.len() + self.reorder_bytes + keep > self.config.recv_buffer
            {
                return;
            }
            self.deliver(seq, &payload[..keep]);
            if !self.reorder.is_empty() {
                self.reorder.pop_front();
            }
            while !self.eof {
                match self.reorder.front() {
                    Some(Some(_)) => {}
                    _ => break,
                }
                let Some(Some(bytes)) = self.reorder.pop_front() else {
                    break;
                };
                self.reorder_bytes -= bytes.len();
                let next = self.ack_nr.wrapping_add(1);
                self.deliver(next, &bytes);
            }
            if self.eof {
                self.reorder.clear();
                self.reorder_bytes = 0;
            }
        } else {
            if self.reorder.len() > dist && self.reorder[dist].is_some() {
                return;
            }
            // Room for one packet stays free so the one filling the hole always fits.
            if self.readable.len() + self.reorder_bytes + keep + MAX_PAYLOAD
                > self.config.recv_buffer
            {
                return;
            }
            if self.reorder.len() <= dist {
                self.reorder.resize(dist + 1, None);
            }
            self.reorder[dist] = Some(payload[..keep].to_vec());
            self.reorder_bytes += keep;
        }
    }

    /// Takes packet `seq` (the next in order) into the stream.
    fn deliver(&mut self, seq: u16, bytes: &[u8]) {
        self.ack_nr = seq;
        if self.peer_fin == Some(seq) {
            self.eof = true;
            self.begin_close();
            return;
        }
        // Bytes of a connection whose application is gone (held out of order when it closed)
        // are dropped: nobody reads them, and no event may name the dead handle.
        if !bytes.is_empty() && !self.app_gone {
            self.readable.extend(bytes);
            if !self.readable_notified {
                self.readable_notified = true;
                self.events.push_back(ConnEvent::Readable);
            }
        }
    }

    fn header(&self, ty: PacketType, seq_nr: u16) -> Header {
        Header {
            ty,
            conn_id: if ty == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp_us: micros(self.now),
            timestamp_diff_us: self.reply_micro,
            wnd_size: u32::try_from(self.recv_window()).unwrap_or(u32::MAX),
            seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    /// The selective ACK of what arrived past a hole, at most [`MAX_SACK_BYTES`].
    fn sack_mask(&self, mask: &mut [u8; MAX_SACK_BYTES]) -> Option<usize> {
        if self.reorder.len() < 2 {
            return None;
        }
        let bits = (self.reorder.len() - 1).min(MAX_SACK_BYTES * 8);
        let len = bits.div_ceil(32) * 4;
        mask[..len].fill(0);
        for i in 0..bits {
            if self.reorder[i + 1].is_some() {
                mask[i / 8] |= 1 << (i % 8);
            }
        }
        Some(len)
    }

    fn emit(&mut self, ty: PacketType, seq_nr: u16, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        let header = self.header(ty, seq_nr);
        let mut mask = [0u8; MAX_SACK_BYTES];
        let sack = self.sack_mask(&mut mask).map(|len| &mask[..len]);
        packet::encode(&header, sack, payload, out);
        self.last_adv_wnd = header.wnd_size as usize;
        self.ack_pending = false;
        self.last_send = self.now;
    }

    /// Whether `len` more bytes may go out: within the congestion window and, for new data,
    /// within the peer's window less one packet. That packet of room is for a retransmission:
    /// a receiver whose buffer is full of packets after a hole (libtorrent) drops the one that
    /// would fill it, and the connection stalls.
    fn send_allowed(&mut self, len: usize, new_data: bool) -> bool {
        // One packet may always be in flight: it probes a closed window and restarts after a
        // timeout.
        if self.in_flight == 0 {
            return true;
        }
        let peer_room = if new_data {
            self.peer_wnd.saturating_sub(MAX_PAYLOAD)
        } else {
            self.peer_wnd
        };
        if self.in_flight + len <= self.cwnd.min(peer_room) {
            true
        } else {
            self.cwnd_limited |= self.in_flight + len > self.cwnd;
            false
        }
    }

    /// Writes the next datagram into `out` (cleared first); `false` when there is none.
    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.reset_pending {
            self.reset_pending = false;
            out.clear();
            let header = self.header(PacketType::Reset, self.seq_nr);
            packet::encode(&header, None, &[], out);
            return true;
        }
        match self.state {
            State::Closed => {
                // The ack of the peer's FIN that closed us still goes out.
                if self.ack_pending {
                    let seq = self.seq_nr;
                    self.emit(PacketType::State, seq, &[], out);
                    return true;
                }
                return false;
            }
            State::SynSent => {
                if !self.syn_pending {
                    return false;
                }
                self.syn_pending = false;
                self.syns_sent += 1;
                let seq = self.syn_seq;
                self.emit(PacketType::Syn, seq, &[], out);
                self.rto_deadline = Some(self.now + self.rto);
                return true;
            }
            State::SynRecv | State::Connected => {}
        }
        if self.resend_pending > 0 {
            let idx = self.unacked.iter().position(|p| p.lost);
            if let Some(i) = idx {
                let len = self.unacked[i].payload.len();
                // The oldest packet (the hole the peer waits on) goes out at once, as in TCP's
                // fast retransmit; later ones wait for the window.
                if i == 0 || self.send_allowed(len, false) {
                    let payload = std::mem::take(&mut self.unacked[i].payload);
                    let (seq, fin) = (self.unacked[i].seq, self.unacked[i].fin);
                    let ty = if fin {
                        PacketType::Fin
                    } else {
                        PacketType::Data
                    };
                    self.emit(ty, seq, &payload, out);
                    let now = self.now;
                    let p = &mut self.unacked[i];
                    p.payload = payload;
                    p.lost = false;
                    p.transmissions += 1;
                    p.sent_at = now;
                    self.resend_pending -= 1;
                    self.in_flight += len;
                    self.rto_deadline.get_or_insert(now + self.rto);
                    return true;
                }
            }
        }
        if self.state == State::Connected
            && self.resend_pending == 0
            && self.unacked.len() < MAX_UNACKED
        {
            if !self.unsent.is_empty() {
                let len = self.unsent.len().min(MAX_PAYLOAD);
                if self.send_allowed(len, true) {
                    let payload: Vec<u8> = self.unsent.drain(..len).collect();
                    self.push_sent(PacketType::Data, payload, out);
                    self.check_writable();
                    return true;
                }
            } else if self.close_requested && !self.fin_sent {
                self.fin_sent = true;
                self.push_sent(PacketType::Fin, Vec::new(), out);
                return true;
            }
        }
        if self.ack_pending {
            let seq = self.seq_nr;
            self.emit(PacketType::State, seq, &[], out);
            return true;
        }
        false
    }

    fn push_sent(&mut self, ty: PacketType, payload: Vec<u8>, out: &mut Vec<u8>) {
        let seq = self.seq_nr;
        self.seq_nr = seq.wrapping_add(1);
        self.emit(ty, seq, &payload, out);
        self.in_flight += payload.len();
        self.rto_deadline.get_or_insert(self.now + self.rto);
        self.unacked_bytes += payload.len();
        self.unacked.push_back(Sent {
            seq,
            fin: ty == PacketType::Fin,
            payload,
            sent_at: self.now,
            transmissions: 1,
            sacked: false,
            lost: false,
            fast_resent: false,
        });
    }

    /// The next event for the application.
    pub(crate) fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.rto_deadline;
        let mut at = |d: Time| t = Some(t.map_or(d, |t| t.min(d)));
        match self.state {
            State::SynRecv => at(self.last_recv + SYN_RECV_TIMEOUT),
            State::Connected => {
                // Once the keepalive is owed (`ack_pending`), it waits for `poll_transmit`, not
                // for a timer: a deadline left in the past would have a driver spin.
                if !self.ack_pending {
                    at(self.last_send + KEEPALIVE);
                }
                at(self.last_recv + IDLE_TIMEOUT);
            }
            _ => {}
        }
        if let Some(d) = self.close_deadline {
            at(d);
        }
        t
    }

    /// Fires what is due at `now`; an early or repeated call does nothing.
    pub(crate) fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        let now = self.now;
        if self.state == State::Closed {
            return;
        }
        if self.close_deadline.is_some_and(|d| d <= now) {
            let clean = self.fin_acked;
            self.terminate(CloseReason::TimedOut, !clean);
            return;
        }
        match self.state {
            State::SynRecv if self.last_recv + SYN_RECV_TIMEOUT <= now => {
                self.terminate(CloseReason::ConnectTimeout, false);
                return;
            }
            State::Connected if self.last_recv + IDLE_TIMEOUT <= now => {
                self.terminate(CloseReason::Idle, true);
                return;
            }
            _ => {}
        }
        if self.rto_deadline.is_some_and(|d| d <= now) {
            self.rto_deadline = None;
            if self.state == State::SynSent {
                if self.syns_sent >= self.config.max_syns.max(1) {
                    self.terminate(CloseReason::ConnectTimeout, false);
                    return;
                }
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.syn_pending = true;
                return;
            }
            if !self.unacked.iter().any(|p| !p.sacked) {
                return;
            }
            self.timeouts += 1;
            if self.timeouts > MAX_TIMEOUTS {
                self.terminate(CloseReason::TimedOut, true);
                return;
            }
            for p in self.unacked.iter_mut() {
                if !p.sacked && !p.lost {
                    p.lost = true;
                    self.resend_pending += 1;
                }
                p.fast_resent = false;
            }
            self.in_flight = 0;
            self.ssthresh = (self.cwnd / 2).max(2 * MAX_PAYLOAD);
            self.cwnd = MAX_PAYLOAD;
            self.slow_start = true;
            self.recovery_until = Some(self.seq_nr);
            self.rto = (self.rto * 2).min(MAX_RTO);
        }
        if self.state == State::Connected && self.last_send + KEEPALIVE <= now {
            self.ack_pending = true;
        }
    }
}
