#!/usr/bin/env python3
"""Benchmark: GPUFlex against PyTorch DistributedDataParallel on the same task, side by side in
one run: fashion-mlp (784-512-256-10) to a test accuracy of 0.87 with 4 workers of batch 128
each, on loopback.

- DDP: 4 processes (torch.multiprocessing), the gloo backend with its default bucket size
  (25 MiB), AdamW at lr 1e-3 (PyTorch's recommended default for Adam-type optimisers), each rank
  a disjoint quarter of every epoch's permutation (DistributedSampler's split), one thread per
  rank; rank 0 evaluates on the 10,000 test images every 50 steps and all ranks stop together.
- GPUFlex: a `gflex-core` and 4 `gflex-node` processes (one worker, one thread each) running
  the shipped spec (apps/jobs/fashion-mlp.toml, whose `workers = 3` is set to 4), followed with
  `gflex status` every 0.1 s.

Both are timed end to end, from starting the training processes (DDP) or submitting the job
(GPUFlex) to the first evaluation at or above the target, data loading included. Bytes are
the loopback interface's (/proc/net/dev, `lo`, every byte any process sent over it) during
each run, divided by the 4 workers: what each worker would send and receive over its own link
(GPUFlex's include TLS, heartbeats and the core's side; the core is the fifth party, and a
worker's share is what the core exchanged with it).

    python3 tests/bench/vs_ddp.py [BUILD_BIN_DIR] [--target 0.87]

Installs its own peer (Debian's python3-torch); the test suite never depends on it.
"""
import argparse
import os
import re
import shutil
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


def ddp_rank(rank, port, target, data, result):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch_mlp import load_idx

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORKERS)
    torch.manual_seed(1)
    x = torch.from_numpy(load_idx(f"{data}/train-images-idx3-ubyte.gz")
                         .reshape(-1, 784).astype(np.float32) / 255.0)
    y = torch.from_numpy(load_idx(f"{data}/train-labels-idx1-ubyte.gz").astype(np.int64))
    xt = torch.from_numpy(load_idx(f"{data}/t10k-images-idx3-ubyte.gz")
                          .reshape(-1, 784).astype(np.float32) / 255.0)
    yt = torch.from_numpy(load_idx(f"{data}/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    ddp = DistributedDataParallel(model)  # gloo, default bucket_cap_mb (25)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, accuracy, epoch, done = 0, 0.0, 0, False
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
                flag = torch.zeros(1)
                if rank == 0:
                    with torch.no_grad():
                        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
                    flag[0] = 1.0 if accuracy >= target else 0.0
                dist.broadcast(flag, 0)
                if flag[0] > 0:
                    done = True
                    break
        epoch += 1
    if rank == 0:
        result.put((steps, accuracy, epoch))
    dist.destroy_process_group()


def run_ddp(target, data):
    import torch.multiprocessing as mp
    from local_cluster import free_port

    ctx = mp.get_context("spawn")
    result = ctx.SimpleQueue()
    port = free_port()
    before, t0 = loopback_bytes(), time.time()
    procs = [ctx.Process(target=ddp_rank, args=(r, port, target, data, result))
             for r in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
    wall = time.time() - t0
    sent = loopback_bytes() - before
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a DDP rank failed")
    steps, accuracy, epochs = result.get()
    return {"wall_s": wall, "bytes": sent, "accuracy": accuracy, "steps": steps,
            "what": f"{steps} steps ({epochs} epochs)"}


def run_gflex(bin_dir, tmp, target):
    from local_cluster import LocalCluster

    spec = open(os.path.join(HERE, "..", "..", "apps", "jobs", "fashion-mlp.toml")).read()
    spec = re.sub(r"(?m)^workers = \d+$", f"workers = {WORKERS}", spec)
    path = f"{tmp}/job.toml"
    open(path, "w").write(spec)
    with LocalCluster(bin_dir, f"{tmp}/gflex", nodes=WORKERS) as c:
        before, t0 = loopback_bytes(), time.time()
        job = c.gflex("submit", path).strip()
        st = {}
        while time.time() - t0 < 900:
            st = c.status(job)
            if st["test_accuracy"] >= target or st["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        wall = time.time() - t0
        sent = loopback_bytes() - before
        c.gflex("cancel", job, check=False)
    if st.get("test_accuracy", 0.0) < target:
        raise RuntimeError(f"GPUFlex did not reach {target}: {st}")
    return {"wall_s": wall, "bytes": sent, "accuracy": st["test_accuracy"],
            "what": f"{st['round']} rounds"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bin", nargs="?", default="build/bin")
    p.add_argument("--target", type=float, default=0.87)
    p.add_argument("--data", default=os.environ.get("GFLEX_FASHION_MNIST_DIR",
                                                    "/usr/share/datasets/fashion-mnist"))
    a = p.parse_args()
    ensure_torch()
    import torch

    tmp = tempfile.mkdtemp(prefix="gflex-vs-ddp-")
    try:
        ddp = run_ddp(a.target, a.data)
        gflex = run_gflex(a.bin, tmp, a.target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"fashion-mlp to test accuracy {a.target}, {WORKERS} workers x batch {BATCH}, "
          f"loopback, {os.cpu_count()} cores; PyTorch {torch.__version__} (gloo)")
    print()
    print("| system | work | test accuracy | time (s) | bytes per worker (sent over lo / "
          f"{WORKERS}) | time vs DDP | bytes vs DDP |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("PyTorch DDP (gloo, AdamW)", ddp),
                    ("GPUFlex (shipped spec, 4 node processes)", gflex)):
        per = r["bytes"] / WORKERS
        print(f"| {name} | {r['what']} | {r['accuracy']:.4f} | {r['wall_s']:.1f} | "
              f"{per / 1e6:.1f} MB | {ddp['wall_s'] / r['wall_s']:.2f}x faster | "
              f"{ddp['bytes'] / r['bytes']:.1f}x fewer |")


if __name__ == "__main__":
    main()
