"""MERT-v2 model: front end vs numpy, modules vs their published formulas, the whole forward vs
an independent eager reading, and exact padded batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mert2_fixtures import numpy_log_mel, random_state, tiny2_config
from mert2_reference import reference_batch, reference_forward

from mertkit.models.mert2.model import GRN, Mert2Model, apply_rotary, rotary_tables


def _model(config, seed: int = 0, dtype=torch.float32) -> tuple[Mert2Model, dict]:
    state = random_state(config, seed)
    model = Mert2Model(config)
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval(), state


def _noise(n: int, seed: int) -> torch.Tensor:
    return 0.3 * torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("win_length", [128, 96])
def test_mel_front_end_matches_numpy_stft_within_1e4_db(win_length):
    config = tiny2_config(win_length=win_length)
    model, state = _model(config)
    if win_length < config.n_fft:
        model.feature_extractor.spectrogram.window = torch.hann_window(win_length, periodic=True)
    window = model.feature_extractor.spectrogram.window.numpy()
    fe = "feature_extractor."
    std = state[fe + "mel_std"].numpy()
    for n in (config.min_input_samples, 1000, 4001):
        wave = _noise(n, n)
        with torch.no_grad():
            ours = model.feature_extractor(wave[None], None)[0].double().numpy()
        ref = numpy_log_mel(wave.numpy(), window, state[fe + "mel_scale.fb"].numpy(), state[fe + "mel_mean"].numpy(),
                            std, config.n_fft, config.hop_length)
        assert ours.shape == (n // config.hop_length, config.num_mel_bins)
        assert np.abs((ours - ref) * np.maximum(std, 1e-5)).max() <= 1e-4  # back in dB


def test_front_end_runs_float32_under_bf16_and_autocast():
    config = tiny2_config()
    model, _ = _model(config)
    wave = _noise(3000, 1)[None]
    with torch.no_grad():
        ref = model.feature_extractor(wave, None)
        model.to(torch.bfloat16)
        assert model.feature_extractor.mel_scale.fb.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.feature_extractor(wave.bfloat16(), None)
    assert got.dtype == torch.float32
    assert torch.equal(model.feature_extractor.spectrogram.window, torch.hann_window(config.win_length, periodic=True))
    # Only the bf16 rounding of the input samples differs.
    assert (got - ref).abs().max() < 0.05


def test_grn_is_the_convnext_v2_formula():
    grn = GRN(6)
    with torch.no_grad():
        grn.weight.normal_()
        grn.bias.normal_()
    x = torch.randn(2, 9, 6)
    g = torch.sqrt((x**2).sum(dim=1, keepdim=True))
    n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
    expected = grn.weight * (x * n) + grn.bias + x
    torch.testing.assert_close(grn(x, None), expected, rtol=1e-5, atol=1e-6)
    # With a frame mask, the statistic covers the valid frames only.
    keep = torch.zeros(2, 9, 1)
    keep[0, :9], keep[1, :4] = 1, 1
    torch.testing.assert_close(grn(x, keep)[1, :4], grn(x[1:, :4], None)[0], rtol=1e-5, atol=1e-6)


def test_rotary_is_a_rotation_of_each_pair_by_position_times_frequency():
    frames, dim, base = 7, 8, 10000.0
    x = torch.randn(1, 2, frames, dim, dtype=torch.float64)
    cos, sin = rotary_tables(frames, dim, base, torch.device("cpu"))
    got = apply_rotary(x, cos.double(), sin.double())
    half = dim // 2
    for m in range(frames):
        for i in range(half):
            theta = m / base ** (2 * i / dim)
            a, b = x[..., m, i], x[..., m, i + half]
            torch.testing.assert_close(got[..., m, i], a * np.cos(theta) - b * np.sin(theta), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[..., m, i + half], a * np.sin(theta) + b * np.cos(theta), rtol=1e-5, atol=1e-6)
    # Scores depend on the offset only: q at m+s against k at n+s equals q at m against k at n.
    q, k = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    rq = apply_rotary(q.expand(1, 1, frames, dim), cos.double(), sin.double())[0, 0]
    rk = apply_rotary(k.expand(1, 1, frames, dim), cos.double(), sin.double())[0, 0]
    assert abs(float(rq[3] @ rk[1]) - float(rq[5] @ rk[3])) < 1e-5


def test_forward_matches_the_eager_reference_in_float64():
    config = tiny2_config()
    model, state = _model(config, seed=3)
    model = model.double()
    wave = _noise(5000, 7)[None].double()
    with torch.no_grad():
        out = model(wave)
    ref = reference_forward({k: v.double() for k, v in state.items()}, config, wave)
    assert len(out.hidden_states) == config.num_hidden_layers == len(ref)
    assert out.hidden_states[0].shape == (1, 5000 // config.samples_per_frame, config.hidden_size)
    for ours, theirs in zip(out.hidden_states, ref):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_forward_float32_matches_reference_within_float_rounding():
    config = tiny2_config()
    model, state = _model(config, seed=4)
    wave = _noise(4321, 2)[None]
    with torch.inference_mode():
        out = model(wave)
    ref = reference_forward({k: v.double() for k, v in state.items()}, config, wave.double())
    for ours, theirs in zip(out.hidden_states, ref):
        assert (ours.double() - theirs).abs().max() < 1e-4


def test_padded_batch_equals_each_item_alone_and_the_grouped_reference():
    config = tiny2_config()
    model, state = _model(config, seed=5)
    lengths = [5000, 2777, 3001, config.min_input_samples + 200]
    waves = [_noise(n, 10 + i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.inference_mode():
        out = model(batch, torch.tensor(lengths))
        alone = [model(w[None]) for w in waves]
    grouped = reference_batch({k: v.double() for k, v in state.items()}, config, [w.double() for w in waves])
    assert out.frame_lengths.tolist() == [config.num_frames(n) for n in lengths]
    for i, n in enumerate(lengths):
        frames = config.num_frames(n)
        for layer in range(config.num_hidden_layers):
            got = out.hidden_states[layer][i]
            torch.testing.assert_close(got[:frames], alone[i].hidden_states[layer][0], rtol=0, atol=2e-5)
            assert (got[:frames].double() - grouped[i][layer]).abs().max() < 1e-4
            assert not got[frames:].any()  # padding frames are zero, as in the official outputs


def test_max_layer_stops_early_with_the_same_states():
    config = tiny2_config(num_hidden_layers=3)
    model, _ = _model(config)
    wave = _noise(3000, 3)[None]
    with torch.no_grad():
        full, part = model(wave), model(wave, max_layer=1)
    assert len(part.hidden_states) == 2
    torch.testing.assert_close(part.hidden_states[1], full.hidden_states[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_forward_tracks_float32(dtype):
    config = tiny2_config()
    model, _ = _model(config, seed=6, dtype=dtype)
    ref_model, _ = _model(config, seed=6)
    wave = _noise(4000, 4)[None]
    with torch.inference_mode():
        got, ref = model(wave).hidden_states[-1].float(), ref_model(wave).hidden_states[-1]
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cosine > (0.999999 if dtype == torch.float32 else 0.99)


def test_bad_inputs_are_one_line_errors():
    config = tiny2_config()
    model, _ = _model(config)
    minimum = config.min_input_samples
    with pytest.raises(ValueError, match=f"minimum {minimum}"):
        model(torch.zeros(1, minimum - 1))
    wave = _noise(2000, 0)[None].clone()
    wave[0, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(wave)
    with pytest.raises(ValueError, match="every length"):
        model(torch.zeros(2, 2000), torch.tensor([2000, minimum - 1]))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        model(torch.zeros(2000))
