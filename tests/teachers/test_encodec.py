"""The native EnCodec encoder + RVQ against transformers' EncodecModel (random weights).

Parity runs on a tiny config (4 base filters, 16-dim latent) with the real strides, so
frame counts and codebook counts are those of the 24 kHz model. Codebooks are initialised
from encoder outputs (as EnCodec's k-means init does) so codes actually vary and a wrong
encoder cannot match by accident.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mertkit.pretrain.teachers.encodec import (
    EncodecCheckpointError,
    EncodecConfig,
    EncodecEncoder,
    EncodecInputError,
    EncodecTeacher,
    codes_for_waveform,
    load_encodec,
    load_state_dict_strict,
)

transformers = pytest.importorskip("transformers")

TINY = dict(num_filters=4, hidden_size=16, codebook_size=1024, num_lstm_layers=2)


def _randomise(hf_model, seed: int = 0) -> None:
    """Random conv/LSTM weights, then codebooks drawn from actual (residual) latents."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in hf_model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
        envelope = torch.linspace(0, 1, 8000)
        train = torch.randn(8, 8000, generator=gen) * (2 * torch.rand(8, 1, generator=gen)) * envelope
        residual = hf_model.encoder(train.unsqueeze(1)).transpose(1, 2).reshape(-1, hf_model.config.hidden_size)
        for layer in hf_model.quantizer.layers:
            picks = torch.randint(0, residual.shape[0], (hf_model.config.codebook_size,), generator=gen)
            embed = residual[picks] + 0.01 * torch.randn(len(picks), residual.shape[1], generator=gen)
            layer.codebook.embed.copy_(embed)
            residual = residual - layer.codebook.decode(layer.codebook.encode(residual))


def _hf_codes(hf_model, wav: torch.Tensor, bandwidth: float = 6.0) -> torch.Tensor:
    with torch.no_grad():
        return hf_model.encode(wav.unsqueeze(1), bandwidth=bandwidth).audio_codes[0]


@pytest.fixture(scope="module")
def hf_tiny():
    config = transformers.EncodecConfig(**TINY)
    model = transformers.EncodecModel(config).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def native_tiny(hf_tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tiny")
    hf_tiny.save_pretrained(directory)
    return load_encodec(directory)


def _test_waves(lengths, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, generator=gen) * torch.linspace(0.1, 1.5, n) for n in lengths]


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("length", [1, 7, 319, 320, 321, 4001, 24017])
def test_codes_match_transformers(hf_tiny, native_tiny, length):
    (wav,) = _test_waves([length])
    expected = _hf_codes(hf_tiny, wav)
    got = native_tiny.encode_codes(wav, bandwidth=6.0)
    assert got.dtype == torch.int64
    assert got.shape == (2, 8, math.ceil(length / 320))
    assert torch.equal(got, expected)


def test_parity_is_not_trivial(hf_tiny, native_tiny):
    (wav,) = _test_waves([24000], seed=5)
    codes = native_tiny.encode_codes(wav)
    # Varied codes in every codebook: a broken encoder could not match them by chance.
    assert all(len(torch.unique(codes[0, k])) > 10 for k in range(8))
    shifted = native_tiny.encode_codes(torch.roll(wav, 1000, dims=-1))
    assert not torch.equal(codes, shifted)


@pytest.mark.parametrize("bandwidth, codebooks", [(1.5, 2), (3.0, 4), (6.0, 8), (12.0, 16), (24.0, 32)])
def test_bandwidth_sets_codebooks(hf_tiny, native_tiny, bandwidth, codebooks):
    (wav,) = _test_waves([3000], seed=2)
    got = native_tiny.encode_codes(wav, bandwidth=bandwidth)
    assert got.shape[1] == codebooks
    expected = _hf_codes(hf_tiny, wav, bandwidth)
    # The 8 codebooks the recipe uses (6 kbps) match exactly. Past them the residuals are so
    # small that a near-tie can resolve differently under another float summation order (it
    # happened with a different thread count), and one flip changes every later stage of that
    # frame: there, require most frames to agree on every code.
    exact = min(codebooks, 8)
    assert torch.equal(got[:, :exact], expected[:, :exact])
    frames_equal = (got == expected).all(dim=1).float().mean()
    assert frames_equal >= 0.8, f"only {frames_equal:.0%} of frames agree on all {codebooks} codebooks"


def test_non_causal_config_matches_transformers():
    config = transformers.EncodecConfig(**TINY, use_causal_conv=False)
    hf_model = transformers.EncodecModel(config).eval()
    _randomise(hf_model, seed=3)
    native = EncodecEncoder(EncodecConfig.from_hf_dict(config.to_dict()))
    load_state_dict_strict(native, dict(hf_model.state_dict()), "in-memory")
    for wav in _test_waves([5, 333, 5000], seed=4):
        assert torch.equal(native.encode_codes(wav), _hf_codes(hf_model, wav))


