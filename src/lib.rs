//! Shared support for kp-torrent's workspace-level tests and benchmarks.
//!
//! Integration tests that need a real program (opentracker, libtorrent, Transmission, aria2,
//! mktorrent) find it through [`require_tool`]: on a developer machine without it the test is
//! skipped with a message; in CI (`KP_REQUIRE_TOOLS=1`, set by `.ci/run`) a missing tool fails the test.

use std::path::{Path, PathBuf};

pub mod dht_sim;
pub mod fuzz;
pub mod real;

/// True when tests must fail instead of skipping for a missing tool (set by `.ci/run`).
pub fn tools_required() -> bool {
    std::env::var_os("KP_REQUIRE_TOOLS").is_some_and(|v| v == "1")
}

/// Finds an executable on PATH (or an absolute path that exists).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns the tool's path, or `None` after printing why the calling test is skipped.
///
/// # Panics
/// When the tool is missing and [`tools_required`] is true, so CI cannot pass without it.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    match find_tool(name) {
        Some(p) => Some(p),
        None if tools_required() => {
            panic!("{name} is required (KP_REQUIRE_TOOLS=1) but was not found")
        }
        None => {
            eprintln!("skipping: {name} not installed");
            None
        }
    }
}

/// True when Debian's /usr/bin/python3 can import libtorrent; panics in CI when it cannot.
pub fn require_python_libtorrent() -> bool {
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if tools_required() {
            panic!(
                "python3-libtorrent is required (KP_REQUIRE_TOOLS=1) but /usr/bin/python3 cannot import it"
            );
        }
        eprintln!("skipping: /usr/bin/python3 cannot import libtorrent");
    }
    ok
}

/// A fresh empty directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/kp-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kp-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Path of the built `kp-torrent` binary (built by cargo for integration tests of this package).
pub fn kp_torrent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KP_TORRENT_BIN") {
        return PathBuf::from(p);
    }
    // tests run from target/<profile>/deps/; the binary sits in target/<profile>/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    profile_dir.join("kp-torrent")
}

/// A quickcheck runner with a reproducible seed.
///
/// The seed is `KP_QC_SEED` when set, else a fixed default, so every run of the suite checks the
/// same cases and a failure can be rerun exactly: the seed is printed to stderr (shown by the test
/// harness on failure) with the command to repeat it. `KP_QC_TESTS` overrides the case count.
pub fn quickcheck(name: &str, default_tests: u64) -> quickcheck::QuickCheck {
    let seed = std::env::var("KP_QC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b70_746f_7272_656e_u64);
    let tests = std::env::var("KP_QC_TESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_tests);
    eprintln!(
        "{name}: quickcheck seed {seed}, {tests} cases; rerun with KP_QC_SEED={seed} cargo test {name}"
    );
    quickcheck::QuickCheck::new()
        .rng(quickcheck::Gen::from_size_and_seed(100, seed))
        .tests(tests)
        .max_tests(tests * 10)
}

/// A throwaway certificate authority and a server certificate it signed, made with `openssl`.
pub struct TestCa {
    /// The CA certificate (PEM): give it to clients as their extra trust root.
    pub ca_pem: PathBuf,
    /// The server's certificate (PEM), valid for `localhost` and `127.0.0.1`.
    pub cert_pem: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key_pem: PathBuf,
}

/// Makes a [`TestCa`] in `dir` with the `openssl` command; `None` (skip) when openssl is missing
/// outside CI.
pub fn make_test_ca(dir: &Path) -> Option<TestCa> {
    let openssl = require_tool("openssl")?;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write ext file");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kp-torrent test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    Some(TestCa {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    })
}
