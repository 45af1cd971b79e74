//! The session's inputs, actions and events: plain data, so a trace can record and replay them.

use std::fmt;

use core::net::SocketAddr;

use crate::id::PeerHandle;
pub use crate::tracker::AnnounceEvent;

/// Everything that can happen to a session, as plain data so a trace can record and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// The next timer is due (see [`Session::poll_timeout`](super::Session::poll_timeout)).
    Timeout,
    /// A connection from `addr` was accepted; it gets the handle [`Session::next_handle`](super::Session::next_handle) gave.
    Incoming {
        /// The remote address.
        addr: SocketAddr,
    },
    /// An outgoing connection asked for with [`Action::Connect`] is open.
    Connected {
        /// Its handle.
        peer: PeerHandle,
    },
    /// An outgoing connection could not be opened.
    ConnectFailed {
        /// Its handle.
        peer: PeerHandle,
    },
    /// Bytes arrived on a connection.
    Received {
        /// The connection.
        peer: PeerHandle,
        /// The bytes, split anywhere.
        bytes: &'a [u8],
    },
    /// The remote side closed the connection, or it failed.
    Closed {
        /// The connection.
        peer: PeerHandle,
    },
    /// An [`Action::WriteBlock`] completed.
    WriteDone {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
    },
    /// An [`Action::WriteBlock`] failed (disk full, …); the piece is fetched again.
    WriteFailed {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// What went wrong, for the user.
        error: String,
    },
    /// An [`Action::ReadBlock`] completed.
    ReadDone {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// The block.
        data: &'a [u8],
    },
    /// An [`Action::ReadBlock`] failed.
    ReadFailed {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// What went wrong, for the user.
        error: String,
    },
    /// The SHA-1 of a piece asked for with [`Action::HashPiece`].
    PieceHashed {
        /// Piece index.
        piece: u32,
        /// The digest of the data on disk.
        digest: [u8; 20],
    },
    /// A piece asked for with [`Action::HashPiece`] could not be read, so it has no digest; it
    /// counts as missing (fetched again) without blaming any peer.
    HashFailed {
        /// Piece index.
        piece: u32,
        /// What went wrong, for the user.
        error: String,
    },
    /// Peer addresses learnt from a tracker or the command line.
    PeersDiscovered {
        /// The addresses; known ones are ignored.
        addrs: &'a [SocketAddr],
    },
    /// The user selected files: `wanted[i]` for file `i`.
    SelectFiles {
        /// One flag per file.
        wanted: &'a [bool],
    },
    /// Close every connection and announce `stopped`.
    Shutdown,
    /// How many peers this torrent may unchoke now: its share of the process-wide upload slots
    /// (the engine divides them among the torrents with peers to serve).
    UploadSlots {
        /// Regular (not optimistic) unchoke slots, at least 1.
        slots: usize,
    },
}

/// What the driver must do. Drain with [`Session::poll_action`](super::Session::poll_action) after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Open a TCP connection to `addr`; report [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect {
        /// Handle for the new connection.
        peer: PeerHandle,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Write these bytes to the connection, in order.
    Send {
        /// The connection.
        peer: PeerHandle,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Close the connection and forget the handle (it will be reused).
    Close {
        /// The connection.
        peer: PeerHandle,
        /// Why, for logs.
        reason: String,
    },
    /// Store a block; report [`Input::WriteDone`] or [`Input::WriteFailed`].
    WriteBlock {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Read a block to serve a peer; report [`Input::ReadDone`] or [`Input::ReadFailed`].
    ReadBlock {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Length in bytes.
        length: u32,
    },
    /// Hash the stored piece; report [`Input::PieceHashed`] (or [`Input::HashFailed`] when it
    /// cannot be read). Its writes have all completed.
    HashPiece {
        /// Piece index.
        piece: u32,
    },
    /// Announce to the trackers (the tracker manager adds the counters from the getters).
    Announce {
        /// The event to report.
        event: AnnounceEvent,
    },
}

/// What the user interface may show. Drain with [`Session::poll_event`](super::Session::poll_event) after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer completed its handshake.
    PeerConnected {
        /// Its handle.
        peer: PeerHandle,
        /// Its address.
        addr: SocketAddr,
        /// Its peer id.
        peer_id: [u8; 20],
    },
    /// A connection ended.
    PeerDisconnected {
        /// Its (now free) handle.
        peer: PeerHandle,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A piece's SHA-1 matched; it is now counted, announced and served.
    PieceVerified {
        /// Piece index.
        piece: u32,
    },
    /// A piece's SHA-1 did not match; it is fetched again.
    HashFailed {
        /// Piece index.
        piece: u32,
    },
    /// Every wanted piece is verified.
    Complete,
    /// A peer sent corrupt data and is banned: closed and never reconnected.
    PeerBanned {
        /// The address of its last connection.
        addr: SocketAddr,
        /// Its peer id.
        peer_id: [u8; 20],
    },
    /// Something the user should know (a disk error).
    Error {
        /// One line.
        message: String,
    },
    /// The info dictionary of a magnet link arrived from peers and its SHA-1 is the info-hash.
    /// The session waits for [`Session::set_torrent`](super::Session::set_torrent).
    MetadataReceived {
        /// The bencoded info dictionary.
        info: Vec<u8>,
    },
    /// A peer runs a DHT node at `addr` (its BEP 5 `port` message): a contact for our DHT
    /// node. Only when [`SessionConfig::dht_port`](super::SessionConfig::dht_port) is set and
    /// the torrent is not private.
    DhtNode {
        /// The peer.
        peer: PeerHandle,
        /// Its address with its DHT port.
        addr: SocketAddr,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerConnected { peer, addr, .. } => write!(f, "{peer} connected ({addr})"),
            Event::PeerDisconnected { peer, addr, reason } => {
                write!(f, "{peer} ({addr}) closed: {reason}")
            }
            Event::PieceVerified { piece } => write!(f, "piece {piece} verified"),
            Event::HashFailed { piece } => write!(f, "piece {piece} failed its hash check"),
            Event::Complete => f.write_str("download complete"),
            Event::PeerBanned { addr, .. } => write!(f, "banned {addr} for sending corrupt data"),
            Event::Error { message } => f.write_str(message),
            Event::MetadataReceived { info } => {
                write!(f, "metadata received ({} bytes)", info.len())
            }
            Event::DhtNode { peer, addr } => write!(f, "{peer} runs a DHT node at {addr}"),
        }
    }
}
