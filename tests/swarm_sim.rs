//! Swarm simulation: seeders and leechers on a simulated network (see `sim/mod.rs`).
//!
//! Properties, checked over random seeds and swarm shapes (1–3 seeders, 1–8 leechers and in a
//! third of them 1–3 magnet leechers, pieces of 16 KiB–4 MiB, 1–50 files, a few MiB of data with
//! a partial last piece):
//! - every leecher finishes with byte-identical data, nothing panics, and no session asks to be
//!   woken at the same time again and again (a driver would spin);
//! - the virtual time to finish stays within [`time_bound`];
//! - a hostile seeder serving corrupted blocks is banned by the leechers it fed bad data, and
//!   every honest leecher still finishes with correct data;
//! - magnet leechers, mixed with ordinary ones, fetch the metadata from their peers (the
//!   simulation asserts it is the torrent's info dictionary, byte for byte) and then finish
//!   like the others, in the same time bound;
//! - nodes serving wrong metadata for the info-hash (as long as the real one or not, with every
//!   piece or none) never make a magnet leecher take it: every magnet leecher still finishes
//!   with correct data, no honest peer is dropped for bad metadata, a bad node once dropped
//!   never delivers metadata to that leecher again, and (without connection loss) every bad
//!   node that fed a magnet leecher metadata it used is banned and dropped by it for bad
//!   metadata; bad nodes that leave as soon as they fed a piece get no honest peer blamed;
//! - when each node starts knowing one other node only, peer exchange (BEP 11) lets leechers
//!   find each other: some pair of leechers that nobody introduced connects, and all finish;
//!   when the only seeder they know leaves early, peer exchange is what lets them finish (the
//!   same swarm without it does not);
//! - swarms whose every connection is uTP, with datagrams lost, duplicated and reordered, finish
//!   like the others (correct data, the same time bound).
//!
//! A failing case prints its seed and the command that reruns exactly that case:
//! `KP_SIM_SEED=<seed> cargo test --test swarm_sim one_case -- --nocapture`
//! (`KP_SIM_HOSTILE=1` adds a hostile seeder; `KP_SIM_KIND=magnet`, `bad-metadata`, `pex` or `utp`
//! picks the other kinds of swarm). Case counts follow `KP_QC_TESTS`.

mod sim;

use std::time::Duration;

use kp_torrent_core::session::Event;
use kp_torrent_core::time::Time;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sim::{Discovery, Role, Sim, SimConfig, split_lengths};

/// Largest swarm payload per random case: keeps the whole file under two minutes.
const MAX_TOTAL: u64 = 6 * 1024 * 1024;

/// The stated bound on virtual time for every leecher to finish: 30 s (nodes start within 10 s,
/// connections are lost and re-opened) plus twice the time the whole torrent takes to cross the
/// slowest possible path once (the slowest node uplink or link). Seeders alone could feed every
/// leecher in about that time; leechers trading pieces make it shorter. Over 800 random swarms
/// the slowest used 31% of it.
fn time_bound(config: &SimConfig) -> Duration {
    let slowest = config.upload_bps.0.min(config.link_bps.0).max(1);
    let once = config.total_length() as f64 / slowest as f64;
    Duration::from_secs(30) + Duration::from_secs_f64(once * 2.0)
}

/// The kinds of swarm the properties run, each with its own shape from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [`SimConfig::random`].
    Random,
    /// A random swarm with a hostile seeder ([`hostile_config`]).
    Hostile,
    /// Magnet leechers among ordinary ones ([`magnet_config`]).
    Magnet,
    /// Magnet leechers and nodes serving wrong metadata ([`bad_metadata_config`]).
    BadMetadata,
    /// Nodes that know one other node and learn the rest by peer exchange ([`pex_config`]).
    Pex,
    /// Bad-metadata nodes that leave once they fed a piece ([`hit_and_run_config`]).
    HitAndRun,
    /// Every connection over uTP, with datagram loss, duplication and reordering
    /// ([`utp_config`]).
    Utp,
    /// A swarm the named test builds itself.
    Fixed(&'static str),
}

