"""Windows, exact cross-file batching, stitching, timestamps, pooling, layer choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions, parse_layers, window_plan
from mertkit.models.hubert.model import MertModel
from model_fixtures import tiny_config

SR = 24000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


def _direct(model, wave, layers=None):
    with torch.no_grad():
        states = model(torch.from_numpy(wave)[None]).hidden_states
    layers = layers or range(len(states))
    return np.stack([states[i][0].numpy() for i in layers])


def test_window_plan_covers_file_and_keeps_short_tail():
    plan = window_plan(int(2.5 * SR), SR, 1.0, None, 400)
    assert plan == [(0, SR), (SR, 2 * SR), (2 * SR, int(2.5 * SR))]
    # a tail shorter than one frame is dropped
    plan = window_plan(2 * SR + 100, SR, 1.0, None, 400)
    assert plan == [(0, SR), (SR, 2 * SR)]
    # overlap: starts every hop, the last window reaches the end
    plan = window_plan(int(2.2 * SR), SR, 1.0, 0.5, 400)
    assert [s for s, _ in plan] == [0, 12000, 24000, 36000] and plan[-1][1] == int(2.2 * SR)
    assert window_plan(1000, SR, 0, None, 400) == [(0, 1000)]
    with pytest.raises(ExtractError, match="shorter than one frame"):
        window_plan(399, SR, 1.0, None, 400)


def test_whole_file_equals_direct_model_call(model):
    wave = np.random.default_rng(0).standard_normal(SR + 777).astype(np.float32)
    feats = Extractor(model, ExtractOptions(window=0)).extract(wave)
    np.testing.assert_allclose(feats.hidden_states, _direct(model, wave), atol=1e-5)
    assert feats.timestamps.shape == (model.config.num_frames(len(wave)),)
    np.testing.assert_allclose(feats.timestamps[:3], (np.arange(3) * 320 + 200) / SR)


def test_default_hop_leaves_no_frame_out_at_the_seams(model):
    """A 1 s window holds 74 whole frames (74 * 320 = 23 680 of 24 000 samples): the default hop
    is those 74 frames, so the windows' frames tile the grid of a whole-file pass."""
    wave = np.random.default_rng(1).standard_normal(int(2.5 * SR)).astype(np.float32)
    feats = Extractor(model, ExtractOptions(window=1.0, batch_size=3)).extract(wave)
    whole = Extractor(model, ExtractOptions(window=0)).extract(wave)
    np.testing.assert_allclose(feats.timestamps, whole.timestamps, rtol=0, atol=1e-9)
    plan = window_plan(len(wave), SR, 1.0, 23680 / SR, 400)
    assert [start for start, _ in plan] == [0, 23680, 47360]
    parts = [_direct(model, wave[start:end]) for start, end in plan]
    np.testing.assert_allclose(feats.hidden_states, np.concatenate(parts, axis=1), atol=1e-5)


def test_a_hop_of_the_window_concatenates_per_window_runs(model):
    rng = np.random.default_rng(1)
    wave = rng.standard_normal(int(2.5 * SR)).astype(np.float32)
    feats = Extractor(model, ExtractOptions(window=1.0, hop=1.0, batch_size=3)).extract(wave)
    parts = [_direct(model, wave[s:e]) for s, e in [(0, SR), (SR, 2 * SR), (2 * SR, len(wave))]]
    np.testing.assert_allclose(feats.hidden_states, np.concatenate(parts, axis=1), atol=1e-5)
    # timestamps increase and restart each window at its start
    assert np.all(np.diff(feats.timestamps) > 0)
    assert feats.timestamps[parts[0].shape[1]] == pytest.approx((SR + 200) / SR)


