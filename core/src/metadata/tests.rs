use super::*;

const T0: Time = Time::ZERO;

fn info_of_len(len: usize) -> Vec<u8> {
    // Deterministic, and different in every piece so a swapped piece is caught.
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn p(n: usize) -> PeerHandle {
    PeerHandle(n)
}

fn actions(f: &mut MetadataFetcher) -> Vec<(PeerHandle, u32)> {
    std::iter::from_fn(|| f.poll_action())
        .map(|MetadataAction::Request { peer, piece }| (peer, piece))
        .collect()
}

fn events(f: &mut MetadataFetcher) -> Vec<MetadataEvent> {
    std::iter::from_fn(|| f.poll_event()).collect()
}

/// A fetcher for `info`, with `config`.
fn fetcher(info: &[u8], config: FetcherConfig) -> MetadataFetcher {
    MetadataFetcher::new(InfoHash::of(info), config)
}

/// Answers `piece` from `info` for `peer`.
fn answer(f: &mut MetadataFetcher, now: Time, peer: PeerHandle, info: &[u8], piece: u32) {
    f.handle_message(now, peer, &serve(info, piece));
}

/// Answers every request with `respond(peer, piece)` until the fetcher asks nothing more;
/// returns the requests seen.
fn drive(
    f: &mut MetadataFetcher,
    now: Time,
    mut respond: impl FnMut(&mut MetadataFetcher, PeerHandle, u32),
) -> Vec<(PeerHandle, u32)> {
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let batch = actions(f);
        if batch.is_empty() {
            break;
        }
        for (peer, piece) in batch {
            seen.push((peer, piece));
            let _ = now;
            respond(f, peer, piece);
        }
    }
    seen
}

fn completed(evs: &[MetadataEvent]) -> Option<&[u8]> {
    evs.iter().find_map(|e| match e {
        MetadataEvent::Complete { info } => Some(info.as_slice()),
        _ => None,
    })
}

