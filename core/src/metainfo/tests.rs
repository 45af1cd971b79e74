use super::*;
use crate::bencode::Owned;

fn b(s: &str) -> Owned {
    Owned::bytes(s)
}

fn list(items: Vec<Owned>) -> Owned {
    Owned::List(items)
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

fn pieces_for(total: u64, piece_length: u64) -> Owned {
    let n = total.div_ceil(piece_length) as usize;
    Owned::Bytes((0..n * 20).map(|i| i as u8).collect())
}

fn single_info(length: u64, piece_length: u64) -> Owned {
    [
        ("name", b("file.bin")),
        ("length", Owned::Int(length as i64)),
        ("piece length", Owned::Int(piece_length as i64)),
        ("pieces", pieces_for(length, piece_length)),
    ]
    .into_iter()
    .collect()
}

fn file(path: &[&str], length: u64) -> Owned {
    [
        ("length", Owned::Int(length as i64)),
        ("path", list(path.iter().map(|p| b(p)).collect())),
    ]
    .into_iter()
    .collect()
}

fn multi_info(files: Vec<Owned>, total: u64, piece_length: u64) -> Owned {
    [
        ("name", b("folder")),
        ("files", list(files)),
        ("piece length", Owned::Int(piece_length as i64)),
        ("pieces", pieces_for(total, piece_length)),
    ]
    .into_iter()
    .collect()
}

fn torrent(info: Owned) -> Vec<u8> {
    [("info", info)].into_iter().collect::<Owned>().encode()
}

fn parse(info: Owned) -> Result<Metainfo, MetainfoError> {
    Metainfo::from_bytes(&torrent(info))
}

fn paths(m: &Metainfo) -> Vec<String> {
    m.info.files.iter().map(|f| f.path.join("/")).collect()
}

#[test]
fn info_hash_is_the_sha1_of_the_raw_info_bytes_not_a_re_encoding() {
    // Keys out of order: a re-encoding would sort them and change the hash.
    let info = b"d12:piece lengthi16384e4:name1:a6:lengthi5e6:pieces20:01234567890123456789e";
    let mut data = b"d8:announce9:http://t/4:info".to_vec();
    data.extend_from_slice(info);
    data.push(b'e');
    let m = Metainfo::from_bytes(&data).unwrap();
    assert_eq!(m.info_hash, InfoHash::of(info));
    assert_eq!(m.info.raw, info.to_vec());
    let reencoded = bencode::decode(info).unwrap().to_owned().encode();
    assert_ne!(m.info_hash, InfoHash::of(&reencoded));
}

#[test]
fn single_file_with_a_short_last_piece() {
    let m = parse(single_info(40_000, 16_384)).unwrap();
    let i = &m.info;
    assert_eq!(i.name, "file.bin");
    assert!(!i.multi_file);
    assert_eq!(i.total_length, 40_000);
    assert_eq!(i.piece_count(), 3);
    assert_eq!(i.pieces[1][0], 20);
    assert_eq!(i.piece_size(0), 16_384);
    assert_eq!(i.piece_size(2), 40_000 - 2 * 16_384);
    assert_eq!(i.piece_size(3), 0);
    assert_eq!(
        i.files,
        vec![FileEntry {
            path: vec!["file.bin".into()],
            length: 40_000,
            offset: 0,
            padding: false,
            symlink: None,
        }]
    );
    assert_eq!(i.files_in_piece(2), 0..1);
    assert_eq!(i.files_in_piece(3), 0..0);
    assert!(m.trackers.is_empty());
    assert!(!i.private);
}

#[test]
fn multi_file_layout_offsets_and_files_in_piece() {
    let files = vec![
        file(&["a.txt"], 10),
        file(&["sub", "empty"], 0),
        file(&["sub", "b.bin"], 20),
        file(&["c"], 2),
    ];
    let m = parse(multi_info(files, 32, 16)).unwrap();
    let i = &m.info;
    assert!(i.multi_file);
    assert_eq!(
        paths(&m),
        [
            "folder/a.txt",
            "folder/sub/empty",
            "folder/sub/b.bin",
            "folder/c"
        ]
    );
    let offsets: Vec<u64> = i.files.iter().map(|f| f.offset).collect();
    assert_eq!(offsets, [0, 10, 10, 30]);
    assert_eq!(i.total_length, 32);
    assert_eq!(i.piece_count(), 2);
    // Piece 0 = bytes 0..16: a.txt and the start of b.bin; the empty file sits inside the range.
    assert_eq!(i.files_in_piece(0), 0..3);
    // Piece 1 = bytes 16..32: rest of b.bin and c.
    assert_eq!(i.files_in_piece(1), 2..4);
    assert_eq!(i.piece_range(1), 16..32);
}

#[test]
fn zero_length_file_at_a_piece_edge_is_not_in_that_piece() {
    let files = vec![
        file(&["e0"], 0),
        file(&["a"], 16),
        file(&["e1"], 0),
        file(&["b"], 4),
    ];
    let m = parse(multi_info(files, 20, 16)).unwrap();
    assert_eq!(m.info.files_in_piece(0), 1..2);
    assert_eq!(m.info.files_in_piece(1), 3..4);
}

#[test]
fn announce_and_announce_list_tiers() {
    let with = |extra: Vec<(&str, Owned)>| {
        let mut root: Owned = [("info", single_info(1, 16))].into_iter().collect();
        for (k, v) in extra {
            set(&mut root, k, v);
        }
        Metainfo::from_bytes(&root.encode()).unwrap().trackers
    };
    assert_eq!(
        with(vec![("announce", b("http://a/ann"))]),
        vec![vec!["http://a/ann".to_string()]]
    );
    let tiers = list(vec![
        list(vec![b("http://t1a/"), b("udp://t1b:80")]),
        list(vec![]),
        list(vec![b(""), b(" http://t2/ ")]),
    ]);
    assert_eq!(
        with(vec![
            ("announce", b("http://a/ann")),
            ("announce-list", tiers)
        ]),
        vec![
            vec!["http://t1a/".to_string(), "udp://t1b:80".to_string()],
            vec!["http://t2/".to_string()]
        ]
    );
    // An announce-list without any URL falls back to announce.
    assert_eq!(
        with(vec![
            ("announce", b("http://a/")),
            ("announce-list", list(vec![list(vec![])]))
        ]),
        vec![vec!["http://a/".to_string()]]
    );
    assert!(with(vec![]).is_empty());
}

#[test]
fn url_list_as_a_string_or_a_list() {
    let with = |v: Owned| {
        let root: Owned = [("info", single_info(1, 16)), ("url-list", v)]
            .into_iter()
            .collect();
        Metainfo::from_bytes(&root.encode()).unwrap().url_list
    };
    assert_eq!(with(b("http://w/")), vec!["http://w/".to_string()]);
    assert_eq!(
        with(list(vec![b("http://w1/"), b(""), b("http://w2/")])),
        vec!["http://w1/".to_string(), "http://w2/".to_string()]
    );
    // Other schemes, repeats, a list that is not all strings, over-long URLs: left out.
    assert_eq!(
        with(list(vec![
            b("ftp://w/"),
            b("HTTPS://w3/x"),
            Owned::Int(5),
            b("http://w1/"),
            b("http://w1/"),
            b("magnet:?xt=urn:btih:00"),
            b(&format!("http://w/{}", "a".repeat(3000))),
        ])),
        vec!["HTTPS://w3/x".to_string(), "http://w1/".to_string()]
    );
    assert_eq!(with(b("udp://t:1")), Vec::<String>::new());
    // At most 32 are kept, however many there are.
    let many = (0..1000).map(|i| b(&format!("http://w{i}/"))).collect();
    let kept = with(list(many));
    assert_eq!(kept.len(), MAX_URL_LIST);
    assert_eq!(kept[31], "http://w31/");
}

#[test]
fn private_flag() {
    let mut info = single_info(1, 16);
    assert!(!parse(info.clone()).unwrap().info.private);
    set(&mut info, "private", Owned::Int(1));
    assert!(parse(info.clone()).unwrap().info.private);
    set(&mut info, "private", Owned::Int(0));
    assert!(!parse(info).unwrap().info.private);
}

#[test]
fn creation_date_comment_and_created_by_prefer_utf8_variants() {
    let root: Owned = [
        ("info", single_info(1, 16)),
        ("creation date", Owned::Int(1_700_000_000)),
        ("comment", b("plain")),
        ("created by", b("mktorrent 1.1")),
    ]
    .into_iter()
    .collect();
    let m = Metainfo::from_bytes(&root.encode()).unwrap();
    assert_eq!(m.creation_date, Some(1_700_000_000));
    assert_eq!(m.comment.as_deref(), Some("plain"));
    assert_eq!(m.created_by.as_deref(), Some("mktorrent 1.1"));

    let mut root = root;
    set(&mut root, "comment.utf-8", b("ünïcode"));
    let mut info = single_info(1, 16);
    set(&mut info, "name", Owned::Bytes(b"caf\xe9".to_vec()));
    set(&mut info, "name.utf-8", b("café"));
    set(&mut root, "info", info);
    let m = Metainfo::from_bytes(&root.encode()).unwrap();
    assert_eq!(m.comment.as_deref(), Some("ünïcode"));
    assert_eq!(m.info.name, "café");
}

#[test]
fn path_utf8_is_preferred_and_non_utf8_is_replaced() {
    let mut f = file(&["x"], 1);
    set(
        &mut f,
        "path",
        list(vec![Owned::Bytes(b"caf\xe9".to_vec())]),
    );
    let plain = parse(multi_info(vec![f.clone()], 1, 16)).unwrap();
    assert_eq!(paths(&plain), ["folder/caf\u{fffd}"]);
    set(&mut f, "path.utf-8", list(vec![b("café")]));
    assert_eq!(
        paths(&parse(multi_info(vec![f], 1, 16)).unwrap()),
        ["folder/café"]
    );
}

#[test]
fn padding_files_count_in_the_layout_and_are_marked() {
    let mut pad = file(&[".pad", "6"], 6);
    set(&mut pad, "attr", b("p"));
    let mut pad2 = file(&[".pad", "6"], 6);
    set(&mut pad2, "attr", b("p"));
    let files = vec![
        file(&["a"], 10),
        pad,
        file(&["b"], 16),
        pad2,
        file(&["c"], 1),
    ];
    let m = parse(multi_info(files, 39, 16)).unwrap();
    let f = &m.info.files;
    assert!(f[1].padding && f[3].padding && !f[0].padding && !f[2].padding);
    assert_eq!(f[2].offset, 16);
    assert_eq!(f[4].offset, 38);
    // Two padding files with one path are not renamed: they never reach the disk.
    assert_eq!(f[1].path, f[3].path);
    assert_eq!(m.info.files_in_piece(1), 2..3);
}

#[test]
fn unsafe_paths_inside_a_torrent_are_sanitized() {
    let files = vec![
        file(&["..", "..", "etc", "passwd"], 1),
        file(&["/abs", "", ".", "x"], 1),
        file(&["a\\..\\b", "c\0d"], 1),
        file(&[".."], 1),
        file(&["CON", "aux.txt"], 1),
    ];
    let m = parse(multi_info(files, 5, 16)).unwrap();
    assert_eq!(
        paths(&m),
        [
            "folder/etc/passwd",
            "folder/_abs/x",
            "folder/a_.._b/c_d",
            "folder/_",
            "folder/CON_/aux_.txt"
        ]
    );
    for f in &m.info.files {
        assert!(
            f.path.iter().all(|c| path::is_safe_component(c)),
            "{:?}",
            f.path
        );
    }
}

#[test]
fn a_folder_name_that_sanitizes_to_nothing_becomes_the_info_hash() {
    let mut info = multi_info(vec![file(&["a"], 1)], 1, 16);
    set(&mut info, "name", b(".."));
    let m = parse(info.clone()).unwrap();
    assert_eq!(m.info.name, m.info_hash.to_hex());
    assert_eq!(m.info.files[0].path, vec![m.info_hash.to_hex(), "a".into()]);
    set(&mut info, "name", b(""));
    assert_eq!(parse(info).unwrap().info.name.len(), 40);
    // A single file whose name libtorrent keeps but we cannot (trailing spaces go): the hash.
    let mut info = single_info(1, 16);
    set(&mut info, "name", b("   "));
    assert_eq!(parse(info).unwrap().info.name.len(), 40);
}

#[test]
fn a_single_file_without_a_name_is_refused() {
    for name in ["", ".", "..", "/", "\\", "./.", ".\0.", "\0", "//"] {
        let mut info = single_info(1, 16);
        set(&mut info, "name", b(name));
        assert_eq!(
            parse(info).unwrap_err(),
            MetainfoError::InvalidName,
            "{name:?}"
        );
    }
    for (name, kept) in [("/a", "_a"), ("a/..", "a_"), ("\0a", "_a")] {
        let mut info = single_info(1, 16);
        set(&mut info, "name", b(name));
        assert_eq!(parse(info).unwrap().info.name, kept, "{name:?}");
    }
    // libtorrent loads `...`; we cannot keep trailing dots (Windows), so it gets the hash.
    let mut info = single_info(1, 16);
    set(&mut info, "name", b("..."));
    assert_eq!(parse(info).unwrap().info.name.len(), 40);
    // `name.utf-8` wins when it is a non-empty string, `..` included.
    let mut info = single_info(1, 16);
    set(&mut info, "name.utf-8", b(".."));
    assert_eq!(parse(info).unwrap_err(), MetainfoError::InvalidName);
}

#[test]
fn a_path_that_is_not_a_list_of_strings_is_refused() {
    let bad = |key: &str, v: Owned| {
        let mut f = file(&["a"], 1);
        set(&mut f, key, v);
        parse(multi_info(vec![file(&["ok"], 1), f], 2, 16))
    };
    let int_in = |items: Vec<Owned>| list(items);
    assert_eq!(
        bad("path", int_in(vec![Owned::Int(1)])).unwrap_err(),
        MetainfoError::PathNotStrings {
            index: 1,
            key: "path"
        }
    );
    assert_eq!(
        bad("path", int_in(vec![b("a"), list(vec![b("b")])])).unwrap_err(),
        MetainfoError::PathNotStrings {
            index: 1,
            key: "path"
        }
    );
    // A `path.utf-8` list is used whenever present: a bad one is refused even beside a good
    // `path`, an empty one is no path.
    assert_eq!(
        bad("path.utf-8", int_in(vec![Owned::Int(1)])).unwrap_err(),
        MetainfoError::PathNotStrings {
            index: 1,
            key: "path.utf-8"
        }
    );
    assert_eq!(
        bad("path.utf-8", list(vec![])).unwrap_err(),
        MetainfoError::FileWithoutPath { index: 1 }
    );
    // A `path.utf-8` that is not a list is ignored, and a string `path` is no path.
    assert_eq!(
        paths(&bad("path.utf-8", b("x")).unwrap()),
        ["folder/ok", "folder/a"]
    );
    assert_eq!(
        bad("path", b("a")).unwrap_err(),
        MetainfoError::FileWithoutPath { index: 1 }
    );
    assert!(
        MetainfoError::PathNotStrings {
            index: 1,
            key: "path"
        }
        .to_string()
        .contains("`path` of file #1 holds something other than strings")
    );
}

#[test]
fn a_padding_file_needs_no_path() {
    let mut pad = file(&[], 6);
    del(&mut pad, "path");
    set(&mut pad, "attr", b("p"));
    let m = parse(multi_info(
        vec![file(&["a"], 10), pad, file(&["b"], 1)],
        17,
        16,
    ))
    .unwrap();
    assert!(m.info.files[1].padding);
    assert_eq!(m.info.files[1].path, ["folder", ".pad", "6"]);
    assert_eq!(m.info.files[2].offset, 16);
    // Any other file still needs one.
    let mut plain = file(&[], 6);
    del(&mut plain, "path");
    assert_eq!(
        parse(multi_info(vec![file(&["a"], 10), plain], 16, 16)).unwrap_err(),
        MetainfoError::FileWithoutPath { index: 1 }
    );
}

fn link(path: &[&str], length: u64, target: Option<Owned>) -> Owned {
    let mut f = file(path, length);
    set(&mut f, "attr", b("l"));
    if let Some(t) = target {
        set(&mut f, "symlink path", t);
    }
    f
}

fn target(parts: &[&str]) -> Option<Owned> {
    Some(list(parts.iter().map(|p| b(p)).collect()))
}

#[test]
fn symlinks_hold_no_data_and_keep_only_targets_inside_the_torrent() {
    let files = vec![
        file(&["d", "a"], 5),
        // Its length is ignored: the torrent's data is the 5 bytes of `a`.
        link(&["in"], 100, target(&["d", "a"])),
        link(&["dir"], 0, target(&["d"])),
        link(&["dotted"], 0, target(&[".", "d", ".", "a"])),
        // `..` is dropped, not followed (libtorrent): `d/../a` is `d/a`, `d/../d/a` is `d/d/a`.
        link(&["dropped"], 0, target(&["d", "..", "a"])),
        link(&["not_up"], 0, target(&["d", "..", "d", "a"])),
        link(&["up"], 0, target(&["..", "..", "etc", "passwd"])),
        link(&["up2"], 0, target(&["d", "..", "..", "x"])),
        link(&["abs"], 0, target(&["/etc/passwd"])),
        link(&["slash"], 0, target(&["d/a"])),
        link(&["empty"], 0, target(&["", "a"])),
        link(&["missing"], 0, target(&["zzz"])),
        link(&["self"], 0, target(&["self"])),
        link(&["root"], 0, target(&[".."])),
        link(&["none"], 0, None),
        link(&["chain"], 0, target(&["in"])),
    ];
    let m = parse(multi_info(files, 5, 16)).unwrap();
    assert_eq!(m.info.total_length, 5);
    let targets: Vec<Option<String>> = m
        .info
        .files
        .iter()
        .map(|f| f.symlink.as_ref().map(|t| t.join("/")))
        .collect();
    let inside = |s: &str| Some(s.to_string());
    assert_eq!(
        targets,
        [
            None,
            inside("folder/d/a"),
            inside("folder/d"),
            inside("folder/d/a"),
            inside("folder/d/a"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            inside("folder/in"),
        ]
    );
    assert!(m.info.files.iter().skip(1).all(|f| f.length == 0));
    // A target that is not a list of strings is refused, as libtorrent does.
    let bad = link(&["l"], 0, Some(list(vec![Owned::Int(1)])));
    assert_eq!(
        parse(multi_info(vec![file(&["a"], 5), bad], 5, 16)).unwrap_err(),
        MetainfoError::PathNotStrings {
            index: 1,
            key: "symlink path"
        }
    );
    // A torrent of links only holds nothing.
    assert_eq!(
        parse(multi_info(vec![link(&["l"], 5, target(&["l"]))], 5, 16)).unwrap_err(),
        MetainfoError::EmptyTorrent
    );
}

/// A hybrid multi-file torrent: v1 `files` (with the padding v2 implies) and a `file tree`.
fn hybrid(v1: Vec<Owned>, tree: Owned, total: u64) -> Owned {
    let mut info = multi_info(v1, total, 16);
    set(&mut info, "meta version", Owned::Int(2));
    set(&mut info, "file tree", tree);
    info
}

fn leaf(length: u64) -> Owned {
    [(
        "",
        [
            ("length", Owned::Int(length as i64)),
            ("pieces root", Owned::Bytes(vec![7; 32])),
        ]
        .into_iter()
        .collect::<Owned>(),
    )]
    .into_iter()
    .collect()
}

fn pad(length: u64) -> Owned {
    let mut p = file(&[".pad", &length.to_string()], length);
    set(&mut p, "attr", b("p"));
    p
}

#[test]
fn hybrid_file_lists_must_agree() {
    let tree = || -> Owned {
        [
            ("a", leaf(10)),
            ("e", leaf(0)),
            ("sub", [("b", leaf(20))].into_iter().collect()),
        ]
        .into_iter()
        .collect()
    };
    let v1 = |a: &str, b_len: u64| {
        vec![
            file(&[a], 10),
            pad(6),
            file(&["e"], 0),
            file(&["sub", "b"], b_len),
            pad(12),
        ]
    };
    assert!(parse(hybrid(v1("a", 20), tree(), 48)).is_ok());
    // The last padding file may be left out.
    let mut short = v1("a", 20);
    short.pop();
    assert!(parse(hybrid(short, tree(), 36)).is_ok());
    // A renamed file, another length, a missing padding file, an extra empty file.
    assert_eq!(
        parse(hybrid(v1("z", 20), tree(), 48)).unwrap_err(),
        MetainfoError::HybridMismatch { index: 0 }
    );
    assert_eq!(
        parse(hybrid(v1("a", 19), tree(), 47)).unwrap_err(),
        MetainfoError::HybridMismatch { index: 3 }
    );
    let mut unpadded = v1("a", 20);
    unpadded.remove(1);
    assert_eq!(
        parse(hybrid(unpadded, tree(), 42)).unwrap_err(),
        MetainfoError::HybridMismatch { index: 2 }
    );
    let mut extra = v1("a", 20);
    extra.insert(0, file(&["0"], 0));
    assert!(matches!(
        parse(hybrid(extra, tree(), 48)).unwrap_err(),
        MetainfoError::HybridMismatch { .. }
    ));
    // A broken or missing tree, and v2 keys without meta version 2.
    assert_eq!(
        parse(hybrid(v1("a", 20), Owned::Int(5), 48)).unwrap_err(),
        MetainfoError::BadFileTree {
            reason: FileTreeProblem::Missing
        }
    );
    let mut no_version = hybrid(v1("a", 20), tree(), 48);
    del(&mut no_version, "meta version");
    assert_eq!(
        parse(no_version).unwrap_err(),
        MetainfoError::V2KeysWithoutMetaVersion
    );
    let bad_leaf: Owned = [("a", [("", b("x"))].into_iter().collect::<Owned>())]
        .into_iter()
        .collect();
    assert_eq!(
        parse(hybrid(vec![file(&["a"], 10)], bad_leaf, 10)).unwrap_err(),
        MetainfoError::BadFileTree {
            reason: FileTreeProblem::NotADictionary
        }
    );
    // A single-file hybrid: the tree's one file is the torrent's name.
    let mut single = single_info(10, 16);
    set(&mut single, "meta version", Owned::Int(2));
    let one = |n: &str| -> Owned { [(n, leaf(10))].into_iter().collect() };
    set(&mut single, "file tree", one("file.bin"));
    assert!(parse(single.clone()).is_ok());
    set(&mut single, "file tree", one("other.bin"));
    assert_eq!(
        parse(single).unwrap_err(),
        MetainfoError::HybridMismatch { index: 0 }
    );
}

#[test]
fn duplicate_and_file_folder_collisions_are_disambiguated() {
    let files = vec![
        file(&["a.txt"], 1),
        file(&["a.txt"], 1),
        file(&["A.txt"], 1),
        file(&["d"], 1),
        file(&["d", "e"], 1),
        file(&["..", "a.txt"], 1),
    ];
    let m = parse(multi_info(files, 6, 16)).unwrap();
    assert_eq!(
        paths(&m),
        [
            "folder/a.txt",
            "folder/a.1.txt",
            "folder/A.txt",
            "folder/d.1",
            "folder/d/e",
            "folder/a.2.txt"
        ]
    );
}

#[test]
fn hybrid_loads_as_v1_and_v2_only_is_refused() {
    let mut info = single_info(1, 16);
    set(&mut info, "meta version", Owned::Int(2));
    let tree: Owned = [("file.bin", leaf(1))].into_iter().collect();
    set(&mut info, "file tree", tree);
    let m = parse(info.clone()).unwrap();
    assert_eq!(m.info.total_length, 1);
    del(&mut info, "pieces");
    let e = parse(info).unwrap_err();
    assert_eq!(e, MetainfoError::V2Only);
    assert!(e.to_string().contains("v2-only torrents are not supported"));
}

#[test]
fn zero_length_files_are_allowed_but_not_an_empty_torrent() {
    let m = parse(multi_info(vec![file(&["e"], 0), file(&["x"], 3)], 3, 16)).unwrap();
    assert_eq!(m.info.files[0].length, 0);
    assert_eq!(
        parse(multi_info(vec![file(&["e"], 0)], 0, 16)).unwrap_err(),
        MetainfoError::EmptyTorrent
    );
}

#[test]
fn bytes_after_the_torrent_are_ignored() {
    let mut data = torrent(single_info(1, 16));
    let clean = Metainfo::from_bytes(&data).unwrap();
    data.extend_from_slice(b"\r\ngarbage");
    assert_eq!(Metainfo::from_bytes(&data).unwrap(), clean);
}

#[test]
fn each_failure_has_its_own_error() {
    use MetainfoError::*;
    let ok = single_info(40, 16);
    let with = |key: &str, v: Option<Owned>| {
        let mut info = ok.clone();
        match v {
            Some(v) => set(&mut info, key, v),
            None => del(&mut info, key),
        }
        parse(info).unwrap_err()
    };
    assert!(matches!(Metainfo::from_bytes(b"d4:info"), Err(Bencode(_))));
    assert_eq!(Metainfo::from_bytes(b"li1ee"), Err(NotADictionary));
    assert_eq!(Metainfo::from_bytes(b"d8:announce1:xe"), Err(MissingInfo));
    assert_eq!(
        Metainfo::from_bytes(b"d4:infoli1eee"),
        Err(InfoNotADictionary)
    );
    assert_eq!(with("piece length", None), MissingPieceLength);
    assert_eq!(with("piece length", Some(b("16"))), MissingPieceLength);
    assert_eq!(with("piece length", Some(Owned::Int(0))), ZeroPieceLength);
    assert_eq!(
        with("piece length", Some(Owned::Int(-16))),
        NegativePieceLength(-16)
    );
    assert_eq!(
        with("piece length", Some(Owned::Int(1 << 40))),
        PieceLengthTooLarge(1 << 40)
    );
    assert_eq!(with("name", None), MissingName);
    assert_eq!(with("length", None), MissingLength);
    assert_eq!(with("length", Some(Owned::Int(-1))), NegativeLength(-1));
    assert_eq!(with("pieces", None), MissingPieces);
    assert_eq!(
        with("pieces", Some(Owned::Bytes(vec![0; 59]))),
        PiecesNotMultipleOf20 { len: 59 }
    );
    assert_eq!(
        with("pieces", Some(Owned::Bytes(vec![0; 40]))),
        PieceCountMismatch {
            expected: 3,
            found: 2
        }
    );
    assert_eq!(
        with("pieces", Some(Owned::Bytes(vec![0; 80]))),
        PieceCountMismatch {
            expected: 3,
            found: 4
        }
    );
    let too_many = (MAX_PIECES as usize + 1) * 20;
    assert_eq!(
        with("pieces", Some(Owned::Bytes(vec![0; too_many]))),
        TooManyPieces {
            count: MAX_PIECES as usize + 1
        }
    );

    assert_eq!(parse(multi_info(vec![], 0, 16)).unwrap_err(), NoFiles);
    let bad = |entry: Owned| parse(multi_info(vec![file(&["ok"], 1), entry], 2, 16)).unwrap_err();
    assert_eq!(bad(Owned::Int(3)), FileNotADictionary { index: 1 });
    let mut no_len = file(&["x"], 1);
    del(&mut no_len, "length");
    assert_eq!(bad(no_len), FileWithoutLength { index: 1 });
    let mut neg = file(&["x"], 1);
    set(&mut neg, "length", Owned::Int(-5));
    assert_eq!(
        bad(neg),
        NegativeFileLength {
            index: 1,
            length: -5
        }
    );
    let mut no_path = file(&["x"], 1);
    del(&mut no_path, "path");
    assert_eq!(bad(no_path), FileWithoutPath { index: 1 });
    assert_eq!(bad(file(&[], 1)), FileWithoutPath { index: 1 });
    let huge = vec![file(&["a"], i64::MAX as u64), file(&["b"], 1)];
    assert_eq!(parse(multi_info(huge, 1, 16)).unwrap_err(), LengthOverflow);
}

#[test]
fn errors_display_one_readable_line_each() {
    let errors = [
        MetainfoError::MissingInfo,
        MetainfoError::V2Only,
        MetainfoError::PieceCountMismatch {
            expected: 3,
            found: 2,
        },
        MetainfoError::NegativeFileLength {
            index: 4,
            length: -1,
        },
    ];
    for e in errors {
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.is_empty());
    }
    assert_eq!(
        MetainfoError::PiecesNotMultipleOf20 { len: 59 }.to_string(),
        "invalid torrent: `pieces` is 59 bytes, not a multiple of 20"
    );
}

#[test]
fn spec_round_trips_through_the_parser() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let spec = TorrentSpec {
        name: "folder".into(),
        piece_length: 16_384,
        files: vec![
            (vec!["a.bin".into()], 30_000),
            (vec!["sub".into(), "empty".into()], 0),
            (vec!["sub".into(), "b.bin".into()], 20_000),
        ],
        piece_hashes: hash_pieces(&data, 16_384),
        trackers: vec![
            vec!["http://t1/".into(), "http://t2/".into()],
            vec!["udp://t3:1".into()],
        ],
        private: true,
        comment: Some("hi".into()),
        created_by: Some("kp-torrent".into()),
        creation_date: Some(42),
        url_list: vec!["http://seed/".into()],
    };
    let bytes = spec.to_bytes();
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.info_hash, InfoHash::of(&spec.info_bytes()));
    assert_eq!(bencode::decode(&bytes).unwrap().to_owned().encode(), bytes);
    assert_eq!(m.trackers, spec.trackers);
    assert_eq!(m.url_list, spec.url_list);
    assert_eq!(
        (m.comment.as_deref(), m.created_by.as_deref()),
        (Some("hi"), Some("kp-torrent"))
    );
    assert_eq!(m.creation_date, Some(42));
    assert!(m.info.private && m.info.multi_file);
    assert_eq!(
        paths(&m),
        ["folder/a.bin", "folder/sub/empty", "folder/sub/b.bin"]
    );
    assert_eq!(m.info.pieces, hash_pieces(&data, 16_384));
    assert_eq!(m.info.piece_count(), 4);

    let single = TorrentSpec {
        name: "one.iso".into(),
        piece_length: 16_384,
        files: vec![(vec![], 50_000)],
        piece_hashes: hash_pieces(&data, 16_384),
        trackers: vec![vec!["http://only/".into()]],
        ..Default::default()
    };
    assert!(single.is_single_file());
    let bytes = single.to_bytes();
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert!(!m.info.multi_file && !m.info.private);
    assert_eq!(paths(&m), ["one.iso"]);
    assert_eq!(m.trackers, vec![vec!["http://only/".to_string()]]);
    let root = bencode::decode(&bytes).unwrap();
    assert!(root.as_dict().unwrap().get(b"announce-list").is_none());
}

