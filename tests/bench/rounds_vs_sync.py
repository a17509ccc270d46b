#!/usr/bin/env python3
"""Benchmark: round-based training (DiLoCo-style, int8 updates) against the synchronous
data-parallel baseline (local_steps = 1, plain SGD, fp32), each on a core and 4 node
processes on loopback, side by side in one run. Reports time and bytes on the wire to 0.87
test accuracy and their ratios. A run that ends short of it (its job failed or was cancelled,
did all its rounds below the target, or ran out of time) says why, its ratios are bounds
(">= " when the baseline stopped short, "<= " when the other did), and the script exits 1
after its tables. Then the runtime's overhead: `gflex demo --nodes 1` against `gflex train`
on the same number of samples, one thread each, run REPEAT times in turn (the fastest of each
is compared: on a shared 2-core machine single runs vary by 10-15%).

    python3 tests/bench/rounds_vs_sync.py [BUILD_BIN_DIR] [--overhead-only] [--repeat N]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from local_cluster import LocalCluster

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("bin", nargs="?", default="build/bin", help="the build's bin directory")
_parser.add_argument("--overhead-only", action="store_true", help="only the overhead table")
_parser.add_argument("--repeat", type=int, default=3, help="overhead runs of each program")
_args = _parser.parse_args()
BIN = _args.bin
OVERHEAD_ONLY = _args.overhead_only
REPEAT = _args.repeat
TARGET = 0.87


def spec(**kw):
    inner = kw.get("inner", {})
    outer = kw.get("outer", {})
    return f"""[job]
name = "{kw['name']}"
workload = "fashion-mlp"
rounds = {kw['rounds']}
workers = 4
[inner]
optimizer = "{inner.get('optimizer', 'adamw')}"
local_steps = {inner.get('local_steps', 50)}
batch_size = {inner.get('batch_size', 128)}
lr = {inner.get('lr', 0.001)}
lr_schedule = "{inner.get('schedule', 'cosine')}"
[outer]
lr = {outer.get('lr', 0.5)}
momentum = {outer.get('momentum', 0.8)}
[wire]
compression = "{kw['compression']}"
[eval]
every = {kw['eval_every']}
[trust]
min_cosine = {kw.get('min_cosine', 0.0)}
norm_bound = {kw.get('norm_bound', 4.0)}
"""


def reached(st):
    """Whether the job's last evaluation reached TARGET while it ran or when it was done: a
    failed or cancelled job's figures are not a finished measurement."""
    return st["test_accuracy"] >= TARGET and st["state"] in ("running", "paused", "done")


def run_job(tmp, name, text, limit_s):
    """Starts a core and 4 nodes, submits `text`, polls until the test accuracy reaches
    TARGET, the job ends or `limit_s` passes, then cancels it; returns the last status (the
    figures at the first crossing), with `stopped` saying why the target was not reached
    (None where it was)."""
    with LocalCluster(BIN, f"{tmp}/{name}", nodes=4) as c:
        path = f"{tmp}/{name}.toml"
        open(path, "w").write(text)
        job = c.gflex("submit", path).strip()
        start = time.time()
        st = c.status(job)
        while not reached(st) and st["state"] not in ("done", "failed", "cancelled"):
            if time.time() - start >= limit_s:
                break
            time.sleep(0.1)
            st = c.status(job)
        c.gflex("cancel", job, check=False)
    if reached(st):
        st["stopped"] = None
    elif st["state"] in ("failed", "cancelled"):
        st["stopped"] = f"job {st['state']}" + (f": {st['detail']}" if st.get("detail") else "")
    elif st["state"] == "done":
        st["stopped"] = f"all {st['rounds']} rounds done below {TARGET}"
    else:
        st["stopped"] = f"not reached in {limit_s} s"
    return st


def timed(cmd):
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.time() - t0


