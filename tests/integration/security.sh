#!/usr/bin/env bash
# Security against a real core over TLS. Join tokens: nodes without one, with a malformed,
# unknown, expired, revoked or other-tier token, or presenting another node's name with their
# own key, are refused (exit 3) and change nothing; a node whose token is revoked is taken
# out at once and cannot rejoin; failures are counted per address and, past five, answers to
# that address are held back. A core whose key is not its
# certificate's refuses to start. Clients: an account's key sees and
# changes only that account's jobs and account, operator commands need the operator's key,
# an account may have three unfinished jobs here, and models within 512 MiB of the core's
# memory, a key the operator replaced is refused.
# Bad bytes on the core's port and an oversized job spec or a BASP header announcing 3 GiB
# leave the core up and unchanged (and the last without a large allocation). A packet capture
# of the core's port while a job trains and its parameters are fetched holds none of the
# parameters' bytes; the same capture of an --insecure core does (so the check can fail). An
# account whose creation takes longer than 30 s (a slow store) is created, its key shown.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
C="$BIN/gflex-core"

CORE_ARGS="--max-jobs-per-account 3 --max-job-memory-per-account-mib 512" start_cluster 1
nodes_now() { node_count; }

# -- join tokens -------------------------------------------------------------------------------
NODE=("$BIN/gflex-node" --join "$core")  # + --name NAME --data-dir DIR: a node to refuse
GFLEX_TOKEN="" expect_error "no token" "needs a join token" \
  "${NODE[@]}" --name t-none --data-dir "$WORK/t-none"
expect_error "malformed token" "not a join token" \
  "${NODE[@]}" --name t-bad --data-dir "$WORK/t-bad" --token hunter2
expect_error "unknown token" "unknown join token" \
  "${NODE[@]}" --name t-unknown --data-dir "$WORK/t-unknown" --token "gft_$(printf '%064d' 7)"
expect_error "community token for the core tier" "admits the community tier, not the core tier" \
  "${NODE[@]}" --name t-tier --data-dir "$WORK/t-tier" --tier core
brief=$("$C" token create --tier community --expires 1s --core "$core") || fail "token create"
sleep 2
expect_error "expired token" "has expired" \
  "${NODE[@]}" --name t-expired --data-dir "$WORK/t-expired" --token "$brief"
revoked=$("$C" token create --tier community --core "$core") || fail "token create"
id=$("$C" token list --core "$core" | tail -1 | cut -d' ' -f1)
"$C" token revoke "$id" --core "$core" >/dev/null || fail "token revoke $id"
expect_error "revoked token" "was revoked" \
  "${NODE[@]}" --name t-revoked --data-dir "$WORK/t-revoked" --token "$revoked"
expect_error "unknown token id" "no join token has the id" "$C" token revoke abcdef --core "$core"
expect_error "bad lifetime" "is not a lifetime" "$C" token create --expires soon --core "$core"
# node1 is bound to its key: the same name with another key (another data dir) is refused.
expect_error "another node's name" "belongs to another node key; join under another name \(gflex-node --name" \
  "$BIN/gflex-node" --join "$core" --name node1 --data-dir "$WORK/impostor" --tier core \
  --token "$TOKEN_core"
[ "$(nodes_now)" -eq 1 ] || fail "a refused node is listed"
grep -q "refused a join from 127.0.0.1: .*(5 failures from there recently)" "$WORK/core.log" ||
  fail "failed joins not counted per address: $(grep 'refused a join' "$WORK/core.log" | tail -1)"
# Past five failures, the answer to a hello from there is held, a good token's included:
# guessing slows down, and nobody is locked out.
start t-good "$BIN/gflex-node" --join "$core" --name t-good --data-dir "$WORK/t-good"
wait_for 60 "t-good to join despite the failures" grep -q "joined the core" "$WORK/t-good.log"
grep -Eq "holding the answer to a hello from 127.0.0.1 for [0-9]+ ms" "$WORK/core.log" ||
  fail "no hello was held back"
"$C" token list --core "$core" | grep -Eq " yes +0 +0 +1$" ||
  fail "token list lacks the revoked token: $("$C" token list --core "$core")"
