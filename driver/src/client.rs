//! One torrent, run to the end: the mio event loop around the core's
//! [`TorrentTask`](kp_torrent_core::torrent::TorrentTask) (its
//! start-up check, swarm and trackers).
//!
//! One thread runs the loop. Each turn it (1) reads the clock once, (2) fires the core's due
//! timers, (3) drains the core's actions and carries them out (connect, send, close, disk jobs,
//! announces) and its events (shown to the user), (4) sleeps in `mio::Poll` until the earliest
//! deadline or socket readiness, and (5) feeds what happened — bytes, connects, closes, disk
//! completions from the worker pool (through the `mio::Waker`), lookups, signals — back into the
//! core as timestamped inputs. Disk I/O and SHA-1 run on [`DiskPool`] threads; the loop never
//! blocks on them.
//!
//! Backpressure: a peer whose send queue holds more than [`SEND_QUEUE_LIMIT`] bytes (plus its
//! queued disk reads) gets no new disk reads until it drains; sockets are not read while disk
//! writes are more than [`WRITE_BACKLOG_LIMIT`] behind; a socket that had more to give than one
//! turn's budget is read again next turn, so one fast peer cannot starve the rest.

mod engine;
mod limit;
mod peers;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use kp_torrent_core::metainfo::Metainfo;
use kp_torrent_core::session::{Action, Event, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput,
};
use kp_torrent_core::tracker::manager::{ManagerConfig, TrackerEvent};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::conn::SendQueue;
use crate::disk::{self, Completion, DiskPool, Job, WRITE_BACKLOG_LIMIT};
use crate::progress::{Phase, Progress, Snapshot, summary_line};
use crate::resume::{self, Snapshot as ResumeSnapshot};
use crate::signals::ShutdownSignals;
use crate::storage::{Layout, Location, Storage, StorageError};
use crate::tracker_io::{self, TrackerIo};
use engine::Engine;
use limit::Bucket;
use peers::PeerSock;

/// Bytes queued for one peer's socket beyond which no more disk reads are queued for it.
pub const SEND_QUEUE_LIMIT: usize = 1 << 20;
/// Bytes read from one socket per loop turn at most.
const READ_BUDGET: usize = 256 * 1024;
/// How often the progress display is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How often the resume file is rewritten while downloading.
const RESUME_EVERY: Duration = Duration::from_secs(30);
/// How long a clean shutdown may take (stopped announces, disk flush) before we leave anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const TRACKER_TOKENS: tracker_io::Tokens = tracker_io::Tokens {
    udp4: Token(3),
    udp6: Token(4),
    conn_base: 16,
};
const PEER_BASE: usize = 16 + tracker_io::MAX_CONNS;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The torrent.
    pub metainfo: Metainfo,
    /// Download into a folder, or seed existing data.
    pub location: Location,
    /// Address to listen on for peers (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Peers to connect to directly (`--peer`), besides the trackers'.
    pub peers: Vec<SocketAddr>,
    /// Most peer connections.
    pub max_peers: usize,
    /// Download limit, bytes per second.
    pub download_limit: Option<u64>,
    /// Upload limit, bytes per second.
    pub upload_limit: Option<u64>,
    /// File indices to download (`None`: all).
    pub files: Option<Vec<usize>>,
    /// Fetch pieces in order.
    pub sequential: bool,
    /// Keep seeding after the download completes (always true when seeding).
    pub keep_seeding: bool,
    /// Stop seeding at this upload/size ratio.
    pub seed_ratio: Option<f64>,
    /// Stop seeding after this long.
    pub seed_time: Option<Duration>,
    /// Give up a download not finished after this long.
    pub timeout: Option<Duration>,
    /// Record every input to the engine in this trace file (`--record`).
    pub record: Option<PathBuf>,
    /// Extra CA certificates for HTTPS trackers.
    pub tracker_ca: Option<PathBuf>,
    /// Seed of the core's randomness (peer id, picking, unchoking).
    pub rng_seed: u64,
    /// Show nothing but errors.
    pub quiet: bool,
    /// Time between status lines when stderr is not a terminal.
    pub status_every: Duration,
    /// Turn Ctrl-C and SIGTERM into a clean shutdown (off when several clients share a process).
    pub handle_signals: bool,
    /// Told the listening address once the socket is open (for `demo` and tests using port 0).
    pub on_listen: Option<mpsc::Sender<SocketAddr>>,
    /// Set from another thread to end the run cleanly (as Ctrl-C does).
    pub stop: Option<Arc<AtomicBool>>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// True when every wanted piece is verified.
    pub complete: bool,
    /// Bytes of wanted data.
    pub total_bytes: u64,
    /// Payload bytes downloaded (accepted).
    pub downloaded: u64,
    /// Payload bytes uploaded.
    pub uploaded: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Distinct peers we exchanged handshakes with.
    pub peers_used: usize,
    /// True when the run stopped because of Ctrl-C / SIGTERM.
    pub interrupted: bool,
    /// The address we listened on.
    pub listen: SocketAddr,
}

