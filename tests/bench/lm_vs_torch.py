#!/usr/bin/env python3
"""Benchmark: gflex's byte-level language model against the same model in PyTorch, on the CPU
or on a GPU.

    python3 tests/bench/lm_vs_torch.py build/bin [--steps 1000] [--batch 16] [--lr 0.004]
        [--threads 2] [--spec apps/jobs/lm.toml] [--seed 1] [--rng gflex|torch] [--repeats 2]
        [--device cpu|cuda] [--precision fp32|bf16] [--compile] [--peak-tflops 989]
        [--json OUT.json]

On a GPU (--device cuda): gflex trains with --backend cuda --precision P; PyTorch holds the
data on the device, runs in FP32 or under bf16 autocast (--precision bf16), with SDPA
attention and fused AdamW, eagerly and, with --compile, also as torch.compile's graph (a
third row). The table adds model FLOPs utilisation: tokens/s times 6 x parameters + 12 x
layers x context x width FLOPs per token (the PaLM estimate, attention included), against
--peak-tflops (the card's dense bf16 figure: 989 for an H200). On a GPU each side leaves its
first 3 steps out of its clock (PyTorch's: torch.compile's compilation, library set-up;
gflex's, with `gflex train --warmup-steps 3`: first launches, algorithm choices, a recorded
pass). Specs for the GPU sizes are in tests/bench/specs/.

Runs `gflex train --spec SPEC` first, then the PyTorch peer built from the same spec's [model]
table (never both at once), on the same data (Debian's fortunes, split as
runtime/src/text_corpus.cpp splits it), thread count, batch size, number of steps, learning
rate schedule (cosine decay to 5%) and AdamW settings (betas 0.9/0.999, eps 1e-8, no weight
decay), in FP32. Prints a table: training tokens/s (training steps only: data loading and
evaluation are excluded on both sides) and held-out bits per byte after training. Each side
runs --repeats times (default 2), alternating, and keeps its faster run: the machine may be
shared.

By default (--rng gflex) the PyTorch side replays gflex's generator (SplitMix64, rng.hpp) to
start from the very parameters `gflex train --seed S` initialises and to take the training
samples in the trainer's order, so the two runs differ only in their arithmetic: they agree to
four decimals over the first tens of steps. This matters: with independent draws (--rng
torch) the held-out bits/byte after 1000 steps vary by about 0.25 from seed to seed, on
either side.

Threads: gflex gets --threads T; PyTorch gets torch.set_num_threads(T) and OpenBLAS T threads
(OPENBLAS_NUM_THREADS; Debian's torch does its GEMMs in the system's OpenBLAS). The script
also sets OMP_WAIT_POLICY=PASSIVE unless the environment sets it: Debian's torch runs its
intra-op OpenMP pool (libgomp) beside OpenBLAS's own pthread pool, and with both spinning for
the same T cores a step of this model took 2.2x as long on 2 cores (5x-15x with another
process busy).

OpenBLAS kernels: where OpenBLAS does not know the CPU it runs its generic Prescott kernels,
and gflex runs itself again with OPENBLAS_CORETYPE set to what the CPU supports
(kernels/src/blas_kernels.cpp). The script asks the gflex binary which core it ends on
(OPENBLAS_VERBOSE=2 names each core loaded) and, where gflex chose one, sets
OPENBLAS_CORETYPE to it for PyTorch too; the table's header names the core.

The peer is Debian's python3-torch: if `import torch` fails the script installs it with
apt-get (and says so), and runs itself again under /usr/bin/python3, which sees it.
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

SYSTEM_PYTHON = "/usr/bin/python3"
REEXEC_GUARD = "GFLEX_LM_BENCH_REEXEC"
GPU_WARMUP_STEPS = 3  # each side's steps left out of its clock on a GPU
SUPPORTED = ("embedding", "position_embedding", "layer_norm", "attention", "add", "linear",
             "gelu", "next_token_xent")
# Keys each supported layer type may carry (as model_spec.hpp documents them).
KEYS = {
    "embedding": {"dim"},
    "position_embedding": set(),
    "layer_norm": {"eps"},
    "attention": {"heads", "bias"},
    "add": {"with"},
    "linear": {"units", "bias"},
    "gelu": set(),
    "next_token_xent": set(),
}
COMMON_KEYS = {"type", "name", "from"}


def fail(message):
    print(f"lm_vs_torch: {message}", file=sys.stderr)
    sys.exit(1)


def arguments():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bin", help="directory holding the gflex binary (build/bin)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.004)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spec", default="apps/jobs/lm.toml")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rng", choices=("gflex", "torch"), default="gflex",
                   help="gflex (default): PyTorch starts from the parameters gflex initialises "
                        "with --seed and takes the training samples in gflex's order (gflex's "
                        "generator replayed here), so the two runs differ only in arithmetic; "
                        "torch: torch's own generator (the same distributions)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each side, alternating; each keeps its faster one")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: gflex --precision bf16, PyTorch under bf16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="also run PyTorch's model compiled with torch.compile")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the dense peak MFU is counted against (GPU only)")
    p.add_argument("--fused-attention", action="store_true",
                   help="also run gflex with GFLEX_FUSED_ATTENTION=1 (its flash-attention "
                        "kernels, for bf16 on a GPU), as a row of its own")
    p.add_argument("--json", help="also write both sides' results to this file")
    a = p.parse_args()
    if a.steps < 1 or a.batch < 1 or a.threads < 1 or a.repeats < 1 or a.lr <= 0:
        fail("--steps, --batch, --threads and --repeats must be positive, --lr above 0")
    if a.device == "cuda" and a.steps <= GPU_WARMUP_STEPS:
        fail(f"--steps must be above the {GPU_WARMUP_STEPS} untimed warm-up steps on a GPU")
    return a


def ensure_torch():
    """Imports torch; installs Debian's python3-torch if it is missing, and runs this script
    again under the system Python when this interpreter (a pyenv or venv one, say) cannot see
    Debian's packages."""
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get(REEXEC_GUARD):
        fail(f"{sys.executable} cannot import torch even after installing python3-torch")
    has = lambda: subprocess.run([SYSTEM_PYTHON, "-c", "import torch"],  # noqa: E731
                                 capture_output=True).returncode == 0
    if not os.path.exists(SYSTEM_PYTHON) or not has():
        print("lm_vs_torch: torch is not importable: installing Debian's python3-torch with "
              "apt-get", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "python3-torch"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        if not has():
            fail(f"{SYSTEM_PYTHON} still cannot import torch after apt-get install python3-torch")
    print(f"lm_vs_torch: running again under {SYSTEM_PYTHON} (Debian's python3-torch)",
          file=sys.stderr)
    sys.stdout.flush()
    os.environ[REEXEC_GUARD] = "1"
    os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON] + sys.argv)


