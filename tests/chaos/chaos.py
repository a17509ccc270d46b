#!/usr/bin/env python3
"""Chaos test: a fashion-mlp job on 6 node processes while, seeded at random, nodes are
killed (SIGKILL), frozen (SIGSTOP, then SIGCONT), new nodes start, and the core is killed
once (SIGKILL) and restarted on the same data directory. Asserts that the job completes,
that its test accuracy is at least the fault-free run's (same cluster, same spec) minus
0.005, that no committed round is lost across the core restart, and that no result is
applied twice. Bounded in time; prints the seed (GFLEX_CHAOS_SEED replays a run).

    python3 tests/chaos/chaos.py BUILD_BIN_DIR [SPEC]
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import core_credentials  # noqa: E402

BIN = sys.argv[1]
SPEC = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(__file__), "..", "..", "apps", "jobs", "fashion-mlp.toml")
LIMIT_S = 170  # the whole chaos phase, so the test stays within 3 minutes
seed = int(os.environ.get("GFLEX_CHAOS_SEED", random.SystemRandom().randrange(1 << 30)))
print(f"chaos seed {seed} (GFLEX_CHAOS_SEED={seed} replays it)", flush=True)
rng = random.Random(seed)
work = tempfile.mkdtemp(prefix="gflex-chaos-")
procs = {}  # name -> Popen
failures = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
core = f"127.0.0.1:{port}"


def start(name, args):
    log = open(f"{work}/{name}.log", "ab")
    procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def start_core(name):
    # The first start makes the core's credentials; nodes join the core tier (trusted, so
    # nothing is re-computed) with a core-tier token, all read from the environment.
    first = not os.path.exists(f"{work}/core/operator.key")
    if first:
        os.environ.update(core_credentials.init_core(BIN, f"{work}/core"))
    start(name, [f"{BIN}/gflex-core", "--listen", core, "--data-dir", f"{work}/core",
                 "--lease-ms", "2000", "--heartbeat-ms", "300", "--log-level", "debug"])
    wait(20, lambda: "core listening" in read(name), f"{name} to listen")
    if first:
        core_credentials.add_join_token(BIN, core, os.environ)


def start_node(name):
    start(name, [f"{BIN}/gflex-node", "--join", core, "--name", name, "--data-dir",
                 f"{work}/{name}", "--tier", "core"])


def read(name):
    try:
        return open(f"{work}/{name}.log", errors="replace").read()
    except FileNotFoundError:
        return ""


def wait(limit, cond, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    failures.append(f"timed out waiting for {what}")
    return False


def gflex(*args):
    r = subprocess.run([f"{BIN}/gflex", *args, "--core", core], capture_output=True, text=True,
                       timeout=30)
    return r.stdout if r.returncode == 0 else None


def status(job):
    out = gflex("status", job, "--json")
    return json.loads(out) if out else None


def run_job(label, chaos):
    out = gflex("submit", SPEC)
    if not out:
        failures.append(f"{label}: submit failed")
        return None
    job = out.strip()
    start_t = time.time()
    next_fault = time.time() + rng.uniform(1.0, 2.5)
    core_killed = False
    node_count = sum(1 for n in procs if n.startswith("node"))
    frozen = []
    while time.time() - start_t < LIMIT_S:
        st = status(job)
        if st and st["state"] in ("done", "failed", "cancelled"):
            break
        now = time.time()
        for name, until in list(frozen):
            if now >= until:
                procs[name].send_signal(signal.SIGCONT)
                frozen.remove((name, until))
        if chaos and now >= next_fault:
            alive = [n for n, p in procs.items()
                     if n.startswith("node") and p.poll() is None and n not in dict(frozen)]
            action = rng.choice(["kill", "freeze", "start"])
            if not core_killed and st and st["round"] >= 10:
                action = "core"
            if action == "core":
                committed = max([int(m) for m in re.findall(
                    rf"job {job}: round (\d+)/\d+ committed", read("core"))] or [0])
                procs["core"].send_signal(signal.SIGKILL)
                procs["core"].wait()
                print(f"  SIGKILL core after round {committed} committed", flush=True)
                start_core("core2")
                core_killed = committed
            elif action == "kill" and len(alive) > 3:
                victim = rng.choice(alive)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                print(f"  SIGKILL {victim}", flush=True)
            elif action == "freeze" and len(alive) > 3:
                victim = rng.choice(alive)
                procs[victim].send_signal(signal.SIGSTOP)
                frozen.append((victim, now + rng.uniform(1.0, 4.0)))
                print(f"  SIGSTOP {victim}", flush=True)
            else:
                node_count += 1
                start_node(f"node{node_count}")
                print(f"  start node{node_count}", flush=True)
            next_fault = now + rng.uniform(1.5, 3.0)
        time.sleep(0.2)
    for name, _ in frozen:
        procs[name].send_signal(signal.SIGCONT)
    st = status(job)
    accuracy = st and st["test_accuracy"]  # None: no status, or not evaluated
    print(f"{label}: {job} {st and st['state']}, round {st and st['round']}, test accuracy "
          f"{'none' if accuracy is None else f'{accuracy:.4f}'}, {time.time() - start_t:.1f} s",
          flush=True)
    return job, st, core_killed


def check_applied_once(job):
    """From the cores' "round R confirmed, applied ID:SHARD ..." records: within each core's
    life every (round, shard) is applied at most once, every assignment id at most once
    overall. A job with no such record fails: the check must have something to check."""
    seen_ids = set()
    rounds = 0
    for name in ("core", "core2"):
        pairs = set()
        for rnd, applied in re.findall(
                rf"job {job}: round (\d+) confirmed, applied((?: [0-9a-f]{{16}}:\d+)*)",
                read(name)):
            rounds += 1
            for aid, shard in re.findall(r"([0-9a-f]{16}):(\d+)", applied):
                if aid in seen_ids:
                    failures.append(f"assignment {aid} applied twice")
                seen_ids.add(aid)
                if (rnd, shard) in pairs:
                    failures.append(f"{name}: round {rnd} shard {shard} applied twice")
                pairs.add((rnd, shard))
    if rounds == 0 or not seen_ids:
        failures.append(f"no confirmed round of job {job} in the cores' logs")
    return len(seen_ids)


try:
    start_core("core")
    for i in range(1, 7):
        start_node(f"node{i}")
    wait(30, lambda: (gflex("nodes") or "").count("worker") == 6, "6 nodes to join")
    ref_job, ref, _ = run_job("fault-free", chaos=False)
    job, st, committed = run_job("chaos", chaos=True)
    # The bar is the fault-free run's accuracy: one cut short by the time limit lowers it.
    if not ref or ref["state"] != "done":
        failures.append(f"the fault-free job did not complete: {ref}")
    elif not st or st["state"] != "done":
        failures.append(f"the chaos job did not complete: {st}")
    elif st["test_accuracy"] < ref["test_accuracy"] - 0.005:
        failures.append(f"chaos accuracy {st['test_accuracy']:.4f} < fault-free "
                        f"{ref['test_accuracy']:.4f} - 0.005")
    if committed is False:
        failures.append("the core was never killed (the job ended before round 10?)")
    else:
        m = re.search(rf"resuming job {job} from round (\d+)", read("core2"))
        if not m:
            failures.append("the restarted core did not resume the job")
        elif int(m.group(1)) < committed:
            failures.append(f"resumed from round {m.group(1)}, but {committed} were committed")
        else:
            print(f"no committed round lost: {committed} committed, resumed from {m.group(1)}")
    applied = check_applied_once(job)
    print(f"{applied} results applied, none twice")
finally:
    for p in procs.values():
        try:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
        except Exception:
            pass
    if failures:
        print(f"kept logs in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

for f in failures:
    print("FAIL:", f)
print("chaos: " + ("FAILED" if failures else "passed") + f" (seed {seed})")
sys.exit(1 if failures else 0)
