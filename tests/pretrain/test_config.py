"""PretrainConfig: presets carry the official recipe numbers, overrides and JSON are strict."""
from __future__ import annotations

import json

import pytest

from mertkit.models.hubert.model import MertModel
from mertkit.pretrain.pretrain_config import PretrainConfig, PretrainConfigError, load_config


def _params(cfg: PretrainConfig) -> int:
    return sum(p.numel() for p in MertModel(cfg.mert_config()).parameters())


def test_95m_preset_matches_the_recipe():
    cfg = load_config("95m")
    assert (cfg.lr, cfg.clip_norm, cfg.feature_grad_mult, cfg.final_dim) == (5e-4, 10.0, 0.1, 64)
    assert cfg.model["layerdrop"] == 0.05 and cfg.model["hidden_dropout"] == 0.1
    assert (cfg.mixture_min_samples, cfg.mixture_max_samples) == (12000, 24000)
    assert (cfg.crop_seconds, cfg.min_crop_seconds) == (5.0, 3.0)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay) == (0.9, 0.98, 1e-6, 0.01)
    assert (cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, cfg.logit_temp) == (0.8, 5, 2, 0.1)
    # MODELS.md: the released 95M-class inference weights have 94,371,712 parameters
    assert _params(cfg) == 94_371_712


def test_330m_preset_matches_the_recipe():
    cfg = load_config("330m")
    assert (cfg.lr, cfg.clip_norm, cfg.grad_accum, cfg.feature_grad_mult, cfg.final_dim) == (1.5e-3, 1.0, 8, 1.0, 128)
    assert cfg.crop_samples == 122880  # 5.12 s at 24 kHz
    assert cfg.model["do_stable_layer_norm"] is True and cfg.model["hidden_dropout"] == 0.0
    assert cfg.mixture_max_samples == 36000  # 1.5 s
    assert _params(cfg) == 315_428_992


def test_tiny_preset_is_a_few_million_parameters():
    assert 1_000_000 < _params(load_config("tiny")) < 10_000_000


def test_tiny_wide_preset_is_tiny_with_one_wide_filterbank():
    """tiny-wide = tiny, but the 7-conv front-end (a 400-sample, 16.7 ms field) becomes one
    learned 1280-sample (53 ms) filterbank plus a 1x1 conv: still 75 Hz, still the official layout."""
    tiny, wide = load_config("tiny"), load_config("tiny-wide")
    mert = wide.mert_config()
    assert (mert.conv_kernel, mert.conv_stride, mert.conv_dim) == ((1280, 1), (320, 1), (256, 256))
    assert mert.frame_rate == tiny.mert_config().frame_rate == 75 and wide.label_rate == 75
    assert mert.num_frames(5 * 24000) == (5 * 24000 - 1280) // 320 + 1
    front_end = ("conv_dim", "conv_kernel", "conv_stride", "num_feat_extract_layers")
    assert {k: v for k, v in wide.model.items() if k not in front_end} == {
        k: v for k, v in tiny.model.items() if k not in front_end
    }
    assert 1_000_000 < _params(wide) < 10_000_000


def test_overrides_reach_the_backbone_and_are_typed():
    cfg = load_config("tiny").with_overrides(["model.num_hidden_layers=2", "lr=0.001", "precision=bf16", "cqt=false"])
    assert cfg.mert_config().num_hidden_layers == 2
    assert cfg.lr == 0.001 and cfg.precision == "bf16" and cfg.cqt is False
    with pytest.raises(PretrainConfigError, match="unknown setting 'lrr'"):
        cfg.with_overrides(["lrr=1"])
    with pytest.raises(PretrainConfigError, match="wrong type"):
        cfg.with_overrides(["batch_size=two"])
    with pytest.raises(PretrainConfigError, match="key=value"):
        cfg.with_overrides(["lr"])


def test_json_round_trip_and_strictness(tmp_path):
    cfg = load_config("tiny")
    cfg.save_json(tmp_path / "c.json")
    assert PretrainConfig.from_json(tmp_path / "c.json") == cfg
    data = cfg.to_dict()
    data["mask_probability"] = 0.5
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(PretrainConfigError, match="bad.json.*mask_probability"):
        PretrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(PretrainConfigError, match="neither a preset"):
        load_config(tmp_path / "missing.json")


def test_label_rate_must_match_the_frame_rate():
    with pytest.raises(PretrainConfigError, match="label_rate 50"):
        load_config("tiny").with_overrides(["label_rate=50"])


@pytest.mark.parametrize("override, message", [
    ("cqt_target=log", "cqt_target must be one of"),
    ("unmasked_weight=-1", "unmasked_weight must be >= 0"),
])
def test_bad_target_settings_are_named(override, message):
    with pytest.raises(PretrainConfigError, match=message):
        PretrainConfig().with_overrides([override])
