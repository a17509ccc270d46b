#!/usr/bin/env bash
# Benchmark: training throughput of gflex's CUDA backend against PyTorch on the same GPU, model,
# batch size and precision (FP32, TF32 off on both sides), for fashion-mlp and fashion-cnn, side
# by side in one run; plus gflex's GEMM rate inside training against the cuBLAS sgemm peak that
# `gflex devices --calibrate` measures on the same card.
#
#   bash tests/bench/gpu_vs_pytorch.sh [BATCH] [EPOCHS]
#
# Environment: GFLEX_BIN_DIR (the folder holding gflex; default: bin/ beside this script's
# folder, as in a bundle from tests/gpu/bundle.sh, else build/bin of this checkout), PYTHON (a
# python with torch built for CUDA; default python3), GFLEX_BENCH_OUT (keep every run's JSON
# there), GFLEX_FASHION_MNIST_DIR (the data, read by both sides).
#
# Then fashion-mlp's step by batch size (128 to 16,384 in FP32, 1,024 and 4,096 in bf16) with
# gflex_bench_step: the GEMM-bound part against the GEMM peak at the same precision.
# A gflex_bench_step run that fails is said and left out of its table, and the script then
# exits 1.
#
# Timing: training steps only, evaluation excluded, every epoch counted (warm-up included on
# both sides). Both sides hold the training set in GPU memory, copied there once before
# timing; gflex sends each batch's row numbers and labels and gathers the rows there. Without a GPU
# (gflex reports no device, or torch.cuda.is_available() is false) it says so and exits 0;
# where nvidia-smi lists a GPU, either side seeing none is a failure (exit 1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
batch=${1:-128}
epochs=${2:-3}
python=${PYTHON:-python3}

bin=${GFLEX_BIN_DIR:-}
if [ -z "$bin" ]; then
  if [ -x "$here/../bin/gflex" ]; then bin=$here/../bin; else bin=$here/../../build/bin; fi
fi
gflex=$bin/gflex
[ -x "$gflex" ] || { echo "gpu_vs_pytorch: no gflex in $bin (set GFLEX_BIN_DIR)" >&2; exit 1; }

if [ -n "${GFLEX_BENCH_OUT:-}" ]; then
  out=$GFLEX_BENCH_OUT
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

# Is there a GPU, for each side? Where nvidia-smi lists one, a side that sees none is a
# failure, not a benchmark left for later.
gpu_listed() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }
peak_note=""
if "$gflex" --log-level warn devices --calibrate --json "$out/devices.json" \
  >"$out/devices.txt" 2>&1; then
  gpus=$("$python" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["devices"]))' \
    "$out/devices.json" 2>/dev/null || echo "?")
  if [ "$gpus" = 0 ]; then
    reason=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("reason", ""))' \
      "$out/devices.json" 2>/dev/null || true)
    if gpu_listed; then
      echo "PROBLEM: nvidia-smi lists a GPU, and gflex devices reports none${reason:+ ($reason)}"
      exit 1
    fi
    echo "no GPU: gflex devices reports none${reason:+ ($reason)}; the benchmark is left ready to run."
    exit 0
  fi
else
  # gflex without the devices command or with a failing one: the run goes on if torch sees a
  # GPU, without the cuBLAS peak.
  peak_note="gflex devices --calibrate failed: $(tail -1 "$out/devices.txt")"
  rm -f "$out/devices.json"
fi
if ! torch_cuda=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>&1); then
  echo "no PyTorch: $python cannot import torch (${torch_cuda##*$'\n'}); set PYTHON to a python" \
    "with torch built for CUDA."
  exit 1
fi
# The last line: torch may print warnings before it.
if [ "${torch_cuda##*$'\n'}" != 1 ]; then
  if gpu_listed; then
    echo "PROBLEM: nvidia-smi lists a GPU, and torch.cuda.is_available() is False: $torch_cuda"
    exit 1
  fi
  echo "no GPU: torch.cuda.is_available() is False${peak_note:+ ($peak_note)}; the benchmark is" \
    "left ready to run."
  exit 0
fi

# A gflex_bench_step run that fails leaves its rows out of the tables and is counted: the
# script's exit status says so after the tables (run-gpu.sh judges by it).
step_failures=0
bench_step_failed() {
  echo "gflex_bench_step $1 failed:"
  tail -3 "$2"
  rm -f "$3"
  step_failures=$((step_failures + 1))
}

card=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null | head -1 || true)
[ -n "$card" ] || card=$("$python" -c 'import torch; print(torch.cuda.get_device_name(0))')

