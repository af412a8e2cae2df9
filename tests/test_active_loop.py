"""The iterative FAL loop end to end at a tiny size (a 16 px image folder written by the
test), its budgets against hand arithmetic, bitwise resume mid AL round, presets and
bad input before compute."""

import json

import jax
import numpy as np
import pytest

from fastjax import config as config_lib
from fastjax import main as fast_main
from fastjax.active import presets
from fastjax.methods import active
from tests.conftest import final_checkpoint, set_options


def _cfg(root, **over):
    c = config_lib.base_config()
    c.unlock()
    c.method = "active"
    c.data.name = "imagefolder"
    c.data.root = str(root)
    c.partition.scheme = "iid"
    c.partition.num_clients = 3
    c.model.name = "cnn4"
    c.train.rounds = 3
    c.train.local_steps = 2
    c.train.batch_size = 16
    c.train.lr = 0.05
    c.train.checkpoint_every = 1
    c.active.rounds = 3
    c.active.initial = 0.1
    c.active.query = 0.1
    c.active.strategy = "entropy"
    set_options(c, **over)
    c.lock()
    return c


def _sets(workdir, al):
    sets, _ = active._load_sets(workdir / "active" / f"al_{al:02d}.npz")
    return sets


def test_client_shares_equal_then_water_filled():
    assert active.client_shares(100, [50, 50, 50, 50]).tolist() == [25, 25, 25, 25]
    assert active.client_shares(10, [50, 50, 50]).tolist() == [3, 3, 3]  # int(10 / 3) each, as LoGo
    assert active.client_shares(90, [10, 50, 50]).tolist() == [10, 40, 40]  # a short client's rest moves on


def test_loop_end_to_end_budgets_and_metrics(tiny_folder, tmp_path, monkeypatch):
    from fastjax.federate import engine

    plots = []
    real_plot = engine.plot_history
    monkeypatch.setattr(engine, "plot_history", lambda h, p, boundaries=(): plots.append(
        (len(h), list(boundaries))) or real_plot(h, p, boundaries))
    cfg = _cfg(tiny_folder)
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    # 240 samples, 3 clients: 24 initial (8 each), then 24 per AL round (8 each).
    assert [r["labeled"] for r in s["al_rounds"]] == [24, 48, 72]
    assert s["annotations"] == 72  # every label came from the oracle, no more
    prev = [np.zeros(0, np.int64)] * 3
    from fastjax.partition import make_partition
    from fastjax import data
    train = data.load_dataset("imagefolder", "train", str(tiny_folder))
    own = make_partition("iid", train.labels, 3, cfg.seed).train
    for al in (1, 2, 3):
        sets = _sets(run, al)
        for k in range(3):
            assert len(sets[k]) == 8 * al and np.unique(sets[k]).size == len(sets[k])
            assert np.isin(sets[k], own[k]).all()  # only the client's own samples
            assert np.isin(prev[k], sets[k]).all()  # labeled sets only grow
        prev = sets
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 10))
    assert [r["al_round"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [r["annotations"] for r in rows] == [24] * 3 + [48] * 3 + [72] * 3
    # Communication: 2 x 3 clients x full CNN-4 state per FL round, continuous.
    per_round = rows[0]["comm_mib"]
    np.testing.assert_allclose([r["comm_mib"] for r in rows], per_round * np.arange(1, 10), rtol=1e-9)
    last = [r["accuracy"] for r in rows[-3:]]
    assert s["final_accuracy"] == last[-1] and s["last5_accuracy"] == pytest.approx(np.mean(last))
    assert s["fl_rounds"] == 9 and set(s["wall_seconds"]) >= {"query", "train"}
    assert s["final_accuracy"] > 0.5  # 4 classes; the quadrant pattern is easy
    # The accuracy plot marks where AL rounds 2 and 3 start (after FL rounds 3 and 6).
    assert plots[-1] == (9, [(3.5, "AL 2"), (6.5, "AL 3")])
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_accuracy_plot_draws_the_boundaries_from_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from fastjax.federate import engine

    lines, limits = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda ax, x, **kw: lines.append(x))
    real_ylim = matplotlib.axes.Axes.set_ylim
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylim",
                        lambda ax, *a, **kw: limits.append(a) or real_ylim(ax, *a, **kw))
    history = [{"round": r, "al_round": 1 + (r > 2), "accuracy": 0.6 + 0.01 * r, "comm_mib": r} for r in (1, 2, 3, 4)]
    assert active.al_boundaries(history) == [(2.5, "AL 2")]
    engine.plot_history(history, tmp_path / "a.png", boundaries=active.al_boundaries(history))
    assert lines == [2.5] and limits.count((0, 1)) == 2  # both accuracy axes from 0