def test_overlap_hands_over_mid_overlap(model):
    wave = np.random.default_rng(2).standard_normal(int(2.0 * SR)).astype(np.float32)
    feats = Extractor(model, ExtractOptions(window=1.0, hop=0.5)).extract(wave)
    t = feats.timestamps
    assert np.all(np.diff(t) > 0), "no frame may appear twice"
    # frames before 0.75 s come from window 0, the next ones from window 1 (start 0.5 s)
    first = _direct(model, wave[:SR])
    second = _direct(model, wave[SR // 2 : SR // 2 + SR])
    k = int(np.sum(t < 0.75))
    np.testing.assert_allclose(feats.hidden_states[:, :k], first[:, :k], atol=1e-5)
    t2 = (SR // 2 + 320 * np.arange(second.shape[1]) + 200) / SR
    j = int(np.argmin(np.abs(t2 - t[k])))
    np.testing.assert_allclose(feats.hidden_states[:, k], second[:, j], atol=1e-5)


@pytest.mark.parametrize("layout", ["post_ln", "data2vec"])
def test_cross_file_batches_equal_single_runs(layout):
    torch.manual_seed(0)
    model = MertModel(tiny_config(layout)).eval()
    rng = np.random.default_rng(3)
    waves = [rng.standard_normal(n).astype(np.float32) * (i + 1) for i, n in enumerate([30000, 9000, 24000, 5000])]
    batched = dict(Extractor(model, ExtractOptions(window=1.0, batch_size=4)).extract_many(enumerate(waves)))
    for i, wave in enumerate(waves):
        alone = Extractor(model, ExtractOptions(window=1.0, batch_size=1)).extract(wave)
        np.testing.assert_allclose(batched[i].hidden_states, alone.hidden_states, atol=1e-5)


def test_pooling_and_layers(model):
    wave = np.random.default_rng(4).standard_normal(int(1.5 * SR)).astype(np.float32)
    frames = Extractor(model, ExtractOptions(window=1.0)).extract(wave).hidden_states
    mean = Extractor(model, ExtractOptions(window=1.0, pool="mean", layers=(0, 2))).extract(wave)
    np.testing.assert_allclose(mean.hidden_states, frames[[0, 2]].mean(axis=1), atol=1e-5)
    assert mean.window_pooled.shape == (2, 2, model.config.hidden_size)
    top = Extractor(model, ExtractOptions(window=1.0, pool="max")).extract(wave)
    np.testing.assert_allclose(top.hidden_states, frames.max(axis=1), atol=1e-5)


def test_normalize_is_applied_per_window(model):
    wave = (np.random.default_rng(5).standard_normal(SR) * 0.1 + 0.5).astype(np.float32)
    feats = Extractor(model, ExtractOptions(window=0), do_normalize=True).extract(wave)
    norm = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
    np.testing.assert_allclose(feats.hidden_states, _direct(model, norm.astype(np.float32)), atol=1e-4)


def test_bad_options_and_inputs(model):
    with pytest.raises(ExtractError, match="out of range"):
        Extractor(model, ExtractOptions(layers=(0, 99)))
    with pytest.raises(ExtractError, match="pool"):
        ExtractOptions(pool="median")
    with pytest.raises(ExtractError, match="hop"):
        ExtractOptions(window=1.0, hop=2.0)
    with pytest.raises(ExtractError, match="NaN"):
        Extractor(model).extract(np.full(SR, np.nan, dtype=np.float32))
    assert parse_layers("all") is None and parse_layers("0, 3") == (0, 3)
    with pytest.raises(ExtractError):
        parse_layers("top")


@pytest.mark.dispatch
def test_bfloat16_model_runs_natively_close_to_fp32(model):
    import copy

    wave = np.random.default_rng(6).standard_normal(SR).astype(np.float32)
    ref = Extractor(model, ExtractOptions(window=0)).extract(wave).hidden_states
    half = copy.deepcopy(model).to(torch.bfloat16)
    got = Extractor(half, ExtractOptions(window=0, dtype="bfloat16")).extract(wave).hidden_states
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() > 0.99
    assert np.abs(got - ref).max() > 0  # it really ran in reduced precision


def test_row_buffer_keeps_rows_across_growth():
    from mertkit.extraction.engine import RowBuffer

    buffer = RowBuffer(initial_rows=2)
    rows = [np.full((3, 4), i, dtype=np.float32) for i in range(9)]  # grows 2 -> 4 -> 8 -> 16
    for row in rows:
        buffer.append(row)
    out = buffer.array()
    assert out.shape == (9, 3, 4) and out.dtype == np.float32
    assert np.array_equal(out, np.stack(rows))
    buffer.append(np.zeros((3, 4), dtype=np.float32))
    assert out.shape == (9, 3, 4)  # a copy: later rows do not touch an earlier result
    with pytest.raises(ValueError, match="no rows"):
        RowBuffer().array()


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_window_vectors_and_track_pool_match_the_frames(model, pool):
    wave = np.random.default_rng(3).standard_normal(SR * 4).astype(np.float32) * 0.1
    window = 0.05  # 3 whole frames, hop 0.04 s: 100 windows, the per-window buffer (64 rows at first) has to grow
    frames = Extractor(model, ExtractOptions(pool="none", window=window)).extract(wave)
    pooled = Extractor(model, ExtractOptions(pool=pool, window=window)).extract(wave)
    reduce = np.mean if pool == "mean" else np.max
    np.testing.assert_allclose(pooled.hidden_states, reduce(frames.hidden_states, axis=1), rtol=1e-5, atol=1e-5)
    assert pooled.window_pooled.shape[0] == len(pooled.window_starts) == 100
    per_window = Extractor(model, ExtractOptions(pool=pool, window=window)).extract(wave[: int(window * SR)])
    np.testing.assert_allclose(pooled.window_pooled[0], per_window.window_pooled[0], rtol=1e-5, atol=1e-5)
