use std::collections::BTreeSet;

use super::*;

const ROUND: Duration = Duration::from_secs(10);

fn cand(peer: usize, download_rate: u64) -> Candidate {
    Candidate {
        peer: PeerHandle(peer),
        interested: true,
        download_rate,
        upload_rate: 0,
        connected_at: Time::ZERO,
        snubbed: false,
    }
}

fn choker(slots: usize, seed: u64) -> Choker {
    Choker::new(
        ChokerConfig {
            upload_slots: slots,
            ..ChokerConfig::default()
        },
        seed,
    )
}

fn drain(c: &mut Choker) -> Vec<(PeerHandle, Decision)> {
    std::iter::from_fn(|| c.poll_decision()).collect()
}

/// The unchoked peers apart from the optimistic one.
fn regular(c: &Choker) -> BTreeSet<usize> {
    c.unchoked()
        .iter()
        .filter(|&&p| Some(p) != c.optimistic())
        .map(|p| p.0)
        .collect()
}

/// Candidates 0..n with download rates from a seeded permutation.
fn shuffled(n: usize, seed: u64) -> Vec<Candidate> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rates: Vec<u64> = (1..=n as u64).map(|r| r * 1000).collect();
    for i in (1..n).rev() {
        rates.swap(i, rng.random_range(0..=i));
    }
    (0..n).map(|i| cand(i, rates[i])).collect()
}

#[test]
fn the_best_uploaders_to_us_are_unchoked_plus_one_optimistic() {
    for seed in 0..10 {
        let cands = shuffled(9, seed);
        let mut c = choker(4, seed);
        assert_eq!(c.poll_timeout(), Some(Time::ZERO));
        c.handle_timeout(Time::ZERO, &cands, false);
        let mut by_rate = cands.clone();
        by_rate.sort_by_key(|c| std::cmp::Reverse(c.download_rate));
        let best: BTreeSet<usize> = by_rate.iter().take(4).map(|c| c.peer.0).collect();
        assert_eq!(regular(&c), best, "seed {seed}");
        let o = c.optimistic().expect("an optimistic unchoke");
        assert!(!best.contains(&o.0));
        assert_eq!(c.unchoked().len(), 5);
        let d = drain(&mut c);
        assert_eq!(d.len(), 5);
        assert!(
            d.iter()
                .all(|&(p, x)| x == Decision::Unchoke && c.is_unchoked(p))
        );
    }
}

#[test]
fn snubbed_and_uninterested_peers_get_no_regular_slot() {
    let mut c = choker(1, 1);
    let mut fast_snub = cand(0, 1_000_000);
    fast_snub.snubbed = true;
    let mut fast_bored = cand(1, 900_000);
    fast_bored.interested = false;
    let cands = [fast_snub, fast_bored, cand(2, 10), cand(3, 5)];
    c.handle_timeout(Time::ZERO, &cands, false);
    assert_eq!(regular(&c), [2].into_iter().collect());
    assert!(!c.is_unchoked(PeerHandle(1)));
    // A snubbed peer may still win the optimistic unchoke.
    assert!(matches!(c.optimistic(), Some(PeerHandle(0 | 3))));
}

#[test]
fn seeding_ranks_by_our_upload_rate() {
    let mut c = choker(2, 4);
    let mut cands: Vec<Candidate> = (0..5).map(|i| cand(i, 0)).collect();
    for (i, up) in [(0, 50), (1, 10), (2, 40), (3, 20), (4, 30)] {
        cands[i].upload_rate = up;
        // Download rates point the other way, and do not matter while seeding.
        cands[i].download_rate = 100 - up;
        // Nor does snubbing: a peer has nothing to send a seed.
        cands[i].snubbed = true;
    }
    c.handle_timeout(Time::ZERO, &cands, true);
    assert_eq!(regular(&c), [0, 2].into_iter().collect());
}

#[test]
fn a_peer_that_loses_interest_or_falls_behind_is_choked_next_round() {
    let mut c = choker(1, 2);
    let mut cands = vec![cand(0, 100), cand(1, 50)];
    c.handle_timeout(Time::ZERO, &cands, false);
    assert_eq!(regular(&c), [0].into_iter().collect());
    assert_eq!(c.optimistic(), Some(PeerHandle(1)));
    drain(&mut c);
    // Peer 2 arrives faster than everyone; peer 0 loses interest.
    cands[0].interested = false;
    cands.push(cand(2, 500));
    let t = Time::ZERO + ROUND;
    c.handle_timeout(t, &cands, false);
    assert_eq!(regular(&c), [2].into_iter().collect());
    assert_eq!(c.optimistic(), Some(PeerHandle(1)));
    assert_eq!(
        drain(&mut c),
        vec![
            (PeerHandle(0), Decision::Choke),
            (PeerHandle(2), Decision::Unchoke)
        ]
    );
    // Nothing changed: nothing to send.
    c.handle_timeout(t + ROUND, &cands, false);
    assert!(drain(&mut c).is_empty());
}

