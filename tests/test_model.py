"""Hidden states equal transformers' HubertModel / Data2VecAudioModel on random weights."""
from __future__ import annotations

import pytest
import torch

import mertkit
from mertkit.models.checkpoint import CheckpointError
from mertkit.models.hubert.model import MertModel
from model_fixtures import LAYOUTS, hf_model, tiny_config, write_official_checkpoint

MODEL_TYPE = {"post_ln": "mert_model", "pre_ln": "mert_model", "data2vec": None}


def _hf_states(model, wave):
    """The official semantics: states 0..L-1 as recorded, state L = last_hidden_state.

    transformers >= 5 records hidden states with hooks on the layers, so for the pre-LN
    encoder its hidden_states[-1] is the un-normalised output of the last layer; MERT's
    remote code (transformers 4.x) returned LayerNorm(output) there, which last_hidden_state is.
    """
    with torch.no_grad():
        out = model(wave, output_hidden_states=True)
    return (*out.hidden_states[:-1], out.last_hidden_state)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_parity_with_transformers(tmp_path, layout, fmt):
    ref = hf_model(layout)
    ckpt = write_official_checkpoint(ref, tmp_path / "ckpt", fmt=fmt, model_type=MODEL_TYPE[layout], sample_rate=24000)
    ours = mertkit.load(ckpt)
    torch.manual_seed(1)
    wave = torch.randn(2, 24000 + 123)
    expected = _hf_states(ref, wave)
    with torch.no_grad():
        got = ours(wave).hidden_states
    assert len(got) == len(expected) == ref.config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=0), f"hidden state {i}: max diff {(a - b).abs().max():.2e}"
    # The states differ from each other: a layer that passed its input through would not be caught otherwise.
    assert (got[1] - got[0]).abs().max() > 1e-2


def test_pre_ln_asymmetry():
    """330M layout: [0..L-1] are the un-normalised residual stream, [L] = LayerNorm(output)."""
    torch.manual_seed(0)
    model = MertModel(tiny_config("pre_ln")).eval()
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        states = model(wave).hidden_states
        stream = model.encoder.layers[-1](states[-2], None)
        assert torch.allclose(states[-1], model.encoder.layer_norm(stream), atol=1e-6)
        # state 0 is features + positional conv with no LayerNorm: its frames are not normalised
        assert states[0].std(-1).sub(1).abs().max() > 0.05
    post = MertModel(tiny_config("post_ln")).eval()
    with torch.no_grad():
        first = post(wave).hidden_states[0]
    # post-LN state 0 is LayerNorm'ed (affine weights are 1, bias 0 at init)
    assert torch.allclose(first.mean(-1), torch.zeros_like(first.mean(-1)), atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_layer_stops_early_with_same_values(layout):
    torch.manual_seed(0)
    model = MertModel(tiny_config(layout)).eval()
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        full = model(wave).hidden_states
        part = model(wave, max_layer=1).hidden_states
    assert len(part) == 2
    for a, b in zip(part, full):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_padded_batch_equals_single_runs(layout):
    """Exact batching: group norm, positional convs and attention ignore padding."""
    torch.manual_seed(0)
    model = MertModel(tiny_config(layout)).eval()
    lengths = [9000, 5000, 2345]
    waves = [torch.randn(n) * (1 + i) + 0.3 * i for i, n in enumerate(lengths)]
    batch = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        out = model(batch, torch.tensor(lengths))
        for i, w in enumerate(waves):
            single = model(w[None]).hidden_states
            n = int(out.frame_lengths[i])
            assert n == model.config.num_frames(len(w)) == single[0].shape[1]
            for a, b in zip(out.hidden_states, single):
                assert torch.allclose(a[i, :n], b[0], atol=1e-5), f"max diff {(a[i, :n] - b[0]).abs().max():.2e}"


def test_frame_counts_follow_conv_arithmetic():
    cfg = tiny_config("post_ln")
    assert cfg.hop_length == 320 and cfg.receptive_field == 400
    assert cfg.num_frames(5 * 24000) == 374
    assert cfg.num_frames(399) == 0 and cfg.num_frames(400) == 1
    for n in (400, 719, 720, 12345):
        assert cfg.num_frames(n) == (n - 400) // 320 + 1
    model = MertModel(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 12345)).hidden_states[0].shape[1] == cfg.num_frames(12345)


def test_too_short_input_is_a_clear_error():
    model = MertModel(tiny_config("post_ln")).eval()
    with pytest.raises(ValueError, match="shorter than one frame"):
        model(torch.randn(1, 399))


