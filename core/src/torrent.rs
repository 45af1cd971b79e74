//! One torrent, whole: its start-up check, its swarm ([`Session`]) and its trackers
//! ([`TrackerManager`]), behind one recordable input.
//!
//! A [`TorrentTask`] is what the driver runs for each torrent. Every input goes through
//! [`TorrentTask::handle_input`] as one [`TorrentInput`], so a trace of those inputs covers the
//! start-up verdict and the trackers as well as the peers. The task joins its parts itself: the
//! session's `started`/`completed`/`stopped` announces drive the tracker manager, peers the
//! trackers return go to the session's peer list, the transfer counters go with every announce,
//! and the tracker manager's seed derives from the session's.
//!
//! Life of a task:
//! 1. **Checking** (unless built with [`StartState::Verified`]): the driver reports what is on
//!    disk with [`TorrentInput::Start`] (each file's [`FileStamp`] and the resume file's bytes);
//!    the task decides which pieces to trust ([`resume::plan`]) and asks for the rest to be
//!    hashed with [`Action::HashPiece`], a few at a time, comparing each digest with the
//!    torrent's. Peers are not accepted yet ([`TorrentTask::accepts_peers`]); discovered peers
//!    and a file selection are kept for later. [`TorrentEvent::Checked`] ends the phase.
//! 2. **Running**: the session exists; session inputs go to it, tracker inputs to the manager.
//! 3. **Stopping**: after [`Input::Shutdown`] the trackers get `stopped`;
//!    [`TorrentTask::is_stopped`] says when nothing more will happen.
//!
//! After every input drain [`TorrentTask::poll_action`] and [`TorrentTask::poll_event`] until
//! `None`, then sleep until [`TorrentTask::poll_timeout`] and feed
//! `TorrentInput::Session(Input::Timeout)` (early or repeated calls do nothing extra).

use core::fmt;
use core::net::SocketAddr;
use std::collections::VecDeque;

use crate::bitfield::Bitfield;
use crate::id::{PeerHandle, PeerId};
use crate::metainfo::Metainfo;
use crate::resume::{self, FileStamp, ResumeData, ResumeError};
use crate::session::{Action, AnnounceEvent, Event, Input, Session, SessionConfig, Torrent};
use crate::time::Time;
use crate::tracker::manager::{
    ConnId, ManagerConfig, TrackerAction, TrackerEvent, TrackerId, TrackerManager,
};
use crate::webseed::{WebSeedError, WebSeedInput};

mod webseeds;
use webseeds::WebSeeds;
pub use webseeds::{RUN_BYTES, WEB_SEED_TRACKER};

/// Pieces hashed at once during the start-up check: enough to keep the disk workers busy.
pub const CHECK_IN_FLIGHT: usize = 4;

/// Mixed into the session's seed for the tracker manager's (tier shuffles, keys, transaction ids).
const TRACKER_SEED_SALT: u64 = 0x7472_6163_6b65_7273;

/// Everything a task is configured with, as plain data a trace header stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentConfig {
    /// The swarm's settings, with the seed everything random derives from.
    pub session: SessionConfig,
    /// The announce cycle's settings.
    pub trackers: ManagerConfig,
    /// The tracker tiers (`announce-list`, or `[[announce]]`; empty: no trackers).
    pub tiers: Vec<Vec<String>>,
    /// Web seed URLs (BEP 19: the torrent's `url-list` and `--web-seed`), at most
    /// [`MAX_WEB_SEEDS`](crate::webseed::MAX_WEB_SEEDS) used.
    pub web_seeds: Vec<String>,
}

/// How a task learns which pieces are already on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartState {
    /// These pieces are known good (a simulation, a benchmark, data checked elsewhere): the task
    /// starts running at once.
    Verified(Bitfield),
    /// Wait for [`TorrentInput::Start`] and check what is on disk.
    Check,
    /// A magnet link: only the torrent's info-hash is known (pass [`Torrent::unknown`]). The
    /// swarm starts at once and fetches the metadata from peers; then
    /// [`TorrentEvent::MetadataReceived`] asks the driver for [`TorrentInput::Start`] and the
    /// check follows, the connections staying open.
    Magnet,
}

