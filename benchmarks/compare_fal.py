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
All runs (with --seeds N, each method at seeds --seed .. --seed+N-1) run as one sweep
(`fastjax.sweep.run_jobs`): each is an ordinary work directory, and their FL rounds train
jointly, the runs that share a compiled round as one computation; the table shows mean
+- std over seeds. --solo runs them one after another instead (per-run wall times).
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
printed (runs, rounds, images, seeds); each run logs its AL and FL rounds (--solo: after
each run the time left is estimated).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

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


def _common(c, args, size, seed: int | None = None):
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
    c.seed = args.seed if seed is None else seed
    return c


def active_config(args, size, strategy: str, seed: int | None = None):
    from fastjax.active.presets import apply_preset
    from fastjax.config import base_config

    c = apply_preset(base_config(), args.preset)
    c = _common(c, args, size, seed)
    c.active.strategy = strategy
    c.active.rounds = max(size["al_rounds"])
    return c


def fast_config(args, size, seed: int | None = None):
    from fastjax.config import base_config

    c = _common(base_config(), args, size, seed)
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
    if args.seeds > 1:
        lines.append(f"      each at {args.seeds} seeds ({args.seed}..{args.seed + args.seeds - 1})")
    return "\n".join(lines)


def run_dir(out: Path, method: str, seed_index: int) -> Path:
    """A run's work directory: <out>/<method> for the first seed, <method>__seed<k> after."""
    return out / (method if seed_index == 0 else f"{method}__seed{seed_index}")


