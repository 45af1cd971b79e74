//! Runs the fuzz targets' inputs on every `cargo test`: the committed corpus
//! (`fuzz/corpus/<target>/`: the generated seeds and what fuzzing found worth keeping) and every
//! saved crash input (`fuzz/regressions/<target>/`), through the same bodies the cargo-fuzz
//! targets call (`kp_torrent_tests::fuzz`). A body panics when its target would report a crash.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kp_torrent_tests::fuzz::{TARGETS, seeds};

/// Saved inputs of bugs found by fuzzing in files this branch may not change, reported to the
/// lead: each must still fail with the given message until its fix lands, and then be removed from
/// this list (the test says so), after which it runs as an ordinary regression input.
// Inputs of reported bugs that must still fail until their fix lands. The header start time
// (trace codec) and the peer sending around its handshake were fixed; their inputs now run as
// ordinary regressions.
const KNOWN_BUGS: &[(&str, &str)] = &[];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read directory entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs every file of `fuzz/<kind>/<target>/` through its body; returns how many ran per target
/// and panics listing every input that fails.
fn run_all(kind: &str) -> Vec<(&'static str, usize)> {
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for &(target, body) in TARGETS {
        let inputs = files(&fuzz_dir().join(kind).join(target));
        for path in &inputs {
            let data = std::fs::read(path).expect("read input");
            let name = format!(
                "{target}/{}",
                path.file_name().expect("file name").to_string_lossy()
            );
            let known = KNOWN_BUGS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, why)| *why);
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&data)));
            match (outcome, known) {
                (Ok(()), None) => {}
                (Err(panic), None) => failures.push(format!("{name}: {}", message(&*panic))),
                (Err(panic), Some(why)) if message(&*panic).contains(why) => {}
                (Err(panic), Some(_)) => failures.push(format!(
                    "{name} (known bug) fails otherwise: {}",
                    message(&*panic)
                )),
                (Ok(()), Some(_)) => failures.push(format!(
                    "{name} passes now: remove it from KNOWN_BUGS in tests/fuzz_regressions.rs"
                )),
            }
        }
        counts.push((target, inputs.len()));
    }
    assert!(
        failures.is_empty(),
        "{} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    counts
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn corpus_inputs_pass() {
    let counts = run_all("corpus");
    eprintln!("corpus inputs per target: {counts:?}");
    for (target, n) in counts {
        assert!(n > 0, "fuzz/corpus/{target}/ has no inputs");
    }
}

#[test]
fn saved_crash_inputs_pass() {
    let counts = run_all("regressions");
    eprintln!("saved crash inputs per target: {counts:?}");
    for (name, _) in KNOWN_BUGS {
        assert!(
            fuzz_dir().join("regressions").join(name).is_file(),
            "KNOWN_BUGS names missing {name}"
        );
    }
}

/// Every folder of inputs belongs to a target, and every cargo-fuzz target has a body.
#[test]
fn targets_corpora_and_bodies_match() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir().join(kind)).expect("fuzz folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                assert!(
                    names.contains(&name.as_str()),
                    "fuzz/{kind}/{name} is no target"
                );
            }
        }
    }
    let mut declared: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    declared.sort();
    let mut bodies: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    bodies.sort();
    assert_eq!(
        declared, bodies,
        "fuzz/fuzz_targets/*.rs and fuzz::TARGETS differ"
    );
}

/// `fuzz/corpus/<target>/seed-*` are exactly the generated seeds; `KP_WRITE_SEEDS=1` rewrites them.
#[test]
fn seed_corpus_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = seeds::all(&root.join("tests/fixtures"));
    let write = std::env::var_os("KP_WRITE_SEEDS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for &(target, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let expected: Vec<&seeds::Seed> = seeds.iter().filter(|s| s.target == target).collect();
        if write {
            std::fs::create_dir_all(&dir).expect("create corpus folder");
            for old in files(&dir) {
                if old
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                {
                    std::fs::remove_file(old).expect("remove old seed");
                }
            }
            for s in &expected {
                std::fs::write(dir.join(format!("seed-{}", s.name)), &s.data).expect("write seed");
            }
        }
        let on_disk: Vec<PathBuf> = files(&dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        if on_disk.len() != expected.len() {
            stale.push(format!(
                "{target}: {} seed files, {} seeds",
                on_disk.len(),
                expected.len()
            ));
        }
        for s in &expected {
            let path = dir.join(format!("seed-{}", s.name));
            if std::fs::read(&path).ok().as_deref() != Some(s.data.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "seed corpus out of date (rerun with KP_WRITE_SEEDS=1):\n{}",
        stale.join("\n")
    );
}
