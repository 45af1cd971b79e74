//! Host name resolution off the event loop: `getaddrinfo` blocks, so one helper thread does it and
//! wakes the loop through its `mio::Waker` when an answer is ready.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use mio::Waker;

/// What a lookup is for, chosen by the caller.
pub type LookupKey = u64;

/// An answered lookup.
#[derive(Debug)]
pub struct Resolved {
    /// The caller's key.
    pub key: LookupKey,
    /// The addresses (with the port asked for), or why there are none.
    pub result: Result<Vec<SocketAddr>, String>,
}

/// A background resolver.
pub struct Resolver {
    jobs: Option<Sender<(LookupKey, String, u16)>>,
    done: Receiver<Resolved>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the helper thread; it calls `waker.wake()` after each answer.
    pub fn new(waker: Arc<Waker>) -> io::Result<Resolver> {
        let (jobs, job_rx) = channel::<(LookupKey, String, u16)>();
        let (done_tx, done) = channel();
        let thread = std::thread::Builder::new()
            .name("kp-resolver".into())
            .spawn(move || {
                for (key, host, port) in job_rx {
                    let result = lookup(&host, port);
                    if done_tx.send(Resolved { key, result }).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(Resolver {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Asks for `host:port`; the answer comes from [`Resolver::try_take`] after a wake-up.
    pub fn resolve(&self, key: LookupKey, host: &str, port: u16) {
        if let Some(jobs) = &self.jobs {
            // The thread only ends when this sender is dropped, so sending cannot fail here.
            let _ = jobs.send((key, host.to_owned(), port));
        }
    }

    /// The next answer, if one is ready.
    pub fn try_take(&self) -> Option<Resolved> {
        self.done.try_recv().ok()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // A lookup in progress may take as long as the system resolver's timeout; don't wait.
        self.jobs = None;
        drop(self.thread.take());
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
    use std::time::Duration;

    #[test]
    fn literals_resolve_without_the_thread() {
        assert_eq!(
            literal("127.0.0.1", 80),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(literal("[::1]", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(literal("localhost", 80), None);
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