impl Kind {
    fn config(self, seed: u64) -> SimConfig {
        match self {
            Kind::Random => SimConfig::random(seed, MAX_TOTAL),
            Kind::Hostile => hostile_config(seed),
            Kind::Magnet => magnet_config(seed),
            Kind::BadMetadata => bad_metadata_config(seed),
            Kind::Pex => pex_config(seed),
            Kind::HitAndRun => hit_and_run_config(seed),
            Kind::Utp => utp_config(seed),
            Kind::Fixed(test) => panic!("{test} builds its own swarm (seed {seed})"),
        }
    }

    /// The command that reruns the case of `seed`.
    fn rerun(self, seed: u64) -> String {
        let env = match self {
            Kind::Random => "",
            Kind::Hostile => " KP_SIM_HOSTILE=1",
            Kind::Magnet => " KP_SIM_KIND=magnet",
            Kind::BadMetadata => " KP_SIM_KIND=bad-metadata",
            Kind::Pex => " KP_SIM_KIND=pex",
            Kind::HitAndRun => " KP_SIM_KIND=hit-and-run",
            Kind::Utp => " KP_SIM_KIND=utp",
            Kind::Fixed(test) => {
                return format!("rerun: cargo test --test swarm_sim {test} -- --nocapture");
            }
        };
        format!(
            "rerun: KP_SIM_SEED={seed}{env} cargo test --test swarm_sim one_case -- --nocapture"
        )
    }

    /// The kind [`one_case`] runs, from `KP_SIM_KIND` and `KP_SIM_HOSTILE`.
    fn from_env() -> Kind {
        let hostile = std::env::var("KP_SIM_HOSTILE").is_ok_and(|v| v == "1");
        match std::env::var("KP_SIM_KIND").as_deref() {
            Ok("magnet") => Kind::Magnet,
            Ok("bad-metadata") => Kind::BadMetadata,
            Ok("pex") => Kind::Pex,
            Ok("hit-and-run") => Kind::HitAndRun,
            Ok("utp") => Kind::Utp,
            Ok("hostile") => Kind::Hostile,
            Ok("random") | Err(_) if !hostile => Kind::Random,
            Ok("random") | Err(_) => Kind::Hostile,
            Ok(other) => panic!(
                "KP_SIM_KIND={other:?}: expected magnet, bad-metadata, hit-and-run, pex, utp, \
                 hostile or random"
            ),
        }
    }
}

/// Runs one case of `kind`; `Ok` is the virtual time when the last leecher finished, `Err`
/// describes the failure and how to rerun it.
fn check(kind: Kind, config: SimConfig) -> Result<Time, String> {
    let seed = config.seed;
    let hostile = config.hostile > 0;
    let rerun = kind.rerun(seed);
    let bound = time_bound(&config);
    let shape = format!(
        "{} seeders, {} hostile, {} bad metadata, {} leechers, {} magnet leechers, piece {} B, \
         {} files, {} B, discovery {:?}",
        config.seeders,
        config.hostile,
        config.bad_metadata,
        config.leechers,
        config.magnet_leechers,
        config.piece_length,
        config.file_lengths.len(),
        config.total_length(),
        config.discovery,
    );
    let mut sim = Sim::new(config);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()))
        .map_err(|_| format!("seed {seed}: panicked ({shape}); {rerun}"))?;
    let fail = |what: String| format!("seed {seed}: {what} ({shape}); {rerun}");
    if !outcome.all_complete {
        return Err(fail(format!(
            "{} leechers unfinished at {}",
            sim.unfinished(),
            outcome.finished_at
        )));
    }
    if !outcome.corrupt.is_empty() {
        return Err(fail(format!(
            "leechers {:?} hold wrong data",
            outcome.corrupt
        )));
    }
    if outcome.finished_at > Time::ZERO + bound {
        return Err(fail(format!(
            "finished at {}, bound {bound:?}",
            outcome.finished_at
        )));
    }
    for (i, n) in sim.nodes.iter().enumerate() {
        if n.role == Role::MagnetLeecher && n.metadata_at.is_none() {
            return Err(fail(format!(
                "magnet leecher {i} finished without metadata"
            )));
        }
    }
    if !hostile {
        // Without a hostile node, no piece may fail and nobody may be banned for bad data.
        for (i, n) in sim.nodes.iter().enumerate() {
            if let Some(e) = n
                .events
                .iter()
                .find(|e| matches!(e, Event::HashFailed { .. } | Event::PeerBanned { .. }))
            {
                return Err(fail(format!("node {i}: {e}")));
            }
        }
    }
    if hostile {
        check_hostile(&sim).map_err(fail)?;
    }
    check_metadata(&sim).map_err(fail)?;
    if sim.config.utp && sim.datagrams == 0 {
        return Err(fail("a uTP swarm sent no datagram".to_string()));
    }
    if sim.config.utp {
        eprintln!(
            "seed {seed}: uTP, {} datagrams, loss {:.3}, done at {}",
            sim.datagrams, sim.config.datagram_loss, outcome.finished_at
        );
    }
    if sim.config.discovery != Discovery::Everyone {
        check_pex(&sim).map_err(fail)?;
    }
    Ok(outcome.finished_at)
}

