#!/usr/bin/env python3
"""One Hivemind peer of vs_ddp.py, run as its own process with the peers' venv python (one
torch thread): fashion-mlp from the same seed on every peer, AdamW at lr 1e-3 wrapped in a
`hivemind.Optimizer` with SETTINGS (vs_ddp.py's docstring says why these), batch 128 per step,
each peer a disjoint quarter of every pass's permutation (as DDP's ranks). Peer 0 starts the
DHT and writes its visible multiaddresses to DIR/maddrs, the others join with them. Peer 0
evaluates on the 10,000 test images every 50 of its steps, appending each as a JSON line to
DIR/evals, and writes the last of them to DIR/done once it reaches the target or the run's
time limit (counted from --start, when vs_ddp.py started the peers); every peer stops when
DIR/done appears.

    hivemind_peer.py --rank R --dir DIR --host ADDRESS --target 0.87 --data DIR
        --start UNIX_TIME --limit SECONDS [--opts JSON]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORKERS = 4
BATCH = 128
EVAL_EVERY = 50
# hivemind.Optimizer's settings beside the model, AdamW and batch_size_per_step.
SETTINGS = {"use_local_updates": True, "target_batch_size": 120000, "matchmaking_time": 3.0,
            "averaging_timeout": 10.0, "verbose": False}


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--limit", type=float, required=True)
    p.add_argument("--opts", default="{}")
    a = p.parse_args()

    import hivemind
    import torch
    from torch_mlp import fashion_mlp, load_fashion

    torch.set_num_threads(1)
    host_maddrs = [f"/ip4/{a.host}/tcp/0"]
    maddrs, done = f"{a.dir}/maddrs", f"{a.dir}/done"
    if a.rank == 0:
        dht = hivemind.DHT(start=True, host_maddrs=host_maddrs)
        write_atomically(maddrs, "\n".join(str(m) for m in dht.get_visible_maddrs()))
    else:
        while not os.path.exists(maddrs):
            if time.time() - a.start > a.limit:
                sys.exit("no DHT to join")
            time.sleep(0.1)
        dht = hivemind.DHT(start=True, host_maddrs=host_maddrs,
                           initial_peers=open(maddrs).read().split())
    torch.manual_seed(1)  # every peer starts from the same parameters (as DDP's broadcast)
    x, y, xt, yt = load_fashion(a.data)
    model = fashion_mlp()
    opt = hivemind.Optimizer(
        dht=dht, run_id="vs-ddp", params=model.parameters(), batch_size_per_step=BATCH,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0),
        **{**SETTINGS, **json.loads(a.opts)})
    loss_fn = torch.nn.CrossEntropyLoss()
    steps, passes, stop = 0, 0, False
    while not stop:
        g = torch.Generator().manual_seed(passes)
        order = torch.randperm(x.shape[0], generator=g)[a.rank::WORKERS]
        for s in range(0, order.shape[0] - BATCH + 1, BATCH):
            idx = order[s:s + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
            if a.rank == 0 and steps % EVAL_EVERY == 0:
                with torch.no_grad():
                    accuracy = (model(xt).argmax(1) == yt).float().mean().item()
                now = time.time()
                line = json.dumps({"t": now, "steps": steps, "epochs": opt.local_epoch,
                                   "accuracy": accuracy, "reached": accuracy >= a.target})
                with open(f"{a.dir}/evals", "a") as f:
                    f.write(line + "\n")
                if accuracy >= a.target or now - a.start > a.limit:
                    write_atomically(done, line)
            if os.path.exists(done):
                stop = True
                break
        passes += 1
    opt.shutdown()
    dht.shutdown()


if __name__ == "__main__":
    main()
