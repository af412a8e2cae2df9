"""Reproduce the FAST paper's tables and figures with fastjax, the paper's numbers beside ours.

    python benchmarks/reproduce.py --table II --quick --data-root $FASTJAX_DATA_ROOT
    python benchmarks/reproduce.py --table all --data-root $FASTJAX_DATA_ROOT   # the paper's scale
    python benchmarks/reproduce.py --table VI,VII --quick --datasets cifar10
    python benchmarks/reproduce.py --table I --datasets cifar10 --seeds 3   # Table I's CIFAR-10 column
    python benchmarks/reproduce.py --all --seeds 3                           # every table, 3 seeds

Each table (I-VII) and figure (fig2, fig4) is a list of cells: (paper row, paper column,
method, config overrides). A cell runs when its method is in `METHODS`, its dataset is
found under --data-root and its encoder's weights are found; otherwise the table says
why not. FAST runs the one-shot job; the iterative baselines (Table I, Table III's
Random / LoGo, Fig. 2's KAFAL / LoGo / Random) run the loop of `fastjax.methods.active`
with the table's protocol (5% initial + 5% per AL round, R_AL AL rounds of 100 FL rounds;
Fig. 2: 10% + 5% every 50 FL rounds to 35%). A baseline's R_AL = 4 and R_AL = 8 rows are
one run of 8 AL rounds, the R = 4 row read off its first 4 (they do not depend on how many
follow).

Each table runs as one sweep (`fastjax.sweep.run_jobs`): every cell at every seed
(--seeds N: seeds 0..N-1, the table shows mean +- std) is an ordinary run directory, and
their FL rounds train jointly, runs with the same compiled round (model, shapes) as one
computation. Table I's CIFAR-10 column (nine baselines, R = 4 and 8, FAST) is one
command: --table I --datasets cifar10. --solo runs the cells one after another instead
(honest per-run seconds for Table III).

The paper's numbers come from `benchmarks/paper_tables.json` (data, not code). Output,
under --out/<scale>/: table_<X>.md (printed too) and table_<X>.json, and fig<N>.png for
the figures. Each cell's run directory is kept, so a rerun resumes or reuses it.

Scales: the paper's (default: full data, 100 rounds of 5 local epochs, SigLIP: days on
a CPU, hours per table on an accelerator); --quick (a 10,000 / 2,000 class-stratified
subset, EfficientNet-Lite0 at 96 px as the offline stand-in encoder, 10 CNN-4 rounds of 5
local steps, 20 linear probing rounds: minutes per cell on a 2-core CPU, the first cell of a
dataset also embeds its 12,000 images); --tiny (CI's smoke run of every table: 600 / 200
images, one round, the baselines capped at 2 AL rounds; a few seconds per cell after the
first compiles). --substitute mnist runs every dataset column on MNIST (the offline CI
dataset); the output says so. Before a table runs, every selected cell's config is
checked (a bad option fails at once, exit 2); each run logs its AL / FL rounds, and each
cell's result is printed when the table's sweep ends. The exit status is 1 when any cell
failed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_TABLES = Path(__file__).with_name("paper_tables.json")
TABLES = ("I", "II", "III", "IV", "V", "VI", "VII", "fig2", "fig4")
SCALES = {
    # rounds: None = the table's own; linear_rounds for linear probing (Table II).
    "paper": dict(train_limit=0, test_limit=0, rounds=None, linear_rounds=None, local_epochs=5,
                  local_steps=0, batch_size=128, eval_every=1, encoder="siglip", image_size=0),
    "quick": dict(train_limit=10000, test_limit=2000, rounds=10, linear_rounds=20, local_epochs=1,
                  local_steps=5, batch_size=64, eval_every=2, encoder="efficientnet_lite0",
                  image_size=96),
    # tiny: Dirichlet alpha at least 1.0, so that Fig. 4's 30 clients fit 600 samples.
    "tiny": dict(train_limit=600, test_limit=200, rounds=1, linear_rounds=1, local_epochs=1,
                 local_steps=1, batch_size=32, eval_every=1, encoder="efficientnet_lite0",
                 image_size=32, min_alpha=1.0, max_al_rounds=2),
}
ENCODER_COLUMNS = {"resnet50": "resnet50", "clip": "clip", "evaclip": "evaclip",
                   "siglip": "siglip", "dinov2": "dinov2"}
STAND_IN = "efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One number of a paper table: which row and column, and how fastjax runs it."""

    table: str
    row: str
    column: str
    method: str
    dataset: str
    overrides: tuple = ()  # (("labeling.budget", 0.05), ...)
    rounds: int | None = None  # the paper's FL rounds for this cell (None: 100; baselines: per AL round)
    linear: bool = False  # linear probing on the embeddings (Table II)
    active: tuple = ()  # the iterative baselines' loop: (("active.rounds", 4), ...)


