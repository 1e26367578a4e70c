"""Span masks: the masked fraction equals the exact expectation of the sampling scheme."""
from __future__ import annotations

import math

import pytest
import torch

from mertkit.pretrain.masking import item_span_mask, span_mask


def expected_fraction(n: int, prob: float, length: int, min_masks: int) -> float:
    """E[masked frames] / n computed combinatorially (independent of the implementation).

    k starts drawn without replacement among S = n - L + 1 positions; frame t stays unmasked
    iff none of the c_t starts covering it is drawn: P = C(S - c_t, k) / C(S, k).
    k = floor(x) or floor(x) + 1 with x = prob * n / L (stochastic rounding).
    """
    starts = n - length + 1
    x = prob * n / length
    total = 0.0
    for k, weight in ((math.floor(x), 1 - (x - math.floor(x))), (math.floor(x) + 1, x - math.floor(x))):
        k = min(max(min_masks, k), starts)
        unmasked = 0.0
        for t in range(n):
            covering = min(t, starts - 1) - max(0, t - length + 1) + 1
            unmasked += math.comb(starts - covering, k) / math.comb(starts, k)
        total += weight * (1 - unmasked / n)
    return total


def test_masked_fraction_matches_the_formula():
    n, draws = 203, 3000
    generator = torch.Generator().manual_seed(0)
    fractions = torch.tensor([
        float(item_span_mask(n, n, mask_prob=0.8, mask_length=5, min_masks=2, generator=generator).float().mean())
        for _ in range(draws)
    ])
    expected = expected_fraction(n, 0.8, 5, 2)
    assert abs(float(fractions.mean()) - expected) < 4 * float(fractions.std()) / math.sqrt(draws)


def test_long_sequences_mask_about_58_percent():
    assert expected_fraction(5000, 0.8, 5, 2) == pytest.approx(1 - (1 - 0.16) ** 5, abs=0.003)


def test_padding_is_never_masked_and_min_masks_hold():
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    mask = span_mask(100, [100, 40, 3], mask_prob=0.8, mask_length=5, min_masks=2, generators=generators)
    assert mask.shape == (3, 100)
    assert not mask[1, 40:].any() and not mask[2, 3:].any()
    assert mask[2, :3].all()  # 3 frames: span shortened to 3, at least one span
    low = item_span_mask(50, 50, mask_prob=0.01, mask_length=5, min_masks=2, generator=torch.Generator().manual_seed(1))
    assert int(low.sum()) >= 5  # two spans of 5, maybe overlapping: at least one full span


def test_masks_depend_only_on_the_generator():
    a = item_span_mask(80, 70, mask_prob=0.8, mask_length=5, min_masks=2, generator=torch.Generator().manual_seed(7))
    b = item_span_mask(80, 70, mask_prob=0.8, mask_length=5, min_masks=2, generator=torch.Generator().manual_seed(7))
    c = item_span_mask(80, 70, mask_prob=0.8, mask_length=5, min_masks=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
