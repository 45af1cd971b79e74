use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::krpc::AnyMessage;
use super::*;
use crate::dht::krpc::*;
use crate::dht::lookup::LookupConfig;
use crate::dht::table::Family;
use crate::dht::*;
use crate::id::InfoHash;
use crate::time::Time;

const T0: Time = Time::ZERO;

fn node(config: DhtConfig) -> Dht {
    Dht::new(config, T0)
}

fn transmits(d: &mut Dht) -> Vec<Transmit> {
    std::iter::from_fn(|| d.poll_transmit()).collect()
}

fn send(d: &mut Dht, now: Time, from: SocketAddr, m: &Message) -> Vec<Transmit> {
    d.handle_input(
        now,
        Input::Datagram {
            from,
            data: m.encode(),
        },
    );
    transmits(d)
}

fn query(tid: &[u8], id: NodeId, method: Method) -> Message {
    Message {
        tid: TransactionId::new(tid).unwrap(),
        body: Body::Query(Query {
            id,
            method,
            want: Want::default(),
        }),
        version: None,
        ip: None,
        read_only: false,
    }
}

/// The one reply in `out`, to `to`, decoded.
fn reply(out: &[Transmit], to: SocketAddr) -> Message {
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, to);
    Message::decode(&out[0].data).unwrap()
}

