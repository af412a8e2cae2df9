"""FAST against the iterative federated active-learning baselines on one partition, with
the same model, engine and communication accounting (the paper's Table I / Table III /
Fig. 2 comparison).

    python benchmarks/compare_fal.py --data-root $FASTJAX_DATA_ROOT --out runs/compare_fal     # Table I, CIFAR-10
    python benchmarks/compare_fal.py --data-root $FASTJAX_DATA_ROOT --out runs/compare_quick --quick

Every strategy runs the loop of `fastjax.methods.active` (the preset `paper_table1`:
inter-class diversity partition, 5% initial + 5% per AL round, 100 FL rounds per AL
round) for max(--al-rounds) AL rounds; the rows for R = 4 and R = 8 are read off the
same run (a run's first R AL rounds do not depend on how many follow). FAST runs once
(1% seed, 5% budget, 100 FL rounds) on the same partition, model and training options.
Writes under --out: compare.json, compare.md (Table I / III style, the paper's figures
beside ours), fig2.png (accuracy against FL rounds, FAST's best as a horizontal line)
and accuracy_vs_mib.png. Each run lives in its own work directory, so an interrupted
benchmark resumes where it stopped.

--quick shrinks everything for a 2-core CPU (a CIFAR-10 subset, fewer clients, rounds
and epochs); its numbers show the pipeline, not the paper's accuracies. --tiny is CI's
smoke run. Measured on a 2-core CPU, CIFAR-10, all nine baselines and FAST: --quick about
9 minutes, --tiny 5-10 minutes (not much less: compiling each strategy's programs
dominates; 4.5 CPU-minutes, 17 minutes wall on a heavily loaded machine); the default
(the paper's scale: 8 AL rounds x 100 FL rounds per baseline on all 50,000 images) takes
days on a CPU. Before the first run the plan is
printed (runs, rounds, images), and after each run the time left is estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastjax.active import STRATEGIES  # noqa: E402  (after the path line above)

DEFAULT_STRATEGIES = tuple(STRATEGIES)  # all nine baselines
FULL = {"train_limit": 0, "test_limit": 0, "clients": 10, "fl_rounds": 100, "local_epochs": 5,
        "batch_size": 64, "al_rounds": (4, 8), "image_size": 224}
QUICK = {"train_limit": 4000, "test_limit": 1000, "clients": 5, "fl_rounds": 8, "local_epochs": 1,
         "batch_size": 32, "al_rounds": (2, 3), "image_size": 64}
# Measured wall times of the whole benchmark on a 2-core CPU (the docstring says how).
TINY_TIME, QUICK_TIME = "5-10 minutes", "about 9 minutes"
TINY = {"train_limit": 600, "test_limit": 200, "clients": 3, "fl_rounds": 2, "local_epochs": 1,
        "batch_size": 16, "al_rounds": (1, 2), "image_size": 32}  # CI's smoke run


def _common(c, args, size):
    c.data.name = args.dataset
    c.data.root = args.data_root or ""
    c.data.train_limit = size["train_limit"]
    c.data.test_limit = size["test_limit"]
    c.partition.scheme = args.partition
    c.partition.num_clients = size["clients"]
    c.model.name = args.model
    c.train.rounds = size["fl_rounds"]
    c.train.local_epochs = size["local_epochs"]
    c.train.batch_size = size["batch_size"]
    c.train.lr = args.lr
    c.train.eval_every = 1
    c.seed = args.seed
    return c


def active_config(args, size, strategy: str):
    from fastjax.active.presets import apply_preset
    from fastjax.config import base_config

    c = apply_preset(base_config(), args.preset)
    c = _common(c, args, size)
    c.active.strategy = strategy
    c.active.rounds = max(size["al_rounds"])
    return c


def fast_config(args, size):
    from fastjax.config import base_config

    c = _common(base_config(), args, size)
    c.method = "fast"
    c.labeling.budget = args.fast_budget
    c.encoder.name = args.encoder
    c.encoder.variant = "" if args.encoder == "efficientnet_lite0" else c.encoder.variant
    c.encoder.image_size = size["image_size"] if args.encoder == "efficientnet_lite0" else 0
    return c


def paper_numbers(dataset: str, partition: str) -> dict:
    """The paper's figures for `dataset` from benchmarks/paper_tables.json (data, not
    code), keyed by (method, R_AL): Table I's accuracy for the inter-class diversity
    partition (logo), Table III's accuracy, MB and seconds for IID (its baselines ran 8
    AL rounds)."""
    tables = json.loads(Path(__file__).with_name("paper_tables.json").read_text())["tables"]
    name = {"alfamix": "alfa_mix"}
    out = {}
    if partition == "logo":
        for row in tables["I"]["rows"]:
            if dataset in row["values"]:
                out[(name.get(row["method"], row["method"]), row["r_al"])] = {"accuracy": row["values"][dataset]}
    elif partition == "iid":
        for row in tables["III"]["rows"]:
            v = row["values"].get(dataset)
            if v:
                r_al = 1 if row["method"] == "fast" else 8
                out[(row["method"], r_al)] = {"accuracy": v.get("acc"), "mib": v.get("mb"), "seconds": v.get("s")}
    return out


def plan(args, size) -> str:
    """What will run, printed before the first run."""
    al = max(size["al_rounds"])
    images = (f"{size['train_limit']} train / {size['test_limit']} test images"
              if size["train_limit"] else "every train and test image")
    lines = [f"plan: {len(args.strategies)} baseline(s) ({', '.join(args.strategies)}) x {al} AL rounds "
             f"x {size['fl_rounds']} FL rounds of {size['local_epochs']} local epoch(s) = "
             f"{len(args.strategies) * al * size['fl_rounds']} FL rounds, on {images} of {args.dataset}, "
             f"{size['clients']} clients"]
    if not args.no_fast:
        lines.append(f"      FAST: {args.encoder} embeds {images} once (cached), then "
                     f"{size['fl_rounds']} FL rounds")
    return "\n".join(lines)


def run_all(args, size, log=print) -> dict:
    from benchmarks import common
    from fastjax import main as fast_main

    out = Path(args.out)
    results = {"size": size, "args": {k: v for k, v in vars(args).items()}, "strategies": {}}
    clock = common.RunClock(len(args.strategies) + (not args.no_fast), log=log)
    for s in args.strategies:
        summary = fast_main.run(active_config(args, size, s), out / s, progress=args.progress)
        results["strategies"][s] = {"summary": summary, "metrics": _metrics(out / s)}
        clock.tick(f"{s}: accuracy {summary['final_accuracy']:.4f} after {summary['fl_rounds']} FL rounds")
    if not args.no_fast:
        summary = fast_main.run(fast_config(args, size), out / "fast", progress=args.progress)
        results["fast"] = {"summary": summary, "metrics": _metrics(out / "fast")}
        clock.tick(f"fast: accuracy {summary['final_accuracy']:.4f}")
    return results


def _metrics(workdir: Path) -> list[dict]:
    from fastjax.federate.checkpoints import MetricsLog

    return MetricsLog(workdir / "metrics.jsonl").read()


def table_rows(results: dict, al_rounds) -> list[dict]:
    """One row per (strategy, R) plus FAST: accuracy final and mean of the last 5 FL rounds,
    MiB, wall seconds (query + train), annotations, FL rounds."""
    rows = []
    for s, r in results["strategies"].items():
        by_round = {x["al_round"]: x for x in r["summary"]["al_rounds"]}
        for R in al_rounds:
            if R not in by_round:
                continue
            upto = [by_round[a] for a in range(1, R + 1)]
            x = by_round[R]
            rows.append({"method": s, "R_AL": R, "accuracy": x["final_accuracy"], "last5": x["last5_accuracy"],
                         "mib": x["comm_mib"], "query_s": sum(u["query_seconds"] for u in upto),
                         "train_s": sum(u["train_seconds"] for u in upto), "annotations": x["annotations"],
                         "fl_rounds": x["fl_rounds"]})
    if "fast" in results:
        f = results["fast"]["summary"]
        rows.append({"method": "fast", "R_AL": 1, "accuracy": f["final_accuracy"], "last5": f["last5_accuracy"],
                     "mib": f["comm_mib"], "query_s": f["wall_seconds"]["encode"] + f["wall_seconds"]["label"],
                     "train_s": f["wall_seconds"]["train"], "annotations": f["annotations"],
                     "fl_rounds": f["rounds"]})
    return rows


def markdown(rows: list[dict], paper: dict, header: str) -> str:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    lines = [header, "",
             "| method | R_AL | accuracy % (final) | accuracy % (mean last 5) | paper % | MiB | paper MB "
             "| query s | train s | paper s | annotations | FL rounds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = paper.get((r["method"], r["R_AL"]), {})
        lines.append(f"| {r['method']} | {r['R_AL']} | {100 * r['accuracy']:.2f} | {100 * r['last5']:.2f} | "
                     f"{num(p.get('accuracy'), '.2f')} | {r['mib']:.1f} | {num(p.get('mib'), '.2f')} | "
                     f"{r['query_s']:.1f} | {r['train_s']:.1f} | {num(p.get('seconds'), '.0f')} | "
                     f"{r['annotations']} | {r['fl_rounds']} |")
    lines += ["", "FAST's query s is its encoding plus both labeling passes; a baseline's is the sum of "
              "its AL rounds' queries (local-only training for LoGo, the clients' last local models "
              "for KAFAL). Paper MB are MiB (benchmarks/paper_tables.json)."]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    fig2, ax2 = plt.subplots(figsize=(7, 4))
    for i, (s, r) in enumerate(results["strategies"].items()):
        ev = [m for m in r["metrics"] if "accuracy" in m]
        ax.plot([m["round"] for m in ev], [m["accuracy"] for m in ev], label=s, lw=1.2, color=f"C{i}")
        ax2.plot([m["comm_mib"] for m in ev], [m["accuracy"] for m in ev], label=s, lw=1.2, color=f"C{i}")
    if "fast" in results:
        ev = [m for m in results["fast"]["metrics"] if "accuracy" in m]
        best = max(m["accuracy"] for m in ev)
        ax.axhline(best, color="grey", lw=2, label=f"FAST best ({100 * best:.1f}%)")
        ax2.plot([m["comm_mib"] for m in ev], [m["accuracy"] for m in ev], label="FAST", lw=2, color="grey")
    ax.set(xlabel="FL round", ylabel="test accuracy", title="accuracy against FL rounds (cf. paper Fig. 2)")
    ax2.set(xlabel="MiB communicated (up + down)", ylabel="test accuracy", title="accuracy against communication")
    for a, f, name in ((ax, fig, "fig2.png"), (ax2, fig2, "accuracy_vs_mib.png")):
        a.grid(alpha=0.3)
        a.set_ylim(0, 1)  # from 0: noise must not look like a collapse
        a.legend(fontsize=8)
        f.tight_layout()
        f.savefig(out / name, dpi=110)
        plt.close(f)


def _al_rounds(text: str) -> tuple[int, ...]:
    """--al-rounds: a comma list of positive integers."""
    try:
        rounds = tuple(int(x) for x in text.split(","))
    except ValueError:
        rounds = ()
    if not rounds or min(rounds) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give AL round counts >= 1, e.g. 4,8")
    return rounds


def main(argv=None):
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default=None, help="dataset files (default: $FASTJAX_DATA_ROOT)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--out", default="runs/compare_fal")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    p.add_argument("--preset", default="paper_table1")
    p.add_argument("--partition", default="logo", help="logo (Table I), iid (Table III), dirichlet (Fig. 2)")
    p.add_argument("--model", default="cnn4")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--encoder", default="efficientnet_lite0", help="FAST's encoder (the paper: siglip)")
    p.add_argument("--fast-budget", type=float, default=0.05)
    p.add_argument("--al-rounds", type=_al_rounds, default=None,
                   help="AL round counts to report, e.g. 4,8 (default: 4,8; --quick 2,3; --tiny 1,2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fast", action="store_true", help="run the baselines only")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (the per-run lines with the time left remain)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help=f"CPU-sized: {QUICK_TIME} on 2 cores")
    scale.add_argument("--tiny", action="store_true", help=f"CI's smoke run: {TINY_TIME} on 2 cores")
    args = p.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    size = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    if args.al_rounds:
        size["al_rounds"] = args.al_rounds
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        p.error(f"--strategies: unknown {unknown}; allowed: {', '.join(STRATEGIES)}")
    try:  # a preset's own check raises on building
        configs = [active_config(args, size, s) for s in args.strategies]
        configs += [] if args.no_fast else [fast_config(args, size)]
    except ValueError as e:
        p.error(str(e))
    common.preflight(p, configs, args.out, args.dataset, args.data_root)  # before any run

    out = Path(args.out)
    print(common.device_line(), flush=True)
    print(plan(args, size), flush=True)
    t0 = time.perf_counter()
    results = run_all(args, size)
    results["device"] = common.device_info()
    results["seconds"] = time.perf_counter() - t0
    rows = table_rows(results, size["al_rounds"])
    paper = {"logo": "Table I", "iid": "Table III"}.get(args.partition)
    header = (f"FAST vs iterative FAL on {args.dataset} ({args.partition} partition, {size['clients']} clients, "
              f"{args.model}, {size['fl_rounds']} FL rounds per AL round{', quick' if args.quick else ', tiny' if args.tiny else ''}); "
              f"FAST: {args.encoder} encoder, {args.fast_budget:.0%} budget. "
              + (f"Paper: {paper} (SigLIP, full data)." if paper else "The paper prints no table for this partition."))
    md = markdown(rows, paper_numbers(args.dataset, args.partition), header)
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(json.dumps({**results, "rows": rows}, indent=1, default=str))
    plots(results, out)
    print(md)
    print(common.device_line(results["device"]))


if __name__ == "__main__":
    main()