fn banned(evs: &[MetadataEvent]) -> Vec<(PeerHandle, MetadataError)> {
    evs.iter()
        .filter_map(|e| match e {
            MetadataEvent::BadPeer { peer, reason } => Some((*peer, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_round_trip_and_match_bep9_bytes() {
    let req = MetadataMessage::Request { piece: 0 };
    assert_eq!(req.encode(), b"d8:msg_typei0e5:piecei0ee");
    assert_eq!(MetadataMessage::decode(&req.encode()), Ok(req));

    let data = MetadataMessage::Data {
        piece: 0,
        total_size: 3425,
        data: b"xyz",
    };
    let bytes = data.encode();
    assert_eq!(bytes, b"d8:msg_typei1e5:piecei0e10:total_sizei3425eexyz");
    assert_eq!(MetadataMessage::decode(&bytes), Ok(data));

    let rej = MetadataMessage::Reject { piece: 7 };
    assert_eq!(rej.encode(), b"d8:msg_typei2e5:piecei7ee");
    assert_eq!(MetadataMessage::decode(&rej.encode()), Ok(rej));

    let max = MetadataMessage::Request { piece: u32::MAX };
    assert_eq!(MetadataMessage::decode(&max.encode()), Ok(max));
}

#[test]
fn decoding_accepts_what_other_clients_send() {
    // Unsorted keys, an extra key, and bytes after a request's dictionary.
    assert_eq!(
        MetadataMessage::decode(b"d5:piecei3e8:msg_typei0e4:junki1eeTRAILING"),
        Ok(MetadataMessage::Request { piece: 3 })
    );
    // A data message with no bytes (decodes; the fetcher judges the length).
    assert_eq!(
        MetadataMessage::decode(b"d8:msg_typei1e5:piecei0e10:total_sizei5ee"),
        Ok(MetadataMessage::Data {
            piece: 0,
            total_size: 5,
            data: b""
        })
    );
}

#[test]
fn decoding_rejects_malformed_messages_with_a_reason() {
    let cases: &[(&[u8], MetadataError)] = &[
        (
            b"",
            MetadataError::Bencode(bencode::DecodeError::UnexpectedEnd { pos: 0 }),
        ),
        (b"li1ee", MetadataError::NotDict),
        (b"d5:piecei0ee", MetadataError::MissingMsgType),
        (b"d8:msg_type1:1e", MetadataError::MissingMsgType),
        (
            b"d8:msg_typei3e5:piecei0ee",
            MetadataError::UnknownMsgType(3),
        ),
        (
            b"d8:msg_typei-1e5:piecei0ee",
            MetadataError::UnknownMsgType(-1),
        ),
        (b"d8:msg_typei0ee", MetadataError::BadPieceIndex),
        (b"d8:msg_typei0e5:piecei-1ee", MetadataError::BadPieceIndex),
        (
            b"d8:msg_typei2e5:piecei4294967296ee",
            MetadataError::BadPieceIndex,
        ),
        (b"d8:msg_typei1e5:piecei0ee", MetadataError::BadTotalSize),
        (
            b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee",
            MetadataError::BadTotalSize,
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            MetadataMessage::decode(bytes).as_ref(),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        // Every reason reads as a sentence.
        assert!(!want.to_string().is_empty());
    }
    let mut long = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee".to_vec();
    long.extend(std::iter::repeat_n(0u8, PIECE_SIZE as usize + 1));
    assert_eq!(
        MetadataMessage::decode(&long),
        Err(MetadataError::DataTooLong {
            len: PIECE_SIZE as usize + 1
        })
    );
    // Deep nesting is refused by the bounded decoder, not walked.
    let deep = [
        b"d8:msg_typei0e5:piecei0e1:x".as_slice(),
        &[b'l'; 50],
        &[b'e'; 51],
    ]
    .concat();
    assert!(matches!(
        MetadataMessage::decode(&deep),
        Err(MetadataError::Bencode(bencode::DecodeError::TooDeep { .. }))
    ));
}

#[test]
fn serving_splits_into_pieces_and_rejects_past_the_end() {
    let info = info_of_len(2 * PIECE_SIZE as usize + 100);
    assert_eq!(piece_count(info.len() as u64), 3);
    assert_eq!(piece_count(u64::from(PIECE_SIZE)), 1);
    assert_eq!(piece_count(u64::from(PIECE_SIZE) + 1), 2);
    match serve(&info, 1) {
        MetadataMessage::Data {
            piece,
            total_size,
            data,
        } => {
            assert_eq!((piece, total_size), (1, info.len() as u64));
            assert_eq!(data, &info[PIECE_SIZE as usize..2 * PIECE_SIZE as usize]);
        }
        other => panic!("{other:?}"),
    }
    match serve(&info, 2) {
        MetadataMessage::Data { data, .. } => assert_eq!(data.len(), 100),
        other => panic!("{other:?}"),
    }
    assert_eq!(serve(&info, 3), MetadataMessage::Reject { piece: 3 });
    assert_eq!(
        serve(&info, u32::MAX),
        MetadataMessage::Reject { piece: u32::MAX }
    );
    assert_eq!(serve(&[], 0), MetadataMessage::Reject { piece: 0 });
}

#[test]
fn one_honest_peer_delivers_verified_metadata_with_bounded_requests() {
    let info = info_of_len(3 * PIECE_SIZE as usize + 5);
    let mut f = fetcher(&info, FetcherConfig::default());
    assert_eq!(f.poll_timeout(), None);
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    // Two in flight at once (the default), lowest pieces first.
    assert_eq!(actions(&mut f), vec![(p(1), 0), (p(1), 1)]);
    assert_eq!(f.poll_timeout(), Some(T0 + Duration::from_secs(20)));
    assert_eq!(f.progress(), Some((0, 4)));
    answer(&mut f, T0, p(1), &info, 1);
    assert_eq!(actions(&mut f), vec![(p(1), 2)]);
    answer(&mut f, T0, p(1), &info, 0);
    answer(&mut f, T0, p(1), &info, 2);
    assert_eq!(actions(&mut f), vec![(p(1), 3)]);
    assert!(events(&mut f).is_empty());
    assert!(!f.is_complete());
    answer(&mut f, T0, p(1), &info, 3);
    let evs = events(&mut f);
    assert_eq!(evs, vec![MetadataEvent::Complete { info: info.clone() }]);
    assert!(f.is_complete());
    assert_eq!(f.poll_timeout(), None);
    // Done: nothing more is asked, whatever arrives.
    f.handle_peer(T0, p(2), info.len() as u64).unwrap();
    answer(&mut f, T0, p(1), &info, 0);
    assert!(actions(&mut f).is_empty());
    assert!(events(&mut f).is_empty());
}

#[test]
fn a_single_piece_torrent_completes() {
    let info = info_of_len(300);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(0), 300).unwrap();
    assert_eq!(actions(&mut f), vec![(p(0), 0)]);
    answer(&mut f, T0, p(0), &info, 0);
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn requests_spread_over_several_peers() {
    let info = info_of_len(6 * PIECE_SIZE as usize);
    let mut f = fetcher(&info, FetcherConfig::default());
    for n in 0..3 {
        f.handle_peer(T0, p(n), info.len() as u64).unwrap();
    }
    let first: BTreeSet<PeerHandle> = actions(&mut f).into_iter().map(|(q, _)| q).collect();
    assert_eq!(first.len(), 3, "every peer gets requests");
    let info2 = info.clone();
    drive(&mut f, T0, |f, peer, piece| {
        answer(f, T0, peer, &info2, piece)
    });
    // Answer what was asked in the first batch too (drive saw only later ones).
    for piece in 0..6 {
        for n in 0..3 {
            answer(&mut f, T0, p(n), &info, piece);
        }
    }
    let evs = events(&mut f);
    assert_eq!(completed(&evs), Some(info.as_slice()));
    assert!(banned(&evs).is_empty());
}

#[test]
fn sizes_of_zero_or_over_the_limit_are_refused() {
    let info = info_of_len(100);
    let config = FetcherConfig {
        max_metadata_size: 1000,
        ..FetcherConfig::default()
    };
    let mut f = fetcher(&info, config);
    assert_eq!(f.handle_peer(T0, p(1), 0), Err(MetadataError::ZeroSize));
    assert_eq!(
        f.handle_peer(T0, p(2), 1001),
        Err(MetadataError::SizeTooLarge {
            size: 1001,
            limit: 1000
        })
    );
    assert!(actions(&mut f).is_empty());
    assert_eq!(f.handle_peer(T0, p(3), 1000), Ok(()));
    assert_eq!(actions(&mut f), vec![(p(3), 0)]);
    // The default limit is the documented one.
    assert_eq!(
        FetcherConfig::default().max_metadata_size,
        DEFAULT_MAX_METADATA_SIZE
    );
    assert!(
        MetadataError::SizeTooLarge { size: 9, limit: 1 }
            .to_string()
            .contains("over the limit")
    );
}

#[test]
fn a_silent_peer_times_out_and_its_pieces_go_to_another() {
    let info = info_of_len(2 * PIECE_SIZE as usize);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0), (p(1), 1)]);
    let t1 = Time::from_secs(1);
    f.handle_peer(t1, p(2), info.len() as u64).unwrap();
    assert!(actions(&mut f).is_empty(), "nothing left to ask for");
    let due = T0 + Duration::from_secs(20);
    assert_eq!(f.poll_timeout(), Some(due));
    // Early: nothing happens.
    f.handle_timeout(Time::from_secs(19));
    assert!(actions(&mut f).is_empty());
    f.handle_timeout(due);
    assert_eq!(actions(&mut f), vec![(p(2), 0), (p(2), 1)]);
    // A second call at the same time does nothing more.
    f.handle_timeout(due);
    assert!(actions(&mut f).is_empty());
    // The silent peer is in backoff until due + 30 s; then it may be asked again if needed.
    answer(&mut f, due, p(2), &info, 0);
    answer(&mut f, due, p(2), &info, 1);
    let evs = events(&mut f);
    assert_eq!(completed(&evs), Some(info.as_slice()));
    assert!(banned(&evs).is_empty(), "slow is not bad");
}

#[test]
fn a_late_answer_after_a_timeout_is_still_used() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), 100).unwrap();
    let _ = actions(&mut f);
    f.handle_timeout(Time::from_secs(20));
    assert!(actions(&mut f).is_empty(), "the only peer is backing off");
    assert_eq!(f.poll_timeout(), Some(Time::from_secs(50)));
    answer(&mut f, Time::from_secs(21), p(1), &info, 0);
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn a_backed_off_peer_is_asked_again_after_the_backoff() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), 100).unwrap();
    let _ = actions(&mut f);
    f.handle_message(T0, p(1), &MetadataMessage::Reject { piece: 0 });
    assert!(actions(&mut f).is_empty());
    assert_eq!(f.poll_timeout(), Some(Time::from_secs(30)));
    f.handle_timeout(Time::from_secs(29));
    assert!(actions(&mut f).is_empty());
    f.handle_timeout(Time::from_secs(30));
    assert_eq!(actions(&mut f), vec![(p(1), 0)]);
}