# ------------------------------------------------------------------ protocols

DIRICHLET = (("partition.scheme", "dirichlet"), ("partition.alpha", 0.1))
TABLE_IV = DIRICHLET + (("labeling.budget", 0.2), ("labeling.measure", "norm"))


def _paper():
    return json.loads(PAPER_TABLES.read_text())["tables"]


def _strategy(method: str) -> str:
    """paper_tables.json's method name -> fastjax.active.STRATEGIES' name."""
    return {"alfamix": "alfa_mix"}.get(method, method)


def _loop(r_al: int, initial: float = 0.05, query: float = 0.05) -> tuple:
    return (("active.rounds", r_al), ("active.initial", initial), ("active.query", query))


def cells_for(table: str, variant: str) -> list[Cell]:
    """The protocol of one table, as cells (see the module docstring)."""
    spec = _paper()[table]
    rows, cols = spec["rows"], spec["columns"]
    out = []
    if table == "I":
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, _strategy(r["method"]), d,
                                (("partition.scheme", "logo"), ("partition.alpha", 0.1),
                                 ("labeling.budget", r["budget"] / 100)), rounds=100,
                                active=() if r["method"] == "fast" else _loop(r["r_al"])))
    elif table == "II":
        comp = {"1+2+3": (("labeling.merge", "human+weak"), ("labeling.strategy", "uncertainty")),
                "1+2+4": (("labeling.merge", "human+weak"), ("labeling.strategy", "random")),
                "1+2": (("labeling.merge", "weak"), ("labeling.budget", 0.0)),
                "1+4": (("labeling.merge", "human"), ("labeling.strategy", "random")),
                "1": (("labeling.merge", "seed"), ("labeling.budget", 0.0))}
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, "fast", d,
                                DIRICHLET + (("labeling.budget", 0.2),) + comp[r["row"]],
                                linear=True))
    elif table == "III":
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, _strategy(r["method"]), d,
                                (("partition.scheme", "iid"), ("labeling.budget", 0.05)),
                                rounds=100, active=() if r["method"] == "fast" else _loop(8)))
    elif table == "IV":
        agg = {"FedAvg": (("train.aggregator", "fedavg"),),
               "FedProx": (("train.aggregator", "fedprox"), ("train.prox_mu", 0.01)),
               "FedNova": (("train.aggregator", "fednova"),)}
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, "fast", d, TABLE_IV + agg[r["row"]]))
    elif table == "V":
        for r in rows:
            for enc in cols + [STAND_IN]:
                out.append(Cell(table, r["row"], enc, "fast", r["row"],
                                TABLE_IV + (("encoder.name", enc),)))
    elif table == "VI":
        for r in rows:
            for b in cols:
                frac = float(b.rstrip("%")) / 100
                over = (("partition.scheme", "iid"), ("labeling.budget", frac))
                if frac == 0:
                    over += (("labeling.merge", "weak"),)
                out.append(Cell(table, r["row"], b, "fast", r["row"], over))
    elif table == "VII":
        for r in rows:
            if r["row"] == "average":
                continue
            for m in cols:
                norm = ("softmax" if variant == "paper"
                        else "sum" if m == "entropy" else "none")  # FAST-official ablation/
                # Table VII measures the prototype vector (Eq. 7); FAST-official's ablation/
                # scores the mean cosine similarity to each class too, not the kNN votes.
                out.append(Cell(table, r["row"], m, "fast", r["row"],
                                DIRICHLET + (("labeling.budget", 0.2), ("labeling.measure", m),
                                             ("labeling.normalize", norm),
                                             ("labeling.score_source", "prototype"))))
    elif table == "fig2":
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, _strategy(r["method"]), d,
                                DIRICHLET + (("labeling.budget", 0.05),),
                                rounds=100 if r["method"] == "fast" else 50,
                                active=() if r["method"] == "fast" else _loop(6, 0.10, 0.05)))
    elif table == "fig4":
        for r in rows:
            for d in cols:
                out.append(Cell(table, r["row"], d, "fast", d,
                                DIRICHLET + (("labeling.budget", 0.2),
                                             ("partition.num_clients", r["clients"])), rounds=150))
    else:
        raise ValueError(f"unknown table {table!r}; allowed: {', '.join(TABLES)}")
    return out


