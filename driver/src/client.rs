//! Any number of torrents in one process: the mio event loop around the core's
//! [`kp_torrent_core::engine::Engine`] (the router above one
//! [`TorrentTask`](kp_torrent_core::torrent::TorrentTask) per torrent).
//!
//! One thread runs the loop. Each turn it (1) reads the clock once, (2) fires the engine's due
//! timers, (3) drains the engine's actions and carries them out (connect, send, close, disk jobs,
//! tracker sockets, handing an accepted connection to the torrent its handshake named) and its
//! events (shown to the user), (4) sleeps in `mio::Poll` until the earliest deadline or socket
//! readiness, and (5) feeds what happened — bytes, connects, closes, disk completions from the
//! worker pool (through the `mio::Waker`), lookups, signals — back into the engine as
//! timestamped inputs. One listening socket, one UDP socket per address family for every
//! tracker, one disk pool for every torrent; disk I/O and SHA-1 run on [`DiskPool`] threads and
//! the loop never blocks on them. Torrents can be added while it runs ([`Options::add`]).
//!
//! Backpressure: a peer whose send queue holds more than [`SEND_QUEUE_LIMIT`] bytes (plus its
//! queued disk reads) gets no new disk reads until it drains; sockets are not read while disk
//! writes are more than [`WRITE_BACKLOG_LIMIT`](disk::WRITE_BACKLOG_LIMIT) behind; a socket
//! that had more to give than one turn's budget is read again next turn, so one fast peer
//! cannot starve the rest (all three in `peers::read_budget`).
//!
//! Batching: what the engine asks to send is queued and written once the turn's inputs are done
//! (one `writev` per socket, blocks never copied into the queue), and disk reads a peer asked
//! for one after the other are submitted as one job at the same point (`peers::flush_unflushed`).

mod engine;
mod limit;
mod peers;
mod utp;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use indicatif::MultiProgress;
use kp_torrent_core::dht::DhtConfig;
use kp_torrent_core::dht::state::SavedState;
use kp_torrent_core::engine::{
    Engine, EngineAction, EngineConfig, EngineEvent, EngineInput, TorrentId,
};
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::magnet::Magnet;
use kp_torrent_core::metainfo::{Metainfo, torrent_file_from_info};
use kp_torrent_core::mse::Policy;
use kp_torrent_core::session::{Action, Event, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput,
};
use kp_torrent_core::tracker::manager::{ManagerConfig, TrackerEvent};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::disk::{self, Completion, DiskPool, Job, StoreId};
use crate::progress::{Phase, Progress, Snapshot, summary_line};
use crate::resume::{self, Snapshot as ResumeSnapshot};
use crate::signals::ShutdownSignals;
use crate::storage::{Layout, Location, Storage, StorageError};
use crate::tracker_io::{self, TrackerIo};
use engine::Port;
use limit::Bucket;
use peers::{Owner, PeerSock};

/// Bytes queued for one peer's socket (and read for it) beyond which no more disk reads are
/// queued for it. A trade-off measured here (2026-12-03, with reads in runs and one `writev` a
/// turn): seeding 1 GiB to one libtorrent leecher over 127.0.0.1 took 2.4–2.7 s with 256 KiB,
/// 2.6–2.7 s with 512 KiB and 2.7–2.9 s with 1 MiB, but in the 1 + 10 kp-torrent swarm of
/// `benches/transfer.sh` the seeder then uploaded 3.0–5.7 copies with 256 KiB, 2.9–3.7 with 512 KiB
/// and 1.9–2.7 with 1 MiB (a quicker seeder is asked for more): 1 MiB keeps the swarm's
/// copies down. (Those seeding times predate `conn::quick_ack`, which took 1 GiB with 1 MiB
/// to 1.7–2.0 s: the stall it removed had been most of the difference.)
pub const SEND_QUEUE_LIMIT: usize = 1 << 20;
/// Bytes read from one socket per loop turn at most.
const READ_BUDGET: usize = 256 * 1024;
/// A turn that read at least this many bytes from TCP peers ends with a [`COALESCE_FOR`] pause.
const COALESCE_AFTER: usize = 32 * 1024;
/// How long the loop waits before polling again after a turn of bulk reads, so the next turn
/// finds more bytes waiting: fewer wake-ups, reads and disk hand-overs per byte. Edge-triggered
/// readiness would otherwise wake the loop for nearly every segment that arrives (measured here,
/// 2026-12-04, 1 GiB from one libtorrent seeder: the loop thread slept 13,000–14,000 times and
/// the process switched context 25,000–45,000 times; with the pause 1,400–3,000 and about
/// 8,000–9,000, and the leecher took 1.02–1.12 CPU s instead of 1.32–1.56, at the same rate). At
/// 600 MiB/s one millisecond is 600 KiB, well within the kernel's receive buffer and the
/// requests we keep outstanding ([`kp_torrent_core::peer::MAX_PIPELINE`] blocks).
const COALESCE_FOR: Duration = Duration::from_millis(1);
/// How often the progress display is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How often the resume file is rewritten while downloading.
const RESUME_EVERY: Duration = Duration::from_secs(30);
/// How long a clean shutdown may take (stopped announces, disk flush) before we leave anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const LISTENER6: Token = Token(5);
const TRACKER_TOKENS: tracker_io::Tokens = tracker_io::Tokens {
    udp4: Token(3),
    udp6: Token(4),
    conn_base: 16,
};
const PEER_BASE: usize = 16 + tracker_io::MAX_CONNS;

/// The public DHT routers a node with nothing saved bootstraps from.
pub const DEFAULT_DHT_ROUTERS: &[&str] = &[
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];
/// How often the DHT's state is saved while running (and once more at exit).
const DHT_SAVE_EVERY: Duration = Duration::from_secs(5 * 60);
/// The DHT state file in the state folder.
const DHT_STATE_FILE: &str = "dht.dat";
/// The lock file that makes one process at a time the owner of the state folder.
const DHT_LOCK_FILE: &str = "dht.lock";

/// Where a torrent's description comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A `.torrent` file.
    Torrent(Box<Metainfo>),
    /// A magnet link (downloads only): the metadata is fetched from peers (BEP 9), then saved as
    /// `DIR/.kp-torrent/<info-hash>.torrent`, which later runs use instead.
    Magnet(Magnet),
}

/// One torrent to run and how.
#[derive(Debug, Clone)]
pub struct TorrentOptions {
    /// The torrent.
    pub source: Source,
    /// Download into a folder, or seed existing data.
    pub location: Location,
    /// Peers to connect to directly (`--peer`), besides the trackers'.
    pub peers: Vec<SocketAddr>,
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
    /// Record every input to this torrent's engine in this trace file (`--record`).
    pub record: Option<PathBuf>,
    /// Web seeds (BEP 19) to fetch from besides the torrent's `url-list` (`--web-seed`).
    pub web_seeds: Vec<String>,
}

impl TorrentOptions {
    /// Download `metainfo` into `dir` with default settings.
    pub fn download(metainfo: Metainfo, dir: PathBuf) -> TorrentOptions {
        TorrentOptions::new(metainfo, Location::Download(dir))
    }

    /// Seed `metainfo` from `path` with default settings.
    pub fn seed(metainfo: Metainfo, path: PathBuf) -> TorrentOptions {
        TorrentOptions {
            keep_seeding: true,
            ..TorrentOptions::new(metainfo, Location::Seed(path))
        }
    }

