//! Hostile torrents: we load what libtorrent 2.0.8 loads and refuse what it refuses.
//!
//! Each case builds a torrent's bytes here, says what libtorrent does with it (the verdict was
//! checked by hand and is checked again on every run: `lt.torrent_info(bytes)` through Debian's
//! /usr/bin/python3) and which [`MetainfoError`] we give when it refuses. For torrents that load,
//! the files must agree too (lengths, padding, and where a BEP 47 link points), and laying the
//! torrent out on disk must create nothing outside the destination folder and no symbolic link.

use std::path::Path;
use std::process::Command;

use kp_torrent::storage::{Layout, Location, Storage};
use kp_torrent_core::bencode::Owned;
use kp_torrent_core::metainfo::{FileTreeProblem, Metainfo, MetainfoError};
use kp_torrent_tests::{TempDir, require_python_libtorrent};

const PIECE: u64 = 16 * 1024;

fn b(s: &str) -> Owned {
    Owned::bytes(s)
}

fn list(items: Vec<Owned>) -> Owned {
    Owned::List(items)
}

fn strings(parts: &[&str]) -> Owned {
    list(parts.iter().map(|p| b(p)).collect())
}

fn dict(entries: Vec<(&str, Owned)>) -> Owned {
    entries.into_iter().collect()
}

fn set(d: &mut Owned, key: &str, v: Owned) {
    if let Owned::Dict(m) = d {
        m.insert(key.as_bytes().to_vec(), v);
    }
}

fn del(d: &mut Owned, key: &str) {
    if let Owned::Dict(m) = d {
        m.remove(key.as_bytes());
    }
}

fn pieces(total: u64) -> Owned {
    Owned::Bytes(vec![1; 20 * total.div_ceil(PIECE) as usize])
}

fn single(name: &str, length: u64) -> Owned {
    dict(vec![
        ("name", b(name)),
        ("length", Owned::Int(length as i64)),
        ("piece length", Owned::Int(PIECE as i64)),
        ("pieces", pieces(length)),
    ])
}

