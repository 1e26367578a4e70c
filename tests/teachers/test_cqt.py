"""Tests for the CQT musical teacher: parity with nnAudio, tone placement, frame counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mertkit.pretrain.teachers.cqt import CQT, CQTConfig, CQTConfigError, CQTInputError, cqt_frames, crop_to

torch.set_num_threads(2)

RECIPE = CQTConfig()


def _nnaudio(cfg: CQTConfig) -> torch.nn.Module:
    features = pytest.importorskip("nnAudio.features")
    return features.CQT1992v2(
        sr=cfg.sample_rate, hop_length=cfg.hop_length, fmin=cfg.fmin, n_bins=cfg.n_bins,
        bins_per_octave=cfg.bins_per_octave, filter_scale=cfg.filter_scale, norm=cfg.norm,
        window=cfg.window, center=cfg.center, pad_mode=cfg.pad_mode, trainable=False,
        output_format="Magnitude", verbose=False,
    )


@pytest.fixture(scope="module")
def ours() -> CQT:
    return CQT(RECIPE)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return _nnaudio(RECIPE)


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def test_matches_nnaudio_on_random_audio(ours: CQT, reference: torch.nn.Module) -> None:
    wav = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    expected = reference(wav)
    got = ours(wav)
    assert got.shape == expected.shape == (2, 336, cqt_frames(5000, RECIPE))
    assert _relative_error(got, expected) < 1e-4
    # Every bin, not only the loud ones, agrees.
    assert float(((got - expected).abs() / expected.abs().amax(dim=-1, keepdim=True)).max()) < 1e-4


@pytest.mark.parametrize(
    "cfg",
    [
        CQTConfig(sample_rate=16000, hop_length=160, fmin=65.4, n_bins=60, bins_per_octave=12, center=False),
        CQTConfig(sample_rate=16000, hop_length=200, fmin=130.8, n_bins=48, bins_per_octave=24, pad_mode="reflect", norm=2),
        CQTConfig(sample_rate=8000, hop_length=100, fmin=100.0, n_bins=30, bins_per_octave=12, filter_scale=0.5, window="hamming"),
    ],
)
def test_matches_nnaudio_for_other_settings(cfg: CQTConfig) -> None:
    length = cfg.kernel_width + 3 * cfg.hop_length + 17
    wav = torch.randn(1, length, generator=torch.Generator().manual_seed(1))
    expected = _nnaudio(cfg)(wav)
    got = CQT(cfg)(wav)
    assert got.shape == expected.shape
    assert _relative_error(got, expected) < 1e-4


def test_recipe_top_bin_is_below_nyquist() -> None:
    top = 32.7 * 2 ** (335 / 48)
    assert RECIPE.frequencies[-1] == pytest.approx(top)
    assert top < 4200 < RECIPE.sample_rate / 2
    assert RECIPE.kernel_width == 65536  # the longest kernel (bin 0) is ~50k samples


def test_top_bin_above_nyquist_is_rejected() -> None:
    with pytest.raises(CQTConfigError, match="Nyquist"):
        CQTConfig(sample_rate=8000, n_bins=336)


@pytest.mark.parametrize("bin_index", [60, 200, 300])
def test_pure_tone_peaks_at_its_bin_with_the_expected_height(ours: CQT, bin_index: int) -> None:
    freq = RECIPE.fmin * 2 ** (bin_index / RECIPE.bins_per_octave)
    amplitude = 0.5
    t = torch.arange(24000, dtype=torch.float64) / RECIPE.sample_rate
    tone = (amplitude * torch.sin(2 * math.pi * freq * t)).float()
    spec = ours(tone)
    middle = spec[:, spec.shape[-1] // 2]
    assert int(middle.argmax()) == bin_index
    # An L1-normalised kernel matched to the tone sees amplitude/2 of it (the positive-frequency
    # half); the "librosa" scaling multiplies by sqrt(kernel length).
    length = float(RECIPE.kernel_lengths[bin_index])
    assert float(middle[bin_index]) == pytest.approx(amplitude / 2 * math.sqrt(length), rel=0.02)


def test_frame_count_rule_and_crop_to_model_frames(ours: CQT) -> None:
    samples = 5 * 24000
    assert cqt_frames(samples, RECIPE) == samples // 320 + 1 == 376
    model_frames = (samples - 400) // 320 + 1  # MERT conv front-end: 374 for 5 s
    wav = torch.zeros(1, samples)
    full = ours(wav)
    assert full.shape[-1] == 376
    cropped = ours(wav, num_frames=model_frames)
    assert cropped.shape == (1, 336, 374)
    assert torch.equal(crop_to(full, model_frames), cropped)
    with pytest.raises(CQTInputError):
        crop_to(full, 377)


def test_frame_count_without_centering() -> None:
    cfg = CQTConfig(center=False)
    assert cqt_frames(65535, cfg) == 0
    assert cqt_frames(65536 + 320 * 7 + 5, cfg) == 8


def test_silence_gives_zero_magnitude_and_eps_option(ours: CQT) -> None:
    assert float(ours(torch.zeros(1, 1000)).abs().max()) == 0.0
    with_eps = CQT(CQTConfig(n_bins=12, fmin=1000.0, magnitude_eps=1e-8))
    assert torch.allclose(with_eps(torch.zeros(1, 1000)), torch.full((1, 12, 4), 1e-4))


def test_module_has_buffers_only_and_follows_dtype() -> None:
    cfg = CQTConfig(n_bins=24, fmin=500.0)
    module = CQT(cfg)
    assert list(module.parameters()) == []
    assert module.state_dict() == {}  # kernels are rebuilt, never checkpointed
    wav = torch.randn(2, 3000, generator=torch.Generator().manual_seed(2))
    single = module(wav)
    double = module.to(torch.float64)(wav.double())
    assert double.dtype == torch.float64
    assert torch.allclose(single.double(), double, rtol=1e-4, atol=1e-6)


def test_batch_items_are_independent(ours: CQT) -> None:
    wav = torch.randn(3, 2000, generator=torch.Generator().manual_seed(3))
    batched = ours(wav)
    alone = ours(wav[1])
    assert alone.shape == (336, 7)
    assert torch.allclose(batched[1], alone, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors(ours: CQT) -> None:
    with pytest.raises(CQTInputError, match="shape"):
        ours(torch.zeros(1, 1, 100))
    with pytest.raises(CQTInputError, match="floating-point"):
        ours(torch.zeros(1, 100, dtype=torch.int16))
    with pytest.raises(CQTInputError, match="reflect"):
        CQT(CQTConfig(n_bins=12, fmin=1000.0, pad_mode="reflect"))(torch.zeros(1, 100))
    with pytest.raises(CQTConfigError, match="window"):
        CQTConfig(window="kaiser")


def test_kernel_lengths_follow_the_constant_q_formula() -> None:
    q = 1.0 / (2 ** (1 / 48) - 1)
    expected = np.ceil(q * 24000 / (32.7 * 2.0 ** (np.arange(336) / 48)))
    np.testing.assert_array_equal(RECIPE.kernel_lengths, expected.astype(np.int64))
