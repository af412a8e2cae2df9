"""The run directory: identity check, lock, damaged-checkpoint fallback, metrics log
(issue 13 items 1, 3, 4, 7, 8, 13)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from fastjax import config as config_lib
from fastjax.federate import checkpoints, engine
from tests.test_federate import _linear_setup
from tests.conftest import set_options

ROOT = Path(__file__).resolve().parents[1]


def _config(**over):
    c = config_lib.base_config()
    c.unlock()
    set_options(c, **over)
    c.lock()
    return c


def test_identity_refuses_result_relevant_changes_before_writing(tmp_path):
    # A constant learning rate, so that the rounds may be extended (see the next test).
    with checkpoints.RunDir.open(tmp_path, _config(train__rounds=12, train__lr_drop_at=0.0)):
        pass
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in range(1, 13)))
    before = (tmp_path / "config.json").read_text()
    for over, key in [({"data__name": "mnist"}, "data.name"), ({"seed": 3}, "seed"),
                      ({"partition__num_clients": 20}, "partition.num_clients"),
                      ({"labeling__budget": 0.05}, "labeling.budget"),
                      ({"train__rounds": 8}, "train.rounds")]:
        c = config_lib.base_config()
        c.unlock()
        c.train.rounds = 12
        c.train.lr_drop_at = 0.0
        for k, v in over.items():
            if "__" in k:
                sect, f = k.split("__")
                setattr(getattr(c, sect), f, v)
            else:
                setattr(c, k, v)
        with pytest.raises(checkpoints.RunMismatchError, match=key.replace(".", r"\.")) as e:
            checkpoints.RunDir.open(tmp_path, c)
        assert "start afresh" in str(e.value) and "\n" not in str(e.value)
        assert (tmp_path / "config.json").read_text() == before  # written only after the check
    # Extending the rounds, or changing where files are / how fast things run, is allowed.
    with checkpoints.RunDir.open(tmp_path, _config(train__rounds=20, data__root="/elsewhere",
                                                   train__strategy="sequential",
                                                   train__lr_drop_at=0.0)):
        pass
    assert json.loads((tmp_path / "config.json").read_text())["train"]["rounds"] == 20


def test_rounds_not_extendable_when_schedule_depends_on_them(tmp_path):
    with checkpoints.RunDir.open(tmp_path, _config(train__rounds=10, train__lr_drop_at=0.75)):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(checkpoints.RunMismatchError,
                       match=r"train\.rounds: 10 -> 20 \(not extendable: train\.lr_drop_at=0\.75"):
        checkpoints.RunDir.open(tmp_path, _config(train__rounds=20, train__lr_drop_at=0.75))


def test_a_directory_without_results_takes_a_corrected_config(tmp_path):
    """A first run that failed before computing (a wrong data root, say) leaves only
    config.json: nothing to protect, so the corrected command runs there."""
    with checkpoints.RunDir.open(tmp_path, _config(data__name="cifar10")):
        pass
    with checkpoints.RunDir.open(tmp_path, _config(data__name="mnist")):
        pass
    assert json.loads((tmp_path / "config.json").read_text())["data"]["name"] == "mnist"
    for result in ("active", "annotations.csv"):  # the loop's labeled sets, a person's labels
        d = tmp_path.parent / f"{tmp_path.name}-{result}"
        with checkpoints.RunDir.open(d, _config(data__name="cifar10")):
            pass
        (d / result).mkdir() if result == "active" else (d / result).write_text("")
        with pytest.raises(checkpoints.RunMismatchError, match="data.name"):
            checkpoints.RunDir.open(d, _config(data__name="mnist"))


def test_where_and_how_fast_keys_may_change(tmp_path):
    with checkpoints.RunDir.open(tmp_path, _config()):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with checkpoints.RunDir.open(tmp_path, _config(compilation_cache_dir="off", train__chunk_memory_mb=10.0,
                                                   active__pool_batch_size=64)):
        pass


def test_results_without_config_are_refused(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(checkpoints.RunMismatchError, match="no config.json"):
        checkpoints.RunDir.open(tmp_path, _config())


def test_lock_refuses_a_second_process_naming_the_holder(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from fastjax.federate.checkpoints import RunDir
        from fastjax import config
        r = RunDir.open({str(tmp_path)!r}, config.base_config())
        print("LOCKED", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(checkpoints.RunLockedError, match=f"pid {proc.pid}"):
            checkpoints.RunDir.open(tmp_path, _config())
    finally:
        proc.kill()
        proc.wait()
    with checkpoints.RunDir.open(tmp_path, _config()):  # released when the holder dies
        pass


def test_unwritable_workdir_fails_before_compute(tmp_path):
    (tmp_path / "afile").write_text("")  # a path no one (root included) can create a directory under
    with pytest.raises(PermissionError, match="not writable"):
        checkpoints.RunDir.open(tmp_path / "afile" / "run", _config())


def test_metrics_log_drops_torn_last_line_and_truncates(tmp_path):
    log = checkpoints.MetricsLog(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text('{"round": 1}\n{"round": 2}\n{"rou')
    with pytest.warns(UserWarning, match="torn"):
        assert [r["round"] for r in log.read()] == [1, 2]
    with pytest.warns(UserWarning):
        log.truncate(1)
    assert (tmp_path / "m.jsonl").read_text() == '{"round": 1}\n'
    (tmp_path / "m.jsonl").write_text('{"round": 1}\nxx\n{"round": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        log.read()


def _damage(step_dir: Path):
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"\0" * 7)


def test_damaged_latest_checkpoint_falls_back_with_warning(tmp_path):
    model, v, clients, spec = _linear_setup({"rounds": 4, "checkpoint_every": 2})
    tx, ty = clients.x[0], clients.y[0]
    full = engine.fit(model, v, clients, tx, ty, spec, lambda x: x, workdir=tmp_path / "a", progress=False)
    engine.fit(model, v, clients, tx, ty, spec, lambda x: x, workdir=tmp_path / "b", progress=False)
    _damage(tmp_path / "b" / "checkpoints" / "4")
    store = checkpoints.Checkpoints(tmp_path / "b" / "checkpoints")
    with pytest.warns(UserWarning, match=r"checkpoints/4 is damaged"):
        assert store.validate() == 2
    store.close()
    assert list((tmp_path / "b").glob("checkpoints-damaged-4-*"))  # set aside, not deleted
    resumed = engine.fit(model, v, clients, tx, ty, spec, lambda x: x, workdir=tmp_path / "b", progress=False)
    jax.tree.map(np.testing.assert_array_equal, full.variables, resumed.variables)
    rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]


def _flip_bytes(step_dir: Path):
    """Overwrite 8 bytes in the middle of the largest array file: the checkpoint still
    reads back, as other numbers."""
    f = max((p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"
             and p.parent.parent.name.startswith("ocdbt.process")), key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(255 - b for b in data[mid:mid + 8])
    f.write_bytes(bytes(data))


def test_checkpoint_with_flipped_array_bytes_is_set_aside(tmp_path):
    rng = np.random.RandomState(0)
    trees = {s: {"w": rng.randn(64, 64).astype(np.float32), "round": np.int64(s)} for s in (1, 2)}
    store = checkpoints.Checkpoints(tmp_path / "checkpoints")
    for s, t in trees.items():
        store.save(s, t)
    store.close()
    _flip_bytes(tmp_path / "checkpoints" / "2")
    store = checkpoints.Checkpoints(tmp_path / "checkpoints")
    # orbax reads it back without complaint, as other numbers ...
    assert not np.array_equal(store.read(2)["w"], trees[2]["w"])
    with pytest.warns(UserWarning, match=r"checkpoints/2 is damaged \(CheckpointDigestError"):
        assert store.validate() == 1  # ... which the digest written at save catches
    np.testing.assert_array_equal(store.read(1)["w"], trees[1]["w"])
    store.close()
    assert list(tmp_path.glob("checkpoints-damaged-2-*"))


def test_rerun_before_first_checkpoint_does_not_append(tmp_path):
    model, v, clients, spec = _linear_setup({"rounds": 3, "checkpoint_every": 0})
    tx, ty = clients.x[0], clients.y[0]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"round": r, "comm_mib": 0.0}) + "\n"
                                                    for r in (1, 2)))  # a run killed before any checkpoint
    engine.fit(model, v, clients, tx, ty, spec, lambda x: x, workdir=tmp_path, progress=False)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and "loss" in rows[0]


def test_nan_stop_without_checkpoint_names_the_last_good_round(tmp_path):
    model, v, clients, spec = _linear_setup({"rounds": 3, "checkpoint_every": 0})
    x = clients.x.copy()
    x[1, 0] = np.nan
    bad = engine.ClientArrays(x, clients.y, clients.n)
    with pytest.raises(FloatingPointError) as e:
        engine.fit(model, v, bad, clients.x[0], clients.y[0], spec, lambda x: x, workdir=tmp_path,
                   progress=False)
    assert "None" not in str(e.value) and "stopping after round 0" in str(e.value)


def test_sections_the_method_does_not_read_are_not_compared(tmp_path):
    c = _config(method="active", labeling__budget=0.2)
    with checkpoints.RunDir.open(tmp_path, c, ignore=config_lib.unread_sections(c)):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    c2 = _config(method="active", labeling__budget=0.4, encoder__name="clip")
    with checkpoints.RunDir.open(tmp_path, c2, ignore=config_lib.unread_sections(c2)):
        pass  # the loop on a CNN reads neither the labeling nor the encoder section
    c3 = _config(method="active", active__strategy="badge")
    with pytest.raises(checkpoints.RunMismatchError, match="active.strategy"):
        checkpoints.RunDir.open(tmp_path, c3, ignore=config_lib.unread_sections(c3))


def test_a_key_added_since_the_run_started_is_no_difference_at_its_default(tmp_path):
    """A work directory from before a config key existed resumes while the key keeps its
    default (the behaviour from before); set to anything else, it is a difference."""
    with config_lib.open_run(tmp_path, _config()):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["labeling"]["soft_temperature"]  # as if written before the key was added
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with config_lib.open_run(tmp_path, _config()):
        pass
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(checkpoints.RunMismatchError, match=r"labeling\.soft_temperature: '<absent>' -> 0\.5"):
        config_lib.open_run(tmp_path, _config(labeling__soft_temperature=0.5))


def test_a_workdir_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(PermissionError, match=r"afile is a file, not a directory"):
        checkpoints.RunDir.open(tmp_path / "afile", _config())


def test_changed_inputs_are_refused_once_rounds_were_trained(tmp_path):
    """A person's annotations (their digest) are part of the run's identity: they may
    change before training starts, never after (the rounds run would mix two label sets)."""
    with checkpoints.RunDir.open(tmp_path, _config(), inputs={"annotations.csv": None}):
        pass  # the export: the query is out, nothing annotated yet
    (tmp_path / "annotations.csv").write_text("first")
    with checkpoints.RunDir.open(tmp_path, _config(), inputs={"annotations.csv": "a" * 64}):
        pass  # annotated before any round: accepted, recorded
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(checkpoints.RunMismatchError) as e:
        checkpoints.RunDir.open(tmp_path, _config(), inputs={"annotations.csv": "b" * 64})
    msg = str(e.value)
    assert "annotations.csv changed since this run trained on it" in msg and "\n" not in msg
    assert "start afresh" in msg and str(tmp_path / "checkpoints") in msg
    assert json.loads((tmp_path / "config.json").read_text())["inputs"] == {"annotations.csv": "a" * 64}
    with checkpoints.RunDir.open(tmp_path, _config(), inputs={"annotations.csv": "a" * 64}):
        pass  # the same file again resumes


def test_provenance_is_recorded_never_compared(tmp_path):
    prov = config_lib.provenance()
    assert set(prov) == {"fastjax", "git_commit", "jax", "device", "date"}
    assert prov["jax"] == jax.__version__ and prov["device"] == jax.devices()[0].device_kind
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    with checkpoints.RunDir.open(tmp_path, _config(), provenance=prov):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    other = {**prov, "fastjax": "9.9", "git_commit": None, "device": "elsewhere"}
    with checkpoints.RunDir.open(tmp_path, _config(), provenance=other):
        pass  # another version or machine resumes the same run
    text = (tmp_path / "config.json").read_text()
    assert json.loads(text)["provenance"] == other
    assert config_lib.from_json(text).to_dict() == _config().to_dict()  # records are not config


def test_provenance_outside_a_git_checkout_is_null(tmp_path, monkeypatch):
    import fastjax

    (tmp_path / "fastjax").mkdir()
    monkeypatch.setattr(fastjax, "__file__", str(tmp_path / "fastjax" / "__init__.py"))
    assert config_lib.provenance()["git_commit"] is None


@pytest.fixture(scope="module")
def finished_fit(tmp_path_factory):
    """A 4-round run checkpointed at rounds 2 and 4, and how to resume one like it."""
    model, v, clients, spec = _linear_setup({"rounds": 4, "checkpoint_every": 2})
    tx, ty = clients.x[0], clients.y[0]
    run = lambda d: engine.fit(model, v, clients, tx, ty, spec, lambda x: x, workdir=d,  # noqa: E731
                               progress=False)
    d = tmp_path_factory.mktemp("finished")
    return run(d), run, d


def _cut_metrics(finished_fit, tmp_path, keep: int):
    import shutil

    full, run, d = finished_fit
    shutil.copytree(d, tmp_path / "b")
    path = tmp_path / "b" / "metrics.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    return full, run, checkpoints.Checkpoints(tmp_path / "b" / "checkpoints"), checkpoints.MetricsLog(path)


def test_a_checkpoint_ahead_of_the_metrics_log_falls_back_to_one_it_covers(finished_fit, tmp_path):
    full, run, store, log = _cut_metrics(finished_fit, tmp_path, keep=3)  # rows 1-3, checkpoints 2, 4
    with pytest.warns(UserWarning, match=r"checkpoints/4 is ahead of the metrics log"):
        assert store.validate(log) == 2
    store.close()
    assert list((tmp_path / "b").glob("checkpoints-uncovered-4-*"))
    resumed = run(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, full.variables, resumed.variables)
    assert [r["round"] for r in log.read()] == [1, 2, 3, 4]
    assert resumed.comm_mib == full.comm_mib


def test_a_metrics_log_behind_every_checkpoint_is_refused_naming_it(finished_fit, tmp_path):
    full, run, store, log = _cut_metrics(finished_fit, tmp_path, keep=1)
    with pytest.raises(ValueError, match=r"metrics.jsonl holds rows for rounds 1-1 only.*round 2"):
        store.validate(log)
    assert store.steps() == [2, 4]  # nothing moved
    store.close()
    # The round loop, resuming on its own, refuses too rather than summarise 1 row of 4.
    with pytest.raises(ValueError, match=r"metrics.jsonl holds rows for rounds 1-1 only.*round 4"):
        run(tmp_path / "b")


def test_metrics_rows_reach_the_disk_before_each_checkpoint(tmp_path, monkeypatch):
    synced = []
    real = checkpoints.os.fsync
    monkeypatch.setattr(checkpoints.os, "fsync",
                        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    log = checkpoints.MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"round": 1})
    assert log.path.read_text() == '{"round": 1}\n'  # in the file (a kill loses nothing) ...
    store = checkpoints.Checkpoints(tmp_path / "checkpoints")
    store.save(1, {"w": np.zeros(3, np.float32)})
    store.close()
    assert synced[0] == str(log.path)  # ... and synced before the checkpoint is written


def test_a_torn_last_line_is_reported_once(tmp_path):
    """Opening the run and resuming both read the log; one warning, from the resume."""
    import warnings

    with checkpoints.RunDir.open(tmp_path, _config(train__lr_drop_at=0.0)):
        pass
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"rou')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with checkpoints.RunDir.open(tmp_path, _config(train__lr_drop_at=0.0)):
            checkpoints.MetricsLog(tmp_path / "metrics.jsonl").truncate(1)
    assert sum("dropped a torn last line" in str(w.message) for w in seen) == 1