/// A hostile seeder is caught by the leechers it fed bad data, and no honest node is banned.
fn check_hostile(sim: &Sim) -> Result<(), String> {
    let hostile_ids: Vec<[u8; 20]> = sim
        .nodes
        .iter()
        .filter(|n| n.role == Role::Hostile)
        .map(|n| n.session.peer_id().0)
        .collect();
    for (i, n) in sim.nodes.iter().enumerate() {
        if !n.role.downloads() {
            continue;
        }
        let failed = n
            .events
            .iter()
            .any(|e| matches!(e, Event::HashFailed { .. }));
        let banned_hostile = hostile_ids.iter().any(|id| n.session.is_banned(id));
        // A leecher that received corrupt data must have caught the sender, unless it
        // finished before the evidence was complete.
        if failed
            && !banned_hostile
            && n.events
                .iter()
                .filter(|e| matches!(e, Event::HashFailed { .. }))
                .count()
                >= 3
        {
            return Err(format!(
                "leecher {i} saw repeated hash failures but banned nobody"
            ));
        }
    }
    let any_ban = sim
        .nodes
        .iter()
        .any(|n| hostile_ids.iter().any(|id| n.session.is_banned(id)));
    let any_failure = sim.nodes.iter().any(|n| {
        n.events
            .iter()
            .any(|e| matches!(e, Event::HashFailed { .. }))
    });
    if any_failure && !any_ban {
        return Err("corrupt data seen but the hostile seeder was never banned".into());
    }
    Ok(())
}

/// The nodes `n` dropped for bad metadata, by the reasons of its disconnections, with when.
fn bad_metadata_drops(sim: &Sim, n: &sim::Node) -> Vec<(usize, Time)> {
    n.events
        .iter()
        .zip(&n.event_times)
        .filter_map(|(e, &at)| match e {
            Event::PeerDisconnected { addr, reason, .. } if reason.starts_with("bad metadata") => {
                Some((sim.node_at(*addr)?, at))
            }
            _ => None,
        })
        .collect()
}

/// The nodes `n` dropped for bad metadata.
fn dropped_for_bad_metadata(sim: &Sim, n: &sim::Node) -> Vec<usize> {
    bad_metadata_drops(sim, n)
        .into_iter()
        .map(|(j, _)| j)
        .collect()
}

