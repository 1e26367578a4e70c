"""Synthetic music-like corpora, learnable labels and tiny configs for the pre-training tests.

Audio: sequences of harmonic notes (pitch from a fixed set of 16 over 4 octaves, duration 0.1-0.3 s,
loudness from 4 levels). Labels come from a deterministic function of the *audio* (not of the
note list): per 320-sample frame, the FFT peak of a window starting at the frame snapped to
the nearest pitch of the set (codebook 0) and the quantised frame energy (codebook 1). So the
labels are learnable from the waveform, and a crop's labels can be recomputed from the crop.
They are written with `mertkit.pretrain.labels.write_labels` through a teacher object, exactly the
layout real EnCodec labels have.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 24000
HOP = 320
WINDOW = 1024
PITCHES = 220.0 * 2.0 ** (np.arange(16) / 4)  # 16 pitches, minor thirds over 4 octaves from A3
LEVELS = (0.08, 0.16, 0.32, 0.64)

TINY_MODEL = {
    "model_type": "mert_model",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "conv_dim": [32, 32, 32, 32, 32, 32, 32],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "sample_rate": SR,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "layerdrop": 0.0,
}


def tiny_config(**changes):
    from mertkit.pretrain.pretrain_config import PretrainConfig

    values = dict(
        model=dict(TINY_MODEL),
        n_codebooks=2, codebook_size=16, final_dim=16,
        cqt=True, cqt_bins=36, cqt_fmin=130.8, cqt_bins_per_octave=12,
        mixture_min_samples=2400, mixture_max_samples=4800,
        lr=2e-3, warmup_updates=10, total_updates=1000, clip_norm=10.0,
        crop_seconds=1.0, min_crop_seconds=0.5, batch_size=4,
        log_interval=1, ckpt_interval=1000, seed=3,
    )
    values.update(changes)
    return PretrainConfig.from_dict(values, source="test config")


def note_sequence(seconds: float, rng: np.random.Generator) -> np.ndarray:
    total = int(seconds * SR)
    out = np.zeros(total, dtype=np.float64)
    t0 = 0
    while t0 < total:
        length = int(rng.uniform(0.1, 0.3) * SR)
        freq = PITCHES[rng.integers(len(PITCHES))]
        level = LEVELS[rng.integers(len(LEVELS))]
        t = np.arange(min(length, total - t0)) / SR
        phase = rng.uniform(0, 2 * np.pi)
        tone = sum(np.sin(2 * np.pi * freq * k * t + phase) / k**1.5 for k in (1, 2, 3))
        out[t0 : t0 + t.size] = level * tone
        t0 += length
    return out.astype(np.float32)


def write_corpus(folder: Path, n_files: int, seconds: tuple[float, float] = (1.2, 2.0), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_files):
        path = folder / f"clip_{i:03d}.wav"
        sf.write(path, note_sequence(rng.uniform(*seconds), rng), SR, subtype="FLOAT")
        paths.append(path)
    return paths


def frame_labels(wav: np.ndarray) -> np.ndarray:
    """int16 [2, ceil(N / 320)]: snapped FFT-peak pitch and quantised energy per frame."""
    frames = -(-wav.shape[0] // HOP)
    padded = np.concatenate([wav, np.zeros(WINDOW, dtype=wav.dtype)])
    windows = np.stack([padded[i * HOP : i * HOP + WINDOW] for i in range(frames)]) * np.hanning(WINDOW)
    spectrum = np.abs(np.fft.rfft(windows, axis=1))
    peak_hz = spectrum.argmax(axis=1) * SR / WINDOW
    pitch = np.abs(np.log2(peak_hz[:, None] + 1e-3) - np.log2(PITCHES)[None, :]).argmin(axis=1)
    rms = np.sqrt((windows[:, :HOP * 2] ** 2).mean(axis=1))
    energy = np.clip(np.floor(np.log2(rms + 1e-6) * 2 + 12), 0, 15).astype(np.int64)
    return np.stack([pitch, energy]).astype(np.int16)


class FrameTeacher:
    """A `mertkit.pretrain.labels.LabelTeacher` whose codes are `frame_labels`."""

    name = "test-frame-teacher"
    bandwidth = 0.0
    sample_rate = SR
    hop_length = HOP
    num_codebooks = 2
    codebook_size = 16

    def codes(self, wav: np.ndarray) -> np.ndarray:
        return frame_labels(wav)


def write_labelled_corpus(root: Path, n_files: int, seconds=(1.2, 2.0), seed: int = 0) -> tuple[Path, Path]:
    from mertkit.pretrain.labels import write_labels

    audio, labels = root / "audio", root / "labels"
    write_corpus(audio, n_files, seconds, seed)
    summary = write_labels(audio, labels, FrameTeacher(), sample_rate=SR, frame_rate=SR // HOP)
    assert not summary.failed, summary.failed
    return audio, labels
