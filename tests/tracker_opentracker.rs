//! The tracker state machines and the driver's tracker sockets against a real tracker: Debian's
//! opentracker on 127.0.0.1, over HTTP, UDP, and HTTPS through stunnel with a test CA. Every loop
//! is bounded in wall time.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kp_torrent::tracker_io::{Tokens, TrackerIo};
use kp_torrent_core::engine::TorrentId;
use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::time::Time;
use kp_torrent_core::tracker::manager::{ManagerConfig, TrackerEvent, TrackerId, TrackerManager};
use kp_torrent_core::tracker::{AnnounceEvent, ScrapeCounts};
use kp_torrent_tests::real::{Opentracker, free_port};
use kp_torrent_tests::{TempDir, make_test_ca, require_tool};
use mio::{Events, Poll, Token, Waker};

const WAKER: Token = Token(0);
const TOKENS: Tokens = Tokens {
    udp4: Token(1),
    udp6: Token(2),
    conn_base: 16,
};

/// One tracker manager driven through the driver's tracker sockets ([`TrackerIo`]) by a small
/// mio loop, as the client's event loop does.
struct Executor {
    manager: TrackerManager,
    io: TrackerIo,
    poll: Poll,
    epoch: Instant,
}

impl Executor {
    fn new(manager: TrackerManager, epoch: Instant, extra_ca: Option<PathBuf>) -> Executor {
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
        let io = TrackerIo::new(TOKENS, waker, None, extra_ca).expect("tracker io");
        Executor {
            manager,
            io,
            poll,
            epoch,
        }
    }

    fn now(&self) -> Time {
        Time::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Runs until `done` accepts an event (returned with all events seen), for at most 10 s.
    fn drive(&mut self, what: &str, done: impl Fn(&TrackerEvent) -> bool) -> Vec<TrackerEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let mut events = Events::with_capacity(64);
        while Instant::now() < deadline {
            let now = self.now();
            if self.manager.poll_timeout().is_some_and(|t| t <= now) {
                self.manager.handle_timeout(now);
            }
            self.io
                .run_actions(self.poll.registry(), now, NO_TORRENT, &mut self.manager);
            while let Some(e) = self.manager.poll_event() {
                let finished = done(&e);
                seen.push(e);
                if finished {
                    return seen;
                }
            }
            let wait = self
                .manager
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| t.saturating_since(now))
                .min(Duration::from_millis(100));
            self.poll.poll(&mut events, Some(wait)).expect("poll");
            let now = self.now();
            for event in events.iter() {
                if event.token() == WAKER {
                    self.io
                        .handle_wakeup(self.poll.registry(), now, &mut self.manager);
                } else if self.io.owns(event.token()) {
                    self.io
                        .handle_event(self.poll.registry(), now, event, &mut self.manager);
                }
            }
        }
        panic!("timed out waiting for {what}; events: {seen:?}");
    }
}

/// The one manager of a test has no engine torrent; its connections carry this id.
const NO_TORRENT: TorrentId = TorrentId {
    index: 0,
    generation: 0,
};

fn config() -> ManagerConfig {
    // Re-announce after a second, whatever opentracker asks, so each client sees the other soon.
    ManagerConfig {
        min_reannounce: Duration::from_secs(1),
        max_reannounce: Duration::from_secs(1),
        http_timeout: Duration::from_secs(5),
        ..ManagerConfig::default()
    }
}

fn client(
    url: &str,
    info_hash: InfoHash,
    id: u8,
    port: u16,
    left: u64,
    epoch: Instant,
    extra_ca: Option<PathBuf>,
) -> Executor {
    let mut m = TrackerManager::new(
        config(),
        vec![vec![url.to_string()]],
        info_hash,
        PeerId([id; 20]),
        port,
        u64::from(id),
    );
    m.handle_stats(0, 0, left);
    Executor::new(m, epoch, extra_ca)
}

fn peers_contain(addr: SocketAddr) -> impl Fn(&TrackerEvent) -> bool {
    move |e| matches!(e, TrackerEvent::Peers { addrs, .. } if addrs.contains(&addr))
}

fn no_error(events: &[TrackerEvent]) {
    for e in events {
        assert!(
            !matches!(e, TrackerEvent::Error { .. }),
            "tracker error: {e:?}"
        );
    }
}

