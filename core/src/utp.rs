//! uTP (BEP 29): reliable byte streams over UDP with LEDBAT congestion control, sans-IO.
//!
//! [`Endpoint`] is shaped like quinn-proto's: it owns every connection (in a slab, addressed by
//! [`ConnectionHandle`]), routes each datagram by (source address, connection id), accepts
//! incoming SYNs, and knows no socket or clock. The driver runs this loop around it:
//!
//! 1. Feed input: a datagram that [`is_utp`] accepts with [`Endpoint::handle_datagram`], a dial
//!    with [`Endpoint::connect`], application bytes with [`Endpoint::write`] (it takes what fits
//!    in the send buffer and says how much: backpressure), [`Endpoint::close`], or
//!    [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`] has passed (an early or
//!    repeated call does nothing).
//! 2. Drain [`Endpoint::poll_transmit`] until `None`, sending each datagram. Acknowledgements
//!    are made here, lazily, so datagrams handled back to back are acked once.
//! 3. Drain [`Endpoint::poll_event`] until `None`: [`Event::Incoming`], [`Event::Connected`],
//!    [`Event::Readable`] (then call [`Endpoint::read`] until it returns 0: the event is edge
//!    triggered), [`Event::Writable`] (after a short write, once a quarter of the send buffer
//!    is free), [`Event::Closed`] (the handle is dead after it).
//! 4. Sleep until [`Endpoint::poll_timeout`] or the next datagram.
//!
//! Every call takes time from the last `now` the endpoint was given; time never goes backwards
//! (a late `now` counts as the latest seen). Randomness (connection ids, initial sequence
//! numbers) comes from [`UtpConfig::seed`].
//!
//! Choices, within BEP 29 and as libtorrent behaves:
//! - Packets carry at most [`MAX_PAYLOAD`] = 1,400 bytes of payload: 20 bytes of header, a
//!   selective ACK of up to 28 bytes (+2) and the payload make at most 1,450 bytes, which fits a
//!   1,500-byte MTU under IPv6 (40 + 8 bytes of headers) and IPv4. No path MTU discovery.
//! - Retransmission timeout per RFC 6298 (SRTT, RTTVAR, Karn's rule: only packets sent once are
//!   timed), at least 500 ms as BEP 29 says ([`conn::MIN_RTO`]), 1 s before the first sample,
//!   doubling per timeout up to 30 s; six timeouts in a row end the connection.
//! - Fast retransmit after 3 duplicate acks, or when 3 packets after a hole are selectively
//!   acked; the window halves once per window of data (never below one MSS); a timeout drops it
//!   to one MSS and restarts slow start.
//! - LEDBAT (RFC 6817) with a 100 ms target ([`UtpConfig::target_delay`]): the base delay is the
//!   lowest one-way delay sample per minute over 10 minutes, the current delay the lowest of the
//!   last 4; the window grows by up to one MSS per RTT below target and shrinks as much above.
//!   Slow start (doubling per RTT) runs until a loss or a queuing delay of half the target.
//! - A connection accepted from a SYN is reported ([`Event::Incoming`]) only when the initiator's
//!   second packet arrives (a BitTorrent initiator always sends first); until then it is
//!   half-open, and the oldest half-open one gives way when [`UtpConfig::max_half_open`] are.

pub mod conn;
mod delay;
mod endpoint;
pub mod packet;

#[cfg(test)]
mod tests;

use core::time::Duration;

pub use conn::CloseReason;
pub use endpoint::{ConnectError, ConnectionHandle, ConnectionInfo, Endpoint, Event};
pub use packet::is_utp;

/// Most payload bytes in one packet (see the module doc for the MTU arithmetic).
pub const MAX_PAYLOAD: usize = 1400;

/// Settings of an [`Endpoint`] and its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtpConfig {
    /// Seed of the endpoint's random numbers (connection ids, initial sequence numbers).
    pub seed: u64,
    /// Whether incoming SYNs are accepted.
    pub accept: bool,
    /// Connections at once (dialed and accepted, half-open included); SYNs beyond get a reset.
    pub max_connections: usize,
    /// Half-open connections of each direction: dials waiting for an answer (further dials are
    /// refused) and accepted SYNs waiting for a second packet (the oldest gives way).
    pub max_half_open: usize,
    /// Bytes a connection holds to send (queued plus unacknowledged).
    pub send_buffer: usize,
    /// Bytes a connection holds received (unread plus out of order); also the window we
    /// advertise.
    pub recv_buffer: usize,
    /// Largest congestion window in bytes.
    pub max_cwnd: usize,
    /// LEDBAT's target queuing delay.
    pub target_delay: Duration,
    /// SYNs a dial sends before it fails with [`CloseReason::ConnectTimeout`] (1 s apart, then
    /// doubling: 3 fail at 7 s, 2 at 3 s). A client that falls back to TCP wants few.
    pub max_syns: u32,
}

impl Default for UtpConfig {
    fn default() -> UtpConfig {
        UtpConfig {
            seed: 0,
            accept: true,
            max_connections: 512,
            max_half_open: 64,
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_cwnd: 1 << 20,
            target_delay: Duration::from_millis(100),
            max_syns: conn::MAX_SYNS,
        }
    }
}
