"""Config reading for every model_type, registry names, hub cache, sharded files, errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import mertkit
from mertkit.models.checkpoint import CheckpointError, read_state_dict, save_pretrained
from mertkit.models.hubert.config import ConfigError, MertConfig
from mertkit.models.hubert.model import MertModel
from mertkit.models.registry import PRETRAINED, lookup
from model_fixtures import hf_model, tiny_config, write_official_checkpoint

# Shapes of the official config.json files (abridged to the fields that matter + some extras).
OFFICIAL = {
    "mert_model": dict(model_type="mert_model", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096, do_stable_layer_norm=True, feat_extract_norm="group",
                       sample_rate=24000, attention_relax=32.0, deepnorm=False, feature_extractor_cqt=False,
                       feature_extractor_cqt_bins=336, architectures=["MERTModel"],
                       auto_map={"AutoModel": "modeling_MERT.MERTModel"}),
    "music_hubert": dict(model_type="music_hubert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, feat_extract_norm="group", feature_extractor_cqt=False),
    "hubert": dict(model_type="hubert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, feat_extract_norm="group", architectures=["HubertModel"]),
    "data2vec-audio": dict(model_type="data2vec-audio", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, num_conv_pos_embeddings=5, conv_pos_kernel_size=19),
}


@pytest.mark.parametrize("model_type", list(OFFICIAL))
def test_config_reads_every_model_type(tmp_path, model_type):
    data = {**OFFICIAL[model_type], "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
            "conv_stride": [5, 2, 2, 2, 2, 2, 2], "hidden_dropout": 0.1, "mask_time_prob": 0.05}
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = MertConfig.from_json(tmp_path / "config.json")
    assert cfg.model_type == model_type
    assert cfg.hidden_size == data["hidden_size"] and cfg.num_hidden_states == data["num_hidden_layers"] + 1
    assert cfg.sample_rate == data.get("sample_rate", 16000)
    assert cfg.frame_rate == cfg.sample_rate / 320
    if model_type == "data2vec-audio":
        assert cfg.is_data2vec and cfg.feat_extract_norm == "layer" and cfg.conv_pos_kernel_size == 19
    else:
        assert not cfg.is_data2vec and cfg.num_conv_pos_embeddings == 128
    # unknown fields survive a round trip through to_dict
    back = cfg.to_dict()
    for key in ("architectures", "attention_relax"):
        if key in data:
            assert back[key] == data[key]


@pytest.mark.parametrize("field,value", [("feature_extractor_cqt", True), ("deepnorm", True)])
def test_config_refuses_what_would_change_inference(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps({**OFFICIAL["mert_model"], field: value}))
    with pytest.raises(ConfigError, match=field):
        MertConfig.from_json(tmp_path / "config.json")


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=str(bad)):
        MertConfig.from_json(bad)
    bad.write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ConfigError, match="wav2vec2"):
        MertConfig.from_json(bad)


def test_registry_carries_the_input_contract():
    assert set(PRETRAINED) == {"MERT-v1-330M", "MERT-v1-95M", "MERT-v0-public", "MERT-v0", "music2vec-v1",
                               "MERT-v2-30s", "MERT-v2-FullSong", "mertkit-tiny-mel"}
    assert lookup("") is None
    assert lookup("m-a-p/MERT-v1-330M").revision == "7bab7bb5d8b52448eff4873a980dc17f0015a09c"
    assert lookup("mert-v1-95m").sample_rate == 24000 and lookup("music2vec-v1").frame_rate == 50.0
    assert lookup("MERT-v1-330M").num_hidden_states == 25


def _fake_hub_cache(cache, repo_id, source, revision="0" * 40):
    """Lay out `source` the way huggingface_hub caches a snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    shutil.copytree(source, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def test_registry_name_loads_from_hub_cache_offline(tmp_path, monkeypatch):
    ref = hf_model("post_ln")
    src = write_official_checkpoint(ref, tmp_path / "src", fmt="bin", model_type="mert_model", sample_rate=24000,
                                    do_normalize=True)
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "m-a-p/MERT-v1-95M", src)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = mertkit.load("MERT-v1-95M", cache_dir=cache)
    assert model.info.name == "MERT-v1-95M" and model.info.do_normalize is True
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        assert torch.allclose(model(wave).last_hidden_state, ref(wave).last_hidden_state, atol=1e-4)


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        mertkit.load("MERT-v1-95M", cache_dir=tmp_path / "empty")
    assert "m-a-p/MERT-v1-95M" in str(err.value) and "--local-dir" in str(err.value)
    with pytest.raises(CheckpointError, match="neither a local directory"):
        mertkit.load("not-a-model")
    with pytest.raises(CheckpointError, match="no longer shipped: mertkit-tiny-music and then mertkit-tiny-mel"):
        mertkit.load("mertkit-tiny-synth")
    with pytest.raises(CheckpointError, match="no longer shipped: mertkit-tiny-mel replaced it"):
        mertkit.load("mertkit-tiny-music")


def test_sharded_safetensors_and_preprocessor_flag(tmp_path):
    torch.manual_seed(0)
    model = MertModel(tiny_config("pre_ln"))
    out = save_pretrained(model, tmp_path / "full", formats=("safetensors",), do_normalize=False)
    state = read_state_dict(out)
    from safetensors.torch import save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(out / "config.json", sharded)
    shutil.copy(out / "preprocessor_config.json", sharded)
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(sharded / name))
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = mertkit.load(sharded)
    assert loaded.info.do_normalize is False
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    model = MertModel(tiny_config("pre_ln")).eval()
    full = save_pretrained(model, tmp_path / "full", formats=("safetensors",))
    half = save_pretrained(model, tmp_path / "half", formats=("safetensors",), dtype=torch.float16)
    assert {t.dtype for t in read_state_dict(half).values()} == {torch.float16}
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55, ratio
    loaded = mertkit.load(half)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        ref, got = model(wave).last_hidden_state, loaded(wave).last_hidden_state
    assert not torch.equal(ref, got) and torch.allclose(ref, got, rtol=1e-2, atol=1e-2)


def test_float16_storage_refuses_values_it_cannot_hold(tmp_path):
    model = MertModel(tiny_config("pre_ln"))
    with torch.no_grad():
        model.feature_projection.projection.weight[0, 0] = 1e5
    with pytest.raises(CheckpointError, match=r"feature_projection\.projection\.weight: values beyond torch\.float16"):
        save_pretrained(model, tmp_path / "half", formats=("safetensors",), dtype=torch.float16)
    with pytest.raises(CheckpointError, match="float32, float16, not torch.bfloat16"):
        save_pretrained(model, tmp_path / "bf16", formats=("safetensors",), dtype=torch.bfloat16)


def test_export_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = MertModel(tiny_config("data2vec")).eval()
    for fmt in ("bin", "safetensors"):
        out = save_pretrained(model, tmp_path / fmt, formats=(fmt,))
        again = mertkit.load(out)
        wave = torch.randn(2, 5000)
        with torch.no_grad():
            a, b = model(wave).hidden_states, again(wave).hidden_states
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_wrong_shape_and_missing_weights(tmp_path):
    torch.manual_seed(0)
    out = save_pretrained(MertModel(tiny_config("post_ln")), tmp_path / "m", formats=("bin",))
    cfg = json.loads((out / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="intermediate_dense.weight: checkpoint"):
        mertkit.load(out)
    (out / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        mertkit.load(out)
