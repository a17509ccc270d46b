#!/usr/bin/env bash
# User-defined models (a [model] table in the job spec): bad models are refused before
# anything is sent, each error naming the layer and the key; a model that is not one of the
# shipped ones trains in `gflex train` and then as a distributed job on two node processes,
# which plan it with their own kernels, to the accuracy the one-process trainer reaches; and
# the shipped language model (apps/jobs/lm.toml) runs as a distributed job on fortunes and
# reports its held-out loss in bits per byte, and reaches at most 2.8 bits per byte in one
# process; text sampled from the job's checkpoint; a restarted core serves both ended jobs'
# models again.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

# -- bad models: refused by `gflex submit` before it connects (no core at port 1) ---------
spec_with() {  # spec_with FILE LAYERS [EXTRA_MODEL_KEYS]: a fashion-mnist job with a model
  printf '[job]\nrounds = 2\n\n[data]\nset = "fashion-mnist"\n\n[model]\ninput = [784]\n%s\nlayers = [\n%s\n]\n' \
    "${3:-}" "$2" >"$1"
}
bad="$WORK/bad.toml"
spec_with "$bad" '{ type = "linear", units = 10 }, { type = "softmax" },'
expect_error "unknown layer type" "model.layers\[1\].type: unknown layer type 'softmax'" \
  "$G" submit "$bad" --core 127.0.0.1:1
spec_with "$bad" '{ type = "conv2d", filters = 4, kernel = 3 }, { type = "softmax_xent" },'
expect_error "conv2d on a flat input" \
  "model.layers\[0\] \(conv2d\): takes \[height, width, channels\] input, got \[784\]" \
  "$G" submit "$bad" --core 127.0.0.1:1
spec_with "$bad" '{ type = "linear", units = 10, name = "a" }, { type = "linear", units = 5 }, { type = "add", with = "a" }, { type = "softmax_xent" },'
expect_error "residual of another shape" \
  "model.layers\[2\] \(add\).with: adds 'a' of shape \[10\] to input of shape \[5\]" \
  "$G" submit "$bad" --core 127.0.0.1:1
spec_with "$bad" '{ type = "linear", units = 10 }, { type = "softmax_xent" },' 'vocab = 256'
expect_error "token model on images" "model.layers\[0\] \(linear\): reads the token input: only an embedding layer can" \
  "$G" submit "$bad" --core 127.0.0.1:1
spec_with "$bad" '{ type = "linear", units = 7 }, { type = "softmax_xent" },'
expect_error "classes the data do not have" "data.set: fashion-mnist has 10 classes, the model's loss takes 7" \
  "$G" train --spec "$bad" --max-steps 1
expect_error "classes the data do not have, at submit" \
  "data.set: fashion-mnist has 10 classes, the model's loss takes 7" \
  "$G" submit "$bad" --core 127.0.0.1:1
spec_with "$bad" '{ type = "linear", units = 10, stride = 2 }, { type = "softmax_xent" },'
expect_error "a key the layer does not take" \
  "model.layers\[0\] \(linear\).stride: not a key of a linear layer" "$G" train --spec "$bad"
printf '[job]\nrounds = 2\n[model]\ninput = [784]\nlayers = []\n' >"$bad"
expect_error "a model without data" "data.set: missing" "$G" submit "$bad" --core 127.0.0.1:1

# -- a user's own model: one process, then a distributed job -------------------------------
# Not a shipped model: a normalised GELU MLP with dropout and a residual connection.
mine="$WORK/mine.toml"
cat >"$mine" <<'TOML'
[job]
name = "my-mlp"
rounds = 8
workers = 2

[inner]
local_steps = 40
batch_size = 64
lr = 0.002

[data]
set = "fashion-mnist"

[model]
name = "my-mlp"
input = [784]
layers = [
  { type = "linear", units = 128 }, { type = "gelu" }, { type = "layer_norm", name = "h" },
  { type = "linear", units = 128 }, { type = "gelu" }, { type = "dropout", rate = 0.1 },
  { type = "add", with = "h" },
  { type = "linear", units = 10 }, { type = "softmax_xent" },
]
TOML
# The trainer takes as many samples as the job's rounds do: 8 x 2 x 40 x 64.
timeout -s KILL 200 "$G" train --spec "$mine" --max-steps 640 --batch-size 64 --lr 0.002 \
  --json "$WORK/train.json" >"$WORK/train.out" 2>&1 || fail "gflex train --spec: $(tail -3 "$WORK/train.out")"
