//! The BitTorrent peer-wire codec: the handshake (BEP 3), every message of BEP 3, BEP 6 (fast
//! extension) and BEP 10 (extension protocol), and an incremental decoder.
//!
//! Use [`decode`] on bytes you already hold, or a [`Decoder`] that owns the connection's receive
//! buffer: the driver reads from the socket straight into [`Decoder::spare`], calls
//! [`Decoder::commit`], then drains [`Decoder::next_message`] until `Ok(None)`. A piece's data is
//! always a view into the input, never a copy. Encoders append to a caller-owned `Vec<u8>`.
//!
//! Unknown message ids (ids this codec does not know, such as BEP 52's hash messages or a future
//! BEP) come out as [`Message::Unknown`] instead of an error: peers may send them, and a client
//! that does not understand one should skip it and carry on, as Transmission does. The codec
//! only frames bytes; whether an unexpected message is tolerated is the peer state machine's call,
//! and returning it (rather than skipping it here) keeps "one message in, `used` bytes out" exact
//! and lets a trace show what the peer sent. Likewise BEP 6 and BEP 10 messages decode whether or
//! not the handshakes negotiated them: checking [`Handshake::supports_fast`] is the caller's job.

mod extended;

pub use extended::ExtendedHandshake;

use std::fmt;

use crate::id::{InfoHash, PeerId};

/// The size of a block, the unit of `request` and `piece` (BEP 3 recommends 16 KiB, and clients
/// drop peers that request more).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// The default limit on a message's length prefix: 1 MiB of payload plus a piece header.
///
/// A 16 KiB block needs only 16 KiB + 9. The limit is larger because a bitfield grows with the
/// torrent (1 MiB covers 8,388,608 pieces, far more than any real torrent) and BEP 10 messages
/// such as `ut_metadata` carry a 16 KiB block behind a dictionary. It also bounds the memory a
/// peer can make us buffer for a single message.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = (1 << 20) + 9;

/// The protocol string of the BEP 3 handshake, after its length byte.
const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Why bytes from a peer are not a valid handshake or message. Every error is fatal to the
/// connection: the stream cannot be re-synchronised after it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The handshake does not start with `\x13BitTorrent protocol` (perhaps an encrypted stream or
    /// another protocol).
    BadProtocol,
    /// A length prefix over the decoder's limit.
    MessageTooLong {
        /// The length prefix received.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A fixed-size message whose length prefix is not its size.
    BadLength {
        /// The message's name, as [`Message::name`] gives it.
        message: &'static str,
        /// The length prefix received (message id included).
        len: u32,
        /// The length this message always has.
        expected: u32,
    },
    /// A variable-size message too short to hold its header.
    TooShort {
        /// The message's name, as [`Message::name`] gives it.
        message: &'static str,
        /// The length prefix received (message id included).
        len: u32,
        /// The smallest valid length.
        min: u32,
    },
    /// A BEP 10 extended handshake that is not bencode.
    ExtendedHandshake(crate::bencode::DecodeError),
    /// A BEP 10 extended handshake that is valid bencode but not a dictionary.
    ExtendedHandshakeNotDict,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadProtocol => f.write_str(
                "handshake: not the BitTorrent protocol (encrypted or another protocol?)",
            ),
            WireError::MessageTooLong { len, max } => {
                write!(f, "message length {len} over the limit of {max} bytes")
            }
            WireError::BadLength {
                message,
                len,
                expected,
            } => write!(f, "{message}: length {len}, expected {expected}"),
            WireError::TooShort { message, len, min } => {
                write!(f, "{message}: length {len}, expected at least {min}")
            }
            WireError::ExtendedHandshake(e) => write!(f, "extended handshake: {e}"),
            WireError::ExtendedHandshakeNotDict => {
                f.write_str("extended handshake: not a bencoded dictionary")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// The 68-byte handshake that opens every peer connection (BEP 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Extension bits; see [`Handshake::supports_extended`] and [`Handshake::supports_fast`].
    pub reserved: [u8; 8],
    /// The torrent this connection is for.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: PeerId,
}

impl Handshake {
    /// The encoded size of a handshake.
    pub const LEN: usize = 68;

    /// Our handshake: advertises the extension protocol (BEP 10) and the fast extension (BEP 6).
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Handshake {
        let mut reserved = [0u8; 8];
        reserved[5] |= 0x10;
        reserved[7] |= 0x04;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the sender speaks the BEP 10 extension protocol (may send [`Message::Extended`]).
    pub fn supports_extended(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// Whether the sender speaks the BEP 6 fast extension (have all/none, reject, suggest, allowed
    /// fast).
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    /// Whether the sender runs a DHT node (BEP 5) and may send [`Message::Port`].
    pub fn supports_dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }

    /// The same handshake advertising a DHT node (BEP 5's last reserved bit).
    pub fn with_dht(mut self) -> Handshake {
        self.reserved[7] |= 0x01;
        self
    }

    /// Appends the 68 bytes of the handshake to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(Self::LEN);
        out.push(19);
        out.extend_from_slice(PROTOCOL);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.info_hash.0);
        out.extend_from_slice(&self.peer_id.0);
    }

    /// Decodes a handshake from the start of `input`, which uses [`Handshake::LEN`] bytes.
    ///
    /// `Ok(None)` means more bytes are needed. A wrong protocol string is an error as soon as the
    /// bytes seen disagree with it, so a peer speaking something else is dropped without waiting.
    pub fn decode(input: &[u8]) -> Result<Option<Handshake>, WireError> {
        let seen = input.len().min(1 + PROTOCOL.len());
        let mut expected = [0u8; 20];
        expected[0] = 19;
        expected[1..].copy_from_slice(PROTOCOL);
        if input.get(..seen) != expected.get(..seen) {
            return Err(WireError::BadProtocol);
        }
        let Some(rest) = input.get(20..Self::LEN) else {
            return Ok(None);
        };
        let (reserved, rest) = split_array::<8>(rest);
        let (info_hash, rest) = split_array::<20>(rest);
        let (peer_id, _) = split_array::<20>(rest);
        Ok(Some(Handshake {
            reserved,
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
        }))
    }
}

