"""Wall time of the FAST main job split into encode / label / train, next to the paper.

    python benchmarks/fast_walltime.py --data-root $FASTJAX_DATA_ROOT --json runs/bench/walltime.json

Runs `fastjax.main` on the CIFAR-10 config (10 clients, Dirichlet 0.1, 1% seed, 20%
budget, CNN-4, FedAvg) and reports its `wall_seconds` beside the paper's Table III
(two A10 GPUs: FAST 7342.52 s in total on CIFAR-10; the Random active-learning baseline
30398.95 s over 800 rounds). Off an accelerator use fewer rounds / a subset
(`--rounds`, `--train-limit`) and the offline EfficientNet-Lite0 encoder; the JSON
records exactly what ran, so numbers from reduced settings are never mistaken for the
full job. The defaults are the full job (all 60,000 images embedded, 100 rounds of 5
local epochs): hours on a 2-core CPU; the progress bars show the time left.

Where no SigLIP weights or no CIFAR-10 files are at hand (the accelerator machines here):
`--random-siglip base` writes a randomly initialised transformers SiglipVisionModel in the
HF format and encodes with it (the paper's ViT-B/16 at 224 px: same cost, meaningless
labels), and `--synthetic 50000` writes random CIFAR-10-shaped files in CIFAR-10's own
pickle format, so the job runs every stage as on the real data (timings are real,
accuracies are not).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_TABLE3 = {"device": "2x NVIDIA A10", "dataset": "cifar10", "fast_total_seconds": 7342.52,
                "random_800_rounds_seconds": 30398.95}


def write_synthetic_cifar10(root: Path, n_train: int = 50000, n_test: int = 10000, seed: int = 0) -> Path:
    """Random images and balanced labels as `<root>/cifar-10-batches-py` (5 train batches).
    The loader verifies the official release's sizes, so write those (the default) and
    take a subset with data.train_limit / data.test_limit."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]

    def dump(name, obj):
        with open(d / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    dump("batches.meta", {b"label_names": names})
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        dump(f"data_batch_{i}", {b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
                                 b"labels": (part % 10).tolist()})
    dump("test_batch", {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                        b"labels": (np.arange(n_test) % 10).tolist()})
    return root


def round_seconds(workdir: Path) -> list[float]:
    """Per-round wall seconds from metrics.jsonl (round 1 includes the compiles)."""
    from fastjax.federate.checkpoints import MetricsLog

    return [r["seconds"] for r in MetricsLog(Path(workdir) / "metrics.jsonl").read()]


def main(argv=None):
    sys.path.insert(0, str(ROOT))
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default="", help="dataset files (empty: $FASTJAX_DATA_ROOT)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--encoder-checkpoint", default="")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--encoder-dtype", default="float32")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--model", default="cnn4")
    p.add_argument("--strategy", default="vmap")
    p.add_argument("--compute-dtype", default="float32")
    p.add_argument("--partition", default="dirichlet", help="partition.scheme (iid, dirichlet, ...)")
    p.add_argument("--clients", type=int, default=10, help="partition.num_clients")
    p.add_argument("--random-siglip", default="", choices=("", "base", "tiny"),
                   help="encode with randomly initialised SigLIP weights (timing only)")
    p.add_argument("--synthetic", type=int, default=0, help="write N random CIFAR-10-shaped train images "
                   "(N/5 test) and run on them (timing only)")
    p.add_argument("--cache-dir", default="", help="embedding cache (default ~/.cache/fastjax/embeddings)")
    p.add_argument("--workdir", default="runs/walltime")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    from fastjax import config as config_lib
    from fastjax import main as fast_main
    from fastjax.config import base_config

    c = base_config()
    workdir = Path(args.workdir)
    data_root, checkpoint = args.data_root, args.encoder_checkpoint
    if args.synthetic:
        data_root = str(write_synthetic_cifar10(workdir / "synthetic-data"))
        args.train_limit = args.train_limit or args.synthetic
        args.test_limit = args.test_limit or max(args.synthetic // 5, 10)
    if args.random_siglip:
        from benchmarks import siglip_throughput as st

        arch = st.BASE_224 if args.random_siglip == "base" else st.TINY
        st.random_hf_siglip(arch, workdir / "random-siglip")
        checkpoint = str(workdir / "random-siglip")
    c.data.name, c.data.root = args.dataset, data_root
    c.data.train_limit, c.data.test_limit = args.train_limit, args.test_limit
    c.partition.scheme, c.partition.num_clients = args.partition, args.clients
    c.encoder.name, c.encoder.checkpoint = args.encoder, checkpoint
    c.encoder.variant = "base-patch16-224" if args.encoder == "siglip" else ""
    c.encoder.image_size, c.encoder.dtype = args.image_size, args.encoder_dtype
    c.encoder.cache_dir = args.cache_dir
    c.model.name = args.model
    c.train.rounds, c.train.local_epochs, c.train.strategy = args.rounds, args.local_epochs, args.strategy
    c.train.compute_dtype = args.compute_dtype
    c.train.eval_every = max(1, args.rounds // 10)
    try:
        config_lib.validate(c)
    except ValueError as e:
        p.error(str(e))
    print(common.device_line(), flush=True)
    s = fast_main.run(c, workdir)
    per_round = round_seconds(workdir)
    later = per_round[1:] or per_round
    out = {"device": common.device_info(), "args": vars(args), "wall_seconds": s["wall_seconds"],
           "final_accuracy": s["final_accuracy"], "comm_mib": s["comm_mib"], "annotations": s["annotations"],
           "sec_per_round": s["wall_seconds"]["train"] / max(s["rounds"], 1),
           "first_round_seconds": per_round[0] if per_round else None,
           "median_round_seconds_after_first": sorted(later)[len(later) // 2] if later else None,
           "padding_waste": s["padding_waste"], "synthetic_data": bool(args.synthetic),
           "random_encoder_weights": bool(args.random_siglip), "paper_table3": PAPER_TABLE3}
    common.write_json(args.json, out)
    rows = [{"stage": k, "seconds": v} for k, v in out["wall_seconds"].items()]
    print(common.markdown_table(rows, ["stage", "seconds"]))
    print(f"accuracy {out['final_accuracy']:.4f}, {out['comm_mib']:.1f} MiB, "
          f"{out['sec_per_round']:.3f} s per round; {common.device_line(out['device'])}")


if __name__ == "__main__":
    main()