#[test]
fn a_reject_sends_the_piece_to_another_peer() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), 100).unwrap();
    f.handle_peer(T0, p(2), 100).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0)]);
    // A reject for a piece not asked of it changes nothing.
    f.handle_message(T0, p(2), &MetadataMessage::Reject { piece: 0 });
    assert!(actions(&mut f).is_empty());
    f.handle_message(T0, p(1), &MetadataMessage::Reject { piece: 0 });
    assert_eq!(actions(&mut f), vec![(p(2), 0)]);
    answer(&mut f, T0, p(2), &info, 0);
    let evs = events(&mut f);
    assert_eq!(completed(&evs), Some(info.as_slice()));
    assert!(banned(&evs).is_empty());
}

#[test]
fn a_peer_that_changes_its_size_is_banned_and_not_asked_again() {
    let info = info_of_len(PIECE_SIZE as usize + 10);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    f.handle_peer(T0, p(2), info.len() as u64).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0), (p(1), 1)]);
    f.handle_message(
        T0,
        p(1),
        &MetadataMessage::Data {
            piece: 0,
            total_size: 99,
            data: &info[..PIECE_SIZE as usize],
        },
    );
    assert_eq!(
        banned(&events(&mut f)),
        vec![(
            p(1),
            MetadataError::SizeChanged {
                advertised: info.len() as u64,
                sent: 99
            }
        )]
    );
    assert!(f.is_banned(p(1)));
    assert_eq!(actions(&mut f), vec![(p(2), 0), (p(2), 1)]);
    // Even a correct piece from it now is ignored, and it is never asked.
    answer(&mut f, T0, p(1), &info, 0);
    answer(&mut f, T0, p(2), &info, 0);
    f.handle_timeout(Time::from_secs(100));
    let asked: Vec<_> = actions(&mut f);
    assert!(asked.iter().all(|&(q, _)| q == p(2)), "{asked:?}");
    answer(&mut f, T0, p(2), &info, 1);
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn out_of_range_and_wrong_length_pieces_are_bans() {
    let info = info_of_len(PIECE_SIZE as usize + 10);
    let size = info.len() as u64;
    let mut f = fetcher(&info, FetcherConfig::default());
    for n in 1..=4 {
        f.handle_peer(T0, p(n), size).unwrap();
    }
    let _ = actions(&mut f);
    let data = |piece, data| MetadataMessage::Data {
        piece,
        total_size: size,
        data,
    };
    f.handle_message(T0, p(1), &data(2, b"x"));
    f.handle_message(T0, p(2), &data(0, &info[..100]));
    f.handle_message(T0, p(3), &data(1, &info[..PIECE_SIZE as usize]));
    f.handle_message(T0, p(4), &data(u32::MAX, b""));
    assert_eq!(
        banned(&events(&mut f)),
        vec![
            (
                p(1),
                MetadataError::PieceOutOfRange {
                    piece: 2,
                    pieces: 2
                }
            ),
            (
                p(2),
                MetadataError::WrongLength {
                    piece: 0,
                    len: 100,
                    expected: PIECE_SIZE as usize
                }
            ),
            (
                p(3),
                MetadataError::WrongLength {
                    piece: 1,
                    len: PIECE_SIZE as usize,
                    expected: 10
                }
            ),
            (
                p(4),
                MetadataError::PieceOutOfRange {
                    piece: u32::MAX,
                    pieces: 2
                }
            ),
        ]
    );
    // Nobody left to ask: the fetcher waits for new peers, and a new one finishes it.
    assert!(actions(&mut f).is_empty());
    f.handle_peer(T0, p(5), size).unwrap();
    let info2 = info.clone();
    drive(&mut f, T0, |f, peer, piece| {
        answer(f, T0, peer, &info2, piece)
    });
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn repeated_and_unrequested_pieces_are_ignored_without_a_ban() {
    let info = info_of_len(3 * PIECE_SIZE as usize);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    f.handle_peer(T0, p(2), info.len() as u64).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0), (p(1), 1), (p(2), 2)]);
    // p(2) sends p(1)'s piece, unasked: not used (p(1) is expected to send it).
    answer(&mut f, T0, p(2), &info, 0);
    answer(&mut f, T0, p(1), &info, 0);
    answer(&mut f, T0, p(1), &info, 0);
    answer(&mut f, T0, p(1), &info, 1);
    assert_eq!(f.progress(), Some((2, 3)));
    // From a peer we never heard of, or before any handshake: ignored.
    answer(&mut f, T0, p(9), &info, 2);
    assert!(events(&mut f).is_empty());
    assert!(actions(&mut f).is_empty());
    answer(&mut f, T0, p(2), &info, 2);
    let evs = events(&mut f);
    assert_eq!(completed(&evs), Some(info.as_slice()));
    assert!(banned(&evs).is_empty());
}

