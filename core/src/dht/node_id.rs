//! 160-bit node ids and the XOR metric of Kademlia (BEP 5).
//!
//! A node id and an info-hash live in the same space; the distance between two ids is their
//! bitwise XOR read as an unsigned 160-bit big-endian integer, so comparing two [`Distance`]s is
//! comparing byte arrays. A bucket is a range of ids that share a prefix with some id; the
//! routing table names ranges by "the first `len` bits of `prefix`".

use std::fmt;

use rand::Rng;

use crate::id::{InfoHash, to_hex};

/// Bits in an id.
pub const ID_BITS: usize = 160;

/// A node's 20-byte identifier (or an info-hash used as a lookup target).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 20]);

/// The XOR of two ids: smaller is closer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Distance(pub [u8; 20]);

impl NodeId {
    /// The id in `bytes`, when it is exactly 20 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<NodeId> {
        bytes.try_into().ok().map(NodeId)
    }

    /// A uniformly random id drawn from `rng`.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> NodeId {
        let mut id = [0u8; 20];
        rng.fill_bytes(&mut id);
        NodeId(id)
    }

    /// A random id whose first `prefix_len` bits are those of `self` (the rest from `rng`): a
    /// uniformly drawn member of the range `self/prefix_len`. `prefix_len` is capped at 160.
    pub fn random_in_range<R: Rng + ?Sized>(&self, prefix_len: usize, rng: &mut R) -> NodeId {
        let random = NodeId::random(rng);
        let mut out = [0u8; 20];
        for (i, o) in out.iter_mut().enumerate() {
            let mask = prefix_mask(prefix_len, i);
            *o = (self.0[i] & mask) | (random.0[i] & !mask);
        }
        NodeId(out)
    }

    /// The distance from `self` to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// How many leading bits `self` and `other` share (160 when they are equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        self.distance(other).leading_zeros()
    }

    /// Bit `i` (0 is the most significant bit of the first byte); `i` must be below 160.
    pub fn bit(&self, i: usize) -> bool {
        self.0[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// `self` with bit `i` inverted; `i` must be below 160.
    pub fn flip_bit(&self, i: usize) -> NodeId {
        let mut out = self.0;
        out[i / 8] ^= 0x80 >> (i % 8);
        NodeId(out)
    }

    /// True when the first `prefix_len` bits of `self` are those of `prefix`.
    pub fn in_range(&self, prefix: &NodeId, prefix_len: usize) -> bool {
        self.common_prefix_len(prefix) >= prefix_len.min(ID_BITS)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

/// The mask of the bits of byte `byte` that lie within the first `prefix_len` bits.
fn prefix_mask(prefix_len: usize, byte: usize) -> u8 {
    let start = byte * 8;
    if prefix_len >= start + 8 {
        0xff
    } else if prefix_len <= start {
        0
    } else {
        !(0xffu8 >> (prefix_len - start))
    }
}

impl Distance {
    /// Leading zero bits (160 for the distance zero): the length of the common prefix.
    pub fn leading_zeros(&self) -> usize {
        for (i, &b) in self.0.iter().enumerate() {
            if b != 0 {
                return i * 8 + b.leading_zeros() as usize;
            }
        }
        ID_BITS
    }
}

impl From<InfoHash> for NodeId {
    fn from(h: InfoHash) -> NodeId {
        NodeId(h.0)
    }
}

impl From<NodeId> for InfoHash {
    fn from(id: NodeId) -> InfoHash {
        InfoHash(id.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_hex())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Distance({})", to_hex(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;

    fn id(first: u8) -> NodeId {
        let mut b = [0u8; 20];
        b[0] = first;
        NodeId(b)
    }

    #[test]
    fn distance_is_xor_and_orders_numerically() {
        let a = id(0b1000_0000);
        let b = id(0b1000_0001);
        let c = id(0b0000_0001);
        assert_eq!(a.distance(&b).0[0], 1);
        assert_eq!(a.distance(&a), Distance::default());
        assert!(a.distance(&b) < a.distance(&c));
        assert_eq!(a.distance(&b), b.distance(&a));
        // A difference in a later byte is smaller than any difference in an earlier one.
        let mut far_tail = a.0;
        far_tail[19] = 0xff;
        assert!(a.distance(&NodeId(far_tail)) < a.distance(&b));
    }

    #[test]
    fn prefix_lengths_and_bits() {
        let a = id(0b1010_0000);
        assert_eq!(a.common_prefix_len(&a), 160);
        assert_eq!(a.common_prefix_len(&id(0b0010_0000)), 0);
        assert_eq!(a.common_prefix_len(&id(0b1011_0000)), 3);
        let mut last = a.0;
        last[19] ^= 1;
        assert_eq!(a.common_prefix_len(&NodeId(last)), 159);
        assert!(a.bit(0) && !a.bit(1) && a.bit(2));
        assert_eq!(a.flip_bit(3), id(0b1011_0000));
        assert!(id(0b1011_0000).in_range(&a, 3));
        assert!(!id(0b1011_0000).in_range(&a, 4));
        assert!(id(0).in_range(&a, 0));
    }

    #[test]
    fn random_in_range_keeps_the_prefix_and_varies_the_rest() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let base = NodeId::random(&mut rng);
        for len in [0, 1, 7, 8, 9, 80, 159, 160, 500] {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..16 {
                let r = base.random_in_range(len, &mut rng);
                assert!(r.in_range(&base, len), "len {len}");
                seen.insert(r);
            }
            // Below 150 fixed bits there are at least 2^10 choices: 16 draws repeat rarely.
            if len < 150 {
                assert!(seen.len() > 8, "len {len}: {} distinct", seen.len());
            } else if len >= 160 {
                assert_eq!(seen.len(), 1);
            }
        }
    }

    #[test]
    fn prop_dht_distance_triangle_and_prefix() {
        fn prop(a: Vec<u8>, b: Vec<u8>, c: Vec<u8>) -> bool {
            let pad = |v: Vec<u8>| {
                let mut x = [0u8; 20];
                for (i, byte) in v.into_iter().take(20).enumerate() {
                    x[i] = byte;
                }
                NodeId(x)
            };
            let (a, b, c) = (pad(a), pad(b), pad(c));
            // XOR is symmetric, d(a,c) = d(a,b) ^ d(b,c), and the prefix length agrees with bits.
            let ab = a.distance(&b);
            let bc = b.distance(&c);
            let ac = a.distance(&c);
            let xor_ok = (0..20).all(|i| ac.0[i] == ab.0[i] ^ bc.0[i]);
            let p = a.common_prefix_len(&b);
            let bits_ok =
                (0..p).all(|i| a.bit(i) == b.bit(i)) && (p == 160 || a.bit(p) != b.bit(p));
            xor_ok && ab == b.distance(&a) && bits_ok
        }
        quickcheck::QuickCheck::new()
            .rng(quickcheck::Gen::from_size_and_seed(40, 0x6469_6431))
            .tests(2000)
            .quickcheck(prop as fn(Vec<u8>, Vec<u8>, Vec<u8>) -> bool);
    }
}
