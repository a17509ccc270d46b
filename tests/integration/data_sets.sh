#!/usr/bin/env bash
# Users' data sets: `gflex data push` in each format (idx, npy, tokens) stores a set that
# belongs to the pushing account (another account neither sees nor uses it); bad files are
# refused with a message naming what is wrong, and store nothing; a user-defined model trains
# on a pushed set as a job on two node processes; the sets survive a core restart; `data rm`
# removes one.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"
C="$BIN/gflex-core"
# Nodes that ask nothing: alice's jobs name no paying account.
NODE_ARGS_1="--price 0" NODE_ARGS_2="--price 0" start_cluster 2

key_file alice
key_file bob
ALICE=(env "GFLEX_API_KEY=$(cat "$WORK/alice.key")")
BOB=(env "GFLEX_API_KEY=$(cat "$WORK/bob.key")")

# -- files: a slice of Fashion-MNIST as IDX and as .npy; a text file of bytes --------------
src=/usr/share/datasets/fashion-mnist
python3 - "$src" "$WORK" <<'PY'
import gzip, struct, sys
src, work = sys.argv[1], sys.argv[2]
def idx(name):
    with gzip.open(f"{src}/{name}.gz") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]
(n, h, w), images = idx("train-images-idx3-ubyte")
(_,), labels = idx("train-labels-idx1-ubyte")
n = 12000
images, labels = images[:n * h * w], labels[:n]
def write_idx(path, dims, payload):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + payload)
write_idx(f"{work}/images.idx", (n, h, w), images)
write_idx(f"{work}/labels.idx", (n,), labels)
def write_npy(path, descr, shape, payload):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload)
# Standardised features (real values, not pixels) and int64 labels.
feats = struct.pack("<%df" % (n * h * w), *[(b / 255.0 - 0.29) / 0.35 for b in images])
write_npy(f"{work}/x.npy", "<f4", (n, h * w), feats)
write_npy(f"{work}/y.npy", "<i8", (n,), struct.pack("<%dq" % n, *labels))
write_npy(f"{work}/ysorted.npy", "<i8", (n,), struct.pack("<%dq" % n, *sorted(labels)))
# Bad files: truncated, a wrong dtype, a label outside the classes, Fortran order.
write_npy(f"{work}/short.npy", "<f4", (n, h * w), feats[: len(feats) // 2])
write_npy(f"{work}/complex.npy", "<c8", (n, h * w), feats + feats)
bad = bytearray(struct.pack("<%dq" % n, *labels)); bad[8 * 7] = 12
write_npy(f"{work}/y12.npy", "<i8", (n,), bytes(bad))
# 300 classes: the core takes up to 65,536, and the CLI refused more than 256.
write_npy(f"{work}/x4.npy", "<f4", (600, 4), struct.pack("<2400f", *[i % 7 * 0.1 for i in range(2400)]))
write_npy(f"{work}/y300.npy", "<i8", (600,), struct.pack("<600q", *[i % 300 for i in range(600)]))
with open(f"{work}/fortran.npy", "wb") as f:
    header = "{'descr': '<f4', 'fortran_order': True, 'shape': (%d, %d), }" % (n, h * w)
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + feats)
PY
[ -f "$WORK/x.npy" ] || fail "test files not written"
head -c 300000 /usr/share/games/fortunes/fortunes >"$WORK/text.txt"

# -- bad files and names: refused, nothing stored ----------------------------------------
expect_error "truncated npy" "short.npy: holds .* data bytes, the header says .* \(truncated\)" \
  "${ALICE[@]}" "$G" data push bad "$WORK/short.npy" --format npy --labels "$WORK/y.npy" --core "$core"
expect_error "complex dtype" "complex.npy: dtype '<c8' is not supported" \
  "${ALICE[@]}" "$G" data push bad "$WORK/complex.npy" --format npy --labels "$WORK/y.npy" --core "$core"
expect_error "label outside the classes" "y12.npy: label 12 of sample 7 is outside \[0, 10\)" \
  "${ALICE[@]}" "$G" data push bad "$WORK/x.npy" --format npy --labels "$WORK/y12.npy" --classes 10 --core "$core"
expect_error "fortran order" "fortran.npy: Fortran-ordered arrays are not supported" \
  "${ALICE[@]}" "$G" data push bad "$WORK/fortran.npy" --format npy --labels "$WORK/y.npy" --core "$core"
expect_error "labels of another length" "12000 samples but labels of shape \[10000\]" \
  "${ALICE[@]}" "$G" data push bad "$WORK/images.idx" --format idx \
  --labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz --core "$core"
expect_error "idx as npy" "images.idx: not an .npy file" \
  "${ALICE[@]}" "$G" data push bad "$WORK/images.idx" --format npy --labels "$WORK/y.npy" --core "$core"
expect_error "bad name" "data set name must be 1-64 of" \
  "${ALICE[@]}" "$G" data push "no/slashes" "$WORK/text.txt" --format tokens --core "$core"
expect_error "a built-in name" "names a built-in data set" \
  "${ALICE[@]}" "$G" data push fortunes "$WORK/text.txt" --format tokens --core "$core"
# Flags a text does not take, and more shards than samples: refused, not ignored.
expect_usage "labels with tokens" "--labels: not with --format tokens" \
  "${ALICE[@]}" "$G" data push t "$WORK/text.txt" --format tokens --labels "$WORK/none.idx" --core "$core"
expect_usage "classes with tokens" "--classes: not with --format tokens" \
  "${ALICE[@]}" "$G" data push t "$WORK/text.txt" --format tokens --classes 10 --core "$core"
expect_usage "more shards than samples" "--shards 50: the training split has [0-9] samples" \
  "${ALICE[@]}" "$G" data push t "$WORK/text.txt" --format tokens --context 2000 \
  --test-fraction 0.5 --shards 50 --core "$core"
# What the core refuses as bad input exits 2, as the client's own checks do (it was 1, the
# code of a failed run, which a script retries).
expect_usage "rm of an unknown set" "nope" "${ALICE[@]}" "$G" data rm nope --core "$core"
expect_usage "status of an unknown job" "job-999" "${ALICE[@]}" "$G" status job-999 --core "$core"
expect_usage "cancel of an unknown job" "job-999" "${ALICE[@]}" "$G" cancel job-999 --core "$core"
# Each listing must succeed: a failed one prints nothing, which read as an empty list.
listed=$("${ALICE[@]}" "$G" data list --core "$core") || fail "alice's data list failed"
[ -z "$listed" ] || fail "a refused push stored something"

# -- good pushes ---------------------------------------------------------------------------
"${ALICE[@]}" "$G" data push fm-idx "$WORK/images.idx" --format idx --labels "$WORK/labels.idx" \
  --classes 10 --core "$core" --json >"$WORK/idx.json" || fail "push idx"
"${ALICE[@]}" "$G" data push fm-npy "$WORK/x.npy" --format npy --labels "$WORK/y.npy" \
  --core "$core" --json >"$WORK/npy.json" 2>"$WORK/npy.err" || fail "push npy"
"${ALICE[@]}" "$G" data push text "$WORK/text.txt" --format tokens --context 32 \
  --core "$core" --json >"$WORK/tokens.json" || fail "push tokens"
[ "$(json_get "$WORK/idx.json" "(j['train_samples'], j['test_samples'], j['classes'])")" = "(10800, 1200, 10)" ] ||
  fail "idx set: $(cat "$WORK/idx.json")"
[ "$(json_get "$WORK/npy.json" "(j['sample_values'], j['tokens'])")" = "(784, False)" ] || fail "npy set"
[ "$(json_get "$WORK/tokens.json" "(j['sample_values'], j['classes'], j['tokens'])")" = "(33, 256, True)" ] ||
  fail "tokens set: $(cat "$WORK/tokens.json")"
# Cut as the core cuts its own sets, 3,000 training samples a shard, and one test shard (cut
# only by size, 1.5 MB of text made one training shard, and no job of two workers could use
# it; test_user_data has that case).
[ "$(json_get "$WORK/tokens.json" "j['shards'] == -(-j['train_samples'] // 3000) + 1")" = "True" ] ||
  fail "tokens set's shards: $(cat "$WORK/tokens.json")"
listed=$("${ALICE[@]}" "$G" data list --core "$core") || fail "alice's data list failed"
[ "$(printf '%s\n' "$listed" | wc -l)" -eq 3 ] || fail "alice should have 3 data sets"
listed=$("${BOB[@]}" "$G" data list --core "$core") || fail "bob's data list failed"
[ -z "$listed" ] || fail "bob sees alice's data sets"
echo "ok: idx, npy and tokens pushed; only alice sees them"
# Two accounts' sets of one name: the operator's key sees both, and `data show` says which to
# pick rather than show the first of them.
"${BOB[@]}" "$G" data push text "$WORK/text.txt" --format tokens --context 32 \
  --core "$core" >/dev/null || fail "bob's push of a set named as one of alice's"
expect_usage "the operator's data show of a name two accounts hold" \
  "data sets 'text' of several accounts .user/alice, user/bob.: say which with --owner" \
  "$G" data show text --core "$core"
"$G" data show text --owner user/bob --core "$core" --json >"$WORK/bob-text.json" ||
  fail "the operator's data show --owner user/bob"
[ "$(json_get "$WORK/bob-text.json" "(j['owner'], j['usable'])")" = "('user/bob', True)" ] ||
  fail "data show --owner: $(cat "$WORK/bob-text.json")"
"${BOB[@]}" "$G" data rm text --core "$core" >/dev/null || fail "bob's data rm"
echo "ok: the operator's data show names the account where two hold a set's name"
# A core machine that is off (its packets dropped) listed first: the client passes over it in
# seconds. CAF's blocking connect held it for the kernel's SYN retries, about 2 minutes.
cat >"$WORK/blackhole.py" <<'PY'
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)  # an accept queue of one, never accepted: once full, connection requests drop
fill = []
for _ in range(3):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(s.getsockname())
    fill.append(c)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(600)
PY
start blackhole python3 "$WORK/blackhole.py" "$WORK/blackhole.port"
wait_for 10 "the black hole's port" test -s "$WORK/blackhole.port"
began=$SECONDS
timeout -s KILL 60 "${ALICE[@]}" "$G" data list --core "127.0.0.1:$(cat "$WORK/blackhole.port"),$core" \
  >/dev/null 2>"$WORK/bh.err" || fail "data list past a silent core: $(tail -2 "$WORK/bh.err")"
took=$((SECONDS - began))
[ "$took" -le 15 ] && echo "ok: a silent core listed first is passed over in ${took}s" ||
  fail "a silent core listed first held the client ${took}s"
kill -KILL "$PID_blackhole" 2>/dev/null || true
# Labels sorted by class: the held-out last part is of the last classes only. Said, and
# stored all the same; shuffled ones are not warned of.
"${ALICE[@]}" "$G" data push sorted "$WORK/x.npy" --format npy --labels "$WORK/ysorted.npy" \
  --core "$core" >/dev/null 2>"$WORK/sorted.err" || fail "push sorted"
grep -q "the samples look sorted by class" "$WORK/sorted.err" ||
  fail "no warning of samples sorted by class: $(cat "$WORK/sorted.err")"
! grep -q "sorted by class" "$WORK/npy.err" || fail "shuffled samples were said to be sorted"
"${ALICE[@]}" "$G" data rm sorted --core "$core" >/dev/null || fail "remove the sorted set"
echo "ok: samples sorted by class are warned of"
expect_usage "data show of a set that is not there" "no data set 'nope'" \
  "${ALICE[@]}" "$G" data show nope --core "$core"
# Text is held out every 1/F-th sample (it was every 10th whatever --test-fraction said).
"${ALICE[@]}" "$G" data push text-q "$WORK/text.txt" --format tokens --context 32 \
  --test-fraction 0.25 --shards 6 --core "$core" --json >"$WORK/tokens-q.json" || fail "push tokens at 0.25"
[ "$(json_get "$WORK/tokens-q.json" "j['shards']")" = "7" ] ||
  fail "--shards 6 gave: $(cat "$WORK/tokens-q.json")"
python3 - "$WORK/tokens-q.json" <<'PY' || fail "tokens at --test-fraction 0.25: $(cat "$WORK/tokens-q.json")"
import json, sys
j = json.load(open(sys.argv[1]))
held = j["test_samples"] / (j["train_samples"] + j["test_samples"])
assert 0.23 < held < 0.27, held
PY
"${ALICE[@]}" "$G" data rm text-q --core "$core" || fail "remove text-q"
"${ALICE[@]}" "$G" data push wide "$WORK/x4.npy" --format npy --labels "$WORK/y300.npy" \
  --core "$core" --json >"$WORK/wide.json" || fail "push 300 classes"
[ "$(json_get "$WORK/wide.json" "j['classes']")" = "300" ] || fail "300 classes: $(cat "$WORK/wide.json")"
"${ALICE[@]}" "$G" data rm wide --core "$core" || fail "remove wide"
echo "ok: --shards and 300 classes pushed"
# A fraction that is not 1/k: refused, not taken as the nearest (0.4 held out 50%).
expect_error "tokens at --test-fraction 0.4" \
  "--test-fraction 0.4: tokens are held out every k-th sample, so the fraction is 1/k: give 0.5 or 0.3333333333333333" \
  "${ALICE[@]}" "$G" data push text-f "$WORK/text.txt" --format tokens --test-fraction 0.4 --core "$core"

# -- a user's model on a pushed set, as a job; bob cannot name alice's set ----------------
spec="$WORK/job.toml"
cat >"$spec" <<'TOML'
[job]
name = "on-pushed"
rounds = 6
workers = 2

[inner]
local_steps = 30
batch_size = 64
lr = 0.002

[market]
max_price = 0

[data]
set = "fm-npy"

[model]
input = [784]
layers = [
  { type = "linear", units = 64 }, { type = "relu" },
  { type = "linear", units = 10 }, { type = "softmax_xent" },
]
TOML
expect_error "another account's set" "user/bob has no data set 'fm-npy'" \
  "${BOB[@]}" "$G" submit "$spec" --core "$core"
sed -e 's/^set = "fm-npy"/set = "text"/' "$spec" >"$WORK/mismatch.toml"
expect_error "a set that does not fit the model" "'text' has 33 tokens per sample and 256 classes" \
  "${ALICE[@]}" "$G" submit "$WORK/mismatch.toml" --core "$core"
# More workers than the data set has shards: a round could never fill. Refused at submit, on a
# pushed set and on a built-in one alike (a job on a built-in set was accepted, then failed).
sed -e 's/^workers = 2/workers = 64/' "$spec" >"$WORK/wide.toml"
expect_error "more workers than a pushed set's shards" \
  "job.workers: 64 workers, but the data set has only [0-9]+ shards" \
  "${ALICE[@]}" "$G" submit "$WORK/wide.toml" --core "$core"
printf '[job]\nname = "wide"\nworkload = "fashion-mlp"\nrounds = 2\nworkers = 40\n[market]\nmax_price = 0\n' \
  >"$WORK/wide-builtin.toml"
expect_usage "more workers than a built-in set's shards" \
  "job spec: job.workers: 40 workers, but the data set has only 20 shards" \
  "${ALICE[@]}" "$G" submit "$WORK/wide-builtin.toml" --core "$core" --wait
grep -q "failed" "$WORK/err" && fail "the wide built-in job was accepted, then failed"
# A job followed with --wait and cancelled before its first evaluation: its progress bar ends
# at the round it stopped at (a full bar, 100%, was drawn for a job that failed or was
# cancelled).
printf '[job]\nname = "stopped"\nworkload = "fashion-mlp"\nrounds = 1000\nworkers = 1\n[eval]\nevery = 1000\n[market]\nmax_price = 0\n' \
  >"$WORK/stopped.toml"
"${ALICE[@]}" "$G" submit "$WORK/stopped.toml" --core "$core" --wait \
  >"$WORK/stopped.out" 2>"$WORK/stopped.err" &
PIDS+=($!)
follower=$!
wait_for 30 "the stopped job's id" test -s "$WORK/stopped.out"
stopped=$(head -1 "$WORK/stopped.out")
"${ALICE[@]}" "$G" cancel "$stopped" --core "$core" >/dev/null || fail "cancel $stopped"
wait "$follower" || true
grep -Eq '\] +[0-9]+% round [0-9]+/1000 .*\| cancelled \|' "$WORK/stopped.err" &&
  ! grep -q "100%" "$WORK/stopped.err" ||
  fail "the cancelled job's progress bar: $(grep -F '%' "$WORK/stopped.err" | tail -1)"
# Never evaluated: said so, where its test accuracy read 0.0000, as if the model learnt nothing.
grep -Eq "^$stopped cancelled: not yet evaluated after [0-9]+ rounds" "$WORK/stopped.out" ||
  fail "the cancelled job's summary: $(tail -1 "$WORK/stopped.out")"
grep -q "| not yet evaluated |" "$WORK/stopped.err" ||
  fail "the cancelled job's progress: $(tail -1 "$WORK/stopped.err")"
"${ALICE[@]}" "$G" status "$stopped" --core "$core" >"$WORK/stopped.status" || fail "status $stopped"
grep -Eq "^$stopped stopped: cancelled, round [0-9]+/1000, not yet evaluated, loss" "$WORK/stopped.status" ||
  fail "status of a job never evaluated: $(cat "$WORK/stopped.status")"
# A submit asked again with its submission id (as after a lost answer) is answered with the
# job the first one made, never a second job; the same id with another spec is refused.
first=$("${ALICE[@]}" "$G" submit "$WORK/stopped.toml" --core "$core" --submission-id run-42) ||
  fail "submit with --submission-id"
again=$("${ALICE[@]}" "$G" submit "$WORK/stopped.toml" --core "$core" --submission-id run-42) ||
  fail "submit again with --submission-id"
[ "$first" = "$again" ] || fail "the same submission id made $first, then $again"
"${ALICE[@]}" "$G" cancel "$first" --core "$core" >/dev/null || fail "cancel $first"
sed 's/^rounds = 1000$/rounds = 999/' "$WORK/stopped.toml" >"$WORK/stopped-999.toml"
expect_error "the same submission id with another spec" \
  "submission id 'run-42' made $first from another spec; nothing was submitted" \
  "${ALICE[@]}" "$G" submit "$WORK/stopped-999.toml" --core "$core" --submission-id run-42
expect_error "a malformed submission id" "submission id" \
  "${ALICE[@]}" "$G" submit "$WORK/stopped.toml" --core "$core" --submission-id "a b"
echo "ok: a submission id asked again gives its first job ($first); another spec is refused"
timeout -s KILL 240 "${ALICE[@]}" "$G" submit "$spec" --core "$core" --wait --json "$WORK/job.json" \
  >"$WORK/job.out" 2>"$WORK/job.err" || fail "job on the pushed set: $(tail -3 "$WORK/job.err")"
acc=$(json_get "$WORK/job.json" "j['test_accuracy']")
python3 -c "import sys; sys.exit(0 if $acc >= 0.75 else 1)" || fail "job on fm-npy: accuracy $acc"
echo "ok: a model trained on alice's pushed npy set: test accuracy $acc"
# The same model on the same files in one process, as many samples: the job is as good.
timeout -s KILL 120 "$G" train --spec "$spec" --data "$WORK/x.npy" --format npy \
  --labels "$WORK/y.npy" --max-steps 360 --batch-size 64 --lr 0.002 --json "$WORK/local.json" \
  >"$WORK/local.out" 2>&1 || fail "gflex train --data: $(tail -3 "$WORK/local.out")"
local_acc=$(json_get "$WORK/local.json" "j['test_accuracy']")
python3 -c "import sys; sys.exit(0 if $acc >= $local_acc - 0.03 else 1)" ||
  fail "the job reached $acc, the same model in one process $local_acc"
echo "ok: the same model on the same files in one process: $local_acc"
expect_error "--data without --spec" "--data: needs --spec" "$G" train --data "$WORK/x.npy"

# -- the sets survive a restart of the core; rm removes one ------------------------------
kill -KILL "$PID_core"
wait "$PID_core" 2>/dev/null || true  # gone (its data directory's lock with it) before the next
start core2 "$C" --listen "$core" --data-dir "$WORK/core"
wait_for 20 "the core to listen again" grep -q "core listening" "$WORK/core2.log"
wait_for 20 "the data sets to load" grep -q "3 data set(s) loaded" "$WORK/core2.log"
[ "$("${ALICE[@]}" "$G" data list --core "$core" | wc -l)" -eq 3 ] || fail "data sets lost in the restart"
"${ALICE[@]}" "$G" data rm text --core "$core" >/dev/null || fail "data rm"
expect_error "rm twice" "user/alice has no data set 'text'" "${ALICE[@]}" "$G" data rm text --core "$core"
[ "$("${ALICE[@]}" "$G" data list --core "$core" | wc -l)" -eq 2 ] || fail "rm did not remove"
"${ALICE[@]}" "$G" data show fm-idx --core "$core" | grep -q "10800 training and 1200 test samples" ||
  fail "data show"
echo "ok: the sets survived the restart; rm removed one"
finish