#[test]
fn hash_pieces_hashes_each_chunk() {
    use sha1::Digest;
    let data = b"abcdefghij";
    let h = hash_pieces(data, 4);
    assert_eq!(h.len(), 3);
    let last: [u8; 20] = sha1::Sha1::digest(b"ij").into();
    assert_eq!(h[2], last);
    assert!(hash_pieces(b"", 4).is_empty());
}

#[test]
fn auto_piece_length_aims_at_one_to_two_thousand_pieces() {
    assert_eq!(auto_piece_length(0), 16 * 1024);
    assert_eq!(auto_piece_length(1_000_000), 16 * 1024);
    assert_eq!(auto_piece_length(1 << 40), 16 << 20);
    for total in [100u64 << 20, 700 << 20, 1 << 30, 4_700_000_000, 20 << 30] {
        let p = auto_piece_length(total);
        assert!(p.is_power_of_two());
        let n = total.div_ceil(p);
        assert!((1000..=2000).contains(&n), "{total}: {p} gives {n} pieces");
    }
}

#[test]
fn a_torrent_file_around_fetched_metadata_keeps_the_info_hash_and_trackers() {
    let spec = TorrentSpec {
        name: "x.bin".into(),
        piece_length: 16384,
        files: vec![(Vec::new(), 20000)],
        piece_hashes: vec![[7; 20]; 2],
        trackers: Vec::new(),
        private: false,
        comment: None,
        created_by: None,
        creation_date: None,
        url_list: Vec::new(),
    };
    let info = spec.info_bytes();
    let tiers = vec![
        vec!["http://a.example/announce".to_owned()],
        vec!["udp://b.example:6969".to_owned()],
    ];
    let file = torrent_file_from_info(&info, &tiers);
    let m = Metainfo::from_bytes(&file).expect("parses");
    assert_eq!(m.info_hash, InfoHash::of(&info));
    assert_eq!(m.info.raw, info);
    assert_eq!(m.trackers, tiers);
    let bare = Metainfo::from_bytes(&torrent_file_from_info(&info, &[])).expect("parses");
    assert_eq!(bare.info_hash, m.info_hash);
    assert!(bare.trackers.is_empty());
}
