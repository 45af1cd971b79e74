//! uTP tests: the codec, and two endpoints joined by a seeded simulated link.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::BTreeMap;

use quickcheck::{Arbitrary, Gen, QuickCheck};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::conn::{self, MAX_REORDER};
use super::packet::{self, Header, PacketType};
use super::*;
use crate::time::Time;

const A: SocketAddr = SocketAddr::V4(core::net::SocketAddrV4::new(
    core::net::Ipv4Addr::new(127, 0, 0, 1),
    6881,
));
const B: SocketAddr = SocketAddr::V4(core::net::SocketAddrV4::new(
    core::net::Ipv4Addr::new(127, 0, 0, 1),
    6882,
));

// ---- codec ----

fn arbitrary_type(g: &mut Gen) -> PacketType {
    *g.choose(&[
        PacketType::Data,
        PacketType::Fin,
        PacketType::State,
        PacketType::Reset,
        PacketType::Syn,
    ])
    .expect("non-empty")
}

#[derive(Debug, Clone)]
struct AnyPacket {
    header: Header,
    sack: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Arbitrary for AnyPacket {
    fn arbitrary(g: &mut Gen) -> AnyPacket {
        let sack = bool::arbitrary(g).then(|| {
            let words = usize::arbitrary(g) % 8 + 1;
            (0..words * 4).map(|_| u8::arbitrary(g)).collect()
        });
        AnyPacket {
            header: Header {
                ty: arbitrary_type(g),
                conn_id: u16::arbitrary(g),
                timestamp_us: u32::arbitrary(g),
                timestamp_diff_us: u32::arbitrary(g),
                wnd_size: u32::arbitrary(g),
                seq_nr: u16::arbitrary(g),
                ack_nr: u16::arbitrary(g),
            },
            sack,
            payload: Vec::arbitrary(g),
        }
    }
}

#[test]
fn packets_round_trip() {
    fn prop(p: AnyPacket) -> bool {
        let mut out = Vec::new();
        packet::encode(&p.header, p.sack.as_deref(), &p.payload, &mut out);
        let d = packet::decode(&out).expect("decodes");
        packet::is_utp(&out)
            && d.header == p.header
            && d.sack == p.sack.as_deref()
            && d.payload == &p.payload[..]
    }
    QuickCheck::new()
        .rng(Gen::from_size_and_seed(200, 0x7574_7031))
        .tests(500)
        .quickcheck(prop as fn(AnyPacket) -> bool);
}

#[test]
fn arbitrary_and_mutated_datagrams_never_panic() {
    fn prop(bytes: Vec<u8>, p: AnyPacket, flips: Vec<(usize, u8)>, cut: usize) -> bool {
        // Whatever decodes must also pass the classifier.
        if packet::decode(&bytes).is_ok() && !packet::is_utp(&bytes) {
            return false;
        }
        let mut out = Vec::new();
        packet::encode(&p.header, p.sack.as_deref(), &p.payload, &mut out);
        for (at, x) in flips {
            let n = out.len();
            out[at % n] ^= x;
        }
        out.truncate(cut % (out.len() + 1));
        let ok = packet::decode(&out).is_ok();
        // And an endpoint fed it does not panic either, before or after a handshake.
        let mut ep = Endpoint::new(UtpConfig::default());
        ep.handle_datagram(Time::ZERO, A, &out);
        ep.handle_datagram(Time::from_millis(1), A, &bytes);
        let mut buf = Vec::new();
        while ep.poll_transmit(Time::from_millis(1), &mut buf).is_some() {}
        while ep.poll_event().is_some() {}
        !ok || packet::is_utp(&out)
    }
    QuickCheck::new()
        .rng(Gen::from_size_and_seed(100, 0x7574_7032))
        .tests(1000)
        .quickcheck(prop as fn(Vec<u8>, AnyPacket, Vec<(usize, u8)>, usize) -> bool);
}

#[test]
fn the_classifier_accepts_versions_1_of_types_0_to_4_only() {
    let mut d = [0u8; 20];
    for first in 0..=255u8 {
        d[0] = first;
        let want = matches!(first, 0x01 | 0x11 | 0x21 | 0x31 | 0x41);
        assert_eq!(is_utp(&d), want, "first byte {first:#04x}");
        assert_eq!(packet::decode(&d).is_ok(), want);
    }
    d[0] = 0x41;
    assert!(!is_utp(&d[..19]));
    assert!(!is_utp(
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
    ));
}

#[test]
fn decoding_rejects_truncated_extensions_and_odd_sacks() {
    let h = Header {
        ty: PacketType::State,
        conn_id: 1,
        timestamp_us: 2,
        timestamp_diff_us: 3,
        wnd_size: 4,
        seq_nr: 5,
        ack_nr: 6,
    };
    let mut out = Vec::new();
    packet::encode(&h, Some(&[0xff; 4]), &[], &mut out);
    assert_eq!(
        packet::decode(&out[..23]),
        Err(packet::PacketError::TruncatedExtension)
    );
    out[21] = 3;
    assert_eq!(
        packet::decode(&out[..25]),
        Err(packet::PacketError::BadSack(3))
    );
    // An unknown extension is skipped; the chain goes on to a SACK behind it.
    let mut chained = out[..20].to_vec();
    chained[1] = 9;
    chained.extend_from_slice(&[1, 2, 0xaa, 0xbb, 0, 4, 1, 0, 0, 0, b'x']);
    let p = packet::decode(&chained).expect("decodes");
    assert_eq!(p.sack, Some(&[1, 0, 0, 0][..]));
    assert_eq!(p.payload, b"x");
    assert!(packet::sack_bit(&[1, 0, 0, 0], 0) && !packet::sack_bit(&[1, 0, 0, 0], 1));
}

// ---- the simulated link ----

/// One direction of the link.
#[derive(Debug, Clone, Default)]
struct Dir {
    delay: Duration,
    jitter: Duration,
    /// Per mille.
    loss: u32,
    dup: u32,
    /// Bottleneck bytes per second, with a tail-drop queue of `queue_limit` bytes.
    rate: Option<u64>,
    queue_limit: u64,
    free_at: Time,
    /// Drop everything.
    blackhole: bool,
    /// Largest queuing delay a packet met at the bottleneck since the last reset.
    max_queue: Duration,
    sent: u64,
    delivered_bytes: u64,
}

struct Sim {
    now: Time,
    ends: [Endpoint; 2],
    dirs: [Dir; 2],
    rng: ChaCha8Rng,
    /// (arrival, counter) to (destination index, datagram).
    wire: BTreeMap<(Time, u64), (usize, Vec<u8>)>,
    counter: u64,
}

fn addr(i: usize) -> SocketAddr {
    if i == 0 { A } else { B }
}

impl Sim {
    fn new(seed: u64, ab: Dir, ba: Dir) -> Sim {
        let config = |s| UtpConfig {
            seed: s,
            ..UtpConfig::default()
        };
        Sim {
            now: Time::ZERO,
            ends: [
                Endpoint::new(config(seed)),
                Endpoint::new(config(seed ^ 0xb)),
            ],
            dirs: [ab, ba],
            rng: ChaCha8Rng::seed_from_u64(seed),
            wire: BTreeMap::new(),
            counter: 0,
        }
    }

