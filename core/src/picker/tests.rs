use std::collections::BTreeSet;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::*;

const B: u64 = BLOCK_SIZE as u64;

fn cfg(random_first_pieces: u32) -> PickerConfig {
    PickerConfig {
        random_first_pieces,
        ..PickerConfig::default()
    }
}

/// `pieces` pieces of `blocks` full blocks each.
fn picker(pieces: u32, blocks: u64, seed: u64, config: PickerConfig) -> Picker {
    let pl = blocks * B;
    Picker::new(
        pl,
        pl * u64::from(pieces),
        &Bitfield::new(pieces),
        seed,
        config,
    )
}

fn bf(n: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(n);
    for &i in ones {
        b.set(i);
    }
    b
}

fn pick(p: &mut Picker, peer: usize, has: &Bitfield, max: usize) -> Vec<Block> {
    let mut out = Vec::new();
    p.pick(PeerHandle(peer), has, max, &mut out);
    out
}

/// Receives every block in `blocks` from `peer`, then reports the piece's hash check.
fn complete(p: &mut Picker, peer: usize, blocks: &[Block]) {
    for &b in blocks {
        assert!(matches!(
            p.block_received(PeerHandle(peer), b),
            Received::Accepted { .. }
        ));
    }
}

#[test]
fn blocks_cover_the_torrent_exactly_with_a_short_last_block() {
    // 3 pieces of 2.5 blocks... piece length must be whole blocks in practice, but the last
    // piece and block are short.
    let pl = 4 * B;
    let total = 2 * pl + B + 100;
    let mut p = Picker::new(pl, total, &Bitfield::new(3), 1, cfg(0));
    assert_eq!(p.piece_count(), 3);
    assert_eq!(p.blocks_in_piece(2), 2);
    let all = Bitfield::full(3);
    p.peer_has_all(PeerHandle(0));
    let got = pick(&mut p, 0, &all, 100);
    let sum: u64 = got.iter().map(|b| u64::from(b.length)).sum();
    assert_eq!(sum, total);
    let set: BTreeSet<Block> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len());
    assert!(
        got.iter()
            .all(|b| b.begin % BLOCK_SIZE == 0 && b.length <= BLOCK_SIZE)
    );
    let last = got.iter().max().unwrap();
    assert_eq!(u64::from(last.begin + last.length), total - 2 * pl);
}

#[test]
fn rarest_piece_is_picked_first() {
    let n = 6;
    for seed in 0..20 {
        let mut p = picker(n, 2, seed, cfg(0));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Random availability per piece, from several peers.
        for peer in 0..5 {
            let ones: Vec<u32> = (0..n).filter(|_| rng.random_range(0..2) == 0).collect();
            p.peer_has_bitfield(PeerHandle(peer), &bf(n, &ones));
        }
        let full = Bitfield::full(n);
        p.peer_has_all(PeerHandle(9));
        let got = pick(&mut p, 9, &full, 1);
        let min = (0..n).map(|i| p.availability(i)).min().unwrap();
        assert_eq!(p.availability(got[0].piece), min, "seed {seed}");
    }
}

#[test]
fn equally_rare_pieces_are_tie_broken_by_the_seed() {
    let n = 50;
    let first = |seed| {
        let mut p = picker(n, 1, seed, cfg(0));
        p.peer_has_bitfield(PeerHandle(0), &Bitfield::full(n));
        pick(&mut p, 0, &Bitfield::full(n), 1)[0].piece
    };
    let firsts: BTreeSet<u32> = (0..20).map(first).collect();
    assert!(firsts.len() > 5, "{firsts:?}");
    assert_eq!(first(7), first(7));
}

#[test]
fn started_pieces_are_finished_before_new_ones() {
    let n = 4;
    let mut p = picker(n, 4, 3, cfg(0));
    // Piece 2 is the most common, so rarest first alone would never start with it.
    p.peer_has_bitfield(PeerHandle(0), &bf(n, &[2]));
    p.peer_has_bitfield(PeerHandle(1), &bf(n, &[2]));
    p.peer_has_all(PeerHandle(2));
    let a = pick(&mut p, 0, &bf(n, &[2]), 1);
    assert_eq!(a[0].piece, 2);
    let b = pick(&mut p, 2, &Bitfield::full(n), 3);
    assert!(b.iter().all(|x| x.piece == 2), "{b:?}");
    // Once piece 2 is all requested, a new (rarer) piece follows.
    let c = pick(&mut p, 2, &Bitfield::full(n), 1);
    assert_ne!(c[0].piece, 2);
}

