use std::collections::BTreeSet;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use super::*;
use crate::dht::krpc::NodeInfo;
use crate::dht::table::*;
use crate::time::Time;

const T0: Time = Time::ZERO;

fn mins(m: u64) -> Time {
    Time::from_secs(m * 60)
}

/// A random id sharing exactly `cpl` leading bits with `own`.
fn id_at(own: NodeId, cpl: usize, rng: &mut ChaCha8Rng) -> NodeId {
    own.flip_bit(cpl).random_in_range(cpl + 1, rng)
}

fn own() -> NodeId {
    NodeId([0x5a; 20])
}

fn table() -> RoutingTable {
    RoutingTable::new(own(), Family::V4, 7, T0)
}

fn actions(t: &mut RoutingTable) -> Vec<TableAction> {
    std::iter::from_fn(|| t.poll_action()).collect()
}

fn pings(t: &mut RoutingTable) -> Vec<NodeInfo> {
    actions(t)
        .into_iter()
        .filter_map(|a| match a {
            TableAction::Ping(n) => Some(n),
            TableAction::Refresh { .. } => None,
        })
        .collect()
}

/// Fills bucket 0 (nodes sharing no bit with our id) with 8 nodes at `now`, after a first
/// split, so that bucket 0 cannot split again. Returns the nodes.
fn full_far_bucket(t: &mut RoutingTable, rng: &mut ChaCha8Rng, now: Time) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for i in 0..K {
        let n = NodeInfo {
            id: id_at(own(), 0, rng),
            addr: v4(0, i as u8 + 1, 6881),
        };
        assert_eq!(t.handle_response(now, n.id, n.addr), Insert::Added);
        nodes.push(n);
    }
    // A near node makes the last bucket split: bucket 0 stops being the last one.
    let near = id_at(own(), 3, rng);
    assert_eq!(t.handle_response(now, near, v4(1, 0, 1)), Insert::Added);
    assert!(t.bucket_count() >= 2);
    t.check_invariants();
    nodes
}

#[test]
fn dht_table_splits_only_around_our_id() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut t = table();
    for i in 0..K {
        let id = id_at(own(), 0, &mut rng);
        assert_eq!(
            t.handle_response(T0, id, v4(0, i as u8 + 1, 1)),
            Insert::Added
        );
    }
    assert_eq!(t.bucket_count(), 1);
    // A 9th far node splits the only bucket, but its half (bucket 0) is full and is not our
    // range, so it cannot split again: the node is cached.
    let ninth = id_at(own(), 0, &mut rng);
    assert_eq!(t.handle_response(T0, ninth, v4(0, 100, 1)), Insert::Cached);
    assert_eq!(t.bucket_count(), 2);
    assert_eq!((t.len(), t.cached_len()), (K, 1));
    // Nodes nearer and nearer our id each find room, splitting the last bucket as they go.
    for cpl in 1..=20 {
        for j in 0..3 {
            let id = id_at(own(), cpl, &mut rng);
            assert_eq!(
                t.handle_response(T0, id, v4(cpl as u8, j, 2)),
                Insert::Added,
                "prefix {cpl}"
            );
        }
        t.check_invariants();
    }
    assert_eq!(t.len(), K + 60);
    // The last bucket splits only when full: below it every bucket holds its three nodes,
    // and the last (at most 8) the rest.
    let last = t.bucket_count() - 1;
    assert!((19..=20).contains(&last), "{last}");
    for cpl in 1..last {
        assert_eq!(t.bucket(cpl).len(), 3, "bucket {cpl}");
    }
    assert_eq!(t.bucket(last).len(), 60 - 3 * (last - 1));
    // Full far buckets never split: 20 more far nodes only fill the cache (bounded).
    for j in 0..20 {
        let id = id_at(own(), 0, &mut rng);
        assert_eq!(t.handle_response(T0, id, v4(200, j, 3)), Insert::Cached);
    }
    assert_eq!(t.bucket_cache(0).len(), REPLACEMENTS);
    t.check_invariants();
}

