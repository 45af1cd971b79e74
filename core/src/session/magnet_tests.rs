//! Magnet links in the session: fetching the info dictionary from peers (BEP 9), keeping the
//! connections through `set_torrent`, hostile metadata peers, and serving ours.
//!
//! The torrent is the three-piece one of the other session tests, described by a real info
//! dictionary (so its SHA-1 is the info-hash) padded past two metadata pieces.

use super::*;
use crate::metadata::{self, MetadataMessage};
use crate::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use crate::peer::OUR_METADATA_ID;
use crate::wire::ExtendedHandshake;

/// The id the hand-driven peers give `ut_metadata` in their extended handshake.
const THEIR_ID: u8 = 5;

/// The torrent's info dictionary: three metadata pieces, the last one short.
fn info_dict(private: bool) -> Vec<u8> {
    let spec = TorrentSpec {
        name: "magnet.bin".into(),
        piece_length: PIECE,
        files: vec![(Vec::new(), TOTAL)],
        piece_hashes: hash_pieces(&content(), PIECE),
        private,
        ..TorrentSpec::default()
    };
    let mut info = spec.info_bytes();
    // A key of our own after `pieces` (keys stay sorted): counted in the info-hash, ignored
    // otherwise, and long enough for three 16 KiB pieces.
    let pad: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 251) as u8).collect();
    info.pop();
    info.extend_from_slice(format!("5:x-pad{}:", pad.len()).as_bytes());
    info.extend_from_slice(&pad);
    info.push(b'e');
    assert_eq!(metadata::piece_count(info.len() as u64), 3);
    info
}

/// What `info` describes, as the torrent task builds it.
fn torrent_of(info: &[u8]) -> Torrent {
    let file = [b"d4:info".as_slice(), info, b"e"].concat();
    Torrent::from_metainfo(&Metainfo::from_bytes(&file).expect("a valid torrent"))
}

fn magnet_session(info_hash: InfoHash) -> Session {
    let mut s = Session::new_magnet(
        SessionConfig {
            seed: 1,
            sequential: true,
            ..SessionConfig::default()
        },
        info_hash,
        t(0),
    );
    drain(&mut s);
    s
}

/// A handshake naming `info_hash` with both extension bits, and an extended handshake giving
/// `ut_metadata` the id [`THEIR_ID`] with `size` (`None`: the peer has no metadata).
fn hello(info_hash: InfoHash, id: u8, size: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    Handshake::new(info_hash, PeerId([id; 20])).encode(&mut out);
    let ext = ExtendedHandshake {
        m: [(metadata::EXTENSION_NAME.to_owned(), THEIR_ID)].into(),
        metadata_size: size,
        ..ExtendedHandshake::default()
    };
    out.extend(msg(Message::Extended {
        id: 0,
        payload: &ext.encode(),
    }));
    out
}

/// A `ut_metadata` message to us, under the id we gave it.
fn to_us(m: MetadataMessage<'_>) -> Vec<u8> {
    msg(Message::Extended {
        id: OUR_METADATA_ID,
        payload: &m.encode(),
    })
}

/// The `ut_metadata` messages sent to `peer` (under [`THEIR_ID`]), as owned copies.
fn metadata_sent(actions: &[Action], peer: PeerHandle) -> Vec<(u8, u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    each_sent(actions, peer, |m| {
        if let Message::Extended {
            id: THEIR_ID,
            payload,
        } = m
        {
            out.push(
                match MetadataMessage::decode(payload).expect("we send valid messages") {
                    MetadataMessage::Request { piece } => (0, piece, 0, Vec::new()),
                    MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    } => (1, piece, total_size, data.to_vec()),
                    MetadataMessage::Reject { piece } => (2, piece, 0, Vec::new()),
                },
            );
        }
    });
    out
}

/// The pieces of metadata asked of `peer` in `actions`.
fn asked(actions: &[Action], peer: PeerHandle) -> Vec<u32> {
    metadata_sent(actions, peer)
        .into_iter()
        .filter(|m| m.0 == 0)
        .map(|m| m.1)
        .collect()
}

/// The extended handshake we sent `peer`.
fn our_ext(actions: &[Action], peer: PeerHandle) -> ExtendedHandshake {
    let mut found = None;
    each_sent(actions, peer, |m| {
        if let Message::Extended { id: 0, payload } = m {
            found = ExtendedHandshake::decode(payload).ok();
        }
    });
    found.expect("an extended handshake was sent")
}