# --------------------------------------------------------------------- running


def _methods() -> tuple[str, ...]:
    from fastjax.active import STRATEGIES

    return ("fast", *STRATEGIES)


# The methods fastjax runs: FAST and every query strategy of the iterative loop.
METHODS: tuple[str, ...] = _methods()


def run_jobs(jobs: list, args) -> list:
    """Run (config, workdir) jobs; returns each one's summary or exception. By default as
    one sweep (`fastjax.sweep.run_jobs`: their rounds train jointly, experiments with one
    compiled round as one computation); --solo: one after another, each alone (honest
    per-run wall times, Table III's seconds)."""
    from fastjax import sweep

    if args.solo:
        out = []
        for k, job in enumerate(jobs, 1):
            out += sweep.run_jobs([job], progress=args.progress)
            print(f"[reproduce] run {k}/{len(jobs)} done: {job[1]}", flush=True)
        return out
    return sweep.run_jobs(jobs, experiments_per_call=args.experiments_per_call, axis=args.experiment_axis)


def build_config(cell: Cell, args, scale: dict, seed: int = 0):
    from fastjax.config import base_config

    c = base_config()
    c.unlock()
    c.seed = seed
    c.data.name = args.substitute or cell.dataset
    c.data.root = args.data_root or ""
    c.data.train_limit = scale["train_limit"]
    c.data.test_limit = scale["test_limit"]
    c.encoder.name = args.encoder or scale["encoder"]
    c.encoder.variant = "base-patch16-224" if c.encoder.name == "siglip" else ""
    c.encoder.image_size = args.image_size if args.image_size is not None else scale["image_size"]
    if args.cache_dir:
        c.encoder.cache_dir = args.cache_dir
    c.model.name = "linear" if cell.linear else (args.model or "cnn4")
    if variant_official(args):
        c.labeling.score_source = "knn_votes"
        c.labeling.normalize = "none"
        c.labeling.measure = "norm"
        c.labeling.class_aware = True
        c.labeling.tie_break = "lowest_class"
    if cell.method != "fast":  # an iterative baseline: the same data, partition, model, training
        c.method = "active"
        c.active.strategy = cell.method
    from fastjax.config import unread_sections

    for key, value in cell.overrides + cell.active:
        if key.startswith(("labeling.", "active.")) and key.startswith(unread_sections(c)):
            continue  # the method never reads it (a baseline's budget is its AL rounds)
        sect, name = key.split(".")
        setattr(getattr(c, sect), name, value)
    if c.encoder.name != (args.encoder or scale["encoder"]):  # Table V picks its encoder
        c.encoder.variant = "base-patch16-224" if c.encoder.name == "siglip" else ""
        if c.encoder.name != STAND_IN and args.image_size is None:
            c.encoder.image_size = 0  # the checkpoint's own resolution
    c.partition.alpha = max(c.partition.alpha, scale.get("min_alpha", 0.0))
    if scale.get("max_al_rounds") and c.method == "active":
        c.active.rounds = min(c.active.rounds, scale["max_al_rounds"])
    t = c.train
    paper_rounds = cell.rounds or 100
    rounds = scale["linear_rounds" if c.model.name == "linear" else "rounds"]
    t.rounds = paper_rounds if rounds is None else min(rounds, paper_rounds)
    if cell.table in ("fig2", "fig4") and scale["rounds"] is not None:
        t.rounds = max(t.rounds, 2)  # a curve needs two points
    t.local_epochs = scale["local_epochs"]
    t.local_steps = scale["local_steps"]
    t.batch_size = scale["batch_size"]
    t.eval_every = scale["eval_every"]
    t.checkpoint_every = 0
    t.strategy = args.strategy
    if c.model.name == "linear":
        t.lr = 0.01  # standardised embeddings (as benchmarks/table2.py)
    c.lock()
    return c


def variant_official(args) -> bool:
    return args.variant == "official"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


def not_in_fastjax(cell: Cell) -> str | None:
    """Why fastjax has no way to run the cell at all (a method or encoder it lacks), else None."""
    if cell.method not in METHODS:
        return f"{cell.method}: no such method in fastjax"
    if cell.table == "V" and ENCODER_COLUMNS.get(cell.column, cell.column) is None:
        return f"{cell.column}: no such encoder in fastjax"
    return None