fn response_of(m: &Message) -> &Response {
    match &m.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn error_of(m: &Message) -> &ErrorReply {
    match &m.body {
        Body::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    }
}

fn them() -> NodeId {
    NodeId([0x11; 20])
}

#[test]
fn dht_node_answers_ping_find_node_get_peers_and_announce() {
    let mut d = node(DhtConfig {
        seed: 1,
        ..DhtConfig::default()
    });
    let me = d.node_id();
    let a = v4(0, 1, 6881);
    let out = send(&mut d, T0, a, &query(b"p1", them(), Method::Ping));
    assert_eq!(out.len(), 2, "{out:?}");
    let r = reply(&out[..1], a);
    assert_eq!(r.tid.as_bytes(), b"p1", "transaction id echoed");
    assert_eq!(response_of(&r).id, me);
    assert_eq!(r.ip, Some(a), "BEP 42: the querier's address as we see it");
    assert_eq!(r.version.as_deref(), Some(&VERSION[..]));
    // The unknown querier is to be pinged before it enters the table.
    let ping = reply(&out[1..], a);
    assert!(
        ping.body
            == Body::Query(Query {
                id: me,
                method: Method::Ping,
                want: Want::default()
            })
    );
    assert!(d.table(Family::V4).unwrap().is_empty());
    let pong = Message {
        tid: ping.tid,
        body: Body::Response(Response {
            id: them(),
            ..Response::default()
        }),
        version: None,
        ip: None,
        read_only: false,
    };
    // From another address, the answer does not count; from the right one, it does.
    assert!(send(&mut d, T0, v4(0, 1, 6882), &pong).is_empty());
    assert_eq!(d.stats().unexpected, 1);
    assert!(send(&mut d, T0, a, &pong).is_empty());
    assert_eq!(d.table(Family::V4).unwrap().len(), 1);
    assert_eq!(d.transactions(), 0);
    let ih = InfoHash([0x22; 20]);
    let r = reply(
        &send(
            &mut d,
            T0,
            a,
            &query(b"g1", them(), Method::GetPeers { info_hash: ih }),
        ),
        a,
    );
    let token = response_of(&r)
        .token
        .clone()
        .expect("get_peers gives a token");
    assert!(response_of(&r).values.is_empty());
    // Announce with that token: the peer is stored under the querier's IP.
    let announce = |port, implied_port, token: Vec<u8>| {
        query(
            b"a1",
            them(),
            Method::AnnouncePeer {
                info_hash: ih,
                port,
                implied_port,
                token,
            },
        )
    };
    let r = reply(
        &send(&mut d, T0, a, &announce(7000, false, token.clone())),
        a,
    );
    assert_eq!(response_of(&r).id, me);
    // implied_port: the UDP source port counts, not `port`.
    let b = v4(0, 1, 5555);
    let r = reply(&send(&mut d, T0, b, &announce(1, true, token.clone())), b);
    assert!(matches!(r.body, Body::Response(_)));
    let r = reply(
        &send(
            &mut d,
            T0,
            a,
            &query(b"g2", them(), Method::GetPeers { info_hash: ih }),
        ),
        a,
    );
    let values: BTreeSet<SocketAddr> = response_of(&r).values.iter().copied().collect();
    assert_eq!(values, BTreeSet::from([v4(0, 1, 7000), v4(0, 1, 5555)]));
    // A token is bound to the IP: another host cannot use it.
    let c = v4(0, 2, 6881);
    let r = reply(
        &send(&mut d, T0, c, &announce(7000, false, token.clone())),
        c,
    );
    assert_eq!(error_of(&r).code, ErrorReply::PROTOCOL);
    assert_eq!(d.stats().bad_tokens, 1);
    // Ten minutes later it has expired.
    let later = T0 + Duration::from_secs(600);
    d.handle_input(later, Input::Timeout);
    let _ = transmits(&mut d);
    let r = reply(&send(&mut d, later, a, &announce(7000, false, token)), a);
    assert_eq!(error_of(&r).code, ErrorReply::PROTOCOL);
}

#[test]
fn dht_node_answers_malformed_queries_with_errors_and_drops_garbage() {
    let mut d = node(DhtConfig::default());
    let a = v4(0, 1, 6881);
    let out = {
        d.handle_input(
            T0,
            Input::Datagram {
                from: a,
                data: b"d1:ad2:id20:abcdefghij0123456789e1:q6:vote_x1:t2:xy1:y1:qe".to_vec(),
            },
        );
        transmits(&mut d)
    };
    let r = reply(&out, a);
    assert_eq!(r.tid.as_bytes(), b"xy");
    assert_eq!(error_of(&r).code, ErrorReply::METHOD_UNKNOWN);
    d.handle_input(
        T0,
        Input::Datagram {
            from: a,
            data: b"d1:ad2:id3:abce1:q4:ping1:t2:xz1:y1:qe".to_vec(),
        },
    );
    let r = reply(&transmits(&mut d), a);
    assert_eq!(error_of(&r).code, ErrorReply::PROTOCOL);
    assert!(error_of(&r).message.contains("id"), "{:?}", error_of(&r));
    for garbage in [
        &b"hello"[..],
        b"d1:t2:aa1:y1:re",
        b"",
        b"d1:rd2:id20:abcdefghij0123456789e1:t2:zz1:y1:re",
    ] {
        d.handle_input(
            T0,
            Input::Datagram {
                from: a,
                data: garbage.to_vec(),
            },
        );
        assert!(transmits(&mut d).is_empty());
    }
    assert_eq!(d.stats().malformed, 5);
    assert_eq!(d.stats().unexpected, 1);
}

#[test]
fn dht_node_rate_limits_queries_per_address() {
    let mut d = node(DhtConfig::default());
    let burst = RateConfig::default().burst as usize;
    let a = v4(0, 1, 6881);
    let mut answered = 0;
    for i in 0..100u16 {
        let out = send(
            &mut d,
            T0,
            a,
            &query(&i.to_be_bytes(), them(), Method::Ping),
        );
        answered += out.iter().filter(|t| t.to == a).count();
    }
    // One reply each for `burst` pings, plus at most one ping of the new node.
    assert!((burst..=burst + 1).contains(&answered), "{answered}");
    assert_eq!(d.stats().rate_limited, 100 - burst as u64);
    // Another address, and the same one a second later, are answered again.
    let b = v4(0, 2, 6881);
    assert!(!send(&mut d, T0, b, &query(b"b", them(), Method::Ping)).is_empty());
    let later = T0 + Duration::from_secs(1);
    assert!(!send(&mut d, later, a, &query(b"c", them(), Method::Ping)).is_empty());
}

/// A node whose tables and stores are full enough that replies could be long: both
/// families, 400 nodes of each offered, 60 peers announced for one info-hash per family.
fn busy_node(amplification: usize) -> (Dht, InfoHash) {
    let mut d = node(DhtConfig {
        seed: 9,
        ipv6: true,
        amplification,
        rate: RateConfig {
            burst: 1_000_000,
            per_second: 1_000_000,
            max_tracked: 100,
        },
        ..DhtConfig::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Feed nodes through responses to the pings the table asks for.
    for i in 0..400u16 {
        for addr in [v4((i >> 8) as u8 + 10, i as u8, 1000), v6(i + 1, 1000)] {
            let id = NodeId::random(&mut rng);
            let out = send(&mut d, T0, addr, &query(b"q", id, Method::Ping));
            // Answer every ping the node sent to this address.
            for t in out {
                let m = Message::decode(&t.data).unwrap();
                if matches!(m.body, Body::Query(_)) && t.to == addr {
                    let ok = Message {
                        tid: m.tid,
                        body: Body::Response(Response {
                            id,
                            ..Response::default()
                        }),
                        version: None,
                        ip: None,
                        read_only: false,
                    };
                    let _ = send(&mut d, T0, addr, &ok);
                }
            }
        }
    }
    assert!(d.table(Family::V4).unwrap().len() > 30);
    assert!(d.table(Family::V6).unwrap().len() > 30);
    let ih = InfoHash([0x44; 20]);
    for i in 0..60u16 {
        for from in [v4(99, i as u8, 2000 + i), v6(0x9900 + i, 2000 + i)] {
            let r = reply(
                &send(
                    &mut d,
                    T0,
                    from,
                    &query(b"g", them(), Method::GetPeers { info_hash: ih }),
                ),
                from,
            );
            let token = response_of(&r).token.clone().unwrap();
            let m = query(
                b"a",
                them(),
                Method::AnnouncePeer {
                    info_hash: ih,
                    port: 3000,
                    implied_port: false,
                    token,
                },
            );
            let out = send(&mut d, T0, from, &m);
            assert!(out.iter().any(|t| t.to == from), "announce answered");
        }
    }
    let _ = transmits(&mut d);
    (d, ih)
}

thread_local! {
    static BUSY: std::cell::RefCell<Option<(Dht, InfoHash)>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn prop_dht_node_replies_never_exceed_a_small_multiple_of_the_query() {
    // Arbitrary messages, and get_peers / find_node with every `want`, to a busy node whose
    // replies are capped at 3 times the query: every reply to the querier stays within that,
    // still decodes, and a get_peers reply keeps its token. The only other datagram to the
    // querier is a ping of the new node, no longer than 100 bytes.
    fn prop(m: AnyMessage, kind: u8, want: u8) -> bool {
        BUSY.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (d, ih) = cell.get_or_insert_with(|| busy_node(3));
            let ih = *ih;
            let from = v4(77, kind, 4000 + u16::from(want));
            let mut m = m.0;
            let mut is_get_peers = false;
            if let Body::Query(q) = &mut m.body {
                match kind % 3 {
                    0 => q.method = Method::GetPeers { info_hash: ih },
                    1 => {
                        q.method = Method::FindNode {
                            target: NodeId(ih.0),
                        }
                    }
                    _ => {}
                }
                is_get_peers = matches!(q.method, Method::GetPeers { .. });
                q.want = Want {
                    n4: want & 1 != 0,
                    n6: want & 2 != 0,
                };
            }
            let data = m.encode();
            d.handle_input(
                T0,
                Input::Datagram {
                    from,
                    data: data.clone(),
                },
            );
            transmits(d).iter().filter(|t| t.to == from).all(|t| {
                match Message::decode(&t.data).map(|m| m.body) {
                    Ok(Body::Query(q)) => q.method == Method::Ping && t.data.len() <= 100,
                    Ok(Body::Response(r)) => {
                        t.data.len() <= 3 * data.len() && (!is_get_peers || r.token.is_some())
                    }
                    Ok(Body::Error(_)) => t.data.len() <= 3 * data.len(),
                    Err(_) => false,
                }
            })
        })
    }
    qc(0x616d_706c, 1000).quickcheck(prop as fn(AnyMessage, u8, u8) -> bool);
}

#[test]
fn dht_node_full_replies_fit_the_default_budget() {
    // With the default factor (8) a plain get_peers (about 100 bytes) gets nodes of both
    // families it asks for, its token and values.
    let (mut d, ih) = busy_node(8);
    let from = v4(78, 1, 1);
    let mut q = query(b"gp", them(), Method::GetPeers { info_hash: ih });
    if let Body::Query(q) = &mut q.body {
        q.want = Want { n4: true, n6: true };
    }
    let len = q.encode().len();
    let out = send(&mut d, T0, from, &q);
    let replies: Vec<&Transmit> = out
        .iter()
        .filter(|t| !matches!(Message::decode(&t.data).unwrap().body, Body::Query(_)))
        .collect();
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0].data.len() <= 8 * len,
        "{} > 8 × {len}",
        replies[0].data.len()
    );
    let m = Message::decode(&replies[0].data).unwrap();
    let r = response_of(&m);
    assert!(r.token.is_some());
    assert!(r.nodes.iter().any(|n| n.addr.is_ipv4()));
    assert!(r.nodes.iter().any(|n| n.addr.is_ipv6()));
    assert!(!r.values.is_empty());
    assert!(
        r.values.iter().all(SocketAddr::is_ipv4),
        "the IPv4 store answers IPv4 queriers"
    );
    // With a tighter budget the values go first, then nodes; the token stays.
    let (mut tight, ih) = busy_node(2);
    let out = send(
        &mut tight,
        T0,
        from,
        &query(b"gp", them(), Method::GetPeers { info_hash: ih }),
    );
    let m = out
        .iter()
        .map(|t| Message::decode(&t.data).unwrap())
        .find(|m| matches!(m.body, Body::Response(_)))
        .unwrap();
    let r = response_of(&m);
    assert!(r.token.is_some());
    assert!(r.values.is_empty() && r.nodes.len() < 8, "{r:?}");
}

