use std::os::unix::fs::MetadataExt;

use super::*;
use crate::testdir::TestDir;

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// 29 bytes in pieces of 16: piece 0 spans a, b, the empty c, the padding and the start of d;
/// piece 1 (13 bytes, the partial last piece) spans the rest of d and e.
fn mixed_layout() -> Layout {
    Layout::new(
        "t",
        true,
        16,
        [
            (path(&["t", "a"]), 5, false),
            (path(&["t", "sub", "b"]), 3, false),
            (path(&["t", "sub", "empty"]), 0, false),
            (path(&["t", ".pad", "4"]), 4, true),
            (path(&["t", "d"]), 10, false),
            (path(&["t", "deep", "er", "e"]), 7, false),
        ],
    )
    .unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// The torrent's bytes as a reader sees them: `written` with padding ranges zeroed.
fn with_zero_padding(layout: &Layout, written: &[u8]) -> Vec<u8> {
    let mut out = written.to_vec();
    for f in layout.files().iter().filter(|f| f.padding) {
        out[f.offset as usize..(f.offset + f.length) as usize].fill(0);
    }
    out
}

/// Writes `bytes` (the whole torrent) in blocks of `block` bytes.
fn write_all(s: &Storage, bytes: &[u8], block: usize) {
    let pl = s.layout().piece_length() as usize;
    for (p, piece) in bytes.chunks(pl).enumerate() {
        for (b, chunk) in piece.chunks(block).enumerate() {
            s.write(p as u32, (b * block) as u32, chunk).unwrap();
        }
    }
}

fn read_all(s: &Storage) -> Vec<u8> {
    let mut out = Vec::new();
    for p in 0..s.layout().piece_count() {
        let mut buf = vec![0; s.layout().piece_size(p) as usize];
        s.read(p, 0, &mut buf).unwrap();
        out.extend(buf);
    }
    out
}

#[test]
fn layout_sizes_and_pieces_of_files() {
    let l = mixed_layout();
    assert_eq!((l.total_length(), l.piece_count()), (29, 2));
    assert_eq!(
        (l.piece_size(0), l.piece_size(1), l.piece_size(2)),
        (16, 13, 0)
    );
    let ranges: Vec<_> = (0..6).map(|i| l.pieces_of_file(i)).collect();
    assert_eq!(ranges, [0..1, 0..1, 0..0, 0..1, 0..2, 1..2]);
    assert!(Layout::new("x", false, 0, [(path(&["x"]), 1, false)]).is_none());
    assert!(Layout::new("x", false, 4, [(path(&["x"]), 0, false)]).is_none());
}

#[test]
fn multi_file_round_trip_spans_files_and_skips_padding() {
    let dir = TestDir::new("roundtrip");
    let layout = mixed_layout();
    let s = Storage::new(layout.clone(), Location::Download(dir.path().into()), 4).unwrap();
    s.allocate().unwrap();
    let bytes = data(29, 7);
    // 3-byte blocks cross every file boundary at some point.
    write_all(&s, &bytes, 3);
    let expected = with_zero_padding(&layout, &bytes);
    assert_eq!(read_all(&s), expected);

    for (i, f) in layout.files().iter().enumerate() {
        let on_disk = dir.path().join(f.path.join("/"));
        if f.padding {
            assert!(!on_disk.exists(), "padding file {on_disk:?} was created");
            assert!(s.path(i).is_none());
            continue;
        }
        let got = fs::read(&on_disk).unwrap();
        assert_eq!(
            got,
            bytes[f.offset as usize..(f.offset + f.length) as usize]
        );
    }
    assert!(!dir.path().join("t/.pad").exists());
    assert_eq!(
        fs::metadata(dir.path().join("t/sub/empty")).unwrap().len(),
        0
    );

    // Reading a block in the middle of a piece that spans three files.
    let mut mid = [0u8; 6];
    s.read(0, 3, &mut mid).unwrap();
    assert_eq!(mid, expected[3..9]);

    let digest: [u8; 20] = Sha1::digest(&expected[16..29]).into();
    assert_eq!(s.hash_piece(1).unwrap(), digest);
}

#[test]
fn preallocate_reserves_every_file_and_leaves_sized_files_alone() {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("prealloc");
    let layout = mixed_layout();
    let s = Storage::new(layout.clone(), Location::Download(dir.path().into()), 4).unwrap();
    s.preallocate(&|_| true).unwrap();
    for f in layout.files().iter().filter(|f| !f.padding) {
        let m = fs::metadata(dir.path().join(f.path.join("/"))).unwrap();
        assert_eq!(m.len(), f.length, "{:?}", f.path);
        // Reserved: the blocks are there before any byte was written (a sparse file has none).
        assert!(
            m.blocks() * 512 >= f.length,
            "{:?}: {} blocks",
            f.path,
            m.blocks()
        );
    }
    // The data written reads back; padding files are still never created.
    let bytes = data(29, 7);
    write_all(&s, &bytes, 3);
    assert_eq!(read_all(&s), with_zero_padding(&layout, &bytes));
    assert!(!dir.path().join("t/.pad").exists());
    // A second start leaves files of the right size (and their data) as they are.
    s.preallocate(&|_| true).unwrap();
    assert_eq!(read_all(&s), with_zero_padding(&layout, &bytes));
}

#[test]
fn preallocate_reserves_only_the_files_wanted() {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("prealloc-some");
    let files = [
        (path(&["t", "a"]), 4 << 20, false),
        (path(&["t", "b"]), 4 << 20, false),
    ];
    let layout = Layout::new("t", true, 1 << 20, files).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.preallocate(&|i| i == 1).unwrap();
    let blocks = |name: &str| {
        fs::metadata(dir.path().join("t").join(name))
            .unwrap()
            .blocks()
            * 512
    };
    assert!(
        blocks("a") < 1 << 20,
        "a file left out was reserved: {}",
        blocks("a")
    );
    assert!(
        blocks("b") >= 4 << 20,
        "the wanted file was not reserved: {}",
        blocks("b")
    );
}

#[test]
fn allocate_leaves_files_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("sparse");
    let layout = Layout::new("big", false, 1 << 20, [(path(&["big"]), 8 << 20, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    let m = fs::metadata(dir.path().join("big")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
}

#[test]
fn single_file_torrent_lives_at_dest_name() {
    let dir = TestDir::new("single");
    let layout = Layout::new("one.bin", false, 8, [(path(&["one.bin"]), 20, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    let bytes = data(20, 1);
    write_all(&s, &bytes, 5);
    assert_eq!(fs::read(dir.path().join("one.bin")).unwrap(), bytes);
}

#[test]
fn blocks_outside_their_piece_are_refused() {
    let dir = TestDir::new("range");
    let s = Storage::new(mixed_layout(), Location::Download(dir.path().into()), 4).unwrap();
    s.allocate().unwrap();
    let mut buf = [0u8; 4];
    for (piece, begin) in [(1, 10), (2, 0), (0, u32::MAX), (u32::MAX, 0)] {
        assert!(matches!(
            s.read(piece, begin, &mut buf),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            s.write(piece, begin, &buf),
            Err(StorageError::OutOfRange { .. })
        ));
    }
    assert!(s.hash_piece(2).is_err());
    // Even an empty block must name a real piece.
    assert!(s.read(2, 0, &mut []).is_err());
    assert!(s.read(1, 13, &mut []).is_ok());
}

#[test]
fn files_are_sparse_at_their_final_size() {
    let dir = TestDir::new("sparse");
    let size = 64 << 20;
    let layout = Layout::new("big", false, 1 << 20, [(path(&["big"]), size, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    s.write(3, 0, &data(16 << 10, 3)).unwrap();
    let m = fs::metadata(dir.path().join("big")).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        m.blocks() * 512 < size / 2,
        "{} bytes allocated for a {size}-byte file",
        m.blocks() * 512
    );
}

#[test]
fn ten_thousand_files_with_eight_open() {
    let dir = TestDir::new("lru");
    let files = (0..10_000u64).map(|i| {
        (
            path(&["many", &format!("d{}", i / 1000), &format!("f{i}")]),
            1 + i % 3,
            false,
        )
    });
    let layout = Layout::new("many", true, 64, files).unwrap();
    let total = layout.total_length() as usize;
    let s = Storage::new(layout, Location::Download(dir.path().into()), 8).unwrap();
    s.allocate().unwrap();
    let bytes = data(total, 9);
    write_all(&s, &bytes, 64);
    assert!(s.open_files() <= 8, "{} files open", s.open_files());
    assert_eq!(read_all(&s), bytes);
    assert!(s.open_files() <= 8, "{} files open", s.open_files());
    assert_eq!(
        fs::read(dir.path().join("many/d9/f9999")).unwrap(),
        bytes[total - 1..]
    );
}

#[test]
fn paths_leaving_the_folder_are_refused() {
    let dir = TestDir::new("escape");
    for bad in [
        &["t", "..", "x"][..],
        &["t", "/etc/passwd"],
        &["t", "a/b"],
        &["t", ""],
        &["t", "."],
        &["t", "nul\0"],
        &[".."],
        &[],
    ] {
        let layout = Layout::new("t", true, 4, [(path(bad), 4, false)]).unwrap();
        let r = Storage::new(layout, Location::Download(dir.path().into()), 4);
        assert!(matches!(r, Err(StorageError::UnsafePath(_))), "{bad:?}");
    }
    // A padding file is never joined, so its name does not matter.
    let layout = Layout::new(
        "t",
        true,
        4,
        [
            (path(&["t", "ok"]), 2, false),
            (path(&["..", ".."]), 2, true),
        ],
    )
    .unwrap();
    assert!(Storage::new(layout, Location::Download(dir.path().into()), 4).is_ok());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn seeding_reads_existing_data_read_only() {
    let dir = TestDir::new("seed");
    let bytes = data(29, 5);
    let layout = mixed_layout();
    let d = Storage::new(layout.clone(), Location::Download(dir.path().into()), 4).unwrap();
    d.allocate().unwrap();
    write_all(&d, &bytes, 16);
    let expected = with_zero_padding(&layout, &bytes);

    // Both the folder holding `t` and `t` itself.
    for seed_path in [dir.path().to_path_buf(), dir.path().join("t")] {
        let s = Storage::new(layout.clone(), Location::Seed(seed_path.clone()), 4).unwrap();
        assert!(!s.writable());
        s.allocate().unwrap();
        assert_eq!(read_all(&s), expected, "{seed_path:?}");
        assert!(matches!(s.write(0, 0, &[1]), Err(StorageError::ReadOnly)));
    }

    // A single-file torrent seeds from a file of any name, or from the folder holding `<name>`.
    let single = Layout::new("orig.bin", false, 8, [(path(&["orig.bin"]), 20, false)]).unwrap();
    fs::write(dir.path().join("renamed.bin"), &bytes[..20]).unwrap();
    fs::write(dir.path().join("orig.bin"), &bytes[..20]).unwrap();
    for seed_path in [dir.path().join("renamed.bin"), dir.path().to_path_buf()] {
        let s = Storage::new(single.clone(), Location::Seed(seed_path.clone()), 4).unwrap();
        assert_eq!(read_all(&s), bytes[..20], "{seed_path:?}");
    }
    fs::remove_file(dir.path().join("orig.bin")).unwrap();
    let s = Storage::new(single, Location::Seed(dir.path().into()), 4).unwrap();
    let err = s.hash_piece(0).unwrap_err();
    assert!(err.to_string().contains("orig.bin"), "{err}");
}

#[test]
fn errors_name_the_file_and_the_os_reason() {
    let dir = TestDir::new("errors");
    let layout = mixed_layout();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 4).unwrap();
    s.allocate().unwrap();
    let d = dir.path().join("t/d");
    fs::remove_file(&d).unwrap();
    fs::create_dir(&d).unwrap();
    let err = s.write(1, 0, &[1, 2, 3]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot open ") && msg.contains("t/d"),
        "{msg}"
    );
    assert!(!err.is_disk_full());
    // allocate refuses a folder where a file belongs.
    assert!(matches!(s.allocate(), Err(StorageError::NotAFile(_))));

    // A file shorter than the torrent says (seeding a truncated copy).
    fs::write(dir.path().join("t/a"), [1, 2]).unwrap();
    let mut buf = [0u8; 5];
    let msg = s.read(0, 0, &mut buf).unwrap_err().to_string();
    assert!(msg.contains("shorter than the torrent says"), "{msg}");
}

#[test]
fn a_full_device_is_reported_as_disk_full() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipping: no /dev/full");
        return;
    }
    let dir = TestDir::new("full");
    let layout = Layout::new("f", false, 8, [(path(&["f"]), 8, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    // Writes to /dev/full fail with ENOSPC, as a full disk does.
    fs::remove_file(dir.path().join("f")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("f")).unwrap();
    let err = s.write(0, 0, &[1; 8]).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(
        err.to_string()
            .starts_with("no space left on the device writing "),
        "{err}"
    );
}

#[test]
fn layout_of_a_parsed_torrent_round_trips_its_data() {
    use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces};
    let files: Vec<(Vec<String>, u64)> = vec![
        (path(&["a.txt"]), 10),
        (path(&["empty"]), 0),
        (path(&["sub", "b.bin"]), 23),
        (path(&["sub", "deeper", "c"]), 7),
    ];
    let bytes = data(40, 2);
    let spec = TorrentSpec {
        name: "multi".into(),
        piece_length: 16,
        files: files.clone(),
        piece_hashes: hash_pieces(&bytes, 16),
        ..Default::default()
    };
    let meta = Metainfo::from_bytes(&spec.to_bytes()).unwrap();
    let layout = Layout::from_info(&meta.info);
    assert_eq!(layout.piece_count(), meta.info.piece_count());
    assert_eq!(layout.piece_size(2), meta.info.piece_size(2));
    let dir = TestDir::new("frominfo");
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    write_all(&s, &bytes, 5);
    for p in 0..3 {
        assert_eq!(s.hash_piece(p).unwrap(), meta.info.pieces[p as usize]);
    }
    assert_eq!(
        fs::read(dir.path().join("multi/sub/b.bin")).unwrap(),
        bytes[10..33]
    );
    assert!(dir.path().join("multi/empty").is_file());
}

/// Writes to file 0 of `s` until one fails (bounded: a few liveness intervals), and returns it.
fn write_until_refused(s: &Storage) -> StorageError {
    let deadline = std::time::Instant::now() + 4 * LIVENESS_EVERY;
    loop {
        match s.write(0, 0, &[7; 8]) {
            Err(e) => return e,
            Ok(()) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(()) => panic!(
                "writes still succeed {:?} after the file went",
                4 * LIVENESS_EVERY
            ),
        }
    }
}

#[test]
fn an_open_file_deleted_or_moved_is_noticed_by_the_next_writes() {
    for how in ["delete", "move", "replace"] {
        let dir = TestDir::new("deleted-open");
        let layout = Layout::new("f", false, 8, [(path(&["f"]), 8, false)]).unwrap();
        let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
        s.allocate().unwrap();
        s.write(0, 0, &[1; 8]).unwrap();
        let f = dir.path().join("f");
        match how {
            "delete" => fs::remove_file(&f).unwrap(),
            "move" => fs::rename(&f, dir.path().join("elsewhere")).unwrap(),
            _ => {
                fs::remove_file(&f).unwrap();
                fs::write(&f, [0; 8]).unwrap();
            }
        }
        let err = write_until_refused(&s);
        assert!(
            matches!(&err, StorageError::Deleted(p) if *p == f),
            "{how}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("/f was deleted or moved during the download"),
            "{how}: {msg}"
        );
        // Never made again behind the user's back (the replacement stays as it was).
        assert_eq!(s.write(0, 0, &[1; 8]).is_err(), how != "replace", "{how}");
        if how == "delete" {
            assert!(!f.exists(), "the deleted file was created again");
        }
    }
}

#[test]
fn a_deleted_file_is_not_created_again_when_reopened() {
    let dir = TestDir::new("deleted-closed");
    // One open file at most: writing b closes a.
    let layout = Layout::new(
        "t",
        true,
        4,
        [(path(&["t", "a"]), 4, false), (path(&["t", "b"]), 4, false)],
    )
    .unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 1).unwrap();
    s.allocate().unwrap();
    s.write(0, 0, &[1; 4]).unwrap();
    s.write(1, 0, &[2; 4]).unwrap();
    let a = dir.path().join("t/a");
    fs::remove_file(&a).unwrap();
    let err = s.write(0, 0, &[1; 4]).unwrap_err();
    assert!(
        matches!(&err, StorageError::Deleted(p) if *p == a),
        "{err:?}"
    );
    assert!(!a.exists(), "the deleted file was created again");
    // Reading it for a hash fails too, naming the file.
    assert!(s.hash_piece(0).unwrap_err().to_string().contains("t/a"));
}

#[test]
fn check_files_finds_a_finished_file_that_went() {
    let dir = TestDir::new("check-files");
    let layout = Layout::new(
        "t",
        true,
        4,
        [
            (path(&["t", "a"]), 4, false),
            (path(&["t", "pad"]), 4, true),
            (path(&["t", "b"]), 4, false),
        ],
    )
    .unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 4).unwrap();
    s.allocate().unwrap();
    s.write(0, 0, &[1; 4]).unwrap();
    s.write(2, 0, &[2; 4]).unwrap();
    s.check_files().unwrap();
    let (a, b) = (dir.path().join("t/a"), dir.path().join("t/b"));
    fs::remove_file(&b).unwrap();
    let err = s.check_files().unwrap_err();
    assert!(
        matches!(&err, StorageError::Deleted(p) if *p == b),
        "{err:?}"
    );
    // Replaced under an open descriptor: the file at the path is not the one written.
    fs::remove_file(&a).unwrap();
    fs::write(&a, [1; 4]).unwrap();
    let err = s.check_files().unwrap_err();
    assert!(
        matches!(&err, StorageError::Deleted(p) if *p == a),
        "{err:?}"
    );

    // Seeding never asks.
    let seed = Storage::new(
        Layout::new("t", true, 4, [(path(&["t", "gone"]), 4, false)]).unwrap(),
        Location::Seed(dir.path().into()),
        4,
    )
    .unwrap();
    seed.check_files().unwrap();
}

#[test]
fn a_run_of_blocks_writes_what_its_blocks_would_one_by_one() {
    // Runs of 3-byte blocks cross every file boundary of the mixed layout, the padding and the
    // empty file included.
    let dir = TestDir::new("write-run");
    let layout = mixed_layout();
    let s = Storage::new(layout.clone(), Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    let bytes = data(29, 5);
    let pl = s.layout().piece_length() as usize;
    for (p, piece) in bytes.chunks(pl).enumerate() {
        let blocks: Vec<&[u8]> = piece.chunks(3).collect();
        s.write_run(p as u32, 0, &blocks).unwrap();
    }
    assert_eq!(read_all(&s), with_zero_padding(&layout, &bytes));
    // A run that would leave its piece is refused whole.
    let err = s.write_run(1, 10, &[&[1; 2], &[1; 2]]).unwrap_err();
    assert!(matches!(err, StorageError::OutOfRange { .. }), "{err:?}");
    assert_eq!(read_all(&s), with_zero_padding(&layout, &bytes));
}

#[test]
fn a_second_writer_to_a_file_waits_for_the_first() {
    let dir = TestDir::new("one-writer");
    let layout = Layout::new("f", false, 1 << 16, [(path(&["f"]), 1 << 16, false)]).unwrap();
    let s = Arc::new(Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap());
    s.allocate().unwrap();
    // Hold the file's write lock, as a writer in the middle of a write does.
    let held = lock(&s.writing[0]);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.write(0, 0, &[7; 1 << 12]).unwrap();
            done_tx.send(()).unwrap();
        })
    };
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a write went ahead while another held the file"
    );
    drop(held);
    done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    writer.join().unwrap();
    let mut buf = vec![0; 1 << 12];
    s.read(0, 0, &mut buf).unwrap();
    assert_eq!(buf, vec![7; 1 << 12]);
}

/// Pages of the first `len` bytes of `file` in the page cache, and how many of them are dirty
/// (`cachestat`, Linux 6.5 and later; syscall 451 on every architecture), or `None` where the
/// kernel lacks it.
#[cfg(target_os = "linux")]
fn cache_stat(file: &File, len: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // `struct cachestat_range` and `struct cachestat` of <linux/mman.h>.
    #[repr(C)]
    struct CacheRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let range = CacheRange { off: 0, len };
    let mut stat = CacheStat::default();
    // SAFETY: `cachestat` reads `range` and writes one `struct cachestat` into `stat`, both
    // live for the call and laid out as the kernel's; `file` keeps the descriptor open.
    let r = unsafe {
        libc::syscall(
            451,
            file.as_raw_fd(),
            &range as *const CacheRange,
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    (r == 0).then_some((stat.cache, stat.dirty))
}

#[cfg(target_os = "linux")]
#[test]
fn writeback_starts_every_so_many_bytes_written() {
    // The kernel alone would keep all of these pages dirty for 30 s (or until a tenth of memory
    // is dirty); every WRITEBACK_EVERY bytes the writeback of what was written is started.
    let dir = TestDir::new("writeback");
    let len = WRITEBACK_EVERY + (2 << 20);
    let layout = Layout::new("f", false, 1 << 20, [(path(&["f"]), len, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    let bytes = data(len as usize, 3);
    for (p, piece) in bytes.chunks(1 << 20).enumerate() {
        let blocks: Vec<&[u8]> = piece.chunks(16 << 10).collect();
        s.write_run(p as u32, 0, &blocks).unwrap();
    }
    let file = File::open(dir.path().join("f")).unwrap();
    let Some((_, dirty)) = cache_stat(&file, len) else {
        eprintln!("skipping: this kernel has no cachestat");
        return;
    };
    // What was written after the last start: at most the last 3 MiB.
    assert!(dirty <= (3 << 20) / 4096, "{dirty} pages still dirty");
    assert_eq!(read_all(&s), bytes);
}

#[cfg(target_os = "linux")]
#[test]
fn pages_written_back_are_dropped_from_the_page_cache_behind_the_download() {
    // Write a little more than WRITEBACK_EVERY, wait until it is all on the device, write as
    // much again: the next start of the writeback drops the first part, now clean, from the
    // page cache (the kernel alone would keep it).
    let dir = TestDir::new("drop-behind");
    let half = WRITEBACK_EVERY + (2 << 20);
    let layout = Layout::new("f", false, 1 << 20, [(path(&["f"]), 2 * half, false)]).unwrap();
    let s = Storage::new(layout, Location::Download(dir.path().into()), 2).unwrap();
    s.allocate().unwrap();
    let bytes = data(2 * half as usize, 5);
    let pieces: Vec<&[u8]> = bytes.chunks(1 << 20).collect();
    let (first, second) = pieces.split_at(pieces.len() / 2);
    let write = |from: usize, pieces: &[&[u8]]| {
        for (i, piece) in pieces.iter().enumerate() {
            let blocks: Vec<&[u8]> = piece.chunks(16 << 10).collect();
            s.write_run((from + i) as u32, 0, &blocks).unwrap();
        }
    };
    write(0, first);
    s.flush().unwrap();
    let file = File::open(dir.path().join("f")).unwrap();
    let Some((cached_before, _)) = cache_stat(&file, half) else {
        eprintln!("skipping: this kernel has no cachestat");
        return;
    };
    assert!(
        cached_before > 0,
        "nothing of the first half was cached to begin with"
    );
    write(first.len(), second);
    let (cached, _) = cache_stat(&file, half).unwrap();
    assert!(
        cached <= 16,
        "{cached} of the first half's {cached_before} pages still cached"
    );
    assert_eq!(read_all(&s), bytes);
}
