"""Named protocols of the iterative federated active-learning loop, and its checks.

A preset is a set of config overrides; `configs/<dataset>_active.py:<preset>` applies
one (`apply_preset`), and command-line overrides come after it. Sources:

| preset          | source                                   | setting |
|-----------------|------------------------------------------|---------|
| `logo`          | LoGo (Kim et al., CVPR 2023), raymin0223/LoGo `main.py`, `util/args.py`, `util/misc.py`, `run_exp.sh` | initial 5% (equal per client), +5% per AL round, 100 FL rounds per AL round, model re-initialised every AL round, 5 local epochs, batch 64, SGD lr 0.01 / momentum 0.9 / wd 1e-5, lr x0.1 once the 0-indexed round > 75, `dir_balance` partition (`partition.scheme=logo`; its code's cell counts exactly: `partition.rounding=logo_code`), 16 AL rounds (CIFAR-10's end ratio 0.8) |
| `fast_official` | FAST-official `baselines/main.py`, `config.yaml` | Dirichlet(0.1) (unequal sizes), initial 5%, +5% per AL round up to 40% (8 AL rounds of 100 FL rounds), the global model continues across AL rounds, constant lr 0.01, batch 128, wd 1e-4, 5 local epochs. Its default model is its ResNet-8 (`model.name=resnet8_fast`); the preset keeps the config's model so that baselines and FAST train the same network |
| `paper_table1`  | FAST paper, Table I and Sec. IV-A        | inter-class diversity partition (`logo`), initial 5%, +5% per AL round, R = 4 AL rounds x 100 FL rounds (R = 8: `--config.active.rounds=8`), global model as query selector, the config's training settings (matched with FAST's) |
| `paper_fig2`    | FAST paper, Fig. 2 / Fig. 3              | Dirichlet(0.1), 10% initial, +5% every 50 FL rounds up to 35%: 6 AL rounds x 50 FL rounds = 300 FL rounds |

Where the reference code departs from its paper the choice is an option (the `active.*`
and `partition.*` keys of fastjax/config.py) and the paper is the default.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    "logo": {
        "partition.scheme": "logo", "active.initial": 0.05, "active.query": 0.05, "active.rounds": 16,
        "active.reset": "random_init", "train.rounds": 100, "train.local_epochs": 5, "train.local_steps": 0,
        "train.batch_size": 64, "train.lr": 0.01, "train.momentum": 0.9, "train.weight_decay": 1e-5,
        "train.lr_drop_at": 0.75, "train.lr_drop_factor": 0.1, "train.lr_decay": 1.0, "train.lr_decay_every": 0,
    },
    "fast_official": {
        "partition.scheme": "dirichlet", "partition.alpha": 0.1, "active.initial": 0.05, "active.query": 0.05,
        "active.rounds": 8, "active.reset": "continue", "train.rounds": 100, "train.local_epochs": 5,
        "train.local_steps": 0, "train.batch_size": 128, "train.lr": 0.01, "train.momentum": 0.9,
        "train.weight_decay": 1e-4, "train.lr_drop_at": 0.0, "train.lr_decay": 1.0, "train.lr_decay_every": 0,
    },
    "paper_table1": {
        "partition.scheme": "logo", "active.initial": 0.05, "active.query": 0.05, "active.rounds": 4,
        "active.query_model": "global", "train.rounds": 100,
    },
    "paper_fig2": {
        "partition.scheme": "dirichlet", "partition.alpha": 0.1, "active.initial": 0.10, "active.query": 0.05,
        "active.rounds": 6, "active.query_model": "global", "train.rounds": 50,
    },
}
RESETS = ("random_init", "continue")
LOGO_QUERY_MODELS = ("local+global", "global_only")
QUERY_MODELS = ("global", "local_only")


def apply_preset(config, name: str):
    """Apply preset `name` ("" = none) to `config` in place and record it; returns config."""
    if not name:
        return config
    if name not in PRESETS:
        raise ValueError(f"active preset {name!r} is not known; choose one of {sorted(PRESETS)} "
                         "(e.g. --config configs/cifar10_active.py:logo)")
    for key, value in PRESETS[name].items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    config.method = "active"
    config.active.preset = name
    return config


def budget_fractions(initial: float, query: float, rounds: int) -> list[float]:
    """Cumulative labeled fraction after each AL round's query: initial, initial + query, ..."""
    return [initial + query * a for a in range(rounds)]