    fn send(&mut self, from: usize, bytes: Vec<u8>) {
        let now = self.now;
        let d = &mut self.dirs[from];
        d.sent += 1;
        if std::env::var("UTP_DEBUG").is_ok() {
            let p = packet::decode(&bytes).expect("ours");
            eprintln!(
                "{} {from} {:?} seq {} ack {} wnd {} sack {:?} len {}",
                now,
                p.header.ty,
                p.header.seq_nr,
                p.header.ack_nr,
                p.header.wnd_size,
                p.sack,
                p.payload.len()
            );
        }
        if d.blackhole || self.rng.random_range(0..1000) < d.loss {
            return;
        }
        let mut depart = now;
        if let Some(rate) = d.rate {
            let start = d.free_at.max(now);
            let queued = start.saturating_since(now);
            let queued_bytes = queued.as_nanos() as u64 * rate / 1_000_000_000;
            if queued_bytes + bytes.len() as u64 > d.queue_limit {
                return;
            }
            d.max_queue = d.max_queue.max(queued);
            d.free_at = start + Duration::from_nanos(bytes.len() as u64 * 1_000_000_000 / rate);
            depart = d.free_at;
        }
        d.delivered_bytes += bytes.len() as u64;
        let copies = if self.rng.random_range(0..1000) < d.dup {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if d.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.random_range(0..d.jitter.as_nanos() as u64))
            };
            self.counter += 1;
            self.wire.insert(
                (depart + d.delay + jitter, self.counter),
                (1 - from, bytes.clone()),
            );
        }
    }

    fn flush(&mut self) {
        let mut buf = Vec::new();
        for i in 0..2 {
            while let Some(to) = self.ends[i].poll_transmit(self.now, &mut buf) {
                assert_eq!(to, addr(1 - i));
                assert!(buf.len() <= 1450, "datagram of {} bytes", buf.len());
                self.send(i, buf.clone());
            }
        }
    }

    /// Sends what is queued, then moves time to the next arrival or timer and handles it.
    /// Returns false when nothing is left to happen.
    fn step(&mut self) -> bool {
        self.flush();
        let next = [
            self.wire.keys().next().map(|k| k.0),
            self.ends[0].poll_timeout(),
            self.ends[1].poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, bytes) = entry.remove();
            self.ends[to].handle_datagram(self.now, addr(1 - to), &bytes);
        }
        for e in &mut self.ends {
            e.handle_timeout(self.now);
        }
        true
    }
}

