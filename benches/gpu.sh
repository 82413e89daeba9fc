#!/usr/bin/env bash
# The prepared GPU run, one command on a CUDA machine that has no Rust and no network:
#
#   benches/gpu_prepare.sh          # here: fills gpu/ (binary, assets, Opacus wheel); gpu/ is git-ignored
#   benches/gpu.sh                  # there, with gpu/ copied along: results under $OUT (default runs/gpu)
#   benches/gpu.sh --dry-run        # anywhere: every part on the CPU with tiny shapes
#
# What it measures and writes: benches/gpu.py. The binary runs against that machine's own
# PyTorch 2.11 libraries (LD_LIBRARY_PATH), as the README's "Using a GPU" says.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
GPU_DIR=${GPU_DIR:-gpu}
PYTHON=${PYTHON:-python3}
BIN=${DP_TRAIN:-}
if [ -z "$BIN" ]; then
  if [ -x "$GPU_DIR/dp-train" ]; then BIN=$GPU_DIR/dp-train; else BIN=target/release/dp-train; fi
fi
[ -x "$BIN" ] || { echo "gpu.sh: no dp-train binary at $BIN (run benches/gpu_prepare.sh, or set DP_TRAIN)" >&2; exit 2; }
if TL=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__) + "/lib")' 2>/dev/null); then
  export LD_LIBRARY_PATH=$TL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if [ -d "$GPU_DIR/assets" ] && [ -z "${DP_ASSETS:-}" ]; then
  export DP_ASSETS=$PWD/$GPU_DIR/assets
fi
# Opacus from the carried wheel when that Python lacks it.
if ! "$PYTHON" -c 'import opacus' 2>/dev/null && compgen -G "$GPU_DIR/wheels/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$GPU_DIR"/wheels/*.whl \
    && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PYTHON" benches/gpu.py --out "$OUT" --bin "$BIN" --python "$PYTHON" "$@"
