//! Resume data and the start-up verdict: which pieces count before any peer is asked.
//!
//! The driver stores resume data beside the download (it owns the files) and, at start, hands
//! the core two facts: the bytes of the resume file, if there is one, and each file's
//! [`FileStamp`] as it is now. [`plan`] turns them into a [`StartPlan`]: pieces the resume data
//! vouches for in files unchanged since it was written, and pieces to hash before trusting them.
//! The [`TorrentTask`](crate::torrent::TorrentTask) runs that plan; the driver only reads files.
//!
//! Format (version 1): the 8 bytes `KPRESUME`, the SHA-1 of the rest, then a bencoded dictionary
//! `{version, info-hash, pieces, have, files: [[size, mtime seconds, mtime nanoseconds], ..]}` with
//! one entry per file of the torrent (padding files as `[0, 0, 0]`). A file that is truncated,
//! corrupt, of another version or for another torrent is ignored with a reason, never trusted.

use core::fmt;

use sha1::{Digest, Sha1};

use crate::bencode::{self, Owned};
use crate::bitfield::Bitfield;
use crate::id::InfoHash;
use crate::session::Torrent;

const MAGIC: &[u8; 8] = b"KPRESUME";
const VERSION: i64 = 1;

/// A file's size and modification time, to notice it changed while we were not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: i64,
}

/// Why resume data was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeError {
    /// It does not start with the resume magic.
    NotResumeData,
    /// It is shorter than its checksum.
    Truncated,
    /// Its checksum does not match (truncated or corrupt).
    Checksum,
    /// It decodes but is not what we write; the text says what is off.
    Corrupt(&'static str),
    /// Written by a format version we do not read.
    Version(Option<i64>),
    /// Written for another torrent.
    OtherTorrent,
    /// Written for the same info-hash but another piece or file count.
    Shape,
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeError::NotResumeData => f.write_str("not a kp-torrent resume file"),
            ResumeError::Truncated => f.write_str("truncated"),
            ResumeError::Checksum => f.write_str("checksum mismatch (truncated or corrupt)"),
            ResumeError::Corrupt(what) => write!(f, "corrupt: {what}"),
            ResumeError::Version(v) => write!(f, "unsupported version {v:?}"),
            ResumeError::OtherTorrent => f.write_str("written for another torrent"),
            ResumeError::Shape => f.write_str("piece or file count differs from the torrent"),
        }
    }
}

impl std::error::Error for ResumeError {}

/// Decoded resume data: the verified pieces and the files' stamps when they were saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeData {
    /// Pieces verified (and flushed) when the data was saved.
    pub have: Bitfield,
    /// One stamp per file of the torrent.
    pub files: Vec<FileStamp>,
}

