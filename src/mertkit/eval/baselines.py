"""Hand-crafted baselines, presented as one-layer "models" so the same probes run on them.

* MFCC statistics: 20 MFCCs (librosa conventions: periodic Hann STFT with centred reflect
  padding, power spectrum, Slaney-style mel filterbank, 10*log10 with an 80 dB floor below the
  clip's peak, orthonormal DCT-II) and their deltas; mean and std over time -> 80 values.
* Chroma statistics: STFT spectral peaks from 27.5 Hz to 4.2 kHz, their frequency refined by
  quadratic interpolation, folded into the 12 equal-tempered pitch classes (A = 440 Hz); each
  frame scaled to a maximum of 1; mean and std over time -> 24 values. Index 0 is C.
* Log-mel statistics: the MFCCs' log-mel spectrogram (128 bands, dB, 80 dB floor) before the
  DCT; mean and std over time -> 256 values.

Clip baselines have shape [1, D] per clip (one "layer"), i.e. [N, 1, D] once stacked.

* Onset strength (beat tasks only, :func:`onset_features`): per frame, on the frame grid of the
  beat task's model features (frame t at t / frame_rate seconds), the half-wave rectified
  frame-to-frame rise of a 64-band log-mel spectrogram averaged over all bands (the classic
  onset-strength envelope) and over 8 groups of adjacent bands, each standardised over the
  clip's frames (the probes do not scale their inputs, and raw flux in dB trains a linear probe
  slowly) -> [1, frames, 9]. The beat probe gives it, like every representation, the frames
  either side as context (``ProbeConfig.context``).
  Its centred frames run to the clip's end, so a MERT model's conv front end (which needs a
  full receptive field) yields one or two frames fewer of the same grid.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mertkit.dsp import dct_ii_orthonormal
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


def log_mel(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """[n_mels, frames] mel power in dB, floored ``cfg.top_db`` below the clip's peak."""
    power = power_spectrogram(wave, cfg.n_fft, cfg.hop_length)
    mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels) @ power
    decibels = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(decibels, decibels.max() - cfg.top_db)


