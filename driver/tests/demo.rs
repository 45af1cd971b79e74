//! `kp-torrent demo` runs a whole seed-and-download over 127.0.0.1 with nothing installed.

use std::process::Command;

#[test]
fn demo_downloads_and_verifies_its_sample() {
    let out = Command::new(env!("CARGO_BIN_EXE_kp-torrent"))
        .args(["demo", "--size", "3M", "--files", "5"])
        .output()
        .expect("run kp-torrent demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("demo: downloaded and verified 3.00 MiB in 5 file(s)"),
        "{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_refuses_a_bad_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_kp-torrent"))
        .args(["demo", "--size", "lots"])
        .output()
        .expect("run kp-torrent demo");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
}