def test_resume_mid_al_round_is_bitwise(tiny_folder, tmp_path, monkeypatch):
    cfg = _cfg(tiny_folder, active__reset="continue", active__rounds=2)
    full = fast_main.run(cfg, tmp_path / "a", progress=False)

    from fastjax.federate import engine

    real = engine.make_round_fn
    calls = {"n": 0}

    def interrupted(*args, **kw):
        fn = real(*args, **kw)

        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == 5:  # global FL round 5: AL round 2, its second FL round
                raise KeyboardInterrupt
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(engine, "make_round_fn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fast_main.run(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(engine, "make_round_fn", real)
    resumed = fast_main.run(cfg, tmp_path / "b", progress=False)

    a, b = final_checkpoint(tmp_path / "a"), final_checkpoint(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bitwise
    for al in (1, 2):
        for x, y in zip(_sets(tmp_path / "a", al), _sets(tmp_path / "b", al)):
            np.testing.assert_array_equal(x, y)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ra = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert strip(ra) == strip(rb)
    assert resumed["final_accuracy"] == full["final_accuracy"]
    assert resumed["annotations"] == full["annotations"]


@pytest.mark.parametrize("over,msg", [
    ({"active__rounds": 0}, "active.rounds"),
    ({"train__rounds": 0}, "train.rounds"),
    ({"active__strategy": "oracle"}, "active.strategy='oracle'"),
    ({"active__preset": "nope"}, "active.preset"),
    ({"active__initial": 0.5, "active__query": 0.3}, "more than all of it"),
    ({"active__reset": "warm"}, "active.reset"),
    ({"partition__rounding": "ceil"}, r"partition.rounding='ceil' is not allowed.*logo_code"),
    ({"active__query_model": "both"}, "active.query_model"),
    ({"active__strategy": "logo", "active__logo_n_init": 0}, "n_init=0 must be an int >= 1"),
    ({"active__strategy": "ll4al", "active__ll4al_subset": 0}, "subset_size=0 must be an int >= 1"),
    ({"active__strategy": "kafal", "active__query_model": "local_only"}, "kafal chooses its own models"),
    ({"active__strategy": "ll4al", "active__query_model": "local_only"}, "ll4al chooses its own models"),
])
def test_bad_input_before_compute(tmp_path, over, msg):
    with pytest.raises(ValueError, match=msg):
        config_lib.validate(_cfg(tmp_path, **over))


def test_presets_apply_and_validate():
    for name in presets.PRESETS:
        c = presets.apply_preset(config_lib.base_config(), name)
        config_lib.validate(c)
        assert c.method == "active" and c.active.preset == name
    c = presets.apply_preset(config_lib.base_config(), "logo")
    assert (c.train.batch_size, c.train.lr, c.train.weight_decay, c.train.lr_drop_at) == (64, 0.01, 1e-5, 0.75)
    assert (c.active.reset, c.partition.scheme, c.train.rounds) == ("random_init", "logo", 100)
    c = presets.apply_preset(config_lib.base_config(), "paper_fig2")
    assert presets.budget_fractions(c.active.initial, c.active.query, c.active.rounds)[-1] == pytest.approx(0.35)
    assert c.active.rounds * c.train.rounds == 300
    with pytest.raises(ValueError, match="not known"):
        presets.apply_preset(config_lib.base_config(), "logos")


def test_logo_lr_drop_matches_reference_rule():
    from fastjax.federate.engine import TrainSpec

    spec = TrainSpec(rounds=100, lr=0.01, lr_drop_at=0.75)
    # LoGo (util/misc.py): lr x 0.1 once the 0-indexed round exceeds int(0.75 * 100) = 75.
    assert [spec.learning_rate(i) for i in (0, 75, 76, 99)] == [0.01, 0.01, pytest.approx(0.001),
                                                               pytest.approx(0.001)]


@pytest.mark.parametrize("over,msg", [
    ({"active__strategy": "gcnal", "active__gcnal_subset": 5}, r"queries 8 samples .* active\.gcnal_subset=5 unlabeled"),
    ({"active__strategy": "logo", "active__initial": 0.01}, r"clients \[.*\] get no labeled samples .* LoGo"),
    ({"active__strategy": "kafal", "active__initial": 0.01}, r"no labeled samples .* KAFAL"),
    ({"active__strategy": "entropy", "active__query_model": "local_only", "active__initial": 0.01},
     "no labeled samples .* LoGo's local-only models"),
    ({"active__strategy": "alfa_mix", "active__initial": 0.01}, r"no labeled samples .* alfa_mix's query"),
    ({"active__strategy": "entropy", "active__initial": 0.01},
     r"active.initial=0.01 labels .* = 2 samples, less than one per client .* at least 0.0125$"),
])
def test_what_the_partition_decides_fails_before_training(tiny_folder, tmp_path, over, msg):
    # 240 samples over 3 clients: 1% is 2 samples, so one client starts with none.
    with pytest.raises(ValueError, match=msg):
        fast_main.run(_cfg(tiny_folder, **over), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list((tmp_path / "run" / "active").glob("al_*.npz"))


# ------------------------------------------------------------------ the three that change training


@pytest.mark.slow  # three KAFAL loops, ~50 s
def test_kafal_resumed_at_an_al_boundary_equals_uninterrupted(tiny_folder, tmp_path):
    # The query of AL round 2 needs each client's model after its last local update of AL
    # round 1; a fresh process recomputes them from the checkpoint before that round.
    cfg2 = _cfg(tiny_folder, active__strategy="kafal", active__rounds=2, train__rounds=2, train__checkpoint_every=5)
    cfg1 = _cfg(tiny_folder, active__strategy="kafal", active__rounds=1, train__rounds=2, train__checkpoint_every=5)
    full = fast_main.run(cfg2, tmp_path / "a", progress=False)
    assert [r["labeled"] for r in full["al_rounds"]] == [24, 48] and full["annotations"] == 48
    fast_main.run(cfg1, tmp_path / "b", progress=False)
    fast_main.run(cfg2, tmp_path / "b", progress=False)  # active.rounds may be raised
    for x, y in zip(_sets(tmp_path / "a", 2), _sets(tmp_path / "b", 2)):
        np.testing.assert_array_equal(x, y)

    jax.tree.map(np.testing.assert_array_equal, final_checkpoint(tmp_path / "a"), final_checkpoint(tmp_path / "b"))


def _linear_clients(k=3, n=24, d=6, c=3, seed=0):
    from fastjax.federate import engine

    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, d)).astype(np.float32) for _ in range(k)]
    ys = [rng.integers(0, c, n) for _ in range(k)]
    return engine.stack_clients(xs, ys), d, c