/// A test application on one end: writes `data`, reads everything, closes when both are done.
#[derive(Debug, Default)]
struct App {
    data: Vec<u8>,
    written: usize,
    expect: usize,
    got: Vec<u8>,
    handle: Option<ConnectionHandle>,
    closed: Option<CloseReason>,
    closed_locally: bool,
    connected: bool,
}

impl App {
    fn new(data: Vec<u8>, expect: usize) -> App {
        App {
            data,
            expect,
            ..App::default()
        }
    }

    fn pump(&mut self, ep: &mut Endpoint) {
        let mut buf = [0u8; 8192];
        while let Some(ev) = ep.poll_event() {
            match ev {
                Event::Incoming { handle, .. } | Event::Connected(handle) => {
                    assert!(self.handle.is_none() || self.handle == Some(handle));
                    self.handle = Some(handle);
                    self.connected = true;
                }
                Event::Readable(h) => {
                    assert_eq!(Some(h), self.handle);
                    loop {
                        let n = ep.read(h, &mut buf);
                        if n == 0 {
                            break;
                        }
                        self.got.extend_from_slice(&buf[..n]);
                    }
                }
                Event::Writable(h) => assert_eq!(Some(h), self.handle),
                Event::Closed { handle, reason } => {
                    assert_eq!(Some(handle), self.handle);
                    assert!(self.closed.is_none(), "closed twice");
                    self.closed = Some(reason);
                }
            }
        }
        let Some(h) = self.handle else { return };
        if self.closed.is_some() || self.closed_locally || !self.connected {
            return;
        }
        if self.written < self.data.len() {
            self.written += ep.write(h, &self.data[self.written..]);
        }
        if self.written == self.data.len() && self.got.len() >= self.expect {
            ep.close(h);
            self.closed_locally = true;
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// Runs a transfer of `a_len` bytes from A to B and `b_len` back; returns the apps and the
/// virtual time it took.
fn transfer(seed: u64, ab: Dir, ba: Dir, a_len: usize, b_len: usize) -> (Sim, [App; 2]) {
    let mut sim = Sim::new(seed, ab, ba);
    let mut apps = [
        App::new(pattern(a_len, seed + 1), b_len),
        App::new(pattern(b_len, seed + 2), a_len),
    ];
    let h = sim.ends[0].connect(Time::ZERO, B).expect("dial");
    apps[0].handle = Some(h);
    let mut steps = 0u64;
    loop {
        for (app, ep) in apps.iter_mut().zip(sim.ends.iter_mut()) {
            app.pump(ep);
        }
        if sim.ends.iter().all(Endpoint::is_empty) {
            break;
        }
        steps += 1;
        assert!(
            steps < 5_000_000,
            "no end after {steps} steps at {}",
            sim.now
        );
        assert!(sim.now < Time::from_secs(3600), "no end after an hour");
        if !sim.step() {
            break;
        }
    }
    for (i, app) in apps.iter().enumerate() {
        let other = &apps[1 - i];
        assert_eq!(app.got.len(), other.data.len(), "side {i} got all bytes");
        assert!(app.got == other.data, "side {i} got the bytes exactly");
        assert!(
            app.closed.is_none() || app.closed == Some(CloseReason::Finished),
            "side {i} closed with {:?}",
            app.closed
        );
    }
    (sim, apps)
}

fn clean(delay_ms: u64) -> Dir {
    Dir {
        delay: Duration::from_millis(delay_ms),
        ..Dir::default()
    }
}

#[test]
fn four_mib_both_ways_over_a_clean_link_then_both_fins() {
    let (sim, _) = transfer(1, clean(5), clean(5), 4 << 20, 4 << 20);
    assert!(sim.ends.iter().all(Endpoint::is_empty));
    // Data packets are full: about 3,000 per direction plus acks, not tiny fragments.
    assert!(
        sim.dirs[0].sent < 6_000,
        "{} datagrams A→B",
        sim.dirs[0].sent
    );
}

#[test]
fn four_mib_both_ways_under_loss_reordering_duplication_and_delay() {
    let lossy = Dir {
        delay: Duration::from_millis(30),
        jitter: Duration::from_millis(20),
        loss: 30,
        dup: 10,
        ..Dir::default()
    };
    let (sim, _) = transfer(2, lossy.clone(), lossy, 4 << 20, 4 << 20);
    assert!(sim.ends.iter().all(Endpoint::is_empty));
}

#[test]
fn random_links_deliver_exact_bytes() {
    for seed in 10..30u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut dir = || Dir {
            delay: Duration::from_millis(rng.random_range(0..200)),
            jitter: Duration::from_millis(rng.random_range(0..50)),
            loss: rng.random_range(0..150),
            dup: rng.random_range(0..50),
            ..Dir::default()
        };
        let (ab, ba) = (dir(), dir());
        let a_len = rng.random_range(0..300_000);
        let b_len = rng.random_range(0..300_000);
        transfer(seed, ab, ba, a_len, b_len);
    }
}

/// Runs until `until` with A writing without end and B reading; returns A's handle.
fn saturate(sim: &mut Sim, a: &mut App, b: &mut App, until: Time) {
    while sim.now < until {
        a.pump(&mut sim.ends[0]);
        b.pump(&mut sim.ends[1]);
        if let Some(h) = a.handle
            && a.connected
        {
            // Keep the send buffer full.
            let chunk = [0x5a; 16384];
            while sim.ends[0].write(h, &chunk) == chunk.len() {}
        }
        assert!(sim.step(), "the link went quiet");
    }
}

#[test]
fn ledbat_shrinks_the_window_above_target_and_grows_it_below() {
    let mut sim = Sim::new(3, clean(20), clean(20));
    let (mut a, mut b) = (App::new(Vec::new(), 0), App::new(Vec::new(), 0));
    a.expect = usize::MAX;
    b.expect = usize::MAX;
    a.handle = Some(sim.ends[0].connect(Time::ZERO, B).expect("dial"));
    let h = a.handle.expect("handle");
    let cwnd = |sim: &Sim| sim.ends[0].info(h).expect("open").cwnd;

    // Below target (no queue at all): the window grows far beyond its start.
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(5));
    let grown = cwnd(&sim);
    assert!(grown > 100 * MAX_PAYLOAD, "window {grown} after 5 s");

    // 250 ms of extra one-way delay on our data, as a queue building up: the window shrinks.
    sim.dirs[0].delay = Duration::from_millis(270);
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(25));
    let shrunk = cwnd(&sim);
    assert!(shrunk < grown, "window {shrunk} after {grown}");
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(35));
    let shrunk_more = cwnd(&sim);
    assert!(shrunk_more < shrunk, "window {shrunk_more} after {shrunk}");

    // The queue drains (delay back to base): the window grows again.
    sim.dirs[0].delay = Duration::from_millis(20);
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(36));
    let low = cwnd(&sim);
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(46));
    let regrown = cwnd(&sim);
    assert!(regrown > low, "window {regrown} after {low}");
}

