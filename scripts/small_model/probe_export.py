"""The `mert pretrain-diagnose` probe (logistic regression on mean-pooled hidden states, layer
chosen on validation, test accuracy) of an *exported* model, beside its trainer's initialisation.

`pretrain-diagnose` probes a run's snapshots; once the run folder is gone, the exported model
and its `training_summary.json` (whose `config` rebuilds the exact initial weights from the
run's seed) still give the curve's two ends on the same probes:

    python scripts/small_model/probe_export.py src/mertkit/assets/model suite

Prints one line per model: the test accuracy and best layer of each suite task.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import mertkit
from mertkit.pretrain.diagnostics import available_tasks, pooled_hidden_states, probe_states, suite_clips
from mertkit.pretrain.pretrain_config import PretrainConfig
from mertkit.pretrain.trainer import initial_model


def initial_backbone(summary_path: Path) -> torch.nn.Module:
    """The backbone the trainer started from, rebuilt from the summary's config and seed."""
    config = json.loads(summary_path.read_text(encoding="utf-8"))["config"]
    return initial_model(PretrainConfig.from_dict(config, source=str(summary_path))).backbone.eval()


def probe_line(name: str, backbone: torch.nn.Module, suite: Path, sample_rate: int) -> str:
    parts = []
    for task in available_tasks(suite):
        clips = suite_clips(suite, task)
        pooled = pooled_hidden_states(backbone, [c.path for c in clips], sample_rate)
        result = probe_states(pooled, clips)
        parts.append(f"{task} {result['test_accuracy']:.3f} (L{result['best_layer']})")
    return f"{name}: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="exported model folder (with training_summary.json)")
    parser.add_argument("suite", type=Path, help="suite folder of `mert bench-suite synth`")
    args = parser.parse_args()
    model = mertkit.load(str(args.model)).eval()
    rate = mertkit.contract_of(model).sample_rate
    summary = args.model / "training_summary.json"
    if summary.is_file():
        print(probe_line("initialisation", initial_backbone(summary), args.suite, rate), flush=True)
    print(probe_line(args.model.name, model, args.suite, rate), flush=True)


if __name__ == "__main__":
    main()