/// Takes `N` bytes from the front of `input`, zero-filled if it is short (callers check lengths).
fn split_array<const N: usize>(input: &[u8]) -> ([u8; N], &[u8]) {
    match input.split_first_chunk::<N>() {
        Some((head, rest)) => (*head, rest),
        None => ([0; N], &[]),
    }
}

/// One block of a piece: the subject of `request`, `cancel` and `reject request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    /// Piece index.
    pub index: u32,
    /// Byte offset of the block within the piece.
    pub begin: u32,
    /// Length of the block in bytes (normally [`BLOCK_SIZE`], less for a piece's last block).
    pub length: u32,
}

/// One peer-wire message. Borrowed payloads are views into the decoded input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A zero-length message that keeps an idle connection open.
    KeepAlive,
    /// The sender will not answer our requests.
    Choke,
    /// The sender will answer our requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing we have.
    NotInterested,
    /// The sender now has this piece.
    Have(u32),
    /// The pieces the sender has, high bit of the first byte first; sent only right after the
    /// handshake. Its length is checked against the torrent by the caller, who knows it.
    Bitfield(&'a [u8]),
    /// The sender asks for a block.
    Request(BlockRequest),
    /// A block of data.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset of the block within the piece.
        begin: u32,
        /// The block's bytes.
        data: &'a [u8],
    },
    /// The sender withdraws a request.
    Cancel(BlockRequest),
    /// The sender's DHT port (BEP 5).
    Port(u16),
    /// BEP 6: the sender suggests we download this piece.
    Suggest(u32),
    /// BEP 6: the sender has every piece (replaces a bitfield).
    HaveAll,
    /// BEP 6: the sender has no piece (replaces a bitfield).
    HaveNone,
    /// BEP 6: the sender will not answer this request.
    Reject(BlockRequest),
    /// BEP 6: we may request this piece even while choked.
    AllowedFast(u32),
    /// BEP 10: an extension message; `id` 0 is the extended handshake
    /// ([`ExtendedHandshake`]), others are the ids we announced in our handshake's `m`.
    Extended {
        /// Extension message id.
        id: u8,
        /// The extension's payload.
        payload: &'a [u8],
    },
    /// A message id this codec does not know; the caller should ignore it (see the module doc).
    /// Encoding one with a known id gives bytes that decode as that known message.
    Unknown {
        /// The message id.
        id: u8,
        /// Everything after the id.
        payload: &'a [u8],
    },
}

