//! Cross-checks of the metainfo parser and builder with real tools: the info-hash we compute for
//! torrents made by mktorrent, transmission-create and libtorrent equals theirs, and torrents made
//! by `TorrentSpec` load in libtorrent (which verifies our piece hashes against the data) and in
//! transmission-show with our info-hash.

use std::path::Path;
use std::process::Command;

use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use kp_torrent_tests::{TempDir, require_python_libtorrent, require_tool};

const TRACKER: &str = "http://127.0.0.1:6969/announce";

/// The single file: not a multiple of any piece length used here, so its last piece is short.
const SINGLE: (&str, usize) = ("single.bin", 100_000);

/// The folder `multi`, with subfolders, a non-ASCII name and an empty file.
const MULTI: &[(&str, usize)] = &[
    ("a.bin", 50_000),
    ("empty.txt", 0),
    ("sub/café.txt", 1_234),
    ("sub/deeper/c.dat", 70_000),
];

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `single.bin` and the folder `multi` into a fresh directory.
fn make_content(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    std::fs::write(dir.path().join(SINGLE.0), pseudo_random(1, SINGLE.1)).unwrap();
    for (i, (rel, len)) in MULTI.iter().enumerate() {
        let p = dir.path().join("multi").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pseudo_random(i as u64 + 2, *len)).unwrap();
    }
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn transmission_show_hash(torrent: &Path) -> String {
    let out = run(Command::new("transmission-show").arg(torrent));
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Hash: "))
        .unwrap_or_else(|| panic!("no Hash line in transmission-show output:\n{out}"))
        .to_string()
}

fn load(torrent: &Path) -> Metainfo {
    Metainfo::from_bytes(&std::fs::read(torrent).unwrap()).unwrap()
}

/// `(path, length)` of the real files of `source` (`single.bin` or `multi`), as the torrent
/// should list them.
fn expected_files(source: &str, include_empty: bool) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = if source == SINGLE.0 {
        vec![(SINGLE.0.to_string(), SINGLE.1 as u64)]
    } else {
        MULTI
            .iter()
            .filter(|(_, len)| include_empty || *len > 0)
            .map(|(rel, len)| (format!("multi/{rel}"), *len as u64))
            .collect()
    };
    v.sort();
    v
}

/// Our parse of a tool's torrent lists the files on disk, and our layout (offsets and padding)
/// reproduces the tool's piece hashes from the data.
fn check_layout(m: &Metainfo, root: &Path, source: &str, include_empty: bool) {
    let mut ours: Vec<(String, u64)> = m
        .info
        .files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| (f.path.join("/"), f.length))
        .collect();
    ours.sort();
    assert_eq!(ours, expected_files(source, include_empty));
    let mut data = Vec::new();
    for f in &m.info.files {
        if f.padding {
            data.resize(data.len() + f.length as usize, 0);
        } else {
            let bytes =
                std::fs::read(f.path.iter().fold(root.to_path_buf(), |p, c| p.join(c))).unwrap();
            assert_eq!(bytes.len() as u64, f.length);
            data.extend_from_slice(&bytes);
        }
    }
    assert_eq!(data.len() as u64, m.info.total_length);
    assert_eq!(hash_pieces(&data, m.info.piece_length), m.info.pieces);
}

#[test]
fn mktorrent_info_hash_matches_transmission_show() {
    if require_tool("mktorrent").is_none() || require_tool("transmission-show").is_none() {
        return;
    }
    let dir = make_content("mi-mktorrent");
    for source in [SINGLE.0, "multi"] {
        let out = dir.path().join(format!("{source}.mk.torrent"));
        run(Command::new("mktorrent")
            .current_dir(dir.path())
            .args(["-l", "15", "-a", TRACKER, "-c", "made by mktorrent", "-o"])
            .arg(&out)
            .arg(source));
        let m = load(&out);
        assert_eq!(
            m.info_hash.to_hex(),
            transmission_show_hash(&out),
            "{source}"
        );
        assert_eq!(m.info.name, source);
        assert_eq!(m.info.multi_file, source == "multi");
        assert_eq!(m.info.piece_length, 1 << 15);
        assert_eq!(m.trackers, vec![vec![TRACKER.to_string()]]);
        assert_eq!(m.comment.as_deref(), Some("made by mktorrent"));
        assert!(m.created_by.as_deref().unwrap().starts_with("mktorrent"));
        assert!(m.creation_date.is_some());
        check_layout(&m, dir.path(), source, true);
    }
}