#[test]
fn the_first_pieces_are_random_then_rarest_first() {
    let n = 40;
    let mut firsts = BTreeSet::new();
    for seed in 0..30 {
        let mut p = picker(n, 1, seed, cfg(4));
        // Piece 0 alone is rare.
        p.peer_has_bitfield(PeerHandle(0), &Bitfield::full(n));
        p.peer_has_bitfield(PeerHandle(1), &bf(n, &(1..n).collect::<Vec<_>>()));
        let full = Bitfield::full(n);
        let got = pick(&mut p, 0, &full, 4);
        firsts.extend(got.iter().map(|b| b.piece));
        for b in &got {
            complete(&mut p, 0, &[*b]);
            p.piece_verified(b.piece, true);
        }
        if p.have().get(0) {
            continue;
        }
        // Four pieces verified: now the rarest comes first.
        assert_eq!(pick(&mut p, 0, &full, 1)[0].piece, 0, "seed {seed}");
    }
    assert!(firsts.len() > 20, "{firsts:?}");
    // Without random first pieces, the rare piece always comes first.
    for seed in 0..10 {
        let mut p = picker(n, 1, seed, cfg(0));
        p.peer_has_bitfield(PeerHandle(0), &Bitfield::full(n));
        p.peer_has_bitfield(PeerHandle(1), &bf(n, &(1..n).collect::<Vec<_>>()));
        assert_eq!(pick(&mut p, 0, &Bitfield::full(n), 1)[0].piece, 0);
    }
}

#[test]
fn sequential_mode_picks_in_index_order() {
    let n = 8;
    let mut p = picker(
        n,
        2,
        5,
        PickerConfig {
            sequential: true,
            ..PickerConfig::default()
        },
    );
    // Make the later pieces rarer, to show rarity is ignored.
    p.peer_has_bitfield(PeerHandle(0), &bf(n, &[0, 1, 2, 3]));
    p.peer_has_all(PeerHandle(1));
    let got = pick(&mut p, 1, &Bitfield::full(n), 2 * n as usize);
    let pieces: Vec<u32> = got.iter().map(|b| b.piece).collect();
    let mut sorted = pieces.clone();
    sorted.sort();
    assert_eq!(pieces, sorted);
    assert_eq!(got.len(), 2 * n as usize);
}

#[test]
fn only_wanted_pieces_the_peer_has_are_picked() {
    let n = 10;
    let mut p = picker(n, 2, 9, cfg(0));
    let wanted = bf(n, &[1, 3, 5, 7]);
    assert!(p.set_wanted(&wanted));
    assert!(!p.set_wanted(&Bitfield::new(n + 1)));
    let has = bf(n, &[0, 1, 2, 3, 4, 5]);
    p.peer_has_bitfield(PeerHandle(0), &has);
    let got = pick(&mut p, 0, &has, 100);
    let pieces: BTreeSet<u32> = got.iter().map(|b| b.piece).collect();
    assert_eq!(pieces, [1, 3, 5].into_iter().collect());
    assert!(p.is_interesting(&has));
    assert!(!p.is_interesting(&bf(n, &[0, 2, 4])));
    for b in &got {
        complete(&mut p, 0, &[*b]);
    }
    for piece in pieces {
        p.piece_verified(piece, true);
    }
    assert!(!p.is_complete());
    assert_eq!(p.remaining(), 1);
    assert!(!p.is_interesting(&has));
    let other = bf(n, &[7]);
    p.peer_has_bitfield(PeerHandle(1), &other);
    let last = pick(&mut p, 1, &other, 100);
    complete(&mut p, 1, &last);
    p.piece_verified(7, true);
    assert!(p.is_complete());
}

#[test]
fn endgame_duplicates_requests_and_cancels_the_others() {
    let n = 1;
    let mut p = picker(n, 2, 1, cfg(0));
    let full = Bitfield::full(n);
    for peer in 0..4 {
        p.peer_has_all(PeerHandle(peer));
    }
    let a = pick(&mut p, 0, &full, 10);
    assert_eq!(a.len(), 2);
    assert!(p.in_endgame());
    // A peer never gets a block it already asked for.
    assert!(pick(&mut p, 0, &full, 10).is_empty());
    assert_eq!(pick(&mut p, 1, &full, 10), a);
    assert_eq!(pick(&mut p, 2, &full, 10), a);
    // Two duplicates at most.
    assert!(pick(&mut p, 3, &full, 10).is_empty());
    match p.block_received(PeerHandle(2), a[0]) {
        Received::Accepted {
            piece_complete,
            cancel,
        } => {
            assert!(!piece_complete);
            assert_eq!(cancel, vec![(PeerHandle(0), a[0]), (PeerHandle(1), a[0])]);
        }
        other => panic!("{other:?}"),
    }
    // The copy that crossed our cancel.
    assert_eq!(p.block_received(PeerHandle(0), a[0]), Received::Duplicate);
    assert_eq!(p.outstanding(PeerHandle(0)), 1);
    assert!(matches!(
        p.block_received(PeerHandle(0), a[1]),
        Received::Accepted {
            piece_complete: true,
            ..
        }
    ));
}

