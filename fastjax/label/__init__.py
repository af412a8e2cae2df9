"""Label stage: FAST's two-pass labeling (preliminary weak labels, refinement queries).

    from fastjax.label import label_clients
    result = label_clients(pools, embeddings, oracle, num_classes, budget_fraction=0.05)

Modules: `propagate` (kNN weak labels, Eq. 7 prototype similarity), `uncertainty`
(Eq. 8 and Table VII measures, registry `UNCERTAINTY`), `query` (Eq. 5 budgets,
selection), `fast` (the driver, `LabelingResult`), `filtering` (weak-label confidence,
filtering, verification, soft targets), `quality` (precision by confidence bin,
reliability diagram), `report` (JSON + PNGs).
"""

from fastjax.label.fast import (
    LABELED_SOURCES,
    MERGES,
    SCORE_SOURCES,
    LabelingResult,
    client_training_sets,
    label_clients,
    shared_embedding_bytes,
)
from fastjax.label.filtering import CONFIDENCES, FILTERS, WeakLabelPolicy
from fastjax.label.propagate import TIE_BREAKS, knn_propagate, prototype_similarity
from fastjax.label.query import BUDGET_OF, STRATEGIES, budget_count, client_budgets, select
from fastjax.label.uncertainty import NORMALIZE, UNCERTAINTY, uncertainty, vote_uncertainty

__all__ = [
    "BUDGET_OF", "CONFIDENCES", "FILTERS", "LABELED_SOURCES", "MERGES", "NORMALIZE",
    "SCORE_SOURCES", "STRATEGIES", "TIE_BREAKS", "UNCERTAINTY", "LabelingResult",
    "WeakLabelPolicy", "budget_count", "client_budgets", "client_training_sets",
    "knn_propagate", "label_clients", "prototype_similarity", "select",
    "shared_embedding_bytes", "uncertainty", "vote_uncertainty",
]
