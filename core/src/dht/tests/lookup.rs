use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::dht::krpc::{Method, NodeInfo, Response};
use crate::dht::lookup::*;
use crate::dht::table::{Family, RoutingTable};
use crate::time::Time;

const T0: Time = Time::ZERO;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers after 50 ms.
    Live,
    /// Answers after 5 s: past `slow_after`, before `query_timeout`.
    Slow,
    /// Never answers.
    Dead,
}

struct SimNode {
    info: NodeInfo,
    table: RoutingTable,
    behaviour: Behaviour,
    /// Peers announced to this node, by info-hash.
    values: BTreeMap<NodeId, Vec<SocketAddr>>,
}

/// A simulated DHT: every node's routing table was filled by inserting all the others in a
/// random order, as if each had answered it once; tables are never changed afterwards.
struct Net {
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
}

impl Net {
    fn new(n: usize, seed: u64, dead: usize, slow: usize) -> Net {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let infos: Vec<NodeInfo> = (0..n)
            .map(|i| NodeInfo {
                id: NodeId::random(&mut rng),
                addr: v4((i / 250) as u8, (i % 250) as u8 + 1, 6881),
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let mut table = RoutingTable::new(info.id, Family::V4, rng.random(), T0);
            let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            for a in 0..order.len() {
                let b = rng.random_range(a..order.len());
                order.swap(a, b);
            }
            for j in order {
                let _ = table.handle_response(T0, infos[j].id, infos[j].addr);
            }
            // The first `dead` nodes after node 0 never answer, the next `slow` are slow.
            let behaviour = match i {
                0 => Behaviour::Live,
                i if i <= dead => Behaviour::Dead,
                i if i <= dead + slow => Behaviour::Slow,
                _ => Behaviour::Live,
            };
            nodes.push(SimNode {
                info: *info,
                table,
                behaviour,
                values: BTreeMap::new(),
            });
        }
        // Every node but node 0 has noticed the dead ones (two failed queries: bad, never
        // handed out). Without this no lookup could be exact: a reply holds 8 nodes, and a dead
        // one among them hides the 9th, which nobody else may name.
        let dead_nodes: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.behaviour == Behaviour::Dead)
            .map(|n| n.info)
            .collect();
        for node in nodes.iter_mut().skip(1) {
            for d in &dead_nodes {
                node.table.handle_failure(T0, d.id, d.addr);
                node.table.handle_failure(T0, d.id, d.addr);
            }
        }
        let by_addr = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.info.addr, i))
            .collect();
        Net { nodes, by_addr }
    }

    /// The `n` closest nodes to `target` that answer, by brute force, leaving out `except`.
    fn true_closest(&self, target: &NodeId, n: usize, except: usize) -> Vec<NodeInfo> {
        let mut live: Vec<NodeInfo> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != except && s.behaviour != Behaviour::Dead)
            .map(|(_, s)| s.info)
            .collect();
        live.sort_by_key(|i| i.id.distance(target));
        live.truncate(n);
        live
    }

    fn answer(&self, i: usize, method: &Method) -> Response {
        let node = &self.nodes[i];
        let (target, peers) = match method {
            Method::FindNode { target } => (*target, false),
            Method::GetPeers { info_hash } => (NodeId::from(*info_hash), true),
            other => panic!("lookups do not send {other:?}"),
        };
        Response {
            id: node.info.id,
            nodes: node.table.closest(&target, 8),
            values: if peers {
                node.values.get(&target).cloned().unwrap_or_default()
            } else {
                Vec::new()
            },
            token: peers.then(|| node.info.id.0[..4].to_vec()),
        }
    }
}

struct Outcome {
    queried: Vec<SocketAddr>,
    elapsed: Time,
}

