#!/usr/bin/env python3
"""The GPU speed targets against what one run of run-gpu.sh measured.

    python3 targets.py OUT_DIR

Reads the JSON files run-gpu.sh leaves in OUT_DIR (bench/ from gpu_vs_pytorch.sh,
graphs-*.json, lm-*.json) and prints one Markdown table: each target, what was measured, and
whether it is met, or "not measured" where its files are missing (a step that failed, ran out
of the run's time budget, or found no GPU). Short on purpose: it ends the run's console, so it
is what a device call's output tail shows. The targets are those of the GPU speed work in
docs/BENCHMARKS.md: fashion-mlp and fashion-cnn at 1.5x PyTorch or more; fashion-mlp's
GEMM-bound part at 70% of the FP32 GEMM peak at batches of 1,024 and 4,096 (50% of the card's
bf16 rate, with bf16 operands, in bf16); the language model's MFU at or above compiled
PyTorch's at each size. Recorded passes and bf16 GEMM operands (on by default) and fused
attention (opt-in) get a row each: the step with them against without.
"""
import json
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: targets.py OUT_DIR")
    out = sys.argv[1]
    rows = []  # (target, measured, verdict)

    def row(target, measured, met):
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        rows.append((target, measured if met is not None else "-", verdict))

    for workload in ("fashion-mlp", "fashion-cnn"):
        runs = {side: [load(f"{out}/bench/{side}-{workload}-{r}.json") for r in (1, 2)]
                for side in ("gflex", "torch")}
        best = {side: max((r["samples_per_s"] for r in rs if r), default=None)
                for side, rs in runs.items()}
        if best["gflex"] and best["torch"]:
            ratio = best["gflex"] / best["torch"]
            row(f"{workload}, batch 128 FP32: gflex / PyTorch >= 1.5x",
                f"{ratio:.2f}x ({best['gflex']:,.0f} / {best['torch']:,.0f} samples/s)",
                ratio >= 1.5)
        else:
            row(f"{workload}, batch 128 FP32: gflex / PyTorch >= 1.5x", None, None)

    # The bf16 target is against the card's bf16 rate (bf16 operands, `gflex devices
    # --calibrate`); gflex_bench_step's own peak is its GEMM at the step's precision, which
    # in bf16 takes FP32 operands.
    devices = load(f"{out}/bench/devices.json") or {}
    card = (devices.get("devices") or [{}])[0]
    bf16_rate = (card.get("gemm_rates_tflops") or {}).get("bf16")
    for precision, share in (("fp32", 0.70), ("bf16", 0.50)):
        for batch in (1024, 4096):
            s = load(f"{out}/bench/batch-{batch}-{precision}.json")
            if precision == "bf16" and bf16_rate:
                ceiling, name = bf16_rate * 1e3, "the card's bf16 rate"
            else:
                ceiling, name = (s or {}).get("sgemm_peak_gflops"), "the GEMM peak"
            target = (f"fashion-mlp batch {batch:,} {precision}: GEMM-bound part >= "
                      f"{share:.0%} of {name}")
            if s and ceiling:
                got = s["gemm_bound_gflops"] / ceiling
                # What cuBLAS reaches on the step's GEMM shapes back to back, in the same run:
                # the most any caller of cuBLAS gets at this batch.
                alone = ""
                if s.get("gemm_only_ms"):
                    gflop = s["gemm_bound_gflops"] * s["gemm_bound_ms"] / 1e3
                    alone = (f"; cuBLAS alone on the same shapes "
                             f"{gflop / (s['gemm_only_ms'] / 1e3) / ceiling:.0%}")
                row(target, f"{got:.0%} of {ceiling:,.0f} GFLOP/s{alone}", got >= share)
            else:
                row(target, None, None)

    for spec, batch in (("gpt-4x256", 64), ("gpt-4x256", 512), ("gpt-12x768", 16)):
        s = load(f"{out}/lm-{spec}-{batch}.json")
        target = f"language model {spec} batch {batch}, bf16: MFU >= compiled PyTorch's"
        if not s or not s.get("gflex") or not s.get("pytorch_compiled"):
            row(target, None, None)
            continue
        mfu = lambda r: (r["samples_per_s"] * s["context"] * s["flops_per_token"] /  # noqa: E731
                         (s.get("peak_tflops", 989.0) * 1e12)) if r else None
        g, c, f = mfu(s["gflex"]), mfu(s["pytorch_compiled"]), mfu(s.get("gflex_fused_attention"))
        measured = f"gflex {g:.1%}" + (f", fused attention {f:.1%}" if f else "") + \
            f"; compiled PyTorch {c:.1%}"
        row(target, measured, g >= c)
        if f is not None:
            row("  the same with GFLEX_FUSED_ATTENTION=1", measured, f >= c)

    for name in ("graphs-fashion-cnn-128", "graphs-gpt-4x256-64"):
        off, on = load(f"{out}/{name}-0.json"), load(f"{out}/{name}-1.json")
        target = f"{name[len('graphs-'):]}: GFLEX_CUDA_GRAPHS=1 step faster than without"
        if off and on:
            row(target, f"{on['step_ms']:.3f} ms ({on['replays']} replayed) against "
                f"{off['step_ms']:.3f} ms", on["replays"] > 0 and on["step_ms"] < off["step_ms"])
        else:
            row(target, None, None)

    # The 86M model's step with its GEMM operands packed in bf16 (GFLEX_BF16_OPERANDS=1), and
    # with fused attention, against the default (gflex_bench_step, each timed alone).
    base = load(f"{out}/lm-step-gpt-12x768-16.json")
    for suffix, what in (("fused", "GFLEX_FUSED_ATTENTION=1"), ("bf16ops", "GFLEX_BF16_OPERANDS=1")):
        other = load(f"{out}/lm-step-gpt-12x768-16-{suffix}.json")
        target = f"gpt-12x768 batch 16 step: {what} faster than without"
        if base and other:
            row(target, f"{other['step_ms']:.2f} ms against {base['step_ms']:.2f} ms",
                other["step_ms"] < base["step_ms"])
        else:
            row(target, None, None)

    print("| target | measured | |")
    print("| --- | --- | --- |")
    for target, measured, verdict in rows:
        print(f"| {target} | {measured} | {verdict} |")


if __name__ == "__main__":
    main()
