//! A deterministic in-memory swarm: several [`Session`]s joined by a simulated network, with
//! in-memory storage, driven by a virtual clock.
//!
//! Everything is decided by [`SimConfig::seed`]: content, link latencies and bandwidths, node
//! upload bandwidths, start times, how sends are split into chunks, which connections are lost.
//! Network delivery,
//! disk writes, reads and hashing are scheduled as timestamped inputs in one event queue, so a run
//! is a pure function of its configuration and can be recorded and replayed.
//!
//! Reuse: build a [`Sim`] from a [`SimConfig`], optionally set [`Sim::on_input`] /
//! [`Sim::on_action`] to observe every input given to and action taken from each session (a
//! trace recorder), then [`Sim::run`].

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::{InfoHash, PeerHandle};
use kp_torrent_core::metainfo::hash_pieces;
use kp_torrent_core::session::{Action, Event, FileSpan, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
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
        }
    }

    /// Sum of the file lengths.
    pub fn total_length(&self) -> u64 {
        self.file_lengths.iter().sum()
    }

    /// Derives a random but valid swarm shape from `seed`: 1–3 seeders, 1–8 leechers, pieces of
    /// 16 KiB–4 MiB, 1–50 files, at most `max_total` bytes, usually with a partial last piece.
    pub fn random(seed: u64, max_total: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed);
        let piece_length = (16 * 1024u64) << rng.random_range(0..9u32);
        let files = rng.random_range(1..=50usize);
        let total = rng.random_range(1..=max_total);
        // Cut the total at random points into `files` lengths (zero-length files included).
        let mut cuts: Vec<u64> = (1..files).map(|_| rng.random_range(0..=total)).collect();
        cuts.sort_unstable();
        let mut file_lengths = Vec::with_capacity(files);
        let mut prev = 0;
        for c in cuts {
            file_lengths.push(c - prev);
            prev = c;
        }
        file_lengths.push(total - prev);
        SimConfig {
            seed,
            seeders: rng.random_range(1..=3),
            leechers: rng.random_range(1..=8),
            hostile: 0,
            corrupt_rate: 1.0,
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
            time_limit: Duration::from_secs(3600),
        }
    }
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
}

