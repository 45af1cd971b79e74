use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::dht::store::*;
use crate::id::InfoHash;
use crate::time::Time;

fn ih(n: u8) -> InfoHash {
    InfoHash([n; 20])
}

fn mins(m: u64) -> Time {
    Time::from_secs(m * 60)
}

fn small(peers: usize, torrents: usize) -> PeerStore {
    PeerStore::new(
        StoreConfig {
            ttl: Duration::from_secs(30 * 60),
            max_peers_per_torrent: peers,
            max_torrents: torrents,
        },
        1,
    )
}

fn set(v: Vec<SocketAddr>) -> BTreeSet<SocketAddr> {
    v.into_iter().collect()
}

#[test]
fn dht_store_announces_expire_after_30_minutes() {
    let mut s = PeerStore::new(StoreConfig::default(), 1);
    assert_eq!(
        s.handle_announce(mins(0), ih(1), v4(0, 1, 6881)),
        Stored::Added
    );
    assert_eq!(
        s.handle_announce(mins(10), ih(1), v4(0, 2, 6881)),
        Stored::Added
    );
    assert_eq!(
        s.handle_announce(mins(10), ih(1), v4(0, 2, 0)),
        Stored::Rejected
    );
    assert_eq!(
        s.handle_announce(mins(10), ih(1), "0.0.0.0:1".parse().unwrap()),
        Stored::Rejected
    );
    assert_eq!(s.poll_timeout(), Some(mins(30)));
    assert_eq!(
        set(s.get(mins(29), &ih(1), 10)),
        set(vec![v4(0, 1, 6881), v4(0, 2, 6881)])
    );
    s.handle_timeout(mins(29));
    assert_eq!(s.peer_count(), 2, "early timeout does nothing");
    // Expired peers are not handed out even before the timeout is handled.
    assert_eq!(s.get(mins(30), &ih(1), 10), vec![v4(0, 2, 6881)]);
    s.handle_timeout(mins(30));
    assert_eq!((s.peer_count(), s.torrent_count()), (1, 1));
    // A re-announce pushes the expiry back.
    assert_eq!(
        s.handle_announce(mins(35), ih(1), v4(0, 2, 6881)),
        Stored::Refreshed
    );
    assert_eq!(s.poll_timeout(), Some(mins(65)));
    s.handle_timeout(mins(64));
    assert_eq!(s.get(mins(64), &ih(1), 10), vec![v4(0, 2, 6881)]);
    s.handle_timeout(mins(65));
    assert_eq!((s.peer_count(), s.torrent_count()), (0, 0));
    assert!(s.get(mins(65), &ih(1), 10).is_empty());
    assert_eq!(s.poll_timeout(), None);
    s.check_invariants();
}

#[test]
fn dht_store_evicts_the_oldest_peer_and_the_stalest_torrent() {
    let mut s = small(3, 2);
    for (i, m) in [(1, 0), (2, 1), (3, 2)] {
        let _ = s.handle_announce(mins(m), ih(1), v4(0, i, 1));
    }
    // Peer 1 refreshes; the 4th peer pushes out peer 2, announced longest ago.
    assert_eq!(
        s.handle_announce(mins(3), ih(1), v4(0, 1, 1)),
        Stored::Refreshed
    );
    assert_eq!(
        s.handle_announce(mins(4), ih(1), v4(0, 4, 1)),
        Stored::Added
    );
    assert_eq!(
        set(s.get(mins(4), &ih(1), 10)),
        set(vec![v4(0, 1, 1), v4(0, 3, 1), v4(0, 4, 1)])
    );
    // Two torrents fill the store; a third pushes out the one announced to longest ago.
    let _ = s.handle_announce(mins(5), ih(2), v4(0, 5, 1));
    let _ = s.handle_announce(mins(6), ih(1), v4(0, 6, 1));
    let _ = s.handle_announce(mins(7), ih(3), v4(0, 7, 1));
    assert_eq!(s.torrent_count(), 2);
    assert!(s.get(mins(7), &ih(2), 10).is_empty());
    assert_eq!(s.get(mins(7), &ih(3), 10), vec![v4(0, 7, 1)]);
    assert_eq!(s.get(mins(7), &ih(1), 10).len(), 3);
    s.check_invariants();
    assert_eq!(s.peer_count(), 4);
}