#[test]
fn the_optimistic_unchoke_rotates_every_three_rounds() {
    let mut c = choker(1, 3);
    let cands: Vec<Candidate> = (0..6)
        .map(|i| cand(i, if i == 0 { 99 } else { 1 }))
        .collect();
    let mut t = Time::ZERO;
    let mut history = Vec::new();
    for _ in 0..9 {
        c.handle_timeout(t, &cands, false);
        history.push(c.optimistic().expect("optimistic"));
        t += ROUND;
    }
    for chunk in history.chunks(3) {
        assert!(chunk.iter().all(|&o| o == chunk[0]), "{history:?}");
    }
    assert_ne!(history[2], history[3]);
    assert_ne!(history[5], history[6]);
    assert!(history.iter().all(|&o| o != PeerHandle(0)));
}

#[test]
fn new_peers_are_three_times_as_likely_to_be_optimistically_unchoked() {
    let now = Time::from_secs(3600);
    let mut newcomer = cand(1, 0);
    newcomer.connected_at = now;
    let veteran = cand(2, 0);
    let cands = [cand(0, 100), newcomer, veteran];
    let trials = 400;
    let new_wins = (0..trials)
        .filter(|&seed| {
            let mut c = choker(1, seed);
            c.handle_timeout(now, &cands, false);
            c.optimistic() == Some(PeerHandle(1))
        })
        .count();
    // Expect 3/4 of the trials; 1/2 without the weighting.
    assert!((260..=340).contains(&new_wins), "{new_wins} of {trials}");
}

#[test]
fn early_and_repeated_timeouts_do_nothing() {
    let mut c = choker(2, 5);
    let cands = shuffled(6, 5);
    let t = Time::from_secs(7);
    c.handle_timeout(t, &cands, false);
    let first = c.unchoked().clone();
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t + ROUND));
    // Different inputs, same instant and just before the deadline: no round.
    let reversed: Vec<Candidate> = cands.iter().map(|x| cand(x.peer.0, 1)).collect();
    c.handle_timeout(t, &reversed, false);
    c.handle_timeout(t + (ROUND - Duration::from_nanos(1)), &reversed, false);
    assert_eq!(c.unchoked(), &first);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(t + ROUND));
    // Time going backwards does nothing either.
    c.handle_timeout(Time::ZERO, &reversed, false);
    assert_eq!(c.unchoked(), &first);
}

#[test]
fn decisions_depend_on_the_seed_only_not_on_candidate_order() {
    let run = |seed: u64, reverse: bool| {
        let mut c = choker(2, seed);
        // All equal: the seed decides.
        let mut cands: Vec<Candidate> = (0..8).map(|i| cand(i, 7)).collect();
        if reverse {
            cands.reverse();
        }
        let mut out = Vec::new();
        let mut t = Time::ZERO;
        for _ in 0..6 {
            c.handle_timeout(t, &cands, false);
            out.extend(drain(&mut c));
            t += ROUND;
        }
        out
    };
    assert_eq!(run(1, false), run(1, false));
    assert_eq!(run(1, false), run(1, true));
    let distinct: BTreeSet<_> = (0..10).map(|s| run(s, false)).collect();
    assert!(distinct.len() > 1);
}

#[test]
fn departed_peers_are_forgotten_and_their_slot_refilled() {
    let mut c = choker(1, 6);
    let cands = vec![cand(0, 100), cand(1, 50), cand(2, 10)];
    c.handle_timeout(Time::ZERO, &cands, false);
    drain(&mut c);
    c.peer_gone(PeerHandle(0));
    assert!(!c.is_unchoked(PeerHandle(0)));
    c.force_round(Time::from_secs(1), &cands[1..], false);
    assert_eq!(regular(&c), [1].into_iter().collect());
    let d = drain(&mut c);
    assert!(d.iter().all(|&(p, _)| p != PeerHandle(0)));
    assert_eq!(c.poll_timeout(), Some(Time::from_secs(1) + ROUND));
}
