//! Writing `.torrent` files.

use crate::bencode::Owned;

/// Everything needed to write a v1 `.torrent` file; used by `kp-torrent create`, tests and
/// simulations. Build one with struct syntax and `..Default::default()`.
///
/// `files` holds `(path, length)` pairs in torrent order. A single-file torrent is one entry whose
/// path is empty (`vec![(vec![], len)]`): the file is then named `name`. Otherwise the paths are
/// relative to the torrent's folder, which is named `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TorrentSpec {
    /// The file name (single file) or folder name (multi-file).
    pub name: String,
    /// Bytes per piece.
    pub piece_length: u64,
    /// `(path components, length)` of each file; see the type's doc for single-file torrents.
    pub files: Vec<(Vec<String>, u64)>,
    /// SHA-1 of each piece of the files' concatenated data (see [`hash_pieces`]).
    pub piece_hashes: Vec<[u8; 20]>,
    /// Tracker tiers (BEP 12); the first URL also becomes `announce`.
    pub trackers: Vec<Vec<String>>,
    /// BEP 27 private flag.
    pub private: bool,
    /// `comment`.
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
    /// `creation date`, seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    /// Web seed URLs (`url-list`).
    pub url_list: Vec<String>,
}

fn int(n: u64) -> Owned {
    Owned::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl TorrentSpec {
    /// True when this describes a single-file torrent (one file with an empty path).
    pub fn is_single_file(&self) -> bool {
        matches!(self.files.as_slice(), [(path, _)] if path.is_empty())
    }

    /// The `info` dictionary in canonical bencode; its SHA-1 is the info-hash.
    pub fn info_bytes(&self) -> Vec<u8> {
        self.info().encode()
    }

    fn info(&self) -> Owned {
        let mut info: Vec<(&str, Owned)> = vec![
            ("name", Owned::bytes(&self.name)),
            ("piece length", int(self.piece_length)),
            ("pieces", Owned::Bytes(self.piece_hashes.concat())),
        ];
        if self.is_single_file() {
            let length = self.files.first().map_or(0, |(_, l)| *l);
            info.push(("length", int(length)));
        } else {
            let files = self
                .files
                .iter()
                .map(|(path, length)| {
                    [
                        ("length", int(*length)),
                        ("path", Owned::List(path.iter().map(Owned::bytes).collect())),
                    ]
                    .into_iter()
                    .collect()
                })
                .collect();
            info.push(("files", Owned::List(files)));
        }
        if self.private {
            info.push(("private", Owned::Int(1)));
        }
        info.into_iter().collect()
    }

    /// The whole `.torrent` file in canonical bencode.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut root: Vec<(&str, Owned)> = vec![("info", self.info())];
        let urls: Vec<&String> = self.trackers.iter().flatten().collect();
        if let Some(first) = urls.first() {
            root.push(("announce", Owned::bytes(first)));
        }
        if urls.len() > 1 {
            let tiers = self
                .trackers
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| Owned::List(t.iter().map(Owned::bytes).collect()))
                .collect();
            root.push(("announce-list", Owned::List(tiers)));
        }
        if !self.url_list.is_empty() {
            let urls = self.url_list.iter().map(Owned::bytes).collect();
            root.push(("url-list", Owned::List(urls)));
        }
        if let Some(c) = &self.comment {
            root.push(("comment", Owned::bytes(c)));
        }
        if let Some(c) = &self.created_by {
            root.push(("created by", Owned::bytes(c)));
        }
        if let Some(d) = self.creation_date {
            root.push(("creation date", Owned::Int(d)));
        }
        root.into_iter().collect::<Owned>().encode()
    }
}

/// A piece length for `total_length` bytes: a power of two from 16 KiB to 16 MiB giving at most
/// about 2,000 pieces (so between 1,000 and 2,000 unless a bound is reached).
pub fn auto_piece_length(total_length: u64) -> u64 {
    const MIN: u64 = 16 * 1024;
    const MAX: u64 = 16 * 1024 * 1024;
    let mut p = MIN;
    while p < MAX && total_length.div_ceil(p) > 2000 {
        p *= 2;
    }
    p
}

/// SHA-1 of each `piece_length` chunk of `data` (the last may be short), for content held in
/// memory: tests and simulations. The driver hashes files itself.
///
/// # Panics
/// If `piece_length` is 0 or does not fit in `usize`.
pub fn hash_pieces(data: &[u8], piece_length: u64) -> Vec<[u8; 20]> {
    use sha1::Digest;
    let chunk = usize::try_from(piece_length).expect("piece length fits in usize");
    assert!(chunk > 0, "piece length must be positive");
    data.chunks(chunk)
        .map(|c| sha1::Sha1::digest(c).into())
        .collect()
}

/// A `.torrent` file around an info dictionary fetched from peers (BEP 9), kept byte for byte so
/// its SHA-1 stays the info-hash, with `tiers` as `announce` and `announce-list` (the magnet
/// link's trackers).
pub fn torrent_file_from_info(info: &[u8], tiers: &[Vec<String>]) -> Vec<u8> {
    let mut root: Vec<(&str, Owned)> = Vec::new();
    let urls: Vec<&String> = tiers.iter().flatten().collect();
    if let Some(first) = urls.first() {
        root.push(("announce", Owned::bytes(first)));
    }
    if urls.len() > 1 {
        let list = tiers
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| Owned::List(t.iter().map(Owned::bytes).collect()))
            .collect();
        root.push(("announce-list", Owned::List(list)));
    }
    let mut out = root.into_iter().collect::<Owned>().encode();
    // `info` sorts after both `announce` keys: it goes last, before the dictionary's end.
    out.pop();
    out.extend_from_slice(b"4:info");
    out.extend_from_slice(info);
    out.push(b'e');
    out
}
