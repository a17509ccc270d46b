#!/usr/bin/env bash
# The core's web dashboard (--http-listen), in a real browser: a core and two nodes (one on a
# terminal, which draws its status line there; the other logs plainly) run a
# metered job for user/alice to its end; then headless Chromium opens the page with the
# operator's key and the test reads the drawn page (its DOM): the job's row, both nodes, and
# a loss curve with one point per committed round; a screenshot is kept in
# build/test-output/dashboard.png. The JSON endpoints answer a missing, malformed or unknown
# key with 401 and no data, alice sees her job but not the nodes (403), and her job's history
# has a point per round; once her key is replaced, the old one is answered 401 (the page then
# asks for a key) and the new one opens her views. A dashboard without Chart.js, or on a port
# in use, stops the core with a clear error.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
C="$BIN/gflex-core"
OUT_DIR=$(cd "$BIN/.." && pwd)/test-output
mkdir -p "$OUT_DIR"
dash=127.0.0.1:$(free_port)
CORE_ARGS="--http-listen $dash" NODE_ARGS_1="--price 10" start_cluster 1
# node2 runs on a terminal (script(1) gives it one): it draws its status line there, while
# node1, whose output is a file, logs a plain line per assignment.
start node2_tty script -qfec "stty cols 200; exec $BIN/gflex-node --join $core --name node2 --data-dir $WORK/node2 \
  --tier core --token $TOKEN_core --price 10" "$WORK/node2.tty"
wait_for 30 "2 nodes to join" node_count_is 2
PIDS+=($(pgrep -P "$PID_node2_tty" || true))  # the node itself, killed by pid at the end
grep -q "dashboard on http://$dash/" "$WORK/core.log" || fail "the core does not tell the dashboard's address"

ALICE=$("$C" account create user/alice --core "$core" 2>/dev/null) || fail "create user/alice"
"$C" account credit user/alice 50 --core "$core" >/dev/null || fail "credit user/alice"
rounds=6
cat >"$WORK/job.toml" <<TOML
[job]
name = "shown"
workload = "fashion-mlp"
rounds = $rounds
workers = 2
[inner]
local_steps = 20
[market]
account = "user/alice"
budget = 20
max_price = 100
TOML
timeout -s KILL 240 env GFLEX_API_KEY="$ALICE" "$G" submit "$WORK/job.toml" --core "$core" --wait \
  --json "$WORK/summary.json" >"$WORK/submit.out" 2>"$WORK/submit.err" ||
  fail "submit --wait exited non-zero: $(tail -3 "$WORK/submit.err")"
job=$(json_get "$WORK/summary.json" "j['job_id']")

# The node on a terminal drew its status line; the other logged its assignments plainly.
sleep 5  # the node asks the core what it has earned about every 5 s
tr '\r' '\n' <"$WORK/node2.tty" |
  grep -a "node2 | connected as .* | earned 0\.0*[1-9][0-9]* credits | assignments: [1-9][0-9]* done" \
  >/dev/null && echo "ok: node2's status line on its terminal" ||
  fail "node2's terminal lacks its status line: $(tr '\r' '\n' <"$WORK/node2.tty" | tail -2)"
grep -q "computed $job round 1: [0-9]* samples/s" "$WORK/node1.log" &&
  grep -q "earned 0\.0*[1-9][0-9]* credits so far" "$WORK/node1.log" &&
  ! grep -q "assignments: " "$WORK/node1.log" && echo "ok: node1 logs its assignments plainly" ||
  fail "node1's log: $(tail -2 "$WORK/node1.log")"

# get PATH KEY OUT: GET http://$dash/PATH with KEY (none when empty) into OUT; prints the status.
get() {
  python3 - "http://$dash$1" "$2" "$3" <<'PY'
import sys, urllib.request, urllib.error
url, key, out = sys.argv[1:4]
req = urllib.request.Request(url, headers={"Authorization": key} if key else {})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
open(out, "wb").write(body)
print(status)
PY
}
# expect_status NAME PATH KEY STATUS: the answer's status, and no job or node in a refusal.
expect_status() {
  local got
  got=$(get "$2" "$3" "$WORK/answer.json")
  if [ "$got" != "$4" ]; then
    fail "$1: HTTP $got, not $4: $(head -c 200 "$WORK/answer.json")"
  elif [ "$4" -ge 400 ] && grep -Eq "job_id|node_id|balance" "$WORK/answer.json"; then
    fail "$1: the refusal carries data: $(head -c 200 "$WORK/answer.json")"
  else
    echo "ok: $1 (HTTP $got)"
  fi
}
OP="Bearer $GFLEX_API_KEY"
for path in /api/jobs /api/jobs/$job /api/nodes /api/ledger; do
  expect_status "no key: $path" "$path" "" 401
  expect_status "malformed key: $path" "$path" "Bearer gfk_nothing" 401
  expect_status "unknown key: $path" "$path" "Bearer gfk_$(printf '%064d' 7)" 401
  expect_status "not a bearer: $path" "$path" "Basic $GFLEX_API_KEY" 401
