//! Disk and SHA-1 work off the event loop: one small pool of worker threads for every torrent.
//!
//! Each torrent's [`Storage`] is added with [`DiskPool::add_store`], which names it with a
//! [`StoreId`]. The loop [`DiskPool::submit`]s [`Job`]s for a store; a worker does the I/O,
//! sends a [`Completion`] (tagged with its store) back
//! through a channel and wakes the loop's `mio::Poll` with the [`mio::Waker`] given at
//! construction (once per batch: a worker that finds the loop already woken does not wake it
//! again); jobs [`DiskPool::queue`]d during a turn reach their workers together at
//! [`DiskPool::hand_over`] (one envelope per worker and store). On that wake-up the loop drains
//! [`DiskPool::poll_completion`] until `None` and feeds each completion to the core as an
//! ordinary timestamped input (so traces replay it).
//!
//! Mapping to the core's session: `Action::WriteBlock`, `ReadBlock` and `HashPiece` become
//! [`Job::Write`], [`Job::Read`] and [`Job::Hash`]; [`Completion::Written`], `WriteFailed` (its
//! error's `Display` is the user's message), `Read`, `ReadFailed` and `Hashed` become the inputs
//! of the same names, and [`Completion::HashFailed`] becomes the `HashFailed` input. The start-up
//! check is the core's too: it asks for the pieces to check as ordinary hashes.
//!
//! Ordering: each worker has its own queue, and every job of a piece goes to the same worker
//! (`worker_for`), so a piece's jobs run in submission order, except that a [`Job::Hash`] waits
//! until every [`Job::Write`] to its piece submitted before it has completed (so the hash sees
//! the data; jobs of the piece queued meanwhile may run first). Jobs of different pieces may
//! finish in any order. Resume saves have a worker of their own, so the flush they start never
//! holds up a piece's writes.
//!
//! Writes in runs: a worker takes what waits in its queue (up to 64 envelopes) at once, and
//! writes that follow each other in one piece become one vectored write (`Storage::write_run`,
//! up to 64 blocks); should it fail, each block is written again on its own so every block's
//! completion is exact.
//!
//! Hashing from memory: a worker that has written a block feeds it to a running SHA-1 of its
//! piece ([`RunningHashes`], one per worker, as a piece has one worker), in piece order (a
//! block that arrives early, from another peer say, waits in a small, bounded stash). A
//! [`Job::Hash`] of a piece whose every byte was written exactly once, in full, since its last
//! hash gets that digest without reading the piece back; any other piece
//! (the start-up check, a failed or repeated write, a stash that overflowed) is read back from
//! the files as before. Either way the digest is of the bytes the files hold, and the core
//! compares it with the torrent's: the pool only saves the read.
//!
//! Bounded memory: every submitted job yields exactly one final completion, and the pool counts
//! what is queued on the loop's side (counters change in `submit` and `poll_completion`, both on
//! the loop thread). The loop keeps the queues bounded by looking before it submits:
//! [`DiskPool::queued_read_bytes`] per peer (stop queuing reads for a peer whose send buffer is
//! full or whose reads already exceed a limit) and [`DiskPool::queued_write_bytes`] (stop reading
//! sockets while writes are behind).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kp_torrent_core::id::PeerHandle;
use mio::Waker;
use sha1::{Digest, Sha1};

use crate::resume::{self, ResumeError, Snapshot};
use crate::storage::{Storage, StorageError};

/// Workers for pieces by default (each piece has one: two let one piece be hashed or read back
/// while the next is written); [`DiskPool::new`] adds one more for resume saves.
pub const DEFAULT_WORKERS: usize = 2;

/// A suggested limit for [`DiskPool::queued_write_bytes`]: above it, stop reading from peers.
/// Blocks waiting for the disk are most of a download's memory, so this is small: 4 MiB keeps
/// the peak RSS near 14 MiB where 32 MiB let it reach 42 MiB, at the same rate.
pub const WRITE_BACKLOG_LIMIT: u64 = 4 << 20;

/// A suggested size for one [`Job::Read`]: blocks a peer asked for one after the other are
/// read together up to this many bytes (one `pread`, one job, one completion instead of eight).
pub const READ_RUN_LIMIT: u64 = 128 << 10;

/// Most bytes of blocks written ahead of their piece's running hash, per worker, kept until the
/// blocks before them are written (several peers fill one piece in any order). Past it, the
/// piece is read back to be hashed instead.
pub const EARLY_BLOCK_LIMIT: usize = 1 << 20;

