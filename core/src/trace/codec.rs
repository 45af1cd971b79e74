//! Byte-level encoding of trace records (layout in the `trace` module documentation).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use core::time::Duration;

use crate::bitfield::Bitfield;
use crate::id::{InfoHash, PeerHandle};
use crate::metainfo::{MAX_PIECE_LENGTH, MAX_PIECES};
use crate::resume::FileStamp;
use crate::session::{Action, Event, FileSpan, Input, SessionConfig, Torrent};
use crate::time::Time;
use crate::torrent::{
    StartState, TorrentAction, TorrentConfig, TorrentEvent, TorrentInput, TrackerInput,
};
use crate::tracker::HttpLimits;
use crate::tracker::manager::{ConnId, ManagerConfig, TrackerAction, TrackerId};
use crate::tracker::udp::UdpConfig;

use super::{ActionPrint, EventPrint, ReplayError, TraceHeader, payload_hash};

pub(super) const MAGIC: &[u8; 4] = b"KPTR";
pub(super) const VERSION: u16 = 5;
/// The oldest version still read: v3 traces lack the DHT port (read as 0, no DHT).
pub(super) const OLDEST_VERSION: u16 = 3;
pub(super) const FLAG_EVENTS: u8 = 1;

/// Virtual times past this (about 146 years) are refused, so that no timer arithmetic in the
/// session meets a value near `u64::MAX`.
const MAX_TIME_NANOS: u64 = 1 << 62;

// Record tags. Inputs, actions and events use disjoint ranges so a reader knows which stream a
// record belongs to from its first byte.
pub(super) const IN_TIMEOUT: u8 = 0x01;
pub(super) const IN_INCOMING: u8 = 0x02;
pub(super) const IN_CONNECTED: u8 = 0x03;
pub(super) const IN_CONNECT_FAILED: u8 = 0x04;
pub(super) const IN_RECEIVED: u8 = 0x05;
pub(super) const IN_CLOSED: u8 = 0x06;
pub(super) const IN_WRITE_DONE: u8 = 0x07;
pub(super) const IN_WRITE_FAILED: u8 = 0x08;
pub(super) const IN_READ_DONE: u8 = 0x09;
pub(super) const IN_READ_FAILED: u8 = 0x0a;
pub(super) const IN_PIECE_HASHED: u8 = 0x0b;
pub(super) const IN_PEERS: u8 = 0x0c;
pub(super) const IN_SELECT_FILES: u8 = 0x0d;
pub(super) const IN_SHUTDOWN: u8 = 0x0e;
pub(super) const IN_HASH_FAILED: u8 = 0x0f;
pub(super) const IN_START: u8 = 0x10;
pub(super) const IN_TCP_CONNECTED: u8 = 0x11;
pub(super) const IN_TCP_DATA: u8 = 0x12;
pub(super) const IN_TCP_CLOSED: u8 = 0x13;
pub(super) const IN_TCP_FAILED: u8 = 0x14;
pub(super) const IN_RESOLVED: u8 = 0x15;
pub(super) const IN_DATAGRAM: u8 = 0x16;
pub(super) const IN_UPLOAD_SLOTS: u8 = 0x17;
pub(super) const ACT_CONNECT: u8 = 0x20;
pub(super) const ACT_SEND: u8 = 0x21;
pub(super) const ACT_CLOSE: u8 = 0x22;
pub(super) const ACT_WRITE: u8 = 0x23;
pub(super) const ACT_READ: u8 = 0x24;
pub(super) const ACT_HASH: u8 = 0x25;
pub(super) const ACT_RESOLVE: u8 = 0x27;
pub(super) const ACT_OPEN_TCP: u8 = 0x28;
pub(super) const ACT_SEND_TCP: u8 = 0x29;
pub(super) const ACT_CLOSE_TCP: u8 = 0x2a;
pub(super) const ACT_SEND_UDP: u8 = 0x2b;
pub(super) const EV_CONNECTED: u8 = 0x40;
pub(super) const EV_DISCONNECTED: u8 = 0x41;
pub(super) const EV_VERIFIED: u8 = 0x42;
pub(super) const EV_HASH_FAILED: u8 = 0x43;
pub(super) const EV_COMPLETE: u8 = 0x44;
pub(super) const EV_BANNED: u8 = 0x45;
pub(super) const EV_ERROR: u8 = 0x46;
pub(super) const EV_OTHER: u8 = 0x47;
pub(super) const END: u8 = 0xff;

// ---- writing ----

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
            put_varint(out, u64::from(a.flowinfo()));
            put_varint(out, u64::from(a.scope_id()));
        }
    }
}

