//! The BEP 12 multi-tracker announce cycle: one state machine the driver talks to for all of a
//! torrent's trackers.
//!
//! Inputs are `handle_*` calls with the current [`Time`]; outputs are drained after every input:
//! first [`TrackerManager::poll_action`] until `None` (sockets to open, bytes to send), then
//! [`TrackerManager::poll_event`] until `None` (peers, errors, stats for the user), and finally
//! [`TrackerManager::poll_timeout`] gives when to call [`TrackerManager::handle_timeout`] next.
//!
//! The cycle: trackers within each tier are shuffled once from the seed; an announce round tries
//! the tiers in order and the trackers of a tier in order, skipping trackers backing off after a
//! failure; the first that answers ends the round, moves to the front of its tier and sets the next
//! announce (its `interval`, never sooner than its `min interval`, clamped to sane bounds).
//! `started` goes to each tracker before anything else, `completed` once after
//! [`TrackerManager::handle_completed`], `stopped` on [`TrackerManager::handle_stop`] to every
//! tracker that knows us, waiting a few seconds at most before reporting [`TrackerEvent::Stopped`].
//!
//! A tracker that does not answer does not hold up the others. When a tracker fails, the round
//! goes on to the next tracker of its tier (or the next tier, after the tier's last). When it has
//! waited [`ManagerConfig::fallback_after`] (5 s) for one, it starts both the next tracker of that
//! tier and the next tier, so a dead tier delays the next by 5 s however many trackers it lists.
//! The slow request stays open meanwhile, and if it answers later its peers are used like any
//! others. Each request also fails on its own: a name lookup or TCP connect after
//! [`ManagerConfig::connect_timeout`], an open connection that stays silent after
//! [`ManagerConfig::receive_timeout`], a whole HTTP request after [`ManagerConfig::http_timeout`],
//! a UDP exchange after its retransmissions ([`UdpConfig`]). A failed tracker is skipped by later
//! rounds until its backoff ([`ManagerConfig::retry_base`], doubling) has passed. A tracker still
//! silent from an earlier round is asked again when a round reaches it, but the round does not
//! wait for it a second time.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::http::{self, HttpExchange, HttpStep};
use super::udp::{UdpConfig, UdpOutcome, UdpRequest, UdpTracker};
use super::url::{Scheme, TrackerUrl};
use super::{
    AnnounceEvent, AnnounceParams, AnnounceReply, HttpLimits, PeerFilter, ScrapeCounts,
    TrackerError,
};
use crate::id::{InfoHash, PeerId};
use crate::time::Time;

/// A tracker of this torrent: its position in the list given to [`TrackerManager::new`],
/// counting across tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackerId(pub usize);

/// A TCP connection the manager asked the driver to open; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub usize);

/// Settings of the announce cycle; the defaults suit real trackers, tests shorten the timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Time allowed for one HTTP request, connection and redirects included (libtorrent's
    /// `tracker_completion_timeout` is the same 30 s).
    pub http_timeout: Duration,
    /// Time allowed for a name lookup plus, for HTTP, the TCP connect (10 s).
    pub connect_timeout: Duration,
    /// Longest silence of an open HTTP connection before the reply is given up (10 s, like
    /// libtorrent's `tracker_receive_timeout`).
    pub receive_timeout: Duration,
    /// How long an announce round waits for one tracker before it also tries the next tracker of
    /// its tier and the next tier (5 s). The slow tracker's request stays open until its own
    /// timeout and its answer still counts.
    pub fallback_after: Duration,
    /// UDP retransmission timing.
    pub udp: UdpConfig,
    /// Bounds on HTTP replies.
    pub http_limits: HttpLimits,
    /// Peers asked for per announce.
    pub numwant: u32,
    /// Peers taken from one reply at most.
    pub max_peers_per_reply: usize,
    /// Re-announce interval when the tracker gives none.
    pub default_interval: Duration,
    /// Shortest re-announce interval accepted from a tracker.
    pub min_reannounce: Duration,
    /// Longest re-announce interval accepted from a tracker.
    pub max_reannounce: Duration,
    /// Wait before retrying a failed tracker; doubles with each further failure.
    pub retry_base: Duration,
    /// Longest wait before retrying a failed tracker.
    pub retry_max: Duration,
    /// How long `stopped` announces may take before shutdown goes on without them.
    pub stop_timeout: Duration,
    /// Our public addresses, if known: peers at these with our port are dropped.
    pub own_ips: Vec<IpAddr>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            http_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(10),
            fallback_after: Duration::from_secs(5),
            udp: UdpConfig::default(),
            http_limits: HttpLimits::default(),
            numwant: 50,
            max_peers_per_reply: 2000,
            default_interval: Duration::from_secs(30 * 60),
            min_reannounce: Duration::from_secs(60),
            max_reannounce: Duration::from_secs(4 * 3600),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(30 * 60),
            stop_timeout: Duration::from_secs(5),
            own_ips: Vec::new(),
        }
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum TrackerAction {
    /// Resolve a UDP tracker's host; answer with [`TrackerManager::handle_resolved`].
    Resolve {
        /// The tracker.
        tracker: TrackerId,
        /// Host name.
        host: String,
        /// Port to put in the resolved addresses.
        port: u16,
    },
    /// Open a TCP connection (resolving `host` first); with `tls`, wrap it in TLS for `host`.
    /// Answer with [`TrackerManager::handle_tcp_connected`] or
    /// [`TrackerManager::handle_connect_failed`].
    OpenTcp {
        /// The connection's handle.
        conn: ConnId,
        /// The tracker it is for.
        tracker: TrackerId,
        /// Host name or IP literal (also the TLS server name).
        host: String,
        /// Port.
        port: u16,
        /// True for `https` URLs.
        tls: bool,
    },
    /// Write these bytes to the connection (inside TLS when it is a TLS connection).
    SendTcp {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close the connection; no more input is expected for it.
    CloseTcp {
        /// The connection.
        conn: ConnId,
    },
    /// Send one datagram from the tracker UDP socket.
    SendUdp {
        /// The tracker it is for.
        tracker: TrackerId,
        /// Destination.
        addr: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
}

/// Something to tell the session or the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerEvent {
    /// Peers from a tracker, to add to the session's peer list.
    Peers {
        /// The tracker.
        tracker: TrackerId,
        /// Their addresses (port 0 and our own already dropped).
        addrs: Vec<SocketAddr>,
    },
    /// An announce succeeded.
    Announced {
        /// The tracker.
        tracker: TrackerId,
        /// The event that was sent.
        event: AnnounceEvent,
        /// Seeders, when told.
        complete: Option<u32>,
        /// Leechers, when told.
        incomplete: Option<u32>,
        /// When the next regular announce is due (`None` after `stopped`, or when a round is
        /// under way: this was a late answer from an earlier round).
        next_announce: Option<Time>,
    },
    /// The tracker's `warning message`.
    Warning {
        /// The tracker.
        tracker: TrackerId,
        /// Its URL as written in the torrent.
        url: String,
        /// The tracker's text.
        message: String,
    },
    /// A request to a tracker failed, or its URL cannot be used (reported once).
    Error {
        /// The tracker.
        tracker: TrackerId,
        /// Its URL as written in the torrent.
        url: String,
        /// What went wrong.
        error: TrackerError,
    },
    /// Every usable tracker failed this round; the next try is at `retry_at`.
    AllFailed {
        /// When the next announce round starts.
        retry_at: Time,
    },
    /// Scrape counts from a tracker.
    Scrape {
        /// The tracker.
        tracker: TrackerId,
        /// The counts.
        counts: ScrapeCounts,
    },
    /// Shutdown announces are finished (or their time ran out); nothing more will happen.
    Stopped,
}

#[derive(Debug)]
struct Tracker {
    text: String,
    url: Option<TrackerUrl>,
    started: bool,
    tracker_id: Option<Vec<u8>>,
    min_interval: Duration,
    fails: u32,
    retry_after: Option<Time>,
    udp_addr: Option<SocketAddr>,
    resolving: bool,
    udp_announce: UdpTracker,
    udp_scrape: UdpTracker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Cycle,
    Stop,
    Scrape,
}

#[derive(Debug)]
enum Transport {
    Http {
        conn: ConnId,
        exchange: Box<HttpExchange>,
    },
    UdpResolving,
    Udp,
}

/// What a job is waiting for, which says how long it may wait (see [`ManagerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A UDP tracker's name lookup.
    Resolve,
    /// An HTTP connection: lookup and TCP connect.
    Connect,
    /// Bytes of an HTTP reply.
    Receive,
}

#[derive(Debug)]
struct Job {
    tracker: TrackerId,
    kind: JobKind,
    event: AnnounceEvent,
    transport: Transport,
    /// The announce round it belongs to (cycle jobs only).
    round: u64,
    /// When the round stops waiting for it and tries the next tracker too; `None` once it has,
    /// and for jobs outside the running round.
    fallback_at: Option<Time>,
    /// Deadline of the whole HTTP request (UDP exchanges keep their own timers).
    deadline: Option<Time>,
    /// Deadline of the current wait.
    wait: Option<(Time, Wait)>,
}

impl Job {
    /// When the job fails unless something arrives.
    fn expires(&self) -> Option<Time> {
        match (self.deadline, self.wait) {
            (Some(d), Some((w, _))) => Some(d.min(w)),
            (d, w) => d.or(w.map(|(w, _)| w)),
        }
    }
}

/// The announce round under way.
#[derive(Debug)]
struct Round {
    id: u64,
    /// Trackers the round has tried or skipped, in order.
    tried: Vec<TrackerId>,
    /// Tiers `0..opened` have been reached.
    opened: usize,
}

