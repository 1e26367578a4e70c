"""In-batch mixture: probabilities, segment counts and lengths as configured; exact sums."""
from __future__ import annotations

import math

import torch

from mertkit.pretrain.mixture import MixtureSettings, draw_segments, mix_batch

SETTINGS = MixtureSettings(prob=0.5, min_segments=1, max_segments=3, min_samples=100, max_samples=300, volume=1.0)


def test_mixture_statistics_match_the_settings():
    generator = torch.Generator().manual_seed(0)
    batches, batch = 600, 8
    lengths = [1000, 900, 1000, 800, 1000, 1000, 700, 1000]
    mixed_clips, per_clip, seg_lengths = 0, [], []
    for _ in range(batches):
        segments = draw_segments(lengths, SETTINGS, generator)
        targets = [s.target for s in segments]
        mixed_clips += len(set(targets))
        per_clip += [targets.count(t) for t in set(targets)]
        for s in segments:
            assert s.source != s.target
            assert 0 <= s.src_start <= lengths[s.source] - s.length
            assert 0 <= s.dst_start <= lengths[s.target] - s.length
            seg_lengths.append(s.length)
    clips = batches * batch
    assert abs(mixed_clips / clips - 0.5) < 4 * math.sqrt(0.25 / clips)
    for count in (1, 2, 3):
        share = per_clip.count(count) / len(per_clip)
        assert abs(share - 1 / 3) < 4 * math.sqrt((2 / 9) / len(per_clip))
    assert min(seg_lengths) >= 100 and max(seg_lengths) <= 300
    mean, spread = sum(seg_lengths) / len(seg_lengths), math.sqrt((201**2 - 1) / 12)
    assert abs(mean - 200) < 4 * spread / math.sqrt(len(seg_lengths))


def test_mixed_batch_is_clean_plus_the_segments_of_other_clips():
    wave = torch.randn(4, 1000, dtype=torch.float64)
    lengths = torch.tensor([1000, 600, 1000, 400])
    settings = MixtureSettings(prob=1.0, min_segments=1, max_segments=3, min_samples=100, max_samples=500, volume=0.7)
    mixed, segments = mix_batch(wave, lengths, settings, torch.Generator().manual_seed(3))
    expected = wave.clone()
    for s in segments:
        expected[s.target, s.dst_start : s.dst_start + s.length] += 0.7 * wave[s.source, s.src_start : s.src_start + s.length]
        assert s.dst_start + s.length <= int(lengths[s.target])  # padding stays silent
    assert {s.target for s in segments} == {0, 1, 2, 3}
    assert torch.allclose(mixed, expected, rtol=0, atol=1e-12)
    assert torch.equal(mixed[1, 600:], wave[1, 600:])


def test_single_clip_and_zero_probability_leave_the_batch_alone():
    wave = torch.randn(1, 500)
    assert torch.equal(mix_batch(wave, None, SETTINGS, torch.Generator())[0], wave)
    off = MixtureSettings(prob=0.0)
    wave = torch.randn(3, 500)
    assert mix_batch(wave, None, off, torch.Generator())[1] == []