/// Many [`Dht`] nodes on a virtual network: every datagram takes 20 ms, except for nodes that
/// are down, which receive nothing.
struct World {
    nodes: Vec<Dht>,
    addrs: Vec<SocketAddr>,
    by_addr: BTreeMap<SocketAddr, usize>,
    down: BTreeSet<usize>,
    wire: BTreeMap<(Time, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    now: Time,
    events: Vec<(usize, DhtEvent)>,
    datagrams: u64,
}

impl World {
    fn new(n: usize, seed: u64) -> World {
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| v4((i / 200) as u8 + 1, (i % 200) as u8 + 1, 6881))
            .collect();
        World::on(addrs, seed)
    }

    /// Nodes at `addrs` (all of one family), each bootstrapping from the first.
    fn on(addrs: Vec<SocketAddr>, seed: u64) -> World {
        let v6 = addrs[0].is_ipv6();
        let nodes = (0..addrs.len())
            .map(|i| {
                Dht::new(
                    DhtConfig {
                        seed: seed * 1000 + i as u64,
                        ipv4: !v6,
                        ipv6: v6,
                        bootstrap: if i == 0 { vec![] } else { vec![addrs[0]] },
                        ..DhtConfig::default()
                    },
                    T0,
                )
            })
            .collect();
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        World {
            nodes,
            addrs,
            by_addr,
            down: BTreeSet::new(),
            wire: BTreeMap::new(),
            seq: 0,
            now: T0,
            events: Vec::new(),
            datagrams: 0,
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        self.nodes[i].handle_input(self.now, input);
        self.collect(i);
    }

    fn collect(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.seq += 1;
            self.datagrams += 1;
            let at = self.now + Duration::from_millis(20);
            self.wire
                .insert((at, self.seq), (self.addrs[i], t.to, t.data));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
    }

    /// Runs until `until` (virtual time) or until `done` holds.
    fn run(&mut self, until: Time, mut done: impl FnMut(&World) -> bool) {
        for _ in 0..1_000_000 {
            if done(self) {
                return;
            }
            let next_msg = self.wire.keys().next().map(|k| k.0);
            let next_timer = self.nodes.iter().filter_map(Dht::poll_timeout).min();
            let Some(next) = [next_msg, next_timer].into_iter().flatten().min() else {
                return;
            };
            if next > until {
                return;
            }
            self.now = self.now.max(next);
            while let Some((&key, _)) = self.wire.iter().next() {
                if key.0 > self.now {
                    break;
                }
                let (from, to, data) = self.wire.remove(&key).unwrap();
                if let Some(&j) = self.by_addr.get(&to)
                    && !self.down.contains(&j)
                {
                    self.input(j, Input::Datagram { from, data });
                }
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.input(i, Input::Timeout);
                }
            }
        }
        panic!("simulation did not settle");
    }