/// Work for the pool.
#[derive(Debug)]
pub enum Job {
    /// Write a received block.
    Write {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// The block.
        data: Vec<u8>,
    },
    /// Read blocks a peer asked for that follow each other in one piece, with one `pread`.
    Read {
        /// The peer to send them to.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece of the first block.
        begin: u32,
        /// The blocks' lengths, in order (the next block begins where one ends).
        lengths: Vec<u32>,
    },
    /// SHA-1 a whole piece (after its writes): from memory when its writes allow it, else read
    /// back (module doc).
    Hash {
        /// Piece index.
        piece: u32,
    },
    /// Flush the data and write the resume file (see [`resume::save`]).
    SaveResume {
        /// The resume file.
        path: PathBuf,
        /// The verified pieces, copied when the loop asked.
        snapshot: Snapshot,
    },
}

/// The result of a [`Job`], carrying what the core needs to match it to its request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Completion {
    /// A block is written.
    Written {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Bytes written.
        length: u32,
    },
    /// A block could not be written.
    WriteFailed {
        /// Piece index.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Bytes not written.
        length: u32,
        /// Why (see [`StorageError::is_disk_full`]).
        error: StorageError,
    },
    /// Blocks are read for `peer`.
    Read {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece of the first block.
        begin: u32,
        /// The blocks' lengths, as asked.
        lengths: Vec<u32>,
        /// The blocks, one after the other.
        data: Vec<u8>,
    },
    /// Blocks could not be read.
    ReadFailed {
        /// The peer that asked.
        peer: PeerHandle,
        /// Piece index.
        piece: u32,
        /// Offset in the piece of the first block.
        begin: u32,
        /// The blocks' lengths, as asked.
        lengths: Vec<u32>,
        /// Why.
        error: StorageError,
    },
    /// A piece's SHA-1 (the core compares it with the torrent's).
    Hashed {
        /// Piece index.
        piece: u32,
        /// Its SHA-1.
        digest: [u8; 20],
    },
    /// A piece could not be read for hashing.
    HashFailed {
        /// Piece index.
        piece: u32,
        /// Why.
        error: StorageError,
    },
    /// The resume file is written.
    ResumeSaved {
        /// The resume file.
        path: PathBuf,
    },
    /// The resume file could not be written.
    ResumeFailed {
        /// The resume file.
        path: PathBuf,
        /// Why.
        error: ResumeError,
    },
}

/// One torrent's storage in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(pub usize);

/// Jobs on their way to a worker, done in order, with the storage they work on.
struct Envelope {
    store: StoreId,
    storage: Arc<Storage>,
    jobs: Vec<Job>,
}

/// The SHA-1 of a piece's blocks written so far, in piece order.
struct Running {
    sha: Sha1,
    /// Bytes of the piece hashed (the next block must begin here).
    next: u32,
    /// Blocks written ahead of `next`, by offset.
    early: BTreeMap<u32, Vec<u8>>,
    /// A write failed, overlapped bytes already hashed or overflowed the stash: read it back.
    broken: bool,
}

/// Running hashes of the pieces one worker writes.
#[derive(Default)]
pub struct RunningHashes {
    inner: Mutex<RunningInner>,
}

#[derive(Default)]
struct RunningInner {
    pieces: BTreeMap<(StoreId, u32), Running>,
    early_bytes: usize,
}

impl RunningHashes {
    fn lock(&self) -> MutexGuard<'_, RunningInner> {
        // A worker that panicked while holding the lock left at worst a piece half-fed; such a
        // piece fails its hash check and is fetched again, so the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of `piece` reached the files (`ok`) or failed to (`!ok`).
    fn written(&self, store: StoreId, piece: u32, begin: u32, data: Vec<u8>, ok: bool) {
        let mut g = self.lock();
        let RunningInner {
            pieces,
            early_bytes,
        } = &mut *g;
        let r = pieces.entry((store, piece)).or_insert_with(|| Running {
            sha: Sha1::new(),
            next: 0,
            early: BTreeMap::new(),
            broken: false,
        });
        if r.broken {
            return;
        }
        let fits = *early_bytes + data.len() <= EARLY_BLOCK_LIMIT;
        if !ok || begin < r.next || r.early.contains_key(&begin) || (begin > r.next && !fits) {
            r.broken = true;
            *early_bytes -= r.early.values().map(Vec::len).sum::<usize>();
            r.early.clear();
            return;
        }
        if begin > r.next {
            *early_bytes += data.len();
            r.early.insert(begin, data);
            return;
        }
        r.sha.update(&data);
        r.next += data.len() as u32;
        while let Some(block) = r.early.remove(&r.next) {
            *early_bytes -= block.len();
            r.sha.update(&block);
            r.next += block.len() as u32;
        }
    }