# Each side runs twice, alternating, and keeps its better run; device 0 on both sides.
for workload in fashion-mlp fashion-cnn; do
  script=$here/torch_mlp.py
  [ "$workload" = fashion-cnn ] && script=$here/torch_cnn.py
  for round in 1 2; do
    "$gflex" --log-level warn train --workload "$workload" --backend cuda --epochs "$epochs" \
      --batch-size "$batch" --constant-lr --json "$out/gflex-$workload-$round.json" \
      >"$out/gflex-$workload-$round.log" 2>&1 ||
      { echo "gflex train --workload $workload failed:"; tail -5 "$out/gflex-$workload-$round.log"; exit 1; }
    "$python" "$script" --device cuda --batch-size "$batch" --epochs "$epochs" \
      >"$out/torch-$workload-$round.json" 2>"$out/torch-$workload-$round.log" ||
      { echo "$script failed:"; tail -5 "$out/torch-$workload-$round.log"; exit 1; }
  done
  # Where a step's time goes, each operation timed to completion: the GEMM-bound part (GEMMs
  # and convolutions) and the rate it reaches, against cuBLAS's 4096^3 peak in the same run.
  if [ -x "$bin/gflex_bench_step" ]; then
    "$bin/gflex_bench_step" 0 "$batch" cuda:0 "$workload" >"$out/step-$workload.json" \
      2>"$out/step-$workload.log" ||
      bench_step_failed "$workload" "$out/step-$workload.log" "$out/step-$workload.json"
  fi
done

# fashion-mlp by batch size and precision.
batch_runs="128 fp32,1024 fp32,4096 fp32,16384 fp32,1024 bf16,4096 bf16"
if [ -x "$bin/gflex_bench_step" ]; then
  IFS=, read -r -a runs <<<"$batch_runs"
  for run in "${runs[@]}"; do
    read -r rows precision <<<"$run"
    "$bin/gflex_bench_step" 0 "$rows" cuda:0 fashion-mlp "$precision" \
      >"$out/batch-$rows-$precision.json" 2>"$out/batch-$rows-$precision.log" ||
      bench_step_failed "fashion-mlp $rows $precision" "$out/batch-$rows-$precision.log" \
        "$out/batch-$rows-$precision.json"
  done
fi

"$python" - "$out" "$batch" "$epochs" "$card" "$peak_note" "$batch_runs" <<'PY'
import json, os, sys
d, batch, epochs, card, peak_note, batch_runs = sys.argv[1:]
load = lambda n: json.load(open(f"{d}/{n}.json"))
best = lambda side, w: max((load(f"{side}-{w}-1"), load(f"{side}-{w}-2")),
                           key=lambda r: r["samples_per_s"])
dev = None
if os.path.exists(f"{d}/devices.json"):
    devices = load("devices")["devices"]
    dev = devices[0] if devices else None
print(f"card: {card}" + (f" (compute capability {dev['cc']}, {dev['sm_count']} SMs)" if dev else ""))
print(f"batch {batch}, AdamW lr 1e-3 wd 0, constant lr, {epochs} epochs; FP32 with TF32 off on both "
      "sides; training steps only, each side best of 2 alternating runs")
print("Both sides hold the training set in GPU memory (copied once, before timing); gflex sends "
      "each batch's row numbers and labels and gathers the rows on the device.")
print()
print("| workload | | samples/s | test accuracy | ratio |")
print("| --- | --- | ---: | ---: | ---: |")
rows = {}
for w, shape in (("fashion-mlp", "784-512-256-10"), ("fashion-cnn", "conv32-conv64-128-10")):
    g, t = best("gflex", w), best("torch", w)
    rows[w] = g
    print(f"| {w} ({shape}) | gflex ({g['backend']}) | {g['samples_per_s']:.0f} | "
          f"{g['test_accuracy']:.4f} | {g['samples_per_s'] / t['samples_per_s']:.2f}x |")
    print(f"| | {t['peer']} | {t['samples_per_s']:.0f} | {t['test_accuracy']:.4f} | 1.00x |")
print()
if dev is None or not dev.get("gemm_tflops"):
    print(f"GEMM peak not measured ({peak_note or 'gflex devices gave no gemm_tflops'}); "
          "gflex's GEMM rate inside training: " +
          ", ".join(f"{w} {g['gemm_gflops_per_s']:.1f} GFLOP/s" for w, g in rows.items()))
else:
    peak = dev["gemm_tflops"] * 1e3
    print("| GEMM rate | GFLOP/s | of cuBLAS peak |")
    print("| --- | ---: | ---: |")
    print(f"| cuBLAS sgemm, FP32 (peak, gflex devices --calibrate) | {peak:.0f} | 100% |")
    for w, g in rows.items():
        print(f"| gflex train {w}, whole training time (steps + batch copies) | "
              f"{g['gemm_gflops_per_s']:.1f} | {100 * g['gemm_gflops_per_s'] / peak:.1f}% |")