def availability(cell: Cell, args, config) -> str | None:
    """None when the cell can run, else why not (one short phrase)."""
    why = not_in_fastjax(cell)
    if why:
        return why
    from fastjax import data, encode

    try:
        data.load_train_test(config.data.name, config.data.root or None)
    except (data.DatasetNotFoundError, FileNotFoundError) as e:
        return f"dataset {config.data.name} not found ({type(e).__name__})"
    from fastjax.config import needs_encoder

    if needs_encoder(config) and config.encoder.name != STAND_IN:
        try:
            encode.load_encoder(config.encoder.name, variant=config.encoder.variant or None)
        except (FileNotFoundError, ValueError, OSError) as e:
            return f"{config.encoder.name} weights not found ({type(e).__name__})"
    return None


def cell_workdir(cell: Cell, out: Path, seed: int) -> Path:
    """A cell's run directory at one seed. A baseline's R_AL = 4 and 8 rows share one: the
    longer run holds the shorter (its first AL rounds do not depend on how many follow)."""
    name = _slug(cell.row) if cell.method == "fast" else f"{cell.method}_{_slug(cell.row.split(' (')[0])}"
    return out / f"table_{cell.table}" / (f"{name}__{_slug(cell.column)}" + (f"__seed{seed}" if seed else ""))


def _job_key(config) -> str:
    """Cells whose runs are one run: the same config, a baseline's AL rounds aside (the
    longest run answers the shorter rows; with --substitute several columns are one job)."""
    c = config.copy_and_resolve_references()
    c.unlock()
    if c.method == "active":
        c.active.rounds = 0
    return c.to_json(sort_keys=True)


def plan(cells: list[Cell], args, scale: dict, out: Path):
    """The jobs a table's cells need: returns (records, jobs, uses). records: one per cell
    (its status says why a cell cannot run); jobs: the distinct (config, workdir) runs,
    each baseline run at the most AL rounds any of its cells reads; uses: (cell index,
    seed, job index, AL rounds to read or None) for every run cell and seed."""
    from fastjax.config import needs_encoder

    records, jobs, uses, by_key = [], [], [], {}
    for ci, cell in enumerate(cells):
        config = build_config(cell, args, scale)
        why = availability(cell, args, config)
        records.append({"row": cell.row, "column": cell.column, "method": cell.method,
                        "dataset": config.data.name,
                        "encoder": config.encoder.name if needs_encoder(config) else None,
                        "overrides": dict(cell.overrides), **({"status": why} if why else {})})
        if why:
            continue
        for seed in range(args.seeds):
            config = build_config(cell, args, scale, seed)
            key = _job_key(config)
            if key not in by_key:
                by_key[key] = len(jobs)
                jobs.append((config, cell_workdir(cell, out, seed)))
            j = by_key[key]
            r_al = config.active.rounds if config.method == "active" else None
            if r_al is not None and r_al > jobs[j][0].active.rounds:
                jobs[j] = (config, jobs[j][1])
            uses.append((ci, seed, j, r_al))
    return records, jobs, uses


def seed_record(summary, workdir: Path, r_al: int | None) -> dict:
    """One seed's numbers of a cell from its run's summary (a baseline's at AL round r_al)."""
    from fastjax.federate.checkpoints import MetricsLog

    if isinstance(summary, BaseException):
        return {"status": f"failed: {str(summary).splitlines()[0] if str(summary) else type(summary).__name__}"}
    hist = MetricsLog(workdir / "metrics.jsonl").read()
    if r_al is not None:  # a baseline's row: its first r_al AL rounds
        upto = summary["al_rounds"][:r_al]
        last = upto[-1]
        return {"status": "ran", "final_accuracy": last["final_accuracy"],
                "best_accuracy": max(a["best_accuracy"] for a in upto), "annotations": last["annotations"],
                "weak_label_accuracy": None, "weak_label_accuracy_before": None, "comm_mib": last["comm_mib"],
                "seconds": sum(a["query_seconds"] + a["train_seconds"] for a in upto),
                "rounds": last["fl_rounds"], "encoder_note": None, "encoder_image_size": None,
                "curve": [(h["round"], h["accuracy"]) for h in hist
                          if "accuracy" in h and h["round"] <= last["fl_rounds"]]}
    return {"status": "ran", "final_accuracy": summary["final_accuracy"],
            "best_accuracy": summary["best_accuracy"], "annotations": summary["annotations"],
            "weak_label_accuracy": summary.get("weak_label_accuracy"),
            "weak_label_accuracy_before": summary.get("weak_label_accuracy_before_refinement"),
            "comm_mib": summary["comm_mib"], "seconds": summary["wall_seconds"]["total"],
            "rounds": summary.get("rounds", summary.get("fl_rounds")),
            "encoder_note": summary.get("encoder", {}).get("note"),
            "encoder_image_size": summary.get("encoder", {}).get("image_size"),
            "curve": [(h["round"], h["accuracy"]) for h in hist if "accuracy" in h]}


