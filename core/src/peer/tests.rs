//! Peer state machine tests: hand-built wire bytes in, events and sent messages out, virtual time.

use super::*;

const INFO: InfoHash = InfoHash([1; 20]);
const US: PeerId = PeerId([2; 20]);
const THEM: PeerId = PeerId([3; 20]);
const PIECES: u32 = 10;

fn t(secs: u64) -> Time {
    Time::from_secs(secs)
}

fn config() -> PeerConfig {
    PeerConfig {
        info_hash: INFO,
        our_id: US,
        piece_count: PIECES,
        listen_port: 6881,
        max_serve_queue: 4,
    }
}

fn handshake(info: InfoHash, id: PeerId, fast: bool, ext: bool) -> Vec<u8> {
    let mut h = Handshake::new(info, id);
    if !fast {
        h.reserved[7] &= !0x04;
    }
    if !ext {
        h.reserved[5] &= !0x10;
    }
    let mut out = Vec::new();
    h.encode(&mut out);
    out
}

fn msg(m: Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

fn events(p: &mut Peer) -> Vec<PeerEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

/// The names of the messages the peer sent (after an optional leading handshake).
fn sent(p: &mut Peer) -> Vec<String> {
    let out = p.take_output();
    let mut rest = &out[..];
    let mut names = Vec::new();
    if rest.len() >= Handshake::LEN && Handshake::decode(rest).is_ok_and(|h| h.is_some()) {
        names.push("handshake".to_string());
        rest = &rest[Handshake::LEN..];
    }
    while let Ok(Some((m, used))) = wire::decode(rest, 1 << 20) {
        names.push(m.name().to_string());
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "undecodable output");
    names
}

fn closed_reason(evs: &[PeerEvent]) -> Option<String> {
    evs.iter().find_map(|e| match e {
        PeerEvent::Closed(r) => Some(r.clone()),
        _ => None,
    })
}

/// An outgoing connection with the handshakes done and all output drained.
fn established(fast: bool, ext: bool) -> Peer {
    let mut p = Peer::new(config(), true, t(0));
    p.handle_bytes(t(0), &handshake(INFO, THEM, fast, ext));
    assert!(p.is_established());
    events(&mut p);
    p.take_output();
    p
}

#[test]
fn outgoing_sends_handshake_at_once() {
    let mut p = Peer::new(config(), true, t(0));
    assert_eq!(sent(&mut p), ["handshake"]);
    p.handle_bytes(t(0), &handshake(INFO, THEM, true, true));
    assert_eq!(events(&mut p), [PeerEvent::Handshaked { peer_id: THEM }]);
    assert!(p.fast() && p.extended());
    // The extended handshake follows ours when both set the bit.
    assert_eq!(sent(&mut p), ["extended"]);
}

#[test]
fn incoming_waits_for_the_peer_handshake() {
    let mut p = Peer::new(config(), false, t(0));
    assert!(sent(&mut p).is_empty());
    let hs = handshake(INFO, THEM, false, false);
    p.handle_bytes(t(0), &hs[..30]);
    assert!(sent(&mut p).is_empty());
    p.handle_bytes(t(0), &hs[30..]);
    assert_eq!(sent(&mut p), ["handshake"]);
    assert!(!p.fast() && !p.extended());
}

#[test]
fn wrong_info_hash_or_our_own_id_closes() {
    let mut p = Peer::new(config(), false, t(0));
    p.handle_bytes(t(0), &handshake(InfoHash([9; 20]), THEM, true, true));
    let reason = closed_reason(&events(&mut p)).unwrap();
    assert!(reason.contains("another torrent"), "{reason}");
    assert!(sent(&mut p).is_empty());

    let mut p = Peer::new(config(), true, t(0));
    p.handle_bytes(t(0), &handshake(INFO, US, true, true));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("connected to ourselves")
    );
}

#[test]
fn handshake_timeout_after_ten_seconds() {
    let mut p = Peer::new(config(), true, t(0));
    assert_eq!(p.poll_timeout(), Some(t(10)));
    p.handle_timeout(t(9));
    assert!(events(&mut p).is_empty());
    p.handle_timeout(t(10));
    assert!(closed_reason(&events(&mut p)).is_some());
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn bitfield_of_wrong_length_closes_with_reason() {
    let mut p = established(false, false);
    p.handle_bytes(t(1), &msg(Message::Bitfield(&[0xff])));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("bitfield length 1, expected 2")
    );
}

