//! The `kp-torrent` binary's `info` and `create` commands, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use kp_torrent_core::bencode;
use kp_torrent_tests::{TempDir, require_tool};
use sha1::{Digest, Sha1};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kp-torrent")
}

/// Runs the binary; a download or seed gets `--no-dht`, so no test reaches a public router.
fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .args(no_dht(args))
        .stdin(Stdio::null())
        .output()
        .expect("run kp-torrent")
}

fn no_dht(args: &[&str]) -> &'static [&'static str] {
    if matches!(args.first(), Some(&"download" | &"seed")) {
        &["--no-dht"]
    } else {
        &[]
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn success(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "kp-torrent {args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts the failure contract: status `code`, exactly one stderr line starting with `prefix`,
/// nothing that looks like a panic or a debug dump.
fn assert_fails(out: &Output, code: i32, prefix: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one stderr line expected, got: {err}"
    );
    assert!(err.starts_with(prefix), "expected {prefix:?}, got: {err}");
    assert!(!err.contains("panicked") && !err.contains("Os {"), "{err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Deterministic content that differs at every offset, so a piece read from the wrong place hashes
/// differently.
fn content(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The `info` dictionary's raw bytes and its piece hashes, read with the core's bencode decoder
/// (not with the metainfo code under test).
fn info_of(torrent: &Path) -> (String, Vec<u8>, u64) {
    let bytes = std::fs::read(torrent).unwrap();
    let root = bencode::decode(&bytes).unwrap();
    let info = root.as_dict().unwrap().get_dict(b"info").unwrap();
    let hash: [u8; 20] = Sha1::digest(info.raw()).into();
    let hex = hash.iter().map(|b| format!("{b:02x}")).collect();
    let pieces = info.get_bytes(b"pieces").unwrap().to_vec();
    let piece_length = info.get_int(b"piece length").unwrap() as u64;
    (hex, pieces, piece_length)
}

fn piece_hashes(data: &[u8], piece_length: u64) -> Vec<u8> {
    data.chunks(piece_length as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect()
}

/// `info --json` parsed by Python's json module, flattened into comparable lines; `None` (skip)
/// when /usr/bin/python3 is missing outside CI.
fn json_lines(torrent_or_magnet: &str) -> Option<Vec<String>> {
    let python = require_tool("/usr/bin/python3")?;
    let json = success(&["info", "--json", torrent_or_magnet]);
    assert_eq!(json.lines().count(), 1, "one line of JSON: {json}");
    let script = r#"
import json, sys
d = json.load(sys.stdin)
for k in sorted(d):
    if k == "files":
        for f in d[k]:
            print("file", json.dumps(f["path"]), f["size"], f["offset"], f["padding"])
    elif k != "creation_date":
        print(k, json.dumps(d[k]))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python rejected the JSON: {json}");
    Some(text(&out.stdout).lines().map(str::to_owned).collect())
}

#[test]
fn single_file_with_partial_last_piece_round_trips() {
    let dir = TempDir::new("cli-single");
    let data = content(5 * 16384 + 1234, 1);
    let file = dir.path().join("movie.mkv");
    std::fs::write(&file, &data).unwrap();
    let torrent = dir.path().join("movie.torrent");
    let stdout = success(&[
        "create",
        p(&file),
        "-o",
        p(&torrent),
        "--piece-length",
        "16k",
        "-t",
        "http://127.0.0.1:1/announce",
        "-t",
        "udp://127.0.0.1:2,http://127.0.0.1:3/a",
        "--web-seed",
        "http://127.0.0.1:4/files/",
        "--comment",
        "tab\there \"quoted\" \\ back",
        "--private",
    ]);

    let (hash, pieces, piece_length) = info_of(&torrent);
    assert_eq!(piece_length, 16384);
    assert_eq!(pieces, piece_hashes(&data, 16384));
    assert!(stdout.contains(&hash), "{stdout}");

    let human = success(&["info", p(&torrent)]);
    for expected in [
        "name:          movie.mkv".to_owned(),
        format!("info-hash:     {hash}"),
        "size:          81.2 KiB (83154 bytes)".to_owned(),
        "pieces:        6 of 16.0 KiB (16384 bytes)".to_owned(),
        "private:       yes".to_owned(),
        "trackers:      tier 1: http://127.0.0.1:1/announce".to_owned(),
        "               tier 2: udp://127.0.0.1:2, http://127.0.0.1:3/a".to_owned(),
        "web seeds:     http://127.0.0.1:4/files/".to_owned(),
        "comment:       tab\\there \"quoted\" \\ back".to_owned(),
        "created by:    kp-torrent ".to_owned(),
        "creation date: ".to_owned(),
        "    81.2 KiB  movie.mkv".to_owned(),
    ] {
        assert!(
            human.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{human}"
        );
    }

    let Some(lines) = json_lines(p(&torrent)) else {
        return;
    };
    assert_eq!(
        lines,
        [
            r#"comment "tab\there \"quoted\" \\ back""#.to_owned(),
            format!(r#"created_by "kp-torrent {}""#, env!("CARGO_PKG_VERSION")),
            "file \"movie.mkv\" 83154 0 False".to_owned(),
            format!("info_hash \"{hash}\""),
            "kind \"torrent\"".to_owned(),
            "multi_file false".to_owned(),
            "name \"movie.mkv\"".to_owned(),
            "piece_count 6".to_owned(),
            "piece_length 16384".to_owned(),
            "private true".to_owned(),
            "total_size 83154".to_owned(),
            r#"trackers [["http://127.0.0.1:1/announce"], ["udp://127.0.0.1:2", "http://127.0.0.1:3/a"]]"#
                .to_owned(),
            r#"web_seeds ["http://127.0.0.1:4/files/"]"#.to_owned(),
        ]
    );
}

/// Writes the files in an order unlike the sorted one; returns (relative path, data) sorted.
fn make_folder(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = [
        ("z-last.bin", 20_000),
        ("a/b/deep.bin", 40_000),
        ("a-c.txt", 3),
        ("a/empty", 0),
        ("a/b/0first", 17),
        ("B-upper", 16384),
    ];
    let mut out = Vec::new();
    for (i, (rel, len)) in files.iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let data = content(*len, i as u32 * 7919);
        std::fs::write(&path, &data).unwrap();
        out.push((rel.to_string(), data));
    }
    // Sorted by path components, comparing bytes: "a/..." before "a-c.txt", "B" before "a".
    out.sort_by(|x, y| {
        let xs: Vec<&str> = x.0.split('/').collect();
        let ys: Vec<&str> = y.0.split('/').collect();
        xs.cmp(&ys)
    });
    out
}

#[test]
fn folder_with_nested_and_empty_files_round_trips_in_sorted_order() {
    let dir = TempDir::new("cli-folder");
    let root = dir.path().join("album");
    let files = make_folder(&root);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "B-upper",
            "a/b/0first",
            "a/b/deep.bin",
            "a/empty",
            "a-c.txt",
            "z-last.bin"
        ]
    );
    let torrent = dir.path().join("album.torrent");
    success(&[
        "create",
        p(&root),
        "-o",
        p(&torrent),
        "--piece-length",
        "16384",
    ]);

    let all: Vec<u8> = files.iter().flat_map(|(_, d)| d.clone()).collect();
    let (hash, pieces, _) = info_of(&torrent);
    assert_eq!(pieces, piece_hashes(&all, 16384));

    let human = success(&["info", p(&torrent)]);
    assert!(
        human.contains(&format!("info-hash:     {hash}\n")),
        "{human}"
    );
    assert!(human.contains("files:         6\n"), "{human}");
    assert!(human.contains("       0 B  album/a/empty\n"), "{human}");

    let Some(lines) = json_lines(p(&torrent)) else {
        return;
    };
    let mut offset = 0;
    let mut expected_files = Vec::new();
    for (name, data) in &files {
        expected_files.push(format!(
            "file \"album/{name}\" {} {offset} False",
            data.len()
        ));
        offset += data.len();
    }
    let got_files: Vec<&String> = lines.iter().filter(|l| l.starts_with("file ")).collect();
    assert_eq!(got_files, expected_files.iter().collect::<Vec<_>>());
    assert!(lines.contains(&format!("info_hash \"{hash}\"")));
    assert!(lines.contains(&format!("total_size {}", all.len())));
    assert!(lines.contains(&format!("piece_count {}", all.len().div_ceil(16384))));
    assert!(lines.contains(&"multi_file true".to_owned()));
    assert!(lines.contains(&"trackers []".to_owned()));
    assert!(lines.contains(&"comment null".to_owned()));
}

#[test]
fn same_content_without_date_gives_identical_files_and_skips_links_and_own_output() {
    let dir = TempDir::new("cli-stable");
    let root = dir.path().join("data");
    let files = make_folder(&root);
    std::os::unix::fs::symlink(root.join("z-last.bin"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(root.join("a"), root.join("dirlink")).unwrap();
    let first = dir.path().join("first.torrent");
    let out = run(&["create", p(&root), "-o", p(&first), "--no-date"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warnings = text(&out.stderr);
    assert_eq!(
        warnings.matches("symbolic link skipped").count(),
        2,
        "{warnings}"
    );

    // The output inside the folder is not hashed into itself, even when replaced.
    let inside = root.join("self.torrent");
    success(&["create", p(&root), "-o", p(&inside), "--no-date"]);
    success(&["create", p(&root), "-o", p(&inside), "--no-date", "--force"]);
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&inside).unwrap()
    );

    let all: Vec<u8> = files.iter().flat_map(|(_, d)| d.clone()).collect();
    let (_, _, piece_length) = info_of(&first);
    assert!(piece_length.is_power_of_two() && piece_length >= 16384);
    assert_eq!(info_of(&first).1, piece_hashes(&all, piece_length));
    assert!(!success(&["info", p(&first)]).contains("creation date"));
    // No temporary files are left next to the output.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn name_option_renames_the_torrent() {
    let dir = TempDir::new("cli-name");
    let file = dir.path().join("x.bin");
    std::fs::write(&file, content(100, 3)).unwrap();
    let torrent = dir.path().join("x.torrent");
    success(&[
        "create",
        p(&file),
        "-o",
        p(&torrent),
        "--name",
        "Better Name.bin",
    ]);
    assert!(success(&["info", p(&torrent)]).contains("name:          Better Name.bin\n"));
    let out = run(&[
        "create",
        p(&file),
        "-o",
        p(&dir.path().join("y")),
        "--name",
        "a/b",
    ]);
    assert_fails(&out, 1, "kp-torrent: --name \"a/b\": ");
}

#[test]
fn magnet_uri_is_shown() {
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567\
                  &dn=Some+Name&tr=http%3A%2F%2F127.0.0.1%3A1%2Fa&x.pe=127.0.0.1:6881";
    let human = success(&["info", magnet]);
    assert!(human.contains("info-hash:     0123456789abcdef0123456789abcdef01234567\n"));
    assert!(human.contains("magnet:        Some Name\n"), "{human}");
    if let Some(lines) = json_lines(magnet) {
        assert_eq!(
            lines,
            [
                "info_hash \"0123456789abcdef0123456789abcdef01234567\"",
                "kind \"magnet\"",
                "name \"Some Name\"",
                "peers [\"127.0.0.1:6881\"]",
                "trackers [\"http://127.0.0.1:1/a\"]",
            ]
        );
    }
    assert_fails(
        &run(&["info", "magnet:?dn=x"]),
        1,
        "kp-torrent: magnet URI: ",
    );
}

#[test]
fn info_errors_name_the_file_in_one_line() {
    let dir = TempDir::new("cli-info-errors");
    let missing = dir.path().join("missing.torrent");
    let err = assert_fails(
        &run(&["info", p(&missing)]),
        1,
        &format!("kp-torrent: {}: ", p(&missing)),
    );
    assert!(err.contains("no such file"), "{err}");

    let not_torrent = dir.path().join("notes.txt");
    std::fs::write(&not_torrent, "just some text\n").unwrap();
    let err = assert_fails(
        &run(&["info", p(&not_torrent)]),
        1,
        &format!("kp-torrent: {}: ", p(&not_torrent)),
    );
    assert!(err.contains("not a torrent"), "{err}");

    // A real torrent cut short.
    let file = dir.path().join("data.bin");
    std::fs::write(&file, content(50_000, 9)).unwrap();
    let torrent = dir.path().join("data.torrent");
    success(&["create", p(&file), "-o", p(&torrent)]);
    let bytes = std::fs::read(&torrent).unwrap();
    let truncated = dir.path().join("truncated.torrent");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &run(&["info", p(&truncated)]),
        1,
        &format!("kp-torrent: {}: ", p(&truncated)),
    );

    // A huge file is refused rather than read into memory whole (sparse: costs no disk).
    let huge = dir.path().join("huge.torrent");
    let f = std::fs::File::create(&huge).unwrap();
    std::io::Write::write_all(&mut &f, b"d4:info").unwrap();
    f.set_len((128 << 20) + 1).unwrap();
    let err = assert_fails(
        &run(&["info", p(&huge)]),
        1,
        &format!("kp-torrent: {}: ", p(&huge)),
    );
    assert!(err.contains("larger than 128 MiB"), "{err}");

    // A folder where a file is expected.
    assert_fails(
        &run(&["info", p(dir.path())]),
        1,
        &format!("kp-torrent: {}: ", p(dir.path())),
    );
}

#[test]
fn create_errors_name_the_file_in_one_line() {
    let dir = TempDir::new("cli-create-errors");
    let file = dir.path().join("data.bin");
    std::fs::write(&file, content(50_000, 5)).unwrap();
    let out_path = dir.path().join("out.torrent");

    let missing = dir.path().join("nothing-here");
    let err = assert_fails(
        &run(&["create", p(&missing), "-o", p(&out_path)]),
        1,
        &format!("kp-torrent: {}: ", p(&missing)),
    );
    assert!(err.contains("no such file"), "{err}");

    for bad in ["1000", "8k", "3M", "1G", "lots"] {
        assert_fails(
            &run(&[
                "create",
                p(&file),
                "-o",
                p(&out_path),
                "--piece-length",
                bad,
            ]),
            1,
            &format!("kp-torrent: --piece-length {bad}: "),
        );
    }
    assert!(!out_path.exists());

    std::fs::write(&out_path, "keep me").unwrap();
    let err = assert_fails(
        &run(&["create", p(&file), "-o", p(&out_path)]),
        1,
        &format!("kp-torrent: {}: ", p(&out_path)),
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out_path).unwrap(), b"keep me");
    success(&["create", p(&file), "-o", p(&out_path), "--force"]);
    assert_ne!(std::fs::read(&out_path).unwrap(), b"keep me");

    let no_dir = dir.path().join("no/such/dir/x.torrent");
    assert_fails(
        &run(&["create", p(&file), "-o", p(&no_dir)]),
        1,
        &format!("kp-torrent: {}: cannot write", p(&no_dir)),
    );

    let empty = dir.path().join("empty-folder");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("sub/zero"), b"").unwrap();
    assert_fails(
        &run(&["create", p(&empty), "-o", p(&dir.path().join("e.torrent"))]),
        1,
        &format!("kp-torrent: {}: nothing to share", p(&empty)),
    );
}

#[test]
fn unreadable_folder_is_an_error_not_a_panic() {
    let dir = TempDir::new("cli-unreadable");
    let root = dir.path().join("content");
    let locked = root.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::write(locked.join("secret"), b"x").unwrap();
    std::fs::write(root.join("open"), b"y").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    // Root reads any folder: run the command as `nobody` then.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| text(&o.stdout).trim() == "0");
    let out_path = dir.path().join("out.torrent");
    let args = ["create", p(&root), "-o", p(&out_path)];
    let out = if is_root {
        let Some(setpriv) = require_tool("setpriv") else {
            return;
        };
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
            .args(args)
            .args(no_dht(&args))
            .output()
            .unwrap()
    } else {
        run(&args)
    };
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = assert_fails(&out, 1, &format!("kp-torrent: {}: ", p(&locked)));
    assert!(err.contains("permission denied"), "{err}");
    assert!(!out_path.exists());
}

#[test]
fn usage_errors_exit_with_status_2() {
    let out = run(&["create", "somewhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--output"));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
    let help = success(&["create", "--help"]);
    assert!(help.contains("Each -t makes one tier"), "{help}");
}

#[test]
fn padding_files_are_counted_not_listed_and_marked_in_json() {
    let dir = TempDir::new("cli-padding");
    let torrent = dir.path().join("padded.torrent");
    // Two files with a BEP 47 padding file between them, written by hand.
    let mut info = Vec::new();
    info.extend_from_slice(b"d5:filesl");
    info.extend_from_slice(b"d6:lengthi100e4:pathl5:a.bineed");
    info.extend_from_slice(b"4:attr1:p6:lengthi16284e4:pathl4:.pad5:16284eed");
    info.extend_from_slice(b"6:lengthi50e4:pathl5:b.binee");
    info.extend_from_slice(b"e4:name6:padded12:piece lengthi16384e6:pieces40:");
    info.extend_from_slice(&[7u8; 40]);
    info.push(b'e');
    let mut file = b"d4:info".to_vec();
    file.extend_from_slice(&info);
    file.push(b'e');
    std::fs::write(&torrent, &file).unwrap();

    let human = success(&["info", p(&torrent)]);
    assert!(
        human.contains("files:         2 (1 padding file not shown)\n"),
        "{human}"
    );
    assert!(
        human.contains("padded/a.bin\n") && human.contains("padded/b.bin\n"),
        "{human}"
    );
    assert!(!human.contains(".pad"), "{human}");

    let Some(lines) = json_lines(p(&torrent)) else {
        return;
    };
    let files: Vec<&String> = lines.iter().filter(|l| l.starts_with("file ")).collect();
    assert_eq!(
        files,
        [
            "file \"padded/a.bin\" 100 0 False",
            "file \"padded/.pad/16284\" 16284 100 True",
            "file \"padded/b.bin\" 50 16384 False",
        ]
    );
    let hash: [u8; 20] = Sha1::digest(&info).into();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert!(lines.contains(&format!("info_hash \"{hex}\"")), "{lines:?}");
}

#[test]
fn magnet_links_that_cannot_run_fail_in_one_line() {
    let dir = TempDir::new("cli-magnet");
    let d = dir.path().to_str().unwrap();
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    let err = assert_fails(
        &run(&["seed", magnet, "-s", d]),
        1,
        "kp-torrent: magnet link: ",
    );
    assert!(err.contains("seeding needs the .torrent file"), "{err}");
    let err = assert_fails(
        &run(&["download", "magnet:?xt=urn:btih:12345", "-d", d]),
        1,
        "kp-torrent: magnet link: ",
    );
    assert!(err.contains("neither 40 hex digits nor 32 base32"), "{err}");
    let v2 =
        "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";
    let err = assert_fails(
        &run(&["download", v2, "-d", d]),
        1,
        "kp-torrent: magnet link: ",
    );
    assert!(err.contains("v2-only"), "{err}");
}
