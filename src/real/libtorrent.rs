//! libtorrent-rasterbar 2.0.8 through its Python bindings: one peer seeding or downloading one
//! torrent (from a `.torrent` file or a magnet link) on 127.0.0.1, or a bare DHT node
//! ([`Libtorrent::dht_node`]).
//!
//! The peer is `libtorrent_peer.py` (embedded here, written to the harness's temp folder) run with
//! Debian's `/usr/bin/python3`, the only Python that has the module. It prints one fact per line,
//! each prefixed with seconds since its start: `port N`, `progress HAVE TOTAL STATE PEERS`,
//! `metadata`, `peers IP:PORT/SOURCE ...`, `encryption IP:PORT/KIND ...`, `alert KIND: TEXT`,
//! `done` (all pieces verified),
//! `error TEXT`, and with [`LibtorrentOptions::dht`] `udp-port N` and `dht NODES`. The harness talks back through a commands file in its temp folder
//! ([`Libtorrent::connect_peer`]).
//!
//! Its session is made with no plugins: name the ones a test needs in
//! [`LibtorrentOptions::extensions`] (`ut_metadata` to fetch or serve a magnet link's metadata,
//! `ut_pex` for peer exchange, `smart_ban`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{RealProcess, Torrent, wait_for, work_dir};
use crate::{TempDir, require_python_libtorrent};

const SCRIPT: &str = include_str!("libtorrent_peer.py");

/// How long a seeder gets to check its data and start seeding, and a peer to report its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a finished leecher gets to exit (it sends a `stopped` announce first).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which connections libtorrent accepts and makes (its default is to try MSE first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Plaintext only (`pe_disabled`).
    Plaintext,
    /// Either; libtorrent offers MSE but accepts plaintext (`pe_enabled`).
    #[default]
    Enabled,
    /// MSE only (`pe_forced`): a plaintext peer is refused.
    Forced,
    /// MSE only, and RC4 for the whole stream (`pe_forced` with `allowed_enc_level` `pe_rc4`):
    /// a peer that does not encrypt is refused.
    ForcedRc4,
}

/// Settings of one libtorrent peer beyond the always-on local-only ones.
#[derive(Clone, Debug, Default)]
pub struct LibtorrentOptions {
    /// Peers to dial directly (repeated every 2 s while fewer are connected), for trackerless tests
    /// and for reaching a peer the tracker does not know.
    pub peers: Vec<SocketAddr>,
    /// Replaces the torrent's trackers when not empty.
    pub trackers: Vec<String>,
    /// Connection encryption policy.
    pub encryption: Encryption,
    /// Upload limit in bytes per second; 0 is unlimited. Useful to keep a transfer running long
    /// enough to interrupt it. (libtorrent exempts local peers from limits by default; the script
    /// moves 127.0.0.1 into the limited class.)
    pub upload_limit: u64,
    /// Listen port; `None` lets the system choose one, which cannot collide.
    pub port: Option<u16>,
    /// libtorrent plugins to add by name (`ses.add_extension`): `"ut_metadata"`, `"ut_pex"`,
    /// `"smart_ban"`. Empty (the default) means none, not libtorrent's default set.
    pub extensions: Vec<String>,
    /// A leecher keeps running (seeding) after it completes instead of exiting, so it can serve
    /// others (metadata, PEX); [`Libtorrent::wait_done`] then does not wait for an exit.
    pub keep_running: bool,
    /// Run libtorrent's DHT (BEP 5) on its UDP port with the settings a DHT on loopback needs:
    /// no public routers, no checks against 127.0.0.1 nodes or ids that do not match their IP,
    /// no rate ban of a busy IP, and a 5 s announce interval. Off by default, like LSD, UPnP and
    /// NAT-PMP (always off).
    pub dht: bool,
    /// DHT nodes to bootstrap from (`add_dht_node`, repeated every second while its table is
    /// empty); needs [`LibtorrentOptions::dht`].
    pub dht_contacts: Vec<SocketAddr>,
    /// Which transports it dials and accepts (default TCP only).
    pub transport: Transport,
}

