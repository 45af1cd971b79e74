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
        web_seeds: Vec::new(),
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

// ---- magnet links ----

/// The info dictionary of [`torrent`]'s data (two files of two pieces), and what it describes.
fn magnet_torrent() -> (Vec<u8>, Torrent, Vec<u8>) {
    let (_, content) = torrent();
    let spec = crate::metainfo::TorrentSpec {
        name: "m".into(),
        piece_length: PIECE,
        files: vec![(vec!["a".into()], 2 * PIECE), (vec!["b".into()], 2 * PIECE)],
        piece_hashes: hash_pieces(&content, PIECE),
        ..Default::default()
    };
    let info = spec.info_bytes();
    let torrent = metainfo_of(&info).expect("a valid torrent");
    assert_eq!(torrent.info_hash, InfoHash::of(&info));
    (info, torrent, content)
}

/// A magnet task (knowing only `info_hash`) joined to a seeding session of `seed_torrent`, every
/// send delivered at once; the task's disk holds `disk` and answers at once.
struct MagnetPair {
    task: TorrentTask,
    seed: Session,
    content: Vec<u8>,
    disk: Vec<u8>,
    seed_addr: SocketAddr,
    /// The connection's handle in the task and in the seed.
    link: Option<(PeerHandle, PeerHandle)>,
    connects: usize,
    closes: Vec<String>,
    events: Vec<TorrentEvent>,
    blocks: usize,
    hashes: usize,
}

