"""Tests for the benchmark peers: benchmarks/torch_reference.py and benchmarks/common.py."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks/` is a folder of scripts, not an installed package
    sys.path.insert(0, _ROOT)

from benchmarks import common  # noqa: E402
from benchmarks import flower_reference  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402


def _param_count_by_hand(channels, num_classes, image_size):
    conv = lambda cin: 9 * cin * 64 + 64   # weight + bias
    bn = 2 * 64                             # gamma, beta (running stats are buffers)
    emb = 64 * (image_size // 16) ** 2
    return conv(channels) + 3 * conv(64) + 4 * bn + emb * num_classes + num_classes


@pytest.mark.parametrize("image_size,emb_dim", [(28, 64), (32, 256), (64, 1024)])
def test_cnn4_shapes_and_parameter_count(image_size, emb_dim):
    model = tr.make_cnn4(3, 10, image_size)
    assert model.emb_dim == emb_dim
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, image_size, image_size))
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == _param_count_by_hand(3, 10, image_size)
    assert torch.count_nonzero(model.linear.bias) == 0
    bn = model.features[0][1]
    assert (bn.eps, bn.momentum, bn.track_running_stats) == (1e-5, 0.1, True)


def test_make_cnn4_rejects_unsupported_size():
    with pytest.raises(ValueError, match="image_size=48"):
        tr.make_cnn4(3, 10, 48)


def test_local_train_with_zero_lr_changes_only_bn_stats():
    torch.manual_seed(0)
    model = tr.make_cnn4(1, 4, 28)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(10, 1, 28, 28)
    labels = torch.randint(0, 4, (10,))
    state, n, loss = tr.local_train(model, global_state, images, labels, steps=3, batch_size=4,
                                    lr=0.0, momentum=0.9, weight_decay=0.0, seed=1)
    assert n == 10 and np.isfinite(loss)
    param_names = {k for k, _ in model.named_parameters()}
    for k, v in state.items():
        if k in param_names:
            torch.testing.assert_close(v, global_state[k], rtol=0, atol=0)
    assert not torch.equal(state["features.0.1.running_mean"],
                           global_state["features.0.1.running_mean"])
    assert not torch.equal(state["features.3.1.running_var"],
                           global_state["features.3.1.running_var"])
    assert int(state["features.0.1.num_batches_tracked"]) == 3


def test_local_train_moves_parameters_with_positive_lr():
    torch.manual_seed(0)
    model = tr.make_cnn4(3, 10, 32)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    state, _, _ = tr.local_train(model, global_state, images, labels, steps=2, batch_size=4,
                                 lr=0.1, momentum=0.9, weight_decay=1e-4, seed=0)
    assert not torch.equal(state["linear.weight"], global_state["linear.weight"])


def test_fedavg_matches_numpy_weighted_average():
    rng = np.random.default_rng(0)
    weights = [3, 1, 6]
    states = [{"w": torch.tensor(rng.normal(size=(2, 3)), dtype=torch.float32),
               "running_var": torch.tensor(rng.uniform(size=4), dtype=torch.float32),
               "num_batches_tracked": torch.tensor(t, dtype=torch.int64)}
              for t in (5, 5, 7)]
    out = tr.fedavg(states, weights)
    for key in ("w", "running_var"):
        expected = sum(w * s[key].numpy().astype(np.float64) for w, s in zip(weights, states)) / 10
        np.testing.assert_allclose(out[key].numpy(), expected, rtol=1e-6)
        assert out[key].dtype == torch.float32
    # (3*5 + 1*5 + 6*7) / 10 = 6.2 -> 6
    assert out["num_batches_tracked"].dtype == torch.int64
    assert int(out["num_batches_tracked"]) == 6


def test_fedavg_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="one weight per state"):
        tr.fedavg([{"w": torch.zeros(1)}], [1, 2])


def test_time_round_returns_documented_keys():
    result = tr.time_round(num_clients=2, steps=1, batch_size=2, image_size=28, channels=1,
                           num_classes=3, repeats=2, warmup=0, threads=1)
    assert set(result) >= {"backend", "round_seconds", "sec_per_round", "samples_per_sec",
                           "torch_version", "threads", "num_clients", "steps", "batch_size"}
    assert len(result["round_seconds"]) == 2
    assert result["threads"] == 1
    assert result["samples_per_sec"] == pytest.approx(2 * 1 * 2 / result["sec_per_round"])


def test_flower_reference_has_the_same_surface():
    assert isinstance(flower_reference.available(), bool)
    if not flower_reference.available():
        with pytest.raises(RuntimeError, match="flwr"):
            flower_reference.time_round(2, 1, 2)


def test_cnn4_flops_per_sample_by_hand():
    # 32 px, 3 -> 64 channels; forward = 2 * MACs with every (padded) tap counted.
    conv1 = 2 * 32 * 32 * 9 * 3 * 64
    conv2 = 2 * 16 * 16 * 9 * 64 * 64
    conv3 = 2 * 8 * 8 * 9 * 64 * 64
    conv4 = 2 * 4 * 4 * 9 * 64 * 64
    linear = 2 * 256 * 10
    forward = conv1 + conv2 + conv3 + conv4 + linear
    assert common.cnn4_flops_per_sample(32, 3, 10, train=False) == forward == 28_316_672
    # Training: 3x forward, minus the first conv's input gradient.
    assert common.cnn4_flops_per_sample(32, 3, 10, train=True) == 3 * forward - conv1
    # 28 px: 28 -> 14 -> 7 -> 3 -> 1.
    forward28 = 2 * 9 * (28 * 28 * 1 * 64 + (14 * 14 + 7 * 7 + 3 * 3) * 64 * 64) + 2 * 64 * 10
    assert common.cnn4_flops_per_sample(28, 1, 10, train=False) == forward28


def test_cnn4_forward_flops_match_xla_cost_analysis():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def xla_flops(f, *args):
        cost = jax.jit(f).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"]

    # XLA counts only kernel taps that land on the image (no padding).
    layers = common.cnn4_forward_flops_by_layer(32, 3, 10, include_padding=False)
    shapes = [(32, 3), (16, 64), (8, 64), (4, 64)]
    for (name, flops), (size, cin) in zip(layers, shapes):
        x = jnp.zeros((1, cin, size, size), jnp.float32)
        w = jnp.zeros((64, cin, 3, 3), jnp.float32)
        assert xla_flops(conv, x, w) == flops, name
    assert layers[-1][0] == "linear"
    assert xla_flops(jnp.dot, jnp.zeros((1, 256)), jnp.zeros((256, 10))) == layers[-1][1]


def test_markdown_table_formatting():
    rows = [{"name": "torch", "sec": 1.234567, "n": 10},
            {"name": "a|b", "sec": None}]
    assert common.markdown_table(rows, ["name", "sec", "n"]) == (
        "| name | sec | n |\n"
        "| --- | --- | --- |\n"
        "| torch | 1.235 | 10 |\n"
        "| a\\|b |  |  |")


def test_median_and_write_json(tmp_path):
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4, 1, 3, 2]) == 2.5
    path = common.write_json(tmp_path / "sub" / "r.json", {"x": np.float32(1.5), "a": np.arange(2)})
    assert path.read_text().startswith("{")
    assert json.loads(path.read_text()) == {"x": 1.5, "a": [0, 1]}


def test_device_info_has_the_facts():
    info = common.device_info()
    for key in ("date", "cpu_model", "cpu_count", "versions", "jax_backend"):
        assert key in info
    assert info["versions"]["numpy"] == np.__version__