#[test]
fn endgame_can_be_disabled() {
    let mut p = picker(
        1,
        2,
        1,
        PickerConfig {
            max_endgame_duplicates: 0,
            ..PickerConfig::default()
        },
    );
    let full = Bitfield::full(1);
    p.peer_has_all(PeerHandle(0));
    p.peer_has_all(PeerHandle(1));
    assert_eq!(pick(&mut p, 0, &full, 10).len(), 2);
    assert!(pick(&mut p, 1, &full, 10).is_empty());
}

#[test]
fn a_failed_piece_is_fetched_again_and_its_senders_are_known() {
    let n = 2;
    let mut p = picker(n, 2, 4, cfg(0));
    let has = bf(n, &[0]);
    p.peer_has_bitfield(PeerHandle(0), &has);
    p.peer_has_bitfield(PeerHandle(1), &has);
    let a = pick(&mut p, 0, &has, 1);
    let b = pick(&mut p, 1, &has, 1);
    complete(&mut p, 0, &a);
    complete(&mut p, 1, &b);
    assert_eq!(p.piece_contributors(0), vec![PeerHandle(0), PeerHandle(1)]);
    assert!(pick(&mut p, 0, &has, 10).is_empty());
    p.piece_verified(0, false);
    assert!(!p.have().get(0));
    let again = pick(&mut p, 0, &has, 10);
    let mut all = [a, b].concat();
    all.sort();
    assert_eq!(again, all);
    complete(&mut p, 0, &again);
    p.piece_verified(0, true);
    assert!(p.have().get(0));
    assert_eq!(p.block_received(PeerHandle(0), all[0]), Received::Duplicate);
}

#[test]
fn dropped_and_departed_requests_go_to_other_peers() {
    let n = 1;
    let mut p = picker(n, 4, 2, cfg(0));
    let full = Bitfield::full(n);
    p.peer_has_bitfield(PeerHandle(0), &full);
    p.peer_has_bitfield(PeerHandle(1), &full);
    assert_eq!(p.availability(0), 2);
    let a = pick(&mut p, 0, &full, 4);
    assert_eq!(a.len(), 4);
    p.request_dropped(PeerHandle(0), a[1]);
    assert_eq!(p.outstanding(PeerHandle(0)), 3);
    p.request_dropped(PeerHandle(0), a[1]);
    p.request_dropped(PeerHandle(1), a[2]);
    assert_eq!(p.outstanding(PeerHandle(0)), 3);
    assert_eq!(pick(&mut p, 1, &full, 1), vec![a[1]]);
    // A block from a peer we did not ask is refused.
    assert_eq!(
        p.block_received(PeerHandle(1), a[0]),
        Received::NotRequested
    );
    p.peer_gone(PeerHandle(0), &full, true);
    assert_eq!(p.availability(0), 1);
    assert_eq!(p.outstanding(PeerHandle(0)), 0);
    let rest = pick(&mut p, 1, &full, 4);
    assert_eq!(rest, vec![a[0], a[2], a[3]]);
    assert_eq!(
        p.block_received(PeerHandle(0), a[0]),
        Received::NotRequested
    );
}

#[test]
fn seeds_count_once_and_leave_cleanly() {
    let n = 3;
    let mut p = picker(n, 1, 2, cfg(0));
    p.peer_has_all(PeerHandle(0));
    p.peer_has_piece(PeerHandle(0), 1);
    p.peer_has_piece(PeerHandle(1), 1);
    assert_eq!(p.availability(1), 2);
    assert_eq!(p.availability(0), 1);
    // The session may say had_all for a peer that filled its bitfield with haves.
    p.peer_gone(PeerHandle(1), &bf(n, &[1]), false);
    p.peer_gone(PeerHandle(0), &Bitfield::full(n), true);
    assert_eq!((0..n).map(|i| p.availability(i)).sum::<u32>(), 0);
}