def test_kcfu_without_distillation_and_uniform_counts_is_plain_cross_entropy():
    # Logit adjustment by equal counts adds a constant to every logit (softmax unchanged),
    # and in the first round KCFU does not distill: the same training as cross-entropy.
    from fastjax.active.kafal import kcfu_objective
    from fastjax.federate import engine, models

    clients, d, c = _linear_clients()
    model = models.make_model("linear", c)
    v = models.init_variables(model, (d,), 0)
    spec = engine.TrainSpec(rounds=1, local_steps=3, batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(1)
    aux = {"u": rng.normal(size=(3, 10, d)).astype(np.float32), "nu": np.array([10, 4, 0], np.int32),
           "counts": np.full((3, c), 5.0, np.float32)}
    import dataclasses as dc

    with_pool = dc.replace(clients, aux=aux)
    args = (np.asarray(clients.n), np.array([3, 3, 3], np.int32), np.arange(3, dtype=np.int32),
            engine.round_hyper(spec, 0), engine.round_key(0, 1))
    plain = engine.make_round_fn(model, spec, lambda x: x)(v, clients.x, clients.y, *args)[0]
    kcfu = engine.make_round_fn(model, spec, lambda x: x, objective=kcfu_objective())(
        v, with_pool.x, jax.tree.map(np.asarray, with_pool.labels()), *args)[0]
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), plain, kcfu)
    # From the second round on it distills from the global model: different training.
    later = engine.make_round_fn(model, spec, lambda x: x, objective=kcfu_objective())(
        v, with_pool.x, jax.tree.map(np.asarray, with_pool.labels()), *args[:3], engine.round_hyper(spec, 1),
        args[4])[0]
    assert not np.allclose(later["params"]["head"]["kernel"], kcfu["params"]["head"]["kernel"])


