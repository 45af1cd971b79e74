//! A torrent's data on disk: the files under a folder, addressed as (piece, offset) ranges.
//!
//! [`Layout`] says where every byte of the torrent sits: files in torrent order, each at an offset
//! in the concatenated data. [`Storage`] maps a block of a piece onto the files it spans and does
//! positional reads and writes (`pread`/`pwrite`), so several worker threads share one open file
//! without seeking. Open files are kept in a small LRU cache: a torrent with 10,000 files costs at
//! most [`DEFAULT_OPEN_FILES`] descriptors (plus one per worker for a file being used while it is
//! evicted).
//!
//! Padding files (BEP 47) are never created: reads of them give zeros, writes to them are dropped.
//!
//! Every file path is joined under the chosen folder only after each component was checked to be
//! a plain name, a last defence behind the metainfo's own sanitizing. The check is on names
//! only: a symbolic link the user placed inside the folder is followed.
//!
//! A [`Storage`] for downloading is made in two steps: [`Storage::new`] only computes paths (so
//! the resume plan can look at the files as they were), then [`Storage::allocate`] creates the
//! missing files at their final size as sparse files.
//!
//! A file deleted (or moved away) while we download is an error, [`StorageError::Deleted`], not
//! something to paper over: its verified pieces are gone, and writing on into an open descriptor
//! of an unlinked file would "finish" a download that is nowhere on disk. After `allocate`, a
//! download never creates a file again, and a write checks at most once every
//! [`LIVENESS_EVERY`] that the open file is still the one at its path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kp_torrent_core::metainfo::Info;
use sha1::{Digest, Sha1};

/// Open files kept by default: far below the usual descriptor limit, enough for the files a
/// swarm touches at once.
pub const DEFAULT_OPEN_FILES: usize = 128;

/// Bytes read at a time while hashing a piece, so a large piece never needs one large buffer.
const HASH_CHUNK: usize = 1 << 20;

/// How often a write looks whether its open file is still the one at its path (two `stat`s): a
/// file deleted while we download is noticed this long after at most, at no cost per block.
pub const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// After this many bytes written, the writeback of every file written since the last flush is
/// started, and what was written back by then is dropped from the page cache (see
/// [`Storage::write_run`]).
pub const WRITEBACK_EVERY: u64 = 64 << 20;

/// One file of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutFile {
    /// Path components relative to the destination folder; the first is the torrent's name.
    pub path: Vec<String>,
    /// Length in bytes (may be zero).
    pub length: u64,
    /// Offset of the file in the torrent's concatenated data.
    pub offset: u64,
    /// A BEP 47 padding file: part of the piece layout, never on disk.
    pub padding: bool,
}

/// Where each byte of a torrent lives: the piece size and the files in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    name: String,
    multi_file: bool,
    piece_length: u64,
    total_length: u64,
    piece_count: u32,
    files: Vec<LayoutFile>,
}

impl Layout {
    /// Builds a layout from `(path, length, padding)` in torrent order; offsets are computed.
    /// Returns `None` for a zero piece length, no data, too many pieces or an overflowing length.
    /// Use [`Layout::from_info`] for a parsed torrent; this one is for tests and tools.
    pub fn new(
        name: &str,
        multi_file: bool,
        piece_length: u64,
        files: impl IntoIterator<Item = (Vec<String>, u64, bool)>,
    ) -> Option<Layout> {
        let mut total: u64 = 0;
        let mut out = Vec::new();
        for (path, length, padding) in files {
            out.push(LayoutFile {
                path,
                length,
                offset: total,
                padding,
            });
            total = total
                .checked_add(length)
                .filter(|t| *t <= i64::MAX as u64)?;
        }
        if piece_length == 0 || total == 0 {
            return None;
        }
        let piece_count = u32::try_from(total.div_ceil(piece_length)).ok()?;
        Some(Layout {
            name: name.to_string(),
            multi_file,
            piece_length,
            total_length: total,
            piece_count,
            files: out,
        })
    }

    /// The layout of a parsed torrent (already validated by the metainfo parser).
    pub fn from_info(info: &Info) -> Layout {
        Layout {
            name: info.name.clone(),
            multi_file: info.multi_file,
            piece_length: info.piece_length,
            total_length: info.total_length,
            piece_count: info.piece_count(),
            files: info
                .files
                .iter()
                .map(|f| LayoutFile {
                    path: f.path.clone(),
                    length: f.length,
                    offset: f.offset,
                    padding: f.padding,
                })
                .collect(),
        }
    }

