use core::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::bitfield::Bitfield;
use crate::id::PeerId;
use crate::session::{FileSpan, SessionConfig};
use crate::wire::Handshake;

fn torrent(tag: u8) -> Torrent {
    Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: InfoHash([tag; 20]),
        piece_length: 16384,
        total_length: 16384 * 4,
        piece_hashes: vec![[tag; 20]; 4],
        files: vec![FileSpan {
            offset: 0,
            length: 16384 * 4,
            padding: false,
        }],
    }
}

fn config(seed: u64, tiers: Vec<Vec<String>>) -> TorrentConfig {
    TorrentConfig {
        session: SessionConfig {
            seed,
            ..SessionConfig::default()
        },
        trackers: Default::default(),
        tiers,
    }
}

fn add(e: &mut Engine, tag: u8) -> TorrentId {
    e.add_torrent(
        Time::ZERO,
        config(u64::from(tag), Vec::new()),
        torrent(tag),
        StartState::Verified(Bitfield::full(4)),
        None,
    )
    .expect("a new info-hash")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn actions(e: &mut Engine) -> Vec<EngineAction> {
    std::iter::from_fn(|| e.poll_action()).collect()
}

fn handshake(tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    Handshake::new(InfoHash([tag; 20]), PeerId([0x42; 20])).encode(&mut out);
    out
}

fn accept(e: &mut Engine, now: Time, port: u16) -> IncomingId {
    let conn = e.next_incoming();
    e.handle_input(now, EngineInput::Incoming { addr: addr(port) });
    conn
}

#[test]
fn a_handshake_routes_the_connection_to_its_torrent() {
    let mut e = Engine::new(EngineConfig::default(), Time::ZERO);
    let a = add(&mut e, 1);
    let b = add(&mut e, 2);
    assert_ne!(a, b);
    assert_eq!(e.find(&InfoHash([2; 20])), Some(b));
    actions(&mut e);
    let conn = accept(&mut e, Time::ZERO, 5000);
    let hs = handshake(2);
    // Split anywhere: nothing happens until the info-hash is complete.
    e.handle_input(
        Time::ZERO,
        EngineInput::IncomingData {
            conn,
            bytes: &hs[..30],
        },
    );
    assert!(actions(&mut e).is_empty());
    e.handle_input(
        Time::ZERO,
        EngineInput::IncomingData {
            conn,
            bytes: &hs[30..],
        },
    );
    let acts = actions(&mut e);
    let Some(EngineAction::Adopt { torrent, peer, .. }) = acts.first().cloned() else {
        panic!("{acts:?}");
    };
    assert_eq!(torrent, b);
    // B answers with its own handshake: the bytes reached its session whole.
    assert!(acts.iter().any(|x| matches!(
        x,
        EngineAction::Torrent { torrent, action: TorrentAction::Session(Action::Send { peer: p, .. }) }
            if *torrent == b && *p == peer
    )));
    assert_eq!(e.torrent(b).unwrap().session().unwrap().peer_count(), 1);
    assert_eq!(e.torrent(a).unwrap().session().unwrap().peer_count(), 0);
    assert_eq!(e.pending_count(), 0);
}

#[test]
fn unknown_torrents_and_other_protocols_are_closed() {
    let mut e = Engine::new(EngineConfig::default(), Time::ZERO);
    add(&mut e, 1);
    actions(&mut e);
    let conn = accept(&mut e, Time::ZERO, 5000);
    e.handle_input(
        Time::ZERO,
        EngineInput::IncomingData {
            conn,
            bytes: &handshake(9),
        },
    );
    assert_eq!(
        actions(&mut e),
        vec![EngineAction::CloseIncoming {
            conn,
            reason: RefuseReason::UnknownTorrent
        }]
    );
    // An HTTP request is refused at its first byte.
    let conn = accept(&mut e, Time::ZERO, 5001);
    e.handle_input(Time::ZERO, EngineInput::IncomingData { conn, bytes: b"G" });
    assert_eq!(
        actions(&mut e),
        vec![EngineAction::CloseIncoming {
            conn,
            reason: RefuseReason::NotBitTorrent
        }]
    );
    // Silence is refused after the handshake timeout, not before.
    let conn = accept(&mut e, Time::ZERO, 5002);
    e.handle_input(Time::from_secs(9), EngineInput::Timeout);
    assert!(actions(&mut e).is_empty());
    e.handle_input(Time::from_secs(10), EngineInput::Timeout);
    assert_eq!(
        actions(&mut e),
        vec![EngineAction::CloseIncoming {
            conn,
            reason: RefuseReason::HandshakeTimeout
        }]
    );
}

#[test]
fn a_flood_of_idle_connections_never_locks_a_real_peer_out() {
    let cfg = EngineConfig::default();
    let mut e = Engine::new(cfg.clone(), Time::ZERO);
    let t = add(&mut e, 1);
    actions(&mut e);
    // 300 connections from one address that send nothing (or half a handshake).
    for i in 0..300u16 {
        let conn = accept(&mut e, Time::from_millis(u64::from(i)), 10_000 + i);
        if i % 2 == 0 {
            e.handle_input(
                Time::from_millis(u64::from(i)),
                EngineInput::IncomingData {
                    conn,
                    bytes: &handshake(1)[..20],
                },
            );
        }
        assert!(e.pending_count() <= cfg.max_pending_per_ip);
    }
    let evicted = actions(&mut e)
        .iter()
        .filter(|a| {
            matches!(
                a,
                EngineAction::CloseIncoming {
                    reason: RefuseReason::Evicted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(evicted, 300 - cfg.max_pending_per_ip);
    // A real peer, from the same address, a moment later: in at once.
    let now = Time::from_millis(301);
    let conn = accept(&mut e, now, 20_000);
    e.handle_input(
        now,
        EngineInput::IncomingData {
            conn,
            bytes: &handshake(1),
        },
    );
    assert!(
        actions(&mut e)
            .iter()
            .any(|a| matches!(a, EngineAction::Adopt { torrent, .. } if *torrent == t))
    );
    // Floods from many addresses are bounded by the whole budget.
    for i in 0..200u8 {
        let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 1);
        e.handle_input(now, EngineInput::Incoming { addr: a });
        assert!(e.pending_count() <= cfg.max_pending);
    }
}

#[test]
fn connection_attempts_share_the_half_open_budget_in_order() {
    let cfg = EngineConfig {
        max_half_open: 5,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, Time::ZERO);
    // Leechers (nothing verified) dial what they learn.
    let ids: Vec<TorrentId> = (1..=2u8)
        .map(|tag| {
            e.add_torrent(
                Time::ZERO,
                config(u64::from(tag), Vec::new()),
                torrent(tag),
                StartState::Verified(Bitfield::new(4)),
                None,
            )
            .unwrap()
        })
        .collect();
    let peers: Vec<SocketAddr> = (0..4).map(|i| addr(7000 + i)).collect();
    for &id in &ids {
        e.handle_input(
            Time::ZERO,
            EngineInput::Torrent {
                torrent: id,
                input: TorrentInput::Session(Input::PeersDiscovered { addrs: &peers }),
            },
        );
    }
    let connects = |acts: &[EngineAction]| -> Vec<(TorrentId, PeerHandle)> {
        acts.iter()
            .filter_map(|a| match a {
                EngineAction::Torrent {
                    torrent,
                    action: TorrentAction::Session(Action::Connect { peer, .. }),
                } => Some((*torrent, *peer)),
                _ => None,
            })
            .collect()
    };
    let first = connects(&actions(&mut e));
    assert_eq!(first.len(), 5, "8 attempts, 5 at once");
    // One attempt fails: the next queued one goes out.
    let (t, p) = first[0];
    e.handle_input(
        Time::from_secs(1),
        EngineInput::Torrent {
            torrent: t,
            input: TorrentInput::Session(Input::ConnectFailed { peer: p }),
        },
    );
    let next = connects(&actions(&mut e));
    assert_eq!(next.len(), 1);
    assert!(!first.contains(&next[0]));
}

#[test]
fn tracker_datagrams_reach_the_torrent_that_asked() {
    let mut e = Engine::new(EngineConfig::default(), Time::ZERO);
    let tracker = addr(6969);
    let tiers = vec![vec![format!("udp://{tracker}/announce")]];
    let ids: Vec<TorrentId> = (1..=2u8)
        .map(|tag| {
            e.add_torrent(
                Time::ZERO,
                config(u64::from(tag), tiers.clone()),
                torrent(tag),
                StartState::Verified(Bitfield::new(4)),
                None,
            )
            .unwrap()
        })
        .collect();
    e.handle_input(Time::ZERO, EngineInput::Timeout);
    let sent: Vec<(TorrentId, Vec<u8>)> = actions(&mut e)
        .into_iter()
        .filter_map(|a| match a {
            EngineAction::Torrent {
                torrent,
                action: TorrentAction::Tracker(TrackerAction::SendUdp { bytes, .. }),
            } => Some((torrent, bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 2, "one connect request per torrent");
    // The tracker answers the second torrent's connect request.
    let (who, request) = &sent[1];
    assert_eq!(*who, ids[1]);
    let mut reply = vec![0, 0, 0, 0];
    reply.extend_from_slice(&request[12..16]);
    reply.extend_from_slice(&[7; 8]);
    e.handle_input(
        Time::from_millis(5),
        EngineInput::Datagram {
            from: tracker,
            bytes: &reply,
        },
    );
    let after: Vec<TorrentId> = actions(&mut e)
        .into_iter()
        .filter_map(|a| match a {
            EngineAction::Torrent {
                torrent,
                action: TorrentAction::Tracker(TrackerAction::SendUdp { .. }),
            } => Some(torrent),
            _ => None,
        })
        .collect();
    assert_eq!(
        after,
        vec![ids[1]],
        "only the asking torrent announces next"
    );
    // A reply with a transaction id nobody used, or from another address, goes nowhere.
    let mut stray = reply.clone();
    stray[4] ^= 0xff;
    for (from, bytes) in [(tracker, &stray), (addr(6970), &reply)] {
        e.handle_input(Time::from_millis(6), EngineInput::Datagram { from, bytes });
        assert!(actions(&mut e).is_empty());
    }
}

#[test]
fn a_removed_torrents_slot_gets_a_new_generation() {
    let mut e = Engine::new(EngineConfig::default(), Time::ZERO);
    let a = add(&mut e, 1);
    assert!(
        e.add_torrent(
            Time::ZERO,
            config(1, Vec::new()),
            torrent(1),
            StartState::Check,
            None
        )
        .is_none()
    );
    e.handle_input(
        Time::ZERO,
        EngineInput::Torrent {
            torrent: a,
            input: TorrentInput::Session(Input::Shutdown),
        },
    );
    assert!(e.torrent(a).unwrap().is_stopped());
    let (task, trace) = e.remove_torrent(a).unwrap();
    assert!(trace.is_ok());
    assert_eq!(task.torrent().info_hash, InfoHash([1; 20]));
    let b = add(&mut e, 2);
    assert_eq!(b.index, a.index);
    assert_ne!(b, a);
    assert!(e.torrent(a).is_none());
    // Input for the old id is dropped, not given to the new torrent.
    e.handle_input(
        Time::ZERO,
        EngineInput::Torrent {
            torrent: a,
            input: TorrentInput::Session(Input::PeersDiscovered { addrs: &[addr(9)] }),
        },
    );
    assert!(actions(&mut e).is_empty());
    e.shutdown(Time::from_secs(1));
    assert!(e.is_stopped());
}

#[test]
fn the_process_connection_limit_refuses_newcomers_once_reached() {
    let cfg = EngineConfig {
        max_connections: 1,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(cfg, Time::ZERO);
    let t = add(&mut e, 1);
    actions(&mut e);
    let first = accept(&mut e, Time::ZERO, 5000);
    e.handle_input(
        Time::ZERO,
        EngineInput::IncomingData {
            conn: first,
            bytes: &handshake(1),
        },
    );
    assert!(
        actions(&mut e)
            .iter()
            .any(|a| matches!(a, EngineAction::Adopt { torrent, .. } if *torrent == t))
    );
    assert_eq!(e.connection_count(), 1);
    let second = accept(&mut e, Time::ZERO, 5001);
    e.handle_input(
        Time::ZERO,
        EngineInput::IncomingData {
            conn: second,
            bytes: &handshake(1),
        },
    );
    assert_eq!(
        actions(&mut e),
        vec![EngineAction::CloseIncoming {
            conn: second,
            reason: RefuseReason::Full
        }]
    );
}

#[test]
fn upload_shares_split_the_slots_among_torrents_that_need_them() {
    assert_eq!(upload_shares(8, &[3, 0, 10]), vec![3, 1, 5]);
    assert_eq!(upload_shares(8, &[10, 10]), vec![4, 4]);
    assert_eq!(upload_shares(7, &[10, 10]), vec![4, 3]);
    // More torrents than slots: each active torrent still gets one.
    assert_eq!(upload_shares(2, &[1, 1, 1]), vec![1, 1, 1]);
    // Slots nobody else needs go to those that have interested peers.
    assert_eq!(upload_shares(8, &[1, 0]), vec![8, 1]);
    // Nobody interested: nothing to divide.
    assert_eq!(upload_shares(8, &[0, 0]), vec![8, 8]);
    for total in 1..12 {
        for a in 0..6 {
            for b in 0..6 {
                let s = upload_shares(total, &[a, b]);
                let active = usize::from(a > 0) + usize::from(b > 0);
                if active > 0 {
                    let used: usize = [(a, s[0]), (b, s[1])]
                        .iter()
                        .filter(|(i, _)| *i > 0)
                        .map(|(_, s)| s)
                        .sum();
                    assert_eq!(used, total.max(active), "{total} {a} {b}: {s:?}");
                }
                assert!(s.iter().all(|&x| x >= 1));
            }
        }
    }
}

#[test]
fn two_busy_torrents_share_the_process_wide_upload_slots() {
    let mut e = Engine::new(
        EngineConfig {
            upload_slots: 4,
            ..EngineConfig::default()
        },
        Time::ZERO,
    );
    let a = add(&mut e, 1);
    let b = add(&mut e, 2);
    actions(&mut e);
    let mut interested = Vec::new();
    crate::wire::Message::Interested.encode(&mut interested);
    let mut port = 6000;
    for tag in [1u8, 2] {
        for _ in 0..6 {
            port += 1;
            let conn = accept(&mut e, Time::ZERO, port);
            let mut bytes = handshake(tag);
            // Each peer needs its own id: the session refuses a second connection from one.
            bytes[48..50].copy_from_slice(&port.to_be_bytes());
            bytes.extend_from_slice(&interested);
            e.handle_input(
                Time::ZERO,
                EngineInput::IncomingData {
                    conn,
                    bytes: &bytes,
                },
            );
        }
    }
    actions(&mut e);
    for s in [1, 11, 21, 31] {
        e.handle_input(Time::from_secs(s), EngineInput::Timeout);
        actions(&mut e);
    }
    let unchoked = |id: TorrentId| {
        let s = e.torrent(id).unwrap().session().unwrap();
        (0..20)
            .filter_map(|k| s.peer(PeerHandle(k)))
            .filter(|p| p.is_established() && !p.am_choking())
            .count()
    };
    let sa = e.torrent(a).unwrap().session().unwrap();
    let sb = e.torrent(b).unwrap().session().unwrap();
    assert_eq!((sa.interested_count(), sb.interested_count()), (6, 6));
    assert_eq!((sa.upload_slots(), sb.upload_slots()), (2, 2));
    // Each torrent: its two regular slots and at most one optimistic unchoke.
    assert!((2..=3).contains(&unchoked(a)), "{}", unchoked(a));
    assert!((2..=3).contains(&unchoked(b)), "{}", unchoked(b));
}