def mfcc(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """MFCCs [n_mfcc, frames] of mono audio at ``cfg.sample_rate``."""
    return dct_ii_orthonormal(cfg.n_mels, cfg.n_mfcc) @ log_mel(wave, cfg)


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


def logmel_stats(wave: np.ndarray, cfg: SpectralConfig = SpectralConfig()) -> np.ndarray:
    """[1, 2 * n_mels]: mean and std over time of the log-mel spectrogram (dB)."""
    bands = log_mel(wave, cfg)
    return np.concatenate([bands.mean(axis=1), bands.std(axis=1)])[None].astype(np.float32)


# Clip-level baselines (every clip task); the frame-level onset baseline is ONSET below.
BASELINES: dict[str, Callable[[np.ndarray, SpectralConfig], np.ndarray]] = {
    "mfcc": mfcc_stats,
    "chroma": chroma_stats,
    "logmel": logmel_stats,
}
ONSET = "onset"
# Written into every baseline feature file; the suite's cache recomputes files of another
# version, so a changed feature definition never reuses stale features.
FEATURE_VERSION = "3"
DEFAULT_BASELINES = ("mfcc", "chroma", "logmel", ONSET)
# How reports name each baseline's row, line or column.
BASELINE_TITLES = {"mfcc": "MFCC stats", "chroma": "chroma stats", "logmel": "log-mel stats", ONSET: "onset strength"}
# Which tasks each baseline serves (the CLI help and the report notes say the same).
BASELINE_SCOPE = "mfcc, chroma, logmel: clip tasks (pitch, pitch_class, instrument, key, chorale_key, tempo); onset: beat"


@dataclass(frozen=True)
class OnsetConfig:
    """Onset-strength features. The analysis rate is the one nearest ``nominal_sample_rate``
    whose hop is a whole number of samples per frame of the beat task's frame rate."""

    nominal_sample_rate: int = 22050
    n_fft: int = 1024
    n_mels: int = 64
    bands: int = 8
    top_db: float = 80.0

    @property
    def width(self) -> int:
        return 1 + self.bands


def onset_grid(frame_rate: float, cfg: OnsetConfig = OnsetConfig()) -> tuple[int, int]:
    """(analysis sample rate, hop in samples) putting one STFT frame on each beat-task frame."""
    if not (np.isfinite(frame_rate) and frame_rate > 0):
        raise FeatureError(f"onset baseline: frame rate must be a positive number, got {frame_rate}")
    hop = max(1, round(cfg.nominal_sample_rate / frame_rate))
    rate = hop * frame_rate
    if abs(rate - round(rate)) > 1e-6:
        raise FeatureError(f"onset baseline: a frame rate of {frame_rate} Hz has no whole-sample hop near "
                           f"{cfg.nominal_sample_rate} Hz")
    return int(round(rate)), hop


def onset_strength(wave: np.ndarray, sample_rate: int, hop: int, cfg: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """[1 + bands, frames]: row 0 the onset-strength envelope (log-mel rise from the previous
    frame, negative changes set to 0, averaged over the mel bands), rows 1.. the same averaged
    within ``bands`` groups of adjacent mel bands (low to high). Frame t is centred at t * hop.

    A sound raises the log-mel of the first frame whose window reaches it: half a window minus,
    on average, half a hop before the frame centred on it. The envelope is delayed by that
    many frames, n_fft / (2 hop) - 1/2 rounded, to put the rise on the frame of the onset.
    """
    if cfg.n_mels % cfg.bands:
        raise FeatureError(f"onset baseline: {cfg.n_mels} mel bands do not split into {cfg.bands} groups")
    spectral = SpectralConfig(sample_rate=sample_rate, n_fft=cfg.n_fft, hop_length=hop, n_mels=cfg.n_mels, top_db=cfg.top_db)
    decibels = log_mel(wave, spectral)
    rise = np.maximum(0.0, np.diff(decibels, axis=1))  # column j: from frame j to j + 1
    groups = rise.reshape(cfg.bands, cfg.n_mels // cfg.bands, -1).mean(axis=1)
    rows = np.concatenate([rise.mean(axis=0, keepdims=True), groups])
    frames = decibels.shape[1]
    first = 1 + max(0, round(cfg.n_fft / (2 * hop) - 0.5))
    strength = np.zeros((rows.shape[0], frames))
    if first < frames:
        strength[:, first:] = rows[:, : frames - first]
    return strength


def onset_features(wave: np.ndarray, sample_rate: int, hop: int, cfg: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """[1, frames, 1 + bands]: :func:`onset_strength` with each row standardised over the clip's
    frames (zero mean, unit variance; a constant row becomes 0). Column 0 is the envelope."""
    strength = onset_strength(wave, sample_rate, hop, cfg)
    spread = strength.std(axis=1, keepdims=True)
    strength = np.divide(strength - strength.mean(axis=1, keepdims=True), spread,
                         out=np.zeros_like(strength), where=spread > 0)
    return strength.T[None].astype(np.float32)


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
    _check_clip_baseline(baseline)
    if task.kind in ("frame", "beat"):
        raise FeatureError(f"{baseline} statistics are clip-level; task {task.name!r} is {task.kind} "
                           f"(the {ONSET!r} baseline serves beat tasks)")
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
    _check_clip_baseline(baseline)
    written = []
    for record in records:
        features = BASELINES[baseline](load_segment(record, cfg.sample_rate), cfg)
        metadata = {"model": baseline, "sample_rate": str(cfg.sample_rate), "layers": "1", "pooling": "stats",
                    "source": str(record.audio_path), "baseline_version": FEATURE_VERSION}
        written.append(_save_features(Path(out_dir) / f"{record.path}.safetensors", features, metadata))
    return written


def write_onset_features(
    records: Sequence[Record], out_dir: str | Path, frame_rate: float, cfg: OnsetConfig = OnsetConfig()
) -> list[Path]:
    """Write unpooled ``[1, frames, D]`` onset features like ``mert extract --pool none`` at
    ``frame_rate`` (the beat task's model features' rate), so beat targets land on the same grid."""
    sample_rate, hop = onset_grid(frame_rate, cfg)
    written = []
    for record in records:
        features = onset_features(load_segment(record, sample_rate), sample_rate, hop, cfg)
        metadata = {"model": ONSET, "sample_rate": str(sample_rate), "frame_rate": repr(float(frame_rate)), "layers": "1",
                    "pooling": "none", "source": str(record.audio_path), "baseline_version": FEATURE_VERSION}
        written.append(_save_features(Path(out_dir) / f"{record.path}.safetensors", features, metadata))
    return written


def _save_features(target: Path, features: np.ndarray, metadata: dict[str, str]) -> Path:
    from safetensors.numpy import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({"hidden_states": np.ascontiguousarray(features)}, str(target), metadata=metadata)
    return target


def _check_clip_baseline(baseline: str) -> None:
    if baseline == ONSET:
        raise FeatureError(f"{ONSET!r} is a frame-level baseline for beat tasks: use write_onset_features")
    if baseline not in BASELINES:
        raise FeatureError(f"unknown baseline {baseline!r}; choose from {sorted([*BASELINES, ONSET])}")