/// The transports a libtorrent peer speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP only (uTP off both ways).
    #[default]
    Tcp,
    /// uTP only (`enable_incoming_tcp`/`enable_outgoing_tcp` false, uTP on).
    Utp,
    /// Both, as libtorrent's defaults (it dials uTP first).
    Both,
}

/// Where a peer gets its torrent.
enum Source<'a> {
    File(&'a Torrent),
    Magnet(&'a str),
    /// No torrent: a bare DHT node.
    Nothing,
}

/// A peer source bit of [`LibtorrentPeer::source`] (libtorrent's `peer_info.source`).
pub mod peer_source {
    /// From a tracker.
    pub const TRACKER: u8 = 0x01;
    /// From the DHT.
    pub const DHT: u8 = 0x02;
    /// From peer exchange (`ut_pex`).
    pub const PEX: u8 = 0x04;
    /// From local service discovery.
    pub const LSD: u8 = 0x08;
    /// From resume data. (A peer given to `connect_peer`, as [`LibtorrentOptions::peers`] and
    /// [`super::Libtorrent::connect_peer`] do, has no source bit at all.)
    pub const RESUME_DATA: u8 = 0x10;
    /// The peer connected to us.
    pub const INCOMING: u8 = 0x20;
}

/// One peer connected to a libtorrent peer, as its latest `peers` line lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LibtorrentPeer {
    /// The remote address (its listening address when libtorrent dialled it).
    pub addr: SocketAddr,
    /// How libtorrent learnt about it: bits of [`peer_source`].
    pub source: u8,
}

/// A running libtorrent peer (see the module doc).
pub struct Libtorrent {
    process: RealProcess,
    port: u16,
    /// Exits once complete (a leecher without [`LibtorrentOptions::keep_running`]).
    exits_when_done: bool,
    commands: PathBuf,
    _dir: TempDir,
}

impl Libtorrent {
    /// Seeds `torrent` from `data_dir` (the folder holding the file or folder named by the torrent)
    /// and returns once libtorrent has checked the data and is seeding; `None` (skip) when
    /// python3-libtorrent is missing outside CI.
    ///
    /// # Panics
    /// When the data does not check out or the peer does not start within 20 s.
    pub fn seed(
        torrent: &Torrent,
        data_dir: &Path,
        opts: &LibtorrentOptions,
    ) -> Option<Libtorrent> {
        let mut peer = Libtorrent::start(Source::File(torrent), data_dir, opts, false)?;
        peer.wait_line(
            START_TIMEOUT,
            "done",
            "did not finish checking and start seeding",
        );
        Some(peer)
    }

    /// Downloads `torrent` into `dest` and exits once every piece is verified (see
    /// [`Libtorrent::wait_done`]); returns once it listens. `None` (skip) when python3-libtorrent is
    /// missing outside CI.
    pub fn download(
        torrent: &Torrent,
        dest: &Path,
        opts: &LibtorrentOptions,
    ) -> Option<Libtorrent> {
        Libtorrent::start(Source::File(torrent), dest, opts, true)
    }

    /// Downloads the torrent of magnet link `uri` (`lt.parse_magnet_uri`) into `dest`: the info
    /// dictionary comes from peers, so both sides need `ut_metadata` in
    /// [`LibtorrentOptions::extensions`], and the peers come from the URI's `x.pe` and `tr`,
    /// [`LibtorrentOptions::peers`] or [`Libtorrent::connect_peer`]. Otherwise as
    /// [`Libtorrent::download`].
    pub fn download_magnet(uri: &str, dest: &Path, opts: &LibtorrentOptions) -> Option<Libtorrent> {
        Libtorrent::start(Source::Magnet(uri), dest, opts, true)
    }