SPREAD = ("final_accuracy", "best_accuracy", "weak_label_accuracy")  # mean +- std over seeds


def over_seeds(record: dict, per_seed: list[dict]) -> dict:
    """A cell's record from its seeds' numbers: the mean of each (and the std of the
    accuracies), the mean curve; a cell with a failed seed is failed, naming the seed."""
    out = {**record, "seeds": len(per_seed)}
    bad = [(s, r) for s, r in enumerate(per_seed) if r["status"] != "ran"]
    if bad:
        s, r = bad[0]
        return {**out, "status": r["status"] if len(per_seed) == 1 else f"failed: seed {s}: {r['status'][8:]}"}
    out["status"] = "ran"
    for k, v in per_seed[0].items():
        if k in ("status", "curve"):
            continue
        if not isinstance(v, (int, float)) or len(per_seed) == 1:  # text, None, or one seed's own value
            out[k] = v
            continue
        vals = np.array([r[k] for r in per_seed], float)
        out[k] = float(vals.mean())
        if k in SPREAD:
            out[f"{k}_std"] = float(vals.std())
    n = min(len(r["curve"]) for r in per_seed)
    out["curve"] = [(per_seed[0]["curve"][i][0], float(np.mean([r["curve"][i][1] for r in per_seed])))
                    for i in range(n)]
    if len(per_seed) > 1:
        out["per_seed"] = [{k: r[k] for k in ("final_accuracy", "best_accuracy", "comm_mib", "annotations")}
                           for r in per_seed]
    return out


# -------------------------------------------------------------------- reporting


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _paper_num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ours(rec: dict | None, key="final_accuracy") -> str:
    """Our number (with +- the std over seeds when several ran)."""
    if rec is None:
        return "-"
    if rec["status"] != "ran":
        return "n/a"
    std = rec.get(f"{key}_std")
    return _pct(rec[key]) + (f" +- {100 * std:.2f}" if std is not None else "")


def paper_scale_mib(dataset: str, seeds: int = 500, dim: int = 768, clients: int = 10,
                    rounds: int = 100) -> float:
    """Table III's FAST arithmetic: CNN-4 state up + down per client per round, plus the
    shared seeds (`label.shared_embedding_bytes`), in MiB."""
    from fastjax.federate import engine, models
    from fastjax.label import shared_embedding_bytes

    shape, classes = {"cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100),
                      "svhn": ((32, 32, 3), 10)}.get(dataset, ((32, 32, 3), 10))
    v = models.init_variables(models.make_model("cnn4", classes), shape)
    per = seeds // clients
    return (rounds * clients * 2 * engine.state_bytes(v)
            + shared_embedding_bytes([per] * clients, dim)) / engine.MIB


