#!/usr/bin/env bash
# `gflex train --workload fashion-mlp --epochs 10 --json F` reaches >= 0.88 test accuracy on
# the real Fashion-MNIST, and the JSON summary holds the promised fields; fashion-cnn reaches
# >= 0.91 in 4 epochs on the CPU backend (im2col + OpenBLAS).
source "$(dirname "$0")/lib.sh"
json="$WORK/summary.json"
timeout -s KILL 300 "$BIN/gflex" train --workload fashion-mlp --epochs 10 --json "$json" \
  >"$WORK/out" 2>"$WORK/err" || { cat "$WORK/err"; fail "gflex train exited non-zero"; finish; }
python3 - "$json" <<'PY' || fail "summary check"
import json, sys
s = json.load(open(sys.argv[1]))
for key in ("test_accuracy", "epochs", "samples_per_s", "wall_s"):
    assert key in s, f"missing {key}"
assert s["epochs"] == 10, s["epochs"]
assert len(s["history"]) == 10
assert s["test_accuracy"] >= 0.88, f"test accuracy {s['test_accuracy']} < 0.88"
assert s["samples_per_s"] > 0 and s["wall_s"] > 0
print(f"ok: test accuracy {s['test_accuracy']:.4f}, {s['samples_per_s']:.0f} samples/s")
PY
grep -q "test accuracy" "$WORK/out" || fail "no result line on stdout"

cnn="$WORK/cnn.json"
timeout -s KILL 360 "$BIN/gflex" train --workload fashion-cnn --epochs 4 --lr 2e-3 --json "$cnn" \
  >"$WORK/cnn.out" 2>"$WORK/cnn.err" || { cat "$WORK/cnn.err"; fail "fashion-cnn training exited non-zero"; finish; }
python3 - "$cnn" <<'PY' || fail "fashion-cnn summary check"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["workload"] == "fashion-cnn" and s["epochs"] == 4
assert s["test_accuracy"] >= 0.91, f"fashion-cnn test accuracy {s['test_accuracy']} < 0.91"
print(f"ok: fashion-cnn test accuracy {s['test_accuracy']:.4f}, {s['samples_per_s']:.0f} samples/s")
PY
finish