# A community token admits one node key by default: a second key is refused, the first may
# come back with it.
single=$("$C" token create --tier community --core "$core") || fail "token create"
start t-single "${NODE[@]}" --name t-single --data-dir "$WORK/t-single" --token "$single"
wait_for 60 "t-single to join" grep -q "joined the core" "$WORK/t-single.log"
expect_error "a used single-use token" "is used up" \
  "${NODE[@]}" --name t-second --data-dir "$WORK/t-second" --token "$single"
kill -KILL "$PID_t_single"
start t-single-again "${NODE[@]}" --name t-single --data-dir "$WORK/t-single" --token "$single"
wait_for 60 "t-single to join again with its token" \
  grep -q "joined the core" "$WORK/t-single-again.log"
kill -KILL "$PID_t_single_again"
wait_for 30 "t-single to leave the node list" node_count_is 2
# Expiry closes a token to new keys; a node it admitted before rejoins (a core restart makes
# every node rejoin, and an expired token turned them all away, each node exiting).
lasting=$("$C" token create --tier community --expires 4s --core "$core") || fail "token create"
start t-lasting "${NODE[@]}" --name t-lasting --data-dir "$WORK/t-lasting" --token "$lasting"
wait_for 60 "t-lasting to join" grep -q "joined the core" "$WORK/t-lasting.log"
kill -KILL "$PID_t_lasting"
sleep 5
expect_error "a new key on an expired token" "has expired" \
  "${NODE[@]}" --name t-late --data-dir "$WORK/t-late" --token "$lasting"
start t-lasting-again "${NODE[@]}" --name t-lasting --data-dir "$WORK/t-lasting" --token "$lasting"
wait_for 60 "t-lasting to rejoin after its token expired" \
  grep -q "joined the core" "$WORK/t-lasting-again.log"
kill -KILL "$PID_t_lasting_again"
wait_for 30 "t-lasting to leave the node list" node_count_is 2
expect_error "bad --uses" "not in range" "$C" token create --uses -3 --core "$core"
# Revoking a token shuts out the nodes it admitted at once (a leaked token's nodes took and
# were paid for work until their connection next dropped), and they cannot come back with it.
# A node moved to a new token after the leak (its key bound to both) stays.
leaked=$("$C" token create --tier community --uses 2 --core "$core") || fail "token create"
leaked_id=$("$C" token list --core "$core" | tail -1 | cut -d' ' -f1)
start t-leaked "${NODE[@]}" --name t-leaked --data-dir "$WORK/t-leaked" --token "$leaked"
wait_for 60 "t-leaked to join" grep -q "joined the core" "$WORK/t-leaked.log"
start t-moved "${NODE[@]}" --name t-moved --data-dir "$WORK/t-moved" --token "$leaked"
wait_for 60 "t-moved to join" grep -q "joined the core" "$WORK/t-moved.log"
kill -KILL "$PID_t_moved"
fresh=$("$C" token create --tier community --core "$core") || fail "token create"
start t-moved-again "${NODE[@]}" --name t-moved --data-dir "$WORK/t-moved" --token "$fresh"
wait_for 60 "t-moved to join again with a new token" \
  grep -q "joined the core" "$WORK/t-moved-again.log"
wait_for 30 "t-leaked and t-moved in the node list" node_count_is 4
"$C" token revoke "$leaked_id" --core "$core" >/dev/null || fail "token revoke $leaked_id"
wait_for 30 "the revoked token's node to leave the node list" node_count_is 3
wait_for 60 "t-leaked to exit" bash -c "! kill -0 $PID_t_leaked 2>/dev/null"
leaked_rc=0
wait "$PID_t_leaked" || leaked_rc=$?
[ "$leaked_rc" = 3 ] || fail "the revoked token's node exited $leaked_rc, not 3: $(tail -3 "$WORK/t-leaked.log")"
grep -q "was revoked" "$WORK/t-leaked.log" || fail "t-leaked was not told its token was revoked"
grep -q "admitted with join token $leaked_id, which is revoked" "$WORK/core.log" ||
  fail "the core did not say why it took t-leaked out"
sleep 2
[ "$(nodes_now)" -eq 3 ] || fail "the node moved to a new token was taken out with the revoked one"
grep -q "t-moved.*admitted with join token" "$WORK/core.log" &&
  fail "the core took out t-moved, which joined with another token"
