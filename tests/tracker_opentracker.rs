//! The tracker state machines against a real tracker: Debian's opentracker on 127.0.0.1, over HTTP
//! and over UDP. A small blocking executor in this file carries out the manager's actions with std
//! sockets; every loop is bounded in wall time.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::time::Time;
use kp_torrent_core::tracker::manager::{
    ConnId, ManagerConfig, TrackerAction, TrackerEvent, TrackerId, TrackerManager,
};
use kp_torrent_core::tracker::{AnnounceEvent, ScrapeCounts};
use kp_torrent_tests::{TempDir, require_tool};

/// A running opentracker, killed when dropped (also when the test panics).
struct Opentracker {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Opentracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
fn free_port() -> Option<u16> {
    let tcp = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = tcp.local_addr().ok()?.port();
    let udp = UdpSocket::bind(("127.0.0.1", port)).ok()?;
    drop((tcp, udp));
    Some(port)
}

fn start_opentracker(bin: &std::path::Path, hashes: &[InfoHash]) -> Opentracker {
    for _attempt in 0..10 {
        let dir = TempDir::new("opentracker");
        let list: String = hashes.iter().map(|h| h.to_hex() + "\n").collect();
        std::fs::write(dir.path().join("whitelist"), list).expect("write whitelist");
        let Some(port) = free_port() else { continue };
        let p = port.to_string();
        let child = Command::new(bin)
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &p,
                "-P",
                &p,
                "-w",
                "whitelist",
                "-d",
            ])
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn opentracker");
        let mut tracker = Opentracker {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tracker.child.try_wait() {
                break; // lost the port race: try another
            }
            if hashes.first().is_none_or(|h| whitelist_loaded(port, h)) {
                return tracker;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("opentracker did not start");
}

/// True once opentracker answers an announce for `hash` without refusing it: it loads the
/// whitelist in the background, after it has started listening.
fn whitelist_loaded(port: u16, hash: &InfoHash) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let ih: String = hash.0.iter().map(|b| format!("%{b:02X}")).collect();
    let req = format!(
        "GET /announce?info_hash={ih}&peer_id=readiness-probe-0000&port=1&uploaded=0\
         &downloaded=0&left=0&event=stopped&compact=1 HTTP/1.0\r\n\r\n"
    );
    let mut reply = Vec::new();
    if s.write_all(req.as_bytes()).is_err() || s.read_to_end(&mut reply).is_err() {
        return false;
    }
    let reply = String::from_utf8_lossy(&reply);
    reply.starts_with("HTTP/1.1 200") && !reply.contains("failure reason")
}

/// Carries out one manager's actions with blocking std sockets.
struct Executor {
    manager: TrackerManager,
    udp: UdpSocket,
    tcp: BTreeMap<ConnId, TcpStream>,
    epoch: Instant,
}

impl Executor {
    fn new(manager: TrackerManager, epoch: Instant) -> Executor {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        udp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Executor {
            manager,
            udp,
            tcp: BTreeMap::new(),
            epoch,
        }
    }

