//! BEP 19 web seeds against a real HTTP server: nginx (Debian `nginx-light`) serving a temp folder
//! on 127.0.0.1, and the built `kp-torrent` binary as the leecher (and, where a peer is needed,
//! as the seeder). A single-file and a multi-file torrent (names that need percent-encoding)
//! come from the web seed alone; a web seed whose copy is corrupt in every piece and one that
//! answers 404 are backed off, and a peer supplies the data instead. Over HTTPS, a web seed with a
//! certificate from a test CA works once `--tracker-ca` trusts it, and is refused without.

use std::path::Path;
use std::time::Duration;

use kp_torrent_core::metainfo::TorrentSpec;
use kp_torrent_tests::real::{Dataset, KpTorrent, Nginx, Torrent};
use kp_torrent_tests::{TempDir, make_test_ca};

/// Bound for a few MiB over loopback, with room for a loaded machine.
const DONE: Duration = Duration::from_secs(40);

/// 3 MiB and a bit in 64 KiB pieces: the last piece is partial, and a run of pieces (4 MiB at
/// most per request) covers the whole file.
fn single(dir: &Path) -> Dataset {
    Dataset::single(
        dir,
        "data file.bin",
        3 * 1024 * 1024 + 12_345,
        64 * 1024,
        31,
    )
}

/// Nested folders, names with spaces, `#`, `%`, `?` and non-ASCII (all percent-encoded in the
/// URLs), an empty file, files smaller than a block and files spanning pieces.
fn album(dir: &Path) -> Dataset {
    let names = [
        "a.bin",
        "disc 1/track #1.bin",
        "disc 1/100% sure?.bin",
        "disc 1/empty.txt",
        "disc 2/deep/caf\u{e9}.bin",
        "disc 2/deep/x+y=z.bin",
        "z.bin",
    ];
    let files: Vec<(String, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let len = if n.ends_with("empty.txt") {
                0
            } else {
                (i * 91_237 + 3_001) % 400_000 + 100
            };
            (n.to_string(), len)
        })
        .collect();
    Dataset::multi(dir, "the album", &files, 32 * 1024, 41)
}

/// The torrent of `data` with `urls` as its `url-list`.
fn with_url_list(data: &Dataset, urls: &[String], out: &Path) -> Torrent {
    let spec = TorrentSpec {
        url_list: urls.to_vec(),
        ..data.spec.clone()
    };
    Torrent::from_spec(&spec, out)
}

fn assert_clean(leecher: &KpTorrent) {
    let log = leecher.log();
    assert!(
        !log.contains("panicked"),
        "{}",
        leecher.process().log_tail()
    );
}

#[test]
fn single_file_from_the_web_seed_alone() {
    let dir = TempDir::new("webseed-single");
    let data = single(dir.path());
    let Some(nginx) = Nginx::start(&data.source) else {
        return;
    };
    let dest = dir.path().join("dest");
    // A URL ending in `/`: the torrent's name is appended (`/data%20file.bin`).
    let url = nginx.url("");
    let mut leecher = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--web-seed", &url],
        dir.path(),
    );
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    data.assert_same(&dest);
    let log = nginx.access_log();
    assert!(
        log.contains("GET /data%20file.bin HTTP/1.1 206 "),
        "ranged GETs of the file expected:\n{log}"
    );
    assert_eq!(nginx.requests_with_status(404), 0, "{log}");
}

#[test]
fn single_file_from_an_https_web_seed_with_its_ca_trusted() {
    let dir = TempDir::new("webseed-https");
    let data = single(dir.path());
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).expect("ca folder");
    let Some(ca) = make_test_ca(&ca_dir) else {
        return;
    };
    let Some(nginx) = Nginx::start_tls(&data.source, &ca) else {
        return;
    };
    let url = nginx.url("");
    assert!(url.starts_with("https://localhost:"), "{url}");
    // Without the CA the certificate is not trusted: nothing comes, the run times out.
    let untrusted = dir.path().join("untrusted");
    let mut refused = KpTorrent::download(
        "leecher-untrusted",
        &data.torrent.path,
        &untrusted,
        &["--web-seed", &url, "--timeout", "5"],
        dir.path(),
    );
    let status = refused.wait_exit(DONE);
    assert!(!status.success(), "an untrusted certificate was accepted");
    assert_eq!(nginx.requests_with_status(206), 0, "{}", nginx.access_log());
    // With it, the whole file comes over TLS in ranged GETs.
    let dest = dir.path().join("dest");
    let ca_pem = ca.ca_pem.to_string_lossy().into_owned();
    let mut leecher = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--web-seed", &url, "--tracker-ca", &ca_pem],
        dir.path(),
    );
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    data.assert_same(&dest);
    let log = nginx.access_log();
    assert!(
        log.contains("GET /data%20file.bin HTTP/1.1 206 "),
        "ranged GETs over TLS expected:\n{log}"
    );
}

