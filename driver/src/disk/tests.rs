use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use sha1::{Digest, Sha1};

use kp_torrent_core::bitfield::Bitfield;

use super::*;
use crate::storage::{Layout, Location};
use crate::testdir::TestDir;

const WAKE: Token = Token(7);

struct Rig {
    _dir: TestDir,
    dir: PathBuf,
    poll: Poll,
    storage: Arc<Storage>,
    pool: DiskPool,
    store: StoreId,
}

/// A single-file torrent of `pieces` pieces of `piece_length` bytes, allocated, with a pool.
fn rig(label: &str, piece_length: u64, pieces: u64, threads: usize) -> Rig {
    let layout = Layout::new(
        "data",
        false,
        piece_length,
        [(vec!["data".to_string()], piece_length * pieces, false)],
    )
    .unwrap();
    rig_with(label, layout, threads)
}

/// Storage for `layout` in a fresh folder, allocated, with a pool of `threads`.
fn rig_with(label: &str, layout: Layout, threads: usize) -> Rig {
    let dir = TestDir::new(label);
    let storage = Arc::new(Storage::new(layout, Location::Download(dir.path().into()), 4).unwrap());
    storage.allocate().unwrap();
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let mut pool = DiskPool::new(waker, threads).unwrap();
    let store = pool.add_store(storage.clone());
    Rig {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        poll,
        storage,
        pool,
        store,
    }
}

