#!/usr/bin/env bash
# A core and three nodes as separate processes on loopback: a fashion-mlp job submitted with
# `gflex submit --wait` reaches >= 0.87 test accuracy; `gflex fetch` and `gflex eval` give
# the same accuracy back from the checkpoint; a node speaking another protocol version is
# refused with a clear message and exit code 3. The core and one node serve Prometheus
# metrics (--metrics-listen): after the job they count its rounds and assignments, and pass
# `promtool check metrics`. The core stops on SIGTERM. The core cuts payloads into chunks of
# 64 KiB (--payload-chunk-kib), so the job's parameters and updates travel as content-addressed
# chunks (the way a model too large for one message does), checked in the metrics. Every node
# serves metrics too: the payload bytes the core counts in each direction are those the nodes
# count the other way, each byte once, where it crosses the network.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
core_metrics=127.0.0.1:$(free_port)
node_metrics=127.0.0.1:$(free_port)
node2_metrics=127.0.0.1:$(free_port)
node3_metrics=127.0.0.1:$(free_port)
CORE_ARGS="--metrics-listen $core_metrics --payload-chunk-kib 64" \
  NODE_ARGS_1="--metrics-listen $node_metrics" NODE_ARGS_2="--metrics-listen $node2_metrics" \
  NODE_ARGS_3="--metrics-listen $node3_metrics" start_cluster 3

timeout -s KILL 240 "$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --core "$core" --wait \
  --json "$WORK/summary.json" >"$WORK/submit.out" 2>"$WORK/submit.err" ||
  fail "submit --wait exited non-zero: $(tail -3 "$WORK/submit.err")"
acc=$(json_get "$WORK/summary.json" "j['test_accuracy']")
state=$(json_get "$WORK/summary.json" "j['state']")
job=$(json_get "$WORK/summary.json" "j['job_id']")
[ "$state" = done ] || fail "job state is $state"
python3 -c "import sys; sys.exit(0 if $acc >= 0.87 else 1)" || fail "test accuracy $acc < 0.87"
python3 - "$WORK/summary.json" <<'PY' || fail "summary fields"
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("job_id", "state", "rounds", "test_accuracy", "bytes_sent", "wall_s"):
    assert k in j, k
assert j["round"] == j["rounds"] == 30 and j["bytes_sent"] > 0 and j["bytes_received"] > 0
assert j["nodes"] == 3, j["nodes"]
# Within the core's evaluation budget: every evaluation took the whole test split.
assert j["tested_samples"] == j["test_samples"] == 10000, (j["tested_samples"], j["test_samples"])
PY
echo "ok: $job done, test accuracy $acc"

# metrics URL FILE: GET URL/metrics into FILE.
metrics() {
  python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1] + '/metrics', timeout=10).read().decode())" \
    "http://$1" >"$2" || fail "GET http://$1/metrics"
}
# Credits entering the ledger show in its totals.
"$BIN/gflex-core" account create user/metered --core "$core" >/dev/null || fail "account create"
"$BIN/gflex-core" account credit user/metered 25 --reference pay-1 --core "$core" \
  >"$WORK/credit1.out" || fail "account credit"
# The same payment sent again (its answer lost, the command run twice) is booked once: the
# answer names the first entry, and the totals below still say 25.
"$BIN/gflex-core" account credit user/metered 25 --reference pay-1 --core "$core" \
  >"$WORK/credit2.out" || fail "account credit, again"
entry=$(grep -o "ledger entry [0-9]*" "$WORK/credit1.out") || fail "no entry in $(cat "$WORK/credit1.out")"
grep -q "$entry (reference pay-1)" "$WORK/credit2.out" ||
  fail "a repeated reference answered $(cat "$WORK/credit2.out"), not $entry"
if "$BIN/gflex-core" account credit user/metered 5 --reference "a b" --core "$core" \
  >/dev/null 2>"$WORK/credit3.err"; then
  fail "a malformed reference was credited"
fi
grep -q "reference must be" "$WORK/credit3.err" || fail "malformed reference: $(cat "$WORK/credit3.err")"
# A refusal booked nothing: it offers no retry "without crediting twice".
! grep -q "to retry without crediting twice" "$WORK/credit3.err" ||
  fail "a refused credit offered a retry: $(cat "$WORK/credit3.err")"
