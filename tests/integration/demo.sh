#!/usr/bin/env bash
# `gflex demo` (core and three nodes in one process) reaches >= 0.88 test accuracy, and a
# bad --nodes is refused.
source "$(dirname "$0")/lib.sh"
timeout -s KILL 240 "$BIN/gflex" demo --json "$WORK/demo.json" >"$WORK/out" 2>"$WORK/err" ||
  fail "gflex demo exited non-zero: $(tail -3 "$WORK/err")"
acc=$(json_get "$WORK/demo.json" "j['test_accuracy']")
python3 -c "import sys; sys.exit(0 if $acc >= 0.88 else 1)" || fail "demo accuracy $acc < 0.88"
[ "$(json_get "$WORK/demo.json" "j['state']")" = done ] || fail "demo job did not finish"
echo "ok: demo test accuracy $acc"
# A demo that ends well ends quietly: its nodes leave (bye), none is reported lost.
grep -q "is unreachable" "$WORK/err" && fail "a node reported unreachable at the demo's end: $(grep unreachable "$WORK/err" | head -1)"
[ "$(grep -c ") left: its work goes back" "$WORK/err")" -eq 3 ] || fail "not three nodes left at the demo's end"
# Stopped, the demo cancels its job and leaves no temporary directory behind: the store and
# the nodes' shard caches stayed in /tmp after every Ctrl-C or SIGTERM. (SIGTERM: a
# background job of this non-interactive shell ignores SIGINT.)
mkdir -p "$WORK/tmp"
TMPDIR="$WORK/tmp" start stopped "$BIN/gflex" demo
wait_for 60 "the stopped demo's first round" grep -q "round 1/" "$WORK/stopped.log"
ls -d "$WORK"/tmp/gflex-demo-* >/dev/null 2>&1 || fail "the demo made no temporary directory"
kill -TERM "$PID_stopped"
code=0
timeout 30 tail --pid="$PID_stopped" -f /dev/null ||
  { fail "the demo did not stop on SIGTERM"; kill -KILL "$PID_stopped" 2>/dev/null || true; }
wait "$PID_stopped" || code=$?
[ "$code" -eq 1 ] || fail "a stopped demo exited $code, not 1"
grep -q "terminated: job job-1 was cancelled" "$WORK/stopped.log" ||
  fail "the stopped demo did not say so: $(tail -2 "$WORK/stopped.log")"
if ls -d "$WORK"/tmp/gflex-demo-* >/dev/null 2>&1; then
  fail "a stopped demo left $(ls -d "$WORK"/tmp/gflex-demo-*) behind"
else
  echo "ok: a stopped demo cancels its job and removes its temporary directory"
fi
# Stopped while its nodes calibrate (one after another, seconds for 24), it also ends well:
# the signal killed the process there, leaving the directory behind.
mkdir -p "$WORK/tmp2"
TMPDIR="$WORK/tmp2" start early "$BIN/gflex" demo --nodes 24
wait_for 30 "the early demo's directory" bash -c "ls -d '$WORK'/tmp2/gflex-demo-* >/dev/null 2>&1"
kill -TERM "$PID_early"
timeout 60 tail --pid="$PID_early" -f /dev/null ||
  { fail "the demo did not stop on an early SIGTERM"; kill -KILL "$PID_early" 2>/dev/null || true; }
code=0
wait "$PID_early" || code=$?
[ "$code" -eq 1 ] || fail "a demo stopped early exited $code, not 1"
grep -q "terminated: " "$WORK/early.log" || fail "the early-stopped demo did not say so: $(tail -2 "$WORK/early.log")"
grep -q "round 1/" "$WORK/early.log" && echo "note: the early SIGTERM came after the first round"
if ls -d "$WORK"/tmp2/gflex-demo-* >/dev/null 2>&1; then
  fail "a demo stopped early left $(ls -d "$WORK"/tmp2/gflex-demo-*) behind"
else
  echo "ok: a demo stopped while its nodes start cancels and removes its directory"
fi
expect_error "zero nodes" "--nodes" "$BIN/gflex" demo --nodes 0
printf '[job]\nworkload = "fashion-mlp"\nrounds = -1\n' >"$WORK/bad.toml"
expect_error "bad demo spec" "bad.toml: job.rounds: must be an integer in \[1, 100000\], got -1" \
  "$BIN/gflex" demo --spec "$WORK/bad.toml"
# A spec that parses but that the embedded core refuses at submit is bad input too (exit 2,
# as from `gflex submit`): it exited 1, which scripts retry.
printf '[job]\nworkload = "fashion-mlp"\nrounds = 1\nworkers = 40\n' >"$WORK/wide.toml"
expect_usage "demo spec the core refuses" "job.workers: 40 workers, but the data set has only" \
  "$BIN/gflex" demo --nodes 1 --spec "$WORK/wide.toml"
# A job that ends before its first evaluation (a deep linear model at lr 10 diverges in its
# first round) has no test figures: "test loss 0.0000" read as a perfect model.
cat >"$WORK/diverge.toml" <<'TOML'
[job]
name = "diverge"
rounds = 3
workers = 1
[inner]
optimizer = "sgd"
local_steps = 5
batch_size = 16
lr = 10.0
lr_schedule = "constant"
[eval]
every = 3
[data]
set = "fashion-mnist"
[model]
input = [784]
layers = [
  { type = "linear", units = 512 }, { type = "linear", units = 512 },
  { type = "linear", units = 512 }, { type = "linear", units = 10 }, { type = "softmax_xent" },
]
TOML
rc=0
timeout -s KILL 120 "$BIN/gflex" demo --nodes 1 --spec "$WORK/diverge.toml" >"$WORK/diverge.out" \
  2>"$WORK/diverge.err" || rc=$?
if [ "$rc" != 1 ] || ! grep -q "^failed: not yet evaluated" "$WORK/diverge.out"; then
  fail "a diverging demo: exit $rc, $(tail -2 "$WORK/diverge.out")"
elif grep -q "test loss" "$WORK/diverge.out"; then
  fail "a demo ended before its first evaluation printed a test loss: $(grep "test loss" "$WORK/diverge.out")"
else
  echo "ok: a demo ended before its first evaluation prints no test loss"
fi
# --workload beside --spec was ignored: the spec's workload ran instead.
expect_usage "demo --workload with --spec" "--workload: not with --spec" \
  "$BIN/gflex" demo --nodes 1 --spec "$WORK/wide.toml" --workload lm
finish
