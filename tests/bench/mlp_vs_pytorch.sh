#!/usr/bin/env bash
# Benchmark: CPU training throughput of gflex against PyTorch (Debian's python3-torch) on the
# same model, data, batch size and thread count, side by side in one run, plus gflex's GEMM
# rate inside the training step against OpenBLAS's own sgemm peak measured here too. The
# workload is fashion-mlp, or fashion-cnn (im2col + OpenBLAS against PyTorch's convolutions).
#
#   bash tests/bench/mlp_vs_pytorch.sh [THREADS] [BATCH] [EPOCHS] [WORKLOAD]
#
# Installs its own peer (python3-torch); the test suite never depends on it.
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
batch=${2:-128}
epochs=${3:-3}
workload=${4:-fashion-mlp}
# Each workload has its own PyTorch peer: any other would be compared with the wrong model.
case $workload in
  fashion-mlp) peer=tests/bench/torch_mlp.py ;;
  fashion-cnn) peer=tests/bench/torch_cnn.py ;;
  *)
    echo "mlp_vs_pytorch: workload '$workload' has no PyTorch peer here;" \
      "use fashion-mlp or fashion-cnn" >&2
    exit 2
    ;;
esac

if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null
fi
[ -x build/bin/gflex ] || bash .ci/setup >/dev/null

# Where OpenBLAS does not know the CPU it runs its generic Prescott kernels, and gflex then runs
# itself again with OPENBLAS_CORETYPE set to what the CPU supports (kernels/src/blas_kernels.cpp).
# The peer does its GEMMs in the same OpenBLAS and must get the same kernels. OpenBLAS names each
# core it loads (OPENBLAS_VERBOSE=2): a second name is the one gflex chose, and both sides get it.
cores=$(OPENBLAS_VERBOSE=2 build/bin/gflex --help 2>&1 >/dev/null | sed -n 's/^Core: //p' || true)
core=${cores##*$'\n'}
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ "$cores" != "$core" ]; then
  export OPENBLAS_CORETYPE=$core
fi
core_note="OpenBLAS core ${core:-not reported}${OPENBLAS_CORETYPE:+ (OPENBLAS_CORETYPE)}"
core_note+=" on both sides"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# What failed, and the end of its log (which the trap then removes).
fail() {
  echo "mlp_vs_pytorch: $1 failed:" >&2
  tail -5 "$2" >&2
  exit 1
}
# Each side runs twice, alternating, and keeps its better run: the machine is shared.
for round in 1 2; do
  build/bin/gflex --log-level warn train --workload "$workload" --epochs "$epochs" --batch-size "$batch" \
    --threads "$threads" --constant-lr --json "$out/gflex$round.json" >"$out/gflex$round.log" 2>&1 ||
    fail "gflex train --workload $workload" "$out/gflex$round.log"
  # PASSIVE: Debian's torch spins its OpenMP pool beside OpenBLAS's own (lm_vs_torch.py
  # says why); spinning, its steps took twice as long on 2 cores, which flattered gflex.
  OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 \
    "$peer" --threads "$threads" --batch-size "$batch" --epochs "$epochs" \
    >"$out/torch$round.json"
done
build/bin/gflex_bench_step "$threads" "$batch" cpu "$workload" >"$out/step.json" \
  2>"$out/step.log" || fail "gflex_bench_step $workload" "$out/step.log"

/usr/bin/python3 - "$out" "$threads" "$batch" "$epochs" "$workload" "$core_note" <<'PY'
import json, sys, platform, subprocess
d, threads, batch, epochs, workload, core_note = sys.argv[1:]
load = lambda n: json.load(open(f"{d}/{n}.json"))
g = max((load("gflex1"), load("gflex2")), key=lambda r: r["samples_per_s"])
t = max((load("torch1"), load("torch2")), key=lambda r: r["samples_per_s"])
s = load("step")
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
shape = "784-512-256-10" if workload == "fashion-mlp" else "conv3x3-32, pool, conv3x3-64, pool, 128, 10"
print(f"machine: {model}, {threads} threads; {workload} {shape}, batch {batch}, AdamW, {epochs} epochs; {core_note}; PyTorch with OMP_WAIT_POLICY=PASSIVE")
print()
print("| | samples/s | test accuracy | ratio |")
print("| --- | ---: | ---: | ---: |")
print(f"| gflex ({g['backend']}) | {g['samples_per_s']:.0f} | {g['test_accuracy']:.4f} | {g['samples_per_s'] / t['samples_per_s']:.2f}x |")
print(f"| {t['peer']} | {t['samples_per_s']:.0f} | {t['test_accuracy']:.4f} | 1.00x |")
print()
peak = s["sgemm_peak_gflops"]
print("| GEMM rate | GFLOP/s | of sgemm peak |")
print("| --- | ---: | ---: |")
print(f"| OpenBLAS sgemm 2048x2048x2048 (peak) | {peak:.1f} | 100% |")
print(f"| gflex train, whole run (steps + batch gathering) | {g['gemm_gflops_per_s']:.1f} | {100 * g['gemm_gflops_per_s'] / peak:.0f}% |")
print(f"| gflex training step alone (bench_step) | {s['step_gemm_gflops']:.1f} | {100 * s['fraction_of_peak']:.0f}% |")
print(f"| gflex GEMMs and convolutions inside the step (bench_step) | {s['gemm_bound_gflops']:.1f} | {100 * s['gemm_bound_fraction_of_peak']:.0f}% |")
print()
print("step breakdown (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in s["step_breakdown_ms"].items()))
PY
