//! A deterministic in-memory swarm: several [`Session`]s joined by a simulated network, with
//! in-memory storage, driven by a virtual clock.
//!
//! Everything is decided by [`SimConfig::seed`]: content, link latencies and bandwidths, node
//! upload bandwidths, start times, how sends are split into chunks, which connections are lost.
//! Network delivery,
//! disk writes, reads and hashing are scheduled as timestamped inputs in one event queue, so a run
//! is a pure function of its configuration and can be recorded and replayed.
//!
//! The torrent is a real one: its info dictionary is written with [`TorrentSpec`] (files `f0`,
//! `f1`, …), so the info-hash is its SHA-1 and every complete node serves it as metadata (BEP 9).
//! Besides seeders and leechers a swarm may hold magnet leechers, which start from the info-hash
//! alone, fetch the metadata over the simulated wire and then download like any leecher (the
//! simulation does what a driver does with [`Event::MetadataReceived`]: it checks the bytes and
//! calls [`Session::set_torrent`]); nodes that serve wrong metadata for the same info-hash; and
//! hostile seeders that corrupt blocks. Nodes may start knowing every other node, or only one,
//! and then learn the rest by peer exchange (BEP 11) — see [`Discovery`].
//!
//! Reuse: build a [`Sim`] from a [`SimConfig`], optionally set [`Sim::on_input`] /
//! [`Sim::on_action`] to observe every input given to and action taken from each session (a
//! trace recorder), then [`Sim::run`].

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::{InfoHash, PeerHandle};
use kp_torrent_core::metadata::{MetadataMessage, PIECE_SIZE};
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use kp_torrent_core::peer::OUR_METADATA_ID;
use kp_torrent_core::session::{Action, Event, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::TorrentInput;
use kp_torrent_core::utp::{ConnectionHandle, Endpoint, Event as UtpEvent, UtpConfig};
use kp_torrent_core::wire::{DEFAULT_MAX_MESSAGE_LEN, Decoder, Message};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use sha1::Digest;

/// The shape of a simulated swarm.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Decides everything random in the run.
    pub seed: u64,
    /// Honest nodes that start with all the data.
    pub seeders: usize,
    /// Nodes that start with nothing.
    pub leechers: usize,
    /// Nodes that start with all the data and serve corrupted blocks.
    pub hostile: usize,
    /// Fraction of the blocks a hostile node serves that it corrupts.
    pub corrupt_rate: f64,
    /// Bytes per piece.
    pub piece_length: u64,
    /// Length of each file (some may be zero).
    pub file_lengths: Vec<u64>,
    /// One-way latency range of a link, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Upload bandwidth range of a node (shared by all its connections), in bytes per second.
    pub upload_bps: (u64, u64),
    /// Bandwidth range of one link, each direction, in bytes per second.
    pub link_bps: (u64, u64),
    /// Probability that a delivered chunk instead breaks its connection.
    pub loss: f64,
    /// Nodes start (learn their peers) at a random time within this many milliseconds.
    pub start_spread_ms: u64,
    /// The run stops at this virtual time even if leechers are unfinished.
    pub time_limit: Duration,
    /// Nodes that start from a magnet link (the info-hash alone) and fetch the metadata from
    /// their peers before downloading.
    pub magnet_leechers: usize,
    /// Nodes that serve wrong metadata for the torrent's info-hash (and right pieces).
    pub bad_metadata: usize,
    /// The wrong metadata is longer or shorter than the real one (else: as long, other bytes).
    pub bad_metadata_resized: bool,
    /// Bad-metadata nodes start with every piece; else with none (they download like leechers).
    pub bad_metadata_complete: bool,
    /// A bad-metadata node's connection to a magnet leecher breaks as soon as the leecher got
    /// a piece of its wrong metadata (hit and run: it leaves before being judged).
    pub bad_metadata_hit_and_run: bool,
    /// Whom each node is told about when it starts.
    pub discovery: Discovery,
    /// Every session offers and uses peer exchange (`SessionConfig::pex`).
    pub pex: bool,
    /// The first seeder (node 0) leaves the swarm at this virtual time: its connections break,
    /// it accepts no more and is given no more input.
    pub seeder_leaves_at: Option<Duration>,
    /// Connections are uTP (BEP 29): each link carries datagrams between two core uTP
    /// endpoints, through the same bandwidth and latency, and may lose, duplicate and reorder
    /// them (see the `datagram_*` fields); `loss` does not apply (uTP repairs, it never breaks
    /// a stream that way).
    pub utp: bool,
    /// Probability that a uTP datagram is lost.
    pub datagram_loss: f64,
    /// Probability that a uTP datagram arrives twice.
    pub datagram_dup: f64,
    /// Extra random delay of each uTP datagram, up to this many milliseconds (reordering).
    pub jitter_ms: u64,
}

/// Whom a node learns of when it starts (the rest it can only learn by peer exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Every other node, as from a tracker that lists the whole swarm.
    Everyone,
    /// Only node 0, the first seeder (which learns of nobody).
    FirstSeeder,
    /// One node chosen at random among those before it (node 0 learns of nobody), so the
    /// nodes form a random tree rooted at the first seeder.
    EarlierNode,
}