    /// The torrent's name: the single file's name, or the top folder of a multi-file torrent.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the torrent is a folder of files.
    pub fn multi_file(&self) -> bool {
        self.multi_file
    }

    /// Bytes per piece (every piece but the last).
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    /// Bytes of data in the torrent, padding included.
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Files in torrent order, padding included.
    pub fn files(&self) -> &[LayoutFile] {
        &self.files
    }

    /// Bytes in piece `piece`: the piece length, less for the last piece, 0 past the end.
    pub fn piece_size(&self, piece: u32) -> u64 {
        let start = u64::from(piece).saturating_mul(self.piece_length);
        if piece >= self.piece_count {
            return 0;
        }
        self.total_length
            .saturating_sub(start)
            .min(self.piece_length)
    }

    /// The pieces that hold at least one byte of file `index` (empty for a zero-length file):
    /// what must be re-checked when that file changed behind our back.
    pub fn pieces_of_file(&self, index: usize) -> Range<u32> {
        match self.files.get(index) {
            Some(f) if f.length > 0 => {
                let first = f.offset / self.piece_length;
                let end = (f.offset + f.length).div_ceil(self.piece_length);
                // Both fit: end <= piece_count, a u32.
                first as u32..end as u32
            }
            _ => 0..0,
        }
    }

    /// Offset in the torrent's data of `length` bytes at `begin` in `piece`, when the block lies
    /// inside the piece.
    fn block_offset(&self, piece: u32, begin: u32, length: usize) -> Option<u64> {
        let end = u64::from(begin).checked_add(length as u64)?;
        (piece < self.piece_count && end <= self.piece_size(piece))
            .then(|| u64::from(piece) * self.piece_length + u64::from(begin))
    }

    /// Zeroes the bytes of the block `data` at `begin` in `piece` that fall in padding files:
    /// the bytes a read gives back after a write of `data` (writes drop padding). Does nothing to
    /// a block outside the piece.
    pub fn zero_padding(&self, piece: u32, begin: u32, data: &mut [u8]) {
        let Some(start) = self.block_offset(piece, begin, data.len()) else {
            return;
        };
        let _ = self.for_each_span(start, data.len(), |index, _, range| {
            if self.files[index].padding {
                data[range].fill(0);
            }
            Ok::<(), ()>(())
        });
    }

    /// Calls `f(file index, offset in file, range of the buffer)` for each file piece of the
    /// data range `start..start + len`, in order; zero-length files are skipped.
    fn for_each_span<E>(
        &self,
        start: u64,
        len: usize,
        mut f: impl FnMut(usize, u64, Range<usize>) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = start + len as u64;
        let mut index = self
            .files
            .partition_point(|file| file.offset + file.length <= start);
        let mut pos = start;
        while pos < end {
            let Some(file) = self.files.get(index) else {
                break;
            };
            let file_end = file.offset + file.length;
            if file_end > pos {
                let n = file_end.min(end) - pos;
                let at = (pos - start) as usize;
                f(index, pos - file.offset, at..at + n as usize)?;
                pos += n;
            }
            index += 1;
        }
        Ok(())
    }
}

/// Where a torrent's files are, and whether we may write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Download into this folder: files go to `DIR/<name>` (single file) or `DIR/<name>/...`.
    Download(PathBuf),
    /// Seed existing data, opened read-only. For a single-file torrent `PATH` is the file itself
    /// (any name), or a folder holding `<name>`. For a multi-file torrent `PATH` is the folder
    /// holding the `<name>` folder when `PATH/<name>` is a folder, else the torrent's folder
    /// itself (so both `-s downloads` and `-s downloads/<name>` work).
    Seed(PathBuf),
}

/// What a storage operation was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Creating a folder or file.
    Create,
    /// Opening a file.
    Open,
    /// Reading.
    Read,
    /// Writing.
    Write,
    /// Setting a file's size.
    Resize,
    /// Reserving a file's disk space.
    Reserve,
    /// Flushing to the device.
    Sync,
    /// Looking at a file's size and time.
    Stat,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Open => "open",
            Action::Read => "read",
            Action::Write => "write",
            Action::Resize => "resize",
            Action::Reserve => "reserve space for",
            Action::Sync => "flush",
            Action::Stat => "look at",
        }
    }
}

