"""The PyTorch peer: FAST's CNN-4 federated round, clients trained one after another.

This is the execution model of Flower's NumPyClient and of the FAST authors' code
(Haoyuan-L/FAST-official, `src/client.py` / `src/server.py`): each client loads the global
state, builds a fresh `torch.optim.SGD`, trains its local steps in train mode, and returns
its full `state_dict`; the server takes the sample-weighted average of every entry (Flower's
`FedAvg`). Clients run sequentially in one process, on the same device as fastjax
(`device="auto"`: CUDA when torch sees a GPU, else the CPU), data already on that device.
On a GPU it runs as JAX does by default: TF32 for float32 matmuls and convolutions,
cuDNN autotuning on. `compile=True` wraps the model in `torch.compile` (on a CPU that
needs a C++ toolchain and can be slow; a failure is reported, not raised).

    .venv/bin/python benchmarks/torch_reference.py --clients 10 --steps 5 --batch 64 [--compile]

prints `time_round(...)` as JSON.
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
import sys
import time
from typing import Mapping, Sequence

import torch
from torch import nn

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, _ROOT)
from benchmarks import common  # noqa: E402

HIDDEN = 64
SUPPORTED_IMAGE_SIZES = (28, 32, 64)

# FAST-official client optimizer (`src/client.py`): SGD, momentum 0.9, weight decay 1e-4;
# lr 1e-3 is the server's default `initial_lr`. Only the timing uses these defaults.
DEFAULT_LR = 1e-3
DEFAULT_MOMENTUM = 0.9
DEFAULT_WEIGHT_DECAY = 1e-4


def _conv3x3(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1, track_running_stats=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class CNN4(nn.Module):
    """FAST-official `src/network.py` `CNN4Conv`, with the same module names (`features`, `linear`).

    emb_dim = 64 * (image_size // 16)^2: 28 px -> 64 (28->14->7->3->1), 32 px -> 256,
    64 px -> 1024 (FAST-official supports 28 and 32 only). Input NCHW.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.emb_dim = HIDDEN * (image_size // 16) ** 2
        self.features = nn.Sequential(
            _conv3x3(in_channels, HIDDEN),
            _conv3x3(HIDDEN, HIDDEN),
            _conv3x3(HIDDEN, HIDDEN),
            _conv3x3(HIDDEN, HIDDEN),
        )
        self.linear = nn.Linear(self.emb_dim, num_classes)
        with torch.no_grad():
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.features(x), 1))


def make_cnn4(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised (torch default init, zero linear bias) CNN-4."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise ValueError(f"image_size={image_size}: CNN-4 supports {SUPPORTED_IMAGE_SIZES} "
                         f"(emb_dim = 64 * (image_size // 16)^2); resize the images to one of these.")
    return CNN4(in_channels, num_classes, image_size)