/// Why a run could not go on.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Creating, opening, reading or writing the data failed.
    Storage(StorageError),
    /// The listening socket could not be opened.
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
    /// The event loop itself failed (poll, waker, threads).
    Io(io::Error),
    /// The trace file could not be created or written.
    Trace {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The disk filled up; verified pieces are kept and the run can be resumed.
    DiskFull(String),
    /// Seeding found data missing or damaged.
    SeedDataIncomplete {
        /// Bytes verified.
        have: u64,
        /// Bytes in the torrent.
        total: u64,
    },
    /// `--timeout` passed before the download finished.
    TimedOut {
        /// The limit.
        after: Duration,
        /// Bytes verified by then.
        have: u64,
        /// Bytes wanted.
        total: u64,
        /// The last tracker problem, if any.
        last_tracker_error: Option<String>,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Storage(e) => write!(f, "{e}"),
            ClientError::Listen { addr, error } if error.kind() == io::ErrorKind::AddrInUse => {
                write!(
                    f,
                    "cannot listen on {addr}: port in use (choose another with --port)"
                )
            }
            ClientError::Listen { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            ClientError::Io(e) => write!(f, "event loop: {e}"),
            ClientError::Trace { path, error } => write!(f, "trace {}: {error}", path.display()),
            ClientError::DiskFull(what) => write!(
                f,
                "disk full ({what}); verified pieces are kept: free space and run again to resume"
            ),
            ClientError::SeedDataIncomplete { have, total } => write!(
                f,
                "the data to seed is incomplete or damaged: {have} of {total} bytes verified"
            ),
            ClientError::TimedOut {
                after,
                have,
                total,
                last_tracker_error,
            } => {
                write!(
                    f,
                    "timed out after {}s with {have} of {total} bytes",
                    after.as_secs()
                )?;
                if let Some(e) = last_tracker_error {
                    write!(f, " (last tracker error: {e})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// Everything the loop owns.
struct Client {
    opts: Options,
    poll: Poll,
    epoch: Instant,
    session: Engine,
    tracker_io: TrackerIo,
    listener: TcpListener,
    listen_addr: SocketAddr,
    signals: Option<ShutdownSignals>,
    disk: DiskPool,
    peers: Vec<Option<PeerSock>>,
    /// Sockets with bytes left after their read budget, or paused by a limit.
    read_pending: BTreeSet<usize>,
    down: Bucket,
    up: Bucket,
    buf: Vec<u8>,
    progress: Progress,
    name: String,
    resume_path: Option<PathBuf>,
    last_resume: Instant,
    peers_seen: BTreeSet<[u8; 20]>,
    last_tracker_error: Option<String>,
    fatal: Option<ClientError>,
    interrupted: bool,
    complete_at: Option<Instant>,
    /// The listener had connections waiting while the task did not take peers yet.
    accept_pending: bool,
}

/// Runs one torrent until it is done (downloaded, or seeding stopped), interrupted, or failed.
pub fn run(opts: Options) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let layout = Layout::from_info(&opts.metainfo.info);
    let storage = Storage::new(
        layout,
        opts.location.clone(),
        crate::storage::DEFAULT_OPEN_FILES,
    )
    .map_err(ClientError::Storage)?;
    let poll = Poll::new().map_err(ClientError::Io)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ClientError::Io)?);
    let signals = if opts.handle_signals {
        Some(ShutdownSignals::register(poll.registry(), SIGNALS).map_err(ClientError::Io)?)
    } else {
        None
    };

    // What is on disk first (it must see the files before they are created), then allocate.
    let info_hash = opts.metainfo.info_hash;
    let resume_path = match &opts.location {
        Location::Download(dir) => Some(resume::resume_path(dir, &info_hash)),
        Location::Seed(_) => None,
    };
    let on_disk = resume::read_start(resume_path.as_deref(), &storage);
    if storage.writable() {
        storage.allocate().map_err(ClientError::Storage)?;
    }
    let storage = Arc::new(storage);
    let disk = DiskPool::new(storage.clone(), waker.clone(), disk::DEFAULT_WORKERS)
        .map_err(ClientError::Io)?;
    let name = opts.metainfo.info.name.clone();
    let progress = Progress::new(&name, opts.quiet, opts.status_every);

    let mut listener = TcpListener::bind(opts.listen).map_err(|error| ClientError::Listen {
        addr: opts.listen,
        error,
    })?;
    let listen_addr = listener.local_addr().map_err(ClientError::Io)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(ClientError::Io)?;
    if !opts.quiet {
        eprintln!("{name}: listening on {listen_addr}");
    }
    if let Some(tx) = &opts.on_listen {
        let _ = tx.send(listen_addr);
    }

    let epoch = Instant::now();
    let torrent = Torrent::from_info(info_hash, &opts.metainfo.info);
    let own_ips: Vec<IpAddr> = if listen_addr.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![listen_addr.ip()]
    };
    let config = TorrentConfig {
        session: SessionConfig {
            seed: opts.rng_seed,
            listen_port: listen_addr.port(),
            max_peers: opts.max_peers,
            sequential: opts.sequential,
            ..SessionConfig::default()
        },
        trackers: ManagerConfig {
            own_ips,
            ..ManagerConfig::default()
        },
        tiers: opts.metainfo.trackers.clone(),
    };
    let session = Engine::new(
        config,
        torrent,
        StartState::Check,
        Time::ZERO,
        opts.record.as_deref(),
    )
    .map_err(|error| ClientError::Trace {
        path: opts.record.clone().unwrap_or_default(),
        error,
    })?;
    let bind_ip = (!listen_addr.ip().is_unspecified()).then(|| listen_addr.ip());
    let tracker_io = TrackerIo::new(TRACKER_TOKENS, waker, bind_ip, opts.tracker_ca.clone())
        .map_err(ClientError::Io)?;

    let now = Instant::now();
    let mut client = Client {
        down: Bucket::new(opts.download_limit, now),
        up: Bucket::new(opts.upload_limit, now),
        opts,
        poll,
        epoch,
        session,
        tracker_io,
        listener,
        listen_addr,
        signals,
        disk,
        peers: Vec::new(),
        read_pending: BTreeSet::new(),
        buf: vec![0; 64 * 1024],
        progress,
        name,
        resume_path,
        last_resume: now,
        peers_seen: BTreeSet::new(),
        last_tracker_error: None,
        fatal: None,
        interrupted: false,
        complete_at: None,
        accept_pending: false,
    };
    let start = client.now();
    client.session.handle_input(
        start,
        TorrentInput::Start {
            files: &on_disk.files,
            resume: on_disk.resume.as_deref(),
        },
    );
    client.pump(start);
    client.start();
    client.run_loop()?;
    let swarm = client.session.session();
    let (done, total) = swarm.map_or((0, client.opts.metainfo.info.total_length), |s| {
        s.progress()
    });
    let summary = Summary {
        complete: swarm.is_some() && done == total,
        total_bytes: total,
        downloaded: swarm.map_or(0, Session::downloaded),
        uploaded: swarm.map_or(0, Session::uploaded),
        elapsed: started.elapsed(),
        peers_used: client.peers_seen.len(),
        interrupted: client.interrupted,
        listen: client.listen_addr,
    };
    if let Some(e) = client.fatal.take() {
        return Err(e);
    }
    let name = client.name.clone();
    let mut progress = client.progress;
    if let Err(e) = client.session.finish() {
        log::error!("{e}");
        eprintln!("kp-torrent: {e}");
    }
    if summary.complete && !summary.interrupted {
        progress.finish(&summary_line(
            &name,
            summary.downloaded,
            summary.elapsed,
            summary.peers_used,
        ));
    }
    let seeding = matches!(client.opts.location, Location::Seed(_)) || client.opts.keep_seeding;
    if summary.complete && seeding {
        progress.finish(&seed_summary_line(
            &name,
            summary.uploaded,
            summary.total_bytes,
        ));
    }
    Ok(summary)
}

/// The line printed when seeding stops: `NAME: stopped seeding, uploaded X (N bytes), ratio R`.
fn seed_summary_line(name: &str, uploaded: u64, total: u64) -> String {
    format!(
        "{name}: stopped seeding, uploaded {} ({uploaded} bytes), ratio {:.2}",
        crate::units::format_bytes(uploaded),
        uploaded as f64 / total.max(1) as f64
    )
}

impl Client {
    fn now(&self) -> Time {
        Time::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Feeds the swarm one input and carries out everything the task asks.
    fn input(&mut self, now: Time, input: Input<'_>) {
        self.session.handle_input(now, TorrentInput::Session(input));
        self.pump(now);
    }

    fn start(&mut self) {
        let now = self.now();
        if let Some(files) = self.opts.files.clone() {
            let count = self.opts.metainfo.info.files.len();
            let wanted: Vec<bool> = (0..count).map(|i| files.contains(&i)).collect();
            self.input(now, Input::SelectFiles { wanted: &wanted });
        }
        if !self.opts.peers.is_empty() {
            let peers = self.opts.peers.clone();
            self.input(now, Input::PeersDiscovered { addrs: &peers });
        }
        self.input(now, Input::Timeout);
    }

    /// Drains the task's outputs until it is quiet.
    fn pump(&mut self, now: Time) {
        loop {
            let mut worked = false;
            while let Some(action) = self.session.poll_action() {
                worked = true;
                match action {
                    TorrentAction::Session(a) => self.act(now, a),
                    TorrentAction::Tracker(a) => {
                        self.tracker_io
                            .execute(self.poll.registry(), now, a, &mut self.session)
                    }
                }
            }
            while let Some(event) = self.session.poll_event() {
                worked = true;
                self.show(event);
            }
            if !worked {
                break;
            }
        }
        if self.accept_pending && self.session.accepts_peers() {
            self.accept_pending = false;
            self.accept(now);
        }
    }

    fn act(&mut self, now: Time, action: Action) {
        match action {
            Action::Connect { peer, addr } => match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    let token = Token(PEER_BASE + peer.0);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::debug!("register {addr}: {e}");
                        self.session.handle_input(
                            now,
                            TorrentInput::Session(Input::ConnectFailed { peer }),
                        );
                        return;
                    }
                    self.set_peer(
                        peer,
                        PeerSock {
                            stream,
                            out: SendQueue::default(),
                            connecting: true,
                            deferred_reads: VecDeque::new(),
                        },
                    );
                }
                Err(e) => {
                    log::debug!("connect {addr}: {e}");
                    self.session
                        .handle_input(now, TorrentInput::Session(Input::ConnectFailed { peer }));
                }
            },
            Action::Send { peer, bytes } => {
                if let Some(Some(p)) = self.peers.get_mut(peer.0) {
                    p.out.push(bytes);
                    if !p.connecting {
                        self.flush_peer(now, peer.0);
                    }
                }
            }
            Action::Close { peer, reason } => {
                log::debug!("closing {peer}: {reason}");
                self.drop_peer(peer.0);
            }
            Action::WriteBlock { piece, begin, data } => {
                self.disk.submit(Job::Write { piece, begin, data });
            }
            Action::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => {
                let full = match self.peers.get(peer.0) {
                    Some(Some(p)) => {
                        p.out.len() as u64 + self.disk.queued_read_bytes(peer)
                            > SEND_QUEUE_LIMIT as u64
                    }
                    _ => return,
                };
                if full {
                    if let Some(Some(p)) = self.peers.get_mut(peer.0) {
                        p.deferred_reads.push_back((piece, begin, length));
                    }
                } else {
                    self.disk.submit(Job::Read {
                        peer,
                        piece,
                        begin,
                        length,
                    });
                }
            }
            Action::HashPiece { piece } => self.disk.submit(Job::Hash { piece }),
            // The task handles announces itself; none reaches the driver.
            Action::Announce { .. } => {}
        }
    }

    fn show(&mut self, event: TorrentEvent) {
        let event = match event {
            TorrentEvent::Session(e) => e,
            TorrentEvent::Tracker(e) => return self.tracker_event(e),
            TorrentEvent::ResumeIgnored(e) => {
                let path = self.resume_path.as_deref().unwrap_or(Path::new("?"));
                return log::warn!("ignoring resume file {}: {e}", path.display());
            }
            TorrentEvent::Checked { verified, pieces } => {
                log::info!("{}: checked, {verified} of {pieces} pieces good", self.name);
                if matches!(self.opts.location, Location::Seed(_)) && verified < pieces {
                    let info = &self.opts.metainfo.info;
                    let have = self.session.have();
                    let bytes: u64 = have.iter_ones().map(|p| info.piece_size(p)).sum();
                    self.fatal.get_or_insert(ClientError::SeedDataIncomplete {
                        have: bytes,
                        total: info.total_length,
                    });
                }
                if self.session.is_complete() {
                    self.complete_at.get_or_insert_with(Instant::now);
                }
                return;
            }
        };
        match &event {
            Event::PeerConnected { peer_id, .. } => {
                self.peers_seen.insert(*peer_id);
                log::debug!("{event}");
            }
            Event::Complete => {
                log::info!("{}: {event}", self.name);
                self.complete_at.get_or_insert_with(Instant::now);
            }
            Event::PeerBanned { .. } | Event::HashFailed { .. } => {
                log::warn!("{}: {event}", self.name)
            }
            Event::Error { .. } => log::error!("{}: {event}", self.name),
            _ => log::debug!("{event}"),
        }
    }

    fn tracker_event(&mut self, event: TrackerEvent) {
        match event {
            // The task hands tracker peers to the swarm itself.
            TrackerEvent::Peers { .. } => {}
            TrackerEvent::Announced { event, tracker, .. } => {
                let url = self.session.trackers().and_then(|t| t.url(tracker));
                log::info!("announced {event:?} to {}", url.unwrap_or("?"));
            }
            TrackerEvent::Warning { url, message, .. } => {
                log::warn!("tracker {url}: {message}");
            }
            TrackerEvent::Error { url, error, .. } => {
                log::warn!("tracker {url}: {error}");
                self.last_tracker_error = Some(format!("{url}: {error}"));
            }
            TrackerEvent::AllFailed { .. } => {
                log::warn!("no tracker answered; retrying");
            }
            TrackerEvent::Stopped | TrackerEvent::Scrape { .. } => {}
        }
    }

    fn disk_completions(&mut self, now: Time) {
        while let Some(c) = self.disk.poll_completion() {
            match c {
                Completion::Written { piece, begin, .. } => {
                    self.input(now, Input::WriteDone { piece, begin });
                }
                Completion::WriteFailed {
                    piece,
                    begin,
                    error,
                    ..
                } => {
                    let full = error.is_disk_full();
                    let text = error.to_string();
                    self.input(
                        now,
                        Input::WriteFailed {
                            piece,
                            begin,
                            error: text.clone(),
                        },
                    );
                    if self.fatal.is_none() {
                        self.fatal = Some(if full {
                            ClientError::DiskFull(text)
                        } else {
                            ClientError::Storage(error)
                        });
                    }
                }
                Completion::Read {
                    peer,
                    piece,
                    begin,
                    data,
                } => {
                    self.input(
                        now,
                        Input::ReadDone {
                            peer,
                            piece,
                            begin,
                            data: &data,
                        },
                    );
                }
                Completion::ReadFailed {
                    peer,
                    piece,
                    begin,
                    error,
                    ..
                } => {
                    self.input(
                        now,
                        Input::ReadFailed {
                            peer,
                            piece,
                            begin,
                            error: error.to_string(),
                        },
                    );
                }
                Completion::Hashed { piece, digest } => {
                    self.input(now, Input::PieceHashed { piece, digest });
                }
                Completion::HashFailed { piece, error } => {
                    log::warn!("hashing piece {piece}: {error}");
                    let error = error.to_string();
                    self.input(now, Input::HashFailed { piece, error });
                }
                Completion::ResumeFailed { path, error } => {
                    log::warn!("resume file {}: {error}", path.display());
                }
                other => log::debug!("disk: {other:?}"),
            }
        }
    }

    fn save_resume(&mut self) {
        if let Some(path) = &self.resume_path {
            self.disk.submit(Job::SaveResume {
                path: path.clone(),
                snapshot: ResumeSnapshot {
                    info_hash: self.opts.metainfo.info_hash,
                    have: self.session.have().clone(),
                },
            });
        }
        self.last_resume = Instant::now();
    }

    fn snapshot(&self) -> Snapshot {
        let Some(swarm) = self.session.session() else {
            let total_bytes = self.opts.metainfo.info.total_length;
            let (checked, to_check) = self.session.check_progress().unwrap_or((0, 0));
            let done = u128::from(checked) * u128::from(total_bytes) / u128::from(to_check.max(1));
            return Snapshot {
                phase: Some(Phase::Checking),
                total_bytes,
                done_bytes: done as u64,
                ..Snapshot::default()
            };
        };
        let (done, total) = swarm.progress();
        let (down, up) = swarm.rates();
        let (peers, seeds) = swarm.established_count();
        Snapshot {
            phase: Some(if swarm.is_complete() {
                Phase::Seeding
            } else {
                Phase::Downloading
            }),
            total_bytes: total,
            done_bytes: done,
            download_rate: down,
            upload_rate: up,
            uploaded: swarm.uploaded(),
            peers,
            seeds,
        }
    }

    /// True when the run should end now (before shutdown).
    fn should_stop(&mut self, started: Instant) -> bool {
        if self
            .opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            self.interrupted = true;
        }
        if self.fatal.is_some() || self.interrupted {
            return true;
        }
        let complete = self.session.is_complete();
        let seeding = matches!(self.opts.location, Location::Seed(_)) || self.opts.keep_seeding;
        if complete && !seeding {
            // Exit once the `completed` announce went out (or there is no tracker to tell).
            let waited = self
                .complete_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(15));
            return self.session.completed_announced() || waited;
        }
        let uploaded = self.session.session().map_or(0, Session::uploaded);
        if complete && seeding {
            let total = self.opts.metainfo.info.total_length.max(1);
            if let Some(ratio) = self.opts.seed_ratio
                && uploaded as f64 / total as f64 >= ratio
            {
                return true;
            }
            if let (Some(limit), Some(since)) = (self.opts.seed_time, self.complete_at)
                && since.elapsed() >= limit
            {
                return true;
            }
        }
        if !complete
            && let Some(limit) = self.opts.timeout
            && started.elapsed() >= limit
        {
            let info = &self.opts.metainfo.info;
            let (have, total) = self
                .session
                .session()
                .map_or((0, info.total_length), Session::progress);
            self.fatal = Some(ClientError::TimedOut {
                after: limit,
                have,
                total,
                last_tracker_error: self.last_tracker_error.clone(),
            });
            return true;
        }
        false
    }

    fn run_loop(&mut self) -> Result<(), ClientError> {
        let started = Instant::now();
        if self.session.is_complete() {
            self.complete_at = Some(started);
        }
        let mut events = Events::with_capacity(256);
        let mut stopping: Option<Instant> = None;
        let mut last_progress: Option<Instant> = None;
        loop {
            let now = self.now();
            let wall = Instant::now();
            self.down.refill(wall);
            self.up.refill(wall);
            if self.session.poll_timeout().is_some_and(|t| t <= now) {
                self.input(now, Input::Timeout);
            }
            // Sockets left with bytes (budget spent or paused by a limit).
            let pending: Vec<usize> = self.read_pending.iter().copied().collect();
            for idx in pending {
                self.read_peer(now, idx);
            }
            // Upload tokens came back: flush queued data.
            if self.up.available() > 0 {
                for idx in 0..self.peers.len() {
                    if self.peers[idx]
                        .as_ref()
                        .is_some_and(|p| !p.connecting && !p.out.is_empty())
                    {
                        self.flush_peer(now, idx);
                    }
                }
            }
            self.pump(now);
            // The snapshot walks every wanted piece and peer: build it a few times a second only.
            if last_progress.is_none_or(|t| wall.saturating_duration_since(t) >= PROGRESS_EVERY) {
                last_progress = Some(wall);
                self.progress.update(wall, &self.snapshot());
            }
            if stopping.is_none() && self.last_resume.elapsed() >= RESUME_EVERY {
                self.save_resume();
            }

            if stopping.is_none() && self.should_stop(started) {
                stopping = Some(Instant::now());
                self.input(now, Input::Shutdown);
                self.save_resume();
            }
            if let Some(since) = stopping {
                let disk_idle = self.disk.in_flight() == 0;
                let trackers_done = self.session.is_stopped();
                if trackers_done && disk_idle {
                    return Ok(());
                }
                if since.elapsed() > SHUTDOWN_GRACE {
                    log::warn!(
                        "{}: leaving after {}s without {}",
                        self.name,
                        SHUTDOWN_GRACE.as_secs(),
                        if trackers_done {
                            "the last disk writes"
                        } else {
                            "the trackers' answer to `stopped`"
                        }
                    );
                    return Ok(());
                }
            }

            let mut wait = Duration::from_secs(1);
            if let Some(deadline) = self.session.poll_timeout() {
                wait = wait.min(deadline.saturating_since(now));
            }
            for refill in [self.down.next_refill(), self.up.next_refill()]
                .into_iter()
                .flatten()
            {
                wait = wait.min(refill.saturating_duration_since(wall));
            }
            let paused =
                self.down.available() == 0 || self.disk.queued_write_bytes() > WRITE_BACKLOG_LIMIT;
            let readable_now = self.read_pending.iter().any(|&i| !self.send_blocked(i));
            if readable_now && !paused {
                wait = Duration::ZERO;
            } else if paused {
                wait = wait.min(Duration::from_millis(20));
            }
            if stopping.is_some() {
                wait = wait.min(Duration::from_millis(50));
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Io(e)),
            }
            let now = self.now();
            for event in events.iter() {
                match event.token() {
                    LISTENER if stopping.is_none() => self.accept(now),
                    WAKER => {
                        self.disk_completions(now);
                        self.tracker_io
                            .handle_wakeup(self.poll.registry(), now, &mut self.session);
                        self.pump(now);
                    }
                    SIGNALS if self.signals.as_mut().is_some_and(ShutdownSignals::take) => {
                        self.interrupted = true;
                    }
                    t if self.tracker_io.owns(t) => {
                        self.tracker_io.handle_event(
                            self.poll.registry(),
                            now,
                            event,
                            &mut self.session,
                        );
                        self.pump(now);
                    }
                    Token(t) if t >= PEER_BASE => self.peer_event(now, t - PEER_BASE, event),
                    _ => {}
                }
            }
            // Completions can arrive without a wake-up being seen in this batch.
            self.disk_completions(now);
        }
    }
}

/// The default resume file location for a download into `dir` (for tests and tools).
pub fn resume_file(dir: &Path, metainfo: &Metainfo) -> PathBuf {
    resume::resume_path(dir, &metainfo.info_hash)
}