    fn finished(&self, node: usize, id: LookupId) -> bool {
        self.events.iter().any(|(i, e)| {
            *i == node
                && matches!(e, DhtEvent::LookupDone { id: x, .. } | DhtEvent::Announced { id: x, .. } if *x == id)
        })
    }
}

#[test]
fn dht_nodes_bootstrap_announce_and_find_each_other() {
    let mut w = World::new(80, 1);
    // Nodes join one after another, each bootstrapping from node 0.
    for i in 1..w.nodes.len() {
        w.input(i, Input::Bootstrap { id: LookupId(1) });
        let deadline = w.now + Duration::from_secs(60);
        w.run(deadline, |w| w.finished(i, LookupId(1)));
        assert!(w.finished(i, LookupId(1)), "node {i} bootstrapped");
    }
    // A second round of bootstraps lets the early joiners learn the later ones.
    for i in 0..w.nodes.len() {
        w.input(i, Input::Bootstrap { id: LookupId(2) });
    }
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |w| {
        (0..w.nodes.len()).all(|i| w.finished(i, LookupId(2)))
    });
    // Lookups of their own ids teach nodes about their neighbourhood; the far buckets fill
    // when they are refreshed, 15 minutes on.
    let far_empty = w
        .nodes
        .iter()
        .filter(|d| d.table(Family::V4).unwrap().bucket(0).is_empty())
        .count();
    let deadline = w.now + Duration::from_secs(16 * 60);
    w.run(deadline, |_| false);
    for (i, d) in w.nodes.iter().enumerate() {
        let t = d.table(Family::V4).unwrap();
        t.check_invariants();
        assert!(t.len() >= 16, "node {i} knows only {} nodes", t.len());
        assert!(!t.bucket(0).is_empty(), "node {i}: bucket 0 still empty");
    }
    assert!(far_empty > 0, "the refresh had nothing to fill");
    // Node 7 announces; node 60 looks the torrent up and finds node 7's peer.
    let ih = InfoHash([0x5e; 20]);
    w.input(
        7,
        Input::Announce {
            id: LookupId(3),
            info_hash: ih,
            port: 7007,
            implied_port: false,
        },
    );
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |w| w.finished(7, LookupId(3)));
    let acked = w.events.iter().find_map(|(i, e)| match e {
        DhtEvent::Announced {
            id,
            acked,
            info_hash,
        } if *i == 7 && *id == LookupId(3) => {
            assert_eq!(*info_hash, ih);
            Some(*acked)
        }
        _ => None,
    });
    assert_eq!(acked, Some(8), "announced to the 8 closest nodes");
    w.input(
        60,
        Input::GetPeers {
            id: LookupId(4),
            info_hash: ih,
        },
    );
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |w| w.finished(60, LookupId(4)));
    let found: BTreeSet<SocketAddr> = w
        .events
        .iter()
        .filter_map(|(i, e)| match e {
            DhtEvent::Peers { id, peers, .. } if *i == 60 && *id == LookupId(4) => {
                Some(peers.clone())
            }
            _ => None,
        })
        .flatten()
        .collect();
    let node7 = w.addrs[7];
    assert_eq!(found, BTreeSet::from([SocketAddr::new(node7.ip(), 7007)]));
    // Nobody was flooded: the whole run took a bounded number of datagrams.
    assert!(w.datagrams < 80 * 400, "{} datagrams", w.datagrams);
    for d in &w.nodes {
        assert_eq!(d.stats().rate_limited, 0);
        assert_eq!(d.stats().malformed, 0);
    }
}

