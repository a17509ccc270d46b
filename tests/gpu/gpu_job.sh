#!/usr/bin/env bash
# A node trains as part of a job on this machine's GPU: a core and one node (--backend auto:
# every GPU found) as separate processes on loopback, a short fashion-mlp job and a short
# fashion-cnn job, each to a stated accuracy. Run by run-gpu.sh from a bundle:
#
#   bash gpu_job.sh BIN_DIR JOBS_DIR OUT_DIR
#
# Every process it starts is killed by pid (SIGKILL) when it ends; the whole run is bounded.
set -uo pipefail
bin=$1 jobs=$2 out=$3
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/gflex-gpu-job.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  cp "$work"/*.log "$out/" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS >= deadline)) && { fail "timed out after ${limit}s waiting for $what"; return 1; }
    sleep 0.3
  done
}

gpus=$("$bin/gflex" devices --json - 2>/dev/null |
  python3 -c 'import json, sys; print(len(json.load(sys.stdin)["devices"]))' 2>/dev/null || echo 0)
if [ "$gpus" = 0 ]; then
  echo "skipped: no CUDA device here ($("$bin/gflex" devices 2>&1 | head -1))"
  exit 0
fi

port=$((20000 + RANDOM % 30000))
core=127.0.0.1:$port
"$bin/gflex-core" init --data-dir "$work/core" >/dev/null || { fail "gflex-core init"; exit 1; }
export GFLEX_CORE_CERT=$work/core/core-cert.pem
GFLEX_API_KEY=$(cat "$work/core/operator.key")
export GFLEX_API_KEY
"$bin/gflex-core" --listen "$core" --data-dir "$work/core" >"$work/core.log" 2>&1 &
pids+=($!)
wait_for 30 "the core to listen" grep -q "core listening" "$work/core.log" || exit 1
token=$("$bin/gflex-core" token create --tier core --core "$core") || { fail "token"; exit 1; }
metrics=127.0.0.1:$((20000 + RANDOM % 30000))
"$bin/gflex-node" --join "$core" --name gpu-node --tier core --token "$token" \
  --data-dir "$work/node" --metrics-listen "$metrics" >"$work/node.log" 2>&1 &
pids+=($!)
wait_for 120 "the node to join" bash -c "'$bin/gflex' nodes --core $core | grep -q gpu-node" || exit 1
"$bin/gflex" nodes --core "$core"
grep -E "cuda:[0-9]+ .*GEMM" "$work/node.log" || fail "the node did not measure a GPU"

# Short jobs: 8 rounds of 2 assignments (the node's one worker takes them in turn).
for workload in fashion-mlp:0.85 fashion-cnn:0.85; do
  name=${workload%%:*} min=${workload##*:}
  sed -e 's/^rounds = .*/rounds = 8/' -e 's/^workers = .*/workers = 2/' \
    "$jobs/$name.toml" >"$work/$name.toml"
  start=$SECONDS
  timeout -s KILL 600 "$bin/gflex" submit "$work/$name.toml" --core "$core" --wait \
    --json "$out/job-$name.json" >"$work/submit-$name.log" 2>&1 ||
    { fail "$name: submit --wait failed: $(tail -2 "$work/submit-$name.log")"; continue; }
  python3 - "$out/job-$name.json" "$min" "$name" "$((SECONDS - start))" <<'PY' || fail "$name"
import json, sys
j, minimum, name, secs = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"{name}: {j['state']}, test accuracy {j['test_accuracy']:.4f} in {secs} s")
assert j["state"] == "done" and j["test_accuracy"] >= minimum, j
PY
done
grep -q "failed on the device" "$work/node.log" && fail "an assignment failed on the device"
# The node's metrics carry its GPUs' memory and utilisation (NVML, sampled every 5 s).
sleep 6
python3 - "http://$metrics/metrics" <<'PY' || fail "the node's GPU metrics: $(grep 'GPU metrics' "$work/node.log")"
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
values = {}
for line in text.splitlines():
    if line and not line.startswith("#"):
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
total = values['gflex_node_gpu_memory_bytes{gpu="0",what="total"}']
ours = values['gflex_node_gpu_memory_bytes{gpu="0",what="ours"}']
util = values['gflex_node_gpu_utilization_ratio{gpu="0",what="compute"}']
assert total > 0 and 0 <= ours <= total and 0 <= util <= 1, (total, ours, util)
print(f"ok: GPU 0 metrics: {total / 2**30:.1f} GiB, {ours / 2**20:.0f} MiB ours, {util:.0%} busy")
PY
((failures == 0)) && echo "ok: the GPU node trained fashion-mlp and fashion-cnn as part of jobs"
exit $((failures > 0))