    /// The digest of `piece` when exactly its `size` bytes were written through the pool since
    /// its last hash; forgets the piece either way.
    fn take(&self, store: StoreId, piece: u32, size: u64) -> Option<[u8; 20]> {
        let mut g = self.lock();
        let r = g.pieces.remove(&(store, piece))?;
        g.early_bytes -= r.early.values().map(Vec::len).sum::<usize>();
        (!r.broken && r.early.is_empty() && u64::from(r.next) == size)
            .then(|| r.sha.finalize().into())
    }

    fn forget_store(&self, store: StoreId) {
        let mut g = self.lock();
        let gone: usize = g
            .pieces
            .range((store, 0)..=(store, u32::MAX))
            .map(|(_, r)| r.early.values().map(Vec::len).sum::<usize>())
            .sum();
        g.early_bytes -= gone;
        g.pieces.retain(|(s, _), _| *s != store);
    }

    /// Bytes of blocks waiting in the stash (for tests).
    #[cfg(test)]
    fn early_bytes(&self) -> usize {
        self.lock().early_bytes
    }
}

/// A pool of disk worker threads over the storages of every torrent.
pub struct DiskPool {
    /// One queue per worker: a piece's jobs always go to the same one ([`worker_for`]).
    jobs: Vec<Sender<Envelope>>,
    done: Receiver<(StoreId, Completion)>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    stores: slab::Slab<Arc<Storage>>,
    read_bytes: BTreeMap<(StoreId, PeerHandle), u64>,
    write_bytes: u64,
    writes_per_piece: BTreeMap<(StoreId, u32), u32>,
    /// Hash jobs waiting for writes to their piece, with how many were asked.
    deferred_hashes: BTreeMap<(StoreId, u32), u32>,
    in_flight: usize,
    in_flight_per_store: BTreeMap<StoreId, usize>,
    /// Each worker's running hashes (of the pieces routed to it).
    hashes: Vec<Arc<RunningHashes>>,
    /// Jobs counted in but not yet handed to the workers ([`DiskPool::queue`]).
    queued: Vec<(StoreId, Job)>,
    /// Set by the worker that wakes the loop, cleared by the loop before it drains: a batch of
    /// completions costs one wake-up, not one each.
    woken: Arc<AtomicBool>,
}

struct Worker {
    jobs: Receiver<Envelope>,
    done: Sender<(StoreId, Completion)>,
    waker: Arc<Waker>,
    woken: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    hashes: Arc<RunningHashes>,
}

