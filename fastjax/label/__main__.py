"""A person as FAST's oracle, on one site: export the query, import the annotations.

    # 1. run the preliminary pass and write the query (query.csv + contact sheets)
    python -m fastjax.label export --workdir runs/demo \
        --config configs/demo.py --config.labeling.oracle=annotations
    # 2. fill the `label` column (class names or integer ids), then merge it
    python -m fastjax.label import runs/demo/query.csv --workdir runs/demo
    # 3. train with the human labels (the same config as in step 1)
    python -m fastjax.main --config configs/demo.py --workdir runs/demo \
        --config.labeling.oracle=annotations

Step 3 alone also writes the query (and stops, exit 0) while annotations are missing.
Without --config, `export` reads the work directory's config.json. See
`fastjax.label.annotate` for the file formats and the checks made on import.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

USAGE = ("usage: python -m fastjax.label export --workdir DIR [--config FILE.py ...]\n"
         "       python -m fastjax.label import FILE.csv --workdir DIR")


def _fail(msg: str, code: int = 2):
    print(f"fastjax.label: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def export(config, workdir: Path, progress: bool) -> dict:
    """The FAST job up to the refinement pass's query, written into workdir."""
    from fastjax import config as config_lib
    from fastjax.methods import fast

    missing = [f"--config.{k}={v}" for k, v, now in (("method", "fast", config.method),
               ("labeling.oracle", "annotations", config.labeling.oracle)) if now != v]
    if missing:
        raise ValueError(f"export needs method='fast' and labeling.oracle='annotations' (got "
                         f"{config.method!r}, {config.labeling.oracle!r}); add {' '.join(missing)}")
    config_lib.validate(config)
    config_lib.check_files(config)
    from fastjax import compile_cache

    compile_cache.enable(config.compilation_cache_dir)  # as the main job: its compiles are shared
    with config_lib.open_run(workdir, config):
        return fast.run(config, workdir, progress=progress, export_query=True)


def import_(path: Path, workdir: Path) -> str:
    """Merge an annotator's file, holding the work directory's lock (a job running there
    must not see the annotations change under it)."""
    from fastjax.federate.checkpoints import RunDir
    from fastjax.label import annotate

    if not workdir.is_dir():
        raise FileNotFoundError(f"work directory {workdir} not found: export the query first "
                                f"(python -m fastjax.label export --workdir {workdir})")
    with RunDir(workdir) as run:
        run.lock()
        merged = annotate.import_annotations(path, workdir)
        query = annotate.read_query(workdir)
        done = len(annotate.read_annotations(merged, query))
    rest = (f"; {query.budget - done} still to label in {workdir / annotate.QUERY_CSV}"
            if done < query.budget else "; rerun the job with the same config to train with them")
    return f"merged {path} into {merged}: {done} of {query.budget} queried samples labeled{rest}"


def main(argv=None):
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/<experiment>.py (export only)",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "the job's work directory")
    flags.DEFINE_bool("progress", True, "show progress bars")

    def _main(args):
        from absl import logging

        from fastjax.federate.checkpoints import RunLockedError

        logging.set_verbosity(logging.WARNING)
        warnings.formatwarning = lambda message, *_a, **_k: f"fastjax.label: warning: {message}\n"
        f = flags.FLAGS
        verb, rest = (args[1], args[2:]) if len(args) > 1 else ("", [])
        if verb not in ("export", "import") or not f.workdir or (verb == "import") != bool(rest):
            _fail(USAGE)
        workdir = Path(f.workdir)
        try:
            if verb == "import":
                print(import_(Path(rest[0]), workdir))
                return
            config = f.config
            if config is None:
                from fastjax import config as config_lib

                path = workdir / "config.json"
                if not path.exists():
                    raise FileNotFoundError(f"{path} not found; pass --config configs/<experiment>.py")
                config = config_lib.from_json(path.read_text())
            export(config, workdir, f.progress)
        except (ValueError, FileNotFoundError, PermissionError, RunLockedError) as e:
            _fail(" ".join(str(e).split()))

    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
