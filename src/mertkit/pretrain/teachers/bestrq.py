"""BEST-RQ-style teacher: a frozen random-projection quantiser on normalised log-mel frames.

    teacher = fit_bestrq(corpus_dir, seed=0)           # only the feature mean / std are fitted
    codes = teacher.codes(wave)                         # int16 [8, ceil(N / 320)]

Per label frame (the frame rule of `mertkit.pretrain.labels`: frame i covers samples
[320 i, 320 (i + 1))): the 64-band log-mel of `mertkit.pretrain.kmeans.frame_features`,
stacked with its neighbours (`context` frames either side, edges repeated) and standardised
with the corpus mean / std. Codebook k has its own frozen Xavier-normal projection to
`dim` dimensions and `codebook_size` random unit vectors; the code is the codebook vector
nearest (by cosine) to the L2-normalised projection. Everything random comes from `seed`,
so the same corpus and seed give the same teacher. Nothing is trained: the targets are as
informative as log-mel itself, never degenerate by collapse.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mertkit.pretrain.kmeans import frame_features

FORMAT = "mertkit-bestrq-1"


class BestRQError(ValueError):
    """A BEST-RQ teacher file or corpus that cannot be used."""


@dataclass
class BestRQTeacher:
    """A `mertkit.pretrain.labels.LabelTeacher` (see the module docstring)."""

    mean: np.ndarray  # [features]
    std: np.ndarray
    projections: np.ndarray  # [K, features * (2 context + 1), dim]
    codebooks: np.ndarray  # [K, V, dim], unit rows
    sample_rate: int = 24000
    hop_length: int = 320
    context: int = 1
    bandwidth: float = 0.0

    @property
    def name(self) -> str:
        return f"bestrq-{self.num_codebooks}x{self.codebook_size}"

    @property
    def num_codebooks(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.codebooks.shape[1])

    def features(self, wav: np.ndarray) -> np.ndarray:
        """[frames, features * (2 context + 1)] standardised, stacked log-mel."""
        x = (frame_features(wav, self.sample_rate, self.hop_length, "logmel") - self.mean) / self.std
        return stack_context(x, self.context)

    def codes(self, wav: np.ndarray) -> np.ndarray:
        x = self.features(wav)
        out = np.empty((self.num_codebooks, x.shape[0]), dtype=np.int16)
        for k in range(self.num_codebooks):
            projected = x @ self.projections[k]
            projected /= np.linalg.norm(projected, axis=1, keepdims=True) + 1e-8
            out[k] = (projected @ self.codebooks[k].T).argmax(1)
        return out

    def save(self, path: str | os.PathLike) -> None:
        from mertkit.fileio import atomic_write

        arrays = {"format": np.array(FORMAT), "mean": self.mean, "std": self.std, "projections": self.projections,
                  "codebooks": self.codebooks, "settings": np.array([self.sample_rate, self.hop_length, self.context])}
        atomic_write(path, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BestRQTeacher:
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT:
                    raise BestRQError(f"{path}: not a BEST-RQ teacher ({FORMAT})")
                rate, hop, context = (int(v) for v in data["settings"])
                return cls(data["mean"], data["std"], data["projections"], data["codebooks"], rate, hop, context)
        except (OSError, KeyError, ValueError) as err:
            if isinstance(err, BestRQError):
                raise
            raise BestRQError(f"{path}: not a readable BEST-RQ teacher file ({err})") from None


def stack_context(x: np.ndarray, context: int) -> np.ndarray:
    """[frames, d] -> [frames, d * (2 context + 1)]: each frame with its neighbours (edges repeated)."""
    if context == 0:
        return x
    padded = np.concatenate([np.repeat(x[:1], context, 0), x, np.repeat(x[-1:], context, 0)])
    return np.concatenate([padded[i : i + x.shape[0]] for i in range(2 * context + 1)], axis=1)


def random_teacher(
    mean: np.ndarray, std: np.ndarray, *, num_codebooks: int = 8, codebook_size: int = 1024, dim: int = 16,
    context: int = 1, seed: int = 0, sample_rate: int = 24000, hop_length: int = 320,
) -> BestRQTeacher:
    """The frozen projections and codebooks drawn from `seed` around fitted feature statistics."""
    rng = np.random.default_rng([seed, 0x62657374])  # a stream of its own ("best")
    inputs = mean.shape[0] * (2 * context + 1)
    scale = np.sqrt(2.0 / (inputs + dim))  # Xavier normal
    projections = (rng.standard_normal((num_codebooks, inputs, dim)) * scale).astype(np.float32)
    codebooks = rng.standard_normal((num_codebooks, codebook_size, dim)).astype(np.float32)
    codebooks /= np.linalg.norm(codebooks, axis=2, keepdims=True)
    return BestRQTeacher(mean.astype(np.float32), std.astype(np.float32), projections, codebooks,
                         sample_rate, hop_length, context)


def fit_bestrq(
    audio_dir: str | os.PathLike, *, num_codebooks: int = 8, codebook_size: int = 1024, dim: int = 16,
    context: int = 1, seed: int = 0, sample_rate: int = 24000, hop_length: int = 320, max_files: int = 200,
) -> BestRQTeacher:
    """Feature mean / std from (up to `max_files` evenly spaced) files of a corpus, then `random_teacher`."""
    from mertkit.audio import load_audio
    from mertkit.pretrain.labels import find_audio_files

    files = find_audio_files(Path(audio_dir))
    if not files:
        raise BestRQError(f"{audio_dir}: no audio files to fit the feature statistics on")
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int)]
    total, square, count = 0.0, 0.0, 0
    for rel in dict.fromkeys(chosen):
        x = frame_features(load_audio(Path(audio_dir) / rel, sample_rate), sample_rate, hop_length, "logmel").astype(np.float64)
        total, square, count = total + x.sum(0), square + (x**2).sum(0), count + x.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0)) + 1e-5
    return random_teacher(mean, std, num_codebooks=num_codebooks, codebook_size=codebook_size, dim=dim,
                          context=context, seed=seed, sample_rate=sample_rate, hop_length=hop_length)
