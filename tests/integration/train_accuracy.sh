#!/usr/bin/env bash
# `gflex train --workload fashion-mlp --epochs 10 --json F` reaches >= 0.88 test accuracy on
# the real Fashion-MNIST, and the JSON summary holds the promised fields.
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
finish
