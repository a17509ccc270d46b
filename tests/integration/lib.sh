# Helpers for the integration tests: bounded commands, expected failures, clean-up by pid.
# Sourced by each test; BIN is the build's bin/ directory (first argument of the test).
set -euo pipefail
BIN=${1:?usage: $0 BUILD_BIN_DIR}
export SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)  # also for the tests' Python (checks.py)
WORK=$(mktemp -d /tmp/gflex-it-XXXXXX)
PIDS=()
failures=0
SKIPPED=()  # what part of a test could not run here (finish then exits 77)

# Only this script's own children are killed (a pid waited for already may belong to another
# process by now), each with its children first: a wrapper (timeout, script) killed alone
# left the client it ran going.
cleanup() {
  for pid in "${PIDS[@]}"; do
    [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$$" ] || continue
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${GFLEX_KEEP_WORK:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# expect_error NAME PATTERN CMD...: CMD must exit non-zero within 60 s and print PATTERN
# (an extended regex) on stderr, and nothing that looks like a crash.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  local rc=0
  timeout -s KILL 60 "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  rc_seen=$rc
  if [ "$rc" -eq 0 ]; then
    fail "$name: exited 0"
  elif [ "$rc" -ge 124 ]; then
    fail "$name: crashed or timed out (exit $rc): $(tail -3 "$WORK/err")"
  elif ! grep -Eq -e "$pattern" "$WORK/err"; then
    fail "$name: stderr lacks /$pattern/: $(tail -3 "$WORK/err")"
  else
    echo "ok: $name (exit $rc)"
  fi
}

# expect_usage NAME PATTERN CMD...: as expect_error, for bad usage, whose exit code is 2 (the
# README's, and what the systemd units take for "do not restart").
expect_usage() {
  local before=$failures
  expect_error "$@"
  [ "$failures" -eq "$before" ] && [ "$rc_seen" != 2 ] &&
    fail "$1: exit $rc_seen, not 2 (bad usage)"
  return 0
}

# start NAME CMD...: runs CMD in the background with its output in $WORK/NAME.log and
# remembers its pid for clean-up (SIGKILL at exit).
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      fail "timed out after ${limit}s waiting for $what"
      return 0  # recorded; the test goes on to report what else holds
    fi
    sleep 0.2
  done
}

# log_mark FILE: how many lines FILE holds now (0 while there is none), taken before a fault so
# that logged_since reads only what comes after it.
log_mark() {
  if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi
}

# logged_since MARK FILE PATTERN: whether FILE has a line matching PATTERN (grep's basic regex)
# past its first MARK lines: what a process logged before the fault (the same words from its
# start, say) cannot satisfy a wait for what it does after. (Not a pipe: grep -q ends first,
# and pipefail would take tail's SIGPIPE for no match.)
logged_since() {
  grep -q -e "$3" <(tail -n "+$(($1 + 1))" "$2" 2>/dev/null)
}

# netns_or_skip NS HOST_IF NS_IF NET: the network namespace NS joined to this one by a veth
# pair (veth_into), both removed when the test ends; where namespaces cannot be made (not
# root, no iproute2) the test exits 77, which CTest reports as skipped, not passed.
netns_or_skip() {
  if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! ip netns add "gfx-probe-$$" 2>/dev/null; then
    echo "skipped: network namespaces need root and iproute2"
    exit 77
  fi
  ip netns del "gfx-probe-$$"
  NETNS=$1 NETNS_HOST_IF=$2
  trap 'cleanup; netns_teardown' EXIT
  ip netns add "$1"
  veth_into "$@"
}

netns_teardown() {
  ip link del "$NETNS_HOST_IF" 2>/dev/null || true
  ip netns del "$NETNS" 2>/dev/null || true
}

# veth_into NS HOST_IF NS_IF NET: joins network namespace NS (made already) to this one by a
# veth pair, HOST_IF with NET.1/30 here and NS_IF with NET.2/30 there, loopback up inside.
veth_into() {
  local ns=$1 host_if=$2 ns_if=$3 net=$4
  ip link add "$host_if" type veth peer name "$ns_if"
  ip link set "$ns_if" netns "$ns"
  ip addr add "$net.1/30" dev "$host_if"
  ip link set "$host_if" up
  ip netns exec "$ns" ip addr add "$net.2/30" dev "$ns_if"
  ip netns exec "$ns" ip link set "$ns_if" up
  ip netns exec "$ns" ip link set lo up
}

# free_port: a loopback port no socket uses now and this test has not handed out before (it
# is called in subshells, so the ports given are kept in a file), below Linux's ephemeral
# range (32768 up) so that no outgoing connection takes it before its server binds it.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    grep -qx "$port" "$WORK/.ports" 2>/dev/null && continue
    ss -tan "sport = :$port" | grep -q ":$port" && continue
    echo "$port" >>"$WORK/.ports"
    echo "$port"
    return
  done
}

