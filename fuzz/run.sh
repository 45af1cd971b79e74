#!/usr/bin/env bash
# Runs kp-torrent's fuzz targets for a given time each and prints executions and crashes.
#
#   fuzz/run.sh SECONDS [TARGET...]      # all targets when none is named
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler (libFuzzer is built from
# source by the libfuzzer-sys crate). cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address, the sancov passes); with only a stable toolchain installed, this script
# sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept them.
#
# Environment:
#   SANITIZER=address|none   (default address; "none" builds faster and still catches panics,
#                             overflows and debug assertions)
#   CARGO_TARGET_DIR         (default fuzz/target)
#   JOBS=N                   parallel fuzzing processes per target (default 1)
#   MERGE=1                  afterwards, merge new coverage-increasing inputs into fuzz/corpus/
#
# Each target fuzzes a scratch corpus fuzz/work/TARGET/ (not committed) that starts from the
# committed corpus fuzz/corpus/TARGET/, which is only read. A crash stops that target: its input
# lands in fuzz/artifacts/TARGET/. Turn it into a regression test by fixing the bug and copying the
# input into fuzz/regressions/TARGET/ (named after the bug); `cargo test --test fuzz_regressions`
# then runs it on every test run, along with the whole committed corpus.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
fi
seconds="$1"
shift
all_targets=()
for f in fuzz_targets/*.rs; do
    all_targets+=("$(basename "$f" .rs)")
done
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
    if [[ ! -f "fuzz_targets/$t.rs" ]]; then
        echo "fuzz/run.sh: no target $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; run: cargo install cargo-fuzz" >&2
    exit 1
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
sanitizer="${SANITIZER:-address}"
jobs="${JOBS:-1}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

echo "building ${#targets[@]} target(s), sanitizer $sanitizer, into $CARGO_TARGET_DIR" >&2
for t in "${targets[@]}"; do
    cargo fuzz build --release --debug-assertions --sanitizer "$sanitizer" "$t" >&2
done

bin_dir="$CARGO_TARGET_DIR/$triple/release"
results=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
    log="work/$t.log"
    before="$(find "artifacts/$t" -type f | wc -l)"
    echo "fuzzing $t for ${seconds}s (log: fuzz/$log)" >&2
    set +e
    args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="artifacts/$t/")
    if [[ "$jobs" -gt 1 ]]; then
        args+=(-fork="$jobs" -ignore_crashes=0)
    fi
    "$bin_dir/$t" "${args[@]}" "work/$t" "corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    after="$(find "artifacts/$t" -type f | wc -l)"
    crashes=$((after - before))
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | sed 's/cov: //')"
    corpus="$(find "work/$t" -type f | wc -l)"
    if [[ "$rc" -ne 0 && "$crashes" -eq 0 ]]; then
        # libFuzzer failed without leaving an input (bad flags, could not start): count it.
        crashes="?"
    fi
    if [[ "$crashes" != 0 ]]; then
        status=1
        echo "  $t: CRASH (exit $rc); inputs in fuzz/artifacts/$t/; see fuzz/$log" >&2
    fi
    results+=("$(printf '%-14s %8s %12s %10s %8s %8s %8s' "$t" "$seconds" "${execs:-0}" \
        "${rate:-0}" "${cov:-0}" "$corpus" "$crashes")")
    if [[ "${MERGE:-0}" == 1 ]]; then
        "$bin_dir/$t" -merge=1 -timeout=10 -rss_limit_mb=2048 "corpus/$t" "work/$t" \
            >"work/$t.merge.log" 2>&1
    fi
done

printf '%-14s %8s %12s %10s %8s %8s %8s\n' target seconds execs "execs/s" cov corpus crashes
printf '%s\n' "${results[@]}"
exit "$status"
