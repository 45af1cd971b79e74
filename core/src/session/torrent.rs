//! What a session is configured with: its settings and its torrent, as plain data.

use crate::bitfield::Bitfield;
use crate::id::InfoHash;
use crate::metainfo::{Info, Metainfo};

/// Settings for a [`Session`](super::Session). Everything random derives from `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Seeds the session's ChaCha8 generator (peer id, picker tie-breaks, optimistic unchokes).
    pub seed: u64,
    /// Our peer id; derived from `seed` when `None`.
    pub peer_id: Option<[u8; 20]>,
    /// The port we listen on, advertised in extended handshakes (0: not advertised).
    pub listen_port: u16,
    /// Most peer connections open or opening at once.
    pub max_peers: usize,
    /// Peers unchoked by rate, besides the optimistic unchoke.
    pub upload_slots: usize,
    /// Most requests queued per peer before rejecting (or closing without the fast extension).
    pub max_serve_queue: usize,
    /// Hash failures a peer may be involved in before it is banned.
    pub ban_after_failures: u32,
    /// Failed connection attempts after which an address is forgotten.
    pub max_connect_failures: u32,
    /// Download pieces in order (for streaming) instead of rarest first.
    pub sequential: bool,
    /// Offer and use BEP 11 peer exchange (never for a private torrent, whatever this says).
    pub pex: bool,
    /// Our DHT node's UDP port (BEP 5), sent to peers in `port` messages; their `port` messages
    /// become [`Event::DhtNode`](super::Event::DhtNode). 0: no DHT. Never used for a private
    /// torrent, whatever this says.
    pub dht_port: u16,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            seed: 0,
            peer_id: None,
            listen_port: 0,
            max_peers: 50,
            upload_slots: 4,
            max_serve_queue: 250,
            ban_after_failures: 2,
            max_connect_failures: 5,
            sequential: false,
            pex: true,
            dht_port: 0,
        }
    }
}

/// One file's place in the torrent's byte stream, for file selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpan {
    /// Offset of the file's first byte in the concatenated data.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// True for BEP 47 padding files, which are never wanted for their own sake.
    pub padding: bool,
}

/// What a session needs to know about its torrent: plain data, so a trace can store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torrent {
    /// The info-hash peers must name in their handshake.
    pub info_hash: InfoHash,
    /// Nominal piece size in bytes.
    pub piece_length: u64,
    /// Sum of the file lengths.
    pub total_length: u64,
    /// The SHA-1 of each piece.
    pub piece_hashes: Vec<[u8; 20]>,
    /// The files, in order.
    pub files: Vec<FileSpan>,
    /// BEP 27: peers come only from the torrent's trackers (no peer exchange, no DHT).
    pub private: bool,
    /// The bencoded info dictionary, served to peers that fetch metadata (BEP 9); empty when
    /// there is none to serve.
    pub metadata: Vec<u8>,
}

impl Torrent {
    /// The session's view of a parsed `.torrent` file.
    pub fn from_metainfo(m: &Metainfo) -> Torrent {
        Torrent::from_info(m.info_hash, &m.info)
    }

    /// The session's view of a parsed metainfo `info` dictionary.
    pub fn from_info(info_hash: InfoHash, info: &Info) -> Torrent {
        Torrent {
            info_hash,
            piece_length: info.piece_length,
            total_length: info.total_length,
            piece_hashes: info.pieces.clone(),
            files: info
                .files
                .iter()
                .map(|f| FileSpan {
                    offset: f.offset,
                    length: f.length,
                    padding: f.padding,
                })
                .collect(),
            private: info.private,
            metadata: info.raw.clone(),
        }
    }

    /// A torrent known only by its info-hash (a magnet link before its metadata arrived): no
    /// pieces, no files.
    pub fn unknown(info_hash: InfoHash) -> Torrent {
        Torrent {
            info_hash,
            piece_length: 0,
            total_length: 0,
            piece_hashes: Vec::new(),
            files: Vec::new(),
            private: false,
            metadata: Vec::new(),
        }
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.piece_hashes.len() as u32
    }

    /// Size of piece `i` (the last one may be short); 0 when out of range.
    pub fn piece_size(&self, i: u32) -> u64 {
        let start = u64::from(i).saturating_mul(self.piece_length);
        if i >= self.piece_count() || start >= self.total_length {
            return 0;
        }
        self.piece_length.min(self.total_length - start)
    }

    /// The pieces that hold bytes of the selected files (`wanted[i]` for file `i`; files past the
    /// end of `wanted` are selected). Padding and empty files select nothing.
    pub fn pieces_for_files(&self, wanted: &[bool]) -> Bitfield {
        let mut bf = Bitfield::new(self.piece_count());
        if self.piece_length == 0 {
            return bf;
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.padding || f.length == 0 || !wanted.get(i).copied().unwrap_or(true) {
                continue;
            }
            let first = f.offset / self.piece_length;
            let last = f.offset.saturating_add(f.length - 1) / self.piece_length;
            for p in first..=last {
                bf.set(p as u32);
            }
        }
        bf
    }
}