    /// Download the torrent of a magnet link into `dir` with default settings. The magnet's
    /// `x.pe` peers are not resolved here: put them in [`TorrentOptions::peers`].
    pub fn magnet(magnet: Magnet, dir: PathBuf) -> TorrentOptions {
        TorrentOptions::with_source(Source::Magnet(magnet), Location::Download(dir))
    }

    /// `metainfo` at `location` with default settings.
    pub fn new(metainfo: Metainfo, location: Location) -> TorrentOptions {
        TorrentOptions::with_source(Source::Torrent(Box::new(metainfo)), location)
    }

    fn with_source(source: Source, location: Location) -> TorrentOptions {
        TorrentOptions {
            source,
            location,
            peers: Vec::new(),
            files: None,
            sequential: false,
            keep_seeding: false,
            seed_ratio: None,
            seed_time: None,
            record: None,
            web_seeds: Vec::new(),
        }
    }

    /// The torrent's info-hash.
    pub fn info_hash(&self) -> InfoHash {
        match &self.source {
            Source::Torrent(m) => m.info_hash,
            Source::Magnet(m) => m.info_hash,
        }
    }

    /// The name to show: the torrent's, or a magnet's `dn`, or its info-hash.
    pub fn name(&self) -> String {
        match &self.source {
            Source::Torrent(m) => m.info.name.clone(),
            Source::Magnet(m) => m
                .display_name
                .clone()
                .unwrap_or_else(|| m.info_hash.to_hex()),
        }
    }

    /// The parsed `.torrent`, when there is one (not for a magnet link).
    pub fn metainfo(&self) -> Option<&Metainfo> {
        match &self.source {
            Source::Torrent(m) => Some(m),
            Source::Magnet(_) => None,
        }
    }
}

/// Where the `.torrent` of a magnet link downloaded into `dir` is saved once its metadata arrived.
pub fn saved_torrent_path(dir: &Path, info_hash: &InfoHash) -> PathBuf {
    dir.join(".kp-torrent")
        .join(format!("{}.torrent", info_hash.to_hex()))
}

/// A magnet link's trackers as tiers: one tier each, tried in order (BEP 12).
fn magnet_tiers(magnet: &Magnet) -> Vec<Vec<String>> {
    magnet.trackers.iter().map(|t| vec![t.clone()]).collect()
}

