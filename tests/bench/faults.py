#!/usr/bin/env python3
"""Benchmark: how fast the runtime notices and recovers from node failures, measured on real
processes on loopback (a core and 4 nodes, one worker each, default lease and heartbeat):

- time from SIGKILL of a node to the core taking it as unreachable;
- time from SIGSTOP of a node to the core giving up on it (lease);
- time from detection to the lost shard's assignment being sent to another worker;
- throughput (training samples per second of job time) with 1 of 4 nodes (25%) killed at
  round 5, against the fault-free run of the same job in the same command.

Times come from the core's log timestamps (milliseconds) and this script's clock, on one
machine.

    python3 tests/bench/faults.py [BUILD_BIN_DIR]
"""
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# The nodes join the core tier (trusted, so nothing is re-computed) with a core-tier token;
# the test cores' credentials and tokens come from core_credentials.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import core_credentials  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else "build/bin"
SPEC = """[job]
name = "faults"
workload = "fashion-mlp"
rounds = 20
workers = 4
[eval]
every = 20
[round]
# Off here, so that the figures measure detection and reassignment, not backups.
backup_after = 0
"""


def stamp(line):
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


class cluster:
    def __init__(self, tmp, name, nodes=4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.core = f"127.0.0.1:{s.getsockname()[1]}"
        self.log = f"{tmp}/{name}-core.log"
        self.env = core_credentials.init_core(BIN, f"{tmp}/{name}-core")
        self.procs = [subprocess.Popen(
            [f"{BIN}/gflex-core", "--listen", self.core, "--data-dir", f"{tmp}/{name}-core",
             "--log-level", "debug"], stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            env=self.env)]
        core_credentials.add_join_token(BIN, self.core, self.env)
        self.nodes = []
        for i in range(nodes):
            p = subprocess.Popen([f"{BIN}/gflex-node", "--join", self.core, "--name", f"n{i}",
                                  "--data-dir", f"{tmp}/{name}-n{i}", "--log-level", "warn",
                                  "--tier", "core"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=self.env)
            self.procs.append(p)
            self.nodes.append(p)
        while len(json.loads(self.gflex("nodes", "--json") or "[]")) < nodes:
            time.sleep(0.2)
        spec = f"{tmp}/{name}.toml"
        open(spec, "w").write(SPEC)
        self.job = self.gflex("submit", spec).strip()

    def gflex(self, *args):
        r = subprocess.run([f"{BIN}/gflex", *args, "--core", self.core], capture_output=True,
                           text=True, env=self.env)
        return r.stdout if r.returncode == 0 else None

    def status(self):
        return json.loads(self.gflex("status", self.job, "--json"))

    def wait_round(self, n):
        while self.status()["round"] < n:
            time.sleep(0.05)

    def wait_done(self):
        while self.status()["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.2)
        return self.status()

    def lines(self, pattern, after=0.0):
        out = []
        for line in open(self.log, errors="replace"):
            if re.search(pattern, line) and stamp(line) >= after:
                out.append(line)
        return out

    def first(self, pattern, after, limit=30):
        deadline = time.time() + limit
        while time.time() < deadline:
            found = self.lines(pattern, after)
            if found:
                return stamp(found[0])
            time.sleep(0.05)
        return None

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGKILL)
            p.wait()


def reassigned_after(c, since, node):
    """Seconds from the core noticing that `node` is lost (its unreachable/lease line or the
    job's failure of its assignment, whichever is first) to the lost shard's new assignment."""
    fail = c.first(rf"on {node} failed \(.*\); reassigning shard (\d+)", since)
    if fail is None:
        return None
    line = c.lines(rf"on {node} failed \(.*\); reassigning shard (\d+)", since)[0]
    shard = re.search(r"reassigning shard (\d+)", line).group(1)
    seen = min(t for t in (fail, c.first(rf"\({node}\) (is unreachable|missed its heartbeats)",
                                         since, 1)) if t is not None)
    sent = c.first(rf"assignment \w+ \(round \d+, shard {shard}\) to (?!{node}\b)", fail)
    return None if sent is None else sent - seen


def kill_while_busy(c, sig, spare=()):
    """Sends `sig` to the next node (not in `spare`) given an assignment, right after it is
    given it; returns the time and the node's name. The victim is found in the log, because
    the market chooses who works (by price per calibrated throughput), and one node of five
    may get nothing."""
    after = time.time()
    deadline = after + 60
    while time.time() < deadline:
        for line in c.lines(r"\) to n\d+$", after):
            name = re.search(r"\) to (n\d+)$", line).group(1)
            if name not in spare:
                t = time.time()
                c.nodes[int(name[1:])].send_signal(sig)
                return t, name
        time.sleep(0.02)
    raise RuntimeError("no node was given an assignment within 60 s")


def main():
    tmp = tempfile.mkdtemp(prefix="gflex-faults-")
    rows = []
    try:
        # Kill and hang detection, and reassignment after each.
        # One node more than a round needs: a lost shard has a free worker to go to.
        c = cluster(tmp, "detect", nodes=5)
        c.wait_round(3)
        t_kill, killed = kill_while_busy(c, signal.SIGKILL)
        kill_seen = c.first(rf"\({killed}\) is unreachable", t_kill - 0.01)
        kill_reassign = reassigned_after(c, t_kill - 0.01, killed)
        c.wait_round(6)
        t_stop, stopped = kill_while_busy(c, signal.SIGSTOP, spare=(killed,))
        hang_seen = c.first(rf"\({stopped}\) missed its heartbeats", t_stop - 0.01)
        hang_reassign = reassigned_after(c, t_stop - 0.01, stopped)
        c.close()

        # Throughput with 25% of the nodes killed, against the fault-free run.
        free = cluster(tmp, "free")
        t0 = time.time()
        free.wait_done()
        free_s = time.time() - t0
        free.close()
        hurt = cluster(tmp, "hurt")
        t0 = time.time()
        hurt.wait_round(5)
        hurt.nodes[0].send_signal(signal.SIGKILL)
        st = hurt.wait_done()
        hurt_s = time.time() - t0
        hurt.close()
        samples = 20 * 4 * 50 * 128

        fmt = lambda x: "n/a" if x is None else f"{x * 1000:.0f} ms"
        print("failure detection and recovery, core + 5 gflex-node processes (4 per round) on "
              "loopback, default heartbeat 1 s and lease 4 s, backups off")
        print()
        print("| measure | time | target |")
        print("| --- | ---: | ---: |")
        print(f"| SIGKILL of a node -> core takes it as unreachable | "
              f"{fmt(kill_seen - t_kill if kill_seen else None)} | < 1 s |")
        print(f"| ... -> its shard's assignment sent to another worker | {fmt(kill_reassign)} | "
              f"< 100 ms |")
        print(f"| SIGSTOP of a node -> core gives up on it (lease) | "
              f"{fmt(hang_seen - t_stop if hang_seen else None)} | < 5 s |")
        print(f"| ... -> its shard's assignment sent to another worker | {fmt(hang_reassign)} | "
              f"< 100 ms |")
        print()
        print("| run (20 rounds x 4 workers x 50 steps x 128) | wall (s) | samples/s | retained |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| fault-free, 4 nodes | {free_s:.1f} | {samples / free_s:.0f} | 100% |")
        print(f"| 1 of 4 nodes killed at round 5 ({st['state']}, accuracy "
              f"{st['test_accuracy']:.4f}) | {hurt_s:.1f} | {samples / hurt_s:.0f} | "
              f"{100 * free_s / hurt_s:.0f}% |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
