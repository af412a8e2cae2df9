"""Partition schemes, report and labeled seed: guarantees checked against numpy counts."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from fastjax.partition import (PARTITIONS, Oracle, format_table, make_partition,
                               partition_report, split_seed, write_report)
from fastjax.partition.schemes import balanced_dirichlet_matrix
from fastjax.partition.types import Partition
from fastjax.partition.seed import balanced_counts

C = 10
Y = np.repeat(np.arange(C), 300)          # 3000 balanced labels
Y_TEST = np.repeat(np.arange(C), 100)
Y_SKEW = np.repeat(np.arange(C), np.arange(1, C + 1) * 40)  # imbalanced classes


def _counts(p, y=Y, c=C):
    return np.stack([np.bincount(y[ix], minlength=c) for ix in p.train])


def _make(scheme, y=Y, k=10, seed=0, **kw):
    if scheme == "logo":
        kw.setdefault("test_labels", Y_TEST if y is Y else None)
    return make_partition(scheme, y, k, seed, **kw)


@pytest.mark.parametrize("scheme", sorted(PARTITIONS))
@pytest.mark.parametrize("y", [Y, Y_SKEW], ids=["balanced", "skewed"])
def test_disjoint_cover_sorted_deterministic(scheme, y):
    p = _make(scheme, y, alpha=0.5)
    allix = np.concatenate(p.train)
    np.testing.assert_array_equal(np.sort(allix), np.arange(y.size))  # disjoint + covering
    assert all(ix.dtype == np.int64 and np.all(np.diff(ix) > 0) for ix in p.train)
    assert p.num_clients == 10 and p.scheme == scheme
    assert p.sizes().min() >= 1
    q = _make(scheme, y, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(p.train, q.train))
    r = _make(scheme, y, seed=1, alpha=0.5)
    assert not all(np.array_equal(a, b) for a, b in zip(p.train, r.train))


def test_iid_equal_sizes():
    p = make_partition("iid", Y[:2999], 7, seed=0)
    assert p.sizes().max() - p.sizes().min() <= 1
    assert p.test is None


def test_dirichlet_alpha_controls_skew_and_no_empty_client():
    mean_cls = {}
    for alpha in (100.0, 0.1):
        ncls = [(_counts(_make("dirichlet", seed=s, alpha=alpha)) > 0).sum(1).mean()
                for s in range(3)]
        mean_cls[alpha] = np.mean(ncls)
    assert mean_cls[100.0] > 9.5 and mean_cls[0.1] < 6
    for s in range(5):
        p = make_partition("dirichlet", Y, 20, seed=s, alpha=0.05, min_size=10)
        assert p.sizes().min() >= 10


def test_dirichlet_default_min_size_small_data():
    p = make_partition("dirichlet", np.arange(40) % 4, 8, seed=0, alpha=0.1)
    assert p.sizes().min() >= 2  # default min(10, N // 2K) = 2 here


def test_dirichlet_gives_up_with_clear_error():
    y = np.zeros(100, dtype=np.int64)  # one class: each client needs exactly N/K
    with pytest.raises(ValueError, match="min_size=10.*raise alpha"):
        make_partition("dirichlet", y, 10, seed=0, alpha=0.01, min_size=10)


def test_logo_equal_sizes_and_test_follows_matrix():
    p = _make("logo", alpha=0.5)
    assert p.sizes().max() - p.sizes().min() <= 1
    tsizes = np.array([len(ix) for ix in p.test])
    assert tsizes.max() - tsizes.min() <= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(p.test)), np.arange(Y_TEST.size))
    tr = _counts(p) / p.sizes()[:, None]
    te = np.stack([np.bincount(Y_TEST[ix], minlength=C) for ix in p.test]) / tsizes[:, None]
    same = 0.5 * np.abs(tr - te).sum(1)                  # client k train vs its own test
    other = 0.5 * np.abs(tr - np.roll(te, 1, 0)).sum(1)  # vs another client's test
    assert same.mean() < 0.15 and same.mean() < other.mean() / 3
    assert (tr > 0).sum(1).mean() < 9  # alpha 0.5 is visibly non-iid


def test_logo_matrix_is_balanced():
    m = balanced_dirichlet_matrix(10, 5, 0.1, np.random.default_rng(0))
    np.testing.assert_allclose(m.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(m.sum(0), 2, atol=1e-5)


def test_logo_without_test_labels():
    p = make_partition("logo", Y_SKEW, 7, seed=3, alpha=0.1)
    assert p.test is None and p.sizes().max() - p.sizes().min() <= 1


@pytest.mark.parametrize("k,n", [(10, 2), (7, 3), (20, 1), (5, 10)])
def test_shards_at_most_n_classes(k, n):
    p = make_partition("shards", Y, k, seed=0, classes_per_client=n)
    ncls = (_counts(p) > 0).sum(1)
    assert ncls.max() <= n
    if k * n <= 10 * k:  # every class has <= k shards: exactly n distinct classes
        assert ncls.min() == n


def test_report_counts_and_files(tmp_path):
    p = _make("dirichlet", alpha=0.3)
    r = partition_report(p, Y, C, [f"c{i}" for i in range(C)])
    np.testing.assert_array_equal(np.array(r["class_counts"]), _counts(p))
    assert r["sizes"] == p.sizes().tolist() and r["summary"]["total"] == Y.size
    table = format_table(r)
    assert "client" in table and "c9" in table
    paths = write_report(r, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["class_counts"] == r["class_counts"]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    q = _make("logo", alpha=1.0)
    rq = partition_report(q, Y, C, test_labels=Y_TEST)
    assert sum(rq["test_sizes"]) == Y_TEST.size


# --- labeled seed and oracle

def test_balanced_counts_water_filling():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(balanced_counts(np.array([100, 100, 0, 100]), 9, rng),
                                  [3, 3, 0, 3])
    out = balanced_counts(np.array([1, 50, 50]), 11, rng)
    assert out.tolist() == [1, 5, 5]
    out = balanced_counts(np.array([2, 2, 2]), 2, rng)
    assert out.sum() == 2 and out.max() == 1
    assert balanced_counts(np.array([1, 1, 30]), 10, rng).tolist() == [1, 1, 8]


def test_split_seed_balanced():
    p = make_partition("iid", Y, 5, seed=0)
    pools, oracle = split_seed(p, Y, 0.05, seed=0)
    for pool, ix in zip(pools, p.train):
        assert pool.labeled_idx.size == 30  # 5% of 600
        np.testing.assert_array_equal(np.bincount(pool.labeled_y, minlength=C), [3] * C)
        np.testing.assert_array_equal(pool.labeled_y, Y[pool.labeled_idx])
        np.testing.assert_array_equal(np.union1d(pool.labeled_idx, pool.unlabeled_idx), ix)
        assert np.intersect1d(pool.labeled_idx, pool.unlabeled_idx).size == 0
        assert not hasattr(pool, "unlabeled_y")
    again, _ = split_seed(p, Y, 0.05, seed=0)
    assert all(np.array_equal(a.labeled_idx, b.labeled_idx) for a, b in zip(pools, again))
    assert oracle.annotations == 0


def test_split_seed_random_mode():
    p = make_partition("dirichlet", Y, 4, seed=0, alpha=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pools, _ = split_seed(p, Y, 0.1, mode="random", seed=1)
    for pool, ix in zip(pools, p.train):
        assert pool.labeled_idx.size == round(0.1 * ix.size)
        assert np.isin(pool.labeled_idx, ix).all()


def test_split_seed_warns_naming_missing_classes():
    y = np.array([0] * 50 + [1] * 50 + [2] * 2)
    p = make_partition("iid", y, 1, seed=0)
    with pytest.warns(UserWarning, match=r"client 0.*classes \[\d(, \d)?\]"):
        split_seed(p, y, 0.02, seed=0)  # budget 2 < 3 classes held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_seed(p, y, 0.03, seed=0)  # budget 3: one of each, no warning


def test_oracle_counts_distinct_queries():
    o = Oracle(Y)
    np.testing.assert_array_equal(o.query(np.array([0, 300, 301])), [0, 1, 1])
    o.query(np.array([300, 5]))
    assert o.annotations == 4
    o.labels_for_evaluation(np.arange(100))
    assert o.annotations == 4


# --- bad input fails before compute

@pytest.mark.parametrize("kw,match", [
    (dict(scheme="kmeans"), "allowed.*dirichlet"),
    (dict(scheme="dirichlet", alpha=0.0), "alpha must be > 0"),
    (dict(scheme="logo", alpha=-1.0), "alpha must be > 0"),
    (dict(num_clients=0), "num_clients"),
    (dict(num_clients=5000), "exceeds the 3000"),
    (dict(scheme="shards", classes_per_client=0), r"classes_per_client.*\[1, 10\]"),
    (dict(scheme="shards", classes_per_client=11), r"classes_per_client.*\[1, 10\]"),
    (dict(scheme="shards", num_clients=2, classes_per_client=2), "cannot cover"),
    (dict(scheme="dirichlet", min_size=0), "min_size"),
    (dict(scheme="dirichlet", min_size=400), "min_size"),
])
def test_make_partition_errors(kw, match):
    args = dict(scheme="iid", num_clients=10, alpha=0.1)
    args.update(kw)
    scheme, k = args.pop("scheme"), args.pop("num_clients")
    with pytest.raises(ValueError, match=match):
        make_partition(scheme, Y, k, 0, **args)


def test_bad_labels():
    with pytest.raises(ValueError, match="1-D integer"):
        make_partition("iid", Y.astype(float), 2, 0)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_split_seed_bad_fraction(fraction):
    p = make_partition("iid", Y, 2, seed=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        split_seed(p, Y, fraction)


def test_split_seed_bad_mode():
    p = make_partition("iid", Y, 2, seed=0)
    with pytest.raises(ValueError, match="balanced"):
        split_seed(p, Y, 0.1, mode="stratified")


def _many_small_clients(k=600, per=10, classes=3):
    """k clients of `per` samples each, every client holding `classes` classes."""
    y = np.tile(np.arange(per) % classes, k)
    return Partition("hand", tuple(np.arange(i * per, (i + 1) * per) for i in range(k))), y


def test_split_seed_warns_once_for_many_clients_and_states_effective_fraction():
    """Issue 13, item 14: 600 clients gave 364 warnings and a silently inflated seed."""
    p, y = _many_small_clients()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pools, _ = split_seed(p, y, 0.01, seed=0)
    # Reference by hand: round(0.01 * 10) = 0 -> the minimum of one label per client, so
    # 600 labels of 6,000 samples = 10%, and every client misses 2 of its 3 classes.
    assert [q.labeled_idx.size for q in pools] == [1] * 600
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("600 of 600 clients have a labeled seed that misses classes")
    assert re.search(r"client 0's seed of 1 lacks classes \[\d, \d\]; client 1's", msgs[0])
    assert msgs[1].startswith("seed fraction 0.01 gives 600 labels = 10.0% of the 6,000 "
                              "samples, not 1%")
    assert "600 of the 600 clients" in msgs[1]


def test_split_seed_no_inflation_warning_when_the_fraction_sets_the_size():
    # 10 clients of 300 samples at 1%: 3 labels each, one per class; nothing to report.
    p, y = _many_small_clients(k=10, per=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pools, _ = split_seed(p, y, 0.01, seed=0)
    assert sum(q.labeled_idx.size for q in pools) == 30
    # A few floored clients among large ones change the total by < 10%: still quiet.
    sizes = [1000] * 20 + [10]
    y = np.arange(sum(sizes)) % 2
    starts = np.cumsum([0] + sizes)
    p = Partition("hand", tuple(np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split_seed(p, y, 0.01, seed=0)
    assert not any("rounds to none" in str(w.message) for w in caught)


def _fast_official_seed(labels, ratio, num_classes, seed):
    """FAST-official `get_data` (src/data.py): np.random.seed, per-class np.random.choice."""
    np.random.seed(seed)
    per = int(len(labels) * ratio) // num_classes
    out = []
    for c in range(num_classes):
        out.extend(np.random.choice(np.where(labels == c)[0], per, replace=False))
    return np.array(out[:int(len(labels) * ratio)])


@pytest.mark.parametrize("seed", [0, 1])
def test_central_seed_after_dirichlet_is_class_balanced(seed):
    from fastjax.partition import labeled_pools

    y = np.random.default_rng(5).permutation(np.repeat(np.arange(C), 500))  # N = 5000
    part = make_partition("dirichlet", y, 10, seed, alpha=0.1)
    pools, oracle = labeled_pools(part, y, 0.01, where="central", seed=seed, num_classes=C)
    assert len(pools) == 1
    pool = pools[0]
    # int(0.01 N) // C per class, whatever the clients' skew.
    assert np.bincount(pool.labeled_y, minlength=C).tolist() == [int(0.01 * 5000) // C] * C
    np.testing.assert_array_equal(pool.labeled_y, y[pool.labeled_idx])
    np.testing.assert_array_equal(pool.labeled_idx, _fast_official_seed(y, 0.01, C, seed))
    np.testing.assert_array_equal(pool.unlabeled_idx,
                                  np.setdiff1d(np.arange(5000), pool.labeled_idx))
    assert oracle.annotations == 0
    # Per-client seeds for contrast: Dirichlet(0.1) makes them far from balanced.
    per_client, _ = labeled_pools(part, y, 0.01, where="client", seed=seed)
    pooled = np.bincount(np.concatenate([p.labeled_y for p in per_client]), minlength=C)
    assert pooled.sum() >= 45 and pooled.tolist() != [5] * C


def test_central_seed_errors():
    from fastjax.partition import central_seed

    with pytest.raises(ValueError, match="0 samples per class"):
        central_seed(Y[:500], 0.01, num_classes=C)
    with pytest.raises(ValueError, match="fraction"):
        central_seed(Y, 0.0)


# --- LoGo's own rounding (partition rounding="logo_code")

def _logo_dir_balance(labels, num_users, alpha, sample, py_seed=0):
    """LoGo's `util/data_simulator.py` `dir_balance` (raymin0223/LoGo @536e8cb), line by
    line in numpy: torch float32 -> np.float32, `random.sample` kept. `sample` is the
    K x C Dirichlet draw (theirs comes from torch's RNG); balanced here when `balance`.
    Returns clients_data_num as a K x C array and the balanced matrix."""
    import math
    import random

    random.seed(py_seed)
    C, K = int(labels.max()) + 1, num_users
    clients_data = {i: [] for i in range(K)}
    total_data = {str(i): [] for i in range(C)}
    data_num = np.array([0 for _ in range(C)])
    for idx, y in enumerate(labels):
        total_data[str(y)].append(idx)
        data_num[int(y)] += 1
    clients_data_num = {client: [0] * C for client in range(K)}
    sample = np.array(sample, np.float32)
    rsum, csum = sample.sum(1), sample.sum(0)
    epsilon = min(1, K / C, C / K) / 1000
    if alpha < 10:
        r, c = 1, K / C
        while np.any(rsum <= r - epsilon) or np.any(csum <= c - epsilon):
            sample /= sample.sum(0)
            sample /= sample.sum(1)[:, None]
            rsum, csum = sample.sum(1), sample.sum(0)
    else:
        r, c = C / K, 1
        while np.any(abs(rsum - r) >= epsilon) or np.any(abs(csum - c) >= epsilon):
            sample = sample / sample.sum(1)[:, None]
            sample /= sample.sum(0)
            rsum, csum = sample.sum(1), sample.sum(0)
    x = sample * data_num.astype(np.float32)
    x = np.ceil(x).astype(np.int64)
    x = np.where(x <= 1, 0, x + 1) if alpha < 10 else np.where(x <= 1, 0, x)
    if alpha < 10:
        remain, nums, i = np.inf, math.ceil(len(labels) / K), 0
        while remain != 0:
            i += 1
            for client_idx in clients_data.keys():
                for cls in total_data.keys():
                    tmp_set = random.sample(total_data[cls], min(len(total_data[cls]), x[client_idx, int(cls)]))
                    if len(clients_data[client_idx]) + len(tmp_set) > nums:
                        tmp_set = tmp_set[:nums - len(clients_data[client_idx])]
                    clients_data[client_idx] += tmp_set
                    clients_data_num[client_idx][int(cls)] += len(tmp_set)
                    total_data[cls] = list(set(total_data[cls]) - set(tmp_set))
            remain = sum([len(d) for _, d in total_data.items()])
            if i == 100:
                break
        index = np.where(np.array([sum(clients_data_num[k]) for k in clients_data_num.keys()]) <= nums - 1)[0]
        for client_idx in index:
            n = nums - len(clients_data[client_idx])
            add = 0
            for cls in total_data.keys():
                tmp_set = total_data[cls][:n - add]
                clients_data[client_idx] += tmp_set
                clients_data_num[client_idx][int(cls)] += len(tmp_set)
                total_data[cls] = list(set(total_data[cls]) - set(tmp_set))
                add += len(tmp_set)
    else:
        cumsum = x.T.cumsum(axis=1)
        for cls, data in total_data.items():
            tmp = np.split(np.array(data), list(cumsum[int(cls)]))
            for client_idx in clients_data.keys():
                clients_data[client_idx] += list(tmp[client_idx])
                clients_data_num[client_idx][int(cls)] += len(list(tmp[client_idx]))
    return np.array([clients_data_num[k] for k in range(K)]), sample


@pytest.mark.parametrize("y,k,alpha,seed", [
    (Y, 10, 0.1, 0), (Y, 10, 0.1, 1), (Y_SKEW, 10, 0.5, 2), (Y, 4, 0.1, 3), (Y_SKEW, 20, 1.0, 4),
    (Y, 10, 100.0, 5), (Y_SKEW, 5, 30.0, 6)])
def test_logo_code_rounding_equals_logo_dir_balance_cell_for_cell(y, k, alpha, seed):
    draw = np.random.default_rng(seed).dirichlet(np.full(C, alpha), size=k)  # make_partition's draw
    want, matrix = _logo_dir_balance(y, k, alpha, draw)
    p = make_partition("logo", y, k, seed, alpha=alpha, test_labels=Y_TEST, rounding="logo_code")
    np.testing.assert_array_equal(_counts(p, y), want)
    # The test split: LoGo passes the train split's balanced matrix (no balancing again).
    want_test, _ = _logo_dir_balance(Y_TEST, k, alpha, matrix)
    np.testing.assert_array_equal(np.stack([np.bincount(Y_TEST[ix], minlength=C) for ix in p.test]),
                                  want_test)
    if alpha < 10:  # every sample placed, no client past ceil(N / K)
        np.testing.assert_array_equal(np.sort(np.concatenate(p.train)), np.arange(y.size))
        assert p.sizes().max() <= -(-y.size // k)
    default = make_partition("logo", y, k, seed, alpha=alpha, test_labels=Y_TEST)
    assert not np.array_equal(_counts(default, y), want)  # the two conventions do differ


def test_logo_rounding_is_validated():
    with pytest.raises(ValueError, match=r"rounding='ceil'.*largest_remainder.*logo_code"):
        make_partition("logo", Y, 10, 0, rounding="ceil")
