"""The CQT musical teacher of MERT-v1 pre-training.

MERT-v1 regresses, at every masked frame, the constant-Q magnitude spectrum of the clean
waveform, computed with nnAudio's ``CQT1992v2`` (sr 24000, hop 320, fmin 32.7 Hz, 336 bins,
48 bins per octave, filter scale 1, L1 norm, Hann window, centred frames, zero padding,
"librosa" output scaling, ``trainable=False``). This module reimplements that transform in
plain torch so that pre-training does not depend on nnAudio; the test suite checks parity.

What nnAudio computes (facts, re-derived here in closed form):

* Q = filter_scale / (2^(1/bins_per_octave) - 1); bin k has centre frequency
  f_k = fmin * 2^(k / bins_per_octave) and kernel length l_k = ceil(Q * sr / f_k).
* Every kernel lives in one buffer of width W = 2^ceil(log2(max l_k)) (65536 for the recipe);
  its sample for time offset n sits at index W//2 + n, for n in [floor(-l_k/2), floor(-l_k/2) + l_k).
  The kernel is window(l_k, periodic)[n - floor(-l_k/2)] * exp(2j*pi*f_k*n/sr) / l_k, divided
  by its L1 (norm=1) or L2 (norm=2) norm, and stored as complex64.
* The waveform is padded by W//2 on both sides (``center=True``), the real and imaginary
  kernels are applied with one strided conv1d, the imaginary part is negated, and both are
  multiplied by sqrt(l_k) ("librosa" normalisation).
* With ``trainable=False`` (MERT's setting) the magnitude is sqrt(re^2 + im^2) with *no*
  epsilon; nnAudio adds 1e-8 only on its trainable path. ``CQTConfig.magnitude_eps`` defaults
  to 0.0 for that reason; set it to 1e-8 to get the trainable-path formula.

Speed: a single 65536-wide kernel wastes most of its multiply-adds on zeros (only the lowest
bins are that long). We split the bins into groups of neighbouring bins and give each group a
kernel just wide enough for its longest member, which computes the same sums about 4x faster
and stores ~30 MB of kernels instead of ~180 MB.

Frames: with ``center=True`` a clip of N samples gives ``N // hop + 1`` frames, frame t centred
on sample t*hop. The MERT conv front-end gives ``floor((N - 400) / 320) + 1`` frames, so the
caller keeps the first model-frame-count frames (what the official recipe does):
``crop_to(cqt(wav), num_model_frames)`` or ``cqt(wav, num_frames=...)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CQTConfig", "CQTConfigError", "CQTInputError", "CQT", "cqt_frames", "crop_to"]

# Periodic generalised-cosine windows: w[i] = a0 - a1 * cos(2*pi*i/N) (scipy's fftbins=True).
_COSINE_WINDOWS = {"hann": (0.5, 0.5), "hamming": (0.54, 0.46)}
_PAD_MODES = ("constant", "reflect")
# Neighbouring bins sharing one trimmed kernel; a quarter octave keeps the zero padding
# inside a group below ~10 % while keeping the number of conv calls small.
_GROUPS_PER_OCTAVE = 4


class CQTConfigError(ValueError):
    """A CQT setting that cannot produce a valid transform."""


class CQTInputError(ValueError):
    """A waveform that the CQT cannot process (wrong shape, dtype or length)."""


@dataclass(frozen=True)
class CQTConfig:
    """Settings of the constant-Q transform; the defaults are MERT-v1's recipe."""

    sample_rate: int = 24000
    hop_length: int = 320
    fmin: float = 32.7
    n_bins: int = 336
    bins_per_octave: int = 48
    filter_scale: float = 1.0
    norm: int = 1
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    magnitude_eps: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop_length", "n_bins", "bins_per_octave"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CQTConfigError(f"CQTConfig.{name} must be a positive integer, got {value!r}")
        if not self.fmin > 0 or not self.filter_scale > 0:
            raise CQTConfigError(
                f"CQTConfig.fmin and filter_scale must be positive, got {self.fmin!r}, {self.filter_scale!r}"
            )
        if self.norm not in (0, 1, 2):
            raise CQTConfigError(f"CQTConfig.norm must be 0 (none), 1 (L1) or 2 (L2), got {self.norm!r}")
        if self.window not in _COSINE_WINDOWS:
            raise CQTConfigError(f"CQTConfig.window must be one of {sorted(_COSINE_WINDOWS)}, got {self.window!r}")
        if self.pad_mode not in _PAD_MODES:
            raise CQTConfigError(f"CQTConfig.pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")
        if self.magnitude_eps < 0:
            raise CQTConfigError(f"CQTConfig.magnitude_eps must be >= 0, got {self.magnitude_eps!r}")
        top = float(self.frequencies[-1])
        if top > self.sample_rate / 2:
            raise CQTConfigError(
                f"the top CQT bin ({top:.1f} Hz) is above the Nyquist frequency "
                f"({self.sample_rate / 2:.1f} Hz): reduce n_bins or fmin"
            )

    @property
    def frequencies(self) -> np.ndarray:
        """Centre frequency of every bin in Hz, float64 [n_bins]."""
        return self.fmin * 2.0 ** (np.arange(self.n_bins) / float(self.bins_per_octave))

    @property
    def q_factor(self) -> float:
        return float(self.filter_scale) / (2.0 ** (1.0 / self.bins_per_octave) - 1.0)

    @property
    def kernel_lengths(self) -> np.ndarray:
        """Length in samples of every bin's kernel, int64 [n_bins] (longest first)."""
        return np.ceil(self.q_factor * self.sample_rate / self.frequencies).astype(np.int64)

    @property
    def kernel_width(self) -> int:
        """nnAudio's common kernel width W: the next power of two of the longest kernel."""
        return int(2 ** math.ceil(math.log2(int(self.kernel_lengths.max()))))