def run_all(args, size, log=print) -> dict:
    """Every run (each strategy and FAST, at each of --seeds seeds) as one sweep: their FL
    rounds train jointly (`fastjax.sweep.run_jobs`), or one after another with --solo.
    A run that fails is recorded with its error; the others finish."""
    from fastjax import sweep

    out = Path(args.out)
    names, jobs = [], []
    for k in range(args.seeds):
        seed = args.seed + k
        for s in args.strategies:
            names.append((s, seed))
            jobs.append((active_config(args, size, s, seed), run_dir(out, s, k)))
        if not args.no_fast:
            names.append(("fast", seed))
            jobs.append((fast_config(args, size, seed), run_dir(out, "fast", k)))
    t0 = time.perf_counter()
    if args.solo:
        from benchmarks import common

        clock = common.RunClock(len(jobs), log=log)
        res = []
        for (name, seed), job in zip(names, jobs):
            res += sweep.run_jobs([job], progress=args.progress)
            clock.tick(f"{name} seed {seed}: " + (f"accuracy {res[-1]['final_accuracy']:.4f}"
                                                  if isinstance(res[-1], dict) else f"FAILED: {res[-1]}"))
    else:
        log(f"{len(jobs)} runs as one sweep (their FL rounds trained jointly)")
        res = sweep.run_jobs(jobs, experiments_per_call=args.experiments_per_call,
                              axis=args.experiment_axis)
        log(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s")
    results = {"size": size, "args": {k: v for k, v in vars(args).items()}, "strategies": {}, "failed": []}
    for (name, seed), r, (_, workdir) in zip(names, res, jobs):
        if not isinstance(r, dict):
            results["failed"].append({"method": name, "seed": seed, "error": f"{type(r).__name__}: {r}"})
            log(f"{name} seed {seed} FAILED: {r}")
            continue
        run = {"seed": seed, "summary": r, "metrics": _metrics(workdir)}
        target = results if name == "fast" else results["strategies"]
        target.setdefault(name, {"runs": []})["runs"].append(run)
    return results


def _metrics(workdir: Path) -> list[dict]:
    from fastjax.federate.checkpoints import MetricsLog

    return MetricsLog(workdir / "metrics.jsonl").read()


def _run_rows(method: str, summary: dict, al_rounds) -> list[dict]:
    """One run's rows: a baseline's at each reported R (read off its AL rounds), FAST's one."""
    if method == "fast":
        f = summary
        return [{"method": "fast", "R_AL": 1, "accuracy": f["final_accuracy"], "last5": f["last5_accuracy"],
                 "mib": f["comm_mib"], "query_s": f["wall_seconds"]["encode"] + f["wall_seconds"]["label"],
                 "train_s": f["wall_seconds"]["train"], "annotations": f["annotations"], "fl_rounds": f["rounds"]}]
    by_round = {x["al_round"]: x for x in summary["al_rounds"]}
    rows = []
    for R in al_rounds:
        if R not in by_round:
            continue
        upto = [by_round[a] for a in range(1, R + 1)]
        x = by_round[R]
        rows.append({"method": method, "R_AL": R, "accuracy": x["final_accuracy"], "last5": x["last5_accuracy"],
                     "mib": x["comm_mib"], "query_s": sum(u["query_seconds"] for u in upto),
                     "train_s": sum(u["train_seconds"] for u in upto), "annotations": x["annotations"],
                     "fl_rounds": x["fl_rounds"]})
    return rows


def table_rows(results: dict, al_rounds) -> list[dict]:
    """One row per (strategy, R) plus FAST: accuracy final and mean of the last 5 FL rounds,
    MiB, wall seconds (query + train), annotations, FL rounds; with several seeds the mean
    over them, the accuracies' std (`accuracy_std`, `last5_std`) and `seeds`."""
    methods = [(s, r) for s, r in results["strategies"].items()]
    if "fast" in results:
        methods.append(("fast", results["fast"]))
    rows = []
    for method, entry in methods:
        per_seed = [_run_rows(method, run["summary"], al_rounds) for run in entry["runs"]]
        for i, first in enumerate(per_seed[0]):
            same = [rs[i] for rs in per_seed if len(rs) > i]
            row = {k: (float(np.mean([r[k] for r in same])) if len(same) > 1 and k not in ("method", "R_AL")
                       else v) for k, v in first.items()}
            row["seeds"] = len(same)
            if len(same) > 1:
                row["accuracy_std"] = float(np.std([r["accuracy"] for r in same]))
                row["last5_std"] = float(np.std([r["last5"] for r in same]))
            rows.append(row)
    return rows


def markdown(rows: list[dict], paper: dict, header: str) -> str:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    lines = [header, "",
             "| method | R_AL | accuracy % (final) | accuracy % (mean last 5) | paper % | MiB | paper MB "
             "| query s | train s | paper s | annotations | FL rounds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def acc(r, key):
        std = r.get(f"{'accuracy' if key == 'accuracy' else 'last5'}_std")
        return f"{100 * r[key]:.2f}" + (f" +- {100 * std:.2f}" if std is not None else "")

    for r in rows:
        p = paper.get((r["method"], r["R_AL"]), {})
        lines.append(f"| {r['method']} | {r['R_AL']} | {acc(r, 'accuracy')} | {acc(r, 'last5')} | "
                     f"{num(p.get('accuracy'), '.2f')} | {r['mib']:.1f} | {num(p.get('mib'), '.2f')} | "
                     f"{r['query_s']:.1f} | {r['train_s']:.1f} | {num(p.get('seconds'), '.0f')} | "
                     f"{r['annotations']} | {r['fl_rounds']} |")
    lines += ["", "FAST's query s is its encoding plus both labeling passes; a baseline's is the sum of "
              "its AL rounds' queries (local-only training for LoGo, the clients' last local models "
              "for KAFAL). Paper MB are MiB (benchmarks/paper_tables.json)."]
    seeds = max((r.get("seeds", 1) for r in rows), default=1)
    if seeds > 1:
        lines += [f"Accuracies: mean +- std over {seeds} seeds; the other columns their mean."]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    fig2, ax2 = plt.subplots(figsize=(7, 4))
    def curve(entry):
        """Mean accuracy over seeds at each evaluated round, its std and the mean MiB."""
        evs = [[m for m in run["metrics"] if "accuracy" in m] for run in entry["runs"]]
        n = min(len(e) for e in evs)
        acc = np.array([[m["accuracy"] for m in e[:n]] for e in evs])
        mib = np.mean([[m["comm_mib"] for m in e[:n]] for e in evs], axis=0)
        return [m["round"] for m in evs[0][:n]], mib, acc.mean(0), acc.std(0)

    for i, (s, r) in enumerate(results["strategies"].items()):
        x, mib, mu, sd = curve(r)
        for a, xs in ((ax, x), (ax2, mib)):
            a.plot(xs, mu, label=s, lw=1.2, color=f"C{i % 10}")
            if len(r["runs"]) > 1:
                a.fill_between(xs, mu - sd, mu + sd, color=f"C{i % 10}", alpha=0.15)
    if "fast" in results:
        x, mib, mu, sd = curve(results["fast"])
        best = float(mu.max())
        ax.axhline(best, color="grey", lw=2, label=f"FAST best ({100 * best:.1f}%)")
        ax2.plot(mib, mu, label="FAST", lw=2, color="grey")
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
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    common.add_sweep_options(p, "seeds per method (--seed, --seed+1, ...): the table shows mean +- std over them")
    p.add_argument("--no-fast", action="store_true", help="run the baselines only")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars inside a --solo run (a sweep's runs show none; their log lines remain)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help=f"CPU-sized: {QUICK_TIME} on 2 cores")
    scale.add_argument("--tiny", action="store_true", help=f"CI's smoke run: {TINY_TIME} on 2 cores")
    args = p.parse_args(argv)
    args.strategies = [s for s in args.strategies.split(",") if s]
    size = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    if args.al_rounds:
        size["al_rounds"] = args.al_rounds
    common.check_sweep_options(p, args)
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        p.error(f"--strategies: unknown {unknown}; allowed: {', '.join(STRATEGIES)}")
    try:  # a preset's own check raises on building
        configs = [active_config(args, size, s, args.seed + k) for s in args.strategies for k in range(args.seeds)]
        configs += [] if args.no_fast else [fast_config(args, size, args.seed + k) for k in range(args.seeds)]
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
    if results["failed"]:
        md += "\nFailed runs (left out of the table):\n" + "".join(
            f"- {f['method']} seed {f['seed']}: {f['error']}\n" for f in results["failed"])
    (out / "compare.md").write_text(md)
    (out / "compare.json").write_text(json.dumps({**results, "rows": rows}, indent=1, default=str))
    plots(results, out)
    print(md)
    print(common.device_line(results["device"]))
    if results["failed"]:
        f = results["failed"][0]
        common.fail(f"{len(results['failed'])} run(s) failed ({f['method']} seed {f['seed']}: {f['error']}); "
                    f"see {out / 'compare.json'}", prog="compare_fal.py", code=1)


if __name__ == "__main__":
    main()