#[test]
fn a_lone_liar_is_convicted_by_the_hash() {
    let info = info_of_len(2 * PIECE_SIZE as usize);
    let mut lie = info.clone();
    lie[5] ^= 1;
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    let lie2 = lie.clone();
    drive(&mut f, T0, |f, peer, piece| {
        answer(f, T0, peer, &lie2, piece)
    });
    answer(&mut f, T0, p(1), &lie, 0);
    answer(&mut f, T0, p(1), &lie, 1);
    let evs = events(&mut f);
    assert_eq!(completed(&evs), None);
    assert_eq!(banned(&evs), vec![(p(1), MetadataError::HashMismatch)]);
    f.handle_peer(T0, p(2), info.len() as u64).unwrap();
    let info2 = info.clone();
    drive(&mut f, T0, |f, peer, piece| {
        assert_eq!(peer, p(2));
        answer(f, T0, peer, &info2, piece)
    });
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

/// Two honest peers and one liar share the work; the hash fails; the fetcher then goes one peer
/// at a time, completes, and convicts exactly the liar.
fn find_the_liar(liar: usize) {
    let info = info_of_len(6 * PIECE_SIZE as usize);
    let mut lie = info.clone();
    // Every piece is wrong, whichever the liar is asked for.
    for piece in 0..6 {
        lie[piece * PIECE_SIZE as usize + 3] ^= 0xff;
    }
    let mut f = fetcher(&info, FetcherConfig::default());
    for n in 0..3 {
        f.handle_peer(T0, p(n), info.len() as u64).unwrap();
    }
    let mut all_events = Vec::new();
    let mut hash_failed = None;
    for _ in 0..100 {
        let batch = actions(&mut f);
        if batch.is_empty() {
            break;
        }
        for (peer, piece) in batch {
            let src = if peer == p(liar) { &lie } else { &info };
            answer(&mut f, T0, peer, src, piece);
        }
        for e in events(&mut f) {
            if let MetadataEvent::HashFailed { peers } = &e {
                hash_failed = Some(peers.clone());
            }
            all_events.push(e);
        }
    }
    assert_eq!(
        completed(&all_events),
        Some(info.as_slice()),
        "{all_events:?}"
    );
    assert_eq!(hash_failed, Some(vec![p(0), p(1), p(2)]));
    let convicted: Vec<PeerHandle> = banned(&all_events).into_iter().map(|(q, _)| q).collect();
    assert_eq!(convicted, vec![p(liar)]);
    assert!(f.is_banned(p(liar)));
    assert!(!f.is_banned(p((liar + 1) % 3)));
}

#[test]
fn the_liar_among_several_is_found_whichever_it_is() {
    for liar in 0..3 {
        find_the_liar(liar);
    }
}

#[test]
fn a_leaving_peer_gives_its_pieces_back() {
    let info = info_of_len(2 * PIECE_SIZE as usize);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    f.handle_peer(T0, p(2), info.len() as u64).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0), (p(1), 1)]);
    f.handle_peer_gone(T0, p(1));
    assert_eq!(actions(&mut f), vec![(p(2), 0), (p(2), 1)]);
    // Its handle, reused by a newcomer, starts clean.
    f.handle_peer(T0, p(1), info.len() as u64).unwrap();
    answer(&mut f, T0, p(2), &info, 0);
    answer(&mut f, T0, p(2), &info, 1);
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn the_majority_size_is_tried_first_and_a_wrong_size_cannot_block_the_right_one() {
    let info = info_of_len(PIECE_SIZE as usize + 1);
    let right = info.len() as u64;
    let mut f = fetcher(&info, FetcherConfig::default());
    // The liar advertises a smaller size (which wins ties) and sends consistent garbage.
    f.handle_peer(T0, p(0), 50).unwrap();
    f.handle_peer(T0, p(1), right).unwrap();
    f.handle_peer(T0, p(2), right).unwrap();
    // The liar, alone at first, was asked; once two peers agree on another size, their size
    // is fetched instead.
    let first = actions(&mut f);
    assert_eq!(first[0], (p(0), 0));
    assert!(first[1..].iter().all(|&(q, _)| q != p(0)), "{first:?}");
    assert!(first.len() > 1);
    f.handle_peer_gone(T0, p(1));
    f.handle_peer_gone(T0, p(2));
    // Only the liar's size is left: it is tried, fails the hash, and the liar is convicted.
    assert_eq!(actions(&mut f), vec![(p(0), 0)]);
    let garbage = vec![0u8; 50];
    answer(&mut f, T0, p(0), &garbage, 0);
    assert_eq!(
        banned(&events(&mut f)),
        vec![(p(0), MetadataError::HashMismatch)]
    );
    f.handle_peer(T0, p(3), right).unwrap();
    let info2 = info.clone();
    drive(&mut f, T0, |f, peer, piece| {
        answer(f, T0, peer, &info2, piece)
    });
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn a_new_handshake_with_another_size_moves_the_peer() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), 200).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0)]);
    f.handle_peer(T0, p(1), 100).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0)]);
    answer(&mut f, T0, p(1), &info, 0);
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn time_going_backwards_counts_as_the_latest_time() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_timeout(Time::from_secs(100));
    f.handle_peer(Time::from_secs(5), p(1), 100).unwrap();
    let _ = actions(&mut f);
    assert_eq!(f.poll_timeout(), Some(Time::from_secs(120)));
}