impl MagnetPair {
    fn new(tiers: Vec<Vec<String>>, info_hash: InfoHash, seed_torrent: Torrent) -> MagnetPair {
        let (_, content) = torrent();
        let pieces = seed_torrent.piece_count();
        let seed = Session::new(
            SessionConfig {
                seed: 9,
                ..SessionConfig::default()
            },
            seed_torrent,
            Bitfield::full(pieces),
            Time::ZERO,
        );
        let task = TorrentTask::new(
            config(tiers),
            Torrent::unknown(info_hash),
            StartState::Magnet,
            Time::ZERO,
        );
        MagnetPair {
            task,
            seed,
            disk: vec![0; content.len()],
            content,
            seed_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6881),
            link: None,
            connects: 0,
            closes: Vec::new(),
            events: Vec::new(),
            blocks: 0,
            hashes: 0,
        }
    }

    fn input(&mut self, now: Time, input: TorrentInput<'_>) {
        self.task.handle_input(now, input);
        self.pump(now);
    }

    /// Delivers everything until both sides are idle.
    fn pump(&mut self, now: Time) {
        let leecher = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000);
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(a) = self.task.poll_action() {
                progressed = true;
                let TorrentAction::Session(a) = a else {
                    continue;
                };
                match a {
                    Action::Connect { peer, addr } if addr == self.seed_addr => {
                        self.connects += 1;
                        let sh = self.seed.handle_incoming(now, leecher);
                        self.link = Some((peer, sh));
                        self.task
                            .handle_input(now, TorrentInput::Session(Input::Connected { peer }));
                    }
                    Action::Send { peer, bytes } => {
                        if let Some((_, sh)) = self.link.filter(|l| l.0 == peer) {
                            self.seed.handle_received(now, sh, &bytes);
                        }
                    }
                    Action::Close { peer, reason } => {
                        self.closes.push(reason);
                        if let Some((_, sh)) = self.link.filter(|l| l.0 == peer) {
                            self.link = None;
                            self.seed.handle_peer_closed(now, sh);
                        }
                    }
                    Action::WriteBlock { piece, begin, data } => {
                        self.blocks += 1;
                        let at = piece as usize * PIECE as usize + begin as usize;
                        self.disk[at..at + data.len()].copy_from_slice(&data);
                        self.task.handle_input(
                            now,
                            TorrentInput::Session(Input::WriteDone { piece, begin }),
                        );
                    }
                    Action::HashPiece { piece } => {
                        self.hashes += 1;
                        let digest = digest(&self.disk, piece);
                        self.task.handle_input(
                            now,
                            TorrentInput::Session(Input::PieceHashed { piece, digest }),
                        );
                    }
                    _ => {}
                }
            }
            self.events.extend(events(&mut self.task));
            while let Some(a) = self.seed.poll_action() {
                progressed = true;
                match a {
                    Action::Send { peer, bytes } => {
                        if let Some((th, _)) = self.link.filter(|l| l.1 == peer) {
                            self.task.handle_input(
                                now,
                                TorrentInput::Session(Input::Received {
                                    peer: th,
                                    bytes: &bytes,
                                }),
                            );
                        }
                    }
                    Action::Close { peer, reason } => {
                        self.closes.push(format!("seed: {reason}"));
                        if let Some((th, _)) = self.link.filter(|l| l.1 == peer) {
                            self.link = None;
                            self.task.handle_input(
                                now,
                                TorrentInput::Session(Input::Closed { peer: th }),
                            );
                        }
                    }
                    Action::ReadBlock {
                        peer,
                        piece,
                        begin,
                        length,
                    } => {
                        let at = piece as usize * PIECE as usize + begin as usize;
                        let data = self.content[at..at + length as usize].to_vec();
                        self.seed.handle_read_done(now, peer, piece, begin, &data);
                    }
                    _ => {}
                }
            }
            while self.seed.poll_event().is_some() {}
            if !progressed {
                return;
            }
        }
        panic!("the pair never went idle");
    }

    /// Fires both sides' timers each second for up to `secs` seconds or until the task completes.
    fn run(&mut self, from: Time, secs: u64) {
        let mut now = from;
        while now < from + Duration::from_secs(secs) && !self.task.is_complete() {
            now += Duration::from_secs(1);
            self.seed.handle_timeout(now);
            self.input(now, TorrentInput::Session(Input::Timeout));
        }
    }

    fn metadata_events(&self) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TorrentEvent::MetadataReceived { info } => Some(info.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Fetches the metadata from a seed; returns the pair, waiting for `Start`.
fn fetched(tiers: Vec<Vec<String>>) -> (MagnetPair, Vec<u8>, Torrent) {
    let (info, torrent, _) = magnet_torrent();
    let mut p = MagnetPair::new(tiers, torrent.info_hash, torrent.clone());
    assert!(p.task.fetching_metadata());
    assert!(p.task.accepts_peers() && p.task.session().is_some());
    assert!(!p.task.is_complete());
    assert_eq!(p.task.check_progress(), None);
    let seed_addr = p.seed_addr;
    p.input(
        Time::from_secs(1),
        TorrentInput::Session(Input::PeersDiscovered {
            addrs: &[seed_addr],
        }),
    );
    assert_eq!(p.metadata_events(), std::slice::from_ref(&info));
    assert!(!p.task.fetching_metadata());
    assert_eq!(p.task.torrent(), &torrent);
    // Checking now, with the swarm kept: still one connection, nothing downloaded.
    assert!(p.task.accepts_peers());
    assert!(!p.task.is_complete());
    assert_eq!(p.task.session().map(Session::peer_count), Some(1));
    assert!(p.link.is_some() && p.closes.is_empty(), "{:?}", p.closes);
    assert_eq!(p.blocks, 0);
    assert_eq!(p.hashes, 0);
    (p, info, torrent)
}

#[test]
fn a_magnet_task_fetches_the_metadata_then_checks_the_data_on_disk() {
    let (mut p, _, _) = fetched(Vec::new());
    p.disk = p.content.clone();
    p.events.clear();
    p.input(
        Time::from_secs(2),
        TorrentInput::Start {
            files: &[stamp(1), stamp(1)],
            resume: None,
        },
    );
    // Every piece was hashed (the pump answered each), all good: complete without a block.
    assert!(
        p.events.contains(&TorrentEvent::Checked {
            verified: 4,
            pieces: 4
        }),
        "{:?}",
        p.events
    );
    assert!(p.task.is_complete());
    assert_eq!(p.task.have().count(), 4);
    assert_eq!(p.hashes, 4);
    assert_eq!(p.blocks, 0);
    assert_eq!(p.connects, 1);
}

#[test]
fn a_magnet_task_without_data_downloads_on_the_connections_of_the_fetch() {
    let (mut p, _, _) = fetched(Vec::new());
    p.events.clear();
    p.input(
        Time::from_secs(2),
        TorrentInput::Start {
            files: &[None, None],
            resume: None,
        },
    );
    assert!(
        p.events.contains(&TorrentEvent::Checked {
            verified: 0,
            pieces: 4
        }),
        "{:?}",
        p.events
    );
    p.run(Time::from_secs(2), 120);
    assert!(p.task.is_complete(), "{:?}", p.closes);
    assert_eq!(p.disk, p.content);
    assert_eq!(p.blocks, 4);
    // No reconnection: the download used the connection opened for the metadata.
    assert_eq!(p.connects, 1, "{:?}", p.closes);
    assert!(
        p.closes.iter().all(|r| r == "both seeding"),
        "{:?}",
        p.closes
    );
}

/// A seeding session that serves `info` as the metadata of `info`'s hash.
fn serving(info: &[u8]) -> Torrent {
    let (t, _) = torrent();
    Torrent {
        info_hash: InfoHash::of(info),
        metadata: info.to_vec(),
        ..t
    }
}

#[test]
fn metadata_that_is_not_a_torrent_shuts_the_task_down() {
    // Hashes right (it is what the magnet link names), but has no `pieces`.
    let bad = b"d6:lengthi65536e4:name1:m12:piece lengthi16384ee".to_vec();
    let mut p = MagnetPair::new(Vec::new(), InfoHash::of(&bad), serving(&bad));
    let seed_addr = p.seed_addr;
    p.input(
        Time::from_secs(1),
        TorrentInput::Session(Input::PeersDiscovered {
            addrs: &[seed_addr],
        }),
    );
    let reasons: Vec<&String> = p
        .events
        .iter()
        .filter_map(|e| match e {
            TorrentEvent::BadMetadata(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{:?}", p.events);
    assert!(reasons[0].contains("pieces"), "{reasons:?}");
    assert!(p.metadata_events().is_empty());
    assert!(p.task.is_stopped(), "no trackers to wait for");
    assert!(!p.task.accepts_peers());
    assert!(p.link.is_none(), "the connection was closed");
    assert_eq!(p.task.poll_timeout(), None);
}

#[test]
fn metadata_with_bytes_after_the_info_dictionary_is_not_a_torrent() {
    // A valid dictionary followed by more bencode: the whole hashes to the info-hash, but read as
    // a torrent's `info` only the dictionary would count, and describe another info-hash.
    let (mut info, _, _) = magnet_torrent();
    info.extend_from_slice(b"3:fooi1e");
    let mut p = MagnetPair::new(Vec::new(), InfoHash::of(&info), serving(&info));
    let seed_addr = p.seed_addr;
    p.input(
        Time::from_secs(1),
        TorrentInput::Session(Input::PeersDiscovered {
            addrs: &[seed_addr],
        }),
    );
    assert!(p.metadata_events().is_empty(), "{:?}", p.events);
    assert!(
        p.events
            .iter()
            .any(|e| matches!(e, TorrentEvent::BadMetadata(_))),
        "{:?}",
        p.events
    );
    assert!(p.task.is_stopped());
}

#[test]
fn trackers_announce_while_the_metadata_is_fetched_and_their_peers_are_dialled() {
    let (_, torrent, _) = magnet_torrent();
    let tiers = vec![vec!["http://127.0.0.1:9/announce".to_owned()]];
    let mut task = TorrentTask::new(
        config(tiers),
        Torrent::unknown(torrent.info_hash),
        StartState::Magnet,
        Time::ZERO,
    );
    assert!(task.has_trackers() && task.trackers().is_some());
    let due = task.poll_timeout().expect("an announce is due");
    task.handle_input(due, TorrentInput::Session(Input::Timeout));
    let mut acts = actions(&mut task);
    let conn = opened(&acts)[0];
    let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7001);
    answer_announce(&mut task, due, conn, peer);
    acts.extend(actions(&mut task));
    assert_eq!(sent_events(&acts), vec!["started"]);
    let request = acts
        .iter()
        .find_map(|a| match a {
            TorrentAction::Tracker(TrackerAction::SendTcp { bytes, .. }) => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        })
        .expect("the announce was sent");
    // The size is unknown: 16 KiB left, like libtorrent, so the tracker counts a leecher.
    assert!(request.contains("&left=16384&"), "{request}");
    assert!(task.fetching_metadata());
    assert!(
        acts.iter().any(|a| matches!(
            a,
            TorrentAction::Session(Action::Connect { addr, .. }) if *addr == peer
        )),
        "{acts:?}"
    );
}

#[test]
fn a_file_selection_given_before_the_metadata_applies_once_it_arrived() {
    let (info, torrent, _) = magnet_torrent();
    let mut p = MagnetPair::new(Vec::new(), torrent.info_hash, torrent.clone());
    // Only the second file (pieces 2 and 3).
    p.input(
        Time::ZERO,
        TorrentInput::Session(Input::SelectFiles {
            wanted: &[false, true],
        }),
    );
    let seed_addr = p.seed_addr;
    p.input(
        Time::from_secs(1),
        TorrentInput::Session(Input::PeersDiscovered {
            addrs: &[seed_addr],
        }),
    );
    assert_eq!(p.metadata_events(), std::slice::from_ref(&info));
    p.input(
        Time::from_secs(2),
        TorrentInput::Start {
            files: &[None, None],
            resume: None,
        },
    );
    p.run(Time::from_secs(2), 120);
    assert!(p.task.is_complete(), "{:?}", p.closes);
    assert_eq!(p.blocks, 2, "only the selected file's pieces");
    let have: Vec<u32> = p.task.have().iter_ones().collect();
    assert_eq!(have, vec![2, 3]);
}
