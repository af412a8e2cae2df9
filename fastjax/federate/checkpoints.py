"""A run's work directory: its identity, its lock, its checkpoints and its metrics log.

Everything that lets an interrupted run resume to the same result, and keeps two runs
from ever mixing, lives here rather than in the round loop:

- `RunDir.open(workdir, config)` takes an exclusive lock on the directory (a second run
  fails at once naming the process that holds it) and compares the config with the one
  the directory was started with (`config.json`): a difference in any result-relevant
  key is refused before any compute, naming the keys; `config.json` is written only
  after that check. Extending `train.rounds` stays allowed.
- `Checkpoints` keeps orbax checkpoints keyed by (global) FL round. `validate()` reads the
  latest one back before any compute; a damaged one is moved aside (its directory named
  in a warning) and the previous one is used.
- `MetricsLog` is the per-round `metrics.jsonl`: a torn last line (a kill or a full disk
  mid-write) is dropped, and rows after the restored checkpoint are discarded, so a
  rerun never appends to rounds it is about to redo.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np

LOCK_NAME = ".fastjax.lock"

# Keys that do not change a run's results: where files are, how fast or how often
# things happen. Everything else in the config is result-relevant.
NON_RESULT_KEYS = frozenset({
    "data.root", "encoder.cache_dir", "encoder.batch_size", "train.eval_batch_size",
    "train.checkpoint_every", "train.strategy", "train.client_chunk", "train.chunk_memory_mb",
    "model.conv_impl", "compilation_cache_dir", "active.pool_batch_size",
})
# What a work directory holds once a run has computed something worth protecting (the
# loop's labeled sets in active/ and a person's annotations included).
RESULT_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "active", "annotations.csv")


DIGEST_NAME = "fastjax_digest.json"  # inside each step's directory, beside orbax's files


class CheckpointDigestError(ValueError):
    """A checkpoint reads back, but not as the numbers that were saved."""


def tree_digest(tree) -> list[list]:
    """[dtype, shape, sha256] of every array of a pytree, sorted: independent of how the
    container types come back from disk (orbax returns dicts and lists)."""
    out = []
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        out.append([str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()])
    return sorted(out)


class RunLockedError(RuntimeError):
    """Another process holds the work directory."""


class RunMismatchError(ValueError):
    """The work directory holds a different run."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_dict(config) -> dict:
    """A plain, JSON-round-tripped dict of a ConfigDict (or dict)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def _defaults() -> dict:
    from fastjax.config import base_config

    return config_dict(base_config())


def config_differences(old: dict, new: dict, extendable: dict[str, int] | None = None,
                       non_result: Iterable[str] = NON_RESULT_KEYS,
                       defaults: dict | None = None) -> list[str]:
    """Human-readable differences in result-relevant keys between two configs.

    extendable: key -> the least value it may take (e.g. {"train.rounds": rounds already
    run}): such a key may change as long as it stays at or above that value.
    non_result: keys, or prefixes ending in "." (a whole section), that cannot change
    this run's results.
    defaults: the config's defaults (nested); a key the stored config lacks (it was added
    to fastjax after that run started) is no difference while it keeps its default, the
    value that reproduces the behaviour from before the key existed.
    """
    a, b = _flatten(old), _flatten(new)
    d = _flatten(defaults) if defaults else {}
    a.update({k: v for k, v in b.items() if k not in a and k in d and v == d[k]})
    prefixes = tuple(k for k in non_result if k.endswith("."))
    skip = set(non_result)
    extendable = extendable or {}
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in skip or key.startswith(prefixes) or a.get(key) == b.get(key):
            continue
        if key in extendable and key in a and key in b:
            if b[key] >= extendable[key]:
                continue
            diffs.append(f"{key}: {a[key]!r} -> {b[key]!r}, below the {extendable[key]} already run")
            continue
        diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def _is_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


class RunDir:
    """A locked work directory holding one run. Use `RunDir.open(...)` (or as a context
    manager); `close()` releases the lock (the OS releases it too if the process dies)."""

    def __init__(self, workdir: os.PathLike | str):
        self.path = Path(workdir)
        self._lock_fd: int | None = None

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, workdir, config, *, extendable=None, ignore=()) -> "RunDir":
        """Lock `workdir`, check it holds this run (or nothing), then write config.json.

        extendable: see `config_differences`; by default `train.rounds` may be raised (or
        lowered to no fewer than the rounds already run) when the learning-rate schedule
        does not depend on it. ignore: more keys or sections ("labeling.") the run does
        not read.

        Raises RunLockedError, RunMismatchError or PermissionError, all before compute.
        """
        run = cls(workdir)
        if not _is_writable_dir(run.path):
            raise PermissionError(f"work directory {run.path} is not writable; choose another "
                                  "--workdir or fix its permissions")
        run.lock()
        try:
            run.check_identity(config, extendable, ignore)
            run.write_config(config)
        except BaseException:
            run.close()
            raise
        return run

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lock ------------------------------------------------------------------------
    def lock(self) -> None:
        import fcntl

        path = self.path / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = path.read_text().strip() or "another process"
            raise RunLockedError(f"work directory {self.path} is in use by {holder}; wait for "
                                 "it to finish (or stop it), or choose another --workdir") from None
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- identity --------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def holds_results(self) -> bool:
        return any((self.path / n).exists() for n in RESULT_FILES)

    def check_identity(self, config, extendable=None, ignore=()) -> None:
        new = config_dict(config)
        if not self.holds_results():
            return  # nothing to protect (e.g. a first run that failed before computing): rewritten
        if not self.config_path.exists():
            raise RunMismatchError(
                f"work directory {self.path} holds results but no config.json, so it cannot "
                "be checked against this run; choose another --workdir, or delete "
                f"{self.path} to start afresh")
        try:
            old = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as e:
            raise RunMismatchError(f"{self.config_path} is unreadable ({e}); delete {self.path} "
                                   "to start afresh or choose another --workdir") from None
        if extendable is None:
            extendable = {}
            if not _flatten(new).get("train.lr_drop_at"):
                extendable["train.rounds"] = MetricsLog(self.path / "metrics.jsonl").last_round()
        diffs = config_differences(old, new, extendable, NON_RESULT_KEYS | set(ignore),
                                   defaults=_defaults())
        drop_at = _flatten(new).get("train.lr_drop_at")
        if drop_at and "train.rounds" not in extendable:
            diffs = [d + (f" (not extendable: train.lr_drop_at={drop_at} ties the lr schedule to it)"
                          if d.startswith("train.rounds:") else "") for d in diffs]
        if diffs:
            raise RunMismatchError(
                f"work directory {self.path} holds a different run ({len(diffs)} result-relevant "
                f"key(s) differ: {'; '.join(diffs)}); rerun with the same config to resume, "
                f"choose another --workdir, or delete {self.path} to start afresh")

    def write_config(self, config) -> None:
        atomic_write_text(self.config_path, json.dumps(config_dict(config), indent=2) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """`metrics.jsonl`: one JSON object per FL round, appended as rounds finish."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)

    def read(self) -> list[dict]:
        """Every complete row; a torn (unparsable) trailing line is ignored."""
        if not self.path.exists():
            return []
        rows = []
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:
                    raise ValueError(f"{self.path} line {i + 1} is not JSON; the metrics log is "
                                     "damaged beyond its last line: delete the work directory to "
                                     "start afresh") from None
                warnings.warn(f"{self.path}: dropped a torn last line (an interrupted write)",
                              stacklevel=2)
        return rows

    def last_round(self) -> int:
        rows = self.read()
        return int(rows[-1]["round"]) if rows else 0

    def truncate(self, last_round: int) -> list[dict]:
        """Keep rows with round <= last_round (the state being resumed); returns them."""
        rows = [r for r in self.read() if r["round"] <= last_round]
        if self.path.exists() or rows:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class Checkpoints:
    """Orbax checkpoints of a pytree keyed by FL round, written synchronously (an
    interrupted save leaves no half-written latest step), the last `keep` retained."""

    def __init__(self, directory: os.PathLike | str, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).resolve()
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False))

    def steps(self) -> list[int]:
        return sorted(int(s) for s in self._mgr.all_steps())

    def latest(self) -> int | None:
        s = self.steps()
        return s[-1] if s else None

    def validate(self) -> int | None:
        """Read the latest checkpoint back; move damaged ones aside (with a warning naming
        the directory) and fall back to the one before. Returns the usable step or None."""
        while True:
            step = self.latest()
            if step is None:
                return None
            try:
                self._check_digest(step, self.read(step))
                return step
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                self._quarantine(step, e)

    def _digest_path(self, step: int) -> Path:
        return self.directory / str(step) / DIGEST_NAME

    def _check_digest(self, step: int, tree) -> None:
        """Readable is not enough: bytes flipped inside an array read back as other numbers.
        Compare with the digest written at save (checkpoints from before it had none)."""
        path = self._digest_path(step)
        if not path.exists():
            return
        if json.loads(path.read_text())["leaves"] != tree_digest(tree):
            raise CheckpointDigestError(f"its arrays differ from the digest {path.name} written "
                                        "when it was saved")

    def _quarantine(self, step: int, error: Exception) -> None:
        bad = self.directory / str(step)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.directory.parent / f"{self.directory.name}-damaged-{step}-{stamp}"
        msg = (f"checkpoint {bad} is damaged ({type(error).__name__}: {str(error)[:160]}); "
               f"moved it to {aside} and falling back to the previous checkpoint")
        warnings.warn(msg, stacklevel=3)  # once: the CLI prints it as one 'fastjax: warning:' line
        shutil.move(str(bad), str(aside))
        self._mgr.reload()

    def read(self, step: int):
        """The checkpoint of `step` as saved (numpy arrays), no target structure needed."""
        return self._mgr.restore(step, args=self._ocp.args.StandardRestore())

    def restore(self, step: int, like):
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
        return self._mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def save(self, step: int, tree) -> None:
        tree = jax.device_get(tree)
        self._mgr.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self._mgr.wait_until_finished()
        atomic_write_text(self._digest_path(step), json.dumps({"leaves": tree_digest(tree)}) + "\n")

    def close(self) -> None:
        self._mgr.close()
