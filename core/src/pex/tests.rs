use super::*;

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([a, b, c, d], port))
}

fn v6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), port))
}

fn set(addrs: &[(SocketAddr, PexFlags)]) -> BTreeMap<SocketAddr, PexFlags> {
    addrs.iter().copied().collect()
}

#[test]
fn encodes_compact_lists_with_flags_as_bep11_shows() {
    let msg = PexMessage {
        added: vec![
            (v4(10, 0, 0, 1, 6881), PexFlags::SEED | PexFlags::REACHABLE),
            (v6(1, 51413), PexFlags::UTP),
        ],
        dropped: vec![v4(192, 168, 1, 2, 0x1a1b)],
    };
    let bytes = msg.encode();
    let mut want = b"d5:added6:\x0a\x00\x00\x01\x1a\xe1".to_vec();
    want.extend_from_slice(b"7:added.f1:\x12");
    want.extend_from_slice(b"6:added618:\x20\x01\x0d\xb8");
    want.extend_from_slice(&[0; 10]);
    want.extend_from_slice(b"\x00\x01\xc8\xd5");
    want.extend_from_slice(b"8:added6.f1:\x04");
    want.extend_from_slice(b"7:dropped6:\xc0\xa8\x01\x02\x1a\x1be");
    assert_eq!(bytes, want);
    assert_eq!(PexMessage::decode(&bytes), Ok(msg));
}

#[test]
fn an_empty_message_round_trips() {
    let empty = PexMessage::default();
    assert!(empty.is_empty());
    let bytes = empty.encode();
    assert_eq!(bytes, b"d5:added0:7:added.f0:7:dropped0:e");
    assert_eq!(PexMessage::decode(&bytes), Ok(empty.clone()));
    assert_eq!(PexMessage::decode(b"de"), Ok(empty));
}

#[test]
fn decoding_is_lenient_about_shapes_and_bounded_in_size() {
    // A partial trailing address is ignored; missing flags are 0; extra flags are ignored; a
    // list of the wrong type counts as absent; unknown keys are ignored.
    let bytes =
        b"d5:added8:\x7f\x00\x00\x01\x00\x50\xff\xff7:added.f0:8:added6.fi3e7:droppedi1e1:xle\
                  8:dropped67:abcdefge";
    let msg = PexMessage::decode(bytes).unwrap();
    assert_eq!(msg.added, vec![(v4(127, 0, 0, 1, 80), PexFlags(0))]);
    assert!(msg.dropped.is_empty());
    let extra_flags = b"d5:added6:\x01\x02\x03\x04\x00\x017:added.f3:\x02\x03\x04e";
    assert_eq!(
        PexMessage::decode(extra_flags).unwrap().added,
        vec![(v4(1, 2, 3, 4, 1), PexFlags::SEED)]
    );

    // Each list keeps at most MAX_DECODED_PER_LIST addresses.
    let many = 1000;
    let mut added = Vec::new();
    for i in 0..many as u32 {
        added.extend_from_slice(&i.to_be_bytes());
        added.extend_from_slice(&1u16.to_be_bytes());
    }
    let big: Owned = [
        (b"added".as_slice(), Owned::Bytes(added.clone())),
        (b"dropped".as_slice(), Owned::Bytes(added)),
    ]
    .into_iter()
    .collect();
    let msg = PexMessage::decode(&big.encode()).unwrap();
    assert_eq!(msg.added.len(), MAX_DECODED_PER_LIST);
    assert_eq!(msg.dropped.len(), MAX_DECODED_PER_LIST);
}

#[test]
fn decoding_errors_are_values() {
    assert!(matches!(PexMessage::decode(b""), Err(PexError::Bencode(_))));
    assert!(matches!(
        PexMessage::decode(b"d5:added"),
        Err(PexError::Bencode(_))
    ));
    assert!(matches!(
        PexMessage::decode(b"dei1e"),
        Err(PexError::Bencode(_))
    ));
    assert_eq!(PexMessage::decode(b"i5e"), Err(PexError::NotDict));
    let deep = [&[b'l'; 20][..], &[b'e'; 20]].concat();
    assert!(matches!(
        PexMessage::decode(&deep),
        Err(PexError::Bencode(_))
    ));
    assert!(PexError::NotDict.to_string().contains("ut_pex"));
}

#[test]
fn the_sender_tells_the_diff_at_most_once_a_minute_and_never_the_peer_itself() {
    let peer = v4(10, 0, 0, 9, 5000);
    let mut s = PexSender::new(peer);
    let t0 = Time::from_secs(10);
    assert_eq!(s.poll_timeout(), None);
    let a = v4(10, 0, 0, 1, 1);
    let b = v4(10, 0, 0, 2, 2);
    let c = v6(3, 3);
    // Nothing to say: no message, and the clock does not start.
    assert_eq!(s.handle_timeout(t0, &set(&[(peer, PexFlags(0))])), None);
    assert_eq!(s.poll_timeout(), None);

    let current = set(&[(a, PexFlags(0)), (b, PexFlags::SEED), (peer, PexFlags(0))]);
    let m = s.handle_timeout(t0, &current).unwrap();
    assert_eq!(m.added, vec![(a, PexFlags(0)), (b, PexFlags::SEED)]);
    assert!(m.dropped.is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL));

    // b leaves, c arrives, a becomes a seed: nothing before the minute is up.
    let current = set(&[(a, PexFlags::SEED), (c, PexFlags(0))]);
    assert_eq!(
        s.handle_timeout(t0 + Duration::from_secs(59), &current),
        None
    );
    let t1 = t0 + INTERVAL;
    let m = s.handle_timeout(t1, &current).unwrap();
    assert_eq!(m.added, vec![(a, PexFlags::SEED), (c, PexFlags(0))]);
    assert_eq!(m.dropped, vec![b]);
    // Same set a minute later: nothing changed, nothing sent, and the next look is a minute on
    // (a deadline left in the past would have its caller spin).
    assert_eq!(s.handle_timeout(t1 + INTERVAL, &current), None);
    assert_eq!(s.poll_timeout(), Some(t1 + INTERVAL * 2));
    // Its listening address, learnt later, is excluded too, without announcing a drop.
    let listen = v4(10, 0, 0, 9, 6881);
    s.add_own_addr(listen);
    let mut with_listen = current.clone();
    with_listen.insert(listen, PexFlags(0));
    assert_eq!(s.handle_timeout(t1 + INTERVAL * 2, &with_listen), None);
}