fn metadata_events(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MetadataReceived { info } => Some(info.clone()),
            _ => None,
        })
        .collect()
}

/// Peer `id` accepted from `addr(id)`, its hello fed; returns its handle and our answer.
fn accept(s: &mut Session, now: Time, id: u8, size: Option<u64>) -> (PeerHandle, Vec<Action>) {
    let info_hash = s.torrent().info_hash;
    let h = s.handle_incoming(now, addr(id));
    s.handle_received(now, h, &hello(info_hash, id, size));
    let (actions, events) = drain(s);
    assert!(metadata_events(&events).is_empty());
    (h, actions)
}

/// Peer `id` at `addr(id)`, dialled by the session, its hello fed.
fn dial(s: &mut Session, now: Time, id: u8, size: Option<u64>) -> (PeerHandle, Vec<Action>) {
    let info_hash = s.torrent().info_hash;
    s.handle_peers_discovered(now, &[addr(id)]);
    let (actions, _) = drain(s);
    let h = actions
        .iter()
        .find_map(|a| match a {
            Action::Connect { peer, addr: at } if *at == addr(id) => Some(*peer),
            _ => None,
        })
        .expect("the session dials the new address");
    s.handle_connected(now, h);
    s.handle_received(now, h, &hello(info_hash, id, size));
    let (actions, events) = drain(s);
    assert!(metadata_events(&events).is_empty());
    (h, actions)
}

/// Answers every metadata request sent to `h` with what `answer` gives (any number of messages
/// per request), until no new request comes; returns everything the session did meanwhile.
fn answer_requests(
    s: &mut Session,
    now: Time,
    h: PeerHandle,
    first: Vec<Action>,
    mut answer: impl FnMut(u32) -> Vec<Vec<u8>>,
) -> (Vec<Action>, Vec<Event>) {
    let mut all_actions = Vec::new();
    let mut all_events = Vec::new();
    let mut pending = first;
    for _ in 0..100 {
        let pieces = asked(&pending, h);
        all_actions.append(&mut pending);
        if pieces.is_empty() || s.peer(h).is_none() {
            break;
        }
        for piece in pieces {
            for bytes in answer(piece) {
                s.handle_received(now, h, &bytes);
            }
        }
        let (a, mut e) = drain(s);
        pending = a;
        all_events.append(&mut e);
    }
    (all_actions, all_events)
}

/// The honest answer to a request for `piece`.
fn honest(info: &[u8], piece: u32) -> Vec<u8> {
    to_us(metadata::serve(info, piece))
}

#[test]
fn a_magnet_session_fetches_the_metadata_from_a_seed_and_downloads_on_the_same_connection() {
    let info = info_dict(false);
    let torrent = torrent_of(&info);
    assert_eq!(torrent.info_hash, InfoHash::of(&info));
    assert_eq!(torrent.metadata, info);
    let mut w = Wire::new(magnet_session(torrent.info_hash), torrent.clone());
    assert!(w.m.needs_metadata() && !w.m.is_complete());
    assert_eq!(w.m.left(), 16 * 1024);
    w.m.handle_peers_discovered(t(1), &[w.seed_addr]);
    w.pump(t(1));
    let (mh, _) = w.link.expect("connected");
    // Exactly the info dictionary, each of its three pieces asked once, nothing downloaded.
    assert_eq!(metadata_events(&w.m_events), std::slice::from_ref(&info));
    assert_eq!(w.metadata_asked, [0, 1, 2]);
    assert!(w.m.needs_metadata(), "waits for set_torrent");
    assert!(w.disk.iter().all(|&b| b == 0));
    assert!(w.closes.is_empty(), "{:?}", w.closes);

    let got = std::mem::take(&mut w.m_events);
    let connects = w.connects;
    w.m.set_torrent(
        t(2),
        torrent_of(&metadata_events(&got)[0]),
        Bitfield::new(3),
    );
    assert!(!w.m.needs_metadata());
    w.pump(t(2));
    w.run(t(2), 120);
    // The same connection carried the download: no new dial, no close before completion.
    assert_eq!(w.connects, connects, "{:?}", w.closes);
    assert!(w.m.is_complete(), "{:?}", w.closes);
    assert_eq!(w.disk, content());
    assert!(w.m_events.contains(&Event::Complete));
    assert!(
        w.closes
            .iter()
            .all(|(side, h, r)| *side == 'm' && *h == mh && r == "both seeding"),
        "{:?}",
        w.closes
    );
    assert_eq!(w.blocks, 5, "five blocks, each fetched once");

    // It now serves what it fetched.
    let (h, actions) = accept(&mut w.m, t(300), 30, None);
    let ext = our_ext(&actions, h);
    assert_eq!(ext.metadata_size, Some(info.len() as u64));
    w.m.handle_received(t(300), h, &to_us(MetadataMessage::Request { piece: 1 }));
    let (actions, _) = drain(&mut w.m);
    assert_eq!(
        metadata_sent(&actions, h),
        [(1, 1, info.len() as u64, info[16384..32768].to_vec())]
    );
}

