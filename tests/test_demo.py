"""The shipped small model and the README's main job (`mert demo`)."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

import mertkit
from mertkit.cli.app import main
from mertkit.models.shipped import EXAMPLE_AUDIO, SHIPPED_MODEL, asset, demo_model_dir


def test_shipped_model_is_the_offline_default_and_small():
    directory, is_random = demo_model_dir()
    assert not is_random and directory == asset(SHIPPED_MODEL)
    weights = directory / "model.safetensors"
    assert weights.stat().st_size <= 40_000_000  # the size the package may ship
    summary = json.loads((directory / "training_summary.json").read_text())
    assert summary["updates"] > 0 and summary["loss_last"] < summary["loss_first"]
    model = mertkit.load(directory)
    # a MERT-v2-layout model: one hidden state per Conformer block, at 25 Hz
    assert model.config.sample_rate == 24000 and model.info.num_hidden_states == model.config.num_hidden_layers
    assert model.info.frame_rate == 25.0


def test_shipped_model_was_trained():
    """At initialisation every LayerNorm has weight 1 and bias 0; training moves them."""
    model = mertkit.load(demo_model_dir()[0])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]
    assert norms
    moved = [float((m.weight.detach() - 1).abs().max()) for m in norms]
    assert min(moved) > 1e-3, moved


def test_demo_command_runs_offline(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "RANDOM" not in result.output
    assert "pool=none: hidden_states [4, 200, 256]" in result.output  # 125 + 75 frames of 5 s windows at 25 Hz
    assert (tmp_path / "demo" / "mean" / f"{EXAMPLE_AUDIO}.safetensors").is_file()