fn put_duration(out: &mut Vec<u8>, d: Duration) {
    put_varint(out, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn put_text_opt(out: &mut Vec<u8>, t: Option<&[u8]>) {
    match t {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

fn put_addrs(out: &mut Vec<u8>, addrs: &[SocketAddr]) {
    put_varint(out, addrs.len() as u64);
    for a in addrs {
        put_addr(out, a);
    }
}

/// The tracker settings, destructured so that a new setting fails to compile until recorded.
fn encode_tracker_config(out: &mut Vec<u8>, c: &ManagerConfig) {
    let ManagerConfig {
        http_timeout,
        connect_timeout,
        receive_timeout,
        fallback_after,
        udp,
        http_limits,
        numwant,
        max_peers_per_reply,
        default_interval,
        min_reannounce,
        max_reannounce,
        retry_base,
        retry_max,
        stop_timeout,
        own_ips,
    } = c;
    let UdpConfig {
        retransmit_base,
        max_retransmits,
        connection_id_ttl,
    } = udp;
    let HttpLimits {
        max_head,
        max_body,
        max_redirects,
    } = http_limits;
    put_duration(out, *http_timeout);
    put_duration(out, *connect_timeout);
    put_duration(out, *receive_timeout);
    put_duration(out, *fallback_after);
    put_duration(out, *retransmit_base);
    put_varint(out, u64::from(*max_retransmits));
    put_duration(out, *connection_id_ttl);
    put_varint(out, *max_head as u64);
    put_varint(out, *max_body as u64);
    put_varint(out, *max_redirects as u64);
    put_varint(out, u64::from(*numwant));
    put_varint(out, *max_peers_per_reply as u64);
    for d in [
        default_interval,
        min_reannounce,
        max_reannounce,
        retry_base,
        retry_max,
        stop_timeout,
    ] {
        put_duration(out, *d);
    }
    put_varint(out, own_ips.len() as u64);
    for ip in own_ips {
        put_ip(out, ip);
    }
}

pub(super) fn encode_header(out: &mut Vec<u8>, h: &TraceHeader) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(if h.events { FLAG_EVENTS } else { 0 });
    // Destructured without `..` so that a new setting fails to compile until it is recorded.
    let SessionConfig {
        seed,
        peer_id,
        listen_port,
        max_peers,
        upload_slots,
        max_serve_queue,
        ban_after_failures,
        max_connect_failures,
        sequential,
        pex,
        dht_port,
    } = &h.config.session;
    out.extend_from_slice(&seed.to_le_bytes());
    match peer_id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id);
        }
    }
    out.extend_from_slice(&listen_port.to_le_bytes());
    put_varint(out, *max_peers as u64);
    put_varint(out, *upload_slots as u64);
    put_varint(out, *max_serve_queue as u64);
    put_varint(out, u64::from(*ban_after_failures));
    put_varint(out, u64::from(*max_connect_failures));
    out.push(u8::from(*sequential));
    out.push(u8::from(*pex));
    out.extend_from_slice(&dht_port.to_le_bytes());
    encode_tracker_config(out, &h.config.trackers);
    put_varint(out, h.config.tiers.len() as u64);
    for tier in &h.config.tiers {
        put_varint(out, tier.len() as u64);
        for url in tier {
            put_bytes(out, url.as_bytes());
        }
    }
    put_varint(out, h.config.web_seeds.len() as u64);
    for url in &h.config.web_seeds {
        put_bytes(out, url.as_bytes());
    }
    let Torrent {
        info_hash,
        piece_length,
        total_length,
        piece_hashes,
        files,
        private,
        metadata,
    } = &h.torrent;
    out.extend_from_slice(&info_hash.0);
    put_varint(out, *piece_length);
    put_varint(out, *total_length);
    put_varint(out, piece_hashes.len() as u64);
    for p in piece_hashes {
        out.extend_from_slice(p);
    }
    put_varint(out, files.len() as u64);
    for f in files {
        put_varint(out, f.offset);
        put_varint(out, f.length);
        out.push(u8::from(f.padding));
    }
    out.push(u8::from(*private));
    put_bytes(out, metadata);
    match &h.start_state {
        StartState::Check => out.push(0),
        StartState::Verified(have) => {
            out.push(1);
            put_varint(out, u64::from(have.len()));
            out.extend_from_slice(have.as_bytes());
        }
        StartState::Magnet => out.push(2),
    }
    // The same zigzag form as every input's time, read back by `Cursor::time` from zero.
    put_varint(out, zigzag(h.start.as_nanos() as i64));
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes an input record, except for its trailing payload (received bytes or block data),
/// which the caller writes after it so it is never copied into a buffer twice.
pub(super) fn encode_input<'a>(
    out: &mut Vec<u8>,
    prev: Time,
    now: Time,
    input: &TorrentInput<'a>,
) -> Option<&'a [u8]> {
    let delta = zigzag(now.as_nanos().wrapping_sub(prev.as_nanos()) as i64);
    let tag = match input {
        TorrentInput::Start { .. } => IN_START,
        TorrentInput::Tracker(t) => match t {
            TrackerInput::TcpConnected { .. } => IN_TCP_CONNECTED,
            TrackerInput::TcpData { .. } => IN_TCP_DATA,
            TrackerInput::TcpClosed { .. } => IN_TCP_CLOSED,
            TrackerInput::ConnectFailed { .. } => IN_TCP_FAILED,
            TrackerInput::Resolved { .. } => IN_RESOLVED,
            TrackerInput::Datagram { .. } => IN_DATAGRAM,
        },
        TorrentInput::Session(i) => match i {
            Input::Timeout => IN_TIMEOUT,
            Input::Incoming { .. } => IN_INCOMING,
            Input::Connected { .. } => IN_CONNECTED,
            Input::ConnectFailed { .. } => IN_CONNECT_FAILED,
            Input::Received { .. } => IN_RECEIVED,
            Input::Closed { .. } => IN_CLOSED,
            Input::WriteDone { .. } => IN_WRITE_DONE,
            Input::WriteFailed { .. } => IN_WRITE_FAILED,
            Input::ReadDone { .. } => IN_READ_DONE,
            Input::ReadFailed { .. } => IN_READ_FAILED,
            Input::PieceHashed { .. } => IN_PIECE_HASHED,
            Input::HashFailed { .. } => IN_HASH_FAILED,
            Input::PeersDiscovered { .. } => IN_PEERS,
            Input::SelectFiles { .. } => IN_SELECT_FILES,
            Input::Shutdown => IN_SHUTDOWN,
            Input::UploadSlots { .. } => IN_UPLOAD_SLOTS,
        },
    };
    out.push(tag);
    put_varint(out, delta);
    let input = match input {
        TorrentInput::Start { files, resume } => {
            put_varint(out, files.len() as u64);
            for f in *files {
                match f {
                    None => out.push(0),
                    Some(s) => {
                        out.push(1);
                        put_varint(out, s.size);
                        put_varint(out, zigzag(s.mtime));
                        put_varint(out, zigzag(s.mtime_nsec));
                    }
                }
            }
            put_text_opt(out, *resume);
            return None;
        }
        TorrentInput::Tracker(t) => {
            return match t {
                TrackerInput::TcpConnected { conn } => {
                    put_varint(out, conn.0 as u64);
                    None
                }
                TrackerInput::TcpData { conn, bytes } => {
                    put_varint(out, conn.0 as u64);
                    put_varint(out, bytes.len() as u64);
                    Some(bytes)
                }
                TrackerInput::TcpClosed { conn, error } => {
                    put_varint(out, conn.0 as u64);
                    put_text_opt(out, error.as_deref().map(str::as_bytes));
                    None
                }
                TrackerInput::ConnectFailed { conn, why } => {
                    put_varint(out, conn.0 as u64);
                    put_bytes(out, why.as_bytes());
                    None
                }
                TrackerInput::Resolved { tracker, addrs } => {
                    put_varint(out, tracker.0 as u64);
                    put_addrs(out, addrs);
                    None
                }
                TrackerInput::Datagram { from, bytes } => {
                    put_addr(out, from);
                    put_varint(out, bytes.len() as u64);
                    Some(bytes)
                }
            };
        }
        TorrentInput::Session(i) => i,
    };
    match input {
        Input::Timeout | Input::Shutdown => None,
        Input::Incoming { addr } => {
            put_addr(out, addr);
            None
        }
        Input::Connected { peer } | Input::ConnectFailed { peer } | Input::Closed { peer } => {
            put_varint(out, peer.0 as u64);
            None
        }
        Input::Received { peer, bytes } => {
            put_varint(out, peer.0 as u64);
            put_varint(out, bytes.len() as u64);
            Some(bytes)
        }
        Input::WriteDone { piece, begin } => {
            put_varint(out, u64::from(*piece));
            put_varint(out, u64::from(*begin));
            None
        }
        Input::WriteFailed {
            piece,
            begin,
            error,
        } => {
            put_varint(out, u64::from(*piece));
            put_varint(out, u64::from(*begin));
            put_bytes(out, error.as_bytes());
            None
        }
        Input::ReadDone {
            peer,
            piece,
            begin,
            data,
        } => {
            put_varint(out, peer.0 as u64);
            put_varint(out, u64::from(*piece));
            put_varint(out, u64::from(*begin));
            put_varint(out, data.len() as u64);
            Some(data)
        }
        Input::ReadFailed {
            peer,
            piece,
            begin,
            error,
        } => {
            put_varint(out, peer.0 as u64);
            put_varint(out, u64::from(*piece));
            put_varint(out, u64::from(*begin));
            put_bytes(out, error.as_bytes());
            None
        }
        Input::PieceHashed { piece, digest } => {
            put_varint(out, u64::from(*piece));
            out.extend_from_slice(digest);
            None
        }
        Input::HashFailed { piece, error } => {
            put_varint(out, u64::from(*piece));
            put_bytes(out, error.as_bytes());
            None
        }
        Input::PeersDiscovered { addrs } => {
            put_addrs(out, addrs);
            None
        }
        Input::UploadSlots { slots } => {
            put_varint(out, *slots as u64);
            None
        }
        Input::SelectFiles { wanted } => {
            put_varint(out, wanted.len() as u64);
            for chunk in wanted.chunks(8) {
                let mut b = 0u8;
                for (i, &w) in chunk.iter().enumerate() {
                    b |= u8::from(w) << i;
                }
                out.push(b);
            }
            None
        }
    }
}

