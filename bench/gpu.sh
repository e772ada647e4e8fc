#!/usr/bin/env bash
# The GPU figures of `make bench` in one go, within 8 minutes on one GPU, so that a short loan of a
# GPU is enough: first the CUDA paths' own tests (batches and stores made on the GPU equal the CPU's),
# then `python -m bench --device cuda` for the GPU figures. Output: `name: value` lines and `#`
# comments (date, card, commit, per-figure notes) on stdout and in the file given (default
# bench-gpu-<date>.txt), from which docs/benchmarks.md's h100 figures are filled.
#
#   bash bench/gpu.sh [out-file]      PYTHON=… picks the interpreter (default .venv/bin/python, else python3)
#
# Temporary stores go in a fresh folder under data/ (BENCH_DIR= to choose another place), removed at the
# end: the disk-bandwidth figure measures the disk they are on, so keep it where feature stores live
# (not a tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
OUT=${1:-bench-gpu-$(date -u +%F).txt}
mkdir -p "${BENCH_DIR:=$PWD/data}"
TMPDIR=$(mktemp -d "$BENCH_DIR/bench-gpu.XXXXXX")
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
started=$SECONDS

"$PYTHON" - <<'EOF' | tee "$OUT"
import datetime, subprocess, torch
if not torch.cuda.is_available():
    raise SystemExit("error: bench/gpu.sh needs a CUDA GPU; none is visible")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "-"
print(f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print(f"# device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
      f"torch {torch.__version__}; commit {commit}")
EOF

# the CUDA-only tests: resident and streamed batches, and extracted stores, on the GPU (about a minute)
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests/test_loader.py tests/test_extraction_pipeline.py 2>&1 \
    | tail -n 3 | sed 's/^/# tests: /' | tee -a "$OUT"

# the figures, most wanted first: each is printed as soon as it is measured
timeout 390 "$PYTHON" -m bench --device cuda \
    --only probe_epoch sweep extract_limit cache_vs_recompute extract_overhead 2>&1 | tee -a "$OUT"

echo "# bench/gpu.sh took $((SECONDS - started)) s" | tee -a "$OUT"