impl SimConfig {
    /// A small default swarm.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            seeders: 1,
            leechers: 2,
            hostile: 0,
            corrupt_rate: 1.0,
            piece_length: 32 * 1024,
            file_lengths: vec![300_000],
            latency_ms: (5, 50),
            upload_bps: (2_000_000, 8_000_000),
            link_bps: (1_000_000, 50_000_000),
            loss: 0.0,
            start_spread_ms: 3000,
            time_limit: Duration::from_secs(3600),
            magnet_leechers: 0,
            bad_metadata: 0,
            bad_metadata_resized: false,
            bad_metadata_complete: true,
            bad_metadata_hit_and_run: false,
            discovery: Discovery::Everyone,
            pex: true,
            seeder_leaves_at: None,
            utp: false,
            datagram_loss: 0.0,
            datagram_dup: 0.0,
            jitter_ms: 0,
        }
    }

    /// Sum of the file lengths.
    pub fn total_length(&self) -> u64 {
        self.file_lengths.iter().sum()
    }

    /// Nodes in the swarm, of every role.
    pub fn node_count(&self) -> usize {
        self.seeders + self.hostile + self.bad_metadata + self.leechers + self.magnet_leechers
    }

    /// Derives a random but valid swarm shape from `seed`: 1–3 seeders, 1–8 leechers (and in a
    /// third of the swarms 1–3 magnet leechers besides), pieces of 16 KiB–4 MiB, 1–50 files, at
    /// most `max_total` bytes, usually with a partial last piece.
    pub fn random(seed: u64, max_total: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
        let piece_length = (16 * 1024u64) << rng.random_range(0..9u32);
        let files = rng.random_range(1..=50usize);
        let total = rng.random_range(1..=max_total);
        let file_lengths = split_lengths(&mut rng, total, files);
        let mut config = SimConfig {
            seed,
            seeders: rng.random_range(1..=3),
            leechers: rng.random_range(1..=8),
            piece_length,
            file_lengths,
            latency_ms: (1, rng.random_range(2..=80)),
            upload_bps: (500_000, rng.random_range(1_000_000..=20_000_000)),
            link_bps: (250_000, rng.random_range(500_000..=50_000_000)),
            loss: if rng.random_range(0..3) == 0 {
                0.002
            } else {
                0.0
            },
            start_spread_ms: rng.random_range(0..=10_000),
            ..SimConfig::new(seed)
        };
        if rng.random_range(0..3) == 0 {
            config.magnet_leechers = rng.random_range(1..=3);
        }
        config
    }
}

/// `total` bytes cut at random points into `files` lengths (zero-length files included).
pub fn split_lengths(rng: &mut ChaCha8Rng, total: u64, files: usize) -> Vec<u64> {
    let mut cuts: Vec<u64> = (1..files).map(|_| rng.random_range(0..=total)).collect();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(files);
    let mut prev = 0;
    for c in cuts {
        lengths.push(c - prev);
        prev = c;
    }
    lengths.push(total - prev);
    lengths
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Starts complete, serves honestly.
    Seeder,
    /// Starts empty.
    Leecher,
    /// Starts complete, serves corrupted blocks.
    Hostile,
    /// Starts from the info-hash alone: fetches the metadata, then downloads.
    MagnetLeecher,
    /// Serves wrong metadata (and right blocks), with every piece or none (see
    /// [`SimConfig::bad_metadata_complete`]).
    BadMetadata,
}

impl Role {
    /// True for the nodes the run waits for: they start without the data and must end with it.
    pub fn downloads(self) -> bool {
        matches!(self, Role::Leecher | Role::MagnetLeecher)
    }

    /// True for the nodes that misbehave on purpose.
    pub fn hostile(self) -> bool {
        matches!(self, Role::Hostile | Role::BadMetadata)
    }
}

/// One simulated client.
pub struct Node {
    /// Its session.
    pub session: Session,
    /// The configuration its session was built with (a recorder stores it with the torrent).
    pub session_config: SessionConfig,
    /// The torrent its session was built with: [`Torrent::unknown`] for a magnet leecher, the
    /// real torrent with other metadata for a bad-metadata node.
    pub torrent: Torrent,
    /// The pieces it started with (none known for a magnet leecher).
    pub initial_have: Bitfield,
    /// Its role.
    pub role: Role,
    /// Its listening address.
    pub addr: SocketAddr,
    /// The nodes it is told about when it starts.
    pub known: Vec<usize>,
    /// Its in-memory storage (the torrent's bytes, concatenated).
    pub storage: Vec<u8>,
    /// Virtual time its session reported completion, if it did.
    pub completed_at: Option<Time>,
    /// Virtual time a magnet leecher received the metadata (and got its torrent).
    pub metadata_at: Option<Time>,
    /// The nodes it completed a handshake with, at some point.
    pub met: BTreeSet<usize>,
    /// Virtual time it left the swarm (see [`SimConfig::seeder_leaves_at`]).
    pub left_at: Option<Time>,
    /// Events it emitted.
    pub events: Vec<Event>,
    /// When it emitted each of [`Node::events`].
    pub event_times: Vec<Time>,
    upload_bps: u64,
    up_busy: Time,
    handles: BTreeMap<PeerHandle, usize>,
}

/// A `ut_metadata` data message delivered to a node while it was fetching the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataDelivery {
    /// When.
    pub at: Time,
    /// The receiving node.
    pub to: usize,
    /// The sending node.
    pub from: usize,
    /// The metadata piece.
    pub piece: u32,
    /// The fetch used it (see [`Sim::metadata_used`]); else it came too late or was for a
    /// fetch that had moved on, and was ignored.
    pub used: bool,
}

/// Reads the peer-wire stream going to a magnet leecher, to see who sent it metadata.
#[derive(Debug)]
struct Sniffer {
    decoder: Decoder,
    handshake_seen: bool,
}

impl Sniffer {
    fn new() -> Box<Sniffer> {
        Box::new(Sniffer {
            decoder: Decoder::new(DEFAULT_MAX_MESSAGE_LEN),
            handshake_seen: false,
        })
    }

