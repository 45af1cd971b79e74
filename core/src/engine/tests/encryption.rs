//! MSE/PE at the engine's seam: each test plays a driver (routing bytes by the engine's
//! actions) and a remote peer that speaks MSE with [`crate::mse`]'s own state machine.

use std::sync::Mutex;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::engine::encryption::PlainMemory;
use crate::mse::{Cipher, Handshake as Mse, Method, MseEvent};

/// Where the driver routes a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Pending(IncomingId),
    Peer(TorrentId, PeerHandle),
}

/// The driver's side of one connection: it carries bytes and does what the engine says.
struct Wire {
    route: Route,
    /// Why the engine closed it, while it is closed.
    closed: Option<String>,
    /// Every close, in order (a redial reopens it).
    closes: Vec<String>,
    /// Addresses the engine asked this connection's handle to be dialed at.
    dials: Vec<SocketAddr>,
    /// Every other action, for the test to look at.
    others: Vec<EngineAction>,
}

impl Wire {
    fn new(route: Route) -> Wire {
        Wire {
            route,
            closed: None,
            closes: Vec::new(),
            dials: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Feeds `bytes` as received on this connection, in chunks of at most `chunk` bytes.
    fn receive(&mut self, e: &mut Engine, now: Time, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            match self.route {
                Route::Pending(conn) => {
                    e.handle_input(now, EngineInput::IncomingData { conn, bytes: piece })
                }
                Route::Peer(torrent, peer) => e.handle_input(
                    now,
                    EngineInput::Torrent {
                        torrent,
                        input: TorrentInput::Session(Input::Received { peer, bytes: piece }),
                    },
                ),
            }
            out.extend(self.sent(e));
        }
        out
    }

    /// Drains the engine's actions: the bytes sent on this connection, routing changes,
    /// closes; the rest is kept in `others`.
    fn sent(&mut self, e: &mut Engine) -> Vec<u8> {
        let mut out = Vec::new();
        for a in actions(e) {
            match (&a, self.route) {
                (EngineAction::SendIncoming { conn, bytes }, Route::Pending(c)) if *conn == c => {
                    out.extend_from_slice(bytes);
                }
                (
                    EngineAction::Adopt {
                        conn,
                        torrent,
                        peer,
                    },
                    Route::Pending(c),
                ) if *conn == c => self.route = Route::Peer(*torrent, *peer),
                (EngineAction::CloseIncoming { conn, reason }, Route::Pending(c)) if *conn == c => {
                    self.closed = Some(reason.to_string());
                    self.closes.push(reason.to_string());
                }
                (
                    EngineAction::Torrent {
                        torrent,
                        action: TorrentAction::Session(s),
                    },
                    Route::Peer(t, p),
                ) if *torrent == t && s.peer() == Some(p) => match s {
                    Action::Send { bytes, .. } => out.extend_from_slice(bytes),
                    Action::Close { reason, .. } => {
                        self.closed = Some(reason.clone());
                        self.closes.push(reason.clone());
                    }
                    Action::Connect { addr, .. } => {
                        self.closed = None;
                        self.dials.push(*addr);
                    }
                    _ => self.others.push(a),
                },
                _ => self.others.push(a),
            }
        }
        out
    }
}

trait PeerOf {
    fn peer(&self) -> Option<PeerHandle>;
}

impl PeerOf for Action {
    fn peer(&self) -> Option<PeerHandle> {
        match self {
            Action::Send { peer, .. }
            | Action::Close { peer, .. }
            | Action::Connect { peer, .. }
            | Action::ReadBlock { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// The remote peer of one connection: an MSE handshake, then a cipher.
struct Far {
    mse: Option<Mse>,
    cipher: Option<Cipher>,
    /// What it has to send (already encrypted).
    out: Vec<u8>,
    /// What it received, decrypted.
    plain: Vec<u8>,
}

impl Far {
    fn mse(hs: Mse) -> Far {
        Far {
            mse: Some(hs),
            cipher: None,
            out: Vec::new(),
            plain: Vec::new(),
        }
    }

    fn plain() -> Far {
        Far {
            mse: None,
            cipher: Some(Cipher::plaintext()),
            out: Vec::new(),
            plain: Vec::new(),
        }
    }

    fn method(&self) -> Option<Method> {
        self.cipher.as_ref().map(Cipher::method)
    }

    fn send(&mut self, bytes: &[u8]) {
        let mut b = bytes.to_vec();
        self.cipher
            .as_mut()
            .expect("send after the handshake")
            .encrypt(&mut b);
        self.out.extend(b);
    }

    fn receive(&mut self, bytes: &[u8]) {
        if let Some(c) = self.cipher.as_mut() {
            let mut b = bytes.to_vec();
            c.decrypt(&mut b);
            self.plain.extend(b);
            return;
        }
        let hs = self.mse.as_mut().expect("a handshake or a cipher");
        hs.handle_input(bytes).expect("the engine speaks MSE well");
        self.settle();
    }

    fn settle(&mut self) {
        let Some(hs) = self.mse.as_mut() else {
            return;
        };
        while let Some(b) = hs.poll_transmit() {
            self.out.extend(b);
        }
        match hs.poll_event() {
            None => {}
            Some(MseEvent::Established(est)) => {
                self.plain.extend(est.initial_payload);
                self.plain.extend(est.rest);
                self.cipher = Some(est.cipher);
                self.mse = None;
            }
            Some(MseEvent::Plaintext { received }) => {
                self.plain.extend(received);
                self.cipher = Some(Cipher::plaintext());
                self.mse = None;
            }
        }
    }
}

/// Moves bytes both ways until neither side has anything to say (bounded).
fn exchange(e: &mut Engine, now: Time, wire: &mut Wire, far: &mut Far, chunk: usize) {
    let mut from_engine = wire.sent(e);
    for _ in 0..64 {
        if !from_engine.is_empty() {
            far.receive(&std::mem::take(&mut from_engine));
        }
        far.settle();
        if far.out.is_empty() || wire.closed.is_some() {
            return;
        }
        let out = std::mem::take(&mut far.out);
        from_engine = wire.receive(e, now, &out, chunk);
    }
    panic!("the exchange never settled");
}

fn mse_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn engine(policy: Policy) -> Engine {
    let cfg = EngineConfig {
        encryption: policy,
        seed: 99,
        ..EngineConfig::default()
    };
    Engine::new(cfg, Time::ZERO)
}

fn peer_connected(e: &mut Engine, t: TorrentId) -> bool {
    std::iter::from_fn(|| e.poll_event()).any(|ev| {
        matches!(ev, EngineEvent::Torrent { torrent, event: TorrentEvent::Session(Event::PeerConnected { .. }) } if torrent == t)
    })
}

/// Splits peer-wire bytes after the handshake into messages: (id, payload); `None` for a
/// keep-alive. Panics on a cut message.
fn messages(mut b: &[u8]) -> Vec<Option<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 4, "a cut length prefix");
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        assert!(b.len() >= 4 + len, "a cut message");
        out.push((len > 0).then(|| (b[4], b[5..4 + len].to_vec())));
        b = &b[4 + len..];
    }
    out
}

/// A trace sink the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A leecher torrent told of one peer; returns the torrent, the handle dialed and the address.
fn dialing_leecher(e: &mut Engine, tag: u8, port: u16) -> (TorrentId, PeerHandle, SocketAddr) {
    let t = e
        .add_torrent(
            Time::ZERO,
            config(u64::from(tag), Vec::new()),
            torrent(tag),
            StartState::Verified(Bitfield::new(4)),
            None,
        )
        .expect("a new info-hash");
    actions(e);
    let remote = addr(port);
    e.handle_input(
        Time::ZERO,
        EngineInput::Torrent {
            torrent: t,
            input: TorrentInput::Session(Input::PeersDiscovered { addrs: &[remote] }),
        },
    );
    let peer = actions(e)
        .into_iter()
        .find_map(|a| match a {
            EngineAction::Torrent {
                action: TorrentAction::Session(Action::Connect { peer, addr }),
                ..
            } if addr == remote => Some(peer),
            _ => None,
        })
        .expect("the leecher dials the peer it learnt");
    (t, peer, remote)
}

/// A remote that dials us with MSE, its first bytes ready in `out`.
fn far_initiator(policy: Policy, tag: u8, ia: Vec<u8>, seed: u64) -> Far {
    let mut far = Far::mse(Mse::initiator(
        policy,
        InfoHash([tag; 20]),
        ia,
        &mut mse_rng(seed),
    ));
    far.settle();
    far
}

/// Runs the clock from `from` a second at a time until torrent `t` dials `remote` again.
fn next_dial(e: &mut Engine, from: Time, t: TorrentId, remote: SocketAddr) -> (Time, PeerHandle) {
    let mut now = from;
    loop {
        now += Duration::from_secs(1);
        assert!(
            now < from + Duration::from_secs(120),
            "the torrent never dialed again"
        );
        e.handle_input(now, EngineInput::Timeout);
        if let Some(p) = actions(e).iter().find_map(|a| match a {
            EngineAction::Torrent {
                torrent,
                action: TorrentAction::Session(Action::Connect { peer, addr }),
            } if *torrent == t && *addr == remote => Some(*peer),
            _ => None,
        }) {
            return (now, p);
        }
    }
}

fn connected(e: &mut Engine, now: Time, t: TorrentId, peer: PeerHandle) {
    e.handle_input(
        now,
        EngineInput::Torrent {
            torrent: t,
            input: TorrentInput::Session(Input::Connected { peer }),
        },
    );
}

fn closed(e: &mut Engine, now: Time, t: TorrentId, peer: PeerHandle) {
    e.handle_input(
        now,
        EngineInput::Torrent {
            torrent: t,
            input: TorrentInput::Session(Input::Closed { peer }),
        },
    );
}

#[test]
fn an_encrypted_incoming_connection_is_adopted_and_decrypted_both_ways() {
    for (policy, far_policy, chunk) in [
        (Policy::Prefer, Policy::Require, 1000),
        (Policy::Prefer, Policy::Prefer, 7),
        (Policy::Require, Policy::Require, 1),
        (Policy::Require, Policy::Prefer, 64),
    ] {
        let mut e = engine(policy);
        add(&mut e, 1);
        let sink = Shared::default();
        let t = e
            .add_torrent(
                Time::ZERO,
                config(2, Vec::new()),
                torrent(2),
                StartState::Verified(Bitfield::full(4)),
                Some(Box::new(sink.clone())),
            )
            .unwrap();
        actions(&mut e);
        let conn = accept(&mut e, Time::ZERO, 6000);
        let mut wire = Wire::new(Route::Pending(conn));
        // Its BitTorrent handshake rides as IA (RC4 alone) or right after the handshake.
        let ours = handshake(2);
        let mut far = far_initiator(far_policy, 2, ours.clone(), 5);
        exchange(&mut e, Time::ZERO, &mut wire, &mut far, chunk);
        assert_eq!(wire.closed, None, "{policy} / {far_policy}");
        // Offered both, a responder that prefers encryption takes plaintext (libtorrent's
        // default); RC4 when either side requires it.
        let method = if policy == Policy::Prefer && far_policy == Policy::Prefer {
            Method::Plaintext
        } else {
            Method::Rc4
        };
        assert_eq!(far.method(), Some(method), "{policy} / {far_policy}");
        let Route::Peer(torrent, _) = wire.route else {
            panic!("never adopted: {:?}", wire.others);
        };
        assert_eq!(torrent, t);
        assert!(
            peer_connected(&mut e, t),
            "the torrent read the decrypted handshake"
        );
        // The torrent's answer, decrypted by the far end: its handshake, then whole messages.
        assert!(far.plain.len() > 68);
        assert_eq!(&far.plain[..20], PROTOCOL);
        assert_eq!(&far.plain[28..48], &[2; 20]);
        let msgs = messages(&far.plain[68..]);
        assert!(
            msgs.iter().any(|m| matches!(m, Some((0x0E, _)))),
            "a seed's have-all (BEP 6), decrypted: {msgs:?}"
        );
        // More traffic after the handshake is decrypted too: `interested` gets an unchoke.
        let before = far.plain.len();
        far.send(&[0, 0, 0, 1, 2]);
        exchange(&mut e, Time::from_secs(1), &mut wire, &mut far, chunk);
        let later = messages(&far.plain[before..]);
        assert!(later.contains(&Some((1, Vec::new()))), "{later:?}");
        // The trace holds the plaintext and replays exactly.
        e.remove_torrent(t).unwrap().1.unwrap();
        let trace = sink.0.lock().unwrap().clone();
        if far_policy == Policy::Require {
            // It arrived in one piece as IA: the torrent got it as one input, in plaintext.
            assert!(
                contains(&trace, &ours),
                "the trace holds the handshake as sent"
            );
        }
        let report = crate::trace::replay(&trace).unwrap();
        assert!(report.divergence.is_none(), "{:?}", report.divergence);
        assert!(report.received_bytes >= 68 + 5);
    }
}

#[test]
fn an_encrypted_dial_holds_the_torrents_bytes_then_encrypts_them() {
    for (policy, far_policy, method) in [
        (Policy::Prefer, Policy::Prefer, Method::Plaintext),
        (Policy::Prefer, Policy::Require, Method::Rc4),
        (Policy::Require, Policy::Prefer, Method::Rc4),
        (Policy::Require, Policy::Require, Method::Rc4),
        // A peer that has encryption disabled still speaks the handshake, in plaintext.
        (Policy::Prefer, Policy::Disable, Method::Plaintext),
    ] {
        let mut e = engine(policy);
        let (t, peer, _) = dialing_leecher(&mut e, 3, 7000);
        connected(&mut e, Time::ZERO, t, peer);
        let mut wire = Wire::new(Route::Peer(t, peer));
        let first = wire.sent(&mut e);
        assert!(first.len() >= 96, "Ya at least");
        assert!(
            !first.starts_with(&PROTOCOL[..]),
            "no plain handshake first"
        );
        let mut far = Far::mse(Mse::responder(
            far_policy,
            vec![InfoHash([3; 20])],
            &mut mse_rng(6),
        ));
        far.receive(&first);
        exchange(&mut e, Time::ZERO, &mut wire, &mut far, 100);
        assert_eq!(far.method(), Some(method), "{policy} / {far_policy}");
        assert_eq!(wire.closed, None);
        // The far end got our handshake whole, decrypted.
        assert_eq!(&far.plain[..20], PROTOCOL);
        assert_eq!(&far.plain[28..48], &[3; 20]);
        assert_eq!(far.plain.len(), 68, "nothing else before its handshake");
        let mut theirs = handshake(3);
        theirs[20 + 5] |= 0x10; // BEP 10
        far.send(&theirs);
        far.send(&[0, 0, 0, 2, 5, 0xF0]); // a seed's bitfield
        exchange(&mut e, Time::ZERO, &mut wire, &mut far, 100);
        assert!(
            peer_connected(&mut e, t),
            "the torrent read the far handshake"
        );
        assert!(
            !messages(&far.plain[68..]).is_empty(),
            "the torrent's messages arrive whole"
        );
        assert_eq!(e.plaintext_fallbacks(), 0);
    }
}

#[test]
fn require_refuses_plaintext_both_ways() {
    let mut e = engine(Policy::Require);
    add(&mut e, 1);
    actions(&mut e);
    let conn = accept(&mut e, Time::ZERO, 5000);
    let mut wire = Wire::new(Route::Pending(conn));
    wire.receive(&mut e, Time::ZERO, &handshake(1), 68);
    assert_eq!(
        wire.closed.as_deref(),
        Some(RefuseReason::PlaintextRefused.to_string().as_str())
    );
    // Plaintext offered inside MSE is refused as well.
    let conn = accept(&mut e, Time::ZERO, 5001);
    let mut wire = Wire::new(Route::Pending(conn));
    let mut far = far_initiator(Policy::Disable, 1, handshake(1), 1);
    let out = std::mem::take(&mut far.out);
    let back = wire.receive(&mut e, Time::ZERO, &out, 1000);
    far.receive(&back);
    let out = std::mem::take(&mut far.out);
    wire.receive(&mut e, Time::ZERO, &out, 1000);
    let reason = wire.closed.expect("refused");
    assert!(reason.contains("none acceptable"), "{reason}");
    // A dial whose handshake fails is not tried in plaintext: the torrent hears it closed.
    let (t, peer, remote) = dialing_leecher(&mut e, 4, 7001);
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    assert!(!wire.sent(&mut e).starts_with(&PROTOCOL[..]));
    closed(&mut e, Time::from_secs(1), t, peer);
    wire.sent(&mut e);
    assert!(
        wire.dials.is_empty(),
        "no plaintext redial: {:?}",
        wire.dials
    );
    assert_eq!(e.plaintext_fallbacks(), 0);
    // Its next dial, after the torrent's backoff, is encrypted again.
    let (now, redial) = next_dial(&mut e, Time::from_secs(1), t, remote);
    connected(&mut e, now, t, redial);
    let mut wire = Wire::new(Route::Peer(t, redial));
    let first = wire.sent(&mut e);
    assert!(first.len() >= 96 && !first.starts_with(&PROTOCOL[..]));
}

#[test]
fn disable_refuses_encrypted_incoming_and_dials_plain() {
    let mut e = engine(Policy::Disable);
    add(&mut e, 1);
    actions(&mut e);
    let conn = accept(&mut e, Time::ZERO, 5000);
    let mut wire = Wire::new(Route::Pending(conn));
    let mut far = far_initiator(Policy::Prefer, 1, handshake(1), 1);
    let out = std::mem::take(&mut far.out);
    let back = wire.receive(&mut e, Time::ZERO, &out, 1000);
    assert!(back.is_empty(), "no MSE answer");
    assert_eq!(
        wire.closed.as_deref(),
        Some(RefuseReason::NotBitTorrent.to_string().as_str())
    );
    // A plain handshake still gets in.
    let conn = accept(&mut e, Time::ZERO, 5001);
    let mut wire = Wire::new(Route::Pending(conn));
    wire.receive(&mut e, Time::ZERO, &handshake(1), 68);
    assert!(matches!(wire.route, Route::Peer(..)));
    // Dials start with the plain handshake.
    let (t, peer, _) = dialing_leecher(&mut e, 5, 7002);
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    let first = wire.sent(&mut e);
    assert_eq!(first, handshake_of(&first, 5));
}

/// `bytes` if they are exactly a plain handshake for torrent `tag` (whatever the peer id).
fn handshake_of(bytes: &[u8], tag: u8) -> Vec<u8> {
    assert_eq!(bytes.len(), 68, "a handshake alone: {bytes:?}");
    assert_eq!(&bytes[..20], PROTOCOL);
    assert_eq!(&bytes[28..48], &[tag; 20]);
    bytes.to_vec()
}

#[test]
fn prefer_redials_in_plaintext_after_a_failed_encrypted_dial_and_remembers() {
    let mut e = engine(Policy::Prefer);
    let (t, peer, remote) = dialing_leecher(&mut e, 6, 7003);
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    let ya = wire.sent(&mut e);
    assert!(ya.len() >= 96 && !ya.starts_with(&PROTOCOL[..]));
    // A plaintext-only peer hangs up on the MSE bytes.
    closed(&mut e, Time::from_millis(10), t, peer);
    let again = wire.sent(&mut e);
    assert!(
        wire.closes.is_empty(),
        "the driver dropped that socket already"
    );
    assert_eq!(wire.dials, vec![remote], "dialed again at once");
    // The torrent's handshake is queued on the new connection, in plaintext.
    handshake_of(&again, 6);
    connected(&mut e, Time::from_millis(20), t, peer);
    assert!(
        wire.sent(&mut e).is_empty(),
        "the torrent is not told twice"
    );
    assert_eq!(e.plaintext_fallbacks(), 1);
    // The plain peer answers; the torrent sees a connection like any other.
    let mut far = Far::plain();
    far.receive(&again);
    far.send(&handshake(6));
    exchange(&mut e, Time::from_millis(30), &mut wire, &mut far, 68);
    assert!(peer_connected(&mut e, t));
    // Its next dial goes plain from the start.
    closed(&mut e, Time::from_secs(1), t, peer);
    wire.sent(&mut e);
    let (now, redial) = next_dial(&mut e, Time::from_secs(1), t, remote);
    connected(&mut e, now, t, redial);
    let mut wire = Wire::new(Route::Peer(t, redial));
    handshake_of(&wire.sent(&mut e), 6);
}

#[test]
fn prefer_redials_in_plaintext_after_garbage_or_silence() {
    // Garbage: no verification constant in the answer.
    let mut e = engine(Policy::Prefer);
    let (t, peer, remote) = dialing_leecher(&mut e, 7, 7004);
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    wire.sent(&mut e);
    let again = wire.receive(&mut e, Time::ZERO, &[0x55; 700], 700);
    assert_eq!(wire.dials, vec![remote]);
    assert_eq!(
        wire.closes.len(),
        1,
        "the socket that spoke garbage is closed first"
    );
    handshake_of(&again, 7);
    // Silence: the handshake times out, before the torrent's own handshake time.
    let (t, peer, remote) = dialing_leecher(&mut e, 8, 7005);
    connected(&mut e, Time::from_secs(1), t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    wire.sent(&mut e);
    let deadline = e.poll_timeout().expect("a deadline");
    assert!(deadline <= Time::from_secs(1) + DIAL_TIMEOUT_FOR_TESTS);
    e.handle_input(
        Time::from_secs(1) + DIAL_TIMEOUT_FOR_TESTS,
        EngineInput::Timeout,
    );
    handshake_of(&wire.sent(&mut e), 8);
    assert_eq!(wire.dials, vec![remote]);
    assert_eq!(e.plaintext_fallbacks(), 2);
    // The plain redial failing too is, to the torrent, its connection closing.
    e.handle_input(
        Time::from_secs(7),
        EngineInput::Torrent {
            torrent: t,
            input: TorrentInput::Session(Input::ConnectFailed { peer }),
        },
    );
    assert_eq!(e.torrent(t).unwrap().session().unwrap().peer_count(), 0);
}

const DIAL_TIMEOUT_FOR_TESTS: Duration = super::super::encryption::DIAL_HANDSHAKE_TIMEOUT;

#[test]
fn the_plaintext_memory_is_bounded() {
    let mut m = PlainMemory::default();
    for port in 0..(super::super::encryption::MAX_PLAIN_ONLY as u16 + 10) {
        m.insert(addr(port));
    }
    assert_eq!(m.len(), super::super::encryption::MAX_PLAIN_ONLY);
    assert!(!m.contains(&addr(0)), "the oldest went first");
    assert!(m.contains(&addr(super::super::encryption::MAX_PLAIN_ONLY as u16 + 9)));
}

/// Random splits and corruptions of real handshakes, and plain noise, both ways: the engine
/// never panics, and an intact handshake always gets through.
#[test]
fn split_and_hostile_handshake_bytes_never_panic() {
    for seed in 0..120u64 {
        let mut r = mse_rng(seed);
        let policy = [Policy::Prefer, Policy::Require, Policy::Disable][(seed % 3) as usize];
        let mut e = engine(policy);
        add(&mut e, 1);
        actions(&mut e);
        let corrupt = seed % 4 != 0;
        // Incoming.
        let conn = accept(&mut e, Time::ZERO, 9000);
        let mut wire = Wire::new(Route::Pending(conn));
        let mut far = far_initiator(Policy::Prefer, 1, handshake(1), seed);
        let mut back = Vec::new();
        for _round in 0..8 {
            far.settle();
            let mut out = std::mem::take(&mut far.out);
            if out.is_empty() || wire.closed.is_some() {
                break;
            }
            if corrupt && r.random_bool(0.5) {
                let at = r.random_range(0..out.len());
                out[at] ^= r.random_range(1..=255u8);
            }
            let mut rest = &out[..];
            while !rest.is_empty() {
                let n = r.random_range(1..=rest.len().min(200));
                back.extend(wire.receive(&mut e, Time::ZERO, &rest[..n], n));
                rest = &rest[n..];
            }
            let reply = std::mem::take(&mut back);
            // A corrupted stream may leave the far end unable to follow: stop there.
            if far.cipher.is_none()
                && far
                    .mse
                    .as_mut()
                    .is_some_and(|hs| hs.handle_input(&reply).is_err())
            {
                break;
            }
            if let Some(c) = far.cipher.as_mut() {
                let mut b = reply;
                c.decrypt(&mut b);
                far.plain.extend(b);
            }
        }
        if !corrupt && policy != Policy::Disable {
            assert!(
                matches!(wire.route, Route::Peer(..)),
                "seed {seed}: {:?}",
                wire.closed
            );
        }
        // Noise on a fresh connection.
        let conn = accept(&mut e, Time::ZERO, 9001);
        let mut wire = Wire::new(Route::Pending(conn));
        let len = r.random_range(0..1500);
        let noise: Vec<u8> = (0..len).map(|_| r.random()).collect();
        wire.receive(&mut e, Time::ZERO, &noise, r.random_range(1..300));
        // Outgoing: noise answers our dial.
        let (t, peer, _) = dialing_leecher(&mut e, 2 + (seed % 50) as u8, 9100);
        connected(&mut e, Time::ZERO, t, peer);
        let mut wire = Wire::new(Route::Peer(t, peer));
        wire.sent(&mut e);
        wire.receive(&mut e, Time::ZERO, &noise, r.random_range(1..300));
        e.handle_input(Time::from_secs(30), EngineInput::Timeout);
        actions(&mut e);
        assert_eq!(
            e.pending_count(),
            0,
            "seed {seed}: every pending connection ended"
        );
    }
}

#[test]
fn a_plaintext_dial_that_hears_nothing_sends_the_address_back_to_encryption() {
    let mut e = engine(Policy::Prefer);
    let (t, peer, remote) = dialing_leecher(&mut e, 9, 7006);
    // The encrypted handshake times out (a slow peer, a loaded machine) ...
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    assert!(!wire.sent(&mut e).starts_with(&PROTOCOL[..]));
    e.handle_input(Time::ZERO + DIAL_TIMEOUT_FOR_TESTS, EngineInput::Timeout);
    handshake_of(&wire.sent(&mut e), 9);
    assert_eq!(wire.dials, vec![remote], "redialed in plaintext");
    assert_eq!(e.plaintext_fallbacks(), 1);
    // ... and the peer, which wants encryption, hangs up on the plain handshake unanswered.
    let at = Time::ZERO + DIAL_TIMEOUT_FOR_TESTS + Duration::from_millis(10);
    connected(&mut e, at, t, peer);
    closed(&mut e, at + Duration::from_millis(10), t, peer);
    assert_eq!(e.plaintext_fallbacks(), 0, "the address is forgotten");
    wire.sent(&mut e);
    // The next dial is encrypted again.
    let (now, redial) = next_dial(&mut e, at, t, remote);
    connected(&mut e, now, t, redial);
    let mut wire = Wire::new(Route::Peer(t, redial));
    assert_mse_key(&wire.sent(&mut e));
}

#[test]
fn a_plaintext_dial_that_is_answered_keeps_the_address_plain() {
    let mut e = engine(Policy::Prefer);
    let (t, peer, remote) = dialing_leecher(&mut e, 10, 7007);
    connected(&mut e, Time::ZERO, t, peer);
    let mut wire = Wire::new(Route::Peer(t, peer));
    wire.sent(&mut e);
    closed(&mut e, Time::from_millis(10), t, peer);
    let again = wire.sent(&mut e);
    connected(&mut e, Time::from_millis(20), t, peer);
    // The peer answers in plaintext, then the connection ends.
    let mut far = Far::plain();
    far.receive(&again);
    far.send(&handshake(10));
    exchange(&mut e, Time::from_millis(30), &mut wire, &mut far, 68);
    closed(&mut e, Time::from_secs(1), t, peer);
    assert_eq!(e.plaintext_fallbacks(), 1, "plaintext worked: remembered");
    wire.sent(&mut e);
    // A later plain dial that hears nothing and is given up by the torrent itself (its own
    // handshake time) forgets the address as well.
    let (now, redial) = next_dial(&mut e, Time::from_secs(1), t, remote);
    connected(&mut e, now, t, redial);
    let mut wire = Wire::new(Route::Peer(t, redial));
    handshake_of(&wire.sent(&mut e), 10);
    let mut later = now;
    while e.plaintext_fallbacks() == 1 {
        later += Duration::from_secs(1);
        assert!(later < now + Duration::from_secs(60), "never given up");
        e.handle_input(later, EngineInput::Timeout);
        wire.sent(&mut e);
    }
    assert!(
        wire.closes.len() == 1,
        "the torrent closed it: {:?}",
        wire.closes
    );
}

/// Panics unless `bytes` open an MSE handshake (a key of at least 96 bytes), not a plain one.
fn assert_mse_key(bytes: &[u8]) {
    assert!(
        bytes.len() >= 96 && !bytes.starts_with(&PROTOCOL[..]),
        "an MSE key, not a plain handshake: {bytes:?}"
    );
}

#[test]
fn a_dial_marked_for_a_plain_handshake_opens_plain_under_prefer_only() {
    // Prefer: the marked dial opens with the torrent's own handshake, an unmarked one with MSE.
    let mut e = engine(Policy::Prefer);
    let (t, marked, _) = dialing_leecher(&mut e, 11, 7008);
    let (t2, unmarked, _) = dialing_leecher(&mut e, 12, 7009);
    e.plain_handshake(t, marked);
    connected(&mut e, Time::ZERO, t, marked);
    handshake_of(&Wire::new(Route::Peer(t, marked)).sent(&mut e), 11);
    connected(&mut e, Time::ZERO, t2, unmarked);
    assert_mse_key(&Wire::new(Route::Peer(t2, unmarked)).sent(&mut e));
    assert_eq!(e.plaintext_fallbacks(), 0, "no address remembered as plain");
    // Require: the mark is ignored.
    let mut e = engine(Policy::Require);
    let (t, marked, _) = dialing_leecher(&mut e, 13, 7010);
    e.plain_handshake(t, marked);
    connected(&mut e, Time::ZERO, t, marked);
    assert_mse_key(&Wire::new(Route::Peer(t, marked)).sent(&mut e));
}