def config_errors(config) -> list[str]:
    """Problems of the `active` section, for `fastjax.config.validate`."""
    from fastjax.active import STRATEGIES, check_query

    a, errs = config.active, []
    if a.preset and a.preset not in PRESETS:
        errs.append(f"active.preset={a.preset!r} is not known; choose one of {sorted(PRESETS)}")
    if a.strategy not in STRATEGIES:
        errs.append(f"active.strategy={a.strategy!r} is not known; choose one of {sorted(STRATEGIES)}")
    else:
        try:
            check_query(a.strategy, strategy_options(config))
        except ValueError as e:
            errs.append(f"active.* option of {a.strategy}: {e}")
    if a.logo_query_models not in LOGO_QUERY_MODELS:
        errs.append(f"active.logo_query_models={a.logo_query_models!r}; choose one of {LOGO_QUERY_MODELS}")
    if a.local_only_epochs < 1 or not 0 < a.local_only_stop <= 1:
        errs.append("active.local_only_epochs must be >= 1 and active.local_only_stop in (0, 1]")
    if a.kafal_partner not in ("single", "permuted"):
        errs.append(f"active.kafal_partner={a.kafal_partner!r}; choose 'single' (the reference) or 'permuted'")
    if a.ll4al_lam < 0 or a.ll4al_xi < 0 or not 0 <= a.ll4al_detach_at <= 1:
        errs.append("active.ll4al_lam and active.ll4al_xi must be >= 0, active.ll4al_detach_at in [0, 1]")
    if a.strategy == "ll4al" and config.model.name == "linear":
        errs.append("active.strategy='ll4al' taps intermediate feature maps, which the linear probe does not "
                    "have; choose model.name=cnn4, resnet8_fast or resnet8_preact")
    if a.reset not in RESETS:
        errs.append(f"active.reset={a.reset!r}; choose one of {RESETS}")
    if a.query_model not in QUERY_MODELS:
        errs.append(f"active.query_model={a.query_model!r}; choose one of {QUERY_MODELS}")
    elif a.query_model == "local_only" and a.strategy in ("logo", "kafal", "ll4al"):
        errs.append(f"active.query_model='local_only' is LoGo's ablation for the strategies that only "
                    f"score; {a.strategy} chooses its own models (logo: active.logo_query_models; kafal: "
                    "the clients' last local models; ll4al: the global loss module)")
    if a.rounds < 1:
        errs.append(f"active.rounds={a.rounds} must be >= 1 (AL rounds)")
    if not 0 < a.initial <= 1:
        errs.append(f"active.initial={a.initial} is the fraction labeled at random in AL round 1; "
                    "it must be in (0, 1]")
    if not 0 <= a.query <= 1:
        errs.append(f"active.query={a.query} is the fraction queried per AL round; it must be in [0, 1]")
    if a.rounds >= 1 and 0 < a.initial and a.initial + a.query * (a.rounds - 1) > 1 + 1e-9:
        errs.append(f"active.initial={a.initial} + (active.rounds-1)={a.rounds - 1} x active.query={a.query} "
                    f"= {a.initial + a.query * (a.rounds - 1):.2f} of the training set, more than all of it; "
                    "lower active.rounds or active.query")
    if a.pool_batch_size < 1:
        errs.append(f"active.pool_batch_size={a.pool_batch_size} must be >= 1")
    return errs


def strategy_options(config) -> dict:
    """The chosen strategy's keyword options, from the `active.*` config keys."""
    a = config.active
    return {
        "entropy": {"eps": a.entropy_eps},
        "alfa_mix": {"fill": a.alfa_fill},
        "gcnal": {"variant": a.gcnal_variant, "coregcn_features": a.gcnal_features,
                  "subset_size": a.gcnal_subset, "steps": a.gcnal_steps},
        "logo": {"n_init": a.logo_n_init},
        "ll4al": {"subset_size": a.ll4al_subset},
    }.get(a.strategy, {})
