#!/usr/bin/env bash
# A pipeline whose middle stage runs in worker processes of the same program
# (gflex_pipeline_probe): a worker process killed with SIGKILL mid-run, and a worker's stage
# actor killed mid-run, and the pipeline recovers both with every item through exactly once;
# two chained stages in a killed worker process restart; a worker joining an address whose
# packets are dropped gives up at its timeout; a wrong token and a different graph
# are refused; a worker whose pipeline gives up before it starts is told why; a worker whose
# pipeline's process is lost ends with an error instead of waiting.
source "$(dirname "$0")/lib.sh"
PROBE="$BIN/gflex_pipeline_probe"

# serve_and_join NAME WORKERS [SERVE ARGS...]: starts the pipeline (its output in
# $WORK/NAME.log) and WORKERS worker processes (NAME-w1, ...), once it listens; the workers
# are given $JOIN_ARGS.
serve_and_join() {
  local name=$1 workers=$2
  shift 2
  rm -f "$WORK/$name.port"
  start "$name" "$PROBE" serve --port-file "$WORK/$name.port" --workers "$workers" "$@"
  wait_for 20 "$name to listen" test -s "$WORK/$name.port"
  local port
  port=$(cat "$WORK/$name.port")
  # shellcheck disable=SC2086 # JOIN_ARGS is a list of words
  for i in $(seq 1 "$workers"); do start "$name-w$i" "$PROBE" join --port "$port" ${JOIN_ARGS:-}; done
}

# expect_exit SECONDS PID NAME [CODE]: PID must exit within SECONDS (with CODE, default 0).
expect_exit() {
  local limit=$1 pid=$2 name=$3 want=${4:-0} rc=0
  local deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$name did not end within ${limit}s: $(tail -2 "$WORK/$name.log")"
    return 0
  fi
  wait "$pid" || rc=$?
  if [ "$rc" -ne "$want" ]; then
    fail "$name exited $rc, not $want: $(tail -2 "$WORK/$name.log")"
  else
    echo "ok: $name exited $rc: $(tail -1 "$WORK/$name.log")"
  fi
}

# 1. A worker process killed mid-run: its square instance moves to the other worker.
serve_and_join kill9 2 --items 3000
wait_for 20 "kill9 to run" grep -q running "$WORK/kill9.log"
sleep 1
kill -KILL "$PID_kill9_w1"
echo "killed worker process $PID_kill9_w1"
expect_exit 90 "$PID_kill9" kill9
grep -Eq "done: 3000 items, each once; square restarts [1-9].*workers joined 2, lost 1" \
  "$WORK/kill9.log" || fail "kill9: not every item once with a restart and a lost worker: $(tail -1 "$WORK/kill9.log")"
expect_exit 20 "$PID_kill9_w2" kill9-w2
grep -q "joined: ran [1-9]" "$WORK/kill9-w2.log" || fail "kill9-w2 ran no stage instance"

# 1a. The same with no restarts allowed: a lost worker process is not the stage's failure
# (counted as one, losing a process that held more instances than the budget failed the run).
JOIN_ARGS="--square-restarts 0" serve_and_join nobudget 2 --items 3000 --square-restarts 0
wait_for 20 "nobudget to run" grep -q running "$WORK/nobudget.log"
sleep 1
kill -KILL "$PID_nobudget_w1"
expect_exit 90 "$PID_nobudget" nobudget
grep -Eq "done: 3000 items, each once; square restarts [1-9].*lost 1" "$WORK/nobudget.log" ||
  fail "nobudget: a lost worker process failed a stage of no restarts: $(tail -1 "$WORK/nobudget.log")"
expect_exit 20 "$PID_nobudget_w2" nobudget-w2

