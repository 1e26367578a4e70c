"""Hand-crafted baselines, presented as one-layer "models" so the same probes run on them.

* MFCC statistics: 20 MFCCs (librosa conventions: periodic Hann STFT with centred reflect
  padding, power spectrum, Slaney-style mel filterbank, 10*log10 with an 80 dB floor below the
  clip's peak, orthonormal DCT-II) and their deltas; mean and std over time -> 80 values.
* Chroma statistics: STFT spectral peaks from 27.5 Hz to 4.2 kHz, their frequency refined by
  quadratic interpolation, folded into the 12 equal-tempered pitch classes (A = 440 Hz); each
  frame scaled to a maximum of 1; mean and std over time -> 24 values. Index 0 is C.

Features have shape [1, D] per clip (one "layer"), i.e. [N, 1, D] once stacked.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mertkit.eval.datasets import SPLITS, Record, TaskSpec, encode_labels
from mertkit.eval.features import FeatureError, FeatureSplits, SplitData

CHROMA_FMIN_HZ = 27.5
CHROMA_FMAX_HZ = 4186.0


@dataclass(frozen=True)
class SpectralConfig:
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    n_mfcc: int = 20
    top_db: float = 80.0


def power_spectrogram(wave: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """|STFT|^2, shape [n_fft // 2 + 1, frames]; centred frames, reflect padding, periodic Hann."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {wave.shape}")
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    if padded.size < n_fft:
        raise ValueError(f"audio of {wave.size} samples is too short for n_fft={n_fft}")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).T


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangles between mel-spaced edges, area-normalised (Slaney)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


def dct_ii_orthonormal(n_input: int, n_output: int) -> np.ndarray:
    """[n_output, n_input] orthonormal DCT-II matrix."""
    k = np.arange(n_output)[:, None]
    n = np.arange(n_input)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_input)) * np.sqrt(2.0 / n_input)
    basis[0] /= np.sqrt(2.0)
    return basis


def mfcc(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """MFCCs [n_mfcc, frames] of mono audio at ``cfg.sample_rate``."""
    power = power_spectrogram(wave, cfg.n_fft, cfg.hop_length)
    mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels) @ power
    log_mel = 10.0 * np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - cfg.top_db)
    return dct_ii_orthonormal(cfg.n_mels, cfg.n_mfcc) @ log_mel