#[test]
fn transmission_create_info_hash_matches_transmission_show() {
    if require_tool("transmission-create").is_none() || require_tool("transmission-show").is_none()
    {
        return;
    }
    let dir = make_content("mi-tcreate");
    for (source, private) in [(SINGLE.0, false), ("multi", true)] {
        let out = dir.path().join(format!("{source}.tc.torrent"));
        let mut cmd = Command::new("transmission-create");
        cmd.current_dir(dir.path())
            .args(["-s", "16", "-t", TRACKER, "-o"])
            .arg(&out);
        if private {
            cmd.arg("-p");
        }
        run(cmd.arg(source));
        let m = load(&out);
        assert_eq!(
            m.info_hash.to_hex(),
            transmission_show_hash(&out),
            "{source}"
        );
        assert_eq!(m.info.private, private);
        assert_eq!(m.info.piece_length, 16 * 1024);
        assert_eq!(m.trackers, vec![vec![TRACKER.to_string()]]);
        // Transmission 3.00 leaves zero-length files out of the torrents it creates.
        check_layout(&m, dir.path(), source, false);
    }
}

/// Creates a torrent with libtorrent (`v1` or `hybrid`, which adds BEP 47 padding files) and
/// prints its v1 info-hash, then each file as `path<TAB>size<TAB>pad`.
const LT_CREATE: &str = r#"
import libtorrent as lt, os, sys
src, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fs = lt.file_storage()
lt.add_files(fs, src)
flags = lt.create_torrent.v1_only if mode == "v1" else 0
t = lt.create_torrent(fs, 16384, flags=flags)
t.add_tracker(sys.argv[4])
lt.set_piece_hashes(t, os.path.dirname(os.path.abspath(src)))
open(out, "wb").write(lt.bencode(t.generate()))
"#;

/// Loads a torrent in libtorrent and prints its v1 info-hash and files (`path<TAB>size<TAB>pad`);
/// with a save path, also adds it to a session and prints `SEEDING` once libtorrent has checked
/// every piece of the data there against the torrent's hashes.
const LT_LOAD: &str = r#"
import libtorrent as lt, sys, time
ti = lt.torrent_info(sys.argv[1])
print(ti.info_hashes().v1)
fs = ti.files()
for i in range(fs.num_files()):
    pad = bool(fs.file_flags(i) & fs.flag_pad_file)
    print("%s\t%d\t%s" % (fs.file_path(i), fs.file_size(i), pad))
if len(sys.argv) > 2:
    settings = {"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
                "enable_upnp": False, "enable_natpmp": False}
    s = lt.session(settings, 0)
    h = s.add_torrent({"ti": ti, "save_path": sys.argv[2]})
    deadline = time.time() + 15
    while time.time() < deadline and not h.status().is_seeding:
        time.sleep(0.05)
    st = h.status()
    print("SEEDING" if st.is_seeding else "NOT SEEDING %d/%d" % (st.num_pieces, ti.num_pieces()))
"#;

fn python(script: &str, args: &[&Path]) -> String {
    run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args))
}

/// `(path, size, padding)` of every file, as libtorrent lists them.
fn lt_files(out: &str) -> Vec<(String, u64, bool)> {
    out.lines()
        .skip(1)
        .filter(|l| l.contains('\t'))
        .map(|l| {
            let mut parts = l.split('\t');
            let path = parts.next().unwrap().to_string();
            let size = parts.next().unwrap().parse().unwrap();
            (path, size, parts.next() == Some("True"))
        })
        .collect()
}

