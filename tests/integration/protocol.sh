#!/usr/bin/env bash
# The hostile-node suite: runs protocol_probe against a real core process with one honest
# core-tier node, then checks what the core's log and metrics say of the attacks.
source "$(dirname "$0")/lib.sh"
port=$(free_port)
metrics=127.0.0.1:$(free_port)
# A small chunk budget, so that the probe's flood passes it quickly.
start_core core "127.0.0.1:$port" "$WORK/core" --chunk-rate 4 --max-jobs-per-account 3 \
  --metrics-listen "$metrics"
start node "$BIN/gflex-node" --join "127.0.0.1:$port" --name honest --data-dir "$WORK/node" \
  --tier core --token "$TOKEN_core"
wait_for 30 "the node to join" grep -q "joined the core" "$WORK/node.log"
GFLEX_TEST_TOKEN=$GFLEX_TOKEN GFLEX_TEST_CORE="127.0.0.1:$port" timeout -s KILL 240 \
  "$BIN/gflex_protocol_probe" --test-case-exclude="*chunked core*" || fail "protocol probe failed"
grep -q "node rogue-.* flagged" "$WORK/core.log" || fail "the core flagged no rogue node"
# A hello's name is logged bounded and printable: a megabyte of it, forging a line, was written
# to the log whole.
! grep -q "^FORGED-LOG-LINE" "$WORK/core.log" || fail "a hello's name forged a line of the core's log"
[ "$(wc -L <"$WORK/core.log")" -lt 4096 ] ||
  fail "the core logged a line of $(wc -L <"$WORK/core.log") characters"
# The probe's 300 hellos of another protocol, sent in a loop: at most 20 lines in 10 s are
# logged, the rest counted (a line each let a peer fill the disk).
looped=$(grep -c "refused node looping-[0-9]*: protocol version" "$WORK/core.log")
[ "$looped" -le 60 ] || fail "the core logged $looped of 300 hellos of another protocol"

grep -q "session of node .* (mallory): dropped" "$WORK/core.log" ||
  fail "the core logged no dropped message"
grep -q "(rogue-size): more than 64 chunk requests waiting; disconnecting it" "$WORK/core.log" ||
  fail "the core did not disconnect the flooding node"
grep -q "join token .* closed to new keys: node rogue-.* joined with it and was caught" \
  "$WORK/core.log" || fail "no caught node's token was closed"
# The metrics count the dropped messages and every refused hello (the 300 of another protocol
# among them: only the gatekeeper's refusals were counted), and the busy actors' mailboxes
# were looked at.
python3 - "$metrics" <<'PY' || fail "the core's metrics of the attacks"
import os, sys
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import fetch_metrics
values = fetch_metrics(sys.argv[1])
dropped = values.get('gflex_core_dropped_messages_total{session="node"}', 0)
assert dropped >= 1, f"{dropped} dropped node messages counted"
refused = values.get('gflex_core_join_refusals_total{reason="invalid_argument"}', 0)
assert refused >= 300, f"{refused:.0f} hellos refused as invalid_argument counted, not the 300 of another protocol"
for actor in ("registry", "market", "store"):
    assert f'gflex_core_mailbox_messages{{actor="{actor}"}}' in values, "no mailbox figure for " + actor
print(f"ok: the metrics count {dropped:.0f} dropped node messages, {refused:.0f} invalid hellos "
      "and the busy actors' mailboxes")
PY
# The attacks stopped nothing: no child of the core was restarted, the core is still up.
if grep -q "; restarting it" "$WORK/core.log"; then
  fail "a child of the core stopped: $(grep '; restarting it' "$WORK/core.log" | head -3)"
fi
kill -0 "$PID_core" 2>/dev/null || fail "the core is gone"
grep -q "joined the core" "$WORK/node.log" || fail "the honest node never joined"
if grep -q "joining again\|reconnecting" "$WORK/node.log"; then
  fail "the honest node lost its session: $(grep 'joining again\|reconnecting' "$WORK/node.log" | head -3)"
fi

# A second node on the honest node's key (a copy of its node.key: its data directory is
# locked) is refused by the registry, as "already joined": the core logs that refusal and
# counts it, as it does every other (the registry's went back to the node with neither a log
# line nor a count).
refusals() {
  python3 - "$metrics" <<'PY'
import os, sys
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import fetch_metrics
print(int(fetch_metrics(sys.argv[1]).get('gflex_core_join_refusals_total{reason="limit_exceeded"}', 0)))
PY
}
limits_before=$(refusals)
mkdir -m 700 "$WORK/twin"
cp -p "$WORK/node/node.key" "$WORK/twin/node.key"
start twin "$BIN/gflex-node" --join "127.0.0.1:$port" --name honest --data-dir "$WORK/twin" \
  --tier core --token "$TOKEN_core"
wait_for 30 "a second node on the honest node's key to be refused" \
  grep -q "join failed: node key .* is already joined" "$WORK/twin.log"
limits_after=$(refusals)
[ "$limits_after" -gt "$limits_before" ] ||
  fail "the registry's refusal was not counted ($limits_before limit_exceeded refusals before, $limits_after after)"
# Within the refusals' log bound, which the probe's flood may still fill: the node's next tries.
wait_for 60 "the core to log the refusal of a second node on the honest node's key" \
  grep -q "refused node honest from .*: node key .* is already joined" "$WORK/core.log"
kill -KILL "$PID_twin" 2>/dev/null || true

# A second core whose parameters travel in 64 KiB chunks: a node asking for one chunk of its
# assignment's parameters past its allowance (3 serves) is refused.
port2=$(free_port)
start_core chunked "127.0.0.1:$port2" "$WORK/chunked" --payload-chunk-kib 64
GFLEX_TEST_TOKEN=$GFLEX_TOKEN GFLEX_TEST_CORE="127.0.0.1:$port2" timeout -s KILL 120 \
  "$BIN/gflex_protocol_probe" --test-case="*chunked core*" || fail "the chunk allowance probe failed"
grep -q "(greedy): dropped .*a parameter chunk asked for again past its allowance" "$WORK/chunked.log" ||
  fail "the chunked core did not log the refused chunk: $(grep greedy "$WORK/chunked.log" | tail -3)"
finish