mod id {
    pub(super) const CHOKE: u8 = 0;
    pub(super) const UNCHOKE: u8 = 1;
    pub(super) const INTERESTED: u8 = 2;
    pub(super) const NOT_INTERESTED: u8 = 3;
    pub(super) const HAVE: u8 = 4;
    pub(super) const BITFIELD: u8 = 5;
    pub(super) const REQUEST: u8 = 6;
    pub(super) const PIECE: u8 = 7;
    pub(super) const CANCEL: u8 = 8;
    pub(super) const PORT: u8 = 9;
    pub(super) const SUGGEST: u8 = 13;
    pub(super) const HAVE_ALL: u8 = 14;
    pub(super) const HAVE_NONE: u8 = 15;
    pub(super) const REJECT: u8 = 16;
    pub(super) const ALLOWED_FAST: u8 = 17;
    pub(super) const EXTENDED: u8 = 20;
}

/// The size rule of each message id: `(name, length prefix, exact)`; when `exact` is false the
/// length is a minimum.
#[inline]
fn shape(message_id: u8) -> (&'static str, u32, bool) {
    match message_id {
        id::CHOKE => ("choke", 1, true),
        id::UNCHOKE => ("unchoke", 1, true),
        id::INTERESTED => ("interested", 1, true),
        id::NOT_INTERESTED => ("not interested", 1, true),
        id::HAVE => ("have", 5, true),
        id::BITFIELD => ("bitfield", 1, false),
        id::REQUEST => ("request", 13, true),
        id::PIECE => ("piece", 9, false),
        id::CANCEL => ("cancel", 13, true),
        id::PORT => ("port", 3, true),
        id::SUGGEST => ("suggest", 5, true),
        id::HAVE_ALL => ("have all", 1, true),
        id::HAVE_NONE => ("have none", 1, true),
        id::REJECT => ("reject request", 13, true),
        id::ALLOWED_FAST => ("allowed fast", 5, true),
        id::EXTENDED => ("extended", 2, false),
        _ => ("unknown", 1, false),
    }
}

#[inline]
fn check_length(message_id: u8, len: u32) -> Result<(), WireError> {
    let (message, size, exact) = shape(message_id);
    if exact && len != size {
        Err(WireError::BadLength {
            message,
            len,
            expected: size,
        })
    } else if len < size {
        Err(WireError::TooShort {
            message,
            len,
            min: size,
        })
    } else {
        Ok(())
    }
}

#[inline]
fn u32_at(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..)
        .and_then(|p| p.first_chunk::<4>())
        .map_or(0, |b| u32::from_be_bytes(*b))
}

#[inline]
fn block_at(payload: &[u8]) -> BlockRequest {
    BlockRequest {
        index: u32_at(payload, 0),
        begin: u32_at(payload, 4),
        length: u32_at(payload, 8),
    }
}

/// Builds the message once its length has been checked by [`check_length`].
#[inline]
fn parse(message_id: u8, payload: &[u8]) -> Message<'_> {
    match message_id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(u32_at(payload, 0)),
        id::BITFIELD => Message::Bitfield(payload),
        id::REQUEST => Message::Request(block_at(payload)),
        id::PIECE => Message::Piece {
            index: u32_at(payload, 0),
            begin: u32_at(payload, 4),
            data: payload.get(8..).unwrap_or_default(),
        },
        id::CANCEL => Message::Cancel(block_at(payload)),
        id::PORT => Message::Port(
            payload
                .first_chunk::<2>()
                .map_or(0, |b| u16::from_be_bytes(*b)),
        ),
        id::SUGGEST => Message::Suggest(u32_at(payload, 0)),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::REJECT => Message::Reject(block_at(payload)),
        id::ALLOWED_FAST => Message::AllowedFast(u32_at(payload, 0)),
        id::EXTENDED => match payload.split_first() {
            Some((&id, payload)) => Message::Extended { id, payload },
            None => Message::Extended {
                id: 0,
                payload: &[],
            },
        },
        id => Message::Unknown { id, payload },
    }
}

