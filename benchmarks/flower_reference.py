"""The Flower peer: the same CNN-4 round as `torch_reference`, run by `flwr.simulation`.

What a FAST user gets from Flower's Ray-based simulation (FAST-official is built on it):
`NumPyClient.fit` loads the global ndarrays, runs `torch_reference.local_train` (same CNN-4,
SGD, batch and steps), and returns its full state_dict as ndarrays; `FedAvg` averages them
weighted by sample count. Ray runs the clients as actors, `client_num_cpus` CPUs each (Flower's
default 1, so on 2 cores two clients train at a time, one torch thread each under Ray's
OMP_NUM_THREADS=num_cpus).

Needs `flwr[simulation]` (flwr + ray), which the project does not depend on; install it in a
separate environment with the pinned CPU torch, e.g.

    python3 -m venv ../flwr-venv
    ../flwr-venv/bin/pip install torch==2.13.0 numpy "flwr[simulation]"
    ../flwr-venv/bin/python benchmarks/flower_reference.py --clients 10 --steps 5 --batch 64

Uses the legacy `flwr.simulation.start_simulation` (deprecated since flwr 1.13 in favour of
`flwr run`, still shipped in 1.42), which runs the whole simulation in this process so the
strategy can time each round.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import sys
import time
from typing import Sequence

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, _ROOT)

from benchmarks import common  # noqa: E402


def available() -> bool:
    """Whether `flwr` and `ray` (the `flwr[simulation]` extra) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("flwr", "ray", "torch"))


def _make_client_fn(steps, batch_size, image_size, channels, num_classes, threads):
    """Builds `client_fn(context)`; everything it needs is imported inside (it runs in Ray actors)."""

    def client_fn(context):
        import flwr
        import numpy as np
        import torch

        from benchmarks import torch_reference as tr

        if threads is not None:
            torch.set_num_threads(threads)
        cid = int(context.node_config["partition-id"])
        g = torch.Generator().manual_seed(cid)
        samples = steps * batch_size
        images = torch.randn(samples, channels, image_size, image_size, generator=g)
        labels = torch.randint(0, num_classes, (samples,), generator=g)
        model = tr.make_cnn4(channels, num_classes, image_size)
        keys = list(model.state_dict().keys())

        class Client(flwr.client.NumPyClient):

            def get_parameters(self, config):
                return [v.cpu().numpy() for v in model.state_dict().values()]

            def fit(self, parameters, config):
                # FAST-official's set_parameters: torch.tensor(v) per entry, strict load.
                state = {k: torch.tensor(np.asarray(v)) for k, v in zip(keys, parameters)}
                new_state, n, loss = tr.local_train(
                    model, state, images, labels, steps=steps, batch_size=batch_size,
                    lr=tr.DEFAULT_LR, momentum=tr.DEFAULT_MOMENTUM,
                    weight_decay=tr.DEFAULT_WEIGHT_DECAY,
                    seed=int(config["server_round"]) * 100_003 + cid)
                return [v.numpy() for v in new_state.values()], n, {"loss": loss}

        return Client().to_client()

    return client_fn


def time_round(num_clients: int, steps: int, batch_size: int, image_size: int = 32,
               channels: int = 3, num_classes: int = 10, repeats: int = 5, warmup: int = 1,
               threads: int | None = None, client_num_cpus: float = 1.0) -> dict:
    """Wall-clock of Flower simulation rounds; same arguments and keys as `torch_reference.time_round`.

    Runs `warmup + repeats` rounds of one `start_simulation`; a round is timed by the strategy
    from `configure_fit` to the end of `aggregate_fit` (sending parameters, every client's fit
    in Ray actors, FedAvg). Ray start-up is reported apart, as `total_seconds`.
    `threads` sets torch threads inside each client (None: Ray's OMP_NUM_THREADS).

    Extra keys: flwr_version, ray_version, client_num_cpus, total_seconds.
    """
    if not available():
        raise RuntimeError("flower_reference needs flwr[simulation] (flwr + ray) and torch; "
                           "install them in a separate venv, see this module's docstring.")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1, warmup >= 0.")
    import flwr
    import ray
    import torch

    from benchmarks import torch_reference as tr

    # Ray workers inherit the environment: let them import `benchmarks`.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    round_start: dict[int, float] = {}
    round_seconds: list[float] = []

    class TimedFedAvg(flwr.server.strategy.FedAvg):

        def configure_fit(self, server_round, parameters, client_manager):
            round_start[server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} clients failed: "
                                   f"{failures[0]!r}")
            out = super().aggregate_fit(server_round, results, failures)
            round_seconds.append(time.perf_counter() - round_start[server_round])
            return out

    torch.manual_seed(0)
    init = tr.make_cnn4(channels, num_classes, image_size)
    strategy = TimedFedAvg(
        fraction_fit=1.0, min_fit_clients=num_clients, min_available_clients=num_clients,
        fraction_evaluate=0.0, min_evaluate_clients=0,
        on_fit_config_fn=lambda rnd: {"server_round": rnd},
        initial_parameters=flwr.common.ndarrays_to_parameters(
            [v.numpy() for v in init.state_dict().values()]))
    t0 = time.perf_counter()
    flwr.simulation.start_simulation(
        client_fn=_make_client_fn(steps, batch_size, image_size, channels, num_classes, threads),
        num_clients=num_clients,
        client_resources={"num_cpus": client_num_cpus, "num_gpus": 0.0},
        config=flwr.server.ServerConfig(num_rounds=warmup + repeats),
        strategy=strategy,
        ray_init_args={"ignore_reinit_error": True, "include_dashboard": False,
                       "log_to_driver": False})
    total_seconds = time.perf_counter() - t0
    if len(round_seconds) != warmup + repeats:
        raise RuntimeError(f"Flower ran {len(round_seconds)} of {warmup + repeats} rounds.")
    timed = round_seconds[warmup:]
    sec_per_round = common.median(timed)
    return {
        "backend": "flower",
        "round_seconds": timed,
        "sec_per_round": sec_per_round,
        "samples_per_sec": num_clients * steps * batch_size / sec_per_round,
        "num_clients": num_clients,
        "steps": steps,
        "batch_size": batch_size,
        "image_size": image_size,
        "channels": channels,
        "num_classes": num_classes,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "client_num_cpus": client_num_cpus,
        "total_seconds": total_seconds,
        "torch_version": torch.__version__,
        "flwr_version": flwr.__version__,
        "ray_version": ray.__version__,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32, choices=(28, 32, 64))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads inside each client (default: Ray's OMP_NUM_THREADS)")
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="Ray CPUs per client actor (Flower's default 1)")
    args = parser.parse_args(argv)
    if not available():
        sys.exit("flwr[simulation] is not installed here; see `benchmarks/flower_reference.py`.")
    result = time_round(args.clients, args.steps, args.batch, image_size=args.image_size,
                        channels=args.channels, num_classes=args.classes, repeats=args.repeats,
                        warmup=args.warmup, threads=args.threads, client_num_cpus=args.client_cpus)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