#[test]
fn data_already_on_disk_completes_at_set_torrent_without_a_request() {
    let info = info_dict(false);
    let torrent = torrent_of(&info);
    let mut w = Wire::new(magnet_session(torrent.info_hash), torrent.clone());
    w.m.handle_peers_discovered(t(1), &[w.seed_addr]);
    w.pump(t(1));
    assert_eq!(metadata_events(&w.m_events).len(), 1);
    w.m.set_torrent(t(2), torrent, Bitfield::full(3));
    assert!(w.m.is_complete());
    w.pump(t(2));
    assert_eq!(w.blocks, 0);
    // Two seeds part.
    assert_eq!(w.closes.len(), 1, "{:?}", w.closes);
}

#[test]
fn after_set_torrent_peers_learn_our_pieces_without_a_second_piece_set() {
    let info = info_dict(false);
    let torrent = torrent_of(&info);
    let mut have = Bitfield::new(3);
    have.set(0);
    for fast in [true, false] {
        let mut s = magnet_session(torrent.info_hash);
        let mut bytes = hello(torrent.info_hash, 10, None);
        if !fast {
            // The same hello without the fast bit.
            bytes[27] &= !0x04;
        }
        let h = s.handle_incoming(t(1), addr(10));
        s.handle_received(t(1), h, &bytes);
        let (actions, _) = drain(&mut s);
        let before = sent_to(&actions, h);
        // With the fast extension we told it at once that we have nothing; without, nothing.
        assert_eq!(
            before
                .iter()
                .filter(|m| m.starts_with("have") || *m == "bitfield")
                .count(),
            usize::from(fast),
            "{before:?}"
        );
        s.set_torrent(t(2), torrent.clone(), have.clone());
        let (actions, _) = drain(&mut s);
        let after = sent_to(&actions, h);
        // Haves either way: without the fast extension a bitfield would no longer be the first
        // message (an extended handshake or an unchoke may have gone out meanwhile).
        let expected = "have 0";
        assert!(
            after.contains(&expected.to_string()),
            "fast {fast}: {after:?}"
        );
        assert!(
            !after
                .iter()
                .any(|m| m.starts_with("have all") || m.starts_with("have none")),
            "fast {fast}: {after:?}"
        );
        assert!(closes(&actions).is_empty());
    }
}

#[test]
fn set_torrent_ignores_another_info_hash() {
    let info = info_dict(false);
    let mut s = magnet_session(InfoHash::of(&info));
    let other = torrent_of(&info_dict(true));
    s.set_torrent(t(1), other, Bitfield::new(3));
    assert!(s.needs_metadata());
    assert_eq!(s.torrent().piece_count(), 0);
}

