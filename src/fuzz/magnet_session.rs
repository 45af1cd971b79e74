//! Body for a magnet link's swarm: [`Session::new_magnet`] fed well-framed peer-wire streams
//! from a few peers, with extended handshakes advertising any `metadata_size` and `ut_metadata`
//! messages true, false and malformed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::{InfoHash, PeerHandle, PeerId};
use kp_torrent_core::metadata::{
    DEFAULT_MAX_METADATA_SIZE, MetadataMessage, PIECE_SIZE, piece_count, piece_len, serve,
};
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec};
use kp_torrent_core::peer::OUR_METADATA_ID;
use kp_torrent_core::session::{Action, Event, Input, Session, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::wire::{
    BLOCK_SIZE, BlockRequest, DEFAULT_MAX_MESSAGE_LEN, Decoder, ExtendedHandshake, Handshake,
    Message,
};

use super::Bytes;
use super::formats::check_message;

/// Our peer id (fixed, so a peer can claim it).
const OUR_ID: [u8; 20] = [0x22; 20];
/// The ids the remote peers use: few, so a banned one comes back on another connection.
const PEER_IDS: [[u8; 20]; 4] = [[0x30; 20], [0x31; 20], [0x32; 20], [0x33; 20]];
/// Most connections the script opens at once.
const MAX_CONNS: usize = 4;
/// Most steps one input runs.
const MAX_STEPS: usize = 300;

/// Input: which metadata the magnet link names (a one-piece torrent, a torrent whose info
/// dictionary has two pieces, or bytes that are not a torrent), the session's seed, PEX, its
/// connection limit and whether the torrent is handed over once its metadata arrives; then steps
/// chosen by one byte: a peer connects (incoming, or outgoing after a discovery), sends its
/// handshake (any id, bits, or another info-hash), an extended handshake (`ut_metadata` under
/// any id, any `metadata_size`), a true, corrupted or arbitrary `ut_metadata` piece, a reject or
/// request, an arbitrary `ut_metadata` payload (whole or in parts), another well-formed message,
/// raw bytes; a connection closes; time passes; the timer fires. What each connection knows and
/// says is read back from the bytes it sent, parsed as the session parses them, so raw bytes
/// that swallow a later message keep the model right.
///
/// Checks: no panic; [`Event::MetadataReceived`] comes at most once and only with bytes whose
/// SHA-1 is the info-hash; no block write, block read or piece hash is asked for before
/// [`Session::set_torrent`]; bytes go only to open connections (outgoing ones once connected), as
/// our handshake followed by well-formed messages; every `ut_metadata` message we send decodes,
/// a request goes only to a peer that advertised a size we accept, for a piece within it, never
/// after a peer id was banned for bad metadata, and a piece we serve after the handover is the
/// true one; a peer is dropped for bad metadata only after it lied on that connection (a wrong
/// size, a false piece, a malformed `ut_metadata` message or a stream we cannot follow), and its
/// id is banned from then on; close reasons and messages are one line.
pub fn magnet_session(data: &[u8]) {
    let mut b = Bytes::new(data);
    let info = match b.u8() % 3 {
        0 => small_info().clone(),
        1 => two_piece_info().clone(),
        _ => {
            let len = 1 + usize::from(b.u16()) % (2 * PIECE_SIZE as usize + 10);
            let fill = b.u8();
            (0..len)
                .map(|i| (i as u8).wrapping_mul(fill) ^ 0x5a)
                .collect()
        }
    };
    let config = SessionConfig {
        seed: u64::from(b.u8()),
        peer_id: Some(OUR_ID),
        listen_port: 6881,
        max_peers: 2 + usize::from(b.u8() % 4),
        pex: b.bool(),
        ..SessionConfig::default()
    };
    let adopt = !b.u8().is_multiple_of(4);
    let info_hash = InfoHash::of(&info);
    let torrent = adopt.then(|| torrent_of(&info)).flatten();
    let mut h = Harness {
        session: Session::new_magnet(config, info_hash, Time::ZERO),
        info,
        info_hash,
        torrent,
        now: Time::ZERO,
        conns: BTreeMap::new(),
        banned: BTreeSet::new(),
        received: false,
        handed_over: false,
    };
    h.drain();
    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        h.run_op(&mut b);
    }
}

