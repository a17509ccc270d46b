#!/usr/bin/env bash
# Cores that take a node's connection but never answer. A node given a silent address first
# (another program listening on the port; the kernel of a frozen core answers the same) and a
# frozen core second joins that core once it is thawed, and is left with no network thread
# spinning on a TLS handshake that CAF cannot cancel: the node probes that an address answers
# before CAF dials it. A node whose only core is frozen joins it once it is thawed too.
# About 20 s.
source "$(dirname "$0")/lib.sh"
core=127.0.0.1:$(free_port)
start_core core "$core" "$WORK/core"
silent=$(free_port)
# Takes each connection and keeps it, saying nothing, as long as it runs.
start silent python3 -c "
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $silent))
s.listen()
held = []
while True:
    held.append(s.accept())"
wait_for 10 "the silent listener" bash -c "ss -tlnH 'sport = :$silent' | grep -q ."

kill -STOP "$PID_core"
start node1 "$BIN/gflex-node" --join "127.0.0.1:$silent,$core" --name node1 \
  --data-dir "$WORK/node1" --tier core --token "$TOKEN_core"
start node2 "$BIN/gflex-node" --join "$core" --name node2 --data-dir "$WORK/node2" \
  --tier core --token "$TOKEN_core"
# Past the first probe's bound (10 s): each node has given up on its first address once.
sleep 12
kill -CONT "$PID_core"
wait_for 30 "both nodes to join once the core is thawed" node_count_is 2

grep -q "127.0.0.1:$silent: took the connection but did not answer" "$WORK/node1.log" ||
  fail "node1 does not say that 127.0.0.1:$silent did not answer: $(grep uplink "$WORK/node1.log" | tail -2)"
# CAF's TLS handshake with the silent address stayed open, and polled, for as long as the
# listener ran; the probe's connection is closed.
held=$(ss -tnpH state established "dport = :$silent" | grep -c "pid=$PID_node1," || true)
[ "$held" -eq 0 ] || fail "node1 holds $held connection(s) to the silent address after joining"
# An idle node uses a few percent of a CPU core; one with a handshake left pending, all of one.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=$(ticks "$PID_node1")
sleep 4
used=$((($(ticks "$PID_node1") - before) * 1000 / $(getconf CLK_TCK)))
if [ "$used" -gt 1000 ]; then
  fail "node1 used $used ms of CPU in 4 s after joining (a network thread spinning?)"
else
  echo "ok: node1 used $used ms of CPU in 4 s after joining"
fi
finish
