#!/usr/bin/env bash
# A network partition: one node runs in its own network namespace behind a veth link
# (bandwidth-limited with tc tbf), the link is cut mid-job and healed. The core gives the
# node up after its lease and reassigns its work; after the heal the node joins again by
# itself; the job finishes. Then the node's uplink is limited to 2 Mbit/s and a job whose
# update's every chunk takes longer than the lease to send runs: the node keeps its session and its
# updates are taken. Needs root and iproute2 (CI runs as root).
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
ns=gfx-$$
host_if=gfh$$
node_if=gfn$$
net=10.254.$((RANDOM % 200 + 20))
netns_or_skip "$ns" "$host_if" "$node_if" "$net"
# A volunteer's uplink: 200 Mbit/s.
tc qdisc add dev "$host_if" root tbf rate 200mbit burst 256kb latency 200ms

core="$net.1:$(free_port)"
start_core core "$core" "$WORK/core" --lease-ms 2000 --heartbeat-ms 300
for i in 1 2; do
  start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i" \
    --tier core --token "$TOKEN_core"
done
start far ip netns exec "$ns" "$BIN/gflex-node" --join "$core" --name far --data-dir "$WORK/far" \
  --tier core --token "$TOKEN_core"
wait_for 30 "three nodes to join" node_count_is 3
grep -q "far" <("$G" nodes --core "$core") || fail "the namespaced node did not join"

"$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --core "$core" --json "$WORK/submitted.json" \
  >/dev/null || fail "submit"
job=$(json_get "$WORK/submitted.json" "j['job_id']")
deadline=$((SECONDS + 60))
until "$G" status "$job" --core "$core" | grep -qE "round ([5-9]|[1-9][0-9])/"; do
  ((SECONDS < deadline)) || { fail "timed out waiting for round 5"; break; }
  sleep 0.2
done

ip link set "$host_if" down
cut_at=$SECONDS
echo "ok: link cut"
wait_for 10 "the core to give up on the cut-off node" grep -q "(far) missed its heartbeats" \
  "$WORK/core.log"
echo "ok: the core gave up on the cut-off node after $((SECONDS - cut_at)) s"
sleep 1
ip link set "$host_if" up
echo "ok: link healed"
wait_for 60 "the node to join again" grep -qE "joining again|joined the core as n[4-9]" \
  "$WORK/far.log"
wait_for 30 "three nodes again" node_count_is 3
echo "ok: the node joined again after the heal"

expect_job_done "$job" 0.885
echo "ok: $job done across the partition, test accuracy $FINAL_ACCURACY"

# -- a slow uplink: what the far node sends limited to 2 Mbit/s --------------------------
# A 0.8M-parameter model's fp32 update, 3.2 MB, takes 13 s to leave it: six times the lease,
# and each of its 1 MiB chunks twice the lease (a volunteer's home uplink). Its heartbeats
# travel behind the chunks on the same connection; the core's session beats for it while
# its chunks come (within 30 s of the last), so it keeps its session while it uploads. Only
# chunks that arrived counted, and the node was dropped mid-answer, round after round.
ip netns exec "$ns" tc qdisc add dev "$node_if" root tbf rate 2mbit burst 64kb latency 4000ms
missed_before=$(grep -c "(far) missed its heartbeats" "$WORK/core.log")
far_validated() {  # the updates of the far node the core has taken so far
  local line
  line=$("$G" nodes --core "$core" | grep " far ")
  sed -nE 's/.* validated ([0-9]+) .*/\1/p' <<<"$line"
}
validated_before=$(far_validated)
[ -n "$validated_before" ] || fail "far is not listed: no count of its validated updates to start from"
cat >"$WORK/wide.toml" <<'TOML'
[job]
name = "wide"
rounds = 2
workers = 3

[inner]
local_steps = 3
batch_size = 32

[wire]
compression = "fp32"

[round]
# No backup copies: the far node's updates are waited for, not raced by the near nodes'.
backup_after = 0.0

[data]
set = "fashion-mnist"

[model]
input = [784]
layers = [ { type = "linear", units = 1000 }, { type = "relu" },
           { type = "linear", units = 10 }, { type = "softmax_xent" } ]
TOML
"$G" submit "$WORK/wide.toml" --core "$core" --json "$WORK/wide.json" >/dev/null || fail "submit wide"
job=$(json_get "$WORK/wide.json" "j['job_id']")
expect_job_done "$job" 0.1
missed=$(($(grep -c "(far) missed its heartbeats" "$WORK/core.log") - missed_before))
taken=$(($(far_validated) - ${validated_before:-0}))
if [ "$missed" -eq 0 ] && [ "$taken" -ge 1 ]; then
  echo "ok: over a 2 Mbit/s uplink the far node kept its session and $taken of its updates were taken"
else
  fail "over a 2 Mbit/s uplink: $missed session(s) lost, $taken update(s) of the far node taken"
fi
finish
