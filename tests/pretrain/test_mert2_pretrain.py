"""Pre-training a MERT-v2-layout backbone (`model_type` mert2): mel statistics measured on the
corpus, masking with a mask embedding outside the backbone, an exact export to the official
MERT-v2 layout, its random-initialisation twin, and labels at the model's 25 Hz."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mertkit
from mertkit.cli.app import main
from mertkit.cli.labels import labels as labels_command
from mertkit.models.checkpoint import read_state_dict
from mertkit.models.mert2.model import Mert2Model
from mertkit.pretrain.export import backbone_from_checkpoint, export_checkpoint
from mertkit.pretrain.labels import LabelReader
from mertkit.pretrain.pretrain_config import PretrainConfigError, load_config
from mertkit.pretrain.trainer import PretrainError, read_checkpoint, train
from pretrain_fixtures import HOP, SR, tiny_config, write_corpus, write_labelled_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from mert2_fixtures import numpy_log_mel  # noqa: E402  (the MERT-v2 tests' independent front end)

# A MERT-v2 layout at the fixtures' label rate: mel hop 80 x subsampling 4 = 320 samples, 75 Hz.
TINY_MEL = {
    "model_type": "mert2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_mel_bins": 16, "sampling_rate": SR, "n_fft": 256, "win_length": 256,
    "hop_length": HOP // 4, "subsampling_channels": [16, 24, 32], "subsampling_depths": [1, 1, 1],
    "conv_depthwise_kernel_size": 7,
}


def mel_config(**changes):
    return tiny_config(model=dict(TINY_MEL), feature_grad_mult=1.0, **changes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(tmp_path_factory.mktemp("corpus"), 8, seconds=(0.6, 1.6), seed=2)


def test_the_tiny_mel_preset_is_a_mert2_backbone_at_25_hz():
    cfg = load_config("tiny-mel")
    assert cfg.is_mert2 and cfg.mert_config().frame_rate == cfg.label_rate == 25
    assert cfg.mert_config().samples_per_frame == 960


def test_a_partial_mert2_model_is_completed_with_mert2_defaults():
    cfg = mel_config()
    assert cfg.model["conv_depthwise_kernel_size"] == 7 and cfg.model["rotary_embedding_base"] == 10000.0
    partial = {k: v for k, v in TINY_MEL.items() if k != "subsampling_channels"}
    # without subsampling_channels the MERT-v2 default follows the widths: (mels, 512, hidden)
    assert tiny_config(model=partial).model["subsampling_channels"] == [16, 512, 32]


@pytest.mark.parametrize("changes, message", [
    ({"objective": "data2vec"}, "objective mlm only"),
    ({"label_rate": 25}, "differs from the model's frame rate"),
])
def test_mert2_configs_refuse_what_the_layout_cannot_train(changes, message):
    with pytest.raises(PretrainConfigError, match=message):
        mel_config(**changes)


def test_init_from_refuses_a_mert2_config(corpus, tmp_path):
    from mertkit.models.shipped import build_random_checkpoint

    audio, labels = corpus
    released = build_random_checkpoint(tmp_path / "v1")  # a MERT-v1-layout checkpoint
    with pytest.raises(PretrainError, match="needs a MERT-v1-layout config; this one is MERT-v2"):
        train(mel_config(init_from=str(released), total_updates=1, warmup_updates=1), audio, labels, tmp_path / "run")


def test_mert2_run_measures_mel_statistics_and_exports_exactly(corpus, tmp_path):
    audio, labels = corpus
    cfg = mel_config(total_updates=2, warmup_updates=1)
    train(cfg, audio, labels, tmp_path / "run")
    payload = read_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt")
    state = payload["model"]
    assert "mask_emb" in state and not any("mask" in k for k in state if k.startswith("backbone."))

    # the statistics: every frame of the run's first crops (all 8 files), by an independent reading
    window = state["backbone.feature_extractor.spectrogram.window"].numpy()
    fb = state["backbone.feature_extractor.mel_scale.fb"].numpy()
    assert np.allclose(window, np.hanning(257)[:-1], atol=1e-6)  # periodic Hann
    assert fb.shape == (129, 16) and (fb.sum(0) > 0).all()
    from mertkit.pretrain.data import PretrainDataset

    dataset = PretrainDataset(audio, labels, cfg)
    order = dataset.epoch_order(0)
    frames = np.concatenate([
        numpy_log_mel(dataset.clip(0, p, order)[0], window, fb, np.zeros(16), np.ones(16), 256, HOP // 4)
        for p in range(len(dataset))])
    # float32 STFT against float64: the quiet top bands differ by up to ~0.01 dB of a ~30 dB spread
    assert np.allclose(state["backbone.feature_extractor.mel_mean"].numpy(), frames.mean(0), atol=0.02)
    assert np.allclose(state["backbone.feature_extractor.mel_std"].numpy(), frames.std(0, ddof=1), rtol=1e-3)

    exported = export_checkpoint(tmp_path / "run", tmp_path / "hf", formats=("safetensors",))
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "mert2" and config["hidden_size"] == 32
    loaded = mertkit.load(exported)
    trained = backbone_from_checkpoint(tmp_path / "run")
    assert isinstance(loaded, Mert2Model) and loaded.info.frame_rate == 75.0
    wave, lengths = torch.randn(2, 9600), torch.tensor([9600, 7000])
    with torch.no_grad():
        a, b = trained(wave, lengths), loaded(wave, lengths)
    assert len(b.hidden_states) == 2
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))

    # float16 storage (how the shipped model is stored): the front end's buffers stay float32
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "hf16"),
                                       "--format", "safetensors", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    stored = read_state_dict(tmp_path / "hf16")
    assert {k for k, v in stored.items() if v.dtype == torch.float32} == set(Mert2Model.float32_tensors)
    assert stored["layers.0.ffn1.w_1.weight"].dtype == torch.float16
    with torch.no_grad():
        c = mertkit.load(tmp_path / "hf16")(wave, lengths)
    for x, z in zip(a.hidden_states, c.hidden_states):
        assert torch.allclose(x, z, rtol=1e-2, atol=1e-2)


def test_mert2_masked_frames_read_the_mask_embedding(corpus):
    from mertkit.pretrain.trainer import initial_model

    model = initial_model(mel_config()).eval()
    wave = torch.randn(1, 9600)
    frames = model.frame_count(9600)
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[0, 5:9] = True
    states, valid, _ = model.encode(wave, None, mask)
    with torch.no_grad():
        model.mask_emb.add_(1.0)
    moved, _, _ = model.encode(wave, None, mask)
    unmasked, _, _ = model.encode(wave, None, None)
    assert valid.all() and valid.shape == (1, frames)
    assert not torch.allclose(states[-1], moved[-1])  # the masked frames' input is mask_emb
    with torch.no_grad():
        model.mask_emb.add_(5.0)
    again, _, _ = model.encode(wave, None, None)
    assert torch.equal(unmasked[-1], again[-1])  # no mask: mask_emb is never read
    states[-1].sum().backward()
    assert model.mask_emb.grad is not None and model.mask_emb.grad.abs().sum() > 0


def test_random_init_twin_of_a_mert2_model_keeps_its_front_end(corpus, tmp_path):
    from mertkit.eval.suite_runner import ModelInfo, random_init_model

    audio, labels = corpus
    train(mel_config(total_updates=1, warmup_updates=1), audio, labels, tmp_path / "run")
    model = mertkit.load(export_checkpoint(tmp_path / "run", tmp_path / "hf", formats=("safetensors",)))
    info = ModelInfo("tiny", str(tmp_path / "hf"), "test", False, "f" * 32, 2, SR)
    twin, twin_info = random_init_model(model, info, init_seed=0)
    again, _ = random_init_model(model, info, init_seed=0)
    assert isinstance(twin, Mert2Model) and twin_info.random_weights
    ours, theirs = model.state_dict(), twin.state_dict()
    for name in ours:
        if name.startswith("feature_extractor."):
            assert torch.equal(ours[name], theirs[name]), name
    assert not torch.equal(ours["layers.0.ffn1.w_1.weight"], theirs["layers.0.ffn1.w_1.weight"])
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in theirs.items())


def test_labels_at_the_mert2_frame_rate(tmp_path):
    write_corpus(tmp_path / "audio", 3, seed=4)
    out = tmp_path / "labels"
    args = [str(tmp_path / "audio"), "-o", str(out), "--teacher", "kmeans", "--codebook-size", "8",
            "--features", "logmel", "--frame-rate", "25"]
    result = CliRunner().invoke(labels_command, args)
    assert result.exit_code == 0, result.output
    reader = LabelReader(out)
    assert reader.settings["hop_length"] == 960
    for rel in reader:
        samples = mertkit.audio.load_audio(tmp_path / "audio" / rel, SR).shape[0]
        assert reader.labels_for(rel).shape == (1, -(-samples // 960))
    # the saved teacher labels 25 frames a second: asking it for another rate is an error
    again = CliRunner().invoke(labels_command, [*args[:-1], "75"])
    assert again.exit_code == 2 and "not --frame-rate 75" in again.output
    bad = CliRunner().invoke(labels_command, [str(tmp_path / "audio"), "-o", str(tmp_path / "l7"), "--teacher",
                                              "bestrq", "--frame-rate", "7"])
    assert bad.exit_code == 2 and "whole samples" in bad.output
    encodec = CliRunner().invoke(labels_command, [str(tmp_path / "audio"), "-o", str(tmp_path / "le"),
                                                  "--frame-rate", "25"])
    assert encodec.exit_code == 2 and "EnCodec labels 75" in encodec.output
