//! The BEP 29 packet codec: the 20-byte header, the extension chain, the selective ACK bitmask.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! | timestamp_difference_microseconds                             |
//! | wnd_size                                                      |
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each extension is `next type (u8)`, `length (u8)`, `length` bytes. Type 1 is the selective
//! ACK: a bitmask whose bit `i` (least significant bit of each byte first) says whether
//! `ack_nr + 2 + i` arrived. Unknown extensions are skipped; decoding is bounded by the datagram
//! and never panics.

use core::fmt;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 20;
/// The protocol version this codec speaks (the only one defined).
pub const VERSION: u8 = 1;
/// Extension type of the selective ACK.
pub const EXT_SACK: u8 = 1;
/// The longest selective ACK bitmask we send: 28 bytes (224 packets past `ack_nr + 1`), so a
/// full data packet still fits in 1,452 bytes (see [`super::MAX_PAYLOAD`]).
pub const MAX_SACK_BYTES: usize = 28;

/// The five packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `ST_DATA`: payload, consumes a sequence number.
    Data = 0,
    /// `ST_FIN`: the sender's last sequence number; no payload.
    Fin = 1,
    /// `ST_STATE`: an acknowledgement; does not consume a sequence number.
    State = 2,
    /// `ST_RESET`: the connection is gone.
    Reset = 3,
    /// `ST_SYN`: opens a connection.
    Syn = 4,
}

impl PacketType {
    fn from_nibble(n: u8) -> Option<PacketType> {
        Some(match n {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }
}

/// The fixed header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type.
    pub ty: PacketType,
    /// Connection id: the receiver's id for this connection (the SYN carries the initiator's
    /// receive id).
    pub conn_id: u16,
    /// The sender's clock in microseconds when it sent the packet (wrapping).
    pub timestamp_us: u32,
    /// The sender's clock minus the timestamp of the last packet it received from us.
    pub timestamp_diff_us: u32,
    /// Bytes the sender can still receive.
    pub wnd_size: u32,
    /// Sequence number of this packet (of the next one for `ST_STATE`).
    pub seq_nr: u16,
    /// The last sequence number received in order.
    pub ack_nr: u16,
}

/// A decoded packet, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header,
    /// The selective ACK bitmask, if the packet carries one.
    pub sack: Option<&'a [u8]>,
    /// The payload after the extensions.
    pub payload: &'a [u8],
}

/// Why a datagram is not a uTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// Fewer than 20 bytes.
    TooShort(usize),
    /// The version nibble is not 1.
    Version(u8),
    /// The type nibble is above 4.
    Type(u8),
    /// An extension runs past the end of the datagram.
    TruncatedExtension,
    /// A selective ACK whose length is zero or not a multiple of 4.
    BadSack(u8),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::TooShort(n) => write!(f, "uTP packet of {n} bytes, header needs 20"),
            PacketError::Version(v) => write!(f, "uTP version {v}, only 1 is known"),
            PacketError::Type(t) => write!(f, "uTP packet type {t}, only 0 to 4 exist"),
            PacketError::TruncatedExtension => write!(f, "uTP extension runs past the datagram"),
            PacketError::BadSack(n) => {
                write!(
                    f,
                    "uTP selective ACK of {n} bytes, not a positive multiple of 4"
                )
            }
        }
    }
}

impl std::error::Error for PacketError {}

/// Whether a datagram on the shared UDP socket looks like uTP: at least a header, version 1 and
/// a type from 0 to 4 (first byte `0x01`, `0x11`, `0x21`, `0x31` or `0x41`). KRPC starts with
/// `d` (0x64) and BEP 15 tracker replies with `0x00`, so the three never collide.
pub fn is_utp(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] & 0x0f == VERSION && bytes[0] >> 4 <= 4
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one datagram. Never panics; the extension chain is walked at most once over the
/// bytes (each extension uses at least two).
pub fn decode(bytes: &[u8]) -> Result<Packet<'_>, PacketError> {
    if bytes.len() < HEADER_LEN {
        return Err(PacketError::TooShort(bytes.len()));
    }
    let version = bytes[0] & 0x0f;
    if version != VERSION {
        return Err(PacketError::Version(version));
    }
    let ty = PacketType::from_nibble(bytes[0] >> 4).ok_or(PacketError::Type(bytes[0] >> 4))?;
    let header = Header {
        ty,
        conn_id: be16(bytes, 2),
        timestamp_us: be32(bytes, 4),
        timestamp_diff_us: be32(bytes, 8),
        wnd_size: be32(bytes, 12),
        seq_nr: be16(bytes, 16),
        ack_nr: be16(bytes, 18),
    };
    let mut next = bytes[1];
    let mut at = HEADER_LEN;
    let mut sack = None;
    while next != 0 {
        if bytes.len() < at + 2 {
            return Err(PacketError::TruncatedExtension);
        }
        let (ext, len) = (next, bytes[at + 1]);
        next = bytes[at];
        let start = at + 2;
        let end = start + usize::from(len);
        if bytes.len() < end {
            return Err(PacketError::TruncatedExtension);
        }
        if ext == EXT_SACK {
            if len == 0 || len % 4 != 0 {
                return Err(PacketError::BadSack(len));
            }
            sack = Some(&bytes[start..end]);
        }
        at = end;
    }
    Ok(Packet {
        header,
        sack,
        payload: &bytes[at..],
    })
}

/// Appends one packet to `out`. A `sack` bitmask must be 4 to 252 bytes, a multiple of 4.
pub fn encode(header: &Header, sack: Option<&[u8]>, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(sack.is_none_or(|s| !s.is_empty() && s.len() % 4 == 0 && s.len() <= 252));
    out.reserve(HEADER_LEN + sack.map_or(0, |s| s.len() + 2) + payload.len());
    out.push(((header.ty as u8) << 4) | VERSION);
    out.push(if sack.is_some() { EXT_SACK } else { 0 });
    out.extend_from_slice(&header.conn_id.to_be_bytes());
    out.extend_from_slice(&header.timestamp_us.to_be_bytes());
    out.extend_from_slice(&header.timestamp_diff_us.to_be_bytes());
    out.extend_from_slice(&header.wnd_size.to_be_bytes());
    out.extend_from_slice(&header.seq_nr.to_be_bytes());
    out.extend_from_slice(&header.ack_nr.to_be_bytes());
    if let Some(mask) = sack {
        out.push(0);
        out.push(mask.len() as u8);
        out.extend_from_slice(mask);
    }
    out.extend_from_slice(payload);
}

/// Whether bit `i` of a selective ACK bitmask is set (`ack_nr + 2 + i` was received).
pub fn sack_bit(mask: &[u8], i: usize) -> bool {
    mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}
