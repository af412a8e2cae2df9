#!/usr/bin/env bash
# The accelerator benchmarks in one run: rounds/sec with the PyTorch peers, client
# scaling to 10,000 clients (10% participation, chunked), the FAST job end to end, kNN at
# 100k x 40k x 768-d, SigLIP against transformers, sweeps (E experiments as one round).
# Writes OUT_DIR/suite.json and OUT_DIR/suite.md (and nothing else there: two files are
# easy to bring back from a remote machine).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--dry-run] [--data-root DIR] [--sections a,b,...]
#
# On the accelerator it keeps within about 10 minutes (each section has a soft budget and a
# hard timeout; SUITE_SECONDS caps the whole run, default 600). --dry-run runs the same
# code on a CPU at tiny sizes. When the accelerator machine has no network (no pip), carry
# what it lacks along with the checkout (rsync, scp, or whatever copies the repository there):
#   - the FAST job needs ml_collections; download its wheel on a machine with a network,
#     into the repo root's .whl/ folder, which the suite adds to sys.path:
#       python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
#     (keep .whl/ out of git, e.g. `echo /.whl/ >> .git/info/exclude`; without the wheel the
#     fast section is skipped and says so);
#   - for real CIFAR-10 instead of random CIFAR-10-shaped data, copy the CIFAR-10 files
#     (any release format fastjax.data reads) into a folder beside the checkout and pass
#     --data-root with its path.
# Then, on the accelerator: bash benchmarks/gpu_suite.sh OUT_DIR [--data-root DIR]
set -u
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/gpu_suite.sh OUT_DIR [--dry-run] [--data-root DIR] [--sections a,b]" >&2
  exit 2
fi
OUT=$1; shift
DRY=""; DATA_ROOT=""; SECTIONS="rounds,scaling,fast,knn,siglip,sweep"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --data-root) DATA_ROOT=$2; shift ;;
    --sections) SECTIONS=$2; shift ;;
    *) echo "gpu_suite.sh: unknown option $1 (allowed: --dry-run, --data-root DIR, --sections a,b)" >&2; exit 2 ;;
  esac
  shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The project's virtual environment when there is one (the README's setup), else python3
# (the accelerator's image); PYTHON overrides both.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=${PYTHON:-python3}; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastjax-suite.XXXXXX")
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU: no JAX preallocation. Caches stay out of OUT_DIR.
export XLA_PYTHON_CLIENT_PREALLOCATE=false FASTJAX_CACHE="$WORK/cache" FASTJAX_COMPILATION_CACHE=off
export TOKENIZERS_PARALLELISM=false
START=$(date +%s)
TOTAL=${SUITE_SECONDS:-600}
declare -A BUDGET=([rounds]=150 [scaling]=80 [fast]=110 [knn]=45 [siglip]=45 [sweep]=100)
[ -n "$DRY" ] && BUDGET=([rounds]=300 [scaling]=120 [fast]=120 [knn]=60 [siglip]=60 [sweep]=120) && TOTAL=${SUITE_SECONDS:-1020}
cd "$ROOT"
for s in ${SECTIONS//,/ }; do
  left=$(( TOTAL - ($(date +%s) - START) ))
  if [ "$left" -le 20 ]; then echo "[suite] $s: skipped, the suite's time is spent" >&2; continue; fi
  soft=${BUDGET[$s]:-60}; [ "$soft" -gt "$left" ] && soft=$left
  hard=$(( soft + 40 )); [ "$hard" -gt "$left" ] && hard=$left
  echo "[suite] $s: budget ${soft}s (hard ${hard}s)" >&2
  timeout -k 5 "$hard" "$PY" benchmarks/gpu_suite.py run "$s" --work "$WORK" --budget "$soft" $DRY \
    ${DATA_ROOT:+--data-root "$DATA_ROOT"} || echo "[suite] $s: exit status $?" >&2
done
"$PY" benchmarks/gpu_suite.py report --work "$WORK" --out "$OUT"
status=$?
echo "[suite] done in $(( $(date +%s) - START ))s; results in $OUT/suite.json and $OUT/suite.md" >&2
rm -rf "$WORK"
exit $status
