//! kp-torrent itself as a real peer: the built binary's `download` and `seed` commands in child
//! processes on 127.0.0.1, and deterministic content ([`Dataset`]) to share between them.
//!
//! A [`KpTorrent`] is a [`RealProcess`] (log file, bounded waits, killed when dropped) that listens
//! on 127.0.0.1 at a port from [`free_port`], retried when another process took it first.
//! `KP_KEEP_LOGS=DIR` (e.g. with `RUST_LOG=debug`) copies each run's whole log into `DIR` when it
//! is dropped, since a panic message holds only the tail and the log folder is usually temporary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use kp_torrent_core::id::InfoHash;
use kp_torrent_core::metainfo::{TorrentSpec, hash_pieces};

use super::{RealProcess, Torrent, content, free_port, wait_for};
use crate::kp_torrent_bin;

/// How long a start may take before `listening on` shows (the check of existing data included).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The address a run listens on unless started with [`KpTorrent::start_on`].
const LOOPBACK_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One run of the `kp-torrent` binary.
pub struct KpTorrent {
    process: RealProcess,
    ip: IpAddr,
    port: u16,
}

impl KpTorrent {
    /// Runs `kp-torrent download TORRENT -d DEST` plus `extra`, listening on 127.0.0.1, and waits
    /// until it listens. The log is `log_dir/<name>.log`.
    pub fn download(
        name: &str,
        torrent: &Path,
        dest: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> KpTorrent {
        let (torrent, dest) = (path_arg(torrent), path_arg(dest));
        let args = [&["download", &torrent, "-d", &dest][..], extra].concat();
        KpTorrent::start(name, &args, log_dir)
    }

    /// Runs `kp-torrent download 'MAGNET' -d DEST` plus `extra`, listening on 127.0.0.1, and
    /// waits until it listens: the metadata comes from peers (BEP 9), found through the URI's
    /// `tr=` and `x.pe=` or `--peer` in `extra`. Once fetched, the torrent is kept as
    /// [`saved_torrent_path`]. The log is `log_dir/<name>.log`.
    pub fn download_magnet(
        name: &str,
        uri: &str,
        dest: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> KpTorrent {
        KpTorrent::download_all(name, &[uri], dest, extra, log_dir)
    }

    /// Runs `kp-torrent download SOURCE... -d DEST` plus `extra` (each source a `.torrent` path or
    /// a magnet URI, all in one process), listening on 127.0.0.1, and waits until it listens.
    pub fn download_all(
        name: &str,
        sources: &[&str],
        dest: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> KpTorrent {
        let dest = path_arg(dest);
        let args = [&["download"][..], sources, &["-d", &dest][..], extra].concat();
        KpTorrent::start(name, &args, log_dir)
    }

    /// Runs `kp-torrent seed TORRENT -s SOURCE` plus `extra`, listening on 127.0.0.1, and waits
    /// until it listens (so its data is checked and it can be dialled).
    pub fn seed(
        name: &str,
        torrent: &Path,
        source: &Path,
        extra: &[&str],
        log_dir: &Path,
    ) -> KpTorrent {
        let (torrent, source) = (path_arg(torrent), path_arg(source));
        let args = [&["seed", &torrent, "-s", &source][..], extra].concat();
        KpTorrent::start(name, &args, log_dir)
    }

    /// As [`KpTorrent::download`] of `torrent`, with `--timeout SECS` (whole seconds of
    /// `timeout`), then `extra`, then `--peer P` for each of `peers`: a leecher that dials its
    /// seeders and gives up on its own after `timeout`.
    pub fn download_from(
        name: &str,
        torrent: &Torrent,
        dest: &Path,
        timeout: Duration,
        extra: &[&str],
        peers: &[SocketAddr],
        log_dir: &Path,
    ) -> KpTorrent {
        let timeout = ["--timeout".to_string(), timeout.as_secs().to_string()];
        let args = [&timeout[..], &with_peers(extra, peers)].concat();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        KpTorrent::download(name, &torrent.path, dest, &args, log_dir)
    }

    /// As [`KpTorrent::seed`] of `data` (its file or folder in `data.source`), with `extra`, then
    /// `--peer P` for each of `peers`: a seeder that also dials `peers` (for a leecher that never
    /// dials, like Transmission on 127.x).
    pub fn seed_to(
        name: &str,
        data: &Dataset,
        extra: &[&str],
        peers: &[SocketAddr],
        log_dir: &Path,
    ) -> KpTorrent {
        let args = with_peers(extra, peers);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let source = data.file_path(&data.source, &[]);
        KpTorrent::seed(name, &data.torrent.path, &source, &args, log_dir)
    }

    /// Runs `kp-torrent ARGS --bind 127.0.0.1 --port P` with a free `P` (and `--no-dht` for a
    /// download or seed that names no `--dht-bootstrap`; one with a DHT and no `--state-dir` gets
    /// `--state-dir LOG_DIR/NAME-state`, never the user's) and waits for its
    /// `listening on` line; a start that failed because the port was taken meanwhile is retried
    /// with another port.
    ///
    /// # Panics
    /// When the binary is missing, exits for another reason, or does not listen within 15 s.
    pub fn start(name: &str, args: &[&str], log_dir: &Path) -> KpTorrent {
        KpTorrent::launch(name, args, log_dir, LOOPBACK_V4, true)
    }

    /// As [`KpTorrent::start`], but bound to `ip` (`::1` for a test over IPv6): it listens, and
    /// runs its DHT node, on that address's family only.
    pub fn start_on(ip: IpAddr, name: &str, args: &[&str], log_dir: &Path) -> KpTorrent {
        KpTorrent::launch(name, args, log_dir, ip, true)
    }

    /// As [`KpTorrent::start`], but a download or seed without `--dht-bootstrap` keeps its DHT
    /// node: for a run that bootstraps from the table saved in its `--state-dir`.
    pub fn start_with_dht(name: &str, args: &[&str], log_dir: &Path) -> KpTorrent {
        KpTorrent::launch(name, args, log_dir, LOOPBACK_V4, false)
    }

    fn launch(
        name: &str,
        args: &[&str],
        log_dir: &Path,
        ip: IpAddr,
        default_no_dht: bool,
    ) -> KpTorrent {
        let bin = binary();
        for attempt in 0..5 {
            let port = free_port();
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            all.extend(["--bind".to_string(), ip.to_string(), "--port".to_string()]);
            all.push(port.to_string());
            // Tests reach no public DHT router: the DHT runs only where a test bootstraps it.
            let transfer = matches!(args.first(), Some(&"download" | &"seed"));
            if default_no_dht && transfer && !args.contains(&"--dht-bootstrap") {
                all.push("--no-dht".to_string());
            } else if transfer && !args.contains(&"--state-dir") {
                // Not the user's own state folder: runs at once would share a node id there.
                let state = log_dir.join(format!("{name}-state"));
                all.extend(["--state-dir".to_string(), path_arg(&state)]);
            }
            let label = if attempt == 0 {
                name.to_string()
            } else {
                format!("{name}-retry{attempt}")
            };
            let mut process = RealProcess::spawn(&label, &bin, &all, log_dir);
            let listening = format!("listening on {}", SocketAddr::new(ip, port));
            let up = wait_for(LISTEN_TIMEOUT, || {
                if process.log().contains(&listening) {
                    return Some(true);
                }
                process.exit_status().map(|_| false)
            });
            match up {
                Some(true) => return KpTorrent { process, ip, port },
                Some(false) if process.log().contains("port in use") => continue,
                Some(false) => process.fail("exited before listening"),
                None => process.fail("did not listen within 15 s"),
            }
        }
        panic!("{name}: port taken at start 5 times");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` (or `[::1]:PORT`, as it was started), for another peer's `--peer`.
    pub fn addr(&self) -> String {
        self.socket_addr().to_string()
    }

    /// [`KpTorrent::addr`] as a `SocketAddr`, for a real client's peer list or another run's
    /// `peers`.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Its DHT node's UDP address (on the address it is bound to), from its
    /// `DHT node on UDP port N` line.
    ///
    /// # Panics
    /// When it prints no such line within 10 s (it runs no DHT).
    pub fn dht_addr(&mut self) -> SocketAddr {
        const LINE: &str = "DHT node on UDP port ";
        self.wait_log(Duration::from_secs(10), "its DHT port", |log| {
            log.contains(LINE)
        });
        let log = self.log();
        let port: u16 = log
            .lines()
            .find_map(|l| l.split(LINE).nth(1))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| self.fail("no DHT port in its log"));
        SocketAddr::new(self.ip, port)
    }

    /// The process (pid, log).
    pub fn process(&self) -> &RealProcess {
        &self.process
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Panics with `what` and the log tail.
    pub fn fail(&self, what: &str) -> ! {
        self.process.fail(what)
    }

    /// Waits for the process to end by itself and returns its status.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let process = &mut self.process;
        match wait_for(timeout, || process.exit_status()) {
            Some(status) => status,
            None => self
                .process
                .fail(&format!("still running after {timeout:?}")),
        }
    }

    /// Waits until the process ends with status 0.
    ///
    /// # Panics
    /// On another status or after `timeout`.
    pub fn wait_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
    }

    /// Waits until the log satisfies `pred`.
    ///
    /// # Panics
    /// After `timeout`, or when the process ends first, naming `what` was awaited.
    pub fn wait_log(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let process = &mut self.process;
        let seen = wait_for(timeout, || {
            if pred(&process.log()) {
                return Some(true);
            }
            process.exit_status().map(|_| pred(&process.log()))
        });
        match seen {
            Some(true) => {}
            Some(false) => self.fail(&format!("exited before {what}")),
            None => self.fail(&format!("no {what} within {timeout:?}")),
        }
    }

    /// Sends `signal` (a name for `kill -s`: `TERM`, `INT`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.process.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// `kill -9` and reap, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The end-of-download summary (`NAME: done, SIZE in TIME (RATE), N peers used`), if printed.
    pub fn summary(&self) -> Option<String> {
        self.log()
            .lines()
            .find(|l| l.contains(": done, "))
            .map(str::to_string)
    }

    /// Waits until a seed run's status line says it is seeding (its start-up check is done:
    /// until then the engine turns its peers away).
    pub fn wait_seeding(&mut self, timeout: Duration) {
        self.wait_log(timeout, "a seeding status line", |log| {
            log.lines().any(|l| l.contains(": seeding "))
        });
    }

    /// Peer connections over (TCP, uTP) from the `peer connections: T over TCP, U over uTP`
    /// line printed when the process ends, if printed.
    pub fn connections(&self) -> Option<(u64, u64)> {
        let log = self.log();
        let line = log.lines().find(|l| l.starts_with("peer connections: "))?;
        let rest = line.strip_prefix("peer connections: ")?;
        let (tcp, utp) = rest.split_once(" over TCP, ")?;
        Some((
            tcp.parse().ok()?,
            utp.strip_suffix(" over uTP")?.parse().ok()?,
        ))
    }

    /// Bytes the summary says were downloaded (to three significant digits), if it was printed.
    pub fn summary_downloaded(&self) -> Option<u64> {
        let line = self.summary()?;
        let size = line.split(": done, ").nth(1)?.split(" in ").next()?;
        parse_size(size)
    }

    /// The exact upload total from the `stopped seeding, uploaded X (N bytes)` line printed when a
    /// seeding run stops, if printed.
    pub fn seed_uploaded(&self) -> Option<u64> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains(": stopped seeding, "))?;
        let inside = line.split(" (").nth(1)?.split(" bytes)").next()?;
        inside.parse().ok()
    }
}

impl Drop for KpTorrent {
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("KP_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let log = self.process.log_path();
            let stem = log.file_stem().unwrap_or_default().to_string_lossy();
            let name = format!("{stem}-{}.log", self.process.pid());
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(log, keep.join(name));
        }
    }
}

/// Parses a size as kp-torrent prints it (`0 B`, `512 B`, `2.86 MiB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    Some((number * scale as f64).round() as u64)
}

/// Where a download into `dest` keeps the torrent it fetched for a magnet link:
/// `dest/.kp-torrent/<info-hash, 40 lowercase hex>.torrent`, beside the resume file.
pub fn saved_torrent_path(dest: &Path, info_hash: &InfoHash) -> PathBuf {
    dest.join(".kp-torrent")
        .join(format!("{}.torrent", info_hash.to_hex()))
}

/// The built binary.
///
/// # Panics
/// When it is not built (`cargo build -p kp-torrent`, or `cargo test --workspace`).
pub fn binary() -> PathBuf {
    let bin = kp_torrent_bin();
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p kp-torrent` or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// `extra`, then `--peer P` for each of `peers`.
/// `extra`, then `--peer P` for each of `peers`: arguments for [`KpTorrent::download`] or
/// [`KpTorrent::seed`].
pub fn with_peers(extra: &[&str], peers: &[SocketAddr]) -> Vec<String> {
    let peers = peers
        .iter()
        .flat_map(|p| ["--peer".to_string(), p.to_string()]);
    extra.iter().map(|s| s.to_string()).chain(peers).collect()
}

fn path_arg(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// Deterministic content laid out on disk as a torrent's data, with its torrent file.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The folder that holds the data (`-s` for a seeder): it contains the file `name`, or the
    /// folder `name` of a multi-file torrent.
    pub source: PathBuf,
    /// The torrent's spec (no trackers).
    pub spec: TorrentSpec,
    /// Each file's path inside the torrent (empty for a single-file torrent) and bytes.
    pub files: Vec<(Vec<String>, Vec<u8>)>,
    /// The torrent file, without trackers.
    pub torrent: Torrent,
}

impl Dataset {
    /// One file `name` of `len` bytes from `seed`, written into `dir/source/`, with its torrent
    /// `dir/<name>.torrent`.
    pub fn single(dir: &Path, name: &str, len: usize, piece_length: u64, seed: u64) -> Dataset {
        Dataset::build(
            dir,
            name,
            vec![(Vec::new(), content(len, seed))],
            piece_length,
        )
    }

    /// A folder `name` holding `files` (`"a/b/c.bin"` paths and lengths; content from `seed`),
    /// written into `dir/source/`, with its torrent `dir/<name>.torrent`.
    pub fn multi(
        dir: &Path,
        name: &str,
        files: &[(String, usize)],
        piece_length: u64,
        seed: u64,
    ) -> Dataset {
        let files = files
            .iter()
            .enumerate()
            .map(|(i, (path, len))| {
                let parts = path.split('/').map(str::to_string).collect();
                (parts, content(*len, seed.wrapping_add(i as u64 * 7919)))
            })
            .collect();
        Dataset::build(dir, name, files, piece_length)
    }

    fn build(
        dir: &Path,
        name: &str,
        files: Vec<(Vec<String>, Vec<u8>)>,
        piece_length: u64,
    ) -> Dataset {
        let source = dir.join("source");
        let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let spec = TorrentSpec {
            name: name.to_string(),
            piece_length,
            files: files
                .iter()
                .map(|(p, b)| (p.clone(), b.len() as u64))
                .collect(),
            piece_hashes: hash_pieces(&all, piece_length),
            ..TorrentSpec::default()
        };
        let data = Dataset {
            source,
            torrent: Torrent::from_spec(&spec, &dir.join(format!("{name}.torrent"))),
            spec,
            files,
        };
        for (path, bytes) in &data.files {
            let file = data.file_path(&data.source, path);
            std::fs::create_dir_all(file.parent().expect("file has a folder")).expect("mkdir");
            std::fs::write(&file, bytes).expect("write content");
        }
        data
    }

    /// Where file `path` of this torrent lives when the data is in `dir`.
    pub fn file_path(&self, dir: &Path, path: &[String]) -> PathBuf {
        path.iter()
            .fold(dir.join(&self.spec.name), |p, c| p.join(c))
    }

    /// Total bytes.
    pub fn total_len(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// The concatenated data of all files, as pieces are cut from it.
    pub fn all_bytes(&self) -> Vec<u8> {
        self.files
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }

    /// Pieces whose data in `dir` matches the torrent, and the bytes they hold: what a check of a
    /// partial download would keep. Missing or short files count as wrong data.
    pub fn verified_on_disk(&self, dir: &Path) -> (usize, u64) {
        let mut all = Vec::new();
        for (path, bytes) in &self.files {
            let mut got = std::fs::read(self.file_path(dir, path)).unwrap_or_default();
            got.resize(bytes.len(), 0);
            all.extend_from_slice(&got);
        }
        let hashes = hash_pieces(&all, self.spec.piece_length);
        let mut pieces = 0;
        let mut bytes = 0;
        for ((got, want), chunk) in hashes
            .iter()
            .zip(&self.spec.piece_hashes)
            .zip(all.chunks(self.spec.piece_length as usize))
        {
            if got == want {
                pieces += 1;
                bytes += chunk.len() as u64;
            }
        }
        (pieces, bytes)
    }

    /// Panics unless every file is in `dir` with exactly the source's bytes (empty files too).
    pub fn assert_same(&self, dir: &Path) {
        for (path, want) in &self.files {
            let file = self.file_path(dir, path);
            let got =
                std::fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            if got != *want {
                let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
                panic!(
                    "{} differs from the source: {} bytes (expected {}), first difference at {:?}",
                    file.display(),
                    got.len(),
                    want.len(),
                    first_diff
                );
            }
        }
    }
}
