use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sha1::Digest;

use super::*;
use crate::id::InfoHash;
use crate::metainfo::hash_pieces;
use crate::resume::ResumeData;
use crate::session::FileSpan;

const PIECE: u64 = 16 * 1024;

/// Four pieces in two files (pieces 0–1 in file 0, 2–3 in file 1).
fn torrent() -> (Torrent, Vec<u8>) {
    let content: Vec<u8> = (0..4 * PIECE as usize).map(|i| (i % 253) as u8).collect();
    let t = Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: InfoHash([5; 20]),
        piece_length: PIECE,
        total_length: content.len() as u64,
        piece_hashes: hash_pieces(&content, PIECE),
        files: vec![
            FileSpan {
                offset: 0,
                length: 2 * PIECE,
                padding: false,
            },
            FileSpan {
                offset: 2 * PIECE,
                length: 2 * PIECE,
                padding: false,
            },
        ],
    };
    (t, content)
}

fn config(tiers: Vec<Vec<String>>) -> TorrentConfig {
    TorrentConfig {
        session: SessionConfig {
            seed: 3,
            listen_port: 6881,
            ..SessionConfig::default()
        },
        trackers: ManagerConfig::default(),
        tiers,
    }
}

fn stamp(mtime: i64) -> Option<FileStamp> {
    Some(FileStamp {
        size: 2 * PIECE,
        mtime,
        mtime_nsec: 0,
    })
}

fn actions(t: &mut TorrentTask) -> Vec<TorrentAction> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

fn events(t: &mut TorrentTask) -> Vec<TorrentEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn hashes(acts: &[TorrentAction]) -> Vec<u32> {
    acts.iter()
        .filter_map(|a| match a {
            TorrentAction::Session(Action::HashPiece { piece }) => Some(*piece),
            _ => None,
        })
        .collect()
}

fn digest(content: &[u8], piece: u32) -> [u8; 20] {
    let at = piece as usize * PIECE as usize;
    sha1::Sha1::digest(&content[at..at + PIECE as usize]).into()
}

#[test]
fn check_trusts_resume_data_hashes_the_rest_and_counts_only_matching_digests() {
    let (t, content) = torrent();
    let mut have = Bitfield::new(4);
    have.set(0);
    have.set(1);
    have.set(2);
    // File 1 changed since the resume data was written: its pieces are hashed again.
    let resume = ResumeData::encode(&t.info_hash, &have, &[stamp(1).unwrap(), stamp(1).unwrap()]);
    let mut task = TorrentTask::new(config(Vec::new()), t, StartState::Check, Time::ZERO);
    assert!(!task.accepts_peers());
    assert_eq!(task.poll_timeout(), None);
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7000);
    task.handle_input(
        Time::ZERO,
        TorrentInput::Session(Input::PeersDiscovered { addrs: &[peer] }),
    );
    task.handle_input(
        Time::ZERO,
        TorrentInput::Start {
            files: &[stamp(1), stamp(2)],
            resume: Some(&resume),
        },
    );
    let acts = actions(&mut task);
    assert_eq!(hashes(&acts), vec![2, 3]);
    assert_eq!(task.check_progress(), Some((0, 2)));
    // Piece 2's data is good; piece 3 cannot be read.
    task.handle_input(
        Time::from_secs(1),
        TorrentInput::Session(Input::PieceHashed {
            piece: 2,
            digest: digest(&content, 2),
        }),
    );
    assert!(!task.accepts_peers(), "still checking piece 3");
    task.handle_input(
        Time::from_secs(1),
        TorrentInput::Session(Input::HashFailed {
            piece: 3,
            error: "input/output error".into(),
        }),
    );
    assert!(task.accepts_peers());
    assert!(events(&mut task).contains(&TorrentEvent::Checked {
        verified: 3,
        pieces: 4
    }));
    assert_eq!(task.have().iter_ones().collect::<Vec<_>>(), vec![0, 1, 2]);
    // The peer learnt while checking is dialled now.
    let acts = actions(&mut task);
    assert!(
        acts.iter().any(|a| matches!(
            a,
            TorrentAction::Session(Action::Connect { addr, .. }) if *addr == peer
        )),
        "{acts:?}"
    );
}

#[test]
fn a_wrong_digest_never_counts_and_bad_resume_data_is_reported() {
    let (t, content) = torrent();
    let mut task = TorrentTask::new(config(Vec::new()), t, StartState::Check, Time::ZERO);
    let garbage = [b"KPRESUME".as_slice(), &[0; 40]].concat();
    task.handle_input(
        Time::ZERO,
        TorrentInput::Start {
            files: &[stamp(1), None],
            resume: Some(&garbage),
        },
    );
    assert!(matches!(
        events(&mut task).first(),
        Some(TorrentEvent::ResumeIgnored(ResumeError::Checksum))
    ));
    // No usable resume data: every piece of the present file is hashed; the missing file's are not.
    assert_eq!(hashes(&actions(&mut task)), vec![0, 1]);
    let mut wrong = digest(&content, 0);
    wrong[0] ^= 1;
    for (piece, d) in [
        (0, wrong),
        (1, digest(&content, 1)),
        (7, digest(&content, 0)),
    ] {
        task.handle_input(
            Time::ZERO,
            TorrentInput::Session(Input::PieceHashed { piece, digest: d }),
        );
    }
    assert_eq!(task.have().iter_ones().collect::<Vec<_>>(), vec![1]);
    assert!(task.accepts_peers());
}