/// Decodes one whole message from the start of `input`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((message, used)))` when a message is
/// complete. A piece's data is a slice of `input`, never copied. Errors are reported as soon as
/// the bytes seen prove them: a length prefix over `max_len` (message id included) is an error
/// before its body arrives, and so is a fixed-size message whose prefix is not its size.
#[inline]
pub fn decode(input: &[u8], max_len: u32) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some((prefix, rest)) = input.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    if len > max_len {
        return Err(WireError::MessageTooLong { len, max: max_len });
    }
    let Some((&message_id, rest)) = rest.split_first() else {
        return Ok(None);
    };
    check_length(message_id, len)?;
    let payload_len = (len - 1) as usize;
    let Some(payload) = rest.get(..payload_len) else {
        return Ok(None);
    };
    // `input` holds the 5 header bytes and `payload`, so this cannot overflow.
    Ok(Some((parse(message_id, payload), 5 + payload_len)))
}

/// Appends a big-endian `u32` length prefix for `body_len` bytes after it.
fn put_len(body_len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(body_len).expect("a peer-wire message must be under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
}

fn put_block(message_id: u8, r: &BlockRequest, out: &mut Vec<u8>) {
    let mut b = [0u8; 17];
    b[..4].copy_from_slice(&13u32.to_be_bytes());
    b[4] = message_id;
    b[5..9].copy_from_slice(&r.index.to_be_bytes());
    b[9..13].copy_from_slice(&r.begin.to_be_bytes());
    b[13..].copy_from_slice(&r.length.to_be_bytes());
    out.extend_from_slice(&b);
}

fn put_u32_message(message_id: u8, v: u32, out: &mut Vec<u8>) {
    let mut b = [0u8; 9];
    b[..4].copy_from_slice(&5u32.to_be_bytes());
    b[4] = message_id;
    b[5..].copy_from_slice(&v.to_be_bytes());
    out.extend_from_slice(&b);
}

/// Appends the 13-byte header of a piece message carrying `data_len` bytes of data, so the driver
/// can send the block itself from where it lies (a vectored write) instead of copying it.
///
/// # Panics
/// If `data_len` makes the message 4 GiB or more (a caller bug; blocks are 16 KiB).
pub fn encode_piece_header(index: u32, begin: u32, data_len: usize, out: &mut Vec<u8>) {
    put_len(data_len.saturating_add(9), out);
    out.push(id::PIECE);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&begin.to_be_bytes());
}

impl Message<'_> {
    /// Appends the message, length prefix included, to `out`.
    ///
    /// # Panics
    /// If a payload makes the message 4 GiB or more (a caller bug).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match *self {
            Message::KeepAlive => out.extend_from_slice(&[0, 0, 0, 0]),
            Message::Choke => out.extend_from_slice(&[0, 0, 0, 1, id::CHOKE]),
            Message::Unchoke => out.extend_from_slice(&[0, 0, 0, 1, id::UNCHOKE]),
            Message::Interested => out.extend_from_slice(&[0, 0, 0, 1, id::INTERESTED]),
            Message::NotInterested => out.extend_from_slice(&[0, 0, 0, 1, id::NOT_INTERESTED]),
            Message::HaveAll => out.extend_from_slice(&[0, 0, 0, 1, id::HAVE_ALL]),
            Message::HaveNone => out.extend_from_slice(&[0, 0, 0, 1, id::HAVE_NONE]),
            Message::Have(piece) => put_u32_message(id::HAVE, piece, out),
            Message::Suggest(piece) => put_u32_message(id::SUGGEST, piece, out),
            Message::AllowedFast(piece) => put_u32_message(id::ALLOWED_FAST, piece, out),
            Message::Request(ref r) => put_block(id::REQUEST, r, out),
            Message::Cancel(ref r) => put_block(id::CANCEL, r, out),
            Message::Reject(ref r) => put_block(id::REJECT, r, out),
            Message::Port(port) => {
                let [hi, lo] = port.to_be_bytes();
                out.extend_from_slice(&[0, 0, 0, 3, id::PORT, hi, lo]);
            }
            Message::Bitfield(bits) => {
                put_len(bits.len().saturating_add(1), out);
                out.push(id::BITFIELD);
                out.extend_from_slice(bits);
            }
            Message::Piece { index, begin, data } => {
                encode_piece_header(index, begin, data.len(), out);
                out.extend_from_slice(data);
            }
            Message::Extended { id, payload } => {
                put_len(payload.len().saturating_add(2), out);
                out.push(id::EXTENDED);
                out.push(id);
                out.extend_from_slice(payload);
            }
            Message::Unknown { id, payload } => {
                put_len(payload.len().saturating_add(1), out);
                out.push(id);
                out.extend_from_slice(payload);
            }
        }
    }

    /// The number of bytes [`Message::encode`] appends, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + match *self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Port(_) => 3,
            Message::Bitfield(bits) => 1 + bits.len(),
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Unknown { payload, .. } => 1 + payload.len(),
        }
    }

    /// A short lowercase name for logs and errors, as BEP 3 and BEP 6 name the message.
    pub fn name(&self) -> &'static str {
        match self {
            Message::KeepAlive => "keep-alive",
            Message::Choke => "choke",
            Message::Unchoke => "unchoke",
            Message::Interested => "interested",
            Message::NotInterested => "not interested",
            Message::Have(_) => "have",
            Message::Bitfield(_) => "bitfield",
            Message::Request(_) => "request",
            Message::Piece { .. } => "piece",
            Message::Cancel(_) => "cancel",
            Message::Port(_) => "port",
            Message::Suggest(_) => "suggest",
            Message::HaveAll => "have all",
            Message::HaveNone => "have none",
            Message::Reject(_) => "reject request",
            Message::AllowedFast(_) => "allowed fast",
            Message::Extended { .. } => "extended",
            Message::Unknown { .. } => "unknown",
        }
    }
}

