"""The outcome of the last `flwr run` into a work directory, for scripts: `flwr run`
exits 0 whatever happened, the ServerApp records the outcome in <workdir>/status.json.

    flwr run fastjax/deploy local --stream --run-config "... workdir='$PWD/runs/flower'"
    python -m fastjax.deploy.status runs/flower   # prints one line; exit 0 only for "done"

Exit codes: 0 done, 1 failed (or no status recorded), 3 awaiting annotations, 4 still
running (or stopped without recording an outcome).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_CODES = {"done": 0, "failed": 1, "awaiting_annotations": 3, "running": 4}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = Path(argv[0]) / "status.json"
    try:
        record = json.loads(path.read_text())
        status = str(record["status"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"failed: no outcome recorded in {path} ({type(e).__name__}); the run did not "
              "start there, or the work directory is not writable", file=sys.stderr)
        return 1
    detail = record.get("error") or record.get("summary") or ""
    print(f"{status}{': ' + detail if detail else ''} (run {record.get('run_id', '?')}, "
          f"{record.get('time', '?')})")
    return EXIT_CODES.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
