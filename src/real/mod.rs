//! Real BitTorrent programs on 127.0.0.1 for end-to-end tests: opentracker, libtorrent (Python
//! bindings), Transmission 3.00, aria2 1.36, and nginx as a web seed.
//!
//! Each harness starts one process with its own temp folder (config, logs), waits only with a bound,
//! and kills and reaps the process when dropped, also while a test panics. Every process writes
//! stdout and stderr to a log file; the tail of that log goes into any panic message of the harness,
//! and is printed to stderr when a harness is dropped during a panic, so a CI failure can be read
//! without rerunning it.
//!
//! The usual flow: make content and a torrent ([`Torrent::from_spec`], or [`Torrent::create`] with
//! mktorrent), start an [`Opentracker`] with the
//! torrent's info-hash, point the torrent at it ([`Torrent::with_announce`]), then start peers.
//! Facts about these clients that shape the settings are in `/work/shared/INTEROP.md` and in
//! comments next to each setting. Measured here, and worth knowing for kp-torrent itself:
//! - opentracker puts the announcing peer in its own reply, keeps killed peers for its ~30 minute
//!   interval (so nobody re-announces during a test: order peers by waiting on a scrape), and loads
//!   its whitelist only after it starts listening.
//! - libtorrent dials uTP first and needs ~3.5 s to fall back to TCP; it exempts 127.0.0.1 from
//!   rate limits; with bad data a "seeder" quietly starts downloading.
//! - Transmission decides interest and unchoking every 10 s: a transfer with it starts up to 10 s
//!   after the connection. It never dials 127.x.
//! - aria2 announces only after its `-V` check, and cannot be told to dial a peer.

pub mod aria2;
pub mod dead_tracker;
pub mod kp;
pub mod libtorrent;
pub mod mountns;
pub mod nginx;
pub mod opentracker;
pub mod transmission;

pub use aria2::Aria2;
pub use dead_tracker::{SilentTcpTracker, SilentUdpTracker};
pub use kp::{Dataset, KpTorrent};
pub use libtorrent::{
    Encryption, Libtorrent, LibtorrentOptions, LibtorrentPeer, Transport, peer_source,
};
pub use mountns::MountNs;
pub use nginx::Nginx;
pub use opentracker::{Opentracker, Swarm};
pub use transmission::{Transmission, TransmissionEncryption, TransmissionOptions};

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kp_torrent_core::bencode;
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::metainfo::TorrentSpec;

use crate::{TempDir, find_tool, require_tool};

/// How often bounded waits poll their condition.
const POLL: Duration = Duration::from_millis(50);

/// How many bytes of a log go into a panic message.
const LOG_TAIL_BYTES: u64 = 4000;

/// A torrent file on disk with its v1 info-hash, for handing to trackers and peers.
#[derive(Clone, Debug)]
pub struct Torrent {
    /// The `.torrent` file.
    pub path: PathBuf,
    /// SHA-1 of the bencoded `info` dictionary.
    pub info_hash: InfoHash,
    /// The `name` field: the file name, or the top folder of a multi-file torrent.
    pub name: String,
}

impl Torrent {
    /// Makes a torrent of `source` (a file or a folder) with `mktorrent`, pieces of
    /// `2^piece_len_log2` bytes, and no tracker; `None` (skip) when mktorrent is missing outside CI.
    ///
    /// Add a tracker afterwards with [`Torrent::with_announce`]: the info-hash does not depend on it,
    /// so the tracker can be started (whitelisting the hash) before its URL is known.
    pub fn create(source: &Path, piece_len_log2: u8, out: &Path) -> Option<Torrent> {
        let mktorrent = require_tool("mktorrent")?;
        let output = Command::new(mktorrent)
            .arg("-l")
            .arg(piece_len_log2.to_string())
            .arg("-o")
            .arg(out)
            .arg(source)
            .output()
            .expect("run mktorrent");
        assert!(
            output.status.success(),
            "mktorrent failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Torrent::load(out))
    }

    /// Writes `spec` (the core's torrent builder) to `out`: no tool needed, any layout (empty
    /// files, odd piece sizes) the test wants.
    pub fn from_spec(spec: &TorrentSpec, out: &Path) -> Torrent {
        std::fs::write(out, spec.to_bytes()).expect("write torrent");
        Torrent::load(out)
    }

    /// Reads a torrent file and computes its info-hash.
    ///
    /// # Panics
    /// When the file is unreadable or not a torrent: these are the test's own files.
    pub fn load(path: &Path) -> Torrent {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let (info_raw, name) = info_of(&bytes);
        Torrent {
            path: path.to_path_buf(),
            info_hash: InfoHash::of(info_raw),
            name,
        }
    }

    /// Writes a copy of this torrent announcing to `url` only (same info dictionary, so the same
    /// info-hash) to `out`.
    pub fn with_announce(&self, url: &str, out: &Path) -> Torrent {
        let bytes = std::fs::read(&self.path).expect("read torrent");
        let (info_raw, _) = info_of(&bytes);
        // Keys in sorted order: "announce" < "info".
        let mut t = format!("d8:announce{}:{url}4:info", url.len()).into_bytes();
        t.extend_from_slice(info_raw);
        t.push(b'e');
        std::fs::write(out, &t).expect("write torrent");
        Torrent::load(out)
    }
}

fn info_of(torrent: &[u8]) -> (&[u8], String) {
    let value = bencode::decode(torrent).expect("torrent is bencoded");
    let info = value
        .as_dict()
        .and_then(|d| d.get_dict(b"info"))
        .expect("torrent has an info dictionary");
    let name = info.get_str(b"name").unwrap_or_default().to_string();
    (info.raw(), name)
}

/// Deterministic pseudo-random content of `len` bytes from `seed` (xorshift64*), so a test's data
/// is the same on every run and every machine.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A port on 127.0.0.1 that was free for both TCP and UDP a moment ago.
///
/// Another process can take it before the caller binds it: starters retry with a new port when
/// their program fails to listen.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1 after 100 tries");
}

/// Polls `f` every 50 ms until it returns `Some`, or `timeout` passes (then `None`).
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// One child process with its log file, killed and reaped when dropped.
pub struct RealProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl RealProcess {
    /// Starts `program args` in `dir` with stdout and stderr appended to `dir/<name>.log`.
    ///
    /// When `setpriv` is installed the child also gets SIGKILL if the test process dies (so a
    /// killed test run leaves nothing behind). Linux ties that signal to the spawning thread: keep a
    /// harness on the thread that created it.
    pub fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> RealProcess {
        let log = dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let mut cmd = match find_tool("setpriv") {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        RealProcess {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the process has ended, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last few KiB of the log, with carriage returns shown as line breaks.
    pub fn log_tail(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
            let _ = f.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).replace('\r', "\n")
    }

    /// Panics with `what` and the log tail.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- tail of {} ---\n{}\n--- end of {} log ---",
            self.name,
            self.log.display(),
            self.log_tail(),
            self.name
        )
    }

    /// Kills (SIGKILL) and reaps the process now; harmless when it has already ended.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for RealProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log tail ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// A temp folder for one harness; its logs and configuration live there.
pub(crate) fn work_dir(label: &str) -> TempDir {
    TempDir::new(label)
}
