//! Replay speed: a 64 MiB seeder→leecher transfer is recorded once on the simulated network
//! (`tests/sim`), then the leecher's trace is replayed against a fresh session. Throughput is in
//! bytes of recorded received traffic (goal: at least 1 GiB per CPU second).

#[path = "../tests/sim/mod.rs"]
mod sim;
#[path = "../tests/trace_sim/mod.rs"]
mod trace_sim;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kp_torrent_core::trace::replay;

fn bench_replay(c: &mut Criterion) {
    let (_, _, trace) = trace_sim::record_swarm(64, 1, 256 * 1024, 64 * 1024 * 1024);
    let report = replay(&trace).expect("the trace decodes");
    assert!(report.divergence.is_none(), "{report}");
    eprintln!("64 MiB transfer: {} trace bytes; {report}", trace.len());
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(report.received_bytes));
    g.bench_function("leecher_64MiB", |b| b.iter(|| replay(black_box(&trace))));
    g.finish();
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