#[test]
fn dht_store_samples_are_bounded_varied_and_seeded() {
    let fill = |seed| {
        let mut s = PeerStore::new(StoreConfig::default(), seed);
        for i in 0..50u8 {
            let _ = s.handle_announce(mins(1), ih(1), v4(1, i, 1));
        }
        s
    };
    let mut a = fill(5);
    let mut b = fill(5);
    let all: BTreeSet<SocketAddr> = set(a.get(mins(1), &ih(1), 1000));
    assert_eq!(all.len(), 50);
    let _ = b.get(mins(1), &ih(1), 1000);
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let x = a.get(mins(1), &ih(1), 8);
        assert_eq!(x, b.get(mins(1), &ih(1), 8), "same seed, same samples");
        assert_eq!(set(x.clone()).len(), 8, "no duplicates");
        assert!(x.iter().all(|p| all.contains(p)));
        seen.extend(x);
    }
    // Twenty samples of 8 out of 50 cover most of them.
    assert!(seen.len() > 35, "{}", seen.len());
    let mut c = fill(6);
    let _ = c.get(mins(1), &ih(1), 1000);
    let differs = (0..5).any(|_| c.get(mins(1), &ih(1), 8) != a.get(mins(1), &ih(1), 8));
    assert!(differs, "another seed, other samples");
}

#[derive(Clone, Debug)]
enum Op {
    Announce(u8, u8),
    Get(u8, u8),
    Wait(u16),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 6 {
            0..=2 => Op::Announce(u8::arbitrary(g) % 6, u8::arbitrary(g) % 12),
            3 | 4 => Op::Get(u8::arbitrary(g) % 6, u8::arbitrary(g) % 8),
            _ => Op::Wait(u16::arbitrary(g) % 1200),
        }
    }
}

#[test]
fn prop_dht_store_hands_out_only_live_announces_within_bounds() {
    fn prop(ops: Vec<Op>) -> bool {
        let mut s = small(4, 3);
        // The model: every announce ever made, with its latest time.
        let mut model: BTreeMap<(u8, SocketAddr), Time> = BTreeMap::new();
        let mut now = Time::ZERO;
        let ttl = s.config().ttl;
        for op in ops {
            match op {
                Op::Announce(h, p) => {
                    let peer = v4(0, p, 1);
                    let _ = s.handle_announce(now, ih(h), peer);
                    model.insert((h, peer), now);
                    // The newest announce is always kept.
                    if !s.get(now, &ih(h), 100).contains(&peer) {
                        return false;
                    }
                }
                Op::Get(h, max) => {
                    let got = s.get(now, &ih(h), usize::from(max));
                    let all = s.get(now, &ih(h), 100);
                    let unique = set(got.clone()).len() == got.len();
                    let live = got.iter().all(|p| {
                        model
                            .get(&(h, *p))
                            .is_some_and(|t| now.saturating_since(*t) < ttl)
                    });
                    if !unique || !live || got.len() != usize::from(max).min(all.len()) {
                        return false;
                    }
                    if all.len() > 4 {
                        return false;
                    }
                }
                Op::Wait(secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    s.handle_timeout(now);
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        return false;
                    }
                }
            }
            s.check_invariants();
        }
        true
    }
    qc(0x7374_6f72, 1000).quickcheck(prop as fn(Vec<Op>) -> bool);
}

#[test]
fn dht_store_memory_bound_holds_under_a_flood() {
    let config = StoreConfig {
        max_peers_per_torrent: 20,
        max_torrents: 50,
        ..StoreConfig::default()
    };
    let mut s = PeerStore::new(config, 3);
    for i in 0..20_000u32 {
        let h = InfoHash::of(&(i % 997).to_be_bytes());
        let peer = v4((i >> 8) as u8, i as u8, 1 + (i % 7) as u16);
        let _ = s.handle_announce(Time::from_millis(u64::from(i)), h, peer);
    }
    s.check_invariants();
    assert!(s.torrent_count() <= 50);
    assert!(s.peer_count() <= 50 * 20);
}
