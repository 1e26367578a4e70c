"""MERT-v0-style targets: k-means clusters of hand-made frame features, one label stream.

    model = fit_kmeans(audio_dir, n_clusters=100, features="mfcc")
    write_kmeans_labels(audio_dir, label_dir, model)          # same layout as EnCodec labels
    # then pre-train with n_codebooks=1, codebook_size=100

Features per label frame (frame i covers samples [hop*i, hop*(i+1)), ceil(N / hop) frames,
the rule `mertkit.pretrain.labels` uses) from a Hann-windowed FFT of `n_fft` samples starting at the
frame:

* "mfcc":          20 MFCCs (DCT-II of the log of a 64-band HTK mel spectrum, floored 80 dB
                   below the clip's maximum) + deltas;
* "logmel_chroma": the 64 log-mel bands + a 12-bin chroma (FFT power folded onto pitch
                   classes, normalised per frame);
* "logmel":        the 64 log-mel bands alone (the BEST-RQ teacher's input).

Features are standardised with the fitting sample's mean / std (kept with the centroids)
before sklearn's MiniBatchKMeans. Needs scikit-learn: pip install 'mertkit[pretrain]'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_KINDS = ("mfcc", "logmel_chroma", "logmel")
N_MELS = 64
N_MFCC = 20
TOP_DB = 80.0


class KMeansError(ValueError):
    """Bad k-means settings or a corpus that gives nothing to cluster."""


def _sklearn_kmeans():
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError as err:
        raise KMeansError("k-means labels need scikit-learn: pip install 'mertkit[pretrain]'") from err
    return MiniBatchKMeans


# ---------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular HTK mel filters from 0 Hz to Nyquist."""
    edges_mel = np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - low) / (centre - low)
    falling = (high - bins[None]) / (high - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def chroma_matrix(sample_rate: int, n_fft: int) -> np.ndarray:
    """[12, n_fft // 2 + 1]: each FFT bin (20 Hz - 5 kHz) assigned to its nearest pitch class."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    out = np.zeros((12, freqs.size))
    usable = (freqs >= 20.0) & (freqs <= 5000.0)
    pitch_class = np.round(12 * np.log2(freqs[usable] / 440.0)).astype(int) % 12
    out[pitch_class, np.flatnonzero(usable)] = 1.0
    return out


def power_frames(wav: np.ndarray, hop: int, n_fft: int) -> np.ndarray:
    """[ceil(N / hop), n_fft // 2 + 1] power spectra of windows starting at each frame."""
    frames = -(-wav.shape[0] // hop)
    padded = np.concatenate([wav.astype(np.float64), np.zeros(n_fft)])
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return np.abs(np.fft.rfft(padded[index] * np.hanning(n_fft), axis=1)) ** 2


def frame_features(wav: np.ndarray, sample_rate: int, hop: int, kind: str = "mfcc", n_fft: int = 1024) -> np.ndarray:
    """float32 [ceil(N / hop), dims] features of a mono waveform (see the module docstring)."""
    if kind not in FEATURE_KINDS:
        raise KMeansError(f"features must be one of {FEATURE_KINDS}, got {kind!r}")
    power = power_frames(wav, hop, n_fft)
    log_mel = np.log(power @ mel_filterbank(sample_rate, n_fft).T + 1e-10)
    # an 80 dB floor below the clip's loudest band (as librosa's top_db): leakage-level
    # bands would otherwise dominate the standardised features with noise
    log_mel = np.maximum(log_mel, log_mel.max() - TOP_DB * np.log(10) / 10)
    if kind == "logmel":
        return log_mel.astype(np.float32)
    if kind == "mfcc":
        from scipy.fft import dct

        mfcc = dct(log_mel, type=2, axis=1, norm="ortho")[:, :N_MFCC]
        delta = np.gradient(mfcc, axis=0) if mfcc.shape[0] > 1 else np.zeros_like(mfcc)
        return np.concatenate([mfcc, delta], axis=1).astype(np.float32)
    chroma = power @ chroma_matrix(sample_rate, n_fft).T
    chroma = chroma / (chroma.sum(1, keepdims=True) + 1e-8)
    return np.concatenate([log_mel, chroma], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------
# fitting and labelling
# ---------------------------------------------------------------------------------------
@dataclass
class KMeansLabeller:
    """Fitted centroids + feature settings; also a `mertkit.pretrain.labels.LabelTeacher`."""

    centroids: np.ndarray  # [k, dims] in standardised feature space
    mean: np.ndarray
    std: np.ndarray
    features: str
    sample_rate: int
    hop_length: int
    n_fft: int = 1024
    bandwidth: float = 0.0
    num_codebooks: int = 1

    @property
    def name(self) -> str:
        return f"kmeans-{self.features}-{self.codebook_size}"

    @property
    def codebook_size(self) -> int:
        return int(self.centroids.shape[0])

    def codes(self, wav: np.ndarray) -> np.ndarray:
        """int16 [1, ceil(N / hop)]: the nearest centroid of every frame."""
        x = (frame_features(wav, self.sample_rate, self.hop_length, self.features, self.n_fft) - self.mean) / self.std
        distances = (x**2).sum(1, keepdims=True) - 2 * x @ self.centroids.T + (self.centroids**2).sum(1)[None]
        return distances.argmin(1).astype(np.int16)[None]

    def save(self, path: str | os.PathLike) -> None:
        from mertkit.fileio import atomic_write

        settings = np.array([self.features, self.sample_rate, self.hop_length, self.n_fft], dtype=object).astype(str)
        atomic_write(path, lambda handle: np.savez(handle, centroids=self.centroids, mean=self.mean, std=self.std,
                                                   settings=settings))

    @classmethod
    def load(cls, path: str | os.PathLike) -> KMeansLabeller:
        with np.load(path, allow_pickle=False) as data:
            features, rate, hop, n_fft = (str(v) for v in data["settings"])
            return cls(data["centroids"], data["mean"], data["std"], features, int(rate), int(hop), int(n_fft))


def fit_kmeans(
    audio_dir: str | os.PathLike,
    n_clusters: int = 100,
    *,
    features: str = "mfcc",
    sample_rate: int = 24000,
    hop_length: int = 320,
    max_frames: int = 200_000,
    seed: int = 0,
) -> KMeansLabeller:
    """Fit MiniBatchKMeans on frames sampled evenly from every audio file under `audio_dir`."""
    from mertkit.audio import load_audio
    from mertkit.pretrain.labels import find_audio_files

    MiniBatchKMeans = _sklearn_kmeans()
    files = find_audio_files(Path(audio_dir))
    if not files:
        raise KMeansError(f"{audio_dir}: no audio files to fit k-means on")
    rng = np.random.default_rng(seed)
    per_file = max(1, max_frames // len(files))
    chunks = []
    for rel in files:
        x = frame_features(load_audio(Path(audio_dir) / rel, sample_rate), sample_rate, hop_length, features)
        chunks.append(x[rng.permutation(x.shape[0])[:per_file]])
    sample = np.concatenate(chunks)
    if sample.shape[0] < n_clusters:
        raise KMeansError(f"{audio_dir}: {sample.shape[0]} frames are fewer than {n_clusters} clusters")
    mean, std = sample.mean(0), sample.std(0) + 1e-5
    kmeans = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=4096, n_init=3)
    kmeans.fit((sample - mean) / std)
    return KMeansLabeller(kmeans.cluster_centers_.astype(np.float32), mean, std, features, sample_rate, hop_length)


def write_kmeans_labels(audio_dir: str | os.PathLike, label_dir: str | os.PathLike, labeller: KMeansLabeller):
    """Label every audio file with its cluster ids (layout of `mertkit.pretrain.labels`, one codebook)."""
    from mertkit.pretrain.labels import write_labels

    return write_labels(audio_dir, label_dir, labeller, sample_rate=labeller.sample_rate,
                        frame_rate=labeller.sample_rate // labeller.hop_length)