/// A multi-file `info` named `folder`; the piece count follows the lengths as the torrent
/// states them (links included: where libtorrent ignores them, the counts are set by hand).
fn multi(files: Vec<Owned>) -> Owned {
    let total: u64 = files
        .iter()
        .map(|f| match f {
            Owned::Dict(m) => match m.get(&b"length"[..]) {
                Some(Owned::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        })
        .sum();
    dict(vec![
        ("name", b("folder")),
        ("files", list(files)),
        ("piece length", Owned::Int(PIECE as i64)),
        ("pieces", pieces(total)),
    ])
}

fn file(path: &[&str], length: u64) -> Owned {
    dict(vec![
        ("length", Owned::Int(length as i64)),
        ("path", strings(path)),
    ])
}

fn with(mut d: Owned, key: &str, v: Owned) -> Owned {
    set(&mut d, key, v);
    d
}

fn without(mut d: Owned, key: &str) -> Owned {
    del(&mut d, key);
    d
}

fn pad(length: u64) -> Owned {
    with(file(&[".pad", &length.to_string()], length), "attr", b("p"))
}

fn link(path: &[&str], target: &[&str]) -> Owned {
    with(
        with(file(path, 0), "attr", b("l")),
        "symlink path",
        strings(target),
    )
}

/// A v2 file entry of `length` bytes (at most one piece, so it needs no piece layer).
fn leaf(length: u64) -> Owned {
    dict(vec![(
        "",
        dict(vec![
            ("length", Owned::Int(length as i64)),
            ("pieces root", Owned::Bytes(vec![7; 32])),
        ]),
    )])
}

/// A hybrid of `a` (1000 bytes), `sub/b` (2000) and `sub/c` (3000): v1 files with the padding v2
/// implies (`v1` can change them), and the matching `file tree` (`tree` can change it).
fn hybrid(v1: impl FnOnce(&mut Vec<Owned>), tree: impl FnOnce(&mut Owned)) -> Owned {
    let mut files = vec![
        file(&["a"], 1000),
        pad(PIECE - 1000),
        file(&["sub", "b"], 2000),
        pad(PIECE - 2000),
        file(&["sub", "c"], 3000),
        pad(PIECE - 3000),
    ];
    v1(&mut files);
    let mut t = dict(vec![
        ("a", leaf(1000)),
        ("sub", dict(vec![("b", leaf(2000)), ("c", leaf(3000))])),
    ]);
    tree(&mut t);
    let mut info = multi(files);
    set(&mut info, "meta version", Owned::Int(2));
    set(&mut info, "file tree", t);
    info
}

fn sub_tree(t: &mut Owned) -> &mut Owned {
    match t {
        Owned::Dict(m) => m.get_mut(&b"sub"[..]).expect("sub folder"),
        _ => unreachable!("the tree is a dictionary"),
    }
}

/// One hostile torrent and both verdicts.
struct Case {
    name: &'static str,
    info: Owned,
    /// What libtorrent 2.0.8 does: `true` when `torrent_info` loads it.
    libtorrent_loads: bool,
    /// Our refusal when libtorrent refuses.
    refusal: Option<MetainfoError>,
}

fn loads(name: &'static str, info: Owned) -> Case {
    Case {
        name,
        info,
        libtorrent_loads: true,
        refusal: None,
    }
}

fn refused(name: &'static str, info: Owned, e: MetainfoError) -> Case {
    Case {
        name,
        info,
        libtorrent_loads: false,
        refusal: Some(e),
    }
}

fn cases() -> Vec<Case> {
    use MetainfoError::*;
    let not_strings = |index, key| PathNotStrings { index, key };
    let a = || file(&["a"], 5);
    vec![
        // Names.
        refused("single name empty", single("", 5), InvalidName),
        refused("single name dot", single(".", 5), InvalidName),
        refused("single name dotdot", single("..", 5), InvalidName),
        refused("single name slash", single("/", 5), InvalidName),
        refused("single name backslash", single("\\", 5), InvalidName),
        refused("single name NUL", single("\0", 5), InvalidName),
        refused("single name dot slash dot", single("./.", 5), InvalidName),
        refused(
            "single name.utf-8 dotdot beside a good name",
            with(single("ok", 5), "name.utf-8", b("..")),
            InvalidName,
        ),
        loads(
            "single name dotdot beside a good name.utf-8",
            with(single("..", 5), "name.utf-8", b("ok")),
        ),
        loads("single name spaces", single("   ", 5)),
        loads("single name dots", single("...", 5)),
        loads("single name with separators", single("../x", 5)),
        loads("single name slash a", single("/a", 5)),
        loads("folder name empty", with(multi(vec![a()]), "name", b(""))),
        loads(
            "folder name dotdot",
            with(multi(vec![a()]), "name", b("..")),
        ),
        loads("folder name slash", with(multi(vec![a()]), "name", b("/"))),
        refused(
            "name not a string",
            with(multi(vec![a()]), "name", Owned::Int(5)),
            MissingName,
        ),
        // Paths.
        refused(
            "path holds an integer",
            multi(vec![
                a(),
                with(file(&[], 5), "path", list(vec![Owned::Int(1)])),
            ]),
            not_strings(1, "path"),
        ),
        refused(
            "path holds a string and an integer",
            multi(vec![with(a(), "path", list(vec![b("a"), Owned::Int(1)]))]),
            not_strings(0, "path"),
        ),
        refused(
            "path holds a list",
            multi(vec![with(a(), "path", list(vec![strings(&["a"])]))]),
            not_strings(0, "path"),
        ),
        refused(
            "path.utf-8 holds an integer beside a good path",
            multi(vec![with(a(), "path.utf-8", list(vec![Owned::Int(1)]))]),
            not_strings(0, "path.utf-8"),
        ),
        refused(
            "path.utf-8 empty beside a good path",
            multi(vec![with(a(), "path.utf-8", list(vec![]))]),
            FileWithoutPath { index: 0 },
        ),
        loads(
            "path.utf-8 a string beside a good path",
            multi(vec![with(a(), "path.utf-8", b("x"))]),
        ),
        loads(
            "good path.utf-8 beside a bad path",
            multi(vec![with(
                with(a(), "path", list(vec![Owned::Int(1)])),
                "path.utf-8",
                strings(&["x"]),
            )]),
        ),
        refused(
            "path a string",
            multi(vec![with(a(), "path", b("a"))]),
            FileWithoutPath { index: 0 },
        ),
        refused(
            "path empty",
            multi(vec![with(a(), "path", list(vec![]))]),
            FileWithoutPath { index: 0 },
        ),
        loads("path only dotdot", multi(vec![file(&[".."], 5)])),
        loads("path empty component", multi(vec![file(&[""], 5)])),
        loads(
            "path climbing out",
            multi(vec![file(&["..", "..", "etc", "passwd"], 5)]),
        ),
        loads("path absolute", multi(vec![file(&["/etc/passwd"], 5)])),
        // Padding.
        loads(
            "padding file without a path",
            multi(vec![
                file(&["a"], 5),
                without(pad(PIECE - 5), "path"),
                file(&["b"], 5),
            ]),
        ),
        refused(
            "plain file without a path",
            multi(vec![a(), without(file(&["b"], 5), "path")]),
            FileWithoutPath { index: 1 },
        ),
        // BEP 47 symlinks.
        loads(
            "symlink to a file inside",
            multi(vec![a(), link(&["l"], &["a"])]),
        ),
        loads(
            "symlink to a folder inside",
            multi(vec![file(&["d", "a"], 5), link(&["l"], &["d"])]),
        ),
        loads(
            "symlink inside through dot and dotdot",
            multi(vec![
                file(&["d", "a"], 5),
                link(&["d", "l"], &[".", "d", "..", "d", "a"]),
            ]),
        ),
        loads(
            "symlink with a length",
            // libtorrent counts it as empty: one piece of data, not two.
            with(
                multi(vec![
                    file(&["a"], PIECE),
                    with(link(&["l"], &["a"]), "length", Owned::Int(PIECE as i64)),
                ]),
                "pieces",
                pieces(PIECE),
            ),
        ),
        loads(
            "symlink through dotdot, which is dropped",
            multi(vec![file(&["d", "a"], 5), link(&["l"], &["d", "..", "a"])]),
        ),
        loads(
            "symlink climbing out",
            multi(vec![a(), link(&["l"], &["..", "..", "etc", "passwd"])]),
        ),
        loads(
            "symlink climbing out of a folder",
            multi(vec![a(), link(&["l"], &["d", "..", "..", "x"])]),
        ),
        loads(
            "symlink to an absolute path",
            multi(vec![a(), link(&["l"], &["/etc/passwd"])]),
        ),
        loads(
            "symlink component with a separator",
            multi(vec![file(&["d", "a"], 5), link(&["l"], &["d/a"])]),
        ),
        loads(
            "symlink to something missing",
            multi(vec![a(), link(&["l"], &["zzz"])]),
        ),
        loads("symlink to itself", multi(vec![a(), link(&["l"], &["l"])])),
        loads(
            "symlink without a target",
            multi(vec![a(), without(link(&["l"], &[]), "symlink path")]),
        ),
        loads(
            "symlink target a string",
            multi(vec![a(), with(link(&["l"], &[]), "symlink path", b("a"))]),
        ),
        refused(
            "symlink target holds an integer",
            multi(vec![
                a(),
                with(link(&["l"], &[]), "symlink path", list(vec![Owned::Int(1)])),
            ]),
            not_strings(1, "symlink path"),
        ),
        refused(
            "symlink without a path",
            multi(vec![a(), without(link(&["l"], &["a"]), "path")]),
            FileWithoutPath { index: 1 },
        ),
        refused(
            "only a symlink",
            with(
                multi(vec![link(&["l"], &["x"])]),
                "pieces",
                Owned::Bytes(vec![]),
            ),
            EmptyTorrent,
        ),
        loads(
            "symlink and file with one name",
            multi(vec![a(), link(&["a"], &["b"]), file(&["b"], 3)]),
        ),
        // Hybrid v1 + v2.
        loads("hybrid that agrees", hybrid(|_| {}, |_| {})),
        loads(
            "hybrid without the last padding file",
            hybrid(
                |f| {
                    f.pop();
                },
                |_| {},
            ),
        ),
        loads(
            "hybrid with its padding renamed",
            hybrid(
                |f| f[1] = with(pad(PIECE - 1000), "path", strings(&["x"])),
                |_| {},
            ),
        ),
        refused(
            "hybrid with a file renamed in v2",
            hybrid(
                |_| {},
                |t| {
                    if let Owned::Dict(m) = t {
                        let a = m.remove(&b"a"[..]).expect("a");
                        m.insert(b"z".to_vec(), a);
                    }
                },
            ),
            HybridMismatch { index: 0 },
        ),
        refused(
            "hybrid with a file renamed in v1",
            hybrid(|f| f[2] = file(&["sub", "B"], 2000), |_| {}),
            HybridMismatch { index: 2 },
        ),
        refused(
            "hybrid with another length in v2",
            hybrid(
                |_| {},
                |t| {
                    if let Owned::Dict(m) = sub_tree(t) {
                        m.insert(b"c".to_vec(), leaf(2999));
                    }
                },
            ),
            HybridMismatch { index: 4 },
        ),
        refused(
            "hybrid with a file missing from v2",
            hybrid(
                |_| {},
                |t| {
                    if let Owned::Dict(m) = sub_tree(t) {
                        m.remove(&b"b"[..]);
                    }
                },
            ),
            HybridMismatch { index: 2 },
        ),
        refused(
            "hybrid without v1 padding",
            hybrid(
                |f| f.retain(|x| !matches!(x, Owned::Dict(m) if m.contains_key(&b"attr"[..]))),
                |_| {},
            ),
            HybridMismatch { index: 1 },
        ),
        refused(
            "hybrid with an extra empty v1 file",
            hybrid(|f| f.insert(0, file(&["0"], 0)), |_| {}),
            HybridMismatch { index: 0 },
        ),
        refused(
            "hybrid without a file tree",
            without(hybrid(|_| {}, |_| {}), "file tree"),
            BadFileTree {
                reason: FileTreeProblem::Missing,
            },
        ),
        refused(
            "hybrid whose file tree is an integer",
            with(hybrid(|_| {}, |_| {}), "file tree", Owned::Int(5)),
            BadFileTree {
                reason: FileTreeProblem::Missing,
            },
        ),
        refused(
            "file tree without meta version 2",
            without(hybrid(|_| {}, |_| {}), "meta version"),
            V2KeysWithoutMetaVersion,
        ),
    ]
}

/// Loads each torrent file named on the command line and prints one line per torrent: `ERR`
/// and libtorrent's message, or `OK` and each file as `size:pad:target`, where `target` is
/// the hex of a link's target when it points somewhere other than the link itself, else `-`.
const LT_VERDICTS: &str = r#"
import libtorrent as lt, sys
for path in sys.argv[1:]:
    try:
        ti = lt.torrent_info(open(path, "rb").read())
    except Exception as e:
        print("ERR", str(e).replace("\n", " "))
        continue
    fs = ti.files()
    out = []
    for i in range(fs.num_files()):
        flags = fs.file_flags(i)
        target = "-"
        if flags & fs.flag_symlink and fs.symlink(i) and fs.symlink(i) != fs.file_path(i):
            target = fs.symlink(i).encode().hex()
        out.append("%d:%d:%s" % (fs.file_size(i), bool(flags & fs.flag_pad_file), target))
    print("OK", " ".join(out))
"#;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Our files in the script's `size:pad:target` form.
fn our_files(m: &Metainfo) -> String {
    m.info
        .files
        .iter()
        .map(|f| {
            let target = f
                .symlink
                .as_ref()
                .map_or("-".to_string(), |t| hex(&t.join("/")));
            format!("{}:{}:{target}", f.length, u8::from(f.padding))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn torrent_bytes(info: &Owned) -> Vec<u8> {
    dict(vec![("info", info.clone())]).encode()
}

#[test]
fn we_refuse_exactly_what_libtorrent_refuses() {
    let cases = cases();
    let mut parsed = Vec::new();
    for c in &cases {
        let ours = Metainfo::from_bytes(&torrent_bytes(&c.info));
        match (&ours, &c.refusal) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => {
                assert_eq!(e, want, "{}", c.name);
                let text = e.to_string();
                assert!(
                    text.starts_with("invalid torrent") || text.starts_with("invalid hybrid"),
                    "{}: {text}",
                    c.name
                );
            }
            (Ok(_), Some(want)) => panic!("{}: we load it, expected {want:?}", c.name),
            (Err(e), None) => panic!("{}: we refuse it ({e}), libtorrent loads it", c.name),
        }
        parsed.push(ours);
    }

    if !require_python_libtorrent() {
        return;
    }
    let dir = TempDir::new("hostile-torrents");
    let paths: Vec<std::path::PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = dir.path().join(format!("{i}.torrent"));
            std::fs::write(&p, torrent_bytes(&c.info)).unwrap();
            p
        })
        .collect();
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(LT_VERDICTS)
        .args(&paths)
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let verdicts: Vec<&str> = stdout.lines().collect();
    assert_eq!(verdicts.len(), cases.len(), "{stdout}");
    let mut disagreements = Vec::new();
    for ((c, ours), theirs) in cases.iter().zip(&parsed).zip(&verdicts) {
        let lt_loads = theirs.starts_with("OK");
        if lt_loads != c.libtorrent_loads {
            disagreements.push(format!(
                "{}: libtorrent now says {theirs:?}, the case says it {}",
                c.name,
                if c.libtorrent_loads {
                    "loads"
                } else {
                    "refuses"
                }
            ));
            continue;
        }
        if let Ok(m) = ours {
            let files = theirs.strip_prefix("OK").unwrap_or_default().trim();
            if files != our_files(m) {
                disagreements.push(format!(
                    "{}: files differ\n  libtorrent {files}\n  ours       {}",
                    c.name,
                    our_files(m)
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

/// Every entry under `root`, recursively, without following links.
fn walk(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push(path.clone());
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn loading_a_hostile_torrent_onto_disk_stays_in_the_destination() {
    for c in cases().iter().filter(|c| c.refusal.is_none()) {
        let m = Metainfo::from_bytes(&torrent_bytes(&c.info)).unwrap();
        let dir = TempDir::new("hostile-layout");
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let storage = Storage::new(
            Layout::from_info(&m.info),
            Location::Download(dest.clone()),
            8,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        storage
            .allocate()
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let mut entries = Vec::new();
        walk(dir.path(), &mut entries);
        let mut files = 0;
        for p in &entries {
            assert!(
                p.starts_with(&dest),
                "{}: created {} outside the destination",
                c.name,
                p.display()
            );
            let meta = std::fs::symlink_metadata(p).unwrap();
            assert!(
                !meta.file_type().is_symlink(),
                "{}: created a link {}",
                c.name,
                p.display()
            );
            files += usize::from(meta.is_file());
        }
        // Every file but padding is on disk (links as empty files), nothing else.
        let expected = m.info.files.iter().filter(|f| !f.padding).count();
        assert_eq!(files, expected, "{}: {entries:?}", c.name);
    }
}