#[test]
fn out_of_range_input_is_refused_without_panicking() {
    let n = 3;
    let mut p = picker(n, 2, 2, cfg(0));
    let peer = PeerHandle(0);
    assert!(!p.peer_has_piece(peer, n));
    assert!(!p.peer_has_piece(peer, u32::MAX));
    assert!(!p.peer_has_bitfield(peer, &Bitfield::full(n + 8)));
    assert!(!p.piece_verified(n, true));
    p.peer_gone(PeerHandle(5), &Bitfield::full(1), false);
    assert!(pick(&mut p, 0, &Bitfield::full(n + 1), 5).is_empty());
    assert!(!p.is_interesting(&Bitfield::full(n + 1)));
    p.peer_has_all(peer);
    let got = pick(&mut p, 0, &Bitfield::full(n), 1);
    let b = got[0];
    for bad in [
        Block { begin: 1, ..b },
        Block { length: 1, ..b },
        Block {
            begin: u32::MAX - BLOCK_SIZE + 1,
            ..b
        },
        Block {
            begin: 2 * BLOCK_SIZE,
            ..b
        },
        Block { piece: n, ..b },
        Block {
            piece: u32::MAX,
            ..b
        },
    ] {
        assert_eq!(p.block_received(peer, bad), Received::NotRequested);
        p.request_dropped(peer, bad);
        assert_eq!(p.outstanding(peer), 1);
    }
    assert!(matches!(
        p.block_received(peer, b),
        Received::Accepted { .. }
    ));
    // Degenerate torrents.
    let mut empty = Picker::new(0, 0, &Bitfield::new(0), 1, cfg(4));
    assert!(empty.is_complete());
    assert!(pick(&mut empty, 0, &Bitfield::new(0), 5).is_empty());
}

#[test]
fn we_already_have_what_the_constructor_was_given() {
    let n = 4;
    let have = bf(n, &[0, 2]);
    let mut p = Picker::new(B, 4 * B, &have, 1, cfg(0));
    assert_eq!(p.remaining(), 2);
    p.peer_has_all(PeerHandle(0));
    let got: BTreeSet<u32> = pick(&mut p, 0, &Bitfield::full(n), 10)
        .iter()
        .map(|b| b.piece)
        .collect();
    assert_eq!(got, [1, 3].into_iter().collect());
    // Our bitfield may be built from a wider buffer: extra bits are ignored.
    let p = Picker::new(B, 4 * B, &Bitfield::full(20), 1, cfg(0));
    assert!(p.is_complete());
}

