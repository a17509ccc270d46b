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
python3 - "$json" <<'PY' || fail "evaluated summary"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["evaluated"] is True and s["history"][-1]["test_accuracy"] == s["test_accuracy"], s
PY

# Without evaluation the summary says so: no test accuracy of 0 that reads as a model that
# learnt nothing, on stdout or in the JSON.
noeval="$WORK/noeval.json"
timeout -s KILL 60 "$BIN/gflex" train --workload fashion-mlp --max-steps 20 --no-eval \
  --json "$noeval" >"$WORK/noeval.out" 2>"$WORK/noeval.err" || fail "gflex train --no-eval exited non-zero"
grep -q "not evaluated (--no-eval)" "$WORK/noeval.out" || fail "--no-eval: $(cat "$WORK/noeval.out")"
grep -q "test accuracy" "$WORK/noeval.out" && fail "--no-eval printed a test accuracy"
python3 - "$noeval" <<'PY' || fail "--no-eval summary"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["evaluated"] is False, s
assert s["test_accuracy"] is None and s["test_loss"] is None and s["test_bits"] is None, s
assert all(e["test_accuracy"] is None for e in s["history"]), s["history"]
assert s["steps"] == 20 and s["samples_per_s"] > 0, s
print("ok: --no-eval says it did not evaluate")
PY

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
