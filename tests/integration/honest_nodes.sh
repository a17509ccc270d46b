#!/usr/bin/env bash
# Trust must never condemn the honest. The shipped fashion-mlp spec changed only to
# `workers = 4`, on four honest community nodes and one core-tier node that verifies them (real
# processes over TLS): late in training honest updates are nearly orthogonal, and a fixed
# direction bound once flagged every node in turn (round 26) and stalled the job. It must
# finish all 30 rounds, flag nobody, verify some results by re-computation, and reach the
# accuracy the shipped job reaches (>= 0.88). Community nodes, not core-tier ones: a core-tier
# node's results are neither screened out nor re-computed, so only these can be condemned.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

shipped_spec 4 "$WORK/job.toml"
start_cluster 0
for i in 1 2 3 4; do
  start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i"
done
wait_for 30 "4 nodes to join" node_count_is 4
start_verifier core1
submit_job job "$WORK/job.toml" 330
"$G" nodes --core "$core"
python3 - "$WORK/job.json" "$WORK/job-nodes.json" <<'PY' || fail "the four honest nodes' job"
import json, os, sys
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import check, finish
job = json.load(open(sys.argv[1]))
nodes = json.load(open(sys.argv[2]))
check(job["state"] == "done" and job["round"] == 30,
      f"the job finished all its rounds ({job['state']}, round {job['round']}/30: {job['detail']})")
check(job["test_accuracy"] >= 0.88, f"test accuracy {job['test_accuracy']:.4f} >= 0.88")
check(job["rejected_results"] == 0, f"no result rejected ({job['rejected_results']})")
for n in nodes:
    check(not n["flagged"] and n["rejected"] == 0, f"{n['name']} not flagged")
check(sum(n["validated"] for n in nodes) == 120, "120 results credited (30 rounds x 4)")
check(job["verified_results"] >= 1, f"{job['verified_results']} results re-computed and matched")
print(f"{job['screened_results']} result(s) looked atypical, {job['rollbacks']} round(s) rolled "
      f"back; re-computation {job['recompute_s']:.1f} s against {job['compute_s']:.1f} s of work")
finish()
PY
finish