#[test]
fn same_seed_same_picks() {
    let run = |seed| {
        let n = 64;
        let mut p = picker(n, 3, seed, PickerConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let mut out = Vec::new();
        for peer in 0..6 {
            let has: Vec<u32> = (0..n).filter(|_| rng.random_range(0..3) > 0).collect();
            let has = bf(n, &has);
            p.peer_has_bitfield(PeerHandle(peer), &has);
            out.extend(pick(&mut p, peer, &has, 7));
        }
        out
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

/// A simulated swarm with peers coming and going, requests dropped, late and duplicate blocks,
/// and corrupt pieces: every wanted piece is eventually verified, nothing unwanted or absent is
/// requested, and no peer is ever asked twice for a block it still owes us.
#[test]
fn simulated_swarms_complete_without_duplicate_requests() {
    for seed in 0..60u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: u32 = rng.random_range(1..40);
        let blocks = rng.random_range(1..5u64);
        let pl = blocks * B;
        let total = pl * u64::from(n) - rng.random_range(0..pl);
        let config = PickerConfig {
            random_first_pieces: rng.random_range(0..5),
            sequential: rng.random_range(0..4) == 0,
            max_endgame_duplicates: rng.random_range(0..3),
        };
        let mut have = Bitfield::new(n);
        for i in 0..n {
            if rng.random_range(0..5) == 0 {
                have.set(i);
            }
        }
        let mut p = Picker::new(pl, total, &have, seed, config);
        let mut wanted = Bitfield::new(n);
        for i in 0..n {
            if rng.random_range(0..4) > 0 {
                wanted.set(i);
            }
        }
        p.set_wanted(&wanted);
        let num_peers = rng.random_range(1..6usize);
        // Per peer: its pieces (None while disconnected) and requests it owes us.
        let mut peers: Vec<Option<Bitfield>> = vec![None; num_peers];
        let mut owed: Vec<BTreeSet<Block>> = vec![BTreeSet::new(); num_peers];
        let mut corrupted = BTreeSet::new();
        let mut steps = 0;
        while !p.is_complete() {
            steps += 1;
            assert!(steps < 20_000, "seed {seed}: no progress");
            let i = rng.random_range(0..num_peers);
            let h = PeerHandle(i);
            let Some(has) = peers[i].clone() else {
                // Connect; peer 0 is always a seed so the swarm can finish.
                let has = if i == 0 || rng.random_range(0..3) == 0 {
                    p.peer_has_all(h);
                    Bitfield::full(n)
                } else {
                    let ones: Vec<u32> = (0..n).filter(|_| rng.random_range(0..2) == 0).collect();
                    let b = bf(n, &ones);
                    p.peer_has_bitfield(h, &b);
                    b
                };
                peers[i] = Some(has);
                continue;
            };
            match rng.random_range(0..10) {
                0..=3 => {
                    let mut out = Vec::new();
                    p.pick(h, &has, rng.random_range(1..6), &mut out);
                    for b in out {
                        assert!(has.get(b.piece), "seed {seed}: piece the peer lacks");
                        assert!(wanted.get(b.piece), "seed {seed}: unwanted piece");
                        assert!(!p.have().get(b.piece), "seed {seed}: piece we have");
                        assert!(owed[i].insert(b), "seed {seed}: {b:?} asked twice of {h}");
                    }
                    assert_eq!(owed[i].len(), p.outstanding(h));
                }
                4..=7 => {
                    let Some(&b) = owed[i]
                        .iter()
                        .nth(rng.random_range(0..owed[i].len().max(1)))
                    else {
                        continue;
                    };
                    owed[i].remove(&b);
                    match p.block_received(h, b) {
                        Received::Accepted {
                            piece_complete,
                            cancel,
                        } => {
                            for (o, c) in cancel {
                                assert_eq!(c, b);
                                assert!(
                                    owed[o.0].remove(&c),
                                    "seed {seed}: cancel of a block not owed"
                                );
                                // Some cancels cross the block on the wire.
                                if rng.random_range(0..2) == 0 {
                                    assert_eq!(p.block_received(o, c), Received::Duplicate);
                                }
                            }
                            if piece_complete {
                                // The first attempt at some pieces is corrupt.
                                let ok = !corrupted.insert(b.piece) || rng.random_range(0..3) > 0;
                                p.piece_verified(b.piece, ok);
                            }
                        }
                        Received::Duplicate => {}
                        Received::NotRequested => panic!("seed {seed}: owed block refused"),
                    }
                }
                8 => {
                    if let Some(&b) = owed[i].iter().next() {
                        owed[i].remove(&b);
                        p.request_dropped(h, b);
                        assert_eq!(owed[i].len(), p.outstanding(h));
                    }
                }
                _ => {
                    if i != 0 || rng.random_range(0..4) == 0 {
                        p.peer_gone(h, &has, has.is_full());
                        owed[i].clear();
                        peers[i] = None;
                    }
                }
            }
        }
        for i in 0..n {
            assert_eq!(p.have().get(i), wanted.get(i) || have.get(i), "seed {seed}");
        }
    }
}

#[test]
fn a_web_seed_claims_runs_of_unstarted_pieces_rarest_first_and_gives_them_back() {
    let mut p = picker(10, 2, 1, cfg(0));
    // Every piece but 6..=8 is held by a peer: the web seed starts at a piece nobody has.
    p.peer_has_bitfield(PeerHandle(1), &bf(10, &[0, 1, 2, 3, 4, 5, 9]));
    let ws = PeerHandle(usize::MAX);
    let (first, count) = p.claim_run(ws, 8, |_| false).unwrap();
    assert!((6..=8).contains(&first), "{first}");
    assert_eq!(first + count, 10.min(first + 8));
    assert_eq!(p.outstanding(ws), 2 * count as usize);
    // Peers get none of the claimed blocks (outside endgame).
    let got = pick(&mut p, 1, &bf(10, &(0..10).collect::<Vec<_>>()), 100);
    assert!(
        got.iter()
            .all(|b| b.piece < first || b.piece >= first + count)
    );
    // A started piece is not claimed, nor one `skip` names.
    let mut q = picker(4, 2, 1, cfg(0));
    let _ = pick(&mut q, 1, &bf(4, &[0]), 1);
    assert_eq!(q.claim_run(ws, 1, |p| p != 3), Some((3, 1)));
    assert_eq!(q.claim_run(ws, 4, |_| true), None);
    // Given back untouched, its pieces are unstarted again and can be claimed again.
    let before = p.outstanding(ws);
    p.drop_requests(ws);
    assert_eq!(p.outstanding(ws), 0);
    assert!(before > 0);
    assert!(p.claim_run(ws, 1, |_| false).is_some());
}
