#!/usr/bin/env python3
"""PyTorch peer of `gflex train`: the same MLP (784-512-256-10, ReLU), batch size, AdamW
settings, thread count and data (Fashion-MNIST from the same IDX files), timed the same way
(training steps only, evaluation excluded). Prints one JSON object.

--device cuda (or cuda:N) trains on a GPU in FP32 with TF32 off (gflex's precision): the data
are copied to the device once, before timing, and the clock is read after
torch.cuda.synchronize()."""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch


def load_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load_fashion(data):
    """Fashion-MNIST from its IDX files: training images and labels, then the test ones;
    images as [n, 784] floats in [0, 1], labels as int64."""
    def images(name):
        return torch.from_numpy(load_idx(f"{data}/{name}").reshape(-1, 784).astype(np.float32)
                                / 255.0)

    def labels(name):
        return torch.from_numpy(load_idx(f"{data}/{name}").astype(np.int64))

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def fashion_mlp():
    """gflex's fashion-mlp: 784-512-256-10 with ReLU."""
    return torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def common_arguments():
    """The flags every PyTorch peer takes, matching `gflex train`'s."""
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--data", default=os.environ.get("GFLEX_FASHION_MNIST_DIR",
                                                    "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return p


def prepare(a):
    """The device and its synchronisation; on a GPU, FP32 with TF32 off (gflex's default)."""
    device = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device, sync


def train_timed(model, x, y, lr, batch_size, epochs, device, sync):
    """Trains `model` on (x, y) with AdamW in shuffled batches; returns (samples, seconds) of
    the training steps alone, the clock read after `sync()` (a device synchronisation)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = x.shape[0]
    train_s = 0.0
    samples = 0
    for epoch in range(epochs):
        order = torch.randperm(n, device=device)
        sync()
        start = time.perf_counter()
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            samples += len(idx)
        sync()
        train_s += time.perf_counter() - start
    return samples, train_s


def main():
    p = common_arguments()
    a = p.parse_args()
    device, sync = prepare(a)
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    x, y, xt, yt = (t.to(device) for t in load_fashion(a.data))
    model = fashion_mlp().to(device)
    samples, train_s = train_timed(model, x, y, a.lr, a.batch_size, a.epochs, device, sync)
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    peer = f"pytorch {torch.__version__}"
    if device.type == "cuda":
        peer += f" (CUDA {torch.version.cuda})"
    print(json.dumps({"peer": peer, "threads": a.threads, "device": a.device,
                      "batch_size": a.batch_size, "epochs": a.epochs,
                      "samples_per_s": samples / train_s, "train_s": train_s,
                      "test_accuracy": accuracy}))


if __name__ == "__main__":
    main()