def openblas_core(gflex):
    """The OpenBLAS core gflex trains on, and whether gflex chose it (the library named another
    first, and gflex ran itself again with OPENBLAS_CORETYPE); None where OpenBLAS names
    none."""
    r = subprocess.run([gflex, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_VERBOSE="2"))
    cores = [line[len("Core: "):].strip() for line in r.stderr.splitlines()
             if line.startswith("Core: ")]
    return (cores[-1], len(cores) > 1) if cores else (None, False)


def read_model(spec_path):
    import tomllib
    with open(spec_path, "rb") as f:
        spec = tomllib.load(f)
    model = spec.get("model")
    if model is None:
        fail(f"{spec_path}: no [model] table")
    if model.get("vocab", 0) <= 0 or len(model.get("input", [])) != 1:
        fail(f"{spec_path}: [model] is not a token model (needs vocab and input = [T])")
    for i, layer in enumerate(model.get("layers", [])):
        kind = layer.get("type")
        if kind not in SUPPORTED:
            fail(f"{spec_path}: layer {i} has type {kind!r}; this benchmark supports only "
                 f"{', '.join(SUPPORTED)}")
        extra = set(layer) - COMMON_KEYS - KEYS[kind]
        if extra:
            fail(f"{spec_path}: layer {i} ({kind}): keys {sorted(extra)} are not supported here")
    if not model["layers"] or model["layers"][-1]["type"] != "next_token_xent":
        fail(f"{spec_path}: the last layer must be next_token_xent")
    return model