/// Honest nodes are never banned or dropped for bad metadata; a bad-metadata node that fed a
/// magnet leecher metadata it used is banned and dropped by it (when no connection was lost,
/// which could take its pieces out of the fetch before they were judged).
fn check_metadata(sim: &Sim) -> Result<(), String> {
    for (i, n) in sim.nodes.iter().enumerate() {
        for (j, o) in sim.nodes.iter().enumerate() {
            if !o.role.hostile() && n.session.is_banned(&o.session.peer_id().0) {
                return Err(format!("node {i} banned honest node {j}"));
            }
        }
        if let Some(j) = dropped_for_bad_metadata(sim, n)
            .into_iter()
            .find(|&j| sim.nodes[j].role != Role::BadMetadata)
        {
            return Err(format!(
                "node {i} dropped {:?} node {j} for bad metadata",
                sim.nodes[j].role
            ));
        }
    }
    // A node dropped for bad metadata is banned: it is never asked again, so it never delivers
    // metadata to that leecher again.
    for (i, n) in sim.nodes.iter().enumerate() {
        for (j, dropped_at) in bad_metadata_drops(sim, n) {
            if let Some(d) = sim
                .metadata_deliveries
                .iter()
                .find(|d| d.to == i && d.from == j && d.at > dropped_at)
            {
                return Err(format!(
                    "node {i} dropped node {j} for bad metadata at {dropped_at} and got metadata \
                     piece {} from it again at {}",
                    d.piece, d.at
                ));
            }
        }
    }
    if sim.config.loss > 0.0 || sim.config.bad_metadata_hit_and_run {
        return Ok(());
    }
    for d in &sim.metadata_deliveries {
        if !d.used || sim.nodes[d.from].role != Role::BadMetadata {
            continue;
        }
        let n = &sim.nodes[d.to];
        let banned = n.session.is_banned(&sim.nodes[d.from].session.peer_id().0);
        let dropped = dropped_for_bad_metadata(sim, n).contains(&d.from);
        if !banned || !dropped {
            return Err(format!(
                "bad-metadata node {} fed magnet leecher {} metadata piece {} it used at {} but \
                 was not {} by it",
                d.from,
                d.to,
                d.piece,
                d.at,
                if banned { "dropped" } else { "banned" }
            ));
        }
    }
    Ok(())
}

/// With discovery by peer exchange, two leechers nobody introduced connected.
fn check_pex(sim: &Sim) -> Result<(), String> {
    let learnt: Vec<(usize, usize)> = sim
        .learnt_connections()
        .into_iter()
        .filter(|&(a, b)| sim.nodes[a].role.downloads() && sim.nodes[b].role.downloads())
        .collect();
    match (sim.config.pex, learnt.is_empty()) {
        (true, true) => Err("no two leechers met by peer exchange".into()),
        (false, false) => Err(format!(
            "without peer exchange, leechers that were never introduced met: {learnt:?}"
        )),
        _ => Ok(()),
    }
}

/// A case's seed. It does not shrink: a smaller seed is an unrelated swarm, and shrinking would
/// rerun hundreds of swarms to report a seed no simpler than the one found.
#[derive(Debug, Clone, Copy)]
struct Seed(u64);

impl quickcheck::Arbitrary for Seed {
    fn arbitrary(g: &mut quickcheck::Gen) -> Seed {
        Seed(u64::arbitrary(g))
    }
}

fn case(kind: Kind, seed: u64) -> bool {
    match check(kind, kind.config(seed)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

fn random_case(seed: Seed) -> bool {
    case(Kind::Random, seed.0)
}

fn hostile_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL / 2);
    config.hostile = 1;
    // Every block bad, or one in four: then failed pieces mix good and bad senders.
    config.corrupt_rate = if seed.is_multiple_of(2) { 1.0 } else { 0.25 };
    config
}

fn hostile_case(seed: Seed) -> bool {
    case(Kind::Hostile, seed.0)
}

/// A random swarm (half the payload) whose connections are all uTP: each datagram is lost with
/// a probability up to 3%, duplicated up to 1%, and delayed by up to 40 ms more than the link's
/// latency (so datagrams overtake each other).
fn utp_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL / 2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0075_7470);
    config.utp = true;
    config.datagram_loss = rng.random_range(0.0..0.03);
    config.datagram_dup = rng.random_range(0.0..0.01);
    config.jitter_ms = rng.random_range(0..=40);
    config
}

/// A random swarm where 1–4 nodes start from a magnet link, next to 0–8 ordinary leechers.
fn magnet_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d61_676e_6574);
    config.magnet_leechers = rng.random_range(1..=4);
    config.leechers = rng.random_range(0..=config.leechers);
    config
}

/// A random swarm with 1–3 nodes serving wrong metadata (all as long as the real one, or all of
/// other lengths; all with every piece, or all with none), 1–3 magnet leechers and 0–2
/// ordinary leechers. Half the cases have hundreds of files, so the metadata spans several
/// 16 KiB pieces that may come from different peers.
fn bad_metadata_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL / 2);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6261_645f_6d65_7461);
    config.bad_metadata = rng.random_range(1..=3);
    config.magnet_leechers = rng.random_range(1..=3);
    config.leechers = rng.random_range(0..=2);
    config.bad_metadata_resized = rng.random_bool(0.5);
    config.bad_metadata_complete = rng.random_bool(0.5);
    if rng.random_bool(0.5) {
        let files = rng.random_range(500..=2000);
        config.file_lengths = split_lengths(&mut rng, config.total_length(), files);
    }
    config
}

