//! Parsing a large `.torrent`: 10,000 pieces and 1,000 files (goal: under 1 ms).

use criterion::{Criterion, criterion_group, criterion_main};
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec};
use std::hint::black_box;

fn large_torrent() -> Vec<u8> {
    const PIECES: u64 = 10_000;
    const FILES: u64 = 1_000;
    let piece_length = 16 * 1024;
    let file_length = PIECES * piece_length / FILES;
    TorrentSpec {
        name: "A Large Collection".into(),
        piece_length,
        files: (0..FILES)
            .map(|i| {
                let path = vec![
                    format!("Disc {}", i / 100),
                    format!("Chapter {:02}", (i / 10) % 10),
                    format!("track {i:04} - some title.flac"),
                ];
                (path, file_length)
            })
            .collect(),
        // Any bytes will do: parsing does not check hashes against data.
        piece_hashes: (0..PIECES)
            .map(|i| {
                let mut h = [0u8; 20];
                h[..8].copy_from_slice(&i.to_le_bytes());
                h
            })
            .collect(),
        trackers: vec![vec!["http://tracker.example/announce".into()]],
        comment: Some("benchmark".into()),
        ..Default::default()
    }
    .to_bytes()
}

fn parse(c: &mut Criterion) {
    let data = large_torrent();
    let m = Metainfo::from_bytes(&data).unwrap();
    assert_eq!((m.info.piece_count(), m.info.files.len()), (10_000, 1_000));
    c.bench_function("metainfo/parse_10000_pieces_1000_files", |b| {
        b.iter(|| Metainfo::from_bytes(black_box(&data)).unwrap())
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