#[test]
fn ledbat_keeps_a_bottleneck_queue_near_the_target_delay() {
    // 512 KiB/s with a 1 s queue: a loss-based sender would fill it before backing off.
    let rate = 512 * 1024;
    let bottleneck = Dir {
        delay: Duration::from_millis(20),
        rate: Some(rate),
        queue_limit: rate,
        ..Dir::default()
    };
    let mut sim = Sim::new(4, bottleneck, clean(20));
    let (mut a, mut b) = (App::new(Vec::new(), 0), App::new(Vec::new(), 0));
    a.expect = usize::MAX;
    b.expect = usize::MAX;
    a.handle = Some(sim.ends[0].connect(Time::ZERO, B).expect("dial"));
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(20));
    let early = sim.dirs[0].max_queue;
    assert!(
        early < Duration::from_millis(500),
        "queue reached {early:?}"
    );
    sim.dirs[0].max_queue = Duration::ZERO;
    let delivered = sim.dirs[0].delivered_bytes;
    saturate(&mut sim, &mut a, &mut b, Time::from_secs(40));
    let late = sim.dirs[0].max_queue;
    let throughput = (sim.dirs[0].delivered_bytes - delivered) / 20;
    // Settled: the queue stays close to 100 ms and the link stays busy.
    assert!(late < Duration::from_millis(160), "queue reached {late:?}");
    assert!(late > Duration::from_millis(40), "queue only {late:?}");
    assert!(throughput > rate * 8 / 10, "{throughput} B/s of {rate}");
    assert_eq!(sim.dirs[0].loss, 0);
}

