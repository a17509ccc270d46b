#!/usr/bin/env python3
"""Benchmark: the shipped language model (apps/jobs/lm.toml) as a distributed job on a core
and 4 node processes on loopback (rounds of local steps, 4 workers a round), against the
one-process trainer given the same wall time, side by side in one run. Reports held-out bits
per byte (the mean next-byte cross-entropy over ln 2 on every tenth 65-byte sample of
Debian's fortunes) at each evaluation of the job, and what the one-process trainer reaches
in the job's wall time.

    python3 tests/bench/lm_distributed.py [BUILD_BIN_DIR] [--rounds R] [--steps S]

The one-process trainer's step rate is measured first (200 steps, no evaluation), and it is
then given as many steps as fit in the job's wall time at that rate.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from local_cluster import LocalCluster

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LN2 = 0.6931471805599453


def job_spec(rounds, steps, nodes):
    text = open(os.path.join(ROOT, "apps", "jobs", "lm.toml")).read()
    text = re.sub(r"(?m)^rounds = \d+", f"rounds = {rounds}", text)
    text = re.sub(r"(?m)^workers = \d+", f"workers = {nodes}", text)
    text = re.sub(r"(?m)^local_steps = \d+", f"local_steps = {steps}", text)
    text = re.sub(r"(?m)^every = \d+", "every = 5", text)
    return text


def run_job(bin_dir, tmp, text, nodes, limit_s):
    """Runs the job on a core and `nodes` node processes; returns its final status (with its
    wall time) and (round, seconds, bits per byte) at each evaluation."""
    trajectory = []
    with LocalCluster(bin_dir, f"{tmp}/lm", nodes) as c:
        path = f"{tmp}/lm.toml"
        open(path, "w").write(text)
        job = c.gflex("submit", path).strip()
        start = time.time()
        st = {}
        while time.time() - start < limit_s:
            st = c.status(job)
            if st["test_loss"] > 0 and st["round"] % 5 == 0 and (
                    not trajectory or trajectory[-1][0] != st["round"]):
                trajectory.append((st["round"], time.time() - start, st["test_loss"] / LN2))
            if st["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.2)
        st["wall_s"] = time.time() - start
        return st, trajectory


def train(bin_dir, tmp, steps, evaluate=True):
    out = f"{tmp}/train-{steps}.json"
    args = [f"{bin_dir}/gflex", "--log-level", "warn", "train", "--spec",
            os.path.join(ROOT, "apps", "jobs", "lm.toml"), "--max-steps", str(steps),
            "--batch-size", "16", "--lr", "0.004", "--threads", "2", "--json", out]
    if not evaluate:
        args.append("--no-eval")
    t0 = time.time()
    subprocess.run(args, check=True, capture_output=True)
    wall = time.time() - t0
    return json.load(open(out)), wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin", nargs="?", default="build/bin")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--nodes", type=int, default=4)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gflex-lm-dist-")
    try:
        st, trajectory = run_job(a.bin, tmp, job_spec(a.rounds, a.steps, a.nodes), a.nodes, 3600)
        if st.get("state") != "done":
            sys.exit(f"the job did not finish: {st.get('state')} {st.get('detail')}")
        calib, calib_wall = train(a.bin, tmp, 200, evaluate=False)
        rate = calib["steps"] / calib["train_s"]
        # The trainer's evaluation and start-up are inside the job's wall time too.
        steps = max(1, int((st["wall_s"] - (calib_wall - calib["train_s"])) * rate * 0.97))
        one, one_wall = train(a.bin, tmp, steps)
        print(f"language model (apps/jobs/lm.toml), {os.cpu_count()} cores; job: core and "
              f"{a.nodes} node processes on loopback, {a.rounds} rounds x {a.nodes} workers x "
              f"{a.steps} steps, batch 16")
        print()
        print("| run | steps (x batch 16) | wall (s) | held-out bits/byte |")
        print("| --- | ---: | ---: | ---: |")
        for r, t, bits in trajectory:
            print(f"| job after round {r} | {r * a.nodes * a.steps} ({r * a.steps} per worker) "
                  f"| {t:.0f} | {bits:.3f} |")
        print(f"| job, final | {a.rounds * a.nodes * a.steps} | {st['wall_s']:.0f} | "
              f"{st['test_loss'] / LN2:.3f} |")
        print(f"| one process, 2 threads, same wall time | {one['steps']} | {one_wall:.0f} | "
              f"{one['test_bits']:.3f} |")
        print()
        print(f"one-process rate: {rate:.1f} steps/s (calibration, 200 steps); job: "
              f"{a.rounds * a.nodes * a.steps / st['wall_s']:.1f} steps/s over all workers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