    /// A libtorrent DHT node with no torrent (its [`LibtorrentOptions::dht`] forced on), for a
    /// DHT test's bootstrap node; returns once it listens. `None` (skip) when python3-libtorrent
    /// is missing outside CI.
    pub fn dht_node(opts: &LibtorrentOptions) -> Option<Libtorrent> {
        let opts = LibtorrentOptions {
            dht: true,
            ..opts.clone()
        };
        // With no torrent there is nothing to save: the folder is never written.
        Libtorrent::start(Source::Nothing, Path::new("."), &opts, false)
    }

    fn start(
        source: Source<'_>,
        save: &Path,
        opts: &LibtorrentOptions,
        leecher: bool,
    ) -> Option<Libtorrent> {
        if !require_python_libtorrent() {
            return None;
        }
        let dir = work_dir("libtorrent");
        let script = dir.path().join("libtorrent_peer.py");
        std::fs::write(&script, SCRIPT).expect("write libtorrent script");
        let abs = |p: &Path| -> PathBuf {
            std::path::absolute(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let commands = dir.path().join("commands");
        let mut args = vec![script.to_string_lossy().into_owned()];
        let bare = matches!(source, Source::Nothing);
        match source {
            Source::File(torrent) => args.extend([
                "--torrent".into(),
                abs(&torrent.path).to_string_lossy().into_owned(),
            ]),
            Source::Magnet(uri) => args.extend(["--magnet".into(), uri.to_string()]),
            Source::Nothing => {}
        }
        args.extend([
            "--commands".into(),
            commands.to_string_lossy().into_owned(),
            "--save".into(),
            abs(save).to_string_lossy().into_owned(),
            "--port".into(),
            opts.port.unwrap_or(0).to_string(),
            "--encryption".into(),
            match opts.encryption {
                Encryption::Plaintext => "plaintext",
                Encryption::Enabled => "enabled",
                Encryption::Forced => "forced",
                Encryption::ForcedRc4 => "forced-rc4",
            }
            .into(),
            "--upload-limit".into(),
            opts.upload_limit.to_string(),
            "--transport".into(),
            match opts.transport {
                Transport::Tcp => "tcp",
                Transport::Utp => "utp",
                Transport::Both => "both",
            }
            .into(),
        ]);
        if opts.dht {
            args.push("--dht".into());
        }
        for c in &opts.dht_contacts {
            args.extend(["--dht-node".into(), c.to_string()]);
        }
        for p in &opts.peers {
            args.extend(["--peer".into(), p.to_string()]);
        }
        for t in &opts.trackers {
            args.extend(["--tracker".into(), t.clone()]);
        }
        for e in &opts.extensions {
            args.extend(["--extension".into(), e.clone()]);
        }
        let exits_when_done = leecher && !opts.keep_running;
        if exits_when_done {
            args.push("--exit-when-done".into());
        } else if !leecher && !bare {
            // A seeder whose data fails the check would otherwise quietly start downloading.
            args.push("--expect-complete".into());
        }
        let name = if bare {
            "libtorrent-dht"
        } else if leecher {
            "libtorrent-leecher"
        } else {
            "libtorrent-seeder"
        };
        let process = RealProcess::spawn(name, Path::new("/usr/bin/python3"), &args, dir.path());
        let mut peer = Libtorrent {
            process,
            port: 0,
            exits_when_done,
            commands,
            _dir: dir,
        };
        let port = peer.wait_line(START_TIMEOUT, "port", "did not report its listen port");
        peer.port = port
            .trim()
            .parse()
            .unwrap_or_else(|_| peer.process.fail(&format!("bad port line {port:?}")));
        Some(peer)
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address, for another peer to dial.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its DHT's UDP address (127.0.0.1), once it reported it.
    ///
    /// # Panics
    /// When it runs no DHT or does not report the port within 20 s.
    pub fn dht_addr(&mut self) -> SocketAddr {
        let port = self.wait_line(START_TIMEOUT, "udp-port", "did not report its DHT port");
        let port: u16 = port
            .trim()
            .parse()
            .unwrap_or_else(|_| self.process.fail(&format!("bad udp-port line {port:?}")));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The size of its DHT routing table, as it last reported it.
    pub fn dht_nodes(&self) -> Option<usize> {
        let log = self.process.log();
        let rest = facts(&log).filter(|(k, _)| *k == "dht").last()?.1;
        rest.trim().parse().ok()
    }

    /// Waits until its DHT routing table holds at least `min` nodes and returns the count.
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, with the peer's log.
    pub fn wait_dht_nodes(&mut self, timeout: Duration, min: usize) -> usize {
        let found = wait_for(timeout, || {
            if let Some(n) = self.dht_nodes().filter(|&n| n >= min) {
                return Some(Some(n));
            }
            self.process.exit_status().map(|_| None)
        });
        match found {
            Some(Some(n)) => n,
            Some(None) => self
                .process
                .fail(&format!("exited before its DHT knew {min} nodes")),
            None => self.process.fail(&format!(
                "its DHT knew fewer than {min} nodes after {timeout:?} (last {:?})",
                self.dht_nodes()
            )),
        }
    }

    /// Waits until its log satisfies `pred` (an `alert dht_announce: ...` line, say).
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, naming `what` was awaited.
    pub fn wait_log(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let seen = wait_for(timeout, || {
            if pred(&self.process.log()) {
                return Some(true);
            }
            self.process.exit_status().map(|_| false)
        });
        match seen {
            Some(true) => {}
            Some(false) => self.process.fail(&format!("exited before {what}")),
            None => self.process.fail(&format!("no {what} within {timeout:?}")),
        }
    }

    /// The running process (log, pid).
    pub fn process(&self) -> &RealProcess {
        &self.process
    }

    /// The latest `(pieces_have, pieces_total)` it reported.
    pub fn progress(&self) -> Option<(u32, u32)> {
        let log = self.process.log();
        let rest = facts(&log).filter(|(k, _)| *k == "progress").last()?.1;
        let mut it = rest.split_whitespace().map(str::parse::<u32>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    }

    /// Waits until the latest reported `(pieces_have, pieces_total)` satisfies `pred` (for example
    /// "some but not all", to interrupt a download midway) and returns it.
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, with the peer's log.
    pub fn wait_progress(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(u32, u32) -> bool,
    ) -> (u32, u32) {
        let found = wait_for(timeout, || {
            if let Some((have, total)) = self.progress().filter(|&(h, t)| pred(h, t)) {
                return Some(Some((have, total)));
            }
            self.process.exit_status().map(|_| None)
        });
        match found {
            Some(Some(p)) => p,
            Some(None) => self
                .process
                .fail(&format!("exited before progress \"{what}\"")),
            None => self.process.fail(&format!(
                "progress never reached \"{what}\" within {timeout:?}; last {:?}",
                self.progress()
            )),
        }
    }

    /// Dials `addr` now (`handle.connect_peer`), and again every 2 s while fewer peers than it was
    /// told to dial are connected; the peer acknowledges with a `command connect` line, which
    /// this waits for (up to 10 s).
    ///
    /// # Panics
    /// When the peer does not acknowledge in time, with its log.
    pub fn connect_peer(&mut self, addr: SocketAddr) {
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.commands)
            .expect("open libtorrent commands file");
        writeln!(f, "connect {addr}").expect("write libtorrent command");
        drop(f);
        let want = format!("connect {addr}");
        let acked = wait_for(Duration::from_secs(10), || {
            let log = self.process.log();
            facts(&log)
                .any(|(k, rest)| k == "command" && rest == want)
                .then_some(())
        });
        if acked.is_none() {
            self.process
                .fail(&format!("did not take the command \"{want}\" within 10 s"));
        }
    }

    /// The peers connected to it, as it last reported them (empty before the first report).
    pub fn peers(&self) -> Vec<LibtorrentPeer> {
        let log = self.process.log();
        facts(&log)
            .filter(|(k, _)| *k == "peers")
            .last()
            .map(|(_, rest)| parse_peers(rest))
            .unwrap_or_default()
    }

    /// How the connections it has reported were carried, each kind once, in order of first
    /// sight: `"rc4"`, `"plaintext"` (an MSE handshake, then clear text) or `"none"` (no MSE).
    pub fn encryption_seen(&self) -> Vec<String> {
        let log = self.process.log();
        let mut kinds: Vec<String> = Vec::new();
        for (_, rest) in facts(&log).filter(|(k, _)| *k == "encryption") {
            for word in rest.split_whitespace() {
                if let Some((_, kind)) = word.rsplit_once('/')
                    && !kinds.iter().any(|k| k == kind)
                {
                    kinds.push(kind.to_string());
                }
            }
        }
        kinds
    }

    /// Waits until one connected peer satisfies `pred` and returns it.
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, with the peer's log.
    pub fn wait_peer(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&LibtorrentPeer) -> bool,
    ) -> LibtorrentPeer {
        let found = wait_for(timeout, || {
            let log = self.process.log();
            let hit = facts(&log)
                .filter(|(k, _)| *k == "peers")
                .flat_map(|(_, rest)| parse_peers(rest))
                .find(|p| pred(p));
            if let Some(p) = hit {
                return Some(Some(p));
            }
            self.process.exit_status().map(|_| None)
        });
        match found {
            Some(Some(p)) => p,
            Some(None) => self
                .process
                .fail(&format!("exited before a peer \"{what}\"")),
            None => self.process.fail(&format!(
                "no connected peer \"{what}\" within {timeout:?}; last peers {:?}",
                self.peers()
            )),
        }
    }

    /// Waits until a magnet download has received and checked the torrent's metadata.
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, with the peer's log.
    pub fn wait_metadata(&mut self, timeout: Duration) {
        self.wait_line(timeout, "metadata", "did not receive the metadata");
    }

    /// Kills the peer at once (SIGKILL, like `kill -9`) and reaps it; what it wrote stays on disk.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits until every piece is verified; a leecher that exits when done must also have exited
    /// successfully.
    ///
    /// # Panics
    /// After `timeout` (or if the leecher exits with an error), with the peer's log.
    pub fn wait_done(&mut self, timeout: Duration) {
        self.wait_line(timeout, "done", "did not complete the download");
        if self.exits_when_done {
            let status = wait_for(EXIT_TIMEOUT, || self.process.exit_status())
                .unwrap_or_else(|| self.process.fail("did not exit after completing"));
            if !status.success() {
                self.process.fail(&format!("exited with {status}"));
            }
        }
    }

    /// Waits for the first fact line `keyword ...` and returns the rest of it; fails early when the
    /// process ends without printing it.
    fn wait_line(&mut self, timeout: Duration, keyword: &str, what: &str) -> String {
        let found = wait_for(timeout, || {
            let log = self.process.log();
            if let Some((_, rest)) = facts(&log).find(|(k, _)| *k == keyword) {
                return Some(Ok(rest.to_string()));
            }
            if let Some((_, rest)) = facts(&log).find(|(k, _)| *k == "error") {
                return Some(Err(format!("reported an error: {rest}")));
            }
            self.process
                .exit_status()
                .map(|s| Err(format!("exited ({s}) before \"{keyword}\"")))
        });
        match found {
            Some(Ok(rest)) => rest,
            Some(Err(e)) => self.process.fail(&e),
            None => self.process.fail(&format!("{what} within {timeout:?}")),
        }
    }
}

/// The peers of a `peers` line: `IP:PORT/SOURCE` words; malformed words are skipped.
fn parse_peers(rest: &str) -> Vec<LibtorrentPeer> {
    rest.split_whitespace()
        .filter_map(|word| {
            let (addr, source) = word.rsplit_once('/')?;
            Some(LibtorrentPeer {
                addr: addr.parse().ok()?,
                source: source.parse().ok()?,
            })
        })
        .collect()
}

/// The `(keyword, rest)` of each fact line `SECONDS KEYWORD REST`.
fn facts(log: &str) -> impl Iterator<Item = (&str, &str)> {
    log.lines().filter_map(|line| {
        let (_secs, rest) = line.split_once(' ')?;
        Some(rest.split_once(' ').unwrap_or((rest, "")))
    })
}
