"""The `mert pretrain-diagnose` probe (logistic regression on mean-pooled hidden states, layer
chosen on validation, test accuracy) of an *exported* model, beside its trainer's initialisation.

`pretrain-diagnose` probes a run's snapshots; once the run folder is gone, the exported model
and its `training_summary.json` (whose `config` rebuilds the exact initial weights from the
run's seed) still give the curve's two ends on the same probes:

    python scripts/small_model/probe_export.py src/mertkit/assets/model suite

Prints one line per model: the test accuracy and best layer of each suite task; then the
classic clip features of `mert eval` (MFCC, chroma, log-mel stats) under the same probe.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import mertkit
from mertkit.audio import load_audio
from mertkit.eval.baselines import BASELINES, SpectralConfig
from mertkit.pretrain.diagnostics import available_tasks, pooled_hidden_states, probe_states, suite_clips
from mertkit.models.mert2.model import Mert2Model
from mertkit.pretrain.pretrain_config import PretrainConfig
from mertkit.pretrain.trainer import initial_model


def initial_backbone(summary_path: Path, trained: torch.nn.Module) -> torch.nn.Module:
    """The backbone the trainer started from, rebuilt from the summary's config and seed. A
    MERT-v2 layout's mel statistics were measured on the corpus, not drawn from the seed, and
    never train: they are the trained model's."""
    config = json.loads(summary_path.read_text(encoding="utf-8"))["config"]
    backbone = initial_model(PretrainConfig.from_dict(config, source=str(summary_path))).backbone.eval()
    if isinstance(backbone, Mert2Model):
        backbone.feature_extractor.load_state_dict(trained.feature_extractor.state_dict())
    return backbone


def probe_line(name: str, features, suite: Path) -> str:
    """`features(paths)` -> [clips, layers, dims]; one probe per layer, the best on validation."""
    parts = []
    for task in available_tasks(suite):
        clips = suite_clips(suite, task)
        result = probe_states(features([c.path for c in clips]), clips)
        parts.append(f"{task} {result['test_accuracy']:.3f} (L{result['best_layer']})")
    return f"{name}: " + ", ".join(parts)


def model_features(backbone: torch.nn.Module, sample_rate: int):
    return lambda paths: pooled_hidden_states(backbone, paths, sample_rate)


def baseline_features(name: str):
    cfg = SpectralConfig()
    return lambda paths: np.stack([BASELINES[name](load_audio(p, cfg.sample_rate), cfg) for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="exported model folder (with training_summary.json)")
    parser.add_argument("suite", type=Path, help="suite folder of `mert bench-suite synth`")
    args = parser.parse_args()
    model = mertkit.load(str(args.model)).eval()
    rate = mertkit.contract_of(model).sample_rate
    summary = args.model / "training_summary.json"
    if summary.is_file():
        print(probe_line("initialisation", model_features(initial_backbone(summary, model), rate), args.suite), flush=True)
    print(probe_line(args.model.name, model_features(model, rate), args.suite), flush=True)
    for name in BASELINES:
        print(probe_line(f"{name} stats", baseline_features(name), args.suite), flush=True)


if __name__ == "__main__":
    main()