metrics "$core_metrics" "$WORK/core.prom"
metrics "$node_metrics" "$WORK/node.prom"
metrics "$node2_metrics" "$WORK/node2.prom"
metrics "$node3_metrics" "$WORK/node3.prom"
python3 - "$WORK"/{core,node,node2,node3}.prom <<'PY' || fail "metrics values"
import os, sys
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import metrics_values
values = lambda path: metrics_values(open(path).read())
core, node = values(sys.argv[1]), values(sys.argv[2])
nodes = [node] + [values(path) for path in sys.argv[3:]]
def need(d, k, cond, what):
    assert k in d, f"no {k}"
    assert cond(d[k]), f"{k} = {d[k]}: {what}"
need(core, "gflex_core_rounds_committed_total", lambda v: v == 30, "30 rounds")
need(core, 'gflex_core_joins_total{tier="core"}', lambda v: v == 3, "3 joins")
need(core, 'gflex_core_nodes{tier="core"}', lambda v: v == 3, "3 nodes")
need(core, 'gflex_core_assignments_total{outcome="sent"}', lambda v: v >= 90, ">= 90 sent")
need(core, 'gflex_core_assignments_total{outcome="accepted"}', lambda v: v >= 90, ">= 90 accepted")
need(core, "gflex_core_round_duration_seconds_count", lambda v: v == 30, "30 rounds timed")
need(core, 'gflex_core_payload_bytes_total{direction="out",kind="chunk"}', lambda v: v > 0, "chunks")
need(core, "gflex_core_store_bytes", lambda v: v > 0, "a store")
# 30 rounds x 3 assignments of about 0.9 MB of parameters, in chunks both ways.
need(core, 'gflex_core_payload_bytes_total{direction="out",kind="parameter_chunk"}',
     lambda v: v >= 90 * 900_000, "parameters sent as chunks")
need(core, 'gflex_core_payload_bytes_total{direction="in",kind="update_chunk"}',
     lambda v: v > 0, "updates received as chunks")
need(node, 'gflex_node_payload_bytes_total{direction="in",kind="parameter_chunk"}',
     lambda v: v >= 30 * 900_000, "node1 fetched parameter chunks")
need(core, 'gflex_core_ledger_credits{kind="user"}', lambda v: v == 25, "25 credits credited")
need(core, 'gflex_core_ledger_credits{kind="issued"}', lambda v: v == 25, "25 credits issued")
need(core, 'gflex_core_ledger_credits{kind="escrow"}', lambda v: v == 0, "nothing held")
need(node, 'gflex_node_assignments_total{outcome="done"}', lambda v: v >= 1, "work done")
need(node, "gflex_node_step_duration_seconds_count", lambda v: v >= 1, "steps timed")
need(node, "gflex_node_samples_per_second", lambda v: v > 0, "a rate")
need(node, "gflex_node_credits_earned", lambda v: v == 0, "nothing paid for an unmetered job")
# Each payload byte is counted once, where it crosses the network: the parameters the core
# sent are those the nodes received, inline or in chunks, and the updates it received those
# they sent (the core counted a chunked payload whole a second time). Within 10% and 64 KiB
# for a chunk counted at one end only: one on its way when its assignment was withdrawn.
def payload(d, prefix, direction, kinds):
    return sum(d.get(f'{prefix}_payload_bytes_total{{direction="{direction}",kind="{k}"}}', 0)
               for k in kinds)
for core_dir, node_dir, kinds in (("out", "in", ("parameters", "parameter_chunk")),
                                  ("in", "out", ("update", "update_chunk"))):
    at_core = payload(core, "gflex_core", core_dir, kinds)
    at_nodes = sum(payload(n, "gflex_node", node_dir, kinds) for n in nodes)
    assert at_nodes > 0, f"the nodes counted no {kinds[0]} {node_dir}"
    assert abs(at_core - at_nodes) <= 0.1 * at_nodes + 65536, (
        f"the core counted {at_core:.0f} bytes of {kinds[0]} {core_dir}, "
        f"the nodes {at_nodes:.0f} {node_dir}")
    print(f"ok: {kinds[0]} bytes {core_dir} of the core {at_core:.0f}, {node_dir} of the nodes "
          f"{at_nodes:.0f}")
done = int(node['gflex_node_assignments_total{outcome="done"}'])
rounds = int(core["gflex_core_rounds_committed_total"])
print(f"ok: metrics: the core counted {rounds} rounds, node1 {done} assignments done")
PY
for f in core node; do
  promtool check metrics <"$WORK/$f.prom" >"$WORK/promtool-$f.out" 2>&1 ||
    fail "promtool check metrics ($f): $(head -5 "$WORK/promtool-$f.out")"
