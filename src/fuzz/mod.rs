//! The bodies of kp-torrent's fuzz targets, shared by the cargo-fuzz targets in `fuzz/` and by
//! `tests/fuzz_regressions.rs`, which runs every committed seed and every saved crash input
//! through the same functions on each `cargo test`.
//!
//! Each body takes arbitrary bytes, feeds them to one decoder or state machine of the core through
//! its public API, and asserts more than "no panic" where that is cheap: round trips through the
//! encoders, chunk-split invariance of incremental parsers, the contracts of `poll_*` and
//! `handle_timeout`. A failed assertion panics, which libFuzzer reports as a crash.
//!
//! A new target is a body here, a row in [`TARGETS`] and a file in `fuzz/fuzz_targets/`;
//! `fuzz/run.sh` and the regression test pick it up from there.

mod dht;
mod formats;
mod krpc;
mod magnet_session;
mod metadata;
mod peer;
mod pex;
pub mod seeds;
mod trace;
mod tracker;
mod utp;
mod wire;

pub use dht::dht;
pub use formats::{bencode, magnet, metainfo};
pub use krpc::krpc;
pub use magnet_session::magnet_session;
pub use metadata::metadata;
pub use peer::peer;
pub use pex::pex;
pub use trace::trace;
pub use tracker::{http_tracker, udp_tracker};
pub use utp::utp;
pub use wire::wire;

/// A target's body: takes the fuzzer's input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the file in `fuzz/fuzz_targets/`, the folder under
/// `fuzz/corpus/` and `fuzz/regressions/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("bencode", bencode),
    ("metainfo", metainfo),
    ("magnet", magnet),
    ("wire", wire),
    ("peer", peer),
    ("http_tracker", http_tracker),
    ("udp_tracker", udp_tracker),
    ("trace", trace),
    ("metadata", metadata),
    ("pex", pex),
    ("magnet_session", magnet_session),
    ("krpc", krpc),
    ("dht", dht),
    ("utp", utp),
];

/// Reads structured choices from fuzz input. Reading past the end yields zeros, so every input is
/// a valid script and short inputs end it quickly.
#[derive(Debug, Clone)]
pub(crate) struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed slice: one byte of length, then that many bytes.
    pub(crate) fn short_slice(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Splits `data` into chunks whose sizes come from `sizes` (each byte is one chunk length, 0
/// meaning one byte; when the sizes run out the rest is one chunk).
pub(crate) fn chunks<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    for &s in sizes {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(usize::from(s).max(1).min(rest.len()));
        out.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_reads_zeros_past_the_end() {
        let mut b = Bytes::new(&[1, 2, 3]);
        assert_eq!(b.u16(), 0x0102);
        assert_eq!(b.u32(), 0x0300_0000);
        assert!(b.is_empty());
        assert_eq!(b.take(5), &[] as &[u8]);
    }

    #[test]
    fn chunks_cover_the_input_in_order() {
        let data: Vec<u8> = (0..10).collect();
        let c = chunks(&data, &[3, 0, 2]);
        assert_eq!(c, vec![&data[..3], &data[3..4], &data[4..6], &data[6..]]);
        assert_eq!(chunks(&data, &[]), vec![&data[..]]);
        assert!(chunks(&[], &[1]).is_empty());
    }
}
