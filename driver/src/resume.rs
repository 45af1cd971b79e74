//! The resume file on disk: where it lives, reading it at start and writing it atomically.
//!
//! It lives at `<dest>/.kp-torrent/<info-hash hex>.resume` ([`resume_path`]), beside the data it
//! describes, so two downloads of one torrent into two folders never share one. Its format and
//! the start-up verdict (which pieces to trust, which to hash) are the core's
//! ([`kp_torrent_core::resume`]); this module only reads files and their stamps ([`read_start`])
//! and writes the file ([`save`]).
//!
//! Crash safety: [`save`] first flushes every written file to the device, then looks at the files'
//! sizes and times, then writes the resume file atomically (temporary file, `fsync`, rename,
//! `fsync` of the folder). The loop passes a snapshot of pieces that were verified after all their
//! blocks were written, so every piece in a saved bitfield is on the device. After a `kill -9`
//! the files written since the last save have a newer time, so the core re-checks exactly the
//! pieces touching them: at most the pieces in flight are lost.
//!
//! At start: [`Storage::new`], then [`read_start`] (it must see the files before
//! [`Storage::allocate`] creates them), then `allocate`, then the stamps and the resume bytes go
//! to the task as its `Start` input.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::resume::{FileStamp, ResumeData};

use crate::storage::{Storage, StorageError};

/// Where the resume file of torrent `info_hash` downloading into `dest` lives.
pub fn resume_path(dest: &Path, info_hash: &InfoHash) -> PathBuf {
    dest.join(".kp-torrent")
        .join(format!("{}.resume", info_hash.to_hex()))
}

fn stamp(path: &Path) -> io::Result<FileStamp> {
    let m = fs::metadata(path)?;
    Ok(FileStamp {
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
    // A file we cannot look at gets a stamp that matches nothing, so it is re-checked.
    let files: Vec<FileStamp> = (0..layout.files().len())
        .map(|i| {
            storage
                .path(i)
                .and_then(|p| stamp(p).ok())
                .unwrap_or(FileStamp {
                    size: u64::MAX,
                    ..FileStamp::default()
                })
        })
        .collect();
    let out = ResumeData::encode(&snapshot.info_hash, &snapshot.have, &files);
    write_atomically(path, &out)
}

/// Writes `bytes` to `path` (in the `.kp-torrent` folder, made if missing) through a temporary
/// file and a rename, so a reader sees the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ResumeError> {
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

/// What is on disk at start, for the task's `Start` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    /// Each file's stamp now (`None`: missing, or not a file we can look at).
    pub files: Vec<Option<FileStamp>>,
    /// The resume file's bytes, if there is one we could read.
    pub resume: Option<Vec<u8>>,
}

/// Reads the resume file at `path` (if any) and stamps the files as they are now. Call before
/// [`Storage::allocate`]. Never fails: an unreadable resume file is logged and left out.
pub fn read_start(path: Option<&Path>, storage: &Storage) -> OnDisk {
    let files = (0..storage.layout().files().len())
        .map(|i| storage.path(i).and_then(|p| stamp(p).ok()))
        .collect();
    let resume = path.and_then(|path| match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("ignoring resume file {}: {e}", path.display());
            None
        }
    });
    OnDisk { files, resume }
}

/// The core's view of a layout's torrent (piece hashes left zero), for tests of the plan.
#[cfg(test)]
pub(crate) fn test_torrent(
    layout: &crate::storage::Layout,
    info_hash: &InfoHash,
) -> kp_torrent_core::session::Torrent {
    use kp_torrent_core::session::{FileSpan, Torrent};
    Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: *info_hash,
        piece_length: layout.piece_length(),
        total_length: layout.total_length(),
        piece_hashes: vec![[0; 20]; layout.piece_count() as usize],
        files: layout
            .files()
            .iter()
            .map(|f| FileSpan {
                offset: f.offset,
                length: f.length,
                padding: f.padding,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