#[test]
fn metadata_failing_the_hash_bans_its_sender_which_is_never_asked_or_dialled_again() {
    let info = info_dict(false);
    let hash = InfoHash::of(&info);
    let mut s = magnet_session(hash);
    let (liar, first) = dial(&mut s, t(1), 10, Some(info.len() as u64));
    assert_eq!(asked(&first, liar), [0, 1], "two requests in flight");
    let (actions, events) = answer_requests(&mut s, t(2), liar, first, |piece| {
        let mut data = metadata::serve(&info, piece);
        let MetadataMessage::Data { data: bytes, .. } = &mut data else {
            unreachable!()
        };
        let mut lie = bytes.to_vec();
        if piece == 1 {
            lie[100] ^= 1;
        }
        vec![to_us(MetadataMessage::Data {
            piece,
            total_size: info.len() as u64,
            data: &lie,
        })]
    });
    assert_eq!(asked(&actions, liar), [0, 1, 2]);
    assert!(metadata_events(&events).is_empty());
    let closed = closes(&actions);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].0, liar);
    assert!(closed[0].1.starts_with("bad metadata:"), "{closed:?}");
    assert!(s.peer(liar).is_none());
    assert!(s.is_banned(&[10; 20]));
    assert!(s.needs_metadata());

    // Its address is never dialled again, whoever names it and however long we wait.
    s.handle_peers_discovered(t(3), &[addr(10)]);
    let mut later = drain(&mut s).0;
    for secs in (10..600).step_by(10) {
        s.handle_timeout(t(secs));
        later.extend(drain(&mut s).0);
    }
    assert!(
        !later
            .iter()
            .any(|a| matches!(a, Action::Connect { addr: at, .. } if *at == addr(10))),
        "{later:?}"
    );
    // Its id is refused from another address.
    let h = s.handle_incoming(t(600), addr(11));
    s.handle_received(t(600), h, &hello(hash, 10, Some(info.len() as u64)));
    let (actions, _) = drain(&mut s);
    assert_eq!(closes(&actions), [(h, "banned peer".to_string())]);
    assert!(asked(&actions, h).is_empty());

    // An honest peer still gets us the metadata, exactly.
    let (good, first) = accept(&mut s, t(601), 12, Some(info.len() as u64));
    let (_, events) = answer_requests(&mut s, t(601), good, first, |p| vec![honest(&info, p)]);
    assert_eq!(metadata_events(&events), [info]);
}

#[test]
fn an_oversized_or_empty_metadata_size_is_never_asked_for() {
    let info = info_dict(false);
    let mut s = magnet_session(InfoHash::of(&info));
    let (big, mut actions) = accept(
        &mut s,
        t(1),
        10,
        Some(metadata::DEFAULT_MAX_METADATA_SIZE + 1),
    );
    let (zero, more) = accept(&mut s, t(1), 11, Some(0));
    actions.extend(more);
    // (Silent peers are dropped after 180 s; stop before.)
    for secs in (2..170).step_by(7) {
        s.handle_timeout(t(secs));
        actions.extend(drain(&mut s).0);
    }
    assert!(asked(&actions, big).is_empty() && asked(&actions, zero).is_empty());
    // They stay: they may still have pieces for us.
    assert!(s.peer(big).is_some() && s.peer(zero).is_some());
    assert!(closes(&actions).is_empty(), "{actions:?}");
    // A peer with a sensible size is asked at once.
    let (good, first) = accept(&mut s, t(170), 12, Some(info.len() as u64));
    assert_eq!(asked(&first, good), [0, 1]);
}

#[test]
fn pieces_out_of_order_repeated_or_unasked_still_give_exactly_the_metadata() {
    let info = info_dict(false);
    let mut s = magnet_session(InfoHash::of(&info));
    let (h, first) = accept(&mut s, t(1), 10, Some(info.len() as u64));
    // The last piece comes unasked, before anything else.
    s.handle_received(t(1), h, &honest(&info, 2));
    let mut batch = Vec::new();
    let (actions, events) = answer_requests(&mut s, t(2), h, first, |piece| {
        // Answered in reverse order of the requests, each twice.
        batch.push(piece);
        if batch.len() < 2 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for p in batch.drain(..).rev() {
            out.push(honest(&info, p));
            out.push(honest(&info, p));
        }
        out
    });
    assert_eq!(metadata_events(&events), std::slice::from_ref(&info));
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert!(s.peer(h).is_some());
    // More copies change nothing.
    for p in 0..3 {
        s.handle_received(t(3), h, &honest(&info, p));
    }
    let (actions, events) = drain(&mut s);
    assert!(metadata_events(&events).is_empty() && closes(&actions).is_empty());
}