#[test]
fn a_convicted_peer_stays_convicted_whatever_it_advertises_next() {
    let info = info_of_len(100);
    let mut f = fetcher(&info, FetcherConfig::default());
    f.handle_peer(T0, p(1), 100).unwrap();
    let _ = actions(&mut f);
    answer(&mut f, T0, p(1), &[0u8; 100], 0);
    assert_eq!(
        banned(&events(&mut f)),
        vec![(p(1), MetadataError::HashMismatch)]
    );
    assert_eq!(f.handle_peer(T0, p(1), 0), Err(MetadataError::ZeroSize));
    assert_eq!(f.handle_peer(T0, p(1), 100), Ok(()));
    assert!(f.is_banned(p(1)));
    f.handle_peer(T0, p(1), 200).unwrap();
    assert!(f.is_banned(p(1)));
    f.handle_timeout(Time::from_secs(1000));
    assert!(actions(&mut f).is_empty());
    // Only a disconnect frees the handle for a new peer.
    f.handle_peer_gone(T0, p(1));
    f.handle_peer(T0, p(1), 100).unwrap();
    assert_eq!(actions(&mut f), vec![(p(1), 0)]);
}

#[test]
fn silent_peers_agreeing_on_a_size_cannot_keep_an_honest_peer_unasked() {
    let info = info_of_len(20_000);
    let mut f = fetcher(&info, FetcherConfig::default());
    // Two peers that advertise another size and never answer, then the honest one.
    f.handle_peer(T0, p(1), 50_000).unwrap();
    f.handle_peer(T0, p(2), 50_000).unwrap();
    f.handle_peer(T0, p(3), info.len() as u64).unwrap();
    let first = actions(&mut f);
    assert!(first.iter().all(|&(peer, _)| peer != p(3)), "{first:?}");
    // Their requests time out: the honest peer is asked and the metadata completes.
    let later = T0 + Duration::from_secs(21);
    f.handle_timeout(later);
    let asked = drive(&mut f, later, |f, peer, piece| {
        if peer == p(3) {
            answer(f, later, peer, &info, piece);
        }
    });
    assert!(asked.iter().any(|&(peer, _)| peer == p(3)), "{asked:?}");
    assert_eq!(completed(&events(&mut f)), Some(info.as_slice()));
}

