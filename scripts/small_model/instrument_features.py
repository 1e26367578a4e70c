"""Which clip statistics carry the synth suite's instrument task, under `mert eval`'s own MLP
probe (ProbeSettings defaults: 3 seeds, 3 learning rates, early stopping on validation)?

The session 8 question: MFCC statistics beat every model on instrument, and a model's
mean-pooled frames can only hold what its targets ask of each frame. This prints, for the
instrument clips of a suite, the test accuracy of hand-made clip features:

* MFCC statistics as `mert eval` computes them, and parts of them (mean only, no deltas);
* the log CQT's cepstrum (the pre-training `timbre` target), its clip mean, std, std of change;
* the full-band log-mel cepstrum, the same statistics;
* the `texture` target of pre-training, mean-pooled over the clip as a model's frames are,
  with plain and log stds and several windows.

With ``--model NAME`` (session 23) it adds the model's hidden states pooled two ways, mean
(as `mert eval` pools them) and mean + std (the statistics MFCC stats get), every layer probed
and the best chosen on validation, and with ``--random-init SEED`` the same rows for its random
initialisation; each model row also gets its paired difference from MFCC stats:

    python scripts/small_model/instrument_features.py suite
    python scripts/small_model/instrument_features.py suite_big --model mertkit-tiny-mel --random-init 0 --only-mfcc

Every line is one feature set, its width and test accuracy (mean ± std over probe seeds).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mertkit.eval.baselines import SpectralConfig, deltas, load_segment, mfcc
from mertkit.eval.datasets import Record, encode_labels
from mertkit.eval.features import from_arrays
from mertkit.eval.probes import ProbeResult, paired_difference, run_probe
from mertkit.eval.suite_runner import ProbeSettings, load_model, load_suite_tasks, random_init_model
from mertkit.pretrain.mlm_model import (
    TextureSpectrogram, build_cqt, cepstrum, local_statistics, log_standardised, texture,
)
from mertkit.pretrain.pretrain_config import PretrainConfig, load_config

COEFFICIENTS = 20


def clip_stats(frames: np.ndarray) -> np.ndarray:
    """[frames, C] -> [3C]: mean, std and std of the frame-to-frame change over the clip."""
    return np.concatenate([frames.mean(0), frames.std(0), np.diff(frames, axis=0).std(0)])


def pooled_local(frames: np.ndarray, half_width: int, log: bool) -> np.ndarray:
    """`local_statistics` over +-half_width frames, mean-pooled over the clip (what a model's
    mean-pooled frames hold when it has learnt them); `log`: log(std + 0.01) instead."""
    values = torch.from_numpy(frames)[None].double()
    stats = local_statistics(values, torch.ones(values.shape[:2], dtype=torch.bool), half_width)[0]
    if log:
        stats[:, frames.shape[1]:] = torch.log(stats[:, frames.shape[1]:] + 1e-2)
    return stats.mean(0).numpy()


def clip_frames(record: Record, cqt: torch.nn.Module, mel: TextureSpectrogram, cfg: PretrainConfig) -> dict[str, np.ndarray]:
    """Per-frame representations of one clip: MFCC (+ deltas) as `mert eval`'s baseline reads
    the clip, and the log-CQT and log-mel cepstra and texture of pre-training."""
    wave = load_segment(record, cfg.sample_rate)
    hop = cfg.mert_config().hop_length
    frames = wave.shape[0] // hop
    tensor = torch.from_numpy(wave)[None].float()
    valid = torch.ones(1, frames, dtype=torch.bool)
    with torch.no_grad():
        magnitude = cqt(tensor, num_frames=frames).transpose(1, 2)
        mel_power = mel(tensor, frames)
    spectral = SpectralConfig()
    coefficients = mfcc(load_segment(record, spectral.sample_rate), spectral)
    return {
        "mfcc": coefficients.T, "mfcc_delta": deltas(coefficients).T,
        "cqt_cep": cepstrum(log_standardised(magnitude, valid), COEFFICIENTS)[0].double().numpy(),
        "mel_cep": cepstrum(log_standardised(mel_power, valid), COEFFICIENTS)[0].double().numpy(),
        "texture": texture(mel_power, valid, COEFFICIENTS, half_width=37)[0].double().numpy(),
    }


FEATURES: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "MFCC stats (mert eval: mean+std of MFCC and deltas)":
        lambda f: np.concatenate([np.concatenate([f["mfcc"], f["mfcc_delta"]], 1).mean(0),
                                  np.concatenate([f["mfcc"], f["mfcc_delta"]], 1).std(0)]),
    "MFCC mean only": lambda f: f["mfcc"].mean(0),
    "MFCC mean+std, no deltas": lambda f: np.concatenate([f["mfcc"].mean(0), f["mfcc"].std(0)]),
    "log-CQT cepstrum (timbre target): clip mean": lambda f: f["cqt_cep"].mean(0),
    "log-CQT cepstrum: clip mean, std, std of change": lambda f: clip_stats(f["cqt_cep"]),
    "log-mel cepstrum: clip mean": lambda f: f["mel_cep"].mean(0),
    "log-mel cepstrum: clip mean, std, std of change": lambda f: clip_stats(f["mel_cep"]),
    "log-mel cepstrum: local stats +-0.25 s, pooled": lambda f: pooled_local(f["mel_cep"], 19, log=False),
    "log-mel cepstrum: local stats +-0.5 s, pooled": lambda f: pooled_local(f["mel_cep"], 37, log=False),
    "log-mel cepstrum: local stats +-1 s, pooled": lambda f: pooled_local(f["mel_cep"], 75, log=False),
    "log-mel cepstrum: local log stds +-0.25 s, pooled": lambda f: pooled_local(f["mel_cep"], 19, log=True),
    "texture target (+-0.5 s, gains), pooled": lambda f: f["texture"].mean(0),
}


@torch.inference_mode()
def model_rows(model: torch.nn.Module, name: str, records: list[Record], sample_rate: int) -> dict[str, np.ndarray]:
    """[clip, layer, D] clip vectors from every hidden state: mean-pooled, and mean + std pooled."""
    pooled = []
    for record in records:
        wave = torch.from_numpy(load_segment(record, sample_rate))[None].float()
        states = torch.cat(list(model(wave).hidden_states))  # [layers, frames, D]
        pooled.append(torch.cat([states.mean(1), states.std(1)], -1).numpy())
    both = np.stack(pooled)
    width = both.shape[-1] // 2
    return {f"{name}: hidden states, mean-pooled": both[..., :width],
            f"{name}: hidden states, mean+std pooled": both}


def probe_rows(task, rows: dict[str, np.ndarray | Callable], frames: dict, against: ProbeResult | None) -> ProbeResult:
    """Probe every row; print its width, test accuracy and (``against`` given) the paired
    difference from it. Returns the first row's result."""
    probe = ProbeSettings().config("all")
    first = None
    for name, feature in rows.items():
        splits = []
        for split in ("train", "valid", "test"):
            index = [i for i, r in enumerate(task.records) if r.split == split]
            if callable(feature):
                x = np.stack([feature(frames[task.records[i].path])[None] for i in index])
            else:
                x = feature[index]
            splits.append((x.astype(np.float32), encode_labels([task.records[i] for i in index], task.spec)))
        result = run_probe(task.spec, from_arrays(*splits), probe)
        first = first or result
        line = (f"{name:54s} {splits[0][0].shape[-1]:4d} dims  test {100 * result.score:5.1f} "
                f"± {100 * result.test_std[result.metric]:.1f}")
        if against is not None:
            gap = paired_difference(result, against)
            low, high = gap.interval
            line += f"  vs MFCC stats {100 * gap.difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] {gap.verdict}"
        print(line, flush=True)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", type=Path, help="a suite folder (`mert bench-suite synth -o suite`)")
    parser.add_argument("--model", help="also probe this model's hidden states (registry name or folder)")
    parser.add_argument("--random-init", type=int, action="append", default=[], metavar="SEED",
                        help="with --model: also its random initialisation from this seed (repeatable)")
    parser.add_argument("--only-mfcc", action="store_true", help="of the hand-made features, MFCC stats only")
    args = parser.parse_args()
    if args.random_init and not args.model:
        parser.error("--random-init needs --model")
    (task,) = load_suite_tasks({"instrument": args.suite / "instrument"})
    cfg = load_config("tiny-wide")
    cqt, mel = build_cqt(cfg), TextureSpectrogram(cfg.sample_rate, cfg.mert_config().hop_length)
    frames = {r.path: clip_frames(r, cqt, mel, cfg) for r in task.records}
    features = dict(list(FEATURES.items())[:1]) if args.only_mfcc else FEATURES
    mfcc_result = probe_rows(task, features, frames, against=None)
    if args.model:
        model, info = load_model(args.model)
        models = [(model.eval(), info.name)]
        models += [(twin, twin_info.name) for twin, twin_info in
                   (random_init_model(model, info, seed) for seed in args.random_init)]
        for each, name in models:
            probe_rows(task, model_rows(each, name, task.records, info.sample_rate), frames, against=mfcc_result)


if __name__ == "__main__":
    main()