#[derive(Debug)]
enum Outcome {
    Announce(AnnounceReply),
    Scrape(ScrapeCounts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping { deadline: Time },
    Stopped,
}

/// All trackers of one torrent and its announce cycle. See the module doc for the drain order.
#[derive(Debug)]
pub struct TrackerManager {
    config: ManagerConfig,
    info_hash: InfoHash,
    peer_id: PeerId,
    port: u16,
    key: u32,
    uploaded: u64,
    downloaded: u64,
    left: u64,
    trackers: Vec<Tracker>,
    tiers: Vec<Vec<TrackerId>>,
    jobs: BTreeMap<u64, Job>,
    next_job: u64,
    next_conn: usize,
    /// The announce round while one runs.
    cycle: Option<Round>,
    next_round: u64,
    next_announce: Option<Time>,
    completed_pending: bool,
    completed_sent: bool,
    phase: Phase,
    now: Time,
    actions: VecDeque<TrackerAction>,
    events: VecDeque<TrackerEvent>,
}

impl TrackerManager {
    /// A manager for the torrent's tiers (`announce-list`, or `[[announce]]`). The first announce
    /// (`started`) is due at once: call [`TrackerManager::handle_timeout`] or drain the outputs.
    pub fn new(
        config: ManagerConfig,
        tiers: Vec<Vec<String>>,
        info_hash: InfoHash,
        peer_id: PeerId,
        port: u16,
        seed: u64,
    ) -> TrackerManager {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let filter = PeerFilter {
            own_port: port,
            own_ips: config.own_ips.clone(),
            max_peers: config.max_peers_per_reply,
        };
        let mut trackers = Vec::new();
        let mut id_tiers = Vec::new();
        let mut events = VecDeque::new();
        for tier in tiers {
            let mut ids = Vec::new();
            for text in tier {
                let id = TrackerId(trackers.len());
                let url = match TrackerUrl::parse(&text) {
                    Ok(u) => Some(u),
                    Err(error) => {
                        events.push_back(TrackerEvent::Error {
                            tracker: id,
                            url: text.clone(),
                            error,
                        });
                        None
                    }
                };
                let mut udp_announce =
                    UdpTracker::new(config.udp.clone(), rng.random(), filter.clone());
                let mut udp_scrape =
                    UdpTracker::new(config.udp.clone(), rng.random(), filter.clone());
                let addr = url
                    .as_ref()
                    .filter(|u| u.scheme == Scheme::Udp)
                    .and_then(|u| {
                        u.host
                            .parse::<IpAddr>()
                            .ok()
                            .map(|ip| SocketAddr::new(ip, u.port))
                    });
                if let Some(a) = addr {
                    udp_announce.set_ipv6(a.is_ipv6());
                    udp_scrape.set_ipv6(a.is_ipv6());
                }
                trackers.push(Tracker {
                    text,
                    url,
                    started: false,
                    tracker_id: None,
                    min_interval: Duration::ZERO,
                    fails: 0,
                    retry_after: None,
                    udp_addr: addr,
                    resolving: false,
                    udp_announce,
                    udp_scrape,
                });
                ids.push(id);
            }
            // BEP 12: each tier is shuffled once, when the torrent is loaded.
            for i in (1..ids.len()).rev() {
                let j = rng.random_range(0..=i);
                ids.swap(i, j);
            }
            if !ids.is_empty() {
                id_tiers.push(ids);
            }
        }
        let has_usable = trackers.iter().any(|t| t.url.is_some());
        TrackerManager {
            key: rng.random(),
            config,
            info_hash,
            peer_id,
            port,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            trackers,
            tiers: id_tiers,
            jobs: BTreeMap::new(),
            next_job: 0,
            next_conn: 0,
            cycle: None,
            next_round: 0,
            next_announce: has_usable.then_some(Time::ZERO),
            completed_pending: false,
            completed_sent: false,
            phase: Phase::Running,
            now: Time::ZERO,
            actions: VecDeque::new(),
            events,
        }
    }

    /// True while some tracker has answered an announce (it expects `completed` and `stopped`)
    /// or may still answer (usable, and not failed yet).
    pub fn may_answer(&self) -> bool {
        self.trackers
            .iter()
            .any(|t| t.started || (t.url.is_some() && t.fails == 0))
    }

    /// The tiers in their current order (after shuffling and promotions).
    pub fn tiers(&self) -> &[Vec<TrackerId>] {
        &self.tiers
    }

    /// The URL of a tracker as written in the torrent.
    pub fn url(&self, tracker: TrackerId) -> Option<&str> {
        self.trackers.get(tracker.0).map(|t| t.text.as_str())
    }

    /// Updates the transfer totals sent with the next announces.
    pub fn handle_stats(&mut self, uploaded: u64, downloaded: u64, left: u64) {
        self.uploaded = uploaded;
        self.downloaded = downloaded;
        self.left = left;
    }

    /// The download finished: the next announce carries `completed` (only the first call counts).
    pub fn handle_completed(&mut self, now: Time) {
        let now = self.tick(now);
        if self.completed_sent || self.completed_pending || self.phase != Phase::Running {
            return;
        }
        self.completed_pending = true;
        // An event, not a re-announce: `min interval` does not hold it back (libtorrent and
        // Transmission send it at once too), and `download` waits for it before exiting.
        if self.cycle.is_none() {
            self.next_announce = Some(now);
        }
        self.run(now);
    }

    /// Shutdown: cancels everything and sends `stopped` to the trackers that know us, waiting at
    /// most [`ManagerConfig::stop_timeout`]; [`TrackerEvent::Stopped`] says when it is over.
    pub fn handle_stop(&mut self, now: Time) {
        let now = self.tick(now);
        if self.phase != Phase::Running {
            return;
        }
        let ids: Vec<u64> = self.jobs.keys().copied().collect();
        for id in ids {
            self.cancel_job(id);
        }
        self.cycle = None;
        self.next_announce = None;
        self.phase = Phase::Stopping {
            deadline: now + self.config.stop_timeout,
        };
        for i in 0..self.trackers.len() {
            if self.trackers[i].started {
                self.start_job(now, TrackerId(i), JobKind::Stop, AnnounceEvent::Stopped);
            }
        }
        self.check_stopped();
    }

    /// Asks one tracker for the torrent's counts; the answer is a [`TrackerEvent::Scrape`] or an
    /// error event.
    pub fn handle_scrape(&mut self, now: Time, tracker: TrackerId) {
        let now = self.tick(now);
        let Some(t) = self.trackers.get(tracker.0) else {
            return;
        };
        if self.phase != Phase::Running || t.url.is_none() {
            return;
        }
        let busy = self
            .jobs
            .values()
            .any(|j| j.tracker == tracker && j.kind == JobKind::Scrape);
        if !busy {
            self.start_job(now, tracker, JobKind::Scrape, AnnounceEvent::None);
        }
    }

    /// The TCP connection is open: the request goes out.
    pub fn handle_tcp_connected(&mut self, now: Time, conn: ConnId) {
        let now = self.tick(now);
        let receive = self.config.receive_timeout;
        if let Some((_, job)) = self.job_by_conn(conn)
            && let Transport::Http { exchange, .. } = &job.transport
        {
            job.wait = Some((now + receive, Wait::Receive));
            let bytes = exchange.request();
            self.actions
                .push_back(TrackerAction::SendTcp { conn, bytes });
        }
    }

    /// Bytes received on a TCP connection (after TLS, for https).
    pub fn handle_tcp_data(&mut self, now: Time, conn: ConnId, data: &[u8]) {
        let now = self.tick(now);
        let receive = self.config.receive_timeout;
        let Some((id, job)) = self.job_by_conn(conn) else {
            return;
        };
        let Transport::Http { exchange, .. } = &mut job.transport else {
            return;
        };
        if !data.is_empty() {
            job.wait = Some((now + receive, Wait::Receive));
        }
        match exchange.handle_data(data) {
            Ok(None) => {}
            Ok(Some(step)) => {
                self.actions.push_back(TrackerAction::CloseTcp { conn });
                self.http_step(now, id, step);
            }
            Err(e) => {
                self.actions.push_back(TrackerAction::CloseTcp { conn });
                self.finish_job(now, id, Err(e));
            }
        }
    }

    /// The server closed the connection (end of stream), or it broke (`error` from the driver).
    pub fn handle_tcp_closed(&mut self, now: Time, conn: ConnId, error: Option<String>) {
        let now = self.tick(now);
        let Some((id, job)) = self.job_by_conn(conn) else {
            return;
        };
        let Transport::Http { exchange, .. } = &mut job.transport else {
            return;
        };
        let result = match error {
            Some(e) => Err(TrackerError::ConnectFailed(e)),
            None => exchange.handle_closed(),
        };
        match result {
            Ok(step) => self.http_step(now, id, step),
            Err(e) => self.finish_job(now, id, Err(e)),
        }
    }

    /// The TCP (or TLS) connection could not be made; `why` is shown to the user.
    pub fn handle_connect_failed(&mut self, now: Time, conn: ConnId, why: String) {
        let now = self.tick(now);
        if let Some((id, _)) = self.job_by_conn(conn) {
            self.finish_job(now, id, Err(TrackerError::ConnectFailed(why)));
        }
    }

