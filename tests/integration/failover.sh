#!/usr/bin/env bash
# A core of several servers (docs/FAILURES.md): three etcd members and three cores, four
# nodes given every core's address, a metered job running. Core c3 runs in a network
# namespace of its own behind a veth link (as root; elsewhere all on loopback). The leader
# core is killed with SIGKILL mid-job, then the next leader; then c3, following, is
# partitioned away (its link cut past its lease) and healed; then the leader is frozen past its lease and resumed (it must stop, code 3);
# then one etcd member is killed. Followers are read from and written through.
# Checks: a follower takes over each time and the nodes find it; the
# job finishes within 0.005 of the same job's accuracy on an undisturbed core of three; the
# ledger verifies on the last leader; every round of the job is paid exactly once (from the
# entries in etcd); and no commit was made by a core that did not hold the leadership at
# that revision (from etcd's revision history of /gflex/writer and /gflex/leader).
# Where network namespaces cannot be made (not root, no iproute2), c3 is frozen with SIGSTOP
# instead of cut off: a frozen core sends nothing, while a cut-off one goes on talking to a
# link that drops it, so the partition is untested and the test exits 77 (CTest: skipped)
# once everything else passed. GFLEX_ALLOW_NO_NETNS=1 accepts the freeze as a pass.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
C="$BIN/gflex-core"
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "FAIL: etcd and etcdctl are needed (Debian's etcd-server and etcd-client)" >&2
  exit 1
fi
export ETCDCTL_API=3
LEASE_S=3
ROUNDS=40

# -- c3's network namespace: the others and etcd listen on the host's end of its link ----------
host=127.0.0.1 c3_host=127.0.0.1 c3_run=()
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && ip netns add "gfx-c3-$$" 2>/dev/null; then
  ns=gfx-c3-$$ host_if=gfh$$ c3_if=gfc$$ net=10.253.$((RANDOM % 200 + 20))
  teardown() {
    ip link del "$host_if" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  }
  trap 'cleanup; teardown' EXIT
  veth_into "$ns" "$host_if" "$c3_if" "$net"
  host=$net.1 c3_host=$net.2 c3_run=(ip netns exec "$ns")
  echo "ok: c3 gets network namespace $ns ($c3_host, the host's end $host)"
else
  no_netns=1
  echo "no network namespace (they need root and iproute2): c3 runs on loopback, and is frozen with SIGSTOP where it would be cut off"
fi

# -- three etcd members ------------------------------------------------------------------------
cluster="" endpoints=""
for i in 1 2 3; do
  eval "ec$i=$(free_port) ep$i=$(free_port)"
done
for i in 1 2 3; do
  p="ep$i"
  cluster+="${cluster:+,}e$i=http://127.0.0.1:${!p}"
  c="ec$i"
  endpoints+="${endpoints:+,}$host:${!c}"
done
for i in 1 2 3; do
  c="ec$i" p="ep$i"
  start "etcd$i" etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://$host:${!c}" --advertise-client-urls "http://$host:${!c}" \
    --listen-peer-urls "http://127.0.0.1:${!p}" --initial-advertise-peer-urls "http://127.0.0.1:${!p}" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "gfx-$$" \
    --max-txn-ops 10000 --max-request-bytes 10485760
done
wait_for 30 "etcd to be healthy" etcdctl --endpoints "$endpoints" endpoint health
etcd() { etcdctl --endpoints "$endpoints" "$@"; }
echo "ok: three etcd members at $endpoints"