/// Inputs from the sockets of a torrent's trackers (see [`TrackerAction`] for what asks for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerInput<'a> {
    /// A TCP connection asked for with [`TrackerAction::OpenTcp`] is open.
    TcpConnected {
        /// The connection.
        conn: ConnId,
    },
    /// Bytes arrived on a tracker connection (after TLS for https).
    TcpData {
        /// The connection.
        conn: ConnId,
        /// The bytes, split anywhere.
        bytes: &'a [u8],
    },
    /// The server closed the connection (`error: None`), or it broke.
    TcpClosed {
        /// The connection.
        conn: ConnId,
        /// What broke, if it broke.
        error: Option<String>,
    },
    /// The connection could not be made (resolution, TCP or TLS).
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why, for the user.
        why: String,
    },
    /// The answer to [`TrackerAction::Resolve`] (empty when the name did not resolve).
    Resolved {
        /// The tracker.
        tracker: TrackerId,
        /// The addresses found.
        addrs: &'a [SocketAddr],
    },
    /// A datagram from a UDP tracker's address.
    Datagram {
        /// Where it came from.
        from: SocketAddr,
        /// Its bytes.
        bytes: &'a [u8],
    },
}

/// Everything that can happen to a torrent, as plain data so a trace can record and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentInput<'a> {
    /// What is on disk at start (only while checking).
    Start {
        /// Each file's stamp now, in torrent order (`None`: missing or unreadable).
        files: &'a [Option<FileStamp>],
        /// The resume file's bytes, if there is one.
        resume: Option<&'a [u8]>,
    },
    /// An input for the swarm. [`Input::Timeout`] also fires the trackers' timers and
    /// [`Input::Shutdown`] also stops the trackers.
    Session(Input<'a>),
    /// An input from a tracker socket.
    Tracker(TrackerInput<'a>),
}

/// What the driver must do for a torrent. Drain with [`TorrentTask::poll_action`] after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum TorrentAction {
    /// A swarm or disk action ([`Action::Announce`] never appears: the task handles it).
    Session(Action),
    /// A tracker socket action.
    Tracker(TrackerAction),
}

/// What the user interface may show. Drain with [`TorrentTask::poll_event`] after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentEvent {
    /// The resume data could not be used: every piece with data is checked instead.
    ResumeIgnored(ResumeError),
    /// The start-up check is over: `verified` of `pieces` pieces are good; peers come next.
    Checked {
        /// Pieces that count.
        verified: u32,
        /// Pieces in the torrent.
        pieces: u32,
    },
    /// Something happened in the swarm.
    Session(Event),
    /// Something happened with a tracker (peers it returned go straight to the swarm instead).
    Tracker(TrackerEvent),
    /// A magnet link's metadata arrived and describes a valid torrent, now [`TorrentTask::torrent`]:
    /// prepare its files and send [`TorrentInput::Start`].
    MetadataReceived {
        /// The bencoded info dictionary (its SHA-1 is the info-hash), to save as a `.torrent`.
        info: Vec<u8>,
    },
    /// A magnet link's metadata matched the info-hash but is not a torrent we can use; the task
    /// shuts down.
    BadMetadata(String),
    /// A web seed failed: it waits before its next request, or (`dropped`) is given up.
    WebSeed {
        /// Its URL.
        url: String,
        /// What went wrong.
        error: WebSeedError,
        /// True when it is given up for good.
        dropped: bool,
    },
}

impl fmt::Display for TorrentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorrentEvent::ResumeIgnored(e) => write!(f, "ignoring resume data: {e}"),
            TorrentEvent::Checked { verified, pieces } => {
                write!(f, "checked: {verified} of {pieces} pieces good")
            }
            TorrentEvent::Session(e) => e.fmt(f),
            TorrentEvent::MetadataReceived { info } => {
                write!(f, "metadata received ({} bytes)", info.len())
            }
            TorrentEvent::BadMetadata(e) => write!(f, "the metadata peers sent is unusable: {e}"),
            TorrentEvent::WebSeed {
                url,
                error,
                dropped,
            } => {
                let then = if *dropped { "dropped" } else { "backing off" };
                write!(f, "web seed {url}: {error} ({then})")
            }
            TorrentEvent::Tracker(e) => match e {
                TrackerEvent::Peers { tracker, addrs } => {
                    write!(f, "tracker {}: {} peers", tracker.0, addrs.len())
                }
                TrackerEvent::Announced {
                    tracker,
                    event,
                    complete,
                    incomplete,
                    ..
                } => write!(
                    f,
                    "tracker {}: announced {event:?} (seeders {complete:?}, leechers {incomplete:?})",
                    tracker.0
                ),
                TrackerEvent::Warning { url, message, .. } => {
                    write!(f, "tracker {url}: warning: {message}")
                }
                TrackerEvent::Error { url, error, .. } => write!(f, "tracker {url}: {error}"),
                TrackerEvent::AllFailed { retry_at } => {
                    write!(f, "no tracker answered; next round at {retry_at}")
                }
                TrackerEvent::Scrape { tracker, counts } => {
                    write!(f, "tracker {}: scrape {counts:?}", tracker.0)
                }
                TrackerEvent::Stopped => f.write_str("trackers stopped"),
            },
        }
    }
}

