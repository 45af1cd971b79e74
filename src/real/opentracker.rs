//! opentracker on 127.0.0.1: HTTP and UDP (BEP 15) announces on one port, whitelist mode.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kp_torrent_core::bencode;
use kp_torrent_core::id::InfoHash;

use super::{RealProcess, free_port, wait_for, work_dir};
use crate::{TempDir, require_tool};

/// How long opentracker gets to accept its first TCP connection.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running opentracker that tracks only the info-hashes it was started with.
///
/// Its replies include the announcing peer itself, and it keeps a peer killed without a `stopped`
/// announce for the whole interval (about 30 minutes): a client reads addresses of itself and of dead
/// peers from it and must cope.
pub struct Opentracker {
    process: RealProcess,
    port: u16,
    _dir: TempDir,
}

/// Counts a tracker scrape reports for one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swarm {
    /// Peers that announced with nothing left to download.
    pub seeders: i64,
    /// Peers still downloading.
    pub leechers: i64,
    /// Downloads finished so far: `completed` announces the tracker counted.
    pub downloaded: i64,
}

impl Opentracker {
    /// Starts opentracker for `info_hashes` on a free port and waits until it accepts announces;
    /// `None` (skip) when opentracker is missing outside CI.
    pub fn start(info_hashes: &[InfoHash]) -> Option<Opentracker> {
        let program = require_tool("opentracker")?;
        let dir = work_dir("opentracker");
        // Debian builds it with WANT_ACCESSLIST_WHITE: without a list every announce is refused.
        let list: String = info_hashes.iter().map(|h| h.to_hex() + "\n").collect();
        std::fs::write(dir.path().join("whitelist"), list).expect("write whitelist");
        for _attempt in 0..5 {
            let port = free_port();
            // `-d` makes it chroot there when root (`-w` is then relative to it) and only chdir
            // otherwise; as root it drops to `-u` (default "nobody"), which must be able to read
            // the whitelist: TempDir's default modes allow that. Both were checked here, as root and
            // as nobody.
            let args: Vec<String> = [
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-P",
                &port.to_string(),
                "-d",
                &dir.path().to_string_lossy(),
                "-w",
                "whitelist",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut process = RealProcess::spawn("opentracker", &program, &args, dir.path());
            // Listening is not enough: it loads the whitelist in the background afterwards, and
            // refuses announces until then. Every hash is probed, not only the first: a CI run
            // under load once saw a later hash refused after the first was accepted.
            let up = wait_for(START_TIMEOUT, || {
                if process.exit_status().is_some() {
                    return Some(false);
                }
                info_hashes
                    .iter()
                    .all(|h| whitelist_loaded(port, h))
                    .then_some(true)
            });
            match up {
                Some(true) => {
                    return Some(Opentracker {
                        process,
                        port,
                        _dir: dir,
                    });
                }
                // Exited: most likely the port was taken between free_port and bind; try another.
                Some(false) => continue,
                None => process.fail("did not accept announces within 30 s"),
            }
        }
        panic!("opentracker exited at start 5 times (ports taken?)");
    }

    /// The port for both TCP (HTTP) and UDP.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn http_announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// `udp://127.0.0.1:PORT/announce` (BEP 15).
    pub fn udp_announce_url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    /// The running process (log, pid).
    pub fn process(&self) -> &RealProcess {
        &self.process
    }

    /// Asks the tracker over HTTP how many seeders and leechers `info_hash` has; `None` when the
    /// request fails or the reply does not list the torrent.
    pub fn scrape(&self, info_hash: &InfoHash) -> Option<Swarm> {
        let escaped: String = info_hash.0.iter().map(|b| format!("%{b:02X}")).collect();
        let body = http_get(self.port, &format!("/scrape?info_hash={escaped}"))?;
        let value = bencode::decode(&body).ok()?;
        let stats = value
            .as_dict()?
            .get_dict(b"files")?
            .get_dict(&info_hash.0)?;
        Some(Swarm {
            seeders: stats.get_int(b"complete")?,
            leechers: stats.get_int(b"incomplete")?,
            downloaded: stats.get_int(b"downloaded").unwrap_or(0),
        })
    }

    /// Waits until a scrape of `info_hash` satisfies `pred` (for example "one leecher has
    /// announced"), so a test can order peers through the tracker instead of sleeping.
    ///
    /// # Panics
    /// After `timeout`, with the last counts seen and the tracker's log.
    pub fn wait_for_swarm(
        &self,
        info_hash: &InfoHash,
        timeout: Duration,
        what: &str,
        pred: impl Fn(Swarm) -> bool,
    ) -> Swarm {
        let mut last = None;
        wait_for(timeout, || {
            let s = self.scrape(info_hash);
            last = s;
            s.filter(|s| pred(*s))
        })
        .unwrap_or_else(|| {
            self.process.fail(&format!(
                "swarm never reached \"{what}\" within {timeout:?}; last scrape {last:?}"
            ))
        })
    }
}

/// True once opentracker answers an announce for `hash` without refusing it. The probe says
/// `stopped`, so it leaves no peer behind.
fn whitelist_loaded(port: u16, hash: &InfoHash) -> bool {
    let escaped: String = hash.0.iter().map(|b| format!("%{b:02X}")).collect();
    let path = format!(
        "/announce?info_hash={escaped}&peer_id=kp-readiness-probe-0&port=1&uploaded=0\
         &downloaded=0&left=0&event=stopped&compact=1"
    );
    http_get(port, &path).is_some_and(|body| {
        bencode::decode(&body)
            .ok()
            .and_then(|v| v.as_dict().map(|d| d.get(b"failure reason").is_none()))
            .unwrap_or(false)
    })
}

/// The body of `GET path` from 127.0.0.1:`port`, or `None` on any failure (bounded by 2 s
/// timeouts).
fn http_get(port: u16, path: &str) -> Option<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    if !reply.starts_with(b"HTTP/1.") || reply.get(9..12) != Some(b"200") {
        return None;
    }
    let body_at = reply.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    reply.get(body_at..).map(<[u8]>::to_vec)
}