#[test]
fn dht_nodes_replace_dead_nodes_and_refresh_buckets() {
    let mut w = World::new(40, 2);
    for i in 1..w.nodes.len() {
        w.input(i, Input::Bootstrap { id: LookupId(1) });
        let deadline = w.now + Duration::from_secs(60);
        w.run(deadline, |w| w.finished(i, LookupId(1)));
    }
    for i in 0..w.nodes.len() {
        w.input(i, Input::Bootstrap { id: LookupId(2) });
    }
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |_| false);
    // Ten nodes go down. After an hour of refreshes and pings (no user traffic) the others'
    // tables no longer hand them out as live: every entry still there has failed, or is gone.
    let dead: BTreeSet<usize> = (30..40).collect();
    w.down = dead.clone();
    let dead_addrs: BTreeSet<SocketAddr> = dead.iter().map(|&i| w.addrs[i]).collect();
    let deadline = w.now + Duration::from_secs(3600);
    w.run(deadline, |_| false);
    for (i, d) in w.nodes.iter().enumerate().take(30) {
        let t = d.table(Family::V4).unwrap();
        t.check_invariants();
        for e in t.entries() {
            if dead_addrs.contains(&e.info().addr) {
                assert!(
                    e.failures() > 0,
                    "node {i} still trusts dead {}",
                    e.info().addr
                );
            }
        }
        let handed_out = t.closest(&d.node_id(), 200);
        let dead_handed = handed_out
            .iter()
            .filter(|n| dead_addrs.contains(&n.addr))
            .count();
        assert!(
            dead_handed <= 2,
            "node {i} hands out {dead_handed} dead nodes"
        );
        assert!(t.len() >= 10, "node {i}: {} nodes", t.len());
    }
    // The hour was quiet: refreshes and pings only, a bounded number of datagrams.
    assert!(w.datagrams < 40 * 2000, "{} datagrams", w.datagrams);
}

