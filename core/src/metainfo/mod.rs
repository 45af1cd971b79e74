//! Metainfo: reading v1 `.torrent` files (BEP 3) and writing them.
//!
//! [`Metainfo::from_bytes`] validates everything a later stage relies on (the piece count matches
//! the total length, lengths do not overflow, every file path is safe to join under the download
//! folder) and returns a distinct [`MetainfoError`] for each way a torrent can be wrong. The
//! info-hash is the SHA-1 of the `info` dictionary's bytes exactly as they stand in the file.
//! Hybrid v1+v2 torrents load as v1 once their v2 `file tree` is checked to describe the same
//! files; v2-only torrents are refused.
//!
//! What loads follows libtorrent 2.0.8 (checked case by case in `tests/hostile_torrents.rs`): a
//! single file whose `name` is nothing but separators, NULs, `.` or `..` is refused, so is a `path`
//! or `symlink path` holding anything but strings; a padding file needs no `path`. BEP 47 symlinks
//! (attribute `l`) hold no data: their length is ignored, and their target is kept only when it
//! names a file or folder of the torrent. kp-torrent creates no symbolic links: such an entry is
//! an empty file on disk.
//!
//! [`TorrentSpec`] writes a torrent; [`hash_pieces`] and [`auto_piece_length`] help build one.

mod build;
pub mod path;

use std::fmt;
use std::ops::Range;

use crate::bencode::{self, DecodeError, Dict, Value};
use crate::id::InfoHash;

pub use build::{TorrentSpec, auto_piece_length, hash_pieces, torrent_file_from_info};

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
    /// Web seed URLs (BEP 19 `url-list`, a string or a list): only `http` and `https` ones,
    /// without repeats, at most [`MAX_URL_LIST`] of at most [`MAX_WEB_SEED_URL`] bytes each.
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
    /// BEP 47 symlink (attribute `l`): the target as sanitized components from the destination
    /// folder (`[name, ..]`), when it names a file or folder of this torrent; `None` for a plain
    /// file and for a link whose target is missing or unusable. A link holds no data
    /// (its length is 0 whatever the torrent says); kp-torrent creates it as an empty file.
    pub symlink: Option<Vec<String>>,
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
    /// A single-file torrent whose `name` is empty once separators and NULs are removed, or is
    /// `.` or `..`: there is no file name to save it under.
    InvalidName,
    /// Entry `index` of `files` has a `key` list (`path`, `path.utf-8` or `symlink path`) that
    /// holds something other than strings.
    PathNotStrings {
        /// Position in `files`.
        index: usize,
        /// The key whose list is wrong.
        key: &'static str,
    },
    /// A torrent with `meta version` 2 and v1 `pieces` (a hybrid) whose v2 `file tree` is
    /// missing or malformed.
    BadFileTree {
        /// What is wrong with it.
        reason: FileTreeProblem,
    },
    /// A hybrid torrent whose v1 file list and v2 `file tree` describe different files.
    HybridMismatch {
        /// Position in the v1 file list (padding included) where they first differ.
        index: usize,
    },
    /// A `file tree` (v2 keys) without `meta version` 2.
    V2KeysWithoutMetaVersion,
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

/// What is wrong with a hybrid torrent's v2 `file tree`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileTreeProblem {
    /// There is no `file tree` dictionary.
    Missing,
    /// A folder or file entry is not a dictionary.
    NotADictionary,
    /// A file (an entry under the empty key) has no non-negative integer `length`.
    BadLength,
    /// A file's name is empty or the tree holds no file.
    Empty,
}