/// The info dictionary of a one-file torrent of three pieces: one metadata piece.
fn small_info() -> &'static Vec<u8> {
    static INFO: OnceLock<Vec<u8>> = OnceLock::new();
    INFO.get_or_init(|| {
        TorrentSpec {
            name: "magnet.bin".into(),
            piece_length: 16384,
            files: vec![(vec![], 40_000)],
            piece_hashes: vec![[1; 20], [2; 20], [3; 20]],
            ..TorrentSpec::default()
        }
        .info_bytes()
    })
}

/// The info dictionary of a torrent of 1,000 pieces: over 16 KiB, so two metadata pieces.
fn two_piece_info() -> &'static Vec<u8> {
    static INFO: OnceLock<Vec<u8>> = OnceLock::new();
    INFO.get_or_init(|| {
        TorrentSpec {
            name: "album".into(),
            piece_length: 16384,
            files: vec![
                (vec!["a.flac".into()], 10_000_000),
                (vec!["b.flac".into()], 16384 * 1000 - 10_000_000),
            ],
            piece_hashes: (0..1000u32).map(|i| [(i % 251) as u8; 20]).collect(),
            ..TorrentSpec::default()
        }
        .info_bytes()
    })
}

/// The torrent `info` describes, as the torrent task builds it.
fn torrent_of(info: &[u8]) -> Option<Torrent> {
    let file = [b"d4:info".as_slice(), info, b"e"].concat();
    Metainfo::from_bytes(&file)
        .ok()
        .map(|m| Torrent::from_metainfo(&m))
}

