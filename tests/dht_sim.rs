//! A simulated DHT of a thousand nodes (`kp_torrent_tests::dht_sim`: the core's sans-IO nodes on
//! a seeded network with 1% loss, 10–150 ms latency and churn): every announced peer is found.
//!
//! Properties, for each seed (`KP_SIM_SEED=N` runs only that one):
//! - every announce is confirmed by at least half of the 8 closest nodes;
//! - after a tenth of the nodes left and as many fresh ones joined, `get_peers` lookups from
//!   random live nodes find the announced peer every time, within `2 log2(n)` hops, and no
//!   lookup sends more than its 100-query bound;
//! - the same seed gives the same run, lookup for lookup.
//!
//! The figures for 1k–100k nodes come from `cargo bench --bench dht_sim`.

use kp_torrent_tests::dht_sim::{DhtSim, LookupReport, SimConfig};

/// Announced info-hashes, and lookups measured.
const ANNOUNCES: usize = 20;
const LOOKUPS: usize = 60;

/// Builds `nodes` nodes, announces, churns a tenth, then measures [`LOOKUPS`] lookups.
fn run(nodes: usize, seed: u64) -> (Vec<usize>, Vec<LookupReport>) {
    let mut sim = DhtSim::build(SimConfig::new(nodes, seed));
    let acks = sim.announce(ANNOUNCES);
    sim.churn(nodes / 10, nodes / 10);
    let reports = sim.measure_lookups(LOOKUPS);
    (acks, reports)
}

fn seeds() -> Vec<u64> {
    match std::env::var("KP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("KP_SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

#[test]
fn a_thousand_nodes_with_loss_and_churn_find_every_announced_peer() {
    let nodes = 1000;
    let max_hops = 2 * (nodes as f64).log2().ceil() as u32;
    for seed in seeds() {
        let rerun = format!("KP_SIM_SEED={seed} cargo test --test dht_sim");
        let (acks, reports) = run(nodes, seed);
        for (i, a) in acks.iter().enumerate() {
            assert!(
                *a >= 4,
                "seed {seed}: announce {i} confirmed by {a} nodes; {acks:?}; {rerun}"
            );
        }
        for (i, r) in reports.iter().enumerate() {
            assert!(
                r.found,
                "seed {seed}: lookup {i} found nothing: {r:?}; {rerun}"
            );
            let hops = r.hops.expect("found, so some reply carried the peer");
            assert!(hops <= max_hops, "seed {seed}: lookup {i}: {r:?}; {rerun}");
            assert!(r.queries <= 100, "seed {seed}: lookup {i}: {r:?}; {rerun}");
            assert!(r.replies <= r.queries, "{r:?}");
        }
        let mean =
            |f: fn(&LookupReport) -> f64| reports.iter().map(f).sum::<f64>() / reports.len() as f64;
        eprintln!(
            "seed {seed}: {nodes} nodes, mean hops {:.2}, mean queries {:.1}, acks {acks:?}",
            mean(|r| f64::from(r.hops.unwrap_or(0))),
            mean(|r| r.queries as f64),
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(200, 7);
    let b = run(200, 7);
    assert_eq!(a, b);
    let c = run(200, 8);
    assert_ne!(a.1, c.1, "another seed, another network");
}
