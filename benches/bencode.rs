//! Bencode decoding throughput.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kp_torrent_core::bencode;
use std::hint::black_box;

fn decode_dict(c: &mut Criterion) {
    // A tracker-reply-like dictionary with 200 compact peers and a few keys.
    let mut doc = Vec::new();
    doc.extend_from_slice(b"d8:completei10e10:incompletei3e8:intervali1800e5:peers1200:");
    doc.extend(std::iter::repeat_n(7u8, 1200));
    doc.push(b'e');
    let mut g = c.benchmark_group("bencode");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("decode_tracker_reply", |b| {
        b.iter(|| bencode::decode(black_box(&doc)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, decode_dict);
criterion_main!(benches);
