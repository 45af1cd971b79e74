//! The task with web seeds: an in-memory HTTP server answers the ranged GETs, an in-memory disk
//! answers writes and hashes, and the whole run is recorded and replayed.

use std::time::Duration;

use sha1::Digest;

use super::*;
use crate::bitfield::Bitfield;
use crate::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use crate::trace::{Recorder, replay};

const PIECE: u64 = 32 * 1024;

/// A two-file torrent (the first file ends inside piece 1) and its data.
fn torrent() -> (Torrent, Vec<u8>) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let spec = TorrentSpec {
        name: "album".into(),
        piece_length: PIECE,
        files: vec![
            (vec!["one two.bin".into()], 40_000),
            (vec!["sub".into(), "b.bin".into()], 60_000),
        ],
        piece_hashes: hash_pieces(&data, PIECE),
        ..TorrentSpec::default()
    };
    let m = Metainfo::from_bytes(&spec.to_bytes()).unwrap();
    (Torrent::from_metainfo(&m), data)
}

/// Runs a task with one web seed at `http://ws.example/` whose copy of the data is `served`,
/// until nothing is left to do or 10 virtual minutes passed; returns the trace, what was
/// written, the paths asked for and the task's events.
fn run(served: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<String>, Vec<TorrentEvent>, bool) {
    let (torrent, data) = torrent();
    let files = [
        ("/album/one%20two.bin", 0usize, 40_000usize),
        ("/album/sub/b.bin", 40_000, 60_000),
    ];
    let config = TorrentConfig {
        session: SessionConfig {
            seed: 9,
            ..SessionConfig::default()
        },
        trackers: ManagerConfig::default(),
        tiers: Vec::new(),
        web_seeds: vec!["http://ws.example/".into()],
    };
    let pieces = torrent.piece_count();
    let mut r = Recorder::new(
        Vec::new(),
        config,
        torrent.clone(),
        StartState::Verified(Bitfield::new(pieces)),
        Time::ZERO,
    );
    let mut disk = vec![0u8; data.len()];
    let mut paths = Vec::new();
    let mut events = Vec::new();
    let mut now = Time::ZERO;
    let mut inputs: VecDeque<(Option<ConnId>, Vec<u8>, u8)> = VecDeque::new();
    let mut pending: VecDeque<Input<'static>> = VecDeque::new();
    let mut hashes: VecDeque<(u32, [u8; 20])> = VecDeque::new();
    for _ in 0..100_000 {
        while let Some(a) = r.poll_action() {
            match a {
                TorrentAction::Tracker(TrackerAction::OpenTcp { conn, host, .. }) => {
                    assert_eq!(host, "ws.example");
                    inputs.push_back((Some(conn), Vec::new(), 0));
                }
                TorrentAction::Tracker(TrackerAction::SendTcp { conn, bytes }) => {
                    let req = String::from_utf8(bytes).unwrap();
                    let path = req.split(' ').nth(1).unwrap().to_string();
                    let range = req.split("Range: bytes=").nth(1).unwrap();
                    let range = range.split("\r\n").next().unwrap();
                    let (a, b) = range.split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    let &(_, off, len) = files.iter().find(|f| f.0 == path).unwrap();
                    let body = &served[off + a..=off + b];
                    let mut resp = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {a}-{b}/{len}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    resp.extend_from_slice(body);
                    // Split in two, anywhere.
                    let cut = resp.len() / 3;
                    inputs.push_back((Some(conn), resp[..cut].to_vec(), 1));
                    inputs.push_back((Some(conn), resp[cut..].to_vec(), 1));
                    paths.push(path);
                }
                TorrentAction::Tracker(TrackerAction::CloseTcp { .. }) => {}
                TorrentAction::Session(Action::WriteBlock { piece, begin, data }) => {
                    let at = (u64::from(piece) * PIECE) as usize + begin as usize;
                    disk[at..at + data.len()].copy_from_slice(&data);
                    pending.push_back(Input::WriteDone { piece, begin });
                }
                TorrentAction::Session(Action::HashPiece { piece }) => {
                    let at = (u64::from(piece) * PIECE) as usize;
                    let end = (at + PIECE as usize).min(disk.len());
                    hashes.push_back((piece, sha1::Sha1::digest(&disk[at..end]).into()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(e) = r.poll_event() {
            events.push(e);
        }
        if let Some(i) = pending.pop_front() {
            r.handle_input(now, TorrentInput::Session(i));
        } else if let Some((piece, digest)) = hashes.pop_front() {
            r.handle_input(
                now,
                TorrentInput::Session(Input::PieceHashed { piece, digest }),
            );
        } else if let Some((conn, bytes, kind)) = inputs.pop_front() {
            let conn = conn.unwrap();
            let input = if kind == 0 {
                TrackerInput::TcpConnected { conn }
            } else {
                TrackerInput::TcpData {
                    conn,
                    bytes: &bytes,
                }
            };
            r.handle_input(now, TorrentInput::Tracker(input));
        } else if r.task().is_complete() {
            break;
        } else {
            match r.task().poll_timeout() {
                Some(t) if t <= Time::ZERO + Duration::from_secs(600) => {
                    now = now.max(t);
                    r.handle_input(now, TorrentInput::Session(Input::Timeout));
                }
                _ => break,
            }
        }
    }
    let complete = r.task().is_complete();
    let (_, trace) = r.finish();
    (trace.unwrap(), disk, paths, events, complete)
}

#[test]
fn a_web_seed_alone_fills_the_torrent_and_the_trace_replays() {
    let (_, data) = torrent();
    let (trace, disk, paths, events, complete) = run(&data);
    assert!(complete, "{events:?}");
    assert_eq!(disk, data);
    // Runs of consecutive pieces from the rarest (here: a random) one up; one GET per file a
    // run touches, names encoded.
    assert!((2..=4).contains(&paths.len()), "{paths:?}");
    for p in &paths {
        assert!(
            ["/album/one%20two.bin", "/album/sub/b.bin"].contains(&p.as_str()),
            "{p}"
        );
    }
    let verified = events
        .iter()
        .filter(|e| matches!(e, TorrentEvent::Session(Event::PieceVerified { .. })))
        .count();
    assert_eq!(verified, 4);
    let report = replay(&trace).unwrap();
    assert!(report.finished && report.divergence.is_none(), "{report}");
}

#[test]
fn a_piece_of_bad_data_counts_against_the_web_seed_and_is_left_to_peers() {
    let (_, data) = torrent();
    let mut bad = data.clone();
    bad[PIECE as usize + 10] ^= 1;
    let (trace, disk, _, events, complete) = run(&bad);
    assert!(!complete);
    let blamed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TorrentEvent::WebSeed { error, dropped, .. } => Some((error.clone(), *dropped)),
            _ => None,
        })
        .collect();
    assert_eq!(blamed, [(WebSeedError::HashFailed { piece: 1 }, false)]);
    // The other pieces count; piece 1 waits for a peer (the web seed never refetches it).
    for p in [0u32, 2, 3] {
        assert!(
            events.contains(&TorrentEvent::Session(Event::PieceVerified { piece: p })),
            "{p}: {events:#?}"
        );
    }
    assert!(!events.contains(&TorrentEvent::Session(Event::PieceVerified { piece: 1 })));
    assert_eq!(disk[..PIECE as usize], data[..PIECE as usize]);
    let report = replay(&trace).unwrap();
    assert!(report.finished && report.divergence.is_none(), "{report}");
}
