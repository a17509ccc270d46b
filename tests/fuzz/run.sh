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
# The pieces' times of the release build's run (if it ran) order the first sanitized run's.
[ -f "$OUT/unit-times.json" ] || cp "$ROOT/build/unit-times.json" "$OUT/" 2>/dev/null || true
if GFLEX_UNIT_TIMES=$OUT/unit-times.json python3 "$ROOT/tests/unit/run_parallel.py" "$OUT/bin/gflex_unit_tests" \
  -tce="*learns real Fashion-MNIST*" >"$OUT/unit.log" 2>&1; then
  echo "unit tests under ASan and UBSan: $(grep -m1 'test cases:' "$OUT/unit.log")"
else
  echo "unit tests under ASan and UBSan: FAILED"
  tail -120 "$OUT/unit.log"
  exit 1
fi
# The integration tests' processes write any sanitizer report to a file of their own; a run
# with such a file fails even if the test's own checks passed. Leaks are not checked there
# (daemons that are killed do not free what they hold). The two run side by side: most of
# their time is spent waiting on leases and tokens, and each has its ports, work folder and
# report folder to itself.
integration() {
  local t=$1 reports=$OUT/sanitizer-reports-$1
  rm -rf "$reports" && mkdir -p "$reports"
  if ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$reports/asan \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan \
    timeout -s KILL 600 bash "$ROOT/tests/integration/$t.sh" "$OUT/bin" >"$OUT/$t.log" 2>&1 &&
    [ -z "$(ls -A "$reports")" ]; then
    echo "integration test $t under ASan and UBSan: ok" >"$OUT/$t.result"
  else
    {
      echo "integration test $t under ASan and UBSan: FAILED"
      tail -20 "$OUT/$t.log"
      cat "$reports"/* 2>/dev/null | head -60
    } >"$OUT/$t.result"
    return 1
  fi
}
integration_failed=0
pids=()
for t in security protocol; do
  integration "$t" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || integration_failed=1; done
cat "$OUT/security.result" "$OUT/protocol.result"
[ "$integration_failed" -eq 0 ] || exit 1
rm -rf "$OUT/seeds"
"$OUT/bin/fuzz_seeds" "$OUT/seeds"
cp "$ROOT/apps/jobs/fashion-mlp.toml" "$OUT/seeds/job_spec/"
mkdir -p "$OUT/seeds/model_spec"
cp "$ROOT/apps/jobs/lm.toml" "$ROOT/apps/jobs/fashion-cnn.toml" "$OUT/seeds/model_spec/"
mkdir -p "$OUT/crashes"
# Each decoder's target runs for SECONDS on one thread, two at a time; the core's harness,
# which keeps a whole core's threads busy, runs alone.
fuzz() {
  local target=$1 corpus=$OUT/corpus/$1 log=$OUT/fuzz_$1.log
  mkdir -p "$corpus" "$OUT/seeds/$target"
  # The core's harness keeps a whole core alive across inputs (no per-input leak check) and
  # waits up to 20 s for its answers.
  local extra=(-rss_limit_mb=2048 -timeout=10)
  [ "$target" = core ] && extra=(-rss_limit_mb=4096 -timeout=30 -detect_leaks=0)
  if timeout -s KILL $((SECONDS_EACH + 90)) "$OUT/bin/fuzz_$target" "$corpus" "$OUT/seeds/$target" \
    -max_total_time="$SECONDS_EACH" "${extra[@]}" -max_len=65536 \
    -artifact_prefix="$OUT/crashes/$target-" -print_final_stats=1 >"$log" 2>&1; then
    local execs cov
    execs=$(grep -a -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}' || true)
    cov=$(grep -a -E "^#[0-9]+.*cov:" "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/' || true)
    echo "fuzz $target: ok, ${execs:-?} executions in ${SECONDS_EACH} s, coverage ${cov:-?} edges" \
      >"$OUT/fuzz_$target.result"
  else
    {
      echo "fuzz $target: FAILED (see $log and $OUT/crashes/)"
      tail -30 "$log"
    } >"$OUT/fuzz_$target.result"
    return 1
  fi
}
failed=0
batches=("core" "tensor checkpoint" "update shard" "job_spec model_spec" "idx ledger_entry"
  "reputation")
targets=()
for batch in "${batches[@]}"; do
  read -ra together <<<"$batch"
  pids=()
  for target in "${together[@]}"; do
    fuzz "$target" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  for target in "${together[@]}"; do cat "$OUT/fuzz_$target.result"; done
  targets+=("${together[@]}")
done
echo "$((${#targets[@]} - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
