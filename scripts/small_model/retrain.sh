#!/usr/bin/env bash
# The shipped model, `mertkit-tiny-music` (session 7), from nothing: every step is seeded. Run
# from an empty folder with mertkit installed. On the 2-core CPU: corpus and labels about 5 min;
# pre-training about 50-60 min (one thread, beside a second run); evaluation about 40 min.
#
#   bash scripts/small_model/retrain.sh [MODEL_OUT]     # MODEL_OUT defaults to ./mertkit-tiny-music
set -euo pipefail
out="${1:-mertkit-tiny-music}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# 1. corpus: 6 h of structured MIDI music, half the sections solos or duos (seed 1000; the
#    benchmark suite renders from its own generator and seeds)
mert synth-corpus -o corpus_v --hours 6 --seed 1000 --texture varied --workers 2
# 2. teacher: one k-means codebook (500 codes) on log-mel + chroma frames of the corpus, 75 Hz
mert labels corpus_v -o labels_v --teacher kmeans --features logmel_chroma --codebook-size 500
# 3. pre-training: tiny-wide backbone (one 1280-sample learned filterbank); the k-means codes
#    (CE x 0.1) and, on the CQT head, the log-standardised CQT with three targets derived from
#    it: each octave's onset flux (x 0.3), the chroma (x 0.5) and the log CQT's cepstrum (x 1.0);
#    all on masked and unmasked frames; in-batch mixture; bf16 autocast; 1600 updates of 8 x 5 s
mert pretrain --config tiny-wide --audio corpus_v --labels labels_v --out run \
  --set n_codebooks=1 --set codebook_size=500 --set precision=bf16 --set batch_size=8 \
  --set total_updates=1600 --set warmup_updates=50 --set unmasked_weight=1.0 --set ce_weight=0.1 \
  --set cqt_target=log_standardised --set flux_weight=0.3 --set chroma_weight=0.5 --set timbre_weight=1.0 \
  --set 'snapshot_fractions=[0,0.1,0.25,0.5,1.0]' --set log_interval=20 --set ckpt_interval=100
# 4. export to the official layout, with the training summary beside the weights
mert export run -o "$out"
python "$here/summarise_log.py" run labels_v "$out/training_summary.json" "$here/retrain.sh"
# 5. probe curve over the run's snapshots and the benchmark with its floors (3 random inits)
mert bench-suite synth -o suite
mert pretrain-diagnose run --suite suite --audio corpus_v --labels labels_v
mert eval --suite-dir suite -m "$out" -o eval --run-name "$out" --random-init 3