def cqt_frames(num_samples: int, cfg: CQTConfig) -> int:
    """Number of CQT frames for a clip of ``num_samples`` samples (nnAudio's count)."""
    if num_samples < 0:
        raise CQTInputError(f"num_samples must be >= 0, got {num_samples}")
    width = cfg.kernel_width
    padded = num_samples + 2 * (width // 2) if cfg.center else num_samples
    if padded < width:
        return 0
    return (padded - width) // cfg.hop_length + 1


def crop_to(magnitude: torch.Tensor, frames: int) -> torch.Tensor:
    """Keep the first ``frames`` frames of a ``[..., n_bins, frames]`` CQT.

    MERT aligns the CQT targets with the conv front-end's frames by dropping the CQT's extra
    trailing frames; asking for more frames than exist is a caller bug and raises.
    """
    available = magnitude.shape[-1]
    if frames < 0 or frames > available:
        raise CQTInputError(f"cannot crop a CQT with {available} frames to {frames} frames")
    return magnitude[..., :frames]


def _window(kind: str, lengths: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Periodic window of length ``lengths[k]`` evaluated at ``index[k, i]`` (float64)."""
    a0, a1 = _COSINE_WINDOWS[kind]
    return a0 - a1 * np.cos(2.0 * np.pi * index / lengths[:, None])


def _group_kernels(cfg: CQTConfig, bins: np.ndarray) -> tuple[np.ndarray, int]:
    """Complex kernels of ``bins``, trimmed to their common support.

    Returns the kernels [len(bins), width] (complex, already scaled by sqrt(l_k) as the
    "librosa" output normalisation does) and the time offset n of their first column.
    """
    lengths = cfg.kernel_lengths[bins]
    freqs = cfg.frequencies[bins]
    first = -(lengths // 2) - (lengths % 2)  # floor(-l/2), the first time offset of each kernel
    offset = int(first.min())
    width = int((first + lengths).max()) - offset
    n = offset + np.arange(width)[None, :]  # time offset of every column
    i = n - first[:, None]  # index inside each kernel's own window
    inside = (i >= 0) & (i < lengths[:, None])
    window = np.where(inside, _window(cfg.window, lengths.astype(np.float64), i), 0.0)
    phase = 2.0 * np.pi * freqs[:, None] * n / cfg.sample_rate
    kernels = window * np.exp(1j * phase) / lengths[:, None]
    if cfg.norm:
        kernels /= np.linalg.norm(kernels, ord=cfg.norm, axis=1, keepdims=True)
    return kernels * np.sqrt(lengths.astype(np.float64))[:, None], offset


class CQT(nn.Module):
    """Constant-Q magnitude spectrogram equal to nnAudio's ``CQT1992v2`` (``trainable=False``).

    Holds its kernels as non-persistent buffers (no parameters, nothing in the state dict);
    ``.to(device)`` / ``.to(dtype)`` move them. The transform runs in the kernels' dtype
    (float32 by default) with autocast disabled, so fp16 training still gets fp32 targets.
    """

    def __init__(self, cfg: CQTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else CQTConfig()
        self.kernel_width = self.cfg.kernel_width
        self._offsets: list[int] = []
        self._sizes: list[int] = []
        group = max(1, self.cfg.bins_per_octave // _GROUPS_PER_OCTAVE)
        for index, start in enumerate(range(0, self.cfg.n_bins, group)):
            bins = np.arange(start, min(start + group, self.cfg.n_bins))
            kernels, offset = _group_kernels(self.cfg, bins)
            # Real and imaginary kernels stacked as output channels of one conv; the kernels
            # are rounded to float32 exactly where nnAudio stores them as complex64.
            stacked = np.concatenate([kernels.real, kernels.imag]).astype(np.float32)
            self.register_buffer(f"kernels_{index}", torch.from_numpy(stacked)[:, None, :], persistent=False)
            self._offsets.append(offset)
            self._sizes.append(len(bins))

    @property
    def frequencies(self) -> np.ndarray:
        return self.cfg.frequencies

    def num_frames(self, num_samples: int) -> int:
        return cqt_frames(num_samples, self.cfg)

    def forward(self, wav: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Magnitude CQT of ``wav`` [B, T] (or [T]) -> [B, n_bins, frames] (or [n_bins, frames]).

        ``num_frames`` keeps only the first frames (see :func:`crop_to`).
        """
        squeeze = wav.dim() == 1
        batch = self._check_input(wav)
        kernels = [getattr(self, f"kernels_{i}") for i in range(len(self._sizes))]
        batch = batch.to(device=kernels[0].device, dtype=kernels[0].dtype)
        with torch.autocast(device_type=batch.device.type, enabled=False):
            padded = self._pad(batch)[:, None, :]
            frames = (padded.shape[-1] - self.kernel_width) // self.cfg.hop_length + 1
            parts = [self._group_magnitude(padded, k, o, n, frames) for k, o, n in zip(kernels, self._offsets, self._sizes)]
            magnitude = torch.cat(parts, dim=1)
        if num_frames is not None:
            magnitude = crop_to(magnitude, num_frames)
        return magnitude[0] if squeeze else magnitude

    def _check_input(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor) or not wav.is_floating_point():
            raise CQTInputError(f"CQT expects a floating-point torch.Tensor waveform, got {type(wav).__name__}")
        if wav.dim() not in (1, 2):
            raise CQTInputError(f"CQT expects a waveform of shape [B, T] or [T], got {tuple(wav.shape)}")
        batch = wav if wav.dim() == 2 else wav[None]
        length = batch.shape[-1]
        if self.cfg.center and self.cfg.pad_mode == "reflect" and length <= self.kernel_width // 2:
            raise CQTInputError(
                f"reflect padding needs more than {self.kernel_width // 2} samples, got {length}"
            )
        if cqt_frames(length, self.cfg) == 0:
            raise CQTInputError(f"a waveform of {length} samples gives no CQT frame (kernel width {self.kernel_width})")
        return batch

    def _pad(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.cfg.center:
            return batch
        half = self.kernel_width // 2
        if self.cfg.pad_mode == "constant":
            return F.pad(batch, (half, half))
        return F.pad(batch[:, None], (half, half), mode="reflect")[:, 0]

    def _group_magnitude(
        self, padded: torch.Tensor, kernels: torch.Tensor, offset: int, size: int, frames: int
    ) -> torch.Tensor:
        # Frame t is the dot product of the kernels with padded[t*hop + W//2 + n]; a trimmed
        # kernel starting at time offset `offset` therefore reads from W//2 + offset on.
        start = self.kernel_width // 2 + offset
        stop = start + (frames - 1) * self.cfg.hop_length + kernels.shape[-1]
        out = F.conv1d(padded[..., start:stop], kernels, stride=self.cfg.hop_length)
        real, imag = out[:, :size], out[:, size:]
        return torch.sqrt(real.square() + imag.square() + self.cfg.magnitude_eps)
