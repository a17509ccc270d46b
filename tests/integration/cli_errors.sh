#!/usr/bin/env bash
# Bad input to `gflex train` gets a clear message and a non-zero exit: bad flags, an unknown
# workload, backend or precision, missing data, corrupt IDX files (each naming the file), bad
# job specs, and a node's bad device flags.
source "$(dirname "$0")/lib.sh"
G="$BIN/gflex"

expect_usage "no subcommand" "subcommand is required" "$G"
expect_usage "unknown flag" "--frobnicate" "$G" train --frobnicate
expect_usage "zero epochs" "--epochs: Value 0 not in range" "$G" train --epochs 0
expect_error "negative batch" "--batch-size" "$G" train --batch-size -5
expect_error "non-numeric lr" "--lr: must be a positive number, got 'fast'" "$G" train --lr fast
expect_error "NaN lr" "--lr: must be a positive number, got 'nan'" "$G" train --lr nan
expect_error "bad log level" "unknown log level 'loud'" "$G" train --log-level loud
expect_error "unknown workload" "unknown workload 'cifar-resnet' \(known: fashion-cnn, fashion-mlp\)" \
  "$G" train --workload cifar-resnet
expect_error "unknown backend" "unknown backend 'tpu'" "$G" train --backend tpu
expect_error "missing CUDA device" "no usable CUDA device 7|no CUDA backend" "$G" train --backend cuda:7
expect_error "unknown precision" "unknown precision 'fp8' \(use fp32, tf32 or bf16\)" \
  "$G" train --precision fp8

