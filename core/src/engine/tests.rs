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
        web_seeds: Vec::new(),
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
    // An HTTP request might be MSE: it is refused once no MSE marker can follow.
    let conn = accept(&mut e, Time::ZERO, 5001);
    let mut http = b"GET /announce HTTP/1.1\r\nHost: x\r\n".to_vec();
    http.resize(crate::mse::REQ1_SYNC_BOUND, b'x');
    e.handle_input(Time::ZERO, EngineInput::IncomingData { conn, bytes: &http });
    assert_eq!(
        actions(&mut e),
        vec![EngineAction::CloseIncoming {
            conn,
            reason: RefuseReason::Encryption(crate::mse::MseError::NoReq1Sync)
        }]
    );
    // Without encryption it is refused at its first byte.
    let mut plain = Engine::new(
        EngineConfig {
            encryption: Policy::Disable,
            ..EngineConfig::default()
        },
        Time::ZERO,
    );
    add(&mut plain, 1);
    actions(&mut plain);
    let conn = accept(&mut plain, Time::ZERO, 5001);
    plain.handle_input(Time::ZERO, EngineInput::IncomingData { conn, bytes: b"G" });
    assert_eq!(
        actions(&mut plain),
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

// ---- the DHT ----

/// A small virtual network: the engine at `ENGINE_ADDR` and plain DHT nodes, each datagram
/// delivered 10 ms after it was sent.
struct DhtWorld {
    engine: Engine,
    nodes: Vec<(SocketAddr, Dht)>,
    wire: VecDeque<(Time, SocketAddr, SocketAddr, Vec<u8>)>,
    now: Time,
    /// Engine actions other than datagrams, in order.
    other: Vec<EngineAction>,
    /// Every datagram the engine sent, decoded.
    sent: Vec<(SocketAddr, dht::krpc::Message)>,
    /// The plain nodes' events.
    node_events: Vec<(usize, DhtEvent)>,
}

const ENGINE_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 6881));

fn dht_node(i: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, i), 6881))
}

impl DhtWorld {
    /// `n` plain nodes that bootstrap from node 0 and, once they have, an engine bootstrapping
    /// from node 0.
    fn new(n: u8) -> DhtWorld {
        let nodes: Vec<(SocketAddr, Dht)> = (0..n)
            .map(|i| {
                let config = DhtConfig {
                    seed: 500 + u64::from(i),
                    bootstrap: if i == 0 { vec![] } else { vec![dht_node(0)] },
                    ..DhtConfig::default()
                };
                (dht_node(i), Dht::new(config, Time::ZERO))
            })
            .collect();
        let mut w = DhtWorld {
            engine: Engine::new(EngineConfig::default(), Time::ZERO),
            nodes,
            wire: VecDeque::new(),
            now: Time::ZERO,
            other: Vec::new(),
            sent: Vec::new(),
            node_events: Vec::new(),
        };
        for i in 1..usize::from(n) {
            w.nodes[i]
                .1
                .handle_input(Time::ZERO, dht::Input::Bootstrap { id: LookupId(1) });
            w.collect_node(i);
        }
        w.run(Duration::from_secs(20));
        w.engine = Engine::new(
            EngineConfig {
                dht: Some(DhtConfig {
                    seed: 77,
                    bootstrap: vec![dht_node(0)],
                    ..DhtConfig::default()
                }),
                ..EngineConfig::default()
            },
            w.now,
        );
        w.collect_engine();
        w
    }