#[test]
fn dht_node_ipv6_answers_with_nodes6_and_follows_want() {
    let (mut d, ih) = busy_node(8);
    let from6 = v6(0xabcd, 6881);
    let find = |want: Want| {
        let mut q = query(
            b"f6",
            them(),
            Method::FindNode {
                target: NodeId(ih.0),
            },
        );
        if let Body::Query(q) = &mut q.body {
            q.want = want;
        }
        q
    };
    let families = |out: &[Transmit]| {
        let m = out
            .iter()
            .map(|t| Message::decode(&t.data).unwrap())
            .find(|m| matches!(m.body, Body::Response(_)))
            .expect("a reply");
        let r = response_of(&m).clone();
        (
            r.nodes.iter().filter(|n| n.addr.is_ipv4()).count(),
            r.nodes.iter().filter(|n| n.addr.is_ipv6()).count(),
        )
    };
    // No `want`: the querier's family. `want`: what it names.
    assert_eq!(
        families(&send(&mut d, T0, from6, &find(Want::default()))),
        (0, 8)
    );
    let n4 = Want {
        n4: true,
        n6: false,
    };
    assert_eq!(families(&send(&mut d, T0, from6, &find(n4))), (8, 0));
    let both = Want { n4: true, n6: true };
    assert_eq!(families(&send(&mut d, T0, from6, &find(both))), (8, 8));
    assert_eq!(
        families(&send(&mut d, T0, v4(1, 1, 1), &find(Want::default()))),
        (8, 0)
    );
    // get_peers over IPv6 hands out the IPv6 store's peers.
    let out = send(
        &mut d,
        T0,
        from6,
        &query(b"g6", them(), Method::GetPeers { info_hash: ih }),
    );
    let m = out
        .iter()
        .map(|t| Message::decode(&t.data).unwrap())
        .find(|m| matches!(m.body, Body::Response(_)))
        .unwrap();
    let r = response_of(&m);
    assert!(
        !r.values.is_empty() && r.values.iter().all(SocketAddr::is_ipv6),
        "{r:?}"
    );

    // A node without IPv6 ignores IPv6 datagrams.
    let mut only4 = node(DhtConfig::default());
    assert!(only4.table(Family::V6).is_none());
    assert!(send(&mut only4, T0, from6, &query(b"p", them(), Method::Ping)).is_empty());
}

#[test]
fn dht_node_memory_stays_bounded_under_a_query_flood() {
    let config = DhtConfig {
        seed: 4,
        ipv6: true,
        max_transactions: 64,
        rate: RateConfig {
            burst: 3,
            per_second: 1,
            max_tracked: 500,
        },
        store: StoreConfig {
            max_torrents: 20,
            max_peers_per_torrent: 10,
            ..StoreConfig::default()
        },
        ..DhtConfig::default()
    };
    let mut d = node(config);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut now = T0;
    for i in 0..30_000u32 {
        now += Duration::from_millis(3);
        let from = if rng.random_bool(0.5) {
            v4(rng.random(), rng.random(), rng.random_range(1..100))
        } else {
            v6(rng.random(), rng.random_range(1..100))
        };
        let id = NodeId::random(&mut rng);
        let ih = InfoHash([rng.random_range(0..50u8); 20]);
        let method = match i % 4 {
            0 => Method::Ping,
            1 => Method::FindNode {
                target: NodeId::random(&mut rng),
            },
            2 => Method::GetPeers { info_hash: ih },
            _ => Method::AnnouncePeer {
                info_hash: ih,
                port: 1,
                implied_port: true,
                token: d_token(&d, from),
            },
        };
        let out = send(&mut d, now, from, &query(&i.to_be_bytes(), id, method));
        // One reply and at most one ping per datagram.
        assert!(out.len() <= 2, "{out:?}");
        if i % 1000 == 0 {
            d.handle_input(now, Input::Timeout);
            let _ = transmits(&mut d);
        }
        assert!(d.transactions() <= 64);
    }
    for f in [Family::V4, Family::V6] {
        let t = d.table(f).unwrap();
        t.check_invariants();
        assert_eq!(t.len(), 0, "nobody answered our pings: no node is trusted");
    }
    assert!(d.stats().answered > 10_000);
}