# -- three cores sharing one set of credentials ------------------------------------------------
"$C" init --data-dir "$WORK/c1" >/dev/null || fail "gflex-core init"
cp -r "$WORK/c1" "$WORK/c2"
cp -r "$WORK/c1" "$WORK/c3"
export GFLEX_CORE_CERT="$WORK/c1/core-cert.pem"
GFLEX_API_KEY=$(cat "$WORK/c1/operator.key")
export GFLEX_API_KEY
for i in 1 2 3; do eval "port$i=$(free_port) chunk$i=$(free_port)"; done
addr1=$host:$port1 addr2=$host:$port2 addr3=$c3_host:$port3
cores="$addr1,$addr2,$addr3"
runs=0
start_member() {  # start_member I: core cI (again), its log $WORK/cI-N.log
  local i=$1 port="port$1" chunk="chunk$1" at=$host run=() listen
  [ "$i" = 3 ] && at=$c3_host run=("${c3_run[@]}")
  listen=("--listen" "$at:${!port}")
  # c3 listens on every address of its namespace, as the README's servers do, and tells the
  # other cores where it is reached.
  [ "$i" = 3 ] && listen=("--listen" "0.0.0.0:${!port}" "--advertise" "$at:${!port}")
  runs=$((runs + 1))
  start "c$i-$runs" "${run[@]}" "$C" --store "etcd://$endpoints" --core-id "c$i" \
    "${listen[@]}" --chunk-listen "$at:${!chunk}" --data-dir "$WORK/c$i" \
    --leader-lease-s "$LEASE_S" --lease-ms 2000 --heartbeat-ms 300
  eval "LOG_c$i=$WORK/c$i-$runs.log PID_c$i=\$PID_c${i}_$runs MARK_c$i=0"
}
# mark_cores: each core's log line count now (MARK_cI; a core started later reads from its
# log's start), so that a wait after a fault reads only what the cores logged after it: a
# follower's log names every leader it has followed, the first one from its start.
mark_cores() {
  local i log
  for i in 1 2 3; do
    log="LOG_c$i"
    eval "MARK_c$i=$(log_mark "${!log}")"
  done
}
# follows I LEADER: whether core cI logged that it follows LEADER since its mark. (Its first
# line, "following (no leader yet)", names none.)
follows() {
  local log="LOG_c$1" mark="MARK_c$1"
  logged_since "${!mark}" "${!log}" "following $2[ ;]"
}
leader_id() { etcd get /gflex/leader --print-value-only 2>/dev/null | cut -d' ' -f1; }
said() {  # said LOG: the last lines a core logged, when it did not do what was waited for
  echo "--- the end of $1:" >&2
  tail -5 "$1" >&2
}
start_member 1
wait_for 30 "c1 to lead" grep -q "core listening" "$LOG_c1"
grep -q "core listening" "$LOG_c1" || said "$LOG_c1"
start_member 2
start_member 3
wait_for 30 "c2 and c3 to follow c1" eval "follows 2 c1 && follows 3 c1"
for i in 2 3; do follows "$i" c1 || { log="LOG_c$i" && said "${!log}"; }; done
[ "$(leader_id)" = c1 ] || fail "c1 does not lead: $(leader_id)"
echo "ok: c1 leads, c2 and c3 follow"

# A follower answers reads from the replicated state and sends writes to the leader.
"$G" status --core "$addr2" >/dev/null || fail "status on a follower"

TOKEN=$("$C" token create --tier core --core "$cores") || fail "token create"
for i in 1 2 3 4; do
  start "node$i" "$BIN/gflex-node" --join "$cores" --name "node$i" --data-dir "$WORK/node$i" \
    --tier core --token "$TOKEN"
done
wait_for 30 "4 nodes to join" node_count_is 4 "$cores"
(umask 077 && "$C" account create user/alice --core "$cores" >"$WORK/alice.key" 2>/dev/null) || fail "account create"
# A write given to a follower alone reaches the leader (the follower names it; the client
# goes there), and the follower then reads what the leader committed.
"$C" account credit user/alice 100 --core "$addr3" >/dev/null ||
  fail "account credit through a follower"
"$G" nodes --core "$addr2" --json >"$WORK/follower-nodes.json" || fail "nodes on a follower"
[ "$(json_get "$WORK/follower-nodes.json" "len(j)")" -eq 4 ] || fail "a follower lists $(json_get "$WORK/follower-nodes.json" "len(j)") nodes, not 4"
echo "ok: a follower answers status and nodes, and a credit sent to one reached the leader"
spec() {  # the shipped fashion-mlp job on 4 workers, metered
  sed -e "s/^workers = 3\$/workers = 4/" -e "s/^rounds = 30\$/rounds = $ROUNDS/" -e "s/^\[market\]\$/[market]\naccount = \"user\/alice\"\nbudget = 40\nmax_price = 100/" \
    "$SRC/apps/jobs/fashion-mlp.toml"
}
spec >"$WORK/job.toml"
grep -q '^account = "user/alice"' "$WORK/job.toml" || fail "the spec has no [market] table"
grep -q "^rounds = $ROUNDS\$" "$WORK/job.toml" || fail "the spec does not have $ROUNDS rounds"

