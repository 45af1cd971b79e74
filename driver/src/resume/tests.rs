use std::time::{Duration, SystemTime};

use kp_torrent_core::resume::{self as core_resume, ResumeError as DataError, StartPlan};

use super::*;
use crate::storage::{Layout, Location};
use crate::testdir::TestDir;

/// What the task decides from what [`read_start`] found: the plan, and why the resume data was
/// not used (if it was not).
struct Plan {
    have: Bitfield,
    check: Bitfield,
    ignored: Option<DataError>,
}

fn plan(path: &Path, hash: &InfoHash, s: &Storage) -> Plan {
    let torrent = test_torrent(s.layout(), hash);
    let on_disk = read_start(Some(path), s);
    let saved = on_disk
        .resume
        .as_deref()
        .map(|b| ResumeData::decode(b, &torrent));
    let ignored = saved.clone().and_then(Result::err);
    let StartPlan { have, check } = core_resume::plan(
        &torrent,
        saved.and_then(Result::ok).as_ref(),
        &on_disk.files,
    );
    Plan {
        have,
        check,
        ignored,
    }
}

const HASH: InfoHash = InfoHash([0xab; 20]);

/// Three files of 20 bytes in pieces of 16: piece 1 (16..32) spans files a and b.
fn layout() -> Layout {
    let p = |n: &str| vec!["t".to_string(), n.to_string()];
    Layout::new(
        "t",
        true,
        16,
        [
            (p("a"), 20, false),
            (p("b"), 20, false),
            (p("c"), 20, false),
        ],
    )
    .unwrap()
}

fn storage(dir: &Path) -> Storage {
    Storage::new(layout(), Location::Download(dir.into()), 4).unwrap()
}

fn bits(len: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(len);
    for &i in ones {
        b.set(i);
    }
    b
}

/// A storage with every piece written and a resume file vouching for pieces 0, 1, 3.
fn saved(dir: &TestDir) -> (Storage, PathBuf) {
    let s = storage(dir.path());
    s.allocate().unwrap();
    for p in 0..4 {
        s.write(p, 0, &vec![p as u8 + 1; s.layout().piece_size(p) as usize])
            .unwrap();
    }
    let path = resume_path(dir.path(), &HASH);
    let snap = Snapshot {
        info_hash: HASH,
        have: bits(4, &[0, 1, 3]),
    };
    save(&path, &snap, &s).unwrap();
    (s, path)
}

#[test]
fn round_trip_trusts_unchanged_files() {
    let dir = TestDir::new("resume-rt");
    let (s, path) = saved(&dir);
    assert!(path.starts_with(dir.path().join(".kp-torrent")));
    assert!(!path.with_extension("resume.tmp").exists());
    let got = plan(&path, &HASH, &s);
    assert_eq!(got.have, bits(4, &[0, 1, 3]));
    assert_eq!(got.check, Bitfield::new(4));
    assert_eq!(got.ignored, None);
}

#[test]
fn a_changed_mtime_drops_and_rechecks_its_pieces() {
    let dir = TestDir::new("resume-mtime");
    let (s, path) = saved(&dir);
    // File b (bytes 20..40) touches pieces 1 and 2.
    let b = File::options()
        .write(true)
        .open(dir.path().join("t/b"))
        .unwrap();
    b.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let got = plan(&path, &HASH, &s);
    assert_eq!(got.have, bits(4, &[0, 3]));
    assert_eq!(got.check, bits(4, &[1, 2]));

    // A changed size does the same, for file c (pieces 2 and 3).
    let dir = TestDir::new("resume-size");
    let (s, path) = saved(&dir);
    File::options()
        .write(true)
        .open(dir.path().join("t/c"))
        .unwrap()
        .set_len(21)
        .unwrap();
    let got = plan(&path, &HASH, &s);
    assert_eq!(got.have, bits(4, &[0, 1]));
    assert_eq!(got.check, bits(4, &[2, 3]));
}

#[test]
fn missing_files_are_fetched_not_checked() {
    let dir = TestDir::new("resume-missing");
    let (s, path) = saved(&dir);
    fs::remove_file(dir.path().join("t/a")).unwrap();
    let got = plan(&path, &HASH, &s);
    assert_eq!(got.have, bits(4, &[3]));
    assert_eq!(got.check, Bitfield::new(4));

    // Without a resume file: everything present is checked, nothing trusted.
    fs::remove_file(&path).unwrap();
    let got = plan(&path, &HASH, &s);
    assert_eq!(got.have, Bitfield::new(4));
    assert_eq!(got.check, bits(4, &[2, 3]));
    assert_eq!(got.ignored, None);
}

#[test]
fn corrupt_or_foreign_resume_files_are_ignored() {
    let dir = TestDir::new("resume-bad");
    let (s, path) = saved(&dir);
    let good = fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("very short", good[..10].to_vec()),
        ("flipped bit", flipped),
        ("empty", Vec::new()),
        ("garbage", b"d4:spam4:eggse".to_vec()),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let got = plan(&path, &HASH, &s);
        assert_eq!(got.have, Bitfield::new(4), "{what}");
        assert_eq!(got.check, Bitfield::full(4), "{what}");
        assert!(got.ignored.is_some(), "{what}");
    }
    // Another torrent's resume file, intact.
    fs::write(&path, &good).unwrap();
    let got = plan(&path, &InfoHash([1; 20]), &s);
    assert_eq!(got.ignored, Some(DataError::OtherTorrent));
}

#[test]
fn a_wrong_snapshot_is_refused() {
    let dir = TestDir::new("resume-wrong");
    let s = storage(dir.path());
    s.allocate().unwrap();
    let snap = Snapshot {
        info_hash: HASH,
        have: Bitfield::new(5),
    };
    let err = save(&resume_path(dir.path(), &HASH), &snap, &s).unwrap_err();
    assert!(matches!(
        err,
        ResumeError::WrongPieceCount {
            got: 5,
            expected: 4
        }
    ));
}

#[test]
fn a_failed_save_leaves_no_temporary_file() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipping: no /dev/full");
        return;
    }
    let dir = TestDir::new("resume-full");
    let s = storage(dir.path());
    s.allocate().unwrap();
    let path = resume_path(dir.path(), &HASH);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // The temporary file is where the bytes go first: make its writes fail as on a full disk.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    let snap = Snapshot {
        info_hash: HASH,
        have: bits(4, &[0]),
    };
    let err = save(&path, &snap, &s).unwrap_err();
    assert!(err.to_string().contains(".resume.tmp"), "{err}");
    assert!(
        fs::symlink_metadata(&tmp).is_err(),
        "{} left behind",
        tmp.display()
    );
    assert!(!path.exists());
}

#[test]
fn a_deleted_destination_is_not_made_again_for_the_resume_file() {
    let dir = TestDir::new("resume-gone");
    let dest = dir.path().join("dest");
    let s = storage(&dest);
    s.allocate().unwrap();
    fs::remove_dir_all(&dest).unwrap();
    let snap = Snapshot {
        info_hash: HASH,
        have: bits(4, &[]),
    };
    let err = save(&resume_path(&dest, &HASH), &snap, &s).unwrap_err();
    assert!(err.to_string().contains(".kp-torrent"), "{err}");
    assert!(!dest.exists(), "the deleted destination was made again");
}
