"""FAST on CIFAR-10, the paper's setting: 10 clients, Dirichlet(0.1), 1% labeled seed,
20% labeling budget, SigLIP ViT-B/16 embeddings, CNN-4 trained by FedAvg for 100 rounds.

    python -m fastjax.main --config configs/cifar10.py --workdir runs/cifar10

Needs CIFAR-10 under data.root (or $FASTJAX_DATA_ROOT) and SigLIP weights under
encoder.checkpoint (or $FASTJAX_WEIGHTS/siglip/base-patch16-224). Offline stand-in:
--config.encoder.name=efficientnet_lite0. Budget 5%: --config.labeling.budget=0.05;
IID / inter-class diversity: --config.partition.scheme=iid|logo; FedProx / FedNova:
--config.train.aggregator=fedprox --config.train.prox_mu=0.01 | fednova.
"""

from fastjax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10"
    return c