/// The token `d` would give `from` (as its get_peers reply would).
fn d_token(d: &Dht, from: SocketAddr) -> Vec<u8> {
    d.token_for(from.ip()).to_vec()
}

#[test]
fn dht_ping_input_puts_an_answering_node_in_the_table() {
    let mut w = World::new(3, 7);
    // Node 1 hears of node 2 (as from a peer's `port` message); nothing else is known.
    w.input(1, Input::Ping { addr: w.addrs[2] });
    assert_eq!(w.nodes[1].transactions(), 1);
    // A second ping to the same address while the first is in flight is not sent.
    w.input(1, Input::Ping { addr: w.addrs[2] });
    assert_eq!(w.nodes[1].transactions(), 1);
    let deadline = w.now + Duration::from_secs(5);
    w.run(deadline, |w| w.nodes[1].node_count() == 1);
    let t = w.nodes[1].table(Family::V4).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.entries().next().unwrap().info().addr, w.addrs[2]);
    // A ping to a family that is off, or to port 0, sends nothing.
    w.input(1, Input::Ping { addr: v6(1, 6881) });
    w.input(1, Input::Ping { addr: v4(9, 9, 0) });
    assert_eq!(w.nodes[1].transactions(), 0);
}

#[test]
fn dht_added_bootstrap_addresses_and_a_saved_state_rejoin_the_network() {
    let mut w = World::new(30, 8);
    for i in 1..w.nodes.len() {
        w.input(i, Input::Bootstrap { id: LookupId(1) });
        let deadline = w.now + Duration::from_secs(60);
        w.run(deadline, |w| w.finished(i, LookupId(1)));
    }
    // A node that starts knowing nobody finds nothing; told an address later, it joins.
    let late = v4(50, 1, 6881);
    let mut fresh = Dht::new(
        DhtConfig {
            seed: 99,
            ..DhtConfig::default()
        },
        w.now,
    );
    fresh.handle_input(w.now, Input::Bootstrap { id: LookupId(5) });
    assert!(fresh.poll_transmit().is_none(), "no contact, no query");
    fresh.handle_input(
        w.now,
        Input::AddBootstrap {
            addrs: vec![w.addrs[3], w.addrs[3]],
        },
    );
    w.by_addr.insert(late, w.nodes.len());
    w.addrs.push(late);
    w.nodes.push(fresh);
    let n = w.nodes.len() - 1;
    w.events.clear();
    w.input(n, Input::Bootstrap { id: LookupId(6) });
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |w| w.finished(n, LookupId(6)));
    assert!(w.nodes[n].node_count() >= 8, "{}", w.nodes[n].node_count());

    // Its saved state brings it back: same id, and its nodes answer a bootstrap.
    let saved = w.nodes[n].saved_state();
    assert_eq!(saved.node_id, w.nodes[n].node_id());
    assert_eq!(saved.nodes.len(), w.nodes[n].node_count());
    let back = state::SavedState::decode(&saved.encode()).unwrap();
    let restarted = Dht::new(
        DhtConfig {
            seed: 100,
            node_id: Some(back.node_id),
            bootstrap: back.nodes,
            ..DhtConfig::default()
        },
        w.now,
    );
    assert_eq!(restarted.node_id(), saved.node_id);
    w.nodes[n] = restarted;
    w.events.clear();
    w.input(n, Input::Bootstrap { id: LookupId(7) });
    let deadline = w.now + Duration::from_secs(60);
    w.run(deadline, |w| w.finished(n, LookupId(7)));
    let answered = w.events.iter().find_map(|(i, e)| match e {
        DhtEvent::LookupDone { id, nodes } if *i == n && *id == LookupId(7) => Some(*nodes),
        _ => None,
    });
    assert_eq!(answered, Some(8));
}