/// Runs `lookup` against `net` on a virtual clock until it is done; checks on the way that no
/// address is asked twice and that alpha holds.
fn drive(lookup: &mut Lookup, net: &Net, alpha: usize, slow_after: Duration) -> Outcome {
    let mut now = T0;
    // Delivery time, sequence → (from, response).
    let mut wire: BTreeMap<(Time, u64), (SocketAddr, Response)> = BTreeMap::new();
    let mut seq = 0u64;
    let mut queried = Vec::new();
    let mut sent_at: BTreeMap<SocketAddr, Time> = BTreeMap::new();
    let method = lookup.method();
    for _ in 0..100_000 {
        while let Some(q) = lookup.poll_query(now) {
            assert!(!queried.contains(&q.addr), "{} asked twice", q.addr);
            queried.push(q.addr);
            sent_at.insert(q.addr, now);
            let i = net.by_addr[&q.addr];
            let delay = match net.nodes[i].behaviour {
                Behaviour::Live => Some(Duration::from_millis(50)),
                Behaviour::Slow => Some(Duration::from_secs(5)),
                Behaviour::Dead => None,
            };
            if let Some(d) = delay {
                seq += 1;
                wire.insert((now + d, seq), (q.addr, net.answer(i, &method)));
            }
        }
        let active = sent_at.values().filter(|&&t| now < t + slow_after).count();
        assert!(active <= alpha, "{active} queries active at {now}");
        if lookup.is_done() {
            return Outcome {
                queried,
                elapsed: now,
            };
        }
        let next_msg = wire.keys().next().map(|k| k.0);
        let next = [next_msg, lookup.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a running lookup waits for something");
        assert!(next >= now);
        now = next;
        while let Some((&(t, s), _)) = wire.iter().next() {
            if t > now {
                break;
            }
            let (from, resp) = wire.remove(&(t, s)).unwrap();
            sent_at.remove(&from);
            lookup.handle_response(now, from, &resp);
        }
        lookup.handle_timeout(now);
        sent_at.retain(|_, t| now < *t + Duration::from_secs(10));
    }
    panic!("lookup did not finish");
}

fn start(net: &Net, from: usize, target: NodeId, kind: LookupKind) -> Lookup {
    let me = &net.nodes[from];
    Lookup::new(
        me.info.id,
        target,
        kind,
        Family::V4,
        LookupConfig::default(),
        me.table.closest(&target, 8),
    )
}

#[test]
fn dht_lookup_finds_the_8_closest_in_a_simulated_network() {
    let net = Net::new(300, 1, 0, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for round in 0..20 {
        let target = NodeId::random(&mut rng);
        let from = round * 13 % 300;
        let mut l = start(&net, from, target, LookupKind::FindNode);
        let out = drive(&mut l, &net, 3, Duration::from_secs(2));
        let found: Vec<NodeInfo> = l.closest_responded().into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, net.true_closest(&target, 8, from), "round {round}");
        // A lookup in 300 nodes takes a few dozen queries, not a flood.
        assert!(out.queried.len() < 60, "{} queries", out.queried.len());
        assert!(out.elapsed < Time::from_secs(2), "took {}", out.elapsed);
    }
}

#[test]
fn dht_lookup_routes_around_dead_and_slow_nodes() {
    // 40 nodes never answer and 40 answer late; our own table (node 0's) still holds the dead
    // ones. The lookup still ends with the 8 closest nodes that answer.
    let net = Net::new(300, 2, 40, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut asked = BTreeMap::new();
    for round in 0..20 {
        let target = NodeId::random(&mut rng);
        let from = 0;
        let mut l = start(&net, from, target, LookupKind::FindNode);
        let out = drive(&mut l, &net, 3, Duration::from_secs(2));
        let found: Vec<NodeInfo> = l.closest_responded().into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, net.true_closest(&target, 8, from), "round {round}");
        assert!(out.queried.len() <= LookupConfig::default().max_queries);
        // Bounded by the timeouts: a dead node costs at most one query timeout.
        assert!(out.elapsed < Time::from_secs(120), "took {}", out.elapsed);
        for a in out.queried {
            *asked
                .entry(net.nodes[net.by_addr[&a]].behaviour as u8)
                .or_insert(0) += 1;
        }
    }
    // The lookups did meet dead and slow nodes.
    assert!(
        asked.get(&(Behaviour::Dead as u8)).is_some_and(|&n| n >= 5),
        "{asked:?}"
    );
    assert!(
        asked.get(&(Behaviour::Slow as u8)).is_some_and(|&n| n >= 5),
        "{asked:?}"
    );
}

#[test]
fn dht_get_peers_lookup_collects_values_and_tokens() {
    let mut net = Net::new(300, 3, 10, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let info_hash = NodeId::random(&mut rng);
    // The 8 live nodes closest to the info-hash hold announced peers, 5 each.
    let holders = net.true_closest(&info_hash, 8, 0);
    let mut expected = BTreeSet::new();
    for (k, h) in holders.iter().enumerate() {
        let i = net.by_addr[&h.addr];
        let peers: Vec<SocketAddr> = (0..5).map(|p| v4(200, k as u8, 1000 + p)).collect();
        expected.extend(peers.iter().copied());
        net.nodes[i].values.insert(info_hash, peers);
    }
    let mut l = start(&net, 0, info_hash, LookupKind::GetPeers);
    assert!(matches!(l.method(), Method::GetPeers { .. }));
    let _ = drive(&mut l, &net, 3, Duration::from_secs(2));
    let polled: BTreeSet<SocketAddr> = std::iter::from_fn(|| l.poll_peer()).collect();
    assert_eq!(&polled, l.peers());
    assert_eq!(polled, expected);
    let closest = l.closest_responded();
    assert_eq!(closest.iter().map(|(n, _)| *n).collect::<Vec<_>>(), holders);
    for (n, token) in closest {
        assert_eq!(token.as_deref(), Some(&n.id.0[..4]), "token of {n:?}");
    }
    assert!(l.poll_peer().is_none(), "each peer once");
}

fn node(id_byte: u8, port: u16) -> NodeInfo {
    NodeInfo {
        id: NodeId([id_byte; 20]),
        addr: v4(9, id_byte, port),
    }
}

fn response(id: NodeId, nodes: Vec<NodeInfo>) -> Response {
    Response {
        id,
        nodes,
        values: vec![],
        token: None,
    }
}

#[test]
fn dht_lookup_keeps_alpha_skips_strangers_and_wrong_ids() {
    let target = NodeId([0; 20]);
    let own = NodeId([0xff; 20]);
    let seeds: Vec<NodeInfo> = (1..=10).map(|b| node(b, 1)).collect();
    let mut l = Lookup::new(
        own,
        target,
        LookupKind::FindNode,
        Family::V4,
        LookupConfig::default(),
        seeds,
    );
    let q: Vec<LookupQuery> = std::iter::from_fn(|| l.poll_query(T0)).collect();
    assert_eq!(q.len(), 3, "alpha");
    assert_eq!(q[0].id, Some(NodeId([1; 20])), "closest first");
    // An answer from an address never asked is ignored; one with another id fails the node.
    l.handle_response(
        T0,
        v4(7, 7, 7),
        &response(NodeId([0; 20]), vec![node(0, 5)]),
    );
    l.handle_response(
        T0,
        q[0].addr,
        &response(NodeId([0x42; 20]), vec![node(0, 5)]),
    );
    assert!(l.closest_responded().is_empty());
    // The failed node freed a slot: one more query, and it goes to the 4th closest.
    let more: Vec<LookupQuery> = std::iter::from_fn(|| l.poll_query(T0)).collect();
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].id, Some(NodeId([4; 20])));
    // After slow_after the three in flight stop counting: three more go out.
    assert_eq!(l.poll_timeout(), Some(T0 + Duration::from_secs(2)));
    let later = T0 + Duration::from_secs(2);
    l.handle_timeout(later);
    let q2: Vec<LookupQuery> = std::iter::from_fn(|| l.poll_query(later)).collect();
    assert_eq!(q2.len(), 3);
    // A candidate naming us or an unusable address adds nothing to ask.
    l.handle_response(
        later,
        q[1].addr,
        &response(
            NodeId([2; 20]),
            vec![
                NodeInfo {
                    id: own,
                    addr: v4(1, 1, 1),
                },
                NodeInfo {
                    id: NodeId([0; 20]),
                    addr: v4(1, 1, 0),
                },
                NodeInfo {
                    id: NodeId([0; 20]),
                    addr: v6(1, 1),
                },
            ],
        ),
    );
    assert_eq!(l.closest_responded().len(), 1);
    // Queries in flight for 10 s fail.
    l.handle_timeout(T0 + Duration::from_secs(10));
    assert!(
        l.poll_timeout()
            .is_some_and(|t| t > T0 + Duration::from_secs(10))
    );
}