kill -KILL "$PID_t_moved_again"
wait_for 30 "t-moved to leave the node list" node_count_is 2

# -- the data directory ------------------------------------------------------------------------
# A second core on the running core's data directory is refused before it touches the store
# (two cores on one directory both led, and each start swept the other's unnamed blobs);
# the first one still answers.
expect_error "a second core on a data directory in use" \
  "$WORK/core is in use by another gflex-core \(pid $PID_core\)" \
  "$C" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/core"
[ "$rc_seen" = 1 ] || fail "a data directory in use: exit $rc_seen, not 1 (to be retried)"
[ "$(nodes_now)" -ge 1 ] || fail "the first core stopped answering after a second one tried its data"
# A core key that is not its certificate's is refused at start, as bad usage (the service is
# not restarted). CAF loads the key only when a connection comes, and then ended the core
# that had logged that it listens, at each node's or client's first try.
"$C" init --data-dir "$WORK/mixed" >/dev/null || fail "init the mixed-up core"
cp "$WORK/mixed/tls/ca.key" "$WORK/mixed/tls/core.key"
expect_usage "a core key that is not its certificate's" \
  "$WORK/mixed/tls/core.key is not the key of the certificate in $WORK/mixed/tls/core.crt" \
  "$C" --listen "127.0.0.1:$(free_port)" --data-dir "$WORK/mixed"
# An IPv6 address that is not one is bad usage found before anything listens: it failed as a
# host name not found, which read as a port in use (exit 1: the service restarted the core).
expect_usage "an IPv6 address left out of brackets" "--http-listen: .* is not an IPv6 address" \
  "$C" --listen "127.0.0.1:$(free_port)" --http-listen "2001:db8::7400" --data-dir "$WORK/core"
# Two of the core's flags on one port are bad usage found before anything listens: the second
# bind failed as a port in use (exit 1), and the service restarted the core for ever.
clash=$(free_port)
expect_usage "two of the core's flags on one port" \
  "--listen 127.0.0.1:$clash and --metrics-listen 0.0.0.0:$clash listen on the same port" \
  "$C" --listen "127.0.0.1:$clash" --metrics-listen "0.0.0.0:$clash" --data-dir "$WORK/core"

# -- clients -----------------------------------------------------------------------------------
key_file alice
key_file bob
ALICE=(env "GFLEX_API_KEY=$(cat "$WORK/alice.key")")
BOB=(env "GFLEX_API_KEY=$(cat "$WORK/bob.key")")
printf '[job]\nname = "long"\nworkload = "fashion-mlp"\nrounds = 100000\nworkers = 1\n' \
  >"$WORK/long.toml"
# An account's job is paid from its credits: without a paying account it may take only nodes
# that ask nothing.
expect_error "alice's job that pays nobody" "is paid from its credits" \
  "${ALICE[@]}" "$G" submit "$WORK/long.toml" --core "$core"
{ cat "$WORK/long.toml" && printf '[market]\nmax_price = 0\n'; } >"$WORK/long-free.toml"
job=$("${ALICE[@]}" "$G" submit "$WORK/long-free.toml" --core "$core") || fail "alice submits"
# The key from a file works as well as from the environment.
GFLEX_API_KEY="" "$G" status "$job" --json --api-key-file "$WORK/alice.key" --core "$core" \
  >"$WORK/alice-job.json" || fail "alice sees her job"
[ "$(json_get "$WORK/alice-job.json" "j['owner']")" = user/alice ] || fail "owner is not alice"
BOB_G=("${BOB[@]}" "$G")  # gflex with Bob's key
expect_error "bob reads alice's job" "unknown job '$job'" "${BOB_G[@]}" status "$job" --core "$core"
expect_error "bob cancels alice's job" "unknown job '$job'" \
  "${BOB_G[@]}" cancel "$job" --core "$core"
expect_error "bob fetches alice's job" "unknown job '$job'" \
  "${BOB_G[@]}" fetch "$job" --core "$core" --out "$WORK/stolen"
expect_error "bob tops up alice's job" "unknown job '$job'" \
  "${BOB_G[@]}" topup "$job" 1 --core "$core"