/// The start-up check in progress.
#[derive(Debug)]
struct Check {
    torrent: Torrent,
    /// Pieces known good so far.
    have: Bitfield,
    /// Pieces still to hash, lowest last (popped).
    todo: Vec<u32>,
    /// Pieces being hashed.
    in_flight: Vec<u32>,
    /// Pieces to check in all, for progress.
    total: u32,
    /// True once [`TorrentInput::Start`] arrived.
    started: bool,
    /// Inputs that wait for the session: discovered peers and a file selection.
    peers: Vec<SocketAddr>,
    wanted: Option<Vec<bool>>,
    /// A magnet link's swarm, running since before the metadata arrived.
    swarm: Option<Swarm>,
}

/// The swarm and its trackers.
#[derive(Debug)]
struct Swarm {
    session: Box<Session>,
    trackers: Box<TrackerManager>,
}

#[derive(Debug)]
enum Phase {
    Checking(Box<Check>),
    /// The swarm runs (for a magnet link, first without its metadata).
    Running(Swarm),
    /// Shut down before the check was over.
    Abandoned(Box<Check>),
    /// Only while moving from one phase to the next.
    Moving,
}

impl Phase {
    fn swarm(&self) -> Option<&Swarm> {
        match self {
            Phase::Running(s) => Some(s),
            Phase::Checking(c) | Phase::Abandoned(c) => c.swarm.as_ref(),
            Phase::Moving => None,
        }
    }

    fn swarm_mut(&mut self) -> Option<&mut Swarm> {
        match self {
            Phase::Running(s) => Some(s),
            Phase::Checking(c) | Phase::Abandoned(c) => c.swarm.as_mut(),
            Phase::Moving => None,
        }
    }
}

/// One torrent's whole protocol engine. See the module documentation for the call contract.
#[derive(Debug)]
pub struct TorrentTask {
    config: TorrentConfig,
    phase: Phase,
    now: Time,
    actions: VecDeque<TorrentAction>,
    events: VecDeque<TorrentEvent>,
    has_trackers: bool,
    completed_announced: bool,
    trackers_stopped: bool,
    shutting_down: bool,
    /// A file selection given to a magnet link before its metadata: applied once it is known.
    early_wanted: Option<Vec<bool>>,
    /// The web seeds (BEP 19), fetching once the swarm runs with its metadata.
    web_seeds: WebSeeds,
}

impl TorrentTask {
    /// A task for `torrent`. With [`StartState::Verified`] it runs at once (queuing the
    /// `started` announce); with [`StartState::Check`] it waits for [`TorrentInput::Start`].
    pub fn new(config: TorrentConfig, torrent: Torrent, start: StartState, now: Time) -> Self {
        let has_trackers = config.tiers.iter().any(|t| !t.is_empty());
        let pieces = torrent.piece_count();
        let mut events = VecDeque::new();
        let web_seeds = WebSeeds::new(&config.web_seeds, &mut events);
        let mut task = TorrentTask {
            config,
            phase: Phase::Checking(Box::new(Check {
                have: Bitfield::new(pieces),
                torrent,
                todo: Vec::new(),
                in_flight: Vec::new(),
                total: 0,
                started: false,
                peers: Vec::new(),
                wanted: None,
                swarm: None,
            })),
            now,
            actions: VecDeque::new(),
            events,
            has_trackers,
            completed_announced: false,
            trackers_stopped: false,
            shutting_down: false,
            early_wanted: None,
            web_seeds,
        };
        match start {
            StartState::Verified(have) => {
                if let Phase::Checking(c) = &mut task.phase {
                    c.have = have;
                }
                task.start_running(now);
            }
            StartState::Magnet => {
                let info_hash = task.torrent().info_hash;
                let session = Session::new_magnet(task.config.session.clone(), info_hash, now);
                let trackers = task.new_trackers(&session);
                task.phase = Phase::Running(Swarm {
                    session: Box::new(session),
                    trackers: Box::new(trackers),
                });
            }
            StartState::Check => {}
        }
        task
    }

