//! A fixed-length set of piece indices, stored as the wire protocol's bitfield (high bit first).

use std::fmt;

/// Which pieces a peer (or we) have.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

/// A bitfield message whose length does not match the torrent's piece count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitfieldLengthError {
    /// Bytes received.
    pub got: usize,
    /// Bytes expected for this piece count.
    pub expected: usize,
}

impl fmt::Display for BitfieldLengthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bitfield length {}, expected {}",
            self.got, self.expected
        )
    }
}

impl std::error::Error for BitfieldLengthError {}

impl Bitfield {
    /// An empty set over `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; (len as usize).div_ceil(8)],
            len,
            ones: 0,
        }
    }

    /// The full set over `len` pieces.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        b.bytes.fill(0xff);
        b.clear_spare_bits();
        b.ones = len;
        b
    }

    /// Reads a bitfield message body for `len` pieces. Spare bits at the end are ignored (cleared).
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldLengthError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldLengthError {
                got: bytes.len(),
                expected,
            });
        }
        let mut b = Bitfield {
            bytes: bytes.to_vec(),
            len,
            ones: 0,
        };
        b.clear_spare_bits();
        b.ones = b.bytes.iter().map(|x| x.count_ones()).sum();
        Ok(b)
    }

    fn clear_spare_bits(&mut self) {
        let spare = self.bytes.len() * 8 - self.len as usize;
        if let Some(last) = self.bytes.last_mut() {
            *last &= 0xffu8 << spare;
        }
    }

    /// The wire representation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces covered.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the bitfield covers no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True when every piece is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// True when piece `i` is set; false for indices out of range.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets piece `i`; returns false (and does nothing) when `i` is out of range.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let byte = &mut self.bytes[(i / 8) as usize];
        let mask = 0x80 >> (i % 8);
        if *byte & mask == 0 {
            *byte |= mask;
            self.ones += 1;
        }
        true
    }

    /// Clears piece `i`; returns false (and does nothing) when `i` is out of range.
    pub fn clear(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let byte = &mut self.bytes[(i / 8) as usize];
        let mask = 0x80 >> (i % 8);
        if *byte & mask != 0 {
            *byte &= !mask;
            self.ones -= 1;
        }
        true
    }

    /// Indices of the set pieces, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        assert!(b.set(0) && b.set(9) && b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.count(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.get(9) && !b.get(8) && !b.get(100));
        assert!(b.clear(0));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![9]);
        assert!(Bitfield::full(10).is_full());
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
    }

    #[test]
    fn from_bytes_checks_length_and_clears_spare_bits() {
        let b = Bitfield::from_bytes(&[0xff, 0xff], 10).unwrap();
        assert_eq!(b.count(), 10);
        assert_eq!(b.as_bytes(), &[0xff, 0xc0]);
        assert_eq!(
            Bitfield::from_bytes(&[0xff], 10).unwrap_err().to_string(),
            "bitfield length 1, expected 2"
        );
    }
}
