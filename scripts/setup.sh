#!/usr/bin/env bash
# Idempotent set-up: a .venv with the CPU build of torch and mertkit installed editable.
# The torch pin comes first so that no later requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${MERTKIT_TORCH:-torch==2.13.0}
STAMP=.venv/.mertkit-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
[ -f "$STAMP" ] && exit 0
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[store,eval,pretrain,test]"
# tinysoundfont declares pyaudio (for playback, which we never use; it does not build here).
.venv/bin/python -m pip install -q --no-deps "tinysoundfont==0.3.7"
if [ "${MERTKIT_WITH_RAY:-1}" = 1 ]; then .venv/bin/python -m pip install -q "ray[data]>=2.9"; fi
rm -f .venv/.mertkit-setup-*
touch "$STAMP"