    fn new_trackers(&self, session: &Session) -> TrackerManager {
        TrackerManager::new(
            self.config.trackers.clone(),
            self.config.tiers.clone(),
            session.torrent().info_hash,
            session.peer_id(),
            self.config.session.listen_port,
            self.config.session.seed ^ TRACKER_SEED_SALT,
        )
    }

    // ---- getters ----

    /// The torrent.
    pub fn torrent(&self) -> &Torrent {
        match &self.phase {
            Phase::Checking(c) => &c.torrent,
            Phase::Running(s) => s.session.torrent(),
            Phase::Abandoned(c) => &c.torrent,
            Phase::Moving => unreachable!("a task is never left between phases"),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &TorrentConfig {
        &self.config
    }

    /// The swarm, once the start-up check is over (for a magnet link, from the start).
    pub fn session(&self) -> Option<&Session> {
        self.phase.swarm().map(|s| &*s.session)
    }

    /// The trackers, once the start-up check is over (for a magnet link, from the start).
    pub fn trackers(&self) -> Option<&TrackerManager> {
        self.phase.swarm().map(|s| &*s.trackers)
    }

    /// True while a magnet link's metadata is being fetched from peers.
    pub fn fetching_metadata(&self) -> bool {
        matches!(&self.phase, Phase::Running(s) if s.session.needs_metadata())
    }

    /// While checking: pieces hashed so far and pieces to hash in all.
    pub fn check_progress(&self) -> Option<(u32, u32)> {
        match &self.phase {
            Phase::Checking(c) => {
                let left = (c.todo.len() + c.in_flight.len()) as u32;
                Some((c.total - left, c.total))
            }
            _ => None,
        }
    }

    /// The pieces that count now (during the check: those found good so far).
    pub fn have(&self) -> &Bitfield {
        match &self.phase {
            Phase::Running(s) => s.session.have(),
            Phase::Checking(c) | Phase::Abandoned(c) => &c.have,
            Phase::Moving => unreachable!("a task is never left between phases"),
        }
    }

    /// True once connections can be handed over ([`Input::Incoming`]): the swarm runs (the check
    /// is over, or this is a magnet link).
    pub fn accepts_peers(&self) -> bool {
        self.phase.swarm().is_some() && !self.shutting_down
    }

    /// The handle the next accepted connection will get, while [`TorrentTask::accepts_peers`].
    pub fn next_handle(&self) -> Option<PeerHandle> {
        self.session().map(Session::next_handle)
    }

    /// Our peer id, once running.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.session().map(Session::peer_id)
    }

    /// True when every wanted piece is verified (false while checking).
    pub fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Running(_)) && self.session().is_some_and(Session::is_complete)
    }

    /// True once the `completed` announce reached a tracker, or there is no tracker to tell:
    /// none in the torrent, or every one failed without ever answering.
    pub fn completed_announced(&self) -> bool {
        let nobody = !self.has_trackers || self.trackers().is_some_and(|t| !t.may_answer());
        self.completed_announced || (nobody && self.is_complete())
    }

    /// True after shutdown once the trackers said goodbye (or gave up): nothing more will happen.
    pub fn is_stopped(&self) -> bool {
        self.shutting_down && (self.trackers_stopped || !self.has_trackers)
    }

    /// True when the torrent has at least one tracker.
    pub fn has_trackers(&self) -> bool {
        self.has_trackers
    }

    /// The latest time the task has seen.
    pub fn now(&self) -> Time {
        self.now
    }

    // ---- outputs ----

    /// The next thing the driver must do, until `None`.
    pub fn poll_action(&mut self) -> Option<TorrentAction> {
        self.actions.pop_front()
    }

    /// The next thing to show the user, until `None`.
    pub fn poll_event(&mut self) -> Option<TorrentEvent> {
        self.events.pop_front()
    }

    /// When to feed `TorrentInput::Session(Input::Timeout)` next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let s = self.phase.swarm()?;
        [
            s.session.poll_timeout(),
            s.trackers.poll_timeout(),
            self.web_seeds.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- input ----

    /// Feeds one input. `now` earlier than a previous input's is treated as that time.
    pub fn handle_input(&mut self, now: Time, input: TorrentInput<'_>) {
        self.now = self.now.max(now);
        let now = self.now;
        match input {
            TorrentInput::Start { files, resume } => self.on_start(now, files, resume),
            TorrentInput::Session(input) => {
                match input {
                    Input::Timeout => self.web_seeds.handle_timeout(now),
                    Input::Shutdown => self.web_seeds.shutdown(),
                    _ => {}
                }
                self.on_session_input(now, input)
            }
            TorrentInput::Tracker(input) if self.web_seeds.owns(tracker_conn(&input)) => {
                let input = match input {
                    TrackerInput::TcpConnected { conn } => WebSeedInput::Connected { conn },
                    TrackerInput::TcpData { conn, bytes } => WebSeedInput::Data { conn, bytes },
                    TrackerInput::TcpClosed { conn, error } => WebSeedInput::Closed { conn, error },
                    TrackerInput::ConnectFailed { conn, why } => {
                        WebSeedInput::ConnectFailed { conn, why }
                    }
                    TrackerInput::Resolved { .. } | TrackerInput::Datagram { .. } => {
                        unreachable!("tracker_conn names no web seed connection for these")
                    }
                };
                self.web_seeds.handle_input(now, input);
            }
            TorrentInput::Tracker(input) => {
                if let Some(Swarm { session, trackers }) = self.phase.swarm_mut() {
                    stats(session, trackers);
                    match input {
                        TrackerInput::TcpConnected { conn } => {
                            trackers.handle_tcp_connected(now, conn)
                        }
                        TrackerInput::TcpData { conn, bytes } => {
                            trackers.handle_tcp_data(now, conn, bytes)
                        }
                        TrackerInput::TcpClosed { conn, error } => {
                            trackers.handle_tcp_closed(now, conn, error)
                        }
                        TrackerInput::ConnectFailed { conn, why } => {
                            trackers.handle_connect_failed(now, conn, why)
                        }
                        TrackerInput::Resolved { tracker, addrs } => {
                            trackers.handle_resolved(now, tracker, addrs)
                        }
                        TrackerInput::Datagram { from, bytes } => {
                            trackers.handle_udp_datagram(now, from, bytes)
                        }
                    }
                }
            }
        }
        self.drain(now);
    }

    fn on_session_input(&mut self, now: Time, input: Input<'_>) {
        match &mut self.phase {
            // A magnet link has no files to select yet: keep the selection for later.
            Phase::Running(swarm) if swarm.session.needs_metadata() => match input {
                Input::SelectFiles { wanted } => self.early_wanted = Some(wanted.to_vec()),
                other => swarm.feed(now, other),
            },
            Phase::Running(swarm) => swarm.feed(now, input),
            Phase::Checking(c) => match input {
                Input::PieceHashed { piece, digest } => {
                    if let Some(pos) = c.in_flight.iter().position(|&p| p == piece) {
                        c.in_flight.swap_remove(pos);
                        if c.torrent.piece_hashes.get(piece as usize) == Some(&digest) {
                            c.have.set(piece);
                        }
                        self.continue_check(now);
                    }
                }
                Input::HashFailed { piece, .. } => {
                    if let Some(pos) = c.in_flight.iter().position(|&p| p == piece) {
                        c.in_flight.swap_remove(pos);
                        self.continue_check(now);
                    }
                }
                Input::SelectFiles { wanted } => c.wanted = Some(wanted.to_vec()),
                Input::Shutdown => {
                    self.shutting_down = true;
                    c.todo.clear();
                    if let Some(swarm) = c.swarm.as_mut() {
                        swarm.feed(now, Input::Shutdown);
                    }
                    if let Phase::Checking(c) = std::mem::replace(&mut self.phase, Phase::Moving) {
                        self.phase = Phase::Abandoned(c);
                    }
                }
                // A magnet link's swarm runs on while its data is checked.
                other if c.swarm.is_some() => {
                    if let Some(swarm) = c.swarm.as_mut() {
                        swarm.feed(now, other);
                    }
                }
                Input::PeersDiscovered { addrs } => {
                    c.peers.extend_from_slice(addrs);
                    c.peers.truncate(MAX_WAITING_PEERS);
                }
                // Nothing else can happen before the session exists; an accepted connection is
                // not possible (`accepts_peers` is false) and a timeout has nothing to fire.
                _ => {}
            },
            Phase::Abandoned(c) => {
                // Connections of a magnet link's swarm still close after shutdown.
                if let Some(swarm) = c.swarm.as_mut() {
                    swarm.feed(now, input);
                }
            }
            Phase::Moving => {}
        }
    }

    fn on_start(&mut self, now: Time, files: &[Option<FileStamp>], resume: Option<&[u8]>) {
        let Phase::Checking(c) = &mut self.phase else {
            return;
        };
        if c.started {
            return;
        }
        c.started = true;
        let saved = match resume.map(|b| ResumeData::decode(b, &c.torrent)) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                self.events.push_back(TorrentEvent::ResumeIgnored(e));
                None
            }
            None => None,
        };
        let plan = resume::plan(&c.torrent, saved.as_ref(), files);
        c.have = plan.have;
        c.todo = plan.check.iter_ones().collect();
        c.todo.reverse();
        c.total = c.todo.len() as u32;
        self.continue_check(now);
    }

    /// Keeps [`CHECK_IN_FLIGHT`] hashes going; starts the swarm when all are in.
    fn continue_check(&mut self, now: Time) {
        let Phase::Checking(c) = &mut self.phase else {
            return;
        };
        while c.in_flight.len() < CHECK_IN_FLIGHT {
            let Some(piece) = c.todo.pop() else { break };
            c.in_flight.push(piece);
            self.actions
                .push_back(TorrentAction::Session(Action::HashPiece { piece }));
        }
        if c.todo.is_empty() && c.in_flight.is_empty() {
            self.events.push_back(TorrentEvent::Checked {
                verified: c.have.count(),
                pieces: c.torrent.piece_count(),
            });
            self.start_running(now);
        }
    }

    fn start_running(&mut self, now: Time) {
        let c = match std::mem::replace(&mut self.phase, Phase::Moving) {
            Phase::Checking(c) => c,
            other => {
                self.phase = other;
                return;
            }
        };
        let Check {
            torrent,
            have,
            peers,
            wanted,
            swarm,
            ..
        } = *c;
        let (mut session, trackers) = match swarm {
            Some(Swarm {
                mut session,
                trackers,
            }) => {
                session.set_torrent(now, torrent, have);
                (session, trackers)
            }
            None => {
                let session = Session::new(self.config.session.clone(), torrent, have, now);
                let trackers = self.new_trackers(&session);
                (Box::new(session), Box::new(trackers))
            }
        };
        if let Some(wanted) = wanted {
            session.handle_input(now, Input::SelectFiles { wanted: &wanted });
        }
        if !peers.is_empty() {
            session.handle_input(now, Input::PeersDiscovered { addrs: &peers });
        }
        self.web_seeds
            .set_torrent(session.torrent(), &mut self.events);
        self.phase = Phase::Running(Swarm { session, trackers });
    }

    /// A magnet link's metadata arrived: check it describes a torrent, then check the data.
    fn on_metadata(&mut self, now: Time, info: Vec<u8>) {
        let torrent = match metainfo_of(&info) {
            Ok(t) => t,
            Err(e) => {
                self.events.push_back(TorrentEvent::BadMetadata(e));
                if let Some(swarm) = self.phase.swarm_mut() {
                    swarm.feed(now, Input::Shutdown);
                }
                return;
            }
        };
        let Phase::Running(swarm) = std::mem::replace(&mut self.phase, Phase::Moving) else {
            unreachable!("metadata arrives only while running");
        };
        let pieces = torrent.piece_count();
        self.phase = Phase::Checking(Box::new(Check {
            torrent,
            have: Bitfield::new(pieces),
            todo: Vec::new(),
            in_flight: Vec::new(),
            total: 0,
            started: false,
            peers: Vec::new(),
            wanted: self.early_wanted.take(),
            swarm: Some(swarm),
        }));
        self.events
            .push_back(TorrentEvent::MetadataReceived { info });
    }

    /// Moves the parts' outputs into the task's queues, joining them where they meet.
    fn drain(&mut self, now: Time) {
        // Web seeds fetch only once the torrent is known and checked.
        let fetching = matches!(&self.phase, Phase::Running(s) if !s.session.needs_metadata())
            && !self.shutting_down;
        let Some(Swarm { session, trackers }) = self.phase.swarm_mut() else {
            return;
        };
        let mut metadata = None;
        loop {
            let mut more = false;
            if !self.web_seeds.is_empty() {
                let session = fetching.then_some(&mut **session);
                self.web_seeds
                    .drive(now, session, &mut self.actions, &mut self.events);
            }
            while let Some(a) = session.poll_action() {
                match a {
                    // The manager announces `started` by itself when it is created.
                    Action::Announce {
                        event: AnnounceEvent::Started | AnnounceEvent::None,
                    } => {}
                    Action::Announce {
                        event: AnnounceEvent::Completed,
                    } => {
                        stats(session, trackers);
                        trackers.handle_completed(now);
                    }
                    Action::Announce {
                        event: AnnounceEvent::Stopped,
                    } => {
                        self.shutting_down = true;
                        stats(session, trackers);
                        trackers.handle_stop(now);
                    }
                    other => self.actions.push_back(TorrentAction::Session(other)),
                }
            }
            while let Some(e) = session.poll_event() {
                if let Event::MetadataReceived { info } = &e {
                    metadata = Some(info.clone());
                }
                if let Event::HashFailed { .. } | Event::Complete = &e {
                    // A web seed may have to back off, or close its idle connection.
                    more |= !self.web_seeds.is_empty();
                }
                self.web_seeds.on_session_event(now, &e);
                self.events.push_back(TorrentEvent::Session(e));
            }
            while let Some(a) = trackers.poll_action() {
                self.actions.push_back(TorrentAction::Tracker(a));
            }
            while let Some(e) = trackers.poll_event() {
                match e {
                    TrackerEvent::Peers { addrs, .. } => {
                        session.handle_input(now, Input::PeersDiscovered { addrs: &addrs });
                        more = true;
                    }
                    TrackerEvent::Stopped => self.trackers_stopped = true,
                    TrackerEvent::Announced {
                        event: AnnounceEvent::Completed,
                        ..
                    } => {
                        self.completed_announced = true;
                        self.events.push_back(TorrentEvent::Tracker(e));
                    }
                    other => self.events.push_back(TorrentEvent::Tracker(other)),
                }
            }
            if !more {
                break;
            }
        }
        if let Some(info) = metadata {
            self.on_metadata(now, info);
            self.drain(now);
        }
    }
}