#[test]
fn a_silent_link_is_retransmitted_into_after_the_rto() {
    let mut sim = Sim::new(5, clean(10), clean(10));
    let mut a = App::new(Vec::new(), usize::MAX);
    let mut b = App::new(Vec::new(), 10);
    a.handle = Some(sim.ends[0].connect(Time::ZERO, B).expect("dial"));
    // Connect, then swallow A's data.
    let mut steps = 0;
    loop {
        a.pump(&mut sim.ends[0]);
        if a.connected {
            break;
        }
        assert!(sim.step());
        steps += 1;
        assert!(steps < 100);
    }
    sim.dirs[0].blackhole = true;
    a.data = b"hello, uTP".to_vec();
    a.pump(&mut sim.ends[0]);
    sim.flush();
    let lost_at = sim.now;
    let sent = sim.dirs[0].sent;
    assert!(sent >= 2, "the data went out");
    // Nothing comes back; the next thing that happens is the retransmission timer.
    sim.dirs[0].blackhole = false;
    while sim.dirs[0].sent == sent {
        assert!(sim.step());
        b.pump(&mut sim.ends[1]);
    }
    let waited = sim.now.saturating_since(lost_at);
    assert!(waited >= conn::MIN_RTO, "resent after {waited:?}");
    assert!(waited <= conn::INITIAL_RTO, "resent after {waited:?}");
    for _ in 0..100 {
        sim.step();
        b.pump(&mut sim.ends[1]);
    }
    assert_eq!(b.got, b"hello, uTP");
}

#[test]
fn a_peer_that_vanishes_times_out_and_a_dial_to_nobody_fails() {
    let mut sim = Sim::new(6, clean(10), clean(10));
    let mut a = App::new(vec![1; 8 << 20], usize::MAX);
    let mut b = App::new(Vec::new(), usize::MAX);
    a.handle = Some(sim.ends[0].connect(Time::ZERO, B).expect("dial"));
    // Cut the link in the middle of the transfer, with data in flight.
    let mut steps = 0;
    while b.got.len() < 2 << 20 {
        a.pump(&mut sim.ends[0]);
        b.pump(&mut sim.ends[1]);
        assert!(sim.step());
        steps += 1;
        assert!(steps < 10_000);
    }
    assert!(a.connected && b.connected);
    assert!(b.got.len() < 7 << 20, "the transfer is not over");
    sim.dirs[0].blackhole = true;
    sim.dirs[1].blackhole = true;
    let cut_at = sim.now;
    while (a.closed.is_none() || b.closed.is_none()) && sim.step() {
        a.pump(&mut sim.ends[0]);
        b.pump(&mut sim.ends[1]);
        assert!(sim.now < Time::from_secs(600));
    }
    assert_eq!(a.closed, Some(CloseReason::TimedOut));
    let waited = sim.now.saturating_since(cut_at);
    // B's last packet arrived up to one link delay (10 ms) before the cut.
    assert!(
        waited + Duration::from_millis(10) >= conn::IDLE_TIMEOUT,
        "B gave up after {waited:?}"
    );
    assert!(
        waited <= conn::IDLE_TIMEOUT + Duration::from_secs(1),
        "B waited {waited:?}"
    );
    assert_eq!(b.closed, Some(CloseReason::Idle));
    // Their resets go out, then nothing is left of either connection.
    sim.flush();
    assert!(sim.ends.iter().all(Endpoint::is_empty));

    // A SYN into the void: three SYNs, then ConnectTimeout at 7 s.
    assert_eq!(
        dial_into_the_void(UtpConfig::default()),
        (conn::MAX_SYNS, Time::from_secs(7))
    );
    // With two SYNs (a client that falls back to TCP), the dial fails at 3 s.
    let two = UtpConfig {
        max_syns: 2,
        ..UtpConfig::default()
    };
    assert_eq!(dial_into_the_void(two), (2, Time::from_secs(3)));
}

/// Dials a peer that never answers: the SYNs sent and when the dial failed (it must fail with
/// `ConnectTimeout` and leave nothing behind).
fn dial_into_the_void(config: UtpConfig) -> (u32, Time) {
    let mut ep = Endpoint::new(config);
    let h = ep.connect(Time::ZERO, B).expect("dial");
    let (mut syns, mut now) = (0, Time::ZERO);
    let mut buf = Vec::new();
    loop {
        while ep.poll_transmit(now, &mut buf).is_some() {
            syns += 1;
        }
        if let Some(ev) = ep.poll_event() {
            assert_eq!(
                ev,
                Event::Closed {
                    handle: h,
                    reason: CloseReason::ConnectTimeout
                }
            );
            break;
        }
        now = ep.poll_timeout().expect("a SYN timer");
        ep.handle_timeout(now);
    }
    assert!(ep.is_empty());
    (syns, now)
}