@pytest.mark.slow  # KCFU under four strategies, ~30 s
def test_kcfu_trains_alike_under_every_execution_strategy():
    """KCFU's objective (distilling, round 1) is written once for one client: vmap,
    sequential, chunked, bucketed and sharded rounds give the same global model."""
    import dataclasses as dc

    from fastjax.active.kafal import kcfu_objective
    from fastjax.federate import engine, models

    clients, d, c = _linear_clients()
    model = models.make_model("linear", c)
    v = models.init_variables(model, (d,), 0)
    rng = np.random.default_rng(2)
    aux = {"u": rng.normal(size=(3, 10, d)).astype(np.float32), "nu": np.array([10, 4, 7], np.int32),
           "counts": rng.integers(0, 6, size=(3, c)).astype(np.float32)}
    with_pool = dc.replace(clients, aux=aux)
    out = {}
    for strategy in ("vmap", "sequential", "chunked", "bucketed", "sharded"):
        spec = engine.TrainSpec(rounds=2, local_steps=3, batch_size=8, lr=0.1, momentum=0.9,
                                weight_decay=1e-4, strategy=strategy, client_chunk=2)
        fn = engine.make_round_fn(model, spec, lambda x: x, objective=kcfu_objective())
        out[strategy] = fn(v, with_pool.x, jax.tree.map(np.asarray, with_pool.labels()),
                           np.asarray(clients.n), np.array([3, 1, 2], np.int32), np.arange(3, dtype=np.int32),
                           engine.round_hyper(spec, 1), engine.round_key(0, 2))[0]
    for strategy, got in out.items():
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6,
                                                             err_msg=strategy), out["vmap"], got)


def test_client_models_are_the_ones_the_round_averages():
    from fastjax.federate import aggregators, engine, models

    clients, d, c = _linear_clients(n=20)
    model = models.make_model("linear", c)
    v = models.init_variables(model, (d,), 0)
    spec = engine.TrainSpec(rounds=1, local_epochs=2, batch_size=8, lr=0.1)
    steps = np.array([6, 6, 6], np.int32)
    args = (clients.x, clients.y, np.asarray(clients.n), steps, np.arange(3, dtype=np.int32),
            engine.round_hyper(spec, 0), engine.round_key(0, 1))
    averaged = engine.make_round_fn(model, spec, lambda x: x)(v, *args)[0]
    each = engine.make_client_models_fn(model, spec, lambda x: x)(v, *args)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
                 averaged, aggregators.fedavg(v, each, clients.n, steps))


def test_ll4al_objective_is_ce_plus_ranking_loss_of_the_module():
    from fastjax.active.ll4al import WithLossNet, ll4al_train_objective
    from fastjax.federate import local, models

    model = WithLossNet(models.make_model("cnn4", 3))
    v = models.init_variables(model, (16, 16, 3), 0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 3, 6)

    def forward(xb, mask=None, **kw):
        return model.apply(v, xb, train=True, mask=mask, mutable=["batch_stats"], **kw)[0]

    batch = {"x": x, "y": y, "valid": np.ones(6, bool), "w": None, "bn_mask": None}
    loss, ce = ll4al_train_objective(lam=0.5, xi=1.0, detach_round=3)(forward, batch, {"round": 0})
    logits, pred = forward(x, outputs="loss")
    ce_i = np.asarray(local.cross_entropy(logits, y), np.float64)
    pred = np.asarray(pred, np.float64)
    pairs = [(i, 5 - i) for i in range(3)]  # the reference pairs the batch with itself reversed
    rank = np.mean([max(0.0, 1.0 - (1 if ce_i[i] > ce_i[j] else -1) * (pred[i] - pred[j])) for i, j in pairs])
    np.testing.assert_allclose(float(ce), ce_i.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce_i.mean() + 0.5 * rank, rtol=1e-5)


