#!/usr/bin/env bash
# Trust as a job owner meets it: the shipped fashion-mlp spec changed only to `workers = 7`
# (tier hybrid), on a core with one core-tier node, five honest community nodes and two
# cheats, one scaling its updates by 1.5 and one sending its previous update again on a third
# of its results. Once every honest node was flagged in turn late in training (round 23) and
# the job stalled. The job must finish all 30 rounds with both cheats flagged, no honest node
# flagged, every honest node given work, and the accuracy of the shipped job (>= 0.88).
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

shipped_spec 7 "$WORK/job.toml"
grep -q '^tier = "hybrid"$' "$WORK/job.toml" || fail "the shipped spec is not hybrid"

start_cluster 0
for i in 1 2 3 4 5; do
  start "honest$i" "$BIN/gflex-node" --join "$core" --name "honest$i" --data-dir "$WORK/honest$i"
done
start scaler "$BIN/gflex-node" --join "$core" --name scaler --data-dir "$WORK/scaler" \
  --misbehave scale:1.5
start replayer "$BIN/gflex-node" --join "$core" --name replayer --data-dir "$WORK/replayer" \
  --misbehave sometimes:0.34:stale
wait_for 30 "7 nodes to join" node_count_is 7
start_verifier core1 --workers 2

submit_job job "$WORK/job.toml" 330
"$G" nodes --core "$core"
python3 - "$WORK/job.json" "$WORK/job-nodes.json" <<'PY' || fail "the hybrid job with two cheats"
import json, os, sys
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import check, finish
job = json.load(open(sys.argv[1]))
nodes = {n["name"]: n for n in json.load(open(sys.argv[2]))}
check(job["state"] == "done" and job["round"] == 30,
      f"the job finished all its rounds ({job['state']}, round {job['round']}/30: {job['detail']})")
check(job["test_accuracy"] >= 0.88, f"test accuracy {job['test_accuracy']:.4f} >= 0.88")
for bad in ("scaler", "replayer"):
    n = nodes[bad]
    check(n["flagged"] and "re-computation" in n["last_rejection"],
          f"{bad} flagged by re-computation ({n['last_rejection']})")
for good in ["core1"] + [f"honest{i}" for i in range(1, 6)]:
    n = nodes[good]
    check(not n["flagged"] and n["rejected"] == 0, f"{good} not flagged")
for good in [f"honest{i}" for i in range(1, 6)]:
    check(nodes[good]["validated"] >= 5, f"{good} did work ({nodes[good]['validated']} results, "
          f"{100 * nodes[good]['work_share']:.1f}% of the work)")
check(job["rejected_results"] == nodes["scaler"]["rejected"] + nodes["replayer"]["rejected"],
      f"every rejected result ({job['rejected_results']}) is a cheat's")
check(job["verified_results"] >= 1, f"{job['verified_results']} results re-computed and matched")
print(f"{job['screened_results']} result(s) looked atypical, {job['rollbacks']} round(s) rolled "
      f"back; re-computation {job['recompute_s']:.1f} s against {job['compute_s']:.1f} s of work")
finish()
PY
finish
