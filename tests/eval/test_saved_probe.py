"""The best probe saved by `mert probe` (probe.safetensors) loads back and predicts what the
trained probe scored: the saved weights are the ones evaluated, with their feature spec."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mertkit.eval import metrics
from mertkit.eval.datasets import TaskSpec
from mertkit.eval.features import from_arrays
from mertkit.eval.probes import ProbeConfig, run_probe
from mertkit.eval.saved_probe import FILE_NAME, SavedProbeError, load_probe, save_probe

torch.set_num_threads(1)
HIDDEN_STATES = [0, 4, 8, 12]  # what the features' layer axis holds
FAST = dict(lrs=(1e-2,), max_epochs=40, patience=40, batch_size=None, seeds=(0,))


def clip_data(kind: str, seed: int = 0):
    """Layer position 2 (hidden state 8) carries the target; the other layers are noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(3, 6))
    weights = rng.normal(size=(6, 2))
    splits = []
    for count in (60, 30, 30):
        x = rng.normal(scale=2.0, size=(count, len(HIDDEN_STATES), 6))
        if kind == "multiclass":
            y = rng.integers(0, 3, size=count)
            x[:, 2] = centres[y] + rng.normal(scale=0.3, size=(count, 6))
        else:
            x[:, 2] = rng.normal(size=(count, 6))
            y = x[:, 2] @ weights * 5.0 + 40.0  # far from zero mean and unit std: the scaler matters
        splits.append((x.astype(np.float32), y))
    data = from_arrays(*splits)
    data.meta.update(model="toy/model", pooling="mean", layers=json.dumps(HIDDEN_STATES))
    return data


@pytest.mark.parametrize("layer", ["all", "weighted"])
def test_saved_classifier_predicts_its_test_score(tmp_path, layer):
    data = clip_data("multiclass")
    task = TaskSpec("colour", "multiclass", 3, labels=("red", "green", "blue"))
    cfg = ProbeConfig(kind="mlp" if layer == "weighted" else "linear", layer=layer, **FAST)
    result = run_probe(task, data, cfg)
    saved = load_probe(save_probe(result, task, data, cfg, tmp_path / FILE_NAME).parent)  # a folder works too
    assert saved.task == task and saved.model == "toy/model" and saved.pooling == "mean"
    assert saved.needed_hidden_states == ((8,) if layer == "all" else tuple(HIDDEN_STATES))
    outputs = np.stack([saved.predict(x, HIDDEN_STATES) for x in data.test.x])
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)
    assert metrics.accuracy(data.test.y, outputs.argmax(axis=1)) == pytest.approx(result.score)
    assert result.score > 0.6  # chance is 1/3: the equality above is about a probe that learnt


def test_saved_regression_probe_undoes_the_target_scaling(tmp_path):
    data = clip_data("regression", seed=1)
    task = TaskSpec("tempo", "regression", 2, labels=("bpm", "energy"))
    cfg = ProbeConfig(kind="linear", layer=2, **{**FAST, "max_epochs": 150, "patience": 150})
    result = run_probe(task, data, cfg)
    saved = load_probe(save_probe(result, task, data, cfg, tmp_path / "p.safetensors"))
    predicted = np.stack([saved.predict(x[[2]], [8]) for x in data.test.x])  # only the layer it reads
    assert float(metrics.r2_per_target(data.test.y, predicted).mean()) == pytest.approx(result.score, abs=1e-5)
    assert result.score > 0.9


def test_results_json_leaves_the_weights_out(tmp_path):
    data = clip_data("multiclass")
    result = run_probe(TaskSpec("colour", "multiclass", 3), data, ProbeConfig(layer="all", **FAST))
    payload = result.to_dict()
    json.dumps(payload)
    assert "trained" not in payload and all("trained" not in run for run in payload["runs"])
    assert result.trained is not None and all(r.trained is not None for r in result.per_layer)


def test_bad_files_and_wrong_features_are_one_line_errors(tmp_path):
    data = clip_data("multiclass")
    task = TaskSpec("colour", "multiclass", 3)
    cfg = ProbeConfig(layer=1, **FAST)
    saved = load_probe(save_probe(run_probe(task, data, cfg), task, data, cfg, tmp_path / FILE_NAME))
    with pytest.raises(SavedProbeError, match=r"reads hidden states \[4\], which these features lack"):
        saved.predict(np.zeros((2, 6)), [0, 8])
    with pytest.raises(SavedProbeError, match=r"expected \[2, 6\]"):
        saved.predict(np.zeros((2, 5)), [4, 8])
    with pytest.raises(SavedProbeError, match="no saved probe"):
        load_probe(tmp_path / "elsewhere")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SavedProbeError, match="not a readable safetensors file"):
        load_probe(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SavedProbeError, match="not a saved mertkit probe"):
        load_probe(tmp_path / "other.safetensors")
    bare = from_arrays(*[(split.x, split.y) for split in (data.train, data.valid, data.test)])
    unnamed = load_probe(save_probe(run_probe(task, bare, cfg), task, bare, cfg, tmp_path / "bare.safetensors"))
    with pytest.raises(SavedProbeError, match="does not record which hidden states"):
        unnamed.predict(np.zeros((4, 6)), HIDDEN_STATES)


def test_the_probe_file_follows_the_umask(tmp_path):
    import os

    data = clip_data("multiclass")
    task = TaskSpec("colour", "multiclass", 3)
    cfg = ProbeConfig(layer=1, **{**FAST, "max_epochs": 2})
    previous = os.umask(0o022)
    try:
        path = save_probe(run_probe(task, data, cfg), task, data, cfg, tmp_path / FILE_NAME)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644 and list(tmp_path.iterdir()) == [path]  # no temp left


def test_a_beat_probe_with_context_loads_back_with_its_frame_window(tmp_path):
    from test_eval_probes import paired_beat_data

    data = paired_beat_data(np.random.default_rng(2))
    task = TaskSpec("beat", "beat", 1)
    cfg = ProbeConfig(kind="mlp", layer=0, context=1, lrs=(3e-2,), max_epochs=5, patience=5, batch_size=8, seeds=(0,))
    result = run_probe(task, data, cfg)
    saved = load_probe(save_probe(result, task, data, cfg, tmp_path / FILE_NAME))
    frames = torch.from_numpy(data.test.x[:, 0])
    np.testing.assert_array_equal(saved.module(frames).detach().numpy(),
                                  run_probe_module(result, task, data, cfg)(frames).detach().numpy())
    assert saved.module.head[0].conv.kernel_size == (3,)


def run_probe_module(result, task, data, cfg):
    from mertkit.eval.probes import Probe

    module = Probe(data.width, task.num_outputs, cfg, None)
    module.load_state_dict(result.trained.state, strict=True)
    return module.eval()