# ------------------------------------------------------------------ every strategy, end to end


def _altered_oracle(labels, keep, num_classes):
    """partition.Oracle over labels changed everywhere outside `keep`: a loop that reads
    only what it queried cannot tell the difference."""
    from fastjax.partition.types import Oracle

    altered = (np.asarray(labels) + 1) % num_classes
    altered[keep] = np.asarray(labels)[keep]
    return Oracle(altered)


@pytest.mark.parametrize("strategy", ["random", "entropy", "coreset", "badge", "alfa_mix", "gcnal",
                                      "logo", "kafal", "ll4al"])
def test_every_strategy_runs_the_loop_and_reads_only_what_it_queried(tiny_folder, tmp_path,
                                                                     monkeypatch, strategy):
    """Exactly b per client from its own pool, every label an annotation, and hidden labels
    of the samples never selected change neither the queries nor the trained model."""
    from fastjax import partition
    from fastjax.active import STRATEGIES

    assert strategy in STRATEGIES
    cfg = _cfg(tiny_folder, active__strategy=strategy, active__rounds=2, train__rounds=1,
               train__local_steps=1, active__local_only_epochs=2, active__logo_n_init=2,
               active__gcnal_steps=20)
    s = fast_main.run(cfg, tmp_path / "a", progress=False)
    assert [r["labeled"] for r in s["al_rounds"]] == [24, 48] and s["annotations"] == 48
    selected = np.concatenate(_sets(tmp_path / "a", 2))
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    # Communication as FAST counts it; LL4AL's module travels with the backbone.
    from fastjax.active.ll4al import WithLossNet
    from fastjax.federate import engine, models

    backbone = models.make_model("cnn4", 4)
    model = WithLossNet(backbone) if strategy == "ll4al" else backbone
    per_round = 2 * 3 * engine.state_bytes(models.init_variables(model, (16, 16, 3), 0)) / engine.MIB
    assert rows[0]["comm_mib"] == pytest.approx(per_round)

    made = []

    def altered(labels):
        made.append(_altered_oracle(labels, selected, 4))
        return made[-1]

    monkeypatch.setattr(partition, "Oracle", altered)
    s2 = fast_main.run(cfg, tmp_path / "b", progress=False)
    (oracle,) = made
    assert np.flatnonzero(oracle._queried).tolist() == np.sort(selected).tolist()
    for al in (1, 2):
        for x, y in zip(_sets(tmp_path / "a", al), _sets(tmp_path / "b", al)):
            np.testing.assert_array_equal(x, y)
    jax.tree.map(np.testing.assert_array_equal, final_checkpoint(tmp_path / "a"),
                 final_checkpoint(tmp_path / "b"))
    assert s2["annotations"] == s["annotations"]


# ------------------------------------------------------------------ the loop's files and Ctrl-C


def test_missing_loop_files_are_named_before_compute(tiny_folder, tmp_path):
    import shutil

    cfg = _cfg(tiny_folder, active__rounds=2, train__rounds=1, train__local_steps=1)
    fast_main.run(cfg, tmp_path / "a", progress=False)
    (tmp_path / "a" / "summary.json").unlink()  # as if stopped after its last checkpoint
    for name, what in (("al_01.npz", "AL round 1's labeled sets"), ("al_02.npz", "AL round 2's labeled sets"),
                       ("al_01.json", "AL round 1's results")):
        run = tmp_path / name
        shutil.copytree(tmp_path / "a", run)
        (run / "active" / name).unlink()
        with pytest.raises(ValueError, match=rf"lacks {name} \({what}\), which its checkpoints up to FL "
                                             r"round 2 presuppose") as e:
            fast_main.run(cfg, run, progress=False)
        assert "\n" not in str(e.value)  # fastjax.main prints it as one line, exit status 2
    # The last AL round's results may be missing (the job stopped after its checkpoint).
    (tmp_path / "a" / "active" / "al_02.json").unlink()
    assert fast_main.run(cfg, tmp_path / "a", progress=False)["annotations"] == 48