/// Why a storage operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StorageError {
    /// The operating system refused an operation on a file.
    Io {
        /// What we were doing.
        action: Action,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// A file's path is not a plain relative path (`..`, `/`, an empty name): never joined.
    UnsafePath(String),
    /// Something that must be a regular file is a folder or a device.
    NotAFile(PathBuf),
    /// The storage was opened read-only (seeding) and a write was asked.
    ReadOnly,
    /// A file of the download was deleted or moved away while we were downloading into it.
    Deleted(PathBuf),
    /// A block outside its piece, or a piece past the end.
    OutOfRange {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Length of the block.
        length: usize,
    },
}

impl StorageError {
    fn io(action: Action, path: &Path, error: io::Error) -> StorageError {
        StorageError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }

    /// True when the device is full: the download should stop cleanly and stay resumable.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { error, .. }
            if matches!(error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The caller adds what to do (free space, run again): it knows what is kept.
            StorageError::Io {
                action: Action::Reserve,
                path,
                ..
            } if self.is_disk_full() => write!(
                f,
                "no space left on the device for the whole of {}",
                path.display()
            ),
            StorageError::Io { path, .. } if self.is_disk_full() => {
                write!(f, "no space left on the device writing {}", path.display())
            }
            StorageError::Io {
                action: Action::Read,
                path,
                error,
            } if error.kind() == io::ErrorKind::UnexpectedEof => write!(
                f,
                "cannot read {}: the file is shorter than the torrent says",
                path.display()
            ),
            StorageError::Io {
                action,
                path,
                error,
            } => write!(f, "cannot {} {}: {error}", action.verb(), path.display()),
            StorageError::UnsafePath(p) => {
                write!(f, "refusing the file path {p:?}: it would leave the folder")
            }
            StorageError::NotAFile(p) => write!(f, "{} is not a regular file", p.display()),
            StorageError::ReadOnly => f.write_str("the data is open read-only (seeding)"),
            StorageError::Deleted(p) => write!(
                f,
                "{} was deleted or moved during the download: run again to fetch it anew",
                p.display()
            ),
            StorageError::OutOfRange {
                piece,
                begin,
                length,
            } => write!(
                f,
                "block of {length} bytes at {begin} is outside piece {piece}"
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Open files, least recently used evicted first. An evicted file closes once the last thread
/// using it lets go of its `Arc`.
#[derive(Debug)]
struct FileCache {
    cap: usize,
    open: HashMap<usize, CachedFile>,
    by_use: BTreeMap<u64, usize>,
    tick: u64,
}

#[derive(Debug)]
struct CachedFile {
    file: Arc<File>,
    used: u64,
    /// When a write should next look whether the file is still at its path.
    check_at: Instant,
}

impl FileCache {
    /// The open file, and whether its liveness check is due (then the next one is scheduled).
    fn get(&mut self, index: usize, now: Instant) -> Option<(Arc<File>, bool)> {
        self.tick += 1;
        let entry = self.open.get_mut(&index)?;
        self.by_use.remove(&entry.used);
        entry.used = self.tick;
        self.by_use.insert(self.tick, index);
        let due = now >= entry.check_at;
        if due {
            entry.check_at = now + LIVENESS_EVERY;
        }
        Some((entry.file.clone(), due))
    }

    /// The open file `index`, if it is open, without counting it as used.
    fn peek(&self, index: usize) -> Option<Arc<File>> {
        self.open.get(&index).map(|c| c.file.clone())
    }

    fn insert(&mut self, index: usize, file: Arc<File>, now: Instant) {
        while self.open.len() >= self.cap {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.open.remove(&oldest);
        }
        self.tick += 1;
        self.by_use.insert(self.tick, index);
        self.open.insert(
            index,
            CachedFile {
                file,
                used: self.tick,
                check_at: now + LIVENESS_EVERY,
            },
        );
    }

    fn remove(&mut self, index: usize) {
        if let Some(entry) = self.open.remove(&index) {
            self.by_use.remove(&entry.used);
        }
    }
}

/// A torrent's files on disk; shared by the disk workers behind an `Arc`.
#[derive(Debug)]
pub struct Storage {
    layout: Layout,
    /// One path per file; padding files get an empty path that is never used.
    paths: Vec<PathBuf>,
    writable: bool,
    cache: Mutex<FileCache>,
    /// Files written since the last [`Storage::flush`].
    dirty: Mutex<BTreeSet<usize>>,
    /// One lock per file, held for each write to it: the kernel lets one write into a file at a
    /// time anyway (the inode's lock), but a second writer waits for it by spinning on a CPU for
    /// as long as the first one copies. Waiting here sleeps instead.
    writing: Vec<Mutex<()>>,
    /// Bytes written since the writeback was last started.
    unstarted: AtomicU64,
}

/// Reserves the first `len` bytes of `file` on the device (Linux `fallocate`, which also makes
/// the file at least that long). `Ok` too where the filesystem cannot reserve space (the file
/// stays as it was: sparse).
#[cfg(target_os = "linux")]
fn reserve(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    for _ in 0..16 {
        // SAFETY: `fallocate` takes a descriptor and three integers and touches no memory of
        // ours; `file` keeps the descriptor open for the call.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(()),
            _ => return Err(e),
        }
    }
    Err(io::ErrorKind::Interrupted.into())
}

/// The parts of `blocks`, taken as one run of bytes, that fall in `range` of it.
fn slices_within<'a>(blocks: &[&'a [u8]], range: Range<usize>) -> Vec<IoSlice<'a>> {
    let mut slices = Vec::new();
    let mut at = 0;
    for &block in blocks {
        let (lo, hi) = (range.start.max(at), range.end.min(at + block.len()));
        if lo < hi {
            slices.push(IoSlice::new(&block[lo - at..hi - at]));
        }
        at += block.len();
    }
    slices
}