done
expect_status "alice: the nodes are the operator's" /api/nodes "Bearer $ALICE" 403
expect_status "an unknown job" /api/jobs/job-999 "$OP" 404
expect_status "alice: her job with its history" "/api/jobs/$job" "Bearer $ALICE" 200
python3 - "$WORK/answer.json" "$rounds" <<'PY' || fail "alice's job as JSON"
import json, sys
j, rounds = json.load(open(sys.argv[1])), int(sys.argv[2])
assert j["state"] == "done" and j["owner"] == "user/alice", (j["state"], j["owner"])
h = j["history"]
assert [p["round"] for p in h] == list(range(1, rounds + 1)), [p["round"] for p in h]
assert all(p["evaluated"] for p in h) and h[-1]["test_accuracy"] == j["test_accuracy"]
assert float(j["credits_spent"]) > 0
print(f"ok: alice's job has {len(h)} points, accuracy {j['test_accuracy']:.3f}")
PY
expect_status "alice: her ledger account" /api/ledger "Bearer $ALICE" 200
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert [a['id'] for a in j['accounts']] == ['user/alice'] and 'verify' not in j, j" \
  "$WORK/answer.json" || fail "alice's ledger view"
expect_status "the operator: nodes" /api/nodes "$OP" 200
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert sorted(n['name'] for n in j) == ['node1', 'node2'], j" \
  "$WORK/answer.json" || fail "the operator's nodes"
expect_status "the operator: the ledger" /api/ledger "$OP" 200
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['verify']['ok'] and {'platform', 'user/alice'} <= {a['id'] for a in j['accounts']}, j" \
  "$WORK/answer.json" || fail "the operator's ledger view"
# The whole ledger's check runs at most once a minute, however often pages ask.
sleep 1.2
expect_status "the operator: the ledger again" /api/ledger "$OP" 200
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert j['verify']['ok'] and 1.0 <= j['verify_age_s'] < 60, j['verify_age_s']" \
  "$WORK/answer.json" && echo "ok: the ledger's check was not run again within the minute" ||
  fail "the ledger's check ran again: $(head -c 300 "$WORK/answer.json")"

# A key replaced while its client is kept (alice's requests above opened it): the core
# refuses it from its next request on, and the dashboard answers 401 (the page then asks for
# a key), on the ledger too, not an empty list of accounts; the new key opens her views.
# rekey_alice FIRST_PATH: replaces alice's key, then asks FIRST_PATH with the old one first
# (through the kept client), and the other endpoints after.
rekey_alice() {
  local old=$ALICE path
  ALICE=$(umask 077 && "$C" account rekey user/alice --core "$core" 2>/dev/null) ||
    fail "account rekey user/alice"
  for path in "$1" /api/jobs /api/ledger "/api/jobs/$job"; do
    expect_status "alice's replaced key: $path" "$path" "Bearer $old" 401
    grep -q "unknown API key" "$WORK/answer.json" ||
      fail "the 401 does not name the refused key: $(head -c 200 "$WORK/answer.json")"
  done
  expect_status "alice's new key: her jobs" /api/jobs "Bearer $ALICE" 200
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert [x['job_id'] for x in j] == [sys.argv[2]], j" \
    "$WORK/answer.json" "$job" || fail "alice's jobs with her new key"
  expect_status "alice's new key: her ledger account" /api/ledger "Bearer $ALICE" 200
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert [a['id'] for a in j['accounts']] == ['user/alice'], j" \
    "$WORK/answer.json" || fail "alice's ledger view with her new key"
  expect_status "alice's new key: the nodes stay the operator's" /api/nodes "Bearer $ALICE" 403
}
rekey_alice /api/ledger
rekey_alice /api/jobs