def _press_ctrl_c_in_a_finaliser():
    """SIGINT whose handler runs inside a finaliser: Python's default handler raises the
    KeyboardInterrupt there, where it is printed and lost ("Exception ignored in")."""
    import os
    import signal

    class Collected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here

    Collected()


def test_ctrl_c_during_a_query_stops_at_the_next_client(tiny_folder, tmp_path, monkeypatch):
    import signal

    from fastjax.active import STRATEGIES

    import functools

    real, calls = STRATEGIES["entropy"], []

    @functools.wraps(real)  # the same options, as the config's validation reads them
    def pressed_mid_query(view, b, key, **kw):
        calls.append(b)
        if len(calls) == 1:
            _press_ctrl_c_in_a_finaliser()
        return real(view, b, key, **kw)

    monkeypatch.setitem(STRATEGIES, "entropy", pressed_mid_query)
    cfg = _cfg(tiny_folder, active__rounds=2, train__rounds=1, train__local_steps=1)
    with pytest.raises(KeyboardInterrupt):
        fast_main.run(cfg, tmp_path / "run", progress=False)
    assert len(calls) == 1  # the second client's query never started
    assert not (tmp_path / "run" / "active" / "al_02.npz").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_exits_at_once(tmp_path, monkeypatch, capsys):
    import os
    import signal

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with pytest.raises(KeyboardInterrupt):
        with active.Interrupts(tmp_path) as interrupts:
            _press_ctrl_c_in_a_finaliser()
            assert interrupts.pressed and exits == []
            _press_ctrl_c_in_a_finaliser()
            assert exits == [130]
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("fastjax: error: interrupted twice") and str(tmp_path) in last
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_later_al_rounds_query_without_compiling(tiny_folder, tmp_path, monkeypatch):
    """Pools shrink every AL round; sizes within one power-of-two bucket reuse the
    compiled query (a compile per exact size grew the loop's memory every AL round)."""
    from tests.test_strategies import counting_compiles

    real, counts = active._Querier.query, []

    def counted(self, *args, **kw):
        with counting_compiles() as compiles:
            out = real(self, *args, **kw)
        counts.append(compiles[0])
        return out

    monkeypatch.setattr(active._Querier, "query", counted)
    # 240 samples, 3 clients: 10 labeled each, then 3 more per AL round: pools 70 -> 67,
    # labeled sets 10 -> 13 (one bucket each), 16 at the end (the capacity of the badge
    # run above: its compiled training is reused).
    cfg = _cfg(tiny_folder, active__strategy="badge", active__rounds=3, active__initial=0.125,
               active__query=0.0375, train__rounds=1, train__local_steps=1)
    s = fast_main.run(cfg, tmp_path / "run", progress=False)
    assert [r["labeled"] for r in s["al_rounds"]] == [30, 39, 48]
    assert len(counts) == 2 and counts[1] == 0, counts


def test_a_changed_train_rounds_points_at_active_rounds(tiny_folder, tmp_path):
    """The loop fixes train.rounds for a run (its AL rounds are laid out on it): the
    refusal says a rerun may raise active.rounds, not that lr_drop_at ties it."""
    cfg = _cfg(tiny_folder, active__rounds=1, train__rounds=1, train__local_steps=1, train__lr_drop_at=0.75)
    fast_main.run(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"train.rounds: 1 -> 2 \(fixed for this run; a rerun may raise "
                                         r"active.rounds instead\)"):
        fast_main.run(_cfg(tiny_folder, active__rounds=1, train__rounds=2, train__local_steps=1,
                           train__lr_drop_at=0.75), tmp_path / "run", progress=False)
