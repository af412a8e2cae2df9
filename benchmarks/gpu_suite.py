"""The accelerator benchmarks in one prepared run (driven by `gpu_suite.sh`).

    bash benchmarks/gpu_suite.sh OUT_DIR             # on the accelerator, about 8 minutes
    bash benchmarks/gpu_suite.sh OUT_DIR --dry-run   # on a CPU, tiny sizes, same code paths

Sections (each its own process, each with a time budget; a result is written as soon as
it is measured, so a section cut short keeps what it had):

- rounds:  the paper round (10 clients x 5 local epochs x 5,000 samples, batch 128, CNN-4):
           fastjax strategies / convolutions / bf16 against the PyTorch loop on the same
           device (eager, and torch.compile); the Dirichlet(0.1) round under vmap and
           bucketed against its critical path (the largest client alone).
- scaling: 5 local steps x batch 64 a client, 10 -> 1,000 clients vmapped and chunked,
           and 10,000 clients with 10% participation (chunked).
- fast:    the FAST job end to end (`fastjax.main`) on CIFAR-10 (the files under
           --data-root, else random CIFAR-10-shaped data) with random SigLIP ViT-B/16
           weights: IID with vmap, Dirichlet(0.1) with bucketed.
- knn:     kNN propagation + Eq. 7 prototypes, 100k unlabeled x 40k labeled x 768-d,
           100 classes, against blocked torch cdist + topk.
- siglip:  SigLIP ViT-B/16 bf16, 32 px uint8 -> 224 px, against transformers'
           SiglipVisionModel (SDPA), random weights; EVA02-CLIP-B/16 (fastjax) beside it.
- sweep:   E = 1, 4, 16, 64 experiments (seeds) of the paper round and of an AL round of
           Table I's protocol (clients at 20% of their data) as one compiled round
           (`fastjax.federate.experiments`): experiment-rounds per second against E = 1,
           the solo run.

`python benchmarks/gpu_suite.py run SECTION --work DIR [--dry-run] [--budget S]` runs one
section into DIR/SECTION.json; `python benchmarks/gpu_suite.py report --work DIR --out OUT`
merges them into OUT/suite.json and OUT/suite.md (with the project's goals, met or not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTIONS = ("rounds", "scaling", "fast", "knn", "siglip", "sweep")

# (name, workload, strategy, conv_impl, compute_dtype), in priority order; "torch" /
# "torch-compile" / "critical-path" rows are the peers and the Dirichlet round's bound.
ROUNDS_GPU = [
    ("fastjax", "paper", "vmap", "im2col", "float32"),
    ("torch", "paper"),
    ("fastjax", "paper", "vmap", "im2col", "bfloat16"),
    ("fastjax", "paper-dirichlet", "vmap", "im2col", "float32"),
    ("fastjax", "paper-dirichlet", "bucketed", "im2col", "float32"),
    ("critical-path", "paper-dirichlet", "vmap", "im2col", "float32"),
    ("torch-compile", "paper"),
    ("fastjax", "paper", "vmap", "lax", "float32"),
    ("fastjax", "paper", "sequential", "im2col", "float32"),
    ("fastjax", "paper-dirichlet", "bucketed", "im2col", "bfloat16"),
    ("fastjax", "paper", "vmap", "winograd", "float32"),
    ("fastjax", "paper", "vmap", "lax", "bfloat16"),
]
ROUNDS_DRY = [  # one row of each kind (CNN-4 compiles take seconds each on a CPU)
    ("fastjax", "tiny", "vmap", "im2col", "float32"),
    ("torch", "tiny"),
    ("fastjax", "tiny-dirichlet", "bucketed", "im2col", "float32"),
    ("critical-path", "tiny-dirichlet", "vmap", "im2col", "float32"),
    ("torch-compile", "tiny"),
]
# (strategy, clients per round, population, chunk)
SCALING_GPU = [("vmap", 10, 10, 0), ("vmap", 100, 100, 0), ("chunked", 1000, 1000, 100),
               ("chunked", 1000, 10000, 100), ("chunked", 100, 100, 100), ("vmap", 1000, 1000, 0)]
SCALING_DRY = [("chunked", 2, 6, 1)]

SIZES = {
    "gpu": dict(rounds=ROUNDS_GPU, repeats=2, torch_compile_backend="inductor",
                scaling=SCALING_GPU, scaling_steps=5, scaling_batch=64,
                fast=dict(synthetic=50000, rounds=10, model="cnn4", clients=10, random_siglip="base",
                          encoder_dtype="bfloat16", local_epochs=5),
                knn=dict(n_u=100_000, n_l=40_000, d=768, classes=100, block=4096),
                siglip=dict(arch="base", images=16384, batch=256, dtype="bfloat16"),
                sweep=dict(workloads=("paper", "al-round"), experiments=(1, 4, 16, 64)),
                budgets=dict(rounds=150, scaling=80, fast=110, knn=45, siglip=45, sweep=100)),
    "dry": dict(rounds=ROUNDS_DRY, repeats=1, torch_compile_backend="eager",
                scaling=SCALING_DRY, scaling_steps=1, scaling_batch=4,
                fast=dict(synthetic=300, rounds=1, model="linear", clients=3, random_siglip="tiny",
                          encoder_dtype="float32", local_epochs=1),
                knn=dict(n_u=600, n_l=300, d=16, classes=5, block=128),
                siglip=dict(arch="tiny", images=48, batch=16, dtype="float32"),
                sweep=dict(workloads=("tiny",), experiments=(1, 2)),
                budgets=dict(rounds=300, scaling=120, fast=120, knn=60, siglip=60, sweep=120)),
}


class Section:
    """Rows of one section, written to WORK/<name>.json after every row."""

    def __init__(self, name: str, work: Path, budget: float, dry_run: bool):
        from benchmarks import common

        self.name, self.path, self.dry_run = name, work / f"{name}.json", dry_run
        self.deadline = time.monotonic() + budget
        self.data = {"section": name, "dry_run": dry_run, "budget_seconds": budget,
                     "device": common.device_info(), "rows": [], "skipped": []}
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self):
        from benchmarks import common

        common.write_json(self.path, self.data)

    def row(self, label: str, fn):
        """Runs fn() -> dict unless the budget is spent; errors are recorded, not raised."""
        if self.left() <= 0:
            self.data["skipped"].append({"row": label, "why": "section time budget spent"})
            self.save()
            return None
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # an out-of-memory point is a result too
            r = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}",
                 "traceback": traceback.format_exc(limit=3)[-1500:]}
        r = {"row": label, **r, "row_seconds": time.perf_counter() - t0}
        self.data["rows"].append(r)
        self.save()
        print(f"[{self.name}] {label}: " + (r["error"] if "error" in r else "ok") +
              f" ({r['row_seconds']:.1f} s)", flush=True)
        return r


def run_rounds(sec: Section, size: dict):
    from benchmarks import rounds_per_sec as rps

    for item in size["rounds"]:
        kind, workload = item[0], item[1]
        w = rps.WORKLOADS[workload]
        if kind == "fastjax":
            _, _, strategy, impl, dt = item
            sec.row(f"{workload} fastjax-{strategy}-{impl}-{dt}", lambda: {
                "workload": workload, **rps.fastjax_round(strategy, impl, w, size["repeats"], compute_dtype=dt)})
        elif kind == "critical-path":
            _, _, _, impl, dt = item
            sec.row(f"{workload} critical-path-{impl}-{dt}", lambda: {
                "workload": workload, **rps.critical_path_round(impl, w, size["repeats"], compute_dtype=dt)})
        else:
            compiled = kind == "torch-compile"
            sec.row(f"{workload} {kind}", lambda: {
                "workload": workload, **rps.torch_round(w, size["repeats"], compile=compiled,
                                                        compile_backend=size["torch_compile_backend"])})
    from benchmarks import common

    sec.data["matmul_ceiling_flops"] = common.matmul_ceiling_flops("jax")
    sec.save()


def run_scaling(sec: Section, size: dict):
    from benchmarks.client_scaling import measure

    for strategy, k, population, chunk in size["scaling"]:
        label = f"{strategy} {k} of {population} clients" + (f", chunk {chunk}" if chunk else "")
        sec.row(label, lambda: {"population": population, **measure(
            k, size["scaling_steps"], size["scaling_batch"], strategy, "im2col", size["repeats"],
            population=population, client_chunk=chunk)})


def run_sweep(sec: Section, size: dict):
    from benchmarks import rounds_per_sec as rps
    from benchmarks.sweep_bench import joint_rounds

    workloads = {**rps.WORKLOADS, "al-round": {**rps.WORKLOADS["paper"], "samples": 1000}}
    for name in size["sweep"]["workloads"]:
        base = None
        for e in size["sweep"]["experiments"]:
            r = sec.row(f"{name} E={e}", lambda: {"workload": name, **joint_rounds(e, workloads[name])})
            if r and "error" not in r:
                base = base or r["experiment_rounds_per_sec"]
                r["vs_solo"] = r["experiment_rounds_per_sec"] / base
                sec.save()


def _ml_collections() -> str | None:
    """fastjax.config needs ml_collections; the accelerator image lacks it. A wheel carried
    in <repo>/.whl (pure Python) is importable straight from the zip."""
    try:
        import ml_collections  # noqa: F401

        return None
    except ImportError:
        pass
    for whl in sorted((ROOT / ".whl").glob("ml_collections-*.whl")):
        sys.path.insert(0, str(whl))
        try:
            import ml_collections  # noqa: F401,F811

            return None
        except ImportError:
            sys.path.remove(str(whl))
    return ("ml_collections is not installed: in the repo root run `python3 -m pip download --no-deps "
            "--only-binary=:all: -d .whl ml_collections==1.1.0` and copy `.whl` to the accelerator "
            "machine with the checkout (see benchmarks/gpu_suite.sh)")


def run_fast(sec: Section, size: dict, work: Path, data_root: str):
    missing = _ml_collections()
    if missing:
        sec.data["skipped"].append({"row": "fast", "why": missing})
        sec.save()
        return
    from benchmarks import fast_walltime

    f = size["fast"]
    has_data = bool(data_root) and any(Path(data_root).glob("cifar*"))
    for partition, strategy in (("iid", "vmap"), ("dirichlet", "bucketed")):
        wd = work / f"fast-{partition}"
        argv = ["--encoder", "siglip", "--image-size", "0", "--encoder-dtype", f["encoder_dtype"],
                "--random-siglip", f["random_siglip"], "--rounds", str(f["rounds"]), "--local-epochs",
                str(f["local_epochs"]), "--model", f["model"], "--clients", str(f["clients"]), "--partition",
                partition, "--strategy", strategy, "--cache-dir", str(work / "embeddings"),
                "--workdir", str(wd), "--json", str(wd / "walltime.json")]
        argv += ["--data-root", data_root] if has_data else ["--synthetic", str(f["synthetic"])]

        def job():
            fast_walltime.main(argv)
            d = json.loads((wd / "walltime.json").read_text())
            d.pop("device", None)
            return {"partition": partition, "strategy": strategy, **d}

        sec.row(f"FAST job, {partition}, {strategy}", job)


def run_knn(sec: Section, size: dict):
    from benchmarks import label_scale

    k = size["knn"]
    sec.row(f"kNN + Eq. 7, {k['n_u']} x {k['n_l']} x {k['d']}-d, {k['classes']} classes",
            lambda: label_scale.run(k["n_u"], k["n_l"], k["d"], k["classes"], repeats=size["repeats"],
                                    block=k["block"]))


def run_siglip(sec: Section, size: dict):
    from benchmarks import encoder_throughput as et  # EVA-CLIP (Table V) at SigLIP's sizes
    from benchmarks import siglip_throughput as st

    s = size["siglip"]
    arch = st.BASE_224 if s["arch"] == "base" else st.TINY
    px = 32 if s["arch"] == "base" else 8
    for attention in (None, "cudnn") if not sec.dry_run else (None,):
        sec.row(f"SigLIP {s['arch']} {s['dtype']}, attention={attention}",
                lambda: st.run(arch, s["images"], s["batch"], s["dtype"], image_px=px, attention=attention))
    sec.row(f"EVA-CLIP {s['arch']} {s['dtype']} (fastjax)",
            lambda: et.run(s["arch"], s["images"], s["batch"], s["dtype"], image_px=px, encoders=("evaclip",)))


# ------------------------------------------------------------------------- report


def _get(rows, prefix):
    return next((r for r in rows if r["row"].startswith(prefix) and "error" not in r), None)


def goals(sections: dict) -> list[dict]:
    """The issue's goals against what this run measured (None: not measured)."""
    out = []
    rounds = sections.get("rounds", {}).get("rows", [])
    paper = [r for r in rounds if r.get("workload") in ("paper", "tiny") and r.get("kind") == "fastjax"]
    torch_r = next((r for r in rounds if r["row"] in ("paper torch", "tiny torch") and "error" not in r), None)
    best = min(paper, key=lambda r: r["sec_per_round"]) if paper else None
    if best:
        out.append({"goal": "paper round <= 0.3 s", "measured": best["sec_per_round"], "row": best["row"],
                    "met": best["sec_per_round"] <= 0.3})
    if best and torch_r:
        ratio = torch_r["sec_per_round"] / best["sec_per_round"]
        out.append({"goal": ">= 20x the PyTorch loop", "measured": ratio, "row": best["row"], "met": ratio >= 20})
    buck = [r for r in rounds if r.get("strategy") == "bucketed" and r.get("compute_dtype") == "float32"]
    crit = next((r for r in rounds if r.get("kind") == "critical-path"), None)
    if buck and crit:
        ratio = buck[0]["sec_per_round"] / crit["sec_per_round"]
        out.append({"goal": "Dirichlet round <= 1.25x its critical path", "measured": ratio, "row": buck[0]["row"],
                    "met": ratio <= 1.25})
    scaling = sections.get("scaling", {}).get("rows", [])
    for r in scaling:
        if r.get("strategy") == "chunked" and r.get("clients", 0) >= 1000 or r.get("population", 0) >= 10000:
            out.append({"goal": f"{r['row']} in one compiled round", "measured": r.get("sec_per_round"),
                        "row": r["row"], "met": "error" not in r})
    knn = _get(sections.get("knn", {}).get("rows", []), "kNN")
    if knn:
        fj, tp = knn["fastjax"], knn["torch"]
        out.append({"goal": "kNN first call <= 2 s", "measured": fj["knn"]["first_seconds"], "row": knn["row"],
                    "met": fj["knn"]["first_seconds"] <= 2})
        out.append({"goal": "prototypes first call <= 2 s", "measured": fj["prototypes"]["first_seconds"],
                    "row": knn["row"], "met": fj["prototypes"]["first_seconds"] <= 2})
        out.append({"goal": "kNN steady <= torch", "measured": fj["knn"]["steady_seconds"] / tp["knn"]["steady_seconds"],
                    "row": knn["row"], "met": fj["knn"]["steady_seconds"] <= tp["knn"]["steady_seconds"]})
    sig = [r for r in sections.get("siglip", {}).get("rows", []) if "error" not in r and "ratio_vs_torch" in r]
    if sig:
        top = max(sig, key=lambda r: r["ratio_vs_torch"])
        out.append({"goal": "SigLIP >= 1.1x the PyTorch model", "measured": top["ratio_vs_torch"], "row": top["row"],
                    "met": top["ratio_vs_torch"] >= 1.1})
    sweep = [r for r in sections.get("sweep", {}).get("rows", []) if "vs_solo" in r]
    if sweep:
        top = max(sweep, key=lambda r: r["vs_solo"])
        out.append({"goal": "sweep >= 10x the experiments per hour of solo runs", "measured": top["vs_solo"],
                    "row": top["row"], "met": top["vs_solo"] >= 10})
    return out