    fn collect_engine(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            match a {
                EngineAction::SendDatagram { to, data } => {
                    if let Ok(m) = dht::krpc::Message::decode(&data) {
                        self.sent.push((to, m));
                    }
                    self.wire.push_back((
                        self.now + Duration::from_millis(10),
                        ENGINE_ADDR,
                        to,
                        data,
                    ));
                }
                other => self.other.push(other),
            }
        }
    }

    fn collect_node(&mut self, i: usize) {
        let from = self.nodes[i].0;
        while let Some(t) = self.nodes[i].1.poll_transmit() {
            self.wire
                .push_back((self.now + Duration::from_millis(10), from, t.to, t.data));
        }
        while let Some(e) = self.nodes[i].1.poll_event() {
            self.node_events.push((i, e));
        }
    }

    /// Runs the network and every timer for `span` of virtual time.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        for _ in 0..200_000 {
            let next_wire = self.wire.iter().map(|w| w.0).min();
            let timers = self
                .nodes
                .iter()
                .filter_map(|(_, d)| d.poll_timeout())
                .chain(self.engine.poll_timeout())
                .min();
            let Some(next) = [next_wire, timers].into_iter().flatten().min() else {
                return;
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            let due: Vec<_> = {
                let (due, rest): (Vec<_>, Vec<_>) =
                    self.wire.drain(..).partition(|w| w.0 <= self.now);
                self.wire = rest.into();
                due
            };
            for (_, from, to, data) in due {
                if to == ENGINE_ADDR {
                    self.engine
                        .handle_input(self.now, EngineInput::Datagram { from, bytes: &data });
                    self.collect_engine();
                } else if let Some(i) = self.nodes.iter().position(|(a, _)| *a == to) {
                    self.nodes[i]
                        .1
                        .handle_input(self.now, dht::Input::Datagram { from, data });
                    self.collect_node(i);
                }
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .1
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    self.nodes[i].1.handle_input(self.now, dht::Input::Timeout);
                    self.collect_node(i);
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                self.engine.handle_input(self.now, EngineInput::Timeout);
                self.collect_engine();
            }
        }
        panic!("the DHT world did not settle");
    }

    /// Info-hashes the engine asked the DHT about (get_peers or announce_peer).
    fn asked_about(&self) -> BTreeSet<InfoHash> {
        use dht::krpc::{Body, Method};
        self.sent
            .iter()
            .filter_map(|(_, m)| match &m.body {
                Body::Query(q) => match &q.method {
                    Method::GetPeers { info_hash } => Some(*info_hash),
                    Method::AnnouncePeer { info_hash, .. } => Some(*info_hash),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

fn add_public(e: &mut Engine, now: Time, tag: u8, private: bool, listen_port: u16) -> TorrentId {
    let mut cfg = config(u64::from(tag), Vec::new());
    cfg.session.listen_port = listen_port;
    cfg.session.dht_port = 6881;
    e.add_torrent(
        now,
        cfg,
        Torrent {
            private,
            ..torrent(tag)
        },
        StartState::Verified(Bitfield::new(4)),
        None,
    )
    .expect("new")
}

#[test]
fn dht_finds_announced_peers_for_public_torrents_only_and_announces_ours() {
    let mut w = DhtWorld::new(12);
    w.run(Duration::from_secs(30));
    assert!(
        w.engine.dht_nodes().unwrap() >= 8,
        "{:?}",
        w.engine.dht_nodes()
    );
    // Node 5 announces a peer for torrent 3.
    let ih = InfoHash([3; 20]);
    w.nodes[5].1.handle_input(
        w.now,
        dht::Input::Announce {
            id: LookupId(9),
            info_hash: ih,
            port: 7777,
            implied_port: false,
        },
    );
    w.collect_node(5);
    w.run(Duration::from_secs(10));
    let public = add_public(&mut w.engine, w.now, 3, false, 6000);
    let private = add_public(&mut w.engine, w.now, 4, true, 6000);
    w.collect_engine();
    w.run(Duration::from_secs(10));
    // The public torrent was looked up, found node 5's peer and dials it.
    let peer = SocketAddr::new(dht_node(5).ip(), 7777);
    assert!(
        w.other.iter().any(|a| matches!(
            a,
            EngineAction::Torrent { torrent, action: TorrentAction::Session(Action::Connect { addr, .. }) }
                if *torrent == public && *addr == peer
        )),
        "{:?}",
        w.other
    );
    // The private one never reached the DHT.
    assert_eq!(w.asked_about(), BTreeSet::from([ih]));
    let _ = private;
    // Our announce went to the closest nodes: a lookup of torrent 3 now finds our port too.
    w.nodes[8].1.handle_input(
        w.now,
        dht::Input::GetPeers {
            id: LookupId(10),
            info_hash: ih,
        },
    );
    w.collect_node(8);
    w.run(Duration::from_secs(10));
    let found: BTreeSet<SocketAddr> = w
        .node_events
        .iter()
        .filter_map(|(i, e)| match e {
            DhtEvent::Peers { id, peers, .. } if *i == 8 && *id == LookupId(10) => Some(peers),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    assert!(
        found.contains(&SocketAddr::new(ENGINE_ADDR.ip(), 6000)),
        "{found:?}"
    );
}

#[test]
fn dht_lookups_repeat_at_the_interval_and_retry_sooner_when_nobody_answers() {
    // No DHT node answers: the bootstrap and the lookups back off, bounded.
    let mut e = Engine::new(
        EngineConfig {
            dht: Some(DhtConfig {
                seed: 1,
                bootstrap: vec![dht_node(1)],
                ..DhtConfig::default()
            }),
            ..EngineConfig::default()
        },
        Time::ZERO,
    );
    add_public(&mut e, Time::ZERO, 1, false, 0);
    let mut now = Time::ZERO;
    let mut datagrams = 0;
    for _ in 0..10_000 {
        datagrams += actions(&mut e)
            .iter()
            .filter(|a| matches!(a, EngineAction::SendDatagram { .. }))
            .count();
        let Some(next) = e.poll_timeout() else { break };
        assert!(
            next > now || next == now && datagrams > 0,
            "no busy loop at {now:?}"
        );
        now = next.max(now + Duration::from_millis(1));
        if now > Time::ZERO + Duration::from_secs(3600) {
            break;
        }
        e.handle_input(now, EngineInput::Timeout);
    }
    // An hour of silence costs a bounded number of datagrams (retries back off to 5 min).
    assert!(datagrams > 3, "it kept trying: {datagrams}");
    assert!(
        datagrams < 200,
        "{datagrams} datagrams in an hour of silence"
    );
}

#[test]
fn krpc_datagrams_go_to_the_dht_and_port_messages_become_pings() {
    // Without a DHT, a KRPC query is dropped.
    let ping = {
        use dht::krpc::*;
        Message {
            tid: TransactionId::new(b"aa").unwrap(),
            body: Body::Query(Query {
                id: dht::node_id::NodeId([1; 20]),
                method: Method::Ping,
                want: Want::default(),
            }),
            version: None,
            ip: None,
            read_only: false,
        }
        .encode()
    };
    let mut plain = Engine::new(EngineConfig::default(), Time::ZERO);
    plain.handle_input(
        Time::ZERO,
        EngineInput::Datagram {
            from: dht_node(1),
            bytes: &ping,
        },
    );
    assert!(actions(&mut plain).is_empty());
    // With one, it is answered.
    let mut e = Engine::new(
        EngineConfig {
            dht: Some(DhtConfig::default()),
            ..EngineConfig::default()
        },
        Time::ZERO,
    );
    let t = add_public(&mut e, Time::ZERO, 2, false, 6000);
    actions(&mut e);
    e.handle_input(
        Time::ZERO,
        EngineInput::Datagram {
            from: dht_node(1),
            bytes: &ping,
        },
    );
    let acts = actions(&mut e);
    let reply = acts.iter().find_map(|a| match a {
        EngineAction::SendDatagram { to, data } if *to == dht_node(1) => {
            dht::krpc::Message::decode(data).ok()
        }
        _ => None,
    });
    assert!(
        matches!(
            reply,
            Some(dht::krpc::Message {
                body: dht::krpc::Body::Response(_),
                ..
            })
        ),
        "{acts:?}"
    );
    // A peer of the torrent with the DHT bit sends `port 7001`: the engine pings it there.
    let conn = accept(&mut e, Time::ZERO, 5000);
    let mut hs = Vec::new();
    Handshake::new(InfoHash([2; 20]), PeerId([0x42; 20]))
        .with_dht()
        .encode(&mut hs);
    crate::wire::Message::Port(7001).encode(&mut hs);
    e.handle_input(Time::ZERO, EngineInput::IncomingData { conn, bytes: &hs });
    let acts = actions(&mut e);
    let pinged: Vec<SocketAddr> = acts
        .iter()
        .filter_map(|a| match a {
            EngineAction::SendDatagram { to, data } => {
                let m = dht::krpc::Message::decode(data).unwrap();
                matches!(
                    m.body,
                    dht::krpc::Body::Query(dht::krpc::Query {
                        method: dht::krpc::Method::Ping,
                        ..
                    })
                )
                .then_some(*to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(pinged, vec![addr(7001)]);
    // Our handshake set the DHT bit and our `port` followed the piece set.
    let sent: Vec<u8> = acts
        .iter()
        .filter_map(|a| match a {
            EngineAction::Torrent {
                torrent,
                action: TorrentAction::Session(Action::Send { bytes, .. }),
            } if *torrent == t => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(Handshake::decode(&sent).unwrap().unwrap().supports_dht());
    assert!(
        sent.windows(7).any(|w| w == [0, 0, 0, 3, 9, 0x1a, 0xe1]),
        "port 6881 sent"
    );
}

#[test]
fn udp_tracker_routes_are_bounded_and_expire() {
    let mut e = Engine::new(EngineConfig::default(), Time::ZERO);
    let tracker = addr(6969);
    let tiers = vec![vec![format!("udp://{tracker}/announce")]];
    let t = e
        .add_torrent(
            Time::ZERO,
            config(1, tiers),
            torrent(1),
            StartState::Verified(Bitfield::new(4)),
            None,
        )
        .unwrap();
    // Requests that no tracker ever answered fill the table, each older than the next.
    for i in 0..MAX_UDP_ROUTES as u32 {
        e.udp_routes
            .insert((addr(1), i.to_be_bytes()), (t, Time::ZERO));
    }
    e.handle_input(Time::from_millis(1), EngineInput::Timeout);
    let request = actions(&mut e)
        .into_iter()
        .find_map(|a| match a {
            EngineAction::Torrent {
                action: TorrentAction::Tracker(TrackerAction::SendUdp { bytes, .. }),
                ..
            } => Some(bytes),
            _ => None,
        })
        .expect("a connect request");
    assert_eq!(
        e.udp_routes.len(),
        MAX_UDP_ROUTES,
        "the table never grows past its bound"
    );
    let tid: [u8; 4] = request[12..16].try_into().unwrap();
    assert!(
        e.udp_routes.contains_key(&(tracker, tid)),
        "the new request is routed"
    );
    // The reply to the newest request still reaches its torrent.
    let mut reply = vec![0, 0, 0, 0];
    reply.extend_from_slice(&tid);
    reply.extend_from_slice(&[7; 8]);
    e.handle_input(
        Time::from_millis(5),
        EngineInput::Datagram {
            from: tracker,
            bytes: &reply,
        },
    );
    assert!(
        actions(&mut e).iter().any(|a| matches!(
            a,
            EngineAction::Torrent {
                action: TorrentAction::Tracker(TrackerAction::SendUdp { .. }),
                ..
            }
        )),
        "the connect reply led to an announce"
    );
    // Two minutes on, the unanswered requests are forgotten.
    e.handle_input(Time::from_secs(121), EngineInput::Timeout);
    drop(actions(&mut e));
    assert!(
        e.udp_routes.keys().all(|(a, _)| *a == tracker),
        "stale routes outlived their 2 minutes"
    );
    assert!(
        e.udp_routes.len() < 16,
        "{} routes left",
        e.udp_routes.len()
    );
}

mod encryption;