fn our_files(m: &Metainfo) -> Vec<(String, u64, bool)> {
    m.info
        .files
        .iter()
        .map(|f| (f.path.join("/"), f.length, f.padding))
        .collect()
}

#[test]
fn libtorrent_info_hash_matches_for_v1_and_hybrid_torrents() {
    if !require_python_libtorrent() {
        return;
    }
    let dir = make_content("mi-lt");
    let mut saw_padding = false;
    for mode in ["v1", "hybrid"] {
        for source in [SINGLE.0, "multi"] {
            let out = dir.path().join(format!("{source}.{mode}.torrent"));
            let src = dir.path().join(source);
            run(Command::new("/usr/bin/python3")
                .args(["-c", LT_CREATE])
                .arg(&src)
                .arg(&out)
                .args([mode, TRACKER]));
            let listing = python(LT_LOAD, &[&out]);
            let m = load(&out);
            assert_eq!(
                m.info_hash.to_hex(),
                listing.lines().next().unwrap(),
                "{mode} {source}"
            );
            assert_eq!(our_files(&m), lt_files(&listing), "{mode} {source}");
            assert_eq!(m.trackers, vec![vec![TRACKER.to_string()]]);
            check_layout(&m, dir.path(), source, true);
            saw_padding |= m.info.files.iter().any(|f| f.padding);
        }
    }
    // Hybrid torrents align files to pieces with BEP 47 padding files.
    assert!(saw_padding);
}

/// Builds a torrent of `source` in `root` with our `TorrentSpec`, reading the files in sorted order.
fn our_torrent(root: &Path, source: &str) -> TorrentSpec {
    let piece_length = 16 * 1024;
    let (files, data) = if source == SINGLE.0 {
        let data = std::fs::read(root.join(source)).unwrap();
        (vec![(vec![], data.len() as u64)], data)
    } else {
        let mut rels: Vec<&str> = MULTI.iter().map(|(rel, _)| *rel).collect();
        rels.sort();
        let mut data = Vec::new();
        let mut files = Vec::new();
        for rel in rels {
            let bytes = std::fs::read(root.join(source).join(rel)).unwrap();
            files.push((
                rel.split('/').map(String::from).collect(),
                bytes.len() as u64,
            ));
            data.extend_from_slice(&bytes);
        }
        (files, data)
    };
    TorrentSpec {
        name: source.to_string(),
        piece_length,
        files,
        piece_hashes: hash_pieces(&data, piece_length),
        trackers: vec![
            vec![TRACKER.to_string()],
            vec!["udp://127.0.0.1:6969".to_string()],
        ],
        comment: Some("made by kp-torrent".into()),
        created_by: Some("kp-torrent test".into()),
        creation_date: Some(1_790_000_000),
        ..Default::default()
    }
}

#[test]
fn our_torrents_load_in_libtorrent_and_transmission_with_our_info_hash() {
    let have_lt = require_python_libtorrent();
    let have_show = require_tool("transmission-show").is_some();
    let dir = make_content("mi-ours");
    for source in [SINGLE.0, "multi"] {
        let spec = our_torrent(dir.path(), source);
        let out = dir.path().join(format!("{source}.kp.torrent"));
        std::fs::write(&out, spec.to_bytes()).unwrap();
        let m = load(&out);
        if have_show {
            assert_eq!(
                transmission_show_hash(&out),
                m.info_hash.to_hex(),
                "{source}"
            );
        }
        if have_lt {
            let listing = python(LT_LOAD, &[&out, dir.path()]);
            assert_eq!(
                listing.lines().next().unwrap(),
                m.info_hash.to_hex(),
                "{source}"
            );
            let mut expected: Vec<(String, u64, bool)> = expected_files(source, true)
                .into_iter()
                .map(|(p, l)| (p, l, false))
                .collect();
            let mut theirs = lt_files(&listing);
            theirs.sort();
            expected.sort();
            assert_eq!(theirs, expected, "{source}");
            // libtorrent hashed the data on disk and found every piece matches our hashes.
            assert_eq!(
                listing.lines().last(),
                Some("SEEDING"),
                "{source}: {listing}"
            );
        }
    }
}