/// Writes all of `bufs` at `offset` in `file`, with as few `pwritev` calls as the kernel allows.
#[cfg(target_os = "linux")]
fn write_all_vectored_at(
    file: &File,
    mut bufs: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // At most IOV_MAX (1024 on Linux) slices a call; the rest go in the next.
        let count = bufs.len().min(1024) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it), and the
        // `count` slices at `bufs` stay borrowed, so valid, for the call; `pwritev` only reads
        // them. `file` keeps the descriptor open for the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                count,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut bufs, n as usize);
    }
    Ok(())
}

/// Drops the pages of `file` that are clean from the page cache (`posix_fadvise` with
/// `POSIX_FADV_DONTNEED`: pages still dirty or being written back stay), then starts writing
/// the dirty ones back to the device without waiting for it (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`), both over the whole file. Only hints: a failure is left for the
/// next `fdatasync` to report.
#[cfg(target_os = "linux")]
fn write_back_and_drop_behind(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: both calls take a descriptor and integers and touch no memory of ours; `file`
    // keeps the descriptor open for them.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Elsewhere the kernel writes back and keeps pages on its own schedule.
#[cfg(not(target_os = "linux"))]
fn write_back_and_drop_behind(_file: &File) {}

/// Elsewhere each slice is its own positioned write.
#[cfg(not(target_os = "linux"))]
fn write_all_vectored_at(file: &File, bufs: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    for b in bufs.iter() {
        file.write_all_at(b, offset)?;
        offset += b.len() as u64;
    }
    Ok(())
}

/// Elsewhere files stay sparse.
#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _len: u64) -> io::Result<()> {
    Ok(())
}

/// Locks a mutex, carrying on after a panicking holder: the guarded data stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True for a single plain name: not empty, `.`, `..`, absolute, or holding a separator or NUL.
fn is_plain_component(c: &str) -> bool {
    let mut parts = Path::new(c).components();
    matches!(parts.next(), Some(Component::Normal(n)) if n == c)
        && parts.next().is_none()
        && !c.contains(['/', '\0'])
}

fn join_checked(base: &Path, components: &[String]) -> Result<PathBuf, StorageError> {
    if components.is_empty() || !components.iter().all(|c| is_plain_component(c)) {
        return Err(StorageError::UnsafePath(components.join("/")));
    }
    let mut p = base.to_path_buf();
    p.extend(components);
    Ok(p)
}