# `gflex train --data`: a file's own error, and the exit code of bad input (2).
spec="$SRC/apps/jobs/fashion-cnn.toml"
[ -f "$spec" ] || spec=$(ls "$SRC"/apps/jobs/*.toml | head -1)
expect_error "train --data without --format" "--format: required with --data" \
  "$G" train --spec "$spec" --data "$WORK/none.idx"
# A mistyped format is named as such: it was told "--labels: required with --format text".
expect_usage "train --format text" "--format: idx, npy or tokens, got 'text'" \
  "$G" train --spec "$spec" --data "$WORK/none.txt" --format text
expect_usage "data push --format text" "--format: idx, npy or tokens, got 'text'" \
  "$G" data push t "$WORK/none.txt" --format text --core 127.0.0.1:1
# --classes and --context are checked as gflex data push checks them: -5 classes meant "the
# largest label + 1", and a context of -3 failed later, as "at least 2 tokens".
expect_usage "train --classes -5" "--classes: Value -5 not in range" \
  "$G" train --spec "$spec" --data "$WORK/none.npy" --format npy --labels "$WORK/none.npy" --classes -5
expect_usage "train --context -3" "--context: Value -3 not in range" \
  "$G" train --spec "$spec" --data "$WORK/none.txt" --format tokens --context -3
# A model on a set pushed to a core: its files are needed here, which the error says (it said
# "unknown data set", as if the spec had a typo).
pushed="$WORK/pushed.toml"
printf '[job]\nname = "p"\n[data]\nset = "fm-npy"\n[model]\ninput = [4]\nlayers = [\n  { type = "linear", units = 3 }, { type = "softmax_xent" },\n]\n' >"$pushed"
expect_usage "train --spec on a pushed set without --data" \
  "pushed.toml: data.set 'fm-npy' is not built in: .*--data FILE --format" \
  "$G" train --spec "$pushed"
# --data files are read as the spec's model takes them, and checked against it before training:
# --context and --classes default to the model's (a text was cut into 64 tokens a sample, and
# labels not reaching the last class made fewer classes), and a file that does not fit says
# which file or flag, exit 2 (the trainer refused it as a shape mismatch, exit 1).
python3 - "$WORK" <<'PY'
import struct, sys
def write_npy(path, descr, shape, payload):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with open(f"{sys.argv[1]}/{path}", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload)
write_npy("x4.npy", "<f4", (200, 4), struct.pack("<800f", *[i % 7 * 0.1 for i in range(800)]))
for classes in (2, 5):
    write_npy(f"y{classes}.npy", "<i8", (200,), struct.pack("<200q", *[i % classes for i in range(200)]))
PY
head -c 20000 /usr/share/games/fortunes/fortunes >"$WORK/text.txt"
model() {  # model FILE INPUT [VOCAB] LAYERS: a spec of a [model] on a pushed set
  printf '[job]\nname = "m"\n[data]\nset = "mine"\n[model]\ninput = [%s]\n%slayers = [%s]\n' \
    "$2" "$3" "$4" >"$WORK/$1"
}
model m3.toml 4 "" '{ type = "linear", units = 3 }, { type = "softmax_xent" }'
model m784.toml 784 "" '{ type = "linear", units = 3 }, { type = "softmax_xent" }'
model t16.toml 16 $'vocab = 256\n' \
  '{ type = "embedding", dim = 8 }, { type = "linear", units = 256 }, { type = "next_token_xent" }'
quick=(--max-steps 2 --no-eval)
for run in "m3.toml --data $WORK/x4.npy --format npy --labels $WORK/y2.npy" \
  "t16.toml --data $WORK/text.txt --format tokens"; do
  # shellcheck disable=SC2086
  "$G" train --spec "$WORK"/$run "${quick[@]}" >"$WORK/out" 2>"$WORK/err" &&
    echo "ok: train --spec $run" || fail "train --spec $run: $(tail -2 "$WORK/err")"
done
expect_usage "train --data of another width" "x4.npy: 4 values per sample, the model of .*m784.toml takes 784" \
  "$G" train --spec "$WORK/m784.toml" --data "$WORK/x4.npy" --format npy --labels "$WORK/y2.npy" "${quick[@]}"
expect_usage "train --data with more classes" \
  "y5.npy: the labels make 5 classes \(the largest is 4\), the model of .*m3.toml takes 3 \(--classes\)" \
  "$G" train --spec "$WORK/m3.toml" --data "$WORK/x4.npy" --format npy --labels "$WORK/y5.npy" "${quick[@]}"
expect_usage "train --classes not the model's" "--classes 4: the model of .*m3.toml takes 3 classes" \
  "$G" train --spec "$WORK/m3.toml" --data "$WORK/x4.npy" --format npy --labels "$WORK/y2.npy" \
  --classes 4 "${quick[@]}"
expect_usage "train --context not the model's" \
  "--context 32: .*text.txt's samples are 33 tokens, the model of .*t16.toml takes 17 \(--context 16" \
  "$G" train --spec "$WORK/t16.toml" --data "$WORK/text.txt" --format tokens --context 32 "${quick[@]}"
expect_usage "train --data of values for a token model" "--format npy: the model of .*t16.toml takes tokens" \
  "$G" train --spec "$WORK/t16.toml" --data "$WORK/x4.npy" --format npy --labels "$WORK/y2.npy" "${quick[@]}"
# Flags that nothing would read are refused (they were ignored): those of --data without it,
# and --workload beside the spec that names what to train.
for flag in "--format npy" "--labels $WORK/y2.npy" "--classes 3" "--context 16" "--test-fraction 0.2"; do
  # shellcheck disable=SC2086
  expect_usage "train $flag without --data" "${flag%% *}: only with --data" \
    "$G" train --spec "$WORK/m3.toml" $flag "${quick[@]}"
done
expect_usage "train --format without --data or --spec" "--format: only with --data" \
  "$G" train --format idx "${quick[@]}"
expect_usage "train --workload with --spec" "--workload: not with --spec" \
  "$G" train --spec "$SRC/apps/jobs/fashion-mlp.toml" --workload fashion-cnn "${quick[@]}"
# A damaged images file (a header of 10 28x28 images, 100 bytes of them) says it is cut short.
python3 -c "import struct,sys; open(sys.argv[1],'wb').write(struct.pack('>BBBBIII',0,0,8,3,10,28,28)+bytes(100))" "$WORK/cut.idx"
python3 -c "import struct,sys; open(sys.argv[1],'wb').write(struct.pack('>BBBBI',0,0,8,1,10)+bytes(10))" "$WORK/labels.idx"
rc=0
"$G" train --spec "$spec" --data "$WORK/cut.idx" --format idx --labels "$WORK/labels.idx" \
  >"$WORK/out" 2>"$WORK/err" || rc=$?
if [ "$rc" -eq 2 ] && grep -q "truncated" "$WORK/err"; then
  echo "ok: train --data on a cut-short file (exit 2, truncated)"
else
  fail "train --data on a cut-short file: exit $rc, $(tail -2 "$WORK/err")"
fi

# The core's market flags are checked before it opens its store.
expect_usage "core: newcomer share over 1" "--newcomer-share: Value 1.5 not in range" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --newcomer-share 1.5
# NaN passed CLI11's range checks (every comparison with it is false): a core started with
# --cloud-price nan showed each job's cloud cost as -9.2e12 credits.
for flag in --fee --cloud-price --newcomer-share --verify-wait-s; do
  expect_usage "core: $flag nan" "$flag: Value nan is not a finite number" \
    "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" $flag nan
done
expect_usage "train: --test-fraction nan" "--test-fraction: Value nan is not a finite number" \
  "$G" train --test-fraction nan
expect_usage "sample: --temperature nan" "--temperature: Value nan is not a finite number" \
  "$G" sample "$WORK/none.gfck" --temperature nan
expect_error "core: no samples per shard" "--shard-samples: Value 0 not in range" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --shard-samples 0
expect_usage "core: a lease shorter than two heartbeats" \
  "--lease-ms 1000 must be at least twice --heartbeat-ms 5000" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --heartbeat-ms 5000 --lease-ms 1000

# A core of several's settings without its store (or an empty --store: an unset $ETCD) ran
# each core alone on its copy of the data directory: split brain.
expect_usage "core: an empty --store" "--store: must name the etcd members" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --store ""
expect_usage "core: --core-id without --store" "--core-id is for one of a core of several" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --core-id c1
expect_usage "core: --leader-lease-s without --store" "--leader-lease-s requires --store" \
  "$BIN/gflex-core" --listen 127.0.0.1:1 --data-dir "$WORK/core" --leader-lease-s 9

# A token's tier is checked before the core is asked (it answered "unknown tier", exit 1).
expect_usage "core: token of an unknown tier" "--tier: corr not in" \
  "$BIN/gflex-core" token create --tier corr --core 127.0.0.1:1
# The core's own flags are refused before an operator command: given there, --insecure set
# the core's, which nothing used, and the command tried TLS.
expect_usage "core flag before an operator command" \
  "--insecure is a flag of the core itself, not of .token list." \
  "$BIN/gflex-core" --insecure token list --core 127.0.0.1:1
# A node's device flags are checked before it contacts the core (there is none at port 1).
N="$BIN/gflex-node"
nd="$WORK/node"
# A certificate bundle that cannot be read says why, naming the file and where it was named
# (an absent file was "not a core certificate bundle (it needs two certificates").
expect_usage "a missing --core-cert" "--core-cert $WORK/absent.pem: no such file" \
  "$G" status --core 127.0.0.1:1 --core-cert "$WORK/absent.pem"
GFLEX_CORE_CERT="$WORK" expect_usage "a directory as GFLEX_CORE_CERT" \
  "GFLEX_CORE_CERT $WORK: is a directory" "$G" status --core 127.0.0.1:1
expect_usage "node: a missing --core-cert" "--core-cert $WORK/absent.pem: no such file" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --core-cert "$WORK/absent.pem"
expect_usage "node: unknown tier" '--tier: tier must be "community" or "core", got "gold"' \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --tier gold
expect_usage "node: --price nan" "--price: Value nan is not a finite number" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --price nan
# Integers are decimal: CLI11 read them in base 0 (--workers 010 ran 8 workers, 0x10 16).
expect_usage "node: --workers 0x10" "--workers: Value 0x10 is not a decimal integer" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --workers 0x10
expect_usage "train: --seed -1" "--seed: Value -1 is not a decimal integer of 0 or more" \
  "$G" train --seed -1
# 0100001 is 100001 (past the bound), not octal 32769 (within it).
expect_usage "train: --epochs 0100001" "--epochs: Value 100001 not in range" \
  "$G" train --epochs 0100001
expect_error "node: --gpus on the CPU" "--gpus needs a CUDA backend" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --backend cpu --gpus 0
expect_usage "node: --backend cuda: without a number" "--backend cuda: needs a device number" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --backend cuda:
expect_usage "node: unknown backend" "unknown --backend 'tpu'" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --backend tpu
expect_error "node: bad memory limit" "--gpu-memory-limit: '6X' is not a byte size" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --gpu-memory-limit 6X
expect_error "node: bad cache limit" "--cache-limit: .*12Q" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --cache-limit 12Q
expect_error "node: bad host memory limit" "--memory-limit: '12Q' is not a byte size" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --memory-limit 12Q
expect_error "node: host memory limit below the calibration model" \
  "--memory-limit 1M leaves no room for the calibration model: allocating" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --backend cpu --memory-limit 1M
expect_usage "node: no streams" "--streams-per-gpu" \
  "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --streams-per-gpu 0
# The count must be read: a failed probe printed nothing, and the checks below were left out.
devices=$("$G" devices --json - | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["devices"]))') ||
  fail "gflex devices --json"
if [ "$devices" = 0 ]; then
  expect_error "node: --backend cuda without a device" "--backend cuda: no usable CUDA device" \
    "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --backend cuda
  expect_error "node: --gpus without a device" "--gpus 1: no usable CUDA device" \
    "$N" --join 127.0.0.1:1 --data-dir "$nd" --token t --insecure --gpus 1
else
  echo "skipped: the no-device checks (this machine has a CUDA device)"
fi

GFLEX_FASHION_MNIST_DIR="$WORK/absent" expect_error "missing data directory" \
  "$WORK/absent: Fashion-MNIST directory not found .*dataset-fashion-mnist" "$G" train

# A data directory whose files are damaged one way or another.
data="$WORK/fashion"
mkdir -p "$data"
src=${GFLEX_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -f "$src/train-images-idx3-ubyte.gz" ]; then
  cp "$src"/*.gz "$data"/
  printf 'not an idx file at all' | gzip >"$data/t10k-labels-idx1-ubyte.gz"
  GFLEX_FASHION_MNIST_DIR="$data" expect_error "wrong magic" \
    "t10k-labels-idx1-ubyte.gz: wrong magic number" "$G" train
  cp "$src/t10k-labels-idx1-ubyte.gz" "$data/"
  { zcat "$src/train-images-idx3-ubyte.gz" || true; } | head -c 1000000 | gzip \
    >"$data/train-images-idx3-ubyte.gz"
  GFLEX_FASHION_MNIST_DIR="$data" expect_error "truncated images" \
    "train-images-idx3-ubyte.gz: truncated" "$G" train
  rm "$data/train-images-idx3-ubyte.gz"
  GFLEX_FASHION_MNIST_DIR="$data" expect_error "missing images" \
    "train-images-idx3-ubyte.gz: no such file" "$G" train
else
  # The suite installs the data set (.ci/setup): without it these checks cannot run.
  fail "the damaged-file checks need Fashion-MNIST in $src (Debian's dataset-fashion-mnist)"
fi

# Job specs are checked before anything is sent: each error names the file and the key.
spec="$WORK/job.toml"
printf '[job]\nworkload = "fashion-mlp"\n[inner]\nlocal_steps = 0\n' >"$spec"
expect_error "local_steps 0" "job.toml: inner.local_steps: must be an integer in \[1, 100000\], got 0" \
  "$G" submit "$spec" --core 127.0.0.1:1
printf '[job]\nworkload = "fashion-mlp"\nworkerz = 3\n' >"$spec"
expect_error "misspelt key" "job.toml: job.workerz: unknown key" "$G" submit "$spec" --core 127.0.0.1:1
printf '[job]\nworkload = "imagenet"\n' >"$spec"
expect_error "unknown workload in a spec" "job.toml: job.workload: unknown workload 'imagenet'" \
  "$G" submit "$spec" --core 127.0.0.1:1
printf '[job]\nworkload = "fashion-cnn"\n[inner]\nprecision = "fp16"\n' >"$spec"
expect_error "unknown precision in a spec" \
  'job.toml: inner.precision: must be one of "fp32", "tf32", "bf16", got "fp16"' \
  "$G" submit "$spec" --core 127.0.0.1:1
printf '[job\nworkload = 1\n' >"$spec"
expect_error "TOML syntax" "job.toml:1:.*invalid TOML" "$G" submit "$spec" --core 127.0.0.1:1
expect_error "missing spec file" "nope.toml: no such file" "$G" submit "$WORK/nope.toml"
# Checked before the job is submitted: a job made, then exit 1 for its JSON, was submitted
# again by scripts, and paid for twice.
expect_usage "an unwritable --json" "cannot be written \(--json\); nothing was submitted" \
  "$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --json /proc/gflex/id.json --core 127.0.0.1:1
# The probe leaves nothing behind: a submit that failed after it left an empty --json file,
# read as its summary; a file there before keeps its content.
expect_error "submit to no core" "cannot reach the core at 127.0.0.1:1" \
  "$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --json "$WORK/id.json" --core 127.0.0.1:1 --insecure
[ -e "$WORK/id.json" ] && fail "a failed submit left its --json file behind"
echo kept >"$WORK/kept.json"
expect_error "submit to no core, --json there" "cannot reach the core at 127.0.0.1:1" \
  "$G" submit "$SRC/apps/jobs/fashion-mlp.toml" --json "$WORK/kept.json" --core 127.0.0.1:1 --insecure
[ "$(cat "$WORK/kept.json")" = kept ] || fail "a failed submit changed its --json file"
# Output files are checked before the work: a fetch downloaded the whole model, and a demo ran
# to its end, to fail on a path that could never be written (exit 1, which scripts retry).
expect_usage "fetch --out in a missing directory" \
  "--out $WORK/missing/m.gfck: cannot be written \(No such file or directory\); nothing was fetched" \
  "$G" fetch job-1 --out "$WORK/missing/m.gfck" --core 127.0.0.1:1
[ -e "$WORK/missing" ] && fail "fetch --out made something"
expect_usage "fetch --out a directory" "--out $WORK: is a directory" \
  "$G" fetch job-1 --out "$WORK" --core 127.0.0.1:1
printf '[job]\nworkload = "fashion-mlp"\nrounds = 1\nworkers = 1\n' >"$WORK/one.toml"
expect_usage "demo with an unwritable --json" "cannot be written \(--json\); the demo did not run" \
  "$G" demo --nodes 1 --spec "$WORK/one.toml" --json /proc/gflex/demo.json
# A job the demo's nodes (core tier, asking 1 credit an hour) never take waited for workers
# until Ctrl-C.
printf '[trust]\ntier = "community"\n' | cat "$WORK/one.toml" - >"$WORK/community.toml"
expect_usage "demo of a community-tier job" 'trust.tier = "community": this cluster.s nodes are core-tier' \
  "$G" demo --nodes 1 --spec "$WORK/community.toml"
printf '[market]\nmax_price = 0.5\n' | cat "$WORK/one.toml" - >"$WORK/cheap.toml"
expect_usage "demo of a job paying less than its nodes ask" \
  "market.max_price: 0.5 per device-hour is less than this cluster.s nodes ask \(1\)" \
  "$G" demo --nodes 1 --spec "$WORK/cheap.toml"
printf 'not a checkpoint at all!' >"$WORK/bad.gfck"
expect_error "eval of a damaged checkpoint" "bad.gfck: malformed checkpoint" "$G" eval "$WORK/bad.gfck"
expect_error "sample of a damaged checkpoint" "bad.gfck: malformed checkpoint" "$G" sample "$WORK/bad.gfck"
# Read whole before: a directory was "malformed", and /dev/zero was read until memory ran out.
expect_error "sample of a directory" "$WORK: is a directory" "$G" sample "$WORK"

# A JSON summary that cannot be written is refused before training (exit 2): the whole run was
# wasted on it, and its exit 1 had scripts train again. The run asked for is far longer than
# expect_error's 60 s: only a refusal up front passes.
expect_usage "unwritable json" "/proc/gflex/summary.json: cannot be written \(--json\); nothing was trained" \
  "$G" train --max-steps 100000000 --epochs 100000 --no-eval --json /proc/gflex/summary.json
finish