    /// Feeds delivered bytes; returns the metadata pieces of the `data` messages they complete,
    /// or `None` when the stream stopped being readable.
    fn feed(&mut self, bytes: &[u8]) -> Option<Vec<u32>> {
        self.decoder.feed(bytes);
        if !self.handshake_seen {
            match self.decoder.next_handshake() {
                Ok(Some(_)) => self.handshake_seen = true,
                Ok(None) => return Some(Vec::new()),
                Err(_) => return None,
            }
        }
        let mut pieces = Vec::new();
        loop {
            match self.decoder.next_message() {
                // Every session names `ut_metadata` with the same id, so what goes to one of
                // them under that id is metadata.
                Ok(Some(Message::Extended { id, payload })) if id == OUR_METADATA_ID => {
                    if let Ok(MetadataMessage::Data { piece, .. }) =
                        MetadataMessage::decode(payload)
                    {
                        pieces.push(piece);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Some(pieces),
                Err(_) => return None,
            }
        }
    }
}

#[derive(Debug)]
struct Link {
    /// `(node, handle)` of each end; `None` once that end closed (or before it exists).
    ends: [Option<(usize, PeerHandle)>; 2],
    /// The dialing node and the dialed one.
    nodes: [usize; 2],
    latency: Duration,
    /// Capacity of each direction, bytes per second.
    bps: u64,
    /// When each direction has carried everything queued on it.
    busy: [Time; 2],
    /// The accepting side's view of the dialer's address (an ephemeral port).
    dialer_addr: SocketAddr,
    dead: bool,
    /// Per receiving end: the stream to a magnet leecher, read until it has its metadata.
    sniff: [Option<Box<Sniffer>>; 2],
    /// The two uTP endpoints of a uTP link.
    utp: Option<Box<UtpLink>>,
}

/// A uTP link's two ends: one core endpoint each (index 0 dials), the connection on each and the
/// bytes its session sent that the connection has not taken yet.
#[derive(Debug)]
struct UtpLink {
    eps: [Endpoint; 2],
    conns: [Option<ConnectionHandle>; 2],
    unsent: [Vec<u8>; 2],
    /// Each end's armed timer (a `UtpTimer` event at that time).
    timer: [Option<Time>; 2],
    /// The dialer's connection was answered.
    connected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Start {
        node: usize,
    },
    Incoming {
        link: usize,
        node: usize,
    },
    Connected {
        link: usize,
    },
    ConnectFailed {
        node: usize,
        peer: PeerHandle,
    },
    Deliver {
        link: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Closed {
        link: usize,
        to: usize,
    },
    WriteDone {
        node: usize,
        piece: u32,
        begin: u32,
    },
    ReadDone {
        node: usize,
        peer: PeerHandle,
        piece: u32,
        begin: u32,
        length: u32,
    },
    Hashed {
        node: usize,
        piece: u32,
    },
    Leave {
        node: usize,
    },
    Datagram {
        link: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    UtpTimer {
        link: usize,
        side: usize,
    },
}

/// Observes `(node, now, input)` before each input is handed to a session, as the node's
/// torrent task would get it: a swarm input, or for a magnet leecher that received its metadata
/// the `Start` of a check that finds no files (then the simulation calls
/// [`Session::set_torrent`], which is what that task does).
pub type InputHook = Box<dyn FnMut(usize, Time, &TorrentInput<'_>)>;
/// Observes `(node, action)` for each action drained from a session.
pub type ActionHook = Box<dyn FnMut(usize, &Action)>;

/// The simulated swarm.
pub struct Sim {
    /// The configuration it was built from.
    pub config: SimConfig,
    /// The torrent every node shares.
    pub torrent: Torrent,
    /// The correct data.
    pub content: Vec<u8>,
    /// The nodes: seeders, hostile nodes, bad-metadata nodes, leechers, then magnet leechers.
    pub nodes: Vec<Node>,
    /// Metadata pieces delivered to magnet leechers still fetching it, in order.
    pub metadata_deliveries: Vec<MetadataDelivery>,
    /// Called before each input is given to a session.
    pub on_input: Option<InputHook>,
    /// Called for each action a session returns.
    pub on_action: Option<ActionHook>,
    links: Vec<Link>,
    queue: BinaryHeap<Reverse<(Time, u64, Ev)>>,
    seq: u64,
    now: Time,
    rng: ChaCha8Rng,
    /// Inputs handled, to bound runaway runs.
    pub steps: u64,
    /// uTP datagrams sent (lost ones included).
    pub datagrams: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Virtual time when the last honest leecher completed (or the limit).
    pub finished_at: Time,
    /// True when every leecher (magnet leechers included) completed.
    pub all_complete: bool,
    /// Leechers (magnet leechers included) whose storage differs from the content.
    pub corrupt: Vec<usize>,
}

const HASH_DELAY: Duration = Duration::from_millis(2);
const DISK_DELAY: Duration = Duration::from_micros(300);
/// Timeouts given to one session at one virtual time, in a row, before the run is declared a
/// spin.
const MAX_SAME_WAKEUPS: u32 = 100;

impl Sim {
    /// Builds the swarm; nothing runs until [`Sim::run`].
    pub fn new(config: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let total = config.total_length();
        let mut content = vec![0u8; total as usize];
        rng.fill_bytes(&mut content);
        let torrent = torrent_of(&config, &content);
        let count = torrent.piece_count();
        let roles = std::iter::repeat_n(Role::Seeder, config.seeders)
            .chain(std::iter::repeat_n(Role::Hostile, config.hostile))
            .chain(std::iter::repeat_n(Role::BadMetadata, config.bad_metadata))
            .chain(std::iter::repeat_n(Role::Leecher, config.leechers))
            .chain(std::iter::repeat_n(
                Role::MagnetLeecher,
                config.magnet_leechers,
            ));
        let mut nodes = Vec::new();
        for (i, role) in roles.enumerate() {
            let complete = match role {
                Role::Seeder | Role::Hostile => true,
                Role::BadMetadata => config.bad_metadata_complete,
                Role::Leecher | Role::MagnetLeecher => false,
            };
            let have = if complete {
                Bitfield::full(count)
            } else {
                Bitfield::new(count)
            };
            let session_config = SessionConfig {
                seed: rng.random::<u64>(),
                listen_port: 6881,
                pex: config.pex,
                ..SessionConfig::default()
            };
            let (node_torrent, initial_have) = match role {
                Role::MagnetLeecher => (Torrent::unknown(torrent.info_hash), Bitfield::new(0)),
                Role::BadMetadata => (
                    Torrent {
                        metadata: wrong_metadata(
                            &mut rng,
                            &torrent.metadata,
                            config.bad_metadata_resized,
                        ),
                        ..torrent.clone()
                    },
                    have,
                ),
                _ => (torrent.clone(), have),
            };
            let session = if role == Role::MagnetLeecher {
                Session::new_magnet(session_config.clone(), torrent.info_hash, Time::ZERO)
            } else {
                Session::new(
                    session_config.clone(),
                    node_torrent.clone(),
                    initial_have.clone(),
                    Time::ZERO,
                )
            };
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
                6881,
            );
            let known = match config.discovery {
                Discovery::Everyone => (0..config.node_count()).filter(|&k| k != i).collect(),
                Discovery::FirstSeeder if i > 0 => vec![0],
                Discovery::EarlierNode if i > 0 => vec![rng.random_range(0..i)],
                Discovery::FirstSeeder | Discovery::EarlierNode => Vec::new(),
            };
            let (lo, hi) = config.upload_bps;
            nodes.push(Node {
                session,
                session_config,
                torrent: node_torrent,
                initial_have,
                role,
                addr,
                known,
                storage: if complete {
                    content.clone()
                } else {
                    vec![0; total as usize]
                },
                completed_at: None,
                metadata_at: None,
                met: BTreeSet::new(),
                left_at: None,
                events: Vec::new(),
                event_times: Vec::new(),
                // A hostile node is as fast as allowed, so it gets to spoil pieces.
                upload_bps: if role == Role::Hostile {
                    hi.max(lo)
                } else {
                    rng.random_range(lo..=hi.max(lo))
                },
                up_busy: Time::ZERO,
                handles: BTreeMap::new(),
            });
        }
        let mut sim = Sim {
            config,
            torrent,
            content,
            nodes,
            metadata_deliveries: Vec::new(),
            on_input: None,
            on_action: None,
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now: Time::ZERO,
            rng,
            steps: 0,
            datagrams: 0,
        };
        for node in 0..sim.nodes.len() {
            let mut at = Time::from_millis(sim.rng.random_range(0..=sim.config.start_spread_ms));
            if sim.nodes[node].role.hostile() {
                // Hostile nodes are there from the start, so every leecher meets them.
                at = Time::ZERO;
            }
            sim.schedule(at, Ev::Start { node });
        }
        if let Some(at) = sim.config.seeder_leaves_at {
            sim.schedule(Time::ZERO + at, Ev::Leave { node: 0 });
        }
        sim
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, ev)));
    }

    /// Leechers (magnet leechers included) that are not yet complete.
    pub fn unfinished(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.role.downloads() && !n.session.is_complete())
            .count()
    }

