"""Where an interrupted run picks up: the checkpoint it restores, the metrics rows it
keeps, the communication counted so far.

The rounds in one process (`engine.fit`) and the server of a deployment across sites
(`fastjax.deploy.server`) resume by these same rules, so a run stopped at any round and
rerun ends with the state, metrics and counts of one that never stopped.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Resumed(NamedTuple):
    variables: Any  # the restored global state, or the one given when nothing is resumed
    history: list[dict]  # this segment's metrics rows kept (round_offset < round < start_round)
    start_round: int  # the first round still to run
    comm_mib: float  # MiB communicated up to start_round - 1 (one-off extra bytes included)


def resume(ckpt, metrics, variables, *, last_round: int, round_offset: int = 0,
           extra_comm_mib: float = 0.0, log: Callable[[str], None] = print) -> Resumed:
    """Restore the latest checkpoint after `round_offset` (checked before use; a damaged
    one falls back, see `Checkpoints.validate`) and cut `metrics` (a `MetricsLog`) back to
    it: rows after the resumed state are redone, so they are dropped.

    Rounds are numbered round_offset + 1 ... last_round (several fits can share one work
    directory as segments of one run). Communication continues from the last kept row,
    or from the previous segment's last row plus `extra_comm_mib` (one-off bytes sent
    before this segment's first round, e.g. shared seed embeddings).
    """
    # Read back (and checked) only when it would be resumed: a later segment of the
    # active loop finds its predecessor's checkpoint, which it does not restore.
    step = ckpt.validate() if (ckpt.latest() or 0) > round_offset else None
    resumed_at = round_offset
    if step is not None and step > round_offset:
        if step > last_round:
            raise ValueError(f"{metrics.path.parent} holds a checkpoint of round {step}, beyond the "
                             f"{last_round} rounds asked for; raise train.rounds or start afresh")
        variables = ckpt.restore(step, variables)
        resumed_at = step
        log(f"resumed from the checkpoint of round {step}")
    rows = metrics.truncate(resumed_at)
    history = [r for r in rows if r["round"] > round_offset]
    prior = [r for r in rows if r["round"] <= round_offset]
    comm = history[-1]["comm_mib"] if history else (
        (prior[-1]["comm_mib"] if prior else 0.0) + extra_comm_mib)
    return Resumed(variables, history, resumed_at + 1, comm)
