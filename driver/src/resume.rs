//! The resume file: which pieces are verified on disk, so a restart skips re-hashing them.
//!
//! It lives at `<dest>/.kp-torrent/<info-hash hex>.resume` ([`resume_path`]), beside the data it
//! describes, so two downloads of one torrent into two folders never share one. It holds the
//! verified-piece bitfield and each file's size and modification time at the moment of saving.
//!
//! Format (version 1): the 8 bytes `KPRESUME`, the SHA-1 of the rest, then a bencoded dictionary
//! `{version, info-hash, pieces, have, files: [[size, mtime seconds, mtime nanoseconds], ..]}` with
//! one entry per file of the layout (padding files as `[0, 0, 0]`). A file that is truncated,
//! corrupt, of another version or for another torrent is ignored with a warning, never trusted.
//!
//! Crash safety: [`save`] first flushes every written file to the device, then looks at the files'
//! sizes and times, then writes the resume file atomically (temporary file, `fsync`, rename,
//! `fsync` of the folder). The loop passes a snapshot of pieces that were verified after all their
//! blocks were written, so every piece in a saved bitfield is on the device. After a `kill -9`
//! the files written since the last save have a newer time, so [`plan`] re-checks exactly the
//! pieces touching them: at most the pieces in flight are lost.
//!
//! At start: [`Storage::new`], then [`plan`] (it must see the files before
//! [`Storage::allocate`] creates them), then `allocate`, then hash the pieces in
//! [`StartPlan::check`] (a [`crate::disk::Job::Check`]) and add the good ones to
//! [`StartPlan::have`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kp_torrent_core::bencode::{self, Owned};
use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::InfoHash;
use sha1::{Digest, Sha1};

use crate::storage::{Storage, StorageError};

const MAGIC: &[u8; 8] = b"KPRESUME";
const VERSION: i64 = 1;

/// Where the resume file of torrent `info_hash` downloading into `dest` lives.
pub fn resume_path(dest: &Path, info_hash: &InfoHash) -> PathBuf {
    dest.join(".kp-torrent")
        .join(format!("{}.resume", info_hash.to_hex()))
}

/// A file's size and modification time, to notice it changed while we were not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    let m = fs::metadata(path)?;
    Ok(Stamp {
        size: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// What the loop hands to [`save`]: a copy of its verified pieces, taken when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Pieces verified after all their blocks were written.
    pub have: Bitfield,
}

/// Why the resume file could not be written.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResumeError {
    /// Flushing the data files failed.
    Storage(StorageError),
    /// Writing the resume file or its folder failed.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// The snapshot's bitfield does not match the torrent.
    WrongPieceCount {
        /// Pieces in the snapshot.
        got: u32,
        /// Pieces in the torrent.
        expected: u32,
    },
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeError::Storage(e) => write!(f, "cannot save resume data: {e}"),
            ResumeError::Io { path, error } => {
                write!(f, "cannot write resume file {}: {error}", path.display())
            }
            ResumeError::WrongPieceCount { got, expected } => write!(
                f,
                "cannot save resume data: {got} pieces given, the torrent has {expected}"
            ),
        }
    }
}

impl std::error::Error for ResumeError {}

/// Flushes the data, then writes the resume file at `path` atomically. Slow (it waits for the
/// device): run it on a disk worker ([`crate::disk::Job::SaveResume`]), not on the loop.
pub fn save(path: &Path, snapshot: &Snapshot, storage: &Storage) -> Result<(), ResumeError> {
    let layout = storage.layout();
    if snapshot.have.len() != layout.piece_count() {
        return Err(ResumeError::WrongPieceCount {
            got: snapshot.have.len(),
            expected: layout.piece_count(),
        });
    }
    storage.flush().map_err(ResumeError::Storage)?;
    let files = (0..layout.files().len())
        .map(|i| {
            // A file we cannot look at gets a stamp that matches nothing, so it is re-checked.
            let s = storage
                .path(i)
                .and_then(|p| stamp(p).ok())
                .unwrap_or_default();
            Owned::List(vec![
                Owned::Int(i64::try_from(s.size).unwrap_or(-1)),
                Owned::Int(s.mtime),
                Owned::Int(s.mtime_nsec),
            ])
        })
        .collect();
    let body: Owned = [
        ("version", Owned::Int(VERSION)),
        ("info-hash", Owned::bytes(snapshot.info_hash.0)),
        ("pieces", Owned::Int(i64::from(layout.piece_count()))),
        ("have", Owned::bytes(snapshot.have.as_bytes())),
        ("files", Owned::List(files)),
    ]
    .into_iter()
    .collect();
    let body = body.encode();
    let mut out = Vec::with_capacity(28 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha1::digest(&body));
    out.extend_from_slice(&body);
    write_atomically(path, &out)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ResumeError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ResumeError::Io { path, error }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    // Only the resume folder itself: a destination deleted during the download is not made
    // again just to hold a resume file about data that is gone.
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(dir)(e)),
        _ => {}
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // A half-written temporary file helps nobody, and on a full disk it holds space.
        let _ = fs::remove_file(&tmp);
        return Err(err(&tmp)(e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(err(path)(e));
    }
    // The rename itself is durable only once the folder is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

/// What is known at start: pieces to trust and pieces to hash before trusting them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// Pieces the resume file vouches for, in files unchanged since it was written.
    pub have: Bitfield,
    /// Pieces to hash: those touching a file that changed (all existing data when there is no
    /// usable resume file). Pieces touching a missing file are in neither set: they are fetched.
    pub check: Bitfield,
    /// Why the resume file was not used, for a warning (`None` when used or absent).
    pub ignored: Option<String>,
}