impl ActionPrint {
    /// The fingerprint of an action, as a trace stores it.
    pub fn of(action: &TorrentAction) -> ActionPrint {
        match action {
            TorrentAction::Session(a) => ActionPrint::of_session(a),
            TorrentAction::Tracker(a) => match a {
                TrackerAction::Resolve {
                    tracker,
                    host,
                    port,
                } => ActionPrint::Resolve {
                    tracker: *tracker,
                    host: host.clone(),
                    port: *port,
                },
                TrackerAction::OpenTcp {
                    conn,
                    tracker,
                    host,
                    port,
                    tls,
                } => ActionPrint::OpenTcp {
                    conn: *conn,
                    tracker: *tracker,
                    host: host.clone(),
                    port: *port,
                    tls: *tls,
                },
                TrackerAction::SendTcp { conn, bytes } => ActionPrint::SendTcp {
                    conn: *conn,
                    len: bytes.len() as u64,
                    hash: payload_hash(bytes),
                },
                TrackerAction::CloseTcp { conn } => ActionPrint::CloseTcp { conn: *conn },
                TrackerAction::SendUdp {
                    tracker,
                    addr,
                    bytes,
                } => ActionPrint::SendUdp {
                    tracker: *tracker,
                    addr: *addr,
                    len: bytes.len() as u64,
                    hash: payload_hash(bytes),
                },
            },
        }
    }