# start_core NAME ADDRESS DATA_DIR [ARGS...]: makes the core's credentials in DATA_DIR (the
# first time), starts the core over TLS at ADDRESS and waits for it to listen. The
# environment then holds what nodes and clients need: the pinned bundle (GFLEX_CORE_CERT),
# the operator's key (GFLEX_API_KEY) and a community join token (GFLEX_TOKEN); $TOKEN_core
# is a core-tier token (nodes started with --tier core pass --token "$TOKEN_core").
start_core() {
  local name=$1 address=$2 dir=$3
  shift 3
  if [ ! -f "$dir/operator.key" ]; then
    "$BIN/gflex-core" init --data-dir "$dir" >/dev/null || { fail "gflex-core init"; return 1; }
  fi
  export GFLEX_CORE_CERT="$dir/core-cert.pem"
  GFLEX_API_KEY=$(cat "$dir/operator.key")
  export GFLEX_API_KEY
  start "$name" "$BIN/gflex-core" --listen "$address" --data-dir "$dir" "$@"
  wait_for 20 "the core to listen" grep -q "core listening" "$WORK/$name.log"
  grep -q "core listening" "$WORK/$name.log" || return 1  # (wait_for records, and goes on)
  # One community token for all of a test's community nodes: it admits any number of keys
  # (a community token admits one by default).
  GFLEX_TOKEN=$("$BIN/gflex-core" token create --tier community --uses 0 --core "$address") ||
    fail "make a community join token"
  TOKEN_core=$("$BIN/gflex-core" token create --tier core --core "$address") ||
    fail "make a core-tier join token"
  export GFLEX_TOKEN TOKEN_core
}

# start_cluster N: a core on a free loopback port (its address in $core, pid in $PID_core)
# and N nodes named node1..nodeN; returns once all N have joined. The nodes join the core
# tier (trusted: nothing to verify) unless NODE_TIER says otherwise.
# Extra arguments for the core: CORE_ARGS; for node i: NODE_ARGS_i.
start_cluster() {
  local n=$1
  core=127.0.0.1:$(free_port)
  # shellcheck disable=SC2086
  start_core core "$core" "$WORK/core" ${CORE_ARGS:-} || return 1
  local tier=${NODE_TIER:-core} token=$GFLEX_TOKEN
  [ "$tier" = core ] && token=$TOKEN_core
  for i in $(seq 1 "$n"); do
    local extra="NODE_ARGS_$i"
    start "node$i" "$BIN/gflex-node" --join "$core" --name "node$i" --data-dir "$WORK/node$i" \
      --tier "$tier" --token "$token" ${!extra:-}
  done
  [ "$n" -eq 0 ] && return 0  # (a listing that failed would pass for none joined)
  wait_for 30 "$n nodes to join" node_count_is "$n"
}

# node_count [CORE]: how many nodes the core at CORE (default $core; a list of cores too) lists,
# counted in `gflex nodes --json` (its text has a line more for each GPU of a CUDA node and for
# a flagged node's last rejection).
node_count() {
  "$BIN/gflex" nodes --core "${1:-$core}" --json |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}

# node_count_is N [CORE]: whether the core at CORE (default $core) lists N nodes (a listing
# that fails is not 0).
node_count_is() {
  [ "$(node_count "${2:-}" 2>/dev/null)" = "$1" ]
}

# start_verifier NAME [ARGS...]: a core-tier node NAME on $core (with the core tier's token),
# started once the nodes it checks have joined, that re-computes on other arithmetic than
# theirs, as a GPU's work is re-computed on a CPU verifier. On the nodes' own kernels a
# re-computation matches bit for bit, and a tolerance that condemns honest work done on other
# arithmetic would go unseen. Their kernels are OpenBLAS's choice or the AVX2/AVX-512 ones
# gflex-node re-runs itself with, so the verifier takes the SSE3 ones (Prescott), or against
# nodes on those the AVX2 (Haswell) or AVX (Sandybridge) ones: another name alone is not other
# arithmetic (Zen's kernels compute as Haswell's). Against nodes on a GPU it keeps OpenBLAS's
# choice. Returns once NAME has joined, its kernels checked against the nodes'; where this
# CPU has no other kernels, finish exits 77 (skipped) after the other checks.
start_verifier() {
  local name=$1
  shift
  "$BIN/gflex" nodes --core "$core" --json >"$WORK/devices.json" ||
    { fail "gflex nodes --json, for the nodes' devices"; return 1; }
  local theirs
  theirs=$(kernels_of "$WORK/devices.json" "n['name'] != '$name'") ||
    { fail "the nodes' devices in gflex nodes --json"; return 1; }
  case "$theirs" in
    "" | *" "*) fail "start_verifier wants joined nodes on one kind of device, not '$theirs'"; return 1 ;;
  esac
  local coretype=Prescott  # (empty: OpenBLAS's own choice)
  if [ "$theirs" = gpu ]; then
    coretype=""
  elif [ "$theirs" = Prescott ]; then
    coretype=""
    if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
      coretype=Haswell
    elif grep -qw avx /proc/cpuinfo; then
      coretype=Sandybridge
    fi
  fi
  local env_=(env)
  [ -n "$coretype" ] && env_+=("OPENBLAS_CORETYPE=$coretype")
  start "$name" "${env_[@]}" "$BIN/gflex-node" --join "$core" --name "$name" \
    --data-dir "$WORK/$name" --tier core --token "$TOKEN_core" --backend cpu "$@"
  wait_for 30 "$name to join" bash -c "'$BIN/gflex' nodes --core $core --json |
    python3 -c 'import json,sys; sys.exit(0 if \"$name\" in [n[\"name\"] for n in json.load(sys.stdin)] else 1)'"
  "$BIN/gflex" nodes --core "$core" --json >"$WORK/devices.json" || fail "gflex nodes --json"
  local mine
  mine=$(kernels_of "$WORK/devices.json" "n['name'] == '$name'") || mine=""
  if [ -z "$mine" ]; then
    fail "$name is not listed with a device"
  elif [ "$mine" = "$theirs" ] && [ -z "$coretype" ]; then
    SKIPPED+=("re-computation on other arithmetic: the nodes run OpenBLAS's $theirs kernels, and this CPU has no other (no AVX)")
    echo "skipped: ${SKIPPED[-1]}"
  elif [ "$mine" = "$theirs" ]; then
    fail "$name re-computes on the nodes' own kernels ($mine): honest work would match bit for bit"
  elif [ -n "$coretype" ] && [ "$mine" != "$coretype" ]; then
    fail "$name was to compute with OpenBLAS's $coretype kernels, but its device names $mine"
  else
    echo "ok: $name re-computes on $mine, the nodes on $theirs"
  fi
}

