#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, with AddressSanitizer and UndefinedBehaviorSanitizer)
# in build-fuzz/ and runs each for SECONDS (default 20) from seeds plus its saved corpus.
# A crash, a leak, undefined behaviour or a broken round trip fails the run; the input that
# did it is kept in build-fuzz/crashes/. Prints one line per target (executions, coverage).
set -euo pipefail
SECONDS_EACH=${1:-20}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/build-fuzz
CC=clang CXX=clang++ cmake -S "$ROOT" -B "$OUT" -G Ninja -DGFLEX_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$OUT" >/dev/null
rm -rf "$OUT/seeds"
"$OUT/bin/fuzz_seeds" "$OUT/seeds"
cp "$ROOT/apps/jobs/fashion-mlp.toml" "$OUT/seeds/job_spec/"
mkdir -p "$OUT/crashes"
failed=0
for target in tensor checkpoint update shard job_spec idx ledger_entry reputation; do
  corpus=$OUT/corpus/$target
  mkdir -p "$corpus"
  log=$OUT/fuzz_$target.log
  if timeout -s KILL $((SECONDS_EACH + 60)) "$OUT/bin/fuzz_$target" "$corpus" "$OUT/seeds/$target" \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
    -artifact_prefix="$OUT/crashes/$target-" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -m1 "stat::number_of_executed_units" "$log" | awk '{print $2}')
    cov=$(grep -E "^#[0-9]+.*cov:" "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
    echo "fuzz $target: ok, ${execs:-?} executions in ${SECONDS_EACH} s, coverage ${cov:-?} edges"
  else
    echo "fuzz $target: FAILED (see $log and $OUT/crashes/)"
    tail -30 "$log"
    failed=$((failed + 1))
  fi
done
echo "$((8 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