    /// The fingerprint of a swarm action.
    pub fn of_session(action: &Action) -> ActionPrint {
        match action {
            Action::Connect { peer, addr } => ActionPrint::Connect {
                peer: *peer,
                addr: *addr,
            },
            Action::Send { peer, bytes } => ActionPrint::Send {
                peer: *peer,
                len: bytes.len() as u64,
                hash: payload_hash(bytes),
            },
            Action::Close { peer, reason } => ActionPrint::Close {
                peer: *peer,
                reason: reason.clone(),
            },
            Action::WriteBlock { piece, begin, data } => ActionPrint::WriteBlock {
                piece: *piece,
                begin: *begin,
                len: data.len() as u64,
                hash: payload_hash(data),
            },
            Action::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => ActionPrint::ReadBlock {
                peer: *peer,
                piece: *piece,
                begin: *begin,
                length: *length,
            },
            Action::HashPiece { piece } => ActionPrint::HashPiece { piece: *piece },
            Action::Announce { event } => ActionPrint::Announce { event: *event },
        }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ActionPrint::Connect { peer, addr } => {
                out.push(ACT_CONNECT);
                put_varint(out, peer.0 as u64);
                put_addr(out, addr);
            }
            ActionPrint::Send { peer, len, hash } => {
                out.push(ACT_SEND);
                put_varint(out, peer.0 as u64);
                put_varint(out, *len);
                out.extend_from_slice(&hash.to_le_bytes());
            }
            ActionPrint::Close { peer, reason } => {
                out.push(ACT_CLOSE);
                put_varint(out, peer.0 as u64);
                put_bytes(out, reason.as_bytes());
            }
            ActionPrint::WriteBlock {
                piece,
                begin,
                len,
                hash,
            } => {
                out.push(ACT_WRITE);
                put_varint(out, u64::from(*piece));
                put_varint(out, u64::from(*begin));
                put_varint(out, *len);
                out.extend_from_slice(&hash.to_le_bytes());
            }
            ActionPrint::ReadBlock {
                peer,
                piece,
                begin,
                length,
            } => {
                out.push(ACT_READ);
                put_varint(out, peer.0 as u64);
                put_varint(out, u64::from(*piece));
                put_varint(out, u64::from(*begin));
                put_varint(out, u64::from(*length));
            }
            ActionPrint::HashPiece { piece } => {
                out.push(ACT_HASH);
                put_varint(out, u64::from(*piece));
            }
            ActionPrint::Announce { .. } => {
                // A task consumes its session's announces; none reaches a trace.
            }
            ActionPrint::Resolve {
                tracker,
                host,
                port,
            } => {
                out.push(ACT_RESOLVE);
                put_varint(out, tracker.0 as u64);
                put_bytes(out, host.as_bytes());
                out.extend_from_slice(&port.to_le_bytes());
            }
            ActionPrint::OpenTcp {
                conn,
                tracker,
                host,
                port,
                tls,
            } => {
                out.push(ACT_OPEN_TCP);
                put_varint(out, conn.0 as u64);
                put_varint(out, tracker.0 as u64);
                put_bytes(out, host.as_bytes());
                out.extend_from_slice(&port.to_le_bytes());
                out.push(u8::from(*tls));
            }
            ActionPrint::SendTcp { conn, len, hash } => {
                out.push(ACT_SEND_TCP);
                put_varint(out, conn.0 as u64);
                put_varint(out, *len);
                out.extend_from_slice(&hash.to_le_bytes());
            }
            ActionPrint::CloseTcp { conn } => {
                out.push(ACT_CLOSE_TCP);
                put_varint(out, conn.0 as u64);
            }
            ActionPrint::SendUdp {
                tracker,
                addr,
                len,
                hash,
            } => {
                out.push(ACT_SEND_UDP);
                put_varint(out, tracker.0 as u64);
                put_addr(out, addr);
                put_varint(out, *len);
                out.extend_from_slice(&hash.to_le_bytes());
            }
        }
    }

    /// True when `action` has this fingerprint; avoids building a print for the common case.
    pub(super) fn matches(&self, action: &TorrentAction) -> bool {
        let TorrentAction::Session(action) = action else {
            return *self == ActionPrint::of(action);
        };
        match (self, action) {
            (ActionPrint::Send { peer, len, hash }, Action::Send { peer: p, bytes }) => {
                peer == p && *len == bytes.len() as u64 && *hash == payload_hash(bytes)
            }
            (
                ActionPrint::WriteBlock {
                    piece,
                    begin,
                    len,
                    hash,
                },
                Action::WriteBlock {
                    piece: p,
                    begin: b,
                    data,
                },
            ) => {
                piece == p && begin == b && *len == data.len() as u64 && *hash == payload_hash(data)
            }
            _ => *self == ActionPrint::of_session(action),
        }
    }
}