#[test]
fn a_peer_sending_another_total_size_than_it_advertised_is_banned() {
    let info = info_dict(false);
    let size = info.len() as u64;
    let mut s = magnet_session(InfoHash::of(&info));
    let (h, first) = accept(&mut s, t(1), 10, Some(size));
    let (actions, events) = answer_requests(&mut s, t(2), h, first, |piece| {
        let MetadataMessage::Data { data, .. } = metadata::serve(&info, piece) else {
            unreachable!()
        };
        vec![to_us(MetadataMessage::Data {
            piece,
            total_size: size + 16384,
            data,
        })]
    });
    assert!(metadata_events(&events).is_empty());
    let closed = closes(&actions);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(
        closed[0].1.starts_with("bad metadata:") && closed[0].1.contains("total_size"),
        "{closed:?}"
    );
    assert!(s.is_banned(&[10; 20]));

    // One that advertises a wrong size and serves bytes of that size fails the hash.
    let mut fake = info.clone();
    fake.extend_from_slice(b"more");
    let (h, first) = accept(&mut s, t(3), 11, Some(fake.len() as u64));
    let (actions, events) = answer_requests(&mut s, t(3), h, first, |p| {
        vec![to_us(metadata::serve(&fake, p))]
    });
    assert!(metadata_events(&events).is_empty());
    assert_eq!(closes(&actions).len(), 1, "{actions:?}");
    assert!(s.is_banned(&[11; 20]));
}

#[test]
fn ut_metadata_garbage_closes_the_peer() {
    let info = info_dict(false);
    let too_long = vec![0u8; metadata::PIECE_SIZE as usize + 1];
    let mut data_too_long = b"d8:msg_typei1e5:piecei0e10:total_sizei40000ee".to_vec();
    data_too_long.extend_from_slice(&too_long);
    let payloads: [&[u8]; 5] = [
        b"garbage",
        b"",
        b"d8:msg_typei7e5:piecei0ee",
        b"d8:msg_typei1e5:piecei0ee",
        &data_too_long,
    ];
    for (i, payload) in payloads.into_iter().enumerate() {
        let mut s = magnet_session(InfoHash::of(&info));
        let (h, _) = accept(&mut s, t(1), 10, Some(info.len() as u64));
        s.handle_received(
            t(2),
            h,
            &msg(Message::Extended {
                id: OUR_METADATA_ID,
                payload,
            }),
        );
        let (actions, events) = drain(&mut s);
        let closed = closes(&actions);
        assert_eq!(closed.len(), 1, "payload {i}: {actions:?}");
        assert!(
            closed[0].1.starts_with("bad ut_metadata message:"),
            "payload {i}: {closed:?}"
        );
        assert!(s.peer(h).is_none());
        assert!(metadata_events(&events).is_empty());
    }
}

#[test]
fn a_seed_serves_its_metadata_and_rejects_pieces_past_the_end() {
    let info = info_dict(false);
    let mut s = Session::new(
        SessionConfig::default(),
        torrent_of(&info),
        Bitfield::full(3),
        t(0),
    );
    drain(&mut s);
    let (h, actions) = accept(&mut s, t(1), 20, None);
    let ext = our_ext(&actions, h);
    assert_eq!(ext.m.get(metadata::EXTENSION_NAME), Some(&OUR_METADATA_ID));
    assert_eq!(ext.metadata_size, Some(info.len() as u64));
    for piece in [0, 1, 2, 3, 1000, u32::MAX] {
        s.handle_received(t(2), h, &to_us(MetadataMessage::Request { piece }));
    }
    let (actions, _) = drain(&mut s);
    let sent = metadata_sent(&actions, h);
    let size = info.len() as u64;
    let data: Vec<u8> = sent
        .iter()
        .filter(|m| m.0 == 1)
        .flat_map(|m| {
            assert_eq!(m.2, size);
            m.3.clone()
        })
        .collect();
    assert_eq!(data, info);
    let kinds: Vec<(u8, u32)> = sent.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(
        kinds,
        [(1, 0), (1, 1), (1, 2), (2, 3), (2, 1000), (2, u32::MAX)]
    );
    assert!(s.peer(h).is_some());
}