impl Storage {
    /// Computes every file's path under `location` without touching the disk (seeding looks at
    /// `PATH` to decide how to read it). Fails on an unsafe path. Keeps at most `open_files`
    /// files open (at least 1).
    pub fn new(
        layout: Layout,
        location: Location,
        open_files: usize,
    ) -> Result<Storage, StorageError> {
        let (base, skip_name, writable) = match &location {
            Location::Download(dir) => (dir.clone(), false, true),
            Location::Seed(path) if !layout.multi_file => {
                if path.is_dir() {
                    (path.clone(), false, false)
                } else {
                    // The file itself, whatever its name: its parent holds it under its own name.
                    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    let parent = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                    let mut layout_paths = Vec::new();
                    for f in &layout.files {
                        let mut comps = f.path.clone();
                        if let (Some(first), Some(name)) = (comps.first_mut(), &file_name) {
                            *first = name.clone();
                        }
                        layout_paths.push(comps);
                    }
                    return Storage::with_paths(layout, &parent, layout_paths, false, open_files);
                }
            }
            Location::Seed(path) => (path.clone(), !path.join(&layout.name).is_dir(), false),
        };
        let comps: Vec<Vec<String>> = layout
            .files
            .iter()
            .map(|f| {
                let skip = usize::from(skip_name && f.path.len() > 1);
                f.path.get(skip..).unwrap_or_default().to_vec()
            })
            .collect();
        Storage::with_paths(layout, &base, comps, writable, open_files)
    }

    fn with_paths(
        layout: Layout,
        base: &Path,
        comps: Vec<Vec<String>>,
        writable: bool,
        open_files: usize,
    ) -> Result<Storage, StorageError> {
        let layout_files = layout.files.len();
        let mut paths = Vec::with_capacity(layout_files);
        for (f, c) in layout.files.iter().zip(&comps) {
            paths.push(if f.padding {
                PathBuf::new()
            } else {
                join_checked(base, c)?
            });
        }
        Ok(Storage {
            layout,
            paths,
            writable,
            cache: Mutex::new(FileCache {
                cap: open_files.max(1),
                open: HashMap::new(),
                by_use: BTreeMap::new(),
                tick: 0,
            }),
            dirty: Mutex::new(BTreeSet::new()),
            writing: (0..layout_files).map(|_| Mutex::new(())).collect(),
            unstarted: AtomicU64::new(0),
        })
    }

    /// The torrent's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where file `index` lives on disk (`None` for padding files and past the end).
    pub fn path(&self, index: usize) -> Option<&Path> {
        let f = self.layout.files.get(index)?;
        (!f.padding).then(|| self.paths[index].as_path())
    }

    /// True when writes are allowed (downloading, not seeding).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Creates folders and every non-padding file at its final size as a sparse file; files that
    /// already have the right size are left alone (a wrong size is corrected). Call once at
    /// start, after the resume plan looked at the files. Does nothing when seeding.
    pub fn allocate(&self) -> Result<(), StorageError> {
        self.create_files(&|_| false)
    }

    /// Like [`Storage::allocate`], and reserves the disk space of every file it creates or
    /// resizes whose index `wanted` accepts (`fallocate`; the others stay sparse: files left out
    /// of a download cost nothing), so a full disk shows at the start, not half way through,
    /// and writes need no block allocation of their own. Where the filesystem cannot reserve,
    /// the file stays sparse. A file whose space cannot be had is put back to its old size, and
    /// the error [`StorageError::is_disk_full`].
    pub fn preallocate(&self, wanted: &dyn Fn(usize) -> bool) -> Result<(), StorageError> {
        self.create_files(wanted)
    }