def deltas(features: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over time (axis 1): sum_n n (c[t+n] - c[t-n]) / (2 sum n^2), edges repeated."""
    padded = np.pad(features, ((0, 0), (width, width)), mode="edge")
    frames = features.shape[1]
    total = sum(n * (padded[:, width + n : width + n + frames] - padded[:, width - n : width - n + frames]) for n in range(1, width + 1))
    return total / (2 * sum(n * n for n in range(1, width + 1)))


def chroma(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """[12, frames] pitch-class energy (C = 0), each frame scaled to max 1 (silent frames stay 0).

    Folding raw STFT bins blurs low notes (a bin can be wider than a semitone), so each local
    spectral peak's frequency is refined by quadratic interpolation of the log power over its
    two neighbours, and the peak's power goes to the nearest equal-tempered pitch class.
    """
    power = power_spectrogram(wave, cfg.n_fft, cfg.hop_length)
    log_power = np.log(power + 1e-12)
    left, centre, right = log_power[:-2], log_power[1:-1], log_power[2:]
    is_peak = (power[1:-1] > power[:-2]) & (power[1:-1] >= power[2:])
    curvature = left - 2 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    bins = np.arange(1, power.shape[0] - 1)[:, None] + offset
    hz = bins * cfg.sample_rate / cfg.n_fft
    keep = is_peak & (hz >= CHROMA_FMIN_HZ) & (hz <= CHROMA_FMAX_HZ)
    pitch_class = np.rint(69.0 + 12.0 * np.log2(hz[keep] / 440.0)).astype(np.int64) % 12
    frame = np.nonzero(keep)[1]
    folded = np.zeros((12, power.shape[1]))
    np.add.at(folded, (pitch_class, frame), power[1:-1][keep])
    peak = folded.max(axis=0, keepdims=True)
    return np.divide(folded, peak, out=np.zeros_like(folded), where=peak > 0)


def mfcc_stats(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """[1, 4 * n_mfcc]: mean and std over time of MFCCs and their deltas."""
    coefficients = mfcc(wave, cfg)
    both = np.concatenate([coefficients, deltas(coefficients)])
    return np.concatenate([both.mean(axis=1), both.std(axis=1)])[None].astype(np.float32)


def chroma_stats(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """[1, 24]: mean and std over time of the chroma."""
    pitch_classes = chroma(wave, cfg)
    return np.concatenate([pitch_classes.mean(axis=1), pitch_classes.std(axis=1)])[None].astype(np.float32)


BASELINES: dict[str, Callable[[np.ndarray, SpectralConfig], np.ndarray]] = {
    "mfcc": mfcc_stats,
    "chroma": chroma_stats,
}


def load_segment(record: Record, sample_rate: int) -> np.ndarray:
    """Mono float audio of ``record`` (its start/end segment), resampled to ``sample_rate``."""
    import soundfile
    import soxr

    try:
        info = soundfile.info(str(record.audio_path))
        first = 0 if record.start is None else int(round(record.start * info.samplerate))
        last = -1 if record.end is None else int(round(record.end * info.samplerate))
        audio, rate = soundfile.read(str(record.audio_path), start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise FeatureError(f"{record.audio_path}: cannot read audio ({error})") from error
    mono = audio.mean(axis=1)
    return mono if rate == sample_rate else soxr.resample(mono, rate, sample_rate)


def baseline_feature_splits(
    records: Sequence[Record],
    task: TaskSpec,
    baseline: str,
    cfg: SpectralConfig = SpectralConfig(),
    load: Callable[[Record, int], np.ndarray] = load_segment,
) -> FeatureSplits:
    """Compute a baseline's [N, 1, D] features for clip-level ``records`` (wav/flac/ogg via soundfile)."""
    if baseline not in BASELINES:
        raise FeatureError(f"unknown baseline {baseline!r}; choose from {sorted(BASELINES)}")
    if task.kind in ("frame", "beat"):
        raise FeatureError(f"baselines are clip-level; task {task.name!r} is {task.kind}")
    compute = BASELINES[baseline]
    splits = {}
    for split in SPLITS:
        chosen = [record for record in records if record.split == split]
        if not chosen:
            raise FeatureError(f"task {task.name!r}: split {split!r} has no records")
        x = np.stack([compute(load(record, cfg.sample_rate), cfg) for record in chosen])
        splits[split] = SplitData(x, encode_labels(chosen, task), [record.path for record in chosen])
    return FeatureSplits(**splits, meta={"source": f"baseline:{baseline}", "model": baseline})


def write_baseline_features(
    records: Sequence[Record], out_dir: str | Path, baseline: str, cfg: SpectralConfig = SpectralConfig()
) -> list[Path]:
    """Write ``<out_dir>/<path>.safetensors`` like ``mert extract``, so ``mert probe`` can read them."""
    from safetensors.numpy import save_file

    if baseline not in BASELINES:
        raise FeatureError(f"unknown baseline {baseline!r}; choose from {sorted(BASELINES)}")
    written = []
    for record in records:
        target = Path(out_dir) / f"{record.path}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        features = BASELINES[baseline](load_segment(record, cfg.sample_rate), cfg)
        metadata = {"model": baseline, "sample_rate": str(cfg.sample_rate), "layers": "1", "pooling": "stats", "source": str(record.audio_path)}
        save_file({"hidden_states": np.ascontiguousarray(features)}, str(target), metadata=metadata)
        written.append(target)
    return written
