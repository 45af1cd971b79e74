//! The engine seen from the tracker sockets: their news becomes the owning torrent's inputs.

use std::net::SocketAddr;

use kp_torrent_core::engine::{Engine, EngineInput, TorrentId};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{TorrentInput, TrackerInput};
use kp_torrent_core::tracker::manager::{ConnId, TrackerId};

use crate::tracker_io::TrackerPort;

/// Borrows the engine for one call into the tracker sockets.
pub(super) struct Port<'a>(pub(super) &'a mut Engine);

impl Port<'_> {
    fn tracker(&mut self, now: Time, torrent: TorrentId, input: TrackerInput<'_>) {
        self.0.handle_input(
            now,
            EngineInput::Torrent {
                torrent,
                input: TorrentInput::Tracker(input),
            },
        );
    }
}

impl TrackerPort for Port<'_> {
    fn handle_resolved(
        &mut self,
        now: Time,
        torrent: TorrentId,
        tracker: TrackerId,
        addrs: &[SocketAddr],
    ) {
        self.tracker(now, torrent, TrackerInput::Resolved { tracker, addrs });
    }
    fn handle_connect_failed(&mut self, now: Time, torrent: TorrentId, conn: ConnId, why: String) {
        self.tracker(now, torrent, TrackerInput::ConnectFailed { conn, why });
    }
    fn handle_tcp_connected(&mut self, now: Time, torrent: TorrentId, conn: ConnId) {
        self.tracker(now, torrent, TrackerInput::TcpConnected { conn });
    }
    fn handle_tcp_data(&mut self, now: Time, torrent: TorrentId, conn: ConnId, bytes: &[u8]) {
        self.tracker(now, torrent, TrackerInput::TcpData { conn, bytes });
    }
    fn handle_tcp_closed(
        &mut self,
        now: Time,
        torrent: TorrentId,
        conn: ConnId,
        error: Option<String>,
    ) {
        self.tracker(now, torrent, TrackerInput::TcpClosed { conn, error });
    }
    fn handle_udp_datagram(&mut self, now: Time, from: SocketAddr, bytes: &[u8]) {
        self.0
            .handle_input(now, EngineInput::Datagram { from, bytes });
    }
}