def read_corpus():
    """runtime/src/text_corpus.cpp's read_text_corpus: the regular files without an extension
    (not symlinks) in the fortunes directory, sorted by path, concatenated."""
    d = os.environ.get("GFLEX_FORTUNES_DIR") or "/usr/share/games/fortunes"
    if not os.path.isdir(d):
        fail(f"{d}: not found (apt-get install -y fortunes, or set GFLEX_FORTUNES_DIR)")
    paths = sorted(os.path.join(d, n) for n in os.listdir(d))
    files = [p for p in paths if os.path.isfile(p) and not os.path.islink(p)
             and not os.path.splitext(os.path.basename(p))[1]]
    data = b"".join(open(p, "rb").read() for p in files)
    if not data:
        fail(f"{d}: no text files")
    return data


def token_splits(torch, data, window, test_every=10):
    """make_token_splits: sample s is bytes [s*(W-1), s*(W-1)+W); s % 10 == 9 is held out."""
    samples = (len(data) - 1) // (window - 1)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    starts = torch.arange(samples) * (window - 1)
    rows = raw[starts[:, None] + torch.arange(window)[None, :]].long()
    held = torch.arange(samples) % test_every == test_every - 1
    return rows[~held].contiguous(), rows[held].contiguous()


def build_model(torch, model):
    nn = torch.nn
    F = torch.nn.functional
    T = model["input"][0]
    vocab = model["vocab"]
    sdpa = getattr(F, "scaled_dot_product_attention", None)

    class Attention(nn.Module):
        """Causal multi-head self-attention: fused qkv projection, out projection."""

        def __init__(self, d, heads, bias):
            super().__init__()
            if d % heads:
                fail(f"attention: width {d} is not a multiple of {heads} heads")
            self.h = heads
            self.qkv = nn.Linear(d, 3 * d, bias=bias)
            self.out = nn.Linear(d, d, bias=bias)
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1),
                                 persistent=False)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).split(d, dim=2)
            q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            if sdpa is not None:
                y = sdpa(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.h))
                att = att.masked_fill(self.mask[:t, :t], float("-inf")).softmax(dim=-1)
                y = att @ v
            return self.out(y.transpose(1, 2).reshape(b, t, d))

    class PositionEmbedding(nn.Module):
        def __init__(self, t, d):
            super().__init__()
            self.table = nn.Parameter(torch.empty(t, d))

        def forward(self, x):
            return x + self.table

    class GraphLM(nn.Module):
        """The [model] layer list, interpreted as gflex plans it: layer i reads the previous
        layer's output (or `from`), writes value i + 1; `add` adds the value named by `with`."""

        def __init__(self):
            super().__init__()
            layers = model["layers"]
            self.mods = nn.ModuleList()
            self.plan = []  # (kind, input value, other value)
            names = {"input": 0}
            width = [None]  # last dimension of each value (None: token ids)
            for i, l in enumerate(layers):
                kind = l["type"]
                if "from" in l and l["from"] not in names:
                    fail(f"layer {i} ({kind}): from = {l['from']!r} names no earlier layer")
                src = names[l["from"]] if "from" in l else i
                w = width[src]
                if kind != "embedding" and w is None:
                    fail(f"layer {i} ({kind}) reads token ids; only embedding may")
                other = -1
                nxt = layers[i + 1]["type"] if i + 1 < len(layers) else None
                gain = 2.0 if nxt in ("relu", "gelu") else 1.0  # He before ReLU/GELU, else LeCun
                if kind == "embedding":
                    m = nn.Embedding(vocab, l["dim"])
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    w = l["dim"]
                elif kind == "position_embedding":
                    m = PositionEmbedding(T, w)
                    nn.init.normal_(m.table, 0.0, 0.02)
                elif kind == "layer_norm":
                    m = nn.LayerNorm(w, eps=l.get("eps", 1e-5))  # gamma 1, beta 0
                elif kind == "attention":
                    m = Attention(w, l["heads"], l.get("bias", True))
                    for lin in (m.qkv, m.out):
                        init_linear(lin, gain)
                elif kind == "linear":
                    m = nn.Linear(w, l["units"], bias=l.get("bias", True))
                    init_linear(m, gain)
                    w = l["units"]
                elif kind == "gelu":
                    m = nn.GELU(approximate="tanh")
                elif kind == "add":
                    if l.get("with") not in names:
                        fail(f"layer {i} (add): with = {l.get('with')!r} names no earlier layer")
                    other = names[l["with"]]
                    if width[other] != w:
                        fail(f"layer {i} (add): widths {width[other]} and {w} differ")
                    m = nn.Identity()
                elif kind == "next_token_xent":
                    if w != vocab:
                        fail(f"next_token_xent: takes {vocab} logits per position, gets {w}")
                    if i != len(layers) - 1:
                        fail("next_token_xent must be the last layer")
                    m = nn.Identity()
                self.mods.append(m)
                self.plan.append((kind, src, other))
                width.append(w)
                if "name" in l:
                    names[l["name"]] = i + 1

        def forward(self, ids, targets):
            vals = [ids]
            for m, (kind, src, other) in zip(self.mods, self.plan):
                x = vals[src]
                if kind == "add":
                    y = x + vals[other]
                elif kind == "next_token_xent":
                    return F.cross_entropy(x.reshape(-1, x.shape[-1]), targets.reshape(-1))
                else:
                    y = m(x)
                vals.append(y)
            raise AssertionError("unreachable: the last layer is the loss")

    def init_linear(lin, gain):
        # kernels/src/graph_model.cpp: N(0, sqrt(gain / fan_in)), biases zero.
        nn.init.normal_(lin.weight, 0.0, math.sqrt(gain / lin.in_features))
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)

    return GraphLM(), sdpa is not None