#[test]
fn dht_table_keeps_good_nodes_and_caches_newcomers_without_pings() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut t = table();
    let far = full_far_bucket(&mut t, &mut rng, T0);
    let _ = actions(&mut t);
    let newcomer = id_at(own(), 0, &mut rng);
    assert_eq!(
        t.handle_response(mins(5), newcomer, v4(9, 9, 9)),
        Insert::Cached
    );
    assert!(pings(&mut t).is_empty(), "good nodes are not pinged");
    for n in &far {
        assert_eq!(t.get(&n.id).unwrap().liveness(mins(5)), Liveness::Good);
    }
    assert!(t.get(&newcomer).is_none());
}

#[test]
fn dht_table_pings_questionable_nodes_before_replacing_them() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut t = table();
    let far = full_far_bucket(&mut t, &mut rng, T0);
    let _ = actions(&mut t);
    // 16 minutes later the far nodes are questionable.
    let now = mins(16);
    assert_eq!(
        t.get(&far[0].id).unwrap().liveness(now),
        Liveness::Questionable
    );
    let newcomer = id_at(own(), 0, &mut rng);
    assert_eq!(
        t.handle_response(now, newcomer, v4(9, 9, 9)),
        Insert::Cached
    );
    let asked: BTreeSet<NodeInfo> = pings(&mut t).into_iter().collect();
    assert_eq!(asked, far.iter().copied().collect());
    // A second newcomer does not ping them again while the pings are outstanding.
    let second = id_at(own(), 0, &mut rng);
    assert_eq!(t.handle_response(now, second, v4(9, 9, 10)), Insert::Cached);
    assert!(pings(&mut t).is_empty());
    // Seven answer; the eighth fails once (pinged again, a replacement waits), then twice.
    for n in &far[..7] {
        assert_eq!(t.handle_response(now, n.id, n.addr), Insert::Updated);
        assert_eq!(t.get(&n.id).unwrap().liveness(now), Liveness::Good);
    }
    let dead = far[7];
    t.handle_failure(now, dead.id, dead.addr);
    assert_eq!(pings(&mut t), vec![dead]);
    assert!(t.get(&dead.id).is_some());
    t.handle_failure(now + Duration::from_secs(10), dead.id, dead.addr);
    // The freshest cached node (the second newcomer, equal time: either is fine, but exactly
    // one) takes the place.
    assert!(t.get(&dead.id).is_none());
    let promoted = [newcomer, second]
        .iter()
        .filter(|id| t.get(id).is_some())
        .count();
    assert_eq!(promoted, 1);
    assert_eq!(t.bucket(0).len(), K);
    assert_eq!(t.bucket_cache(0).len(), 1);
    t.check_invariants();
}

#[test]
fn dht_table_replaces_a_bad_node_at_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut t = table();
    let far = full_far_bucket(&mut t, &mut rng, T0);
    // No cache yet: failures make far[2] bad, but it stays until someone can replace it.
    t.handle_failure(mins(1), far[2].id, far[2].addr);
    t.handle_failure(mins(1), far[2].id, far[2].addr);
    assert_eq!(t.get(&far[2].id).unwrap().liveness(mins(1)), Liveness::Bad);
    assert!(
        !t.closest(&far[2].id, 100).contains(&far[2]),
        "bad nodes are not handed out"
    );
    let newcomer = id_at(own(), 0, &mut rng);
    assert_eq!(
        t.handle_response(mins(2), newcomer, v4(9, 9, 9)),
        Insert::Added
    );
    assert!(t.get(&far[2].id).is_none());
    assert!(t.get(&newcomer).is_some());
    t.check_invariants();
}

