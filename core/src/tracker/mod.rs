//! Trackers: HTTP(S) (BEP 3, 23, 7) and UDP (BEP 15) announce and scrape, and the BEP 12
//! multi-tracker announce cycle, all without I/O.
//!
//! The driver talks only to [`manager::TrackerManager`]. It opens TCP connections (wrapping them in
//! TLS when asked), resolves host names for UDP trackers and moves bytes; every decision — what to
//! send, when to retry, which tracker to try next — is made here from the bytes and [`Time`]s it is
//! given. The lower layers are usable on their own: [`url`] parses tracker URLs, [`http`] builds
//! requests and parses replies incrementally, [`udp`] runs one UDP tracker's exchanges.
//!
//! [`Time`]: crate::time::Time

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::bencode::DecodeError;
use crate::id::{InfoHash, PeerId};

pub mod http;
pub mod manager;
pub mod udp;
pub mod url;

/// The `event` of an announce (BEP 3): what happened since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnounceEvent {
    /// A regular re-announce.
    None,
    /// The first announce to a tracker.
    Started,
    /// The download finished (sent once).
    Completed,
    /// We are leaving the swarm.
    Stopped,
}

impl AnnounceEvent {
    /// The value of the HTTP `event` parameter, `None` for a regular announce.
    pub fn http_name(self) -> Option<&'static str> {
        match self {
            AnnounceEvent::None => None,
            AnnounceEvent::Started => Some("started"),
            AnnounceEvent::Completed => Some("completed"),
            AnnounceEvent::Stopped => Some("stopped"),
        }
    }

    /// The BEP 15 event code.
    pub fn udp_code(self) -> u32 {
        match self {
            AnnounceEvent::None => 0,
            AnnounceEvent::Completed => 1,
            AnnounceEvent::Started => 2,
            AnnounceEvent::Stopped => 3,
        }
    }
}

/// Everything one announce tells a tracker; build it for [`http::announce_query`] or
/// [`udp::UdpTracker::start`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// The TCP port we accept peers on.
    pub port: u16,
    /// Bytes uploaded since `started`.
    pub uploaded: u64,
    /// Bytes downloaded since `started`.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// What happened.
    pub event: AnnounceEvent,
    /// How many peers we would like.
    pub numwant: u32,
    /// A random key that lets the tracker recognise us across IP changes.
    pub key: u32,
}

/// A successful announce reply, with bad peers already dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceReply {
    /// Seconds the tracker wants between announces.
    pub interval: Option<u32>,
    /// Seconds the tracker requires at least between announces.
    pub min_interval: Option<u32>,
    /// Opaque id to send back as `trackerid` (HTTP only).
    pub tracker_id: Option<Vec<u8>>,
    /// Seeders, when told.
    pub complete: Option<u32>,
    /// Leechers, when told.
    pub incomplete: Option<u32>,
    /// The tracker's `warning message`.
    pub warning: Option<String>,
    /// Peers, in the tracker's order, without port 0, our own address or duplicates.
    pub peers: Vec<SocketAddr>,
}

/// Scrape counts for one torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeCounts {
    /// Seeders.
    pub complete: u32,
    /// Completed downloads ever reported.
    pub downloaded: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// Which peers to drop from replies and how many to keep at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFilter {
    /// Our listening port.
    pub own_port: u16,
    /// Addresses known to be ours; loopback and unspecified addresses always count as ours.
    pub own_ips: Vec<IpAddr>,
    /// Most peers taken from one reply; the rest are ignored.
    pub max_peers: usize,
}

impl PeerFilter {
    /// True when `addr` must not be reported: port 0, or ourselves.
    pub fn rejects(&self, addr: &SocketAddr) -> bool {
        if addr.port() == 0 {
            return true;
        }
        let ip = addr.ip();
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            IpAddr::V4(_) => ip,
        };
        addr.port() == self.own_port
            && (ip.is_loopback() || ip.is_unspecified() || self.own_ips.contains(&ip))
    }

    /// Adds `addr` to `peers` unless rejected, a duplicate, or `peers` is full; false when full.
    pub(crate) fn push(&self, peers: &mut Vec<SocketAddr>, addr: SocketAddr) -> bool {
        if peers.len() >= self.max_peers {
            return false;
        }
        // Linear search is fine: replies are capped at `max_peers`, a few thousand.
        if !self.rejects(&addr) && !peers.contains(&addr) {
            peers.push(addr);
        }
        true
    }
}