class GflexRng:
    """runtime/include/gflex/runtime/rng.hpp (SplitMix64), replayed so that the PyTorch side
    can start from the parameters gflex starts from and take the samples in gflex's order."""
    M = (1 << 64) - 1
    GAMMA = 0x9E3779B97F4A7C15

    def __init__(self, seed):
        self.state = seed & self.M

    @staticmethod
    def _mix(np, z):
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    def next_many(self, np, n):
        """The next n outputs of next(), as uint64."""
        with np.errstate(over="ignore"):
            k = np.arange(1, n + 1, dtype=np.uint64)
            z = np.uint64(self.state) + k * np.uint64(self.GAMMA)
        self.state = (self.state + n * self.GAMMA) & self.M
        return self._mix(np, z)

    def fork(self, np, salt):
        x = int(self.next_many(np, 1)[0])
        return GflexRng(x ^ ((salt * 0xD1B54A32D192ED03) & self.M))

    def normals(self, np, n):
        """n calls of normal(): Box-Muller, one value from two uniforms."""
        u = (self.next_many(np, 2 * n) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
        u1 = np.maximum(u[0::2], 1e-300)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u[1::2])

    def shuffled(self, np, n):
        """The trainer's Fisher-Yates over 0..n-1: for i = n-1..1, swap i with below(i + 1)."""
        z = self.next_many(np, n - 1)
        m = np.arange(n, 1, -1, dtype=np.uint64)  # i + 1 for i = n-1 .. 1
        hi, lo = z >> np.uint64(32), z & np.uint64(0xFFFFFFFF)
        j = ((hi * m + ((lo * m) >> np.uint64(32))) >> np.uint64(32)).tolist()  # (z * m) >> 64
        order = list(range(n))
        for i, ji in zip(range(n - 1, 0, -1), j):
            order[i], order[ji] = order[ji], order[i]
        return order