def render(table: str, spec: dict, recs: list[dict], header: list[str]) -> str:
    lines = [f"## Table {table}: {spec['title']}" if not table.startswith("fig")
             else f"## {table}: {spec['title']}", ""]
    lines += [f"- {h}" for h in header]
    lines += [f"- paper's metric: {spec['metric']}"]
    if spec.get("notes"):
        lines += [f"- note: {spec['notes']}"]
    lines.append("")
    by = {(r["row"], r["column"]): r for r in recs}
    skipped = sorted({r["status"] for r in recs if r["status"] != "ran"})
    cols = list(spec["columns"])
    if table == "V":
        cols = cols + [STAND_IN]
    if table == "III":
        head = "| method | " + " | ".join(f"{c} acc paper | ours | MB paper | ours | s paper | ours"
                                          for c in cols) + " |"
        lines += [head, "|" + "---|" * (1 + 6 * len(cols))]
        for r in spec["rows"]:
            cells = []
            for c in cols:
                p, o = r["values"].get(c, {}), by.get((r["row"], c))
                ran = o is not None and o["status"] == "ran"
                cells += [_paper_num(p.get("acc")), _ours(o), _paper_num(p.get("mb")),
                          f"{o['comm_mib']:.2f}" if ran else "n/a", _paper_num(p.get("s")),
                          f"{o['seconds']:.0f}" if ran else "n/a"]
            lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
        lines += ["", "FAST at the paper's scale, computed (100 CNN-4 rounds x 10 clients up + "
                  "down, 500 shared 768-d seeds with int64 labels): "
                  + ", ".join(f"{c} {paper_scale_mib(c):.2f} MiB" for c in cols)
                  + " (the notes above say what SVHN's baseline figure is)."]
    elif table.startswith("fig"):
        lines += ["| row | " + " | ".join(f"{c} final | {c} best" for c in cols) + " |",
                  "|" + "---|" * (1 + 2 * len(cols))]
        for r in spec["rows"]:
            vals = []
            for c in cols:
                o = by.get((r["row"], c))
                vals += [_ours(o), _ours(o, "best_accuracy")]
            lines.append(f"| {r['row']} | " + " | ".join(vals) + " |")
        lines += ["", "The paper prints no numbers for this figure; ours are fastjax's."]
    else:
        lines += ["| row | " + " | ".join(f"{c} paper | {c} ours" for c in cols) + " |",
                  "|" + "---|" * (1 + 2 * len(cols))]
        for r in spec["rows"]:
            vals = []
            for c in cols:
                o = by.get((r["row"], c))
                if r["row"] == "average":
                    ran = [by.get((x["row"], c)) for x in spec["rows"] if x["row"] != "average"]
                    ok = [x for x in ran if x is not None and x["status"] == "ran"]
                    o = ({"status": "ran", "final_accuracy":
                          sum(x["final_accuracy"] for x in ok) / len(ok)}
                         if ok and len(ok) == len(ran) else None)
                key = "weak_label_accuracy" if table == "V" else "final_accuracy"
                ours = _ours(o, key)
                if table == "V" and o is not None and o["status"] == "ran":
                    ours += f" (model {_pct(o['final_accuracy'])})"
                vals += [_paper_num(r["values"].get(c)), ours]
            lines.append(f"| {r['row']} | " + " | ".join(vals) + " |")
        if table == "V":
            lines += ["", "Ours: weak-label accuracy after refinement (model test accuracy in "
                      "brackets)."]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped) + "."]
    absent = [c for c in cols if not any(r["column"] == c for r in recs)]
    absent += [r["row"] for r in spec["rows"] if r["row"] != "average"
               and not any(x["row"] == r["row"] for x in recs)]
    if absent:
        lines += ["", "'-': not selected for this run (--datasets / --methods): " + ", ".join(absent) + "."]
    return "\n".join(lines) + "\n"