# 1b. The same with a stage in the pipeline's process before square: its items to square
# carry the acknowledgements of the source's items, and those lost with the killed process
# must still reach the source (they did not: the source kept the items and the run could
# not end).
JOIN_ARGS=--relay serve_and_join relay 2 --items 3000 --relay
wait_for 20 "relay to run" grep -q running "$WORK/relay.log"
sleep 1
kill -KILL "$PID_relay_w1"
echo "killed worker process $PID_relay_w1"
expect_exit 90 "$PID_relay" relay
grep -Eq "done: 3000 items, each once; square restarts [1-9].*workers joined 2, lost 1" \
  "$WORK/relay.log" || fail "relay: not every item once with a restart and a lost worker: $(tail -1 "$WORK/relay.log")"
expect_exit 20 "$PID_relay_w2" relay-w2

# 1c. The relay throws once while square (slowed down) still holds its items, which carry
# the acknowledgements of the source's items they were made from: the restarted relay must
# not be given those source items again (they reached check twice).
JOIN_ARGS="--relay-fails-at 1500" serve_and_join relayfail 2 --items 3000 --relay-fails-at 1500
expect_exit 90 "$PID_relayfail" relayfail
grep -Eq "done: 3000 items, each once" "$WORK/relayfail.log" ||
  fail "relayfail: $(tail -1 "$WORK/relayfail.log")"
expect_exit 20 "$PID_relayfail_w1" relayfail-w1
expect_exit 20 "$PID_relayfail_w2" relayfail-w2

# 1d. Two chained stages (square, then pass) in the one worker process, which is killed: both
# restart in the pipeline's process. square's replacement asks pass's dead instance to adopt
# what it held, which never answers (CAF drops what is sent to a lost process's actors): its
# death must settle the ask (the run hung, the source never told of the replacement). The
# items pass held were lost with it (square, which kept them, died too, and the source had
# their acknowledgements, sent when square passed its outputs on to pass): an acknowledgement
# to the source now leaves the worker process only with what was made from the item, so the
# source sends those items again, and every item must go through once.
JOIN_ARGS=--chain serve_and_join chain 1 --items 3000 --chain
wait_for 20 "chain to run" grep -q running "$WORK/chain.log"
sleep 1
kill -KILL "$PID_chain_w1"
echo "killed worker process $PID_chain_w1"
deadline=$((SECONDS + 60))
while kill -0 "$PID_chain" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
if kill -0 "$PID_chain" 2>/dev/null; then
  fail "chain did not end within 60s: $(tail -1 "$WORK/chain.log")"
elif grep -Eq "done: 3000 items, each once; square restarts [1-9].*workers joined 1, lost 1" \
  "$WORK/chain.log"; then
  echo "ok: chain ended: $(tail -1 "$WORK/chain.log")"
else
  fail "chain: $(tail -1 "$WORK/chain.log")"
fi

# 1e. A worker joining an address whose packets are dropped gives up at its connect timeout:
# remote_actor's blocking connect waited for the kernel's SYN retries (about 2 minutes). The
# joiner runs in a network namespace whose only route to 10.211.1.1 leads into a second
# namespace that does not forward: its SYNs vanish, no reset, no ICMP.
ns_a="gfx-pj-a-$$" ns_b="gfx-pj-b-$$"
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && ip netns add "$ns_a" 2>/dev/null; then
  trap 'cleanup; ip netns del "$ns_a" 2>/dev/null || true; ip netns del "$ns_b" 2>/dev/null || true' EXIT
  ip netns add "$ns_b"
  ip link add "pja$$" type veth peer name "pjb$$"
  ip link set "pja$$" netns "$ns_a"
  ip link set "pjb$$" netns "$ns_b"
  ip -n "$ns_a" addr add 10.211.0.1/30 dev "pja$$"
  ip -n "$ns_b" addr add 10.211.0.2/30 dev "pjb$$"
  ip -n "$ns_a" link set "pja$$" up
  ip -n "$ns_b" link set "pjb$$" up
  ip -n "$ns_a" link set lo up
  ip -n "$ns_a" route add 10.211.1.1/32 via 10.211.0.2
  ip netns exec "$ns_b" sysctl -qw net.ipv4.ip_forward=0
  start dropped ip netns exec "$ns_a" "$PROBE" join --host 10.211.1.1 --port 7 \
    --connect-timeout-ms 2000
  expect_exit 30 "$PID_dropped" dropped 1
  grep -q "error: pipeline: cannot reach the pipeline at 10.211.1.1:7: no answer.*tried for 2000 ms" \
    "$WORK/dropped.log" || fail "dropped: $(tail -1 "$WORK/dropped.log")"
  ip netns del "$ns_a"
  ip netns del "$ns_b"
