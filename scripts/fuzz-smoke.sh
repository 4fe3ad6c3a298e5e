#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for FUZZ_SECONDS each (default 15: the CI smoke run; give it 300+ on demand).
# Coverage-guided (libFuzzer instrumentation, what cargo-fuzz does) when a nightly toolchain is installed; otherwise
# the same binaries without instrumentation, which still feed random inputs and catch panics. A crash fails the run
# and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-15}"
targets=(query_form verify_v1 verify_v3 policy)
host="$(rustc -vV | sed -n 's/^host: //p')"
if cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: coverage-guided build (nightly)"
    # --target keeps the instrumentation out of build scripts.
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
        CARGO_TARGET_DIR=target-cov cargo +nightly build --release --bins --target "$host"
    bindir="target-cov/$host/release"
else
    echo "fuzz: no nightly toolchain; uninstrumented build"
    RUSTFLAGS="--cfg fuzzing -Cdebug-assertions -Coverflow-checks" cargo build --release --bins
    bindir="target/release"
fi
mkdir -p artifacts logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${secs}s"
    # libFuzzer exits non-zero on a crash, a leak or a timeout, and saves the input under artifacts/.
    if ! "$bindir/$t" "corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 -artifact_prefix="artifacts/$t-" \
        -print_final_stats=1 >"logs/$t.log" 2>&1; then
        tail -40 "logs/$t.log" >&2
        echo "fuzz: $t failed; input saved under fuzz/artifacts/" >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units" "logs/$t.log" || true
done
