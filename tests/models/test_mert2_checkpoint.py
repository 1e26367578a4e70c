"""MERT-v2 checkpoints: strict loading of the official layout, config validation, the family
dispatch of mertkit.load and the input contract."""
from __future__ import annotations

import json

import pytest
import torch
from mert2_fixtures import FRONT_END, TINY2, official_state, random_state, tiny2_config, write_checkpoint

import mertkit
from mertkit.models.checkpoint import CheckpointError
from mertkit.models.family import FAMILIES, contract_of, read_config
from mertkit.models.hubert.config import ConfigError
from mertkit.models.mert2.config import Mert2Config
from mertkit.models.mert2.model import Mert2Model


@pytest.mark.parametrize("sharded", [False, True])
def test_load_reads_the_official_layout_one_to_one(tmp_path, sharded):
    directory = write_checkpoint(tmp_path / "ckpt", sharded=sharded, seed=1)
    model = mertkit.load(directory)
    assert isinstance(model, Mert2Model)
    expected = official_state(random_state(tiny2_config(), 1))
    got = model.state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value.float()), name
    assert not (directory / "EXECUTED").exists()  # auto_map's remote code never ran
    assert model.config.extra["auto_map"]["AutoModel"] == "modeling_mert2.Mert2Model"
    assert not model.training
    assert model.info.do_normalize is False  # raw waveforms: the family default with no preprocessor file


def test_load_bf16_keeps_weights_native_and_front_end_float32(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", seed=2)
    model = mertkit.load(directory, dtype=torch.bfloat16)
    stored = official_state(random_state(tiny2_config(), 2))
    assert model.layers[0].attn.query_proj.weight.dtype == torch.bfloat16
    assert torch.equal(model.layers[0].attn.query_proj.weight, stored["layers.0.attn.query_proj.weight"])
    for name in FRONT_END:
        buffer = model.get_buffer(name)
        assert buffer.dtype == torch.float32 and torch.equal(buffer, stored[name]), name
    with torch.inference_mode():
        out = model(0.1 * torch.randn(1, 3000))
    assert out.hidden_states[0].dtype == torch.bfloat16


def test_contract_of_a_loaded_mert2_model(tmp_path):
    model = mertkit.load(write_checkpoint(tmp_path / "fs", {"variant": "fs"}))
    contract = contract_of(model)
    config = model.config
    assert contract.family == "mert2"
    assert contract.sample_rate == 24000
    assert contract.samples_per_frame == 4 * TINY2["hop_length"]
    assert contract.min_input_samples == max(TINY2["n_fft"] // 2 + 1, 4 * TINY2["hop_length"])
    assert contract.num_hidden_states == TINY2["num_hidden_layers"]
    assert (contract.context_seconds, contract.default_window_seconds) == (360.0, 0.0)
    assert contract.windowing_exact is False and contract.do_normalize is False
    thirty = contract_of(Mert2Model(config.replace(variant="30s", context_seconds=30.0)))
    assert (thirty.context_seconds, thirty.default_window_seconds) == (30.0, 30.0)


def test_full_size_defaults_give_the_released_shapes():
    config = Mert2Config()
    assert (config.samples_per_frame, config.frame_rate, config.min_input_samples) == (960, 25.0, 1025)
    assert config.num_frames(24000 * 30) == 750
    with torch.device("meta"):
        state = Mert2Model(config).state_dict()
    assert len(state) == 876
    buffers = sum(state[k].numel() for k in FRONT_END)
    assert sum(v.numel() for v in state.values()) - buffers == 632_295_808


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("layers.1.attn.key_proj.bias"), "missing tensors: layers.1.attn.key_proj.bias"),
    (lambda s: s.update({"layers.0.attn.rel_pos": torch.zeros(2)}), "unexpected tensors: layers.0.attn.rel_pos"),
    (lambda s: s.update({"layers.0.ffn1.w_1.weight": torch.zeros(3, 3, dtype=torch.bfloat16)}),
     r"wrongly shaped tensors: layers.0.ffn1.w_1.weight: checkpoint \(3, 3\)"),
    (lambda s: s.update({"feature_extractor.mel_scale.fb": s["feature_extractor.mel_scale.fb"].bfloat16()}),
     "feature_extractor.mel_scale.fb is torch.bfloat16"),
])
def test_strict_loading_names_the_offending_tensor(tmp_path, edit, message):
    state = official_state(random_state(tiny2_config()))
    edit(state)
    directory = write_checkpoint(tmp_path / "bad", state=state)
    with pytest.raises(CheckpointError, match=message) as err:
        mertkit.load(directory)
    assert "\n" not in str(err.value) and str(directory) in str(err.value)


@pytest.mark.parametrize("change, field", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"hidden_size": 36, "num_attention_heads": 4, "subsampling_channels": [16, 24, 36]}, "head dimension 9"),
    ({"subsampling_channels": [16, 32]}, "subsampling_channels must have 3"),
    ({"subsampling_channels": [8, 24, 32]}, "start at num_mel_bins"),
    ({"subsampling_channels": [16, 24, 48]}, "end at hidden_size"),
    ({"subsampling_depths": [1, 0, 1]}, "subsampling_depths must hold positive"),
    ({"n_fft": 127}, "n_fft 127 must be even"),
    ({"win_length": 256}, "n_fft 128 must be even and >= win_length 256"),
    ({"conv_depthwise_kernel_size": 8}, "conv_depthwise_kernel_size"),
    ({"rotary_embedding_base": 0}, "rotary_embedding_base"),
    ({"layer_norm_eps": -1e-5}, "layer_norm_eps"),
    ({"subsampling_layer_norm_eps": 0.0}, "subsampling_layer_norm_eps"),
    ({"variant": "60s"}, "variant '60s' is unknown"),
    ({"hidden_size": "big"}, "hidden_size"),
])
def test_config_validation_errors_are_one_line(tmp_path, change, field):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY2, **change}))
    with pytest.raises(ConfigError, match=field) as err:
        Mert2Config.from_json(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_dispatch_on_model_type():
    family, config = read_config(dict(TINY2), source="x")
    assert family.name == "mert2" and isinstance(config, Mert2Config)
    family, _ = read_config({"model_type": "mert_model", "hidden_size": 32, "num_attention_heads": 4,
                             "num_conv_pos_embedding_groups": 4}, source="x")
    assert family.name == "hubert"
    with pytest.raises(ConfigError, match="model_type 'wav2vec3' is not a supported family"):
        read_config({"model_type": "wav2vec3"}, source="x")
    with pytest.raises(ConfigError, match="no 'model_type' field"):
        read_config({}, source="x")


def test_contract_frames_and_timestamps_follow_the_config():
    config = tiny2_config()
    contract = FAMILIES["mert2"].contract(config, None, None)
    hop = TINY2["hop_length"]
    assert contract.first_frame_centre == 1.5 * hop
    model = Mert2Model(config).eval()
    for n in (contract.min_input_samples, 1000, 4321):
        with torch.no_grad():
            frames = model(torch.randn(1, n)).hidden_states[0].shape[1]
        assert contract.num_frames(n) == frames == n // contract.samples_per_frame


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    state = official_state(random_state(tiny2_config()))
    state["layers.1.ffn2.w_2.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite values .* layers.1.ffn2.w_2.weight"):
        mertkit.load(write_checkpoint(tmp_path / "nan", state=state))