/// What to run and how: the torrents and the process-wide settings.
#[derive(Debug)]
pub struct Options {
    /// The torrents to start with.
    pub torrents: Vec<TorrentOptions>,
    /// Torrents to add while running; the loop also runs until this channel is closed.
    pub add: Option<mpsc::Receiver<TorrentOptions>>,
    /// Address to listen on for peers (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Most peer connections per torrent.
    pub max_peers: usize,
    /// Most peer connections in the process (incoming ones beyond it are refused).
    pub max_connections: usize,
    /// Peers unchoked at once in all torrents (each torrent also has one optimistic unchoke);
    /// shared among the torrents that have peers to serve.
    pub upload_slots: usize,
    /// Exchange peers with peers (BEP 11; never for private torrents).
    pub pex: bool,
    /// Speak uTP (BEP 29) on the shared UDP socket: accept uTP connections and dial peers over
    /// uTP first (over TCP when that fails).
    pub utp: bool,
    /// Reserve the disk space of a download's files at the start ([`Storage::preallocate`]);
    /// otherwise they are created sparse.
    pub preallocate: bool,
    /// Run a DHT node (BEP 5) on the shared UDP socket, at the listening port where it is free,
    /// and find peers of public torrents through it.
    pub dht: bool,
    /// DHT nodes to bootstrap from (`HOST:PORT`); empty: the saved routing table, else
    /// [`DEFAULT_DHT_ROUTERS`].
    pub dht_bootstrap: Vec<String>,
    /// Folder for state kept across runs (the DHT's node id and routing table, `dht.dat`);
    /// `None`: nothing is saved. One process at a time owns it (a lock on `dht.lock`): a second
    /// one running meanwhile bootstraps from the saved nodes but takes a fresh node id, since two
    /// nodes with one id would refuse each other, and saves nothing.
    pub state_dir: Option<PathBuf>,
    /// Download limit for the whole process, bytes per second.
    pub download_limit: Option<u64>,
    /// Upload limit for the whole process, bytes per second.
    pub upload_limit: Option<u64>,
    /// Give up a download not finished after this long.
    pub timeout: Option<Duration>,
    /// Extra CA certificates for HTTPS trackers.
    pub tracker_ca: Option<PathBuf>,
    /// Seed of the core's randomness (peer ids, picking, unchoking); each torrent derives its own.
    pub rng_seed: u64,
    /// Stream encryption (MSE/PE) with peers: what we dial with and accept.
    pub encryption: Policy,
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

impl Options {
    /// Options for these torrents with default settings (listening on `listen`).
    pub fn new(torrents: Vec<TorrentOptions>, listen: SocketAddr) -> Options {
        Options {
            torrents,
            add: None,
            listen,
            max_peers: 50,
            max_connections: EngineConfig::default().max_connections,
            upload_slots: EngineConfig::default().upload_slots,
            pex: true,
            utp: false,
            preallocate: false,
            dht: false,
            dht_bootstrap: Vec::new(),
            state_dir: None,
            download_limit: None,
            upload_limit: None,
            timeout: None,
            tracker_ca: None,
            rng_seed: 0,
            encryption: Policy::Prefer,
            quiet: false,
            status_every: Duration::from_secs(5),
            handle_signals: true,
            on_listen: None,
            stop: None,
        }
    }
}

/// How one torrent's run ended.
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

/// One torrent's result.
#[derive(Debug)]
pub struct Outcome {
    /// The torrent's name.
    pub name: String,
    /// How it ended.
    pub result: Result<Summary, ClientError>,
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
    /// The same torrent was given twice.
    Duplicate,
    /// A magnet link's metadata matched its info-hash but is not a usable torrent.
    BadMetadata(String),
    /// `--files` names a file the torrent (known only once a magnet's metadata arrived) lacks.
    NoSuchFile {
        /// The index asked for.
        index: usize,
        /// Files in the torrent.
        count: usize,
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
            ClientError::Duplicate => f.write_str("this torrent is already being run"),
            ClientError::BadMetadata(e) => {
                write!(f, "the metadata peers sent is unusable: {e}")
            }
            ClientError::NoSuchFile { index, count } => write!(
                f,
                "--files: no file {index}: the torrent has {count} (numbered from 0)"
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

/// A torrent's description and data, once known (for a magnet link, after its metadata).
struct Files {
    metainfo: Metainfo,
    storage: Arc<Storage>,
    store: StoreId,
}

/// One torrent's run, the driver's side of it.
struct Run {
    opts: TorrentOptions,
    /// `None` while a magnet link's metadata is missing.
    files: Option<Files>,
    name: String,
    resume_path: Option<PathBuf>,
    last_resume: Instant,
    peers_seen: BTreeSet<[u8; 20]>,
    last_tracker_error: Option<String>,
    fatal: Option<ClientError>,
    complete_at: Option<Instant>,
    started: Instant,
    /// When its shutdown began.
    stopping: Option<Instant>,
    progress: Progress,
    interrupted: bool,
}

/// Everything the loop owns.
struct Client {
    opts: Options,
    poll: Poll,
    epoch: Instant,
    engine: Engine,
    tracker_io: TrackerIo,
    /// One listener, or two (IPv4 and IPv6) when the system keeps the families apart.
    listeners: Vec<TcpListener>,
    listen_addr: SocketAddr,
    signals: Option<ShutdownSignals>,
    disk: DiskPool,
    socks: slab::Slab<PeerSock>,
    by_peer: BTreeMap<(TorrentId, kp_torrent_core::id::PeerHandle), usize>,
    by_incoming: BTreeMap<kp_torrent_core::engine::IncomingId, usize>,
    /// Sockets with bytes left after their read budget, or paused by a limit.
    read_pending: BTreeSet<usize>,
    /// Sockets with bytes queued since their last flush (flushed before the loop waits).
    unflushed: BTreeSet<usize>,
    /// Sockets holding a run of disk reads not yet submitted (submitted before the loop waits).
    read_runs: BTreeSet<usize>,
    down: Bucket,
    up: Bucket,
    buf: Vec<u8>,
    runs: BTreeMap<TorrentId, Run>,
    stores: BTreeMap<StoreId, TorrentId>,
    outcomes: Vec<Outcome>,
    group: Option<MultiProgress>,
    added: u64,
    /// Turns of upload flushing, for the round-robin start.
    flush_turn: usize,
    /// Bytes read from TCP peers since the last poll (see [`COALESCE_AFTER`]).
    read_turn: usize,
    interrupted: bool,
    /// uTP connections, when uTP runs.
    utp: Option<kp_torrent_core::utp::Endpoint>,
    /// The peer socket of each uTP connection.
    by_utp: BTreeMap<kp_torrent_core::utp::ConnectionHandle, usize>,
    /// One datagram being sent.
    utp_buf: Vec<u8>,
    /// Peer connections established so far over TCP and over uTP (dialed or accepted).
    connections: [u64; 2],
    /// Our DHT node's UDP port, when it runs.
    dht_port: Option<u16>,
    /// Bootstrap names being resolved off the loop.
    dht_resolving: Option<mpsc::Receiver<Vec<SocketAddr>>>,
    last_dht_save: Instant,
    /// The lock on the state folder, held while running; `None`: another process owns the
    /// folder (or there is none), so nothing is saved.
    dht_lock: Option<File>,
}

/// Runs the torrents until each is done (downloaded, or seeding stopped), interrupted, or
/// failed, and torrents added later through [`Options::add`] too. An error is returned only
/// when the loop itself could not run (the listening socket, the poll); each torrent's own
/// failure is in its [`Outcome`].
pub fn run(mut opts: Options) -> Result<Vec<Outcome>, ClientError> {
    let poll = Poll::new().map_err(ClientError::Io)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ClientError::Io)?);
    let signals = if opts.handle_signals {
        Some(ShutdownSignals::register(poll.registry(), SIGNALS).map_err(ClientError::Io)?)
    } else {
        None
    };
    let (mut listeners, listen_addr) =
        listen(opts.listen).map_err(|error| ClientError::Listen {
            addr: opts.listen,
            error,
        })?;
    for (i, l) in listeners.iter_mut().enumerate() {
        let token = if i == 0 { LISTENER } else { LISTENER6 };
        poll.registry()
            .register(l, token, Interest::READABLE)
            .map_err(ClientError::Io)?;
    }
    if !opts.quiet {
        let names: Vec<String> = opts.torrents.iter().map(TorrentOptions::name).collect();
        let who = if names.is_empty() {
            "kp-torrent".to_owned()
        } else {
            names.join(", ")
        };
        eprintln!("{who}: listening on {listen_addr}");
    }
    if let Some(tx) = &opts.on_listen {
        let _ = tx.send(listen_addr);
    }
    let disk = DiskPool::new(waker.clone(), disk::DEFAULT_WORKERS).map_err(ClientError::Io)?;
    let bind_ip = (!listen_addr.ip().is_unspecified()).then(|| listen_addr.ip());
    let mut tracker_io = TrackerIo::new(
        TRACKER_TOKENS,
        waker.clone(),
        bind_ip,
        opts.tracker_ca.clone(),
    )
    .map_err(ClientError::Io)?;
    // uTP and the DHT share the UDP sockets, at the listening port where it is free.
    let udp_ports =
        (opts.dht || opts.utp).then(|| tracker_io.open_udp(poll.registry(), listen_addr.port()));
    if let (Some((v4, v6)), true, false) = (udp_ports, opts.utp, opts.quiet)
        && v4.or(v6) != Some(listen_addr.port())
    {
        eprintln!(
            "uTP: UDP port {} is taken; uTP peers cannot reach us",
            listen_addr.port()
        );
    }
    let dht_lock = if opts.dht {
        opts.state_dir.as_deref().and_then(lock_state_dir)
    } else {
        None
    };
    let (dht_config, dht_port, dht_resolving) = if opts.dht {
        let (v4, v6) = udp_ports.unwrap_or((None, None));
        let own_state = dht_lock.is_some();
        let (config, resolving) = dht_config(&opts, own_state, v4.is_some(), v6.is_some(), waker);
        (Some(config), v4.or(v6), resolving)
    } else {
        (None, None, None)
    };
    if let (Some(port), false) = (dht_port, opts.quiet) {
        eprintln!("DHT node on UDP port {port}");
    }
    let group = (!opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(MultiProgress::new);
    let epoch = Instant::now();
    let torrents = std::mem::take(&mut opts.torrents);
    let upload_slots = opts.upload_slots.max(1);
    let engine_seed = opts.rng_seed ^ 0x6d73_655f_7365_6564;
    let encryption = opts.encryption;
    let client_utp = opts
        .utp
        .then(|| kp_torrent_core::utp::Endpoint::new(utp::config(opts.rng_seed ^ 0x7574_7000)));
    let max_connections = opts.max_connections.max(1);
    let mut client = Client {
        down: Bucket::new(opts.download_limit, epoch),
        up: Bucket::new(opts.upload_limit, epoch),
        opts,
        poll,
        epoch,
        engine: Engine::new(
            EngineConfig {
                upload_slots,
                max_connections,
                dht: dht_config,
                encryption,
                seed: engine_seed,
                ..EngineConfig::default()
            },
            Time::ZERO,
        ),
        tracker_io,
        listeners,
        listen_addr,
        signals,
        disk,
        socks: slab::Slab::new(),
        by_peer: BTreeMap::new(),
        by_incoming: BTreeMap::new(),
        read_pending: BTreeSet::new(),
        unflushed: BTreeSet::new(),
        read_runs: BTreeSet::new(),
        buf: vec![0; 64 * 1024],
        runs: BTreeMap::new(),
        stores: BTreeMap::new(),
        outcomes: Vec::new(),
        group,
        added: 0,
        flush_turn: 0,
        read_turn: 0,
        interrupted: false,
        utp: client_utp,
        by_utp: BTreeMap::new(),
        utp_buf: Vec::new(),
        connections: [0, 0],
        dht_port,
        dht_resolving,
        last_dht_save: Instant::now(),
        dht_lock,
    };
    for t in torrents {
        client.add(t);
    }
    let result = client.run_loop();
    client.save_dht();
    if !client.opts.quiet {
        let [tcp, utp] = client.connections;
        eprintln!("peer connections: {tcp} over TCP, {utp} over uTP");
    }
    result?;
    Ok(client.outcomes)
}

/// Takes the state folder's lock (creating the folder), or `None` when another process holds
/// it or it cannot be made (then nothing is saved).
fn lock_state_dir(dir: &Path) -> Option<File> {
    let path = dir.join(DHT_LOCK_FILE);
    let file = std::fs::create_dir_all(dir).and_then(|()| {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    });
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            log::warn!("{}: {e}; the DHT state will not be saved", path.display());
            return None;
        }
    };
    match file.try_lock() {
        Ok(()) => Some(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            log::warn!(
                "{} is in use by another kp-torrent: this DHT node takes a fresh id and saves nothing",
                dir.display()
            );
            None
        }
        Err(std::fs::TryLockError::Error(e)) => {
            log::warn!("{}: {e}; the DHT state will not be saved", path.display());
            None
        }
    }
}

/// The DHT node's settings: the saved node id (when `own_state`: this process holds the state
/// folder's lock) and nodes, the bootstrap contacts (literal addresses at once; names are
/// resolved on a thread, whose answer the returned receiver brings, waking the loop).
fn dht_config(
    opts: &Options,
    own_state: bool,
    ipv4: bool,
    ipv6: bool,
    waker: Arc<Waker>,
) -> (DhtConfig, Option<mpsc::Receiver<Vec<SocketAddr>>>) {
    let saved = opts.state_dir.as_ref().and_then(|dir| {
        let path = dir.join(DHT_STATE_FILE);
        let bytes = std::fs::read(&path).ok()?;
        match SavedState::decode(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("{}: {e}; starting a new DHT node", path.display());
                None
            }
        }
    });
    let mut names: Vec<String> = opts.dht_bootstrap.clone();
    let mut bootstrap = Vec::new();
    if names.is_empty() {
        match &saved {
            Some(s) if !s.nodes.is_empty() => bootstrap.extend(s.nodes.iter().copied()),
            _ => names = DEFAULT_DHT_ROUTERS.iter().map(|s| s.to_string()).collect(),
        }
    }
    names.retain(|n| match n.parse::<SocketAddr>() {
        Ok(a) => {
            bootstrap.push(a);
            false
        }
        Err(_) => true,
    });
    let resolving = (!names.is_empty()).then(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::net::ToSocketAddrs;
            let mut found = Vec::new();
            for n in &names {
                match n.to_socket_addrs() {
                    Ok(addrs) => found.extend(addrs),
                    Err(e) => log::debug!("DHT bootstrap {n}: {e}"),
                }
            }
            if tx.send(found).is_ok() {
                let _ = waker.wake();
            }
        });
        rx
    });
    let config = DhtConfig {
        node_id: saved.filter(|_| own_state).map(|s| s.node_id),
        seed: opts.rng_seed ^ 0x6468_745f_7365_6564,
        ipv4,
        ipv6,
        bootstrap,
        ..DhtConfig::default()
    };
    (config, resolving)
}