#[test]
fn the_sender_respects_the_fifty_per_message_limit() {
    let mut s = PexSender::with_interval(v4(1, 1, 1, 1, 1), Duration::from_secs(1));
    let many: BTreeMap<SocketAddr, PexFlags> = (0..120u16)
        .map(|i| (v4(10, 1, (i >> 8) as u8, i as u8, 1000 + i), PexFlags(0)))
        .collect();
    let mut told = BTreeSet::new();
    let mut t = Time::ZERO;
    for expected in [50, 50, 20] {
        let m = s.handle_timeout(t, &many).unwrap();
        assert_eq!(m.added.len(), expected);
        assert!(m.dropped.is_empty());
        for (a, _) in m.added {
            assert!(told.insert(a), "{a} told twice");
        }
        t += Duration::from_secs(1);
    }
    assert_eq!(told.len(), 120);
    // All of them leave: drops are capped the same way.
    let none = BTreeMap::new();
    let mut dropped = 0;
    for expected in [50, 50, 20] {
        let m = s.handle_timeout(t, &none).unwrap();
        assert_eq!(m.dropped.len(), expected);
        dropped += m.dropped.len();
        t += Duration::from_secs(1);
    }
    assert_eq!(dropped, 120);
    assert_eq!(s.handle_timeout(t, &none), None);
}

#[test]
fn the_sender_never_lists_port_zero() {
    let mut s = PexSender::new(v4(1, 1, 1, 1, 1));
    assert_eq!(
        s.handle_timeout(Time::ZERO, &set(&[(v4(2, 2, 2, 2, 0), PexFlags(0))])),
        None
    );
}

#[test]
fn the_receiver_drops_unusable_and_duplicate_addresses_and_caps_counts() {
    let mut r = PexReceiver::new(ReceiverConfig {
        max_added: 3,
        ..ReceiverConfig::default()
    });
    let good = v4(10, 0, 0, 1, 6881);
    let msg = PexMessage {
        added: vec![
            (v4(10, 0, 0, 2, 0), PexFlags(0)),
            (v4(0, 0, 0, 0, 1), PexFlags(0)),
            (v4(255, 255, 255, 255, 1), PexFlags(0)),
            (v4(224, 0, 0, 1, 1), PexFlags(0)),
            (SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5)), PexFlags(0)),
            (
                SocketAddr::from((Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 5)),
                PexFlags(0),
            ),
            (good, PexFlags::SEED),
            (good, PexFlags(0)),
            (v4(127, 0, 0, 1, 7000), PexFlags(0)),
            (v6(1, 7001), PexFlags(0)),
            (v4(10, 0, 0, 3, 1), PexFlags(0)),
        ],
        dropped: vec![v4(10, 0, 0, 4, 0), v4(10, 0, 0, 5, 5), v4(10, 0, 0, 5, 5)],
    };
    let got = r.handle_message(Time::ZERO, &msg.encode()).unwrap();
    assert_eq!(
        got.added,
        vec![
            (good, PexFlags::SEED),
            (v4(127, 0, 0, 1, 7000), PexFlags(0)),
            (v4(10, 0, 0, 3, 1), PexFlags(0)),
        ],
        "IPv4 first (as encoded), loopback allowed, capped at 3"
    );
    assert_eq!(got.dropped, vec![v4(10, 0, 0, 5, 5)]);
}

#[test]
fn the_receiver_ignores_messages_that_come_too_often() {
    let mut r = PexReceiver::new(ReceiverConfig::default());
    let one = PexMessage {
        added: vec![(v4(10, 0, 0, 1, 1), PexFlags(0))],
        dropped: vec![],
    }
    .encode();
    let t0 = Time::from_secs(100);
    assert_eq!(r.handle_message(t0, &one).unwrap().added.len(), 1);
    let err = r
        .handle_message(t0 + Duration::from_secs(10), &one)
        .unwrap_err();
    assert_eq!(
        err,
        PexError::TooFrequent {
            since_last: Duration::from_secs(10),
            min: Duration::from_secs(45)
        }
    );
    assert!(err.to_string().contains("ignored"));
    // A malformed message does not reset the clock, and a timely one is accepted.
    assert!(
        r.handle_message(t0 + Duration::from_secs(50), b"x")
            .is_err()
    );
    assert_eq!(
        r.handle_message(t0 + Duration::from_secs(50), &one)
            .unwrap()
            .added
            .len(),
        1
    );
}

#[test]
fn flags_combine_and_test() {
    let f = PexFlags::ENCRYPTION | PexFlags::HOLEPUNCH;
    assert!(f.contains(PexFlags::ENCRYPTION));
    assert!(f.contains(PexFlags::HOLEPUNCH));
    assert!(!f.contains(PexFlags::SEED));
    assert_eq!(f, PexFlags(0x09));
}