impl ResumeData {
    /// The bytes of a resume file for `info_hash` (stamps of padding files are ignored on read).
    pub fn encode(info_hash: &InfoHash, have: &Bitfield, files: &[FileStamp]) -> Vec<u8> {
        let files = files
            .iter()
            .map(|s| {
                Owned::List(vec![
                    Owned::Int(i64::try_from(s.size).unwrap_or(-1)),
                    Owned::Int(s.mtime),
                    Owned::Int(s.mtime_nsec),
                ])
            })
            .collect();
        let body: Owned = [
            ("version", Owned::Int(VERSION)),
            ("info-hash", Owned::bytes(info_hash.0)),
            ("pieces", Owned::Int(i64::from(have.len()))),
            ("have", Owned::bytes(have.as_bytes())),
            ("files", Owned::List(files)),
        ]
        .into_iter()
        .collect();
        let body = body.encode();
        let mut out = Vec::with_capacity(28 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&Sha1::digest(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Reads resume data written for `torrent`; anything else is an error saying why.
    pub fn decode(bytes: &[u8], torrent: &Torrent) -> Result<ResumeData, ResumeError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(ResumeError::NotResumeData)?;
        let (sum, body) = rest.split_at_checked(20).ok_or(ResumeError::Truncated)?;
        if Sha1::digest(body)[..] != sum[..] {
            return Err(ResumeError::Checksum);
        }
        let value = bencode::decode(body).map_err(|_| ResumeError::Corrupt("bad bencode"))?;
        let d = value
            .as_dict()
            .ok_or(ResumeError::Corrupt("not a dictionary"))?;
        match d.get_int(b"version") {
            Some(VERSION) => {}
            v => return Err(ResumeError::Version(v)),
        }
        if d.get_bytes(b"info-hash") != Some(&torrent.info_hash.0[..]) {
            return Err(ResumeError::OtherTorrent);
        }
        let count = torrent.piece_count();
        if d.get_int(b"pieces") != Some(i64::from(count)) {
            return Err(ResumeError::Shape);
        }
        let have = Bitfield::from_bytes(d.get_bytes(b"have").unwrap_or_default(), count)
            .map_err(|_| ResumeError::Corrupt("bitfield"))?;
        let list = d
            .get_list(b"files")
            .ok_or(ResumeError::Corrupt("no file list"))?;
        if list.len() != torrent.files.len() {
            return Err(ResumeError::Shape);
        }
        let files = list
            .iter()
            .map(|v| {
                let l = v.as_list()?;
                let [size, mtime, mtime_nsec] = l.items() else {
                    return None;
                };
                Some(FileStamp {
                    size: u64::try_from(size.as_int()?).ok()?,
                    mtime: mtime.as_int()?,
                    mtime_nsec: mtime_nsec.as_int()?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(ResumeError::Corrupt("file entry"))?;
        Ok(ResumeData { have, files })
    }
}

/// What is known at start: pieces to trust and pieces to hash before trusting them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// Pieces the resume data vouches for, in files unchanged since it was written.
    pub have: Bitfield,
    /// Pieces to hash: those touching a file that changed (all existing data when there is no
    /// usable resume data). Pieces touching a missing file are in neither set: they are fetched.
    pub check: Bitfield,
}

/// The pieces holding bytes of file `i` (none for an empty file).
fn pieces_of_file(torrent: &Torrent, i: usize) -> core::ops::Range<u32> {
    match torrent.files.get(i) {
        Some(f) if f.length > 0 && torrent.piece_length > 0 => {
            let first = f.offset / torrent.piece_length;
            let last = (f.offset + f.length - 1) / torrent.piece_length;
            first as u32..last as u32 + 1
        }
        _ => 0..0,
    }
}

/// Compares saved resume data (if usable) with the files as they are now (`None`: missing).
pub fn plan(torrent: &Torrent, saved: Option<&ResumeData>, now: &[Option<FileStamp>]) -> StartPlan {
    let count = torrent.piece_count();
    let mut missing = Bitfield::new(count);
    let mut changed = Bitfield::new(count);
    for (i, file) in torrent.files.iter().enumerate() {
        if file.padding {
            continue;
        }
        let stamp = now.get(i).copied().flatten();
        let (set, differs) = match (saved, stamp) {
            (_, None) => (&mut missing, true),
            (Some(s), Some(now)) => (
                &mut changed,
                s.files.get(i) != Some(&now) || now.size != file.length,
            ),
            (None, Some(_)) => (&mut changed, false),
        };
        if differs {
            for p in pieces_of_file(torrent, i) {
                set.set(p);
            }
        }
    }
    let mut have = Bitfield::new(count);
    let mut check = Bitfield::new(count);
    for p in 0..count {
        if missing.get(p) {
            // Missing data cannot verify: these pieces are fetched, not hashed.
            continue;
        }
        let set = match saved {
            None => &mut check,
            Some(_) if changed.get(p) => &mut check,
            Some(s) if s.have.get(p) => &mut have,
            Some(_) => continue,
        };
        set.set(p);
    }
    StartPlan { have, check }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::FileSpan;

    fn torrent() -> Torrent {
        // Two files of 3 and 5 bytes, pieces of 4: file 0 is in piece 0, file 1 in pieces 0 and 1.
        Torrent {
            private: false,
            metadata: Vec::new(),
            info_hash: InfoHash([7; 20]),
            piece_length: 4,
            total_length: 8,
            piece_hashes: vec![[0; 20]; 2],
            files: vec![
                FileSpan {
                    offset: 0,
                    length: 3,
                    padding: false,
                },
                FileSpan {
                    offset: 3,
                    length: 5,
                    padding: false,
                },
            ],
        }
    }

    fn stamp(size: u64, mtime: i64) -> FileStamp {
        FileStamp {
            size,
            mtime,
            mtime_nsec: 0,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let t = torrent();
        let mut have = Bitfield::new(2);
        have.set(1);
        let stamps = [stamp(3, 10), stamp(5, 11)];
        let bytes = ResumeData::encode(&t.info_hash, &have, &stamps);
        let d = ResumeData::decode(&bytes, &t).unwrap();
        assert_eq!(d.have, have);
        assert_eq!(d.files, stamps);

        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(ResumeData::decode(&flipped, &t), Err(ResumeError::Checksum));
        assert_eq!(
            ResumeData::decode(&bytes[..20], &t),
            Err(ResumeError::Truncated)
        );
        assert_eq!(
            ResumeData::decode(b"junk", &t),
            Err(ResumeError::NotResumeData)
        );
        let other = Torrent {
            info_hash: InfoHash([8; 20]),
            ..t.clone()
        };
        assert_eq!(
            ResumeData::decode(&bytes, &other),
            Err(ResumeError::OtherTorrent)
        );
        let one_file = Torrent {
            files: vec![FileSpan {
                offset: 0,
                length: 8,
                padding: false,
            }],
            ..t
        };
        assert_eq!(
            ResumeData::decode(&bytes, &one_file),
            Err(ResumeError::Shape)
        );
    }

    #[test]
    fn plan_trusts_unchanged_files_only() {
        let t = torrent();
        let mut saved_have = Bitfield::new(2);
        saved_have.set(0);
        saved_have.set(1);
        let saved = ResumeData {
            have: saved_have,
            files: vec![stamp(3, 10), stamp(5, 11)],
        };
        // Nothing changed: everything trusted, nothing hashed.
        let p = plan(&t, Some(&saved), &[Some(stamp(3, 10)), Some(stamp(5, 11))]);
        assert_eq!((p.have.count(), p.check.count()), (2, 0));
        // File 0 touched: piece 0 (which it shares with file 1) is hashed, piece 1 trusted.
        let p = plan(&t, Some(&saved), &[Some(stamp(3, 99)), Some(stamp(5, 11))]);
        assert!(p.check.get(0) && !p.check.get(1) && p.have.get(1) && !p.have.get(0));
        // File 1 missing: both its pieces are fetched, neither trusted nor hashed.
        let p = plan(&t, Some(&saved), &[Some(stamp(3, 10)), None]);
        assert_eq!((p.have.count(), p.check.count()), (0, 0));
        // No resume data: every piece with data is hashed.
        let p = plan(&t, None, &[Some(stamp(3, 1)), Some(stamp(5, 1))]);
        assert_eq!((p.have.count(), p.check.count()), (0, 2));
        // A file of the wrong size is never trusted, even with a matching stamp.
        let bad = ResumeData {
            files: vec![stamp(3, 10), stamp(4, 11)],
            ..saved
        };
        let p = plan(&t, Some(&bad), &[Some(stamp(3, 10)), Some(stamp(4, 11))]);
        assert!(p.check.get(1) && !p.have.get(1));
    }
}