impl EventPrint {
    /// The record of an event, as a trace stores it: swarm events whole, except fetched metadata
    /// (its size and SHA-1: the bytes are in the inputs that carried them), and the others as
    /// their text.
    pub fn of(event: &TorrentEvent) -> EventPrint {
        match event {
            TorrentEvent::Session(Event::MetadataReceived { info })
            | TorrentEvent::MetadataReceived { info } => EventPrint::Other(format!(
                "metadata received ({} bytes, SHA-1 {})",
                info.len(),
                crate::id::InfoHash::of(info).to_hex()
            )),
            TorrentEvent::Session(e @ Event::DhtNode { .. }) => EventPrint::Other(e.to_string()),
            TorrentEvent::Session(e) => EventPrint::Session(e.clone()),
            other => EventPrint::Other(other.to_string()),
        }
    }

    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let event = match self {
            EventPrint::Session(e) => e,
            EventPrint::Other(text) => {
                out.push(EV_OTHER);
                put_bytes(out, text.as_bytes());
                return;
            }
        };
        match event {
            Event::PeerConnected {
                peer,
                addr,
                peer_id,
            } => {
                out.push(EV_CONNECTED);
                put_varint(out, peer.0 as u64);
                put_addr(out, addr);
                out.extend_from_slice(peer_id);
            }
            Event::PeerDisconnected { peer, addr, reason } => {
                out.push(EV_DISCONNECTED);
                put_varint(out, peer.0 as u64);
                put_addr(out, addr);
                put_bytes(out, reason.as_bytes());
            }
            Event::PieceVerified { piece } => {
                out.push(EV_VERIFIED);
                put_varint(out, u64::from(*piece));
            }
            Event::HashFailed { piece } => {
                out.push(EV_HASH_FAILED);
                put_varint(out, u64::from(*piece));
            }
            Event::Complete => out.push(EV_COMPLETE),
            Event::PeerBanned { addr, peer_id } => {
                out.push(EV_BANNED);
                put_addr(out, addr);
                out.extend_from_slice(peer_id);
            }
            Event::Error { message } => {
                out.push(EV_ERROR);
                put_bytes(out, message.as_bytes());
            }
            // `EventPrint::of` never keeps these whole; written as text all the same.
            Event::MetadataReceived { info } => {
                out.push(EV_OTHER);
                put_bytes(
                    out,
                    format!("metadata received ({} bytes)", info.len()).as_bytes(),
                );
            }
            e @ Event::DhtNode { .. } => {
                out.push(EV_OTHER);
                put_bytes(out, e.to_string().as_bytes());
            }
        }
    }
}

// ---- reading ----

