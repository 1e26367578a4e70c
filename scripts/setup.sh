#!/usr/bin/env bash
# Idempotent set-up: a .venv with the CPU build of torch and mertkit installed editable.
# The torch pin comes first so that no later requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${MERTKIT_TORCH:-torch==2.13.0}
# The browser test of `mert serve` (tests/serve/test_serve_browser.py) needs Playwright and a
# system Chromium: set up in CI, or locally with MERTKIT_BROWSER_TESTS=1 (it is skipped otherwise).
BROWSER_TESTS=0
if [ "${CI:-}" = true ] || [ "${MERTKIT_BROWSER_TESTS:-0}" = 1 ]; then BROWSER_TESTS=1; fi
STAMP=.venv/.mertkit-setup-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-browser$BROWSER_TESTS
[ -f "$STAMP" ] && exit 0
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
EXTRAS=store,eval,pretrain,chorales,test
[ "$BROWSER_TESTS" = 1 ] && EXTRAS=$EXTRAS,serve-test
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
# tinysoundfont declares pyaudio (for playback, which we never use; it does not build here).
.venv/bin/python -m pip install -q --no-deps "tinysoundfont==0.3.7"
if [ "${MERTKIT_WITH_RAY:-1}" = 1 ]; then .venv/bin/python -m pip install -q "ray[data]>=2.9"; fi
if [ "$BROWSER_TESTS" = 1 ] && ! command -v chromium >/dev/null; then
  # Debian's Chromium, driven through Playwright's executable_path: Playwright's own browser
  # download is never used.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "setup: the browser test needs Chromium: sudo apt-get install chromium" >&2
  fi
fi
rm -f .venv/.mertkit-setup-*
touch "$STAMP"