"${BOB[@]}" "$G" status --core "$core" >"$WORK/bob-list" || fail "bob lists his jobs"
grep -q "$job" "$WORK/bob-list" && fail "bob's list shows alice's job"
# A refusal of the key is final, as bad input is (exit 2): it was 1, the code scripts retry.
expect_usage "bob reads alice's account" "belongs to user/bob, not to user/alice" \
  "${BOB[@]}" "$G" account user/alice --core "$core"
"${BOB[@]}" "$G" account user/bob --core "$core" >/dev/null || fail "bob reads his own account"
# Without an id, the key's own account (it was "platform", which refused every account's key).
"${BOB[@]}" "$G" account --core "$core" >"$WORK/bob-account" 2>&1 &&
  grep -q "^user/bob: " "$WORK/bob-account" || fail "bob's default account: $(cat "$WORK/bob-account")"
"$G" account --core "$core" | grep -q "^platform: " || fail "the operator's default account is not platform"
printf '[market]\naccount = "user/alice"\nbudget = 10\nmax_price = 1\n' >>"$WORK/billed.toml"
cat "$WORK/long.toml" "$WORK/billed.toml" >"$WORK/bill-alice.toml"
expect_usage "bob bills alice" "belongs to user/bob, which cannot bill user/alice" \
  "${BOB[@]}" "$G" submit "$WORK/bill-alice.toml" --core "$core"
for cmd in "$G nodes" "$G ledger verify"; do
  # shellcheck disable=SC2086
  expect_usage "bob: $cmd" "only the operator's key may do this" "${BOB[@]}" $cmd --core "$core"
done
for cmd in "$C token list" "$C token create" "$C account credit user/bob 5" \
  "$C account create user/mallory"; do
  # shellcheck disable=SC2086
  expect_error "bob: $cmd" "only the operator's key may do this" "${BOB[@]}" $cmd --core "$core"
done
expect_usage "unknown API key" "unknown API key" \
  env GFLEX_API_KEY="gfk_$(printf '%064d' 0)" "$G" status --core "$core"
expect_usage "malformed API key" "not an API key" \
  env GFLEX_API_KEY=letmein "$G" status --core "$core"
expect_usage "no API key" "needs an API key" env GFLEX_API_KEY= "$G" status --core "$core"
cp "$WORK/bob.key" "$WORK/open.key" && chmod 644 "$WORK/open.key"
expect_error "key file others may read" "may be read by others" \
  "$G" status --api-key-file "$WORK/open.key" --core "$core"
"${ALICE[@]}" "$G" status "$job" --json --core "$core" >"$WORK/alice-job2.json" ||
  fail "alice sees her job"
state=$(json_get "$WORK/alice-job2.json" "j['state']")
[[ "$state" =~ ^(queued|running)$ ]] || fail "alice's job was changed: it is $state"
"${ALICE[@]}" "$G" cancel "$job" --core "$core" >/dev/null || fail "alice cancels her job"
# Three unfinished jobs per account here; the fourth is refused until one ends.
for i in 1 2 3; do
  "${BOB_G[@]}" submit "$WORK/long-free.toml" --core "$core" >>"$WORK/bob-jobs" || fail "bob job $i"
done
expect_error "a fourth unfinished job" "user/bob already has 3 unfinished jobs" \
  "${BOB[@]}" "$G" submit "$WORK/long-free.toml" --core "$core"
# A refusal that passes once a job ends (a limit, not a permission): 1, to be tried again.
[ "$rc_seen" = 1 ] || fail "a fourth unfinished job: exit $rc_seen, not 1 (to be retried)"
while read -r j; do
  "${BOB_G[@]}" cancel "$j" --core "$core" >/dev/null || fail "bob cancels $j"
done <"$WORK/bob-jobs"
# A model the core's memory would hold past the account's 512 MiB here (78.5M parameters: a
# job takes over 900 MiB) is refused at submit, naming what it needs; a restarted core
# resumed such jobs and failed again at every start.
cat >"$WORK/wide.toml" <<'TOML'
[job]
name = "wide"
[market]
max_price = 0
[data]
set = "fashion-mnist"
[model]
input = [784]
layers = [{type = "linear", units = 100000}, {type = "relu"}, {type = "linear", units = 10},
          {type = "softmax_xent"}]