else
  echo "skipped: an unreachable address needs root and network namespaces"
  SKIPPED+=("1e (no network namespaces)")
fi

# 2. A worker's stage actor killed mid-run (the process stays).
serve_and_join killactor 2 --items 2000 --kill-actor-ms 800
expect_exit 90 "$PID_killactor" killactor
grep -q "killed square's actor 0: yes" "$WORK/killactor.log" || fail "killactor: no actor killed"
grep -Eq "done: 2000 items, each once; square restarts [1-9].*workers joined 2, lost 0" \
  "$WORK/killactor.log" || fail "killactor: $(tail -1 "$WORK/killactor.log")"
expect_exit 20 "$PID_killactor_w1" killactor-w1
expect_exit 20 "$PID_killactor_w2" killactor-w2

# 3. A wrong token and a different graph are refused; the pipeline then times out waiting
# for its second worker, and the one that joined is told why (it saw only the pipeline's
# published actor go, and ended with "the pipeline's process was lost").
rm -f "$WORK/refuse.port"
start refuse "$PROBE" serve --port-file "$WORK/refuse.port" --workers 2 --join-timeout-ms 6000
wait_for 20 "refuse to listen" test -s "$WORK/refuse.port"
port=$(cat "$WORK/refuse.port")
start refuse-w1 "$PROBE" join --port "$port"
rc=0
timeout -s KILL 30 "$PROBE" join --port "$port" --token wrong-token-wrong-token >"$WORK/badtoken.log" 2>&1 || rc=$?
{ [ "$rc" -eq 1 ] && grep -q "refused this process: pipeline: a wrong token" "$WORK/badtoken.log"; } ||
  fail "a wrong token: exit $rc, $(tail -1 "$WORK/badtoken.log")"
rc=0
timeout -s KILL 30 "$PROBE" join --port "$port" --other-graph >"$WORK/othergraph.log" 2>&1 || rc=$?
{ [ "$rc" -eq 1 ] && grep -q "builds a different graph" "$WORK/othergraph.log"; } ||
  fail "a different graph: exit $rc, $(tail -1 "$WORK/othergraph.log")"
# The same stages with another item type (an older build of the program) are a different graph.
rc=0
timeout -s KILL 30 "$PROBE" join --port "$port" --other-type >"$WORK/othertype.log" 2>&1 || rc=$?
{ [ "$rc" -eq 1 ] && grep -q "builds a different graph" "$WORK/othertype.log"; } ||
  fail "another item type: exit $rc, $(tail -1 "$WORK/othertype.log")"
expect_exit 30 "$PID_refuse" refuse 1
grep -q "error: pipeline: 2 worker processes did not join within 6000 ms" "$WORK/refuse.log" ||
  fail "refuse: $(tail -1 "$WORK/refuse.log")"
expect_exit 20 "$PID_refuse_w1" refuse-w1 1
grep -q "error: pipeline: the pipeline did not start: 2 worker processes did not join within 6000 ms" \
  "$WORK/refuse-w1.log" || fail "refuse-w1: $(tail -1 "$WORK/refuse-w1.log")"

# 4. The pipeline's process killed: its worker ends with an error.
serve_and_join lost 1 --items 100000
wait_for 20 "lost to run" grep -q running "$WORK/lost.log"
sleep 1
kill -KILL "$PID_lost"
expect_exit 20 "$PID_lost_w1" lost-w1 1
grep -q "error: pipeline: the pipeline's process was lost" "$WORK/lost-w1.log" ||
  fail "lost-w1: $(tail -1 "$WORK/lost-w1.log")"

finish
