"""Query strategies of iterative FAL against independent numpy/scipy references on small
hand-made pools (fastjax/active; recipes from raymin0223/LoGo `query_strategies/`)."""

import contextlib
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

from fastjax.active import (
    NEEDS_FEATURES,
    STRATEGIES,
    PoolView,
    alfa_mix_candidates,
    badge_parts,
    badge_sq_distances,
    check_query,
    fit_graph,
    gcn_adjacency,
    kcenter_greedy,
    query,
)
from fastjax.active import gcnal as gcnal_mod

N, D, C, M = 90, 8, 4, 14  # one pool shape for most tests: one compile per kernel
FAST = {"gcnal": {"steps": 30}, "logo": {"n_init": 2}}  # small step / restart counts for tests


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_pool(seed=0, n=N, d=D, c=C, m=M):
    """A client: ReLU features of a pool and a labeled set, a linear head, its softmax,
    the labeled set's oracle labels and the pool's hidden labels (never in the view)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 2.0
    y_pool, y_lab = rng.integers(0, c, n), rng.integers(0, c, m)
    h = np.maximum(centres[y_pool] + rng.normal(size=(n, d)), 0).astype(np.float32)
    hl = np.maximum(centres[y_lab] + rng.normal(size=(m, d)), 0).astype(np.float32)
    w = (rng.normal(size=(d, c)) * 0.7).astype(np.float32)
    bias = (rng.normal(size=c) * 0.1).astype(np.float32)
    logits = (h @ w + bias).astype(np.float32)
    probs = softmax(logits.astype(np.float64)).astype(np.float32)
    # The client's own model (LoGo's local-only model, KAFAL's last local model): another head.
    local_logits = (h @ (w + rng.normal(size=(d, c)).astype(np.float32) * 0.3)).astype(np.float32)
    return dict(probs=probs, feats=h, labeled_feats=hl, labeled_y=y_lab, head_w=w, head_b=bias,
                logits=logits, local_logits=local_logits,
                local_probs=softmax(local_logits.astype(np.float64)).astype(np.float32),
                local_feats=(h * 0.5 + 0.1).astype(np.float32),
                class_counts=np.bincount(y_lab, minlength=c),
                pred_loss=rng.normal(size=n).astype(np.float32), hidden_y=y_pool)


def view_of(pool):
    """What the loop builds from model outputs and oracle answers: no hidden label."""
    return PoolView(pool["probs"], pool["feats"], pool["labeled_feats"], pool["labeled_y"],
                    pool["head_w"], pool["head_b"], pool["logits"], pool["local_probs"], pool["local_feats"],
                    pool["local_logits"], pool["class_counts"], pool["pred_loss"])


POOL = make_pool()
VIEW = view_of(POOL)
KEY = jax.random.key(7)

# ------------------------------------------------------------------ numpy references


def ref_entropy_order(p, b, eps=0.0):
    """LoGo entropy_sampling: s = sum p log p with +-inf logs -> 0; ascending; first b."""
    with np.errstate(divide="ignore"):
        lp = np.log(p.astype(np.float64) + eps)
    lp[np.isinf(lp)] = 0.0
    s = (p * lp).sum(axis=1)
    return np.sort(np.argsort(s, kind="stable")[:b])


def ref_kcenter(x, lab, b):
    """LoGo core_set.furthest_first, float64."""
    x, lab = x.astype(np.float64), lab.astype(np.float64)
    mind = np.full(len(x), np.inf) if len(lab) == 0 else cdist(x, lab).min(axis=1)
    out = []
    for _ in range(b):
        i = int(mind.argmax())
        out.append(i)
        mind = np.minimum(mind, np.linalg.norm(x - x[i], axis=1))
    return np.array(out)


def ref_alfa_candidates(pool, b, caps=(0.2, 0.4, 0.6, 0.8, 1.0)):
    """LoGo alfa_mix closed form, literally: anchors, gradient of CE, alpha, mix, flips."""
    h, w, bias = (pool[k].astype(np.float64) for k in ("feats", "head_w", "head_b"))
    hl, yl = pool["labeled_feats"].astype(np.float64), pool["labeled_y"]
    n, d = h.shape
    y_hat = pool["probs"].argmax(axis=1)
    g = (softmax(h @ w + bias) - np.eye(w.shape[1])[y_hat]) @ w.T
    cand = np.zeros(n, bool)
    for cap in caps:
        eps = cap / np.sqrt(d)
        for c in range(w.shape[1]):
            anchor = (hl[yl == c] if (yl == c).any() else hl).mean(axis=0)
            z = anchor - h
            alpha = (eps * np.linalg.norm(z, axis=1) / np.linalg.norm(g, axis=1))[:, None] * g / (z + 1e-8)
            mix = (1 - alpha) * h + alpha * anchor
            cand |= (mix @ w + bias).argmax(axis=1) != y_hat
        if cand.sum() > b:
            break
    return cand


def ref_adjacency(x):
    """Reference aff_to_adj: x x^T - I, each column / its sum, + I."""
    x = x.astype(np.float64)
    adj = x @ x.T - np.eye(len(x))
    adj = adj @ np.diag(1.0 / adj.sum(axis=0))
    return adj + np.eye(len(x))


# ------------------------------------------------------------------ interface


def test_view_and_signatures_carry_no_pool_labels():
    fields = {f.name for f in dataclasses.fields(PoolView)}
    assert fields == {"probs", "feats", "labeled_feats", "labeled_y", "head_w", "head_b", "logits",
                      "local_probs", "local_feats", "local_logits", "class_counts", "pred_loss"}
    for name, fn in STRATEGIES.items():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["view", "b", "key"], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:]), name
        assert not any("label" in p.name or p.name in ("y", "targets") for p in params), name
    assert NEEDS_FEATURES == {"coreset", "badge", "alfa_mix", "gcnal", "logo"}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_contract(name):
    opts = FAST.get(name, {})
    fn = STRATEGIES[name]
    for b in (1, 9, 37):
        out = fn(VIEW, b, KEY, **opts)
        assert out.dtype == np.int64 and out.shape == (b,), (name, b)
        assert np.all(np.diff(out) > 0), "sorted and distinct"
        assert out.min() >= 0 and out.max() < N
        np.testing.assert_array_equal(out, fn(VIEW, b, KEY, **opts))  # same key, same query
    assert fn(VIEW, 0, KEY, **opts).shape == (0,)
    np.testing.assert_array_equal(fn(VIEW, N, KEY, **opts), np.arange(N))
    with pytest.raises(ValueError, match="outside"):
        fn(VIEW, N + 1, KEY, **opts)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_hidden_labels_of_unselected_samples_change_no_query(name):
    opts = FAST.get(name, {})
    first = STRATEGIES[name](view_of(POOL), 12, KEY, **opts)
    other = dict(POOL, hidden_y=POOL["hidden_y"].copy())
    unselected = np.setdiff1d(np.arange(N), first)
    other["hidden_y"][unselected] = (other["hidden_y"][unselected] + 1) % C
    again = STRATEGIES[name](view_of(other), 12, KEY, **opts)
    np.testing.assert_array_equal(first, again)


@contextlib.contextmanager
def counting_compiles():
    """Counts XLA compiles (lowerings: jitted functions' and eager operations') inside
    the block; cache hits, in memory or on disk, still lower and count."""
    count = [0]

    def listener(name, secs, **kw):
        if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_pool_sizes_of_one_bucket_compile_nothing_new_and_equal_unpadded_results():
    """Clients' pools shrink every AL round: sizes that share a power-of-two bucket reuse
    one compile per strategy (and per budget b), and padding changes no result."""
    from fastjax.active import strategies as S
    from fastjax.active.kafal import _ksas
    from fastjax.active.kmeans import greedy_trials, kmeans
    from fastjax.active.logo import logo_embedding, logo_pick, neg_entropy

    b, sizes = 9, [(N, M), (98, 12), (104, 15)]  # pools 65-128, labeled 9-16, graphs <= 128 nodes
    views = [view_of(make_pool(seed=i, n=n, m=m)) for i, (n, m) in enumerate(sizes)]
    picked = {}
    for name in STRATEGIES:
        STRATEGIES[name](views[0], b, KEY, **FAST.get(name, {}))  # compiles for this bucket
        with counting_compiles() as compiles:
            picked[name] = [STRATEGIES[name](v, b, KEY, **FAST.get(name, {})) for v in views[1:]]
        assert compiles[0] == 0, (name, compiles[0])
    v, (n, _) = views[-1], sizes[-1]
    p, h = np.asarray(v.probs), np.asarray(v.feats)
    keys = np.asarray(jax.random.bits(KEY, (n,), jnp.uint32))
    np.testing.assert_array_equal(picked["random"][-1], np.sort(np.argsort(keys, kind="stable")[:b]))
    np.testing.assert_array_equal(picked["entropy"][-1], ref_entropy_order(p, b))
    np.testing.assert_array_equal(picked["coreset"][-1], np.sort(ref_kcenter(h, np.asarray(v.labeled_feats), b)))
    badge = S._badge(p, h, np.ones(n, bool), KEY, b, S._bucket(b))  # the kernel at the exact size
    np.testing.assert_array_equal(picked["badge"][-1], np.sort(np.asarray(badge)[:b]))
    _, lab, _ = kmeans(logo_embedding(v.local_probs, v.local_feats), b, KEY, n_init=2,
                       local_trials=greedy_trials(b))
    np.testing.assert_array_equal(picked["logo"][-1], logo_pick(np.asarray(lab), np.asarray(neg_entropy(p)), b))
    ksas = np.asarray(_ksas(v.local_logits, v.logits, v.class_counts))
    np.testing.assert_array_equal(picked["kafal"][-1], np.sort(np.argsort(-ksas, kind="stable")[:b]))


def test_check_query_refuses_before_compute():
    with pytest.raises(ValueError, match="unknown query strategy 'bald'"):
        check_query("bald")
    with pytest.raises(ValueError, match="unknown option"):
        check_query("badge", {"temperature": 2})
    with pytest.raises(ValueError, match="variant"):
        check_query("gcnal", {"variant": "both"})
    with pytest.raises(ValueError, match="fill"):
        check_query("alfa_mix", {"fill": "repeat"})
    with pytest.raises(ValueError, match="needs penultimate features"):
        check_query("coreset", has_features=False)
    check_query("entropy", {"eps": 1e-10}, has_features=False)
    no_feats = PoolView(POOL["probs"], None, None, POOL["labeled_y"])
    for name in NEEDS_FEATURES:
        with pytest.raises(ValueError, match="features"):
            query(name, no_feats, 3, KEY)
    with pytest.raises(ValueError, match="labeled_feats must be"):
        PoolView(POOL["probs"], POOL["feats"], POOL["labeled_feats"][:3], POOL["labeled_y"])
    with pytest.raises(ValueError, match="head_w/head_b must be"):
        PoolView(POOL["probs"], POOL["feats"], POOL["labeled_feats"], POOL["labeled_y"],
                 POOL["head_w"].T, POOL["head_b"])
    bad_y = dict(POOL, labeled_y=POOL["labeled_y"] + C)
    with pytest.raises(ValueError, match="labeled_y must be ints"):
        query("alfa_mix", view_of(bad_y), 3, KEY)
    with pytest.raises(ValueError, match="b must be an int"):
        query("random", VIEW, 2.5, KEY)
    empty_labeled = PoolView(POOL["probs"], POOL["feats"], np.zeros((0, D), np.float32),
                             np.zeros(0, np.int64), POOL["head_w"], POOL["head_b"])
    with pytest.raises(ValueError, match="non-empty labeled set"):
        query("alfa_mix", empty_labeled, 3, KEY)


# ------------------------------------------------------------------ random, entropy


def test_random_is_the_b_smallest_random_keys():
    out = STRATEGIES["random"](VIEW, 20, KEY)
    keys = np.asarray(jax.random.bits(KEY, (N,), jnp.uint32))  # exactly N keys, unpadded
    np.testing.assert_array_equal(out, np.sort(np.argsort(keys, kind="stable")[:20]))
    assert not np.array_equal(out, STRATEGIES["random"](VIEW, 20, jax.random.key(8)))


def test_entropy_matches_logo_with_zero_probabilities():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(5, 0.5), size=40)
    p[::3, 1] = 0.0  # exact zeros: log(0) = -inf is guarded
    p[0] = [1, 0, 0, 0, 0]
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    view = PoolView(p, None, None, np.zeros(0, np.int64))
    for b in (1, 7, 39):
        np.testing.assert_array_equal(STRATEGIES["entropy"](view, b, KEY), ref_entropy_order(p, b))
        np.testing.assert_array_equal(STRATEGIES["entropy"](view, b, KEY, eps=1e-10),
                                      ref_entropy_order(p, b, 1e-10))


# ------------------------------------------------------------------ coreset


@pytest.mark.parametrize("m", [0, M, 300])  # no labeled set, one block, several blocks
def test_coreset_is_greedy_k_center(m):
    rng = np.random.default_rng(m)
    x = rng.normal(size=(N, D)).astype(np.float32)
    lab = rng.normal(size=(m, D)).astype(np.float32)
    np.testing.assert_array_equal(kcenter_greedy(x, lab, 15), ref_kcenter(x, lab, 15))
    view = PoolView(softmax(rng.normal(size=(N, C))).astype(np.float32), x, lab,
                    rng.integers(0, C, m))
    np.testing.assert_array_equal(STRATEGIES["coreset"](view, 15, KEY), np.sort(ref_kcenter(x, lab, 15)))


def test_coreset_is_exact_under_a_large_common_offset():
    # Features far from the origin (as after a ReLU with a large bias): float32's
    # expanded form loses small distances unless the points are centred first.
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(N, D)) + 3e3).astype(np.float32)
    lab = (rng.normal(size=(M, D)) + 3e3).astype(np.float32)
    np.testing.assert_array_equal(kcenter_greedy(x, lab, 30), ref_kcenter(x, lab, 30))


def test_coreset_never_repeats_on_duplicates():
    x = np.zeros((N, D), np.float32)  # every pool point on the labeled point
    out = kcenter_greedy(x, np.zeros((2, D), np.float32), 10)
    assert len(set(out.tolist())) == 10


# ------------------------------------------------------------------ BADGE


def materialised_embedding(p, h):
    q = np.eye(p.shape[1])[p.argmax(axis=1)] - p
    return (q[:, :, None] * h[:, None, :]).reshape(len(p), -1)  # block c = q_c h (LoGo)


def test_badge_factorised_distances_equal_materialised():
    p, h = POOL["probs"], POOL["feats"]
    g = materialised_embedding(p.astype(np.float64), h.astype(np.float64))
    q, hh = badge_parts(p, h)
    got = np.asarray(badge_sq_distances(q, hh, q, hh))
    want = cdist(g, g, "sqeuclidean")
    scale = (np.linalg.norm(g, axis=1) ** 2).max()
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


def test_badge_first_centre_is_the_largest_gradient_embedding():
    g = materialised_embedding(POOL["probs"].astype(np.float64), POOL["feats"].astype(np.float64))
    for seed in range(3):
        out = STRATEGIES["badge"](VIEW, 1, jax.random.key(seed))
        assert out.tolist() == [int(np.linalg.norm(g, axis=1).argmax())]


def test_badge_second_centre_follows_d_squared():
    rng = np.random.default_rng(11)
    n = 7
    p = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    h = rng.normal(size=(n, 4)).astype(np.float32)
    view = PoolView(p, h, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    g = materialised_embedding(p.astype(np.float64), h.astype(np.float64))
    first = int(np.linalg.norm(g, axis=1).argmax())
    d2 = ((g - g[first]) ** 2).sum(axis=1)
    expected = d2 / d2.sum()
    trials = 1500
    counts = np.zeros(n)
    for seed in range(trials):
        out = STRATEGIES["badge"](view, 2, jax.random.key(seed))
        assert first in out
        counts[out[out != first][0]] += 1
    assert counts[first] == 0
    keep = np.arange(n) != first
    _, pval = stats.chisquare(counts[keep], expected[keep] * trials)
    assert pval > 1e-3, (counts, expected * trials)


def test_badge_no_duplicates_when_points_coincide():
    p = np.tile(np.array([[0.7, 0.2, 0.1]], np.float32), (N, 1))
    h = np.ones((N, D), np.float32)
    h[:5] *= 2.0  # five distinct points, then only copies of the first centre remain
    view = PoolView(p, h, np.zeros((0, D), np.float32), np.zeros(0, np.int64))
    out = STRATEGIES["badge"](view, 20, KEY)
    assert len(set(out.tolist())) == 20


# ------------------------------------------------------------------ ALFA-Mix


@pytest.mark.parametrize("b", [1, 5, 30, 80])
def test_alfa_mix_candidates_equal_numpy_closed_form(b):
    want = ref_alfa_candidates(POOL, b)
    assert 0 < want.sum() < N  # a non-trivial candidate set
    np.testing.assert_array_equal(alfa_mix_candidates(VIEW, b), want)


def test_alfa_mix_anchor_falls_back_to_the_labeled_mean():
    pool = dict(POOL, labeled_y=np.zeros(M, np.int64))  # classes 1..C-1 have no labeled point
    np.testing.assert_array_equal(alfa_mix_candidates(view_of(pool), 5), ref_alfa_candidates(pool, 5))


def test_alfa_mix_selects_from_candidates_then_fills():
    cand = np.flatnonzero(ref_alfa_candidates(POOL, 5))
    small = STRATEGIES["alfa_mix"](VIEW, 5, KEY)  # more candidates than b: one per cluster
    assert set(small.tolist()) <= set(cand.tolist())
    cand = np.flatnonzero(ref_alfa_candidates(POOL, N))  # every cap
    b = len(cand) + 3  # fewer candidates than b: one per distinct feature row, then a random fill
    assert b < N
    # ReLU features: rows with one positive entry normalise to the same unit vector and
    # all-zero rows to 0; identical normalised rows share one cluster.
    h = POOL["feats"][cand] / np.maximum(np.linalg.norm(POOL["feats"][cand], axis=1, keepdims=True), 1e-12)
    kept = cand[np.unique(h, axis=0, return_index=True)[1]]
    assert kept.size < cand.size
    big = STRATEGIES["alfa_mix"](VIEW, b, KEY)
    assert set(kept.tolist()) <= set(big.tolist()) and big.size == b
    repl = STRATEGIES["alfa_mix"](VIEW, b, KEY, fill="with_replacement")
    assert set(kept.tolist()) <= set(repl.tolist()) and repl.size <= b


def test_alfa_mix_keeps_one_of_duplicated_candidates_like_the_reference():
    """At most b candidates: the reference's KMeans(k = #candidates) puts exact
    duplicates in one cluster and keeps its first member; the rest is filled at random."""
    from fastjax.active.strategies import alfa_mix_cluster_picks
    from tests.test_active_math import np_kmeans_sklearn

    half = make_pool(seed=5, n=N // 2)
    half["feats"] = half["feats"] + 0.05  # no zero entries: distinct rows normalise apart
    rows = ("probs", "feats", "logits", "local_logits", "local_probs", "local_feats", "pred_loss", "hidden_y")
    pool = dict(half, **{k: np.concatenate([half[k], half[k]]) for k in rows})  # row i + N/2 == row i
    b = N - 10
    cand = np.flatnonzero(ref_alfa_candidates(pool, b))
    assert 0 < cand.size <= b and np.isin(cand + N // 2, cand)[cand < N // 2].all()
    h = pool["feats"][cand] / np.linalg.norm(pool["feats"][cand], axis=1, keepdims=True)
    # The reference, run on them: sklearn's KMeans (numpy transcription), one pick per
    # non-empty cluster, the member nearest its centre (the first on ties).
    lab, _ = np_kmeans_sklearn(h, cand.size, np.random.default_rng(0))
    d = ((h[:, None] - np.stack([h[lab == c].mean(0) for c in np.unique(lab)])[None]) ** 2).sum(-1)
    ref = sorted(np.flatnonzero(lab == c)[d[lab == c, i].argmin()] for i, c in enumerate(np.unique(lab)))
    picks = alfa_mix_cluster_picks(h, b, KEY)
    np.testing.assert_array_equal(picks, ref)
    np.testing.assert_array_equal(cand[picks], cand[cand < N // 2])  # the first copy of each pair
    out = STRATEGIES["alfa_mix"](view_of(pool), b, KEY)
    assert out.size == b and set(cand[picks].tolist()) <= set(out.tolist())


# ------------------------------------------------------------------ GCNAL


def test_gcn_adjacency_equals_reference_formula():
    x = np.asarray(gcnal_mod.normalize_rows(POOL["feats"][:30]))
    np.testing.assert_allclose(np.asarray(gcn_adjacency(x)), ref_adjacency(x), rtol=1e-4, atol=1e-5)


def test_adjacency_matmul_equals_dense_product_with_padding():
    x = np.asarray(gcnal_mod.normalize_rows(POOL["feats"][:30]))
    v = np.random.default_rng(2).normal(size=(30, 3)).astype(np.float32)
    xp, vp = np.zeros((40, D), np.float32), np.zeros((40, 3), np.float32)
    xp[:30], vp[:30] = x, v
    vp[30:] = 5.0  # padded rows carry garbage: it must not reach the real rows
    real = (np.arange(40) < 30).astype(np.float32)
    col = gcnal_mod._column_sums(xp, real)
    got = np.asarray(gcnal_mod.adjacency_matmul(xp, col, vp, real))[:30]
    np.testing.assert_allclose(got, ref_adjacency(x) @ v, rtol=1e-4, atol=1e-4)


def test_gcn_loss_falls_and_forward_matches_numpy():
    fit = fit_graph(VIEW, KEY, steps=30)
    assert fit.losses.shape == (30,) and np.all(np.isfinite(fit.losses))
    assert fit.losses[-5:].mean() < 0.95 * fit.losses[:5].mean()
    x = np.asarray(fit.x, np.float64)
    a = ref_adjacency(x)
    w = {k: np.asarray(v, np.float64) for k, v in fit.params.items()}
    hid = np.maximum(a @ x @ w["w1"] + w["b1"], 0)
    logit = (a @ hid @ w["w3"])[:, 0] + w["b3"][0]
    np.testing.assert_allclose(np.asarray(fit.hidden), hid, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(fit.logit), logit, rtol=1e-3, atol=1e-4)
    ref_loss = -np.log(1 / (1 + np.exp(-logit[N:]))).mean() - 1.2 * np.log(1 - 1 / (1 + np.exp(-logit[:N]))).mean()
    assert abs(float(gcnal_mod.gcn_loss(fit.logit, np.arange(N + M) >= N, np.arange(N + M) < N, 1.2))
               - ref_loss) < 1e-4


def test_gcnal_selection_rules():
    b = 9
    fit = fit_graph(VIEW, KEY, steps=30)
    scores = 1 / (1 + np.exp(-np.asarray(fit.logit, np.float64)))
    gap = np.abs(scores[:N] - 0.1)
    np.testing.assert_array_equal(STRATEGIES["gcnal"](VIEW, b, KEY, variant="uncertain", steps=30),
                                  np.sort(np.argsort(gap, kind="stable")[:b]))
    emb = np.concatenate([np.asarray(fit.hidden), np.asarray(fit.logit)[:, None]], axis=1)
    np.testing.assert_array_equal(STRATEGIES["gcnal"](VIEW, b, KEY, variant="core", steps=30),
                                  np.sort(ref_kcenter(emb[:N], emb[N:], b)))
    x = np.asarray(fit.x)
    np.testing.assert_array_equal(
        STRATEGIES["gcnal"](VIEW, b, KEY, coregcn_features="backbone", steps=30),
        np.sort(ref_kcenter(x[:N], x[N:], b)))


def test_gcnal_subset_caps_the_graph():
    fit = fit_graph(VIEW, KEY, subset_size=88, steps=30)
    assert fit.subset.size == 88 and np.all(np.diff(fit.subset) > 0) and fit.x.shape[0] == 88 + M
    out = STRATEGIES["gcnal"](VIEW, 10, KEY, subset_size=88, steps=30)
    assert set(out.tolist()) <= set(fit.subset.tolist())
    with pytest.raises(ValueError, match="subset_size"):
        STRATEGIES["gcnal"](VIEW, 89, KEY, subset_size=88, steps=30)


# ------------------------------------------------------------------ LoGo, KAFAL, LL4AL as registry entries


def test_training_strategies_read_their_view_fields():
    from fastjax.active.kafal import ksas_scores
    from fastjax.active.logo import logo_select

    b = 9
    np.testing.assert_array_equal(
        STRATEGIES["logo"](VIEW, b, KEY, n_init=2),
        logo_select(POOL["local_probs"], POOL["local_feats"], POOL["probs"], b, KEY, n_init=2))
    d = np.asarray(ksas_scores(POOL["local_logits"], POOL["logits"], POOL["class_counts"]), np.float64)
    np.testing.assert_array_equal(STRATEGIES["kafal"](VIEW, b, KEY), np.sort(np.argsort(-d, kind="stable")[:b]))
    # LL4AL with the whole pool as its scored subset: the top-b predicted losses.
    np.testing.assert_array_equal(STRATEGIES["ll4al"](VIEW, b, KEY, subset_size=N),
                                  np.sort(np.argsort(-POOL["pred_loss"], kind="stable")[:b]))
    sub = STRATEGIES["ll4al"](VIEW, b, KEY, subset_size=20)  # the reference's random subset
    assert sub.size == b and np.unique(sub).size == b
    bare = view_of({**POOL, **{k: None for k in ("logits", "local_probs", "local_feats", "local_logits",
                                                 "class_counts", "pred_loss")}})
    for name, what in (("logo", "local-only"), ("kafal", "logits"), ("ll4al", "loss-prediction")):
        with pytest.raises(ValueError, match=what):
            STRATEGIES[name](bare, b, KEY)
