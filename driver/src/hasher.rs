//! SHA-1 piece hashes of a list of files read back to back, as `create` needs them.
//!
//! A reader thread fills large buffers sequentially, crossing file boundaries as the torrent's
//! piece layout does, while the calling thread hashes the previous buffer: disk and SHA-1 overlap,
//! so hashing runs at the speed of the slower of the two. Buffers are recycled, so memory stays at
//! a few buffers whatever the size of the data.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use sha1::{Digest, Sha1};

/// Bytes read per buffer: large enough that a read is one long sequential request.
const BUFFER_SIZE: usize = 4 << 20;
/// Buffers in flight between the reader and the hasher (one being read, one being hashed, one spare).
const BUFFERS: usize = 3;

/// One file of the torrent, in the torrent's order, with the size it had when it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Where to read it.
    pub path: PathBuf,
    /// How many bytes it holds; the file must still hold exactly this many when it is read.
    pub length: u64,
}

/// Why hashing stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum HashError {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
    /// The file's size changed between listing and reading it.
    Changed {
        /// The file.
        path: PathBuf,
        /// Its size when listed.
        expected: u64,
        /// Its size when read.
        found: u64,
    },
}

impl HashError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            HashError::Io { path, .. } | HashError::Changed { path, .. } => path,
        }
    }
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::Io { error, .. } => {
                write!(f, "cannot read: {}", crate::cmd::io_reason(error))
            }
            HashError::Changed {
                expected, found, ..
            } => write!(
                f,
                "changed while it was being hashed ({expected} bytes when listed, now {found}); try again"
            ),
        }
    }
}

impl std::error::Error for HashError {}

/// Hashes `files` as one stream cut into pieces of `piece_length` bytes (the last piece may be
/// shorter) and returns one SHA-1 per piece.
///
/// `progress` is called from the calling thread with the number of bytes hashed so far, after
/// every buffer.
///
/// # Panics
/// When `piece_length` is zero.
pub fn hash_pieces(
    files: &[SourceFile],
    piece_length: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<[u8; 20]>, HashError> {
    assert!(piece_length > 0, "piece length must be positive");
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Vec<u8>, HashError>>(BUFFERS);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        // Cannot fail: the channel has room for every buffer and its receiver is alive.
        let _ = empty_tx.send(Vec::with_capacity(BUFFER_SIZE));
    }
    // `move`: when hashing stops early, dropping the channels ends the reader before the join.
    thread::scope(move |scope| {
        scope.spawn(move || read_files(files, &full_tx, &empty_rx));

        let mut hashes = Vec::new();
        let mut hasher = Sha1::new();
        let mut in_piece: u64 = 0;
        let mut done: u64 = 0;
        // The reader ends the stream by dropping its sender, after the last buffer or an error.
        for message in full_rx.iter() {
            let buffer = message?;
            let mut rest = &buffer[..];
            while !rest.is_empty() {
                let room = piece_length - in_piece;
                let take = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                let (now, later) = rest.split_at(take);
                hasher.update(now);
                in_piece += take as u64;
                rest = later;
                if in_piece == piece_length {
                    hashes.push(hasher.finalize_reset().into());
                    in_piece = 0;
                }
            }
            done += buffer.len() as u64;
            progress(done);
            // The reader may have finished and dropped its receiver: then the buffer is just freed.
            let _ = empty_tx.send(buffer);
        }
        if in_piece > 0 {
            hashes.push(hasher.finalize().into());
        }
        Ok(hashes)
    })
}

/// The reader thread: fills recycled buffers from the files in order and sends them on.
fn read_files(
    files: &[SourceFile],
    full: &mpsc::SyncSender<Result<Vec<u8>, HashError>>,
    empty: &mpsc::Receiver<Vec<u8>>,
) {
    let Ok(mut buffer) = empty.recv() else { return };
    buffer.clear();
    for file in files {
        if let Err(e) = read_one(file, &mut buffer, full, empty) {
            let _ = full.send(Err(e));
            return;
        }
    }
    if !buffer.is_empty() {
        let _ = full.send(Ok(buffer));
    }
}