impl fmt::Display for FileTreeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileTreeProblem::Missing => "it has no `file tree` dictionary",
            FileTreeProblem::NotADictionary => "an entry of its `file tree` is not a dictionary",
            FileTreeProblem::BadLength => "a file of its `file tree` has no valid `length`",
            FileTreeProblem::Empty => "its `file tree` has an empty name or no file",
        })
    }
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
            InvalidName => f.write_str(
                "invalid torrent: its `name` is empty, `.` or `..` once separators are removed, \
                 so the file has no name to be saved under",
            ),
            PathNotStrings { index, key } => write!(
                f,
                "invalid torrent: `{key}` of file #{index} holds something other than strings"
            ),
            BadFileTree { reason } => write!(
                f,
                "invalid hybrid torrent (meta version 2 with v1 pieces): {reason}"
            ),
            HybridMismatch { index } => write!(
                f,
                "invalid hybrid torrent: its v1 file list and v2 file tree disagree at file \
                 #{index}; the torrent was altered or badly made"
            ),
            V2KeysWithoutMetaVersion => f.write_str(
                "invalid torrent: it has a v2 `file tree` but its `meta version` is not 2",
            ),
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

/// Most web seed URLs kept from a torrent's `url-list`.
pub const MAX_URL_LIST: usize = 32;
/// Longest web seed URL kept, in bytes.
pub const MAX_WEB_SEED_URL: usize = 2048;

/// True for a URL a web seed can be: `http://` or `https://` (any case), bounded in length.
pub fn is_web_seed_url(u: &str) -> bool {
    let lower = u.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    u.len() <= MAX_WEB_SEED_URL && (lower.starts_with("http://") || lower.starts_with("https://"))
}

/// The usable web seeds among `urls`: http(s) only, no repeats, at most [`MAX_URL_LIST`].
pub fn web_seed_urls(urls: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        if out.len() == MAX_URL_LIST {
            break;
        }
        if is_web_seed_url(&u) && !out.contains(&u) {
            out.push(u);
        }
    }
    out
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
            Some(Value::List(l)) => web_seed_urls(l.iter().filter_map(url)),
            Some(v) => web_seed_urls(url(v)),
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
        let v2 = d.get_int(b"meta version") == Some(2);
        if !v2 && d.get(b"file tree").is_some() {
            return Err(V2KeysWithoutMetaVersion);
        }
        if v2 && d.get(b"pieces").is_none() {
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
        let file_list = d.get_list(b"files");
        if file_list.is_none() && path::is_void_name(raw_name) {
            // libtorrent refuses these too: a single file needs a name of its own.
            return Err(InvalidName);
        }
        // libtorrent falls back to the info-hash too; it cannot escape the folder and is unique.
        let name = path::sanitize_component(raw_name).unwrap_or_else(|| info_hash.to_hex());

        let mut files = Vec::new();
        let mut total: u64 = 0;
        // Per file: its raw BEP 47 link target (empty when it has none), `None` when not a link.
        let mut links: Vec<Option<Vec<&[u8]>>> = Vec::new();
        let multi_file = match file_list {
            Some(list) => {
                if list.is_empty() {
                    return Err(NoFiles);
                }
                files.reserve(list.len());
                for (index, entry) in list.iter().enumerate() {
                    let entry = entry.as_dict().ok_or(FileNotADictionary { index })?;
                    let attr = entry.get_bytes(b"attr").unwrap_or_default();
                    let padding = attr.contains(&b'p');
                    let is_link = attr.contains(&b'l');
                    let length = match entry.get_int(b"length") {
                        None => return Err(FileWithoutLength { index }),
                        Some(n) if n < 0 => return Err(NegativeFileLength { index, length: n }),
                        // A link holds no data, whatever length the torrent gives it (libtorrent).
                        Some(_) if is_link => 0,
                        Some(n) => n.unsigned_abs(),
                    };
                    // `path.utf-8` wins whenever it is a list, even an empty one (libtorrent).
                    let components = match entry.get(b"path.utf-8") {
                        Some(Value::List(l)) => Some((l, "path.utf-8")),
                        _ => entry.get_list(b"path").map(|l| (l, "path")),
                    };
                    let mut path = Vec::with_capacity(components.map_or(0, |(l, _)| l.len()) + 1);
                    path.push(name.clone());
                    match components {
                        Some((l, key)) if !l.is_empty() => {
                            let raw = strings(l).ok_or(PathNotStrings { index, key })?;
                            path.extend(raw.into_iter().filter_map(path::sanitize_component));
                            if path.len() == 1 {
                                // Every component was `..`, `.` or empty: keep the file under a
                                // safe name.
                                path.push("_".to_string());
                            }
                        }
                        // A padding file is never created, so it needs no path (libtorrent).
                        _ if padding => {
                            path.push(".pad".to_string());
                            path.push(length.to_string());
                        }
                        _ => return Err(FileWithoutPath { index }),
                    }
                    let target = match entry.get(b"symlink path") {
                        Some(Value::List(l)) if is_link => {
                            Some(strings(l).ok_or(PathNotStrings {
                                index,
                                key: "symlink path",
                            })?)
                        }
                        // A link without a usable target: still a link, pointing nowhere.
                        _ if is_link => Some(Vec::new()),
                        _ => None,
                    };
                    links.push(target);
                    files.push(FileEntry {
                        path,
                        length,
                        offset: total,
                        padding,
                        symlink: None,
                    });
                    total = add_length(total, length)?;
                }
                true
            }
            None => {
                let length = match d.get_int(b"length") {
                    None => return Err(MissingLength),
                    Some(n) if n < 0 => return Err(NegativeLength(n)),
                    // A single file that is a link holds nothing: the torrent is empty.
                    Some(_) if d.get_bytes(b"attr").is_some_and(|a| a.contains(&b'l')) => 0,
                    Some(n) => n.unsigned_abs(),
                };
                files.push(FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    padding: false,
                    symlink: None,
                });
                links.push(None);
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

        if d.get_int(b"meta version") == Some(2) {
            check_hybrid(d, &files, &links, multi_file, piece_length)?;
        }
        resolve_links(&mut files, &links);

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

/// The byte strings of `list`, or `None` when it holds anything else.
fn strings<'a>(list: &bencode::List<'a>) -> Option<Vec<&'a [u8]>> {
    list.iter().map(Value::as_bytes).collect()
}