def markdown(sections: dict, goal_rows: list[dict]) -> str:
    from benchmarks import common

    parts = ["# gpu_suite results", ""]
    dev = next((s["device"] for s in sections.values() if s.get("device")), {})
    parts.append(f"Device: {dev.get('jax_device_kind')} ({dev.get('jax_backend')}); date {dev.get('date')}; "
                 f"versions {json.dumps(dev.get('versions'))}.")
    if any(s.get("dry_run") for s in sections.values()):
        parts.append("**Dry run: tiny sizes, nothing here is a measurement of interest.**")
    parts += ["", "## Goals", "", common.markdown_table(goal_rows, ["goal", "measured", "met", "row"])]
    rounds = sections.get("rounds", {}).get("rows", [])
    parts += ["", "## Rounds", "", common.markdown_table(rounds, [
        "row", "compile_seconds", "sec_per_round", "samples_per_sec", "masked_step_fraction", "temp_bytes", "error"])]
    parts += ["", "## Client scaling", "", common.markdown_table(sections.get("scaling", {}).get("rows", []), [
        "row", "compile_seconds", "sec_per_round", "sec_per_client", "temp_bytes", "peak_device_bytes", "error"])]
    fast = sections.get("fast", {}).get("rows", [])
    for r in fast:
        for k, v in (r.get("wall_seconds") or {}).items():
            r[f"{k}_s"] = v
    parts += ["", "## FAST job", "", common.markdown_table(fast, [
        "row", "encode_s", "label_s", "train_s", "total_s", "first_round_seconds",
        "median_round_seconds_after_first", "synthetic_data", "random_encoder_weights", "error"])]
    knn = []
    for r in sections.get("knn", {}).get("rows", []):
        for side in ("fastjax", "torch"):
            if side in r:
                knn.append({"row": f"{r['row']}: {side}", **{f"{p}_{t}": r[side][p][f"{t}_seconds"]
                                                              for p in ("knn", "prototypes")
                                                              for t in ("first", "steady")}})
        if "error" in r:
            knn.append(r)
    parts += ["", "## Labeling at scale", "", common.markdown_table(knn, [
        "row", "knn_first", "knn_steady", "prototypes_first", "prototypes_steady", "error"])]
    sig = [{**r, "fastjax_images_per_sec": r.get("fastjax", {}).get("images_per_sec"),
            "torch_images_per_sec": r.get("torch", {}).get("images_per_sec")}
           for r in sections.get("siglip", {}).get("rows", [])]
    parts += ["", "## SigLIP", "", common.markdown_table(sig, [
        "row", "fastjax_images_per_sec", "torch_images_per_sec", "ratio_vs_torch", "max_abs_diff_relative", "error"])]
    parts += ["", "## Sweeps (experiments as one computation)", "", common.markdown_table(
        sections.get("sweep", {}).get("rows", []), ["row", "first_call_seconds", "sec_per_round",
                                                   "experiment_rounds_per_sec", "vs_solo", "error"])]
    skipped = [f"- {s['section']}: {k['row']}: {k['why']}" for s in sections.values() for k in s.get("skipped", [])]
    missing = [f"- {name}: no result (section did not run or was killed)" for name in SECTIONS if name not in sections]
    if skipped or missing:
        parts += ["", "## Not measured", ""] + skipped + missing
    return "\n".join(parts) + "\n"