#[test]
fn shutdown_while_checking_stops_at_once() {
    let (t, _) = torrent();
    let mut task = TorrentTask::new(config(Vec::new()), t, StartState::Check, Time::ZERO);
    task.handle_input(
        Time::ZERO,
        TorrentInput::Start {
            files: &[stamp(1), stamp(1)],
            resume: None,
        },
    );
    assert_eq!(hashes(&actions(&mut task)).len(), CHECK_IN_FLIGHT);
    task.handle_input(Time::ZERO, TorrentInput::Session(Input::Shutdown));
    assert!(task.is_stopped());
    assert!(!task.accepts_peers());
    task.handle_input(
        Time::ZERO,
        TorrentInput::Session(Input::PieceHashed {
            piece: 0,
            digest: [0; 20],
        }),
    );
    assert!(
        actions(&mut task).is_empty(),
        "no more hashing after shutdown"
    );
}

/// Answers the task's HTTP announce on connection `conn` with one peer.
fn answer_announce(task: &mut TorrentTask, now: Time, conn: ConnId, peer: SocketAddr) {
    let SocketAddr::V4(v4) = peer else {
        unreachable!()
    };
    let mut body = b"d8:intervali1800e5:peers6:".to_vec();
    body.extend_from_slice(&v4.ip().octets());
    body.extend_from_slice(&v4.port().to_be_bytes());
    body.push(b'e');
    let mut reply =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    reply.extend_from_slice(&body);
    task.handle_input(
        now,
        TorrentInput::Tracker(TrackerInput::TcpConnected { conn }),
    );
    task.handle_input(
        now,
        TorrentInput::Tracker(TrackerInput::TcpData {
            conn,
            bytes: &reply,
        }),
    );
    task.handle_input(
        now,
        TorrentInput::Tracker(TrackerInput::TcpClosed { conn, error: None }),
    );
}

fn opened(acts: &[TorrentAction]) -> Vec<ConnId> {
    acts.iter()
        .filter_map(|a| match a {
            TorrentAction::Tracker(TrackerAction::OpenTcp { conn, .. }) => Some(*conn),
            _ => None,
        })
        .collect()
}

fn sent_events(acts: &[TorrentAction]) -> Vec<String> {
    acts.iter()
        .filter_map(|a| match a {
            TorrentAction::Tracker(TrackerAction::SendTcp { bytes, .. }) => {
                let text = String::from_utf8_lossy(bytes).into_owned();
                let event = text
                    .split(['?', '&', ' '])
                    .find_map(|kv| kv.strip_prefix("event="))
                    .unwrap_or("none")
                    .to_owned();
                Some(event)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn trackers_feed_the_swarm_and_hear_started_and_stopped() {
    let (t, _) = torrent();
    let tiers = vec![vec!["http://127.0.0.1:9/announce".to_owned()]];
    let mut task = TorrentTask::new(
        config(tiers),
        t,
        StartState::Verified(Bitfield::new(4)),
        Time::ZERO,
    );
    assert!(task.has_trackers());
    // The first announce is due at once.
    let due = task.poll_timeout().expect("an announce is due");
    task.handle_input(due, TorrentInput::Session(Input::Timeout));
    let mut acts = actions(&mut task);
    let conn = opened(&acts)[0];
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7001);
    answer_announce(&mut task, due, conn, peer);
    acts.extend(actions(&mut task));
    assert_eq!(sent_events(&acts), vec!["started"]);
    // The tracker's peer went to the swarm, which dials it.
    assert!(
        acts.iter().any(|a| matches!(
            a,
            TorrentAction::Session(Action::Connect { addr, .. }) if *addr == peer
        )),
        "{acts:?}"
    );
    assert!(!task.completed_announced());
    // Shutdown sends `stopped` and the task is stopped once the tracker answered.
    let later = due + Duration::from_secs(5);
    task.handle_input(later, TorrentInput::Session(Input::Shutdown));
    assert!(!task.is_stopped(), "waiting for the tracker's answer");
    let acts = actions(&mut task);
    let conn = *opened(&acts).last().expect("a stopped announce");
    answer_announce(&mut task, later, conn, peer);
    assert_eq!(sent_events(&actions(&mut task)), vec!["stopped"]);
    assert!(task.is_stopped());
}

#[test]
fn a_finished_download_need_not_wait_for_trackers_that_never_answered() {
    let (t, _) = torrent();
    let tiers = vec![vec!["http://127.0.0.1:9/announce".to_owned()]];
    let mut task = TorrentTask::new(
        config(tiers),
        t,
        StartState::Verified(Bitfield::full(4)),
        Time::ZERO,
    );
    assert!(task.is_complete());
    // The tracker has not been asked yet: it may still want to hear from us.
    assert!(!task.completed_announced());
    task.handle_input(Time::ZERO, TorrentInput::Session(Input::Timeout));
    let conn = opened(&actions(&mut task))[0];
    assert!(!task.completed_announced(), "asked, not answered yet");
    task.handle_input(
        Time::from_secs(1),
        TorrentInput::Tracker(TrackerInput::ConnectFailed {
            conn,
            why: "connection refused".into(),
        }),
    );
    // Every tracker failed without ever answering: nobody is waiting for `completed`.
    assert!(task.completed_announced());
}
