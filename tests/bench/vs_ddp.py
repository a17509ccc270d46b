#!/usr/bin/env python3
"""Benchmark: GPUFlex against PyTorch DistributedDataParallel and Hivemind on the same task,
side by side in one run: fashion-mlp (784-512-256-10) to a test accuracy of 0.87 with 4
workers of batch 128 each, on loopback.

- DDP: 4 processes, the gloo backend with its default bucket size
  (25 MiB), AdamW at lr 1e-3 (PyTorch's recommended default for Adam-type optimisers), each rank
  a disjoint quarter of every epoch's permutation (DistributedSampler's split), one thread per
  rank; rank 0 evaluates on the 10,000 test images every 50 steps and all ranks stop together.
- Hivemind: 4 peer processes (hivemind_peer.py), one thread each, the same model, data split
  and AdamW at lr 1e-3 wrapped in a `hivemind.Optimizer` with batch_size_per_step 128. Peer 0
  starts the DHT, the others join it with its visible multiaddresses; peer 0 evaluates every
  50 of its steps and all stop when it reaches the target. Settings (hivemind_peer.SETTINGS),
  from Hivemind's quickstart: use_local_updates=True (each peer steps on its own batches,
  parameters averaged once per Hivemind epoch, in the background), matchmaking_time=3.0 (its
  docs: "3-5s for small local runs"), averaging_timeout=10.0; and target_batch_size=120000
  (two passes over the training set by the swarm per Hivemind epoch; its docs recommend large
  target batches "to reduce the % of time spent on communication"). Each epoch's averaging
  round blocks every peer's step for about matchmaking_time, and once a peer falls behind the
  swarm's epoch every one of its steps starts a new epoch, so an epoch must take the swarm
  well over matchmaking_time: smaller target batches spend most of the time in matchmaking.
  Tried on loopback (--hivemind-opts; 2 cores with a C++ build running alongside, load 8-13):
  the default mode (gradient averaging, then every peer steps) with target 2048 (4 x 128 x 4):
  about 3.3 s an epoch, 0.828 at 259 s (847 MB per worker), short: lr 1e-3 at that batch needs
  more epochs than 3-5 s of matchmaking each allow; local updates, target 2048: 0.856 after
  15 s, then one step per 3 s, 0.868 at 300 s (767 MB); target 4096: 0.827 at 300 s; target
  60000: 0.8718 at 115 s (219 MB), then 0.8714 at 372 s (965 MB); target 120000: 0.8706 at
  69 s (91 MB), 0.8702 at 84 s (114 MB), and behind 100mbit links 0.8733 at 57 s (65 MB).
- GPUFlex: a `gflex-core` and 4 `gflex-node` processes (one worker, one thread each) running
  the shipped spec (apps/jobs/fashion-mlp.toml, whose `workers = 3` is set to 4), followed with
  `gflex status` every 0.1 s.

All are timed end to end, from starting the training processes (DDP, Hivemind) or submitting
the job (GPUFlex) to the first evaluation at or above the target, data loading included.
Bytes are what a worker sends and receives, both ways. On loopback they come from the
interface's counter (/proc/net/dev, `lo`, every byte sent over it once) during each run: a
DDP or Hivemind byte goes from one peer to another (2 x lo / 4 per worker; Hivemind's include
its p2pd daemons' DHT traffic), a GPUFlex byte between the core and one node (lo / 4, the
status polls of this script included); GPUFlex's include TLS, heartbeats, and the shards its
nodes download from the core. With --link RATE (repeatable: 100mbit, 20mbit), every worker
(each DDP rank, each Hivemind peer, each node) runs in its own network namespace behind a link
shaped to RATE each way, the core's link at 1 Gbit/s (shaped_links.py), and bytes are each
worker's link counters. A DDP or Hivemind run that has not reached the target after
--ddp-limit or --hivemind-limit seconds stops and is reported as such; ratios against it are
then bounds (">= " when DDP stopped short, "<= " when the other did).

    python3 tests/bench/vs_ddp.py [BUILD_BIN_DIR] [--target 0.87] [--link 100mbit ...]
        [--no-loopback] [--systems ddp,hivemind,gflex] [--ddp-limit 600]
        [--hivemind-limit 600] [--hivemind-opts JSON] [--peers-venv build/peers-venv]

Installs its own peers: PyTorch and Hivemind (hivemind==1.1.12, which brings torch) from PyPI
into a venv of Debian's python3 under build/ (made when missing, about 6 GB), and runs on that
venv's python; the test suite never depends on them. Hivemind's processes (each peer's DHT,
averagers and p2pd daemon) are killed with their peer, by process id and session.
"""
import argparse
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
sys.path.insert(0, HERE)

