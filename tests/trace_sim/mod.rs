//! Recording nodes of a simulated swarm (`tests/sim`) to traces, for the trace tests and the
//! replay benchmark.
//!
//! The simulation owns its sessions, so instead of swapping in a `Recorder` this replaces a
//! node's session by one built from a known header (a task with no trackers, which runs exactly
//! that session: known pieces, or a magnet link's info-hash alone) and records it through the
//! simulation's input and action hooks with a `TraceWriter` (the hooks see no events, so the
//! traces hold none). A magnet leecher's trace holds the `Start` input its task needs once the
//! metadata is in; the simulation then gives the session its torrent as that task does.

#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use kp_torrent_core::session::{Session, SessionConfig};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{StartState, TorrentConfig};
use kp_torrent_core::trace::{TraceHeader, TraceWriter};

use crate::sim::{Role, Sim, SimConfig};

/// A trace being written in memory, shared with the simulation's hooks.
pub type SharedWriter = Rc<RefCell<TraceWriter<Vec<u8>>>>;

/// The header of a trace of `node`: its torrent and start as the simulation built it, with
/// another seed.
pub fn header(sim: &Sim, node: usize, seed: u64) -> TraceHeader {
    let n = &sim.nodes[node];
    let start_state = match n.role {
        Role::MagnetLeecher => StartState::Magnet,
        _ => StartState::Verified(n.initial_have.clone()),
    };
    TraceHeader {
        events: false,
        config: TorrentConfig {
            session: SessionConfig {
                seed,
                ..n.session_config.clone()
            },
            trackers: Default::default(),
            tiers: Vec::new(),
            web_seeds: Vec::new(),
        },
        torrent: n.torrent.clone(),
        start_state,
        start: Time::ZERO,
    }
}

/// Records `nodes` of `sim` (their sessions are rebuilt from headers with seeds derived from
/// `seed`); returns one writer per node, to finish after [`Sim::run`].
pub fn record_nodes(sim: &mut Sim, nodes: &[usize], seed: u64) -> Vec<SharedWriter> {
    let mut writers = Vec::new();
    for (k, &node) in nodes.iter().enumerate() {
        let header = header(sim, node, seed.wrapping_add(k as u64));
        let config = header.config.session.clone();
        let mut session = match &header.start_state {
            StartState::Magnet => {
                Session::new_magnet(config, header.torrent.info_hash, header.start)
            }
            StartState::Verified(have) => {
                Session::new(config, header.torrent.clone(), have.clone(), header.start)
            }
            StartState::Check => unreachable!("simulated nodes know their pieces"),
        };
        let mut writer = TraceWriter::new(Vec::new(), &header);
        while let Some(a) = session.poll_action() {
            writer.session_action(&a);
        }
        while session.poll_event().is_some() {}
        sim.nodes[node].session = session;
        writers.push(Rc::new(RefCell::new(writer)));
    }
    let by_node: Vec<(usize, SharedWriter)> =
        nodes.iter().copied().zip(writers.iter().cloned()).collect();
    let inputs = by_node.clone();
    sim.on_input = Some(Box::new(move |node, now, input| {
        if let Some((_, w)) = inputs.iter().find(|(n, _)| *n == node) {
            w.borrow_mut().input(now, input);
        }
    }));
    sim.on_action = Some(Box::new(move |node, action| {
        if let Some((_, w)) = by_node.iter().find(|(n, _)| *n == node) {
            w.borrow_mut().session_action(action);
        }
    }));
    writers
}

/// Ends a recording and returns the trace bytes.
pub fn finish(writer: SharedWriter) -> Vec<u8> {
    let writer = Rc::try_unwrap(writer)
        .expect("the simulation's hooks were dropped")
        .into_inner();
    writer.finish().expect("writing to a Vec cannot fail")
}

/// Runs a swarm of one seeder and `leechers` leechers over `total` bytes and returns the traces
/// of the seeder and of the first leecher, with the simulation.
pub fn record_swarm(
    seed: u64,
    leechers: usize,
    piece_length: u64,
    total: u64,
) -> (Sim, Vec<u8>, Vec<u8>) {
    let mut config = SimConfig::new(seed);
    config.leechers = leechers;
    config.piece_length = piece_length;
    config.file_lengths = vec![total];
    record_sim(config)
}

/// Runs the swarm `config` describes and returns the traces of the first seeder and of the first
/// leecher, with the simulation.
pub fn record_sim(config: SimConfig) -> (Sim, Vec<u8>, Vec<u8>) {
    let first_leecher = config.seeders + config.hostile + config.bad_metadata;
    let (sim, traces) = record_sim_nodes(config, &[0, first_leecher]);
    let mut traces = traces.into_iter();
    let seeder = traces.next().unwrap_or_default();
    let leecher = traces.next().unwrap_or_default();
    (sim, seeder, leecher)
}

/// Runs the swarm `config` describes, recording `nodes`; every leecher must finish with the
/// right data. Returns the simulation and the traces, in the order of `nodes`.
pub fn record_sim_nodes(config: SimConfig, nodes: &[usize]) -> (Sim, Vec<Vec<u8>>) {
    let seed = config.seed;
    let mut sim = Sim::new(config);
    let writers = record_nodes(&mut sim, nodes, seed ^ 0x7ace);
    let outcome = sim.run();
    assert!(
        outcome.all_complete && outcome.corrupt.is_empty(),
        "seed {seed}: {outcome:?}"
    );
    sim.on_input = None;
    sim.on_action = None;
    let traces = writers.into_iter().map(finish).collect();
    (sim, traces)
}
