//! DHT lookups at scale: simulated networks of 1k, 10k and 100k nodes (`kp_torrent_tests::
//! dht_sim`: the core's nodes, 1% loss, 10–150 ms latency; a tenth of the nodes leave and as
//! many join after the announces). Prints, per size, what one `get_peers` lookup costs — hops to
//! the peer, queries sent, replies received, virtual time — and the memory each node takes
//! (bytes allocated by the whole simulation after the build, over the number of nodes).
//!
//! Not a criterion benchmark: one run per size is the measurement (the simulation is
//! deterministic). `cargo bench --bench dht_sim`; `KP_DHT_SIM_SIZES=1000,10000` picks sizes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kp_torrent_core::dht::table::Family;
use kp_torrent_tests::dht_sim::{DhtSim, LookupReport, SimConfig};

/// Counts live heap bytes, for memory per node.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ANNOUNCES: usize = 20;
const LOOKUPS: usize = 200;

fn main() {
    let sizes: Vec<usize> = std::env::var("KP_DHT_SIM_SIZES")
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("sizes are numbers"))
                .collect()
        })
        .unwrap_or_else(|_| vec![1_000, 10_000, 100_000]);
    println!(
        "| nodes | found | hops mean | hops p50/p90/max | queries/lookup | replies/lookup | \
         virtual ms/lookup | table nodes | bytes/node | datagrams/join | build s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let before = LIVE.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut last = Instant::now();
        let mut sim = DhtSim::build_with_progress(SimConfig::new(n, 1), |joined, now| {
            if last.elapsed().as_secs() >= 10 {
                eprintln!(
                    "{n} nodes: {joined} joined, virtual time {now}, {:?}",
                    t0.elapsed()
                );
                last = Instant::now();
            }
        });
        let build = t0.elapsed();
        let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before) / n;
        let sent_per_join = sim.stats().sent as f64 / n as f64;
        let table: usize = (0..sim.len())
            .filter_map(|i| sim.node(i).table(Family::V4))
            .map(|t| t.len())
            .sum();
        let table = table as f64 / sim.len() as f64;
        sim.announce(ANNOUNCES);
        sim.churn(n / 10, n / 10);
        let reports: Vec<LookupReport> = sim.measure_lookups(LOOKUPS);
        let found = reports.iter().filter(|r| r.found).count();
        let mut hops: Vec<u32> = reports.iter().filter_map(|r| r.hops).collect();
        hops.sort_unstable();
        let pct = |p: usize| hops.get((hops.len() * p / 100).min(hops.len().saturating_sub(1)));
        let mean = |f: &dyn Fn(&LookupReport) -> f64| {
            reports.iter().map(f).sum::<f64>() / reports.len() as f64
        };
        println!(
            "| {n} | {found}/{LOOKUPS} | {:.2} | {}/{}/{} | {:.1} | {:.1} | {:.0} | {table:.0} | {bytes} | {sent_per_join:.0} | {:.1} |",
            hops.iter().map(|h| f64::from(*h)).sum::<f64>() / hops.len().max(1) as f64,
            pct(50).copied().unwrap_or(0),
            pct(90).copied().unwrap_or(0),
            hops.last().copied().unwrap_or(0),
            mean(&|r| r.queries as f64),
            mean(&|r| r.replies as f64),
            mean(&|r| r.duration.as_secs_f64() * 1000.0),
            build.as_secs_f64(),
        );
    }
}