/// Appends `file`'s bytes to the stream, sending each buffer as it fills.
fn read_one(
    file: &SourceFile,
    buffer: &mut Vec<u8>,
    full: &mpsc::SyncSender<Result<Vec<u8>, HashError>>,
    empty: &mpsc::Receiver<Vec<u8>>,
) -> Result<(), HashError> {
    let io_error = |error| HashError::Io {
        path: file.path.clone(),
        error,
    };
    let mut handle = File::open(&file.path).map_err(io_error)?;
    let mut left = file.length;
    while left > 0 {
        if buffer.len() == BUFFER_SIZE {
            let Ok(next) = empty.recv() else {
                // The hasher stopped; nobody wants more data.
                return Ok(());
            };
            let filled = std::mem::replace(buffer, next);
            buffer.clear();
            if full.send(Ok(filled)).is_err() {
                return Ok(());
            }
        }
        let start = buffer.len();
        let want = (BUFFER_SIZE - start).min(usize::try_from(left).unwrap_or(usize::MAX));
        buffer.resize(start + want, 0);
        match handle.read(&mut buffer[start..]) {
            Ok(0) => {
                buffer.truncate(start);
                return Err(HashError::Changed {
                    path: file.path.clone(),
                    expected: file.length,
                    found: file.length - left,
                });
            }
            Ok(n) => {
                buffer.truncate(start + n);
                left -= n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buffer.truncate(start),
            Err(e) => return Err(io_error(e)),
        }
    }
    // A file that grew would hash only its listed prefix: the torrent would not match the data.
    let now = handle.metadata().map_err(io_error)?.len();
    if now != file.length {
        return Err(HashError::Changed {
            path: file.path.clone(),
            expected: file.length,
            found: now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(label: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("kp-hasher-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// Deterministic, non-repeating-per-piece content.
    fn content(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ salt)
            .collect()
    }

    fn write_files(dir: &Path, sizes: &[usize]) -> (Vec<SourceFile>, Vec<u8>) {
        let mut all = Vec::new();
        let mut files = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let data = content(size, i as u8);
            let path = dir.join(format!("f{i}"));
            std::fs::write(&path, &data).unwrap();
            all.extend_from_slice(&data);
            files.push(SourceFile {
                path,
                length: size as u64,
            });
        }
        (files, all)
    }

    fn expected(all: &[u8], piece_length: usize) -> Vec<[u8; 20]> {
        all.chunks(piece_length)
            .map(|c| Sha1::digest(c).into())
            .collect()
    }

    #[test]
    fn pieces_span_file_boundaries_and_buffers() {
        let dir = temp_dir("span");
        // Sizes straddle the buffer size and piece boundaries; one file is empty.
        let sizes = [BUFFER_SIZE + 12_345, 0, 7, 3 * 16384 + 1, BUFFER_SIZE - 1];
        let (files, all) = write_files(&dir.0, &sizes);
        for piece_length in [16384usize, 1 << 20, 8 << 20] {
            let mut last = 0;
            let hashes = hash_pieces(&files, piece_length as u64, &mut |n| last = n).unwrap();
            assert_eq!(
                hashes,
                expected(&all, piece_length),
                "piece length {piece_length}"
            );
            assert_eq!(last, all.len() as u64);
        }
    }

    #[test]
    fn missing_file_and_changed_size_are_errors() {
        let dir = temp_dir("errors");
        let (mut files, _) = write_files(&dir.0, &[100, 200]);
        files[1].length = 300;
        match hash_pieces(&files, 16384, &mut |_| {}) {
            Err(HashError::Changed {
                expected: 300,
                found: 200,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        files[1].length = 150;
        match hash_pieces(&files, 16384, &mut |_| {}) {
            Err(HashError::Changed {
                expected: 150,
                found: 200,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        files[0].path = dir.0.join("absent");
        let err = hash_pieces(&files, 16384, &mut |_| {}).unwrap_err();
        assert_eq!(err.path(), dir.0.join("absent"));
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