impl Swarm {
    /// One input for the session; a timeout fires the trackers' timers too.
    fn feed(&mut self, now: Time, input: Input<'_>) {
        let timeout = matches!(input, Input::Timeout);
        self.session.handle_input(now, input);
        if timeout && self.trackers.poll_timeout().is_some_and(|t| t <= now) {
            stats(&self.session, &mut self.trackers);
            self.trackers.handle_timeout(now);
        }
    }
}

/// The session's view of a fetched info dictionary, or why it is not a usable torrent.
fn metainfo_of(info: &[u8]) -> Result<Torrent, String> {
    let mut file = Vec::with_capacity(info.len() + 8);
    file.extend_from_slice(b"d4:info");
    file.extend_from_slice(info);
    file.push(b'e');
    let m = Metainfo::from_bytes(&file).map_err(|e| e.to_string())?;
    // Bytes after the dictionary would be read as more keys of the file around it: the torrent
    // would then be the dictionary alone, of another info-hash.
    if m.info.raw != info {
        return Err("bytes follow the info dictionary".into());
    }
    Ok(Torrent::from_metainfo(&m))
}

/// The connection a TCP tracker input is about (`ConnId(0)` for the others, which no web seed
/// has).
fn tracker_conn(input: &TrackerInput<'_>) -> ConnId {
    match input {
        TrackerInput::TcpConnected { conn }
        | TrackerInput::TcpData { conn, .. }
        | TrackerInput::TcpClosed { conn, .. }
        | TrackerInput::ConnectFailed { conn, .. } => *conn,
        TrackerInput::Resolved { .. } | TrackerInput::Datagram { .. } => ConnId(0),
    }
}

/// Addresses kept while checking, at most (the session bounds its own list later).
const MAX_WAITING_PEERS: usize = 1000;

/// The transfer counters the next announces carry.
fn stats(session: &Session, trackers: &mut TrackerManager) {
    trackers.handle_stats(session.uploaded(), session.downloaded(), session.left());
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod webseed_tests;