/// A hand-made packet without a SACK that advertises a receive window of `wnd_size` bytes.
fn raw(
    ty: PacketType,
    conn_id: u16,
    seq_nr: u16,
    ack_nr: u16,
    wnd_size: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let h = Header {
        ty,
        conn_id,
        timestamp_us: 1,
        timestamp_diff_us: 0,
        wnd_size,
        seq_nr,
        ack_nr,
    };
    packet::encode(&h, None, payload, &mut out);
    out
}

fn syn(conn_id: u16, seq_nr: u16) -> Vec<u8> {
    raw(PacketType::Syn, conn_id, seq_nr, 0, 1 << 20, &[])
}

fn data(conn_id: u16, seq_nr: u16, ack_nr: u16, payload: &[u8]) -> Vec<u8> {
    raw(PacketType::Data, conn_id, seq_nr, ack_nr, 1 << 20, payload)
}

/// An acceptor that answered our hand-made SYN: returns the seq_nr its SYN-ACK announced.
fn accepted(ep: &mut Endpoint, from: SocketAddr, id: u16, seq: u16) -> u16 {
    ep.handle_datagram(Time::ZERO, from, &syn(id, seq));
    let mut buf = Vec::new();
    let to = ep.poll_transmit(Time::ZERO, &mut buf).expect("SYN-ACK");
    assert_eq!(to, from);
    let p = packet::decode(&buf).expect("decodes");
    assert_eq!(p.header.ty, PacketType::State);
    assert_eq!(
        p.header.conn_id, id,
        "BEP 29: the acceptor sends with the SYN's id"
    );
    assert_eq!(p.header.ack_nr, seq);
    p.header.seq_nr
}

/// Sends what `ep` will send at `now` and returns the sequence numbers of its data packets
/// (there must be nothing else).
fn burst(ep: &mut Endpoint, now: Time) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    while ep.poll_transmit(now, &mut buf).is_some() {
        let p = packet::decode(&buf).expect("decodes");
        assert_eq!(p.header.ty, PacketType::Data);
        assert_eq!(p.payload.len(), MAX_PAYLOAD);
        seqs.push(p.header.seq_nr);
        assert!(seqs.len() <= 1000, "a burst without end");
    }
    seqs
}

#[test]
fn new_data_leaves_one_packet_of_the_peer_window_free() {
    // We dial a hand-made peer, which answers and acks with the window it chooses.
    let mut ep = Endpoint::new(UtpConfig::default());
    let h = ep.connect(Time::ZERO, B).expect("dial");
    let mut buf = Vec::new();
    ep.poll_transmit(Time::ZERO, &mut buf).expect("SYN");
    let syn = packet::decode(&buf).expect("decodes").header;
    // The acceptor sends with the SYN's id; a State packet does not advance its seq_nr.
    let ack = |ack_nr: u16, packets: usize| {
        let wnd = u32::try_from(packets * MAX_PAYLOAD).expect("a small window");
        raw(PacketType::State, syn.conn_id, 3000, ack_nr, wnd, &[])
    };
    ep.handle_datagram(Time::ZERO, B, &ack(syn.seq_nr, 1000));
    assert_eq!(ep.poll_event(), Some(Event::Connected(h)));
    let bytes = vec![7u8; 1 << 20];
    assert!(ep.write(h, &bytes) > 200 * MAX_PAYLOAD);
    // Slow start under a wide window until the congestion window holds 8 packets, so that
    // only the peer's window limits what follows.
    let mut now = Time::ZERO;
    while ep.info(h).expect("open").cwnd < 8 * MAX_PAYLOAD {
        now += Duration::from_millis(10);
        assert!(
            now < Time::from_secs(1),
            "slow start never reached 8 packets"
        );
        let sent = burst(&mut ep, now);
        let last = *sent.last().expect("the congestion window sends");
        ep.handle_datagram(now, B, &ack(last, 1000));
    }
    // Each window of n packets, with nothing in flight, lets n - 1 new ones out.
    for n in [8, 5, 2] {
        now += Duration::from_millis(10);
        let sent = burst(&mut ep, now);
        assert!(sent.len() >= n, "{} sent under a wide window", sent.len());
        ep.handle_datagram(now, B, &ack(*sent.last().expect("sent"), n));
        let sent = burst(&mut ep, now);
        assert_eq!(sent.len(), n - 1, "a window of {n} packets");
        ep.handle_datagram(now, B, &ack(*sent.last().expect("sent"), 1000));
    }
    // With packets in flight too: 4 of a window of 5 out, 2 acked, 2 more out, never 5.
    now += Duration::from_millis(10);
    let sent = burst(&mut ep, now);
    ep.handle_datagram(now, B, &ack(*sent.last().expect("sent"), 5));
    let sent = burst(&mut ep, now);
    assert_eq!(sent.len(), 4, "a window of 5 packets");
    ep.handle_datagram(now, B, &ack(sent[1], 5));
    assert_eq!(
        burst(&mut ep, now).len(),
        2,
        "4 in flight at most in a window of 5"
    );
}

