//! Transmission 3.00 (`transmission-cli`, or `transmission-daemon` for a magnet link) seeding or
//! downloading one torrent on 127.0.0.1.
//!
//! Transmission never dials a peer whose address is 127.x ("martian"), but accepts incoming
//! connections: whatever it exchanges data with here must dial it, typically after reading its
//! address from the tracker. Start it first and wait until the tracker lists it
//! (`Opentracker::wait_for_swarm`) before starting the peer that dials it.
//!
//! `transmission-cli` was chosen over `transmission-daemon` + `transmission-remote`: it needs no RPC
//! port, its status lines and a `-f` completion script are enough, and it was reliable here. Not
//! for magnet links, though (see [`Transmission::download_magnet`]).
//!
//! Its timers set the pace, not the link: it decides which peers it is interested in (as leecher)
//! and which it unchokes (as seeder) every 10 s, so a transfer with it starts up to ~10 s after
//! the connection. Budget ~15 s for a few MiB.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{RealProcess, Torrent, free_port, wait_for, work_dir};
use crate::{TempDir, require_tool};

/// How long Transmission gets to bind its port, and a seeder to verify its data.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Transmission's `encryption` setting (and the matching `transmission-cli` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransmissionEncryption {
    /// 0, `-et`: prefers plaintext, accepts MSE (the default here).
    #[default]
    Tolerated,
    /// 1, `-ep`: prefers MSE.
    Preferred,
    /// 2, `-er`: MSE only; it selects RC4 and refuses plain handshakes.
    Required,
}

impl TransmissionEncryption {
    fn setting(self) -> u8 {
        match self {
            TransmissionEncryption::Tolerated => 0,
            TransmissionEncryption::Preferred => 1,
            TransmissionEncryption::Required => 2,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            TransmissionEncryption::Tolerated => "-et",
            TransmissionEncryption::Preferred => "-ep",
            TransmissionEncryption::Required => "-er",
        }
    }
}

/// Settings of one `transmission-cli` beyond the always-on local-only ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransmissionOptions {
    /// Connection encryption.
    pub encryption: TransmissionEncryption,
    /// Speak uTP too (`"utp-enabled": true`); off by default.
    pub utp: bool,
}

/// A running `transmission-cli` with a fresh config folder.
pub struct Transmission {
    process: RealProcess,
    port: u16,
    done_flag: PathBuf,
    _dir: TempDir,
}

impl Transmission {
    /// Verifies `torrent`'s data in `data_dir` and seeds it until killed; returns once it has found
    /// every piece. It announces to the torrent's own trackers ([`Torrent::with_announce`]).
    /// `None` (skip) when transmission-cli is missing outside CI.
    pub fn seed(torrent: &Torrent, data_dir: &Path) -> Option<Transmission> {
        Transmission::seed_with(torrent, data_dir, &TransmissionOptions::default())
    }

    /// [`Transmission::seed`] with `opts`.
    pub fn seed_with(
        torrent: &Torrent,
        data_dir: &Path,
        opts: &TransmissionOptions,
    ) -> Option<Transmission> {
        let torrent_path = std::path::absolute(&torrent.path).expect("absolute torrent path");
        let mut t = Transmission::start(
            "transmission-seeder",
            &torrent_path.to_string_lossy(),
            data_dir,
            opts,
        )?;
        // The -f script also runs when verification finds a complete torrent. (Its "Seeding"
        // status line is no use: stdout to a file is block-buffered and shows up ~10 s late.)
        t.wait_flag(START_TIMEOUT, "did not verify its data and start seeding");
        Some(t)
    }

    /// Downloads `torrent` into `dest` (and keeps seeding until killed); see
    /// [`Transmission::wait_done`]. `None` (skip) when transmission-cli is missing outside CI.
    pub fn download(torrent: &Torrent, dest: &Path) -> Option<Transmission> {
        Transmission::download_with(torrent, dest, &TransmissionOptions::default())
    }

    /// [`Transmission::download`] with `opts`.
    pub fn download_with(
        torrent: &Torrent,
        dest: &Path,
        opts: &TransmissionOptions,
    ) -> Option<Transmission> {
        let torrent_path = std::path::absolute(&torrent.path).expect("absolute torrent path");
        Transmission::start(
            "transmission-leecher",
            &torrent_path.to_string_lossy(),
            dest,
            opts,
        )
    }

