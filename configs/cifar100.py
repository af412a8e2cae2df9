"""FAST on CIFAR-100, the paper's setting: 10 clients, Dirichlet(0.1), 1% labeled seed,
20% labeling budget, SigLIP ViT-B/16 embeddings, CNN-4 trained by FedAvg for 100 rounds.

    python -m fastjax.main --config configs/cifar100.py --workdir runs/cifar100

Needs the dataset under data.root (or $FASTJAX_DATA_ROOT; see fastjax/data) and SigLIP
weights under encoder.checkpoint (or $FASTJAX_WEIGHTS/siglip/base-patch16-224).
Variants as in configs/cifar10.py (budget 0.05, partition iid|logo, fedprox|fednova).
"""

from fastjax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar100"
    return c