/// Why a tracker request failed. Reported per tracker; the torrent carries on with others.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackerError {
    /// The announce URL cannot be parsed.
    InvalidUrl(String),
    /// A scheme we cannot talk to, such as `wss`.
    UnsupportedScheme(String),
    /// The tracker refused the request; the text is the tracker's own `failure reason`.
    Failure(String),
    /// The HTTP status was not 200.
    HttpStatus(u16),
    /// The reply is not valid HTTP.
    BadHttp(&'static str),
    /// The reply body is larger than the limit.
    BodyTooLarge(u64),
    /// The connection closed before the whole reply arrived.
    ClosedEarly,
    /// More redirects than allowed.
    TooManyRedirects,
    /// A redirect leads back to a URL already visited.
    RedirectLoop(String),
    /// The body is not valid bencode.
    BadBencode(DecodeError),
    /// The body is bencode but not a valid tracker reply.
    BadReply(&'static str),
    /// No reply in time: the whole HTTP request took too long, or a UDP tracker answered none of
    /// the retransmitted datagrams.
    Timeout,
    /// The name lookup and TCP connect (HTTP) did not finish within this time.
    ConnectTimeout(Duration),
    /// The connection was open but the tracker sent nothing for this long.
    ReceiveTimeout(Duration),
    /// The name lookup of a UDP tracker's host did not finish within this time.
    ResolveTimeout {
        /// The host name.
        host: String,
        /// The time allowed.
        after: Duration,
    },
    /// The TCP connection could not be made (text from the driver).
    ConnectFailed(String),
    /// The host name did not resolve to any address.
    ResolveFailed(String),
    /// The announce URL gives no scrape URL (BEP 48 rule).
    ScrapeUnsupported,
    /// The UDP tracker sent an error action with this message.
    UdpError(String),
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::InvalidUrl(why) => write!(f, "invalid tracker URL: {why}"),
            TrackerError::UnsupportedScheme(s) => {
                write!(
                    f,
                    "unsupported tracker scheme {s:?} (only http, https and udp)"
                )
            }
            TrackerError::Failure(text) => write!(f, "tracker refused the announce: {text}"),
            TrackerError::HttpStatus(code) => write!(f, "tracker answered HTTP status {code}"),
            TrackerError::BadHttp(why) => write!(f, "tracker sent invalid HTTP: {why}"),
            TrackerError::BodyTooLarge(n) => {
                write!(f, "tracker reply too large ({n} bytes or more); ignored")
            }
            TrackerError::ClosedEarly => {
                write!(
                    f,
                    "tracker closed the connection before the reply was complete"
                )
            }
            TrackerError::TooManyRedirects => write!(f, "tracker redirected too many times"),
            TrackerError::RedirectLoop(url) => write!(f, "tracker redirect loop back to {url}"),
            TrackerError::BadBencode(e) => write!(f, "tracker reply is not bencode: {e}"),
            TrackerError::BadReply(why) => write!(f, "tracker reply is malformed: {why}"),
            TrackerError::Timeout => write!(f, "tracker did not answer in time"),
            TrackerError::ConnectTimeout(d) => write!(
                f,
                "no connection to the tracker within {d:?} (host down, or its port filtered?)"
            ),
            TrackerError::ReceiveTimeout(d) => write!(
                f,
                "tracker accepted the connection but sent nothing for {d:?}"
            ),
            TrackerError::ResolveTimeout { host, after } => write!(
                f,
                "looking up tracker host {host} took longer than {after:?} (DNS unreachable?)"
            ),
            TrackerError::ConnectFailed(why) => write!(f, "cannot connect to tracker: {why}"),
            TrackerError::ResolveFailed(host) => write!(f, "cannot resolve tracker host {host}"),
            TrackerError::ScrapeUnsupported => {
                write!(
                    f,
                    "tracker URL does not support scrape (last path part is not announce)"
                )
            }
            TrackerError::UdpError(msg) => write!(f, "tracker error: {msg}"),
        }
    }
}

impl std::error::Error for TrackerError {}

/// Bounds that keep a hostile tracker from using much memory or time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most bytes of status line and headers.
    pub max_head: usize,
    /// Most bytes of body.
    pub max_body: usize,
    /// Most redirects followed for one request.
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head: 16 * 1024,
            max_body: 4 * 1024 * 1024,
            max_redirects: 5,
        }
    }
}