#[test]
fn dht_lookup_bootstraps_from_addresses_without_ids() {
    let target = NodeId([0; 20]);
    let own = NodeId([0xff; 20]);
    let mut l = Lookup::new(
        own,
        target,
        LookupKind::FindNode,
        Family::V4,
        LookupConfig::default(),
        [],
    );
    assert!(l.is_done(), "nothing to ask");
    let router = v4(1, 2, 3);
    l.add_bootstrap(router);
    l.add_bootstrap(router);
    assert!(!l.is_done());
    assert_eq!(
        l.poll_query(T0),
        Some(LookupQuery {
            addr: router,
            id: None
        })
    );
    assert_eq!(l.poll_query(T0), None, "asked once");
    l.handle_response(T0, router, &response(NodeId([0x80; 20]), vec![node(3, 1)]));
    let q = l.poll_query(T0).unwrap();
    assert_eq!(q.id, Some(NodeId([3; 20])));
    l.handle_response(T0, q.addr, &response(NodeId([3; 20]), vec![]));
    assert!(l.is_done());
    let ids: Vec<NodeId> = l.closest_responded().iter().map(|(n, _)| n.id).collect();
    assert_eq!(ids, vec![NodeId([3; 20]), NodeId([0x80; 20])]);
}

#[test]
fn dht_lookup_stops_at_max_queries_against_endless_fake_nodes() {
    // Every answer names 8 new nodes closer to the target than anything before; none of them
    // answer usefully. The lookup stops after max_queries.
    let target = NodeId([0; 20]);
    let own = NodeId([0xff; 20]);
    let config = LookupConfig {
        max_queries: 30,
        max_candidates: 20,
        ..LookupConfig::default()
    };
    let mut l = Lookup::new(
        own,
        target,
        LookupKind::FindNode,
        Family::V4,
        config,
        [node(0x7f, 1)],
    );
    let mut next_id: u32 = 0x00ff_ffff;
    let mut port = 10u16;
    for _ in 0..1000 {
        let Some(q) = l.poll_query(T0) else {
            break;
        };
        let fakes: Vec<NodeInfo> = (0..8)
            .map(|_| {
                next_id -= 1;
                port += 1;
                let mut id = [0u8; 20];
                id[..4].copy_from_slice(&next_id.to_be_bytes());
                NodeInfo {
                    id: NodeId(id),
                    addr: v4(5, (port >> 8) as u8, port),
                }
            })
            .collect();
        l.handle_response(T0, q.addr, &response(q.id.unwrap(), fakes));
    }
    assert_eq!(l.queries_sent(), 30);
    assert!(l.is_done());
    assert_eq!(l.poll_query(T0), None);
}