def report(work: Path, out: Path):
    from benchmarks import common

    sections = {}
    for name in SECTIONS:
        p = work / f"{name}.json"
        if p.is_file():
            sections[name] = json.loads(p.read_text())
    goal_rows = goals(sections)
    if any(s.get("dry_run") for s in sections.values()):
        goal_rows = [{**g, "met": None} for g in goal_rows]  # tiny sizes: nothing to judge
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "suite.json", {"goals": goal_rows, "sections": sections})
    (out / "suite.md").write_text(markdown(sections, goal_rows))
    print((out / "suite.md").read_text())
    return sum(1 for sec in sections.values() for r in sec.get("rows", []) if "error" not in r)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("section", choices=SECTIONS)
    r.add_argument("--work", required=True)
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--budget", type=float, default=0, help="seconds (default: the section's own)")
    r.add_argument("--data-root", default="")
    rep = sub.add_parser("report")
    rep.add_argument("--work", required=True)
    rep.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "report":
        if not report(Path(args.work), Path(args.out)):
            sys.exit(f"gpu_suite: nothing was measured (every section failed or none ran); see the "
                     f"[suite] lines above (is {sys.executable} the Python with jax?)")
        return
    size = SIZES["dry" if args.dry_run else "gpu"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sec = Section(args.section, work, args.budget or size["budgets"][args.section], args.dry_run)
    if args.section == "rounds":
        run_rounds(sec, size)
    elif args.section == "scaling":
        run_scaling(sec, size)
    elif args.section == "fast":
        run_fast(sec, size, work, args.data_root or os.environ.get("FASTJAX_DATA_ROOT", ""))
    elif args.section == "knn":
        run_knn(sec, size)
    elif args.section == "sweep":
        run_sweep(sec, size)
    else:
        run_siglip(sec, size)


if __name__ == "__main__":
    main()