TOML
expect_error "a model past the account's memory" "parameters need [0-9]+ bytes .* of the core's memory" \
  "${BOB[@]}" "$G" submit "$WORK/wide.toml" --core "$core"
# A key replaced is refused from then on, as one never made (a leaked key opened its account
# for good); the new one works. An account the core does not hold is bad usage.
(umask 077 && "$C" account rekey user/bob --core "$core" >"$WORK/bob-new.key") ||
  fail "account rekey user/bob"
expect_usage "bob's replaced key" "unknown API key" "${BOB[@]}" "$G" status --core "$core"
env "GFLEX_API_KEY=$(cat "$WORK/bob-new.key")" "$G" status --core "$core" >/dev/null ||
  fail "bob's new key is refused"
expect_usage "rekey of an unknown account" "unknown account user/nobody" \
  "$C" account rekey user/nobody --core "$core"

# -- bad bytes and oversized input -------------------------------------------------------------
"$G" status --core "$core" >"$WORK/jobs-before" || fail "status"
python3 - "${core##*:}" <<'PY' || fail "bad bytes"
import os, socket, sys
port = int(sys.argv[1])
for payload in (os.urandom(65536), b"\x16\x03\x01\xff\xff" + b"\0" * 70000,
                b"\0\0\0\0" * 300000):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(payload)
            s.recv(4096)
        except OSError:
            pass  # the core hangs up on such bytes
PY
# Past TLS (anyone with the bundle gets that far), a BASP header that announces a 3 GiB
# message: the core closes the connection without allocating it. Each header must pass
# CAF's checks of its fields, or CAF closes the connection before it asks for the payload
# and the size limit is never reached: a client handshake names no actors, a direct message
# a receiver (any id will do: the payload is asked for before anything looks it up).
oversized_lines() {  # grep -c prints 0 for none, and fails
  grep -c "closed a connection that announced a 3221225472 byte message" "$WORK/core.log" || true
}
oversized_before=$(oversized_lines)
python3 - "${core##*:}" "$GFLEX_CORE_CERT" "$PID_core" <<'PY' || fail "oversized BASP message"
import socket, ssl, struct, sys, time
port, bundle, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(bundle)
ctx.load_cert_chain(bundle)
def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
before = rss_mib()
# operation, 3 padding/flag bytes, payload size, operation data, source actor, dest actor
for op, dest_actor in ((1, 0), (2, 1)):  # a client handshake, a direct message
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        s.recv(65536)  # the core's handshake
        s.sendall(struct.pack(">BBBBIQQQ", op, 0, 0, 0, 3 << 30, 0, 0, dest_actor) + b"x" * 64)
        time.sleep(0.5)
        peak = rss_mib()
        try:
            closed = s.recv(16) == b""
        except (ssl.SSLError, OSError):
            closed = True
        if not closed or peak > before + 512:
            sys.exit(f"op {op}: closed {closed}, core RSS {before} -> {peak} MiB")
print(f"oversized BASP messages refused; core RSS {before} -> {rss_mib()} MiB")
PY
# One line for each: a header CAF refused by itself closes the connection just the same, so
# only the line shows that the limit saw it.
oversized_after=$(oversized_lines)
[ $((oversized_after - oversized_before)) -eq 2 ] ||
  fail "the core logged $((oversized_after - oversized_before)) oversized messages, not 2"
head -c 70000 /dev/zero | tr '\0' '#' >"$WORK/huge.toml"
printf '\n[job]\nworkload = "fashion-mlp"\n' >>"$WORK/huge.toml"
expect_error "oversized job spec" "more than a job spec may have" \
  "$G" submit "$WORK/huge.toml" --core "$core"
kill -0 "$PID_core" || fail "the core died"
"$G" status --core "$core" >"$WORK/jobs-after" || fail "status after bad bytes"
cmp -s "$WORK/jobs-before" "$WORK/jobs-after" || fail "the job list changed"
[ "$(nodes_now)" -eq 2 ] || fail "nodes changed: $(nodes_now)"