impl DiskPool {
    /// Starts `threads` workers for pieces (at least 1) and one for resume saves; each batch of
    /// completions wakes `waker`. A worker that panicked (a bug) loses its queue, and the
    /// counts of its jobs then never drain: the loop stalls instead of losing data silently.
    pub fn new(waker: Arc<Waker>, threads: usize) -> std::io::Result<DiskPool> {
        let (done_tx, done_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let woken = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut jobs = Vec::new();
        let mut hashes = Vec::new();
        for n in 0..=threads.max(1) {
            let (jobs_tx, jobs_rx) = mpsc::channel();
            let running = Arc::new(RunningHashes::default());
            jobs.push(jobs_tx);
            hashes.push(running.clone());
            let w = Worker {
                jobs: jobs_rx,
                done: done_tx.clone(),
                waker: waker.clone(),
                woken: woken.clone(),
                stop: stop.clone(),
                hashes: running,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(if n == threads.max(1) {
                        "kp-resume".to_string()
                    } else {
                        format!("kp-disk-{n}")
                    })
                    .spawn(move || w.run())?,
            );
        }
        Ok(DiskPool {
            jobs,
            done: done_rx,
            workers,
            stop,
            stores: slab::Slab::new(),
            read_bytes: BTreeMap::new(),
            write_bytes: 0,
            writes_per_piece: BTreeMap::new(),
            deferred_hashes: BTreeMap::new(),
            in_flight: 0,
            in_flight_per_store: BTreeMap::new(),
            hashes,
            queued: Vec::new(),
            woken,
        })
    }

    /// Adds a torrent's storage; its jobs are submitted under the returned id.
    pub fn add_store(&mut self, storage: Arc<Storage>) -> StoreId {
        StoreId(self.stores.insert(storage))
    }

    /// Forgets a storage once its jobs are done ([`DiskPool::in_flight_for`] is 0); jobs
    /// submitted for it afterwards are dropped.
    pub fn remove_store(&mut self, store: StoreId) {
        self.stores.try_remove(store.0);
        for h in &self.hashes {
            h.forget_store(store);
        }
    }

    /// Queues a job for `store`, after every job [`DiskPool::queue`]d before it. Check the queue
    /// sizes first (module doc): this never refuses work (except for a store that was removed).
    pub fn submit(&mut self, store: StoreId, job: Job) {
        self.queue(store, job);
        self.hand_over();
    }

    /// Queues a job for `store` that reaches a worker with the next [`DiskPool::hand_over`] (or
    /// [`DiskPool::submit`]), together with the jobs queued before it: a turn's writes then cost
    /// one hand-over and one wake-up, not one each. It counts as submitted at once (queue sizes,
    /// [`DiskPool::in_flight_for`]), and a hash still waits for the writes before it.
    pub fn queue(&mut self, store: StoreId, job: Job) {
        if !self.stores.contains(store.0) {
            log::error!("disk job for a removed storage dropped");
            return;
        }
        match &job {
            Job::Write { piece, data, .. } => {
                self.write_bytes += data.len() as u64;
                *self.writes_per_piece.entry((store, *piece)).or_default() += 1;
            }
            Job::Read { peer, lengths, .. } => {
                *self.read_bytes.entry((store, *peer)).or_default() += run_bytes(lengths);
            }
            Job::Hash { piece } if self.writes_per_piece.contains_key(&(store, *piece)) => {
                self.count_in(store);
                *self.deferred_hashes.entry((store, *piece)).or_default() += 1;
                return;
            }
            _ => {}
        }
        self.count_in(store);
        self.queued.push((store, job));
    }

    /// Hands the queued jobs to the workers: each job to the worker of its piece
    /// ([`worker_for`]), a worker's jobs for one store in one envelope, done in order.
    pub fn hand_over(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let workers = self.jobs.len();
        let mut per_worker: Vec<Vec<(StoreId, Job)>> = (0..workers).map(|_| Vec::new()).collect();
        for (store, job) in std::mem::take(&mut self.queued) {
            per_worker[worker_for(&job, workers)].push((store, job));
        }
        for (worker, queued) in per_worker.into_iter().enumerate() {
            let mut queued = queued.into_iter().peekable();
            while let Some((store, job)) = queued.next() {
                let mut jobs = vec![job];
                while let Some((_, job)) = queued.next_if(|(s, _)| *s == store) {
                    jobs.push(job);
                }
                self.send(worker, store, jobs);
            }
        }
    }

    fn count_in(&mut self, store: StoreId) {
        self.in_flight += 1;
        *self.in_flight_per_store.entry(store).or_default() += 1;
    }

    fn send(&mut self, worker: usize, store: StoreId, jobs: Vec<Job>) {
        let (Some(tx), Some(storage)) = (self.jobs.get(worker), self.stores.get(store.0)) else {
            return;
        };
        let envelope = Envelope {
            store,
            storage: storage.clone(),
            jobs,
        };
        // Fails only when the worker died (a panic); the job is lost like its worker.
        if tx.send(envelope).is_err() {
            log::error!("disk worker {worker} is gone; a disk job was dropped");
        }
    }

    /// The next completion and its store, if one arrived. Drain until `None` after the waker
    /// fires.
    pub fn poll_completion(&mut self) -> Option<(StoreId, Completion)> {
        // Cleared before looking: a completion sent after this is either seen below or wakes
        // the loop again.
        self.woken.store(false, Ordering::SeqCst);
        let (store, c) = self.done.try_recv().ok()?;
        match &c {
            Completion::Written { piece, length, .. }
            | Completion::WriteFailed { piece, length, .. } => {
                self.write_bytes = self.write_bytes.saturating_sub(u64::from(*length));
                let key = (store, *piece);
                if let Some(n) = self.writes_per_piece.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.writes_per_piece.remove(&key);
                        for _ in 0..self.deferred_hashes.remove(&key).unwrap_or(0) {
                            let job = Job::Hash { piece: *piece };
                            self.send(worker_for(&job, self.jobs.len()), store, vec![job]);
                        }
                    }
                }
            }
            Completion::Read { peer, data, .. } => {
                self.read_done((store, *peer), data.len() as u64)
            }
            Completion::ReadFailed { peer, lengths, .. } => {
                self.read_done((store, *peer), run_bytes(lengths))
            }
            _ => {}
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(n) = self.in_flight_per_store.get_mut(&store) {
            *n -= 1;
            if *n == 0 {
                self.in_flight_per_store.remove(&store);
            }
        }
        Some((store, c))
    }