/// True when a `ut_metadata` payload says nothing false about `info`: a request, a reject, or a
/// true piece of it.
fn tells_the_truth(info: &[u8], payload: &[u8]) -> bool {
    match MetadataMessage::decode(payload) {
        Ok(MetadataMessage::Data { piece, .. }) => {
            MetadataMessage::decode(payload).ok() == Some(serve(info, piece))
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// One connection as the script sees it.
struct Conn {
    /// An outgoing connection the session asked for was reported connected.
    connected: bool,
    /// The peer id its handshake claimed.
    peer_id: Option<[u8; 20]>,
    /// The id and size of its latest extended handshake's `ut_metadata`.
    metadata_id: Option<u8>,
    metadata_size: Option<u64>,
    /// The id it gave `ut_pex` (messages under it are not `ut_metadata`).
    pex_id: Option<u8>,
    /// It said something about the metadata that is not true, or sent bytes we cannot follow.
    lied: bool,
    /// What it sent the session, parsed as the session parses it: the model follows the
    /// stream, not the script's intent (raw bytes may split or swallow later messages).
    recv: Decoder,
    recv_handshake: bool,
    /// The stream broke (the session closes it): the model knows no more about it.
    lost: bool,
    /// What the session sent it.
    sent: Decoder,
    handshake_seen: bool,
    /// Metadata pieces the session asked it for (the latest few).
    asked: Vec<u32>,
}

impl Conn {
    fn new(outgoing: bool) -> Conn {
        Conn {
            connected: !outgoing,
            peer_id: None,
            metadata_id: None,
            metadata_size: None,
            pex_id: None,
            lied: false,
            recv: Decoder::new(DEFAULT_MAX_MESSAGE_LEN),
            recv_handshake: false,
            lost: false,
            sent: Decoder::new(DEFAULT_MAX_MESSAGE_LEN),
            handshake_seen: false,
            asked: Vec::new(),
        }
    }
}

struct Harness {
    session: Session,
    info: Vec<u8>,
    info_hash: InfoHash,
    /// The torrent handed over once the metadata arrives (`None`: never).
    torrent: Option<Torrent>,
    now: Time,
    /// Open connections by handle.
    conns: BTreeMap<usize, Conn>,
    /// Peer ids dropped for bad metadata.
    banned: BTreeSet<[u8; 20]>,
    received: bool,
    handed_over: bool,
}

impl Harness {
    fn size(&self) -> u64 {
        self.info.len() as u64
    }

    /// A connected connection's handle, chosen by one byte.
    fn conn(&self, b: &mut Bytes<'_>) -> Option<usize> {
        let live: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connected)
            .map(|(&k, _)| k)
            .collect();
        let i = usize::from(b.u8());
        (!live.is_empty()).then(|| live[i % live.len()])
    }

    fn piece(&self, b: &mut Bytes<'_>, k: usize) -> u32 {
        let asked = &self.conns[&k].asked;
        let i = usize::from(b.u8());
        if i < 128 && !asked.is_empty() {
            asked[i % asked.len()]
        } else {
            u32::from(b.u8()) % (piece_count(self.size()) as u32 + 2)
        }
    }

    fn true_piece(&self, piece: u32) -> &[u8] {
        match serve(&self.info, piece) {
            MetadataMessage::Data { data, .. } => data,
            _ => &[],
        }
    }

    fn run_op(&mut self, b: &mut Bytes<'_>) {
        match b.u8() % 16 {
            0 => {
                if self.conns.len() < MAX_CONNS {
                    let addr = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + b.u8() % 6)),
                        6881 + u16::from(b.u8() % 2),
                    );
                    let k = self.session.next_handle().0;
                    assert!(!self.conns.contains_key(&k), "handle {k} given out twice");
                    self.conns.insert(k, Conn::new(false));
                    self.input(Input::Incoming { addr });
                }
            }
            1 => {
                let Some(k) = self.conn(b) else { return };
                let shape = b.u8();
                let mut reserved = [0u8; 8];
                if shape & 1 == 0 {
                    reserved[5] |= 0x10;
                }
                if shape & 2 == 0 {
                    reserved[7] |= 0x04;
                }
                let peer_id = match shape >> 2 {
                    0 => OUR_ID,
                    s => PEER_IDS[usize::from(s) % PEER_IDS.len()],
                };
                let info_hash = if shape >> 2 == 1 {
                    InfoHash([0x44; 20])
                } else {
                    self.info_hash
                };
                let mut hs = Vec::new();
                Handshake {
                    reserved,
                    info_hash,
                    peer_id: PeerId(peer_id),
                }
                .encode(&mut hs);
                self.received(k, &hs);
            }
            2 => {
                let Some(k) = self.conn(b) else { return };
                let mut m = BTreeMap::new();
                match b.u8() % 4 {
                    0 => {}
                    1 => {
                        m.insert("ut_metadata".to_owned(), 0);
                    }
                    2 => {
                        m.insert("ut_metadata".to_owned(), b.u8());
                    }
                    _ => {
                        m.insert("ut_metadata".to_owned(), 3);
                    }
                }
                if b.bool() {
                    m.insert("ut_pex".to_owned(), 1);
                }
                let metadata_size = match b.u8() % 8 {
                    0..=3 => Some(self.size()),
                    4 => Some(self.size() + 1),
                    5 => None,
                    6 => Some(0),
                    _ => Some(match b.u8() % 3 {
                        0 => u64::MAX,
                        1 => u64::from(b.u32()),
                        _ => DEFAULT_MAX_METADATA_SIZE + 1,
                    }),
                };
                let payload = ExtendedHandshake {
                    m,
                    metadata_size,
                    p: b.bool().then(|| b.u16()),
                    v: Some("fuzz 1.0".into()),
                    ..ExtendedHandshake::default()
                }
                .encode();
                let mut bytes = Vec::new();
                Message::Extended {
                    id: 0,
                    payload: &payload,
                }
                .encode(&mut bytes);
                self.received(k, &bytes);
            }
            3..=7 => {
                let Some(k) = self.conn(b) else { return };
                let payload = self.metadata_payload(b, k);
                let mut bytes = Vec::new();
                Message::Extended {
                    id: OUR_METADATA_ID,
                    payload: &payload,
                }
                .encode(&mut bytes);
                let split = usize::from(b.u8());
                if split & 7 == 0 {
                    // In pieces of one byte or more, at most 64 of them.
                    let chunk = (1 + (split >> 3) * 512).max(bytes.len().div_ceil(64));
                    for part in bytes.chunks(chunk) {
                        // The session may close the connection after any part.
                        if !self.conns.contains_key(&k) {
                            break;
                        }
                        self.received(k, part);
                    }
                } else {
                    self.received(k, &bytes);
                }
            }
            8 | 15 => {
                let Some(k) = self.conn(b) else { return };
                let bytes = self.other_message(b);
                self.received(k, &bytes);
            }
            9 => {
                let Some(k) = self.conn(b) else { return };
                let bytes = b.short_slice();
                self.received(k, bytes);
            }
            10 => {
                if let Some(k) = self.any_conn(b) {
                    self.conns.remove(&k);
                    self.input(Input::Closed {
                        peer: PeerHandle(k),
                    });
                }
            }
            11 => {
                self.now += Duration::from_millis(u64::from(b.u16()) * 10);
                self.input(Input::Timeout);
            }
            12 => {
                if let Some(t) = self.session.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.input(Input::Timeout);
            }
            13 => {
                let n = 1 + usize::from(b.u8() % 3);
                let addrs: Vec<SocketAddr> = (0..n)
                    .map(|_| {
                        SocketAddr::new(
                            IpAddr::V4(Ipv4Addr::new(127, 0, 1, b.u8() % 6)),
                            6881 + u16::from(b.u8() % 2),
                        )
                    })
                    .collect();
                self.input(Input::PeersDiscovered { addrs: &addrs });
            }
            _ => {
                let pending: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.connected)
                    .map(|(&k, _)| k)
                    .collect();
                if pending.is_empty() {
                    return;
                }
                let k = pending[usize::from(b.u8()) % pending.len()];
                if b.u8().is_multiple_of(4) {
                    self.conns.remove(&k);
                    self.input(Input::ConnectFailed {
                        peer: PeerHandle(k),
                    });
                } else {
                    self.conns.get_mut(&k).expect("pending").connected = true;
                    self.input(Input::Connected {
                        peer: PeerHandle(k),
                    });
                }
            }
        }
    }

    /// Any open connection, connected or not.
    fn any_conn(&self, b: &mut Bytes<'_>) -> Option<usize> {
        let all: Vec<usize> = self.conns.keys().copied().collect();
        let i = usize::from(b.u8());
        (!all.is_empty()).then(|| all[i % all.len()])
    }

    /// A `ut_metadata` payload: true, corrupted or arbitrary.
    fn metadata_payload(&self, b: &mut Bytes<'_>, k: usize) -> Vec<u8> {
        let piece = self.piece(b, k);
        match b.u8() % 6 {
            0 | 1 => {
                let msg = MetadataMessage::Data {
                    piece,
                    total_size: self.size(),
                    data: self.true_piece(piece),
                };
                msg.encode()
            }
            2 => {
                let mut data = self.true_piece(piece).to_vec();
                if let Some(n) = data.len().checked_sub(1) {
                    let at = usize::from(b.u16()) % (n + 1);
                    data[at] ^= 1 | b.u8();
                }
                let msg = MetadataMessage::Data {
                    piece,
                    total_size: self.size(),
                    data: &data,
                };
                msg.encode()
            }
            3 => {
                let total_size = match b.u8() % 3 {
                    0 => u64::from(b.u32()),
                    1 => self.size() + 1,
                    _ => self.size(),
                };
                let data = vec![b.u8(); usize::from(b.u16()) % (PIECE_SIZE as usize + 2)];
                let msg = MetadataMessage::Data {
                    piece,
                    total_size,
                    data: &data,
                };
                msg.encode()
            }
            4 => {
                let msg = if b.bool() {
                    MetadataMessage::Reject { piece }
                } else {
                    MetadataMessage::Request { piece }
                };
                msg.encode()
            }
            _ => b.short_slice().to_vec(),
        }
    }

    /// Another well-formed message, with its length prefix.
    fn other_message(&self, b: &mut Bytes<'_>) -> Vec<u8> {
        let block = |b: &mut Bytes<'_>| BlockRequest {
            index: u32::from(b.u8() % 8),
            begin: u32::from(b.u8() % 3) * BLOCK_SIZE,
            length: if b.bool() {
                BLOCK_SIZE
            } else {
                u32::from(b.u8())
            },
        };
        let bits;
        let data;
        let msg = match b.u8() % 18 {
            0 => Message::KeepAlive,
            1 => Message::Choke,
            2 => Message::Unchoke,
            3 => Message::Interested,
            4 => Message::NotInterested,
            5 => Message::Have(match b.u8() % 4 {
                0 => b.u32(),
                _ => u32::from(b.u8() % 8),
            }),
            6 => {
                bits = (0..usize::from(b.u8() % 140))
                    .map(|_| b.u8())
                    .collect::<Vec<u8>>();
                Message::Bitfield(&bits)
            }
            7 => Message::Request(block(b)),
            8 => {
                let r = block(b);
                data = vec![0xcd; (r.length as usize).min(BLOCK_SIZE as usize)];
                Message::Piece {
                    index: r.index,
                    begin: r.begin,
                    data: &data,
                }
            }
            9 => Message::Cancel(block(b)),
            10 => Message::Port(b.u16()),
            11 => Message::Suggest(u32::from(b.u8() % 8)),
            12 => Message::HaveAll,
            13 => Message::HaveNone,
            14 => Message::Reject(block(b)),
            15 => Message::AllowedFast(u32::from(b.u8() % 8)),
            16 => Message::Extended {
                id: b.u8(),
                payload: b.short_slice(),
            },
            _ => Message::Unknown {
                id: 21 + b.u8() % 200,
                payload: b.short_slice(),
            },
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    /// Bytes from connection `k` to the session: the model follows them first.
    fn received(&mut self, k: usize, bytes: &[u8]) {
        self.follow(k, bytes);
        self.input(Input::Received {
            peer: PeerHandle(k),
            bytes,
        });
    }

    /// Parses what connection `k` sends as the session will: its handshake's peer id, its
    /// extended handshakes' `ut_metadata` id and size, and whether its `ut_metadata` messages
    /// tell the truth.
    fn follow(&mut self, k: usize, bytes: &[u8]) {
        let info = &self.info;
        let c = self.conns.get_mut(&k).expect("live");
        if c.lost {
            return;
        }
        c.recv.feed(bytes);
        if !c.recv_handshake {
            match c.recv.next_handshake() {
                Ok(Some(h)) => {
                    c.peer_id = Some(h.peer_id.0);
                    c.recv_handshake = true;
                }
                Ok(None) => return,
                Err(_) => {
                    c.lost = true;
                    c.lied = true;
                    return;
                }
            }
        }
        loop {
            match c.recv.next_message() {
                Ok(Some(Message::Extended { id: 0, payload })) => {
                    // A payload that is not a dictionary changes nothing, as in the peer.
                    if let Ok(ext) = ExtendedHandshake::decode(payload) {
                        c.metadata_id = ext.m.get("ut_metadata").copied().filter(|&id| id != 0);
                        c.metadata_size = ext.metadata_size;
                        c.pex_id = ext.m.get("ut_pex").copied().filter(|&id| id != 0);
                        if c.metadata_size.is_some_and(|s| s != info.len() as u64) {
                            c.lied = true;
                        }
                        c.asked.clear();
                    }
                }
                Ok(Some(Message::Extended {
                    id: OUR_METADATA_ID,
                    payload,
                })) => {
                    if !tells_the_truth(info, payload) {
                        c.lied = true;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    c.lost = true;
                    c.lied = true;
                    break;
                }
            }
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.session.handle_input(self.now, input);
        self.drain();
    }

    /// Drains the session, checks what came out, and hands the torrent over when its metadata
    /// arrived.
    fn drain(&mut self) {
        let mut newly_banned = Vec::new();
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Connect { peer, addr } => {
                    assert!(
                        !self.conns.contains_key(&peer.0),
                        "connect to {addr} under {peer}, which is open"
                    );
                    self.conns.insert(peer.0, Conn::new(true));
                }
                Action::Send { peer, bytes } => self.check_sent(peer, &bytes),
                Action::Close { peer, reason } => {
                    check_message(&reason);
                    // An incoming connection refused at once was never in the script's list
                    // when the session refuses it during shutdown; here every one is.
                    let conn = self
                        .conns
                        .remove(&peer.0)
                        .unwrap_or_else(|| panic!("close of {peer}, which is not open"));
                    if reason.starts_with("bad metadata") {
                        assert!(
                            conn.lied,
                            "{peer} only told the truth, yet dropped: {reason}"
                        );
                        if let Some(id) = conn.peer_id {
                            newly_banned.push(id);
                        }
                    }
                }
                Action::WriteBlock { piece, .. }
                | Action::ReadBlock { piece, .. }
                | Action::HashPiece { piece } => {
                    assert!(
                        self.handed_over,
                        "disk work for piece {piece} before the metadata"
                    );
                }
                Action::Announce { .. } => {}
            }
        }
        let mut hand_over = false;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::MetadataReceived { info } => {
                    assert!(!self.received, "metadata received twice");
                    assert_eq!(
                        InfoHash::of(&info),
                        self.info_hash,
                        "metadata whose SHA-1 is not the info-hash"
                    );
                    self.received = true;
                    hand_over = true;
                }
                Event::PeerConnected { peer, .. } => {
                    assert!(
                        self.conns.contains_key(&peer.0),
                        "{peer} connected, not open"
                    );
                }
                Event::PeerDisconnected { reason, .. } => check_message(&reason),
                Event::Error { message } => check_message(&message),
                Event::PieceVerified { .. }
                | Event::HashFailed { .. }
                | Event::Complete
                | Event::PeerBanned { .. } => {
                    assert!(self.handed_over, "{ev} before the metadata");
                }
                // The sessions here run no DHT: nothing names a DHT node.
                Event::DhtNode { .. } => panic!("{ev} without a DHT"),
            }
        }
        for id in newly_banned {
            assert!(
                self.session.is_banned(&id),
                "a peer dropped for bad metadata is not banned"
            );
            self.banned.insert(id);
        }
        assert_eq!(self.session.needs_metadata(), !self.handed_over);
        if let Some((have, total)) = self.session.metadata_progress() {
            assert!(have < total, "metadata progress {have}/{total}");
            assert!(u64::from(total) <= piece_count(DEFAULT_MAX_METADATA_SIZE));
        }
        if hand_over && let Some(torrent) = self.torrent.clone() {
            let count = torrent.piece_count();
            self.handed_over = true;
            self.session
                .set_torrent(self.now, torrent, Bitfield::new(count));
            self.drain();
        }
    }

    /// Bytes the session sends `peer`: our handshake, then well-formed messages.
    fn check_sent(&mut self, peer: PeerHandle, bytes: &[u8]) {
        let handed_over = self.handed_over;
        let needs = self.session.needs_metadata();
        let banned = &self.banned;
        let info = &self.info;
        let info_hash = self.info_hash;
        let Some(c) = self.conns.get_mut(&peer.0) else {
            panic!("{} bytes sent to {peer}, which is not open", bytes.len());
        };
        assert!(c.connected, "bytes sent to {peer} before it connected");
        c.sent.feed(bytes);
        if !c.handshake_seen {
            match c.sent.next_handshake() {
                Ok(Some(h)) => {
                    assert_eq!((h.info_hash, h.peer_id), (info_hash, PeerId(OUR_ID)));
                    c.handshake_seen = true;
                }
                Ok(None) => return,
                Err(e) => panic!("we sent {peer} something else before our handshake: {e}"),
            }
        }
        loop {
            match c.sent.next_message() {
                Ok(Some(Message::Extended { id: 0, payload })) => {
                    ExtendedHandshake::decode(payload).expect("our extended handshake decodes");
                }
                Ok(Some(Message::Extended { id, payload }))
                    if !c.lost && Some(id) == c.metadata_id && Some(id) != c.pex_id =>
                {
                    let msg = MetadataMessage::decode(payload)
                        .unwrap_or_else(|e| panic!("we sent a bad ut_metadata message: {e}"));
                    match msg {
                        MetadataMessage::Request { piece } => {
                            assert!(needs, "a metadata request after the handover");
                            let size = c
                                .metadata_size
                                .unwrap_or_else(|| panic!("asked {peer}, which has no size"));
                            assert!(size > 0 && size <= DEFAULT_MAX_METADATA_SIZE);
                            assert!(
                                piece_len(size, piece).is_some(),
                                "asked {peer} for piece {piece} of {size} bytes"
                            );
                            assert!(
                                c.peer_id.is_none_or(|id| !banned.contains(&id)),
                                "asked banned {peer} for metadata"
                            );
                            if c.asked.len() == 8 {
                                c.asked.remove(0);
                            }
                            c.asked.push(piece);
                        }
                        MetadataMessage::Data { piece, .. } => {
                            assert!(handed_over, "served metadata we do not have");
                            assert_eq!(msg, serve(info, piece), "served a wrong piece");
                        }
                        MetadataMessage::Reject { .. } => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("we sent {peer} a malformed message: {e}"),
            }
        }
    }
}
