//! Session throughput: a leecher downloading from one seed, with the seed's side and the disk
//! answered in-process. Measures what the core costs per byte downloaded (wire decoding, picking,
//! pipelining, verification bookkeeping), which bounds live transfers and trace replay alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::session::{Action, FileSpan, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::wire::{self, Handshake, Message};
use sha1::Digest;

const TOTAL: u64 = 32 << 20;
const PIECE: u64 = 256 << 10;

fn torrent(data: &[u8]) -> Torrent {
    Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: InfoHash([3; 20]),
        piece_length: PIECE,
        total_length: TOTAL,
        piece_hashes: data
            .chunks(PIECE as usize)
            .map(|c| sha1::Sha1::digest(c).into())
            .collect(),
        files: vec![FileSpan {
            offset: 0,
            length: TOTAL,
            padding: false,
        }],
    }
}

/// One whole download; returns the number of blocks received.
fn download(torrent: &Torrent, data: &[u8]) -> u64 {
    let mut s = Session::new(
        SessionConfig::default(),
        torrent.clone(),
        Bitfield::new(torrent.piece_count()),
        Time::ZERO,
    );
    let mut now = Time::from_millis(1);
    let seed = s.handle_incoming(now, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1));
    let mut hello = Vec::new();
    Handshake::new(torrent.info_hash, PeerId([9; 20])).encode(&mut hello);
    Message::HaveAll.encode(&mut hello);
    Message::Unchoke.encode(&mut hello);
    s.handle_received(now, seed, &hello);
    let mut blocks = 0;
    let mut reply = Vec::new();
    while !s.is_complete() {
        now += std::time::Duration::from_micros(100);
        reply.clear();
        while let Some(a) = s.poll_action() {
            match a {
                Action::Send { bytes, .. } => {
                    let mut rest = &bytes[..];
                    if Handshake::decode(rest).is_ok_and(|h| h.is_some()) {
                        rest = &rest[Handshake::LEN..];
                    }
                    while let Ok(Some((m, used))) = wire::decode(rest, 1 << 20) {
                        if let Message::Request(r) = m {
                            let start = (u64::from(r.index) * PIECE + u64::from(r.begin)) as usize;
                            Message::Piece {
                                index: r.index,
                                begin: r.begin,
                                data: &data[start..start + r.length as usize],
                            }
                            .encode(&mut reply);
                            blocks += 1;
                        }
                        rest = &rest[used..];
                    }
                }
                Action::WriteBlock { piece, begin, .. } => s.handle_write_done(now, piece, begin),
                Action::HashPiece { piece } => {
                    let digest = torrent.piece_hashes[piece as usize];
                    s.handle_piece_hashed(now, piece, digest)
                }
                _ => {}
            }
        }
        while s.poll_event().is_some() {}
        if reply.is_empty() {
            s.handle_timeout(now);
        } else {
            // Delivered in socket-sized reads.
            for chunk in reply.chunks(64 * 1024) {
                s.handle_received(now, seed, chunk);
            }
        }
    }
    blocks
}

fn session_download(c: &mut Criterion) {
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 31 % 251) as u8).collect();
    let torrent = torrent(&data);
    assert_eq!(download(&torrent, &data), TOTAL / 16384);
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Bytes(TOTAL));
    g.sample_size(10);
    g.bench_function("download_32MiB_from_one_seed", |b| {
        b.iter(|| download(&torrent, &data))
    });
    g.finish();
}

criterion_group!(benches, session_download);
criterion_main!(benches);