# -- the same job undisturbed, for the accuracy to compare with --------------------------------
timeout -s KILL 240 "$G" submit "$WORK/job.toml" --core "$cores" --api-key-file "$WORK/alice.key" \
  --wait --json "$WORK/calm.json" >/dev/null 2>"$WORK/calm.err" || fail "undisturbed job: $(tail -2 "$WORK/calm.err")"
calm=$(json_get "$WORK/calm.json" "j['test_accuracy']")
echo "ok: undisturbed job: test accuracy $calm"

# -- the job with faults ---------------------------------------------------------------------
"$G" submit "$WORK/job.toml" --core "$cores" --api-key-file "$WORK/alice.key" \
  --json "$WORK/submitted.json" >/dev/null || fail "submit"
job=$(json_get "$WORK/submitted.json" "j['job_id']")
round_at_least() {  # round_at_least N [CORES]: the job has committed round N (asked of CORES)
  timeout 10 "$G" status "$job" --core "${2:-$cores}" --json 2>/dev/null |
    python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin)['round'] >= $1 else 1)"
}
kill_leader() {  # kill_leader MIN_ROUND: SIGKILL the leader once MIN_ROUND is committed
  wait_for 120 "round $1" round_at_least "$1"
  local who pid
  who=$(leader_id)
  pid="PID_$who"
  mark_cores
  kill -KILL "${!pid}"
  wait "${!pid}" 2>/dev/null || true
  local at=$SECONDS
  echo "ok: leader $who killed with SIGKILL at round >= $1"
  wait_for 30 "another core to lead" bash -c "l=\$(etcdctl --endpoints $endpoints get /gflex/leader --print-value-only | cut -d' ' -f1); [ -n \"\$l\" ] && [ \"\$l\" != $who ]"
  echo "ok: $(leader_id) leads $((SECONDS - at)) s after the kill"
  start_member "${who#c}"
}
kill_leader 6
kill_leader 14
lead=$(leader_id)
for i in 1 2 3; do
  log="LOG_c$i"
  [ "c$i" = "$lead" ] && continue
  wait_for 30 "c$i to follow $lead" follows "$i" "$lead"
  follows "$i" "$lead" || said "${!log}"
done

# c3, following (killed first if it leads), is cut off past its lease and healed: it joins
# again, and the job goes on meanwhile.
if [ "$(leader_id)" = c3 ]; then
  kill_leader 0
  wait_for 30 "c3 to follow $(leader_id)" follows 3 "$(leader_id)"
fi
cut_round=$("$G" status "$job" --core "$cores" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['round'])")
mark_cores
if [ -n "${ns:-}" ]; then
  ip link set "$host_if" down
  sleep $((LEASE_S + 2))
  ip link set "$host_if" up
  how="partitioned"
else
  kill -STOP "$PID_c3"
  sleep $((LEASE_S + 2))
  kill -CONT "$PID_c3"
  how="frozen"
fi
wait_for 20 "c3 to join again" logged_since "$MARK_c3" "$LOG_c3" "joining again"
wait_for 30 "c3 to be a member again" logged_since "$MARK_c3" "$LOG_c3" "is a member"
logged_since "$MARK_c3" "$LOG_c3" "joining again" || said "$LOG_c3"
echo "ok: follower c3 $how for $((LEASE_S + 2)) s from round $cut_round joined again: $(grep 'is a member' "$LOG_c3" | tail -1 | sed 's/.*is a member/a member/')"