def init_like_gflex(torch, net, seed):
    """graph_model.cpp's init_parameters: the k-th parameter block in the plan's order, if drawn,
    from stream root.fork(k) (constant blocks fork nothing); gflex stores a linear weight as [in, out], PyTorch as [out, in]."""
    import numpy as np
    root = GflexRng(seed)
    kinds = [kind for kind, _, _ in net.plan]
    blocks = []  # (parameter, stddev or None for a constant, transposed, constant)
    for i, (m, kind) in enumerate(zip(net.mods, kinds)):
        gain = 2.0 if i + 1 < len(kinds) and kinds[i + 1] in ("relu", "gelu") else 1.0
        if kind == "embedding":
            blocks.append((m.weight, 0.02, False, 0.0))
        elif kind == "position_embedding":
            blocks.append((m.table, 0.02, False, 0.0))
        elif kind == "layer_norm":
            blocks += [(m.weight, None, False, 1.0), (m.bias, None, False, 0.0)]
        elif kind in ("linear", "attention"):
            for lin in ((m,) if kind == "linear" else (m.qkv, m.out)):
                blocks.append((lin.weight, math.sqrt(gain / lin.in_features), True, 0.0))
                if lin.bias is not None:
                    blocks.append((lin.bias, None, False, 0.0))
    if sum(p.numel() for p, *_ in blocks) != sum(p.numel() for p in net.parameters()):
        fail("init_like_gflex: the parameter blocks do not cover the model")
    with torch.no_grad():
        for k, (p, std, transposed, constant) in enumerate(blocks):
            if std is None:  # biases, gamma and beta: constant, and no stream is forked
                p.fill_(constant)
                continue
            stream = root.fork(np, k)
            shape = tuple(reversed(p.shape)) if transposed else tuple(p.shape)
            v = torch.from_numpy((stream.normals(np, p.numel()) * std).astype(np.float32))
            v = v.reshape(shape)
            p.copy_(v.t() if transposed else v)