    /// The addresses a [`TrackerAction::Resolve`] found (empty when resolution failed).
    pub fn handle_resolved(&mut self, now: Time, tracker: TrackerId, addrs: &[SocketAddr]) {
        let now = self.tick(now);
        let Some(t) = self.trackers.get_mut(tracker.0) else {
            return;
        };
        if !t.resolving {
            return;
        }
        t.resolving = false;
        let host = t.url.as_ref().map(|u| u.host.clone()).unwrap_or_default();
        // Prefer IPv4: BEP 15 IPv4 replies are what most UDP trackers serve.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied();
        t.udp_addr = addr;
        if let Some(a) = addr {
            t.udp_announce.set_ipv6(a.is_ipv6());
            t.udp_scrape.set_ipv6(a.is_ipv6());
        }
        let waiting: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.tracker == tracker && matches!(j.transport, Transport::UdpResolving))
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            if addr.is_some() {
                self.start_udp(now, id);
            } else {
                self.finish_job(now, id, Err(TrackerError::ResolveFailed(host.clone())));
            }
        }
        self.run(now);
    }

    /// A datagram that arrived on the tracker UDP socket from `from`.
    pub fn handle_udp_datagram(&mut self, now: Time, from: SocketAddr, data: &[u8]) {
        let now = self.tick(now);
        // A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6 addresses.
        let from = match from.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), from.port()),
                None => from,
            },
            IpAddr::V4(_) => from,
        };
        for i in 0..self.trackers.len() {
            if self.trackers[i].udp_addr != Some(from) {
                continue;
            }
            // Transaction ids tell which exchange (if any) the datagram belongs to.
            let a = self.trackers[i].udp_announce.handle_datagram(now, data);
            self.udp_outcome(now, TrackerId(i), false, a);
            let s = self.trackers[i].udp_scrape.handle_datagram(now, data);
            self.udp_outcome(now, TrackerId(i), true, s);
        }
        self.run(now);
    }

    /// Fires every timer that is due at `now`; an early or repeated call does nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.tick(now);
        let due: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.expires().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let error = match job.wait {
                Some((at, wait)) if at <= now && job.deadline.is_none_or(|d| at <= d) => {
                    self.wait_error(job.tracker, wait)
                }
                _ => TrackerError::Timeout,
            };
            match job.transport {
                Transport::Http { conn, .. } => {
                    self.actions.push_back(TrackerAction::CloseTcp { conn });
                }
                Transport::UdpResolving => {
                    // The driver never answered: ask again next time rather than wait forever.
                    self.trackers[job.tracker.0].resolving = false;
                }
                Transport::Udp => {}
            }
            self.finish_job(now, id, Err(error));
        }
        for i in 0..self.trackers.len() {
            let a = self.trackers[i].udp_announce.handle_timeout(now);
            self.udp_outcome(now, TrackerId(i), false, a);
            let s = self.trackers[i].udp_scrape.handle_timeout(now);
            self.udp_outcome(now, TrackerId(i), true, s);
        }
        // Slow trackers of the running round: try the next one alongside.
        let slow: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.fallback_at.is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in slow {
            if let Some(job) = self.jobs.get_mut(&id)
                && job.fallback_at.take().is_some()
            {
                let tracker = job.tracker;
                let tier = self.tier_of(tracker);
                self.advance_cycle(now, tier, true);
            }
        }
        if let Phase::Stopping { deadline } = self.phase
            && deadline <= now
        {
            let ids: Vec<u64> = self.jobs.keys().copied().collect();
            for id in ids {
                self.cancel_job(id);
            }
            self.check_stopped();
        }
        self.run(now);
    }

    /// The next thing the driver must do, in a deterministic order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<TrackerAction> {
        self.run(self.now);
        self.actions.pop_front()
    }

    /// The next event for the session or the user.
    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.events.pop_front()
    }

    /// When [`TrackerManager::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next = match self.phase {
            Phase::Running if self.cycle.is_none() => self.next_announce,
            Phase::Stopping { deadline } => Some(deadline),
            _ => None,
        };
        let mut consider = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for j in self.jobs.values() {
            consider(j.expires());
            consider(j.fallback_at);
        }
        for t in &self.trackers {
            consider(t.udp_announce.poll_timeout());
            consider(t.udp_scrape.poll_timeout());
        }
        next
    }

    fn tick(&mut self, now: Time) -> Time {
        // Time never goes backwards here, whatever the caller's clock does.
        self.now = self.now.max(now);
        self.now
    }

    /// Starts the announce round when it is due.
    fn run(&mut self, now: Time) {
        if self.phase == Phase::Running
            && self.cycle.is_none()
            && self.next_announce.is_some_and(|t| t <= now)
        {
            self.next_announce = None;
            self.cycle = Some(Round {
                id: self.next_round,
                tried: Vec::new(),
                opened: 1,
            });
            self.next_round += 1;
            self.advance_cycle(now, 0, false);
        }
    }

    /// Moves the round on from `tier`: starts its next usable tracker, and opens the next tier
    /// too when `tier` has none left or when `slow` (its tracker is slow to answer, so the next
    /// tier goes alongside). Ends the round as failed when nothing is left to try or wait for.
    ///
    /// Within a tier, trackers go one after another as they fail or are slow; a slow tier does not
    /// hold up the next one, however many trackers it lists.
    fn advance_cycle(&mut self, now: Time, tier: usize, slow: bool) {
        let mut work = vec![(tier, slow)];
        while let Some((tier, slow)) = work.pop() {
            if self.cycle.is_none() {
                return;
            }
            let open_next = match self.start_in_tier(now, tier) {
                // Asked again but not waited for: go on as if it were slow.
                Some(true) => {
                    work.push((tier, true));
                    slow
                }
                Some(false) => slow,
                None => true,
            };
            if open_next
                && let Some(round) = &mut self.cycle
                && round.opened == tier + 1
                && tier + 1 < self.tiers.len()
            {
                round.opened += 1;
                work.push((tier + 1, false));
            }
        }
        self.check_round_failed(now);
    }

    /// Starts the first tracker of `tier` the round has not tried yet, skipping those without a
    /// usable URL or backing off: `Some(slow)`, where `slow` says it was still silent from an
    /// earlier round (and gets no fallback timer), or `None` when the tier has none left.
    fn start_in_tier(&mut self, now: Time, tier: usize) -> Option<bool> {
        loop {
            let round = self.cycle.as_mut()?;
            let id = self
                .tiers
                .get(tier)?
                .iter()
                .copied()
                .find(|id| !round.tried.contains(id))?;
            round.tried.push(id);
            let round = round.id;
            let t = &self.trackers[id.0];
            if t.url.is_none() || t.retry_after.is_some_and(|r| r > now) {
                continue;
            }
            // Still silent from an earlier round: ask again (the event may differ), but do not
            // wait for it a second time.
            let earlier: Vec<u64> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.tracker == id && j.kind == JobKind::Cycle)
                .map(|(&job, _)| job)
                .collect();
            let slow = !earlier.is_empty();
            for job in earlier {
                self.cancel_job(job);
            }
            let event = self.event_for(id);
            let Some(job) = self.start_job(now, id, JobKind::Cycle, event) else {
                continue;
            };
            // No fallback timer when nothing is left to fall back to.
            let more = self
                .cycle
                .as_ref()
                .is_some_and(|r| self.tiers.iter().flatten().any(|id| !r.tried.contains(id)));
            let fallback_at = (!slow && more).then(|| now + self.config.fallback_after);
            if let Some(j) = self.jobs.get_mut(&job) {
                j.round = round;
                j.fallback_at = fallback_at;
            }
            return Some(slow);
        }
    }

    /// Ends the round when every tracker was tried and none of its requests is still open.
    fn check_round_failed(&mut self, now: Time) {
        let Some(round) = &self.cycle else {
            return;
        };
        let exhausted = self
            .tiers
            .iter()
            .flatten()
            .all(|id| round.tried.contains(id));
        let open = self
            .jobs
            .values()
            .any(|j| j.kind == JobKind::Cycle && j.round == round.id);
        if !exhausted || open {
            return;
        }
        // Every usable tracker failed or is backing off.
        self.cycle = None;
        let retry = self
            .trackers
            .iter()
            .filter(|t| t.url.is_some())
            .filter_map(|t| t.retry_after)
            .min();
        if let Some(retry_at) = retry {
            let retry_at = retry_at.max(now + Duration::from_secs(1));
            self.next_announce = Some(retry_at);
            self.events.push_back(TrackerEvent::AllFailed { retry_at });
        }
    }

    /// The tier `tracker` is in (tiers are reordered inside, never across).
    fn tier_of(&self, tracker: TrackerId) -> usize {
        self.tiers
            .iter()
            .position(|ids| ids.contains(&tracker))
            .unwrap_or(0)
    }

    fn wait_error(&self, tracker: TrackerId, wait: Wait) -> TrackerError {
        match wait {
            Wait::Resolve => TrackerError::ResolveTimeout {
                host: self.trackers[tracker.0]
                    .url
                    .as_ref()
                    .map(|u| u.host.clone())
                    .unwrap_or_default(),
                after: self.config.connect_timeout,
            },
            Wait::Connect => TrackerError::ConnectTimeout(self.config.connect_timeout),
            Wait::Receive => TrackerError::ReceiveTimeout(self.config.receive_timeout),
        }
    }

    fn event_for(&self, id: TrackerId) -> AnnounceEvent {
        if self.completed_pending {
            AnnounceEvent::Completed
        } else if !self.trackers[id.0].started {
            AnnounceEvent::Started
        } else {
            AnnounceEvent::None
        }
    }

    fn params(&self, event: AnnounceEvent) -> AnnounceParams {
        AnnounceParams {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: self.uploaded,
            downloaded: self.downloaded,
            left: self.left,
            event,
            numwant: if event == AnnounceEvent::Stopped {
                0
            } else {
                self.config.numwant
            },
            key: self.key,
        }
    }

    /// Starts a request to `tracker`; `None` when it cannot even start (it was reported).
    fn start_job(
        &mut self,
        now: Time,
        tracker: TrackerId,
        kind: JobKind,
        event: AnnounceEvent,
    ) -> Option<u64> {
        let url = self.trackers.get(tracker.0)?.url.clone()?;
        let id = self.next_job;
        self.next_job += 1;
        let transport = if url.scheme == Scheme::Udp {
            Transport::UdpResolving
        } else {
            let (url, query) = if kind == JobKind::Scrape {
                match url.scrape_url() {
                    Ok(u) => (u, http::scrape_query(&self.info_hash)),
                    Err(error) => {
                        let url = self.trackers[tracker.0].text.clone();
                        self.events.push_back(TrackerEvent::Error {
                            tracker,
                            url,
                            error,
                        });
                        return None;
                    }
                }
            } else {
                let tid = self.trackers[tracker.0].tracker_id.as_deref();
                let q = http::announce_query(&self.params(event), tid);
                (url.clone(), q)
            };
            let exchange = HttpExchange::new(url, query, self.config.http_limits.clone());
            let conn = self.open_tcp(tracker, exchange.url());
            Transport::Http {
                conn,
                exchange: Box::new(exchange),
            }
        };
        let (deadline, wait) = match transport {
            Transport::UdpResolving => (None, (now + self.config.connect_timeout, Wait::Resolve)),
            _ => (
                Some(now + self.config.http_timeout),
                (now + self.config.connect_timeout, Wait::Connect),
            ),
        };
        self.jobs.insert(
            id,
            Job {
                tracker,
                kind,
                event,
                transport,
                round: 0,
                fallback_at: None,
                deadline,
                wait: Some(wait),
            },
        );
        if matches!(self.jobs[&id].transport, Transport::UdpResolving) {
            let t = &mut self.trackers[tracker.0];
            if t.udp_addr.is_some() {
                self.start_udp(now, id);
            } else if !t.resolving {
                t.resolving = true;
                self.actions.push_back(TrackerAction::Resolve {
                    tracker,
                    host: url.host.clone(),
                    port: url.port,
                });
            }
        }
        Some(id)
    }

    fn open_tcp(&mut self, tracker: TrackerId, url: &TrackerUrl) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.actions.push_back(TrackerAction::OpenTcp {
            conn,
            tracker,
            host: url.host.clone(),
            port: url.port,
            tls: url.scheme == Scheme::Https,
        });
        conn
    }

    fn start_udp(&mut self, now: Time, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let (tracker, kind, event) = (job.tracker, job.kind, job.event);
        let request = if kind == JobKind::Scrape {
            UdpRequest::Scrape(self.info_hash)
        } else {
            UdpRequest::Announce(self.params(event))
        };
        if let Some(job) = self.jobs.get_mut(&id) {
            job.transport = Transport::Udp;
            job.deadline = None;
            job.wait = None;
        }
        let t = &mut self.trackers[tracker.0];
        let udp = if kind == JobKind::Scrape {
            &mut t.udp_scrape
        } else {
            &mut t.udp_announce
        };
        udp.start(now, request);
        self.flush_udp(tracker);
    }

    fn flush_udp(&mut self, tracker: TrackerId) {
        let t = &mut self.trackers[tracker.0];
        let Some(addr) = t.udp_addr else { return };
        for udp in [&mut t.udp_announce, &mut t.udp_scrape] {
            while let Some(bytes) = udp.poll_transmit() {
                self.actions.push_back(TrackerAction::SendUdp {
                    tracker,
                    addr,
                    bytes,
                });
            }
        }
    }

    fn udp_outcome(
        &mut self,
        now: Time,
        tracker: TrackerId,
        scrape: bool,
        out: Option<UdpOutcome>,
    ) {
        self.flush_udp(tracker);
        let Some(out) = out else { return };
        let job = self.jobs.iter().find(|(_, j)| {
            j.tracker == tracker
                && matches!(j.transport, Transport::Udp)
                && (j.kind == JobKind::Scrape) == scrape
        });
        let Some((&id, _)) = job else { return };
        let result = match out {
            UdpOutcome::Announced(r) => Ok(Outcome::Announce(r)),
            UdpOutcome::Scraped(c) => Ok(Outcome::Scrape(c)),
            UdpOutcome::Failed(e) => {
                if e == TrackerError::Timeout {
                    // The address may have changed: resolve again next time.
                    let t = &mut self.trackers[tracker.0];
                    if t.url
                        .as_ref()
                        .is_some_and(|u| u.host.parse::<IpAddr>().is_err())
                    {
                        t.udp_addr = None;
                    }
                }
                Err(e)
            }
        };
        self.finish_job(now, id, result);
    }

    fn job_by_conn(&mut self, conn: ConnId) -> Option<(u64, &mut Job)> {
        self.jobs
            .iter_mut()
            .find(|(_, j)| matches!(j.transport, Transport::Http { conn: c, .. } if c == conn))
            .map(|(&id, j)| (id, j))
    }

    fn http_step(&mut self, now: Time, id: u64, step: HttpStep) {
        match step {
            HttpStep::Redirect(url) => {
                let Some(tracker) = self.jobs.get(&id).map(|j| j.tracker) else {
                    return;
                };
                let conn = self.open_tcp(tracker, &url);
                let connect = self.config.connect_timeout;
                if let Some(Job {
                    transport: Transport::Http { conn: c, .. },
                    wait,
                    ..
                }) = self.jobs.get_mut(&id)
                {
                    *c = conn;
                    *wait = Some((now + connect, Wait::Connect));
                }
            }
            HttpStep::Body(body) => {
                let Some(job) = self.jobs.get(&id) else {
                    return;
                };
                let result = if job.kind == JobKind::Scrape {
                    http::parse_scrape(&body, &self.info_hash).map(Outcome::Scrape)
                } else {
                    let filter = PeerFilter {
                        own_port: self.port,
                        own_ips: self.config.own_ips.clone(),
                        max_peers: self.config.max_peers_per_reply,
                    };
                    http::parse_announce(&body, &filter).map(Outcome::Announce)
                };
                self.finish_job(now, id, result);
            }
        }
    }

    /// Drops a job without reporting anything (shutdown, or its time ran out).
    fn cancel_job(&mut self, id: u64) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        match job.transport {
            Transport::Http { conn, .. } => {
                self.actions.push_back(TrackerAction::CloseTcp { conn });
            }
            Transport::Udp => {
                let t = &mut self.trackers[job.tracker.0];
                if job.kind == JobKind::Scrape {
                    t.udp_scrape.cancel();
                } else {
                    t.udp_announce.cancel();
                }
            }
            Transport::UdpResolving => {}
        }
    }

    fn finish_job(&mut self, now: Time, id: u64, result: Result<Outcome, TrackerError>) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        if matches!(job.transport, Transport::Udp) {
            let t = &mut self.trackers[job.tracker.0];
            if job.kind == JobKind::Scrape {
                t.udp_scrape.cancel();
            } else {
                t.udp_announce.cancel();
            }
        }
        let tracker = job.tracker;
        let url = self.trackers[tracker.0].text.clone();
        match result {
            Ok(Outcome::Scrape(counts)) => {
                self.events
                    .push_back(TrackerEvent::Scrape { tracker, counts });
            }
            Ok(Outcome::Announce(reply)) => self.announced(now, &job, reply),
            Err(error) => {
                self.events.push_back(TrackerEvent::Error {
                    tracker,
                    url,
                    error,
                });
                if job.kind == JobKind::Cycle {
                    let t = &mut self.trackers[tracker.0];
                    t.fails = t.fails.saturating_add(1);
                    let factor = 2u32.saturating_pow(t.fails - 1);
                    let wait = self
                        .config
                        .retry_base
                        .saturating_mul(factor)
                        .min(self.config.retry_max);
                    t.retry_after = Some(now + wait);
                    if self.cycle.as_ref().is_some_and(|r| r.id == job.round) {
                        if job.fallback_at.is_some() {
                            // The round was still waiting for this one: go on at once.
                            let tier = self.tier_of(tracker);
                            self.advance_cycle(now, tier, false);
                        } else {
                            self.check_round_failed(now);
                        }
                    }
                }
            }
        }
        if job.kind == JobKind::Stop {
            self.check_stopped();
        }
    }

    fn announced(&mut self, now: Time, job: &Job, reply: AnnounceReply) {
        let tracker = job.tracker;
        let t = &mut self.trackers[tracker.0];
        let url = t.text.clone();
        if let Some(message) = reply.warning.clone() {
            self.events.push_back(TrackerEvent::Warning {
                tracker,
                url,
                message,
            });
        }
        let mut next_announce = None;
        if job.kind == JobKind::Cycle {
            let this_round = self.cycle.as_ref().is_some_and(|r| r.id == job.round);
            t.started = true;
            t.fails = 0;
            t.retry_after = None;
            if reply.tracker_id.is_some() {
                t.tracker_id = reply.tracker_id.clone();
            }
            let secs = |s: Option<u32>| s.map(|s| Duration::from_secs(u64::from(s)));
            t.min_interval = secs(reply.min_interval)
                .unwrap_or(Duration::ZERO)
                .min(self.config.max_reannounce);
            let interval = secs(reply.interval)
                .unwrap_or(self.config.default_interval)
                // Not `clamp`: a configuration (a trace's header, say) with its bounds the wrong
                // way round must not panic; the upper bound wins.
                .max(self.config.min_reannounce)
                .min(self.config.max_reannounce)
                .max(t.min_interval);
            if job.event == AnnounceEvent::Completed {
                self.completed_pending = false;
                self.completed_sent = true;
            }
            // BEP 12: a tracker that answers moves to the front of its tier.
            if let Some(ids) = self.tiers.iter_mut().find(|ids| ids.contains(&tracker)) {
                ids.retain(|&i| i != tracker);
                ids.insert(0, tracker);
            }
            if this_round {
                self.cycle = None;
                // The round is over: its other requests may still answer, but nobody waits.
                for j in self.jobs.values_mut() {
                    j.fallback_at = None;
                }
                let next = if self.completed_pending {
                    now
                } else {
                    now + interval
                };
                self.next_announce = Some(next);
            }
            // A late answer from an earlier round: its peers count, the schedule stays.
            next_announce = self.next_announce;
        }
        self.events.push_back(TrackerEvent::Announced {
            tracker,
            event: job.event,
            complete: reply.complete,
            incomplete: reply.incomplete,
            next_announce,
        });
        if !reply.peers.is_empty() && job.event != AnnounceEvent::Stopped {
            self.events.push_back(TrackerEvent::Peers {
                tracker,
                addrs: reply.peers,
            });
        }
    }

    fn check_stopped(&mut self) {
        if matches!(self.phase, Phase::Stopping { .. })
            && !self.jobs.values().any(|j| j.kind == JobKind::Stop)
        {
            // Scrapes do not hold up shutdown.
            let ids: Vec<u64> = self.jobs.keys().copied().collect();
            for id in ids {
                self.cancel_job(id);
            }
            self.phase = Phase::Stopped;
            self.events.push_back(TrackerEvent::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::Owned;

    const IH: InfoHash = InfoHash([0x11; 20]);

    fn mgr_seed(tiers: &[&[&str]], seed: u64) -> TrackerManager {
        let tiers = tiers
            .iter()
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .collect();
        let mut m = TrackerManager::new(
            ManagerConfig::default(),
            tiers,
            IH,
            PeerId([0x22; 20]),
            6881,
            seed,
        );
        m.handle_stats(0, 0, 100);
        m
    }

    fn mgr(tiers: &[&[&str]]) -> TrackerManager {
        mgr_seed(tiers, 1)
    }

    fn actions(m: &mut TrackerManager) -> Vec<TrackerAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn events(m: &mut TrackerManager) -> Vec<TrackerEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn secs(s: u64) -> Time {
        Time::from_secs(s)
    }

    fn http_ok(body: &[u8]) -> Vec<u8> {
        [
            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat()
    }

    fn reply(interval: Option<i64>, min_interval: Option<i64>, peers: &[u8]) -> Vec<u8> {
        let mut d = vec![("peers", Owned::bytes(peers)), ("complete", Owned::Int(1))];
        if let Some(i) = interval {
            d.push(("interval", Owned::Int(i)));
        }
        if let Some(i) = min_interval {
            d.push(("min interval", Owned::Int(i)));
        }
        http_ok(&d.into_iter().collect::<Owned>().encode())
    }

    /// The single OpenTcp in `acts`: its connection and host.
    fn opened(acts: &[TrackerAction]) -> (ConnId, String) {
        match acts {
            [TrackerAction::OpenTcp { conn, host, .. }] => (*conn, host.clone()),
            other => panic!("expected one OpenTcp, got {other:?}"),
        }
    }

    /// Connects `conn` and returns the request line sent.
    fn connect(m: &mut TrackerManager, now: Time, conn: ConnId) -> String {
        m.handle_tcp_connected(now, conn);
        match actions(m).as_slice() {
            [TrackerAction::SendTcp { conn: c, bytes }] if *c == conn => {
                let s = String::from_utf8(bytes.clone()).unwrap();
                s.lines().next().unwrap().to_string()
            }
            other => panic!("expected SendTcp, got {other:?}"),
        }
    }

    /// Runs one successful HTTP announce on the next opened connection; returns the request line.
    fn announce_ok(m: &mut TrackerManager, now: Time, body: &[u8]) -> String {
        let (conn, _) = opened(&actions(m));
        let line = connect(m, now, conn);
        m.handle_tcp_data(now, conn, body);
        assert_eq!(actions(m), vec![TrackerAction::CloseTcp { conn }]);
        line
    }

    #[test]
    fn http_announce_cycle() {
        let mut m = mgr(&[&["http://a.example/announce"]]);
        let acts = actions(&mut m);
        assert_eq!(
            acts,
            vec![TrackerAction::OpenTcp {
                conn: ConnId(0),
                tracker: TrackerId(0),
                host: "a.example".into(),
                port: 80,
                tls: false
            }]
        );
        let line = connect(&mut m, Time::ZERO, ConnId(0));
        assert!(
            line.contains("event=started") && line.contains("left=100"),
            "{line}"
        );
        m.handle_tcp_data(
            secs(1),
            ConnId(0),
            &reply(Some(900), None, &[10, 0, 0, 1, 0x1a, 0xe2]),
        );
        assert_eq!(
            actions(&mut m),
            vec![TrackerAction::CloseTcp { conn: ConnId(0) }]
        );
        assert_eq!(
            events(&mut m),
            vec![
                TrackerEvent::Announced {
                    tracker: TrackerId(0),
                    event: AnnounceEvent::Started,
                    complete: Some(1),
                    incomplete: None,
                    next_announce: Some(secs(901)),
                },
                TrackerEvent::Peers {
                    tracker: TrackerId(0),
                    addrs: vec!["10.0.0.1:6882".parse().unwrap()]
                },
            ]
        );
        assert_eq!(m.poll_timeout(), Some(secs(901)));
        m.handle_timeout(secs(900));
        assert!(actions(&mut m).is_empty());
        m.handle_stats(5, 6, 7);
        m.handle_timeout(secs(901));
        let line = announce_ok(&mut m, secs(901), &reply(Some(900), None, &[]));
        assert!(!line.contains("event="), "{line}");
        assert!(line.contains("uploaded=5&downloaded=6&left=7"), "{line}");
    }

    #[test]
    fn https_asks_for_tls() {
        let mut m = mgr(&[&["https://secure.example/announce"]]);
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::OpenTcp {
                port: 443,
                tls: true,
                ..
            }]
        ));
    }

    #[test]
    fn tier_fallback_then_first_tier_again() {
        let mut m = mgr(&[
            &["http://a/announce", "http://b/announce"],
            &["http://c/announce"],
        ]);
        let (c1, h1) = opened(&actions(&mut m));
        m.handle_connect_failed(Time::ZERO, c1, "refused".into());
        let (c2, h2) = opened(&actions(&mut m));
        assert!(h1 != h2 && ["a", "b"].contains(&h1.as_str()) && ["a", "b"].contains(&h2.as_str()));
        connect(&mut m, Time::ZERO, c2);
        m.handle_tcp_data(Time::ZERO, c2, b"\x00garbage\r\n\r\n");
        let acts = actions(&mut m);
        assert_eq!(acts[0], TrackerAction::CloseTcp { conn: c2 });
        let (c3, h3) = opened(&acts[1..]);
        assert_eq!(h3, "c");
        connect(&mut m, Time::ZERO, c3);
        m.handle_tcp_data(Time::ZERO, c3, &reply(Some(1800), None, &[]));
        let evs = events(&mut m);
        assert!(matches!(
            &evs[0],
            TrackerEvent::Error {
                error: TrackerError::ConnectFailed(_),
                ..
            }
        ));
        assert!(matches!(
            &evs[1],
            TrackerEvent::Error {
                error: TrackerError::BadHttp(_),
                ..
            }
        ));
        assert!(matches!(
            &evs[2],
            TrackerEvent::Announced {
                tracker: TrackerId(2),
                ..
            }
        ));
        // The next round starts again at the first tier, in the same order.
        actions(&mut m);
        m.handle_timeout(secs(1800));
        assert_eq!(opened(&actions(&mut m)).1, h1);
    }

    #[test]
    fn answering_tracker_moves_to_front_of_tier() {
        let mut m = mgr(&[&[
            "http://a/announce",
            "http://b/announce",
            "http://c/announce",
        ]]);
        let before = m.tiers()[0].clone();
        let (c1, h1) = opened(&actions(&mut m));
        m.handle_tcp_closed(Time::ZERO, c1, None);
        let (c2, h2) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, c2);
        m.handle_tcp_data(Time::ZERO, c2, &reply(Some(1800), None, &[]));
        assert_ne!(h1, h2);
        let after = m.tiers()[0].clone();
        assert_eq!(after, vec![before[1], before[0], before[2]]);
        actions(&mut m);
        m.handle_timeout(secs(1800));
        assert_eq!(opened(&actions(&mut m)).1, h2);
    }

    #[test]
    fn tiers_are_shuffled_by_the_seed() {
        let urls: Vec<String> = (0..8).map(|i| format!("http://t{i}/announce")).collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let order = |seed| mgr_seed(&[&refs], seed).tiers()[0].clone();
        assert_eq!(order(3), order(3));
        let orders: Vec<_> = (0..5).map(order).collect();
        assert!(
            orders.iter().any(|o| o != &orders[0]),
            "seed changes nothing"
        );
        let mut sorted = orders[0].clone();
        sorted.sort();
        assert_eq!(sorted, (0..8).map(TrackerId).collect::<Vec<_>>());
    }

    #[test]
    fn failures_back_off() {
        let mut m = mgr(&[&["http://a/announce"]]);
        let mut now = Time::ZERO;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let (c, _) = opened(&actions(&mut m));
            m.handle_connect_failed(now, c, "refused".into());
            let evs = events(&mut m);
            let Some(TrackerEvent::AllFailed { retry_at }) = evs.last() else {
                panic!("{evs:?}");
            };
            assert_eq!(m.poll_timeout(), Some(*retry_at));
            waits.push(retry_at.saturating_since(now).as_secs());
            now = *retry_at;
            m.handle_timeout(now);
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 1800, 1800]);
    }

    #[test]
    fn interval_respects_min_interval_and_bounds() {
        for (interval, min, expected) in [
            (Some(10), Some(300), 300),
            (Some(10), None, 60),
            (Some(1_000_000_000), None, 4 * 3600),
            (None, None, 1800),
            (Some(-5), None, 1800),
            (Some(900), Some(60), 900),
        ] {
            let mut m = mgr(&[&["http://a/announce"]]);
            announce_ok(&mut m, Time::ZERO, &reply(interval, min, &[]));
            assert_eq!(
                m.poll_timeout(),
                Some(secs(expected)),
                "{interval:?} {min:?}"
            );
        }
    }

    #[test]
    fn completed_is_sent_once_and_at_once_despite_min_interval() {
        let mut m = mgr(&[&["http://a/announce"]]);
        announce_ok(&mut m, Time::ZERO, &reply(Some(1800), Some(120), &[]));
        m.handle_completed(secs(10));
        let line = announce_ok(&mut m, secs(10), &reply(Some(1800), Some(120), &[]));
        assert!(line.contains("event=completed"), "{line}");
        m.handle_completed(secs(130));
        assert_eq!(m.poll_timeout(), Some(secs(1810)));
        m.handle_timeout(secs(1810));
        let line = announce_ok(&mut m, secs(1810), &reply(Some(1800), None, &[]));
        assert!(!line.contains("event="), "{line}");
    }

    #[test]
    fn completed_during_a_round_with_min_interval_goes_out_right_after() {
        let mut m = mgr(&[&["http://a/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, c);
        m.handle_completed(secs(1));
        m.handle_tcp_data(secs(2), c, &reply(Some(1770), Some(885), &[]));
        let acts = actions(&mut m);
        assert_eq!(acts[0], TrackerAction::CloseTcp { conn: c });
        let (c, _) = opened(&acts[1..]);
        let line = connect(&mut m, secs(2), c);
        assert!(line.contains("event=completed"), "{line}");
    }

    #[test]
    fn completed_during_a_round_goes_out_right_after() {
        let mut m = mgr(&[&["http://a/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, c);
        m.handle_completed(secs(1));
        m.handle_tcp_data(secs(2), c, &reply(Some(1800), None, &[]));
        let acts = actions(&mut m);
        assert_eq!(acts[0], TrackerAction::CloseTcp { conn: c });
        let (c, _) = opened(&acts[1..]);
        let line = connect(&mut m, secs(2), c);
        assert!(line.contains("event=completed"), "{line}");
    }

    #[test]
    fn stop_sends_stopped_then_reports() {
        let mut m = mgr(&[&["http://a/announce"]]);
        announce_ok(&mut m, Time::ZERO, &reply(Some(1800), None, &[]));
        events(&mut m);
        m.handle_stop(secs(5));
        let line = announce_ok(
            &mut m,
            secs(5),
            &reply(Some(1800), None, &[10, 0, 0, 9, 0, 80]),
        );
        assert!(
            line.contains("event=stopped") && line.contains("numwant=0"),
            "{line}"
        );
        let evs = events(&mut m);
        assert!(matches!(
            evs[0],
            TrackerEvent::Announced {
                event: AnnounceEvent::Stopped,
                ..
            }
        ));
        assert_eq!(evs[1..], [TrackerEvent::Stopped]);
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(secs(10_000));
        assert!(actions(&mut m).is_empty());
    }

    #[test]
    fn stop_gives_up_after_its_deadline() {
        let mut m = mgr(&[&["http://a/announce"]]);
        announce_ok(&mut m, Time::ZERO, &reply(Some(1800), None, &[]));
        events(&mut m);
        m.handle_stop(secs(10));
        let (c, _) = opened(&actions(&mut m));
        assert_eq!(m.poll_timeout(), Some(secs(15)));
        m.handle_timeout(secs(15));
        assert_eq!(actions(&mut m), vec![TrackerAction::CloseTcp { conn: c }]);
        assert_eq!(events(&mut m), vec![TrackerEvent::Stopped]);
    }

    #[test]
    fn stop_before_any_answer_is_immediate() {
        let mut m = mgr(&[&["http://a/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        m.handle_stop(Time::ZERO);
        assert_eq!(actions(&mut m), vec![TrackerAction::CloseTcp { conn: c }]);
        assert_eq!(events(&mut m), vec![TrackerEvent::Stopped]);
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn unsupported_scheme_reported_once_and_skipped() {
        let mut m = mgr(&[&["wss://ws.example/announce"], &["http://a/announce"]]);
        assert_eq!(
            events(&mut m),
            vec![TrackerEvent::Error {
                tracker: TrackerId(0),
                url: "wss://ws.example/announce".into(),
                error: TrackerError::UnsupportedScheme("wss".into())
            }]
        );
        announce_ok(&mut m, Time::ZERO, &reply(Some(1800), None, &[]));
        m.handle_timeout(secs(1800));
        announce_ok(&mut m, secs(1800), &reply(Some(1800), None, &[]));
        let errors = events(&mut m)
            .into_iter()
            .filter(|e| matches!(e, TrackerEvent::Error { .. }))
            .count();
        assert_eq!(errors, 0);
    }

    #[test]
    fn http_request_times_out() {
        // A tracker that trickles its reply never trips the silence timeout, but the whole
        // request still has 30 s.
        let mut m = mgr(&[&["http://a/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, c);
        m.handle_tcp_data(
            secs(1),
            c,
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nd",
        );
        assert_eq!(m.poll_timeout(), Some(secs(11)));
        for t in [9, 18, 27] {
            m.handle_timeout(secs(t));
            m.handle_tcp_data(secs(t), c, b"1");
        }
        assert_eq!(m.poll_timeout(), Some(secs(30)));
        m.handle_timeout(secs(29));
        assert!(actions(&mut m).is_empty());
        m.handle_timeout(secs(30));
        assert_eq!(actions(&mut m), vec![TrackerAction::CloseTcp { conn: c }]);
        assert_eq!(
            events(&mut m),
            vec![
                TrackerEvent::Error {
                    tracker: TrackerId(0),
                    url: "http://a/announce".into(),
                    error: TrackerError::Timeout
                },
                TrackerEvent::AllFailed { retry_at: secs(90) }
            ]
        );
    }

    #[test]
    fn redirect_opens_a_new_connection() {
        let mut m = mgr(&[&["http://a.example/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, c);
        m.handle_tcp_data(
            Time::ZERO,
            c,
            b"HTTP/1.1 302 Found\r\nLocation: https://b.example:8443/ann?x=1\r\n\r\n",
        );
        let acts = actions(&mut m);
        assert_eq!(
            acts,
            vec![
                TrackerAction::CloseTcp { conn: c },
                TrackerAction::OpenTcp {
                    conn: ConnId(1),
                    tracker: TrackerId(0),
                    host: "b.example".into(),
                    port: 8443,
                    tls: true
                }
            ]
        );
        assert_eq!(
            connect(&mut m, Time::ZERO, ConnId(1)),
            "GET /ann?x=1 HTTP/1.1"
        );
        m.handle_tcp_data(Time::ZERO, ConnId(1), &reply(Some(1800), None, &[]));
        assert!(matches!(events(&mut m)[0], TrackerEvent::Announced { .. }));
    }

    fn udp_sent(acts: &[TrackerAction]) -> (SocketAddr, Vec<u8>) {
        match acts {
            [TrackerAction::SendUdp { addr, bytes, .. }] => (*addr, bytes.clone()),
            other => panic!("expected one SendUdp, got {other:?}"),
        }
    }

    #[test]
    fn udp_announce_through_the_manager() {
        let mut m = mgr(&[&["udp://tracker.example:1337/announce"]]);
        assert_eq!(
            actions(&mut m),
            vec![TrackerAction::Resolve {
                tracker: TrackerId(0),
                host: "tracker.example".into(),
                port: 1337
            }]
        );
        let addr: SocketAddr = "192.0.2.1:1337".parse().unwrap();
        m.handle_resolved(
            Time::ZERO,
            TrackerId(0),
            &["[2001:db8::1]:1337".parse().unwrap(), addr],
        );
        let (to, connect) = udp_sent(&actions(&mut m));
        assert_eq!((to, connect.len()), (addr, 16));
        let txid = &connect[12..16];
        let conn_reply = [&[0, 0, 0, 0][..], txid, &[0, 0, 0, 0, 0, 0, 0, 9]].concat();
        // The same bytes from another address are not the tracker's.
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:1337".parse().unwrap();
        m.handle_udp_datagram(Time::ZERO, "192.0.2.2:1337".parse().unwrap(), &conn_reply);
        assert!(actions(&mut m).is_empty());
        m.handle_udp_datagram(Time::ZERO, mapped, &conn_reply);
        let (_, ann) = udp_sent(&actions(&mut m));
        assert_eq!(
            (ann.len(), &ann[80..84]),
            (98, &[0, 0, 0, 2][..]),
            "started"
        );
        let r = [
            &[0, 0, 0, 1][..],
            &ann[12..16],
            &[0, 0, 0, 120, 0, 0, 0, 1, 0, 0, 0, 2, 10, 0, 0, 5, 0, 99],
        ]
        .concat();
        m.handle_udp_datagram(Time::ZERO, addr, &r);
        let evs = events(&mut m);
        assert_eq!(
            evs[1],
            TrackerEvent::Peers {
                tracker: TrackerId(0),
                addrs: vec!["10.0.0.5:99".parse().unwrap()]
            }
        );
        // interval 120 s from the tracker
        assert_eq!(m.poll_timeout(), Some(secs(120)));
    }

    #[test]
    fn udp_resolution_failure_and_timeout_fall_through() {
        let mut m = mgr(&[
            &["udp://gone.example:1/announce"],
            &["udp://127.0.0.1:2/announce"],
        ]);
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::Resolve { .. }]
        ));
        m.handle_resolved(Time::ZERO, TrackerId(0), &[]);
        let (to, _) = udp_sent(&actions(&mut m));
        assert_eq!(to, "127.0.0.1:2".parse::<SocketAddr>().unwrap());
        assert!(matches!(
            events(&mut m).as_slice(),
            [TrackerEvent::Error {
                error: TrackerError::ResolveFailed(_),
                ..
            }]
        ));
    }

    #[test]
    fn http_scrape_through_the_manager() {
        let mut m = mgr(&[&["http://a/x/announce?k=1"], &["http://b/tracker"]]);
        actions(&mut m);
        m.handle_scrape(Time::ZERO, TrackerId(0));
        let (c, _) = opened(&actions(&mut m));
        let line = connect(&mut m, Time::ZERO, c);
        assert_eq!(
            line,
            format!("GET /x/scrape?k=1&info_hash={} HTTP/1.1", "%11".repeat(20))
        );
        let stats: Owned = [
            ("complete", Owned::Int(2)),
            ("downloaded", Owned::Int(3)),
            ("incomplete", Owned::Int(4)),
        ]
        .into_iter()
        .collect();
        let files: Owned = [(IH.0.to_vec(), stats)].into_iter().collect();
        let body: Owned = [("files", files)].into_iter().collect();
        m.handle_tcp_data(Time::ZERO, c, &http_ok(&body.encode()));
        assert_eq!(
            events(&mut m),
            vec![TrackerEvent::Scrape {
                tracker: TrackerId(0),
                counts: ScrapeCounts {
                    complete: 2,
                    downloaded: 3,
                    incomplete: 4
                }
            }]
        );
        m.handle_scrape(Time::ZERO, TrackerId(1));
        assert!(matches!(
            events(&mut m).as_slice(),
            [TrackerEvent::Error {
                error: TrackerError::ScrapeUnsupported,
                ..
            }]
        ));
    }

    #[test]
    fn same_seed_same_actions() {
        let run = |seed| {
            let mut m = mgr_seed(
                &[&[
                    "udp://127.0.0.1:9/a",
                    "udp://127.0.0.2:9/a",
                    "http://h/announce",
                ]],
                seed,
            );
            let mut log = Vec::new();
            for s in [0u64, 15, 45, 105, 225, 465] {
                m.handle_timeout(secs(s));
                log.extend(actions(&mut m));
            }
            log
        };
        assert_eq!(run(4), run(4));
    }

    #[test]
    fn warning_and_tracker_id() {
        let mut m = mgr(&[&["http://a/announce"]]);
        let body: Owned = [
            ("interval", Owned::Int(1800)),
            ("tracker id", Owned::bytes("xyz")),
            ("warning message", Owned::bytes("update your client")),
        ]
        .into_iter()
        .collect();
        announce_ok(&mut m, Time::ZERO, &http_ok(&body.encode()));
        assert_eq!(
            events(&mut m)[0],
            TrackerEvent::Warning {
                tracker: TrackerId(0),
                url: "http://a/announce".into(),
                message: "update your client".into()
            }
        );
        m.handle_timeout(secs(1800));
        let line = announce_ok(&mut m, secs(1800), &reply(Some(1800), None, &[]));
        assert!(line.contains("&trackerid=xyz"), "{line}");
    }

    /// The transaction id of a BEP 15 request.
    fn txid(packet: &[u8]) -> [u8; 4] {
        packet[12..16].try_into().unwrap()
    }

    /// A connect reply to `connect` giving connection id 9.
    fn udp_connect_reply(connect: &[u8]) -> Vec<u8> {
        [&[0, 0, 0, 0][..], &txid(connect), &[0, 0, 0, 0, 0, 0, 0, 9]].concat()
    }

    /// An announce reply to `announce`: interval 1800 s and `peers` (compact IPv4).
    fn udp_announce_reply(announce: &[u8], peers: &[u8]) -> Vec<u8> {
        let head = [0, 0, 0x07, 0x08, 0, 0, 0, 1, 0, 0, 0, 2];
        [&[0, 0, 0, 1][..], &txid(announce), &head, peers].concat()
    }

    fn is_error(e: &TrackerEvent, tracker: usize, error: &TrackerError) -> bool {
        matches!(e, TrackerEvent::Error { tracker: t, error: x, .. } if t.0 == tracker && x == error)
    }

    const DEAD_UDP: &str = "udp://127.0.0.1:1/announce";

    #[test]
    fn dead_udp_tier_gives_way_to_the_next_tier_within_5_s() {
        let mut m = mgr(&[&[DEAD_UDP], &["http://b/announce"]]);
        let mut sends = Vec::new();
        let mut now = Time::ZERO;
        let conn = loop {
            let mut opened = None;
            for a in actions(&mut m) {
                match a {
                    TrackerAction::SendUdp { tracker, .. } => sends.push((tracker, now)),
                    TrackerAction::OpenTcp { conn, host, .. } if host == "b" => opened = Some(conn),
                    other => panic!("{other:?}"),
                }
            }
            if let Some(c) = opened {
                break c;
            }
            now = m.poll_timeout().unwrap();
            assert!(now <= secs(5), "tier 1 not tried by 5 s");
            m.handle_timeout(now);
        };
        assert_eq!(now, secs(5));
        assert_eq!(sends, [(TrackerId(0), secs(0)), (TrackerId(0), secs(2))]);
        connect(&mut m, now, conn);
        m.handle_tcp_data(now, conn, &reply(Some(1800), None, &[10, 0, 0, 2, 0, 80]));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn }]);
        assert_eq!(
            events(&mut m)[1],
            TrackerEvent::Peers {
                tracker: TrackerId(1),
                addrs: vec!["10.0.0.2:80".parse().unwrap()]
            }
        );
        // The dead tracker's exchange runs out on its own schedule and is reported, but the round
        // is over: no "all failed", and the next announce stays where tier 1 put it.
        assert_eq!(m.poll_timeout(), Some(secs(6)));
        m.handle_timeout(secs(6));
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::SendUdp { .. }]
        ));
        assert_eq!(m.poll_timeout(), Some(secs(14)));
        m.handle_timeout(secs(14));
        assert!(actions(&mut m).is_empty());
        let evs = events(&mut m);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert!(is_error(&evs[0], 0, &TrackerError::Timeout), "{evs:?}");
        assert_eq!(m.poll_timeout(), Some(secs(1805)));
    }

    /// Drives `m` with trackers that never answer (UDP dropped, TCP connects left pending)
    /// until `until`; returns when each tracker got its first request (UDP send or TCP open).
    fn first_requests(m: &mut TrackerManager, until: Time) -> Vec<(TrackerId, u64)> {
        let mut firsts: Vec<(TrackerId, u64)> = Vec::new();
        let mut now = Time::ZERO;
        loop {
            for a in actions(m) {
                let tracker = match a {
                    TrackerAction::SendUdp { tracker, .. } => tracker,
                    TrackerAction::OpenTcp { tracker, .. } => tracker,
                    _ => continue,
                };
                if !firsts.iter().any(|(t, _)| *t == tracker) {
                    firsts.push((tracker, now.as_nanos() / 1_000_000_000));
                }
            }
            match m.poll_timeout() {
                Some(t) if t <= until => now = t,
                _ => return firsts,
            }
            m.handle_timeout(now);
        }
    }

    #[test]
    fn a_dead_tier_0_of_any_size_gives_way_to_tier_1_after_5_s() {
        let dead: Vec<String> = (1..=6)
            .map(|i| format!("udp://127.0.0.{i}:1/announce"))
            .collect();
        let dead: Vec<&str> = dead.iter().map(String::as_str).collect();
        let mut m = mgr(&[&dead, &["http://b/announce"]]);
        let order = m.tiers()[0].clone();
        let firsts = first_requests(&mut m, secs(20));
        // Tier 1 goes at the first fallback, alongside the next tracker of tier 0; tier 0 then
        // goes on one tracker every 5 s (or at each failure).
        assert_eq!(firsts[0], (order[0], 0));
        assert!(firsts.contains(&(TrackerId(6), 5)), "{firsts:?}");
        assert!(firsts.contains(&(order[1], 5)), "{firsts:?}");
        assert!(firsts.contains(&(order[2], 10)), "{firsts:?}");
    }

    #[test]
    fn tiers_of_one_dead_tracker_each_cost_5_s_apiece() {
        let mut m = mgr(&[
            &[DEAD_UDP],
            &["http://hung/announce"],
            &["udp://127.0.0.2:1/announce"],
            &["http://b/announce"],
        ]);
        let firsts = first_requests(&mut m, secs(15));
        assert_eq!(
            firsts,
            [
                (TrackerId(0), 0),
                (TrackerId(1), 5),
                (TrackerId(2), 10),
                (TrackerId(3), 15)
            ]
        );
    }

    #[test]
    fn hung_tcp_connect_fails_after_10_s_and_the_next_tier_goes_at_5_s() {
        let mut m = mgr(&[&["http://a/announce"], &["http://b/announce"]]);
        let (a, host) = opened(&actions(&mut m));
        assert_eq!(host, "a");
        assert_eq!(m.poll_timeout(), Some(secs(5)));
        m.handle_timeout(secs(5));
        let (b, host) = opened(&actions(&mut m));
        assert_eq!(host, "b");
        connect(&mut m, secs(6), b);
        m.handle_tcp_data(secs(6), b, &reply(Some(1800), None, &[10, 0, 0, 3, 0, 80]));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn: b }]);
        assert!(matches!(
            events(&mut m).as_slice(),
            [
                TrackerEvent::Announced {
                    tracker: TrackerId(1),
                    next_announce: Some(t),
                    ..
                },
                TrackerEvent::Peers { .. }
            ] if *t == secs(1806)
        ));
        assert_eq!(m.poll_timeout(), Some(secs(10)));
        m.handle_timeout(secs(10));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn: a }]);
        let evs = events(&mut m);
        let want = TrackerError::ConnectTimeout(Duration::from_secs(10));
        assert!(
            matches!(evs.as_slice(), [e] if is_error(e, 0, &want)),
            "{evs:?}"
        );
        assert_eq!(m.poll_timeout(), Some(secs(1806)));
    }

    #[test]
    fn reply_that_never_comes_fails_after_10_s_of_silence() {
        // Tier 0 accepts and never answers; tier 1 refuses at once. The round waits for the
        // silent one (it may still answer) and only then reports that every tracker failed.
        let mut m = mgr(&[&["http://a/announce"], &["http://b/announce"]]);
        let (a, _) = opened(&actions(&mut m));
        connect(&mut m, secs(1), a);
        assert_eq!(m.poll_timeout(), Some(secs(5)));
        m.handle_timeout(secs(5));
        let (b, host) = opened(&actions(&mut m));
        assert_eq!(host, "b");
        m.handle_connect_failed(secs(5), b, "connection refused".into());
        let evs = events(&mut m);
        assert!(
            matches!(
                evs.as_slice(),
                [TrackerEvent::Error {
                    tracker: TrackerId(1),
                    ..
                }]
            ),
            "{evs:?}"
        );
        assert_eq!(m.poll_timeout(), Some(secs(11)));
        m.handle_timeout(secs(11));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn: a }]);
        let evs = events(&mut m);
        let want = TrackerError::ReceiveTimeout(Duration::from_secs(10));
        assert!(is_error(&evs[0], 0, &want), "{evs:?}");
        // Backoff counts from each tracker's own failure: b failed first.
        assert_eq!(evs[1], TrackerEvent::AllFailed { retry_at: secs(65) });
    }

    #[test]
    fn failed_lookup_moves_on_at_once_and_a_slow_one_after_5_s() {
        // HTTP: the driver reports the failed lookup as a connect failure.
        let mut m = mgr(&[&["http://gone.invalid/announce"], &["http://b/announce"]]);
        let (c, _) = opened(&actions(&mut m));
        m.handle_connect_failed(secs(1), c, "gone.invalid: name does not resolve".into());
        assert_eq!(opened(&actions(&mut m)).1, "b");
        // UDP, lookup never answered: the next tier goes after 5 s, the lookup fails after 10 s.
        let mut m = mgr(&[&["udp://slow.example:1/announce"], &["http://b/announce"]]);
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::Resolve { .. }]
        ));
        m.handle_timeout(secs(5));
        let (b, _) = opened(&actions(&mut m));
        connect(&mut m, secs(5), b);
        m.handle_tcp_data(secs(5), b, &reply(Some(1800), None, &[]));
        events(&mut m);
        m.handle_timeout(secs(10));
        let evs = events(&mut m);
        let want = TrackerError::ResolveTimeout {
            host: "slow.example".into(),
            after: Duration::from_secs(10),
        };
        assert!(
            matches!(evs.as_slice(), [e] if is_error(e, 0, &want)),
            "{evs:?}"
        );
        assert_eq!(
            want.to_string(),
            "looking up tracker host slow.example took longer than 10s (DNS unreachable?)"
        );
    }

    #[test]
    fn slow_tracker_is_retried_in_later_rounds_with_backoff() {
        // Tier 1 asks for a re-announce every 60 s; the dead tier 0 fails 14 s into each try.
        let mut m = mgr(&[&[DEAD_UDP], &["http://b/announce"]]);
        let mut udp_exchanges = Vec::new();
        let mut http_announces = Vec::new();
        let mut now = Time::ZERO;
        while now < secs(400) {
            for a in actions(&mut m) {
                match a {
                    TrackerAction::SendUdp { bytes, .. } => {
                        // A new exchange has a new transaction id; retransmissions repeat it.
                        if !udp_exchanges.iter().any(|(_, id)| *id == txid(&bytes)) {
                            udp_exchanges.push((now.as_nanos() / 1_000_000_000, txid(&bytes)));
                        }
                    }
                    TrackerAction::OpenTcp { conn, .. } => {
                        http_announces.push(now.as_nanos() / 1_000_000_000);
                        connect(&mut m, now, conn);
                        m.handle_tcp_data(now, conn, &reply(Some(60), None, &[]));
                    }
                    TrackerAction::CloseTcp { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
            now = m.poll_timeout().unwrap();
            m.handle_timeout(now);
        }
        let tries: Vec<u64> = udp_exchanges.iter().map(|(t, _)| *t).collect();
        // Failures at 14 s (retry after 60 s), 139 s (120 s) and 324 s (240 s): rounds at 65,
        // 190, 250 and 375 s skip it and go straight to tier 1.
        assert_eq!(tries, [0, 125, 310]);
        assert_eq!(http_announces, [5, 65, 130, 190, 250, 315, 375]);
    }

    #[test]
    fn late_answer_from_the_slow_tracker_still_yields_its_peers() {
        let mut m = mgr(&[&[DEAD_UDP], &["http://b/announce"]]);
        let (_, connect_packet) = udp_sent(&actions(&mut m));
        m.handle_timeout(secs(2));
        assert_eq!(
            udp_sent(&actions(&mut m)).1,
            connect_packet,
            "retransmitted"
        );
        m.handle_timeout(secs(5));
        let (b, _) = opened(&actions(&mut m));
        connect(&mut m, secs(5), b);
        m.handle_tcp_data(secs(5), b, &reply(Some(1800), None, &[10, 0, 0, 2, 0, 80]));
        actions(&mut m);
        events(&mut m);
        // Tier 0 wakes up after tier 1 answered.
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        m.handle_udp_datagram(secs(7), from, &udp_connect_reply(&connect_packet));
        let (_, ann) = udp_sent(&actions(&mut m));
        assert_eq!(&ann[80..84], &[0, 0, 0, 2], "started");
        m.handle_udp_datagram(
            secs(7),
            from,
            &udp_announce_reply(&ann, &[10, 0, 0, 5, 0, 99]),
        );
        assert_eq!(
            events(&mut m),
            vec![
                TrackerEvent::Announced {
                    tracker: TrackerId(0),
                    event: AnnounceEvent::Started,
                    complete: Some(2),
                    incomplete: Some(1),
                    next_announce: Some(secs(1805)),
                },
                TrackerEvent::Peers {
                    tracker: TrackerId(0),
                    addrs: vec!["10.0.0.5:99".parse().unwrap()]
                },
            ]
        );
        // The schedule tier 1 set stands; the next round finds tier 0 working and stops there.
        assert_eq!(m.poll_timeout(), Some(secs(1805)));
        m.handle_timeout(secs(1805));
        let (_, c) = udp_sent(&actions(&mut m));
        m.handle_udp_datagram(secs(1805), from, &udp_connect_reply(&c));
        let (_, ann) = udp_sent(&actions(&mut m));
        assert_eq!(&ann[80..84], &[0, 0, 0, 0], "regular announce");
        m.handle_udp_datagram(secs(1805), from, &udp_announce_reply(&ann, &[]));
        assert!(actions(&mut m).is_empty(), "tier 1 not asked");
        assert_eq!(m.poll_timeout(), Some(secs(3605)));
    }

    #[test]
    fn late_http_answer_in_the_same_round_ends_it() {
        let mut m = mgr(&[&["http://a/announce"], &["http://b/announce"]]);
        let (a, _) = opened(&actions(&mut m));
        connect(&mut m, Time::ZERO, a);
        m.handle_timeout(secs(5));
        let (b, _) = opened(&actions(&mut m));
        m.handle_tcp_data(secs(8), a, &reply(Some(1800), None, &[10, 0, 0, 7, 0, 80]));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn: a }]);
        assert!(matches!(
            events(&mut m).as_slice(),
            [
                TrackerEvent::Announced {
                    tracker: TrackerId(0),
                    ..
                },
                TrackerEvent::Peers {
                    tracker: TrackerId(0),
                    ..
                }
            ]
        ));
        // b's connection never opens: it fails on its own, without failing the round.
        assert_eq!(m.poll_timeout(), Some(secs(15)));
        m.handle_timeout(secs(15));
        assert_eq!(actions(&mut m), [TrackerAction::CloseTcp { conn: b }]);
        let evs = events(&mut m);
        assert!(
            matches!(
                evs.as_slice(),
                [TrackerEvent::Error {
                    tracker: TrackerId(1),
                    ..
                }]
            ),
            "{evs:?}"
        );
        assert_eq!(m.poll_timeout(), Some(secs(1808)));
    }

    #[test]
    fn completed_does_not_wait_again_for_a_tracker_still_silent() {
        let mut m = mgr(&[&[DEAD_UDP], &["http://b/announce"]]);
        actions(&mut m);
        m.handle_timeout(secs(2));
        actions(&mut m);
        m.handle_timeout(secs(5));
        announce_ok(&mut m, secs(5), &reply(Some(1800), None, &[]));
        m.handle_completed(secs(6));
        let acts = actions(&mut m);
        // Tier 0 is asked again (it may wake up), and tier 1 at once.
        assert!(matches!(acts[0], TrackerAction::SendUdp { .. }), "{acts:?}");
        let (b, _) = opened(&acts[1..]);
        let line = connect(&mut m, secs(6), b);
        assert!(line.contains("event=completed"), "{line}");
    }

    #[test]
    fn unanswered_resolve_times_out_and_is_asked_again() {
        let mut m = mgr(&[&["udp://t.example:1/announce"]]);
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::Resolve { .. }]
        ));
        m.handle_timeout(secs(9));
        assert!(events(&mut m).is_empty());
        m.handle_timeout(secs(10));
        assert!(matches!(
            events(&mut m).as_slice(),
            [
                TrackerEvent::Error {
                    error: TrackerError::ResolveTimeout { .. },
                    ..
                },
                TrackerEvent::AllFailed { .. }
            ]
        ));
        let retry = m.poll_timeout().unwrap();
        m.handle_timeout(retry);
        assert!(matches!(
            actions(&mut m).as_slice(),
            [TrackerAction::Resolve { .. }]
        ));
    }

    #[test]
    fn stale_inputs_are_ignored() {
        let mut m = mgr(&[&["http://a/announce"]]);
        actions(&mut m);
        m.handle_tcp_data(Time::ZERO, ConnId(77), b"HTTP/1.1 200 OK\r\n\r\n");
        m.handle_tcp_connected(Time::ZERO, ConnId(77));
        m.handle_tcp_closed(Time::ZERO, ConnId(77), None);
        m.handle_resolved(Time::ZERO, TrackerId(0), &[]);
        m.handle_resolved(Time::ZERO, TrackerId(99), &[]);
        m.handle_scrape(Time::ZERO, TrackerId(99));
        assert!(actions(&mut m).is_empty());
        assert!(events(&mut m).is_empty());
    }
}
