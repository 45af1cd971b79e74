//! Metainfo: reading v1 `.torrent` files (BEP 3) and writing them.
//!
//! [`Metainfo::from_bytes`] validates everything a later stage relies on (the piece count matches
//! the total length, lengths do not overflow, every file path is safe to join under the download
//! folder) and returns a distinct [`MetainfoError`] for each way a torrent can be wrong. The
//! info-hash is the SHA-1 of the `info` dictionary's bytes exactly as they stand in the file.
//! Hybrid v1+v2 torrents load as v1; v2-only torrents are refused.
//!
//! [`TorrentSpec`] writes a torrent; [`hash_pieces`] and [`auto_piece_length`] help build one.

mod build;
pub mod path;

use std::fmt;
use std::ops::Range;

use crate::bencode::{self, DecodeError, Dict, Value};
use crate::id::InfoHash;

pub use build::{TorrentSpec, auto_piece_length, hash_pieces};

/// Most pieces a torrent may have (80 MiB of hashes); more is refused as a likely attack.
pub const MAX_PIECES: u32 = 4 * 1024 * 1024;

/// Largest piece length accepted, as libtorrent: piece offsets must fit in a signed 32-bit integer.
pub const MAX_PIECE_LENGTH: u64 = i32::MAX as u64;

/// A parsed `.torrent` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// SHA-1 of the raw `info` dictionary: the torrent's identity in the swarm.
    pub info_hash: InfoHash,
    /// The `info` dictionary: files and pieces.
    pub info: Info,
    /// Tracker tiers (BEP 12): `announce-list` when present and non-empty, else `[[announce]]`,
    /// else empty. Empty URLs and empty tiers are left out.
    pub trackers: Vec<Vec<String>>,
    /// Web seed URLs (BEP 19 `url-list`), kept for later use.
    pub url_list: Vec<String>,
    /// `creation date`, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// `comment` (`comment.utf-8` preferred).
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
}

/// The `info` dictionary: what the info-hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The torrent's name, sanitized: the file name of a single-file torrent, the folder of a
    /// multi-file one.
    pub name: String,
    /// Bytes per piece (every piece but the last).
    pub piece_length: u64,
    /// SHA-1 of each piece.
    pub pieces: Vec<[u8; 20]>,
    /// Files in torrent order, padding files included.
    pub files: Vec<FileEntry>,
    /// Sum of all file lengths (padding included): the size of the torrent's data.
    pub total_length: u64,
    /// BEP 27: peers come only from the torrent's trackers (no DHT, PEX or local discovery).
    pub private: bool,
    /// True for a torrent with a `files` list (a folder), false for a single file.
    pub multi_file: bool,
    /// The `info` dictionary's bytes exactly as in the file, served to peers over BEP 9.
    pub raw: Vec<u8>,
}

/// One file of a torrent and where its bytes sit in the torrent's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Sanitized components relative to the destination folder: `[name, dirs.., file]` for a
    /// multi-file torrent, `[name]` for a single file. Unique among non-padding files.
    pub path: Vec<String>,
    /// Length in bytes (may be zero).
    pub length: u64,
    /// Byte offset of the file in the torrent's concatenated data.
    pub offset: u64,
    /// BEP 47 padding file (attribute `p`): counted in the piece layout, never created on disk.
    pub padding: bool,
}

