"""Memory budget of a forward pass: estimate before running, refuse or shrink what cannot fit.

Why: a whole-file pass (`--window 0`) over an hour of audio, or `--batch-size 10**9`, asks
for tens of GB in one allocation deep inside the model; the user gets a traceback or an
out-of-memory kill. Estimating first turns that into a one-line message naming the setting.

The estimate follows where a MERT-family forward peaks: the output of the first conv
([B, samples / stride0, conv_dim0], the largest activation of the model) and the next
conv's output, or later the hidden states kept for output plus one transformer layer's
working set (attention is blocked, never [F, F]). Against the peak resident set of one
forward on MERT-v1-95M shapes (5-60 s, batch 1-4, padded or not) the estimate was 0.99-1.33x
the truth on the fused CPU path, 1.3-2.2x on the standard ops (CUDA, training, CPUs without
the fused kernels), which keep a few more copies of the first conv's output.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from mertkit.models.hubert.config import MertConfig
from mertkit.models.mert2.config import Mert2Config

_log = logging.getLogger("mertkit")

_MARGIN = 1.25  # padded batches and short windows peak this much above the structural count
_FIXED = 64 * 2**20  # per forward, whatever its size: oneDNN scratch pads, per-thread buffers
_STANDARD_COPIES = 4.5  # first conv output copies alive at once on the standard ops (conv, norm, GELU)
GB = 1e9


def forward_peak_bytes(config: Any, batch: int, samples: int, dtype: torch.dtype, *, fused: bool) -> int:
    """Estimated peak bytes of the activations of one forward of [batch, samples] (weights excluded)."""
    if isinstance(config, MertConfig):
        return _hubert_peak_bytes(config, batch, samples, dtype, fused=fused)
    if isinstance(config, Mert2Config):
        return _mert2_peak_bytes(config, batch, samples, dtype)
    raise TypeError(f"no memory estimate for {type(config).__name__}")


def _mert2_peak_bytes(config: Mert2Config, batch: int, samples: int, dtype: torch.dtype) -> int:
    """MERT-v2 peaks in the float32 mel front end (STFT frames and complex spectrum), in a
    ConvNeXt stage (4x-wide pointwise activations) or in the Conformer (kept states plus one
    block's working set; attention runs blocked or through SDPA's flash kernel, never [T, T])."""
    size = dtype.itemsize
    mel_frames = samples // config.hop_length
    bins = config.n_fft // 2 + 1
    front = mel_frames * (bins * 16 + config.n_fft * 4)  # complex64 spectrum, power, frames: float32 always
    channels = config.subsampling_channels or (config.num_mel_bins, 512, config.hidden_size)
    rate, stages = mel_frames, []
    for stride, width in zip((1, 2, 2), channels):
        rate //= stride
        stages.append(rate * 15 * width * size)  # pointwise 4C in, GELU, GRN out, plus the residual stream
    frames = config.num_frames(samples)
    states = frames * config.hidden_size * config.num_hidden_states * (size + 4)
    layer = frames * (2 * config.intermediate_size + 8 * config.hidden_size) * size
    return int(_MARGIN * batch * (2 * samples * 4 + max(front, *stages, states + layer))) + _FIXED


def _hubert_peak_bytes(config: MertConfig, batch: int, samples: int, dtype: torch.dtype, *, fused: bool) -> int:
    size = dtype.itemsize
    steps0 = samples // config.conv_stride[0]
    first = steps0 * config.conv_dim[0] * size
    second = steps0 // config.conv_stride[1] * config.conv_dim[1] * size if len(config.conv_dim) > 1 else 0
    # fused: conv 0 and its norm are one matmul; its float64 window moments ride along
    front = first + second + 2 * steps0 * config.conv_kernel[0] * 8 if fused else _STANDARD_COPIES * first + second
    frames = config.num_frames(samples)
    states = frames * config.hidden_size * config.num_hidden_states * (size + 4)  # kept, then stacked as fp32
    layer = frames * (2 * config.intermediate_size + 6 * config.hidden_size) * size
    return int(_MARGIN * batch * (2 * samples * 4 + max(front, states + layer))) + _FIXED


def available_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated on `device` now; None where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:  # not Linux
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not a POSIX system that reports it
        return None


def largest_batch(config: Any, samples: int, dtype: torch.dtype, *, fused: bool, budget: int) -> int:
    """How many inputs of `samples` fit in one forward within `budget` bytes (0: not even one)."""
    return budget // max(1, forward_peak_bytes(config, 1, samples, dtype, fused=fused))


def fitting_batch_size(config: Any, window_seconds: float, batch_size: int, dtype: torch.dtype, *,
                       fused: bool, budget: int | None) -> int:
    """`batch_size`, or fewer windows (with a one-line warning) where a full batch would not fit.

    Raises MemoryError (its message one line naming --window) when not even one window fits.
    """
    if budget is None or not window_seconds:
        return batch_size
    samples = int(round(window_seconds * config.sample_rate))
    fits = largest_batch(config, samples, dtype, fused=fused, budget=budget)
    if fits < 1:
        need = forward_peak_bytes(config, 1, samples, dtype, fused=fused)
        raise MemoryError(f"--window {window_seconds:g}: one window needs ~{need / GB:.1f} GB for a forward, "
                          f"{budget / GB:.1f} GB available; use a shorter window")
    if fits >= batch_size:
        return batch_size
    need = forward_peak_bytes(config, batch_size, samples, dtype, fused=fused)
    _log.warning("--batch-size %d: a batch of %g s windows needs ~%.1f GB, %.1f GB available; running batches of %d",
                 batch_size, window_seconds, need / GB, budget / GB, fits)
    return fits


def whole_file_refusal(config: Any, samples: int, dtype: torch.dtype, *, fused: bool,
                       budget: int | None) -> str | None:
    """Why a whole-file pass (--window 0) over `samples` cannot run here, or None if it fits."""
    if budget is None:
        return None
    need = forward_peak_bytes(config, 1, samples, dtype, fused=fused)
    if need <= budget:
        return None
    seconds = samples / config.sample_rate
    return (f"--window 0 over {seconds:.1f} s of audio needs ~{need / GB:.1f} GB for one forward, "
            f"{budget / GB:.1f} GB available; use --window 5 (or another window length)")