def _clone_state(model: nn.Module) -> "collections.OrderedDict[str, torch.Tensor]":
    return collections.OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def local_train(model: nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, *, steps: int, batch_size: int, lr: float, momentum: float,
                weight_decay: float, seed: int, forward: nn.Module | None = None):
    """One client's local update, as a Flower `NumPyClient.fit` / FAST-official `Client.fit`.

    Loads `global_state` into `model`, builds a fresh SGD(lr, momentum, weight_decay), and runs
    `steps` minibatch steps of mean cross-entropy in train mode (BN uses batch statistics and
    updates its running stats). Minibatches are consecutive `batch_size` slices of a
    permutation of this client's samples drawn from `seed`, wrapping around at the end.

    Returns (state_dict, num_samples, mean_loss): a detached copy of the full state (parameters
    and BN buffers), `len(images)` (FedAvg's weight, as in FAST-official), and the mean of
    the per-step losses. `forward`: the module to call (e.g. `torch.compile(model)`, which
    shares `model`'s parameters); default `model`.
    """
    n = int(images.shape[0])
    if n == 0 or steps < 1 or batch_size < 1:
        raise ValueError(f"local_train needs samples, steps >= 1 and batch_size >= 1; got "
                         f"{n} samples, steps={steps}, batch_size={batch_size}.")
    model.load_state_dict(global_state, strict=True)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    forward = model if forward is None else forward
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(images.device)
    offsets = torch.arange(batch_size, device=images.device)
    losses = []
    for step in range(steps):
        idx = perm[(step * batch_size + offsets) % n]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(images[idx]), labels[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    mean_loss = float(torch.stack(losses).mean())
    return _clone_state(model), n, mean_loss


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]):
    """Sample-weighted average of every state entry: sum_k w_k * state_k / sum_k w_k.

    Parameters and BN running mean/var are averaged in float. Integer entries
    (BN `num_batches_tracked`) are averaged the same way and rounded back to their integer
    dtype, which is what Flower's `FedAvg` does to FAST-official's full state_dict (it
    averages every ndarray, and `load_state_dict` copies the result into the int64 buffer);
    when every client runs the same number of steps it equals each client's count.
    """
    if len(states) == 0 or len(states) != len(weights):
        raise ValueError(f"fedavg needs one weight per state; got {len(states)} states and "
                         f"{len(weights)} weights.")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 with a positive sum; got {list(weights)}.")
    w = w / w.sum()
    out = collections.OrderedDict()
    for key, ref in states[0].items():
        stacked = torch.stack([s[key].to(torch.float64) for s in states])
        avg = torch.tensordot(w.to(stacked.device), stacked, dims=1)
        if ref.dtype.is_floating_point:
            out[key] = avg.to(ref.dtype)
        else:
            out[key] = torch.round(avg).to(ref.dtype)
    return out


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto": CUDA when torch sees a GPU, else the CPU; else the named device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@contextlib.contextmanager
def _like_jax(device: torch.device):
    """On a GPU, torch as JAX runs by default: TF32 for float32 matmuls and convolutions
    (XLA's default precision on Ampere and later), cuDNN autotuning."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic_clients(num_clients: int, samples: int, channels: int, image_size: int,
                       num_classes: int, seed: int = 0, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(samples, channels, image_size, image_size, generator=g).to(device),
             torch.randint(0, num_classes, (samples,), generator=g).to(device))
            for _ in range(num_clients)]


def time_round(num_clients: int, steps: int, batch_size: int, image_size: int = 32,
               channels: int = 3, num_classes: int = 10, repeats: int = 5, warmup: int = 1,
               threads: int | None = None, device: str = "auto", compile: bool = False,
               compile_backend: str = "inductor") -> dict:
    """Wall-clock of federated rounds: every client's `local_train` in turn, then `fedavg`.

    Synthetic float32 images (N, C, H, W) and int64 labels of the real shapes, held on
    `device`; each client holds steps * batch_size samples. `warmup` untimed rounds, then
    `repeats` timed ones (each ends with a device synchronisation); the global state carries
    over from round to round. `threads=None` keeps torch's default intra-op thread count.
    `compile`: the model's forward through `torch.compile(backend=compile_backend)`; if that
    fails (e.g. no C++ compiler for inductor on a CPU), the result holds `error` instead of
    timings.

    Returns a dict with: backend ("torch"), device, tf32, compiled, round_seconds (list, one
    per timed round), sec_per_round (median), first_round_seconds (warm-up, compile
    included), samples_per_sec (num_clients * steps * batch_size / sec_per_round),
    num_clients, steps, batch_size, image_size, channels, num_classes, repeats, warmup,
    threads (the count used), torch_version.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1, warmup >= 0.")
    samples = steps * batch_size
    dev = resolve_device(device)
    info = {"backend": "torch", "device": str(dev), "tf32": dev.type == "cuda", "compiled": bool(compile),
            "compile_backend": compile_backend if compile else None, "num_clients": num_clients,
            "steps": steps, "batch_size": batch_size, "image_size": image_size, "channels": channels,
            "num_classes": num_classes, "repeats": repeats, "warmup": warmup,
            "torch_version": torch.__version__}
    with _torch_threads(threads) as used_threads, _like_jax(dev):
        info["threads"] = used_threads
        torch.manual_seed(0)
        model = make_cnn4(channels, num_classes, image_size).to(dev)
        forward = torch.compile(model, backend=compile_backend) if compile else model
        global_state = _clone_state(model)
        clients = _synthetic_clients(num_clients, samples, channels, image_size, num_classes, device=dev)
        round_seconds = []
        for r in range(max(warmup, 1 if compile else 0) + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            try:
                results = [local_train(model, global_state, x, y, steps=steps, batch_size=batch_size,
                                       lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM,
                                       weight_decay=DEFAULT_WEIGHT_DECAY, seed=r * num_clients + c,
                                       forward=forward)
                           for c, (x, y) in enumerate(clients)]
            except Exception as e:  # torch.compile's backends fail in many ways off a GPU
                if not compile or round_seconds:
                    raise
                return {**info, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
            global_state = fedavg([s for s, _, _ in results], [n for _, n, _ in results])
            _sync(dev)
            elapsed = time.perf_counter() - t0
            if r == 0:
                info["first_round_seconds"] = elapsed
            if r >= max(warmup, 1 if compile else 0):
                round_seconds.append(elapsed)
    sec_per_round = common.median(round_seconds)
    return {**info, "round_seconds": round_seconds, "sec_per_round": sec_per_round,
            "samples_per_sec": num_clients * samples / sec_per_round}


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, choices=SUPPORTED_IMAGE_SIZES)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--compile-backend", default="inductor")
    args = parser.parse_args(argv)
    result = time_round(args.clients, args.steps, args.batch, image_size=args.image_size,
                        channels=args.channels, num_classes=args.classes, repeats=args.repeats,
                        warmup=args.warmup, threads=args.threads, device=args.device,
                        compile=args.compile, compile_backend=args.compile_backend)
    scalars = [k for k, v in result.items() if not isinstance(v, (list, dict))]
    print(common.markdown_table([result], scalars))
    print(common.device_line())


if __name__ == "__main__":
    main()
