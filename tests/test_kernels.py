"""CPU kernel dispatch and compute dtype: chosen by what the CPU can do, correct on every class.

CI runs this module twice: as is, and with the CPU capped to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2; `make test-capped`). Faked capabilities exercise both branches of
every decision on any machine; the fakes only ever switch fused paths *off* unless the
real machine has them, so every forward below runs.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest
import torch

import mertkit.models.hubert.model as model_module
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions
from mertkit.models import kernels
from mertkit.models.hubert.model import MertModel
from model_fixtures import LAYOUTS, tiny_config

pytestmark = pytest.mark.dispatch

SR = 24000
CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"


def _fake(monkeypatch, **changes) -> kernels.CpuCapabilities:
    """Replace the detected capabilities by the real ones with `changes`; fresh warnings."""
    fake = dataclasses.replace(kernels.cpu_capabilities(), **changes)
    monkeypatch.setattr(kernels, "cpu_capabilities", lambda: fake)
    monkeypatch.setattr(kernels, "_warned", set())
    return fake


def _no_native_bf16(monkeypatch) -> kernels.CpuCapabilities:
    return _fake(monkeypatch, bf16_native=False, amx=False, fused_bf16=False)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per hidden state, the lowest cosine over frames of [layers, frames, width] arrays."""
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return cos.min(axis=-1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


@pytest.fixture(scope="module")
def wave():
    return np.random.default_rng(3).standard_normal(SR).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------
def test_capabilities_follow_the_environment_caps():
    caps = kernels.cpu_capabilities()
    line = caps.summary()
    assert caps.isa in line and ("bf16 native: yes" in line) == caps.bf16_native
    if kernels.HAS_ONEDNN_OPS:
        assert caps.fused_fp32, "oneDNN's fp32 ops run on every x86-64 and ARM CPU torch supports"
    if caps.bf16_native:
        assert caps.fused_bf16 or not kernels.HAS_ONEDNN_OPS
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        assert caps.isa == "AVX2"
        assert "ATEN_CPU_CAPABILITY=avx2" in caps.caps
    if CAPPED:
        # The reason for probing: an AVX2-capped oneDNN has no bf16 primitives at all.
        assert not caps.bf16_native and not caps.amx and not caps.fused_bf16
        assert "cap" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line


@pytest.mark.parametrize("cap,isa,allowed", [
    (None, "AVX512_CORE_BF16", True),
    ("ALL", "AVX10_1_512_AMX", True),
    ("AVX2", "AVX512_CORE_BF16", False),
    ("avx512_core", "AVX512_CORE_BF16", False),
    ("AVX512_CORE_BF16", "AVX512_CORE_BF16", True),
    ("AVX512_CORE_BF16", "AVX10_1_512_AMX", False),
    ("AVX512_CORE_AMX", "AVX10_1_512_AMX", True),
    ("NOT_AN_ISA", "AVX512_CORE_BF16", False),
])
def test_onednn_isa_cap_parsing(monkeypatch, cap, isa, allowed):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert kernels._onednn_allows(isa) is allowed


def test_a_failing_fused_op_is_never_taken(monkeypatch):
    """The probe catches the error oneDNN raises where a primitive is missing (as bf16 on AVX2)."""
    if not kernels.HAS_ONEDNN_OPS:
        pytest.skip("this torch has no fused oneDNN ops")

    def broken(*args):
        raise RuntimeError("could not create a primitive descriptor for the inner product")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    probe = kernels._fused_ops_work.__wrapped__  # uncached
    assert probe(torch.float32) is False and probe(torch.bfloat16) is False


# ---------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------
def test_use_onednn_follows_the_probe(monkeypatch):
    x, w = torch.randn(2, 5, 8), torch.randn(4, 8)
    with torch.no_grad():
        _fake(monkeypatch, fused_fp32=False)
        assert not kernels.use_onednn(x, w)
        _fake(monkeypatch, fused_fp32=True)
        assert kernels.use_onednn(x, w)
        assert not kernels.use_onednn(x.bfloat16(), w.bfloat16()) or kernels.cpu_capabilities().fused_bf16
        assert not kernels.use_onednn(x.half(), w.half())  # no fused fp16 path
    w.requires_grad_(True)
    assert not kernels.use_onednn(x, w)  # autograd records: the standard ops


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_and_standard_paths_agree(monkeypatch, layout):
    torch.manual_seed(1)
    model = MertModel(tiny_config(layout)).eval()
    wave, lengths = torch.randn(2, 9000), torch.tensor([9000, 6400])
    with torch.no_grad():
        fused = model(wave, lengths).hidden_states
        _fake(monkeypatch, fused_fp32=False)
        standard = model(wave, lengths).hidden_states
    for i, (a, b) in enumerate(zip(fused, standard)):
        assert torch.allclose(a, b, atol=1e-5), f"state {i}: {(a - b).abs().max():.2e}"


@pytest.mark.parametrize("native", [False, True])
def test_bf16_attention_taken_exactly_when_bf16_is_native(monkeypatch, native):
    """bf16_cpu_attention only where bf16 is native; SDPA elsewhere; both close to fp32.

    With native=True faked on a CPU without it, the attention still runs (oneDNN's bf16 matmul
    converts), only slowly, and the fused linear ops stay off: the decision is tested everywhere.
    """
    real = kernels.cpu_capabilities()
    _fake(monkeypatch, bf16_native=native, fused_bf16=real.fused_bf16 and native)
    calls = []
    original = model_module.bf16_cpu_attention
    monkeypatch.setattr(model_module, "bf16_cpu_attention", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    model = MertModel(tiny_config("post_ln")).eval()
    wave = torch.randn(1, SR)
    with torch.no_grad():
        exact = model(wave).hidden_states
        half = model.to(torch.bfloat16)(wave.bfloat16()).hidden_states
    assert len(calls) == (model.config.num_hidden_layers if native else 0)
    for i, (a, b) in enumerate(zip(exact, half)):
        cosine = torch.nn.functional.cosine_similarity(a[0], b[0].float(), dim=-1).min()
        assert cosine >= 0.999, f"state {i}: cosine {cosine:.5f}"
    assert kernels.use_bf16_attention(*(torch.ones(1, 2, 3, 4, dtype=torch.bfloat16),) * 3) is native


# ---------------------------------------------------------------------------------------
# Dtype resolution
# ---------------------------------------------------------------------------------------
def test_auto_resolves_to_bf16_only_where_it_is_native(monkeypatch):
    _fake(monkeypatch, bf16_native=True)
    assert kernels.resolve_dtype("auto", "cpu") == torch.bfloat16
    _no_native_bf16(monkeypatch)
    assert kernels.resolve_dtype("auto", "cpu") == torch.float32
    assert kernels.resolve_dtype("float32", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert kernels.resolve_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert kernels.resolve_dtype("auto", "cuda") == torch.float32
    assert kernels.resolve_dtype("auto", "meta") == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        kernels.resolve_dtype("bf16", "cpu")
    with pytest.raises(ExtractError, match="dtype must be one of"):
        ExtractOptions(dtype="int8")


def test_real_auto_matches_the_machine():
    caps = kernels.cpu_capabilities()
    want = torch.bfloat16 if caps.bf16_native else torch.float32
    assert kernels.resolve_dtype("auto", "cpu") == want
    if CAPPED:
        assert want == torch.float32


def test_bf16_without_native_support_is_correct_and_says_it_is_slower(monkeypatch, caplog, model, wave):
    import copy

    _no_native_bf16(monkeypatch)
    ref = Extractor(model, ExtractOptions(window=0)).extract(wave).hidden_states
    with caplog.at_level(logging.WARNING, logger="mertkit"):
        half = copy.deepcopy(model).to(kernels.resolve_dtype("bfloat16", "cpu"))
        got = Extractor(half, ExtractOptions(window=0, dtype="bfloat16")).extract(wave).hidden_states
    assert np.abs(got - ref).max() > 0  # it really ran in bf16
    assert _cosines(got, ref).min() >= 0.999
    warnings = [r for r in caplog.records if "slower than float32" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()  # one line, once


def test_no_warning_for_float32_or_auto(monkeypatch, caplog):
    _no_native_bf16(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mertkit"):
        kernels.resolve_dtype("float32", "cpu")
        kernels.resolve_dtype("auto", "cpu")
    assert not caplog.records


@pytest.mark.parametrize("native", [False, True])
def test_auto_extraction_records_the_resolved_dtype(monkeypatch, tmp_path, model, wave, native):
    import soundfile as sf

    from mertkit.extraction.runner import run_extract

    real = kernels.cpu_capabilities()
    _fake(monkeypatch, bf16_native=native, fused_bf16=real.fused_bf16 and native)
    extractor = Extractor(model, ExtractOptions(window=0, dtype="auto"))
    want = torch.bfloat16 if native else torch.float32
    assert extractor.compute_dtype == want
    ref = Extractor(model, ExtractOptions(window=0)).extract(wave).hidden_states
    got = extractor.extract(wave).hidden_states
    assert _cosines(got, ref).min() >= 0.999  # the accuracy contract of "auto"
    assert bool(np.abs(got - ref).max() > 0) == native  # fp32 stays exact
    sf.write(tmp_path / "a.wav", wave, SR)
    report = run_extract(model, [str(tmp_path / "a.wav")], str(tmp_path / "out"), ExtractOptions(window=0, dtype="auto"),
                         progress=False)
    assert report.ok
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "a.wav.safetensors"), "np") as handle:
        meta = handle.metadata()
    assert meta["dtype"] == ("bfloat16" if native else "float32") and meta["dtype_requested"] == "auto"