#[test]
fn the_reorder_buffer_is_bounded_in_packets_and_bytes() {
    let mut ep = Endpoint::new(UtpConfig::default());
    let theirs = accepted(&mut ep, A, 100, 1000);
    let ack = theirs.wrapping_sub(1);
    // Packet 1001 never comes; 1002.. far beyond the window are offered.
    let payload = [7u8; MAX_PAYLOAD];
    let mut handle = None;
    for k in 2..5000u16 {
        ep.handle_datagram(Time::ZERO, A, &data(101, 1000 + k, ack, &payload));
        while let Some(ev) = ep.poll_event() {
            if let Event::Incoming { handle: h, .. } = ev {
                handle = Some(h);
            }
        }
    }
    let info = ep.info(handle.expect("accepted")).expect("open");
    assert!(
        info.reorder_len <= MAX_REORDER,
        "{} slots",
        info.reorder_len
    );
    assert!(info.reorder_bytes <= UtpConfig::default().recv_buffer);
    assert!(info.reorder_bytes >= 700 * MAX_PAYLOAD);
    // The ack advertises what is left and the SACK what arrived.
    let mut buf = Vec::new();
    ep.poll_transmit(Time::ZERO, &mut buf).expect("ack");
    let p = packet::decode(&buf).expect("decodes");
    assert_eq!(p.header.ack_nr, 1000);
    assert!(p.header.wnd_size < MAX_PAYLOAD as u32 * 2);
    let mask = p.sack.expect("a SACK");
    assert_eq!(mask.len(), packet::MAX_SACK_BYTES);
    assert!(packet::sack_bit(mask, 0), "1002 arrived");
    // The hole filled: everything buffered becomes readable, in order.
    ep.handle_datagram(Time::ZERO, A, &data(101, 1001, ack, &payload));
    let info = ep.info(handle.expect("accepted")).expect("open");
    assert_eq!(info.reorder_bytes, 0);
    assert!(info.readable > 700 * MAX_PAYLOAD);
}

#[test]
fn connection_and_half_open_counts_are_bounded() {
    let config = UtpConfig {
        max_connections: 8,
        max_half_open: 4,
        ..UtpConfig::default()
    };
    let mut ep = Endpoint::new(config);
    let from = |i: u16| SocketAddr::new(A.ip(), 10_000 + i);
    // A SYN flood: never more than 4 half-open, the newest kept.
    for i in 0..100 {
        ep.handle_datagram(Time::from_millis(u64::from(i)), from(i), &syn(7, 1));
        assert!(ep.len() <= 4, "{} half-open", ep.len());
    }
    let mut buf = Vec::new();
    while ep.poll_transmit(Time::from_millis(99), &mut buf).is_some() {}
    // The newest ones still answer a second packet and are accepted.
    let mut incoming = 0;
    for i in 96..100 {
        ep.handle_datagram(Time::from_secs(1), from(i), &data(8, 2, 0, b"x"));
    }
    while let Some(ev) = ep.poll_event() {
        incoming += usize::from(matches!(ev, Event::Incoming { .. }));
    }
    assert_eq!(incoming, 4);
    // Confirmed connections up to the limit, then SYNs are reset.
    for i in 200..220 {
        ep.handle_datagram(Time::from_secs(2), from(i), &syn(7, 1));
        while ep.poll_transmit(Time::from_secs(2), &mut buf).is_some() {}
        ep.handle_datagram(Time::from_secs(2), from(i), &data(8, 2, 0, b"x"));
        assert!(ep.len() <= 8);
    }
    assert_eq!(ep.len(), 8);
    while ep.poll_transmit(Time::from_secs(2), &mut buf).is_some() {}
    ep.handle_datagram(Time::from_secs(3), from(300), &syn(7, 1));
    let to = ep
        .poll_transmit(Time::from_secs(3), &mut buf)
        .expect("a reset");
    assert_eq!(to, from(300));
    assert_eq!(
        packet::decode(&buf).expect("decodes").header.ty,
        PacketType::Reset
    );
    assert_eq!(ep.len(), 8);
    // Our own dials are bounded too.
    let mut dialer = Endpoint::new(config);
    for i in 0..4 {
        dialer.connect(Time::ZERO, from(i)).expect("dial");
    }
    assert_eq!(
        dialer.connect(Time::ZERO, from(9)),
        Err(ConnectError::TooManyHalfOpen)
    );
}

