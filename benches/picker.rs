//! Piece picker cost on large torrents: a whole 1 GiB download (65,536 blocks of 16 KiB) through
//! the picker with 32 peers, in blocks/s; and `have` updates on a 100,000-piece torrent.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::PeerHandle;
use kp_torrent_core::picker::{BLOCK_SIZE, Picker, PickerConfig, Received};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

const GIB: u64 = 1 << 30;
const PIECE: u64 = 256 * 1024;

/// A picker told about 30 leechers with random halves of the torrent and 2 seeds.
fn swarm(piece_length: u64, total: u64, seed: u64) -> (Picker, Vec<Bitfield>) {
    let n = total.div_ceil(piece_length) as u32;
    let mut p = Picker::new(
        piece_length,
        total,
        &Bitfield::new(n),
        seed,
        PickerConfig::default(),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut peers = Vec::new();
    for i in 0..32 {
        let h = PeerHandle(i);
        if i < 2 {
            p.peer_has_all(h);
            peers.push(Bitfield::full(n));
        } else {
            let mut b = Bitfield::new(n);
            for k in 0..n {
                if rng.random_range(0..2) == 0 {
                    b.set(k);
                }
            }
            p.peer_has_bitfield(h, &b);
            peers.push(b);
        }
    }
    (p, peers)
}

/// Requests, receives and verifies every block, peers taking turns with 8 requests in flight.
fn download(mut p: Picker, peers: &[Bitfield]) -> u64 {
    let mut out = Vec::new();
    let mut blocks = 0;
    while !p.is_complete() {
        for (i, has) in peers.iter().enumerate() {
            let h = PeerHandle(i);
            out.clear();
            p.pick(h, has, 8, &mut out);
            for &b in &out {
                if let Received::Accepted { piece_complete, .. } = p.block_received(h, b) {
                    blocks += 1;
                    if piece_complete {
                        p.piece_verified(b.piece, true);
                    }
                }
            }
        }
    }
    blocks
}

fn picker(c: &mut Criterion) {
    let mut g = c.benchmark_group("picker");
    g.sample_size(10);
    g.throughput(Throughput::Elements(GIB / u64::from(BLOCK_SIZE)));
    g.bench_function("download_1gib_256k_pieces_32_peers", |b| {
        b.iter_batched(
            || swarm(PIECE, GIB, 1),
            |(p, peers)| black_box(download(p, &peers)),
            BatchSize::LargeInput,
        )
    });
    let n = 100_000u32;
    let updates = 100_000u32;
    g.throughput(Throughput::Elements(u64::from(updates)));
    g.bench_function("have_100k_pieces", |b| {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let pieces: Vec<u32> = (0..updates).map(|_| rng.random_range(0..n)).collect();
        b.iter_batched(
            || swarm(PIECE, u64::from(n) * PIECE, 3).0,
            |mut p| {
                for (i, &k) in pieces.iter().enumerate() {
                    p.peer_has_piece(PeerHandle(100 + i % 50), k);
                }
                black_box(p.availability(0))
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, picker);
criterion_main!(benches);
