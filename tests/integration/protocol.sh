#!/usr/bin/env bash
# Runs protocol_probe against a real core process with one honest core-tier node.
source "$(dirname "$0")/lib.sh"
port=$(free_port)
start_core core "127.0.0.1:$port" "$WORK/core"
start node "$BIN/gflex-node" --join "127.0.0.1:$port" --name honest --data-dir "$WORK/node" \
  --tier core --token "$TOKEN_core"
wait_for 30 "the node to join" grep -q "joined the core" "$WORK/node.log"
GFLEX_TEST_TOKEN=$GFLEX_TOKEN GFLEX_TEST_CORE="127.0.0.1:$port" timeout -s KILL 240 "$BIN/gflex_protocol_probe" ||
  fail "protocol probe failed"
grep -q "node rogue-.* flagged" "$WORK/core.log" || fail "the core flagged no rogue node"
grep -q "restarting job .* from round" "$WORK/core.log" || fail "the core restarted no job"
grep -q "the registry stopped .*; restarting it" "$WORK/core.log" || fail "registry not restarted"
grep -q "the data server stopped .*; restarting it" "$WORK/core.log" ||
  fail "data server not restarted"
finish
