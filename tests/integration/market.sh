#!/usr/bin/env bash
# The marketplace against real processes. A core (platform fee 10%), a core-tier node and
# three community nodes asking different prices. Bad input is refused with a clear message
# and changes nothing: malformed or duplicate accounts, negative, absurd or unparsable
# credits, an unknown account, a budget smaller than one round, an account that cannot cover
# one round, node prices out of range. A metered job runs with a max_price that leaves the
# dearest node out: the cheaper nodes do (and are paid for) the work, the dear one gets
# nothing; the job pauses when its budget runs out and `gflex topup` resumes it. The core is
# SIGKILLed during the job's payments and restarted; afterwards `gflex ledger verify` passes,
# every committed round was paid exactly once, and no escrow is left. A job whose budget
# holds less than two rounds' escrow, with a node caught after its round was applied, is
# rolled back and still ends.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
C="$BIN/gflex-core"

CORE_ARGS="--fee 0.1" start_cluster 0
core_port=${core##*:}
start verifier "$BIN/gflex-node" --join "$core" --name verifier --data-dir "$WORK/verifier" \
  --tier core --token "$TOKEN_core" --price 40
start cheap "$BIN/gflex-node" --join "$core" --name cheap --data-dir "$WORK/cheap" --price 50
start mid "$BIN/gflex-node" --join "$core" --name mid --data-dir "$WORK/mid" --price 80
start dear "$BIN/gflex-node" --join "$core" --name dear --data-dir "$WORK/dear" --price 500
# joined N [NAME...]: whether the core lists N nodes (of those NAMEs only, where given). Counted
# from the JSON: the table adds a line for each GPU (cuda:N) and one for a flagged node.
joined() {
  local n=$1
  shift
  [ "$("$G" nodes --core "$core" --json | python3 -c '
import json, sys
names = set(sys.argv[1:])
print(sum(1 for node in json.load(sys.stdin) if not names or node["name"] in names))' "$@")" = "$n" ]
}
wait_for 30 "4 nodes to join" joined 4

ledger_state() { "$G" ledger verify --core "$core" --json | python3 -c \
  "import json,sys; j=json.load(sys.stdin); print(j['ok'], j['entries'], j['issued'])"; }

# restart_core OLD NEW [ARGS...]: SIGKILLs core OLD and starts NEW on the same address and
# data directory (with ARGS), then waits for it to listen and for the price-eligible nodes
# (verifier, cheap, mid) to join it again.
restart_core() {
  local new=$2 pid_var="PID_$1"
  shift 2
  kill -KILL "${!pid_var}"
  wait "${!pid_var}" 2>/dev/null || true
  start "$new" "$C" --listen "$core" --data-dir "$WORK/core" --fee 0.1 "$@"
  wait_for 20 "$new to listen" grep -q "core listening" "$WORK/$new.log"
  wait_for 60 "the nodes to join $new" joined 3 verifier cheap mid
}

# run_to_end NAME SECONDS: submits $WORK/NAME.toml, waits up to SECONDS for the job to end
# (or pause), and shows its status (kept in $WORK/NAME.txt); the job's id goes to $ran.
run_to_end() {
  ran=$("$G" submit "$WORK/$1.toml" --core "$core") || fail "submit $1"
  wait_for "$2" "$ran ($1) to end" bash -c \
    "'$G' status $ran --core $core | grep -qE ' (done|failed|cancelled|paused),'"
  "$G" status "$ran" --core "$core" | tee "$WORK/$1.txt"
}

# -- accounts and bad input ------------------------------------------------------------------
"$C" account create user/alice --core "$core" >"$WORK/alice.key" || fail "create user/alice"
"$C" account credit user/alice 10 --core "$core" >/dev/null || fail "credit user/alice"
"$C" account create user/poor --core "$core" >/dev/null || fail "create user/poor"
"$C" account credit user/poor 0.01 --core "$core" >/dev/null || fail "credit user/poor"
before=$(ledger_state)
# The core's refusals of a request that fails again as sent exit 2, as the gflex client's do
# (they exited 1, which scripts take for "try again").
expect_usage "duplicate account" "exists already" "$C" account create user/alice --core "$core"
expect_usage "malformed account" "not an account id|user accounts only" \
  "$C" account create alice --core "$core"
expect_usage "node account from a client" "user accounts only" \
  "$C" account create node/cheap --core "$core"
expect_usage "revoke of an unknown token" "no join token has the id abcdef" \
  "$C" token revoke abcdef --core "$core"
expect_usage "operator command with a user's key" "only the operator's key may do this" \
  env GFLEX_API_KEY="$(cat "$WORK/alice.key")" "$C" token list --core "$core"
expect_error "negative credit" "non-negative decimal" "$C" account credit user/alice -5 --core "$core"
expect_error "absurd credit" "more than 1e12 credits" \
  "$C" account credit user/alice 99999999999999 --core "$core"
expect_error "unparsable credit" "non-negative decimal" \
  "$C" account credit user/alice 1e3 --core "$core"
expect_usage "unknown account" "unknown account user/nobody" \
  "$C" account credit user/nobody 5 --core "$core"
expect_error "unknown account shown" "unknown account user/nobody" \
  "$G" account user/nobody --core "$core"
expect_error "negative node price" "price" "$BIN/gflex-node" --join "$core" --name neg \
  --data-dir "$WORK/neg" --price -1
expect_error "absurd node price" "price" "$BIN/gflex-node" --join "$core" --name rich \
  --data-dir "$WORK/rich" --price 1e9

job_spec() {  # job_spec ACCOUNT BUDGET: a metered fashion-mlp job
  cat <<TOML
[job]
name = "paid"
workload = "fashion-mlp"
rounds = 12
workers = 2
[inner]
local_steps = 20
[round]
deadline_s = 2.0
[market]
account = "$1"
budget = $2
max_price = 100
TOML
}
job_spec user/alice 0.05 >"$WORK/small.toml"
expect_error "budget below one round" "market.budget: 0.05 credits is less than one round" \
  "$G" submit "$WORK/small.toml" --core "$core"
job_spec user/nobody 5 >"$WORK/nobody.toml"
expect_error "job for an unknown account" "unknown account user/nobody" \
  "$G" submit "$WORK/nobody.toml" --core "$core"
job_spec user/poor 5 >"$WORK/poor.toml"
expect_error "overdraft" "holds 0.01 credits, less than one round's escrow" \
  "$G" submit "$WORK/poor.toml" --core "$core"
expect_error "top-up of an unknown job" "unknown job" "$G" topup job-99 1 --core "$core"
[ "$(ledger_state)" = "$before" ] || fail "bad input changed the ledger: $before -> $(ledger_state)"
listed=$("$G" status --core "$core") || fail "gflex status failed"
if grep -q job- <<<"$listed"; then fail "a refused job was recorded"; fi

# -- a metered job: cheaper adequate nodes get the work, the budget runs out, a top-up -------
job_spec user/alice 0.13 >"$WORK/paid.toml"
job=$("$G" submit "$WORK/paid.toml" --core "$core") || fail "submit the metered job"
wait_for 120 "$job to pause on its budget" bash -c \
  "'$G' status $job --core $core | grep -q 'paused.*budget exhausted'"
"$G" status "$job" --core "$core"
# 0 resumes only a job paused for its account (credited since); this one needs more budget.
expect_error "a top-up of 0 of a job out of budget" "a top-up of 0 only resumes a job paused" \
  "$G" topup "$job" 0 --core "$core"
"$G" topup "$job" 0.08 --core "$core" >/dev/null || fail "topup"
# A burst of payments: kill the core once a few more rounds are committed after the top-up.
committed() { grep -c "job $job: round .* committed" "$WORK/core.log" || true; }
n=$(committed)
wait_for 60 "more rounds after the top-up" bash -c "[ \$(grep -c 'job $job: round .* committed' '$WORK/core.log') -ge $((n + 2)) ]"
kill -KILL "$PID_core"
wait "$PID_core" 2>/dev/null || true
cp "$WORK/core.log" "$WORK/core-before-kill.log"
start core2 "$C" --listen "$core" --data-dir "$WORK/core" --fee 0.1
wait_for 20 "the core to listen again" grep -q "core listening" "$WORK/core2.log"
# The job may need more budget to finish: top it up until it is done.
for _ in $(seq 1 40); do
  state=$("$G" status "$job" --core "$core" --json 2>/dev/null | python3 -c \
    "import json,sys; print(json.load(sys.stdin)['state'])" 2>/dev/null || echo unknown)
  [ "$state" = done ] && break
  [ "$state" = paused ] && "$G" topup "$job" 0.05 --core "$core" >/dev/null
  sleep 1
done
"$G" status "$job" --core "$core"
"$G" status "$job" --core "$core" --json >"$WORK/job.json"
"$G" ledger verify --core "$core" || fail "ledger verify"
"$G" ledger verify --core "$core" --json >"$WORK/verify.json"
for a in cheap mid dear verifier; do "$G" account node/$a --core "$core" --json >"$WORK/$a.json"; done
"$G" account platform --core "$core" --json >"$WORK/platform.json"
"$G" account user/alice --core "$core" | tee "$WORK/alice.txt"
grep -q "resumed: escrow of an interrupted round returned" "$WORK/alice.txt" &&
  echo "ok: the escrow the kill interrupted went back to user/alice" ||
  echo "note: no round held escrow when the core was killed"
python3 - "$WORK" "$job" <<'PY' || fail "market checks"
import json, os, sys
work, job = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(f"{work}/{name}.json"))
j, v = load("job"), load("verify")
bal = {a: load(a)["balance_micro"] for a in ("cheap", "mid", "dear", "verifier", "platform")}
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import check, finish
check(j["state"] == "done", f"the job ended {j['state']}")
check(v["ok"], f"ledger verifies: {v['problem'] or 'chain, balances, no overdraft'}")
check(v["settled_rounds"].get(job) == j["rounds"],
      f"each of the {j['rounds']} rounds paid exactly once ({v['settled_rounds'].get(job)})")
check(v["stale_escrow"] == 0 and v["in_escrow"] == "0", f"no escrow left ({v['in_escrow']})")
check(bal["cheap"] > 0 and bal["mid"] > 0, f"the cheaper nodes were paid ({bal})")
check(bal["dear"] == 0, "the node over max_price got no work and no pay")
check(bal["platform"] > 0, "the platform took its fee")
spent = float(j["credits_spent"])
paid = sum(bal[a] for a in ("cheap", "mid", "verifier", "platform")) / 1e6
check(abs(spent - paid) < 1e-5, f"the job spent {spent}, nodes and platform got {paid:.6f}")
check(float(j["cloud_cost"]) > 0 and j["device_hours"] > 0,
      f"cost report: {j['credits_spent']} credits for {j['device_hours']:.5f} device-hours, "
      f"{j['cloud_cost']} at the cloud price")
finish()
PY
grep -q "paused: budget exhausted" "$WORK/core-before-kill.log" || fail "the job never paused"

# -- a budget of under two rounds' escrow and a node caught after its round was applied ------
# Each round waits quietly for the one before it to settle (its escrow back); the cheat's
# first result is re-computed while round 2 waits, it is caught, and round 1 is rolled back
# and collected again: the job goes on to its end (it stayed "running" at round 0 when the
# rolled-back round was left waiting for the round that had waited for it).
# Its own join token: a caught node's token is closed to new keys.
cheat_token=$("$C" token create --tier community --core "$core") || fail "make cheat's token"
start cheat "$BIN/gflex-node" --join "$core" --name cheat --data-dir "$WORK/cheat" --price 10 \
  --token "$cheat_token" --misbehave signflip
wait_for 30 "cheat to join" bash -c "'$G' nodes --core $core | grep -q cheat"
"$C" account create user/bob --core "$core" >/dev/null || fail "create user/bob"
"$C" account credit user/bob 10 --core "$core" >/dev/null || fail "credit user/bob"
job_spec user/bob 0.17 | sed -e 's/^rounds = 12$/rounds = 4/' -e 's/^name = "paid"$/name = "tight"/' \
  >"$WORK/tight.toml"
run_to_end tight 90
tight=$ran
grep -q "job $tight: round 1 rolled back" "$WORK/core2.log" ||
  fail "the cheat's work was not caught after round 1 was applied (no rollback to test)"
grep -q "$tight tight: done, round 4/4" "$WORK/tight.txt" &&
  echo "ok: $tight rolled round 1 back while round 2 waited for its escrow, and ended done" ||
  fail "$tight did not end done after its rollback"
"$G" ledger verify --core "$core" >/dev/null || fail "ledger verify after the tight job"

# -- a ledger slower than its requests' wait ----------------------------------------------
# The core restarts with every store commit taking 1.5 s and the ledger waiting 1 s for a
# write: each hold and settlement times out and lands after. The keeper and the job ask
# whether it was booked instead of taking the timeout as a refusal (the job paused "cannot
# hold", then held again after a top-up and left a hold stranded in escrow; a settlement's
# timeout failed the job and returned the round's hold a second time).
restart_core core2 core3 --store-commit-delay-ms 1500 --ledger-wait-ms 1000
job_spec user/bob 1 | sed -e 's/^rounds = 12$/rounds = 3/' -e 's/^name = "paid"$/name = "slow"/' \
  >"$WORK/slow.toml"
run_to_end slow 150
slow=$ran
grep -q "$slow slow: done, round 3/3" "$WORK/slow.txt" || fail "$slow did not end done"
grep -q "ledger: entry .* landed after its write was not answered" "$WORK/core3.log" ||
  fail "no ledger write outlived its wait (nothing tested)"
grep -q "job $slow: the ledger booked $slow/.*/hold/" "$WORK/core3.log" ||
  fail "no hold of $slow outlived the job's wait (nothing tested)"
"$G" ledger verify --core "$core" --json >"$WORK/verify-slow.json" || fail "ledger verify (slow)"
python3 - "$WORK" "$slow" <<'PY' || fail "slow ledger checks"
import json, os, sys
work, job = sys.argv[1], sys.argv[2]
v = json.load(open(f"{work}/verify-slow.json"))
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import check, finish
check(v["ok"], f"ledger verifies: {v['problem'] or 'chain, balances, no overdraft'}")
check(v["settled_rounds"].get(job) == 3, f"each of 3 rounds paid once ({v['settled_rounds'].get(job)})")
check(v["stale_escrow"] == 0 and v["in_escrow"] == "0", f"no escrow left ({v['in_escrow']})")
finish()
PY
# With debug lines: a round's confirmation (its payments on their way to the ledger) dates it.
restart_core core3 core4 --log-level debug

# -- a node caught in one job is not paid for its open work in another ----------------------
# twofaced, the cheapest node, works honestly for a metered job and cheats (sign flips) in a
# second one that only it is cheap enough for. When the second job catches it, the first
# discards twofaced's work in its open rounds: it would otherwise pay it when they commit.
# Its pay from the first job is that of the rounds confirmed before the job heard, only (a
# round confirmed just before may commit just after), and stays so while the job goes on.
twofaced_token=$("$C" token create --tier community --core "$core") || fail "make twofaced's token"
job_spec user/bob 5 | sed -e 's/^rounds = 12$/rounds = 400/' -e 's/^workers = 2$/workers = 3/' \
  -e 's/^name = "paid"$/name = "honest-part"/' >"$WORK/honest-part.toml"
fair=$("$G" submit "$WORK/honest-part.toml" --core "$core") || fail "submit honest-part"
cheated="job-$((${fair#job-} + 1))"
start twofaced "$BIN/gflex-node" --join "$core" --name twofaced --data-dir "$WORK/twofaced" \
  --price 10 --workers 3 --token "$twofaced_token" --misbehave "in:$cheated:signflip"
wait_for 60 "twofaced to work for $fair" \
  grep -q "job $fair: re-computed .* of twofaced" "$WORK/core4.log"
job_spec user/bob 1 | sed -e 's/^rounds = 12$/rounds = 20/' -e 's/^max_price = 100$/max_price = 20/' \
  -e 's/^name = "paid"$/name = "cheated"/' >"$WORK/cheated.toml"
[ "$("$G" submit "$WORK/cheated.toml" --core "$core")" = "$cheated" ] || fail "submit cheated"
wait_for 90 "$fair to hear that twofaced was caught in $cheated" \
  grep -q "job $fair: node twofaced was caught in another job" "$WORK/core4.log"
grep "job $fair: node twofaced was caught" "$WORK/core4.log"
# committed_after_catch N: whether $fair committed N rounds since it heard.
committed_after_catch() {
  [ "$(sed -n "/job $fair: node twofaced was caught/,\$p" "$WORK/core4.log" |
    grep -c "job $fair: round .* committed")" -ge "$1" ]
}
wait_for 60 "$fair to commit 2 rounds after the catch" committed_after_catch 2
"$G" account node/twofaced --core "$core" --json >"$WORK/twofaced-1.json"
wait_for 60 "$fair to commit 2 more rounds" committed_after_catch 4
"$G" account node/twofaced --core "$core" --json >"$WORK/twofaced-2.json"
python3 - "$WORK" "$fair" <<'PY' || fail "twofaced's pay"
import json, os, re, sys
work, fair = sys.argv[1], sys.argv[2]
before, after = (json.load(open(f"{work}/twofaced-{i}.json")) for i in (1, 2))
log = open(f"{work}/core4.log").read().splitlines()
sys.path.insert(0, os.environ["SRC"] + "/tests/integration")
from checks import check, finish
heard = next(i for i, line in enumerate(log) if f"job {fair}: node twofaced was caught" in line)
confirmed = set()
for line in log[:heard]:
    if m := re.search(rf"job {fair}: round (\d+) confirmed", line):
        confirmed.add(int(m.group(1)))
paid = {}  # round -> micro-credits, of $fair's settlements in twofaced's entries
for line in after["recent"]:
    if m := re.search(rf"  settle  \+([0-9.]+)  {fair} round (\d+):", line):
        paid[int(m.group(2))] = paid.get(int(m.group(2)), 0) + round(float(m.group(1)) * 1e6)
if not paid:
    print(f"note: twofaced was caught before {fair} paid it for anything")
late = sorted(set(paid) - confirmed)
check(not late, f"{fair} paid twofaced for rounds confirmed before it heard only "
      f"(rounds {sorted(confirmed)}; also paid for {late})")
check(before["balance_micro"] == after["balance_micro"],
      f"twofaced's balance stays while {fair} goes on ({before['balance']}, {after['balance']})")
if len(after["recent"]) < 20:  # every entry of its account listed
    earned = sum(v for r, v in paid.items() if r in confirmed)
    check(after["balance_micro"] == earned,
          f"twofaced holds what it earned before it was caught ({after['balance_micro']} "
          f"micro-credits, {earned} earned)")
finish()
PY
# A budget stays within what a spec may ask: top-ups past 1e12 credits are refused (they
# overflowed it, and a negative budget paused the job for good).
expect_error "top-up past the budget bound" "past 1e12 credits" \
  "$G" topup "$fair" 999999999999 --core "$core"
"$G" cancel "$fair" --core "$core" >/dev/null || fail "cancel $fair"
"$G" cancel "$cheated" --core "$core" >/dev/null 2>&1 || true
wait_for 30 "$fair to end" bash -c "'$G' status $fair --core $core | grep -q cancelled"
"$G" ledger verify --core "$core" >/dev/null || fail "ledger verify after twofaced"

# --max-hours: a node that has computed its share leaves by itself, exit 0.
start brief "$BIN/gflex-node" --join "$core" --name brief --data-dir "$WORK/brief" \
  --price 10 --max-hours 0.00005
wait_for 30 "brief to join" bash -c "'$G' nodes --core $core | grep -q brief"
printf '[job]\nname = "short"\nworkload = "fashion-mlp"\nrounds = 40\nworkers = 3\n' \
  >"$WORK/short.toml"
"$G" submit "$WORK/short.toml" --core "$core" >/dev/null || fail "submit the short job"
wait_for 120 "brief to leave after its --max-hours" bash -c "! kill -0 $PID_brief 2>/dev/null"
kill -KILL "$PID_brief" 2>/dev/null || true  # still running: the wait above failed
wait "$PID_brief" && echo "ok: brief left with exit 0" || fail "brief exited non-zero"
grep -q "computed for its --max-hours" "$WORK/brief.log" || fail "brief did not say why it left"
finish
