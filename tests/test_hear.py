"""The HEAR API: shapes, sizes, timestamps in ms, batch equals single, layer choice, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mertkit.hear as hear
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel
from model_fixtures import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln", sample_rate=16000)), tmp_path_factory.mktemp("h") / "m",
                           formats=("safetensors",), do_normalize=True)


@pytest.fixture(scope="module")
def model(ckpt):
    return hear.load_model(str(ckpt), device="cpu", window=1.0)


def _audio(n_sounds: int, seconds: float, rate: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(n_sounds, int(seconds * rate), generator=g)


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == model.timestamp_embedding_size == 32


def test_timestamp_embeddings_shapes_and_times(model):
    audio = _audio(3, 2.5, 16000)
    embeddings, stamps = hear.get_timestamp_embeddings(audio, model)
    config = model.model.config
    # 1 s windows hop a whole number of frames, so the frames are those of one pass over 2.5 s
    frames = config.num_frames(40000)
    assert embeddings.shape == (3, frames, 32) and stamps.shape == (3, frames)
    assert embeddings.dtype == torch.float32 and stamps.dtype == torch.float32
    hop, centre = config.hop_length, config.receptive_field / 2
    expected = (np.arange(frames) * hop + centre) / 16000 * 1000
    np.testing.assert_allclose(stamps[0].numpy(), expected, rtol=1e-6)
    assert torch.equal(stamps[0], stamps[2]) and stamps.max().item() < 2500


def test_seamless_hop_keeps_the_frame_a_plain_hop_drops(ckpt):
    from mertkit.extraction.engine import seamless_hop
    from mertkit.models.family import contract_of

    seamless = hear.load_model(str(ckpt), device="cpu", window=1.0)
    plain = hear.load_model(str(ckpt), device="cpu", window=1.0, hop=1.0)
    config = seamless.model.config
    hop = seamless.extractor("none").hop  # the extraction default, no hop asked for
    assert seamless.options.hop is None and hop == seamless_hop(contract_of(seamless.model), 1.0)
    assert hop * 16000 == config.num_frames(16000) * config.hop_length < 16000
    audio = _audio(1, 2.5, 16000, seed=2)
    _, even = hear.get_timestamp_embeddings(audio, seamless)
    _, gapped = hear.get_timestamp_embeddings(audio, plain)
    frame_ms = config.hop_length / 16000 * 1000
    np.testing.assert_allclose(np.diff(even[0].numpy()), frame_ms, rtol=1e-5)
    steps = np.diff(gapped[0].numpy())
    assert gapped.shape[1] == even.shape[1] - 2 and np.isclose(steps, 2 * frame_ms, rtol=1e-5).sum() == 2
    # each window's own frames are untouched: the first window's frames agree in both
    first, _ = hear.get_timestamp_embeddings(audio[:, :16000], seamless)
    emb_even, _ = hear.get_timestamp_embeddings(audio, seamless)
    np.testing.assert_allclose(emb_even[0, : first.shape[1]].numpy(), first[0].numpy(), rtol=1e-5, atol=1e-5)


def test_batch_equals_single_and_scene_is_time_mean(model):
    audio = _audio(3, 1.7, 16000, seed=1)
    batch, _ = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, 32)
    for i in range(3):
        alone, _ = hear.get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(scene[i], batch[i].mean(dim=0), atol=1e-5, rtol=0)


def test_layer_choice(ckpt):
    audio = _audio(2, 1.2, 16000, seed=2)
    mean_model = hear.load_model(str(ckpt), device="cpu")
    one = hear.load_model(str(ckpt), device="cpu", layer=2)
    # 1.2 s is one window at the default 5 s context; the checkpoint normalises its inputs
    normalised = (audio - audio.mean(1, keepdim=True)) / torch.sqrt(audio.var(1, unbiased=False, keepdim=True) + 1e-7)
    with torch.no_grad():
        states = mean_model.model(normalised).hidden_states
    expected_mean = torch.stack(states).mean(dim=0)
    got_mean, _ = hear.get_timestamp_embeddings(audio, mean_model)
    got_one, _ = hear.get_timestamp_embeddings(audio, one)
    torch.testing.assert_close(got_mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_one, states[2], atol=1e-5, rtol=1e-5)


def test_empty_default_path_uses_the_demo_model(ckpt, monkeypatch):
    import mertkit.models.shipped

    monkeypatch.setattr(mertkit.models.shipped, "demo_model_dir", lambda: (ckpt, True))
    assert hear.load_model("", device="cpu").sample_rate == 16000


def test_bad_arguments(model, ckpt):
    with pytest.raises(hear.HearError, match="unknown load_model options"):
        hear.load_model(str(ckpt), colour="red")
    with pytest.raises(hear.HearError, match="layer"):
        hear.load_model(str(ckpt), device="cpu", layer=99)
    with pytest.raises(hear.HearError, match=r"\[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(hear.HearError, match="shorter than one frame"):
        hear.get_timestamp_embeddings(torch.zeros(2, 100), model)
    with pytest.raises(hear.HearError, match="NaN"):
        hear.get_scene_embeddings(torch.full((1, 16000), float("nan")), model)


# The HEAR 2021 contract, checked the way hearvalidator checks it, for every registry layout
# (MERT-v1-95M post-LN 24 kHz, MERT-v1-330M pre-LN 24 kHz, MERT-v0 16 kHz, music2vec data2vec 16 kHz).
@pytest.mark.parametrize("layout, model_rate, hear_rate", [
    ("post_ln", 24000, 48000), ("pre_ln", 24000, 48000), ("post_ln", 16000, 16000), ("data2vec", 16000, 16000),
])
def test_hear_contract_for_every_layout(tmp_path, layout, model_rate, hear_rate):
    torch.manual_seed(0)
    folder = save_pretrained(MertModel(tiny_config(layout, sample_rate=model_rate)), tmp_path / layout,
                             formats=("safetensors",), do_normalize=True)
    model = hear.load_model(str(folder), device="cpu")
    assert model.sample_rate == hear_rate and model.sample_rate in hear.HEAR_SAMPLE_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    noise = torch.rand(3, int(2.0 * hear_rate)) * 2 - 1
    embeddings, stamps = hear.get_timestamp_embeddings(noise, model)
    assert embeddings.dtype == torch.float32 and embeddings.shape[0] == 3
    assert embeddings.shape[2] == model.timestamp_embedding_size and stamps.shape == embeddings.shape[:2]
    frames = model.model.config.num_frames(2 * model_rate)
    assert embeddings.shape[1] == frames  # the audio was resampled to the model's rate, 2 s in both
    step = torch.diff(stamps)
    frame_ms = 1000 * model.model.config.hop_length / model_rate
    assert torch.allclose(step, torch.full_like(step, frame_ms), atol=1e-3)  # regular, in milliseconds
    assert 0 < stamps[0, 0].item() < frame_ms and stamps[0, -1].item() < 2000
    scene = hear.get_scene_embeddings(torch.rand(2, int(3.74 * hear_rate)) * 2 - 1, model)
    assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32


def test_hear_rate_choice_and_resampling_matches_native(ckpt, tmp_path):
    assert hear.hear_sample_rate(24000) == 48000 and hear.hear_sample_rate(16000) == 16000
    assert hear.hear_sample_rate(22050) == 22050 and hear.hear_sample_rate(8000) == 16000
    with pytest.raises(hear.HearError, match="sample_rate must be one of"):
        hear.load_model(str(ckpt), device="cpu", sample_rate=24000)
    # A 16 kHz model asked for 48 kHz input: a 48 kHz tone gives what the 16 kHz tone gives.
    up = hear.load_model(str(ckpt), device="cpu", sample_rate=48000)
    native = hear.load_model(str(ckpt), device="cpu")
    t48, t16 = torch.arange(48000) / 48000, torch.arange(16000) / 16000
    tone48, tone16 = (0.5 * torch.sin(2 * torch.pi * 440 * t48))[None], (0.5 * torch.sin(2 * torch.pi * 440 * t16))[None]
    a, _ = hear.get_timestamp_embeddings(tone48, up)
    b, _ = hear.get_timestamp_embeddings(tone16, native)
    assert a.shape == b.shape
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_hear_contract_for_the_mert2_family(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "models"))
    from mert2_fixtures import write_checkpoint

    model = hear.load_model(str(write_checkpoint(tmp_path / "mert2")), device="cpu")
    assert model.model_sample_rate == 24000 and model.sample_rate == 48000
    embeddings, stamps = hear.get_timestamp_embeddings(torch.rand(2, 2 * 48000) * 2 - 1, model)
    assert embeddings.shape[0] == 2 and embeddings.shape[2] == model.timestamp_embedding_size
    assert stamps.shape == embeddings.shape[:2] and stamps[0, -1].item() < 2000
    step = torch.diff(stamps)
    assert torch.allclose(step, step[:, :1].expand_as(step), atol=1e-3)
    assert hear.get_scene_embeddings(torch.rand(2, 48000) * 2 - 1, model).shape == (2, model.scene_embedding_size)