#[test]
fn dht_table_rejects_own_id_other_family_and_taken_addresses() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut t = table();
    assert_eq!(t.handle_response(T0, own(), v4(0, 1, 1)), Insert::Rejected);
    let a = id_at(own(), 2, &mut rng);
    assert_eq!(t.handle_response(T0, a, v6(1, 1)), Insert::Rejected);
    assert_eq!(t.handle_response(T0, a, v4(0, 1, 0)), Insert::Rejected);
    assert_eq!(
        t.handle_response(T0, a, "0.0.0.0:5".parse().unwrap()),
        Insert::Rejected
    );
    assert_eq!(t.handle_response(T0, a, v4(0, 1, 1)), Insert::Added);
    // Another id at the same address, or the same id from another address: refused.
    let b = id_at(own(), 4, &mut rng);
    assert_eq!(t.handle_response(T0, b, v4(0, 1, 1)), Insert::Rejected);
    assert_eq!(t.handle_response(T0, a, v4(0, 1, 2)), Insert::Rejected);
    // Once the holder is bad, its address (or the id's new address) may be taken over.
    t.handle_failure(T0, a, v4(0, 1, 1));
    t.handle_failure(T0, a, v4(0, 1, 1));
    assert_eq!(t.handle_response(T0, a, v4(0, 1, 2)), Insert::Updated);
    assert_eq!(t.get(&a).unwrap().info().addr, v4(0, 1, 2));
    t.handle_failure(T0, a, v4(0, 1, 2));
    t.handle_failure(T0, a, v4(0, 1, 2));
    assert_eq!(t.handle_response(T0, b, v4(0, 1, 2)), Insert::Added);
    assert!(t.get(&a).is_none());
    t.check_invariants();

    // The IPv6 table is its own object and takes only IPv6 addresses.
    let mut t6 = RoutingTable::new(own(), Family::V6, 1, T0);
    assert_eq!(t6.handle_response(T0, a, v6(1, 1)), Insert::Added);
    assert_eq!(t6.handle_response(T0, b, v4(0, 1, 1)), Insert::Rejected);
    assert_eq!(
        t6.closest(&a, 8),
        vec![NodeInfo {
            id: a,
            addr: v6(1, 1)
        }]
    );
}

#[test]
fn dht_table_unverified_nodes_are_pinged_first() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut t = table();
    let a = id_at(own(), 1, &mut rng);
    t.handle_query(T0, a, v4(3, 3, 3));
    assert!(t.get(&a).is_none(), "a query alone does not add a node");
    assert_eq!(
        pings(&mut t),
        vec![NodeInfo {
            id: a,
            addr: v4(3, 3, 3)
        }]
    );
    // Asked once while the ping is outstanding, again after PING_RETRY.
    t.handle_heard_of(T0 + Duration::from_secs(1), a, v4(3, 3, 3));
    assert!(pings(&mut t).is_empty());
    t.handle_heard_of(T0 + PING_RETRY, a, v4(3, 3, 3));
    assert_eq!(pings(&mut t).len(), 1);
    assert_eq!(t.handle_response(mins(1), a, v4(3, 3, 3)), Insert::Added);
    // Hearsay about nodes for a full bucket of good nodes is not worth a ping.
    let _ = full_far_bucket(&mut t, &mut rng, mins(1));
    let _ = actions(&mut t);
    t.handle_heard_of(mins(2), id_at(own(), 0, &mut rng), v4(4, 4, 4));
    assert!(pings(&mut t).is_empty());
    // ... but it is once they are questionable.
    t.handle_heard_of(mins(20), id_at(own(), 0, &mut rng), v4(4, 4, 5));
    assert_eq!(pings(&mut t).len(), 1);
    // Pending pings of unknown nodes are bounded.
    for i in 0..(MAX_PENDING_PINGS as u16 + 10) {
        let id = id_at(own(), 2 + usize::from(i % 100), &mut rng);
        t.handle_heard_of(mins(20), id, v4(100, (i % 250) as u8, 1000 + i));
    }
    t.check_invariants();
    assert!(pings(&mut t).len() <= MAX_PENDING_PINGS);
}