# -- what the wire shows -----------------------------------------------------------------------
# capture NAME: trains a short job on $core and fetches its parameters while tcpdump records
# the core's port; then counts how many of 64 32-byte pieces of the parameters the capture
# holds, into $found. $INSECURE is passed to the clients.
capture() {
  local name=$1 j
  start "tcpdump_$name" tcpdump -i lo -U -w "$WORK/$name.pcap" "tcp port ${core##*:}"
  sleep 1
  printf '[job]\nname = "wire"\nworkload = "fashion-mlp"\nrounds = 3\nworkers = 1\n' \
    >"$WORK/wire.toml"
  j=$("$G" submit "$WORK/wire.toml" --core "$core" ${INSECURE:-}) || fail "$name: submit"
  wait_for 120 "$name: the job to finish" bash -c \
    "'$G' status $j --core $core ${INSECURE:-} | grep -q ' done,'"
  "$G" fetch "$j" --out "$WORK/$name.ckpt" --core "$core" ${INSECURE:-} >/dev/null ||
    fail "$name: fetch"
  sleep 1
  local pid="PID_tcpdump_$name"
  kill -INT "${!pid}"
  wait "${!pid}" 2>/dev/null || true
  found=$(python3 - "$WORK/$name.ckpt" "$WORK/$name.pcap" <<'PY'
import sys
ckpt, pcap = (open(p, "rb").read() for p in sys.argv[1:3])
# Pieces from the middle of the checkpoint: the parameters (float32), not its header.
pieces = [ckpt[len(ckpt) // 4 + i * 4096:][:32] for i in range(64)]
print(sum(1 for p in pieces if len(p) == 32 and p in pcap))
PY
  )
  echo "$name capture: $found of 64 parameter pieces seen"
}
capture tls
[ "$found" = 0 ] || fail "the TLS capture shows the parameters in plain text"
# ... and it did record the traffic (an empty capture shows nothing either): the parameters
# crossed the wire, encrypted.
tls_bytes=$(stat -c %s "$WORK/tls.pcap" 2>/dev/null || echo 0)
[ "$tls_bytes" -ge 100000 ] || fail "the TLS capture holds $tls_bytes bytes: it did not record the job's traffic"

# The same on a core run with --insecure: the check sees what it looks for.
kill -KILL "$PID_core" "$PID_node1" "$PID_t_good"
core=127.0.0.1:$(free_port)
"$C" init --data-dir "$WORK/plain" >/dev/null || fail "init the plain core"
start plain "$C" --listen "$core" --data-dir "$WORK/plain" --insecure
wait_for 20 "the plain core to listen" grep -q "core listening" "$WORK/plain.log"
grep -q "NOT encrypted" "$WORK/plain.log" || fail "--insecure logged no warning"
GFLEX_API_KEY=$(cat "$WORK/plain/operator.key")
plain_token=$("$C" token create --tier core --core "$core" --insecure) || fail "plain token"
start plain_node "$BIN/gflex-node" --join "$core" --name p1 --data-dir "$WORK/p1" --tier core \
  --token "$plain_token" --insecure
wait_for 30 "the plain node to join" grep -q "joined the core" "$WORK/plain_node.log"
INSECURE=--insecure capture plain
[ "$found" -ge 32 ] || fail "the plain capture shows only $found of 64 pieces"

# -- an account made slower than the client used to wait ---------------------------------------
# Every store commit takes 20 s: the ledger's opening of the account and the gatekeeper's key
# write take some 40 s together. The client waited 30 s and said only that the core did not
# answer (exit 1), and the key, written after, was shown to nobody.
kill -KILL "$PID_plain" "$PID_plain_node"
core=127.0.0.1:$(free_port)
start plain_slow "$C" --listen "$core" --data-dir "$WORK/plain" --insecure \
  --store-commit-delay-ms 20000
wait_for 60 "the slow core to listen" grep -q "core listening" "$WORK/plain_slow.log"
created=$SECONDS
if "$C" account create user/slow --core "$core" --insecure >"$WORK/slow.key" \
  2>"$WORK/slow-create.err"; then
  echo "ok: user/slow created in $((SECONDS - created)) s"
  env "GFLEX_API_KEY=$(cat "$WORK/slow.key")" "$G" account --core "$core" --insecure |
    grep -q "^user/slow: " || fail "the slow creation's key does not open user/slow"
else
  fail "a creation of some 40 s: $(tail -2 "$WORK/slow-create.err")"
fi
((SECONDS - created >= 30)) || fail "the creation took under 30 s: nothing tested"
finish