/// A [`bad_metadata_config`] swarm whose bad nodes all serve metadata as long as the real one,
/// spread over several 16 KiB pieces (1,500 files), and drop each connection to a magnet leecher
/// as soon as it received a piece of it: their pieces mix with honest ones in the leecher's
/// attempts, and their connection handles are taken over by the next peers.
fn hit_and_run_config(seed: u64) -> SimConfig {
    let mut config = bad_metadata_config(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0068_6974_5f72_756e);
    config.bad_metadata_hit_and_run = true;
    config.bad_metadata_resized = false;
    config.file_lengths = split_lengths(&mut rng, config.total_length(), 1500);
    config
}

/// A random swarm where each node starts knowing only the first seeder (2–8 leechers, some of
/// them magnet leechers, 1–3 seeders), or one node before it (one seeder at the root of a random
/// tree of 3–8 leechers: some node then has two leecher neighbours to introduce to each other).
/// Leechers start within 300 ms and the torrent (3–6 MiB, uplinks of at most 3 MB/s) takes over
/// a second to cross one uplink, so leechers overlap and have something to trade. No connection
/// is lost: a leecher whose only connection broke early could come back after the others
/// finished and left, and never meet one.
fn pex_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0070_6578);
    let downloaders = if rng.random_bool(0.5) {
        config.discovery = Discovery::FirstSeeder;
        rng.random_range(2..=8)
    } else {
        config.discovery = Discovery::EarlierNode;
        config.seeders = 1;
        rng.random_range(3..=8)
    };
    config.magnet_leechers = rng.random_range(0..=downloaders / 2);
    config.leechers = downloaders - config.magnet_leechers;
    let total = rng.random_range(3 * 1024 * 1024..=MAX_TOTAL);
    let files = config.file_lengths.len();
    config.file_lengths = split_lengths(&mut rng, total, files);
    config.upload_bps = (500_000, rng.random_range(1_000_000..=3_000_000));
    config.start_spread_ms = rng.random_range(0..=300);
    config.loss = 0.0;
    config
}

#[test]
fn every_leecher_finishes_with_identical_data() {
    kp_torrent_tests::quickcheck("every_leecher_finishes_with_identical_data", 120)
        .quickcheck(random_case as fn(Seed) -> bool);
}

#[test]
fn hostile_seeder_is_banned_and_others_finish() {
    kp_torrent_tests::quickcheck("hostile_seeder_is_banned_and_others_finish", 60)
        .quickcheck(hostile_case as fn(Seed) -> bool);
}

#[test]
fn magnet_leechers_fetch_metadata_and_finish() {
    fn prop(seed: Seed) -> bool {
        case(Kind::Magnet, seed.0)
    }
    kp_torrent_tests::quickcheck("magnet_leechers_fetch_metadata_and_finish", 80)
        .quickcheck(prop as fn(Seed) -> bool);
}

#[test]
fn bad_metadata_is_never_taken_and_its_senders_are_banned() {
    fn prop(seed: Seed) -> bool {
        case(Kind::BadMetadata, seed.0)
    }
    kp_torrent_tests::quickcheck(
        "bad_metadata_is_never_taken_and_its_senders_are_banned",
        100,
    )
    .quickcheck(prop as fn(Seed) -> bool);
}

#[test]
fn leechers_find_each_other_by_peer_exchange() {
    fn prop(seed: Seed) -> bool {
        case(Kind::Pex, seed.0)
    }
    kp_torrent_tests::quickcheck("leechers_find_each_other_by_peer_exchange", 60)
        .quickcheck(prop as fn(Seed) -> bool);
}

#[test]
fn utp_swarms_finish_under_loss_duplication_and_reordering() {
    fn prop(seed: Seed) -> bool {
        case(Kind::Utp, seed.0)
    }
    kp_torrent_tests::quickcheck(
        "utp_swarms_finish_under_loss_duplication_and_reordering",
        30,
    )
    .quickcheck(prop as fn(Seed) -> bool);
}

