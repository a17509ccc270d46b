#!/usr/bin/env python3
"""Benchmark: one real core against thousands of simulated nodes over real sockets.

A `gflex-core` (TLS, its LMDB store, metrics on) and processes of `gflex_bench_core_load`,
each holding --per-process simulated nodes (core_load.cpp: each node its own key, hello,
session, lease and heartbeats; it answers assignments at once with a valid signed update made
from the assignment, and computes nothing). The nodes of one process share its connection.

1. **Ramp** to each of --steps nodes: the time to join them, then over --window seconds the
   heartbeats the core's registry took in per second (gflex_core_heartbeats_total) against
   the rate the nodes beat at, the core's CPU (of one core, from /proc) and its resident memory per
   connected node (above the core's own with no node).
2. **Dispatch** at the last step, one job at a time of --round-sizes workers: a linear
   784-10 model on Fashion-MNIST (7,850 parameters), local_steps 1, --rounds rounds. A round's
   dispatch latency is measured on the nodes' side with the machine's one monotonic clock: from
   the last result of a round leaving its node to each assignment of the next round reaching
   its node (the result's trip, the round's aggregation, the next round's encoding, the market,
   the sessions and the trip out).
3. **Loss**: --jobs jobs of 1,000 workers at once; one process of 1,000 nodes is killed with
   SIGKILL (its connection closes), then another is frozen with SIGSTOP (it stays connected and
   silent, so only the lease catches it). Reported: the time until the core counts 1,000 nodes
   fewer, and until every job has committed a round after that (their lost work handed out
   again and answered).

    python3 tests/bench/core_scale.py [BUILD_BIN_DIR] [--steps 1000,2500,5000,10000]
        [--per-process 500] [--round-sizes 10,100,1000] [--jobs 4]

Everything runs on this machine: the core shares its cores with the load generators, so
the core's CPU figure is what it used, not what it would get alone.
"""
import argparse
import datetime
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from local_cluster import LocalCluster, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SPEC = """[job]
name = "{name}"
rounds = {rounds}
workers = {workers}

[inner]
optimizer = "sgd"
local_steps = 1
batch_size = 32
lr = 0.01

[outer]
lr = 1.0
momentum = 0.0

[wire]
compression = "fp32"

[eval]
every = {rounds}

[round]
backup_after = 0.0

[trust]
tier = "core"

[data]
set = "fashion-mnist"

[model]
input = [784]
layers = [{{ type = "linear", units = 10 }}, {{ type = "softmax_xent" }}]
"""