# -- the page in a real browser ---------------------------------------------------------------
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || fail "no chromium (Debian's chromium package) to open the page with"
if [ -n "$browser" ]; then
  # The key travels in the fragment, which the browser never sends; the page moves it to
  # session storage. --virtual-time-budget lets the page's requests and first refresh finish.
  url="http://$dash/#key=$GFLEX_API_KEY"
  chrome=(timeout -s KILL 90 "$browser" --headless --no-sandbox --disable-gpu --no-first-run
          --user-data-dir="$WORK/chromium" --window-size=1400,1700 --virtual-time-budget=20000)
  "${chrome[@]}" --dump-dom "$url" >"$WORK/page.html" 2>"$WORK/chromium.err" ||
    fail "chromium --dump-dom: $(tail -3 "$WORK/chromium.err")"
  python3 - "$WORK/page.html" "$job" "$rounds" "$GFLEX_API_KEY" <<'PY' || fail "the drawn page"
import sys
from html.parser import HTMLParser
page, job, rounds = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
found = {}
class Walk(HTMLParser):
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("data-job", "data-node", "id"):
            if key in a:
                found[(tag, key, a[key])] = a
Walk().feed(page)
assert ("tr", "data-job", job) in found, "no row for " + job
assert found[("tr", "data-job", job)]["data-round"] == str(rounds)
for n in ("node1", "node2"):
    assert ("tr", "data-node", n) in found, "no row for " + n
loss = found.get(("canvas", "id", "loss-" + job))
assert loss is not None, "no loss chart for " + job
assert loss.get("data-points") == str(rounds), f"the loss curve has {loss.get('data-points')} points, not {rounds}"
acc = found.get(("canvas", "id", "accuracy-" + job))
assert acc is not None and acc.get("data-points") == str(rounds), "the accuracy curve"
ok = found.get(("span", "id", "ledger-ok"))
assert ok is not None and ok.get("data-ok") == "true", "the ledger's check is not shown as passed"
assert sys.argv[4] not in page, "the key is in the page"
print(f"ok: the page draws {job} with a {rounds}-point loss curve, node1 and node2, the ledger verified")
PY
  rm -f "$OUT_DIR/dashboard.png"  # an earlier run's would pass the check below
  "${chrome[@]}" --screenshot="$OUT_DIR/dashboard.png" "$url" >/dev/null 2>"$WORK/chromium.err" ||
    fail "chromium --screenshot: $(tail -3 "$WORK/chromium.err")"
  [ -s "$OUT_DIR/dashboard.png" ] && echo "ok: screenshot in $OUT_DIR/dashboard.png" ||
    fail "no screenshot"
  # Without a key the page asks for one and shows nothing of the cluster.
  "${chrome[@]}" --dump-dom "http://$dash/" >"$WORK/nokey.html" 2>"$WORK/chromium.err" ||
    fail "chromium --dump-dom without a key"
  if grep -q "data-job=\|data-node=" "$WORK/nokey.html" || ! grep -q '<section id="login">' "$WORK/nokey.html"; then
    fail "the page without a key shows data or no login"
  else
    echo "ok: without a key the page asks for one"
  fi
  # A link whose key is not valid percent-encoding: the page says so and asks for a key
  # (decoding it threw, and the page stayed blank).
  "${chrome[@]}" --dump-dom "http://$dash/#key=%" >"$WORK/badkey.html" 2>"$WORK/chromium.err" ||
    fail "chromium --dump-dom with a malformed key"
  grep -q "the key in the link is malformed" "$WORK/badkey.html" &&
    echo "ok: a malformed key in the link is named, and the page asks for one" ||
    fail "a malformed key in the link: $(grep -o '<p id="login-error"[^<]*' "$WORK/badkey.html")"
fi

# -- refused starts ---------------------------------------------------------------------------
"$C" init --data-dir "$WORK/core2" >/dev/null || fail "gflex-core init core2"
expect_error "the dashboard without Chart.js" "cannot read Chart.js from /nonexistent.js" \
  "$C" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/core2" --http-listen "127.0.0.1:$(free_port)" \
  --chart-js /nonexistent.js
expect_error "a dashboard port in use" "cannot serve the dashboard on $dash" \
  "$C" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/core2" --http-listen "$dash"
expect_error "a malformed --http-listen" "--http-listen: expected HOST:PORT" \
  "$C" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/core2" --http-listen nowhere

finish
