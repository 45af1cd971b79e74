//! aria2 1.36 (`aria2c`) seeding or downloading one torrent on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use super::{RealProcess, Torrent, free_port, wait_for, work_dir};
use crate::{TempDir, require_tool};

/// How long aria2 gets to check its data and listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `aria2c` (see [`Aria2::seed`] and [`Aria2::download`]).
pub struct Aria2 {
    process: RealProcess,
    port: u16,
    _dir: TempDir,
}

impl Aria2 {
    /// Checks the data of `torrent` in `data_dir` and seeds it until killed, announcing to `tracker`
    /// instead of the torrent's own trackers when given; returns once it listens. `None` (skip)
    /// when aria2c is missing outside CI.
    ///
    /// It announces just after listening: wait on the tracker (`Opentracker::wait_for_swarm`)
    /// before starting a leecher that must find it there.
    pub fn seed(torrent: &Torrent, data_dir: &Path, tracker: Option<&str>) -> Option<Aria2> {
        // -V verifies every piece first (without it aria2 trusts the files); --seed-ratio=0.0
        // with no --seed-time seeds forever.
        Aria2::start(
            "aria2-seeder",
            &file_arg(torrent),
            data_dir,
            tracker,
            &["--check-integrity=true", "--seed-ratio=0.0"],
        )
    }

    /// Downloads `torrent` into `dest` and exits when it is complete (see [`Aria2::wait_done`]);
    /// `None` (skip) when aria2c is missing outside CI.
    ///
    /// aria2 uses UDP trackers only when DHT is on, so give it an HTTP tracker.
    pub fn download(torrent: &Torrent, dest: &Path, tracker: Option<&str>) -> Option<Aria2> {
        // --seed-time=0: exit once complete (after its one-second timer, so a few seconds late).
        Aria2::start(
            "aria2-leecher",
            &file_arg(torrent),
            dest,
            tracker,
            &["--seed-time=0"],
        )
    }

    /// Downloads the torrent of magnet link `uri`: first its metadata from peers (BEP 9), then its
    /// data into `dest` (`dest/<name>`), and exits when complete (see [`Aria2::wait_done`]). With
    /// DHT off it finds peers only through the URI's `tr=` trackers (HTTP ones: see
    /// [`Aria2::download`]). It keeps the metadata in memory and writes no `.torrent`. `None`
    /// (skip) when aria2c is missing outside CI.
    pub fn download_magnet(uri: &str, dest: &Path) -> Option<Aria2> {
        // --bt-metadata-only stays false (its default): the data is what the test wants.
        Aria2::start(
            "aria2-magnet",
            uri,
            dest,
            None,
            &["--seed-time=0", "--bt-save-metadata=false"],
        )
    }

    /// Starts `aria2c` on `source`: a `.torrent` path or a magnet URI.
    fn start(
        name: &str,
        source: &str,
        dir_for_data: &Path,
        tracker: Option<&str>,
        extra: &[&str],
    ) -> Option<Aria2> {
        let program = require_tool("aria2c")?;
        let dir = work_dir(name);
        let port = free_port();
        let mut args: Vec<String> = [
            // Ignore any ~/.aria2/aria2.conf of the machine.
            "--no-conf=true",
            // DHT is on by default, and LPD/PEX would find peers outside the test.
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--interface=127.0.0.1",
            "--disable-ipv6=true",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--summary-interval=1",
            "--console-log-level=notice",
            "--enable-color=false",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-port={port}"));
        args.push(format!(
            "--dir={}",
            std::path::absolute(dir_for_data)
                .expect("absolute data dir")
                .display()
        ));
        if let Some(url) = tracker {
            args.push("--bt-exclude-tracker=*".into());
            args.push(format!("--bt-tracker={url}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(source.to_string());
        let mut process = RealProcess::spawn(name, &program, &args, dir.path());
        let listening = format!("listening on TCP port {port}");
        let ok = wait_for(START_TIMEOUT, || {
            if process.log().contains(&listening) {
                return Some(true);
            }
            process.exit_status().map(|_| false)
        });
        match ok {
            Some(true) => {}
            Some(false) => process.fail("exited before listening"),
            None => process.fail(&format!("no \"{listening}\" within {START_TIMEOUT:?}")),
        }
        Some(Aria2 {
            process,
            port,
            _dir: dir,
        })
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

    /// Waits until a downloading aria2 has exited successfully (download complete and verified).
    ///
    /// # Panics
    /// After `timeout` or on a failing exit, with aria2's log.
    pub fn wait_done(&mut self, timeout: Duration) {
        match wait_for(timeout, || self.process.exit_status()) {
            Some(s) if s.success() => {}
            Some(s) => self.process.fail(&format!("exited with {s}")),
            None => self
                .process
                .fail(&format!("did not finish the download within {timeout:?}")),
        }
    }
}

/// The absolute path of `torrent`'s file, as aria2's last argument.
fn file_arg(torrent: &Torrent) -> String {
    std::path::absolute(&torrent.path)
        .expect("absolute torrent path")
        .to_string_lossy()
        .into_owned()
}
