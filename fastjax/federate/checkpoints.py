"""A run's work directory: its identity, its lock, its checkpoints and its metrics log.

Everything that lets an interrupted run resume to the same result, and keeps two runs
from ever mixing, lives here rather than in the round loop:

- `RunDir.open(workdir, config)` takes an exclusive lock on the directory (a second run
  fails at once naming the process that holds it) and compares the config with the one
  the directory was started with (`config.json`): a difference in any result-relevant
  key is refused before any compute, naming the keys; `config.json` is written only
  after that check. Extending `train.rounds` stays allowed. The caller passes the
  config's defaults and the digests of the files the run reads besides its config (a
  person's annotations): this module never reads the config module.
- `Checkpoints` keeps orbax checkpoints keyed by (global) FL round. `validate()` reads the
  latest one back before any compute; a damaged one is moved aside (its directory named
  in a warning) and the previous one is used.
- `MetricsLog` is the per-round `metrics.jsonl`: a torn last line (a kill or a full disk
  mid-write) is dropped, and rows after the restored checkpoint are discarded, so a
  rerun never appends to rounds it is about to redo; a log that does not reach the
  checkpoint is refused (or an earlier checkpoint it covers is used).
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

from fastjax.files import atomic_write_text, unwritable

LOCK_NAME = ".fastjax.lock"
METRICS_NAME = "metrics.jsonl"  # beside checkpoints/ in a work directory

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
# What shows that rounds were trained: from then on the run's inputs may not change.
TRAINED_FILES = ("checkpoints", "metrics.jsonl")
# config.json's keys beside the config's own: the digests of the files the run read
# besides its config (compared on resume), and where and with what it ran (never compared).
INPUTS_KEY, PROVENANCE_KEY = "inputs", "provenance"


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


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_dict(config) -> dict:
    """A plain, JSON-round-tripped dict of a ConfigDict (or dict)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


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
    a, b = flatten(old), flatten(new)
    d = flatten(defaults) if defaults else {}
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


class RunDir:
    """A locked work directory holding one run. Use `RunDir.open(...)` (or as a context
    manager); `close()` releases the lock (the OS releases it too if the process dies)."""

    def __init__(self, workdir: os.PathLike | str):
        self.path = Path(workdir)
        self._lock_fd: int | None = None
        # config.json's config as found when the directory held results (see `same_config`).
        self.stored: dict | None = None

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, workdir, config, *, extendable=None, ignore=(), defaults=None, inputs=None,
             provenance=None) -> "RunDir":
        """Lock `workdir`, check it holds this run (or nothing), then write config.json.

        extendable: see `config_differences`; by default `train.rounds` may be raised (or
        lowered to no fewer than the rounds already run) when the learning-rate schedule
        does not depend on it. ignore: more keys or sections ("labeling.") the run does
        not read. defaults: the config's defaults, nested (`config_differences`).
        inputs: {file name in workdir: its digest or None}: what the results depend on
        besides the config (a person's annotations); once rounds have been trained, a
        changed digest is refused. provenance: recorded in config.json (versions,
        commit, device, date), never compared.

        Raises RunLockedError, RunMismatchError or PermissionError, all before compute.
        """
        run = cls(workdir)
        why = unwritable(run.path)
        if why is not None:
            raise PermissionError(f"work directory {why}; choose another --workdir" if run.path.is_file()
                                  else f"work directory {run.path} is not writable ({why}); choose "
                                  "another --workdir or fix its permissions")
        run.lock()
        try:
            run.check_identity(config, extendable, ignore, defaults=defaults, inputs=inputs)
            run.write_config(config, inputs=inputs, provenance=provenance)
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

    def trained(self) -> bool:
        """Whether rounds have been trained here (a checkpoint or a metrics row)."""
        return any((self.path / n).exists() for n in TRAINED_FILES)

    def check_identity(self, config, extendable=None, ignore=(), *, defaults=None,
                       inputs=None) -> None:
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
            recorded = old.pop(INPUTS_KEY, None)
            old.pop(PROVENANCE_KEY, None)
        except (OSError, ValueError, AttributeError) as e:
            raise RunMismatchError(f"{self.config_path} is unreadable ({e}); delete {self.path} "
                                   "to start afresh or choose another --workdir") from None
        given = extendable is not None  # a method's own rule (the active loop: active.rounds)
        if extendable is None:
            extendable = {}
            if not flatten(new).get("train.lr_drop_at"):
                extendable["train.rounds"] = MetricsLog(self.path / "metrics.jsonl").last_round()
        diffs = config_differences(old, new, extendable, NON_RESULT_KEYS | set(ignore),
                                   defaults=defaults)
        drop_at = flatten(new).get("train.lr_drop_at")
        note = (f" (fixed for this run; a rerun may raise {', '.join(extendable)} instead)" if given
                else f" (not extendable: train.lr_drop_at={drop_at} ties the lr schedule to it)" if drop_at
                else "")
        if note and "train.rounds" not in extendable:
            diffs = [d + (note if d.startswith("train.rounds:") else "") for d in diffs]
        if diffs:
            raise RunMismatchError(
                f"work directory {self.path} holds a different run ({len(diffs)} result-relevant "
                f"key(s) differ: {'; '.join(diffs)}); rerun with the same config to resume, "
                f"choose another --workdir, or delete {self.path} to start afresh")
        # A directory from before inputs were recorded has nothing to compare with.
        if inputs and isinstance(recorded, dict) and self.trained():
            for name, digest in sorted(inputs.items()):
                if recorded.get(name) != digest:
                    short = lambda d: d[:12] if d else "none"  # noqa: E731
                    raise RunMismatchError(
                        f"{self.path / name} changed since this run trained on it (digest "
                        f"{short(recorded.get(name))} -> {short(digest)}), and the rounds already "
                        f"run would mix the two; to train on the new file start afresh by deleting "
                        f"{self.path / 'checkpoints'} and {self.path / 'metrics.jsonl'} (the "
                        f"other files stay), or put the earlier {name} back")
        self.stored = old

    def same_config(self, config, ignore=(), *, defaults=None) -> bool:
        """Whether the directory held results of this very run when opened: no
        result-relevant key differs, extendable ones (the rounds) included."""
        if self.stored is None:
            return False
        return not config_differences(self.stored, config_dict(config), {},
                                      NON_RESULT_KEYS | set(ignore), defaults=defaults)

    def write_config(self, config, *, inputs=None, provenance=None) -> None:
        record = config_dict(config)
        if inputs is not None:
            record[INPUTS_KEY] = inputs
        if provenance is not None:
            record[PROVENANCE_KEY] = provenance
        atomic_write_text(self.config_path, json.dumps(record, indent=2) + "\n")