/// One simulated client.
pub struct Node {
    /// Its session.
    pub session: Session,
    /// The configuration its session was built with (a recorder stores it with the torrent).
    pub session_config: SessionConfig,
    /// The pieces it started with.
    pub initial_have: Bitfield,
    /// Its role.
    pub role: Role,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its in-memory storage (the torrent's bytes, concatenated).
    pub storage: Vec<u8>,
    /// Virtual time its session reported completion, if it did.
    pub completed_at: Option<Time>,
    /// Events it emitted.
    pub events: Vec<Event>,
    upload_bps: u64,
    up_busy: Time,
    handles: BTreeMap<PeerHandle, usize>,
}

#[derive(Debug)]
struct Link {
    /// `(node, handle)` of each end; `None` once that end closed (or before it exists).
    ends: [Option<(usize, PeerHandle)>; 2],
    latency: Duration,
    /// Capacity of each direction, bytes per second.
    bps: u64,
    /// When each direction has carried everything queued on it.
    busy: [Time; 2],
    /// The accepting side's view of the dialer's address (an ephemeral port).
    dialer_addr: SocketAddr,
    dead: bool,
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
}

/// Observes `(node, now, input)` before each input is handed to a session.
pub type InputHook = Box<dyn FnMut(usize, Time, &Input<'_>)>;
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
    /// The nodes: seeders, then hostile nodes, then leechers.
    pub nodes: Vec<Node>,
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
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Virtual time when the last honest leecher completed (or the limit).
    pub finished_at: Time,
    /// True when every leecher completed.
    pub all_complete: bool,
    /// Leechers whose storage differs from the content.
    pub corrupt: Vec<usize>,
}

const HASH_DELAY: Duration = Duration::from_millis(2);
const DISK_DELAY: Duration = Duration::from_micros(300);

impl Sim {
    /// Builds the swarm; nothing runs until [`Sim::run`].
    pub fn new(config: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let total = config.total_length();
        let mut content = vec![0u8; total as usize];
        rng.fill_bytes(&mut content);
        let piece_hashes = hash_pieces(&content, config.piece_length);
        let mut files = Vec::new();
        let mut offset = 0;
        for &length in &config.file_lengths {
            files.push(FileSpan {
                offset,
                length,
                padding: false,
            });
            offset += length;
        }
        let mut info_hash = [0u8; 20];
        rng.fill_bytes(&mut info_hash);
        let torrent = Torrent {
            private: false,
            info_hash: InfoHash(info_hash),
            piece_length: config.piece_length,
            total_length: total,
            piece_hashes,
            files,
            metadata: Vec::new(),
        };
        let count = torrent.piece_count();
        let roles = std::iter::repeat_n(Role::Seeder, config.seeders)
            .chain(std::iter::repeat_n(Role::Hostile, config.hostile))
            .chain(std::iter::repeat_n(Role::Leecher, config.leechers));
        let mut nodes = Vec::new();
        for (i, role) in roles.enumerate() {
            let complete = role != Role::Leecher;
            let have = if complete {
                Bitfield::full(count)
            } else {
                Bitfield::new(count)
            };
            let session_config = SessionConfig {
                seed: rng.random::<u64>(),
                listen_port: 6881,
                ..SessionConfig::default()
            };
            let session = Session::new(
                session_config.clone(),
                torrent.clone(),
                have.clone(),
                Time::ZERO,
            );
            let addr = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
                6881,
            );
            let (lo, hi) = config.upload_bps;
            nodes.push(Node {
                session,
                session_config,
                initial_have: have,
                role,
                addr,
                storage: if complete {
                    content.clone()
                } else {
                    vec![0; total as usize]
                },
                completed_at: None,
                events: Vec::new(),
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
            on_input: None,
            on_action: None,
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now: Time::ZERO,
            rng,
            steps: 0,
        };
        for node in 0..sim.nodes.len() {
            let mut at = Time::from_millis(sim.rng.random_range(0..=sim.config.start_spread_ms));
            if sim.nodes[node].role == Role::Hostile {
                // Hostile nodes are there from the start, so every leecher meets them.
                at = Time::ZERO;
            }
            sim.schedule(at, Ev::Start { node });
        }
        sim
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, ev)));
    }

    /// Leechers that are not yet complete.
    pub fn unfinished(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Leecher && !n.session.is_complete())
            .count()
    }

    /// Runs until every leecher is complete, nothing is left to do, or the time limit.
    pub fn run(&mut self) -> Outcome {
        let limit = Time::ZERO + self.config.time_limit;
        // What the sessions queued at construction (their `started` announces), after the hooks
        // were set.
        for node in 0..self.nodes.len() {
            self.drain(node);
        }
        while self.unfinished() > 0 {
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
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
                Some(i) => self.input(i, Input::Timeout),
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
            .filter(|(_, n)| n.role == Role::Leecher && n.storage != self.content)
            .map(|(i, _)| i)
            .collect();
        let finished_at = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Leecher)
            .filter_map(|n| n.completed_at)
            .max()
            .unwrap_or(self.now);
        Outcome {
            finished_at,
            all_complete: self.unfinished() == 0,
            corrupt,
        }
    }

    /// Gives one input to a node's session, then drains its outputs.
    fn input(&mut self, node: usize, input: Input<'_>) {
        if let Some(hook) = self.on_input.as_mut() {
            hook(node, self.now, &input);
        }
        self.nodes[node].session.handle_input(self.now, input);
        self.drain(node);
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start { node } => {
                let addrs: Vec<SocketAddr> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != node)
                    .map(|(_, n)| n.addr)
                    .collect();
                self.input(node, Input::PeersDiscovered { addrs: &addrs });
            }
            Ev::Incoming { link, node } => {
                if self.links[link].dead || self.links[link].ends[0].is_none() {
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
                let Some((node, peer)) = self.links[link].ends[to] else {
                    return;
                };
                if self.links[link].dead {
                    // A broken connection delivers nothing more: TCP never skips bytes.
                    return;
                }
                if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
                    self.break_link(link);
                    return;
                }
                self.input(
                    node,
                    Input::Received {
                        peer,
                        bytes: &bytes,
                    },
                );
            }
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
        while let Some(ev) = self.nodes[node].session.poll_event() {
            if ev == Event::Complete && self.nodes[node].completed_at.is_none() {
                self.nodes[node].completed_at = Some(self.now);
            }
            self.nodes[node].events.push(ev);
        }
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
                self.links.push(Link {
                    ends: [Some((node, peer)), None],
                    latency,
                    bps,
                    busy: [Time::ZERO; 2],
                    dialer_addr: SocketAddr::new(ip, 40000 + (link % 20000) as u16),
                    dead: false,
                });
                self.nodes[node].handles.insert(peer, link);
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
                    // The node's uplink carries all its connections; each link has its own
                    // capacity too. The chunk arrives when both have carried it, plus latency.
                    let len = chunk.len() as u64;
                    let node_bps = self.nodes[node].upload_bps.max(1);
                    let node_done = self.nodes[node].up_busy.max(now)
                        + Duration::from_nanos(len * 1_000_000_000 / node_bps);
                    self.nodes[node].up_busy = node_done;
                    let link_bps = self.links[link].bps.max(1);
                    let link_done = self.links[link].busy[from].max(now)
                        + Duration::from_nanos(len * 1_000_000_000 / link_bps);
                    self.links[link].busy[from] = link_done;
                    let at = node_done.max(link_done) + latency;
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