#[test]
fn bitfield_only_as_first_message() {
    let mut p = established(false, true);
    let mut bytes = msg(Message::Extended {
        id: 0,
        payload: &ExtendedHandshake::default().encode(),
    });
    bytes.extend(msg(Message::Bitfield(&[0x80, 0x40])));
    p.handle_bytes(t(1), &bytes);
    assert_eq!(
        events(&mut p),
        [PeerEvent::ExtendedHandshake, PeerEvent::Bitfield]
    );
    assert_eq!(p.has().iter_ones().collect::<Vec<_>>(), [0, 9]);
}

#[test]
fn late_bitfield_and_have_all_count_as_haves() {
    // aria2 sends its bitfield again mid-connection when that is shorter than the `have`s.
    let mut p = established(true, true);
    let mut bytes = msg(Message::HaveNone);
    bytes.extend(msg(Message::Have(1)));
    bytes.extend(msg(Message::Bitfield(&[0xc0, 0x40])));
    p.handle_bytes(t(1), &bytes);
    assert_eq!(
        events(&mut p),
        [
            PeerEvent::Bitfield,
            PeerEvent::Have(1),
            PeerEvent::Have(0),
            PeerEvent::Have(9)
        ]
    );
    assert_eq!(p.has().iter_ones().collect::<Vec<_>>(), [0, 1, 9]);
    // ... and `have all` once it completes.
    p.handle_bytes(t(2), &msg(Message::HaveAll));
    let evs = events(&mut p);
    assert_eq!(evs.len(), 7, "{evs:?}");
    assert!(
        evs.iter().all(|e| matches!(e, PeerEvent::Have(_))),
        "{evs:?}"
    );
    assert!(p.has().is_full());
    // A late bitfield of the wrong length is still fatal.
    p.handle_bytes(t(3), &msg(Message::Bitfield(&[0xff])));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("bitfield length 1, expected 2")
    );
}

#[test]
fn have_all_and_have_none_need_the_fast_extension() {
    let mut p = established(true, false);
    p.handle_bytes(t(1), &msg(Message::HaveAll));
    assert_eq!(events(&mut p), [PeerEvent::Bitfield]);
    assert!(p.has().is_full());

    let mut p = established(true, false);
    p.handle_bytes(t(1), &msg(Message::HaveNone));
    assert_eq!(events(&mut p), [PeerEvent::Bitfield]);
    assert_eq!(p.has().count(), 0);

    let mut p = established(false, false);
    p.handle_bytes(t(1), &msg(Message::HaveAll));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("have all without the fast extension")
    );
}

#[test]
fn have_out_of_range_closes() {
    let mut p = established(false, false);
    p.handle_bytes(t(1), &msg(Message::Have(PIECES)));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("have for piece 10, torrent has 10")
    );
}

#[test]
fn choke_and_interest_flags_both_ways() {
    let mut p = established(false, false);
    assert!(p.am_choking() && !p.am_interested() && p.peer_choking() && !p.peer_interested());
    p.handle_bytes(
        t(1),
        &[msg(Message::Unchoke), msg(Message::Interested)].concat(),
    );
    assert_eq!(events(&mut p), [PeerEvent::Unchoked, PeerEvent::Interested]);
    assert!(!p.peer_choking() && p.peer_interested());
    p.set_interested(t(1), true);
    p.set_interested(t(1), true);
    assert!(p.set_choking(t(1), false).is_empty());
    assert_eq!(sent(&mut p), ["interested", "unchoke"]);
    assert!(p.am_interested() && !p.am_choking());
    p.handle_bytes(
        t(2),
        &[msg(Message::NotInterested), msg(Message::Choke)].concat(),
    );
    assert!(!p.peer_interested() && p.peer_choking());
}

#[test]
fn keepalive_after_90_seconds_of_our_silence() {
    let mut p = established(false, false);
    p.handle_bytes(t(80), &msg(Message::KeepAlive));
    assert_eq!(p.poll_timeout(), Some(t(90)));
    p.handle_timeout(t(89));
    assert!(sent(&mut p).is_empty());
    p.handle_timeout(t(90));
    assert_eq!(sent(&mut p), ["keep-alive"]);
    // Idempotent: a second call at the same time sends nothing more.
    p.handle_timeout(t(90));
    assert!(sent(&mut p).is_empty());
}

