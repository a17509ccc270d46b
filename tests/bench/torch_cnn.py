#!/usr/bin/env python3
"""PyTorch peer of `gflex train --workload fashion-cnn`: the same network, batch size, AdamW
settings and data (Fashion-MNIST from the same IDX files), timed the same way (training steps
only, evaluation excluded). Prints one JSON object, shaped like torch_mlp.py's.

The network, exactly gflex's fashion-cnn: 28x28x1 input; conv 3x3 pad 1, 1->32, ReLU, 2x2 max
pool stride 2; conv 3x3 pad 1, 32->64, ReLU, 2x2 max pool; flatten (3136); dense 3136->128,
ReLU; dense 128->10; softmax cross-entropy. AdamW lr 1e-3, weight decay 0, constant rate.
gflex holds activations NHWC and flattens in that order; here they are torch's default NCHW
(the order of the flattened features changes no cost). --channels-last switches torch to
NHWC memory format; it is off by default, and the output says which was used.

--device cuda (or cuda:N) trains on a GPU in FP32 with TF32 off (gflex's precision) and
torch's default cuDNN settings (no cudnn.benchmark): the data are copied to the device once,
before timing, and the clock is read after torch.cuda.synchronize()."""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_mlp import common_arguments, load_idx, prepare, train_timed  # noqa: E402


def make_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Flatten(),
        torch.nn.Linear(7 * 7 * 64, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))


def main():
    p = common_arguments()
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format for the model and its input")
    a = p.parse_args()
    device, sync = prepare(a)
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)

    def images(name):
        x = load_idx(f"{a.data}/{name}").reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
        return torch.from_numpy(x).to(device).contiguous(memory_format=memory_format)

    def labels(name):
        return torch.from_numpy(load_idx(f"{a.data}/{name}").astype(np.int64)).to(device)

    x, y = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
    xt, yt = images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")
    model = make_model().to(device, memory_format=memory_format)
    samples, train_s = train_timed(model, x, y, a.lr, a.batch_size, a.epochs, device, sync)
    correct = 0
    with torch.no_grad():
        for s in range(0, xt.shape[0], 1000):
            correct += (model(xt[s:s + 1000]).argmax(1) == yt[s:s + 1000]).sum().item()
    peer = f"pytorch {torch.__version__}"
    if device.type == "cuda":
        peer += f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    print(json.dumps({"peer": peer, "threads": a.threads, "device": a.device,
                      "memory_format": "channels_last" if a.channels_last else "nchw",
                      "batch_size": a.batch_size, "epochs": a.epochs,
                      "samples_per_s": samples / train_s, "train_s": train_s,
                      "test_accuracy": correct / xt.shape[0]}))


if __name__ == "__main__":
    main()