/// A fixed hostile swarm where corruption is certain: the hostile seeder is the fastest node
/// and the leechers must ban it.
#[test]
fn hostile_seeder_is_banned_in_a_fixed_swarm() {
    let mut config = SimConfig::new(7);
    config.hostile = 1;
    config.leechers = 3;
    config.file_lengths = vec![1_000_000, 0, 123_457];
    config.piece_length = 64 * 1024;
    check(
        Kind::Fixed("hostile_seeder_is_banned_in_a_fixed_swarm"),
        config.clone(),
    )
    .unwrap();
    let mut sim = Sim::new(config);
    sim.run();
    let hostile_id = sim.nodes[1].session.peer_id().0;
    let bans = sim
        .nodes
        .iter()
        .filter(|n| n.role.downloads() && n.session.is_banned(&hostile_id))
        .count();
    assert!(bans > 0, "no leecher banned the hostile seeder");
}

/// Fixed swarms where bad-metadata nodes are there first: honest metadata over three 16 KiB
/// pieces, bad metadata as long (so pieces of both can mix in one attempt) or of other lengths.
/// Every bad node feeds some magnet leecher and is dropped by it for bad metadata; every magnet
/// leecher finishes with the right data.
#[test]
fn bad_metadata_nodes_are_dropped_in_fixed_swarms() {
    for resized in [false, true] {
        let mut config = SimConfig::new(31);
        config.seeders = 1;
        config.bad_metadata = 2;
        config.bad_metadata_resized = resized;
        config.bad_metadata_complete = !resized;
        config.leechers = 1;
        config.magnet_leechers = 3;
        config.file_lengths = (0..1400u64).map(|i| (i * 104_729) % 1000).collect();
        check(
            Kind::Fixed("bad_metadata_nodes_are_dropped_in_fixed_swarms"),
            config.clone(),
        )
        .unwrap();
        let mut sim = Sim::new(config);
        sim.run();
        assert!(sim.torrent.metadata.len() > 2 * 16 * 1024);
        for (b, node) in sim.nodes.iter().enumerate() {
            if node.role != Role::BadMetadata {
                continue;
            }
            let fed_and_dropped = sim.nodes.iter().any(|m| {
                m.role == Role::MagnetLeecher && dropped_for_bad_metadata(&sim, m).contains(&b)
            });
            assert!(
                fed_and_dropped,
                "resized {resized}: no magnet leecher dropped bad node {b}"
            );
            assert!(
                sim.metadata_deliveries
                    .iter()
                    .any(|d| d.from == b && d.used)
            );
        }
    }
}

/// The same swarm with and without peer exchange, each node knowing only the first seeder:
/// with it, leechers meet; without it, no two nodes that nobody introduced ever connect, and
/// every leecher still finishes from the seeder.
#[test]
fn leechers_meet_only_through_peer_exchange() {
    let mut config = SimConfig::new(41);
    config.discovery = Discovery::FirstSeeder;
    config.leechers = 3;
    config.magnet_leechers = 1;
    config.file_lengths = vec![3_000_000];
    config.start_spread_ms = 300;
    config.upload_bps = (1_000_000, 2_000_000);
    let kind = Kind::Fixed("leechers_meet_only_through_peer_exchange");
    check(kind, config.clone()).unwrap();
    config.pex = false;
    check(kind, config).unwrap();
}

/// Bad-metadata nodes that leave right after feeding a piece (before they can be judged) never
/// get an honest peer banned or dropped: the session reuses a departed peer's handle for the
/// next connection, which must not answer for the departed peer's pieces.
#[test]
fn hit_and_run_bad_metadata_never_bans_an_honest_peer() {
    fn prop(seed: Seed) -> bool {
        case(Kind::HitAndRun, seed.0)
    }
    kp_torrent_tests::quickcheck("hit_and_run_bad_metadata_never_bans_an_honest_peer", 60)
        .quickcheck(prop as fn(Seed) -> bool);
}