#[test]
fn silent_peer_dropped_after_180_seconds() {
    let mut p = established(false, false);
    p.handle_bytes(t(10), &msg(Message::KeepAlive));
    for s in [90, 180, 189] {
        p.handle_timeout(t(s));
    }
    assert!(closed_reason(&events(&mut p)).is_none());
    p.handle_timeout(t(190));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("silent for 180 s")
    );
}

fn req(index: u32, begin: u32) -> BlockRequest {
    BlockRequest {
        index,
        begin,
        length: wire::BLOCK_SIZE,
    }
}

#[test]
fn unanswered_request_times_out_and_is_cancelled() {
    let mut p = established(false, false);
    p.handle_bytes(t(0), &msg(Message::Unchoke));
    events(&mut p);
    p.add_request(t(1), req(0, 0));
    p.add_request(t(5), req(0, 16384));
    sent(&mut p);
    p.handle_timeout(t(30));
    assert!(events(&mut p).is_empty());
    p.handle_timeout(t(31));
    assert_eq!(
        events(&mut p),
        [PeerEvent::RequestsTimedOut(vec![req(0, 0)])]
    );
    assert_eq!(sent(&mut p), ["cancel"]);
    assert_eq!(p.outstanding().collect::<Vec<_>>(), [req(0, 16384)]);
}

#[test]
fn snubbed_without_blocks_for_60_seconds() {
    let mut p = established(false, false);
    p.handle_bytes(t(0), &msg(Message::Unchoke));
    events(&mut p);
    p.add_request(t(0), req(1, 0));
    for s in (0..=60).step_by(10) {
        p.handle_bytes(t(s), &msg(Message::KeepAlive));
        p.handle_timeout(t(s));
        // The session re-requests what timed out; the snub clock keeps running.
        let evs = events(&mut p);
        if evs
            .iter()
            .any(|e| matches!(e, PeerEvent::RequestsTimedOut(_)))
        {
            p.add_request(t(s), req(1, 0));
        }
        assert_eq!(evs.contains(&PeerEvent::Snubbed(true)), s == 60, "at {s} s");
    }
    assert!(p.is_snubbed());
    assert!(p.is_snubbed());
    assert_eq!(p.pipeline_depth(t(60)), 1);
    let data = vec![0u8; wire::BLOCK_SIZE as usize];
    p.handle_bytes(
        t(61),
        &msg(Message::Piece {
            index: 1,
            begin: 0,
            data: &data,
        }),
    );
    let evs = events(&mut p);
    assert_eq!(evs[0], PeerEvent::Snubbed(false));
    assert!(matches!(
        evs[1],
        PeerEvent::Block {
            requested: true,
            ..
        }
    ));
}

#[test]
fn choke_voids_requests_only_without_fast_extension() {
    let mut p = established(false, false);
    p.handle_bytes(t(0), &msg(Message::Unchoke));
    p.add_request(t(0), req(2, 0));
    p.handle_bytes(t(1), &msg(Message::Choke));
    let evs = events(&mut p);
    assert_eq!(
        evs.last(),
        Some(&PeerEvent::Choked {
            dropped: vec![req(2, 0)]
        })
    );
    assert_eq!(p.outstanding_count(), 0);

    let mut p = established(true, false);
    p.handle_bytes(t(0), &msg(Message::Unchoke));
    p.add_request(t(0), req(2, 0));
    p.handle_bytes(t(1), &msg(Message::Choke));
    assert_eq!(
        events(&mut p).last(),
        Some(&PeerEvent::Choked { dropped: vec![] })
    );
    assert_eq!(p.outstanding_count(), 1);
    // With the fast extension the peer rejects explicitly.
    p.handle_bytes(t(1), &msg(Message::Reject(req(2, 0))));
    assert_eq!(events(&mut p), [PeerEvent::Rejected(req(2, 0))]);
    assert_eq!(p.outstanding_count(), 0);
}

