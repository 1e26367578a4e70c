#!/usr/bin/env bash
# The short pre-training runs behind the table "Retrain attempts" in README.md (this folder).
# Each run is probed with `mert pretrain-diagnose RUN --suite suite --audio AUDIO --labels LABELS`.
# The runs differ only in the settings shown; the seed (1), the `tiny` preset, batch 8 x 5 s crops,
# bf16 autocast where the CPU has native bf16 (fp32 elsewhere: precision=auto), one k-means codebook of 500 codes are shared.
#
#   bash scripts/small_model/pilots.sh data      # corpus, suite, labels (about 15 CPU minutes)
#   bash scripts/small_model/pilots.sh NAME      # one run: recipe | unmasked | lr | logcqt | cqt_only | ce01 | varied
#
# Session 5 runs: the `tiny-wide` preset (one 1280-sample learned filterbank instead of the
# 7-conv front-end; see README.md), a 6 h varied-texture corpus and its own k-means teacher:
#   bash scripts/small_model/pilots.sh wide-data # corpus_v, suite, labels_v (about 5 CPU minutes)
#   bash scripts/small_model/pilots.sh NAME      # wide-recipe | wide-cqt | wide-ce01 | wide-logcqt
# The ablations at a reduced budget (wide-ce01's schedule of 600 updates, each probed at update
# 300 with `mert pretrain-diagnose`), one piece changed each; the teachers' labels first:
#   bash scripts/small_model/pilots.sh wide-teachers  # labels_bestrq, labels_mfcc, labels_codec (about 25 CPU minutes)
#   bash scripts/small_model/pilots.sh NAME      # wide-nomix | wide-nocqt | wide-bestrq | wide-mfcc | wide-mfcc-ce05 |
#                                                # wide-codec | wide-640 | wide-flux01 | wide-flux05 | wide-flux05-long
# Session 7: the CQT head also predicts chroma and the log CQT's cepstrum (`chroma_weight`,
# `timbre_weight`) beside the onset flux, three weightings of 1600 updates each:
#   bash scripts/small_model/pilots.sh NAME      # wide-derived-a | wide-derived-b | wide-derived-c
# and the ablations of the shipped recipe (wide-derived-b) at the reduced budget (600 updates,
# probed at update 300), one piece removed each:
#   bash scripts/small_model/pilots.sh NAME      # final-600 | final-nomix | final-noflux | final-nochroma-timbre |
#                                                # final-noce | final-bestrq (labels_bestrq: wide-teachers)
set -euo pipefail

common=(--config tiny --set n_codebooks=1 --set codebook_size=500 --set precision=auto --set batch_size=8
        --set log_interval=20 --set ckpt_interval=100)
snapshots=(--set 'snapshot_fractions=[0,0.1,0.25,0.5,0.75,1.0]')
wide_base=(--config tiny-wide --set n_codebooks=1 --set codebook_size=500 --set precision=auto --set batch_size=8
           --set log_interval=20 --set ckpt_interval=100 --set warmup_updates=50 --audio corpus_v)
wide=("${wide_base[@]}" --labels labels_v)
shipped=(--set unmasked_weight=1.0 --set ce_weight=0.1 --set cqt_target=log_standardised --set flux_weight=0.3
         --set chroma_weight=0.5 --set timbre_weight=1.0)
short=(--set total_updates=600 --set 'snapshot_fractions=[0,0.5,1.0]')
ablation=(--set total_updates=600 --set unmasked_weight=1.0 --set ce_weight=0.1 --set 'snapshot_fractions=[0,0.5,1.0]')
fast=(--set lr=2e-3 --set unmasked_weight=1.0 --set total_updates=1400 --set warmup_updates=100)

