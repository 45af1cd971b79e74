//! Swarm simulation: seeders and leechers on a simulated network (see `sim/mod.rs`).
//!
//! Properties, checked over random seeds and swarm shapes (1–3 seeders, 1–8 leechers, pieces of
//! 16 KiB–4 MiB, 1–50 files, a few MiB of data with a partial last piece):
//! - every leecher finishes with byte-identical data, and nothing panics;
//! - the virtual time to finish stays within [`time_bound`];
//! - a hostile seeder serving corrupted blocks is banned by the leechers it fed bad data, and
//!   every honest leecher still finishes with correct data.
//!
//! A failing case prints its seed and the command that reruns exactly that case:
//! `KP_SIM_SEED=<seed> cargo test --test swarm_sim one_case -- --nocapture`
//! (`KP_SIM_HOSTILE=1` adds a hostile seeder).

mod sim;

use std::time::Duration;

use kp_torrent_core::session::Event;
use sim::{Role, Sim, SimConfig};

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

/// Runs one case; `Ok` is the virtual time when the last leecher finished, `Err` describes the
/// failure and how to rerun it.
fn check(config: SimConfig) -> Result<kp_torrent_core::time::Time, String> {
    let seed = config.seed;
    let hostile = config.hostile > 0;
    let rerun = format!(
        "rerun: KP_SIM_SEED={seed}{} cargo test --test swarm_sim one_case -- --nocapture",
        if hostile { " KP_SIM_HOSTILE=1" } else { "" }
    );
    let bound = time_bound(&config);
    let shape = format!(
        "{} seeders, {} hostile, {} leechers, piece {} B, {} files, {} B",
        config.seeders,
        config.hostile,
        config.leechers,
        config.piece_length,
        config.file_lengths.len(),
        config.total_length()
    );
    let mut sim = Sim::new(config);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()))
        .map_err(|_| format!("seed {seed}: panicked ({shape}); {rerun}"))?;
    if !outcome.all_complete {
        return Err(format!(
            "seed {seed}: {} leechers unfinished at {} ({shape}); {rerun}",
            sim.unfinished(),
            outcome.finished_at
        ));
    }
    if !outcome.corrupt.is_empty() {
        return Err(format!(
            "seed {seed}: leechers {:?} hold wrong data ({shape}); {rerun}",
            outcome.corrupt
        ));
    }
    if outcome.finished_at > kp_torrent_core::time::Time::ZERO + bound {
        return Err(format!(
            "seed {seed}: finished at {}, bound {:?} ({shape}); {rerun}",
            outcome.finished_at, bound
        ));
    }
    if !hostile {
        // Without a hostile node, no piece may fail and nobody may be banned.
        for (i, n) in sim.nodes.iter().enumerate() {
            if let Some(e) = n
                .events
                .iter()
                .find(|e| matches!(e, Event::HashFailed { .. } | Event::PeerBanned { .. }))
            {
                return Err(format!("seed {seed}: node {i}: {e} ({shape}); {rerun}"));
            }
        }
    }
    if hostile {
        let hostile_ids: Vec<[u8; 20]> = sim
            .nodes
            .iter()
            .filter(|n| n.role == Role::Hostile)
            .map(|n| n.session.peer_id().0)
            .collect();
        for (i, n) in sim.nodes.iter().enumerate() {
            if n.role != Role::Leecher {
                continue;
            }
            let failed = n
                .events
                .iter()
                .any(|e| matches!(e, Event::HashFailed { .. }));
            let banned_hostile = hostile_ids.iter().any(|id| n.session.is_banned(id));
            let banned_honest = sim
                .nodes
                .iter()
                .filter(|o| o.role != Role::Hostile)
                .any(|o| n.session.is_banned(&o.session.peer_id().0));
            if banned_honest {
                return Err(format!(
                    "seed {seed}: leecher {i} banned an honest peer ({shape}); {rerun}"
                ));
            }
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
                    "seed {seed}: leecher {i} saw repeated hash failures but banned nobody ({shape}); {rerun}"
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
            return Err(format!(
                "seed {seed}: corrupt data seen but the hostile seeder was never banned ({shape}); {rerun}"
            ));
        }
    }
    Ok(outcome.finished_at)
}

fn random_case(seed: u64) -> bool {
    match check(SimConfig::random(seed, MAX_TOTAL)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

fn hostile_config(seed: u64) -> SimConfig {
    let mut config = SimConfig::random(seed, MAX_TOTAL / 2);
    config.hostile = 1;
    // Every block bad, or one in four: then failed pieces mix good and bad senders.
    config.corrupt_rate = if seed.is_multiple_of(2) { 1.0 } else { 0.25 };
    config
}

fn hostile_case(seed: u64) -> bool {
    let config = hostile_config(seed);
    match check(config) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

#[test]
fn every_leecher_finishes_with_identical_data() {
    kp_torrent_tests::quickcheck("every_leecher_finishes_with_identical_data", 120)
        .quickcheck(random_case as fn(u64) -> bool);
}

#[test]
fn hostile_seeder_is_banned_and_others_finish() {
    kp_torrent_tests::quickcheck("hostile_seeder_is_banned_and_others_finish", 60)
        .quickcheck(hostile_case as fn(u64) -> bool);
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
    check(config.clone()).unwrap();
    let mut sim = Sim::new(config);
    sim.run();
    let hostile_id = sim.nodes[1].session.peer_id().0;
    let bans = sim
        .nodes
        .iter()
        .filter(|n| n.role == Role::Leecher && n.session.is_banned(&hostile_id))
        .count();
    assert!(bans > 0, "no leecher banned the hostile seeder");
}

/// The same seed gives the same run, step for step.
#[test]
fn runs_are_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(SimConfig::random(seed, 1 << 20));
        let out = sim.run();
        (out, sim.steps)
    };
    assert_eq!(run(11), run(11));
}

/// The case [`one_case`] runs when `KP_SIM_SEED` is not set: a random swarm shape of several
/// leechers and pieces, so the test always simulates one real swarm to completion.
const DEFAULT_SIM_SEED: u64 = 3;

/// Runs one case: the one named by `KP_SIM_SEED` (and `KP_SIM_HOSTILE=1`), else
/// [`DEFAULT_SIM_SEED`]. A failure prints what every node saw.
#[test]
fn one_case() {
    let seed = match std::env::var("KP_SIM_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("KP_SIM_SEED={s:?} is not a number (a u64 seed)")),
        Err(_) => DEFAULT_SIM_SEED,
    };
    let hostile = std::env::var("KP_SIM_HOSTILE").is_ok_and(|v| v == "1");
    let config = if hostile {
        hostile_config(seed)
    } else {
        SimConfig::random(seed, MAX_TOTAL)
    };
    eprintln!("{config:?}");
    let leechers = config.leechers;
    let result = check(config.clone());
    if let Ok(finished_at) = result {
        // Every leecher started empty, so finishing took virtual time: the swarm really ran.
        assert!(
            finished_at > kp_torrent_core::time::Time::ZERO,
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
                "node {i} {:?} {} ({} events)",
                n.role,
                n.addr,
                n.events.len()
            );
            for ev in n
                .events
                .iter()
                .filter(|e| !matches!(e, Event::PieceVerified { .. }))
            {
                eprintln!("    {ev}");
            }
        }
        panic!("{e}");
    }
}