/// Why bytes are not a usable v1 torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetainfoError {
    /// Not valid bencode.
    Bencode(DecodeError),
    /// The file is bencode but not a dictionary.
    NotADictionary,
    /// No `info` key.
    MissingInfo,
    /// `info` is not a dictionary.
    InfoNotADictionary,
    /// A BitTorrent v2 torrent without v1 `pieces`.
    V2Only,
    /// No integer `piece length`.
    MissingPieceLength,
    /// `piece length` is zero.
    ZeroPieceLength,
    /// `piece length` is negative.
    NegativePieceLength(i64),
    /// `piece length` is above [`MAX_PIECE_LENGTH`].
    PieceLengthTooLarge(i64),
    /// No `name` string.
    MissingName,
    /// Neither `length` (single file) nor a `files` list.
    MissingLength,
    /// A single-file torrent whose `length` is negative.
    NegativeLength(i64),
    /// An empty `files` list.
    NoFiles,
    /// Entry `index` of `files` is not a dictionary.
    FileNotADictionary {
        /// Position in `files`.
        index: usize,
    },
    /// Entry `index` of `files` has no integer `length`.
    FileWithoutLength {
        /// Position in `files`.
        index: usize,
    },
    /// Entry `index` of `files` has a negative `length`.
    NegativeFileLength {
        /// Position in `files`.
        index: usize,
        /// The length found.
        length: i64,
    },
    /// Entry `index` of `files` has no `path` list or an empty one.
    FileWithoutPath {
        /// Position in `files`.
        index: usize,
    },
    /// The file lengths add up to more than 2^63 - 1 bytes.
    LengthOverflow,
    /// The files add up to zero bytes.
    EmptyTorrent,
    /// No `pieces` string.
    MissingPieces,
    /// `pieces` is not a whole number of 20-byte hashes.
    PiecesNotMultipleOf20 {
        /// Length of `pieces` in bytes.
        len: usize,
    },
    /// More than [`MAX_PIECES`] pieces.
    TooManyPieces {
        /// Number of hashes in `pieces`.
        count: usize,
    },
    /// The number of hashes does not match the total length divided by the piece length.
    PieceCountMismatch {
        /// Pieces implied by the total length.
        expected: u64,
        /// Hashes present in `pieces`.
        found: usize,
    },
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MetainfoError::*;
        match self {
            Bencode(e) => write!(f, "not a torrent file: {e}"),
            NotADictionary => f.write_str("not a torrent file: the top level is not a dictionary"),
            MissingInfo => f.write_str("invalid torrent: no `info` dictionary"),
            InfoNotADictionary => f.write_str("invalid torrent: `info` is not a dictionary"),
            V2Only => f.write_str(
                "v2-only torrents are not supported (no v1 `pieces`); use a v1 or hybrid torrent",
            ),
            MissingPieceLength => {
                f.write_str("invalid torrent: `piece length` is missing or not an integer")
            }
            ZeroPieceLength => f.write_str("invalid torrent: `piece length` is 0"),
            NegativePieceLength(n) => {
                write!(f, "invalid torrent: `piece length` is negative ({n})")
            }
            PieceLengthTooLarge(n) => write!(
                f,
                "invalid torrent: `piece length` {n} is larger than the supported {MAX_PIECE_LENGTH}"
            ),
            MissingName => f.write_str("invalid torrent: `name` is missing"),
            MissingLength => {
                f.write_str("invalid torrent: `info` has neither `length` nor a `files` list")
            }
            NegativeLength(n) => write!(f, "invalid torrent: `length` is negative ({n})"),
            NoFiles => f.write_str("invalid torrent: the `files` list is empty"),
            FileNotADictionary { index } => {
                write!(f, "invalid torrent: file #{index} is not a dictionary")
            }
            FileWithoutLength { index } => {
                write!(f, "invalid torrent: file #{index} has no length")
            }
            NegativeFileLength { index, length } => write!(
                f,
                "invalid torrent: file #{index} has a negative length ({length})"
            ),
            FileWithoutPath { index } => write!(f, "invalid torrent: file #{index} has no path"),
            LengthOverflow => {
                f.write_str("invalid torrent: the file lengths add up to more than 2^63 bytes")
            }
            EmptyTorrent => f.write_str("invalid torrent: its files hold no data (total length 0)"),
            MissingPieces => f.write_str("invalid torrent: `pieces` is missing"),
            PiecesNotMultipleOf20 { len } => write!(
                f,
                "invalid torrent: `pieces` is {len} bytes, not a multiple of 20"
            ),
            TooManyPieces { count } => write!(
                f,
                "invalid torrent: {count} pieces, more than the supported {MAX_PIECES}"
            ),
            PieceCountMismatch { expected, found } => write!(
                f,
                "invalid torrent: {found} piece hashes but the total length needs {expected}"
            ),
        }
    }
}