class MetricsLog:
    """`metrics.jsonl`: one JSON object per FL round, appended as rounds finish."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)

    def read(self, *, warn: bool = True) -> list[dict]:
        """Every complete row; a torn (unparsable) trailing line is ignored (with a
        warning unless `warn` is false: a peek before `truncate`, which warns, drops it)."""
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
                if warn:
                    warnings.warn(f"{self.path}: dropped a torn last line (an interrupted write)",
                                  stacklevel=2)
        return rows

    def last_round(self) -> int:
        rows = self.read(warn=False)
        return int(rows[-1]["round"]) if rows else 0

    def covered_through(self, rows: list[dict] | None = None) -> int:
        """The last round r such that the log holds rounds 1 ... r, one row each, in order."""
        rows = self.read(warn=False) if rows is None else rows
        r = 0
        for row in rows:
            if not isinstance(row, dict) or row.get("round") != r + 1:
                break
            r += 1
        return r

    def truncate(self, last_round: int) -> list[dict]:
        """Keep rows with round <= last_round (the state being resumed); returns them.
        Refuses (naming the file) when they do not cover every round up to last_round:
        a summary from them would count too few rounds."""
        rows = [r for r in self.read() if r["round"] <= last_round]
        covered = self.covered_through(rows)
        if covered < last_round:
            raise ValueError(
                f"{self.path} holds rows for rounds 1-{covered} only, but the state being resumed "
                f"is of round {last_round} (the file was cut or edited); delete "
                f"{self.path.parent} to start afresh")
        if self.path.exists() or rows:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def append(self, row: dict) -> None:
        """One row, handed to the OS before this returns (a killed process loses none);
        `sync` makes the rows durable, as `Checkpoints.save` does before each save."""
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def sync(self) -> None:
        """fsync the log (a power loss then keeps every row written so far)."""
        if self.path.exists():
            with open(self.path, "rb") as f:
                os.fsync(f.fileno())


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

    def validate(self, metrics: MetricsLog | None = None) -> int | None:
        """Read the latest checkpoint back; move damaged ones aside (with a warning naming
        the directory) and fall back to the one before. Returns the usable step or None.

        With `metrics`, a checkpoint ahead of the log's contiguous rows (a cut or edited
        metrics.jsonl) is set aside too, in favour of an earlier one the log covers; when
        none is covered, refuses naming the log (nothing is moved)."""
        if metrics is not None:
            covered = metrics.covered_through()
            steps = self.steps()
            if steps and steps[0] > covered:
                raise ValueError(
                    f"{metrics.path} holds rows for rounds 1-{covered} only, but the earliest "
                    f"checkpoint is of round {steps[0]} (the log was cut or edited): resuming "
                    f"would report too few rounds; delete {metrics.path.parent} to start afresh")
            for step in [s for s in steps if s > covered][::-1]:
                self._quarantine(step, f"{metrics.path.name} holds rows for rounds 1-{covered} only",
                                 kind="ahead of the metrics log", tag="uncovered")
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

    def _quarantine(self, step: int, error, kind: str = "damaged", tag: str = "damaged") -> None:
        bad = self.directory / str(step)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.directory.parent / f"{self.directory.name}-{tag}-{step}-{stamp}"
        why = f"{type(error).__name__}: {str(error)[:160]}" if isinstance(error, Exception) else error
        msg = (f"checkpoint {bad} is {kind} ({why}); "
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
        # The metrics log beside the checkpoints reaches the disk first: a checkpoint is
        # never ahead of the rows a resume needs (see `validate(metrics)`).
        MetricsLog(self.directory.parent / METRICS_NAME).sync()
        tree = jax.device_get(tree)
        self._mgr.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self._mgr.wait_until_finished()
        atomic_write_text(self._digest_path(step), json.dumps({"leaves": tree_digest(tree)}) + "\n")

    def close(self) -> None:
        self._mgr.close()