def cosine(step, total):
    """kernels/src/trainer.cpp's schedule: cosine decay to 5% over the run."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / total))


def run_gflex(a, epochs, out_dir, fused=False):
    gflex = os.path.join(a.bin, "gflex")
    if not os.access(gflex, os.X_OK):
        fail(f"{gflex}: not an executable")
    out = os.path.join(out_dir, "gflex.json")
    cmd = [gflex, "--log-level", "warn", "train", "--spec", a.spec, "--max-steps", str(a.steps),
           "--batch-size", str(a.batch), "--lr", repr(a.lr), "--threads", str(a.threads),
           "--epochs", str(epochs), "--seed", str(a.seed), "--json", out]
    if a.device == "cuda":
        cmd += ["--backend", "cuda", "--precision", a.precision,
                "--warmup-steps", str(GPU_WARMUP_STEPS)]
    env = dict(os.environ)
    env.pop("GFLEX_FUSED_ATTENTION", None)
    if fused:
        env["GFLEX_FUSED_ATTENTION"] = "1"
    print("gflex:", "GFLEX_FUSED_ATTENTION=1" if fused else "", " ".join(cmd), file=sys.stderr,
          flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise RunFailed(f"gflex train exited with status {r.returncode}")
    with open(out) as f:
        result = json.load(f)
    if a.device == "cuda":  # the rate after the warm-up, as PyTorch's
        if result.get("steady_samples_per_s", 0) <= 0:
            raise RunFailed(f"gflex train ran no step past its {GPU_WARMUP_STEPS} warm-up "
                            "steps: give --steps more")
        result["samples_per_s_with_warmup"] = result["samples_per_s"]
        result["samples_per_s"] = result["steady_samples_per_s"]
    return result


def run_torch(torch, a, model, train, test, compiled=False):
    import contextlib
    import numpy as np
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    net, fused = build_model(torch, model)
    if a.rng == "gflex":
        init_like_gflex(torch, net, a.seed)
    gpu = a.device == "cuda"
    if gpu:
        net = net.to("cuda")
        train, test = train.to("cuda"), test.to("cuda")  # copied once, before timing
    # Static shapes: an epoch's last, smaller batch compiles a graph of its own instead of
    # turning the batch dimension dynamic for every later step (its compilation is not timed,
    # below).
    run = torch.compile(net, dynamic=False) if compiled else net
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) \
        if gpu and a.precision == "bf16" else contextlib.nullcontext
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    shuffle_root = GflexRng(a.seed)  # the trainer's: epoch e shuffles with root.fork(e)
    epoch = 0
    parameters = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, **({"fused": True} if gpu else {}))
    T = model["input"][0]
    n = train.shape[0]
    steps_per_epoch = (n + a.batch - 1) // a.batch
    total = a.steps
    print(f"pytorch {torch.__version__}: {parameters} parameters, {a.steps} steps",
          file=sys.stderr, flush=True)
    net.train()
    step = 0
    train_s = 0.0
    samples = 0
    loss_sum = torch.zeros((), device=a.device)
    # On a GPU the first steps (torch.compile's compilation, cuBLAS and cuDNN set-up) are not
    # timed, nor are gflex's (--warmup-steps).
    warmup = GPU_WARMUP_STEPS if gpu else 0
    timed_samples = 0
    while step < total:
        epoch += 1
        if a.rng == "gflex":
            order = torch.tensor(shuffle_root.fork(np, epoch).shuffled(np, n))
        else:
            order = torch.randperm(n)  # a uniform shuffle per epoch, like the trainer's
        order = order.to(a.device)
        sync()
        start = time.perf_counter()
        for s in range(steps_per_epoch):
            if step >= total:
                break
            rows = train[order[s * a.batch:(s + 1) * a.batch]]
            # A compiled model meets a batch of another size (an epoch's last) with a new
            # compilation: that step is not timed, as the warm-up's are not.
            paused = compiled and rows.shape[0] != a.batch and step >= warmup
            if paused:
                sync()
                train_s += time.perf_counter() - start
            for group in opt.param_groups:
                group["lr"] = a.lr * cosine(step, total)
            with autocast():
                loss = run(rows[:, :T], rows[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float() * rows.shape[0]
            samples += rows.shape[0]
            if paused:
                sync()
                start = time.perf_counter()
            else:
                timed_samples += rows.shape[0]
            step += 1
            if step == warmup:  # the clock starts after the warm-up steps
                sync()
                start = time.perf_counter()
                timed_samples = 0
        sync()
        train_s += time.perf_counter() - start
    net.eval()
    nats = 0.0
    with torch.no_grad(), autocast():
        for i in range(0, test.shape[0], 256):
            rows = test[i:i + 256]
            nats += net(rows[:, :T], rows[:, 1:]).float().item() * rows.shape[0]
    test_loss = nats / test.shape[0]
    return {
        "peer": f"pytorch {torch.__version__}" + (", torch.compile" if compiled else "") +
                (f", {a.device}, {a.precision}" if gpu else ""),
        "attention": "scaled_dot_product_attention" if fused else "matmuls + masked softmax",
        "parameters": parameters,
        "steps": step,
        "samples": samples,
        "train_s": train_s,
        "samples_per_s": timed_samples / train_s,
        "train_loss": loss_sum.item() / samples,
        "test_loss": test_loss,
        "test_bits": test_loss / math.log(2.0),
    }


def main():
    a = arguments()
    # OpenBLAS / OpenMP pools inside torch read these when it loads.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module's docstring
    gflex = os.path.join(a.bin, "gflex")
    if not os.access(gflex, os.X_OK):
        fail(f"{gflex}: not an executable")
    # PyTorch's GEMMs run in the same OpenBLAS: on the kernels gflex runs on (the module's
    # docstring says why), set before torch loads the library.
    core, chosen_by_gflex = openblas_core(gflex)
    if chosen_by_gflex and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = core
    ensure_torch()
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; the language model benchmark is left "
              "ready to run")
        return

    if a.compile and not hasattr(torch, "compile"):
        fail(f"--compile needs torch.compile (PyTorch 2 or later); this is {torch.__version__}")

    model = read_model(a.spec)
    T = model["input"][0]
    train, test = token_splits(torch, read_corpus(), T + 1)
    steps_per_epoch = (train.shape[0] + a.batch - 1) // a.batch
    epochs = (a.steps + steps_per_epoch - 1) // steps_per_epoch  # so --max-steps binds

    # A run bounded from outside (run-gpu.sh's time budget) ends with SIGTERM: the runs that
    # finished are still reported, and the exit status says the benchmark was cut short.
    signal.signal(signal.SIGTERM, on_sigterm)
    parameters = sum(p.numel() for p in build_model(torch, model)[0].parameters())
    g_runs, f_runs, t_runs, c_runs = [], [], [], []
    cut_short = False
    failures = []

    # One run; a failed one is said and left out of the table, and the others still run (a
    # row that has never run on a card must not cost the rows that have).
    def attempt(runs, what, run):
        try:
            runs.append(run())
        except RunFailed as e:
            failures.append(what)
            print(f"lm_vs_torch: {what} failed: {e}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - PyTorch's own failures, as PyTorch words them
            failures.append(what)
            print(f"lm_vs_torch: {what} failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)

    def run_gflex_in_tmp(fused):
        with tempfile.TemporaryDirectory() as tmp:
            return run_gflex(a, epochs, tmp, fused=fused)

    try:
        for r in range(a.repeats):  # never two at once: gflex, then PyTorch, then again
            attempt(g_runs, "gflex", lambda: run_gflex_in_tmp(False))
            if a.fused_attention:
                attempt(f_runs, "gflex, fused attention", lambda: run_gflex_in_tmp(True))
            attempt(t_runs, "pytorch", lambda: run_torch(torch, a, model, train, test))
            if a.compile:
                attempt(c_runs, "pytorch, torch.compile",
                        lambda: run_torch(torch, a, model, train, test, compiled=True))
            if g_runs and t_runs:
                print(f"run {r + 1}: gflex {g_runs[-1]['samples_per_s'] * T:.0f} tokens/s, "
                      f"{g_runs[-1]['test_bits']:.4f} bits/byte; pytorch "
                      f"{t_runs[-1]['samples_per_s'] * T:.0f} tokens/s, "
                      f"{t_runs[-1]['test_bits']:.4f} bits/byte", file=sys.stderr, flush=True)
    except CutShort:
        cut_short = True
        print("lm_vs_torch: cut short (SIGTERM); reporting the runs that finished",
              file=sys.stderr, flush=True)
    best = lambda runs: max(runs, key=lambda x: x["samples_per_s"]) if runs else None  # noqa: E731
    g, f, t, c = best(g_runs), best(f_runs), best(t_runs), best(c_runs)
    report(a, model, parameters, train.shape[0], test.shape[0], g, f, t, c,
           {"gflex_runs": g_runs, "pytorch_runs": t_runs}, core)
    sys.stdout.flush()
    if cut_short:
        sys.exit(124)
    if failures:
        print(f"lm_vs_torch: failed: {', '.join(failures)}", file=sys.stderr, flush=True)
        sys.exit(1)


class RunFailed(Exception):
    """A gflex run that failed: its row is left out, the others still run."""


class CutShort(BaseException):
    """SIGTERM. A BaseException, not an Exception: raised inside torch.compile's compilation,
    an Exception would come back wrapped in one of PyTorch's (Dynamo re-raises the exceptions
    it does not know as its own), and the runs that finished would not be reported."""


def on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the report must not be cut too
    raise CutShort()


def run_mean_train_loss(g, n_train):
    """gflex's mean training loss over the whole run, as PyTorch's is: `gflex train --json`
    gives each epoch's mean (history), which are weighted by the epoch's samples. Every epoch
    but the last is a whole pass over the n_train training samples; the last takes the rest of
    the run's. None where they do not add up (a split other than gflex's)."""
    history = g.get("history") or []
    if not history:
        return None
    last = g["samples"] - n_train * (len(history) - 1)
    if not 0 < last <= n_train:
        return None
    weights = [n_train] * (len(history) - 1) + [last]
    return sum(w * e["train_loss"] for w, e in zip(weights, history)) / g["samples"]


def report(a, model, parameters, n_train, n_test, g, f, t, c, runs, core):
    """Prints the table of the rows that ran (None: a row that did not) and writes --json;
    `core`: the OpenBLAS core both sides run on (None: not reported)."""
    T = model["input"][0]
    # Model FLOPs per token (the PaLM estimate): 6 per parameter, and the attention scores
    # and their products, 12 x layers x context x width.
    attention = [i for i, l in enumerate(model["layers"]) if l["type"] == "attention"]
    width = next((l["dim"] for l in model["layers"] if l["type"] == "embedding"), 0)
    flops_per_token = 6 * parameters + 12 * len(attention) * T * width
    mfu = lambda tokens: tokens * flops_per_token / (a.peak_tflops * 1e12)  # noqa: E731
    tokens = lambda r: r["samples_per_s"] * T  # noqa: E731
    print(f"model {model.get('name', '?')} ({parameters} parameters), context {T}, "
          f"{n_train} training / {n_test} held-out samples; batch {a.batch}, "
          f"{a.steps} steps ({a.steps * a.batch * T} tokens), AdamW lr {a.lr} cosine to 5%, "
          f"{a.threads} threads (torch: set_num_threads({a.threads}), OpenBLAS "
          f"{os.environ['OPENBLAS_NUM_THREADS']}, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}); OpenBLAS core {core or 'not reported'}" +
          (" (OPENBLAS_CORETYPE)" if "OPENBLAS_CORETYPE" in os.environ else "") +
          " on both sides" +
          (f"; torch attention: {t['attention']}" if t else "") +
          f"; initial parameters and sample order: {a.rng}'s generator, seed {a.seed}; "
          f"better of {a.repeats} runs each")
    print()
    gpu = a.device == "cuda"
    print("| implementation | tokens/s | held-out bits/byte | train seconds |" +
          (f" MFU (of {a.peak_tflops:g} TFLOP/s) |" if gpu else ""))
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if gpu else ""))
    names = [("gflex ({})", g), ("gflex, fused attention ({})", f),
             ("pytorch", t), ("pytorch, torch.compile", c)]
    for name, r in names:
        if r is None:
            if (name.startswith("gflex, fused") and not a.fused_attention) or \
                    (name.endswith("compile") and not a.compile):
                continue
            print(f"| {name.format('-')} | not run | | |" + (" |" if gpu else ""))
            continue
        label = name.format(r["backend"]) if name.startswith("gflex") else r["peer"]
        print(f"| {label} | {tokens(r):.0f} | {r['test_bits']:.4f} | {r['train_s']:.1f} |" +
              (f" {100 * mfu(tokens(r)):.1f}% |" if gpu else ""))
    print()
    if g and c:
        print(f"gflex / compiled pytorch tokens/s: {tokens(g) / tokens(c):.2f}x")
    if f and c:
        print(f"gflex with fused attention / compiled pytorch tokens/s: "
              f"{tokens(f) / tokens(c):.2f}x")
    if g and t:
        g_train_loss = run_mean_train_loss(g, n_train)
        print(f"gflex / pytorch tokens/s: {tokens(g) / tokens(t):.2f}x; held-out bits/byte, "
              f"gflex - pytorch: {g['test_bits'] - t['test_bits']:+.4f}")
        print("mean training loss over the run (nats/token): gflex " +
              (f"{g_train_loss:.4f}" if g_train_loss is not None else
               "not known (its epochs' samples do not add up to the run's)") +
              f", pytorch {t['train_loss']:.4f}")
    if a.json:
        with open(a.json, "w") as out:
            json.dump({"gflex": g, "gflex_fused_attention": f, "pytorch": t,
                       "pytorch_compiled": c, "device": a.device,
                       "precision": a.precision, "flops_per_token": flops_per_token,
                       "peak_tflops": a.peak_tflops, "parameters": parameters,
                       "context": T, "steps": a.steps, "openblas_core": core,
                       "batch": a.batch, "lr": a.lr, "threads": a.threads, **runs}, out, indent=2)

if __name__ == "__main__":
    main()
