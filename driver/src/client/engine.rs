//! The core's torrent task, optionally recording its run to a trace file (`--record TRACE`).

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use kp_torrent_core::session::Torrent;
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput, TorrentTask, TrackerInput,
};
use kp_torrent_core::trace::Recorder;
use kp_torrent_core::tracker::manager::{ConnId, TrackerId};

use crate::tracker_io::TrackerPort;

/// A task, plain or recorded. Getters reach the task through `Deref`; inputs and outputs go
/// through the recorder when there is one, so the trace holds exactly what the task saw.
pub(crate) enum Engine {
    Plain(Box<TorrentTask>),
    Recording(Box<Recorder<BufWriter<File>>>, PathBuf),
}

impl Engine {
    /// Builds the task; with `record`, creates the trace file first.
    pub(crate) fn new(
        config: TorrentConfig,
        torrent: Torrent,
        start: StartState,
        now: Time,
        record: Option<&Path>,
    ) -> std::io::Result<Engine> {
        Ok(match record {
            None => Engine::Plain(Box::new(TorrentTask::new(config, torrent, start, now))),
            Some(path) => {
                let out = BufWriter::with_capacity(1 << 20, File::create(path)?);
                Engine::Recording(
                    Box::new(Recorder::new(out, config, torrent, start, now)),
                    path.to_path_buf(),
                )
            }
        })
    }

    pub(crate) fn handle_input(&mut self, now: Time, input: TorrentInput<'_>) {
        match self {
            Engine::Plain(s) => s.handle_input(now, input),
            Engine::Recording(r, _) => r.handle_input(now, input),
        }
    }

    pub(crate) fn poll_action(&mut self) -> Option<TorrentAction> {
        match self {
            Engine::Plain(s) => s.poll_action(),
            Engine::Recording(r, _) => r.poll_action(),
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<TorrentEvent> {
        match self {
            Engine::Plain(s) => s.poll_event(),
            Engine::Recording(r, _) => r.poll_event(),
        }
    }

    /// Ends the trace (writes its end record and flushes); the error names the file.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self {
            Engine::Plain(_) => Ok(()),
            Engine::Recording(r, path) => {
                let (_, out) = r.finish();
                out.and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                    .and_then(|f| f.sync_all())
                    .map_err(|e| format!("trace {}: {e}", path.display()))
            }
        }
    }

    fn tracker(&mut self, now: Time, input: TrackerInput<'_>) {
        self.handle_input(now, TorrentInput::Tracker(input));
    }
}

impl TrackerPort for Engine {
    fn handle_resolved(&mut self, now: Time, tracker: TrackerId, addrs: &[SocketAddr]) {
        self.tracker(now, TrackerInput::Resolved { tracker, addrs });
    }
    fn handle_connect_failed(&mut self, now: Time, conn: ConnId, why: String) {
        self.tracker(now, TrackerInput::ConnectFailed { conn, why });
    }
    fn handle_tcp_connected(&mut self, now: Time, conn: ConnId) {
        self.tracker(now, TrackerInput::TcpConnected { conn });
    }
    fn handle_tcp_data(&mut self, now: Time, conn: ConnId, bytes: &[u8]) {
        self.tracker(now, TrackerInput::TcpData { conn, bytes });
    }
    fn handle_tcp_closed(&mut self, now: Time, conn: ConnId, error: Option<String>) {
        self.tracker(now, TrackerInput::TcpClosed { conn, error });
    }
    fn handle_udp_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        self.tracker(now, TrackerInput::Datagram { from, bytes });
    }
}

impl Deref for Engine {
    type Target = TorrentTask;

    fn deref(&self) -> &TorrentTask {
        match self {
            Engine::Plain(s) => s,
            Engine::Recording(r, _) => r.task(),
        }
    }
}