/// An incremental decoder that owns a connection's receive buffer.
///
/// Feed it bytes split anywhere (with [`Decoder::feed`], or by reading straight into
/// [`Decoder::spare`] and calling [`Decoder::commit`]), then take whole messages out with
/// [`Decoder::next_message`] until it returns `Ok(None)`. The handshake, which comes first on a
/// connection, can be taken out of the same buffer with [`Decoder::next_handshake`]. After an
/// error the stream cannot be re-synchronised; the decoder keeps returning that error.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `buf[start..filled]` is received and not yet decoded; `buf[filled..]` is spare room.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    max_len: u32,
    error: Option<WireError>,
}

impl Decoder {
    /// A decoder refusing messages whose length prefix is over `max_len` (see
    /// [`DEFAULT_MAX_MESSAGE_LEN`]).
    pub fn new(max_len: u32) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            filled: 0,
            max_len,
            error: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.spare(chunk.len())[..chunk.len()].copy_from_slice(chunk);
        self.filled += chunk.len();
    }

    /// Spare room of at least `min` bytes at the end of the buffer, to read into directly; call
    /// [`Decoder::commit`] with the number of bytes written. Bytes already received are kept.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.buf.len() - self.filled < min {
            // Move the undecoded tail to the front first: this moves each byte at most once per
            // message taken out, and keeps the buffer about one message plus one read in size.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.filled < min {
                self.buf.resize(self.filled + min, 0);
            }
        }
        &mut self.buf[self.filled..]
    }

    /// Marks `n` bytes written into [`Decoder::spare`] as received.
    ///
    /// # Panics
    /// If `n` is larger than the spare room (a caller bug).
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.filled, "commit past spare room");
        self.filled += n;
    }

    /// The number of received bytes not yet taken out as messages.
    pub fn buffered(&self) -> usize {
        self.filled - self.start
    }

    /// Takes the next whole message out, or `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, WireError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let start = self.start;
        match decode(&self.buf[start..self.filled], self.max_len) {
            Ok(Some((message, used))) => {
                self.start = start + used;
                if self.start == self.filled {
                    // Indices only: `message` still borrows the (unchanged) bytes.
                    self.start = 0;
                    self.filled = 0;
                }
                Ok(Some(message))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Takes the peer's handshake out, or `Ok(None)` when more bytes are needed. Call it only
    /// before the first [`Decoder::next_message`] of a connection.
    pub fn next_handshake(&mut self) -> Result<Option<Handshake>, WireError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match Handshake::decode(&self.buf[self.start..self.filled]) {
            Ok(Some(h)) => {
                self.start += Handshake::LEN;
                if self.start == self.filled {
                    self.start = 0;
                    self.filled = 0;
                }
                Ok(Some(h))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