#[test]
fn dht_table_queries_from_known_nodes_keep_them_good() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut t = table();
    let a = id_at(own(), 1, &mut rng);
    assert_eq!(t.handle_response(T0, a, v4(3, 3, 3)), Insert::Added);
    assert_eq!(
        t.get(&a).unwrap().liveness(mins(15)),
        Liveness::Questionable
    );
    t.handle_query(mins(10), a, v4(3, 3, 3));
    assert_eq!(t.get(&a).unwrap().liveness(mins(15)), Liveness::Good);
    // A query from another address does not count for the node.
    t.handle_query(mins(20), a, v4(3, 3, 4));
    assert_eq!(t.get(&a).unwrap().last_seen(), mins(10));
    // A failure makes it questionable even when recently seen.
    t.handle_failure(mins(11), a, v4(3, 3, 3));
    assert_eq!(
        t.get(&a).unwrap().liveness(mins(11)),
        Liveness::Questionable
    );
    assert_eq!(t.handle_response(mins(12), a, v4(3, 3, 3)), Insert::Updated);
    assert_eq!(t.get(&a).unwrap().failures(), 0);
}

#[test]
fn dht_table_refreshes_buckets_unchanged_for_15_minutes() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut t = table();
    assert_eq!(t.poll_timeout(), Some(T0 + REFRESH_INTERVAL));
    t.handle_timeout(mins(14));
    assert!(actions(&mut t).is_empty(), "early timeout does nothing");
    t.handle_timeout(mins(15));
    let a = actions(&mut t);
    assert_eq!(a.len(), 1);
    assert_eq!(t.poll_timeout(), Some(mins(30)));
    t.handle_timeout(mins(15));
    assert!(actions(&mut t).is_empty(), "a second call does nothing");

    // Two buckets; activity in one pushes back only its own deadline.
    let far = full_far_bucket(&mut t, &mut rng, mins(16));
    assert_eq!(t.bucket_count(), 2);
    assert_eq!(t.poll_timeout(), Some(mins(31)));
    assert_eq!(
        t.handle_response(mins(25), far[0].id, far[0].addr),
        Insert::Updated
    );
    t.handle_timeout(mins(31));
    let targets: Vec<NodeId> = actions(&mut t)
        .into_iter()
        .map(|a| match a {
            TableAction::Refresh { target } => target,
            TableAction::Ping(n) => panic!("unexpected ping of {n:?}"),
        })
        .collect();
    assert_eq!(targets.len(), 1);
    assert!(
        own().common_prefix_len(&targets[0]) >= 1,
        "the last bucket's range"
    );
    assert_eq!(t.poll_timeout(), Some(mins(40)));
    t.handle_timeout(mins(40));
    let targets: Vec<NodeId> = actions(&mut t)
        .into_iter()
        .filter_map(|a| match a {
            TableAction::Refresh { target } => Some(target),
            TableAction::Ping(_) => None,
        })
        .collect();
    assert_eq!(targets.len(), 1);
    assert_eq!(own().common_prefix_len(&targets[0]), 0, "bucket 0's range");
}

/// One step of a random workload on a table.
#[derive(Clone, Debug)]
enum Op {
    Respond(u8, u8),
    Query(u8, u8),
    Fail(u8),
    Remove(u8),
    Wait(u16),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 10 {
            0..=4 => Op::Respond(u8::arbitrary(g), u8::arbitrary(g)),
            5 => Op::Query(u8::arbitrary(g), u8::arbitrary(g)),
            6 | 7 => Op::Fail(u8::arbitrary(g)),
            8 => Op::Remove(u8::arbitrary(g)),
            _ => Op::Wait(u16::arbitrary(g)),
        }
    }
}