def test_missing_tensor_is_named(tmp_path):
    ref = hf_model("post_ln")
    ckpt = write_official_checkpoint(ref, tmp_path / "c", fmt="bin", model_type="mert_model")
    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.1.attention.k_proj.bias"]
    state["encoder.extra.weight"] = torch.zeros(3)
    state["feature_projection.projection.bias"] = torch.zeros(5)
    torch.save(state, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        mertkit.load(ckpt)
    msg = str(err.value)
    assert "encoder.layers.1.attention.k_proj.bias" in msg
    assert "encoder.extra.weight" in msg
    assert "feature_projection.projection.bias" in msg


def test_tampered_pickle_is_refused_without_running_code(tmp_path):
    ref = hf_model("post_ln")
    ckpt = write_official_checkpoint(ref, tmp_path / "c", fmt="bin", model_type="mert_model")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = torch.load(ckpt / "pytorch_model.bin", weights_only=True)
    state["evil"] = Evil()
    torch.save(state, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        mertkit.load(ckpt)
    assert not marker.exists()


@pytest.mark.dispatch
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("padded", [False, True])
def test_training_path_matches_inference_path(layout, padded):
    """With autograd recording, the model takes the standard ops; without, the fused fast
    kernels. Both must give the same hidden states."""
    torch.manual_seed(0)
    model = MertModel(tiny_config(layout)).eval()
    wave = torch.randn(2, 9000)
    lengths = torch.tensor([9000, 6100]) if padded else None
    with torch.no_grad():
        fast = model(wave, lengths).hidden_states
    slow = model(wave, lengths).hidden_states  # grad enabled: parameters require grad
    assert slow[-1].requires_grad
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert torch.allclose(a, b.detach(), atol=1e-5), f"state {i}: {(a - b.detach()).abs().max():.2e}"
    slow[-1].sum().backward()
    assert model.encoder.layers[0].attention.q_proj.weight.grad is not None


# ---------------------------------------------------------------------------------------
# bf16 attention on CPU (matmul path with centred keys)
# ---------------------------------------------------------------------------------------
def _reference_attention(q, k, v, key_mask):
    """float64 SDPA, [B, H, F, D] -> [B, F, H*D]."""
    y = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=key_mask)
    batch, heads, frames, dim = y.shape
    return y.transpose(1, 2).reshape(batch, frames, heads * dim).float()


def _qkv(batch=2, heads=4, frames=50, dim=64, key_offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, frames, dim, generator=g) for _ in range(3))
    # Trained transformers' keys share a large common direction; it shifts every score of a
    # query row by the same amount.
    k = k + key_offset * torch.randn(1, heads, 1, dim, generator=g)
    return q, k, v


@pytest.mark.dispatch
@pytest.mark.parametrize("block_bytes", [None, 1])  # 1: one head per block, the long-window path
def test_bf16_cpu_attention_matches_float64_sdpa(monkeypatch, block_bytes):
    import mertkit.models.kernels as model_module

    if block_bytes is not None:
        monkeypatch.setattr(model_module, "_SCORE_BLOCK_BYTES", block_bytes)
    q, k, v = _qkv(key_offset=3.0)
    lengths = torch.tensor([50, 31])
    key_mask = (torch.arange(50)[None, :] < lengths[:, None])[:, None, None, :]
    ours = model_module.bf16_cpu_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), key_mask)
    assert ours.dtype == torch.bfloat16 and ours.shape == (2, 50, 4 * 64)
    ref = _reference_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), key_mask)
    cosine = torch.nn.functional.cosine_similarity(ours.float().flatten(0, 1), ref.flatten(0, 1), dim=-1)
    assert cosine.min() > 0.999
    # the padded item's valid frames equal running it alone (masked keys carry no weight and
    # the keys are centred on the valid ones), to within one bf16 step near 1
    alone = model_module.bf16_cpu_attention(*(t[1:, :, :31].bfloat16() for t in (q, k, v)), None)
    assert (ours[1, :31].float() - alone[0].float()).abs().max() <= 2**-7


@pytest.mark.dispatch
def test_centred_keys_reduce_bf16_score_rounding():
    """The reason for centring: with a large shared key component, rounding uncentred scores
    to bf16 costs over twice the (RMS) error than rounding the centred ones."""
    from mertkit.models.kernels import bf16_cpu_attention

    q, k, v = _qkv(key_offset=10.0, frames=200, seed=1)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    ref = _reference_attention(qb.float(), kb.float(), vb.float(), None)
    ours_error = (bf16_cpu_attention(qb, kb, vb, None).float() - ref).pow(2).mean().sqrt()
    scores = torch.matmul(qb * 0.125, kb.transpose(-1, -2))  # uncentred, rounded to bf16
    uncentred = torch.matmul(torch.softmax(scores, dim=-1), vb).transpose(1, 2).reshape(ref.shape)
    uncentred_error = (uncentred.float() - ref).pow(2).mean().sqrt()
    assert ours_error < uncentred_error / 2, (ours_error, uncentred_error)


@pytest.mark.dispatch
def test_bf16_model_takes_the_matmul_attention_where_bf16_is_native_and_stays_close_to_fp32(monkeypatch):
    """Native bf16: the matmul attention; otherwise SDPA (tests/test_kernels.py fakes both)."""
    import mertkit.models.hubert.model as model_module
    from mertkit.models.kernels import cpu_capabilities

    torch.manual_seed(0)
    model = MertModel(tiny_config("post_ln")).eval()
    wave = torch.randn(2, 9000)
    lengths = torch.tensor([9000, 6100])
    calls = []
    original = model_module.bf16_cpu_attention
    monkeypatch.setattr(model_module, "bf16_cpu_attention", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        exact = model(wave, lengths).hidden_states
        fast = model.to(torch.bfloat16)(wave.bfloat16(), lengths).hidden_states
    assert len(calls) == (model.config.num_hidden_layers if cpu_capabilities().bf16_native else 0)
    frames = 6100 // 320 - 1  # valid frames of the shorter item, well inside its length
    for a, b in zip(exact, fast):
        cosine = torch.nn.functional.cosine_similarity(a[1, :frames], b[1, :frames].float(), dim=-1)
        assert cosine.min() > 0.99