#[test]
fn a_reset_closes_and_a_refused_dial_says_so() {
    // Dial an endpoint that is full: its reset is a refusal.
    let full = UtpConfig {
        max_connections: 0,
        ..UtpConfig::default()
    };
    let mut sim = Sim::new(7, clean(1), clean(1));
    sim.ends[1] = Endpoint::new(full);
    let mut a = App {
        handle: Some(sim.ends[0].connect(Time::ZERO, B).expect("dial")),
        ..App::default()
    };
    for _ in 0..10 {
        sim.step();
        a.pump(&mut sim.ends[0]);
    }
    assert_eq!(a.closed, Some(CloseReason::Refused));
    assert!(sim.ends[0].is_empty());

    // A connected peer resets: Closed(Reset). A stale handle then reaches nothing.
    let mut sim = Sim::new(8, clean(1), clean(1));
    let (mut a, mut b) = (
        App::new(b"x".to_vec(), usize::MAX),
        App::new(Vec::new(), usize::MAX),
    );
    let h = sim.ends[0].connect(Time::ZERO, B).expect("dial");
    a.handle = Some(h);
    while !(a.connected && b.connected) {
        a.pump(&mut sim.ends[0]);
        b.pump(&mut sim.ends[1]);
        assert!(sim.step());
    }
    // B closes with data unacknowledged while its way to A is dead: after 30 s it gives up
    // and resets, and the reset reaches A once the link is back.
    sim.ends[1].write(b.handle.expect("b"), &[1; 10]);
    sim.dirs[1].blackhole = true;
    sim.ends[1].close(b.handle.expect("b"));
    let closed_at = sim.now;
    while sim.now < closed_at + conn::CLOSE_TIMEOUT {
        a.pump(&mut sim.ends[0]);
        assert!(sim.step());
    }
    assert!(a.closed.is_none(), "A heard nothing yet");
    sim.dirs[1].blackhole = false;
    loop {
        a.pump(&mut sim.ends[0]);
        if a.closed.is_some() {
            break;
        }
        assert!(sim.step());
        assert!(sim.now < Time::from_secs(120));
    }
    assert_eq!(a.closed, Some(CloseReason::Reset));
    assert_eq!(sim.ends[0].write(h, b"late"), 0);
    let h2 = sim.ends[0].connect(sim.now, B).expect("dial again");
    assert_ne!(h, h2);
    assert_eq!(sim.ends[0].write(h, b"stale"), 0);
    assert!(sim.ends[0].info(h).is_none());
}

#[test]
fn an_empty_stream_opens_and_closes() {
    let (sim, apps) = transfer(9, clean(1), clean(1), 0, 0);
    assert!(sim.ends.iter().all(Endpoint::is_empty));
    assert!(apps.iter().all(|a| a.connected));
}

#[test]
fn sequence_numbers_wrap() {
    // Whatever the initial sequence numbers, 70,000 packets of 100 bytes wrap them.
    let mut sim = Sim::new(9, clean(1), clean(1));
    let mut a = App::new(Vec::new(), usize::MAX);
    let mut b = App::new(Vec::new(), usize::MAX);
    a.handle = Some(sim.ends[0].connect(Time::ZERO, B).expect("dial"));
    let h = a.handle.expect("a");
    let mut sent = 0u64;
    let mut steps = 0;
    while b.got.len() < 7_000_000 {
        a.pump(&mut sim.ends[0]);
        b.pump(&mut sim.ends[1]);
        if a.connected && sim.ends[0].write(h, &[sent as u8; 100]) == 100 {
            sent += 1;
            // One small write per step makes one small packet per step.
            sim.flush();
        }
        assert!(sim.step());
        steps += 1;
        assert!(steps < 2_000_000);
    }
    let mut expect = Vec::new();
    for i in 0..70_000u64 {
        expect.extend_from_slice(&[i as u8; 100]);
    }
    assert!(b.got[..7_000_000] == expect[..]);
}
