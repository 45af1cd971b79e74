//! Torrents made by `kp-torrent create` load in libtorrent and Transmission with our info-hash, and
//! libtorrent verifies every piece hash against the data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kp_torrent_tests::{TempDir, kp_torrent_bin, require_python_libtorrent, require_tool};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bin() -> PathBuf {
    let bin = kp_torrent_bin();
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p kp-torrent` or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn kp(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kp-torrent {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn content(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// The info-hash `kp-torrent info --json` prints (a 40-hex-digit string after `"info_hash":`).
fn our_info_hash(torrent: &Path) -> String {
    let json = kp(&["info", "--json", p(torrent)]);
    let start = json.find("\"info_hash\":\"").expect("info_hash in JSON") + 13;
    let hash = json[start..start + 40].to_owned();
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{json}");
    hash
}

/// A single file whose last piece is partial, and a folder with nested and empty files.
fn make_torrents(dir: &Path) -> Vec<(PathBuf, Vec<(String, u64)>)> {
    let single = dir.join("single.dat");
    std::fs::write(&single, content(3 * 32768 + 777, 1)).unwrap();
    let folder = dir.join("folder");
    let specs = [
        ("top.bin", 50_001usize),
        ("nested/deeper/x.bin", 70_000),
        ("nested/empty.txt", 0),
        ("nested/small.txt", 5),
    ];
    for (i, (rel, len)) in specs.iter().enumerate() {
        let path = folder.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content(*len, 100 + i as u32)).unwrap();
    }
    let single_t = dir.join("single.torrent");
    let folder_t = dir.join("folder.torrent");
    kp(&[
        "create",
        p(&single),
        "-o",
        p(&single_t),
        "--piece-length",
        "32k",
        "-t",
        "http://127.0.0.1:1/announce",
    ]);
    kp(&["create", p(&folder), "-o", p(&folder_t), "--private"]);
    // In the sorted order kp-torrent writes them, with the paths libtorrent reports.
    let folder_files = [
        ("folder/nested/deeper/x.bin", 70_000),
        ("folder/nested/empty.txt", 0),
        ("folder/nested/small.txt", 5),
        ("folder/top.bin", 50_001),
    ];
    vec![
        (single_t, vec![("single.dat".to_owned(), 3 * 32768 + 777)]),
        (
            folder_t,
            folder_files
                .iter()
                .map(|(n, l)| (n.to_string(), *l))
                .collect(),
        ),
    ]
}

/// Loads the torrent in libtorrent, prints its v1 hash and files, then checks the data under
/// `save` and prints how many pieces verified. Bounded to 20 s.
const LIBTORRENT_CHECK: &str = r#"
import sys, time
import libtorrent as lt
torrent, save = sys.argv[1], sys.argv[2]
ti = lt.torrent_info(torrent)
print("hash", ti.info_hashes().v1)
fs = ti.files()
for i in range(fs.num_files()):
    print("file", fs.file_path(i).replace("\\", "/"), fs.file_size(i))
settings = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "alert_mask": lt.alert.category_t.status_notification | lt.alert.category_t.error_notification,
}
ses = lt.session(settings, 0)
params = lt.add_torrent_params()
params.ti = ti
params.save_path = save
params.flags &= ~lt.torrent_flags.paused
params.flags &= ~lt.torrent_flags.auto_managed
handle = ses.add_torrent(params)
handle.force_recheck()
deadline = time.time() + 20
checked = False
while not checked and time.time() < deadline:
    ses.wait_for_alert(200)
    for a in ses.pop_alerts():
        if isinstance(a, lt.torrent_checked_alert):
            checked = True
# The status is updated by libtorrent's own thread and can lag the checked alert under load.
if checked:
    time.sleep(0.5)
st = handle.status()
print("checked", checked)
print("pieces", st.num_pieces, "of", ti.num_pieces())
"#;

fn libtorrent_check(torrent: &Path, save: &Path) -> String {
    let out: Output = Command::new("/usr/bin/python3")
        .args(["-c", LIBTORRENT_CHECK, p(torrent), p(save)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "libtorrent script failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn libtorrent_loads_our_torrents_and_verifies_every_piece() {
    if !require_python_libtorrent() {
        return;
    }
    let dir = TempDir::new("create-interop-lt");
    for (torrent, files) in make_torrents(dir.path()) {
        let hash = our_info_hash(&torrent);
        let report = libtorrent_check(&torrent, dir.path());
        let mut lines = report.lines();
        assert_eq!(
            lines.next(),
            Some(format!("hash {hash}").as_str()),
            "{report}"
        );
        let got_files: Vec<&str> = lines.by_ref().take(files.len()).collect();
        let expected: Vec<String> = files.iter().map(|(n, l)| format!("file {n} {l}")).collect();
        assert_eq!(got_files, expected, "{report}");
        assert_eq!(lines.next(), Some("checked True"), "{report}");
        let pieces = lines.next().unwrap_or_default().to_owned();
        let words: Vec<&str> = pieces.split(' ').collect();
        assert!(
            matches!(words.as_slice(), ["pieces", have, "of", total] if have == total && *total != "0"),
            "libtorrent did not verify every piece of {}: {report}",
            torrent.display()
        );
    }

    // The check can fail: a changed byte costs libtorrent exactly one piece.
    let single = dir.path().join("single.dat");
    let mut data = std::fs::read(&single).unwrap();
    data[40_000] ^= 0xff;
    std::fs::write(&single, &data).unwrap();
    let report = libtorrent_check(&dir.path().join("single.torrent"), dir.path());
    assert!(report.contains("\npieces 3 of 4\n"), "{report}");
}

#[test]
fn transmission_show_prints_our_info_hash() {
    let Some(show) = require_tool("transmission-show") else {
        return;
    };
    let dir = TempDir::new("create-interop-tr");
    for (torrent, files) in make_torrents(dir.path()) {
        let hash = our_info_hash(&torrent);
        let out = Command::new(&show).arg(&torrent).output().unwrap();
        let shown = text(&out.stdout);
        assert!(out.status.success(), "{shown}{}", text(&out.stderr));
        assert!(
            shown.lines().any(|l| l.trim() == format!("Hash: {hash}")),
            "transmission-show of {}:\n{shown}",
            torrent.display()
        );
        for (name, _) in &files {
            let last = name.rsplit('/').next().unwrap();
            assert!(shown.contains(last), "{name} missing:\n{shown}");
        }
    }
}