    fn create_files(&self, reserve_space: &dyn Fn(usize) -> bool) -> Result<(), StorageError> {
        if !self.writable {
            return Ok(());
        }
        let mut made: Option<&Path> = None;
        for (index, (f, path)) in self.layout.files.iter().zip(&self.paths).enumerate() {
            if f.padding {
                continue;
            }
            if let Some(parent) = path.parent()
                && made != Some(parent)
            {
                fs::create_dir_all(parent)
                    .map_err(|e| StorageError::io(Action::Create, parent, e))?;
                made = Some(parent);
            }
            let old_len = match fs::metadata(path) {
                Ok(m) if !m.is_file() => return Err(StorageError::NotAFile(path.clone())),
                Ok(m) if m.len() == f.length => continue,
                Ok(m) => m.len(),
                Err(_) => 0,
            };
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| StorageError::io(Action::Create, path, e))?;
            if reserve_space(index)
                && let Err(e) = reserve(&file, f.length)
            {
                // Give back what was reserved before the device ran out.
                let _ = file.set_len(old_len.min(f.length));
                return Err(StorageError::io(Action::Reserve, path, e));
            }
            file.set_len(f.length)
                .map_err(|e| StorageError::io(Action::Resize, path, e))?;
        }
        Ok(())
    }

    /// Files open right now (at most the cache's size).
    pub fn open_files(&self) -> usize {
        lock(&self.cache).open.len()
    }

    fn file(&self, index: usize) -> Result<Arc<File>, StorageError> {
        self.cached_file(index).map(|(file, _)| file)
    }

    /// The open file `index`, and whether a liveness check is due for it (see [`Self::live_file`]).
    fn cached_file(&self, index: usize) -> Result<(Arc<File>, bool), StorageError> {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if let Some(found) = cache.get(index, now) {
            return Ok(found);
        }
        let path = &self.paths[index];
        // Never created here: `allocate` made every file, so a missing one was deleted while we
        // run. Creating it again would lose its verified pieces without anyone noticing.
        let file = if self.writable {
            OpenOptions::new().read(true).write(true).open(path)
        } else {
            File::open(path)
        }
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if self.writable => StorageError::Deleted(path.clone()),
            _ => StorageError::io(Action::Open, path, e),
        })?;
        let file = Arc::new(file);
        cache.insert(index, file.clone(), now);
        // Just opened through its path: nothing to check.
        Ok((file, false))
    }

    /// The open file `index` for a write, after looking (at most once every [`LIVENESS_EVERY`])
    /// that it is still the file at its path: not unlinked, not replaced, not moved away.
    fn live_file(&self, index: usize) -> Result<Arc<File>, StorageError> {
        let (file, due) = self.cached_file(index)?;
        if !due {
            return Ok(file);
        }
        let path = &self.paths[index];
        let open = file
            .metadata()
            .map_err(|e| StorageError::io(Action::Stat, path, e))?;
        let same = match fs::metadata(path) {
            Ok(at_path) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StorageError::io(Action::Stat, path, e)),
        };
        if same && open.nlink() > 0 {
            return Ok(file);
        }
        lock(&self.cache).remove(index);
        Err(StorageError::Deleted(path.clone()))
    }

    /// Reads `buf.len()` bytes at `begin` in `piece`. Padding reads as zeros.
    pub fn read(&self, piece: u32, begin: u32, buf: &mut [u8]) -> Result<(), StorageError> {
        let start =
            self.layout
                .block_offset(piece, begin, buf.len())
                .ok_or(StorageError::OutOfRange {
                    piece,
                    begin,
                    length: buf.len(),
                })?;
        self.read_at(start, buf)
    }

    fn read_at(&self, start: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.layout
            .for_each_span(start, buf.len(), |index, at, range| {
                let dst = &mut buf[range];
                if self.layout.files[index].padding {
                    dst.fill(0);
                    return Ok(());
                }
                let path = &self.paths[index];
                self.file(index)?
                    .read_exact_at(dst, at)
                    .map_err(|e| StorageError::io(Action::Read, path, e))
            })
    }

    /// Writes blocks that follow each other from `begin` in `piece` (each begins where the one
    /// before ends) with one vectored write per file they touch instead of one write per block:
    /// the same bytes as [`Storage::write`] of each block in turn. Bytes that fall in padding
    /// files are dropped.
    ///
    /// Every [`WRITEBACK_EVERY`] bytes, the writeback of the files written since the last flush
    /// is started (not waited for), and their pages already written back, by then those of the
    /// interval before, are dropped from the page cache. The kernel on its own keeps a
    /// download's data dirty until a tenth of memory is dirty or 30 s have passed, so the final
    /// flush would write it all at once, inside the download's time (0.34 s of 1 GiB here); and
    /// it keeps every page written, so a big download grows the page cache into memory that,
    /// on a virtual machine, may cost far more to touch the first time than to reuse (4 GiB
    /// here: 13 s and 16 CPU s when kept, 4.8 s and 5.5 CPU s when dropped behind). A download
    /// is written once and read back rarely; pages read (to seed, to hash) are cached as usual
    /// until the next drop.
    pub fn write_run(&self, piece: u32, begin: u32, blocks: &[&[u8]]) -> Result<(), StorageError> {
        if !self.writable {
            return Err(StorageError::ReadOnly);
        }
        let len: usize = blocks.iter().map(|b| b.len()).sum();
        let start =
            self.layout
                .block_offset(piece, begin, len)
                .ok_or(StorageError::OutOfRange {
                    piece,
                    begin,
                    length: len,
                })?;
        self.written(len as u64);
        self.layout.for_each_span(start, len, |index, at, range| {
            if self.layout.files[index].padding {
                return Ok(());
            }
            let path = &self.paths[index];
            let file = self.live_file(index)?;
            let mut slices = slices_within(blocks, range);
            let _one_writer = lock(&self.writing[index]);
            write_all_vectored_at(&file, &mut slices, at)
                .map_err(|e| StorageError::io(Action::Write, path, e))?;
            lock(&self.dirty).insert(index);
            Ok(())
        })
    }

    /// Writes `data` at `begin` in `piece`. Bytes that fall in padding files are dropped.
    pub fn write(&self, piece: u32, begin: u32, data: &[u8]) -> Result<(), StorageError> {
        self.write_run(piece, begin, &[data])
    }

    /// Counts `len` bytes about to be written; every [`WRITEBACK_EVERY`] bytes, drops what was
    /// written back of the files written since the last flush and starts the writeback of the
    /// rest.
    fn written(&self, len: u64) {
        let before = self.unstarted.fetch_add(len, Ordering::Relaxed);
        if before + len < WRITEBACK_EVERY {
            return;
        }
        // Two workers passing the mark at once may both start it: harmless, as is a count lost.
        self.unstarted.store(0, Ordering::Relaxed);
        let dirty: Vec<usize> = lock(&self.dirty).iter().copied().collect();
        // Only files still open: an evicted one is not opened again for this (the next flush
        // writes it).
        let open: Vec<Arc<File>> = {
            let cache = lock(&self.cache);
            dirty.iter().filter_map(|&i| cache.peek(i)).collect()
        };
        for file in open {
            write_back_and_drop_behind(&file);
        }
    }

    /// Reads piece `piece` and returns its SHA-1, reading at most 1 MiB at a time.
    pub fn hash_piece(&self, piece: u32) -> Result<[u8; 20], StorageError> {
        let size = self.layout.piece_size(piece);
        if size == 0 {
            return Err(StorageError::OutOfRange {
                piece,
                begin: 0,
                length: 0,
            });
        }
        let start = u64::from(piece) * self.layout.piece_length;
        let mut hasher = Sha1::new();
        let mut buf = vec![0u8; HASH_CHUNK.min(size as usize)];
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(buf.len() as u64) as usize;
            self.read_at(start + done, &mut buf[..n])?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        Ok(hasher.finalize().into())
    }

    /// Looks that every file of a download is still where it was made: not deleted, moved away or
    /// replaced (a replacement is not the file we wrote). Call when the download is complete,
    /// before saying so: a file finished early is never written again, so no write notices when
    /// it goes. Returns the first file that is gone as [`StorageError::Deleted`]. Does nothing
    /// when seeding. One `stat` per file, two for a file open in the cache.
    pub fn check_files(&self) -> Result<(), StorageError> {
        if !self.writable {
            return Ok(());
        }
        for (index, (f, path)) in self.layout.files.iter().zip(&self.paths).enumerate() {
            if f.padding {
                continue;
            }
            let at_path = match fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::Deleted(path.clone()));
                }
                Err(e) => return Err(StorageError::io(Action::Stat, path, e)),
            };
            let open = lock(&self.cache).peek(index);
            if let Some(open) = open {
                let open = open
                    .metadata()
                    .map_err(|e| StorageError::io(Action::Stat, path, e))?;
                if open.dev() != at_path.dev() || open.ino() != at_path.ino() {
                    return Err(StorageError::Deleted(path.clone()));
                }
            }
        }
        Ok(())
    }

    /// Flushes every file written since the last call to the device (`fdatasync`), so pieces
    /// written before this call survive a crash of the machine, not only of the process.
    pub fn flush(&self) -> Result<(), StorageError> {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        for (n, &index) in dirty.iter().enumerate() {
            let path = &self.paths[index];
            let synced = self.file(index).and_then(|f| {
                f.sync_data()
                    .map_err(|e| StorageError::io(Action::Sync, path, e))
            });
            if let Err(e) = synced {
                // Keep the files not flushed yet for the next try.
                lock(&self.dirty).extend(dirty.iter().skip(n));
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