/// Peer exchange is what completes a swarm whose first seeder leaves: every node knows only
/// that seeder, which leaves at 5 s having sent at most 5 MB (its uplink carries 1 MB/s) to five
/// leechers that need 2 MB each. With peer exchange the leechers find each other and all finish
/// with the right data; without it the same swarm never finishes (within ten minutes): no two
/// leechers ever meet, and what the seeder sent is all they get.
#[test]
fn peer_exchange_completes_a_swarm_whose_seeder_leaves() {
    let kind = Kind::Fixed("peer_exchange_completes_a_swarm_whose_seeder_leaves");
    for seed in [0, 1, 2] {
        let mut config = SimConfig::new(seed);
        config.discovery = Discovery::FirstSeeder;
        config.leechers = 4;
        config.magnet_leechers = 1;
        config.file_lengths = vec![2_000_000];
        config.start_spread_ms = 200;
        config.upload_bps = (1_000_000, 1_000_000);
        config.seeder_leaves_at = Some(Duration::from_secs(5));
        config.time_limit = Duration::from_secs(600);
        let leaves = Time::ZERO + Duration::from_secs(5);
        check(kind, config.clone()).unwrap();
        config.pex = false;
        let mut sim = Sim::new(config);
        let outcome = sim.run();
        assert_eq!(sim.nodes[0].left_at, Some(leaves), "seed {seed}");
        assert!(
            !outcome.all_complete,
            "seed {seed}: finished without peer exchange at {}",
            outcome.finished_at
        );
        assert!(sim.learnt_connections().is_empty(), "seed {seed}");
        assert!(
            sim.nodes
                .iter()
                .all(|n| n.completed_at.is_none_or(|t| t < leaves)),
            "seed {seed}: a leecher finished after the seeder left"
        );
    }
}

/// The same seed gives the same run, step for step.
#[test]
fn runs_are_deterministic() {
    let run = |config: SimConfig| {
        let mut sim = Sim::new(config);
        let out = sim.run();
        (out, sim.steps)
    };
    assert_eq!(
        run(SimConfig::random(11, 1 << 20)),
        run(SimConfig::random(11, 1 << 20))
    );
    assert_eq!(run(bad_metadata_config(12)), run(bad_metadata_config(12)));
}

/// The case [`one_case`] runs when `KP_SIM_SEED` is not set: a random swarm shape of several
/// leechers and pieces, so the test always simulates one real swarm to completion.
const DEFAULT_SIM_SEED: u64 = 3;

/// Runs one case: the one named by `KP_SIM_SEED` (and `KP_SIM_KIND` or `KP_SIM_HOSTILE=1`),
/// else [`DEFAULT_SIM_SEED`]. A failure prints what every node saw.
#[test]
fn one_case() {
    let seed = match std::env::var("KP_SIM_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KP_SIM_SEED={s:?} is not a number (a u64 seed)")),
        Err(_) => DEFAULT_SIM_SEED,
    };
    let kind = Kind::from_env();
    let config = kind.config(seed);
    eprintln!("{kind:?}: {config:?}");
    let leechers = config.leechers + config.magnet_leechers;
    let result = check(kind, config.clone());
    if let Ok(finished_at) = result {
        // Every leecher started empty, so finishing took virtual time: the swarm really ran.
        assert!(
            finished_at > Time::ZERO,
            "seed {seed}: {leechers} leechers finished without any transfer"
        );
        eprintln!("seed {seed}: {leechers} leechers finished at {finished_at}");
    }
    if let Err(e) = result {
        // Show what each node saw, verified pieces aside.
        let mut sim = Sim::new(config);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
        for (i, n) in sim.nodes.iter().enumerate() {
            eprintln!(
                "node {i} {:?} {} knows {:?} ({} events)",
                n.role,
                n.addr,
                n.known,
                n.events.len()
            );
            for (ev, at) in n
                .events
                .iter()
                .zip(&n.event_times)
                .filter(|(e, _)| !matches!(e, Event::PieceVerified { .. }))
            {
                eprintln!("    {at} {ev}");
            }
        }
        for d in &sim.metadata_deliveries {
            eprintln!(
                "metadata piece {} from node {} to node {} at {}{}",
                d.piece,
                d.from,
                d.to,
                d.at,
                if d.used { "" } else { " (ignored)" }
            );
        }
        panic!("{e}");
    }
}