#[test]
fn allowed_fast_lets_us_request_while_choked() {
    let mut p = established(true, false);
    assert!(!p.can_request());
    p.handle_bytes(t(0), &msg(Message::AllowedFast(3)));
    assert_eq!(events(&mut p), [PeerEvent::AllowedFast(3)]);
    assert!(p.can_request());
    assert_eq!(p.allowed_fast(), [3]);
    // Suggest is passed on as a hint; fast messages without the extension close.
    p.handle_bytes(t(0), &msg(Message::Suggest(4)));
    assert_eq!(events(&mut p), [PeerEvent::Suggest(4)]);
    let mut q = established(false, false);
    q.handle_bytes(t(0), &msg(Message::AllowedFast(3)));
    assert!(closed_reason(&events(&mut q)).is_some());
}

#[test]
fn an_allowed_fast_flood_is_capped() {
    let big = PeerConfig {
        piece_count: 1_000_000,
        ..config()
    };
    let mut p = Peer::new(big, true, t(0));
    p.handle_bytes(t(0), &handshake(INFO, THEM, true, false));
    assert!(p.is_established());
    let mut flood = Vec::new();
    for i in 0..100_000 {
        flood.extend(msg(Message::AllowedFast(i)));
    }
    p.handle_bytes(t(0), &flood);
    assert!(closed_reason(&events(&mut p)).is_none());
    assert_eq!(p.allowed_fast().len(), MAX_ALLOWED_FAST);
}

#[test]
fn extended_handshake_read_and_unknown_extensions_ignored() {
    let mut p = established(false, true);
    let mut ext = ExtendedHandshake::default();
    ext.m.insert("ut_pex".into(), 1);
    ext.m.insert("x_unknown".into(), 7);
    ext.reqq = Some(2);
    ext.v = Some("Other 1.0".into());
    ext.p = Some(5555);
    let mut bytes = msg(Message::Extended {
        id: 0,
        payload: &ext.encode(),
    });
    bytes.extend(msg(Message::Extended {
        id: 7,
        payload: b"whatever",
    }));
    bytes.extend(msg(Message::Unknown {
        id: 99,
        payload: b"xyz",
    }));
    p.handle_bytes(t(0), &bytes);
    assert_eq!(events(&mut p), [PeerEvent::ExtendedHandshake]);
    assert!(p.is_established());
    assert_eq!(p.reqq(), Some(2));
    assert_eq!(p.client(), Some("Other 1.0"));
    assert_eq!(p.listen_port(), Some(5555));
    // reqq caps the pipeline.
    assert_eq!(p.pipeline_depth(t(0)), 2);
}

#[test]
fn our_extended_handshake_advertises_v_p_reqq() {
    let mut p = Peer::new(config(), false, t(0));
    p.handle_bytes(t(0), &handshake(INFO, THEM, false, true));
    let out = p.take_output();
    let (m, _) = wire::decode(&out[Handshake::LEN..], 1 << 20)
        .unwrap()
        .unwrap();
    let Message::Extended { id: 0, payload } = m else {
        panic!("expected the extended handshake, got {m:?}");
    };
    let ext = ExtendedHandshake::decode(payload).unwrap();
    assert_eq!(ext.reqq, Some(4));
    assert_eq!(ext.p, Some(6881));
    assert!(ext.v.unwrap().starts_with("kp-torrent"));
}

#[test]
fn pipeline_depth_follows_the_measured_rate() {
    let mut p = established(false, false);
    p.handle_bytes(t(0), &msg(Message::Unchoke));
    assert_eq!(p.pipeline_depth(t(0)), MIN_PIPELINE);
    let data = vec![0u8; wire::BLOCK_SIZE as usize];
    // 4 MiB/s for five seconds: 1.5 s of that is 384 blocks, capped at the hard limit.
    let mut depths = Vec::new();
    for ms in (0..5000).step_by(4) {
        p.add_request(Time::from_millis(ms), req(0, 0));
        p.handle_bytes(
            Time::from_millis(ms),
            &msg(Message::Piece {
                index: 0,
                begin: 0,
                data: &data,
            }),
        );
        if ms % 1000 == 0 {
            depths.push(p.pipeline_depth(Time::from_millis(ms)));
        }
    }
    assert_eq!(p.pipeline_depth(Time::from_millis(5000)), MAX_PIPELINE);
    // A slower peer: 64 KiB/s, 1.5 s of it is 6 blocks.
    let mut q = established(false, false);
    for s in 0..6 {
        for k in 0..4 {
            q.handle_bytes(
                t(s) + Duration::from_millis(k * 250),
                &msg(Message::Piece {
                    index: 0,
                    begin: 0,
                    data: &data,
                }),
            );
        }
    }
    assert_eq!(q.download_rate(t(6)), 64 * 1024);
    assert_eq!(q.pipeline_depth(t(6)), 6);
    assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");
}

