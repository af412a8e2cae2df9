"""Iterative federated active learning: query strategies over one client's pool.

    from fastjax.active import STRATEGIES, PoolView, check_query, query
    view = PoolView(probs, feats, labeled_feats, labeled_y, head_w, head_b)
    check_query("gcnal", {"variant": "uncertain"}, has_features=True)   # before any compute
    picked = query("gcnal", view, b, key, variant="uncertain")          # sorted pool positions

Every entry of `STRATEGIES` is `fn(view, b, key, **options) -> np.ndarray` of b distinct,
sorted int64 positions into that client's unlabeled pool (`strategies` module docstring).
`NEEDS_FEATURES` names the strategies that need penultimate features, `NEEDS_HEAD` those
that also need the final linear layer, `NEEDS_LABELED` those that need a non-empty
labeled set.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import numpy as np

from fastjax.active import gcnal as _gcnal
from fastjax.active import kafal as _kafal
from fastjax.active import ll4al as _ll4al
from fastjax.active import logo as _logo
from fastjax.active import strategies as _s
from fastjax.active.gcnal import GraphFit, fit_graph, gcn_adjacency
from fastjax.active.strategies import (
    PoolView,
    alfa_mix_candidates,
    badge_parts,
    badge_sq_distances,
    kcenter_greedy,
)

STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "random": _s.random_sampling,
    "entropy": _s.entropy,
    "coreset": _s.coreset,
    "badge": _s.badge,
    "alfa_mix": _s.alfa_mix,
    "gcnal": _gcnal.gcnal,
    # The three that change training or need more than the global model (issue #10):
    "logo": _logo.logo_query,
    "kafal": _kafal.kafal_query,
    "ll4al": _ll4al.ll4al_query,
}
NEEDS_FEATURES = {"coreset", "badge", "alfa_mix", "gcnal", "logo"}
# What the loop must build before these query: a local-only model per client (LoGo), the
# clients' models after their last local update (KAFAL), the loss-prediction module's
# output (LL4AL); and the local objective their training uses.
NEEDS_LOCAL_ONLY = {"logo"}
NEEDS_CLIENT_MODELS = {"kafal"}
NEEDS_LOSS_MODULE = {"ll4al"}
OBJECTIVES = {"kafal": "kcfu", "ll4al": "ll4al"}
NEEDS_HEAD = {"alfa_mix"}
NEEDS_LABELED = {"alfa_mix", "gcnal", "logo", "kafal"}

# Option-value checks that run before any compute (each strategy also runs its own).
def _positive_ints(name: str, **values) -> None:
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {key}={v!r} must be an int >= 1")


_OPTION_CHECKS: dict[str, Callable[..., None]] = {
    "entropy": _s._check_entropy,
    "alfa_mix": _s._check_alfa_mix,
    "gcnal": _gcnal._check_gcnal,
    "logo": lambda **o: _positive_ints("logo", **o),  # n_init, max_iter
    "ll4al": lambda **o: _positive_ints("ll4al", **o),  # subset_size
}


def options_of(name: str) -> dict[str, Any]:
    """The keyword options of strategy `name` with their defaults."""
    params = inspect.signature(STRATEGIES[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_query(name: str, options: Mapping[str, Any] | None = None, *, has_features: bool = True,
                has_head: bool = True) -> None:
    """Raises a one-line ValueError for an unknown strategy, an unknown or bad option, or a
    strategy that needs what the model lacks (features, head); computes nothing."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown query strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    options = dict(options or {})
    allowed = options_of(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(allowed) or 'none'}")
    if name in _OPTION_CHECKS:
        _OPTION_CHECKS[name](**options)
    if name in NEEDS_FEATURES and not has_features:
        raise ValueError(f"{name} needs penultimate features, which this model does not expose; "
                         "choose a model with features or random/entropy")
    if name in NEEDS_HEAD and not has_head:
        raise ValueError(f"{name} needs the model's final linear layer (head_w, head_b)")


def query(name: str, view: PoolView, b: int, key, **options) -> np.ndarray:
    """Checks (`check_query`) and runs strategy `name` on one client's view."""
    check_query(name, options, has_features=view.feats is not None, has_head=view.head_w is not None)
    return STRATEGIES[name](view, b, key, **options)


__all__ = [
    "NEEDS_CLIENT_MODELS", "NEEDS_FEATURES", "NEEDS_HEAD", "NEEDS_LABELED", "NEEDS_LOCAL_ONLY",
    "NEEDS_LOSS_MODULE", "OBJECTIVES", "STRATEGIES", "GraphFit", "PoolView",
    "alfa_mix_candidates", "badge_parts", "badge_sq_distances", "check_query", "fit_graph",
    "gcn_adjacency", "kcenter_greedy", "options_of", "query",
]
