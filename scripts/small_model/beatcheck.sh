#!/usr/bin/env bash
# Beat F-measure of a pre-training snapshot's layers with the suite's beat probe (linear over ±4
# frames, probe seed 0, no random init, no baselines), as in README.md (session 6). Run where
# `suite` (`mert bench-suite synth -o suite`) is.
#
#   bash scripts/small_model/beatcheck.sh NAME RUN/snapshots/update_00000300.pt
set -euo pipefail
name="$1"; snapshot="$2"
mert export "$snapshot" -o "beatcheck-$name"
mert eval --suite-dir suite -m "beatcheck-$name" -o evalbc --tasks beat --seeds 0 --random-init 0 \
  --layers all --baselines none --run-name "$name" -q
grep "^| beat" "evalbc/$name/results.md" | head -1