/// Opens the peer listener(s) on `addr`. For the IPv4 wildcard (no `--bind`) it listens on IPv6
/// too: `[::]:PORT` first, then `0.0.0.0:PORT`, which is refused as in use when the IPv6 socket is
/// dual-stack already (kept apart only where the system says `bindv6only`). Without IPv6 it is
/// the IPv4 socket alone. The address returned is the IPv4 one (or `addr` as bound).
fn listen(addr: SocketAddr) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    if addr != SocketAddr::from(([0, 0, 0, 0], addr.port())) {
        let l = TcpListener::bind(addr)?;
        let local = l.local_addr()?;
        return Ok((vec![l], local));
    }
    let Ok(v6) = TcpListener::bind(SocketAddr::from(([0u16; 8], addr.port()))) else {
        let l = TcpListener::bind(addr)?;
        let local = l.local_addr()?;
        return Ok((vec![l], local));
    };
    let port = v6.local_addr()?.port();
    let local = SocketAddr::from(([0, 0, 0, 0], port));
    match TcpListener::bind(local) {
        Ok(v4) => Ok((vec![v4, v6], local)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok((vec![v6], local)),
        Err(e) => Err(e),
    }
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

    /// Feeds the engine one input and carries out everything it asks.
    fn feed(&mut self, now: Time, input: EngineInput<'_>) {
        self.engine.handle_input(now, input);
        self.pump(now);
    }

    /// Feeds one torrent's swarm one input.
    fn input(&mut self, now: Time, torrent: TorrentId, input: Input<'_>) {
        self.feed(
            now,
            EngineInput::Torrent {
                torrent,
                input: TorrentInput::Session(input),
            },
        );
    }

    /// Starts a torrent: its storage, what is on disk, its task in the engine. A failure ends
    /// only this torrent (its outcome says why).
    fn add(&mut self, topts: TorrentOptions) {
        let name = topts.name();
        if let Err(error) = self.try_add(topts) {
            self.outcomes.push(Outcome {
                name,
                result: Err(error),
            });
        }
    }

    fn try_add(&mut self, mut topts: TorrentOptions) -> Result<(), ClientError> {
        let info_hash = topts.info_hash();
        if self.engine.find(&info_hash).is_some() {
            return Err(ClientError::Duplicate);
        }
        // A magnet link fetched before: its saved `.torrent` (with the magnet's trackers) is used.
        if let (Source::Magnet(_), Location::Download(dir)) = (&topts.source, &topts.location) {
            let path = saved_torrent_path(dir, &info_hash);
            if let Ok(bytes) = std::fs::read(&path) {
                match Metainfo::from_bytes(&bytes) {
                    Ok(m) if m.info_hash == info_hash => {
                        topts.source = Source::Torrent(Box::new(m))
                    }
                    Ok(_) => log::warn!("{}: another torrent; ignoring it", path.display()),
                    Err(e) => log::warn!("{}: {e}; fetching the metadata again", path.display()),
                }
            }
        }
        let (files, on_disk) = match &topts.source {
            Source::Torrent(m) => {
                let selection = topts.files.as_deref();
                let (files, on_disk) =
                    self.open_files((**m).clone(), &topts.location, selection)?;
                (Some(files), Some(on_disk))
            }
            Source::Magnet(_) => (None, None),
        };
        let record = match &topts.record {
            None => None,
            Some(path) => {
                let file = File::create(path).map_err(|error| ClientError::Trace {
                    path: path.clone(),
                    error,
                })?;
                let sink: kp_torrent_core::engine::TraceSink =
                    Box::new(BufWriter::with_capacity(1 << 20, file));
                Some(sink)
            }
        };
        let own_ips: Vec<IpAddr> = if self.listen_addr.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![self.listen_addr.ip()]
        };
        // The first torrent uses the given seed as it is; later ones derive their own.
        let seed = self
            .opts
            .rng_seed
            .wrapping_add(self.added.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.added += 1;
        let (tiers, torrent, start) = match &topts.source {
            Source::Torrent(m) => (
                m.trackers.clone(),
                Torrent::from_info(info_hash, &m.info),
                StartState::Check,
            ),
            Source::Magnet(m) => (
                magnet_tiers(m),
                Torrent::unknown(info_hash),
                StartState::Magnet,
            ),
        };
        let listed = match &topts.source {
            Source::Torrent(m) => m.url_list.clone(),
            Source::Magnet(m) => m.web_seeds.clone(),
        };
        let web_seeds = kp_torrent_core::metainfo::web_seed_urls(
            listed.into_iter().chain(topts.web_seeds.iter().cloned()),
        );
        let config = TorrentConfig {
            session: SessionConfig {
                seed,
                listen_port: self.listen_addr.port(),
                max_peers: self.opts.max_peers.max(1),
                sequential: topts.sequential,
                pex: self.opts.pex,
                dht_port: self.dht_port.unwrap_or(0),
                ..SessionConfig::default()
            },
            trackers: ManagerConfig {
                own_ips,
                ..ManagerConfig::default()
            },
            tiers,
            web_seeds,
        };
        let now = self.now();
        let Some(id) = self.engine.add_torrent(now, config, torrent, start, record) else {
            if let Some(f) = &files {
                self.disk.remove_store(f.store);
            }
            return Err(ClientError::Duplicate);
        };
        let name = topts.name();
        let progress = Progress::new(
            &name,
            self.opts.quiet,
            self.opts.status_every,
            self.group.as_ref(),
        );
        let peers = topts.peers.clone();
        let resume_path = match &topts.location {
            Location::Download(dir) => Some(resume::resume_path(dir, &info_hash)),
            Location::Seed(_) => None,
        };
        self.runs.insert(
            id,
            Run {
                opts: topts,
                files: None,
                name,
                resume_path,
                last_resume: Instant::now(),
                peers_seen: BTreeSet::new(),
                last_tracker_error: None,
                fatal: None,
                complete_at: None,
                started: Instant::now(),
                stopping: None,
                progress,
                interrupted: false,
            },
        );
        self.pump(now);
        if let (Some(files), Some(on_disk)) = (files, on_disk) {
            self.start_files(now, id, files, &on_disk);
        }
        if !peers.is_empty() {
            self.input(now, id, Input::PeersDiscovered { addrs: &peers });
        }
        self.input(now, id, Input::Timeout);
        Ok(())
    }

    /// Opens (creates, for a download) a torrent's files and reads what is on disk.
    fn open_files(
        &mut self,
        metainfo: Metainfo,
        location: &Location,
        selection: Option<&[usize]>,
    ) -> Result<(Files, resume::OnDisk), ClientError> {
        let layout = Layout::from_info(&metainfo.info);
        let storage = Storage::new(layout, location.clone(), crate::storage::DEFAULT_OPEN_FILES)
            .map_err(ClientError::Storage)?;
        // What is on disk first (it must see the files before they are created), then allocate.
        let resume_path = match location {
            Location::Download(dir) => Some(resume::resume_path(dir, &metainfo.info_hash)),
            Location::Seed(_) => None,
        };
        let on_disk = resume::read_start(resume_path.as_deref(), &storage);
        if storage.writable() {
            let made = if self.opts.preallocate {
                // Files left out of a `--files` selection stay sparse.
                storage.preallocate(&|i| selection.is_none_or(|sel| sel.contains(&i)))
            } else {
                storage.allocate()
            };
            made.map_err(|e| match e.is_disk_full() {
                true => ClientError::DiskFull(e.to_string()),
                false => ClientError::Storage(e),
            })?;
        }
        let storage = Arc::new(storage);
        let store = self.disk.add_store(storage.clone());
        Ok((
            Files {
                metainfo,
                storage,
                store,
            },
            on_disk,
        ))
    }

    /// The torrent's files are open: the task checks what is on disk, and the file selection
    /// applies.
    fn start_files(&mut self, now: Time, id: TorrentId, files: Files, on_disk: &resume::OnDisk) {
        let Some(run) = self.runs.get_mut(&id) else {
            self.disk.remove_store(files.store);
            return;
        };
        self.stores.insert(files.store, id);
        let count = files.metainfo.info.files.len();
        let wanted = match &run.opts.files {
            None => None,
            Some(sel) => match sel.iter().find(|&&i| i >= count) {
                Some(&index) => {
                    run.fatal = Some(ClientError::NoSuchFile { index, count });
                    None
                }
                None => Some((0..count).map(|i| sel.contains(&i)).collect::<Vec<bool>>()),
            },
        };
        run.files = Some(files);
        self.engine.handle_input(
            now,
            EngineInput::Torrent {
                torrent: id,
                input: TorrentInput::Start {
                    files: &on_disk.files,
                    resume: on_disk.resume.as_deref(),
                },
            },
        );
        if let Some(wanted) = wanted {
            self.engine.handle_input(
                now,
                EngineInput::Torrent {
                    torrent: id,
                    input: TorrentInput::Session(Input::SelectFiles { wanted: &wanted }),
                },
            );
        }
        self.pump(now);
    }

    /// A magnet link's metadata arrived (checked by the task): save it as a `.torrent`, open the
    /// files, start the check.
    fn metadata_arrived(&mut self, now: Time, id: TorrentId, info: &[u8]) {
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let (Source::Magnet(magnet), Location::Download(dir)) =
            (&run.opts.source, &run.opts.location)
        else {
            return;
        };
        let file = torrent_file_from_info(info, &magnet_tiers(magnet));
        let metainfo = match Metainfo::from_bytes(&file) {
            Ok(m) => m,
            Err(e) => {
                run.fatal = Some(ClientError::BadMetadata(e.to_string()));
                return;
            }
        };
        let path = saved_torrent_path(dir, &metainfo.info_hash);
        if let Err(e) = resume::write_atomically(&path, &file) {
            // Not fatal: a later run fetches the metadata again.
            log::warn!("cannot save {}: {e}", path.display());
        }
        run.name.clone_from(&metainfo.info.name);
        run.progress.rename(&metainfo.info.name);
        let location = run.opts.location.clone();
        let selection = run.opts.files.clone();
        match self.open_files(metainfo, &location, selection.as_deref()) {
            Ok((files, on_disk)) => self.start_files(now, id, files, &on_disk),
            Err(e) => {
                if let Some(run) = self.runs.get_mut(&id) {
                    run.fatal = Some(e);
                }
            }
        }
    }

    /// Drains the engine's outputs until it is quiet.
    fn pump(&mut self, now: Time) {
        loop {
            let mut worked = false;
            while let Some(action) = self.engine.poll_action() {
                worked = true;
                match action {
                    EngineAction::Torrent {
                        torrent,
                        action: TorrentAction::Session(a),
                    } => self.act(now, torrent, a),
                    EngineAction::Torrent {
                        torrent,
                        action: TorrentAction::Tracker(a),
                    } => self.tracker_io.execute(
                        self.poll.registry(),
                        now,
                        torrent,
                        a,
                        &mut Port(&mut self.engine, self.utp.as_mut()),
                    ),
                    EngineAction::Adopt {
                        conn,
                        torrent,
                        peer,
                    } => {
                        if let Some(key) = self.by_incoming.remove(&conn) {
                            self.socks[key].owner = Owner::Peer(torrent, peer);
                            self.by_peer.insert((torrent, peer), key);
                        }
                    }
                    EngineAction::SendIncoming { conn, bytes } => {
                        if let Some(&key) = self.by_incoming.get(&conn) {
                            self.socks[key].out.push(bytes);
                            self.flush_sock(now, key);
                        }
                    }
                    EngineAction::CloseIncoming { conn, reason } => {
                        log::debug!("closing {conn}: {reason}");
                        if let Some(key) = self.by_incoming.remove(&conn) {
                            self.drop_sock(key);
                        }
                    }
                    EngineAction::SendDatagram { to, data } => {
                        self.tracker_io
                            .send_datagram(self.poll.registry(), to, &data);
                    }
                }
            }
            while let Some(event) = self.engine.poll_event() {
                worked = true;
                let (torrent, event) = match event {
                    EngineEvent::Torrent { torrent, event } => (torrent, event),
                    EngineEvent::DhtLookup {
                        torrent,
                        peers,
                        nodes,
                        announced,
                    } => {
                        let what = match torrent.and_then(|t| self.runs.get(&t)) {
                            Some(run) if announced => format!("{}: announce", run.name),
                            Some(run) => format!("{}: lookup", run.name),
                            None => "bootstrap".to_owned(),
                        };
                        log::debug!(
                            "DHT {what}: {peers} peers, {nodes} nodes answered; {} nodes known",
                            self.engine.dht_nodes().unwrap_or(0)
                        );
                        continue;
                    }
                };
                let fetched = match &event {
                    TorrentEvent::MetadataReceived { info } => Some(info.clone()),
                    _ => None,
                };
                self.show(torrent, event);
                if let Some(info) = fetched {
                    self.metadata_arrived(now, torrent, &info);
                }
            }
            if !worked {
                return;
            }
        }
    }

    fn act(&mut self, now: Time, torrent: TorrentId, action: Action) {
        let Some(run) = self.runs.get(&torrent) else {
            return;
        };
        // Disk actions come only once the files are open (a magnet link's after its metadata).
        let store = run.files.as_ref().map(|f| f.store);
        match action {
            Action::Connect { peer, addr } => self.dial(now, torrent, peer, addr),
            Action::Send { peer, bytes } => {
                if let Some(&key) = self.by_peer.get(&(torrent, peer)) {
                    let p = &mut self.socks[key];
                    p.out.push(bytes);
                    if !p.connecting {
                        // Written once this batch of inputs is done: one `writev` for all.
                        self.unflushed.insert(key);
                    }
                }
            }
            Action::Close { peer, reason } => {
                log::debug!("closing {torrent} {peer}: {reason}");
                if let Some(key) = self.by_peer.remove(&(torrent, peer)) {
                    // What it sent last (a reject, say) goes first, if the socket takes it.
                    self.flush_quietly(key);
                    self.drop_sock(key);
                }
            }
            Action::WriteBlock { piece, begin, data } => {
                if let Some(store) = store {
                    // Handed over after the socket read (or the turn) that brought it.
                    self.disk.queue(store, Job::Write { piece, begin, data });
                }
            }
            Action::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => {
                let (Some(&key), Some(store)) = (self.by_peer.get(&(torrent, peer)), store) else {
                    return;
                };
                if self.bytes_ahead(key, store, peer) > SEND_QUEUE_LIMIT as u64 {
                    self.socks[key]
                        .deferred_reads
                        .push_back((piece, begin, length));
                } else {
                    self.queue_read(key, store, piece, begin, length);
                }
            }
            Action::HashPiece { piece } => {
                if let Some(store) = store {
                    self.disk.queue(store, Job::Hash { piece });
                }
            }
            // The task handles announces itself; none reaches the driver.
            Action::Announce { .. } => {}
        }
    }

    fn show(&mut self, torrent: TorrentId, event: TorrentEvent) {
        let complete = self
            .engine
            .torrent(torrent)
            .is_some_and(|t| t.is_complete());
        let Some(run) = self.runs.get_mut(&torrent) else {
            return;
        };
        let event = match event {
            TorrentEvent::Session(e) => e,
            TorrentEvent::Tracker(e) => {
                let url = |t| {
                    self.engine
                        .torrent(torrent)
                        .and_then(|x| x.trackers())
                        .and_then(|m| m.url(t))
                        .map(str::to_owned)
                };
                match e {
                    TrackerEvent::Announced { event, tracker, .. } => {
                        let url = url(tracker);
                        log::info!("announced {event:?} to {}", url.as_deref().unwrap_or("?"));
                    }
                    TrackerEvent::Warning { url, message, .. } => {
                        log::warn!("tracker {url}: {message}");
                    }
                    TrackerEvent::Error { url, error, .. } => {
                        log::warn!("tracker {url}: {error}");
                        run.last_tracker_error = Some(format!("{url}: {error}"));
                    }
                    TrackerEvent::AllFailed { .. } => log::warn!("no tracker answered; retrying"),
                    _ => {}
                }
                return;
            }
            TorrentEvent::ResumeIgnored(e) => {
                let path = run.resume_path.as_deref().unwrap_or(Path::new("?"));
                log::warn!("ignoring resume file {}: {e}", path.display());
                return;
            }
            TorrentEvent::MetadataReceived { .. } => {
                log::info!("{}: {event}", run.name);
                return;
            }
            TorrentEvent::BadMetadata(e) => {
                run.fatal.get_or_insert(ClientError::BadMetadata(e));
                return;
            }
            e @ TorrentEvent::WebSeed { .. } => {
                log::warn!("{}: {e}", run.name);
                return;
            }
            TorrentEvent::Checked { verified, pieces } => {
                log::info!("{}: checked, {verified} of {pieces} pieces good", run.name);
                if let (Location::Seed(_), Some(files)) = (&run.opts.location, &run.files)
                    && verified < pieces
                {
                    let info = &files.metainfo.info;
                    let missing: u64 = (0..pieces)
                        .filter(|&p| {
                            self.engine
                                .torrent(torrent)
                                .is_some_and(|t| !t.have().get(p))
                        })
                        .map(|p| info.piece_size(p))
                        .sum();
                    run.fatal.get_or_insert(ClientError::SeedDataIncomplete {
                        have: info.total_length - missing,
                        total: info.total_length,
                    });
                }
                if complete {
                    run.complete_at.get_or_insert_with(Instant::now);
                }
                return;
            }
        };
        match &event {
            Event::PeerConnected { peer_id, .. } => {
                run.peers_seen.insert(*peer_id);
                log::debug!("{event}");
            }
            Event::Complete => {
                log::info!("{}: {event}", run.name);
                run.complete_at.get_or_insert_with(Instant::now);
            }
            Event::PeerBanned { .. } | Event::HashFailed { .. } => {
                log::warn!("{}: {event}", run.name)
            }
            // A fatal error is printed once, as the run's last line.
            Event::Error { .. } if run.fatal.is_some() => log::debug!("{}: {event}", run.name),
            Event::Error { .. } => log::error!("{}: {event}", run.name),
            _ => log::debug!("{event}"),
        }
    }

    fn disk_completions(&mut self, now: Time) {
        while let Some((store, c)) = self.disk.poll_completion() {
            let Some(&t) = self.stores.get(&store) else {
                continue;
            };
            match c {
                Completion::Written { piece, begin, .. } => {
                    self.input(now, t, Input::WriteDone { piece, begin });
                }
                Completion::WriteFailed {
                    piece,
                    begin,
                    error,
                    ..
                } => {
                    let full = error.is_disk_full();
                    let text = error.to_string();
                    // Recorded before the swarm hears of it, so its error event is not printed
                    // too: a fatal error is one line, the run's last.
                    if let Some(run) = self.runs.get_mut(&t) {
                        run.fatal.get_or_insert(if full {
                            ClientError::DiskFull(text.clone())
                        } else {
                            ClientError::Storage(error)
                        });
                    }
                    self.input(
                        now,
                        t,
                        Input::WriteFailed {
                            piece,
                            begin,
                            error: text,
                        },
                    );
                }
                Completion::Read {
                    peer,
                    piece,
                    begin,
                    lengths,
                    data,
                } => {
                    let (mut at, mut offset) = (begin, 0usize);
                    for length in lengths {
                        let Some(block) = data.get(offset..offset + length as usize) else {
                            break;
                        };
                        let read = Input::ReadDone {
                            peer,
                            piece,
                            begin: at,
                            data: block,
                        };
                        self.input(now, t, read);
                        offset += length as usize;
                        at = at.wrapping_add(length);
                    }
                }
                Completion::ReadFailed {
                    peer,
                    piece,
                    begin,
                    lengths,
                    error,
                } => {
                    let error = error.to_string();
                    let mut at = begin;
                    for length in lengths {
                        let failed = Input::ReadFailed {
                            peer,
                            piece,
                            begin: at,
                            error: error.clone(),
                        };
                        self.input(now, t, failed);
                        at = at.wrapping_add(length);
                    }
                }
                Completion::Hashed { piece, digest } => {
                    self.input(now, t, Input::PieceHashed { piece, digest });
                }
                Completion::HashFailed { piece, error } => {
                    log::warn!("hashing piece {piece}: {error}");
                    let error = error.to_string();
                    self.input(now, t, Input::HashFailed { piece, error });
                }
                Completion::ResumeFailed { path, error } => {
                    log::warn!("resume file {}: {error}", path.display());
                }
                other => log::debug!("disk: {other:?}"),
            }
        }
    }

    fn save_resume(&mut self, torrent: TorrentId) {
        let Some(run) = self.runs.get_mut(&torrent) else {
            return;
        };
        run.last_resume = Instant::now();
        let Some(task) = self.engine.torrent(torrent) else {
            return;
        };
        // Nothing to save while the check is still learning what is there (or before a magnet
        // link's metadata).
        let checked = task.session().is_some() && task.check_progress().is_none();
        if let (Some(path), Some(files), true) = (&run.resume_path, &run.files, checked) {
            self.disk.submit(
                files.store,
                Job::SaveResume {
                    path: path.clone(),
                    snapshot: ResumeSnapshot {
                        info_hash: files.metainfo.info_hash,
                        have: task.have().clone(),
                    },
                },
            );
        }
    }

    fn snapshot(&self, torrent: TorrentId) -> Snapshot {
        let dht_nodes = self.engine.dht_nodes();
        let Some(task) = self.engine.torrent(torrent) else {
            return Snapshot {
                dht_nodes,
                ..Snapshot::default()
            };
        };
        if task.fetching_metadata() {
            return Snapshot {
                phase: Some(Phase::Metadata),
                peers: task.session().map_or(0, |s| s.established_count().0),
                dht_nodes,
                ..Snapshot::default()
            };
        }
        let swarm = task.session().filter(|_| task.check_progress().is_none());
        let Some(swarm) = swarm else {
            let total_bytes = task.torrent().total_length;
            let (checked, to_check) = task.check_progress().unwrap_or((0, 0));
            let done = u128::from(checked) * u128::from(total_bytes) / u128::from(to_check.max(1));
            return Snapshot {
                phase: Some(Phase::Checking),
                total_bytes,
                done_bytes: done as u64,
                dht_nodes,
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
            dht_nodes,
        }
    }

    /// True when this torrent's run should end now (before its shutdown).
    fn should_stop(&mut self, torrent: TorrentId) -> bool {
        let interrupted = self.interrupted;
        let timeout = self.opts.timeout;
        let Some(task) = self.engine.torrent(torrent) else {
            return true;
        };
        let Some(run) = self.runs.get_mut(&torrent) else {
            return true;
        };
        if interrupted {
            run.interrupted = true;
            return true;
        }
        if run.fatal.is_some() {
            return true;
        }
        let complete = task.is_complete();
        let seeding = matches!(run.opts.location, Location::Seed(_)) || run.opts.keep_seeding;
        if complete && !seeding {
            // Exit once the `completed` announce went out (or there is no tracker to tell).
            let waited = run
                .complete_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(15));
            return task.completed_announced() || waited;
        }
        let swarm = task.session();
        if complete && seeding {
            let uploaded = swarm.map_or(0, Session::uploaded);
            let total = task.torrent().total_length.max(1);
            if let Some(ratio) = run.opts.seed_ratio
                && uploaded as f64 / total as f64 >= ratio
            {
                return true;
            }
            if let (Some(limit), Some(since)) = (run.opts.seed_time, run.complete_at)
                && since.elapsed() >= limit
            {
                return true;
            }
        }
        if !complete
            && let Some(limit) = timeout
            && run.started.elapsed() >= limit
        {
            let (have, total) = swarm
                .filter(|_| task.check_progress().is_none())
                .map_or((0, task.torrent().total_length), Session::progress);
            run.fatal = Some(ClientError::TimedOut {
                after: limit,
                have,
                total,
                last_tracker_error: run.last_tracker_error.clone(),
            });
            return true;
        }
        false
    }

    /// Ends a stopped torrent's run: its outcome, its summary lines, its trace.
    fn finish_run(&mut self, torrent: TorrentId) {
        let Some(mut run) = self.runs.remove(&torrent) else {
            return;
        };
        let summary = self.engine.torrent(torrent).map(|task| {
            // Before the check is over (or a magnet link's metadata), nothing counts.
            let swarm = task
                .session()
                .filter(|_| task.check_progress().is_none() && !task.fetching_metadata());
            let total_default = task.torrent().total_length;
            let (_, total) = swarm.map_or((0, total_default), Session::progress);
            Summary {
                complete: task.is_complete(),
                total_bytes: total,
                downloaded: swarm.map_or(0, Session::downloaded),
                uploaded: swarm.map_or(0, Session::uploaded),
                elapsed: run.started.elapsed(),
                peers_used: run.peers_seen.len(),
                interrupted: run.interrupted,
                listen: self.listen_addr,
            }
        });
        // A file finished early is never written again: only a look now notices it went.
        if summary
            .as_ref()
            .is_some_and(|s| s.complete && !s.interrupted)
            && let Some(files) = &run.files
            && files.storage.writable()
            && let Err(e) = files.storage.check_files()
        {
            run.fatal.get_or_insert(ClientError::Storage(e));
        }
        if let Some((_, Err(e))) = self.engine.remove_torrent(torrent) {
            let path = run.opts.record.clone().unwrap_or_default();
            run.fatal
                .get_or_insert(ClientError::Trace { path, error: e });
        }
        if let Some(files) = &run.files {
            self.disk.remove_store(files.store);
            self.stores.remove(&files.store);
        }
        let result = match (run.fatal.take(), summary) {
            (Some(e), _) => Err(e),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(ClientError::Io(io::Error::other("torrent vanished"))),
        };
        if let Ok(s) = &result {
            if s.complete && !s.interrupted {
                run.progress.finish(&summary_line(
                    &run.name,
                    s.downloaded,
                    s.elapsed,
                    s.peers_used,
                ));
            }
            let seeding = matches!(run.opts.location, Location::Seed(_)) || run.opts.keep_seeding;
            if s.complete && seeding {
                run.progress
                    .finish(&seed_summary_line(&run.name, s.uploaded, s.total_bytes));
            }
        } else {
            run.progress.clear();
        }
        self.outcomes.push(Outcome {
            name: run.name,
            result,
        });
    }

    /// Takes torrents handed over through [`Options::add`]; false once that channel is closed
    /// (or there is none).
    /// Writes the DHT's node id and nodes to the state folder (atomically), when both exist.
    fn save_dht(&mut self) {
        self.last_dht_save = Instant::now();
        if self.dht_lock.is_none() {
            return;
        }
        let (Some(dir), Some(state)) = (&self.opts.state_dir, self.engine.dht_state()) else {
            return;
        };
        let path = dir.join(DHT_STATE_FILE);
        let saved = std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                resume::write_atomically(&path, &state.encode()).map_err(|e| e.to_string())
            });
        match saved {
            Ok(()) => log::debug!(
                "saved {} DHT nodes to {}",
                state.nodes.len(),
                path.display()
            ),
            Err(e) => log::warn!("cannot save the DHT state to {}: {e}", path.display()),
        }
    }

    /// Bootstrap names resolved on their thread reach the DHT.
    fn take_dht_resolved(&mut self, now: Time) {
        let Some(rx) = &self.dht_resolving else {
            return;
        };
        match rx.try_recv() {
            Ok(addrs) => {
                self.dht_resolving = None;
                log::debug!("DHT bootstrap: {} addresses resolved", addrs.len());
                self.feed(now, EngineInput::DhtBootstrap { addrs: &addrs });
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => self.dht_resolving = None,
        }
    }

    fn take_added(&mut self) -> bool {
        let Some(rx) = &self.opts.add else {
            return false;
        };
        let mut added = Vec::new();
        let open = loop {
            match rx.try_recv() {
                Ok(t) => added.push(t),
                Err(mpsc::TryRecvError::Empty) => break true,
                Err(mpsc::TryRecvError::Disconnected) => break false,
            }
        };
        for t in added {
            if !self.opts.quiet {
                eprintln!("{}: added", t.name());
            }
            self.add(t);
        }
        if !open {
            self.opts.add = None;
        }
        open
    }

    fn run_loop(&mut self) -> Result<(), ClientError> {
        let mut events = Events::with_capacity(256);
        let mut last_progress: Option<Instant> = None;
        loop {
            let adding = self.take_added();
            let now = self.now();
            let wall = Instant::now();
            self.down.refill(wall);
            self.up.refill(wall);
            if self
                .opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                self.interrupted = true;
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.feed(now, EngineInput::Timeout);
            }
            // Sockets left with bytes (budget spent or paused by a limit).
            let pending: Vec<usize> = self.read_pending.iter().copied().collect();
            for key in pending {
                self.read_sock(now, key);
            }
            // Upload tokens came back: flush queued data, starting one socket further each turn so
            // that a peer taking every token (blocks) cannot starve another's small messages.
            if self.up.available() > 0 {
                let mut keys: Vec<usize> = self
                    .socks
                    .iter()
                    .filter(|(_, p)| !p.connecting && !p.out.is_empty())
                    .map(|(k, _)| k)
                    .collect();
                if !keys.is_empty() {
                    self.flush_turn = self.flush_turn.wrapping_add(1);
                    let start = self.flush_turn % keys.len();
                    keys.rotate_left(start);
                }
                for key in keys {
                    self.flush_sock(now, key);
                }
            }
            self.pump(now);
            self.utp_service(now);
            // The snapshots walk every wanted piece and peer: a few times a second only.
            if last_progress.is_none_or(|t| wall.saturating_duration_since(t) >= PROGRESS_EVERY) {
                last_progress = Some(wall);
                let ids: Vec<TorrentId> = self.runs.keys().copied().collect();
                for id in ids {
                    let snap = self.snapshot(id);
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.progress.update(wall, &snap);
                    }
                }
            }
            let ids: Vec<TorrentId> = self.runs.keys().copied().collect();
            let mut stopping_any = false;
            for id in ids {
                let Some(run) = self.runs.get(&id) else {
                    continue;
                };
                let since = run.stopping;
                if since.is_none() && run.last_resume.elapsed() >= RESUME_EVERY {
                    self.save_resume(id);
                }
                if since.is_none() && self.should_stop(id) {
                    if let Some(run) = self.runs.get_mut(&id) {
                        run.stopping = Some(Instant::now());
                    }
                    self.input(now, id, Input::Shutdown);
                    self.save_resume(id);
                }
                let Some(run) = self.runs.get(&id) else {
                    continue;
                };
                if let Some(since) = run.stopping {
                    stopping_any = true;
                    let disk_idle = run
                        .files
                        .as_ref()
                        .is_none_or(|f| self.disk.in_flight_for(f.store) == 0);
                    let trackers_done = self.engine.torrent(id).is_none_or(|t| t.is_stopped());
                    if trackers_done && disk_idle {
                        self.finish_run(id);
                    } else if since.elapsed() > SHUTDOWN_GRACE {
                        log::warn!(
                            "{}: leaving after {}s without {}",
                            run.name,
                            SHUTDOWN_GRACE.as_secs(),
                            if trackers_done {
                                "the last disk writes"
                            } else {
                                "the trackers' answer to `stopped`"
                            }
                        );
                        self.finish_run(id);
                    }
                }
            }
            if self.runs.is_empty() && !adding {
                return Ok(());
            }
            if self.last_dht_save.elapsed() >= DHT_SAVE_EVERY {
                self.save_dht();
            }

            let mut wait = Duration::from_secs(1);
            self.flush_unflushed(now);
            // uTP's events were drained above; what it can send waits for its timers.
            self.utp_service(now);
            let utp_deadline = self.utp.as_ref().and_then(|ep| ep.poll_timeout());
            for deadline in [self.engine.poll_timeout(), utp_deadline]
                .into_iter()
                .flatten()
            {
                wait = wait.min(deadline.saturating_since(now));
            }
            for refill in [self.down.next_refill(), self.up.next_refill()]
                .into_iter()
                .flatten()
            {
                wait = wait.min(refill.saturating_duration_since(wall));
            }
            let paused =
                peers::read_budget(0, self.disk.queued_write_bytes(), self.down.available()) == 0;
            let readable_now = self.read_pending.iter().any(|&k| !self.send_blocked(k));
            if readable_now && !paused {
                wait = Duration::ZERO;
            } else if paused {
                wait = wait.min(Duration::from_millis(20));
            }
            if stopping_any {
                wait = wait.min(Duration::from_millis(50));
            }
            if self.opts.add.is_some() {
                wait = wait.min(Duration::from_millis(200));
            }
            if let Some(pause) = peers::coalesce_pause(self.read_turn, wait) {
                std::thread::sleep(pause);
                wait = Duration::ZERO;
            }
            self.read_turn = 0;
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Io(e)),
            }
            let now = self.now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now, 0),
                    LISTENER6 => self.accept(now, 1),
                    WAKER => {
                        self.take_dht_resolved(now);
                        self.disk_completions(now);
                        self.tracker_io.handle_wakeup(
                            self.poll.registry(),
                            now,
                            &mut Port(&mut self.engine, self.utp.as_mut()),
                        );
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
                            &mut Port(&mut self.engine, self.utp.as_mut()),
                        );
                        self.pump(now);
                    }
                    Token(t) if t >= PEER_BASE => self.sock_event(now, t - PEER_BASE, event),
                    _ => {}
                }
            }
            // Completions can arrive without a wake-up being seen in this batch.
            self.disk_completions(now);
            self.flush_unflushed(now);
        }
    }
}

/// The default resume file location for a download into `dir` (for tests and tools).
pub fn resume_file(dir: &Path, metainfo: &Metainfo) -> PathBuf {
    resume::resume_path(dir, &metainfo.info_hash)
}
