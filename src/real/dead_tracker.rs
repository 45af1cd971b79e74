//! Trackers that never answer, for failover tests: a UDP socket that reads and drops every
//! datagram ([`SilentUdpTracker`]) and a TCP listener that accepts connections, reads the requests
//! and never replies ([`SilentTcpTracker`]). Both count what reached them, so a test can check a
//! client really tried them before moving on.
//!
//! Each runs one thread that wakes at least every 50 ms to check whether it should stop; dropping
//! the harness stops and joins it (and closes every accepted connection).

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the threads check their stop flag.
const TICK: Duration = Duration::from_millis(50);

/// A stop flag, a counter and the thread that serves one silent tracker.
struct Silent {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Silent {
    fn spawn(name: &str, run: impl FnOnce(&AtomicBool, &AtomicUsize) + Send + 'static) -> Silent {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(&s, &c))
            .expect("spawn silent tracker thread");
        Silent {
            stop,
            count,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP "tracker" on 127.0.0.1 that receives and drops everything: a BEP 15 client sees a tracker
/// that is down (or a firewall that drops its packets).
pub struct SilentUdpTracker {
    port: u16,
    silent: Silent,
}

impl SilentUdpTracker {
    /// Binds a free UDP port on 127.0.0.1 and starts dropping what arrives.
    pub fn start() -> SilentUdpTracker {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = socket.local_addr().expect("local addr").port();
        socket
            .set_read_timeout(Some(TICK))
            .expect("UDP read timeout");
        let silent = Silent::spawn("silent-udp-tracker", move |stop, count| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if socket.recv_from(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        SilentUdpTracker { port, silent }
    }

    /// `udp://127.0.0.1:PORT/announce`.
    pub fn url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    /// Datagrams received (and dropped) so far.
    pub fn datagrams(&self) -> usize {
        self.silent.count.load(Ordering::SeqCst)
    }
}

/// An HTTP "tracker" on 127.0.0.1 that accepts every connection, reads what the client sends and
/// never answers nor closes: a client sees a connect that works and a reply that never comes.
pub struct SilentTcpTracker {
    port: u16,
    silent: Silent,
}

impl SilentTcpTracker {
    /// Listens on a free TCP port on 127.0.0.1.
    pub fn start() -> SilentTcpTracker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TCP 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let silent = Silent::spawn("silent-tcp-tracker", move |stop, count| {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                // Take every pending connection first; then read the open ones and wait.
                if let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    count.fetch_add(1, Ordering::SeqCst);
                    open.push(stream);
                    continue;
                }
                // Read and drop requests so the client's writes never block; keep every
                // connection open until it closes its side.
                open.retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == ErrorKind::WouldBlock,
                });
                std::thread::sleep(TICK);
            }
        });
        SilentTcpTracker { port, silent }
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.silent.count.load(Ordering::SeqCst)
    }
}
