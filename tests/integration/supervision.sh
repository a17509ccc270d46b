#!/usr/bin/env bash
# Supervision on real processes: a worker that crashes is restarted by its node and its
# assignment runs elsewhere; a node frozen with SIGSTOP is given up after its lease, its work
# reassigned, and after SIGCONT it joins again by itself; SIGTERM makes a node leave and exit 0.
# The job finishes with the accuracy it has without faults.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
CORE_ARGS="--lease-ms 2000 --heartbeat-ms 300" NODE_ARGS_1="--crash-worker-at 2" start_cluster 3
"$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --core "$core" --json "$WORK/submitted.json" \
  >/dev/null || fail "submit"
job=$(json_get "$WORK/submitted.json" "j['job_id']")
round() {
  "$G" status "$job" --core "$core" --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["round"])'
}

wait_for 60 "node1's worker to crash and restart" grep -q "a node child stopped (.*runtime_error.*); restarted it" "$WORK/node1.log"
echo "ok: node1's worker crashed and was restarted"

deadline=$((SECONDS + 60))
until [ "$(round)" -ge 5 ] 2>/dev/null; do
  ((SECONDS < deadline)) || { fail "timed out waiting for round 5"; break; }
  sleep 0.2
done
kill -STOP "$PID_node2"
stopped_at=$SECONDS
wait_for 10 "the core to give up on the frozen node" grep -q "(node2) missed its heartbeats" \
  "$WORK/core.log"
echo "ok: frozen node2 given up after $((SECONDS - stopped_at)) s (lease 2 s)"
kill -CONT "$PID_node2"
wait_for 20 "node2 to join again" grep -q "joining again" "$WORK/node2.log"
wait_for 20 "three nodes again" bash -c "[ \$('$G' nodes --core $core | wc -l) -eq 3 ]"
echo "ok: node2 joined again after SIGCONT"

kill -TERM "$PID_node3"
rc=0
for _ in $(seq 1 50); do kill -0 "$PID_node3" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$PID_node3" 2>/dev/null; then
  fail "node3 still running 5 s after SIGTERM"
else
  wait "$PID_node3" || rc=$?
  [ "$rc" -eq 0 ] || fail "node3 exited $rc after SIGTERM"
fi
wait_for 10 "the core to see node3 leave" grep -q "(node3) left" "$WORK/core.log"
echo "ok: node3 left on SIGTERM and exited 0"

expect_job_done "$job" 0.885
grep -q "failed (.*); reassigning" "$WORK/core.log" || fail "no reassignment logged"
echo "ok: $job done with test accuracy $FINAL_ACCURACY despite the faults"
finish