#[test]
fn single_file_url_naming_the_file_itself() {
    let dir = TempDir::new("webseed-single-file-url");
    let data = single(dir.path());
    let Some(nginx) = Nginx::start(&data.source) else {
        return;
    };
    // From the torrent's url-list this time, and a URL that is the file itself.
    let torrent = with_url_list(
        &data,
        &[nginx.url("data%20file.bin")],
        &dir.path().join("listed.torrent"),
    );
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download("leecher", &torrent.path, &dest, &[], dir.path());
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    data.assert_same(&dest);
    assert!(
        nginx.requests_with_status(206) > 0,
        "{}",
        nginx.access_log()
    );
}

#[test]
fn multi_file_from_the_web_seed_alone() {
    let dir = TempDir::new("webseed-multi");
    let data = album(dir.path());
    let Some(nginx) = Nginx::start(&data.source) else {
        return;
    };
    // Multi-file: BASE/name/dir/file, each element percent-encoded.
    let torrent = with_url_list(&data, &[nginx.url("")], &dir.path().join("listed.torrent"));
    let dest = dir.path().join("dest");
    let mut leecher = KpTorrent::download("leecher", &torrent.path, &dest, &[], dir.path());
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    // kp-torrent stores `?` as `_` (sanitized), while the URL carried the torrent's own name.
    let disc = dest.join("the album").join("disc 1");
    std::fs::rename(disc.join("100% sure_.bin"), disc.join("100% sure?.bin"))
        .expect("the sanitized file exists");
    data.assert_same(&dest);
    let log = nginx.access_log();
    for path in [
        "/the%20album/disc%201/track%20%231.bin",
        "/the%20album/disc%201/100%25%20sure%3F.bin",
        "/the%20album/disc%202/deep/caf%C3%A9.bin",
    ] {
        assert!(
            log.contains(&format!("GET {path} HTTP/1.1 206 ")),
            "{path}:\n{log}"
        );
    }
    // The empty file is never asked for.
    assert!(!log.contains("empty.txt"), "{log}");
    assert_eq!(nginx.requests_with_status(404), 0, "{log}");
}

#[test]
fn corrupt_web_seed_pieces_come_from_a_peer() {
    let dir = TempDir::new("webseed-corrupt");
    let data = single(dir.path());
    // The web seed's copy has one byte flipped in every piece: nothing it sends can pass.
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let mut bad = data.all_bytes();
    let piece = data.spec.piece_length as usize;
    for start in (0..bad.len()).step_by(piece) {
        let at = start + (start / piece * 7919) % piece.min(bad.len() - start);
        bad[at] ^= 0x5a;
    }
    std::fs::write(served.join(&data.spec.name), &bad).unwrap();
    let Some(nginx) = Nginx::start(&served) else {
        return;
    };
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let dest = dir.path().join("dest");
    let url = nginx.url("");
    let mut leecher = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--web-seed", &url, "--peer", &seeder.addr()],
        dir.path(),
    );
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    // Byte-exact although the web seed was asked first: every piece it sent failed, so the
    // pieces on disk came from the peer.
    data.assert_same(&dest);
    let log = leecher.log();
    assert!(
        nginx.requests_with_status(206) > 0,
        "the web seed was asked: {}",
        nginx.access_log()
    );
    assert!(
        log.contains("failed the hash check (backing off)"),
        "the web seed's bad data is blamed on it:\n{}",
        leecher.process().log_tail()
    );
    drop(seeder);
}

#[test]
fn a_web_seed_that_404s_and_a_peer() {
    let dir = TempDir::new("webseed-404");
    let data = single(dir.path());
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let Some(nginx) = Nginx::start(&empty) else {
        return;
    };
    let seeder = KpTorrent::seed("seeder", &data.torrent.path, &data.source, &[], dir.path());
    let dest = dir.path().join("dest");
    let url = nginx.url("missing/");
    let mut leecher = KpTorrent::download(
        "leecher",
        &data.torrent.path,
        &dest,
        &["--web-seed", &url, "--peer", &seeder.addr()],
        dir.path(),
    );
    leecher.wait_success(DONE);
    assert_clean(&leecher);
    data.assert_same(&dest);
    assert!(
        nginx.requests_with_status(404) > 0,
        "{}",
        nginx.access_log()
    );
    assert!(
        leecher.log().contains("HTTP status 404"),
        "{}",
        leecher.process().log_tail()
    );
    drop(seeder);
}
