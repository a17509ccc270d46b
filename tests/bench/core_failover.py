#!/usr/bin/env python3
"""Benchmark: a core of three servers (docs/FAILURES.md), in one command.

1. **Commit rate**: `gflex_bench_store` commits ledger settlements and fashion-mlp rounds
   (record and checkpoint) to a single core's LMDB file and to a core of three servers on a
   three-member etcd cluster (every chunk sent to the other two cores first), one after the
   other in one process; commits per second and latency for each, and their ratio.
2. **Failover**: three etcd members, three `gflex-core` processes (`--store etcd://...`,
   `--leader-lease-s` --lease), four nodes given every core's address, the shipped
   fashion-mlp job with 4 workers and --rounds rounds. --kills times: once the job has
   committed a few more rounds, the leading core is killed with SIGKILL; measured from the
   kill to the new leader's lead (its log), to its listening, to its resuming the job, and to
   its first committed round of the job. The killed core is started again as a follower
   before the next kill.

    python3 tests/bench/core_failover.py [BUILD_BIN_DIR] [--lease 5] [--kills 3] [--rounds 60]

Needs Debian's etcd-server and etcd-client (installed with `apt-get` when missing and this
runs as root). Everything runs on this machine, loopback only; every process it starts is
killed by its pid when it ends.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from local_cluster import free_port  # noqa: E402

STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]? ")


def ensure_etcd():
    if shutil.which("etcd") and shutil.which("etcdctl"):
        return
    if os.geteuid() != 0:
        sys.exit("etcd and etcdctl are needed: apt-get install etcd-server etcd-client")
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "etcd-server", "etcd-client"], check=True,
                   stdout=subprocess.DEVNULL)


class Processes:
    """Every process started, killed with SIGKILL by pid on leaving."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        return False