/// Sets [`FileEntry::symlink`] for every link whose target names a file or folder of the
/// torrent (paths as sanitized, before renaming duplicates). As libtorrent 2.0.8 does, `.` and
/// `..` components are dropped, not followed (`d/../a` is `d/a`), so a target can only name
/// something under the torrent's folder; a target with an empty component or one holding a
/// separator, one that names nothing in the torrent, and one that is the link itself stay `None`
/// (libtorrent makes such a link point at itself).
fn resolve_links(files: &mut [FileEntry], links: &[Option<Vec<&[u8]>>]) {
    if links.iter().all(Option::is_none) {
        return;
    }
    let mut known: std::collections::BTreeSet<&[String]> = std::collections::BTreeSet::new();
    for f in files.iter().filter(|f| !f.padding) {
        for k in 2..=f.path.len() {
            known.insert(&f.path[..k]);
        }
    }
    let resolved: Vec<Option<Vec<String>>> = files
        .iter()
        .zip(links)
        .map(|(f, link)| {
            let target = resolve_target(f.path.first()?, link.as_deref()?)?;
            (known.contains(target.as_slice()) && target != f.path).then_some(target)
        })
        .collect();
    for (f, r) in files.iter_mut().zip(resolved) {
        f.symlink = r;
    }
}

fn resolve_target(name: &str, raw: &[&[u8]]) -> Option<Vec<String>> {
    let mut out = vec![name.to_string()];
    for &c in raw {
        match c {
            b"." | b".." => {}
            _ if c.is_empty() || c.contains(&b'/') || c.contains(&b'\\') => return None,
            _ => out.push(path::sanitize_component(c)?),
        }
    }
    (out.len() > 1).then_some(out)
}

/// One file of a v2 `file tree`: sanitized path from the destination folder, length, link.
struct TreeFile {
    path: Vec<String>,
    length: u64,
    link: bool,
}