# The leader frozen past its lease (a long pause: swap, a stopped VM) and resumed: another
# core leads meanwhile; the old one, resumed, finds its lease gone and stops with exit code 3
# (a commit it tries is fenced off; the writer history below checks that none landed).
who=$(leader_id)
pid="PID_$who" log="LOG_$who"
frozen_round=$("$G" status "$job" --core "$cores" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['round'])")
kill -STOP "${!pid}"
wait_for 30 "another core to lead while $who is frozen" bash -c "l=\$(etcdctl --endpoints $endpoints get /gflex/leader --print-value-only | cut -d' ' -f1); [ -n \"\$l\" ] && [ \"\$l\" != $who ]"
# The nodes stay connected to the frozen core; they give it up when it stops answering
# (15 s) and find the new leader, which commits rounds while the old one is still frozen.
addr="addr${who#c}"
others=$(tr ',' '\n' <<<"$cores" | grep -vx "${!addr}" | paste -sd,)
# Bounded at 120 s (it takes about 20: 15 for the nodes, then a round a second); once over
# 60 s on a loaded 2-core machine, with no log to tell why: the logs are shown if it fails.
wait_for 120 "a round committed while $who is frozen" round_at_least $((frozen_round + 2)) "$others"
if ! round_at_least $((frozen_round + 2)) "$others"; then
  for c in c1 c2 c3; do
    [ "$c" = "$who" ] || { l="LOG_$c" && said "${!l}"; }
  done
  for n in "$WORK"/node*.log; do echo "--- the end of $n:" >&2 && tail -15 "$n" >&2; done
fi
echo "ok: round $((frozen_round + 2)) committed by $(leader_id) while $who stayed frozen"
kill -CONT "${!pid}"
wait_for 20 "$who to stop" bash -c "! ps -o stat= -p ${!pid} | grep -qv Z"
kill -KILL "${!pid}" 2>/dev/null || true  # still running: the wait above failed
code=0
wait "${!pid}" || code=$?
[ "$code" -eq 3 ] || fail "the deposed leader $who ended with code $code, not 3"
grep -qE "lost the leadership|fenced off|lost its leader lease" "${!log}" ||
  fail "the deposed leader $who did not say it lost the leadership"
echo "ok: leader $who frozen past its lease: $(leader_id) took over, and $who, resumed, stopped with code 3 ($(grep -oE 'lost the leadership|fenced off|lost its leader lease' "${!log}" | head -1))"
start_member "${who#c}"