    fn now(&self) -> Time {
        Time::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    fn act(&mut self) {
        // Bounded: each action is carried out once; a handful per announce.
        for _ in 0..1000 {
            let Some(action) = self.manager.poll_action() else {
                return;
            };
            let now = self.now();
            match action {
                TrackerAction::Resolve {
                    tracker,
                    host,
                    port,
                } => {
                    let addrs: Vec<SocketAddr> = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|a| a.collect())
                        .unwrap_or_default();
                    self.manager.handle_resolved(now, tracker, &addrs);
                }
                TrackerAction::OpenTcp {
                    conn,
                    host,
                    port,
                    tls,
                    ..
                } => {
                    assert!(!tls, "no TLS in this test");
                    let addr = (host.as_str(), port)
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next());
                    match addr.map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2))) {
                        Some(Ok(s)) => {
                            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                            self.tcp.insert(conn, s);
                            self.manager.handle_tcp_connected(now, conn);
                        }
                        Some(Err(e)) => {
                            self.manager.handle_connect_failed(now, conn, e.to_string())
                        }
                        None => self
                            .manager
                            .handle_connect_failed(now, conn, "no address".into()),
                    }
                }
                TrackerAction::SendTcp { conn, bytes } => {
                    if let Some(s) = self.tcp.get_mut(&conn)
                        && let Err(e) = s.write_all(&bytes)
                    {
                        self.tcp.remove(&conn);
                        self.manager
                            .handle_tcp_closed(now, conn, Some(e.to_string()));
                    }
                }
                TrackerAction::CloseTcp { conn } => {
                    self.tcp.remove(&conn);
                }
                TrackerAction::SendUdp { addr, bytes, .. } => {
                    self.udp.send_to(&bytes, addr).expect("udp send");
                }
            }
        }
        panic!("the manager keeps asking for actions");
    }

    fn read(&mut self) {
        let conns: Vec<ConnId> = self.tcp.keys().copied().collect();
        let mut buf = vec![0u8; 64 * 1024];
        for conn in conns {
            let now = self.now();
            let Some(s) = self.tcp.get_mut(&conn) else {
                continue;
            };
            match s.read(&mut buf) {
                Ok(0) => {
                    self.tcp.remove(&conn);
                    self.manager.handle_tcp_closed(now, conn, None);
                }
                Ok(n) => self.manager.handle_tcp_data(now, conn, &buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    self.tcp.remove(&conn);
                    self.manager
                        .handle_tcp_closed(now, conn, Some(e.to_string()));
                }
            }
            self.act();
        }
        if let Ok((n, from)) = self.udp.recv_from(&mut buf) {
            let now = self.now();
            self.manager.handle_udp_datagram(now, from, &buf[..n]);
        }
    }

    /// Runs until `done` accepts an event (returned with all events seen), for at most 10 s.
    fn drive(&mut self, what: &str, done: impl Fn(&TrackerEvent) -> bool) -> Vec<TrackerEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            self.act();
            while let Some(e) = self.manager.poll_event() {
                let finished = done(&e);
                seen.push(e);
                if finished {
                    return seen;
                }
            }
            self.read();
            self.act();
            let now = self.now();
            if self.manager.poll_timeout().is_some_and(|t| t <= now) {
                self.manager.handle_timeout(now);
            }
        }
        panic!("timed out waiting for {what}; events: {seen:?}");
    }
}

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
    Executor::new(m, epoch)
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

fn two_clients_find_each_other(url: &str, info_hash: InfoHash) {
    let epoch = Instant::now();
    let (port_a, port_b) = (42001, 42002);
    let addr_a = SocketAddr::from(([127, 0, 0, 1], port_a));
    let addr_b = SocketAddr::from(([127, 0, 0, 1], port_b));
    // A seeds, B downloads: the scrape must count one of each.
    let mut a = client(url, info_hash, b'a', port_a, 0, epoch);
    let mut b = client(url, info_hash, b'b', port_b, 1000, epoch);

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
    let mut c = client(url, info_hash, b'c', 42003, 1000, epoch);
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
    let Some(bin) = require_tool("opentracker") else {
        return;
    };
    let http_hash = InfoHash([0x5a; 20]);
    let udp_hash = InfoHash([0xa5; 20]);
    let tracker = start_opentracker(&bin, &[http_hash, udp_hash]);
    let port = tracker.port;
    two_clients_find_each_other(&format!("http://127.0.0.1:{port}/announce"), http_hash);
    two_clients_find_each_other(&format!("udp://127.0.0.1:{port}/announce"), udp_hash);
}

#[test]
fn opentracker_refusal_is_reported_with_its_text() {
    let Some(bin) = require_tool("opentracker") else {
        return;
    };
    let tracker = start_opentracker(&bin, &[InfoHash([1; 20])]);
    let url = format!("http://127.0.0.1:{}/announce", tracker.port);
    let mut x = client(&url, InfoHash([2; 20]), b'x', 42010, 10, Instant::now());
    let ev = x.drive("an error", |e| matches!(e, TrackerEvent::Error { .. }));
    let Some(TrackerEvent::Error { error, .. }) = ev.last() else {
        unreachable!()
    };
    assert!(error.to_string().contains("not authorized"), "{error}");
}