# kernels_of FILE CONDITION: the kernel sets that the nodes of `gflex nodes --json` output FILE
# for which CONDITION (Python, on the node `n`) holds compute with, each once: OpenBLAS's core
# type ("cpu: OpenBLAS Haswell, 2 threads": Haswell), "gpu" for any other device.
kernels_of() {
  python3 - "$1" "$2" <<'PY'
import json, re, sys
kinds = set()
for n in json.load(open(sys.argv[1])):
    if eval(sys.argv[2]):
        m = re.match(r"cpu: OpenBLAS (\S+),", n["device"])
        kinds.add(m.group(1) if m else "gpu")
print(" ".join(sorted(kinds)))
PY
}

# expect_job_done JOB MIN_ACCURACY: waits (3 minutes at most) for JOB on $core to end, and
# checks that it is done with at least MIN_ACCURACY test accuracy.
expect_job_done() {
  local job=$1 min=$2
  wait_for 180 "$job to finish" bash -c \
    "'$BIN/gflex' status $job --core $core | grep -qE ' (done|failed|cancelled),'"
  "$BIN/gflex" status "$job" --core "$core" --json >"$WORK/final.json"
  local state acc
  state=$(json_get "$WORK/final.json" "j['state']")
  acc=$(json_get "$WORK/final.json" "j['test_accuracy']")
  [ "$state" = done ] || fail "$job ended $state"
  python3 -c "import sys; sys.exit(0 if $acc >= $min else 1)" || fail "test accuracy $acc < $min"
  FINAL_ACCURACY=$acc
}

# submit_job NAME SPEC [LIMIT_S]: runs SPEC on $core to its end (LIMIT_S, 300 s by default),
# then saves its summary as $WORK/NAME.json and the nodes' as $WORK/NAME-nodes.json.
submit_job() {
  timeout -s KILL "${3:-300}" "$BIN/gflex" submit "$2" --core "$core" --wait \
    --json "$WORK/$1.json" >"$WORK/$1.out" 2>"$WORK/$1.err" ||
    fail "$1: submit --wait failed: $(tail -3 "$WORK/$1.err")"
  "$BIN/gflex" nodes --core "$core" --json >"$WORK/$1-nodes.json" || fail "gflex nodes --json"
}

# shipped_spec WORKERS FILE: the shipped fashion-mlp spec with only `workers` changed.
shipped_spec() {
  sed -e "s/^workers = 3\$/workers = $1/" "$SRC/apps/jobs/fashion-mlp.toml" >"$2"
  grep -q "^workers = $1\$" "$2" || fail "the shipped spec has no 'workers = 3' line"
}

# key_file NAME: opens the account user/NAME on $core and writes its API key to
# $WORK/NAME.key (mode 600).
key_file() {
  (umask 077 && "$BIN/gflex-core" account create "user/$1" --core "$core" >"$WORK/$1.key") ||
    fail "account create user/$1"
}

# json_get FILE EXPR: evaluates a Python expression on the JSON object `j` in FILE.
json_get() {
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

# finish: exit 1 where a check failed; else 77 (CTest's skipped, with SKIP_RETURN_CODE) where
# part of the test could not run here (SKIPPED names what), else 0.
finish() {
  if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
  fi
  if ((${#SKIPPED[@]})); then
    printf 'skipped: %s\n' "${SKIPPED[@]}"
    echo "the other checks passed"
    exit 77
  fi
  echo "all checks passed"
}
