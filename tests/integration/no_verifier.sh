#!/usr/bin/env bash
# Community work with no core-tier node to verify it. Sampled results are re-computed on
# core-tier workers; without one, a job must not hang silently. With the default policy
# (--unverified wait) the submit warns, the job's status says it waits for a verifier, and
# once a core-tier node joins it finishes with its results verified. With --unverified accept
# it finishes without one, its sampled results counted as unverified.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

spec="$WORK/job.toml"
printf '[job]\nname = "unverified"\nworkload = "fashion-mlp"\nrounds = 4\nworkers = 2\n%s\n' \
  '[inner]
local_steps = 10
batch_size = 64
[eval]
every = 4
[trust]
tier = "community"' >"$spec"

# -- the default: wait for a verifier, and say so --------------------------------------------
core=127.0.0.1:$(free_port)
start_core core "$core" "$WORK/core" --verify-wait-s 2
for i in 1 2; do
  start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i"
done
wait_for 30 "2 community nodes to join" node_count_is 2
job=$("$G" submit "$spec" --core "$core" 2>"$WORK/submit.err") || fail "submit: $(cat "$WORK/submit.err")"
grep -q "warning: no core-tier node is connected to verify $job" "$WORK/submit.err" &&
  echo "ok: the submit warns that no core-tier node can verify" ||
  fail "no warning at submit: $(cat "$WORK/submit.err")"
wait_for 40 "the status to say the job waits for a verifier" bash -c \
  "'$G' status $job --core $core | grep -q 'waiting for a verifier: no core-tier worker was free'"
"$G" status "$job" --core "$core" --json >"$WORK/waiting.json"
python3 - "$WORK/waiting.json" <<'PY' || fail "the job moved on without a verifier"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "running", j["state"]
assert j["round"] < 4 and j["unverified_results"] == 0, j
print(f"ok: without a verifier the job waits at round {j['round']}: {j['detail']}")
PY
start verifier "$BIN/gflex-node" --join "$core" --name verifier --data-dir "$WORK/verifier" \
  --tier core --token "$TOKEN_core"
wait_for 90 "$job to finish once a verifier joined" bash -c \
  "'$G' status $job --core $core | grep -qE ' (done|failed|cancelled),'"
"$G" status "$job" --core "$core" --json >"$WORK/waited.json"
python3 - "$WORK/waited.json" <<'PY' || fail "the job after the verifier joined"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "done", j["state"]
assert j["verified_results"] > 0 and j["unverified_results"] == 0, j
print(f"ok: a verifier joined and the job finished: {j['verified_results']} results verified, "
      f"test accuracy {j['test_accuracy']:.4f}")
PY
for p in "$PID_node1" "$PID_node2" "$PID_verifier" "$PID_core"; do kill -KILL "$p" 2>/dev/null || true; done

# -- --unverified accept: go on without a verifier, and count it ----------------------------
core=127.0.0.1:$(free_port)
start_core core2 "$core" "$WORK/core2" --verify-wait-s 1 --unverified accept
for i in 3 4; do
  start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i"
done
wait_for 30 "2 community nodes to join" node_count_is 2
timeout -s KILL 120 "$G" submit "$spec" --core "$core" --wait --json "$WORK/accepted.json" \
  >"$WORK/accepted.out" 2>&1 || fail "the job under --unverified accept: $(tail -3 "$WORK/accepted.out")"
python3 - "$WORK/accepted.json" <<'PY' || fail "the job under --unverified accept"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["state"] == "done", j["state"]
assert j["unverified_results"] > 0 and j["verified_results"] == 0, j
assert j["test_accuracy"] > 0.6, j["test_accuracy"]
print(f"ok: --unverified accept: done without a verifier, {j['unverified_results']} results "
      f"used unverified, test accuracy {j['test_accuracy']:.4f}")
PY
grep -q "is used unverified" "$WORK/core2.log" || fail "the core log does not say what it accepted"
expect_error "a bad --unverified policy" "--unverified: .*(wait|accept)" \
  "$BIN/gflex-core" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/core2" --unverified maybe
finish