def start_etcd(procs, work, name):
    """Three etcd members; their client endpoints as "h:p,h:p,h:p"."""
    ports = [(free_port(), free_port()) for _ in range(3)]
    cluster = ",".join(f"{name}{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    for i, (c, p) in enumerate(ports):
        procs.start(["etcd", "--name", f"{name}{i}", "--data-dir", f"{work}/{name}{i}",
                     "--listen-client-urls", f"http://127.0.0.1:{c}",
                     "--advertise-client-urls", f"http://127.0.0.1:{c}",
                     "--listen-peer-urls", f"http://127.0.0.1:{p}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"{name}-{os.getpid()}",
                     "--max-txn-ops", "10000", "--max-request-bytes", "10485760"],
                    open(f"{work}/{name}{i}.log", "w"))
    endpoints = ",".join(f"127.0.0.1:{c}" for c, _ in ports)
    wait(30, "etcd to be healthy", lambda: subprocess.run(
        ["etcdctl", "--endpoints", endpoints, "endpoint", "health"],
        capture_output=True, env=etcd_env()).returncode == 0)
    return endpoints


def etcd_env():
    return dict(os.environ, ETCDCTL_API="3")


def wait(limit, what, ok, every=0.1):
    deadline = time.time() + limit
    while not ok():
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {limit} s waiting for {what}")
        time.sleep(every)


def log_times(path, pattern):
    """The times (seconds since the epoch) of the log lines matching `pattern`."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = STAMP.match(line)
            if m and re.search(pattern, line):
                t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
                out.append(t.timestamp())
    return out


def first_after(path, pattern, t0):
    times = [t for t in log_times(path, pattern) if t >= t0]
    return times[0] if times else None


def commit_rate(bin_dir, work, procs, settlements, rounds):
    endpoints = start_etcd(procs, work, "s")
    out = subprocess.run([f"{bin_dir}/gflex_bench_store", endpoints, f"{work}/store",
                          str(settlements), str(rounds)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"gflex_bench_store: {out.stderr.strip()}")
    return out.stdout


def failover(bin_dir, work, procs, lease, kills, rounds):
    endpoints = start_etcd(procs, work, "f")
    core = f"{bin_dir}/gflex-core"
    subprocess.run([core, "init", "--data-dir", f"{work}/c1"], check=True,
                   stdout=subprocess.DEVNULL)
    for i in (2, 3):
        shutil.copytree(f"{work}/c1", f"{work}/c{i}")
    env = dict(os.environ, GFLEX_CORE_CERT=f"{work}/c1/core-cert.pem")
    with open(f"{work}/c1/operator.key") as f:
        env["GFLEX_API_KEY"] = f.read().strip()
    ports = {i: (free_port(), free_port()) for i in (1, 2, 3)}
    cores = ",".join(f"127.0.0.1:{ports[i][0]}" for i in (1, 2, 3))
    logs, pids, runs = {}, {}, [0]

    def start_core(i):
        runs[0] += 1
        logs[i] = f"{work}/c{i}-{runs[0]}.log"
        pids[i] = procs.start(
            [core, "--store", f"etcd://{endpoints}", "--core-id", f"c{i}",
             "--listen", f"127.0.0.1:{ports[i][0]}", "--chunk-listen", f"127.0.0.1:{ports[i][1]}",
             "--data-dir", f"{work}/c{i}", "--leader-lease-s", str(lease)],
            open(logs[i], "w"), env)

    def leader():
        r = subprocess.run(["etcdctl", "--endpoints", endpoints, "get", "/gflex/leader",
                            "--print-value-only"], capture_output=True, text=True, env=etcd_env())
        return r.stdout.split()[0] if r.stdout.split() else ""

    def gflex(*args):
        return subprocess.run([f"{bin_dir}/gflex", *args, "--core", cores], capture_output=True,
                              text=True, env=env)

    start_core(1)
    wait(30, "c1 to lead", lambda: log_times(logs[1], "core listening"))
    start_core(2)
    start_core(3)
    wait(30, "c2 and c3 to follow",
         lambda: log_times(logs[2], "following") and log_times(logs[3], "following"))
    token = subprocess.run([core, "token", "create", "--tier", "core", "--core", cores],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    for n in range(4):
        procs.start([f"{bin_dir}/gflex-node", "--join", cores, "--name", f"n{n}", "--data-dir",
                     f"{work}/n{n}", "--tier", "core", "--token", token],
                    open(f"{work}/n{n}.log", "w"), env)
    wait(60, "4 nodes to join", lambda: len(gflex("nodes").stdout.splitlines()) == 4, 0.5)
    with open(f"{SRC}/apps/jobs/fashion-mlp.toml") as f:
        spec = f.read().replace("workers = 3\n", "workers = 4\n").replace(
            "rounds = 30\n", f"rounds = {rounds}\n")
    with open(f"{work}/job.toml", "w") as f:
        f.write(spec)
    r = gflex("submit", f"{work}/job.toml", "--json", f"{work}/submitted.json")
    if r.returncode != 0:
        raise RuntimeError(f"the job was not submitted: {r.stderr.strip()}")
    with open(f"{work}/submitted.json") as f:
        job = json.load(f)["job_id"]

    def committed_round():
        r = gflex("status", job, "--json")
        return json.loads(r.stdout)["round"] if r.returncode == 0 else -1

    rows = []
    for k in range(kills):
        target = 4 + k * max(4, rounds // (kills + 1))
        wait(300, f"round {target}", lambda: committed_round() >= target, 0.5)
        who = leader()
        i = int(who[1:])
        pids[i].send_signal(signal.SIGKILL)
        pids[i].wait()
        t0 = time.time()
        wait(60, "another core to lead", lambda: leader() not in ("", who))
        new = int(leader()[1:])
        log = logs[new]
        pattern = rf"job {re.escape(job)}: round \d+/\d+ committed"
        wait(120, f"c{new} to commit a round", lambda: first_after(log, pattern, t0))
        leads = first_after(log, r"replication: core c\d leads", t0)
        listens = first_after(log, "core listening", t0)
        resumes = first_after(log, "resuming job", t0)
        commit = first_after(log, pattern, t0)
        rows.append((who, f"c{new}", leads - t0, listens - t0, resumes - t0, commit - t0))
        print(f"kill {k + 1}: {who} killed; c{new} leads {leads - t0:.2f} s later, its first "
              f"round committed at {commit - t0:.2f} s", flush=True)
        start_core(i)
        wait(30, f"{who} to follow", lambda: log_times(logs[i], "following"))
    wait(600, "the job to finish", lambda: committed_round() >= rounds, 1.0)
    final = json.loads(gflex("status", job, "--json").stdout)
    return rows, final


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin", nargs="?", default="build/bin")
    ap.add_argument("--lease", type=int, default=5, help="the leader's etcd lease, seconds")
    ap.add_argument("--kills", type=int, default=3, help="0: no failover part")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--settlements", type=int, default=300)
    ap.add_argument("--commit-rounds", type=int, default=30, help="0: no commit-rate part")
    a = ap.parse_args()
    bin_dir = os.path.abspath(a.bin)
    ensure_etcd()
    work = tempfile.mkdtemp(prefix="gflex-failover-")
    with Processes() as procs:
        try:
            if a.commit_rounds > 0:
                print("## Commit rate: one core on LMDB, three cores on etcd\n", flush=True)
                print(commit_rate(bin_dir, work, procs, a.settlements, a.commit_rounds),
                      flush=True)
            if a.kills > 0:
                rows, final = failover(bin_dir, work, procs, a.lease, a.kills, a.rounds)
        except BaseException:
            print(f"failed; the logs are in {work}", file=sys.stderr)
            raise
    shutil.rmtree(work, ignore_errors=True)
    if a.kills <= 0:
        return
    print(f"\n## Failover: leader killed with SIGKILL, lease {a.lease} s (seconds after the kill)\n")
    print("| kill | killed | new leader | leads | listens | resumes the job | first round "
          "committed |\n| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for k, (who, new, leads, listens, resumes, commit) in enumerate(rows, 1):
        print(f"| {k} | {who} | {new} | {leads:.2f} | {listens:.2f} | {resumes:.2f} | "
              f"{commit:.2f} |")
    worst = max(r[5] for r in rows)
    print(f"\nworst time to the first committed round: {worst:.2f} s (target: under 10 s); "
          f"the job ended {final['state']} at round {final['round']}, test accuracy "
          f"{final['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