#[derive(Clone, Debug)]
struct Reply {
    /// Answer (true) or fail (false).
    answer: bool,
    /// Nodes named: ids and ports from a small space so names repeat.
    nodes: Vec<(u8, u8)>,
}

impl Arbitrary for Reply {
    fn arbitrary(g: &mut Gen) -> Reply {
        Reply {
            answer: u8::arbitrary(g) % 4 != 0,
            nodes: (0..usize::arbitrary(g) % 10)
                .map(|_| (u8::arbitrary(g), u8::arbitrary(g) % 4))
                .collect(),
        }
    }
}

#[test]
fn prop_dht_lookup_terminates_asks_each_address_once_and_keeps_alpha() {
    fn prop(replies: Vec<Reply>, seeds: Vec<u8>) -> bool {
        let target = NodeId([0x33; 20]);
        let own = NodeId([0x34; 20]);
        let info = |b: u8, p: u8| NodeInfo {
            id: NodeId([b; 20]),
            addr: v4(b, p, 100 + u16::from(p)),
        };
        let mut l = Lookup::new(
            own,
            target,
            LookupKind::FindNode,
            Family::V4,
            LookupConfig::default(),
            seeds.iter().map(|&b| info(b, 0)),
        );
        let mut asked = BTreeSet::new();
        let mut replies = replies.into_iter();
        let mut now = T0;
        for _ in 0..1000 {
            let batch: Vec<LookupQuery> = std::iter::from_fn(|| l.poll_query(now)).collect();
            if batch.len() > 3 {
                return false;
            }
            for q in &batch {
                if !asked.insert(q.addr) {
                    return false;
                }
            }
            if l.is_done() {
                return l.poll_query(now).is_none() && l.closest_responded().len() <= 8;
            }
            for q in batch {
                match replies.next() {
                    Some(r) if r.answer => {
                        let nodes = r.nodes.iter().map(|&(b, p)| info(b, p)).collect();
                        l.handle_response(now, q.addr, &response(q.id.unwrap(), nodes));
                    }
                    Some(_) => l.handle_failure(now, q.addr),
                    // Out of scripted replies: everything else stays silent.
                    None => {}
                }
            }
            match l.poll_timeout() {
                Some(t) => now = now.max(t),
                None => now += Duration::from_secs(1),
            }
            l.handle_timeout(now);
        }
        false
    }
    qc(0x6c6f_6f6b, 1000).quickcheck(prop as fn(Vec<Reply>, Vec<u8>) -> bool);
}