    /// Downloads the torrent of magnet link `uri` into `dest` (and keeps seeding until killed);
    /// see [`Transmission::wait_done`]. The metadata comes from peers that offer `ut_metadata`;
    /// with DHT and PEX off it finds them only through the URI's `tr=` trackers, and since it
    /// never dials 127.x, they must dial it after reading its address from the tracker. `None`
    /// (skip) when transmission-daemon or transmission-remote is missing outside CI.
    ///
    /// This runs `transmission-daemon` and adds the link with `transmission-remote`:
    /// `transmission-cli` pauses a magnet torrent for a moment when its metadata arrives and
    /// its main loop exits on seeing it stopped, so it never downloads the data.
    pub fn download_magnet(uri: &str, dest: &Path) -> Option<Transmission> {
        let daemon = require_tool("transmission-daemon")?;
        let remote = require_tool("transmission-remote")?;
        let name = "transmission-magnet";
        let data_dir = std::path::absolute(dest).expect("absolute data dir");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        for _attempt in 0..3 {
            let dir = work_dir(name);
            let config = dir.path().join("config");
            std::fs::create_dir_all(&config).expect("create config dir");
            let port = free_port();
            let rpc_port = std::iter::repeat_with(free_port)
                .take(10)
                .find(|&p| p != port)
                .expect("two different free ports");
            let done_flag = dir.path().join("done");
            let script = completion_script(dir.path(), &done_flag);
            // The daemon's own -f: a script run when a torrent completes, and RPC on 127.0.0.1
            // only, without authentication, for transmission-remote.
            let daemon_only = format!(
                r#"
    "rpc-enabled": true,
    "rpc-bind-address": "127.0.0.1",
    "rpc-port": {rpc_port},
    "rpc-authentication-required": false,
    "rpc-whitelist-enabled": true,
    "rpc-whitelist": "127.0.0.1",
    "rpc-host-whitelist-enabled": false,
    "download-dir": "{}",
    "incomplete-dir-enabled": false,
    "script-torrent-done-enabled": true,
    "script-torrent-done-filename": "{}","#,
                data_dir.display(),
                script.display()
            );
            std::fs::write(
                config.join("settings.json"),
                settings(port, TransmissionEncryption::default(), false)
                    .replace(r#""rpc-enabled": false,"#, daemon_only.trim_start()),
            )
            .expect("write settings");
            let args: Vec<String> = vec![
                // Foreground, logging to stderr (the log file).
                "-f".into(),
                "--log-info".into(),
                "-g".into(),
                config.to_string_lossy().into_owned(),
                "-M".into(),
                "-et".into(),
            ];
            let mut process = RealProcess::spawn(name, &daemon, &args, dir.path());
            // The daemon logs its bind only at debug level: knock on the port instead.
            let peer_addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = wait_for(START_TIMEOUT, || {
                if process.log().contains("Couldn't bind") || process.exit_status().is_some() {
                    Some(false)
                } else {
                    TcpStream::connect_timeout(&peer_addr, Duration::from_secs(1))
                        .is_ok()
                        .then_some(true)
                }
            });
            match up {
                Some(true) => {}
                Some(false) => continue,
                None => process.fail(&format!(
                    "not listening on {peer_addr} within {START_TIMEOUT:?}"
                )),
            }
            // The RPC server may come up a moment after the peer port.
            let rpc = format!("127.0.0.1:{rpc_port}");
            let mut last = String::new();
            let added = wait_for(START_TIMEOUT, || {
                let (ok, text) = run_bounded(&remote, &[&rpc, "-a", uri], dir.path());
                last = text;
                (ok && last.contains("success")).then_some(())
            });
            if added.is_none() {
                process.fail(&format!(
                    "transmission-remote {rpc} -a did not succeed within {START_TIMEOUT:?}: {last}"
                ));
            }
            return Some(Transmission {
                process,
                port,
                done_flag,
                _dir: dir,
            });
        }
        panic!("transmission-daemon could not bind a port in 3 tries");
    }

    /// Starts `transmission-cli` on `source`, a `.torrent` path.
    fn start(
        name: &str,
        source: &str,
        data_dir: &Path,
        opts: &TransmissionOptions,
    ) -> Option<Transmission> {
        let program = require_tool("transmission-cli")?;
        let data_dir = std::path::absolute(data_dir).expect("absolute data dir");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        for _attempt in 0..3 {
            let dir = work_dir(name);
            let config = dir.path().join("config");
            std::fs::create_dir_all(&config).expect("create config dir");
            let port = free_port();
            std::fs::write(
                config.join("settings.json"),
                settings(port, opts.encryption, opts.utp),
            )
            .expect("write settings");
            let done_flag = dir.path().join("done");
            // -f runs this when the torrent completes (all pieces verified).
            let script = completion_script(dir.path(), &done_flag);
            let args: Vec<String> = vec![
                "-g".into(),
                config.to_string_lossy().into_owned(),
                "-w".into(),
                data_dir.to_string_lossy().into_owned(),
                "-p".into(),
                port.to_string(),
                // No port mapping; the encryption flag agrees with settings.json.
                "-M".into(),
                opts.encryption.flag().into(),
                "-f".into(),
                script.to_string_lossy().into_owned(),
                source.to_string(),
            ];
            let mut process = RealProcess::spawn(name, &program, &args, dir.path());
            // It keeps running when the bind fails, so look for the log line (message-level 3).
            let bound = format!("to port {port} on 127.0.0.1");
            let up = wait_for(START_TIMEOUT, || {
                let log = process.log();
                if log.contains(&bound) {
                    Some(true)
                } else if log.contains("Couldn't bind") || process.exit_status().is_some() {
                    Some(false)
                } else {
                    None
                }
            });
            match up {
                Some(true) => {
                    return Some(Transmission {
                        process,
                        port,
                        done_flag,
                        _dir: dir,
                    });
                }
                Some(false) => continue,
                None => process.fail(&format!("no \"{bound}\" within {START_TIMEOUT:?}")),
            }
        }
        panic!("transmission-cli could not bind a port in 3 tries");
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address, for another peer to dial.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The running process (log, pid).
    pub fn process(&self) -> &RealProcess {
        &self.process
    }

    /// Waits until the download is complete (its `-f` script ran).
    ///
    /// # Panics
    /// After `timeout` or when it exits, with its log.
    pub fn wait_done(&mut self, timeout: Duration) {
        self.wait_flag(timeout, "did not complete the download");
    }

    fn wait_flag(&mut self, timeout: Duration, what: &str) {
        let flag = self.done_flag.clone();
        let done = wait_for(timeout, || {
            if flag.exists() {
                return Some(true);
            }
            self.process.exit_status().map(|_| false)
        });
        match done {
            Some(true) => {}
            Some(false) => self.process.fail("exited before completing"),
            None => self.process.fail(&format!("{what} within {timeout:?}")),
        }
    }
}

/// A `settings.json` that keeps Transmission on 127.0.0.1 and away from every peer source but the
/// tracker.
fn settings(port: u16, encryption: TransmissionEncryption, utp: bool) -> String {
    let encryption = encryption.setting();
    format!(
        r#"{{
    "dht-enabled": false,
    "lpd-enabled": false,
    "pex-enabled": false,
    "utp-enabled": {utp},
    "port-forwarding-enabled": false,
    "blocklist-enabled": false,
    "bind-address-ipv4": "127.0.0.1",
    "bind-address-ipv6": "::1",
    "encryption": {encryption},
    "peer-port": {port},
    "peer-port-random-on-start": false,
    "rpc-enabled": false,
    "watch-dir-enabled": false,
    "ratio-limit-enabled": false,
    "idle-seeding-limit-enabled": false,
    "message-level": 3
}}
"#
    )
}

/// Runs `program args` in `dir` for at most 10 s (killed after that) and returns whether it
/// exited 0, with its stdout and stderr.
fn run_bounded(program: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = dir.join("command.out");
    let file = std::fs::File::create(&out).expect("create command output");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone command output"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let status = wait_for(Duration::from_secs(10), || {
        child.try_wait().expect("try_wait")
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned();
    (status.is_some_and(|s| s.success()), text)
}

/// `dir/on-done.sh`, which creates `flag`: Transmission runs it when a torrent completes.
fn completion_script(dir: &Path, flag: &Path) -> PathBuf {
    let script = dir.join("on-done.sh");
    std::fs::write(&script, format!("#!/bin/sh\n: > '{}'\n", flag.display()))
        .expect("write completion script");
    set_executable(&script);
    script
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path).expect("stat script").permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).expect("chmod script");
}