# One etcd member of three lost mid-job (the first the cores name): a quorum remains, the
# cores' etcd clients go on with the others, and the job goes on.
at_round=$("$G" status "$job" --core "$cores" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['round'])")
[ "$at_round" -lt "$ROUNDS" ] || fail "the job ended before an etcd member could be killed"
kill -KILL "$PID_etcd1"
wait "$PID_etcd1" 2>/dev/null || true
endpoints=${endpoints#*,}
echo "ok: etcd member e1 killed at round $at_round"

wait_for 240 "the job to finish" bash -c "'$G' status $job --core $cores | grep -qE ' (done|failed|cancelled),'"
"$G" status "$job" --core "$cores" --json >"$WORK/final.json" || fail "final status"
state=$(json_get "$WORK/final.json" "j['state']")
acc=$(json_get "$WORK/final.json" "j['test_accuracy']")
round=$(json_get "$WORK/final.json" "j['round']")
[ "$state" = done ] || fail "job ended $state"
[ "$round" -eq "$ROUNDS" ] || fail "job ended at round $round"
python3 -c "import sys; sys.exit(0 if abs($acc - $calm) <= 0.005 else 1)" ||
  fail "test accuracy $acc is not within 0.005 of the undisturbed $calm"
echo "ok: $job done through two leader kills and a $how follower: accuracy $acc (undisturbed $calm)"

"$G" ledger verify --core "$cores" || fail "ledger verify on the leader"

# etcd elects a new Raft leader once e1 is gone; an election that splits its votes can take
# longer than the core's lease, and the leading core then stops (exit 3, as designed: it
# cannot know it still leads) while another takes over. Such a core must have said so; it
# is started again, as its operator would, before the followers' reads are checked.
for i in 1 2 3; do
  pid="PID_c$i" log="LOG_c$i"
  kill -0 "${!pid}" 2>/dev/null && continue
  code=0
  wait "${!pid}" || code=$?
  [ "$code" -eq 3 ] && grep -qE "lost its leader lease|has not renewed its leader lease|fenced off" "${!log}" ||
    { fail "c$i stopped after etcd member e1 was killed (code $code) without losing its lease"; said "${!log}"; }
  echo "ok: c$i stopped (code 3) when etcd's election outlasted its lease; started again"
  start_member "$i"
  wait_for 30 "c$i to follow again" follows "$i" "c[0-9]"
done

# Every follower reads the job as the leader committed it.
for i in 1 2 3; do
  [ "c$i" = "$(leader_id)" ] && continue
  addr="addr$i"
  "$G" status "$job" --core "${!addr}" --json >"$WORK/follower-$i.json" ||
    fail "status of $job on follower c$i"
  [ "$(json_get "$WORK/follower-$i.json" "j['round']")" -eq "$ROUNDS" ] &&
    [ "$(json_get "$WORK/follower-$i.json" "j['test_accuracy']")" = "$acc" ] ||
    fail "follower c$i reads $job otherwise than the leader: $(cat "$WORK/follower-$i.json")"
done
echo "ok: the followers read $job as committed (round $ROUNDS, accuracy $acc)"

# Every core holds the chunk of the job's last checkpoint, which etcd names.
etcd get "/gflex/data/job/$job/checkpoint" --write-out=json >"$WORK/checkpoint.json"
digest=$(json_get "$WORK/checkpoint.json" "__import__('base64').b64decode(j['kvs'][0]['value'])[-64:].decode()")
for i in 1 2 3; do
  [ -f "$WORK/c$i/chunks/$digest" ] || fail "core c$i lacks chunk ${digest:0:12} of $job's last checkpoint"
done
echo "ok: every core holds chunk ${digest:0:12} of $job's last checkpoint"

# Every round of the faulted job paid exactly once: its settle entries in etcd.
etcd get --prefix /gflex/data/ledger/entry/ --print-value-only >"$WORK/ledger.txt" || fail "read the ledger from etcd"
python3 - "$WORK/ledger.txt" "$job" "$ROUNDS" <<'EOF' || fail "rounds not paid exactly once"
import json, re, sys
text, job = open(sys.argv[1], errors="replace").read(), sys.argv[2]
paid = {}
for line in text.splitlines():
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        e = json.loads(line)
    except ValueError:
        continue
    m = re.match(re.escape(job) + r" round (\d+):", e.get("memo", ""))
    if e.get("kind") == "settle" and m:
        paid[int(m.group(1))] = paid.get(int(m.group(1)), 0) + 1
bad = {r: n for r, n in paid.items() if n != 1}
missing = [r for r in range(1, int(sys.argv[3]) + 1) if r not in paid]
print(f"rounds paid: {len(paid)}, paid twice: {bad or 'none'}, unpaid: {missing or 'none'}")
sys.exit(1 if bad or missing else 0)
EOF

# No commit without the leadership: every revision of /gflex/writer names the core that held
# /gflex/leader at that revision, and its fence is that leader record's revision.
etcd get /gflex/writer --write-out=json >"$WORK/writer.json"
last=$(json_get "$WORK/writer.json" "j['kvs'][0]['mod_revision']")
python3 - "$endpoints" "$last" <<'EOF' || fail "a commit came from a core without the leadership"
import base64, json, subprocess, sys
endpoints, last = sys.argv[1], int(sys.argv[2])
def get(key, rev):
    out = subprocess.run(["etcdctl", "--endpoints", endpoints, "get", key, f"--rev={rev}",
                          "--write-out=json"], capture_output=True, text=True, check=True)
    kvs = json.loads(out.stdout).get("kvs", [])
    return kvs[0] if kvs else None
checked, rev = 0, last
while rev > 0:
    w = get("/gflex/writer", rev)
    if w is None:
        break
    mod = int(w["mod_revision"])
    writer, fence = base64.b64decode(w["value"]).decode().split()[:2]  # "ID FENCE N ..."
    leader = get("/gflex/leader", mod)
    if leader is None or base64.b64decode(leader["value"]).decode().split()[0] != writer \
            or int(leader["mod_revision"]) != int(fence):
        print(f"revision {mod}: written by {writer} (fence {fence}), leader then: {leader}")
        sys.exit(1)
    checked += 1
    rev = mod - 1
print(f"{checked} commits checked against the leadership at their revisions")
EOF
if [ "$failures" -eq 0 ] && [ -n "${no_netns:-}" ] && [ "${GFLEX_ALLOW_NO_NETNS:-}" != 1 ]; then
  echo "skipped: the partition of c3 (no network namespace: it was frozen instead; GFLEX_ALLOW_NO_NETNS=1 accepts that)"
  exit 77
fi
finish
