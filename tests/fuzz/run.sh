#!/usr/bin/env bash
# Builds the sanitized build (clang, AddressSanitizer and UndefinedBehaviorSanitizer) in
# build-fuzz/: runs the unit tests and the security and protocol integration tests (real
# processes over TLS) under the sanitizers, then each libFuzzer target for SECONDS (default
# 20) from seeds plus its saved corpus. A failed test, a crash, a leak,
# undefined behaviour, a broken round trip or a core that stops answering fails the run; the
# input that did it is kept in build-fuzz/crashes/. Prints one line per target (executions,
# coverage).
set -euo pipefail
SECONDS_EACH=${1:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/build-fuzz
# The ignore list changes what the sanitizers compile in, yet neither ninja nor ccache reads
# it as an input: ccache hashes it as an extra file (and CMakeLists.txt puts its digest on
# the command line for ninja), or an edit of it is served stale objects.
export CCACHE_EXTRAFILES=$ROOT/tests/fuzz/sanitizer_ignore.txt
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$OUT" -G Ninja -DGFLEX_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$OUT" >/dev/null
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The two cases that train on the real Fashion-MNIST for hundreds of steps take five minutes
# under the sanitizers and exercise no code the others do not; the release build's suite runs
# them. They are reported as skipped here. The rest run in pieces side by side, as CTest runs
# them (tests/unit/run_parallel.py).
if python3 "$ROOT/tests/unit/run_parallel.py" "$OUT/bin/gflex_unit_tests" \
  -tce="*learns real Fashion-MNIST*" >"$OUT/unit.log" 2>&1; then
  echo "unit tests under ASan and UBSan: $(grep -m1 'test cases:' "$OUT/unit.log")"
else
  echo "unit tests under ASan and UBSan: FAILED"
  tail -120 "$OUT/unit.log"
  exit 1
fi
# The integration tests' processes write any sanitizer report to a file of their own; a run
# with such a file fails even if the test's own checks passed. Leaks are not checked there
# (daemons that are killed do not free what they hold).
reports=$OUT/sanitizer-reports
for t in security protocol; do
  rm -rf "$reports" && mkdir -p "$reports"
  if ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$reports/asan \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan \
    timeout -s KILL 600 bash "$ROOT/tests/integration/$t.sh" "$OUT/bin" >"$OUT/$t.log" 2>&1 &&
    [ -z "$(ls -A "$reports")" ]; then
    echo "integration test $t under ASan and UBSan: ok"
  else
    echo "integration test $t under ASan and UBSan: FAILED"
    tail -20 "$OUT/$t.log"
    cat "$reports"/* 2>/dev/null | head -60
    exit 1
  fi
done
rm -rf "$OUT/seeds"
"$OUT/bin/fuzz_seeds" "$OUT/seeds"
cp "$ROOT/apps/jobs/fashion-mlp.toml" "$OUT/seeds/job_spec/"
mkdir -p "$OUT/seeds/model_spec"
cp "$ROOT/apps/jobs/lm.toml" "$ROOT/apps/jobs/fashion-cnn.toml" "$OUT/seeds/model_spec/"
mkdir -p "$OUT/crashes"
failed=0
targets=(tensor checkpoint update shard job_spec model_spec idx ledger_entry reputation core)
for target in "${targets[@]}"; do
  corpus=$OUT/corpus/$target
  mkdir -p "$corpus" "$OUT/seeds/$target"
  log=$OUT/fuzz_$target.log
  # The core's harness keeps a whole core alive across inputs (no per-input leak check) and
  # waits up to 20 s for its answers.
  extra=(-rss_limit_mb=2048 -timeout=10)
  [ "$target" = core ] && extra=(-rss_limit_mb=4096 -timeout=30 -detect_leaks=0)
  if timeout -s KILL $((SECONDS_EACH + 90)) "$OUT/bin/fuzz_$target" "$corpus" "$OUT/seeds/$target" \
    -max_total_time="$SECONDS_EACH" "${extra[@]}" -max_len=65536 \
    -artifact_prefix="$OUT/crashes/$target-" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -a -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}')
    cov=$(grep -a -E "^#[0-9]+.*cov:" "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
    echo "fuzz $target: ok, ${execs:-?} executions in ${SECONDS_EACH} s, coverage ${cov:-?} edges"
  else
    echo "fuzz $target: FAILED (see $log and $OUT/crashes/)"
    tail -30 "$log"
    failed=$((failed + 1))
  fi
done
echo "$((${#targets[@]} - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
