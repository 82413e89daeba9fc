#!/usr/bin/env bash
# Side-by-side speed of our accountants and the Python references, in one run on this machine:
# dp_accounting 0.6.0 (RDP, PLD), prv_accountant 0.2.0 and Opacus 1.6.0 (calibration).
# Installs the references into .venv-bench (Opacus reuses the project venv's torch), builds the
# release CLI, and prints one table with the ratios. Takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
BENCH=.venv-bench
if [ ! -f "$BENCH/.ready" ]; then
  python3 -m venv "$BENCH"
  "$BENCH/bin/pip" install -q --disable-pip-version-check dp-accounting==0.6.0 prv-accountant==0.2.0
  "$BENCH/bin/pip" install -q --disable-pip-version-check --no-deps opacus==1.6.0 opt_einsum
  site=$("$BENCH/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Opacus needs torch: borrow the project venv's (same Python version).
  .venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/project_torch.pth"
  touch "$BENCH/.ready"
fi
LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH \
  cargo build -q --release -p dp-accounting --bin dp-accounting
"$BENCH/bin/python" benches/accounting_speed.py target/release/dp-accounting
