"""The labeling passes at scale: fastjax's kNN propagation and Eq. 7 prototypes against a
blocked PyTorch peer (`torch.cdist` + `topk` on the same device).

    python benchmarks/label_scale.py --unlabeled 100000 --labeled 40000 --dim 768 \
        --classes 100 --json runs/bench/label_scale.json

Both sides take host (numpy) embeddings and return host arrays, so each timing includes
the transfers. "first" is the first call in the process (compiles included), "steady"
the median of --repeats further calls. The torch peer runs float32 without TF32
(torch's default for matmuls), as fastjax's kNN (Precision.HIGHEST); it breaks vote ties
by the lowest class, so agreement is reported against fastjax's tie_break="lowest_class".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_embeddings(n_u: int, n_l: int, d: int, classes: int, seed: int = 0):
    """Clustered float32 embeddings: class centres plus unit noise (labels of the labeled set)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)).astype(np.float32) * 0.5
    yl = rng.integers(0, classes, n_l)
    yu = rng.integers(0, classes, n_u)
    zl = centres[yl] + rng.normal(size=(n_l, d)).astype(np.float32)
    zu = centres[yu] + rng.normal(size=(n_u, d)).astype(np.float32)
    return zu, zl, yl.astype(np.int64)


def _timed(fn, repeats: int):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return out, {"first_seconds": first, "steady_seconds": float(np.median(secs)) if secs else None,
                 "repeat_seconds": secs}


def fastjax_passes(zu, zl, yl, classes: int, k: int, repeats: int, block: int = 4096) -> dict:
    from fastjax.label import knn_propagate, prototype_similarity

    (weak, _), knn = _timed(lambda: knn_propagate(zu, zl, yl, classes, k, block_size=block,
                                                  labeled_block_size=block, tie_break="lowest_class"), repeats)
    _, proto = _timed(lambda: prototype_similarity(zu, zl, yl, classes, block_size=block), repeats)
    return {"knn": knn, "prototypes": proto, "weak": weak}


def torch_passes(zu, zl, yl, classes: int, k: int, repeats: int, block: int = 4096, device: str = "auto") -> dict:
    import torch

    from benchmarks.torch_reference import resolve_device

    dev = resolve_device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def knn():
        zl_t = torch.from_numpy(zl).to(dev)
        yl_t = torch.from_numpy(yl).to(dev)
        weak = []
        for s in range(0, len(zu), block):
            d = torch.cdist(torch.from_numpy(zu[s:s + block]).to(dev), zl_t)
            idx = d.topk(k, dim=1, largest=False).indices
            votes = torch.nn.functional.one_hot(yl_t[idx], classes).sum(1)
            weak.append(votes.argmax(1))
        out = torch.cat(weak).cpu().numpy()
        sync()
        return out

    def prototypes():
        zl_t = torch.nn.functional.normalize(torch.from_numpy(zl).to(dev), dim=1)
        yl_t = torch.from_numpy(yl).to(dev)
        sums = torch.zeros(classes, zl.shape[1], device=dev).index_add_(0, yl_t, zl_t)
        counts = torch.bincount(yl_t, minlength=classes).clamp(min=1)
        means = sums / counts[:, None]
        out = [torch.nn.functional.normalize(torch.from_numpy(zu[s:s + block]).to(dev), dim=1) @ means.T
               for s in range(0, len(zu), block)]
        res = torch.cat(out).cpu().numpy()
        sync()
        return res

    with torch.no_grad():
        weak, t_knn = _timed(knn, repeats)
        _, t_proto = _timed(prototypes, repeats)
    return {"knn": t_knn, "prototypes": t_proto, "weak": weak, "device": str(dev)}


def run(n_u: int, n_l: int, d: int, classes: int, k: int = 10, repeats: int = 2, block: int = 4096) -> dict:
    zu, zl, yl = make_embeddings(n_u, n_l, d, classes)
    ours = fastjax_passes(zu, zl, yl, classes, k, repeats, block)
    peer = torch_passes(zu, zl, yl, classes, k, repeats, block)
    agree = float(np.mean(ours.pop("weak") == peer.pop("weak")))
    return {"unlabeled": n_u, "labeled": n_l, "dim": d, "classes": classes, "k": k, "block": block,
            "fastjax": ours, "torch": peer, "weak_label_agreement": agree}


def main(argv=None):
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--unlabeled", type=int, default=100_000)
    p.add_argument("--labeled", type=int, default=40_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    print(common.device_line(), flush=True)

    out = {"device": common.device_info(),
           **run(args.unlabeled, args.labeled, args.dim, args.classes, args.k, args.repeats, args.block)}
    common.write_json(args.json, out)
    for side in ("fastjax", "torch"):
        print(side, {kind: round(out[side][kind]["first_seconds"], 3) for kind in ("knn", "prototypes")},
              {kind: out[side][kind]["steady_seconds"] for kind in ("knn", "prototypes")})
    print("weak-label agreement", out["weak_label_agreement"])


if __name__ == "__main__":
    main()
