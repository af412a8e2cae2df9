"""FAST on DermaMNIST (MedMNIST v2, 7 classes, 28 px): the paper's Table I setting, the
only table with DermaMNIST: LoGo's heterogeneous inter-class diversity partition
(balanced Dirichlet(0.1)), 10 clients, 1% labeled seed per client shared through the
server, 5% labeling budget, SigLIP ViT-B/16 embeddings, CNN-4 trained by FedAvg for 100
rounds (one AL round). Paper: FAST 74.37% (LoGo with 8 AL rounds: 73.33%).

    python -m fastjax.main --config configs/dermamnist.py --workdir runs/dermamnist

Needs the dataset under data.root (or $FASTJAX_DATA_ROOT; see fastjax/data) and SigLIP
weights under encoder.checkpoint (or $FASTJAX_WEIGHTS/siglip/base-patch16-224). Offline
stand-in: --config.encoder.name=efficientnet_lite0 --config.encoder.variant=.
`benchmarks/reproduce.py --table I` runs the table itself.
"""

from fastjax.config import base_config


def get_config():
    c = base_config()
    c.data.name = "dermamnist"
    c.partition.scheme = "logo"
    c.partition.alpha = 0.1
    c.labeling.budget = 0.05
    return c
