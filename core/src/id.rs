//! Identifiers: info-hashes and peer ids.

use std::fmt;

use rand::Rng;

/// Formats bytes as lowercase hexadecimal.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Parses exactly 40 hexadecimal digits (either case) into 20 bytes.
pub fn from_hex20(s: &str) -> Option<[u8; 20]> {
    let s = s.as_bytes();
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The SHA-1 of a torrent's bencoded `info` dictionary, which names the torrent in the swarm.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// SHA-1 of `info_bytes`, which must be the `info` value exactly as it stands in the file.
    pub fn of(info_bytes: &[u8]) -> InfoHash {
        use sha1::Digest;
        InfoHash(sha1::Sha1::digest(info_bytes).into())
    }

    /// Lowercase hex, as trackers' web pages and other clients print it.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

/// The 20-byte id a client announces in handshakes and to trackers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerId(pub [u8; 20]);

/// The BEP 20 prefix of kp-torrent's peer ids: client `KP`, version 0.1.0.0.
pub const PEER_ID_PREFIX: &[u8; 8] = b"-KP0100-";

impl PeerId {
    /// A BEP 20 peer id: [`PEER_ID_PREFIX`] and 12 random bytes drawn from `rng`.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> PeerId {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(PEER_ID_PREFIX);
        rng.fill_bytes(&mut id[8..]);
        PeerId(id)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Printable prefix as text (most clients put their name there), the rest as hex.
        let printable = self
            .0
            .iter()
            .take_while(|b| b.is_ascii_graphic())
            .count()
            .min(8);
        write!(
            f,
            "PeerId({}{})",
            String::from_utf8_lossy(&self.0[..printable]),
            to_hex(&self.0[printable..])
        )
    }
}

/// A session's handle for one peer connection: an index into the session's slab of peers.
///
/// The driver maps it to a socket (a `mio::Token`); the core never sees sockets. A handle is
/// reused after its connection closed, so the driver must drop its mapping when told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerHandle(pub usize);

impl fmt::Display for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn hex_round_trip() {
        let h = InfoHash::of(b"abc");
        assert_eq!(h.to_hex(), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(from_hex20(&h.to_hex()), Some(h.0));
        assert_eq!(from_hex20(&h.to_hex().to_uppercase()), Some(h.0));
        assert_eq!(from_hex20("zz"), None);
        assert_eq!(from_hex20(&"g".repeat(40)), None);
    }

    #[test]
    fn peer_ids_follow_bep20_and_come_from_the_seed() {
        let mut a = rand::rngs::ChaCha8Rng::seed_from_u64(7);
        let mut b = rand::rngs::ChaCha8Rng::seed_from_u64(7);
        let id = PeerId::generate(&mut a);
        assert_eq!(&id.0[..8], b"-KP0100-");
        assert_eq!(id, PeerId::generate(&mut b));
        assert_ne!(id, PeerId::generate(&mut a));
    }
}