/// A position in a trace being decoded; every read is bounds-checked.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, ReplayError>;

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub(super) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn corrupt(&self, what: &'static str) -> ReplayError {
        ReplayError::Corrupt {
            offset: self.offset(),
            what,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(super) fn bytes(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end.and_then(|e| self.buf.get(self.pos..e)) {
            Some(b) => {
                self.pos += n;
                Ok(b)
            }
            None => Err(ReplayError::Truncated {
                offset: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> R<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn varint(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }

    fn u32v(&mut self) -> R<u32> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.corrupt("number too large for 32 bits"))
    }

    fn usizev(&mut self) -> R<usize> {
        let v = self.varint()?;
        usize::try_from(v).map_err(|_| self.corrupt("number too large for this machine"))
    }

    fn peer(&mut self) -> R<PeerHandle> {
        Ok(PeerHandle(self.usizev()?))
    }

    fn flag(&mut self) -> R<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt("flag is neither 0 nor 1")),
        }
    }

    /// A length-prefixed payload that must fit in what is left of the trace.
    fn payload(&mut self) -> R<&'a [u8]> {
        let n = self.usizev()?;
        self.bytes(n)
    }

    fn string(&mut self) -> R<String> {
        let b = self.payload()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.corrupt("text is not UTF-8")),
        }
    }

    fn addr(&mut self) -> R<SocketAddr> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                let port = self.u16()?;
                Ok(SocketAddr::new(IpAddr::V4(ip), port))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let flow = self.u32v()?;
                let scope = self.u32v()?;
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
            }
            _ => Err(self.corrupt("unknown address family")),
        }
    }

    fn time(&mut self, prev: Time) -> R<Time> {
        let d = unzigzag(self.varint()?);
        let t = prev.as_nanos().wrapping_add(d as u64);
        if t > MAX_TIME_NANOS {
            return Err(self.corrupt("time out of range"));
        }
        Ok(Time::from_nanos(t))
    }

    pub(super) fn header(&mut self) -> R<TraceHeader> {
        if self.remaining() < MAGIC.len() || self.bytes(MAGIC.len())? != MAGIC {
            return Err(ReplayError::NotATrace);
        }
        let version = self.u16()?;
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(ReplayError::UnsupportedVersion { version });
        }
        let flags = self.u8()?;
        if flags & !FLAG_EVENTS != 0 {
            return Err(self.corrupt("unknown header flags"));
        }
        let seed = self.u64()?;
        let peer_id = if self.flag()? {
            Some(self.array::<20>()?)
        } else {
            None
        };
        let config = SessionConfig {
            seed,
            peer_id,
            listen_port: self.u16()?,
            max_peers: self.usizev()?,
            upload_slots: self.usizev()?,
            max_serve_queue: self.usizev()?,
            ban_after_failures: self.u32v()?,
            max_connect_failures: self.u32v()?,
            sequential: self.flag()?,
            pex: self.flag()?,
            dht_port: if version >= 4 { self.u16()? } else { 0 },
        };
        let trackers = self.tracker_config()?;
        let tier_count = self.usizev()?;
        if tier_count > self.remaining() {
            return Err(self.truncated());
        }
        let mut tiers = Vec::with_capacity(tier_count);
        for _ in 0..tier_count {
            let n = self.usizev()?;
            if n > self.remaining() {
                return Err(self.truncated());
            }
            let mut tier = Vec::with_capacity(n);
            for _ in 0..n {
                tier.push(self.string()?);
            }
            tiers.push(tier);
        }
        let mut web_seeds = Vec::new();
        if version >= 5 {
            let n = self.usizev()?;
            if n > self.remaining() {
                return Err(self.truncated());
            }
            for _ in 0..n {
                web_seeds.push(self.string()?);
            }
        }
        let config = TorrentConfig {
            session: config,
            trackers,
            tiers,
            web_seeds,
        };
        let info_hash = InfoHash(self.array::<20>()?);
        let piece_length = self.varint()?;
        let total_length = self.varint()?;
        // A magnet link's torrent before its metadata is all zeros (`Torrent::unknown`).
        let unknown = piece_length == 0 && total_length == 0;
        if !unknown && (piece_length == 0 || piece_length > MAX_PIECE_LENGTH) {
            return Err(self.corrupt("piece length out of range"));
        }
        let count = self.usizev()?;
        let expected = if unknown {
            0
        } else {
            total_length.div_ceil(piece_length)
        };
        if count > MAX_PIECES as usize || count as u64 != expected {
            return Err(self.corrupt("piece count does not match the lengths"));
        }
        if count.saturating_mul(20) > self.remaining() {
            return Err(ReplayError::Truncated {
                offset: self.buf.len() as u64,
            });
        }
        let mut piece_hashes = Vec::with_capacity(count);
        for _ in 0..count {
            piece_hashes.push(self.array::<20>()?);
        }
        let file_count = self.usizev()?;
        if file_count > self.remaining() {
            return Err(ReplayError::Truncated {
                offset: self.buf.len() as u64,
            });
        }
        let mut files = Vec::with_capacity(file_count);
        let mut end = 0u64;
        for _ in 0..file_count {
            let offset = self.varint()?;
            let length = self.varint()?;
            let padding = self.flag()?;
            if offset != end {
                return Err(self.corrupt("files are not contiguous"));
            }
            end = offset
                .checked_add(length)
                .filter(|&e| e <= total_length)
                .ok_or_else(|| self.corrupt("files extend past the total length"))?;
            files.push(FileSpan {
                offset,
                length,
                padding,
            });
        }
        if end != total_length {
            return Err(self.corrupt("files do not add up to the total length"));
        }
        let private = self.flag()?;
        let metadata = self.payload()?.to_vec();
        let start_state = match self.u8()? {
            0 => StartState::Check,
            1 => {
                let bits = self.u32v()?;
                if bits as usize != count {
                    return Err(self.corrupt("have-bitfield length is not the piece count"));
                }
                let raw = self.bytes(count.div_ceil(8))?;
                StartState::Verified(
                    Bitfield::from_bytes(raw, bits)
                        .map_err(|_| self.corrupt("have-bitfield is invalid"))?,
                )
            }
            2 => StartState::Magnet,
            _ => return Err(self.corrupt("unknown start state")),
        };
        if unknown && start_state != StartState::Magnet {
            return Err(self.corrupt("only a magnet link starts without its torrent"));
        }
        let start = self.time(Time::ZERO)?;
        Ok(TraceHeader {
            events: flags & FLAG_EVENTS != 0,
            config,
            torrent: Torrent {
                private,
                info_hash,
                piece_length,
                total_length,
                piece_hashes,
                files,
                metadata,
            },
            start_state,
            start,
        })
    }

    fn truncated(&self) -> ReplayError {
        ReplayError::Truncated {
            offset: self.buf.len() as u64,
        }
    }

    fn duration(&mut self) -> R<Duration> {
        Ok(Duration::from_nanos(self.varint()?))
    }

    fn ip(&mut self) -> R<IpAddr> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(self.corrupt("unknown address family")),
        }
    }

    fn addrs(&mut self) -> R<Vec<SocketAddr>> {
        let n = self.usizev()?;
        if n > self.remaining() / 7 {
            return Err(self.truncated());
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            addrs.push(self.addr()?);
        }
        Ok(addrs)
    }

    fn text_opt(&mut self) -> R<Option<&'a [u8]>> {
        Ok(if self.flag()? {
            Some(self.payload()?)
        } else {
            None
        })
    }

    fn string_opt(&mut self) -> R<Option<String>> {
        Ok(if self.flag()? {
            Some(self.string()?)
        } else {
            None
        })
    }

    fn conn(&mut self) -> R<ConnId> {
        Ok(ConnId(self.usizev()?))
    }

    fn tracker(&mut self) -> R<TrackerId> {
        Ok(TrackerId(self.usizev()?))
    }

    fn tracker_config(&mut self) -> R<ManagerConfig> {
        let http_timeout = self.duration()?;
        let connect_timeout = self.duration()?;
        let receive_timeout = self.duration()?;
        let fallback_after = self.duration()?;
        let udp = UdpConfig {
            retransmit_base: self.duration()?,
            max_retransmits: self.u32v()?,
            connection_id_ttl: self.duration()?,
        };
        let http_limits = HttpLimits {
            max_head: self.usizev()?,
            max_body: self.usizev()?,
            max_redirects: self.usizev()?,
        };
        let numwant = self.u32v()?;
        let max_peers_per_reply = self.usizev()?;
        let default_interval = self.duration()?;
        let min_reannounce = self.duration()?;
        let max_reannounce = self.duration()?;
        let retry_base = self.duration()?;
        let retry_max = self.duration()?;
        let stop_timeout = self.duration()?;
        let n = self.usizev()?;
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let mut own_ips = Vec::with_capacity(n);
        for _ in 0..n {
            own_ips.push(self.ip()?);
        }
        Ok(ManagerConfig {
            http_timeout,
            connect_timeout,
            receive_timeout,
            fallback_after,
            udp,
            http_limits,
            numwant,
            max_peers_per_reply,
            default_interval,
            min_reannounce,
            max_reannounce,
            retry_base,
            retry_max,
            stop_timeout,
            own_ips,
        })
    }

    /// Decodes the input record whose tag was just read.
    pub(super) fn input(&mut self, tag: u8, prev: Time) -> R<(Time, InputRecord<'a>)> {
        let now = self.time(prev)?;
        let tracker = match tag {
            IN_START => {
                let n = self.usizev()?;
                if n > self.remaining() {
                    return Err(self.truncated());
                }
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(if self.flag()? {
                        Some(FileStamp {
                            size: self.varint()?,
                            mtime: unzigzag(self.varint()?),
                            mtime_nsec: unzigzag(self.varint()?),
                        })
                    } else {
                        None
                    });
                }
                let resume = self.text_opt()?;
                return Ok((now, InputRecord::Start { files, resume }));
            }
            IN_RESOLVED => {
                let tracker = self.tracker()?;
                let addrs = self.addrs()?;
                return Ok((now, InputRecord::Resolved { tracker, addrs }));
            }
            IN_TCP_CONNECTED => Some(TrackerInput::TcpConnected { conn: self.conn()? }),
            IN_TCP_DATA => Some(TrackerInput::TcpData {
                conn: self.conn()?,
                bytes: self.payload()?,
            }),
            IN_TCP_CLOSED => Some(TrackerInput::TcpClosed {
                conn: self.conn()?,
                error: self.string_opt()?,
            }),
            IN_TCP_FAILED => Some(TrackerInput::ConnectFailed {
                conn: self.conn()?,
                why: self.string()?,
            }),
            IN_DATAGRAM => Some(TrackerInput::Datagram {
                from: self.addr()?,
                bytes: self.payload()?,
            }),
            _ => None,
        };
        if let Some(t) = tracker {
            return Ok((now, InputRecord::Borrowed(TorrentInput::Tracker(t))));
        }
        let input = InputRecord::Borrowed(TorrentInput::Session(match tag {
            IN_TIMEOUT => Input::Timeout,
            IN_INCOMING => Input::Incoming { addr: self.addr()? },
            IN_CONNECTED => Input::Connected { peer: self.peer()? },
            IN_CONNECT_FAILED => Input::ConnectFailed { peer: self.peer()? },
            IN_RECEIVED => Input::Received {
                peer: self.peer()?,
                bytes: self.payload()?,
            },
            IN_CLOSED => Input::Closed { peer: self.peer()? },
            IN_WRITE_DONE => Input::WriteDone {
                piece: self.u32v()?,
                begin: self.u32v()?,
            },
            IN_WRITE_FAILED => Input::WriteFailed {
                piece: self.u32v()?,
                begin: self.u32v()?,
                error: self.string()?,
            },
            IN_READ_DONE => Input::ReadDone {
                peer: self.peer()?,
                piece: self.u32v()?,
                begin: self.u32v()?,
                data: self.payload()?,
            },
            IN_READ_FAILED => Input::ReadFailed {
                peer: self.peer()?,
                piece: self.u32v()?,
                begin: self.u32v()?,
                error: self.string()?,
            },
            IN_PIECE_HASHED => Input::PieceHashed {
                piece: self.u32v()?,
                digest: self.array::<20>()?,
            },
            IN_HASH_FAILED => Input::HashFailed {
                piece: self.u32v()?,
                error: self.string()?,
            },
            IN_PEERS => return Ok((now, InputRecord::PeersDiscovered(self.addrs()?))),
            IN_SELECT_FILES => {
                let n = self.usizev()?;
                let packed = self.bytes(n.div_ceil(8))?;
                let wanted = (0..n)
                    .map(|i| packed.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
                    .collect();
                return Ok((now, InputRecord::SelectFiles(wanted)));
            }
            IN_SHUTDOWN => Input::Shutdown,
            IN_UPLOAD_SLOTS => Input::UploadSlots {
                slots: self.usizev()?,
            },
            _ => return Err(self.corrupt("unknown input record")),
        }));
        Ok((now, input))
    }

    pub(super) fn action(&mut self, tag: u8) -> R<ActionPrint> {
        Ok(match tag {
            ACT_CONNECT => ActionPrint::Connect {
                peer: self.peer()?,
                addr: self.addr()?,
            },
            ACT_SEND => ActionPrint::Send {
                peer: self.peer()?,
                len: self.varint()?,
                hash: self.u64()?,
            },
            ACT_CLOSE => ActionPrint::Close {
                peer: self.peer()?,
                reason: self.string()?,
            },
            ACT_WRITE => ActionPrint::WriteBlock {
                piece: self.u32v()?,
                begin: self.u32v()?,
                len: self.varint()?,
                hash: self.u64()?,
            },
            ACT_READ => ActionPrint::ReadBlock {
                peer: self.peer()?,
                piece: self.u32v()?,
                begin: self.u32v()?,
                length: self.u32v()?,
            },
            ACT_HASH => ActionPrint::HashPiece {
                piece: self.u32v()?,
            },
            ACT_RESOLVE => ActionPrint::Resolve {
                tracker: self.tracker()?,
                host: self.string()?,
                port: self.u16()?,
            },
            ACT_OPEN_TCP => ActionPrint::OpenTcp {
                conn: self.conn()?,
                tracker: self.tracker()?,
                host: self.string()?,
                port: self.u16()?,
                tls: self.flag()?,
            },
            ACT_SEND_TCP => ActionPrint::SendTcp {
                conn: self.conn()?,
                len: self.varint()?,
                hash: self.u64()?,
            },
            ACT_CLOSE_TCP => ActionPrint::CloseTcp { conn: self.conn()? },
            ACT_SEND_UDP => ActionPrint::SendUdp {
                tracker: self.tracker()?,
                addr: self.addr()?,
                len: self.varint()?,
                hash: self.u64()?,
            },
            _ => return Err(self.corrupt("unknown action record")),
        })
    }

    pub(super) fn event(&mut self, tag: u8) -> R<EventPrint> {
        if tag == EV_OTHER {
            return Ok(EventPrint::Other(self.string()?));
        }
        Ok(EventPrint::Session(match tag {
            EV_CONNECTED => Event::PeerConnected {
                peer: self.peer()?,
                addr: self.addr()?,
                peer_id: self.array::<20>()?,
            },
            EV_DISCONNECTED => Event::PeerDisconnected {
                peer: self.peer()?,
                addr: self.addr()?,
                reason: self.string()?,
            },
            EV_VERIFIED => Event::PieceVerified {
                piece: self.u32v()?,
            },
            EV_HASH_FAILED => Event::HashFailed {
                piece: self.u32v()?,
            },
            EV_COMPLETE => Event::Complete,
            EV_BANNED => Event::PeerBanned {
                addr: self.addr()?,
                peer_id: self.array::<20>()?,
            },
            EV_ERROR => Event::Error {
                message: self.string()?,
            },
            _ => return Err(self.corrupt("unknown event record")),
        }))
    }
}

