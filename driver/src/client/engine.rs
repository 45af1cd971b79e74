//! The engine seen from the tracker sockets: their news becomes the owning torrent's inputs.

use std::net::SocketAddr;

use kp_torrent_core::engine::{Engine, EngineInput, TorrentId};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{TorrentInput, TrackerInput};
use kp_torrent_core::tracker::manager::{ConnId, TrackerId};
use kp_torrent_core::utp::{Endpoint, is_utp};

use crate::tracker_io::TrackerPort;

/// Borrows the engine (and the uTP endpoint, when uTP runs) for one call into the tracker
/// sockets, which own the shared UDP sockets.
pub(super) struct Port<'a>(
    pub(super) &'a mut Engine,
    pub(super) Option<&'a mut Endpoint>,
);

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
        // uTP packets start with 0x01, 0x11, 0x21, 0x31 or 0x41; KRPC with `d`, BEP 15
        // replies with 0x00: the engine tells those two apart.
        if is_utp(bytes) {
            if let Some(ep) = self.1.as_deref_mut() {
                super::utp::trace_packet("from", from, bytes);
                ep.handle_datagram(now, from, bytes);
            }
            return;
        }
        self.0
            .handle_input(now, EngineInput::Datagram { from, bytes });
    }
}
