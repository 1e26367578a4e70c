"""Probes refuse non-finite features (naming the examples and where they came from) and
learning rates that are not positive finite numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from mertkit.cli.app import main
from mertkit.eval.datasets import TaskSpec
from mertkit.eval.features import from_arrays
from mertkit.eval.probes import ProbeConfig, ProbeError, run_probe

TASK = TaskSpec("toy", "multiclass", 2)
FAST = dict(lrs=(1e-2,), max_epochs=2, patience=1, batch_size=None, seeds=(0,))


def _splits(rng):
    return [(rng.normal(size=(n, 3, 4)).astype(np.float32), rng.integers(0, 2, size=n)) for n in (12, 6, 6)]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_naming_the_examples(value):
    splits = _splits(np.random.default_rng(0))
    splits[1][0][3, 2, 1] = value
    with pytest.raises(ProbeError, match=r"non-finite \(NaN or Inf\) features for valid example\(s\): valid/3$"):
        run_probe(TASK, from_arrays(*splits), ProbeConfig(layer=0, **FAST))


@pytest.mark.parametrize("lrs", [(-1.0,), (float("nan"),), (1e-3, float("inf")), (0.0,)])
def test_learning_rates_must_be_positive_and_finite(lrs):
    with pytest.raises(ProbeError, match="learning rates must be positive finite numbers"):
        ProbeConfig(lrs=lrs)


def test_probe_command_names_the_feature_file_that_is_not_finite(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["path,split,label"]
    for split, count in (("train", 8), ("valid", 4), ("test", 4)):
        for i in range(count):
            hidden = rng.normal(size=(3, 4)).astype(np.float32)
            if (split, i) == ("test", 2):
                hidden[1, 0] = np.nan
            (tmp_path / "feats" / split).mkdir(parents=True, exist_ok=True)
            save_file({"hidden_states": hidden}, str(tmp_path / "feats" / f"{split}/{i}.wav.safetensors"),
                      metadata={"model": "toy", "pooling": "mean"})
            lines.append(f"{split}/{i}.wav,{split},{['rock', 'pop'][i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    task = json.dumps({"name": "genre", "kind": "multiclass", "labels": ["rock", "pop"]})
    result = CliRunner().invoke(main, ["probe", "--features", str(tmp_path / "feats"), "--manifest", str(tmp_path / "m.csv"),
                                       "--task", task, "--seeds", "0", "--epochs", "2", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"non-finite (NaN or Inf) features in {tmp_path / 'feats'} for test example(s): test/2.wav" in result.output
    assert not (tmp_path / "out" / "results.json").exists()