local_acc=$(json_get "$WORK/train.json" "j['test_accuracy']")
echo "ok: my-mlp in one process: test accuracy $local_acc"

# `gflex train --spec` trains with the spec's [inner] settings and seed, each flag given on
# the command line in its place.
settings="$WORK/settings.toml"
cat >"$settings" <<'TOML'
[job]
seed = 7

[inner]
optimizer = "sgd"
batch_size = 32
lr = 0.05
lr_schedule = "constant"

[data]
set = "fashion-mnist"

[model]
input = [784]
layers = [{ type = "linear", units = 10 }, { type = "softmax_xent" }]
TOML
settings_of() {  # settings_of JSON: what a run trained with, one line
  json_get "$1" "' '.join(str(x) for x in (j['optimizer'], j['batch_size'], round(j['lr'], 6), round(j['weight_decay'], 6), j['lr_schedule'], j['seed'], j['precision']))"
}
timeout -s KILL 60 "$G" train --spec "$settings" --max-steps 2 --no-eval --json "$WORK/settings.json" \
  >"$WORK/settings.out" 2>&1 || fail "gflex train --spec settings: $(tail -3 "$WORK/settings.out")"
got=$(settings_of "$WORK/settings.json")
if [ "$got" = "sgd 32 0.05 0.0 constant 7 fp32" ]; then
  echo "ok: gflex train --spec takes the spec's settings ($got)"
else
  fail "gflex train --spec: trained with '$got', the spec says 'sgd 32 0.05 0.0 constant 7 fp32'"
fi
timeout -s KILL 60 "$G" train --spec "$settings" --max-steps 2 --no-eval --batch-size 8 --lr 0.1 \
  --weight-decay 0 --seed 3 --json "$WORK/settings.json" >"$WORK/settings.out" 2>&1 ||
  fail "gflex train --spec with flags: $(tail -3 "$WORK/settings.out")"
got=$(settings_of "$WORK/settings.json")
if [ "$got" = "sgd 8 0.1 0.0 constant 3 fp32" ]; then
  echo "ok: flags given take the place of the spec's settings ($got)"
else
  fail "gflex train --spec with flags: trained with '$got', not 'sgd 8 0.1 0.0 constant 3 fp32'"
fi

start_cluster 2
submit_job mine "$mine" 240
state=$(json_get "$WORK/mine.json" "j['state']")
job_acc=$(json_get "$WORK/mine.json" "j['test_accuracy']")
[ "$state" = done ] || fail "my-mlp job ended $state"
python3 -c "import sys; sys.exit(0 if $job_acc >= 0.82 and $job_acc >= $local_acc - 0.03 else 1)" ||
  fail "my-mlp job reached $job_acc, the trainer $local_acc"
echo "ok: my-mlp as a job on 2 nodes: test accuracy $job_acc (trainer: $local_acc)"
"$G" fetch "$(json_get "$WORK/mine.json" "j['job_id']")" --out "$WORK/mine.ckpt" --core "$core" \
  >/dev/null || fail "fetch my-mlp"
"$G" eval "$WORK/mine.ckpt" --json "$WORK/eval.json" >/dev/null || fail "eval my-mlp's checkpoint"
eval_acc=$(json_get "$WORK/eval.json" "j['test_accuracy']")
python3 -c "import sys; sys.exit(0 if abs($eval_acc - $job_acc) < 1e-6 else 1)" ||
  fail "eval of the fetched checkpoint: $eval_acc, the job said $job_acc"

# -- the shipped language model, distributed, on held-out text ----------------------------
lm="$WORK/lm.toml"
cp "$SRC/apps/jobs/lm.toml" "$lm"
submit_job lm "$lm" 300
state=$(json_get "$WORK/lm.json" "j['state']")
bits=$(json_get "$WORK/lm.json" "j['test_bits']")
[ "$state" = done ] || fail "lm job ended $state"
python3 -c "import sys; sys.exit(0 if $bits <= ${GFLEX_LM_MAX_BITS:-3.2} else 1)" ||
  fail "lm job: $bits bits per byte on held-out text"
echo "ok: lm job on 2 nodes: $bits bits per byte on held-out text"

# The same model in one process, as long as a CI run can afford: at most 2.8 bits per byte.
timeout -s KILL 300 "$G" train --spec "$SRC/apps/jobs/lm.toml" --max-steps 3000 --batch-size 16 \
  --lr 0.004 --json "$WORK/lm-train.json" >"$WORK/lm-train.out" 2>&1 ||
  fail "gflex train --spec lm.toml: $(tail -3 "$WORK/lm-train.out")"