class Core:
    """The core's process figures (from /proc) and metrics (from its /metrics)."""

    def __init__(self, pid, metrics_at):
        self.pid, self.url = pid, f"http://{metrics_at}/metrics"

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self):
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    def metrics(self):
        out = {}
        with urllib.request.urlopen(self.url, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    out[name] = float(value)
        return out

    def metric(self, name, default=0.0):
        return self.metrics().get(name, default)

    def nodes(self):
        m = self.metrics()
        return int(m.get('gflex_core_nodes{tier="core"}', 0))


class Fleet:
    """The load generator processes; each writes its answered assignments on SIGTERM."""

    def __init__(self, bin_dir, core_at, env, workdir, nice=0):
        self.bin, self.core_at, self.env, self.dir = bin_dir, core_at, env, workdir
        self.nice = nice
        self.procs = []  # (Popen, nodes, records path)

    def add(self, nodes):
        k = len(self.procs)
        records = f"{self.dir}/records-{k}.tsv"
        log = open(f"{self.dir}/load-{k}.log", "w")
        p = subprocess.Popen(
            [f"{self.bin}/gflex_bench_core_load", "--core", self.core_at, "--nodes", str(nodes),
             "--prefix", f"g{k}", "--records", records], env=self.env, stdout=log, stderr=log,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.procs.append((p, nodes, records))
        return p

    def total(self):
        return sum(n for p, n, _ in self.procs if p.poll() is None)

    def heartbeats_per_s(self, heartbeat_ms):
        return self.total() * 1000.0 / heartbeat_ms

    def stop(self):
        """SIGTERM to every live process; returns every record they wrote."""
        live = [(p, r) for p, _, r in self.procs if p.poll() is None]
        for p, _ in live:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        records = []
        for p, path in live:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if os.path.exists(path):
                with open(path) as f:
                    for line in f:
                        job, rnd, verify, arrived, answered = line.split("\t")
                        records.append((job, int(rnd), verify == "1", int(arrived), int(answered)))
        return records

    def kill_all(self):
        for p, _, _ in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_until(predicate, limit_s, what, poll_s=0.2):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise RuntimeError(f"timed out after {limit_s} s waiting for {what}")


def submit(cluster, workdir, name, workers, rounds):
    path = f"{workdir}/{name}.toml"
    with open(path, "w") as f:
        f.write(SPEC.format(name=name, workers=workers, rounds=rounds))
    r = subprocess.run([f"{cluster.bin}/gflex", "submit", path, "--core", cluster.core],
                       capture_output=True, text=True, env=cluster.env)
    if r.returncode != 0:
        raise RuntimeError(f"gflex submit {name}: {r.stderr.strip()}")
    return r.stdout.strip().split()[-1]


def status(cluster, job):
    """A job's status, or {} when the core did not answer in time (it is loaded here)."""
    try:
        return cluster.status(job)
    except ValueError:
        return {}


class LogTail:
    """The lines a log gains, read from where the last call stopped."""

    def __init__(self, path):
        self.path, self.offset, self.rest = path, 0, ""

    def new_lines(self):
        with open(self.path) as f:
            f.seek(self.offset)
            text = self.rest + f.read()
            self.offset = f.tell()
        lines = text.split("\n")
        self.rest = lines.pop()
        return lines


def wait_done(cluster, jobs, log_path, limit_s):
    """Until each job has committed its last round, read from the core's log: a `gflex status`
    every 2 s was a process start and a TLS handshake on the machine the rounds are measured
    on, and landed in some rounds and not others. A job that fails commits no last round: its
    state is asked every 10 s. Then each job's state, once."""
    tail, ended, asked = LogTail(log_path), set(), [time.time()]
    final = re.compile(r"info job (\S+): round (\d+)/(\d+) committed")

    def done():
        for line in tail.new_lines():
            m = final.search(line)
            if m and m.group(2) == m.group(3):
                ended.add(m.group(1))
        if time.time() - asked[0] > 10.0:
            asked[0] = time.time()
            ended.update(j for j in jobs
                         if status(cluster, j).get("state") in ("failed", "cancelled"))
        return all(j in ended for j in jobs)
    wait_until(done, limit_s, f"jobs {', '.join(jobs)} to end", poll_s=0.1)
    terminal = ("done", "failed", "cancelled")
    for j in jobs:
        wait_until(lambda: status(cluster, j).get("state") in terminal, 60, f"job {j}'s end",
                   poll_s=0.5)
        s = status(cluster, j)
        if s.get("state") != "done":
            raise RuntimeError(f"job {j} ended {s.get('state')}: {s.get('detail')}")


COMMITTED = re.compile(r"^(\S+ \S+) info job (\S+): round \d+/\d+ committed")


def first_commits_after(log_path, jobs, t):
    """Each job's first round committed after wall-clock time t, from the core's log (its
    timestamps are local time with milliseconds); None for a job that has none yet."""
    out = dict.fromkeys(jobs)
    with open(log_path) as f:
        for line in f:
            m = COMMITTED.match(line)
            if not m or m.group(2) not in out or out[m.group(2)] is not None:
                continue
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if when > t:
                out[m.group(2)] = when
    return out


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def dispatch_latencies(records, job):
    """From the last result of round r leaving its node to each assignment of round r+1
    reaching its node, in ms."""
    by_round = {}
    for j, rnd, verify, arrived, answered in records:
        if j == job and not verify:
            by_round.setdefault(rnd, []).append((arrived, answered))
    out = []
    for rnd in sorted(by_round):
        if rnd - 1 not in by_round:
            continue
        t0 = max(a for _, a in by_round[rnd - 1])
        out.extend((arrived - t0) / 1e6 for arrived, _ in by_round[rnd])
    return out


def table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin", nargs="?", default="build/bin")
    ap.add_argument("--steps", default="1000,2500,5000,10000")
    ap.add_argument("--per-process", type=int, default=500)
    ap.add_argument("--round-sizes", default="10,100,1000")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--heartbeat-ms", type=int, default=1000)
    ap.add_argument("--lease-ms", type=int, default=4000)
    ap.add_argument("--nice", type=int, default=0,
                    help="run the load generators at this niceness (the nodes stand in for "
                         "machines elsewhere; 0: the core and they share the CPUs as equals)")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    sizes = [int(s) for s in args.round_sizes.split(",")]
    bin_dir = os.path.abspath(args.bin)
    os.makedirs("build", exist_ok=True)
    work = tempfile.mkdtemp(prefix="core-scale-", dir="build")
    metrics_at = f"127.0.0.1:{free_port()}"
    core_args = ["--metrics-listen", metrics_at, "--max-per-address", "1000000",
                 "--shard-samples", "50",
                 "--heartbeat-ms", str(args.heartbeat_ms), "--lease-ms", str(args.lease_ms)]
    core_log = open(f"{work}/core.log", "w")
    print(f"core log: {work}/core.log", flush=True)
    with LocalCluster(bin_dir, f"{work}/c", nodes=0, core_args=core_args,
                      core_log=core_log, core_log_level="info") as cluster:
        core = Core(cluster.procs[0].pid, metrics_at)
        fleet = Fleet(bin_dir, cluster.core, cluster.env, work, args.nice)
        try:
            run(args, steps, sizes, cluster, core, fleet, work)
        finally:
            fleet.kill_all()


def run(args, steps, sizes, cluster, core, fleet, work):
    wait_until(lambda: core.metrics() is not None, 20, "the core's metrics")
    time.sleep(2)
    rss0 = core.rss_mib()
    print(f"core alone: {rss0:.1f} MiB resident", flush=True)
    ramp = []
    for target in steps:
        t0 = time.time()
        while fleet.total() < target:
            fleet.add(min(args.per_process, target - fleet.total()))
        wait_until(lambda: core.nodes() >= target, 600, f"{target} nodes to join", poll_s=0.5)
        join_s = time.time() - t0
        time.sleep(3)
        m0, c0, w0 = core.metric("gflex_core_heartbeats_total"), core.cpu_s(), time.time()
        time.sleep(args.window)
        m1, c1, w1 = core.metric("gflex_core_heartbeats_total"), core.cpu_s(), time.time()
        rss = core.rss_mib()
        taken = (m1 - m0) / (w1 - w0)
        sent = fleet.heartbeats_per_s(args.heartbeat_ms)
        ramp.append((target, f"{join_s:.1f}", f"{sent:,.0f}", f"{taken:,.0f}",
                     f"{100 * (c1 - c0) / (w1 - w0):.0f}%", f"{rss:.0f}",
                     f"{(rss - rss0) * 1024 / target:.1f}"))
        print(f"{target} nodes: {ramp[-1]}", flush=True)
    table("Ramp (one core; all on this machine)",
          ["nodes", "join s", "heartbeats/s sent", "heartbeats/s taken in", "core CPU",
           "core RSS MiB", "KiB per node"], ramp)

    dispatch_jobs = {}
    for w in sizes:
        job = submit(cluster, work, f"dispatch-{w}", w, args.rounds)
        t0 = time.time()
        wait_done(cluster, [job], f"{work}/core.log", 600)
        dispatch_jobs[w] = (job, time.time() - t0)
        print(f"job of {w} workers: {args.rounds} rounds in {dispatch_jobs[w][1]:.1f} s", flush=True)

    # Several jobs of 1,000 workers at once; then 1,000 nodes lost at once, twice (--jobs 0
    # leaves this out).
    losses, nodes = [], fleet.total()
    if args.jobs > 0:
        losses, nodes = lose_nodes(args, cluster, core, fleet, work)
    report(args, steps, fleet, ramp, dispatch_jobs, losses, nodes, work)


def lose_nodes(args, cluster, core, fleet, work):
    log_path = f"{work}/core.log"
    big = fleet.add(1000)
    frozen = fleet.add(1000)
    target = fleet.total()
    wait_until(lambda: core.nodes() >= target, 600, f"{target} nodes to join", poll_s=0.5)
    jobs = [submit(cluster, work, f"many-{k}", 1000, 1000) for k in range(args.jobs)]
    wait_until(lambda: all(status(cluster, j).get("round", 0) >= 2 for j in jobs), 600,
               "every job to commit 2 rounds", poll_s=1.0)
    losses = []
    for victim, how in ((big, "SIGKILL"), (frozen, "SIGSTOP")):
        before = core.nodes()
        rounds0 = core.metric("gflex_core_rounds_committed_total")
        t0 = time.time()
        victim.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGSTOP)
        wait_until(lambda: core.nodes() <= before - 1000, 120, "the loss to be seen", poll_s=0.02)
        detect = time.time() - t0
        # The jobs' commits come from the core's log: `gflex status` polls are slow under
        # this load, and would add their own time.
        seen = t0 + detect
        wait_until(lambda: None not in first_commits_after(log_path, jobs, seen).values(), 300,
                   "every job to commit a round after the loss", poll_s=0.5)
        recover = max(first_commits_after(log_path, jobs, seen).values()) - t0
        losses.append((how, f"{detect:.2f}", f"{recover:.2f}",
                       f"{core.metric('gflex_core_rounds_committed_total') - rounds0:.0f}"))
        print(f"{how}: {losses[-1]}", flush=True)
    for j in jobs:
        cluster.gflex("cancel", j, check=False)
    return losses, target


def report(args, steps, fleet, ramp, dispatch_jobs, losses, nodes, work):
    records = fleet.stop()
    rows = []
    for w, (job, elapsed) in dispatch_jobs.items():
        lat = dispatch_latencies(records, job)
        rows.append((w, len(lat), f"{percentile(lat, 0.5):.1f}", f"{percentile(lat, 0.99):.1f}",
                     f"{max(lat):.1f}" if lat else "nan", f"{elapsed / args.rounds:.2f}"))
    table(f"Dispatch at {steps[-1]} nodes (one job at a time, {args.rounds} rounds)",
          ["round size", "assignments", "p50 ms", "p99 ms", "max ms", "s per round"], rows)
    table(f"1,000 nodes lost at once ({args.jobs} jobs of 1,000 workers on {nodes} nodes)",
          ["how", "seen lost after s", "every job past it after s", "rounds committed meanwhile"],
          losses)
    json.dump({"ramp": ramp, "dispatch": rows, "loss": losses},
              open(f"{work}/results.json", "w"), indent=1)


if __name__ == "__main__":
    main()
