#!/usr/bin/env bash
# The embedding SDK as a user gets it: `cmake --install` into a fresh prefix, then the
# programs under examples/ configured with find_package(gflex 0.2) against that prefix (not
# the source tree) and built; one also built by hand with pkg-config's flags. custom_trainer
# trains its own model on an in-process cluster; pipeline_lm trains the language model from
# text files through a pipeline of stage actors; remote_trainer trains one on a real core
# (another process, over TLS, with an account's API key) and fetches the parameters.
source "$(dirname "$0")/lib.sh"
BUILD=$(cd "$BIN/.." && pwd)
PREFIX="$WORK/prefix"

cmake --install "$BUILD" --prefix "$PREFIX" >"$WORK/install.log" 2>&1 ||
  { fail "cmake --install: $(tail -3 "$WORK/install.log")"; finish; }
for f in include/gflex/gflex.hpp include/gflex/kernels/model_builder.hpp \
  lib/cmake/gflex/gflexConfig.cmake lib/cmake/gflex/gflexConfigVersion.cmake \
  lib/pkgconfig/gflex.pc bin/gflex-node; do
  [ -e "$PREFIX/$f" ] || fail "the install lacks $f"
done
[ -e "$PREFIX/include/gflex/test_aids.hpp" ] && fail "the install ships the tests' aids"

# The systemd units: valid for systemd (`systemd-analyze verify`, which also requires their
# programs to exist under this prefix), and their command lines start a real core from the
# installed programs, which then stops on SIGTERM (what `systemctl stop` sends) with exit 0.
units="$PREFIX/lib/systemd/system"
for u in gflex-core gflex-node; do
  [ -f "$units/$u.service" ] || fail "the install lacks lib/systemd/system/$u.service"
done
[ -f "$PREFIX/share/gflex/node.env.example" ] || fail "the install lacks node.env.example"
if (cd "$units" && systemd-analyze verify ./gflex-core.service ./gflex-node.service) \
  >"$WORK/verify.log" 2>&1 && [ ! -s "$WORK/verify.log" ]; then
  echo "ok: systemd-analyze verify passes on both units"
else
  fail "systemd-analyze verify: $(head -3 "$WORK/verify.log")"
fi
# A node the core refused (exit 3) or started with bad settings (exit 2) stays stopped.
[ "$(sed -n 's|^RestartPreventExitStatus=||p' "$units/gflex-node.service")" = "2 3" ] ||
  fail "the node unit restarts a node the core refused (RestartPreventExitStatus is not 2 3)"
[ "$(sed -n 's|^RestartPreventExitStatus=||p' "$units/gflex-core.service")" = "2" ] ||
  fail "the core unit restarts a core whose flags are wrong, or not a deposed leader (RestartPreventExitStatus is not 2)"
echo "ok: the node unit does not restart a refused node"
unit_line() { # unit_line UNIT KEY: the unit's KEY= value, with the state directory in $WORK
  sed -n "s|^$2=||p" "$units/$1.service" | sed "s|/var/lib/$1|$WORK/$1-state|g"
}
mkdir -p "$WORK/gflex-core-state"
svc_port=$(free_port)
GFLEX_LISTEN=127.0.0.1:$svc_port GFLEX_CORE_ARGS= bash -c "$(unit_line gflex-core ExecStartPre | sed "s|^/bin/sh -c '||; s|'\$||")" \
  >"$WORK/svc-init.log" 2>&1 || fail "the core unit's ExecStartPre: $(tail -2 "$WORK/svc-init.log")"
[ -f "$WORK/gflex-core-state/operator.key" ] || fail "the core unit's first start made no credentials"
start svc_core env GFLEX_LISTEN=127.0.0.1:$svc_port GFLEX_CORE_ARGS= bash -c "exec $(unit_line gflex-core ExecStart)"
wait_for 20 "the unit's core to listen" grep -q "core listening on 127.0.0.1:$svc_port" "$WORK/svc_core.log"
kill -TERM "$PID_svc_core"
rc=0
timeout 15 tail --pid="$PID_svc_core" -f /dev/null ||
  { fail "the unit's core did not stop on SIGTERM"; kill -KILL "$PID_svc_core" 2>/dev/null || true; }
