"""MertPretrainModel: logits, masked-only losses, feature penalty and feature_grad_mult."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import numpy as np

from mertkit.pretrain.mlm_model import (
    Counts, MertPretrainModel, PretrainInputError, TextureSpectrogram, cepstrum, chroma, local_statistics,
    log_standardised, onset_flux, texture, texture_half_width,
)
from pretrain_fixtures import tiny_config


def _inputs(model: MertPretrainModel, batch: int = 2, samples: int = 8000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.randn(batch, samples, generator=g) * 0.3
    lengths = torch.tensor([samples, samples - 1700][:batch])
    frames = model.frame_count(samples)
    cfg = model.config
    labels = torch.randint(0, cfg.codebook_size, (batch, cfg.n_codebooks, frames + 1), generator=g)
    mask = torch.rand(batch, frames, generator=g) < 0.5
    return wave, lengths, labels, mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MertPretrainModel(tiny_config()).eval()


def test_losses_match_a_direct_computation_through_the_inference_model(model):
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    # independent path: MertModel.forward with mask_time_indices, cosine_similarity per code
    ref = model.backbone(wave, lengths, mask_time_indices=mask)
    valid = torch.arange(mask.shape[1])[None] < ref.frame_lengths[:, None]
    selected = mask & valid
    hidden = ref.last_hidden_state[selected]
    cfg = model.config
    proj = model.final_proj(hidden).view(-1, cfg.n_codebooks, cfg.final_dim)
    table = model.label_embs_concat.view(cfg.n_codebooks, cfg.codebook_size, cfg.final_dim)
    targets = labels[:, :, : mask.shape[1]].transpose(1, 2)[selected]
    for k in range(cfg.n_codebooks):
        logits = torch.cosine_similarity(proj[:, k, None, :], table[k][None], dim=-1) / cfg.logit_temp
        assert torch.allclose(out.sums["ce"][k], F.cross_entropy(logits, targets[:, k], reduction="sum"), rtol=1e-5)
        assert int(out.correct[k]) == int((logits.argmax(-1) == targets[:, k]).sum())
    features = ref.extract_features[valid]
    assert torch.allclose(out.sums["penalty"], features.pow(2).mean(-1).sum(), rtol=1e-5)
    cqt = model.cqt(wave, num_frames=mask.shape[1]).transpose(1, 2)[selected]
    assert torch.allclose(out.sums["cqt"], (model.cqt_head(hidden) - cqt).pow(2).mean(-1).sum(), rtol=1e-5)
    assert out.masked_frames == int(selected.sum()) and out.valid_frames == int(valid.sum())


def test_only_masked_frames_count(model):
    wave, lengths, labels, mask = _inputs(model)
    base = model(wave, lengths, labels, mask).sums["ce"]
    changed = labels.clone()
    changed[:, :, : mask.shape[1]][~mask[:, None, :].expand_as(changed[:, :, : mask.shape[1]])] = 0
    assert torch.equal(model(wave, lengths, changed, mask).sums["ce"], base)
    flipped = labels.clone()
    flipped[:, :, : mask.shape[1]] = (labels[:, :, : mask.shape[1]] + 1) % model.config.codebook_size
    assert not torch.allclose(model(wave, lengths, flipped, mask).sums["ce"], base)


def test_total_loss_weights_and_normalisers(model):
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    counts = Counts(masked_frames=50, valid_frames=80)
    expected = out.sums["ce"].sum() / 50 + 10 * out.sums["penalty"] / 80 + out.sums["cqt"] / 50
    assert torch.allclose(model.total_loss(out, counts), expected)


def test_unmasked_weight_adds_both_terms_on_the_unmasked_frames():
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(unmasked_weight=0.5)).eval()
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    # the unmasked sums are the masked ones computed with the mask inverted (within valid frames)
    ref = model.backbone(wave, lengths, mask_time_indices=mask)
    kept = ~mask & (torch.arange(mask.shape[1])[None] < ref.frame_lengths[:, None])
    hidden = ref.last_hidden_state[kept]
    cqt = model.cqt(wave, num_frames=mask.shape[1]).transpose(1, 2)[kept]
    assert torch.allclose(out.sums["cqt_unmasked"], (model.cqt_head(hidden) - cqt).pow(2).mean(-1).sum(), rtol=1e-5)
    targets = labels[:, :, : mask.shape[1]].transpose(1, 2)[kept]
    assert torch.allclose(out.sums["ce_unmasked"], F.cross_entropy(model.code_logits(hidden).transpose(1, 2), targets,
                                                                   reduction="none").sum(0), rtol=1e-5)
    counts = Counts(masked_frames=50, valid_frames=80)
    expected = (out.sums["ce"].sum() / 50 + 10 * out.sums["penalty"] / 80 + out.sums["cqt"] / 50
                + 0.5 * (out.sums["ce_unmasked"].sum() + out.sums["cqt_unmasked"]) / 30)
    assert torch.allclose(model.total_loss(out, counts), expected)
    # the recipe default (0) leaves the unmasked frames out entirely
    torch.manual_seed(0)
    recipe = MertPretrainModel(tiny_config()).eval()
    assert not {"ce_unmasked", "cqt_unmasked"} & set(recipe(wave, lengths, labels, mask).sums)


def test_log_standardised_cqt_target_is_zero_mean_unit_variance_over_valid_frames():
    magnitude = (0.5 + torch.rand(2, 12, 5)) * torch.tensor([1.0, 100.0])[:, None, None]  # one loud clip
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 8:] = False
    target = log_standardised(magnitude, valid)
    for clip, frames in ((0, 12), (1, 8)):
        kept = target[clip, :frames]
        assert abs(float(kept.mean())) < 1e-5 and abs(float(kept.std(unbiased=False)) - 1) < 1e-4
    # loudness is gone: the same spectra 100x louder give (nearly) the same target
    louder = log_standardised(magnitude[:1] * 100, valid[:1])
    assert float((louder - target[:1]).abs().max()) < 1e-3


def test_the_model_regresses_the_configured_cqt_target():
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(cqt_target="log_standardised")).eval()
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    ref = model.backbone(wave, lengths, mask_time_indices=mask)
    valid = torch.arange(mask.shape[1])[None] < ref.frame_lengths[:, None]
    target = log_standardised(model.cqt(wave, num_frames=mask.shape[1]).transpose(1, 2), valid)[mask & valid]
    predicted = model.cqt_head(ref.last_hidden_state[mask & valid])
    assert torch.allclose(out.sums["cqt"], (predicted - target).pow(2).mean(-1).sum(), rtol=1e-5)


def test_onset_flux_rises_on_the_frame_a_band_gets_louder():
    magnitude = torch.full((1, 10, 6), 0.1)
    magnitude[0, 4:, 3:] = 2.0  # the upper band (bins 3-5) gets louder at frame 4 and stays
    magnitude[0, 7:, :3] = 0.01  # the lower band gets quieter at frame 7: no onset
    valid = torch.ones(1, 10, dtype=torch.bool)
    flux = onset_flux(magnitude, valid, bins_per_band=3)
    assert flux.shape == (1, 10, 2)
    assert torch.count_nonzero(flux[0, :, 1]) == 1 and flux[0, 4, 1] == pytest.approx(10.0)  # mean 1 over 10 frames
    assert torch.count_nonzero(flux[0, :, 0]) == 0  # falls are not onsets


def test_derived_targets_widen_the_cqt_head_and_each_gets_its_weighted_term():
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(flux_weight=2.0, chroma_weight=0.5, timbre_weight=3.0,
                                          timbre_coefficients=5, texture_weight=0.7, unmasked_weight=1.0)).eval()
    cfg = model.config
    assert cfg.flux_bands == 3 and model.cqt_head.out_features == cfg.cqt_bins + 3 + 12 + 5 + 15
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    ref = model.backbone(wave, lengths, mask_time_indices=mask)
    valid = torch.arange(mask.shape[1])[None] < ref.frame_lengths[:, None]
    magnitude = model.cqt(wave, num_frames=mask.shape[1]).transpose(1, 2)
    targets = {
        "cqt": magnitude,
        "flux": onset_flux(magnitude, valid, cfg.cqt_bins_per_octave),
        "chroma": chroma(magnitude, valid, cfg.cqt_bins_per_octave),
        "timbre": cepstrum(log_standardised(magnitude, valid), 5),
        "texture": texture(model.texture_spectrogram(wave, mask.shape[1]), valid, 5, texture_half_width(cfg)),
    }
    counts = Counts(out.masked_frames, out.valid_frames)
    terms = model.loss_terms(out, counts)
    start = 0
    for name, width, weight in cfg.head_targets:
        for frames, suffix, count in ((mask & valid, "", counts.masked_frames),
                                      (~mask & valid, "_unmasked", counts.unmasked_frames)):
            predicted = model.cqt_head(ref.last_hidden_state[frames])[:, start:start + width]
            expected = (predicted - targets[name][frames]).pow(2).mean(-1).sum()
            assert torch.allclose(out.sums[name + suffix], expected, rtol=1e-5), name + suffix
            assert torch.allclose(terms[name + suffix], weight * expected / count, rtol=1e-5)
        start += width
    assert [name for name, _, _ in cfg.head_targets] == ["cqt", "flux", "chroma", "timbre", "texture"]
    assert {"flux_mse", "chroma_mse_unmasked", "timbre_mse", "texture_mse"} <= set(model.metrics({k: v.detach() for k, v in out.sums.items()}, out.correct, counts))


def test_clip_texture_term_compares_crop_averages_of_predictions_and_targets():
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(chroma_weight=0.5, timbre_coefficients=5, texture_weight=0.7,
                                          texture_clip_weight=2.0)).eval()
    cfg = model.config
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    ref = model.backbone(wave, lengths, mask_time_indices=mask)
    valid = torch.arange(mask.shape[1])[None] < ref.frame_lengths[:, None]
    target = texture(model.texture_spectrogram(wave, mask.shape[1]), valid, 5, texture_half_width(cfg))
    start = cfg.cqt_bins + 12  # the texture outputs follow the CQT and the chroma
    expected = torch.zeros(())
    for crop in range(wave.shape[0]):  # every valid frame of the crop, masked or not
        frames = valid[crop]
        predicted = model.cqt_head(ref.last_hidden_state[crop, frames])[:, start:start + 15]
        expected = expected + (predicted.mean(0) - target[crop, frames].mean(0)).pow(2).mean()
    assert torch.allclose(out.sums["texture_clip"], expected, rtol=1e-5)
    counts = Counts(out.masked_frames, out.valid_frames, clips=wave.shape[0])
    assert torch.allclose(model.loss_terms(out, counts)["texture_clip"], 2.0 * expected / 2, rtol=1e-5)
    assert "texture_clip_mse" in model.metrics({k: v.detach() for k, v in out.sums.items()}, out.correct, counts)
    model.total_loss(out, counts).backward()
    assert model.backbone.encoder.layers[0].feed_forward.output_dense.weight.grad.abs().sum() > 0


def test_clip_texture_term_is_blind_to_frame_errors_that_average_out():
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(timbre_coefficients=5, texture_weight=1.0, texture_clip_weight=1.0)).eval()
    last = torch.randn(2, 12, model.backbone.config.hidden_size)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False
    with torch.no_grad():
        predicted = model.cqt_head(last)
    wobble = torch.randn(2, 12, predicted.shape[-1])
    wobble[0] -= wobble[0].mean(0)  # zero mean over each crop's valid frames
    wobble[1, :9] -= wobble[1, :9].mean(0)
    wobble[1, 9:] = 50.0  # padding: never read
    shifted = predicted + wobble
    shifted[..., _texture_slice(model)] += 0.5  # a bias over the whole crop is what it sees
    with torch.no_grad():
        assert float(model.clip_texture_error(last, valid, predicted + wobble)) == pytest.approx(0.0, abs=1e-9)
        assert float(model.clip_texture_error(last, valid, shifted)) == pytest.approx(2 * 0.25, rel=1e-5)


def _texture_slice(model: MertPretrainModel) -> slice:
    start = sum(width for name, width, _ in model.config.head_targets if name != "texture")
    return slice(start, start + 3 * model.config.timbre_coefficients)


def test_chroma_folds_octaves_and_the_bins_around_each_semitone():
    # 2 octaves of 24 bins (2 a semitone, bin 0 on class 0): the bin just below a semitone's
    # centre belongs to it, and the top bin to class 0 (its pitch class an octave up)
    magnitude = torch.full((1, 3, 48), 1e-3)
    magnitude[0, 0, 24 + 2 * 7] = 5.0  # class 7, upper octave
    magnitude[0, 1, 2 * 7 - 1] = 5.0  # a quarter-tone below class 7
    magnitude[0, 2, 47] = 5.0  # a quarter-tone below class 0, one octave up
    folded = chroma(magnitude, torch.ones(1, 3, dtype=torch.bool), bins_per_octave=24)
    assert folded.shape == (1, 3, 12)
    assert folded[0].argmax(-1).tolist() == [7, 7, 0]


def test_cepstrum_keeps_the_envelope_and_its_scale():
    bins = torch.arange(64, dtype=torch.float32)
    envelope = torch.cos(torch.pi / 64 * (bins + 0.5) * 2)  # exactly DCT basis 2
    coefficients = cepstrum(envelope[None, None], 8)
    assert coefficients.shape == (1, 1, 8)
    assert coefficients[0, 0].abs().argmax() == 2
    assert torch.allclose(coefficients[0, 0, [0, 1, 3]], torch.zeros(3), atol=1e-5)
    # orthonormal DCT times sqrt(8 / 64): the energy of the 64 values shared by 8 coefficients
    assert float(coefficients.pow(2).sum()) == pytest.approx(float(envelope.pow(2).sum()) * 8 / 64, rel=1e-4)


def test_derived_targets_need_a_cqt_they_fit():
    from mertkit.pretrain.pretrain_config import PretrainConfigError

    with pytest.raises(PretrainConfigError, match="flux_weight"):
        tiny_config(flux_weight=1.0, cqt=False)
    with pytest.raises(PretrainConfigError, match="flux_weight"):
        tiny_config(flux_weight=1.0, cqt_bins=30)
    with pytest.raises(PretrainConfigError, match="flux_weight"):
        tiny_config(flux_weight=-1.0)
    with pytest.raises(PretrainConfigError, match="chroma_weight"):
        tiny_config(chroma_weight=1.0, cqt_bins_per_octave=18, cqt_bins=36)
    with pytest.raises(PretrainConfigError, match="timbre_weight"):
        tiny_config(timbre_weight=1.0, timbre_coefficients=0)
    with pytest.raises(PretrainConfigError, match="timbre_weight"):
        tiny_config(timbre_weight=1.0, cqt=False)
    with pytest.raises(PretrainConfigError, match="texture_weight"):
        tiny_config(texture_weight=1.0, cqt=False)
    with pytest.raises(PretrainConfigError, match="texture_weight"):
        tiny_config(texture_weight=1.0, timbre_coefficients=65)
    with pytest.raises(PretrainConfigError, match="texture_window_seconds"):
        tiny_config(texture_weight=1.0, texture_window_seconds=0.0)
    with pytest.raises(PretrainConfigError, match="texture_clip_weight > 0 needs texture_weight"):
        tiny_config(texture_clip_weight=1.0)
    with pytest.raises(PretrainConfigError, match="texture_clip_weight must be >= 0"):
        tiny_config(texture_weight=1.0, texture_clip_weight=-1.0)


def test_local_statistics_match_a_frame_by_frame_loop_over_valid_frames():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False  # a shorter clip: its padding frames never enter a window
    got = local_statistics(values, valid, half_width=2)
    assert got.shape == (2, 9, 9)
    x = values.numpy()
    for b in range(2):
        change = np.diff(x[b], axis=0, prepend=x[b, :1])
        last = int(valid[b].sum())
        for t in range(last):
            window = slice(max(0, t - 2), min(last, t + 3))
            expected = np.concatenate([x[b, window].mean(0), x[b, window].std(0), change[window].std(0)])
            np.testing.assert_allclose(got[b, t].numpy(), expected, atol=1e-9)


def test_local_statistics_tell_steady_from_moving_sounds():
    steady = torch.ones(1, 20, 1)
    moving = torch.sin(torch.arange(20.0) * 1.3)[None, :, None]
    valid = torch.ones(1, 20, dtype=torch.bool)
    still, busy = (local_statistics(v, valid, half_width=3)[0, 10] for v in (steady, moving))
    assert float(still[1]) == 0.0 and float(still[2]) == 0.0
    assert float(busy[1]) > 0.3 and float(busy[2]) > 0.3


def test_texture_spectrogram_frames_a_tone_on_the_model_grid_up_to_nyquist():
    sample_rate, hop, frames = 24000, 320, 40
    seconds = np.arange(hop * frames) / sample_rate
    wave = torch.tensor(np.sin(2 * np.pi * 9000.0 * seconds), dtype=torch.float32)[None]  # above the CQT's top
    wave[:, : hop * 20] = 0.0  # silent first half: frame t is centred on sample t * hop
    mel = TextureSpectrogram(sample_rate, hop)(wave, frames)
    assert mel.shape == (1, frames, 64)
    from mertkit.pretrain.kmeans import mel_filterbank

    centres = np.argmax(mel_filterbank(sample_rate, 1024, 64), axis=1) * sample_rate / 1024
    assert abs(centres[int(mel[0, 30].argmax())] - 9000.0) < 600.0
    energy = mel[0].sum(-1)
    assert float(energy[:17].max()) < 1e-6 * float(energy[30])  # frames whose window ends before the tone
    assert float(energy[19]) > 0.0  # the window centred 320 samples before the tone reaches it


def test_texture_is_free_of_gain():
    g = torch.Generator().manual_seed(1)
    wave = torch.randn(1, 320 * 30, generator=g)
    spectrogram = TextureSpectrogram(24000, 320)
    valid = torch.ones(1, 30, dtype=torch.bool)
    loud, quiet = (texture(spectrogram(w, 30), valid, 6, half_width=4) for w in (wave, wave * 0.25))
    assert loud.shape == (1, 30, 18)
    assert torch.allclose(loud, quiet, atol=1e-3)


def test_texture_scales_the_spread_parts_of_the_local_statistics():
    from mertkit.pretrain.mlm_model import TEXTURE_MOVEMENT_GAIN, TEXTURE_SPREAD_GAIN

    g = torch.Generator().manual_seed(2)
    mel = torch.rand(1, 25, 64, generator=g) + 0.1
    valid = torch.ones(1, 25, dtype=torch.bool)
    stats = local_statistics(cepstrum(log_standardised(mel, valid), 4), valid, half_width=3)
    got = texture(mel, valid, 4, half_width=3)
    assert torch.allclose(got[..., :4], stats[..., :4])
    assert torch.allclose(got[..., 4:8], TEXTURE_SPREAD_GAIN * stats[..., 4:8])
    assert torch.allclose(got[..., 8:], TEXTURE_MOVEMENT_GAIN * stats[..., 8:])


def _grads(mult: float):
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(feature_grad_mult=mult))
    wave, lengths, labels, mask = _inputs(model)
    out = model(wave, lengths, labels, mask)
    model.total_loss(out, Counts(out.masked_frames, out.valid_frames)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_feature_grad_mult_scales_only_the_front_end():
    full, scaled = _grads(1.0), _grads(0.1)
    for name, grad in full.items():
        factor = 0.1 if name.startswith("backbone.feature_extractor.") else 1.0
        assert torch.allclose(scaled[name], factor * grad, rtol=1e-3, atol=1e-7), name


def test_bad_shapes_are_named(model):
    wave, lengths, labels, mask = _inputs(model)
    with pytest.raises(PretrainInputError, match="labels must be"):
        model(wave, lengths, labels[:, :1], mask)
    with pytest.raises(PretrainInputError, match="labels must be"):
        model(wave, lengths, labels[:, :, :5], mask)
    with pytest.raises(PretrainInputError, match="mask must be"):
        model(wave, lengths, labels, mask[:, :-1])