WORKERS = 4
BATCH = 128
EVAL_EVERY = 50
HIVEMIND = "1.1.12"
SYSTEMS = ("ddp", "hivemind", "gflex")
PEERS_VENV = os.path.join(HERE, "..", "..", "build", "peers-venv")


def ensure_peers(venv):
    """The peers (PyTorch and Hivemind, from PyPI) in a venv of Debian's python3 at `venv`,
    made when missing (with Debian's python3-venv, installed when missing); this script then
    runs on, and starts DDP ranks and Hivemind peers with, the venv's python."""
    venv = os.path.abspath(venv)
    python = f"{venv}/bin/python"
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        if not os.path.exists(python):
            make = ["/usr/bin/python3", "-m", "venv", venv]
            if subprocess.run(make, stdout=subprocess.DEVNULL).returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                subprocess.run(["apt-get", "update", "-qq"], check=True)
                subprocess.run(["apt-get", "install", "-y", "-qq", "python3-venv"], check=True,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                               stdout=subprocess.DEVNULL)
                subprocess.run(make, check=True)
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])
    try:
        import hivemind  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        if os.environ.get("GFLEX_PEERS_INSTALLED"):
            raise
        # hivemind brings torch from PyPI; a fresh process finds both.
        subprocess.run([python, "-m", "pip", "install", "-q", f"hivemind=={HIVEMIND}"], check=True)
        os.execve(python, [python, os.path.abspath(__file__), *sys.argv[1:]],
                  dict(os.environ, GFLEX_PEERS_INSTALLED="1"))