/// A pool of 256 ids, biased towards long common prefixes with our id so buckets split deep.
fn pool(seed: u64) -> Vec<NodeId> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..256)
        .map(|i| id_at(own(), (i * 7) % 40, &mut rng))
        .collect()
}

fn run(ops: &[Op], t: &mut RoutingTable, ids: &[NodeId]) -> Time {
    let mut now = T0;
    for op in ops {
        match *op {
            // The address is a function of the id (mostly), with some address clashes.
            Op::Respond(i, port) => {
                let addr = v4(i, 1, 1 + u16::from(port % 2));
                let _ = t.handle_response(now, ids[usize::from(i)], addr);
            }
            Op::Query(i, port) => {
                t.handle_query(now, ids[usize::from(i)], v4(i, 1, 1 + u16::from(port % 2)))
            }
            Op::Fail(i) => {
                let addr = t
                    .get(&ids[usize::from(i)])
                    .map_or(v4(i, 1, 1), |e| e.info().addr);
                t.handle_failure(now, ids[usize::from(i)], addr);
            }
            Op::Remove(i) => {
                let _ = t.remove(&ids[usize::from(i)]);
            }
            Op::Wait(s) => {
                now += Duration::from_secs(u64::from(s));
                t.handle_timeout(now);
            }
        }
        t.check_invariants();
        let _ = actions(t);
    }
    now
}

#[test]
fn prop_dht_table_invariants_hold_under_any_workload() {
    fn prop(ops: Vec<Op>, seed: u8) -> bool {
        let ids = pool(u64::from(seed));
        let mut t = table();
        run(&ops, &mut t, &ids);
        // Every node answered from an acceptable address at some point; nothing is lost twice.
        t.len() <= K * t.bucket_count()
    }
    qc(0x7461_626c, 400).quickcheck(prop as fn(Vec<Op>, u8) -> bool);
}

#[test]
fn prop_dht_table_closest_matches_a_brute_force_sort() {
    fn prop(ops: Vec<Op>, target: u8, n: u8, seed: u8) -> bool {
        let ids = pool(u64::from(seed));
        let mut t = table();
        let now = run(&ops, &mut t, &ids);
        let target = if target.is_multiple_of(2) {
            ids[usize::from(target)]
        } else {
            ids[usize::from(target)].flip_bit(usize::from(target) % 160)
        };
        let n = usize::from(n % 40);
        let mut brute: Vec<NodeInfo> = t
            .entries()
            .filter(|e| e.liveness(now) != Liveness::Bad)
            .map(|e| e.info())
            .collect();
        // XOR computed here, compared as big-endian bytes: independent of `Distance`.
        brute.sort_by_key(|n| std::array::from_fn::<u8, 20, _>(|i| n.id.0[i] ^ target.0[i]));
        brute.truncate(n);
        t.closest(&target, n) == brute
    }
    qc(0x636c_6f73, 400).quickcheck(prop as fn(Vec<Op>, u8, u8, u8) -> bool);
}

#[test]
fn dht_table_memory_stays_bounded_under_a_flood_of_near_ids() {
    // An attacker crafting ids ever closer to ours cannot grow the table past its bounds.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut t = table();
    for i in 0..5000u32 {
        let cpl = (i % 170) as usize;
        let id = if cpl >= 160 {
            NodeId::random(&mut rng)
        } else {
            id_at(own(), cpl, &mut rng)
        };
        let addr = v4((i >> 8) as u8, i as u8, 1 + (i >> 16) as u16);
        let _ = t.handle_response(Time::from_secs(u64::from(i)), id, addr);
        t.handle_heard_of(
            Time::from_secs(u64::from(i)),
            id.flip_bit(159),
            v4(250, i as u8, 7),
        );
    }
    t.check_invariants();
    assert!(t.bucket_count() <= MAX_BUCKETS);
    assert!(t.len() <= MAX_BUCKETS * K);
    assert!(t.cached_len() <= MAX_BUCKETS * REPLACEMENTS);
}