    /// The node listening at, or dialing from, `addr` (every node has its own IP address).
    pub fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr.ip() == addr.ip())
    }

    /// Pairs of nodes `(a, b)`, `a < b`, that completed a handshake although neither was told
    /// of the other at the start: they can only have learnt of each other by peer exchange.
    pub fn learnt_connections(&self) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (a, n) in self.nodes.iter().enumerate() {
            for &b in n.met.range(a + 1..) {
                if !n.known.contains(&b) && !self.nodes[b].known.contains(&a) {
                    pairs.push((a, b));
                }
            }
        }
        pairs
    }

    /// Runs until every leecher is complete, nothing is left to do, or the time limit.
    pub fn run(&mut self) -> Outcome {
        let limit = Time::ZERO + self.config.time_limit;
        // What the sessions queued at construction (their `started` announces), after the hooks
        // were set.
        for node in 0..self.nodes.len() {
            self.drain(node);
        }
        let mut last_wakeup = None;
        let mut repeats = 0;
        while self.unfinished() > 0 {
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.left_at.is_none())
                .filter_map(|(i, n)| n.session.poll_timeout().map(|t| (t, i)))
                .min();
            let next_ev = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let (t, timer_node) = match (next_ev, next_timer) {
                (Some(e), Some((t, i))) if t < e => (t, Some(i)),
                (Some(e), _) => (e, None),
                (None, Some((t, i))) => (t, Some(i)),
                (None, None) => break,
            };
            if t > limit {
                break;
            }
            self.now = self.now.max(t);
            self.steps += 1;
            match timer_node {
                Some(i) => {
                    // A session's deadline must move past the time it was woken at; one that
                    // stays would have a driver spin.
                    repeats = if last_wakeup == Some((i, self.now)) {
                        repeats + 1
                    } else {
                        0
                    };
                    assert!(
                        repeats < MAX_SAME_WAKEUPS,
                        "seed {}: node {i} asks to be woken at {} again and again",
                        self.config.seed,
                        self.now
                    );
                    last_wakeup = Some((i, self.now));
                    self.input(i, Input::Timeout);
                }
                None => {
                    let Some(Reverse((_, _, ev))) = self.queue.pop() else {
                        break;
                    };
                    self.dispatch(ev);
                }
            }
        }
        let corrupt = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role.downloads() && n.storage != self.content)
            .map(|(i, _)| i)
            .collect();
        let finished_at = self
            .nodes
            .iter()
            .filter(|n| n.role.downloads())
            .filter_map(|n| n.completed_at)
            .max()
            .unwrap_or(self.now);
        Outcome {
            finished_at,
            all_complete: self.unfinished() == 0,
            corrupt,
        }
    }

    /// Gives one input to a node's session, then drains its outputs; a node that left gets none.
    fn input(&mut self, node: usize, input: Input<'_>) {
        if self.nodes[node].left_at.is_some() {
            return;
        }
        if let Some(hook) = self.on_input.as_mut() {
            hook(node, self.now, &TorrentInput::Session(input.clone()));
        }
        self.nodes[node].session.handle_input(self.now, input);
        self.drain(node);
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start { node } => {
                let addrs: Vec<SocketAddr> = self.nodes[node]
                    .known
                    .iter()
                    .map(|&k| self.nodes[k].addr)
                    .collect();
                if !addrs.is_empty() {
                    self.input(node, Input::PeersDiscovered { addrs: &addrs });
                }
            }
            Ev::Incoming { link, node } => {
                if self.links[link].dead {
                    return;
                }
                let Some((dialer, peer)) = self.links[link].ends[0] else {
                    return;
                };
                if self.nodes[node].left_at.is_some() {
                    // Nobody listens there any more: the dial is refused.
                    self.links[link].dead = true;
                    let lat = self.links[link].latency;
                    self.schedule(self.now + lat, Ev::ConnectFailed { node: dialer, peer });
                    return;
                }
                let h = self.nodes[node].session.next_handle();
                self.links[link].ends[1] = Some((node, h));
                self.nodes[node].handles.insert(h, link);
                let addr = self.links[link].dialer_addr;
                self.input(node, Input::Incoming { addr });
                let lat = self.links[link].latency;
                self.schedule(self.now + lat, Ev::Connected { link });
            }
            Ev::Connected { link } => {
                if let Some((node, peer)) = self.links[link].ends[0]
                    && !self.links[link].dead
                {
                    self.input(node, Input::Connected { peer });
                }
            }
            Ev::ConnectFailed { node, peer } => {
                self.nodes[node].handles.remove(&peer);
                self.input(node, Input::ConnectFailed { peer });
            }
            Ev::Deliver { link, to, bytes } => {
                if self.links[link].ends[to].is_none() {
                    return;
                }
                if self.links[link].dead {
                    // A broken connection delivers nothing more: TCP never skips bytes.
                    return;
                }
                if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
                    self.break_link(link);
                    return;
                }
                self.deliver(link, to, &bytes);
            }
            Ev::Datagram { link, to, bytes } => self.utp_datagram(link, to, &bytes),
            Ev::UtpTimer { link, side } => self.utp_timer(link, side),
            Ev::Closed { link, to } => {
                if let Some((node, peer)) = self.links[link].ends[to].take() {
                    self.nodes[node].handles.remove(&peer);
                    self.input(node, Input::Closed { peer });
                }
            }
            Ev::WriteDone { node, piece, begin } => {
                self.input(node, Input::WriteDone { piece, begin });
            }
            Ev::ReadDone {
                node,
                peer,
                piece,
                begin,
                length,
            } => {
                let start =
                    (u64::from(piece) * self.torrent.piece_length + u64::from(begin)) as usize;
                let mut data = self.nodes[node].storage[start..start + length as usize].to_vec();
                if self.nodes[node].role == Role::Hostile
                    && self.rng.random_bool(self.config.corrupt_rate)
                {
                    let i = self.rng.random_range(0..data.len());
                    data[i] ^= 0x55;
                }
                self.input(
                    node,
                    Input::ReadDone {
                        peer,
                        piece,
                        begin,
                        data: &data,
                    },
                );
            }
            Ev::Leave { node } => self.leave(node),
            Ev::Hashed { node, piece } => {
                let start = u64::from(piece) * self.torrent.piece_length;
                let end = (start + self.torrent.piece_length).min(self.torrent.total_length);
                let digest: [u8; 20] =
                    sha1::Sha1::digest(&self.nodes[node].storage[start as usize..end as usize])
                        .into();
                self.input(node, Input::PieceHashed { piece, digest });
            }
        }
    }

    /// The metadata pieces that `bytes`, about to be delivered to end `to` of `link`, carry to
    /// a magnet leecher still fetching it.
    fn sniff(&mut self, link: usize, to: usize, bytes: &[u8]) -> Vec<u32> {
        let receiver = self.links[link].nodes[to];
        let fetching = self.nodes[receiver].session.needs_metadata();
        let slot = &mut self.links[link].sniff[to];
        let Some(sniffer) = slot.as_mut() else {
            return Vec::new();
        };
        if !fetching {
            *slot = None;
            return Vec::new();
        }
        sniffer.feed(bytes).unwrap_or_else(|| {
            *slot = None;
            Vec::new()
        })
    }

    /// Whether metadata that node `from` delivered to `node` counted: the fetch's progress
    /// (`before` the input) grew, or the input ended an attempt (the metadata arrived, a hash
    /// check failed, or `from` was dropped for bad metadata). The input held only `from`'s
    /// bytes, so whatever it changed in the fetch came from them.
    fn metadata_used(
        &self,
        node: usize,
        from: usize,
        before: Option<(u32, u32)>,
        seen: usize,
    ) -> bool {
        let after = self.nodes[node].session.metadata_progress();
        let grew =
            matches!((before, after), (Some((h0, t0)), Some((h1, t1))) if t0 == t1 && h1 > h0);
        let ip = self.nodes[from].addr.ip();
        grew || self.nodes[node].events[seen..].iter().any(|e| match e {
            Event::MetadataReceived { .. } => true,
            Event::Error { message } => message.contains("did not match the info-hash"),
            Event::PeerDisconnected { addr, reason, .. } => {
                addr.ip() == ip && reason.starts_with("bad metadata")
            }
            _ => false,
        })
    }

    /// Node `node` leaves: each of its connections breaks (the other end learns it after the
    /// link's latency), and it gets no more input.
    fn leave(&mut self, node: usize) {
        self.nodes[node].left_at = Some(self.now);
        self.nodes[node].handles.clear();
        for link in 0..self.links.len() {
            let l = &mut self.links[link];
            let mut had_end = false;
            for end in &mut l.ends {
                if end.is_some_and(|(n, _)| n == node) {
                    *end = None;
                    had_end = true;
                }
            }
            if had_end && !l.dead {
                self.break_link(link);
            }
        }
    }

    /// Bytes of a link reach the session at its end `to`.
    fn deliver(&mut self, link: usize, to: usize, bytes: &[u8]) {
        let Some((node, peer)) = self.links[link].ends[to] else {
            return;
        };
        let pieces = self.sniff(link, to, bytes);
        let before = self.nodes[node].session.metadata_progress();
        let seen = self.nodes[node].events.len();
        self.input(node, Input::Received { peer, bytes });
        if !pieces.is_empty() {
            let from = self.links[link].nodes[1 - to];
            let used = self.metadata_used(node, from, before, seen);
            for piece in pieces {
                self.metadata_deliveries.push(MetadataDelivery {
                    at: self.now,
                    to: node,
                    from,
                    piece,
                    used,
                });
            }
            if self.config.bad_metadata_hit_and_run
                && self.nodes[from].role == Role::BadMetadata
                && !self.links[link].dead
            {
                self.break_link(link);
            }
        }
    }

    /// The address end `side` of a uTP link sees its peer at.
    fn utp_peer_addr(&self, link: usize, side: usize) -> SocketAddr {
        let l = &self.links[link];
        if side == 0 {
            self.nodes[l.nodes[1]].addr
        } else {
            l.dialer_addr
        }
    }

    /// Opens a uTP link: the dialer's endpoint sends its SYN.
    fn utp_dial(&mut self, link: usize, target: usize) {
        let seed = self.rng.random::<u64>();
        let config = |s| UtpConfig {
            seed: s,
            ..UtpConfig::default()
        };
        let mut eps = [Endpoint::new(config(seed)), Endpoint::new(config(seed ^ 1))];
        let to = self.nodes[target].addr;
        let dialed = eps[0].connect(self.now, to).ok();
        self.links[link].utp = Some(Box::new(UtpLink {
            eps,
            conns: [dialed, None],
            unsent: [Vec::new(), Vec::new()],
            timer: [None, None],
            connected: false,
        }));
        self.utp_settle(link, 0);
    }

    /// Hands end `side`'s connection as many of its session's bytes as it takes.
    fn utp_write(&mut self, link: usize, side: usize) {
        let Some(u) = self.links[link].utp.as_mut() else {
            return;
        };
        let (Some(h), true) = (u.conns[side], !u.unsent[side].is_empty()) else {
            return;
        };
        let n = u.eps[side].write(h, &u.unsent[side]);
        u.unsent[side].drain(..n);
    }

    /// After end `side`'s endpoint changed: its events become session inputs, its datagrams go
    /// on the link (through the node's uplink and the link's capacity, with latency, jitter,
    /// loss and duplication), and its timer is armed.
    fn utp_settle(&mut self, link: usize, side: usize) {
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            let Some(u) = self.links[link].utp.as_mut() else {
                return;
            };
            if let Some(ev) = u.eps[side].poll_event() {
                self.utp_event(link, side, ev);
                continue;
            }
            let Some(_) = u.eps[side].poll_transmit(self.now, &mut buf) else {
                break;
            };
            self.utp_send(link, side, &buf);
        }
        let Some(u) = self.links[link].utp.as_mut() else {
            return;
        };
        let next = u.eps[side].poll_timeout();
        if next.is_some() && next != u.timer[side] {
            u.timer[side] = next;
            if let Some(at) = next {
                self.schedule(at, Ev::UtpTimer { link, side });
            }
        }
    }

    /// When `len` bytes sent now by `node` on end `side` of `link` have left: the node's uplink
    /// carries all its connections and each link has its own capacity too; both must have
    /// carried them (latency comes on top).
    fn carry(&mut self, node: usize, link: usize, side: usize, len: usize) -> Time {
        let now = self.now;
        let len = len as u64;
        let node_bps = self.nodes[node].upload_bps.max(1);
        let node_done = self.nodes[node].up_busy.max(now)
            + Duration::from_nanos(len * 1_000_000_000 / node_bps);
        self.nodes[node].up_busy = node_done;
        let link_bps = self.links[link].bps.max(1);
        let link_done = self.links[link].busy[side].max(now)
            + Duration::from_nanos(len * 1_000_000_000 / link_bps);
        self.links[link].busy[side] = link_done;
        node_done.max(link_done)
    }

    fn utp_send(&mut self, link: usize, side: usize, datagram: &[u8]) {
        if self.links[link].dead {
            return;
        }
        let node = self.links[link].nodes[side];
        if self.nodes[node].left_at.is_some() {
            return;
        }
        self.datagrams += 1;
        let carried = self.carry(node, link, side, datagram.len());
        if self.config.datagram_loss > 0.0 && self.rng.random_bool(self.config.datagram_loss) {
            return;
        }
        let copies =
            if self.config.datagram_dup > 0.0 && self.rng.random_bool(self.config.datagram_dup) {
                2
            } else {
                1
            };
        for _ in 0..copies {
            let jitter = Duration::from_millis(self.rng.random_range(0..=self.config.jitter_ms));
            let at = carried + self.links[link].latency + jitter;
            self.schedule(
                at,
                Ev::Datagram {
                    link,
                    to: 1 - side,
                    bytes: datagram.to_vec(),
                },
            );
        }
    }

    fn utp_datagram(&mut self, link: usize, to: usize, bytes: &[u8]) {
        if self.links[link].dead || self.nodes[self.links[link].nodes[to]].left_at.is_some() {
            return;
        }
        let from = self.utp_peer_addr(link, to);
        let now = self.now;
        if let Some(u) = self.links[link].utp.as_mut() {
            u.eps[to].handle_datagram(now, from, bytes);
        }
        self.utp_settle(link, to);
    }

    fn utp_timer(&mut self, link: usize, side: usize) {
        let now = self.now;
        let dead = self.links[link].dead;
        let Some(u) = self.links[link].utp.as_mut() else {
            return;
        };
        if u.timer[side] != Some(now) {
            return; // re-armed since
        }
        u.timer[side] = None;
        if dead {
            return;
        }
        u.eps[side].handle_timeout(now);
        self.utp_settle(link, side);
    }

    fn utp_event(&mut self, link: usize, side: usize, ev: UtpEvent) {
        match ev {
            UtpEvent::Incoming { handle, .. } => {
                let node = self.links[link].nodes[1];
                if let Some(u) = self.links[link].utp.as_mut() {
                    u.conns[1] = Some(handle);
                }
                let h = self.nodes[node].session.next_handle();
                self.links[link].ends[1] = Some((node, h));
                self.nodes[node].handles.insert(h, link);
                let addr = self.links[link].dialer_addr;
                self.input(node, Input::Incoming { addr });
            }
            UtpEvent::Connected(_) => {
                if let Some(u) = self.links[link].utp.as_mut() {
                    u.connected = true;
                }
                if let Some((node, peer)) = self.links[link].ends[0] {
                    self.input(node, Input::Connected { peer });
                }
            }
            UtpEvent::Readable(h) => {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                if let Some(u) = self.links[link].utp.as_mut() {
                    loop {
                        let n = u.eps[side].read(h, &mut buf);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                }
                if !got.is_empty() {
                    self.deliver(link, side, &got);
                }
            }
            UtpEvent::Writable(_) => self.utp_write(link, side),
            UtpEvent::Closed { .. } => {
                let connected = self.links[link].utp.as_ref().is_some_and(|u| u.connected);
                if let Some(u) = self.links[link].utp.as_mut() {
                    u.conns[side] = None;
                }
                if let Some((node, peer)) = self.links[link].ends[side].take() {
                    self.nodes[node].handles.remove(&peer);
                    if side == 0 && !connected {
                        self.input(node, Input::ConnectFailed { peer });
                    } else {
                        self.input(node, Input::Closed { peer });
                    }
                }
            }
        }
    }

    /// Both ends learn the connection broke (after their latency).
    fn break_link(&mut self, link: usize) {
        self.links[link].dead = true;
        for to in 0..2 {
            if self.links[link].ends[to].is_some() {
                let lat = self.links[link].latency;
                self.schedule(self.now + lat, Ev::Closed { link, to });
            }
        }
    }

    /// Drains a node's actions and events, turning actions into scheduled simulation events.
    fn drain(&mut self, node: usize) {
        while let Some(action) = self.nodes[node].session.poll_action() {
            if let Some(hook) = self.on_action.as_mut() {
                hook(node, &action);
            }
            self.act(node, action);
        }
        let mut metadata = None;
        while let Some(ev) = self.nodes[node].session.poll_event() {
            match &ev {
                Event::Complete if self.nodes[node].completed_at.is_none() => {
                    self.nodes[node].completed_at = Some(self.now);
                }
                Event::PeerConnected { addr, .. } => {
                    if let Some(other) = self.node_at(*addr) {
                        self.nodes[node].met.insert(other);
                    }
                }
                Event::MetadataReceived { info } => metadata = Some(info.clone()),
                _ => {}
            }
            self.nodes[node].events.push(ev);
            self.nodes[node].event_times.push(self.now);
        }
        if let Some(info) = metadata {
            self.adopt_metadata(node, &info);
        }
    }

    /// What a driver does when a magnet leecher's session reports its metadata: check it (here:
    /// it must be the torrent's info dictionary, byte for byte), create the files (here: none
    /// exist, so the check that follows trusts no piece) and give the session its torrent.
    fn adopt_metadata(&mut self, node: usize, info: &[u8]) {
        assert!(
            info == self.torrent.metadata.as_slice(),
            "seed {}: node {node} received metadata of {} bytes that is not the torrent's ({} bytes)",
            self.config.seed,
            info.len(),
            self.torrent.metadata.len()
        );
        assert!(
            self.nodes[node].metadata_at.is_none(),
            "seed {}: node {node} received the metadata twice",
            self.config.seed
        );
        self.nodes[node].metadata_at = Some(self.now);
        let files = vec![None; self.torrent.files.len()];
        if let Some(hook) = self.on_input.as_mut() {
            hook(
                node,
                self.now,
                &TorrentInput::Start {
                    files: &files,
                    resume: None,
                },
            );
        }
        let count = self.torrent.piece_count();
        self.nodes[node]
            .session
            .set_torrent(self.now, self.torrent.clone(), Bitfield::new(count));
        self.drain(node);
    }

    fn act(&mut self, node: usize, action: Action) {
        let now = self.now;
        match action {
            Action::Connect { peer, addr } => {
                let Some(target) = self.nodes.iter().position(|n| n.addr == addr) else {
                    self.schedule(
                        now + Duration::from_millis(10),
                        Ev::ConnectFailed { node, peer },
                    );
                    return;
                };
                let (lo, hi) = self.config.latency_ms;
                let latency = Duration::from_millis(self.rng.random_range(lo..=hi.max(lo)));
                let link = self.links.len();
                let ip = self.nodes[node].addr.ip();
                let (blo, bhi) = self.config.link_bps;
                let bps = self.rng.random_range(blo..=bhi.max(blo));
                let sniffer = |n: &Node| {
                    (n.role == Role::MagnetLeecher && n.session.needs_metadata()).then(Sniffer::new)
                };
                let sniff = [sniffer(&self.nodes[node]), sniffer(&self.nodes[target])];
                self.links.push(Link {
                    ends: [Some((node, peer)), None],
                    nodes: [node, target],
                    latency,
                    bps,
                    busy: [Time::ZERO; 2],
                    dialer_addr: SocketAddr::new(ip, 40000 + (link % 20000) as u16),
                    dead: false,
                    sniff,
                    utp: None,
                });
                self.nodes[node].handles.insert(peer, link);
                if self.config.utp {
                    self.utp_dial(link, target);
                    return;
                }
                self.schedule(now + latency, Ev::Incoming { link, node: target });
            }
            Action::Send { peer, bytes } => {
                let Some(&link) = self.nodes[node].handles.get(&peer) else {
                    return;
                };
                let from = if self.links[link].ends[0] == Some((node, peer)) {
                    0
                } else {
                    1
                };
                if self.links[link].utp.is_some() {
                    if let Some(u) = self.links[link].utp.as_mut() {
                        u.unsent[from].extend_from_slice(&bytes);
                    }
                    self.utp_write(link, from);
                    self.utp_settle(link, from);
                    return;
                }
                let to = 1 - from;
                let latency = self.links[link].latency;
                // Split into random chunks so decoders see arbitrary boundaries.
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = if self.rng.random_range(0..4) == 0 {
                        self.rng.random_range(1..=rest.len())
                    } else {
                        rest.len()
                    };
                    let (chunk, tail) = rest.split_at(n);
                    rest = tail;
                    let at = self.carry(node, link, from, chunk.len()) + latency;
                    self.schedule(
                        at,
                        Ev::Deliver {
                            link,
                            to,
                            bytes: chunk.to_vec(),
                        },
                    );
                }
            }
            Action::Close { peer, .. } => {
                let Some(link) = self.nodes[node].handles.remove(&peer) else {
                    return;
                };
                let from = if self.links[link].ends[0] == Some((node, peer)) {
                    0
                } else {
                    1
                };
                self.links[link].ends[from] = None;
                let to = 1 - from;
                if let Some(u) = self.links[link].utp.as_mut() {
                    // Queued bytes still go out, then a FIN (the peer's `Closed` follows it).
                    if let Some(h) = u.conns[from] {
                        let rest = std::mem::take(&mut u.unsent[from]);
                        u.eps[from].write(h, &rest);
                        u.eps[from].close(h);
                    }
                    self.utp_settle(link, from);
                    return;
                }
                if self.links[link].ends[to].is_some() {
                    // The close follows the bytes already sent.
                    let at = self.nodes[node]
                        .up_busy
                        .max(self.links[link].busy[from])
                        .max(now)
                        + self.links[link].latency;
                    self.schedule(at, Ev::Closed { link, to });
                } else {
                    self.links[link].dead = true;
                }
            }
            Action::WriteBlock { piece, begin, data } => {
                let start =
                    (u64::from(piece) * self.torrent.piece_length + u64::from(begin)) as usize;
                self.nodes[node].storage[start..start + data.len()].copy_from_slice(&data);
                self.schedule(now + DISK_DELAY, Ev::WriteDone { node, piece, begin });
            }
            Action::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => {
                self.schedule(
                    now + DISK_DELAY,
                    Ev::ReadDone {
                        node,
                        peer,
                        piece,
                        begin,
                        length,
                    },
                );
            }
            Action::HashPiece { piece } => {
                self.schedule(now + HASH_DELAY, Ev::Hashed { node, piece });
            }
            Action::Announce { .. } => {}
        }
    }
}