#[test]
fn slow_peers_taking_turns_cannot_keep_a_willing_peer_unasked() {
    // One piece; silent peers (0, 4, 5), a liar (1), a size changer (2), a rejecter (3), and the
    // honest peer last in handle order (6).
    let info = info_of_len(1);
    let mut f = fetcher(&info, FetcherConfig::default());
    for i in 0..7 {
        f.handle_peer(T0, p(i), 1).unwrap();
    }
    let mut now = T0;
    let mut done = false;
    for _ in 0..60 {
        for (peer, piece) in actions(&mut f) {
            match peer.0 {
                0 | 4 | 5 => {}
                1 => {
                    let mut d = info.clone();
                    d[0] ^= 1;
                    let lie = MetadataMessage::Data {
                        piece,
                        total_size: 1,
                        data: &d,
                    };
                    f.handle_message(now, peer, &lie);
                }
                2 => {
                    let other = MetadataMessage::Data {
                        piece,
                        total_size: 2,
                        data: &info,
                    };
                    f.handle_message(now, peer, &other);
                }
                3 => f.handle_message(now, peer, &MetadataMessage::Reject { piece }),
                _ => answer(&mut f, now, peer, &info, piece),
            }
        }
        if completed(&events(&mut f)) == Some(info.as_slice()) {
            done = true;
            break;
        }
        now += Duration::from_secs(5);
        if f.poll_timeout().is_some_and(|t| t <= now) {
            f.handle_timeout(now);
        }
    }
    assert!(done, "the honest peer was never asked within 5 minutes");
}