train_bits=$(json_get "$WORK/lm-train.json" "j['test_bits']")
python3 -c "import sys; sys.exit(0 if $train_bits <= 2.8 else 1)" ||
  fail "lm in one process: $train_bits bits per byte after 3000 steps"
echo "ok: lm in one process, 3000 steps: $train_bits bits per byte on held-out text"

# Text from the fetched checkpoint: greedy is deterministic; sampling follows its seed.
job=$(json_get "$WORK/lm.json" "j['job_id']")
"$G" fetch "$job" --out "$WORK/lm.ckpt" --core "$core" >/dev/null || fail "fetch the lm checkpoint"
"$G" sample "$WORK/lm.ckpt" --prompt "The " --tokens 120 >"$WORK/greedy1.txt" || fail "sample"
"$G" sample "$WORK/lm.ckpt" --prompt "The " --tokens 120 >"$WORK/greedy2.txt" || fail "sample"
cmp -s "$WORK/greedy1.txt" "$WORK/greedy2.txt" || fail "greedy sampling is not deterministic"
"$G" sample "$WORK/lm.ckpt" --prompt "The " --tokens 120 --temperature 0.8 --seed 1 >"$WORK/t1.txt" &&
  "$G" sample "$WORK/lm.ckpt" --prompt "The " --tokens 120 --temperature 0.8 --seed 2 >"$WORK/t2.txt" ||
  fail "sample with a temperature"
cmp -s "$WORK/t1.txt" "$WORK/t2.txt" && fail "two seeds sampled the same text"
[ "$(head -c 4 "$WORK/greedy1.txt")" = "The " ] || fail "the sample does not start with the prompt"
[ "$(wc -c <"$WORK/greedy1.txt")" -ge 124 ] || fail "the sample is short"
echo "ok: sampled text (greedy): $(head -c 124 "$WORK/greedy1.txt" | tr '\n' ' ')"
# To a terminal, generated bytes that are not printable text (ASCII or whole UTF-8
# characters) are written as \xNN: at the highest temperature the model draws ESC and C1
# bytes, which a terminal would act on, and bytes that are not UTF-8.
script -qec "'$G' sample '$WORK/lm.ckpt' --prompt 'The ' --tokens 400 --temperature 10 --seed 3" \
  /dev/null >"$WORK/tty.txt" || fail "sample to a terminal"
python3 - "$WORK/tty.txt" <<'PY' || fail "gflex sample wrote control bytes to a terminal"
import sys
data = open(sys.argv[1], "rb").read()
text = data.decode("utf-8")  # raises on a byte that is not part of a whole UTF-8 character
bad = [c for c in text if (ord(c) < 0x20 and c not in "\r\n\t") or 0x7f <= ord(c) <= 0x9f]
assert not bad, f"{len(bad)} control characters such as {bad[:5]}"
escaped = data.count(b"\\x")
assert escaped > 0, "nothing was escaped: the test drew no byte to escape"
print(f"ok: {escaped} generated bytes escaped on a terminal")
PY
expect_error "sample from an image model" "is not a byte-level language model" \
  "$G" sample "$WORK/mine.ckpt" --prompt "x"

# -- a restarted core still serves the ended jobs' models, the same bytes ------------------
kill -KILL "$PID_core"
wait "$PID_core" 2>/dev/null || true
start core2 "$BIN/gflex-core" --listen "$core" --data-dir "$WORK/core"
wait_for 20 "the restarted core to listen" grep -q "core listening" "$WORK/core2.log"
refetched=0
for name in mine lm; do
  id=$(json_get "$WORK/$name.json" "j['job_id']")
  if ! "$G" fetch "$id" --out "$WORK/$name-again.ckpt" --core "$core" >/dev/null \
    2>"$WORK/fetch-again.err"; then
    fail "fetch $id after a core restart: $(cat "$WORK/fetch-again.err")"
  elif ! cmp -s "$WORK/$name.ckpt" "$WORK/$name-again.ckpt"; then
    fail "$id's model fetched after a core restart differs from the one fetched before"
  else
    refetched=$((refetched + 1))
  fi
done
[ "$refetched" -eq 2 ] &&
  echo "ok: after a core restart both ended jobs' models are fetched again, the same bytes"
finish