done
# One node per data directory: a second shared node1's key and chunks, and retried for ever.
expect_usage "a second node on a node's data directory" "node1 is in use by another gflex-node" \
  "$BIN/gflex-node" --join "$core" --data-dir "$WORK/node1" --insecure --token t
expect_usage "a malformed --metrics-listen" "--metrics-listen: expected HOST:PORT" \
  "$BIN/gflex-node" --join "$core" --metrics-listen nowhere --data-dir "$WORK/nodex"
# A port in use may be free at the next start: exit 1, which the service restarts (2 is
# "do not restart", and the node stayed down for good).
expect_error "a --metrics-listen port in use" "cannot serve metrics on $core_metrics" \
  "$BIN/gflex-node" --join "$core" --metrics-listen "$core_metrics" --data-dir "$WORK/nodex"
[ "$rc_seen" = 1 ] || fail "a --metrics-listen port in use: exit $rc_seen, not 1 (try again)"

"$G" fetch "$job" --out "$WORK/model.gfck" --core "$core" >/dev/null || fail "fetch"
"$G" eval "$WORK/model.gfck" --json "$WORK/eval.json" >/dev/null || fail "eval"
eval_acc=$(json_get "$WORK/eval.json" "j['test_accuracy']")
[ "$eval_acc" = "$acc" ] || fail "eval of the fetched checkpoint gives $eval_acc, status said $acc"
echo "ok: fetched checkpoint evaluates to $eval_acc"

"$G" status "$job" --core "$core" --json >"$WORK/status.json" || fail "status --json"
[ "$(json_get "$WORK/status.json" "j['state']")" = done ] || fail "status state"

# A running job can be cancelled; it then stays cancelled.
"$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --core "$core" --json "$WORK/second.json" >/dev/null ||
  fail "second submit"
second=$(json_get "$WORK/second.json" "j['job_id']")
"$G" cancel "$second" --core "$core" >/dev/null || fail "cancel of a running job"
wait_for 20 "the cancelled job to say so" bash -c "'$G' status $second --core $core | grep -q cancelled"
echo "ok: $second cancelled"

# Bad requests get clear errors.
expect_error "status of an unknown job" "unknown job 'job-999'" "$G" status job-999 --core "$core"
expect_error "fetch of an unknown job" "unknown job 'job-999'" \
  "$G" fetch job-999 --out "$WORK/x" --core "$core"
expect_error "cancel of a finished job" "has already ended \(done\)" "$G" cancel "$job" --core "$core"
expect_error "bad --core" "--core: expected HOST:PORT" "$G" status --core nowhere
expect_error "no core there" "cannot reach the core" "$G" status --core "127.0.0.1:$(free_port)"

# A node that speaks another protocol version is refused and exits with code 3.
rc=0
timeout -s KILL 30 "$BIN/gflex-node" --join "$core" --name old --data-dir "$WORK/old" \
  --protocol-version 99 >"$WORK/old.log" 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "a node with protocol 99 exited $rc, expected 3"
# The refusal names the version this build speaks.
speaks=$(sed -n 's/.*protocol_version = \([0-9]*\);.*/\1/p' \
  "$(dirname "$0")/../../actors/include/gflex/gflex.hpp")
[ -n "$speaks" ] || fail "no protocol_version in gflex.hpp"
grep -q "protocol version 99 is not supported (this core speaks version $speaks)" "$WORK/old.log" ||
  fail "no clear refusal in the node's log: $(tail -2 "$WORK/old.log")"
grep -q "refused node old: protocol version 99" "$WORK/core.log" || fail "core did not log it"
echo "ok: protocol version 99 refused"

# The core stops on SIGTERM (what a service manager sends), with exit code 0, in seconds.
kill -TERM "$PID_core"
for _ in $(seq 1 75); do kill -0 "$PID_core" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$PID_core" 2>/dev/null; then
  fail "the core did not stop within 15 s of SIGTERM"
else
  rc=0
  wait "$PID_core" || rc=$?
  [ "$rc" -eq 0 ] && grep -q "terminated: shutting down" "$WORK/core.log" &&
    echo "ok: the core stopped on SIGTERM" || fail "the core exited $rc on SIGTERM"
fi
finish