print()
for w in rows:
    f = f"{d}/step-{w}.json"
    if os.path.exists(f) and os.path.getsize(f) > 0:
        s = json.load(open(f))
        print(f"{w} step (gflex_bench_step, batch {s['batch']}): {s['step_ms']:.3f} ms, of which "
              f"GEMMs and convolutions {s['gemm_bound_ms']:.3f} ms at {s['gemm_bound_gflops']:.0f} "
              f"GFLOP/s = {100 * s['gemm_bound_fraction_of_peak']:.1f}% of the {s['sgemm_peak_size']}^3 "
              f"sgemm peak measured in the same run ({s['sgemm_peak_gflops']:.0f} GFLOP/s); "
              "breakdown (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in s["step_breakdown_ms"].items()))
        if "step_rows_ms" in s:
            print(f"{w} step with the batch gathered on the device from row numbers: "
                  f"{s['step_rows_ms']:.3f} ms ({s['samples_per_s_rows']:.0f} samples/s), against "
                  f"{s['step_ms']:.3f} ms with the batch copied from the host")
        print(f"{w} update leaving the device: fp32 parameters {s['update_out_fp32_ms']:.3f} ms, "
              f"computed and quantised to int8 there {s['update_out_int8_ms']:.3f} ms")
table = []
for run in batch_runs.split(","):
    rows, precision = run.split()
    f = f"{d}/batch-{rows}-{precision}.json"
    if os.path.exists(f) and os.path.getsize(f) > 0:
        table.append(json.load(open(f)))
if table:
    print()
    print("fashion-mlp by batch size (gflex_bench_step 0 BATCH cuda:0 fashion-mlp PRECISION; the "
          "GEMM peak is cuBLAS's 4096^3 GEMM at the same precision, in the same run):")
    print()
    # "cuBLAS alone": the step's GEMM shapes run back to back by cuBLAS (gemm_only_ms), what
    # any caller of cuBLAS gets at this batch.
    print("| batch | precision | step ms (host batch) | step ms (rows on device) | samples/s | "
          "GEMMs ms | GEMM-bound share of peak | cuBLAS alone ms | its share | peak GFLOP/s | "
          "column_sum ms | upload ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in table:
        b = s["step_breakdown_ms"]
        rows_ms = s.get("step_rows_ms", s["step_ms"])
        alone = s.get("gemm_only_ms", 0.0)
        alone_share = (s["gemm_bound_fraction_of_peak"] * s["gemm_bound_ms"] / alone
                       if alone > 0 else 0.0)
        print(f"| {s['batch']:,} | {s.get('precision', 'fp32')} | {s['step_ms']:.3f} | "
              f"{rows_ms:.3f} | {s['batch'] / rows_ms * 1e3:,.0f} | {s['gemm_bound_ms']:.3f} | "
              f"{100 * s['gemm_bound_fraction_of_peak']:.0f}% | {alone:.3f} | "
              f"{100 * alone_share:.0f}% | {s['sgemm_peak_gflops']:,.0f} | "
              f"{b.get('column_sum', 0):.3f} | {b.get('upload', 0):.3f} |")
if dev is not None and dev.get("gemm_tflops"):
    print()
    print(f"host to device {dev['h2d_gbps']:.1f} GB/s, device to host {dev['d2h_gbps']:.1f} GB/s "
          "(gflex devices --calibrate)")
if dev is not None and dev.get("gemm_rates_tflops"):
    r = dev["gemm_rates_tflops"]
    print()
    print(f"GEMM rates by precision, 4096^3 (gflex devices --calibrate): FP32 {r['fp32']:.1f}, "
          f"TF32 {r['tf32']:.1f}, bf16 from FP32 operands (gflex's bf16 jobs) "
          f"{r['bf16_from_fp32']:.1f}, bf16 operands {r['bf16']:.1f} TFLOP/s")
    for s in table:
        if s.get("precision") == "bf16":
            print(f"fashion-mlp batch {s['batch']:,} bf16: GEMM-bound part at "
                  f"{s['gemm_bound_gflops'] / (r['bf16'] * 1e3):.0%} of the bf16 operand rate")
elif dev is not None and dev.get("gemm_rates_error"):
    print()
    print(f"GEMM rates by precision not measured: {dev['gemm_rates_error']}")
PY
if ((step_failures > 0)); then
  echo "gpu_vs_pytorch: $step_failures gflex_bench_step runs failed (the ends of their logs are above)" >&2
  exit 1
fi