case "${1:-}" in
  data)
    mert synth-corpus -o corpus --hours 20 --seed 0 --workers 2
    mert bench-suite synth -o suite
    mert labels corpus -o labels --teacher kmeans --features logmel_chroma --codebook-size 500
    # 2.5 h with solo and duo sections, labelled with the same fitted k-means teacher
    mert synth-corpus -o corpus_varied --hours 2.5 --seed 1000 --texture varied
    mert labels corpus_varied -o labels_varied --teacher kmeans --teacher-file labels/teacher.npz ;;
  recipe)    # the MERT-v1 recipe with the k-means teacher
    mert pretrain "${common[@]}" "${snapshots[@]}" --audio corpus --labels labels --out recipe \
      --set total_updates=2200 --set warmup_updates=150 ;;
  unmasked)  # + CE and CQT on the unmasked frames too
    mert pretrain "${common[@]}" "${snapshots[@]}" --audio corpus --labels labels --out unmasked \
      --set total_updates=1800 --set warmup_updates=150 --set unmasked_weight=1.0 ;;
  lr)        # + learning rate 2e-3 (120 updates)
    mert pretrain "${common[@]}" --audio corpus --labels labels --out lr --set 'snapshot_fractions=[0,1.0]' \
      --set total_updates=120 --set warmup_updates=30 --set lr=2e-3 --set unmasked_weight=1.0 ;;
  logcqt)    # + log-standardised CQT target (120 updates)
    mert pretrain "${common[@]}" --audio corpus --labels labels --out logcqt --set 'snapshot_fractions=[0,1.0]' \
      --set total_updates=120 --set warmup_updates=30 --set lr=2e-3 --set unmasked_weight=1.0 \
      --set cqt_target=log_standardised ;;
  cqt_only)  # CQT regression alone
    mert pretrain "${common[@]}" "${snapshots[@]}" "${fast[@]}" --audio corpus --labels labels --out cqt_only \
      --set cqt_target=log_standardised --set ce_weight=0 ;;
  ce01)      # CQT + CE at weight 0.1
    mert pretrain "${common[@]}" "${snapshots[@]}" "${fast[@]}" --audio corpus --labels labels --out ce01 \
      --set cqt_target=log_standardised --set ce_weight=0.1 ;;
  varied)    # ce01 on the varied-texture corpus
    mert pretrain "${common[@]}" "${snapshots[@]}" "${fast[@]}" --audio corpus_varied --labels labels_varied \
      --out varied --set cqt_target=log_standardised --set ce_weight=0.1 ;;
  wide-data)
    mert bench-suite synth -o suite
    mert synth-corpus -o corpus_v --hours 6 --seed 1000 --texture varied
    mert labels corpus_v -o labels_v --teacher kmeans --features logmel_chroma --codebook-size 500 ;;
  wide-recipe)  # the MERT-v1 recipe (CE on masked frames only) on tiny-wide, 300 updates
    mert pretrain "${wide[@]}" --out wide-recipe --set total_updates=300 --set 'snapshot_fractions=[0,0.5,1.0]' ;;
  wide-cqt)     # CQT on every frame, no CE, 600 updates
    mert pretrain "${wide[@]}" --out wide-cqt --set total_updates=600 --set unmasked_weight=1.0 --set ce_weight=0 ;;
  wide-ce01)    # CQT + CE weight 0.1 on every frame, 600 updates
    mert pretrain "${wide[@]}" --out wide-ce01 --set total_updates=600 --set unmasked_weight=1.0 --set ce_weight=0.1 ;;
  wide-logcqt)  # wide-ce01 with the log-standardised CQT target, 1600 updates
    mert pretrain "${wide[@]}" --out wide-logcqt --set total_updates=1600 --set unmasked_weight=1.0 --set ce_weight=0.1 \
      --set cqt_target=log_standardised ;;
  wide-teachers)
    mert labels corpus_v -o labels_bestrq --teacher bestrq --codebooks 1 --codebook-size 500
    mert labels corpus_v -o labels_mfcc --teacher kmeans --features mfcc --codebook-size 500 --report suite
    mert labels corpus_v -o labels_codec --teacher codec --train-teacher --train-steps 600 ;;
  wide-nomix)      # no in-batch mixture
    mert pretrain "${wide[@]}" "${ablation[@]}" --out wide-nomix --set mixture_prob=0 ;;
  wide-nocqt)      # no CQT head: the k-means CE alone
    mert pretrain "${wide[@]}" "${ablation[@]}" --out wide-nocqt --set cqt=false ;;
  wide-bestrq)     # BEST-RQ codes instead of k-means on log-mel + chroma
    mert pretrain "${wide_base[@]}" "${ablation[@]}" --labels labels_bestrq --out wide-bestrq ;;
  wide-mfcc)       # k-means on MFCC frames instead of log-mel + chroma
    mert pretrain "${wide_base[@]}" "${ablation[@]}" --labels labels_mfcc --out wide-mfcc ;;
  wide-mfcc-ce05)  # the same with CE x 0.5
    mert pretrain "${wide_base[@]}" "${ablation[@]}" --labels labels_mfcc --out wide-mfcc-ce05 --set ce_weight=0.5 ;;
  wide-codec)      # mertkit's own RVQ codec (8 x 1024 codes, 600 codec updates), the MERT-v1 layout of 8 CE heads
    mert pretrain "${wide_base[@]}" "${ablation[@]}" --labels labels_codec --out wide-codec \
      --set n_codebooks=8 --set codebook_size=1024 ;;
  wide-640)        # a 640-sample (27 ms) filterbank instead of 1280
    mert pretrain "${wide[@]}" "${ablation[@]}" --out wide-640 --set 'model.conv_kernel=[640,1]' ;;
  wide-flux01)     # + the onset flux of each octave as a CQT-head target, weight 0.1
    mert pretrain "${wide[@]}" "${ablation[@]}" --out wide-flux01 --set flux_weight=0.1 ;;
  wide-flux05)     # the same, weight 0.5
    mert pretrain "${wide[@]}" "${ablation[@]}" --out wide-flux05 --set flux_weight=0.5 ;;
  wide-flux05-long)  # retrain.sh's 1600-update run with the flux target at 0.5 (session 6's next candidate)
    mert pretrain "${wide[@]}" --out wide-flux05-long --set total_updates=1600 --set unmasked_weight=1.0 \
      --set ce_weight=0.1 --set cqt_target=magnitude --set flux_weight=0.5 ;;
  wide-derived-a)  # session 7: the flux, chroma and cepstrum targets beside the magnitude CQT, 1600 updates
    mert pretrain "${wide[@]}" --out wide-derived-a --set total_updates=1600 --set unmasked_weight=1.0 --set ce_weight=0.1 \
      --set 'snapshot_fractions=[0,0.1,0.25,0.5,1.0]' --set cqt_target=magnitude \
      --set flux_weight=0.2 --set chroma_weight=0.3 --set timbre_weight=0.5 ;;
  wide-derived-b)  # the same beside the log-standardised CQT, heavier derived targets
    mert pretrain "${wide[@]}" --out wide-derived-b --set total_updates=1600 --set unmasked_weight=1.0 --set ce_weight=0.1 \
      --set 'snapshot_fractions=[0,0.1,0.25,0.5,1.0]' --set cqt_target=log_standardised \
      --set flux_weight=0.3 --set chroma_weight=0.5 --set timbre_weight=1.0 ;;
  wide-derived-c)  # wide-derived-b with the flux at weight 1.0 (beats)
    mert pretrain "${wide[@]}" --out wide-derived-c --set total_updates=1600 --set unmasked_weight=1.0 --set ce_weight=0.1 \
      --set 'snapshot_fractions=[0,0.1,0.25,0.5,1.0]' --set cqt_target=log_standardised \
      --set flux_weight=1.0 --set chroma_weight=0.5 --set timbre_weight=1.0 ;;
  final-600)  # the shipped recipe on the reduced schedule
    mert pretrain "${wide[@]}" --out final-600 "${shipped[@]}" "${short[@]}" ;;
  final-nomix)  # ... without the in-batch mixture
    mert pretrain "${wide[@]}" --out final-nomix "${shipped[@]}" "${short[@]}" --set mixture_prob=0 ;;
  final-noflux)  # ... without the onset flux target
    mert pretrain "${wide[@]}" --out final-noflux "${shipped[@]}" "${short[@]}" --set flux_weight=0 ;;
  final-nochroma-timbre)  # ... without the chroma and cepstrum targets
    mert pretrain "${wide[@]}" --out final-nochroma-timbre "${shipped[@]}" "${short[@]}" --set chroma_weight=0 --set timbre_weight=0 ;;
  final-noce)  # ... without the teacher's codes (CE weight 0): the CQT head's targets alone
    mert pretrain "${wide[@]}" --out final-noce "${shipped[@]}" "${short[@]}" --set ce_weight=0 ;;
  final-bestrq)  # ... with BEST-RQ codes instead of k-means on log-mel + chroma
    mert pretrain "${wide_base[@]}" --labels labels_bestrq --out final-bestrq "${shipped[@]}" "${short[@]}" ;;
  *)
    echo "usage: bash scripts/small_model/pilots.sh data|recipe|unmasked|lr|logcqt|cqt_only|ce01|varied|wide-data|wide-recipe|wide-cqt|wide-ce01|wide-logcqt|wide-teachers|wide-nomix|wide-nocqt|wide-bestrq|wide-mfcc|wide-mfcc-ce05|wide-codec|wide-640|wide-flux01|wide-flux05|wide-flux05-long|wide-derived-a|wide-derived-b|wide-derived-c|final-600|final-nomix|final-noflux|final-nochroma-timbre|final-noce|final-bestrq" >&2
    exit 2 ;;
esac
