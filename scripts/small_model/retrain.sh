#!/usr/bin/env bash
# The shipped model, `mertkit-tiny-mel` (session 21, run `cq3f`), from nothing: every step is
# seeded. Run from an empty folder with mertkit installed. On the 2-core CPU: corpus and labels
# about 6 min; pre-training 10 000 updates in fp32 (two threads: about 3.2 h at 0.87 updates/s on
# an AVX2-only EPYC, the shipped run); evaluation about 10 min (bench-suite and eval) plus 15 min
# (pretrain-diagnose). On an AVX512-BF16 CPU `--set precision=auto` trains in bf16 autocast in
# about half the time, but that is another run (session 19's `cq3`), not these weights.
#
#   bash scripts/small_model/retrain.sh [MODEL_OUT]     # MODEL_OUT defaults to ./mertkit-tiny-mel
set -euo pipefail
out="${1:-mertkit-tiny-mel}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# 1. corpus: 20 h of structured MIDI music, half the sections solos or duos, every pitched GM
#    program free to lead (seed 1000; the benchmark suite renders from its own generator and seeds)
mert synth-corpus -o corpus_gm --hours 20 --seed 1000 --texture varied --palette gm --workers 2
# 2. teacher: one k-means codebook (500 codes) on log-mel + chroma frames of the corpus, at the
#    backbone's 25 Hz
mert labels corpus_gm -o labels_gm25 --teacher kmeans --features logmel_chroma --codebook-size 500 --frame-rate 25
# 3. pre-training: tiny-mel backbone (MERT-v2 layout: normalised log-mel, ConvNeXt-V2 subsampling
#    to 25 Hz, 4 Conformer blocks x 256); the k-means codes (CE x 0.1) and, on the CQT head, the
#    log-standardised CQT with four targets derived from the audio: each octave's onset flux
#    (x 0.3), the chroma (x 0.5), the log CQT's cepstrum (x 1.0) and the texture, local statistics
#    of a full-band log-mel cepstrum (x 1.0); all on masked and unmasked frames; no in-batch
#    mixture (it costs pitch early: scripts/small_model/README.md, session 12); the CQT term x 3
#    (session 19: pitch ahead of the random initialisation on the large split); fp32 (the shipped
#    run's precision); batches of 8 x 5 s; lr warmed up over 300 updates and decayed linearly to
#    0 at 10 000. (The shipped run was stopped at update 3763 by the end of a session and resumed
#    from its checkpoint of update 3700: `mert pretrain --audio corpus_gm --labels labels_gm25
#    --out run --resume`.)
mert pretrain --config tiny-mel --audio corpus_gm --labels labels_gm25 --out run \
  --set n_codebooks=1 --set codebook_size=500 --set precision=fp32 --set batch_size=8 \
  --set warmup_updates=300 --set unmasked_weight=1.0 --set ce_weight=0.1 \
  --set cqt_target=log_standardised --set cqt_weight=3.0 --set flux_weight=0.3 --set chroma_weight=0.5 --set timbre_weight=1.0 \
  --set mixture_prob=0 --set texture_weight=1.0 \
  --set 'snapshot_fractions=[0,0.02,0.04,0.08,0.16,0.24,0.36,0.48,0.64,0.8,1.0]' --set log_interval=20 --set ckpt_interval=100 \
  --set total_updates=10000
# 4. export to the official layout (weights stored as float16: 15 MB; they load as float32), with
#    the training summary beside the weights
mert export run -o "$out" --format safetensors --dtype float16
python "$here/summarise_log.py" run labels_gm25 "$out/training_summary.json" "$here/retrain.sh"
# 5. probe curve over the run's snapshots and the benchmark with its floors (3 random inits)
mert bench-suite synth -o suite
mert pretrain-diagnose run --suite suite --audio corpus_gm --labels labels_gm25
mert eval --suite-dir suite -m "$out" -o eval --run-name "$out" --random-init 3
