#!/usr/bin/env python3
"""Benchmark: GPUFlex against PyTorch DistributedDataParallel on the same task, side by side in
one run: fashion-mlp (784-512-256-10) to a test accuracy of 0.87 with 4 workers of batch 128
each, on loopback.

- DDP: 4 processes, the gloo backend with its default bucket size
  (25 MiB), AdamW at lr 1e-3 (PyTorch's recommended default for Adam-type optimisers), each rank
  a disjoint quarter of every epoch's permutation (DistributedSampler's split), one thread per
  rank; rank 0 evaluates on the 10,000 test images every 50 steps and all ranks stop together.
- GPUFlex: a `gflex-core` and 4 `gflex-node` processes (one worker, one thread each) running
  the shipped spec (apps/jobs/fashion-mlp.toml, whose `workers = 3` is set to 4), followed with
  `gflex status` every 0.1 s.

Both are timed end to end, from starting the training processes (DDP) or submitting the job
(GPUFlex) to the first evaluation at or above the target, data loading included. Bytes are
what a worker sends and receives, both ways. On loopback they come from the interface's
counter (/proc/net/dev, `lo`, every byte sent over it once) during each run: a DDP byte goes
from one rank to another (2 x lo / 4 per worker), a GPUFlex byte between the core and one node
(lo / 4, the status polls of this script included); GPUFlex's include TLS, heartbeats, and the
shards its nodes download from the core. With --link RATE (repeatable: 100mbit, 20mbit), every
worker (each DDP rank, each node) runs in its own network namespace behind a link shaped to
RATE each way, the core's link at 1 Gbit/s (shaped_links.py), and bytes are each worker's
link counters. A DDP run that has not reached the target after --ddp-limit seconds stops and
is reported as such (its time then bounds the ratio from below).

    python3 tests/bench/vs_ddp.py [BUILD_BIN_DIR] [--target 0.87] [--link 100mbit ...]
        [--no-loopback] [--ddp-limit 600]

Installs its own peer (Debian's python3-torch); the test suite never depends on it.
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


def ensure_torch():
    """Debian's python3-torch, installed when missing; a different interpreter (a pyenv one)
    hands over to Debian's."""
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    if not os.path.exists("/usr/lib/python3/dist-packages/torch"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "python3-torch"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                       stdout=subprocess.DEVNULL)
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(__file__), *sys.argv[1:]])


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
                    flag[0] = 1.0 if accuracy >= target else 0.0
                    flag[1] = 1.0 if time.time() - start > limit_s else 0.0
                dist.broadcast(flag, 0)
                if flag[0] > 0 or flag[1] > 0:
                    reached, done = flag[0] > 0, True
                    break
        epoch += 1
    if rank == 0:
        print(json.dumps({"steps": steps, "accuracy": accuracy, "epochs": epoch,
                          "reached": bool(reached)}), flush=True)
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
            [*prefix, "/usr/bin/python3", os.path.abspath(__file__), "--ddp-rank", str(r),
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
    wall = time.time() - t0
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError("a DDP rank failed")
    r = json.loads(procs[0].stdout.read().strip().splitlines()[-1])
    # On loopback every byte is between two ranks: sent by one, received by another.
    per_worker = (sum(a + b for a, b in net.worker_bytes()) / WORKERS if net
                  else 2 * (loopback_bytes() - before) / WORKERS)
    what = f"{r['steps']} steps ({r['epochs']} epochs)"
    if not r["reached"]:
        what += f", stopped at {limit_s} s"
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


def table(title, ddp, gflex):
    print(title)
    print()
    print("| system | work | test accuracy | time (s) | bytes per worker (both ways) | "
          "time vs DDP | bytes vs DDP |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("PyTorch DDP (gloo, AdamW)", ddp),
                    ("GPUFlex (shipped spec, 4 node processes)", gflex)):
        bound = "" if ddp["reached"] or r is ddp else ">= "
        print(f"| {name} | {r['what']} | {r['accuracy']:.4f} | {r['wall_s']:.1f} | "
              f"{r['per_worker'] / 1e6:.1f} MB | {bound}{ddp['wall_s'] / r['wall_s']:.2f}x "
              f"faster | {bound}{ddp['per_worker'] / r['per_worker']:.1f}x fewer |")
    print(flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bin", nargs="?", default="build/bin")
    p.add_argument("--target", type=float, default=0.87)
    p.add_argument("--data", default=os.environ.get("GFLEX_FASHION_MNIST_DIR",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--link", action="append", default=[], help="a shaped link rate (tc)")
    p.add_argument("--no-loopback", action="store_true", help="only the shaped links")
    p.add_argument("--ddp-limit", type=float, default=600.0, help="seconds a DDP run may take")
    p.add_argument("--ddp-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--master", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ddp_rank is not None:
        ddp_rank(a.ddp_rank, a.master, a.target, a.data, a.ddp_limit)
        return
    ensure_torch()
    import torch
    from shaped_links import ShapedLinks

    # A SIGTERM (a timeout) unwinds like an exception, so that the namespaces go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    head = (f"fashion-mlp to test accuracy {a.target}, {WORKERS} workers x batch {BATCH}, "
            f"{os.cpu_count()} cores; PyTorch {torch.__version__} (gloo)")
    tmp = tempfile.mkdtemp(prefix="gflex-vs-ddp-")
    try:
        if not a.no_loopback:
            table(f"{head}, loopback", run_ddp(a.target, a.data, a.ddp_limit),
                  run_gflex(a.bin, tmp, a.target))
        for rate in a.link:
            with ShapedLinks(WORKERS, rate) as net:
                ddp = run_ddp(a.target, a.data, a.ddp_limit, net)
                gflex = run_gflex(a.bin, tmp, a.target, net)
            table(f"{head}, each worker behind a {rate} link (the core's 1gbit)", ddp, gflex)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