def overhead(tmp):
    """One node, one worker, against the trainer on the same samples and the same evaluations,
    in turn REPEAT times: 27 rounds of 52 steps are 3 of the trainer's 468-step epochs, and
    the job evaluates every 9 rounds where the trainer does after each epoch."""
    overhead_spec = spec(name="overhead", rounds=27, compression="fp32", eval_every=9,
                         inner={"local_steps": 52})
    overhead_spec = overhead_spec.replace("workers = 4", "workers = 1")
    path = f"{tmp}/overhead.toml"
    open(path, "w").write(overhead_spec)
    samples = 27 * 52 * 128
    demo, train = [], []
    for _ in range(REPEAT):
        demo.append(timed([f"{BIN}/gflex", "--log-level", "warn", "demo", "--nodes", "1",
                           "--spec", path]))
        train.append(timed([f"{BIN}/gflex", "--log-level", "warn", "train", "--threads", "1",
                            "--epochs", "3"]))
    print()
    print(f"| runtime overhead ({samples} samples, 3 evaluations, 1 thread, fastest of "
          f"{REPEAT}) | wall (s) | all runs (s) | ratio |")
    print("| --- | ---: | --- | ---: |")
    print(f"| gflex train --epochs 3 | {min(train):.2f} | "
          f"{', '.join(f'{t:.2f}' for t in train)} | 1.00x |")
    print(f"| gflex demo --nodes 1 (27 rounds x 52 steps) | {min(demo):.2f} | "
          f"{', '.join(f'{t:.2f}' for t in demo)} | {min(demo) / min(train):.2f}x |")


def ratios(base, s):
    """The bytes and time ratio cells of `s` against the baseline `base`. A run that stopped
    short of the target bounds its ratios: its time and bytes to the target would have been
    more than it shows."""
    if base["stopped"] and s["stopped"] and s is not base:
        return "neither reached | neither reached"
    b = s["bytes_sent"] + s["bytes_received"]
    bb = base["bytes_sent"] + base["bytes_received"]
    if b <= 0 or s["wall_s"] <= 0:
        return "- | -"  # stopped before it sent a byte or ran a round
    bound = ("" if s is base or bool(s["stopped"]) == bool(base["stopped"]) else
             ">= " if base["stopped"] else "<= ")
    return f"{bound}{bb / b:.0f}x fewer | {bound}{base['wall_s'] / s['wall_s']:.2f}x"


def main():
    tmp = tempfile.mkdtemp(prefix="gflex-bench-")
    try:
        if OVERHEAD_ONLY:
            overhead(tmp)
            return
        sync = run_job(tmp, "sync", spec(name="sync", rounds=20000, compression="fp32",
                                         eval_every=25,
                                         inner={"optimizer": "sgd", "local_steps": 1,
                                                "batch_size": 32, "lr": 0.1,
                                                "schedule": "constant"},
                                         outer={"lr": 1.0, "momentum": 0.0},
                                         # One-step gradients of batch 32 share no common
                                         # direction and their norms vary by more than 4x,
                                         # so the outlier checks (whose premise is an
                                         # agreeing majority) would flag honest nodes:
                                         # they are off for this trusted baseline.
                                         min_cosine=-1.0, norm_bound=1000.0), 900)
        rounds = run_job(tmp, "rounds", spec(name="rounds", rounds=30, compression="int8",
                                             eval_every=1), 600)
        rows = [("synchronous (local_steps 1, SGD, fp32)", sync),
                ("rounds (local_steps 50, AdamW, int8)", rounds)]
        print(f"time and bytes to test accuracy {TARGET}, 4 node processes on loopback, "
              f"{os.cpu_count()} cores")
        print()
        print("| mode | rounds | test accuracy | time (s) | bytes on the wire | bytes ratio | time ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, s in rows:
            rounds_done = str(s["round"]) + (f" ({s['stopped']})" if s["stopped"] else "")
            b = s["bytes_sent"] + s["bytes_received"]
            print(f"| {label} | {rounds_done} | {s['test_accuracy']:.4f} | {s['wall_s']:.1f} | "
                  f"{b / 1e6:.1f} MB | {ratios(sync, s)} |")
        overhead(tmp)
        short = [f"{label.split(' (')[0]} ({s['stopped']})" for label, s in rows if s["stopped"]]
        if short:
            print(f"rounds_vs_sync: short of test accuracy {TARGET}: {'; '.join(short)}",
                  file=sys.stderr)
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