impl Rig {
    /// Waits on the poll like the event loop and drains completions only when the waker fired,
    /// until the pool is idle: a completion that did not wake the poll makes this time out.
    fn run_until_idle(&mut self) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = Events::with_capacity(8);
        let mut out = Vec::new();
        while self.pool.in_flight() > 0 {
            assert!(
                Instant::now() < deadline,
                "no wake-up for a disk completion"
            );
            self.poll
                .poll(&mut events, Some(Duration::from_millis(500)))
                .unwrap();
            if events.iter().any(|e| e.token() == WAKE) {
                while let Some(c) = self.pool.poll_completion() {
                    out.push(c.1);
                }
            }
        }
        out
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

#[test]
fn hash_job_gives_the_sha1_and_wakes_the_poll() {
    let mut r = rig("hash", 1 << 16, 2, DEFAULT_WORKERS);
    let data = bytes(1 << 16, 3);
    r.storage.write(1, 0, &data).unwrap();
    r.pool.submit(r.store, Job::Hash { piece: 1 });
    let done = r.run_until_idle();
    let expected: [u8; 20] = Sha1::digest(&data).into();
    match &done[..] {
        [Completion::Hashed { piece: 1, digest }] => assert_eq!(*digest, expected),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hash_waits_for_earlier_writes_to_its_piece() {
    let mut r = rig("order", 1 << 18, 1, 4);
    let data = bytes(1 << 18, 9);
    for (i, block) in data.chunks(1 << 14).enumerate() {
        r.pool.submit(
            r.store,
            Job::Write {
                piece: 0,
                begin: (i << 14) as u32,
                data: block.to_vec(),
            },
        );
    }
    assert_eq!(r.pool.queued_write_bytes(), 1 << 18);
    r.pool.submit(r.store, Job::Hash { piece: 0 });
    assert_eq!(r.pool.deferred_hashes.get(&(r.store, 0)), Some(&1));
    let done = r.run_until_idle();
    let digests: Vec<_> = done
        .iter()
        .filter_map(|c| match c {
            Completion::Hashed { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect();
    let expected: [u8; 20] = Sha1::digest(&data).into();
    assert_eq!(digests, [expected]);
    // The hash came after the 16 writes.
    assert!(matches!(done.last(), Some(Completion::Hashed { .. })));
    assert_eq!(r.pool.queued_write_bytes(), 0);
}

#[test]
fn reads_are_counted_per_peer_until_polled() {
    let mut r = rig("reads", 1 << 15, 4, DEFAULT_WORKERS);
    let data = bytes(4 << 15, 1);
    for (p, chunk) in data.chunks(1 << 15).enumerate() {
        r.storage.write(p as u32, 0, chunk).unwrap();
    }
    let (a, b) = (PeerHandle(1), PeerHandle(2));
    for (peer, piece) in [(a, 0), (a, 3), (b, 2)] {
        r.pool.submit(
            r.store,
            Job::Read {
                peer,
                piece,
                begin: 1024,
                lengths: vec![4096],
            },
        );
    }
    assert_eq!(r.pool.queued_read_bytes(r.store, a), 8192);
    assert_eq!(r.pool.queued_read_bytes(r.store, b), 4096);
    let done = r.run_until_idle();
    assert_eq!(done.len(), 3);
    for c in done {
        let Completion::Read {
            piece,
            begin,
            data: got,
            ..
        } = c
        else {
            panic!("{c:?}");
        };
        let at = (piece as usize) * (1 << 15) + begin as usize;
        assert_eq!(got, data[at..at + 4096]);
    }
    assert_eq!(r.pool.queued_read_bytes(r.store, a), 0);
    assert!(r.pool.read_bytes.is_empty());
    // A read past the piece fails instead of returning short data.
    r.pool.submit(
        r.store,
        Job::Read {
            peer: a,
            piece: 0,
            begin: 1 << 14,
            lengths: vec![1 << 15],
        },
    );
    let done = r.run_until_idle();
    assert!(
        matches!(done[..], [Completion::ReadFailed { .. }]),
        "{done:?}"
    );
    assert!(r.pool.read_bytes.is_empty());
}

#[test]
fn a_run_of_blocks_is_one_read_counted_until_polled() {
    let mut r = rig("runs", 1 << 15, 2, DEFAULT_WORKERS);
    let data = bytes(2 << 15, 3);
    for (p, chunk) in data.chunks(1 << 15).enumerate() {
        r.storage.write(p as u32, 0, chunk).unwrap();
    }
    let peer = PeerHandle(4);
    r.pool.submit(
        r.store,
        Job::Read {
            peer,
            piece: 1,
            begin: 1000,
            lengths: vec![4096, 4096, 100],
        },
    );
    assert_eq!(r.pool.queued_read_bytes(r.store, peer), 8292);
    let done = r.run_until_idle();
    let [
        Completion::Read {
            piece: 1,
            begin: 1000,
            lengths,
            data: got,
            ..
        },
    ] = &done[..]
    else {
        panic!("{done:?}");
    };
    assert_eq!(lengths, &[4096, 4096, 100]);
    let at = (1 << 15) + 1000;
    assert_eq!(got[..], data[at..at + 8292]);
    assert_eq!(r.pool.queued_read_bytes(r.store, peer), 0);
    // A run past the end of its piece fails whole, and is uncounted too.
    r.pool.submit(
        r.store,
        Job::Read {
            peer,
            piece: 1,
            begin: (1 << 15) - 4096,
            lengths: vec![4096, 4096],
        },
    );
    assert_eq!(r.pool.queued_read_bytes(r.store, peer), 8192);
    let done = r.run_until_idle();
    assert!(
        matches!(&done[..], [Completion::ReadFailed { lengths, .. }] if lengths.len() == 2),
        "{done:?}"
    );
    assert!(r.pool.read_bytes.is_empty());
}

#[test]
fn a_failed_write_is_a_completion() {
    let mut r = rig("wfail", 1 << 10, 2, DEFAULT_WORKERS);
    let file = r.dir.join("data");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    r.pool.submit(
        r.store,
        Job::Write {
            piece: 1,
            begin: 0,
            data: vec![1; 100],
        },
    );
    let done = r.run_until_idle();
    match &done[..] {
        [
            Completion::WriteFailed {
                piece: 1,
                begin: 0,
                length: 100,
                error,
            },
        ] => assert!(error.to_string().contains("data"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.pool.queued_write_bytes(), 0);
}

#[test]
fn save_resume_job_writes_the_file() {
    use kp_torrent_core::id::InfoHash;
    let mut r = rig("save", 64, 4, DEFAULT_WORKERS);
    r.storage.write(2, 0, &bytes(64, 2)).unwrap();
    let info_hash = InfoHash([5; 20]);
    let path = resume::resume_path(&r.dir, &info_hash);
    let mut have = Bitfield::new(4);
    have.set(2);
    r.pool.submit(
        r.store,
        Job::SaveResume {
            path: path.clone(),
            snapshot: Snapshot {
                info_hash,
                have: have.clone(),
            },
        },
    );
    let done = r.run_until_idle();
    assert!(
        matches!(&done[..], [Completion::ResumeSaved { path: p }] if *p == path),
        "{done:?}"
    );
    let bytes = std::fs::read(&path).unwrap();
    let torrent = resume::test_torrent(r.storage.layout(), &info_hash);
    let saved = kp_torrent_core::resume::ResumeData::decode(&bytes, &torrent).unwrap();
    assert_eq!(saved.have, have);
}

#[test]
fn dropping_the_pool_finishes_queued_writes() {
    let mut r = rig("drop", 1 << 12, 64, 1);
    let data = bytes(64 << 12, 6);
    for (p, chunk) in data.chunks(1 << 12).enumerate() {
        r.pool.submit(
            r.store,
            Job::Write {
                piece: p as u32,
                begin: 0,
                data: chunk.to_vec(),
            },
        );
        // Reads and hashes queued among the writes are skipped on drop; the writes are not.
        r.pool.submit(
            r.store,
            Job::Read {
                peer: PeerHandle(0),
                piece: p as u32,
                begin: 0,
                lengths: vec![1 << 12],
            },
        );
        r.pool.submit(r.store, Job::Hash { piece: p as u32 });
    }
    drop(r.pool);
    assert_eq!(std::fs::read(r.dir.join("data")).unwrap(), data);
}

/// Writes `blocks` (offset, bytes) of piece 0 through the pool, then changes the file behind the
/// pool's back to `on_disk`, and returns the digest of a hash job: the written bytes' digest when
/// the piece was hashed from memory, `on_disk`'s when it was read back.
fn digest_after_writes(
    label: &str,
    threads: usize,
    blocks: &[(u32, Vec<u8>)],
    on_disk: &[u8],
) -> [u8; 20] {
    let mut r = rig(label, on_disk.len() as u64, 1, threads);
    for (begin, data) in blocks {
        r.pool.submit(
            r.store,
            Job::Write {
                piece: 0,
                begin: *begin,
                data: data.clone(),
            },
        );
    }
    r.run_until_idle();
    std::fs::write(r.dir.join("data"), on_disk).unwrap();
    r.pool.submit(r.store, Job::Hash { piece: 0 });
    let done = r.run_until_idle();
    assert_eq!(
        r.pool.hashes.iter().map(|h| h.early_bytes()).sum::<usize>(),
        0,
        "the stash is empty afterwards"
    );
    match &done[..] {
        [Completion::Hashed { piece: 0, digest }] => *digest,
        other => panic!("{other:?}"),
    }
}

/// Blocks of piece 0 as (offset, bytes).
type Blocks = Vec<(u32, Vec<u8>)>;

fn blocks_of(data: &[u8], size: usize) -> Blocks {
    data.chunks(size)
        .enumerate()
        .map(|(i, b)| ((i * size) as u32, b.to_vec()))
        .collect()
}

/// A 256 KiB piece as sent (in 16 KiB blocks) and other bytes of its size, with their digests.
fn sent_and_other(seed: u8) -> (Blocks, [u8; 20], Vec<u8>, [u8; 20]) {
    let data = bytes(1 << 18, seed);
    let other = bytes(1 << 18, seed.wrapping_add(1));
    let (a, b) = (Sha1::digest(&data).into(), Sha1::digest(&other).into());
    (blocks_of(&data, 1 << 14), a, other, b)
}

#[test]
fn a_piece_written_once_in_any_order_is_hashed_from_memory() {
    let (mut blocks, written, other, _) = sent_and_other(21);
    assert_eq!(
        digest_after_writes("mem-order", 4, &blocks, &other),
        written,
        "in order, four workers"
    );
    blocks.reverse();
    assert_eq!(
        digest_after_writes("mem-reverse", 1, &blocks, &other),
        written,
        "last block first: all but one wait in the stash"
    );
}

#[test]
fn a_piece_not_written_whole_and_once_is_read_back() {
    let (sent, _, on_disk, disk) = sent_and_other(31);
    // A block written twice: the file holds the second copy, the running hash saw the first.
    let mut blocks = sent.clone();
    blocks.push((0, bytes(1 << 14, 33)));
    assert_eq!(digest_after_writes("twice", 1, &blocks, &on_disk), disk);
    // A block missing: the running hash never covers the piece.
    let mut blocks = sent;
    blocks.remove(3);
    assert_eq!(digest_after_writes("gap", 2, &blocks, &on_disk), disk);
    // No writes at all (the start-up check).
    assert_eq!(digest_after_writes("none", 2, &[], &on_disk), disk);
}

#[test]
fn early_blocks_past_the_stash_limit_fall_back_to_reading() {
    let size = EARLY_BLOCK_LIMIT + (1 << 16);
    let data = bytes(size, 41);
    let on_disk = bytes(size, 42);
    let mut blocks = blocks_of(&data, 1 << 14);
    blocks.rotate_left(1); // block 0 comes last: everything else waits, more than the stash holds
    assert_eq!(
        digest_after_writes("overflow", 1, &blocks, &on_disk),
        <[u8; 20]>::from(Sha1::digest(&on_disk))
    );
}

#[test]
fn padding_is_hashed_as_zeros_like_a_read_back() {
    // Two files, the second a padding file: the running hash must see zeros where the peer sent
    // bytes into the padding, as the read-back hash (and the torrent) does.
    let layout = Layout::new(
        "t",
        true,
        1 << 15,
        [
            (vec!["a".to_string()], 1 << 14, false),
            (vec![".pad".to_string(), "16384".to_string()], 1 << 14, true),
        ],
    )
    .unwrap();
    let mut r = rig_with("mem-pad", layout, 1);
    let sent = bytes(1 << 15, 51);
    r.pool.submit(
        r.store,
        Job::Write {
            piece: 0,
            begin: 0,
            data: sent.clone(),
        },
    );
    r.pool.submit(r.store, Job::Hash { piece: 0 });
    let done = r.run_until_idle();
    let mut expected = sent.clone();
    expected[1 << 14..].fill(0);
    let read_back = r.storage.hash_piece(0).unwrap();
    assert_eq!(read_back, <[u8; 20]>::from(Sha1::digest(&expected)));
    match &done[..] {
        [.., Completion::Hashed { piece: 0, digest }] => assert_eq!(*digest, read_back),
        other => panic!("{other:?}"),
    }
}

#[test]
fn queued_jobs_count_at_once_and_reach_a_worker_at_the_hand_over() {
    let mut r = rig("queue", 1 << 14, 2, DEFAULT_WORKERS);
    let data = bytes(2 << 14, 9);
    for (i, block) in data[..1 << 14].chunks(1 << 12).enumerate() {
        let begin = (i << 12) as u32;
        let job = Job::Write {
            piece: 0,
            begin,
            data: block.to_vec(),
        };
        r.pool.queue(r.store, job);
    }
    r.pool.queue(r.store, Job::Hash { piece: 0 });
    // Counted (backpressure, the stop check) before any worker has them.
    assert_eq!(r.pool.queued_write_bytes(), 1 << 14);
    assert_eq!(r.pool.in_flight_for(r.store), 5);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        r.pool.poll_completion().is_none(),
        "done before the hand-over"
    );
    r.pool.hand_over();
    let done = r.run_until_idle();
    assert_eq!(done.len(), 5, "{done:?}");
    let digest: [u8; 20] = Sha1::digest(&data[..1 << 14]).into();
    assert!(
        done.iter()
            .any(|c| matches!(c, Completion::Hashed { piece: 0, digest: d } if *d == digest)),
        "{done:?}"
    );
    // A write still queued when the pool goes is written all the same.
    let job = Job::Write {
        piece: 1,
        begin: 0,
        data: data[1 << 14..].to_vec(),
    };
    r.pool.queue(r.store, job);
    drop(r.pool);
    assert_eq!(std::fs::read(r.dir.join("data")).unwrap(), data);
}

#[test]
fn writes_queued_together_land_where_they_belong_whatever_their_order() {
    // One worker, so every write below is in one batch: runs are gathered only from blocks
    // that follow each other; a gap or a step back starts a new run.
    let mut r = rig("runs", 1 << 16, 2, 1);
    let data = bytes(2 << 16, 61);
    let order = [0u32, 1, 2, 4, 5, 3, 7, 6, 8, 9, 10, 12, 11, 13, 14, 15];
    for &i in &order {
        let at = (i as usize) << 13;
        r.pool.queue(
            r.store,
            Job::Write {
                piece: i / 8,
                begin: (i % 8) << 13,
                data: data[at..at + (1 << 13)].to_vec(),
            },
        );
    }
    r.pool.hand_over();
    let done = r.run_until_idle();
    let mut written: Vec<(u32, u32)> = done
        .iter()
        .map(|c| match c {
            Completion::Written {
                piece,
                begin,
                length: 8192,
            } => (*piece, *begin),
            other => panic!("{other:?}"),
        })
        .collect();
    written.sort();
    let all: Vec<(u32, u32)> = (0..16).map(|i| (i / 8, (i % 8) << 13)).collect();
    assert_eq!(written, all, "one completion per block");
    assert_eq!(std::fs::read(r.dir.join("data")).unwrap(), data);
    for piece in 0..2 {
        r.pool.submit(r.store, Job::Hash { piece });
    }
    let start = piece_digests(&data, 1 << 16);
    for c in r.run_until_idle() {
        match c {
            Completion::Hashed { piece, digest } => assert_eq!(digest, start[piece as usize]),
            other => panic!("{other:?}"),
        }
    }
}

fn piece_digests(data: &[u8], piece_length: usize) -> Vec<[u8; 20]> {
    data.chunks(piece_length)
        .map(|p| Sha1::digest(p).into())
        .collect()
}

#[test]
fn a_run_that_fails_part_way_says_which_blocks_were_written() {
    // Piece 0 spans files a and b; b is gone (not open: writing a first closed it), so a run
    // over both fails at b. Each block then gets its own result: a's was written, b's not.
    let layout = Layout::new(
        "t",
        true,
        1 << 15,
        [
            (vec!["t".to_string(), "a".to_string()], 1 << 14, false),
            (vec!["t".to_string(), "b".to_string()], 1 << 14, false),
        ],
    )
    .unwrap();
    // One open file at most (`rig_with` opens 4): writing a closes b.
    let dir = TestDir::new("run-fails");
    let storage = Arc::new(Storage::new(layout, Location::Download(dir.path().into()), 1).unwrap());
    storage.allocate().unwrap();
    storage.write(0, 0, &[0; 8]).unwrap();
    std::fs::remove_file(dir.path().join("t/b")).unwrap();
    let poll = Poll::new().unwrap();
    let mut pool = DiskPool::new(Arc::new(Waker::new(poll.registry(), WAKE).unwrap()), 1).unwrap();
    let store = pool.add_store(storage.clone());
    let mut r = Rig {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        poll,
        storage,
        pool,
        store,
    };
    let data = bytes(1 << 15, 71);
    for begin in [0, 1 << 14] {
        r.pool.queue(
            r.store,
            Job::Write {
                piece: 0,
                begin,
                data: data[begin as usize..begin as usize + (1 << 14)].to_vec(),
            },
        );
    }
    r.pool.hand_over();
    let mut done = r.run_until_idle();
    done.sort_by_key(|c| match c {
        Completion::Written { begin, .. } | Completion::WriteFailed { begin, .. } => *begin,
        _ => u32::MAX,
    });
    match &done[..] {
        [
            Completion::Written { begin: 0, .. },
            Completion::WriteFailed {
                begin: 16384,
                error: StorageError::Deleted(path),
                ..
            },
        ] => assert!(path.ends_with("t/b"), "{path:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(r.dir.join("t/a")).unwrap(), data[..1 << 14]);
}

#[test]
fn a_piece_keeps_its_worker_and_resume_saves_have_their_own() {
    for workers in 2..=5 {
        let save = Job::SaveResume {
            path: PathBuf::from("r"),
            snapshot: Snapshot {
                info_hash: kp_torrent_core::id::InfoHash([0; 20]),
                have: Bitfield::new(1),
            },
        };
        assert_eq!(worker_for(&save, workers), workers - 1);
        for piece in 0..64 {
            let w = worker_for(&Job::Hash { piece }, workers);
            assert!(w < workers - 1, "piece {piece} on the resume worker");
            let write = Job::Write {
                piece,
                begin: 0,
                data: Vec::new(),
            };
            let read = Job::Read {
                peer: PeerHandle(0),
                piece,
                begin: 0,
                lengths: vec![1],
            };
            assert_eq!(worker_for(&write, workers), w);
            assert_eq!(worker_for(&read, workers), w);
        }
    }
}