/// The torrent of `content` as `config` shapes it: an info dictionary written by
/// [`TorrentSpec`] (a multi-file torrent named `sim` with files `f0`, `f1`, …) and parsed back,
/// so the info-hash is its SHA-1 and [`Torrent::metadata`] holds its bytes.
pub fn torrent_of(config: &SimConfig, content: &[u8]) -> Torrent {
    let spec = TorrentSpec {
        name: "sim".into(),
        piece_length: config.piece_length,
        files: config
            .file_lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| (vec![format!("f{i}")], length))
            .collect(),
        piece_hashes: hash_pieces(content, config.piece_length),
        ..TorrentSpec::default()
    };
    let meta = Metainfo::from_bytes(&spec.to_bytes())
        .unwrap_or_else(|e| panic!("seed {}: the simulated torrent: {e}", config.seed));
    let torrent = Torrent::from_metainfo(&meta);
    assert_eq!(torrent.info_hash, InfoHash::of(&torrent.metadata));
    assert_eq!(torrent.metadata, spec.info_bytes());
    torrent
}

/// Metadata for the same info-hash that is wrong: as long as `info` with one byte changed in
/// every 16 KiB piece (so whatever piece of it a peer takes is wrong), or, when `resized`,
/// `info` cut short or grown by up to a piece and a half of random bytes.
fn wrong_metadata(rng: &mut ChaCha8Rng, info: &[u8], resized: bool) -> Vec<u8> {
    let mut bad = info.to_vec();
    if resized {
        let piece = PIECE_SIZE as usize;
        if rng.random_bool(0.5) && bad.len() > 1 {
            let cut = rng.random_range(1..=bad.len().min(piece * 3 / 2) - 1);
            bad.truncate(bad.len() - cut);
        } else {
            let grow = rng.random_range(1..=piece * 3 / 2);
            bad.extend((0..grow).map(|_| rng.random::<u8>()));
        }
    }
    for chunk in bad.chunks_mut(PIECE_SIZE as usize) {
        let i = rng.random_range(0..chunk.len());
        chunk[i] ^= rng.random_range(1..=255u8);
    }
    bad
}