/// Collects the files of a v2 `file tree` in order; `prefix` is the raw path of `dir`.
fn walk_tree<'a>(
    dir: &Dict<'a>,
    prefix: &mut Vec<&'a [u8]>,
    out: &mut Vec<(Vec<&'a [u8]>, u64, bool)>,
) -> Result<(), FileTreeProblem> {
    for (key, value) in dir.entries() {
        let entry = value.as_dict().ok_or(FileTreeProblem::NotADictionary)?;
        if key.is_empty() {
            if prefix.is_empty() {
                return Err(FileTreeProblem::Empty);
            }
            let link = entry.get_bytes(b"attr").is_some_and(|a| a.contains(&b'l'));
            let length = match entry.get_int(b"length") {
                _ if link => 0,
                Some(n) if n >= 0 => n.unsigned_abs(),
                _ => return Err(FileTreeProblem::BadLength),
            };
            out.push((prefix.clone(), length, link));
        } else {
            prefix.push(key);
            walk_tree(entry, prefix, out)?;
            prefix.pop();
        }
    }
    Ok(())
}

/// The v2 file list of a hybrid torrent, with the padding that aligns each file to a piece.
fn tree_files(
    d: &Dict<'_>,
    name: &str,
    multi_file: bool,
) -> Result<Vec<TreeFile>, FileTreeProblem> {
    let tree = d.get_dict(b"file tree").ok_or(FileTreeProblem::Missing)?;
    let mut raw = Vec::new();
    // The decoder bounds nesting, so this recursion is bounded too.
    walk_tree(tree, &mut Vec::new(), &mut raw)?;
    if raw.is_empty() {
        return Err(FileTreeProblem::Empty);
    }
    let files = raw
        .into_iter()
        .map(|(components, length, link)| {
            let mut path = Vec::with_capacity(components.len() + 1);
            if multi_file {
                path.push(name.to_string());
            }
            path.extend(components.into_iter().filter_map(path::sanitize_component));
            if path.len() == usize::from(multi_file) {
                path.push("_".to_string());
            }
            TreeFile { path, length, link }
        })
        .collect();
    Ok(files)
}

/// Refuses a hybrid torrent whose v2 `file tree` does not describe the v1 files, as libtorrent
/// does: file by file (v1 padding included, where v2 pads every file of a multi-file torrent to a
/// piece boundary), every file with data or a link must have the same path, length and offset.
/// Empty files and padding only have to sit at the same positions; a last padding file is
/// optional.
fn check_hybrid(
    d: &Dict<'_>,
    files: &[FileEntry],
    links: &[Option<Vec<&[u8]>>],
    multi_file: bool,
    piece_length: u64,
) -> Result<(), MetainfoError> {
    let name = files
        .first()
        .and_then(|f| f.path.first())
        .map_or("", String::as_str);
    let tree =
        tree_files(d, name, multi_file).map_err(|reason| MetainfoError::BadFileTree { reason })?;
    // (path, length, offset, relevant) of each v2 entry, padding included.
    let mut v2: Vec<(Option<&[String]>, u64, u64, bool)> = Vec::with_capacity(tree.len() * 2);
    let mut offset = 0u64;
    for f in &tree {
        v2.push((Some(&f.path), f.length, offset, f.length > 0 || f.link));
        offset = offset.saturating_add(f.length);
        let tail = f.length % piece_length;
        if multi_file && tail != 0 {
            v2.push((None, piece_length - tail, offset, false));
            offset = offset.saturating_add(piece_length - tail);
        }
    }
    let mut v1: Vec<(Option<&[String]>, u64, u64, bool)> = files
        .iter()
        .zip(links)
        .map(|(f, link)| {
            let relevant = !f.padding && (f.length > 0 || link.is_some());
            (Some(f.path.as_slice()), f.length, f.offset, relevant)
        })
        .collect();
    if files.last().is_some_and(|f| f.padding) {
        v1.pop();
    }
    if v2.last().is_some_and(|e| e.0.is_none()) {
        v2.pop();
    }
    let first_difference = v1
        .iter()
        .zip(&v2)
        .position(|(a, b)| a.3 != b.3 || (a.3 && (a.0 != b.0 || a.1 != b.1 || a.2 != b.2)));
    match first_difference {
        Some(index) => Err(MetainfoError::HybridMismatch { index }),
        None if v1.len() != v2.len() => Err(MetainfoError::HybridMismatch {
            index: v1.len().min(v2.len()),
        }),
        None => Ok(()),
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
