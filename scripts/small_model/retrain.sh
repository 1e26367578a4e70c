#!/usr/bin/env bash
# The shipped model, `mertkit-tiny-mel` (session 15), from nothing: every step is seeded. Run
# from an empty folder with mertkit installed. On the 2-core CPU: corpus and labels about 3 min;
# pre-training 10 000 updates (two threads: 96 min at 1.74 updates/s in bf16 on an AVX512-BF16 Xeon,
# about 2 h at 1.35 updates/s on a slower one; about 3.3 h at 0.85 updates/s in fp32 on an AVX2-only
# EPYC, where bf16 autocast would take two days); evaluation about 10 min (bench-suite and eval) plus
# 15 min (pretrain-diagnose).
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
#    mixture (it costs pitch early: scripts/small_model/README.md, session 12); bf16 autocast where
#    the CPU has native bf16 (the shipped run: AVX512-BF16), fp32 elsewhere (precision=auto);
#    batches of 8 x 5 s; lr warmed up over 300 updates and decayed linearly to 0 at 10 000.
#    (The shipped run stopped at update 2056 and was resumed from its checkpoint of update 2000
#    with `--resume` and the same `--set`s.)
mert pretrain --config tiny-mel --audio corpus_gm --labels labels_gm25 --out run \
  --set n_codebooks=1 --set codebook_size=500 --set precision=auto --set batch_size=8 \
  --set warmup_updates=300 --set unmasked_weight=1.0 --set ce_weight=0.1 \
  --set cqt_target=log_standardised --set flux_weight=0.3 --set chroma_weight=0.5 --set timbre_weight=1.0 \
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