def loopback_bytes():
    """Bytes sent over `lo` so far (every byte on lo is sent once and received once)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                fields = rest.split()
                return int(fields[8])  # transmitted bytes
    raise RuntimeError("no loopback interface in /proc/net/dev")


def ddp_rank(rank, master, target, data, limit_s):
    """One DDP rank (run as its own process); rank 0 prints the result as JSON."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch_mlp import fashion_mlp, load_fashion

    torch.set_num_threads(1)
    start = time.time()
    dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank,
                            world_size=WORKERS)
    torch.manual_seed(1)
    x, y, xt, yt = load_fashion(data)
    model = fashion_mlp()
    ddp = DistributedDataParallel(model)  # gloo, default bucket_cap_mb (25)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, accuracy, epoch, reached, done = 0, 0.0, 0, False, False
    evaluated_at = None  # rank 0: when its last evaluation ended
    while not done and epoch < 50:
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(x.shape[0], generator=g)[rank::WORKERS]  # DistributedSampler
        for s in range(0, order.shape[0] - BATCH + 1, BATCH):
            idx = order[s:s + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
            if steps % EVAL_EVERY == 0:
                flag = torch.zeros(2)
                if rank == 0:
                    with torch.no_grad():
                        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
                    evaluated_at = time.time()
                    flag[0] = 1.0 if accuracy >= target else 0.0
                    flag[1] = 1.0 if time.time() - start > limit_s else 0.0
                dist.broadcast(flag, 0)
                if flag[0] > 0 or flag[1] > 0:
                    reached, done = flag[0] > 0, True
                    break
        epoch += 1
    if rank == 0:
        # The run ends, for the table, at the evaluation that stopped it (at or above the
        # target, or past the limit), not when the processes have torn down after it.
        stopped_at = evaluated_at if done else time.time()
        print(json.dumps({"steps": steps, "accuracy": accuracy, "epochs": epoch,
                          "reached": bool(reached), "t": stopped_at}), flush=True)
    dist.destroy_process_group()


def run_ddp(target, data, limit_s, net=None):
    from local_cluster import free_port

    master = f"{net.worker_address(0) if net else '127.0.0.1'}:{free_port()}"
    if net:
        net.mark()
    before, t0 = loopback_bytes(), time.time()
    procs = []
    for r in range(WORKERS):
        prefix = net.exec_prefix(r) if net else []
        # gloo connects ranks over the interface it is told, else the one the host name
        # resolves to (loopback, which in a namespace reaches nobody else).
        env = dict(os.environ, GLOO_SOCKET_IFNAME=net.worker_interface if net else "lo")
        procs.append(subprocess.Popen(
            [*prefix, sys.executable, os.path.abspath(__file__), "--ddp-rank", str(r),
             "--master", master, "--target", str(target), "--data", data, "--ddp-limit",
             str(limit_s)], stdout=subprocess.PIPE, text=True, env=env))
    try:
        deadline = time.time() + limit_s + 600
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.time() > deadline:
                raise RuntimeError("a DDP rank failed or hung")
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError("a DDP rank failed")
    r = json.loads(procs[0].stdout.read().strip().splitlines()[-1])
    # To rank 0's evaluation that stopped the run, as for Hivemind (one clock: the same host).
    wall = r["t"] - t0
    # On loopback every byte is between two ranks: sent by one, received by another.
    per_worker = (sum(a + b for a, b in net.worker_bytes()) / WORKERS if net
                  else 2 * (loopback_bytes() - before) / WORKERS)
    what = f"{r['steps']} steps ({r['epochs']} epochs)"
    if not r["reached"]:
        what += f", stopped at {limit_s} s"
    return {"wall_s": wall, "per_worker": per_worker, "accuracy": r["accuracy"],
            "reached": r["reached"], "what": what}


def descendants(pid):
    """The processes below `pid` (its children, theirs, ...)."""
    children = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (ValueError, OSError):
            pass
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_hivemind(target, data, limit_s, net=None, opts=None):
    """4 Hivemind peers (hivemind_peer.py), each in its own session so that it goes with
    everything it started (its DHT and averager processes, its p2pd daemon)."""
    from hivemind_peer import SETTINGS

    work = tempfile.mkdtemp(prefix="gflex-vs-hivemind-")
    if net:
        net.mark()
    before, t0 = loopback_bytes(), time.time()
    procs, logs = [], []
    for r in range(WORKERS):
        prefix = net.exec_prefix(r) if net else []
        logs.append(open(f"{work}/peer{r}.log", "w"))
        procs.append(subprocess.Popen(
            [*prefix, sys.executable, os.path.join(HERE, "hivemind_peer.py"), "--rank", str(r),
             "--dir", work, "--host", net.worker_address(r) if net else "127.0.0.1",
             "--target", str(target), "--data", data, "--start", str(t0), "--limit",
             str(limit_s), "--opts", json.dumps(opts or {})],
            stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    try:
        # Peer 0 may hang in a step past the limit: then the last evaluation stands.
        while not os.path.exists(f"{work}/done") and time.time() - t0 < limit_s + 60:
            for r, p in enumerate(procs):
                if p.poll() is not None and not os.path.exists(f"{work}/done"):
                    tail = open(f"{work}/peer{r}.log").read()[-3000:]
                    raise RuntimeError(f"Hivemind peer {r} exited early:\n{tail}")
            time.sleep(0.1)
        stopped, finished = time.time(), os.path.exists(f"{work}/done")
        per_worker = (sum(a + b for a, b in net.worker_bytes()) / WORKERS if net
                      else 2 * (loopback_bytes() - before) / WORKERS)
        evals = open(f"{work}/evals").read().splitlines() if os.path.exists(f"{work}/evals") \
            else ['{"t": 0, "steps": 0, "epochs": 0, "accuracy": 0.0, "reached": false}']
        r = json.loads(evals[-1])
        deadline = time.time() + 10  # a moment to leave the swarm, then they are killed
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        for p in procs:
            # A peer that is still there goes with what it started; what a peer that has
            # exited left behind is still in its session's process group.
            for pid in [p.pid, *descendants(p.pid)] if p.poll() is None else []:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for log in logs:
            log.close()
        if os.environ.get("GFLEX_KEEP_HIVEMIND_LOGS"):
            print(f"Hivemind logs: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    # To the first evaluation at or above the target, or to when it stopped short of it.
    wall = (r["t"] if finished else stopped) - t0
    settings = {**SETTINGS, **(opts or {})}
    what = (f"{r['epochs']} epochs of {settings['target_batch_size']} samples, "
            f"{r['steps']} steps of peer 0")
    if not r["reached"]:
        what += f", stopped at {wall:.0f} s"
    return {"wall_s": wall, "per_worker": per_worker, "accuracy": r["accuracy"],
            "reached": r["reached"], "what": what}


def run_gflex(bin_dir, tmp, target, net=None):
    from local_cluster import LocalCluster

    spec = open(os.path.join(HERE, "..", "..", "apps", "jobs", "fashion-mlp.toml")).read()
    spec = re.sub(r"(?m)^workers = \d+$", f"workers = {WORKERS}", spec)
    path = f"{tmp}/job.toml"
    open(path, "w").write(spec)
    name = f"{tmp}/gflex-{net.rate if net else 'lo'}"
    with LocalCluster(bin_dir, name, nodes=WORKERS, host=net.host if net else "127.0.0.1",
                      node_prefix=net.exec_prefix if net else None) as c:
        if net:
            net.mark()
        before, t0 = loopback_bytes(), time.time()
        job = c.gflex("submit", path).strip()
        st = {}
        while time.time() - t0 < 900:
            st = c.status(job)
            if st["test_accuracy"] >= target or st["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        wall = time.time() - t0
        # On loopback a byte is between the core and one node (or the polling client).
        per_worker = (sum(a + b for a, b in net.worker_bytes()) / WORKERS if net
                      else (loopback_bytes() - before) / WORKERS)
        c.gflex("cancel", job, check=False)
    if st.get("test_accuracy", 0.0) < target:
        raise RuntimeError(f"GPUFlex did not reach {target}: {st}")
    return {"wall_s": wall, "per_worker": per_worker, "accuracy": st["test_accuracy"],
            "reached": True, "what": f"{st['round']} rounds"}


NAMES = {"ddp": "PyTorch DDP (gloo, AdamW)",
         "hivemind": "Hivemind (Optimizer, AdamW, local updates)",
         "gflex": "GPUFlex (shipped spec, 4 node processes)"}


def table(title, results):
    """One row per system measured; ratios against DDP when it ran. A run that stopped before
    the target bounds its time ratio: from above when it is DDP's (">= " on the others), from
    below when it is the other system's ("<= ")."""
    print(title)
    print()
    print("| system | work | test accuracy | time (s) | bytes per worker (both ways) | "
          "time vs DDP | bytes vs DDP |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    ddp = results.get("ddp")
    for system, r in results.items():
        vs = "| - | - |"  # no DDP run to compare with
        if ddp and not ddp["reached"] and not r["reached"] and r is not ddp:
            vs = "| neither reached | neither reached |"
        elif ddp:
            bound = ("" if r is ddp or r["reached"] == ddp["reached"] else
                     "<= " if ddp["reached"] else ">= ")
            vs = (f"| {bound}{ddp['wall_s'] / r['wall_s']:.2f}x faster | "
                  f"{bound}{ddp['per_worker'] / r['per_worker']:.1f}x fewer |")
        print(f"| {NAMES[system]} | {r['what']} | {r['accuracy']:.4f} | {r['wall_s']:.1f} | "
              f"{r['per_worker'] / 1e6:.1f} MB {vs}")
    print(flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bin", nargs="?", default="build/bin")
    p.add_argument("--target", type=float, default=0.87)
    p.add_argument("--data", default=os.environ.get("GFLEX_FASHION_MNIST_DIR",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--link", action="append", default=[], help="a shaped link rate (tc)")
    p.add_argument("--no-loopback", action="store_true", help="only the shaped links")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="which systems to run, comma-separated (ddp,hivemind,gflex)")
    p.add_argument("--ddp-limit", type=float, default=600.0, help="seconds a DDP run may take")
    p.add_argument("--hivemind-limit", type=float, default=600.0,
                   help="seconds a Hivemind run may take")
    p.add_argument("--hivemind-opts", default="{}",
                   help="JSON: hivemind.Optimizer arguments over the chosen ones (for tuning)")
    p.add_argument("--peers-venv", default=PEERS_VENV,
                   help="the venv PyTorch and Hivemind are installed in (made when missing)")
    p.add_argument("--ddp-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--master", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ddp_rank is not None:
        ddp_rank(a.ddp_rank, a.master, a.target, a.data, a.ddp_limit)
        return
    systems = [s for s in SYSTEMS if s in a.systems.split(",")]
    if set(a.systems.split(",")) - set(SYSTEMS):
        p.error(f"--systems: not one of {','.join(SYSTEMS)}: {a.systems}")
    ensure_peers(a.peers_venv)
    import hivemind
    import torch
    from shaped_links import ShapedLinks

    # A SIGTERM (a timeout) unwinds like an exception, so that the namespaces go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    head = (f"fashion-mlp to test accuracy {a.target}, {WORKERS} workers x batch {BATCH}, "
            f"{os.cpu_count()} cores; PyTorch {torch.__version__} (gloo), "
            f"Hivemind {hivemind.__version__}")
    opts = json.loads(a.hivemind_opts)
    tmp = tempfile.mkdtemp(prefix="gflex-vs-ddp-")

    def run_all(net=None):
        runs = {"ddp": lambda: run_ddp(a.target, a.data, a.ddp_limit, net),
                "hivemind": lambda: run_hivemind(a.target, a.data, a.hivemind_limit, net, opts),
                "gflex": lambda: run_gflex(a.bin, tmp, a.target, net)}
        return {s: runs[s]() for s in systems}

    try:
        if not a.no_loopback:
            table(f"{head}, loopback", run_all())
        for rate in a.link:
            with ShapedLinks(WORKERS, rate) as net:
                results = run_all(net)
            table(f"{head}, each worker behind a {rate} link (the core's 1gbit)", results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
