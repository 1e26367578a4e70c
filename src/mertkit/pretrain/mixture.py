"""In-batch noise mixture: other clips of the batch added to a clip as "noise".

MERT-v1 makes the task harder (and the model robust to polyphony) by mixing: each clip, with
probability `prob`, gets between `min_segments` and `max_segments` segments added, each cut
from another clip of the same batch (chosen uniformly), of a length uniform in
[min_samples, max_samples] (clipped to both clips' valid lengths), read from a uniform random
position of the source and added at a uniform random position of the target, times `volume`.
Segments are always cut from the *clean* clips, and the caller computes the CQT targets
before mixing: targets describe the clean music, the input is the mixture. The EnCodec
labels were computed offline on clean audio too.

A batch of one clip has nothing to mix with and is returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """One added segment: target[dst : dst + length] += volume * source[src : src + length]."""

    target: int
    source: int
    src_start: int
    dst_start: int
    length: int


@dataclass(frozen=True)
class MixtureSettings:
    prob: float = 0.5
    min_segments: int = 1
    max_segments: int = 3
    min_samples: int = 12000
    max_samples: int = 24000
    volume: float = 1.0


def _randint(low: int, high_inclusive: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator))


def draw_segments(lengths: list[int], settings: MixtureSettings, generator: torch.Generator) -> list[Segment]:
    """Decide which clips get which segments (no audio touched)."""
    batch = len(lengths)
    segments: list[Segment] = []
    if batch < 2 or settings.prob <= 0:
        return segments
    for target in range(batch):
        if float(torch.rand((), generator=generator)) >= settings.prob:
            continue
        for _ in range(_randint(settings.min_segments, settings.max_segments, generator)):
            source = _randint(0, batch - 2, generator)
            source += source >= target  # any clip but the target itself
            wanted = _randint(settings.min_samples, settings.max_samples, generator)
            length = min(wanted, lengths[source], lengths[target])
            src_start = _randint(0, lengths[source] - length, generator)
            dst_start = _randint(0, lengths[target] - length, generator)
            segments.append(Segment(target, source, src_start, dst_start, length))
    return segments


@torch.no_grad()
def mix_batch(
    wave: Tensor,
    lengths: Tensor | None,
    settings: MixtureSettings,
    generator: torch.Generator,
) -> tuple[Tensor, list[Segment]]:
    """wave [B, T] clean clips (valid samples `lengths`) -> (mixed copy, the segments added)."""
    if wave.dim() != 2:
        raise ValueError(f"wave must be [batch, samples], got shape {tuple(wave.shape)}")
    valid = [wave.shape[1]] * wave.shape[0] if lengths is None else [int(n) for n in lengths]
    segments = draw_segments(valid, settings, generator)
    mixed = wave.clone()
    for seg in segments:
        piece = wave[seg.source, seg.src_start : seg.src_start + seg.length]
        mixed[seg.target, seg.dst_start : seg.dst_start + seg.length] += settings.volume * piece
    return mixed, segments
