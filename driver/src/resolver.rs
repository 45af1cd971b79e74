//! Host name resolution off the event loop: `getaddrinfo` blocks, so helper threads do it and
//! wake the loop through its `mio::Waker` when an answer is ready.
//!
//! Lookups run side by side on up to [`MAX_THREADS`] threads, started when needed: a lookup that
//! hangs (an unreachable DNS server can hold `getaddrinfo` for tens of seconds) must not delay the
//! lookup of the next tracker. The caller decides how long to wait; an answer that comes after it
//! gave up is simply not asked for any more.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use mio::Waker;

/// What a lookup is for, chosen by the caller.
pub type LookupKey = u64;

/// Most lookup threads at once; further lookups queue until one is free.
pub const MAX_THREADS: usize = 4;

/// An answered lookup.
#[derive(Debug)]
pub struct Resolved {
    /// The caller's key.
    pub key: LookupKey,
    /// The addresses (with the port asked for), or why there are none.
    pub result: Result<Vec<SocketAddr>, String>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<(LookupKey, String, u16)>,
    /// Threads waiting for a job.
    idle: usize,
    threads: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    done: Sender<Resolved>,
    waker: Arc<Waker>,
    lookup: LookupFn,
}

type LookupFn = fn(&str, u16) -> Result<Vec<SocketAddr>, String>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panicking lookup thread leaves the queue itself consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, answer: Resolved) -> bool {
        if self.done.send(answer).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }
}

/// A background resolver.
pub struct Resolver {
    shared: Arc<Shared>,
    done: Receiver<Resolved>,
}

impl Resolver {
    /// Starts the first helper thread; threads call `waker.wake()` after each answer.
    pub fn new(waker: Arc<Waker>) -> io::Result<Resolver> {
        Resolver::with_lookup(waker, lookup)
    }

    fn with_lookup(waker: Arc<Waker>, lookup: LookupFn) -> io::Result<Resolver> {
        let (done_tx, done) = channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            done: done_tx,
            waker,
            lookup,
        });
        spawn_worker(&shared)?;
        Ok(Resolver { shared, done })
    }

    /// Asks for `host:port`; the answer comes from [`Resolver::try_take`] after a wake-up.
    pub fn resolve(&self, key: LookupKey, host: &str, port: u16) {
        let mut q = self.shared.lock();
        q.jobs.push_back((key, host.to_owned(), port));
        let busy = q.jobs.len() > q.idle;
        let can_grow = q.threads < MAX_THREADS;
        drop(q);
        if busy
            && can_grow
            && spawn_worker(&self.shared).is_err()
            && self.shared.lock().threads == 0
        {
            // No thread to run it: answer at once rather than never.
            let mut q = self.shared.lock();
            let jobs: Vec<_> = q.jobs.drain(..).collect();
            drop(q);
            for (key, host, _) in jobs {
                let result = Err(format!("{host}: cannot start a lookup thread"));
                self.shared.answer(Resolved { key, result });
            }
            return;
        }
        self.shared.ready.notify_one();
    }

    /// The next answer, if one is ready.
    pub fn try_take(&self) -> Option<Resolved> {
        self.done.try_recv().ok()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // A lookup in progress may take as long as the system resolver's timeout: the threads
        // are told to stop and left to finish on their own, never joined.
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> io::Result<()> {
    let mine = shared.clone();
    shared.lock().threads += 1;
    let spawned = std::thread::Builder::new()
        .name("kp-resolver".into())
        .spawn(move || worker(&mine));
    if spawned.is_err() {
        shared.lock().threads -= 1;
    }
    spawned.map(drop)
}

fn worker(shared: &Shared) {
    loop {
        let mut q = shared.lock();
        let job = loop {
            if q.closed {
                q.threads -= 1;
                return;
            }
            if let Some(job) = q.jobs.pop_front() {
                break job;
            }
            q.idle += 1;
            q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.idle -= 1;
        };
        drop(q);
        let (key, host, port) = job;
        let result = (shared.lookup)(&host, port);
        if !shared.answer(Resolved { key, result }) {
            shared.lock().threads -= 1;
            return;
        }
    }
}

/// Resolves at once when `host` is an IP literal (bracketed IPv6 included).
pub fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Some(addr) = literal(host, port) {
        return Ok(vec![addr]);
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{host}: no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("{host}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn literals_resolve_without_the_thread() {
        assert_eq!(
            literal("127.0.0.1", 80),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(literal("[::1]", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(literal("localhost", 80), None);
    }

    static RELEASE: AtomicBool = AtomicBool::new(false);

    /// A lookup that hangs for `hang` (at most 10 s, until the test releases it) and answers
    /// 127.0.0.1 for anything else.
    fn test_lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if host == "hang" {
            let until = Instant::now() + Duration::from_secs(10);
            while !RELEASE.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err("hang: released".into());
        }
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    fn answers(poll: &mut mio::Poll, resolver: &Resolver, n: usize) -> Vec<Resolved> {
        let mut got = Vec::new();
        let mut events = mio::Events::with_capacity(4);
        for _ in 0..100 {
            while let Some(r) = resolver.try_take() {
                got.push(r);
            }
            if got.len() >= n {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
        got
    }

    #[test]
    fn a_hanging_lookup_does_not_hold_up_the_others() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let resolver = Resolver::with_lookup(waker, test_lookup).unwrap();
        // More hanging lookups than threads: the rest wait, but the first fast one does not.
        for key in 0..MAX_THREADS as u64 - 1 {
            resolver.resolve(key, "hang", 1);
        }
        resolver.resolve(10, "fast", 80);
        let got = answers(&mut poll, &resolver, 1);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, 10);
        assert_eq!(
            got[0].result.as_deref(),
            Ok(&["127.0.0.1:80".parse().unwrap()][..])
        );
        assert!(resolver.shared.lock().threads <= MAX_THREADS);
        RELEASE.store(true, Ordering::SeqCst);
        let got = answers(&mut poll, &resolver, MAX_THREADS - 1);
        let mut keys: Vec<u64> = got.iter().map(|r| r.key).collect();
        keys.sort();
        assert_eq!(keys, (0..MAX_THREADS as u64 - 1).collect::<Vec<_>>());
    }

    #[test]
    fn lookups_answer_through_the_waker() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let resolver = Resolver::new(waker).unwrap();
        resolver.resolve(7, "localhost", 6969);
        resolver.resolve(8, "name.invalid", 1);
        let mut answers = Vec::new();
        let mut events = mio::Events::with_capacity(4);
        for _ in 0..100 {
            if answers.len() == 2 {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            while let Some(r) = resolver.try_take() {
                answers.push(r);
            }
        }
        assert_eq!(answers.len(), 2, "{answers:?}");
        let local = answers.iter().find(|r| r.key == 7).unwrap();
        let addrs = local.result.as_ref().unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 6969)
        );
        let bad = answers.iter().find(|r| r.key == 8).unwrap();
        assert!(
            bad.result
                .as_ref()
                .unwrap_err()
                .starts_with("name.invalid: ")
        );
    }
}
