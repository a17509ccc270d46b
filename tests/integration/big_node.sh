#!/usr/bin/env bash
# A node with many workers behind a 50 Mbit/s link: at a round's start each of its 70
# workers asks for its shard and prefetches the next, more data chunk requests at once than
# the core lets one node keep waiting (4 served, 64 waiting; one more disconnects the node).
# The node's cache keeps at most 16 out and queues the rest, so the core never disconnects
# it for them, and a job of 70 workers runs on it to the end. Needs root and iproute2.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
ns=gfb-$$
host_if=gbh$$
node_if=gbn$$
net=10.253.$((RANDOM % 200 + 20))
netns_or_skip "$ns" "$host_if" "$node_if" "$net"
# What the core sends the node: 50 Mbit/s, so that the node's requests wait at the core.
tc qdisc add dev "$host_if" root tbf rate 50mbit burst 256kb latency 400ms

# 200 samples a shard (about 0.6 MB): 270 shards of Fashion-MNIST's training set.
core="$net.1:$(free_port)"
start_core core "$core" "$WORK/core" --shard-samples 200
start big ip netns exec "$ns" "$BIN/gflex-node" --join "$core" --name big --data-dir "$WORK/big" \
  --tier core --token "$TOKEN_core" --workers 70 --threads 1
wait_for 30 "the node to join" bash -c "'$G' nodes --core $core | grep -q ' big '"
cat >"$WORK/forty.toml" <<'TOML'
[job]
name = "forty"
workload = "fashion-mlp"
rounds = 2
workers = 70

[inner]
local_steps = 5
batch_size = 32
TOML
"$G" submit "$WORK/forty.toml" --core "$core" --json "$WORK/submitted.json" >/dev/null ||
  fail "submit"
job=$(json_get "$WORK/submitted.json" "j['job_id']")
expect_job_done "$job" 0.3
if grep -q "chunk requests waiting" "$WORK/core.log"; then
  fail "the core disconnected the node: $(grep -m1 "chunk requests waiting" "$WORK/core.log")"
else
  echo "ok: a node of 70 workers ran a 70-worker job to the end (test accuracy $FINAL_ACCURACY) without being disconnected"
fi
finish
