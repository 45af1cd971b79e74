//! Peer-wire codec throughput: piece decoding in bytes/s of input (zero copy), small-message
//! decoding in messages/s, and encoding.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kp_torrent_core::wire::{
    self, BLOCK_SIZE, BlockRequest, DEFAULT_MAX_MESSAGE_LEN, Decoder, Message,
};
use std::hint::black_box;

/// Decodes every message of `stream`, folding a value from each so none can be optimized away.
fn decode_all(stream: &[u8]) -> u64 {
    let mut rest = stream;
    let mut acc = 0u64;
    while let Ok(Some((m, used))) = wire::decode(rest, DEFAULT_MAX_MESSAGE_LEN) {
        acc = acc.wrapping_add(match m {
            Message::Piece { index, data, .. } => u64::from(index) ^ data.len() as u64,
            Message::Have(i) => u64::from(i),
            Message::Request(r) => u64::from(r.index ^ r.begin ^ r.length),
            _ => 1,
        });
        rest = &rest[used..];
    }
    acc
}

fn decode_pieces(c: &mut Criterion) {
    let block = vec![0x5au8; BLOCK_SIZE as usize];
    let mut stream = Vec::new();
    for i in 0..256u32 {
        Message::Piece {
            index: i / 16,
            begin: (i % 16) * BLOCK_SIZE,
            data: &block,
        }
        .encode(&mut stream);
    }
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("decode_piece_16k_x256", |b| {
        b.iter(|| decode_all(black_box(&stream)))
    });
    // The same stream through the incremental decoder, fed in 64 KiB reads as from a socket
    // (this one does copy: from the "socket" into the receive buffer, as a real read would).
    g.bench_function("decoder_piece_16k_x256_64k_reads", |b| {
        let mut d = Decoder::new(DEFAULT_MAX_MESSAGE_LEN);
        b.iter(|| {
            let mut acc = 0u64;
            for chunk in black_box(&stream).chunks(64 * 1024) {
                d.feed(chunk);
                while let Ok(Some(m)) = d.next_message() {
                    if let Message::Piece { data, .. } = m {
                        acc = acc.wrapping_add(data.len() as u64);
                    }
                }
            }
            acc
        })
    });
    g.finish();
}

fn decode_small(c: &mut Criterion) {
    const N: u64 = 4096;
    let mut haves = Vec::new();
    let mut requests = Vec::new();
    for i in 0..N as u32 {
        Message::Have(i).encode(&mut haves);
        Message::Request(BlockRequest {
            index: i,
            begin: 0,
            length: BLOCK_SIZE,
        })
        .encode(&mut requests);
    }
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(N));
    g.bench_function("decode_have_x4096", |b| {
        b.iter(|| decode_all(black_box(&haves)))
    });
    g.bench_function("decode_request_x4096", |b| {
        b.iter(|| decode_all(black_box(&requests)))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    const N: u64 = 4096;
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(N));
    let mut out = Vec::with_capacity(64 * 1024);
    g.bench_function("encode_piece_header_x4096", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..N as u32 {
                wire::encode_piece_header(black_box(i), 0, BLOCK_SIZE as usize, &mut out);
            }
            out.len()
        })
    });
    g.bench_function("encode_request_x4096", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..N as u32 {
                Message::Request(BlockRequest {
                    index: black_box(i),
                    begin: 0,
                    length: BLOCK_SIZE,
                })
                .encode(&mut out);
            }
            out.len()
        })
    });
    g.bench_function("encode_have_x4096", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..N as u32 {
                Message::Have(black_box(i)).encode(&mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, decode_pieces, decode_small, encode);
criterion_main!(benches);