wait "$PID_svc_core" || rc=$?
[ "$rc" -eq 0 ] && echo "ok: the core unit's command lines start a core from the install; SIGTERM stops it" ||
  fail "the unit's core exited $rc on SIGTERM: $(tail -2 "$WORK/svc_core.log")"
# The public headers are free of CAF, Cap'n Proto and LMDB.
if grep -rlE '#include <(caf/|capnp/|kj/|lmdb)' "$PREFIX/include" >"$WORK/leaks"; then
  fail "public headers include internal libraries: $(cat "$WORK/leaks")"
fi

gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$SRC/examples" -B "$WORK/examples" "${gen[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_BUILD_TYPE=Release >"$WORK/configure.log" 2>&1 ||
  fail "configure the examples: $(tail -5 "$WORK/configure.log")"
cmake --build "$WORK/examples" >"$WORK/build.log" 2>&1 ||
  fail "build the examples: $(tail -5 "$WORK/build.log")"
grep -q "$PREFIX/lib/cmake/gflex" "$WORK/examples/CMakeCache.txt" ||
  fail "the examples did not find gflex in the prefix"
# An SDK older than a program asks for is refused by find_package's version check.
sed 's/find_package(gflex 0.2 /find_package(gflex 9.0 /' "$SRC/examples/CMakeLists.txt" \
  >"$WORK/too-new.txt"
mkdir -p "$WORK/too-new" && cp -r "$SRC/examples/custom_trainer" "$SRC/examples/remote_trainer" \
  "$SRC/examples/pipeline_lm" "$WORK/too-new/" && cp "$WORK/too-new.txt" "$WORK/too-new/CMakeLists.txt"
if cmake -S "$WORK/too-new" -B "$WORK/too-new-build" -DCMAKE_PREFIX_PATH="$PREFIX" \
  >"$WORK/too-new.log" 2>&1; then
  fail "find_package(gflex 9.0) accepted SDK 0.2"
else
  grep -q "version: 0.2.0" "$WORK/too-new.log" && echo "ok: find_package(gflex 9.0) refuses 0.2.0" ||
    fail "find_package(gflex 9.0): $(tail -3 "$WORK/too-new.log")"
fi
# pkg-config's flags build the same program.
flags=$(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --cflags --libs gflex) ||
  fail "pkg-config gflex"
# shellcheck disable=SC2086
c++ "$SRC/examples/custom_trainer/main.cpp" -o "$WORK/custom_trainer_pc" $flags \
  -Wl,-rpath,"$PREFIX/lib" 2>"$WORK/pc.log" || fail "build with pkg-config: $(tail -3 "$WORK/pc.log")"
# Run, not only linked: a library it cannot load exits 127, a crash 134 or 139.
rc=0
"$WORK/custom_trainer_pc" 0 >/dev/null 2>"$WORK/custom_trainer_pc.err" || rc=$?
[ "$rc" = 2 ] && grep -q "^usage: custom_trainer" "$WORK/custom_trainer_pc.err" ||
  fail "custom_trainer built with pkg-config's flags, given 0 nodes: exit $rc, $(head -2 "$WORK/custom_trainer_pc.err")"

# custom_trainer: its own model on an in-process cluster of 2 nodes.
timeout -s KILL 180 "$WORK/examples/custom_trainer/custom_trainer" 2 8 >"$WORK/custom.out" \
  2>"$WORK/custom.err" || fail "custom_trainer: $(tail -3 "$WORK/custom.err")"
acc=$(sed -n 's/.*: done, test accuracy \([0-9.]*\) after 8 rounds/\1/p' "$WORK/custom.out")
python3 -c "import sys; sys.exit(0 if float('${acc:-0}') >= 0.80 else 1)" ||
  fail "custom_trainer: accuracy '${acc}' < 0.80: $(tail -3 "$WORK/custom.out")"
grep -q "type = 'add', with = 'h1'" "$WORK/custom.out" ||
  fail "custom_trainer did not print its model: $(head -12 "$WORK/custom.out")"
grep -q "fetched 118282 parameters in 6 blocks (layer0.weight first)" "$WORK/custom.out" ||
  fail "custom_trainer did not fetch its parameters: $(tail -2 "$WORK/custom.out")"
echo "ok: custom_trainer (installed SDK): its residual MLP reached $acc in 8 rounds"

# pipeline_lm: text files -> tokenize -> shuffle -> batch -> train -> evaluate -> sink, on an
# in-process cluster, on four fortune files (the last, in name order, held out).
mkdir -p "$WORK/text"
for f in art computers cookie debian; do cp "/usr/share/games/fortunes/$f" "$WORK/text/"; done
timeout -s KILL 300 "$WORK/examples/pipeline_lm/pipeline_lm" "$WORK/lm" --text "$WORK/text" \
  --nodes 2 --rounds 4 --steps 20 >"$WORK/pipeline.out" 2>"$WORK/pipeline.err" ||
  fail "pipeline_lm: $(tail -3 "$WORK/pipeline.err") $(tail -3 "$WORK/pipeline.out")"
python3 - "$WORK/lm/loss.csv" <<'PY' || fail "pipeline_lm's loss.csv: $(cat "$WORK/lm/loss.csv")"
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) >= 2, "fewer than 2 rounds recorded"
assert int(rows[-1]["round"]) == 4, "the last round is not 4"
bits = [float(r["held_out_bits"]) for r in rows]
assert all(math.isfinite(b) and 0 < b < 8 for b in bits), bits
assert bits[-1] < bits[0], f"held-out bits did not fall: {bits}"
PY
# A held-out file too short for one sample: refused before the cluster starts (it failed
# after the first round was trained and paid for).
mkdir -p "$WORK/short"
cp /usr/share/games/fortunes/art "$WORK/short/"
printf 'too short' >"$WORK/short/zz-notes"
expect_error "pipeline_lm with a short held-out file" "zz-notes: the held-out text .* has 9 bytes, fewer than one sample" \
  "$WORK/examples/pipeline_lm/pipeline_lm" "$WORK/lm-short" --text "$WORK/short" --nodes 2 --rounds 4
grep -Eq "^stage tokenize +flat_map +in +[0-9]+ out +[0-9]+ restarts 0" "$WORK/pipeline.out" ||
  fail "pipeline_lm printed no stage report: $(tail -9 "$WORK/pipeline.out")"
"$PREFIX/bin/gflex" sample "$WORK/lm/lm.ckpt" --prompt "The " --tokens 20 >"$WORK/lm.sample" \
  2>"$WORK/lm.sample.err" || fail "gflex sample on pipeline_lm's checkpoint: $(cat "$WORK/lm.sample.err")"
echo "ok: pipeline_lm (installed SDK): $(tail -1 "$WORK/lm/loss.csv" | cut -d, -f1,4) (round, held-out bits/byte)"

# remote_trainer with the operator's key against a real core in another process and three
# nodes. One node is killed (SIGKILL) while the job runs: the trainer is told it was lost, and
# the job ends on the other two.
start_cluster 3
echo "$GFLEX_API_KEY" >"$WORK/operator.key"
timeout -s KILL 180 "$WORK/examples/remote_trainer/remote_trainer" "$core" "$WORK/operator.key" \
  "$GFLEX_CORE_CERT" 60 "$WORK/operator.gfck" >"$WORK/operator.out" 2>"$WORK/operator.err" &
trainer=$!
PIDS+=("$trainer")
wait_for 60 "remote_trainer's round 2" grep -q "^round [2-9]" "$WORK/operator.out"
kill -KILL "$PID_node3"
rc=0
wait "$trainer" || rc=$?
[ "$rc" = 0 ] ||
  fail "remote_trainer (exit $rc): $(tail -3 "$WORK/operator.err") $(tail -3 "$WORK/operator.out")"
grep -q ": done, test accuracy" "$WORK/operator.out" ||
  fail "remote_trainer: $(tail -3 "$WORK/operator.out")"
[ "$(grep -c "^node node[123] joined (core tier)" "$WORK/operator.out")" = 3 ] ||
  fail "remote_trainer did not report the 3 nodes joining: $(grep node "$WORK/operator.out")"
grep -q "^node node3 lost" "$WORK/operator.out" ||
  fail "remote_trainer was not told node3 was lost: $(grep node "$WORK/operator.out")"
grep -q "^node node[12] lost" "$WORK/operator.out" &&
  fail "remote_trainer reported a live node lost: $(grep node "$WORK/operator.out")"
echo "ok: remote_trainer followed the job as node3 was killed: $(grep -c "^round" "$WORK/operator.out") round reports, $(grep "lost" "$WORK/operator.out")"
# The same with an account's API key, paid from its credits: the job and its bill, no nodes
# (the operator's to see).
key_file carol
"$BIN/gflex-core" account credit user/carol 10 --core "$core" >/dev/null || fail "credit user/carol"
timeout -s KILL 180 "$WORK/examples/remote_trainer/remote_trainer" "$core" "$WORK/carol.key" \
  "$GFLEX_CORE_CERT" 6 "$WORK/remote.gfck" user/carol:5 >"$WORK/remote.out" 2>"$WORK/remote.err" ||
  fail "remote_trainer: $(tail -3 "$WORK/remote.err") $(tail -3 "$WORK/remote.out")"
grep -q ": done, test accuracy" "$WORK/remote.out" || fail "remote_trainer: $(tail -3 "$WORK/remote.out")"
grep -q "^node " "$WORK/remote.out" && fail "an account's trainer saw the nodes: $(grep node "$WORK/remote.out")"
grep -q "^bill: +[0-9]* micro-credits" "$WORK/remote.out" ||
  fail "remote_trainer reported no bill: $(tail -4 "$WORK/remote.out")"
[ -s "$WORK/remote.gfck" ] || fail "remote_trainer wrote no parameters"
"$BIN/gflex" sample "$WORK/remote.gfck" --prompt x >/dev/null 2>"$WORK/sample.err" &&
  fail "an image model's checkpoint was sampled as text"
grep -q "is not a byte-level language model" "$WORK/sample.err" ||
  fail "the fetched checkpoint is not remote_trainer's model: $(cat "$WORK/sample.err")"
echo "ok: remote_trainer (installed SDK): $(tail -2 "$WORK/remote.out" | head -1)"
# A budget 5 micro-credits above one round's escrow (2 workers x 10 credits an hour x 120 s,
# 0.666667 credits): the job pauses once its first round is paid for, and the trainer says so
# and why (it waited in silence); a top-up with the account's key resumes it to its end.
key_file dave
"$BIN/gflex-core" account credit user/dave 10 --core "$core" >/dev/null || fail "credit user/dave"
timeout -s KILL 180 "$WORK/examples/remote_trainer/remote_trainer" "$core" "$WORK/dave.key" \
  "$GFLEX_CORE_CERT" 4 "$WORK/dave.gfck" user/dave:0.666672 >"$WORK/dave.out" 2>"$WORK/dave.err" &
dave_trainer=$!
wait_for 90 "remote_trainer to say its job paused" grep -q "^job-[0-9]* paused: .*budget" "$WORK/dave.out"
dave_job=$(sed -n 's/^submitted //p' "$WORK/dave.out")
GFLEX_API_KEY=$(cat "$WORK/dave.key") "$BIN/gflex" topup "$dave_job" 5 --core "$core" >/dev/null ||
  fail "gflex topup $dave_job"
rc=0
wait "$dave_trainer" || rc=$?
[ "$rc" = 0 ] && grep -q ": done, test accuracy" "$WORK/dave.out" &&
  echo "ok: remote_trainer said why its job paused ($(grep -m1 ' paused: ' "$WORK/dave.out" | cut -c1-80)...) and followed it to its end after a top-up" ||
  fail "remote_trainer on a paused job: exit $rc, $(tail -3 "$WORK/dave.out") $(tail -2 "$WORK/dave.err")"
# A wrong key gets the core's refusal as a value, not a crash.
echo "gfk_0000000000000000000000000000000000000000000000000000000000000000" >"$WORK/bad.key"
rc=0
timeout -s KILL 60 "$WORK/examples/remote_trainer/remote_trainer" "$core" "$WORK/bad.key" \
  "$GFLEX_CORE_CERT" 1 >"$WORK/bad.out" 2>"$WORK/bad.err" || rc=$?
[ "$rc" = 1 ] && grep -qi "key" "$WORK/bad.err" && echo "ok: a wrong API key is refused (exit 1)" ||
  fail "remote_trainer with a wrong key: exit $rc, $(cat "$WORK/bad.err")"
finish
