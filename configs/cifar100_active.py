"""The iterative federated active-learning baselines on CIFAR-100, the loop FAST is compared
against (FAST paper, Table I: 10 clients, CNN-4, FedAvg, the global model as query
selector, 5% initial + 5% per AL round, R = 4 AL rounds x 100 FL rounds by default).

    python -m fastjax.main --config configs/cifar100_active.py --workdir runs/cifar100_active \
        --config.active.strategy=badge
    python -m fastjax.main --config configs/cifar100_active.py:logo   # a named protocol preset

Presets (paper_table1 by default): fastjax/active/presets.py, with their sources.
Strategies and their options: fastjax.active.STRATEGIES, the active.* keys of
fastjax/config.py. R = 8: --config.active.rounds=8.
"""

from fastjax.active.presets import apply_preset
from fastjax.config import base_config


def get_config(preset: str = "paper_table1"):
    c = base_config()
    c.data.name = "cifar100"
    c.method = "active"
    return apply_preset(c, preset)