/// A decoded input. Most inputs borrow what they carry straight from the trace; those whose
/// input borrows a slice of decoded values (addresses, flags, stamps) own that storage here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRecord<'a> {
    /// An input whose data the trace lends as it is.
    Borrowed(TorrentInput<'a>),
    /// [`Input::PeersDiscovered`], with its addresses decoded.
    PeersDiscovered(Vec<SocketAddr>),
    /// [`Input::SelectFiles`], with its flags unpacked.
    SelectFiles(Vec<bool>),
    /// [`TrackerInput::Resolved`], with its addresses decoded.
    Resolved {
        /// The tracker.
        tracker: TrackerId,
        /// The addresses.
        addrs: Vec<SocketAddr>,
    },
    /// [`TorrentInput::Start`], with its stamps decoded.
    Start {
        /// The files' stamps.
        files: Vec<Option<FileStamp>>,
        /// The resume file's bytes.
        resume: Option<&'a [u8]>,
    },
}

impl InputRecord<'_> {
    /// The [`TorrentInput`] to give a task.
    pub fn as_input(&self) -> TorrentInput<'_> {
        match self {
            InputRecord::Borrowed(input) => input.clone(),
            InputRecord::PeersDiscovered(addrs) => {
                TorrentInput::Session(Input::PeersDiscovered { addrs })
            }
            InputRecord::SelectFiles(wanted) => {
                TorrentInput::Session(Input::SelectFiles { wanted })
            }
            InputRecord::Resolved { tracker, addrs } => {
                TorrentInput::Tracker(TrackerInput::Resolved {
                    tracker: *tracker,
                    addrs,
                })
            }
            InputRecord::Start { files, resume } => TorrentInput::Start {
                files,
                resume: *resume,
            },
        }
    }
}