fn two_clients_find_each_other(url: &str, info_hash: InfoHash, ca: Option<PathBuf>) {
    let epoch = Instant::now();
    let (port_a, port_b) = (42001, 42002);
    let addr_a = SocketAddr::from(([127, 0, 0, 1], port_a));
    let addr_b = SocketAddr::from(([127, 0, 0, 1], port_b));
    // A seeds, B downloads: the scrape must count one of each.
    let mut a = client(url, info_hash, b'a', port_a, 0, epoch, ca.clone());
    let mut b = client(url, info_hash, b'b', port_b, 1000, epoch, ca.clone());

    let ev = a.drive("A's started announce", |e| {
        matches!(e, TrackerEvent::Announced { .. })
    });
    no_error(&ev);
    assert!(matches!(
        ev.last(),
        Some(TrackerEvent::Announced {
            event: AnnounceEvent::Started,
            ..
        })
    ));

    let ev = b.drive("B to see A", peers_contain(addr_a));
    no_error(&ev);
    for e in &ev {
        if let TrackerEvent::Peers { addrs, .. } = e {
            assert!(
                !addrs.contains(&addr_b),
                "B was given its own address: {addrs:?}"
            );
        }
    }

    // A learns about B at its next announce.
    let ev = a.drive("A to see B", peers_contain(addr_b));
    no_error(&ev);

    a.manager.handle_scrape(a.now(), TrackerId(0));
    let ev = a.drive("a scrape", |e| matches!(e, TrackerEvent::Scrape { .. }));
    no_error(&ev);
    let Some(TrackerEvent::Scrape { counts, .. }) = ev.last() else {
        unreachable!()
    };
    assert_eq!((counts.complete, counts.incomplete), (1, 1), "{counts:?}");

    // Both leave; a newcomer then finds itself alone, so `stopped` reached the tracker.
    for x in [&mut a, &mut b] {
        let now = x.now();
        x.manager.handle_stop(now);
        let ev = x.drive("stop", |e| *e == TrackerEvent::Stopped);
        no_error(&ev);
        assert!(
            ev.iter().any(|e| matches!(
                e,
                TrackerEvent::Announced {
                    event: AnnounceEvent::Stopped,
                    ..
                }
            )),
            "{ev:?}"
        );
    }
    let mut c = client(url, info_hash, b'c', 42003, 1000, epoch, ca);
    let ev = c.drive("the newcomer's announce", |e| {
        matches!(e, TrackerEvent::Announced { .. })
    });
    for e in &ev {
        assert!(
            !matches!(e, TrackerEvent::Peers { .. }),
            "peers left behind: {e:?}"
        );
    }
    c.manager.handle_scrape(c.now(), TrackerId(0));
    let ev = c.drive("the newcomer's scrape", |e| {
        matches!(e, TrackerEvent::Scrape { .. })
    });
    let counts = ev.iter().find_map(|e| match e {
        TrackerEvent::Scrape { counts, .. } => Some(*counts),
        _ => None,
    });
    let counts: ScrapeCounts = counts.unwrap_or_default();
    assert_eq!((counts.complete, counts.incomplete), (0, 1), "{counts:?}");
}

#[test]
fn opentracker_http_and_udp() {
    let http_hash = InfoHash([0x5a; 20]);
    let udp_hash = InfoHash([0xa5; 20]);
    let named_hash = InfoHash([0x7e; 20]);
    let Some(tracker) = Opentracker::start(&[http_hash, udp_hash, named_hash]) else {
        return;
    };
    let port = tracker.port();
    two_clients_find_each_other(
        &format!("http://127.0.0.1:{port}/announce"),
        http_hash,
        None,
    );
    two_clients_find_each_other(&format!("udp://127.0.0.1:{port}/announce"), udp_hash, None);
    // By name: the lookup goes through the resolver thread.
    two_clients_find_each_other(
        &format!("udp://localhost:{port}/announce"),
        named_hash,
        None,
    );
}

#[test]
fn opentracker_refusal_is_reported_with_its_text() {
    let Some(tracker) = Opentracker::start(&[InfoHash([1; 20])]) else {
        return;
    };
    let url = tracker.http_announce_url();
    let mut x = client(
        &url,
        InfoHash([2; 20]),
        b'x',
        42010,
        10,
        Instant::now(),
        None,
    );
    let ev = x.drive("an error", |e| matches!(e, TrackerEvent::Error { .. }));
    let Some(TrackerEvent::Error { error, .. }) = ev.last() else {
        unreachable!()
    };
    assert!(error.to_string().contains("not authorized"), "{error}");
}

/// stunnel in front of opentracker: TLS with a certificate from a CA the test made.
struct Stunnel {
    child: Child,
    port: u16,
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_stunnel(
    bin: &std::path::Path,
    dir: &std::path::Path,
    ca: &kp_torrent_tests::TestCa,
    backend: u16,
) -> Stunnel {
    for _attempt in 0..10 {
        let port = free_port();
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\n[tracker]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{backend}\ncert = {cert}\nkey = {key}\n",
                log = dir.join("stunnel.log").display(),
                cert = ca.cert_pem.display(),
                key = ca.key_pem.display(),
            ),
        )
        .expect("write stunnel.conf");
        let child = Command::new(bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stunnel");
        let mut tunnel = Stunnel { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tunnel.child.try_wait() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return tunnel;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("stunnel did not start");
}

#[test]
fn opentracker_over_https_through_stunnel() {
    let Some(stunnel_bin) = require_tool("stunnel4") else {
        return;
    };
    let dir = TempDir::new("https-tracker");
    let Some(ca) = make_test_ca(dir.path()) else {
        return;
    };
    let hash = InfoHash([0x3c; 20]);
    let Some(tracker) = Opentracker::start(&[hash]) else {
        return;
    };
    let tunnel = start_stunnel(&stunnel_bin, dir.path(), &ca, tracker.port());
    // `localhost` is the name the certificate covers; it may resolve to ::1 first, where nothing
    // listens, so this also checks that the next address is tried.
    let url = format!("https://localhost:{}/announce", tunnel.port);
    two_clients_find_each_other(&url, hash, Some(ca.ca_pem.clone()));

    // Without the test CA the certificate is refused and the user is told why.
    let mut x = client(&url, hash, b'y', 42020, 10, Instant::now(), None);
    let ev = x.drive("a certificate error", |e| {
        matches!(e, TrackerEvent::Error { .. })
    });
    let Some(TrackerEvent::Error { error, .. }) = ev.last() else {
        unreachable!()
    };
    assert!(error.to_string().contains("certificate"), "{error}");
}