def plot_figure(table: str, spec: dict, recs: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = spec["columns"]
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3.6), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for r in recs:
            if r["column"] != col or r["status"] != "ran" or not r["curve"]:
                continue
            xs, ys = zip(*r["curve"])
            ax.plot(xs, [100 * y for y in ys], marker=".", label=r["row"])
            if table == "fig2" and r["method"] == "fast":
                ax.axhline(100 * max(ys), color="0.6", lw=1, label="FAST best")
        missing = sorted({r["row"] for r in recs if r["column"] == col and r["status"] != "ran"})
        title = f"{col}" + (f" (not run: {', '.join(missing)})" if missing else "")
        ax.set(xlabel="FL round", ylabel="test accuracy %", title=title, ylim=(0, 100))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(spec["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def header_lines(args, scale_name: str, scale: dict, recs: list[dict]) -> list[str]:
    from benchmarks import common

    info = common.device_info()
    enc = sorted({(r["encoder"], r.get("encoder_image_size"), r.get("encoder_note"))
                  for r in recs if r["status"] == "ran" and r["encoder"]}, key=str)
    encs = "; ".join(f"{e} at {s or 'native'} px" + (f" ({n})" if n else "") for e, s, n in enc)
    variant = ("FAST-official (kNN votes, norm on raw votes, class-aware quota)"
               if variant_official(args) else
               "the paper's (Eq. 7 prototype score, Eq. 8 softmax, shared seeds, per-client labeling)")
    sub = f"; every dataset column ran on {args.substitute}" if args.substitute else ""
    if scale.get("min_alpha"):
        sub += f"; Dirichlet alpha raised to at least {scale['min_alpha']}"
    size = ("full data" if not scale["train_limit"] else
            f"{scale['train_limit']} train / {scale['test_limit']} test (class-stratified subset)")
    rounds = ("the paper's rounds" if scale["rounds"] is None else
              f"at most {scale['rounds']} rounds (CNN-4) / {scale['linear_rounds']} (linear) of "
              f"{scale['local_steps'] or scale['local_epochs']} local "
              f"{'steps' if scale['local_steps'] else 'epochs'}, batch {scale['batch_size']}")
    v = info.get("versions", {})
    seeds = [r.get("seeds", 1) for r in recs if r["status"] == "ran"]
    runs = ("each cell's runs alone, one after another (--solo)" if args.solo else
            "every run of the table as one sweep (their FL rounds trained jointly; a run's seconds "
            "include the joint training it shared: --solo for per-run times)")
    return [f"scale: {scale_name} ({size}; {rounds}){sub}",
            f"seeds: {max(seeds, default=args.seeds)} per cell" + (" (ours: mean +- std over seeds)"
                                                                 if args.seeds > 1 else "") + f"; {runs}",
            f"encoder: {encs or 'none ran'}" + ("" if "siglip" in encs else
                                               " - not the paper's SigLIP ViT-B/16"),
            f"variant: {variant}",
            f"device: {info.get('jax_device_kind')} ({info.get('cpu_model')}, "
            f"{info.get('usable_cores')} usable cores); jax {v.get('jax')}, flax {v.get('flax')}; "
            f"{info['date']}"]


def scale_of(args) -> tuple[str, dict]:
    name = "tiny" if args.tiny else "quick" if args.quick else "paper"
    return name, SCALES[name]


def selected_cells(table: str, args) -> list[Cell]:
    """The table's cells, less those --datasets / --methods leave out."""
    cells = cells_for(table, args.variant)
    if args.datasets:
        keep = set(args.datasets.split(","))
        cells = [c for c in cells if c.dataset in keep]
    if args.methods:
        keep = set(args.methods.split(","))
        cells = [c for c in cells if c.method in keep]
    return cells


def config_problems(tables, args) -> list[str]:
    """Every selected cell's config checked before the first one runs: one line per
    distinct problem, naming the cells it applies to (empty when all are valid)."""
    from fastjax import config as config_lib

    _, scale = scale_of(args)
    found: dict[str, list[str]] = {}
    for t in tables:
        for cell in selected_cells(t, args):
            if not_in_fastjax(cell):
                continue  # the table says so; nothing to check
            try:
                config_lib.validate(build_config(cell, args, scale))
            except ValueError as e:
                found.setdefault(str(e).splitlines()[0], []).append(f"{t}/{cell.row}/{cell.column}")
    return [f"{msg} (cells: {', '.join(where[:3])}{', ...' if len(where) > 3 else ''})"
            for msg, where in found.items()]


def reproduce(table: str, args) -> dict:
    from benchmarks import common

    scale_name, scale = scale_of(args)
    out = Path(args.out) / scale_name
    out.mkdir(parents=True, exist_ok=True)
    spec = _paper()[table]
    cells = selected_cells(table, args)
    print(f"[reproduce] table {table}: {len(cells)} cells at the {scale_name} scale "
          f"(train images: {scale['train_limit'] or 'all'}, FL rounds: {scale['rounds'] or 'as in the paper'})",
          flush=True)
    records, jobs, uses = plan(cells, args, scale, out)
    ran = sorted({ci for ci, *_ in uses})
    print(f"[reproduce] table {table}: {len(ran)} cells x {args.seeds} seed(s) = {len(jobs)} runs "
          + ("one at a time (--solo)" if args.solo else "as one sweep (rounds trained jointly)"), flush=True)
    t0 = time.perf_counter()
    results = run_jobs(jobs, args) if jobs else []
    per_cell: dict[int, list] = {}
    for ci, seed, j, r_al in uses:
        per_cell.setdefault(ci, []).append(seed_record(results[j], jobs[j][1], r_al))
    recs = [over_seeds(rec, per_cell[ci]) if ci in per_cell else rec for ci, rec in enumerate(records)]
    for k, (cell, rec) in enumerate(zip(cells, recs), 1):
        status = f"{_ours(rec)}%" if rec["status"] == "ran" else rec["status"]
        print(f"[reproduce] [{k}/{len(cells)}] {table} | {cell.row} | {cell.column}: {status}", flush=True)
    print(f"[reproduce] table {table}: {len(jobs)} runs in {common.duration(time.perf_counter() - t0)}", flush=True)
    md = render(table, spec, recs, header_lines(args, scale_name, scale, recs))
    (out / f"table_{table}.md").write_text(md)
    result = {"table": table, "scale": scale_name, "variant": args.variant, "cells": recs}
    if table.startswith("fig"):
        result["plot"] = str(plot_figure(table, spec, recs, out / f"{table}.png"))
    (out / f"table_{table}.json").write_text(json.dumps(result, indent=1))
    print(md, flush=True)
    return result


def parse_args(argv=None):
    from benchmarks import common

    p = common.ArgumentParser(description=__doc__)
    p.add_argument("--table", default="", help=f"comma-separated, from {', '.join(TABLES)}, or 'all'")
    p.add_argument("--all", action="store_true", help="every table and figure (--table all)")
    common.add_sweep_options(p, "seeds per cell (0..N-1); the tables show mean +- std over them")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="minutes per cell on a 2-core CPU")
    size.add_argument("--tiny", action="store_true", help="CI's smoke run: seconds per cell")
    p.add_argument("--data-root", default="", help="datasets (empty: $FASTJAX_DATA_ROOT)")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--datasets", default="", help="run only these dataset columns / rows")
    p.add_argument("--methods", default="", help="run only these methods (fast, random, logo, ...)")
    p.add_argument("--substitute", default="", help="run every dataset column on this dataset")
    p.add_argument("--encoder", default="", help="override the scale's encoder (not Table V)")
    p.add_argument("--image-size", type=int, default=None,
                   help="encoder input size in px (default: the scale's; 0: the checkpoint's)")
    p.add_argument("--model", default="", help="override CNN-4 (e.g. linear); Table II is linear")
    p.add_argument("--variant", default="paper", choices=("paper", "official"))
    p.add_argument("--strategy", default="sequential", help="train.strategy")
    p.add_argument("--cache-dir", default="",
                   help="embedding cache directory (empty: ~/.cache/fastjax/embeddings)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars inside a --solo run (a sweep's runs show none; their log lines remain)")
    args = p.parse_args(argv)
    from fastjax.encode import ENCODERS
    from fastjax.federate.execution import STRATEGIES as EXECUTION
    from fastjax.federate.models import MODELS

    for flag, value, allowed in (("--model", args.model, MODELS), ("--encoder", args.encoder, ENCODERS),
                                 ("--strategy", args.strategy, EXECUTION)):
        if value and value not in allowed:
            p.error(f"{flag} {value!r}; allowed: {', '.join(sorted(allowed))}")
    if args.image_size is not None and args.image_size < 0:
        p.error(f"--image-size must be >= 0 (0: the checkpoint's own size), got {args.image_size}")
    if args.all and args.table not in ("", "all"):
        p.error(f"give --all or --table {args.table}, not both")
    if not args.all and not args.table:
        p.error("give --table (e.g. --table I, or I,III) or --all")
    common.check_sweep_options(p, args)
    tables = TABLES if args.all or args.table == "all" else tuple(args.table.split(","))
    bad = [t for t in tables if t not in TABLES]
    if bad:
        p.error(f"unknown table(s) {bad}; allowed: {', '.join(TABLES)} or all")
    if args.methods:
        bad = sorted(set(args.methods.split(",")) - set(METHODS))
        if bad:
            p.error(f"--methods: unknown {bad}; allowed: {', '.join(METHODS)}")
    if args.datasets:
        known = {c.dataset for t in tables for c in cells_for(t, args.variant)}
        bad = sorted(set(args.datasets.split(",")) - known)
        if bad:
            p.error(f"--datasets: {bad} is in none of the tables {', '.join(tables)}; "
                    f"they have: {', '.join(sorted(known))}")
    if args.substitute:
        from fastjax.data import DATASETS

        if args.substitute not in DATASETS:
            p.error(f"--substitute {args.substitute!r}; allowed: {sorted(DATASETS)}")
    return args, tables


def main(argv=None):
    """Checks every selected cell, then runs the tables; returns {table: result}."""
    from benchmarks import common

    args, tables = parse_args(argv)
    problems = config_problems(tables, args)
    if problems:
        common.fail("; ".join(problems), prog="reproduce.py")
    why = common.unwritable(args.out)
    if why:
        common.fail(f"--out {args.out} is not a writable directory ({why})", prog="reproduce.py")
    print(common.device_line(), flush=True)
    return {t: reproduce(t, args) for t in tables}


def failed_cells(results: dict) -> list[str]:
    return [f"{t} | {c['row']} | {c['column']}: {c['status']}" for t, r in results.items()
            for c in r["cells"] if c["status"].startswith("failed")]


def cli(argv=None) -> int:
    """The command line: 0 when every cell ran or said why it could not, 1 when one failed."""
    failed = failed_cells(main(argv))
    if failed:
        print(f"[reproduce] {len(failed)} cell(s) failed:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli())
