"""Hostile configs and weights: refused with one line naming the file (or the tensors), before
any model is built."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import mertkit
from mertkit.cli.app import main
from mertkit.models import checkpoint
from mertkit.models.checkpoint import CheckpointError, save_pretrained
from mertkit.models.hubert.config import ConfigError, MertConfig, weight_shapes
from mertkit.models.hubert.model import MertModel
from model_fixtures import tiny_config


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path / "ckpt", formats=("safetensors",))


@pytest.fixture
def no_build(monkeypatch):
    """Any attempt to build the model fails the test: checks must come first."""
    def refuse(config):
        raise AssertionError("the model was built before the checks")

    monkeypatch.setattr(checkpoint, "MertModel", refuse)


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


@pytest.mark.parametrize("layout,overrides", [
    ("post_ln", {}), ("pre_ln", {}), ("data2vec", {}), ("post_ln", {"conv_bias": True}),
    ("post_ln", {"feat_proj_layer_norm": False, "mask_time_prob": 0.0}),
])
def test_weight_shapes_match_the_model(layout, overrides):
    config = tiny_config(layout, **overrides)
    built = {name: tuple(t.shape) for name, t in MertModel(config).state_dict().items()}
    assert weight_shapes(config) == built
    assert config.num_parameters() == sum(math.prod(s) for s in built.values())


@pytest.mark.parametrize("text,message", [
    ("[1, 2, 3]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_config_that_is_not_an_object_is_refused(ckpt, no_build, text, message):
    (ckpt / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        mertkit.load(ckpt)
    assert str(ckpt / "config.json") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("changes,message", [
    ({"conv_stride": [5, 2, 2, 0, 2, 2, 2]}, "conv_stride"),
    ({"conv_dim": [16, 16, -16, 16, 16, 16, 16]}, "conv_dim"),
    ({"conv_kernel": 3}, "conv_kernel"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"hidden_size": "32"}, "hidden_size"),
    ({"num_attention_heads": -4}, "num_attention_heads"),
    ({"intermediate_size": 64.5}, "intermediate_size"),
    ({"num_hidden_layers": 100_000}, "num_hidden_layers"),
    ({"layer_norm_eps": -1}, "layer_norm_eps"),
    ({"hidden_dropout": 2.0}, "hidden_dropout"),
    ({"conv_bias": "no"}, "conv_bias"),
    ({"model_type": "wav2vec2"}, "wav2vec2"),
    ({"num_hidden_layers": 512, "hidden_size": 16384, "num_attention_heads": 16, "intermediate_size": 65536},
     "parameters"),
])
def test_bad_config_values_are_refused_before_building(ckpt, no_build, changes, message):
    path = _edit_config(ckpt, **changes)
    with pytest.raises(ConfigError, match=message) as err:
        mertkit.load(ckpt)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_config_that_disagrees_with_the_weights_is_named_before_building(ckpt, no_build):
    _edit_config(ckpt, num_hidden_layers=5, intermediate_size=48)
    with pytest.raises(CheckpointError) as err:
        mertkit.load(ckpt)
    message = str(err.value)
    assert str(ckpt) in message and "\n" not in message
    assert "missing tensors: encoder.layers.3." in message
    assert "encoder.layers.0.feed_forward.intermediate_dense.weight: checkpoint (64, 32) vs model (48, 32)" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, no_build, value):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    out = save_pretrained(MertModel(tiny_config("pre_ln")), tmp_path / "m", formats=("safetensors",))
    state = load_file(str(out / "model.safetensors"))
    for name in ("encoder.layers.1.attention.k_proj.weight", "feature_projection.projection.bias"):
        state[name][0] = value
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite") as err:
        mertkit.load(out)
    assert "encoder.layers.1.attention.k_proj.weight, feature_projection.projection.bias" in str(err.value) or \
        "feature_projection.projection.bias, encoder.layers.1.attention.k_proj.weight" in str(err.value)
    assert "encoder.layers.0" not in str(err.value)


def test_broken_preprocessor_and_shard_index_are_one_line_errors(ckpt):
    (ckpt / "preprocessor_config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="preprocessor_config.json: expected a JSON object"):
        mertkit.load(ckpt)
    (ckpt / "preprocessor_config.json").write_text(json.dumps({"do_normalize": "yes"}))
    with pytest.raises(CheckpointError, match="do_normalize must be true or false"):
        mertkit.load(ckpt)
    (ckpt / "preprocessor_config.json").unlink()
    (ckpt / "model.safetensors").rename(ckpt / "part.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(["part.safetensors"]))
    with pytest.raises(CheckpointError, match="index.json: expected a JSON object"):
        mertkit.load(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": 3}))
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        mertkit.load(ckpt)


@pytest.mark.parametrize("config_text", ["[1, 2]", json.dumps({"model_type": "mert_model", "conv_stride": [0] * 7})])
def test_extract_reports_a_bad_config_in_one_line(ckpt, tmp_path, config_text):
    from audio_fixtures import write_tone

    write_tone(tmp_path / "a.wav", seconds=1.0, sample_rate=24000, channels=1)
    (ckpt / "config.json").write_text(config_text)
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "a.wav"), "--model", str(ckpt), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert str(ckpt / "config.json") in result.output


def test_config_values_in_code_are_checked_too():
    with pytest.raises(ConfigError, match="conv_stride"):
        MertConfig(conv_stride=(5, 2, 2, 2, 2, 2, 0))
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        tiny_config("post_ln", num_hidden_layers=0)


def test_eval_reports_a_bad_config_in_one_line(ckpt, tmp_path):
    (ckpt / "config.json").write_text("[]")
    result = CliRunner().invoke(main, ["eval", "--model", str(ckpt), "-o", str(tmp_path / "out"), "--tasks", "pitch"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {ckpt / 'config.json'}: expected a JSON object" in result.output
