"""Probes on synthetic frozen features: separable tasks are learnt, layer weights find the
informative layer, seeds reproduce, and every task kind trains end to end."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mertkit.eval.datasets import TaskSpec
from mertkit.eval.features import beat_targets, from_arrays
from mertkit.eval.probes import ProbeConfig, ProbeError, paired_difference, pick_peaks, run_probe

torch.set_num_threads(1)
FAST = dict(lrs=(1e-2,), max_epochs=40, patience=10, batch_size=None, seeds=(0,))


def clip_data(rng, layers=4, informative=2, width=8, classes=3, n=(90, 45, 45), noise_scale=3.0):
    """Only ``informative`` carries the class (as a mean shift); other layers are loud noise."""
    centres = rng.normal(scale=2.0, size=(classes, width))
    splits = []
    for count in n:
        y = rng.integers(0, classes, size=count)
        x = rng.normal(scale=noise_scale, size=(count, layers, width))
        x[:, informative] = centres[y] + rng.normal(scale=0.3, size=(count, width))
        splits.append((x.astype(np.float32), y))
    return from_arrays(*splits)


def test_linear_probe_recovers_separable_task():
    data = clip_data(np.random.default_rng(0))
    task = TaskSpec("toy", "multiclass", 3)
    result = run_probe(task, data, ProbeConfig(layer=2, **FAST))
    assert result.score > 0.95
    noise_only = run_probe(task, data, ProbeConfig(layer=0, **FAST))
    assert noise_only.score < 0.7  # chance is 1/3; a noise layer must not look informative


def test_weighted_sum_puts_weight_on_informative_layer():
    data = clip_data(np.random.default_rng(1), layers=5, informative=3)
    cfg = ProbeConfig(layer="weighted", **{**FAST, "max_epochs": 80, "patience": 80})
    result = run_probe(TaskSpec("toy", "multiclass", 3), data, cfg)
    weights = np.array(result.layer_weights)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert int(weights.argmax()) == 3
    assert weights[3] > 0.5
    assert result.score > 0.9


def test_conv1d_aggregator_trains_and_reports_weights():
    data = clip_data(np.random.default_rng(2), layers=3, informative=0, noise_scale=1.0)
    cfg = ProbeConfig(layer="conv1d", **{**FAST, "max_epochs": 200, "patience": 200})
    result = run_probe(TaskSpec("toy", "multiclass", 3), data, cfg)
    assert len(result.layer_weights) == 3
    assert int(np.argmax(np.abs(result.layer_weights))) == 0
    assert result.score > 0.9


def test_layer_sweep_picks_informative_layer():
    data = clip_data(np.random.default_rng(3), layers=3, informative=1)
    result = run_probe(TaskSpec("toy", "multiclass", 3), data, ProbeConfig(layer="all", **FAST))
    assert [r.layer for r in result.per_layer] == [0, 1, 2]
    assert result.best_layer == 1
    assert result.score == result.per_layer[1].score
    json.dumps(result.to_dict())  # JSON-serialisable


def test_paired_difference_on_the_same_clips():
    data = clip_data(np.random.default_rng(5), layers=3, informative=1, n=(90, 45, 60))
    task = TaskSpec("toy", "multiclass", 3)
    cfg = ProbeConfig(**{**FAST, "seeds": (0, 1)})
    informative, noise = (run_probe(task, data, replace(cfg, layer=k)) for k in (1, 0))
    pair = paired_difference(informative, noise)
    assert pair.n_test == 60
    assert pair.difference == pytest.approx(informative.score - noise.score)
    assert 0 < pair.interval[0] <= pair.difference <= pair.interval[1]
    assert pair.verdict == "ahead" and paired_difference(noise, informative).verdict == "behind"
    itself = paired_difference(noise, noise)  # everything cancels: no gap, no spread
    assert itself.difference == 0 and itself.interval == (0.0, 0.0) and itself.verdict == "within noise"
    # a close pair: the interval straddles 0 although one mean is higher
    other = run_probe(task, data, replace(cfg, layer=2))
    close = paired_difference(noise, other)
    assert close.interval[0] < 0 < close.interval[1] and close.verdict == "within noise"


def test_paired_difference_refuses_other_clips_and_results_without_predictions():
    task = TaskSpec("toy", "multiclass", 3)
    cfg = ProbeConfig(layer=1, **FAST)
    a = run_probe(task, clip_data(np.random.default_rng(6), layers=2, informative=1), cfg)
    shorter = run_probe(task, clip_data(np.random.default_rng(6), layers=2, informative=1, n=(90, 45, 44)), cfg)
    with pytest.raises(ProbeError, match="different clips"):
        paired_difference(a, shorter)
    with pytest.raises(ProbeError, match="test predictions"):
        paired_difference(a, replace(a, _items=None))


def test_same_seed_same_result_and_std_over_seeds():
    data = clip_data(np.random.default_rng(4), noise_scale=1.5)
    cfg = ProbeConfig(kind="mlp", layer="weighted", lrs=(1e-3, 1e-2), max_epochs=8, patience=3,
                      batch_size=16, seeds=(0, 1))
    task = TaskSpec("toy", "multiclass", 3)
    first, second = run_probe(task, data, cfg), run_probe(task, data, cfg)
    assert first.to_dict() == second.to_dict()
    assert first.best_lr in (1e-3, 1e-2)
    scores = [run.test_scores["accuracy"] for run in first.runs]
    assert first.test_mean["accuracy"] == pytest.approx(np.mean(scores))
    assert first.test_std["accuracy"] == pytest.approx(np.std(scores))
    third = run_probe(task, data, ProbeConfig(**{**cfg.__dict__, "seeds": (5, 6)}))
    assert third.runs[0].layer_weights != first.runs[0].layer_weights


def test_multilabel_probe():
    rng = np.random.default_rng(5)
    splits = []
    for count in (120, 60, 60):
        x = rng.normal(size=(count, 2, 6)).astype(np.float32)
        y = (x[:, 1, :4] > 0).astype(np.float32)  # tag k is "feature k of layer 1 is positive"
        splits.append((x, y))
    cfg = ProbeConfig(layer=1, **{**FAST, "max_epochs": 300, "patience": 300})
    result = run_probe(TaskSpec("tags", "multilabel", 4), from_arrays(*splits), cfg)
    assert result.metric == "roc_auc"
    assert result.score > 0.95
    assert result.test_mean["average_precision"] > 0.9


def test_regression_probe_standardises_targets():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(6, 2))
    splits = []
    for count in (150, 50, 50):
        x = rng.normal(size=(count, 1, 6)).astype(np.float32)
        y = 100.0 + 50.0 * (x[:, 0] @ w) + rng.normal(scale=0.5, size=(count, 2))  # far from unit scale
        splits.append((x, y.astype(np.float32)))
    task = TaskSpec("emo", "regression", 2, labels=("arousal", "valence"))
    result = run_probe(task, from_arrays(*splits), ProbeConfig(layer=0, **{**FAST, "max_epochs": 150, "patience": 150}))
    assert result.score > 0.95
    assert set(result.test_mean) == {"r2", "r2_arousal", "r2_valence"}


def test_frame_probe_with_padding():
    rng = np.random.default_rng(7)
    splits = []
    for count in (30, 10, 10):
        y = rng.integers(0, 3, size=(count, 12))
        x = rng.normal(scale=0.2, size=(count, 2, 12, 3)).astype(np.float32)
        x[:, 0] += np.eye(3, dtype=np.float32)[y] * 2.0
        y[:, 10:] = -1  # padding
        splits.append((x, y))
    result = run_probe(TaskSpec("chord", "frame", 3), from_arrays(*splits), ProbeConfig(layer="weighted", **FAST))
    assert result.score > 0.95


def test_beat_probe_end_to_end():
    rng = np.random.default_rng(8)
    frame_rate = 10.0
    splits, beats = [], {}
    for name, count in zip(("train", "valid", "test"), (20, 6, 6)):
        xs, ys, refs = [], [], []
        for _ in range(count):
            period = rng.integers(4, 7)
            times = np.arange(rng.integers(0, 3), 60, period) / frame_rate
            target = beat_targets(times, 60, frame_rate)
            x = rng.normal(scale=0.1, size=(1, 60, 4)).astype(np.float32)
            x[0, :, 0] += target * 3.0
            xs.append(x), ys.append(target), refs.append(times)
        splits.append((np.stack(xs), np.stack(ys)))
        beats[name] = refs
    data = from_arrays(*splits, frame_rate=frame_rate, beat_times=beats)
    result = run_probe(TaskSpec("beat", "beat", 1), data, ProbeConfig(layer=0, **{**FAST, "max_epochs": 100}))
    assert result.metric == "beat_f"
    assert result.score > 0.95


def paired_beat_data(rng, frame_rate=10.0):
    """Beats only two frames together show: a beat frame has channel 0 up and its previous frame
    channel 1 up; as many decoy frames have channel 0 up without the cue before them, so a
    probe of single frames cannot tell beats from decoys (F-measure at most 2/3)."""
    splits, beats = [], {}
    for name, count in zip(("train", "valid", "test"), (30, 8, 8)):
        xs, ys, refs = [], [], []
        for _ in range(count):
            period = int(rng.integers(6, 9))
            beat_frames = np.arange(int(rng.integers(2, 4)), 58, period)
            decoys = beat_frames + period // 2
            decoys = decoys[decoys < 60]
            x = rng.normal(scale=0.05, size=(1, 60, 2)).astype(np.float32)
            x[0, beat_frames, 0] += 1.0
            x[0, decoys, 0] += 1.0
            x[0, beat_frames - 1, 1] += 1.0
            times = beat_frames / frame_rate
            xs.append(x), ys.append(beat_targets(times, 60, frame_rate)), refs.append(times)
        splits.append((np.stack(xs), np.stack(ys)))
        beats[name] = refs
    return from_arrays(*splits, frame_rate=frame_rate, beat_times=beats)


def test_beat_probe_context_sees_the_neighbouring_frames():
    data = paired_beat_data(np.random.default_rng(11))
    settings = dict(lrs=(3e-2,), max_epochs=100, patience=20, batch_size=4, seeds=(0,))
    alone = run_probe(TaskSpec("beat", "beat", 1), data, ProbeConfig(layer=0, **settings))
    with_context = run_probe(TaskSpec("beat", "beat", 1), data, ProbeConfig(layer=0, context=1, **settings))
    assert alone.score < 0.7 and with_context.score > 0.95


def test_pick_peaks():
    activation = np.array([0.1, 0.9, 0.2, 0.6, 0.6, 0.1, 0.4])
    np.testing.assert_array_equal(pick_peaks(activation, 0.5), [1, 3])


def test_bad_inputs_raise():
    data = clip_data(np.random.default_rng(9), n=(6, 3, 3))
    with pytest.raises(ProbeError, match="out of range"):
        run_probe(TaskSpec("toy", "multiclass", 3), data, ProbeConfig(layer=9, **FAST))
    with pytest.raises(ProbeError, match="frame"):
        run_probe(TaskSpec("toy", "frame", 3), data, ProbeConfig(layer=0, **FAST))
    with pytest.raises(ProbeError, match="kind"):
        ProbeConfig(kind="svm")
    with pytest.raises(ProbeError, match="context frames apply to frame-level tasks"):
        run_probe(TaskSpec("toy", "multiclass", 3), data, ProbeConfig(layer=0, context=2, **FAST))
    with pytest.raises(ProbeError, match="context must be"):
        ProbeConfig(context=-1)