/// Reads the resume file at `path` (if any) and compares it with the files as they are now.
/// Call before [`Storage::allocate`]. Never fails: an unusable resume file means "check all".
pub fn plan(path: &Path, info_hash: &InfoHash, storage: &Storage) -> StartPlan {
    let layout = storage.layout();
    let count = layout.piece_count();
    let now: Vec<Option<Stamp>> = (0..layout.files().len())
        .map(|i| storage.path(i).and_then(|p| stamp(p).ok()))
        .collect();
    let (saved, ignored) = match fs::read(path) {
        Ok(bytes) => match parse(&bytes, info_hash, count, now.len()) {
            Ok(saved) => (Some(saved), None),
            Err(why) => {
                let why = format!("ignoring resume file {}: {why}", path.display());
                log::warn!("{why}");
                (None, Some(why))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => {
            let why = format!("ignoring resume file {}: {e}", path.display());
            log::warn!("{why}");
            (None, Some(why))
        }
    };

    let mut missing = Bitfield::new(count);
    let mut changed = Bitfield::new(count);
    for (i, file) in layout.files().iter().enumerate() {
        if file.padding {
            continue;
        }
        let (set, differs) = match (&saved, now[i]) {
            (_, None) => (&mut missing, true),
            (Some((_, stamps)), Some(now)) => {
                (&mut changed, stamps[i] != now || now.size != file.length)
            }
            (None, Some(_)) => (&mut changed, false),
        };
        if differs {
            for p in layout.pieces_of_file(i) {
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
        match &saved {
            None => {
                check.set(p);
            }
            Some(_) if changed.get(p) => {
                check.set(p);
            }
            Some((saved_have, _)) if saved_have.get(p) => {
                have.set(p);
            }
            Some(_) => {}
        }
    }
    StartPlan {
        have,
        check,
        ignored,
    }
}

type Saved = (Bitfield, Vec<Stamp>);

fn parse(bytes: &[u8], info_hash: &InfoHash, count: u32, files: usize) -> Result<Saved, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a kp-torrent resume file")?;
    let (sum, body) = rest.split_at_checked(20).ok_or("truncated")?;
    if Sha1::digest(body)[..] != sum[..] {
        return Err("checksum mismatch (truncated or corrupt)".into());
    }
    let value = bencode::decode(body).map_err(|e| format!("corrupt: {e}"))?;
    let d = value.as_dict().ok_or("corrupt: not a dictionary")?;
    match d.get_int(b"version") {
        Some(VERSION) => {}
        v => return Err(format!("unsupported version {v:?}")),
    }
    if d.get_bytes(b"info-hash") != Some(&info_hash.0[..]) {
        return Err("written for another torrent".into());
    }
    if d.get_int(b"pieces") != Some(i64::from(count)) {
        return Err("piece count differs from the torrent".into());
    }
    let have = Bitfield::from_bytes(d.get_bytes(b"have").unwrap_or_default(), count)
        .map_err(|e| format!("corrupt bitfield: {e}"))?;
    let list = d.get_list(b"files").ok_or("corrupt: no file list")?;
    if list.len() != files {
        return Err("file count differs from the torrent".into());
    }
    let stamps = list
        .iter()
        .map(|v| {
            let l = v.as_list()?;
            let [size, mtime, mtime_nsec] = l.items() else {
                return None;
            };
            Some(Stamp {
                size: u64::try_from(size.as_int()?).ok()?,
                mtime: mtime.as_int()?,
                mtime_nsec: mtime_nsec.as_int()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("corrupt file entry")?;
    Ok((have, stamps))
}

#[cfg(test)]
mod tests;
