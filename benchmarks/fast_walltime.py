"""Wall time of the FAST main job split into encode / label / train, next to the paper.

    python benchmarks/fast_walltime.py --data-root ../shared/data --json runs/bench/walltime.json

Runs `fastjax.main` on the CIFAR-10 config (10 clients, Dirichlet 0.1, 1% seed, 20%
budget, CNN-4, FedAvg) and reports its `wall_seconds` beside the paper's Table III
(two A10 GPUs: FAST 7342.52 s in total on CIFAR-10; the Random active-learning baseline
30398.95 s over 800 rounds). Off an accelerator use fewer rounds / a subset
(`--rounds`, `--train-limit`) and the offline EfficientNet-Lite0 encoder; the JSON
records exactly what ran, so numbers from reduced settings are never mistaken for the
full job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_TABLE3 = {"device": "2x NVIDIA A10", "dataset": "cifar10", "fast_total_seconds": 7342.52,
                "random_800_rounds_seconds": 30398.95}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="")
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
    p.add_argument("--workdir", default="runs/walltime")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks import common
    from fastjax import main as fast_main
    from fastjax.config import base_config

    c = base_config()
    c.data.name, c.data.root = args.dataset, args.data_root
    c.data.train_limit, c.data.test_limit = args.train_limit, args.test_limit
    c.encoder.name, c.encoder.checkpoint = args.encoder, args.encoder_checkpoint
    c.encoder.variant = "base-patch16-224" if args.encoder == "siglip" else ""
    c.encoder.image_size, c.encoder.dtype = args.image_size, args.encoder_dtype
    c.model.name = args.model
    c.train.rounds, c.train.local_epochs, c.train.strategy = args.rounds, args.local_epochs, args.strategy
    c.train.eval_every = max(1, args.rounds // 10)
    s = fast_main.run(c, args.workdir, progress=False)
    out = {"device": common.device_info(), "args": vars(args), "wall_seconds": s["wall_seconds"],
           "final_accuracy": s["final_accuracy"], "comm_mib": s["comm_mib"], "annotations": s["annotations"],
           "sec_per_round": s["wall_seconds"]["train"] / max(s["rounds"], 1), "paper_table3": PAPER_TABLE3}
    common.write_json(args.json, out)
    print(json.dumps(out["wall_seconds"], indent=2))


if __name__ == "__main__":
    main()
