"""FAST's Table II ablation on CIFAR-10 with linear probing, run through the main job.

    python benchmarks/table2.py --data-root $FASTJAX_DATA_ROOT --out runs/table2 [--image-size 96]

Rows (components of the paper's Table II): 1 = foundation-model linear probing on the
labeled seed only; 1+2 = plus kNN weak labels for every unlabeled sample; 1+2+4 = plus
random refinement (the oracle labels a random b per client); 1+2+3 = plus uncertainty
refinement (FAST). 10 clients, Dirichlet(0.1), 1% seed, 20% budget. The encoder is the
offline EfficientNet-Lite0 stand-in (the paper: SigLIP ViT-B/16). Writes table2.json
and table2.md under --out; embeddings are cached, so only the first row encodes. The
defaults embed all 60,000 CIFAR-10 images (about 8 minutes at 96 px on a 2-core CPU)
and train 100 rounds of 5 local epochs per row; each row's time and an estimate of the
time left are printed as the rows finish.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = {  # row -> labeling overrides
    "1": {"merge": "seed", "budget": 0.0},
    "1+2": {"merge": "weak", "budget": 0.0},
    "1+2+4": {"merge": "human+weak", "strategy": "random"},
    "1+2+3": {"merge": "human+weak", "strategy": "uncertainty"},
}
PAPER = {"1": None, "1+2": None, "1+2+4": None, "1+2+3": None}  # filled in RESULTS.md by hand


def config(args, row):
    from fastjax.config import base_config

    c = base_config()
    c.data.name = "cifar10"
    c.data.root = args.data_root
    c.encoder.name = "efficientnet_lite0"
    c.encoder.variant = ""
    c.encoder.image_size = args.image_size
    c.encoder.batch_size = 128
    c.model.name = "linear"
    c.labeling.budget = 0.2
    c.train.rounds = args.rounds
    c.train.local_epochs = args.local_epochs
    c.train.batch_size = 128
    c.train.lr = args.lr
    c.train.eval_every = 10
    for k, v in ROWS[row].items():
        setattr(c.labeling, k, v)
    return c


def main(argv=None):
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default="", help="CIFAR-10's files (empty: $FASTJAX_DATA_ROOT)")
    p.add_argument("--out", default="runs/table2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--rows", default=",".join(ROWS))
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; allowed: {','.join(ROWS)}")
    common.preflight(p, [config(args, row) for row in rows], args.out, "cifar10", args.data_root)
    from fastjax import main as fast_main

    info = common.device_info()
    print(common.device_line(info), flush=True)
    out = Path(args.out)
    results = {}
    clock = common.RunClock(len(rows))
    for row in rows:
        s = fast_main.run(config(args, row), out / row.replace("+", "_"))
        results[row] = {k: s[k] for k in ("final_accuracy", "best_accuracy", "annotations",
                                          "weak_label_accuracy", "comm_mib", "wall_seconds", "train_samples")}
        clock.tick(f"row {row}: accuracy {s['final_accuracy']:.4f}")
    (out / "table2.json").write_text(json.dumps({"args": vars(args), "device": info, "rows": results},
                                                indent=2))
    lines = ["| Table II row | final acc | best acc | oracle labels | weak-label acc | train samples |",
             "|---|---|---|---|---|---|"]
    for row, r in results.items():
        lines.append(f"| {row} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | {r['annotations']} | "
                     f"{r['weak_label_accuracy']:.4f} | {r['train_samples']} |")
    lines += ["", common.device_line(info)]
    (out / "table2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
