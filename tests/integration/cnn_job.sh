#!/usr/bin/env bash
# fashion-cnn as part of a job: a core and two nodes as separate processes on loopback (no GPU
# here, so each node says so once and serves on its CPU backend), a short fashion-cnn job from
# the shipped spec reaches >= 0.84 test accuracy, and `gflex nodes` shows CPU nodes without
# GPUs. An assignment that fails on the device (node1's second, injected as out of device
# memory, the path a real CUDA OOM takes) goes back to the job and runs elsewhere, while the
# worker and its node stay up. A third node, a small machine (--memory-limit 16M: room for its
# calibration model, not for fashion-cnn at batch 64), fails each assignment it takes as out of
# host memory instead of being ended by the kernel; the job runs it elsewhere and the node
# stays up. Where the machine has a GPU the same job runs on it.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
NODE_ARGS_1="--device-error-at 2" NODE_ARGS_3="--memory-limit 16M" start_cluster 3

devices=$("$G" devices --json - | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["devices"]))') ||
  fail "gflex devices --json"
if [ "$devices" = 0 ]; then
  for i in 1 2 3; do
    grep -q "no usable CUDA device (.*); serving on the CPU backend" "$WORK/node$i.log" ||
      fail "node$i did not say why it serves on the CPU"
  done
else
  echo "skipped: the nodes' word on serving on the CPU ($devices CUDA device(s) here)"
fi
"$G" nodes --core "$core" --json >"$WORK/nodes.json" || fail "gflex nodes"
python3 - "$WORK/nodes.json" <<'PY' || fail "node list"
import json, sys
nodes = json.load(open(sys.argv[1]))
assert len(nodes) == 3, nodes
for n in nodes:
    assert "gpus" in n and isinstance(n["gpus"], list), n
    if not n["gpus"]:
        assert n["device"].startswith("cpu: OpenBLAS"), n["device"]
PY

# One pass over the data: 12 rounds of 2 assignments of 40 steps of 64 images.
spec="$WORK/cnn.toml"
sed -e 's/^rounds = 40/rounds = 12/' -e 's/^workers = 3/workers = 2/' \
  -e 's/^local_steps = 50/local_steps = 40/' -e 's/^batch_size = 128/batch_size = 64/' \
  "$SRC/apps/jobs/fashion-cnn.toml" >"$spec"
timeout -s KILL 300 "$G" submit "$spec" --core "$core" --wait --json "$WORK/summary.json" \
  >"$WORK/submit.out" 2>"$WORK/submit.err" ||
  fail "submit --wait exited non-zero: $(tail -3 "$WORK/submit.err")"
state=$(json_get "$WORK/summary.json" "j['state']")
acc=$(json_get "$WORK/summary.json" "j['test_accuracy']")
workload=$(json_get "$WORK/summary.json" "j['workload']")
[ "$state" = done ] || fail "job state is $state"
[ "$workload" = fashion-cnn ] || fail "workload is $workload"
python3 -c "import sys; sys.exit(0 if $acc >= 0.84 else 1)" || fail "test accuracy $acc < 0.84"
echo "ok: fashion-cnn job done, test accuracy $acc"

grep -q "failed on the device: out of device memory (injected" "$WORK/node1.log" ||
  fail "node1 did not report the device failure"
grep -q "failed (.*out of device memory.*); reassigning shard" "$WORK/core.log" ||
  fail "the core did not reassign the failed assignment"
grep -q "a node child stopped" "$WORK/node1.log" && fail "the worker was restarted: it should have stayed up"
kill -0 "$PID_node1" 2>/dev/null || fail "node1 exited after the device failure"
node_count_is 3 || fail "a node left after the device failure"
echo "ok: the failed assignment ran elsewhere; node1 and its worker stayed up"

grep -q "on node3 failed (device_error: allocating .*: out of host memory (--memory-limit 16777216 bytes" "$WORK/core.log" ||
  fail "node3 (--memory-limit 16M) did not fail an assignment as out of host memory"
grep -qE "on node[12] failed .*out of host memory" "$WORK/core.log" &&
  fail "a node without a small --memory-limit ran out of host memory"
grep -q "a node child stopped" "$WORK/node3.log" && fail "node3's worker was restarted"
kill -0 "$PID_node3" 2>/dev/null || fail "node3 exited after running out of host memory"
echo "ok: node3, too small for the job, refused its assignments as out of host memory and stayed up"
finish