#[test]
fn a_second_timer_call_after_a_source_switch_does_nothing() {
    // Found by the `metadata` fuzz target. After a failed hash check the fetcher takes every
    // piece from one source; when that source stalls, the switch to the next empties the
    // attempt, which must then follow the majority size at once, not at the next call.
    let info = info_of_len(2 * PIECE_SIZE as usize);
    let size = info.len() as u64;
    let mut lie = info.clone();
    lie[PIECE_SIZE as usize] ^= 1;
    let config = FetcherConfig {
        max_in_flight_per_peer: 1,
        ..FetcherConfig::default()
    };
    let mut f = fetcher(&info, config);
    f.handle_peer(T0, p(0), size).unwrap();
    f.handle_peer(T0, p(1), size).unwrap();
    assert_eq!(actions(&mut f), vec![(p(0), 0), (p(1), 1)]);
    answer(&mut f, T0, p(0), &info, 0);
    answer(&mut f, T0, p(1), &lie, 1);
    assert!(matches!(
        events(&mut f)[..],
        [MetadataEvent::HashFailed { .. }]
    ));
    // One source now: peer 0 delivers piece 0 and is asked for piece 1.
    assert_eq!(actions(&mut f), vec![(p(0), 0)]);
    answer(&mut f, T0, p(0), &info, 0);
    assert_eq!(actions(&mut f), vec![(p(0), 1)]);
    // Two peers with a smaller size arrive; the attempt has a piece, so it keeps its size.
    f.handle_peer(T0, p(2), size - 1).unwrap();
    f.handle_peer(T0, p(3), size - 1).unwrap();
    assert_eq!(actions(&mut f), vec![]);
    // Peer 0 stalls: among the peers that may be asked, the smaller size has the majority.
    let later = T0 + Duration::from_secs(21);
    f.handle_timeout(later);
    let first = actions(&mut f);
    assert!(
        first.iter().all(|&(peer, _)| peer == p(2) || peer == p(3)),
        "{first:?}"
    );
    f.handle_timeout(later);
    assert_eq!(actions(&mut f), vec![], "a second timer call asked again");
    assert_eq!(events(&mut f), vec![]);
}