def test_codes_for_waveform(native_tiny):
    (wav,) = _test_waves([1000], seed=6)
    labels = codes_for_waveform(native_tiny, wav[0].numpy())
    assert labels.dtype == np.int16 and labels.shape == (8, 4)
    np.testing.assert_array_equal(labels, native_tiny.encode_codes(wav[:1])[0].numpy())
    teacher = EncodecTeacher(native_tiny, bandwidth=3.0)
    assert teacher.num_codebooks == 4 and teacher.hop_length == 320 and teacher.sample_rate == 24000
    np.testing.assert_array_equal(teacher.codes(wav[0].numpy()), labels[:4])


# ----------------------------------------------------------------------------- checkpoint layouts


def _weight_g_spelling(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        renamed[key.replace(".parametrizations.weight.original1", ".weight_v")] = tensor
    return renamed


def _original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> facebookresearch/encodec names (SEANet `model` Sequential,
    SConv1d.conv (NormConv1d).conv (Conv1d), `vq.layers.N._codebook`)."""
    rules = [
        (r"^encoder\.layers\.(\d+)\.conv\.", r"encoder.model.\1.conv.conv."),
        (r"^encoder\.layers\.(\d+)\.block\.(\d+)\.conv\.", r"encoder.model.\1.block.\2.conv.conv."),
        (r"^encoder\.layers\.(\d+)\.shortcut\.conv\.", r"encoder.model.\1.shortcut.conv.conv."),
        (r"^encoder\.layers\.(\d+)\.lstm\.", r"encoder.model.\1.lstm."),
        (r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook."),
        (r"^decoder\.layers\.(\d+)\.", r"decoder.model.\1."),
    ]
    out = {}
    for key, tensor in _weight_g_spelling(state).items():
        for pattern, replacement in rules:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                out[new_key] = tensor
                break
        else:
            raise AssertionError(f"test mapping misses {key}")
    return out


def test_load_both_weight_norm_spellings_and_original_layout(hf_tiny, tmp_path):
    config = EncodecConfig.from_hf_dict(hf_tiny.config.to_dict())
    state = {k: v.contiguous() for k, v in hf_tiny.state_dict().items()}
    save_file(state, tmp_path / "parametrizations.safetensors")
    save_file(_weight_g_spelling(state), tmp_path / "weight_g.safetensors")
    torch.save(_original_layout(state), tmp_path / "original.th")
    (wav,) = _test_waves([2500], seed=7)
    expected = _hf_codes(hf_tiny, wav)
    for name in ("parametrizations.safetensors", "weight_g.safetensors", "original.th"):
        model = load_encodec(tmp_path / name, config=config)
        assert torch.equal(model.encode_codes(wav), expected), name


def test_default_config_is_the_24khz_model():
    hf_default = transformers.EncodecConfig()
    config = EncodecConfig.from_hf_dict(hf_default.to_dict())
    assert config == EncodecConfig()
    assert (config.hop_length, config.frame_rate, config.num_quantizers) == (320, 75, 32)
    assert config.quantizers_for_bandwidth(6.0) == 8


@pytest.fixture(scope="module")
def full_size_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in transformers.EncodecModel(transformers.EncodecConfig()).state_dict().items()}


def test_full_size_state_dict_loads_strictly(full_size_state, tmp_path):
    native = EncodecEncoder()
    load_state_dict_strict(native, dict(full_size_state), tmp_path)
    hf_encoder_params = sum(v.numel() for k, v in full_size_state.items() if k.startswith("encoder."))
    # weight norm adds one magnitude per output channel that folding removes
    magnitudes = sum(
        v.numel() for k, v in full_size_state.items() if k.startswith("encoder.") and k.endswith("original0")
    )
    assert sum(p.numel() for p in native.encoder.parameters()) == hf_encoder_params - magnitudes
    assert len(native.quantizer.layers) == 32
    assert native.quantizer.layers[0].codebook.embed.shape == (1024, 128)


def test_full_size_original_layout_key_names(full_size_state, tmp_path):
    original = _original_layout(full_size_state)
    # Names as they appear in facebookresearch/encodec's encodec_24khz-d7cc33bc.th
    for key in (
        "encoder.model.0.conv.conv.weight_g",
        "encoder.model.1.block.1.conv.conv.weight_v",
        "encoder.model.1.block.3.conv.conv.bias",
        "encoder.model.1.shortcut.conv.conv.weight_g",
        "encoder.model.3.conv.conv.weight_v",
        "encoder.model.13.lstm.weight_hh_l1",
        "encoder.model.15.conv.conv.weight_g",
        "quantizer.vq.layers.31._codebook.embed_avg",
    ):
        assert key in original, key
    torch.save(original, tmp_path / "encodec_24khz.th")
    model = load_encodec(tmp_path / "encodec_24khz.th")
    assert model.config == EncodecConfig()


# ----------------------------------------------------------------------------- strictness


def _tiny_state(hf_tiny) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in hf_tiny.state_dict().items()}


def _tiny_native(hf_tiny) -> EncodecEncoder:
    return EncodecEncoder(EncodecConfig.from_hf_dict(hf_tiny.config.to_dict()))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("encoder.layers.15.conv.bias"), "missing tensors: encoder.layers.15.conv.bias"),
        (
            lambda s: s.__setitem__("encoder.layers.99.conv.bias", torch.zeros(3)),
            "unexpected tensors: encoder.layers.99",
        ),
        (
            lambda s: s.__setitem__("quantizer.layers.0.codebook.embed", torch.zeros(1024, 17)),
            "wrongly shaped tensors: quantizer.layers.0",
        ),
        (lambda s: s.pop("encoder.layers.0.conv.parametrizations.weight.original0"), "without magnitudes"),
        (lambda s: s["quantizer.layers.3.codebook.inited"].zero_(), "never initialised"),
    ],
)
def test_strict_loading_names_the_problem(hf_tiny, mutate, message):
    state = _tiny_state(hf_tiny)
    mutate(state)
    with pytest.raises(EncodecCheckpointError, match=re.escape(message)):
        load_state_dict_strict(_tiny_native(hf_tiny), state, "ckpt.safetensors")


def test_original_layout_rejects_unknown_keys(hf_tiny, tmp_path):
    original = _original_layout(_tiny_state(hf_tiny))
    original["encoder.model.0.conv.norm.weight"] = torch.ones(4)  # a time_group_norm (48 kHz) model
    torch.save(original, tmp_path / "odd.th")
    config = EncodecConfig.from_hf_dict(hf_tiny.config.to_dict())
    with pytest.raises(EncodecCheckpointError, match=r"odd\.th.*encoder\.model\.0\.conv\.norm\.weight"):
        load_encodec(tmp_path / "odd.th", config=config)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "junk.th").write_bytes(b"not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "nested.th")
    (tmp_path / "no_config").mkdir()
    for name, message in [
        ("junk.th", "cannot read torch checkpoint"),
        ("junk.safetensors", "cannot read safetensors"),
        ("nested.th", "not a flat state dict"),
        ("no_config", "needs config.json"),
        ("absent.th", "no such file"),
    ]:
        with pytest.raises(EncodecCheckpointError, match=re.escape(name) + ".*" + message):
            load_encodec(tmp_path / name)


def test_pickled_objects_are_refused(tmp_path):
    import collections

    torch.save(collections.Counter(a=1), tmp_path / "pickle.th")  # not allowed by weights_only
    with pytest.raises(EncodecCheckpointError, match="pickle.th"):
        load_encodec(tmp_path / "pickle.th")


def test_unsupported_configs_are_refused():
    with pytest.raises(EncodecCheckpointError, match="time_group_norm"):
        EncodecConfig.from_hf_dict(transformers.EncodecConfig(norm_type="time_group_norm").to_dict())
    with pytest.raises(EncodecCheckpointError, match="model_type"):
        EncodecConfig.from_hf_dict({"model_type": "hubert"})
    with pytest.raises(EncodecCheckpointError, match="chunk_length_s"):
        EncodecConfig(chunk_length_s=1.0, normalize=False)


def test_bad_inputs(native_tiny):
    with pytest.raises(EncodecInputError, match="bandwidth 5.0"):
        native_tiny.encode_codes(torch.zeros(1, 100), bandwidth=5.0)
    with pytest.raises(EncodecInputError, match="empty"):
        native_tiny.encode_codes(torch.zeros(1, 0))
    with pytest.raises(EncodecInputError, match="mono"):
        codes_for_waveform(native_tiny, np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(EncodecInputError, match="NaN"):
        codes_for_waveform(native_tiny, np.full(100, np.nan, dtype=np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_codes_match_cpu(native_tiny):
    (wav,) = _test_waves([24000], seed=8)
    cpu = native_tiny.encode_codes(wav)
    gpu_model = EncodecEncoder(native_tiny.config)
    gpu_model.load_state_dict(native_tiny.state_dict())
    assert torch.equal(gpu_model.cuda().encode_codes(wav).cpu(), cpu)
