"""Run one experiment: read the config, check it and the work directory, choose the method.

    python -m fastjax.main --config configs/cifar10.py --workdir runs/cifar10 \
        [--config.train.rounds=5 ...]
    python -m fastjax.main --config configs/cifar10_active.py:logo --config.active.strategy=badge
    python -m fastjax.main --config_help     # every key, its default and allowed values

`config.method` chooses FAST's one-shot job (`fastjax.methods.fast`) or the iterative
federated active-learning loop it is compared against (`fastjax.methods.active`). Both
write config.json, metrics.jsonl, checkpoints/ and summary.json into the work directory.

Before any compute the config is validated, the encoder weights are located, the work
directory is locked and compared with the run it already holds (a difference in a
result-relevant key is refused), and its latest checkpoint is read back (a damaged one
is set aside for the previous one). Re-running the same command resumes; re-running a
finished run prints its summary without loading anything.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
from pathlib import Path

from fastjax import config as config_lib

# Methods by the name `config.method` uses; each module has run(config, workdir, progress).
METHODS = {"fast": "fastjax.methods.fast", "active": "fastjax.methods.active"}


def _extendable(config, workdir: Path):
    """Which keys a rerun may raise: FL rounds for FAST, AL rounds for the loop."""
    from fastjax.federate.checkpoints import MetricsLog

    if config.method != "active":
        return None  # RunDir's default: train.rounds, unless the lr schedule depends on it
    rows = (MetricsLog(workdir / "metrics.jsonl").read(warn=False)
            if (workdir / "config.json").exists() else [])
    return {"active.rounds": int(rows[-1].get("al_round", 0)) if rows else 0}


def _finished(rundir, config, workdir: Path) -> dict | None:
    """The summary of this very run when the directory holds it finished (the same
    result-relevant config, the rounds included, a complete summary.json and the metrics
    of every round it counts), else None."""
    from fastjax.federate.checkpoints import MetricsLog

    if not rundir.same_config(config, config_lib.unread_sections(config), defaults=config_lib.defaults()):
        return None
    try:
        summary = json.loads((workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "done":
        return None
    rounds = summary.get("rounds") or summary.get("fl_rounds") or 0
    return summary if MetricsLog(workdir / "metrics.jsonl").covered_through() >= rounds else None


def run(config, workdir, *, progress: bool = True, **method_options) -> dict:
    """Validate, lock and check the work directory, then run the chosen method. A
    directory holding this run finished answers with its summary at once.
    method_options: passed on to the method's run (a sweep's fit_fn)."""
    from fastjax.federate import checkpoints
    from fastjax.methods.common import log, summary_line

    config_lib.validate(config)
    unused = config_lib.unused_keys(config)
    if unused:
        warnings.warn(f"method={config.method!r} never reads {', '.join(unused)}: unused "
                      "(a setting of the other method?)", stacklevel=2)
    config_lib.check_files(config)
    workdir = Path(workdir)
    with config_lib.open_run(workdir, config, extendable=_extendable(config, workdir)) as rundir:
        done = _finished(rundir, config, workdir)
        if done is not None:
            log(f"{workdir} holds this run, finished: {summary_line(done, workdir)}")
            return done
        if (workdir / "checkpoints").exists():
            store = checkpoints.Checkpoints(workdir / "checkpoints")
            try:  # one covered by metrics.jsonl, read back whole
                store.validate(checkpoints.MetricsLog(workdir / "metrics.jsonl"))
            finally:
                store.close()
        method = importlib.import_module(METHODS[config.method])
        summary = method.run(config, workdir, progress=progress, **method_options)
        if "status" not in summary:  # finished (not waiting for a person)
            summary = {"status": "done", **summary, "provenance": config_lib.provenance()}
            checkpoints.atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _error(msg: str, code: int = 2, *, hard: bool = False):
    print(f"fastjax: error: {msg}", file=sys.stderr, flush=True)
    if hard:  # interrupted mid-compile, XLA's threads can crash the interpreter's teardown;
        sys.stdout.flush()  # checkpoints are written synchronously, so nothing is pending
        os._exit(code)
    sys.exit(code)


def _flag_error(e: Exception, args) -> str:
    """absl / ml_collections errors as one readable line."""
    msg = " ".join(str(e).replace("\\n", " ").replace("\n", " ").split()).replace("\\'", "'")
    if "Traceback (most recent call last)" in msg:  # a config file's own error, wrapped
        head = msg.split(": Error whilst parsing", 1)[0]
        last = list(re.finditer(r"\b[A-Za-z]*(?:Error|Exception): ", msg))
        return f"{head}: {msg[last[-1].end():]}" if last else msg
    if isinstance(e, (KeyError, AttributeError)):  # an override of a key that does not exist
        msg = msg.strip("'\" ")
        name, _, hint = msg.partition(" ")
        name = name.strip("'\"")
        given = [a.split("=", 1)[0][2:] for a in args if a.startswith("--config.")]
        path = next((g[len("config."):] for g in given if g.rsplit(".", 1)[-1] == name), name)
        return f"unknown config key {path!r}" + (f": {hint.strip()}" if hint.strip() else "")
    return msg


def _config_file_error(spec: str | None) -> str | None:
    """What is wrong with `--config FILE.py[:preset]` before it is loaded, or None."""
    if not spec:
        return None
    path, colon, preset = spec.partition(":")
    if not Path(path).is_file():
        return (f"config file {path} not found" + (" (it is a directory)" if Path(path).is_dir() else "")
                + "; give one of configs/*.py, e.g. --config configs/demo.py")
    if colon and not preset.strip():
        return (f"--config {spec} names no preset after ':'; name one "
                f"(e.g. --config {path}:logo) or drop the ':'")
    return None


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py[:preset]", lock_config=True)
    flags.DEFINE_string("workdir", None, "work directory (default: runs/<config name>)")
    flags.DEFINE_bool("progress", True, "show progress bars")
    flags.DEFINE_bool("config_help", False, "print every config key with its default and "
                      "allowed values, then exit")

    def parse(args):
        try:
            return flags.FLAGS(args)
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError, NameError) as e:
            _error(f"{_flag_error(e, args)} (every option: --config_help)")
        except (SyntaxError, ImportError) as e:  # the config file's own code
            given = next((a.split("=", 1)[1] if "=" in a else b for a, b in zip(args, args[1:] + [""])
                          if a.split("=", 1)[0] in ("--config", "-config")), "?")
            _error(f"config file {given.split(':')[0]}: {type(e).__name__}: {e}")

    def _main(_):
        from absl import logging

        from fastjax.federate.checkpoints import RunLockedError

        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        warnings.formatwarning = lambda message, *_a, **_k: f"fastjax: warning: {message}\n"
        if flags.FLAGS.config_help:
            print(config_lib.config_help())
            return
        spec = flags.FLAGS["config"].config_filename
        why = _config_file_error(spec)
        if why is not None:
            _error(why)
        try:
            cfg = flags.FLAGS.config
        except OSError as e:  # the file exists but does not load (its own error, wrapped)
            _error(_flag_error(e, []))
        if cfg is None:
            _error("--config is required, e.g. --config configs/demo.py (every key: --config_help)")
        name = Path(spec.split(":")[0]).stem
        workdir = flags.FLAGS.workdir or os.path.join("runs", name)
        from fastjax import compile_cache

        compile_cache.enable(cfg.compilation_cache_dir)
        try:
            run(cfg, workdir, progress=flags.FLAGS.progress)
        except KeyboardInterrupt:
            _error(f"interrupted; rerun the same command to resume from the last checkpoint in {workdir}",
                   130, hard=True)
        except (ValueError, FileNotFoundError, PermissionError, FloatingPointError, RunLockedError) as e:
            _error(str(e))
        except OSError as e:  # a full disk or a vanished directory mid-run
            _error(f"{e}; rerun the same command to resume from the last checkpoint in {workdir}")

    app.run(_main, argv=argv, flags_parser=parse)


if __name__ == "__main__":
    main()
