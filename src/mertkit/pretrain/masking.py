"""HuBERT-style span masking of encoder frames.

For an item with `n` valid frames, the number of spans is `mask_prob * n / mask_length`
rounded stochastically (floor of the value plus a uniform draw, so its expectation is exact),
at least `min_masks`. Span starts are drawn without replacement among the `n - L + 1`
positions where a span of length `L = min(mask_length, n)` fits inside the valid frames;
spans may overlap. With mask_prob 0.8 and length 5 about 1 - (1 - 0.16)^5 = 58 % of the
frames of a long item end up masked. Padded frames are never masked.

Unlike fairseq's `compute_mask_indices` (with `require_same_masks`), items keep their own
number of masked frames: the model never needs equal counts across a batch.

`item_span_mask` masks one item from its own generator: the trainer seeds one generator per
clip from (seed, epoch, clip index), so a clip gets the same mask however the data are
split across processes and micro-batches.
"""
from __future__ import annotations

import torch
from torch import Tensor


def num_spans(valid_frames: int, mask_prob: float, mask_length: int, min_masks: int, uniform: float) -> int:
    """Spans for an item: stochastic rounding of mask_prob * n / L, at least min_masks, at most what fits."""
    span = min(mask_length, valid_frames)
    starts = valid_frames - span + 1
    wanted = int(mask_prob * valid_frames / mask_length + uniform)
    return min(max(min_masks, wanted), starts)


def item_span_mask(
    num_frames: int,
    valid_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    generator: torch.Generator,
) -> Tensor:
    """[num_frames] bool mask for one item whose first `valid_frames` frames are real."""
    if not 0 <= valid_frames <= num_frames:
        raise ValueError(f"valid_frames must be in 0..{num_frames}, got {valid_frames}")
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if valid_frames == 0:
        return mask
    uniform = float(torch.rand((), generator=generator))
    count = num_spans(valid_frames, mask_prob, mask_length, min_masks, uniform)
    span = min(mask_length, valid_frames)
    starts = torch.randperm(valid_frames - span + 1, generator=generator)[:count]
    covered = (starts[:, None] + torch.arange(span)[None, :]).reshape(-1)
    mask[covered] = True
    return mask


def span_mask(
    num_frames: int,
    frame_lengths: Tensor | list[int],
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    generators: list[torch.Generator],
) -> Tensor:
    """[B, num_frames] bool masks, one generator per item (see the module docstring)."""
    lengths = [int(n) for n in frame_lengths]
    if len(generators) != len(lengths):
        raise ValueError(f"need one generator per item: {len(generators)} generators for {len(lengths)} items")
    rows = [
        item_span_mask(num_frames, n, mask_prob=mask_prob, mask_length=mask_length, min_masks=min_masks, generator=g)
        for n, g in zip(lengths, generators)
    ]
    return torch.stack(rows) if rows else torch.zeros(0, num_frames, dtype=torch.bool)
