"""Input degradation: noise at the drawn SNR, a low-pass cut at the drawn cutoff, padding kept,
draws as configured and repeatable; the training forward degrades only the student's input."""
from __future__ import annotations

import math

import pytest
import torch

from mertkit.pretrain.degrade import DegradeSettings, degrade_batch, draw_degradations
from mertkit.pretrain.mlm_model import student_input
from pretrain_fixtures import SR, tiny_config

SETTINGS = DegradeSettings(prob=0.5, snr_min_db=10.0, snr_max_db=40.0, lowpass_min_hz=3000.0, sample_rate=SR)


def test_draws_match_the_settings():
    generator = torch.Generator().manual_seed(0)
    draws = [d for _ in range(500) for d in draw_degradations(8, SETTINGS, generator)]
    clips = 500 * 8
    assert abs(len(draws) / clips - 0.5) < 4 * math.sqrt(0.25 / clips)
    noise = [d.amount for d in draws if d.kind == "noise"]
    cuts = [d.amount for d in draws if d.kind == "lowpass"]
    assert abs(len(noise) / len(draws) - 0.5) < 4 * math.sqrt(0.25 / len(draws))
    assert 10.0 <= min(noise) and max(noise) <= 40.0 and abs(sum(noise) / len(noise) - 25.0) < 1.0
    assert 3000.0 <= min(cuts) and max(cuts) <= SR / 2
    assert draw_degradations(8, DegradeSettings(prob=0.0), generator) == []


def test_noise_sits_at_the_drawn_snr_and_padding_stays_zero():
    wave = torch.zeros(6, 4000)
    wave[:, :3000] = torch.sin(torch.arange(3000) * 0.05) * torch.linspace(0.2, 1.0, 6)[:, None]
    lengths = torch.tensor([3000] * 6)
    settings = DegradeSettings(prob=1.0, snr_min_db=20.0, snr_max_db=20.0, lowpass_min_hz=3000.0, sample_rate=SR)
    out, chosen = degrade_batch(wave, lengths, settings, torch.Generator().manual_seed(1))
    noisy = [d.clip for d in chosen if d.kind == "noise"]
    assert len(chosen) == 6 and noisy
    for clip in noisy:
        added = out[clip, :3000] - wave[clip, :3000]
        ratio = added.pow(2).mean().sqrt() / wave[clip, :3000].pow(2).mean().sqrt()
        assert ratio == pytest.approx(0.1, rel=0.1)  # 20 dB under the clip's RMS
    assert torch.equal(out[:, 3000:], wave[:, 3000:])


def test_lowpass_removes_what_is_above_the_cutoff_and_keeps_what_is_below():
    t = torch.arange(SR, dtype=torch.float64) / SR  # float64 phases: pure tones, no leakage across the cut
    low, high = torch.sin(2 * math.pi * 440 * t).float(), torch.sin(2 * math.pi * 7000 * t).float()
    wave = (low + high)[None].repeat(8, 1)
    settings = DegradeSettings(prob=1.0, lowpass_min_hz=3000.0, snr_min_db=10.0, snr_max_db=40.0, sample_rate=SR)
    out, chosen = degrade_batch(wave, None, settings, torch.Generator().manual_seed(2))
    cut = [d for d in chosen if d.kind == "lowpass"]
    assert cut
    for item in cut:
        expected = low if item.amount < 7000 else low + high
        assert torch.allclose(out[item.clip], expected, atol=1e-3)


def test_same_generator_same_degradation():
    wave = torch.randn(4, 2000)
    a, first = degrade_batch(wave, None, SETTINGS, torch.Generator().manual_seed(5))
    b, second = degrade_batch(wave, None, SETTINGS, torch.Generator().manual_seed(5))
    assert first == second and torch.equal(a, b)


def test_student_input_degrades_only_when_asked():
    wave = torch.randn(4, 2 * SR) * 0.1
    plain = tiny_config(mixture_prob=0.0)
    assert torch.equal(student_input(wave, None, plain, torch.Generator().manual_seed(0)), wave)
    degraded = tiny_config(mixture_prob=0.0, degrade_prob=1.0)
    assert not torch.equal(student_input(wave, None, degraded, torch.Generator().manual_seed(0)), wave)
    assert torch.equal(student_input(wave, None, degraded, None), wave)  # no generator: no augmentation


def test_bad_degrade_settings_are_one_line_errors():
    from mertkit.pretrain.pretrain_config import PretrainConfigError

    with pytest.raises(PretrainConfigError, match="degrade_prob must be in"):
        tiny_config(degrade_prob=1.5)
    with pytest.raises(PretrainConfigError, match="degrade_snr_min_db <= degrade_snr_max_db"):
        tiny_config(degrade_snr_min_db=30.0, degrade_snr_max_db=10.0)
    with pytest.raises(PretrainConfigError, match="degrade_lowpass_min_hz"):
        tiny_config(degrade_lowpass_min_hz=SR)