/// Every node on one address, told apart by port, as on a machine's loopback: hub, seeder and
/// leecher on `[::1]` (or `127.0.0.1`). The leecher announces first (a magnet download does),
/// then the seeder; each finds the other's peer through the hub, not only its own.
#[test]
fn dht_nodes_sharing_one_ip_find_each_others_peers() {
    for ip in [
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    ] {
        let addrs = (0..3).map(|i| SocketAddr::new(ip, 40_000 + i)).collect();
        let mut w = World::on(addrs, 21);
        let ih = InfoHash([0x66; 20]);
        let family = Family::of(&w.addrs[0]);
        for (node, port, id) in [(2, 5002, 1), (1, 5001, 2)] {
            w.input(
                node,
                Input::Bootstrap {
                    id: LookupId(10 + id),
                },
            );
            let deadline = w.now + Duration::from_secs(30);
            w.run(deadline, |w| w.finished(node, LookupId(10 + id)));
            let announce = Input::Announce {
                id: LookupId(id),
                info_hash: ih,
                port,
                implied_port: false,
            };
            w.input(node, announce);
            let deadline = w.now + Duration::from_secs(30);
            w.run(deadline, |w| w.finished(node, LookupId(id)));
        }
        for (node, other) in [(2, 5001), (1, 5002)] {
            let id = LookupId(20 + node as u64);
            w.input(node, Input::GetPeers { id, info_hash: ih });
            let deadline = w.now + Duration::from_secs(30);
            w.run(deadline, |w| w.finished(node, id));
            let found: BTreeSet<SocketAddr> = w
                .events
                .iter()
                .filter_map(|(i, e)| match e {
                    DhtEvent::Peers { id: x, peers, .. } if *i == node && *x == id => {
                        Some(peers.clone())
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            assert!(
                found.contains(&SocketAddr::new(ip, other)),
                "{ip}: node {node} found {found:?}; tables {:?}",
                w.nodes
                    .iter()
                    .map(|d| d.table(family).unwrap().len())
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// The reply of `id` to the query in `t`, saying it saw us at `seen_as`.
fn reply_seeing(t: &Transmit, id: NodeId, seen_as: SocketAddr) -> Message {
    let q = Message::decode(&t.data).unwrap();
    Message {
        tid: q.tid,
        body: Body::Response(Response {
            id,
            ..Response::default()
        }),
        version: None,
        ip: Some(seen_as),
        read_only: false,
    }
}

/// BEP 42: once three nodes we queried agree on our public IP and our id does not fit it, the
/// node takes an id that does, and keeps the nodes it knew; two votes, a local IP, or replies to
/// no query of ours change nothing.
#[test]
fn dht_node_takes_an_id_bound_to_its_external_ip_once_three_replies_agree() {
    let public = |x: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, x)), 6881);
    let routers: Vec<SocketAddr> = (1..=5).map(public).collect();
    let start = NodeId([0x11; 20]);
    let mut d = node(DhtConfig {
        seed: 42,
        node_id: Some(start),
        bootstrap: routers.clone(),
        lookup: LookupConfig {
            alpha: 5,
            ..LookupConfig::default()
        },
        ..DhtConfig::default()
    });
    d.handle_input(T0, Input::Bootstrap { id: LookupId(1) });
    let queries = transmits(&mut d);
    assert_eq!(queries.len(), 5, "{queries:?}");
    let ours = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 40_000);
    // An unsolicited reply claiming an IP is not a vote.
    let stray = reply_seeing(&queries[0], NodeId([0x77; 20]), ours);
    let mut stray = stray;
    stray.tid = TransactionId::new(b"zz").unwrap();
    let _ = send(&mut d, T0, public(9), &stray);
    // A local address is no reason to change ids, whoever reports it.
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5)), 40_000);
    for (i, q) in queries.iter().enumerate().take(2) {
        let id = NodeId([0x20 + i as u8; 20]);
        let _ = send(&mut d, T0, q.to, &reply_seeing(q, id, ours));
        assert_eq!(d.node_id(), start, "after {} votes", i + 1);
    }
    assert_eq!(d.external_ip(), None);
    let q = &queries[2];
    let _ = send(
        &mut d,
        T0,
        q.to,
        &reply_seeing(q, NodeId([0x30; 20]), local),
    );
    assert_eq!(d.node_id(), start, "a dissenting local vote");
    let q = &queries[3];
    let _ = send(&mut d, T0, q.to, &reply_seeing(q, NodeId([0x40; 20]), ours));
    assert_eq!(d.external_ip(), Some(ours.ip()));
    let new = d.node_id();
    assert_ne!(new, start);
    assert!(secure_id::is_valid(&new, ours.ip()));
    // The four nodes that answered are still in the table, under the new id.
    let t = d.table(Family::V4).unwrap();
    t.check_invariants();
    assert_eq!(t.len(), 4);
    assert_eq!(t.own_id(), new);
    assert_eq!(d.saved_state().node_id, new);
    // More votes for the same IP keep the id.
    let q = &queries[4];
    let _ = send(&mut d, T0, q.to, &reply_seeing(q, NodeId([0x50; 20]), ours));
    assert_eq!(d.node_id(), new);
}
