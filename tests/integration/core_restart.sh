#!/usr/bin/env bash
# SIGKILL of the core mid-job: restarted on the same data dir it resumes the job from its
# last committed round (none lost), the nodes reconnect by themselves, the job finishes with
# >= 0.87 test accuracy, and a user following it with `gflex submit --wait` sees it to its end.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
start_cluster 3
# The user follows the job with `gflex submit --wait` across the core's restart: its client
# reconnects and goes on (before, it failed at the first status after the kill).
start waiter "$G" submit "${JOB_FILE:-$SRC/apps/jobs/fashion-mlp.toml}" --core "$core" --wait \
  --json "$WORK/waited.json"
wait_for 30 "the job's id" bash -c "head -1 '$WORK/waiter.log' | grep -q '^job-'"
job=$(head -1 "$WORK/waiter.log")

wait_for 120 "round 8" bash -c "r=\$('$G' status $job --core $core --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[\"round\"])'); [ \"\${r:-0}\" -ge 8 ]"
kill -KILL "$PID_core"
wait "$PID_core" 2>/dev/null || true
# The last round committed is read from the dead core's log, which says so once the commit is
# durable: a round asked for before the kill missed any committed between the ask and the kill.
before=$(sed -n "s/.*job $job: round \([0-9]*\)\/[0-9]* committed.*/\1/p" "$WORK/core.log" | tail -1)
[ -n "$before" ] || fail "the core's log names no committed round of $job"
echo "ok: core killed with SIGKILL after round ${before:=0} committed"

start core2 "$BIN/gflex-core" --listen "$core" --data-dir "$WORK/core"
wait_for 20 "the restarted core to listen" grep -q "core listening" "$WORK/core2.log"
wait_for 20 "the job to resume" grep -q "resuming job $job from round" "$WORK/core2.log"
resumed=$(sed -n "s/.*resuming job $job from round \([0-9]*\).*/\1/p" "$WORK/core2.log" | head -1)
if [ "${resumed:-0}" -ge "$before" ]; then
  echo "ok: resumed from round $resumed (>= $before committed before the kill)"
else
  fail "resumed from round ${resumed:-?}, but round $before had been committed"
fi
wait_for 60 "the nodes to reconnect" node_count_is 3
echo "ok: the nodes reconnected by themselves"

wait_for 240 "the job to finish" bash -c "'$G' status $job --core $core | grep -qE ' (done|failed|cancelled),'"
"$G" status "$job" --core "$core" --json >"$WORK/final.json" || fail "final status"
state=$(json_get "$WORK/final.json" "j['state']")
acc=$(json_get "$WORK/final.json" "j['test_accuracy']")
round=$(json_get "$WORK/final.json" "j['round']")
[ "$state" = done ] || fail "job ended $state"
[ "$round" -eq 30 ] || fail "job ended at round $round"
python3 -c "import sys; sys.exit(0 if $acc >= 0.87 else 1)" || fail "test accuracy $acc < 0.87"
echo "ok: $job finished after the restart: test accuracy $acc"
wait_for 30 "gflex submit --wait to end" bash -c "! kill -0 $PID_waiter 2>/dev/null"
kill -KILL "$PID_waiter" 2>/dev/null || true  # still running: the wait above failed
if wait "$PID_waiter" && [ "$(json_get "$WORK/waited.json" "j['state']")" = done ]; then
  echo "ok: gflex submit --wait followed $job through the restart to its end"
else
  fail "gflex submit --wait did not follow the job through the restart: $(tail -3 "$WORK/waiter.log")"
fi

# A job submitted under a --shard-samples that cut its data finer than the next start's: its
# 25 workers need 25 shards, and the default cuts Fashion-MNIST into 20. It failed for good
# at its resume ("25 workers, but the data set has only 20 shards").
kill -KILL "$PID_core2"
wait "$PID_core2" 2>/dev/null || true
start core3 "$BIN/gflex-core" --listen "$core" --data-dir "$WORK/core" --shard-samples 2000
wait_for 20 "the core with --shard-samples 2000 to listen" grep -q "core listening" "$WORK/core3.log"
sed -e 's/^workers = .*/workers = 25/' "$SRC/apps/jobs/fashion-mlp.toml" >"$WORK/wide.toml"
wide=$("$G" submit "$WORK/wide.toml" --core "$core") || fail "submit the 25-worker job"
wait_for 60 "$wide to start" bash -c "'$G' status $wide --core $core | grep -q ' running,'"
kill -KILL "$PID_core3"
wait "$PID_core3" 2>/dev/null || true
start core4 "$BIN/gflex-core" --listen "$core" --data-dir "$WORK/core"
wait_for 20 "the core with the default --shard-samples to listen" grep -q "core listening" \
  "$WORK/core4.log"
wait_for 60 "$wide to be cut into 25 shards" grep -q "job $wide: its 25 workers need" "$WORK/core4.log"
sleep 2
"$G" status "$wide" --core "$core" --json >"$WORK/wide.json" || fail "status of $wide"
wide_state=$(json_get "$WORK/wide.json" "j['state']")
[ "$wide_state" = running ] || fail "$wide is $wide_state after a restart with a coarser cut: \
$(json_get "$WORK/wide.json" "j['detail']")"
echo "ok: $wide resumed under a coarser --shard-samples, with a cut of its own"
finish