    fn read_done(&mut self, key: (StoreId, PeerHandle), bytes: u64) {
        if let Some(n) = self.read_bytes.get_mut(&key) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                self.read_bytes.remove(&key);
            }
        }
    }

    /// Bytes of reads queued or running for `peer` of `store` whose completion was not polled.
    pub fn queued_read_bytes(&self, store: StoreId, peer: PeerHandle) -> u64 {
        self.read_bytes.get(&(store, peer)).copied().unwrap_or(0)
    }

    /// Jobs of `store` whose final completion was not polled yet.
    pub fn in_flight_for(&self, store: StoreId) -> usize {
        self.in_flight_per_store.get(&store).copied().unwrap_or(0)
    }

    /// Bytes of writes queued or running whose completion was not polled yet.
    pub fn queued_write_bytes(&self) -> u64 {
        self.write_bytes
    }

    /// Jobs submitted whose final completion was not polled yet (0 = the pool is idle).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for DiskPool {
    /// Finishes the queued writes and resume saves (data must land), skips queued reads and
    /// hashes, cuts a running check short, then joins the workers. Completions not polled by then
    /// are dropped.
    fn drop(&mut self) {
        // Writes still queued on this side must land too.
        self.hand_over();
        self.stop.store(true, Ordering::Relaxed);
        self.jobs.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Worker {
    fn run(self) {
        while let Ok(first) = self.jobs.recv() {
            // What else is queued joins this batch, so a worker that fell behind writes longer
            // runs.
            let mut batch = vec![first];
            while batch.len() < BATCH_ENVELOPES
                && let Ok(more) = self.jobs.try_recv()
            {
                batch.push(more);
            }
            let mut run: Option<WriteRun> = None;
            for Envelope {
                store,
                storage,
                jobs,
            } in batch
            {
                for job in jobs {
                    // Stopping: only work that keeps data (writes, the resume file) is still
                    // worth doing; reads for peers and hashes would only delay the exit.
                    if self.stop.load(Ordering::Relaxed)
                        && matches!(job, Job::Read { .. } | Job::Hash { .. })
                    {
                        continue;
                    }
                    let job = match job {
                        Job::Write { piece, begin, data } => {
                            if let Some(r) = &mut run
                                && r.continues(store, piece, begin)
                            {
                                r.blocks.push(data);
                                continue;
                            }
                            if let Some(r) = run.take() {
                                self.write_run(r);
                            }
                            run = Some(WriteRun {
                                store,
                                storage: storage.clone(),
                                piece,
                                begin,
                                blocks: vec![data],
                            });
                            continue;
                        }
                        other => other,
                    };
                    if let Some(r) = run.take() {
                        self.write_run(r);
                    }
                    let c = execute(&storage, store, &self.hashes, job);
                    self.complete(store, c);
                }
            }
            if let Some(r) = run.take() {
                self.write_run(r);
            }
        }
    }

    /// Writes a run of blocks with one vectored write; if that fails, each block again on its
    /// own, so every block's completion says exactly what became of it.
    fn write_run(&self, r: WriteRun) {
        let WriteRun {
            store,
            storage,
            piece,
            begin,
            blocks,
        } = r;
        let written = blocks.len() > 1 && {
            let slices: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
            storage.write_run(piece, begin, &slices).is_ok()
        };
        let mut at = begin;
        for data in blocks {
            let length = data.len() as u32;
            let c = if written {
                write_done(&storage, store, &self.hashes, piece, at, data, Ok(()))
            } else {
                execute(
                    &storage,
                    store,
                    &self.hashes,
                    Job::Write {
                        piece,
                        begin: at,
                        data,
                    },
                )
            };
            self.complete(store, c);
            at = at.saturating_add(length);
        }
    }

    fn complete(&self, store: StoreId, c: Completion) {
        // Sent before the flag is looked at, so a loop that cleared it and drained before this
        // send is woken.
        if self.done.send((store, c)).is_ok()
            && !self.woken.swap(true, Ordering::SeqCst)
            && let Err(e) = self.waker.wake()
        {
            log::error!("cannot wake the event loop: {e}");
        }
    }
}

fn execute(s: &Storage, store: StoreId, hashes: &RunningHashes, job: Job) -> Completion {
    match job {
        Job::Write { piece, begin, data } => {
            let result = s.write(piece, begin, &data);
            write_done(s, store, hashes, piece, begin, data, result)
        }
        Job::Read {
            peer,
            piece,
            begin,
            lengths,
        } => {
            let length = run_bytes(&lengths);
            // The core only asks for blocks inside a piece; a bad length fails in `read`
            // before this buffer is used, but cap it so it cannot allocate wildly either.
            let mut data = vec![0; length.min(s.layout().piece_length()) as usize];
            let result = match s.read(piece, begin, &mut data) {
                Ok(()) if data.len() as u64 == length => Ok(()),
                Ok(()) => Err(StorageError::OutOfRange {
                    piece,
                    begin,
                    length: usize::try_from(length).unwrap_or(usize::MAX),
                }),
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => Completion::Read {
                    peer,
                    piece,
                    begin,
                    lengths,
                    data,
                },
                Err(error) => Completion::ReadFailed {
                    peer,
                    piece,
                    begin,
                    lengths,
                    error,
                },
            }
        }
        Job::Hash { piece } => {
            let from_memory = hashes.take(store, piece, s.layout().piece_size(piece));
            match from_memory.map_or_else(|| s.hash_piece(piece), Ok) {
                Ok(digest) => Completion::Hashed { piece, digest },
                Err(error) => Completion::HashFailed { piece, error },
            }
        }
        Job::SaveResume { path, snapshot } => match resume::save(&path, &snapshot, s) {
            Ok(()) => Completion::ResumeSaved { path },
            Err(error) => Completion::ResumeFailed { path, error },
        },
    }
}

/// The completion of a block's write, once its result is known; the block goes on to its
/// piece's running hash.
fn write_done(
    s: &Storage,
    store: StoreId,
    hashes: &RunningHashes,
    piece: u32,
    begin: u32,
    mut data: Vec<u8>,
    result: Result<(), StorageError>,
) -> Completion {
    let length = data.len() as u32;
    // Hash what a read would give back.
    s.layout().zero_padding(piece, begin, &mut data);
    // Before the completion is sent: a hash job for the piece waits for that completion.
    hashes.written(store, piece, begin, data, result.is_ok());
    match result {
        Ok(()) => Completion::Written {
            piece,
            begin,
            length,
        },
        Err(error) => Completion::WriteFailed {
            piece,
            begin,
            length,
            error,
        },
    }
}

/// Which of `workers` does `job`: every job of a piece goes to the same one of the first
/// `workers - 1` (so its writes and hash run in order on one thread, and its running hash is
/// fed in order); resume saves, whose flush may take long, to the last.
fn worker_for(job: &Job, workers: usize) -> usize {
    match job {
        Job::Write { piece, .. } | Job::Read { piece, .. } | Job::Hash { piece } => {
            *piece as usize % workers.saturating_sub(1).max(1)
        }
        Job::SaveResume { .. } => workers.saturating_sub(1),
    }
}

/// Consecutive writes of one piece a worker gathers into one vectored write.
struct WriteRun {
    store: StoreId,
    storage: Arc<Storage>,
    piece: u32,
    begin: u32,
    blocks: Vec<Vec<u8>>,
}

impl WriteRun {
    /// True when a write of `piece` at `begin` extends this run (and it has room).
    fn continues(&self, store: StoreId, piece: u32, begin: u32) -> bool {
        let end = u64::from(self.begin) + self.blocks.iter().map(|b| b.len() as u64).sum::<u64>();
        self.store == store
            && self.piece == piece
            && end == u64::from(begin)
            && self.blocks.len() < RUN_BLOCKS
    }
}

/// Envelopes a worker takes from its queue at once at most.
const BATCH_ENVELOPES: usize = 64;

/// Blocks in one vectored write at most.
const RUN_BLOCKS: usize = 64;

/// Bytes of a run of blocks.
pub fn run_bytes(lengths: &[u32]) -> u64 {
    lengths.iter().map(|&l| u64::from(l)).sum()
}

#[cfg(test)]
mod tests;