#[test]
fn serve_queue_is_bounded() {
    let mut p = established(true, false);
    for i in 0..4 {
        assert!(p.queue_request(t(0), req(i, 0)));
    }
    assert!(!p.queue_request(t(0), req(5, 0)));
    assert_eq!(sent(&mut p), ["reject request"]);
    assert!(p.is_established());

    let mut p = established(false, false);
    for i in 0..4 {
        assert!(p.queue_request(t(0), req(i, 0)));
    }
    assert!(!p.queue_request(t(0), req(5, 0)));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("more than 4 requests queued")
    );
}

#[test]
fn cancel_removes_a_queued_request() {
    let mut p = established(false, false);
    p.set_choking(t(0), false);
    assert!(p.queue_request(t(0), req(1, 0)));
    p.handle_bytes(t(0), &msg(Message::Cancel(req(1, 0))));
    assert_eq!(events(&mut p), [PeerEvent::Cancel(req(1, 0))]);
    assert!(p.serve_queue().is_empty());
    sent(&mut p);
    // The disk read completing later sends nothing.
    assert!(!p.send_block(t(0), 1, 0, &vec![0; wire::BLOCK_SIZE as usize]));
    assert!(sent(&mut p).is_empty());
}

#[test]
fn choking_a_peer_rejects_its_queue_with_fast_extension() {
    let mut p = established(true, false);
    p.set_choking(t(0), false);
    p.queue_request(t(0), req(1, 0));
    sent(&mut p);
    assert_eq!(p.set_choking(t(1), true), [req(1, 0)]);
    assert_eq!(sent(&mut p), ["choke", "reject request"]);
}

#[test]
fn oversized_request_closes() {
    let mut p = established(false, false);
    p.handle_bytes(
        t(0),
        &msg(Message::Request(BlockRequest {
            index: 0,
            begin: 0,
            length: wire::BLOCK_SIZE + 1,
        })),
    );
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("request of 16385 bytes")
    );
}

#[test]
fn bytes_split_anywhere_give_the_same_events() {
    let mut stream = handshake(INFO, THEM, true, true);
    stream.extend(msg(Message::Extended {
        id: 0,
        payload: &ExtendedHandshake::default().encode(),
    }));
    stream.extend(msg(Message::Bitfield(&[0xff, 0xc0])));
    stream.extend(msg(Message::Unchoke));
    stream.extend(msg(Message::Have(3)));
    stream.extend(msg(Message::Request(req(1, 0))));
    let whole = {
        let mut p = Peer::new(config(), true, t(0));
        p.handle_bytes(t(0), &stream);
        events(&mut p)
    };
    assert_eq!(whole.len(), 5, "{whole:?}");
    for cut in 1..stream.len() {
        let mut p = Peer::new(config(), true, t(0));
        p.handle_bytes(t(0), &stream[..cut]);
        p.handle_bytes(t(0), &stream[cut..]);
        assert_eq!(events(&mut p), whole, "cut at {cut}");
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng_state = 12345u64;
    for _ in 0..200 {
        let mut p = established(true, true);
        let mut bytes = Vec::new();
        for _ in 0..64 {
            rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
            bytes.push((rng_state >> 33) as u8 % 24);
        }
        p.handle_bytes(t(1), &bytes);
        p.handle_timeout(t(500));
        events(&mut p);
    }
}

#[test]
fn allowed_fast_before_the_bitfield_is_accepted() {
    let mut p = established(true, false);
    p.handle_bytes(
        t(1),
        &[
            msg(Message::AllowedFast(2)),
            msg(Message::Bitfield(&[0x20, 0])),
        ]
        .concat(),
    );
    assert_eq!(
        events(&mut p),
        [PeerEvent::AllowedFast(2), PeerEvent::Bitfield]
    );
    // A second piece set is a violation.
    p.handle_bytes(t(1), &msg(Message::HaveNone));
    assert_eq!(
        closed_reason(&events(&mut p)).as_deref(),
        Some("have none after other messages")
    );
}