impl std::error::Error for MetainfoError {}

impl From<DecodeError> for MetainfoError {
    fn from(e: DecodeError) -> Self {
        MetainfoError::Bencode(e)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The string under `key`, preferring `key.utf-8` when it is a non-empty string (as libtorrent).
fn utf8_preferred<'a>(d: &Dict<'a>, key: &str) -> Option<&'a [u8]> {
    let utf8_key = format!("{key}.utf-8");
    d.get_bytes(utf8_key.as_bytes())
        .filter(|b| !b.is_empty())
        .or_else(|| d.get_bytes(key.as_bytes()))
}

fn url(v: &Value<'_>) -> Option<String> {
    let s = lossy(v.as_bytes()?);
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl Metainfo {
    /// Parses and validates a `.torrent` file. Bytes after the top-level dictionary are ignored,
    /// as libtorrent does.
    pub fn from_bytes(data: &[u8]) -> Result<Metainfo, MetainfoError> {
        let (root, _) = bencode::decode_prefix(data)?;
        let root = root.as_dict().ok_or(MetainfoError::NotADictionary)?;
        let info = root
            .get(b"info")
            .ok_or(MetainfoError::MissingInfo)?
            .as_dict()
            .ok_or(MetainfoError::InfoNotADictionary)?;
        let info_hash = InfoHash::of(info.raw());
        let info = Info::from_dict(info, &info_hash)?;

        let mut trackers: Vec<Vec<String>> = root
            .get_list(b"announce-list")
            .map(|tiers| {
                tiers
                    .iter()
                    .filter_map(Value::as_list)
                    .map(|tier| tier.iter().filter_map(url).collect::<Vec<_>>())
                    .filter(|tier| !tier.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if trackers.is_empty()
            && let Some(announce) = root.get(b"announce").and_then(url)
        {
            trackers.push(vec![announce]);
        }
        let url_list = match root.get(b"url-list") {
            Some(Value::List(l)) => l.iter().filter_map(url).collect(),
            Some(v) => url(v).into_iter().collect(),
            None => Vec::new(),
        };
        Ok(Metainfo {
            info_hash,
            info,
            trackers,
            url_list,
            creation_date: root.get_int(b"creation date"),
            comment: utf8_preferred(root, "comment").map(lossy),
            created_by: root.get_bytes(b"created by").map(lossy),
        })
    }
}

impl Info {
    fn from_dict(d: &Dict<'_>, info_hash: &InfoHash) -> Result<Info, MetainfoError> {
        use MetainfoError::*;
        if d.get_int(b"meta version") == Some(2) && d.get(b"pieces").is_none() {
            return Err(V2Only);
        }
        let piece_length = match d.get_int(b"piece length") {
            None => return Err(MissingPieceLength),
            Some(0) => return Err(ZeroPieceLength),
            Some(n) if n < 0 => return Err(NegativePieceLength(n)),
            Some(n) if n.unsigned_abs() > MAX_PIECE_LENGTH => return Err(PieceLengthTooLarge(n)),
            Some(n) => n.unsigned_abs(),
        };
        let raw_name = utf8_preferred(d, "name").ok_or(MissingName)?;
        // libtorrent falls back to the info-hash too; it cannot escape the folder and is unique.
        let name = path::sanitize_component(raw_name).unwrap_or_else(|| info_hash.to_hex());

        let mut files = Vec::new();
        let mut total: u64 = 0;
        let multi_file = match d.get_list(b"files") {
            Some(list) => {
                if list.is_empty() {
                    return Err(NoFiles);
                }
                files.reserve(list.len());
                for (index, entry) in list.iter().enumerate() {
                    let entry = entry.as_dict().ok_or(FileNotADictionary { index })?;
                    let length = match entry.get_int(b"length") {
                        None => return Err(FileWithoutLength { index }),
                        Some(n) if n < 0 => return Err(NegativeFileLength { index, length: n }),
                        Some(n) => n.unsigned_abs(),
                    };
                    let components = entry
                        .get_list(b"path.utf-8")
                        .filter(|l| !l.is_empty())
                        .or_else(|| entry.get_list(b"path"))
                        .filter(|l| !l.is_empty())
                        .ok_or(FileWithoutPath { index })?;
                    let mut path = Vec::with_capacity(components.len() + 1);
                    path.push(name.clone());
                    path.extend(
                        components
                            .iter()
                            .filter_map(Value::as_bytes)
                            .filter_map(path::sanitize_component),
                    );
                    if path.len() == 1 {
                        // Every component was `..`, `.` or empty: keep the file under a safe name.
                        path.push("_".to_string());
                    }
                    let padding = entry.get_bytes(b"attr").is_some_and(|a| a.contains(&b'p'));
                    files.push(FileEntry {
                        path,
                        length,
                        offset: total,
                        padding,
                    });
                    total = add_length(total, length)?;
                }
                true
            }
            None => {
                let length = match d.get_int(b"length") {
                    None => return Err(MissingLength),
                    Some(n) if n < 0 => return Err(NegativeLength(n)),
                    Some(n) => n.unsigned_abs(),
                };
                files.push(FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    padding: false,
                });
                total = length;
                false
            }
        };
        if total == 0 {
            return Err(EmptyTorrent);
        }

        let pieces = d.get_bytes(b"pieces").ok_or(MissingPieces)?;
        if pieces.len() % 20 != 0 {
            return Err(PiecesNotMultipleOf20 { len: pieces.len() });
        }
        let count = pieces.len() / 20;
        if count > MAX_PIECES as usize {
            return Err(TooManyPieces { count });
        }
        let expected = total.div_ceil(piece_length);
        if expected != count as u64 {
            return Err(PieceCountMismatch {
                expected,
                found: count,
            });
        }
        let pieces = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();

        if multi_file {
            let mut paths: Vec<Vec<String>> = files
                .iter_mut()
                .map(|f| std::mem::take(&mut f.path))
                .collect();
            let skip: Vec<bool> = files.iter().map(|f| f.padding).collect();
            path::disambiguate(&mut paths, &skip);
            for (f, p) in files.iter_mut().zip(paths) {
                f.path = p;
            }
        }

        Ok(Info {
            name,
            piece_length,
            pieces,
            files,
            total_length: total,
            private: d.get_int(b"private").is_some_and(|p| p != 0),
            multi_file,
            raw: d.raw().to_vec(),
        })
    }

    /// Number of pieces (at most [`MAX_PIECES`]).
    pub fn piece_count(&self) -> u32 {
        u32::try_from(self.pieces.len()).unwrap_or(u32::MAX)
    }

    /// Bytes in piece `index`: the piece length, less for the last piece; 0 past the end.
    pub fn piece_size(&self, index: u32) -> u64 {
        let start = u64::from(index).saturating_mul(self.piece_length);
        if index >= self.piece_count() || start >= self.total_length {
            return 0;
        }
        (self.total_length - start).min(self.piece_length)
    }

    /// Byte range of piece `index` in the torrent's data (empty past the end).
    pub fn piece_range(&self, index: u32) -> Range<u64> {
        let start = u64::from(index).saturating_mul(self.piece_length);
        let size = self.piece_size(index);
        if size == 0 {
            return 0..0;
        }
        start..start + size
    }

    /// Indices into [`Info::files`] of the files whose bytes overlap piece `index`, to find where
    /// a verified piece is written. Zero-length files strictly inside the piece are included (the
    /// range is contiguous); those at its edges are not. Empty past the last piece.
    pub fn files_in_piece(&self, index: u32) -> Range<usize> {
        let piece = self.piece_range(index);
        if piece.is_empty() {
            return 0..0;
        }
        let first = self
            .files
            .partition_point(|f| f.offset.saturating_add(f.length) <= piece.start);
        let end = self.files.partition_point(|f| f.offset < piece.end);
        first..end.max(first)
    }
}

fn add_length(total: u64, length: u64) -> Result<u64, MetainfoError> {
    total
        .checked_add(length)
        .filter(|t| *t <= i64::MAX as u64)
        .ok_or(MetainfoError::LengthOverflow)
}

#[cfg(test)]
mod tests;