#[test]
fn a_private_torrent_serves_no_metadata() {
    let info = info_dict(true);
    let torrent = torrent_of(&info);
    assert!(torrent.private && !torrent.metadata.is_empty());
    let mut s = Session::new(SessionConfig::default(), torrent, Bitfield::full(3), t(0));
    drain(&mut s);
    let (h, actions) = accept(&mut s, t(1), 20, None);
    let ext = our_ext(&actions, h);
    assert_eq!(ext.m.get(metadata::EXTENSION_NAME), None);
    assert_eq!(ext.metadata_size, None);
    s.handle_received(t(2), h, &to_us(MetadataMessage::Request { piece: 0 }));
    let (actions, _) = drain(&mut s);
    assert!(metadata_sent(&actions, h).is_empty(), "{actions:?}");
    assert!(s.peer(h).is_some());
}

#[test]
fn a_magnet_session_rejects_metadata_requests_until_it_has_the_metadata() {
    let info = info_dict(false);
    let mut s = magnet_session(InfoHash::of(&info));
    let (h, actions) = accept(&mut s, t(1), 20, None);
    let ext = our_ext(&actions, h);
    assert_eq!(ext.m.get(metadata::EXTENSION_NAME), Some(&OUR_METADATA_ID));
    assert_eq!(ext.metadata_size, None);
    s.handle_received(t(2), h, &to_us(MetadataMessage::Request { piece: 0 }));
    let (actions, _) = drain(&mut s);
    assert_eq!(metadata_sent(&actions, h), [(2, 0, 0, Vec::new())]);
}

/// A magnet session (`m`) and a seeding session joined by one connection, every send delivered
/// at once; `m`'s disk answers at once.
struct Wire {
    m: Session,
    seed: Session,
    seed_content: Vec<u8>,
    m_addr: SocketAddr,
    seed_addr: SocketAddr,
    /// The connection's handle in `m` and in `seed`.
    link: Option<(PeerHandle, PeerHandle)>,
    disk: Vec<u8>,
    /// Events of `m`.
    m_events: Vec<Event>,
    /// The metadata pieces `m` asked the seed for.
    metadata_asked: Vec<u32>,
    /// Closes by either side: which side, the handle, the reason.
    closes: Vec<(char, PeerHandle, String)>,
    /// Connections `m` dialled.
    connects: usize,
    /// Blocks `m` wrote.
    blocks: usize,
}

impl Wire {
    fn new(m: Session, torrent: Torrent) -> Wire {
        let mut seed = Session::new(
            SessionConfig {
                seed: 2,
                ..SessionConfig::default()
            },
            torrent,
            Bitfield::full(3),
            t(0),
        );
        drain(&mut seed);
        Wire {
            m,
            seed,
            seed_content: content(),
            m_addr: addr(1),
            seed_addr: addr(2),
            link: None,
            disk: vec![0; TOTAL as usize],
            m_events: Vec::new(),
            metadata_asked: Vec::new(),
            closes: Vec::new(),
            connects: 0,
            blocks: 0,
        }
    }

    /// Delivers everything until both sides are idle.
    fn pump(&mut self, now: Time) {
        for _ in 0..10_000 {
            let mut progressed = false;
            while let Some(a) = self.m.poll_action() {
                progressed = true;
                self.on_m_action(now, a);
            }
            while let Some(e) = self.m.poll_event() {
                self.m_events.push(e);
            }
            while let Some(a) = self.seed.poll_action() {
                progressed = true;
                self.on_seed_action(now, a);
            }
            while self.seed.poll_event().is_some() {}
            if !progressed {
                return;
            }
        }
        panic!("the pair never went idle");
    }

    /// Pumps, firing both sides' timers, for up to `secs` seconds or until `m` completes.
    fn run(&mut self, from: Time, secs: u64) {
        let end = from + Duration::from_secs(secs);
        let mut now = from;
        while now < end && !self.m.is_complete() {
            now += Duration::from_secs(1);
            self.m.handle_timeout(now);
            self.seed.handle_timeout(now);
            self.pump(now);
        }
    }

