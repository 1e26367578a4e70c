#!/usr/bin/env bash
# Build a side environment with the HEAR 2021 validator and run it on every registry model
# layout (scripts/hear_validate.py). The validator pins TensorFlow >= 2 and imports it even for
# PyTorch modules, so it lives in its own venv (no system site-packages), never in .venv.
#   scripts/hear_validate.sh            # temporary venv, removed afterwards
#   HEAR_VENV=~/.cache/mertkit-hear scripts/hear_validate.sh   # keep and reuse the venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${MERTKIT_TORCH:-torch==2.13.0}
if [ -n "${HEAR_VENV:-}" ]; then
  VENV=$HEAR_VENV
else
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  VENV=$TMP/venv
fi
if [ ! -x "$VENV/bin/hear-validator" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"          # the CPU build first (as scripts/setup.sh)
  "$VENV/bin/python" -m pip install -q tensorflow-cpu "hearvalidator==2021.0.2"
fi
"$VENV/bin/python" -m pip install -q .    # this checkout, every time
# Run from outside the checkout so the installed mertkit is the one validated.
cd "$(mktemp -d)" && trap 'rm -rf "$PWD" ${TMP:+"$TMP"}' EXIT
"$VENV/bin/python" "$OLDPWD/scripts/hear_validate.py"
