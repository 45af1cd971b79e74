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
    let dir = TestDir::new(label);
    let layout = Layout::new(
        "data",
        false,
        piece_length,
        [(vec!["data".to_string()], piece_length * pieces, false)],
    )
    .unwrap();
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
                length: 4096,
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
            length: 1 << 15,
        },
    );
    let done = r.run_until_idle();
    assert!(
        matches!(done[..], [Completion::ReadFailed { .. }]),
        "{done:?}"
    );
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
                length: 1 << 12,
            },
        );
        r.pool.submit(r.store, Job::Hash { piece: p as u32 });
    }
    drop(r.pool);
    assert_eq!(std::fs::read(r.dir.join("data")).unwrap(), data);
}
