"""Memory estimates before work: a batch that cannot fit is shrunk, a window that cannot is refused."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mertkit.extraction import budget
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions
from mertkit.models.hubert.model import MertModel
from model_fixtures import tiny_config

SR = 24000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


def _peak(model, batch, seconds, *, fused=True):
    return budget.forward_peak_bytes(model.config, batch, int(seconds * SR), torch.float32, fused=fused)


def _with_memory(monkeypatch, available: int | None) -> None:
    monkeypatch.setattr(budget, "available_memory", lambda device: available)


def test_estimate_scales_with_the_input_and_the_path(model):
    config = model.config
    one = budget.forward_peak_bytes(config, 1, 10 * SR, torch.float32, fused=True)
    assert budget.forward_peak_bytes(config, 4, 10 * SR, torch.float32, fused=True) > 3.5 * one - 4 * budget._FIXED
    assert budget.forward_peak_bytes(config, 1, 100 * SR, torch.float32, fused=True) > 9 * one - 10 * budget._FIXED
    assert budget.forward_peak_bytes(config, 1, 10 * SR, torch.bfloat16, fused=True) < one
    assert budget.forward_peak_bytes(config, 1, 10 * SR, torch.float32, fused=False) > one
    assert budget.largest_batch(config, 10 * SR, torch.float32, fused=True, budget=one - 1) == 0
    assert budget.largest_batch(config, 10 * SR, torch.float32, fused=True, budget=3 * one) == 3


def test_available_memory_is_known_on_this_machine():
    free = budget.available_memory(torch.device("cpu"))
    assert free is None or free > 0
    assert budget.available_memory(torch.device("meta")) is None


def test_batch_size_is_capped_with_one_line(model, caplog):
    config = model.config
    three = 3 * _peak(model, 1, 2.0)
    with caplog.at_level(logging.WARNING, logger="mertkit"):
        got = budget.fitting_batch_size(config, 2.0, 10**9, torch.float32, fused=True, budget=three)
    assert got == 3
    (record,) = caplog.records
    assert "--batch-size 1000000000" in record.getMessage() and "batches of 3" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert budget.fitting_batch_size(config, 2.0, 2, torch.float32, fused=True, budget=three) == 2
    assert budget.fitting_batch_size(config, 2.0, 10**9, torch.float32, fused=True, budget=None) == 10**9
    assert budget.fitting_batch_size(config, 0.0, 10**9, torch.float32, fused=True, budget=three) == 10**9
    with pytest.raises(MemoryError, match=r"--window 2: one window needs ~.* GB"):
        budget.fitting_batch_size(config, 2.0, 8, torch.float32, fused=True, budget=1000)


def test_extractor_caps_the_batch_and_gives_the_same_features(monkeypatch, model):
    wave = np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32)
    ref = Extractor(model, ExtractOptions(window=1.0, batch_size=8)).extract(wave).hidden_states
    _with_memory(monkeypatch, 2 * _peak(model, 1, 1.0))
    extractor = Extractor(model, ExtractOptions(window=1.0, batch_size=8))
    assert extractor.batch_size == 2
    np.testing.assert_allclose(extractor.extract(wave).hidden_states, ref, atol=1e-5)
    _with_memory(monkeypatch, 1000)
    with pytest.raises(ExtractError, match="--window 1: one window needs"):
        Extractor(model, ExtractOptions(window=1.0))


def test_whole_file_too_large_is_refused_and_others_finish(monkeypatch, model, tmp_path):
    import soundfile as sf

    from mertkit.extraction.runner import run_extract

    rng = np.random.default_rng(1)
    short, long = (rng.standard_normal(int(s * SR)).astype(np.float32) for s in (1.0, 6.0))
    refs = [Extractor(model, ExtractOptions(window=0)).extract(w).hidden_states for w in (short, long)]
    _with_memory(monkeypatch, _peak(model, 1, 3.0))
    extractor = Extractor(model, ExtractOptions(window=0, batch_size=4))
    np.testing.assert_allclose(extractor.extract(short).hidden_states, refs[0], atol=1e-5)
    with pytest.raises(ExtractError, match=r"long: --window 0 over 6.0 s of audio needs ~.* GB"):
        list(extractor.extract_many([("short", short), ("long", long)]))
    sf.write(tmp_path / "short.wav", short, SR)
    sf.write(tmp_path / "long.wav", long, SR)
    report = run_extract(model, [str(tmp_path / "short.wav"), str(tmp_path / "long.wav")], str(tmp_path / "out"),
                         ExtractOptions(window=0), progress=False)
    ((done,),) = [report.done]
    assert str(done).endswith("short.wav")
    ((path, reason),) = report.failed
    assert path.endswith("long.wav") and "--window 0 over 6.0 s" in reason and "\n" not in reason


def test_whole_files_batched_beyond_memory_run_in_smaller_batches(monkeypatch, model):
    rng = np.random.default_rng(2)
    waves = [rng.standard_normal(int(s * SR)).astype(np.float32) for s in (2.0, 1.5, 1.2, 1.0)]
    refs = [Extractor(model, ExtractOptions(window=0)).extract(w).hidden_states for w in waves]
    _with_memory(monkeypatch, _peak(model, 1, 2.5))  # one file at a time fits, two padded do not
    extractor = Extractor(model, ExtractOptions(window=0, batch_size=4))
    sizes = []
    original = extractor._forward
    extractor._forward = lambda batch, *a, **k: sizes.append(batch.shape[0]) or original(batch, *a, **k)
    got = [f.hidden_states for _, f in extractor.extract_many(enumerate(waves))]
    assert max(sizes) == 1 and len(sizes) == 4
    for a, b in zip(got, refs):
        np.testing.assert_allclose(a, b, atol=1e-5)