    fn on_m_action(&mut self, now: Time, a: Action) {
        match a {
            Action::Connect { peer, addr } if addr == self.seed_addr => {
                self.connects += 1;
                let sh = self.seed.handle_incoming(now, self.m_addr);
                self.link = Some((peer, sh));
                self.m.handle_connected(now, peer);
            }
            Action::Send { peer, bytes } => {
                let Some((_, sh)) = self.link.filter(|l| l.0 == peer) else {
                    return;
                };
                let sent = [Action::Send { peer, bytes }];
                each_sent(&sent, peer, |m| {
                    if let Message::Extended { id, payload } = m
                        && id != 0
                        && let Ok(MetadataMessage::Request { piece }) =
                            MetadataMessage::decode(payload)
                    {
                        self.metadata_asked.push(piece);
                    }
                });
                let [Action::Send { bytes, .. }] = sent else {
                    unreachable!()
                };
                self.seed.handle_received(now, sh, &bytes);
            }
            Action::Close { peer, reason } => {
                self.closes.push(('m', peer, reason));
                if let Some((_, sh)) = self.link.filter(|l| l.0 == peer) {
                    self.link = None;
                    self.seed.handle_peer_closed(now, sh);
                }
            }
            Action::WriteBlock { piece, begin, data } => {
                self.blocks += 1;
                let at = (u64::from(piece) * PIECE) as usize + begin as usize;
                self.disk[at..at + data.len()].copy_from_slice(&data);
                self.m.handle_write_done(now, piece, begin);
            }
            Action::HashPiece { piece } => {
                let at = (u64::from(piece) * PIECE) as usize;
                let end = (at + PIECE as usize).min(TOTAL as usize);
                let digest: [u8; 20] = sha1::Sha1::digest(&self.disk[at..end]).into();
                self.m.handle_piece_hashed(now, piece, digest);
            }
            _ => {}
        }
    }

    fn on_seed_action(&mut self, now: Time, a: Action) {
        match a {
            Action::Send { peer, bytes } => {
                if let Some((mh, _)) = self.link.filter(|l| l.1 == peer) {
                    self.m.handle_received(now, mh, &bytes);
                }
            }
            Action::Close { peer, reason } => {
                self.closes.push(('s', peer, reason));
                if let Some((mh, _)) = self.link.filter(|l| l.1 == peer) {
                    self.link = None;
                    self.m.handle_peer_closed(now, mh);
                }
            }
            Action::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => {
                let at = (u64::from(piece) * PIECE) as usize + begin as usize;
                let data = self.seed_content[at..at + length as usize].to_vec();
                self.seed.handle_read_done(now, peer, piece, begin, &data);
            }
            _ => {}
        }
    }
}

/// The fetcher keeps the pieces a closed connection delivered, filed under its handle; the slab
/// gives that handle to the next connection, which is then banned when those pieces fail the
/// hash. The fix belongs in `metadata.rs` (`forget_peer` must drop the pieces of the handle it
/// forgets), outside this change; run with `--ignored` once it is in.
#[test]
fn an_honest_peer_is_not_blamed_for_what_a_closed_connection_sent() {
    let info = info_dict(false);
    let size = info.len() as u64;
    let mut s = magnet_session(InfoHash::of(&info));
    // A liar sends a wrong piece 0, then leaves before sending piece 1; a silent peer keeps the
    // attempt going.
    let (liar, first) = accept(&mut s, t(1), 10, Some(size));
    assert_eq!(asked(&first, liar), [0, 1]);
    let (silent, first) = accept(&mut s, t(1), 12, Some(size));
    assert_eq!(asked(&first, silent), [2]);
    let MetadataMessage::Data { data, .. } = metadata::serve(&info, 0) else {
        unreachable!()
    };
    let mut lie = data.to_vec();
    lie[0] ^= 1;
    s.handle_received(
        t(2),
        liar,
        &to_us(MetadataMessage::Data {
            piece: 0,
            total_size: size,
            data: &lie,
        }),
    );
    s.handle_peer_closed(t(2), liar);
    drain(&mut s);
    // An honest peer comes (its connection may get the freed handle) and answers everything.
    let (good, first) = accept(&mut s, t(3), 11, Some(size));
    let (actions, mut events) =
        answer_requests(&mut s, t(3), good, first, |p| vec![honest(&info, p)]);
    let mut closed = closes(&actions);
    for secs in (10..170).step_by(10) {
        s.handle_timeout(t(secs));
        let (a, e) = drain(&mut s);
        let (a, e2) = answer_requests(&mut s, t(secs), good, a, |p| vec![honest(&info, p)]);
        events.extend(e);
        events.extend(e2);
        closed.extend(closes(&a));
    }
    assert!(!s.is_banned(&[11; 20]), "closed: {closed:?}");
    assert!(closed.is_empty(), "{closed:?}");
    assert_eq!(metadata_events(&events), [info]);
}
