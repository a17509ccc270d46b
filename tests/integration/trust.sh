#!/usr/bin/env bash
# Untrusted work against real processes: a core, one core-tier node (it verifies) and nine
# community nodes, three of which misbehave: one flips the sign of every update and one sends
# noise on a fifth of its results (both caught by the immediate checks), one scales its
# updates by 1.5 (which passes them, and is caught by re-computation). A fashion-mlp job must flag both misbehaving nodes and
# no honest one, end within 0.01 of the test accuracy of an honest-only run of the same spec,
# and neither apply nor credit the rejected work. A core-tier join with a wrong secret is
# refused with a clear message.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

cat >"$WORK/job.toml" <<'TOML'
[job]
name = "trust"
workload = "fashion-mlp"
rounds = 16
workers = 8
seed = 7
[inner]
local_steps = 30
batch_size = 64
[outer]
lr = 0.7
TOML

# The honest-only run: the same spec on an embedded core with trusted nodes.
timeout -s KILL 240 "$G" demo --nodes 4 --spec "$WORK/job.toml" --json "$WORK/honest.json" \
  >"$WORK/honest.out" 2>&1 || fail "the honest-only run failed: $(tail -3 "$WORK/honest.out")"
honest=$(json_get "$WORK/honest.json" "j['test_accuracy']")
echo "honest-only run: test accuracy $honest"

start_cluster 0
start verifier "$BIN/gflex-node" --join "$core" --name verifier --data-dir "$WORK/verifier" \
  --tier core --workers 2
for i in $(seq 1 9); do
  extra=""
  [ "$i" = 7 ] && extra="--misbehave signflip"
  [ "$i" = 8 ] && extra="--misbehave sometimes:0.2:random"
  [ "$i" = 9 ] && extra="--misbehave scale:1.5"
  start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i" \
    $extra
done
wait_for 30 "10 nodes to join" bash -c "[ \$('$G' nodes --core $core | wc -l) -eq 10 ]"

# A core-tier join with the wrong secret is refused (exit 3) and changes nothing.
GFLEX_CORE_SECRET=wrong expect_error "forged core tier" "the core tier needs the core's secret" \
  "$BIN/gflex-node" --join "$core" --name forger --data-dir "$WORK/forger" --tier core
[ "$("$G" nodes --core "$core" | wc -l)" -eq 10 ] || fail "the refused node is listed"

timeout -s KILL 300 "$G" submit "$WORK/job.toml" --core "$core" --wait \
  --json "$WORK/summary.json" >"$WORK/submit.out" 2>"$WORK/submit.err" ||
  fail "submit --wait exited non-zero: $(tail -3 "$WORK/submit.err")"
"$G" nodes --core "$core" --json >"$WORK/nodes.json" || fail "gflex nodes --json"
"$G" nodes --core "$core"

python3 - "$WORK/summary.json" "$WORK/nodes.json" "$honest" <<'PY' || fail "trust checks"
import json, sys
job = json.load(open(sys.argv[1]))
nodes = {n["name"]: n for n in json.load(open(sys.argv[2]))}
honest = float(sys.argv[3])
ok = True
def check(cond, what):
    global ok
    print(("ok: " if cond else "FAIL: ") + what)
    ok = ok and cond
check(job["state"] == "done", f"job ended {job['state']}")
check(abs(job["test_accuracy"] - honest) <= 0.01,
      f"test accuracy {job['test_accuracy']:.4f} within 0.01 of the honest-only {honest:.4f}")
for k in ("name", "tier", "score", "streak", "validated", "rejected", "flagged"):
    check(all(k in n for n in nodes.values()), f"every node has '{k}'")
for bad in ("node7", "node8", "node9"):
    n = nodes[bad]
    check(n["flagged"] and n["rejected"] >= 1,
          f"{bad} flagged ({n['rejected']} rejected: {n['last_rejection']})")
check("re-computation" in nodes["node9"]["last_rejection"], "node9 was caught by re-computation")
for good in [f"node{i}" for i in range(1, 7)] + ["verifier"]:
    n = nodes[good]
    check(not n["flagged"] and n["rejected"] == 0, f"{good} not flagged")
    check(n["validated"] >= 1, f"{good} did validated work ({n['validated']})")
check(nodes["verifier"]["tier"] == "core" and nodes["node1"]["tier"] == "community", "tiers")
# Rejected work is neither applied nor credited: the sign flipper never had a result
# accepted; every result the job rejected is counted against a misbehaving node.
for bad in ("node7", "node9"):
    check(nodes[bad]["validated"] == 0 and nodes[bad]["credited_s"] == 0,
          f"{bad} (misbehaving on every result) was never credited")
rejected = sum(nodes[b]["rejected"] for b in ("node7", "node8", "node9"))
check(job["rejected_results"] == rejected,
      f"the job rejected {job['rejected_results']} results, all of node7-9 ({rejected})")
check(job["verified_results"] >= 1, f"{job['verified_results']} results re-computed and matched")
credited = sum(n["validated"] for n in nodes.values())
check(credited == job["rounds"] * 8,
      f"{credited} results credited = rounds x workers ({job['rounds'] * 8}); "
      f"{job['rollbacks']} round(s) rolled back")
sys.exit(0 if ok else 1)
PY
grep -E "flagged|rolled back|MISMATCH" "$WORK/core.log" | head -5
finish
