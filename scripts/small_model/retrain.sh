#!/usr/bin/env bash
# The candidate successor of the shipped model (session 5, `tiny-wide`), from nothing: every
# step is seeded. Run from an empty folder with mertkit installed. On the 2-core CPU: corpus
# and labels about 5 min; pre-training 53 min (0.50-0.55 updates/s, beside a second run);
# evaluation about 40 min. It is not the shipped model yet: see README.md in this folder.
#
#   bash scripts/small_model/retrain.sh [MODEL_OUT]     # MODEL_OUT defaults to ./tiny-wide-candidate
set -euo pipefail
out="${1:-tiny-wide-candidate}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# 1. corpus: 6 h of structured MIDI music, half the sections solos or duos (seed 1000; the
#    benchmark suite renders from its own generator and seeds)
mert synth-corpus -o corpus_v --hours 6 --seed 1000 --texture varied --workers 2
# 2. teacher: one k-means codebook (500 codes) on log-mel + chroma frames of the corpus, 75 Hz
mert labels corpus_v -o labels_v --teacher kmeans --features logmel_chroma --codebook-size 500
# 3. pre-training: tiny-wide backbone; CQT reconstruction + the k-means codes (CE x 0.1) on
#    masked and unmasked frames; in-batch mixture; bf16 autocast; 1600 updates of 8 x 5 s
mert pretrain --config tiny-wide --audio corpus_v --labels labels_v --out run \
  --set n_codebooks=1 --set codebook_size=500 --set precision=bf16 --set batch_size=8 \
  --set total_updates=1600 --set warmup_updates=50 --set unmasked_weight=1.0 --set ce_weight=0.1 \
  --set cqt_target=magnitude --set log_interval=20 --set ckpt_interval=100
# 4. export to the official layout, with the training summary beside the weights
mert export run -o "$out"
python "$here/summarise_log.py" run labels_v "$out/training_summary.json" "$here/retrain.sh"
# 5. probe curve over the run's snapshots (0, 10, 50, 100 %) and the benchmark with its floors
mert bench-suite synth -o suite
mert pretrain-diagnose run --suite suite --audio corpus_v --labels labels_v
mert eval --suite-dir suite -m "$out" -o eval --run-name "$out"
