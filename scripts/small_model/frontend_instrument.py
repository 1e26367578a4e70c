"""Can a backbone *learn* the suite's instrument families at all? A supervised check.

The instrument twin of `frontend_pitch.py`. Every pre-trained `tiny-wide` model so far scores
20-30 % on the synth suite's instrument task while MFCC statistics score 49 % (76 % with four
times the clips). Is the representation missing because the self-supervised targets never ask
for it, or because the architecture cannot compute it in a CPU budget? Here each preset's
backbone, from its random initialisation, is trained end to end *with the labels*: the
suite's instrument training clips, every hidden state mean-pooled over the clip, a linear head
on the last one, cross-entropy. Its test accuracy after a fixed number of updates bounds what
a self-supervised run of the same length could give a probe; if it stays far below MFCC
statistics, the front-end is the bottleneck.

    mert bench-suite synth -o suite_big --task instrument --clips 1440
    python scripts/small_model/frontend_instrument.py suite_big --preset tiny-wide --updates 300

Prints, per preset, the mean training accuracy over the last 20 updates and the valid and test
accuracy (chance 1/15) every 50 updates, and the seconds per update.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frontend_pitch import add_training_options, make_optimiser, supervised_step  # this folder's supervised check of pitch
from mertkit.eval.baselines import load_segment
from mertkit.eval.datasets import encode_labels
from mertkit.eval.suite_runner import load_suite_tasks
from mertkit.models.mert2.model import Mert2Model
from mertkit.pretrain.mlm_model import build_backbone, set_mel_statistics
from mertkit.pretrain.pretrain_config import load_config
from mertkit.pretrain.trainer import MEL_STATISTICS_CLIPS


def load_split(suite: Path, sample_rate: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (waves [clips, samples], class ids [clips])} of the suite's instrument task."""
    (task,) = load_suite_tasks({"instrument": suite / "instrument"})
    out = {}
    for split in ("train", "valid", "test"):
        records = [r for r in task.records if r.split == split]
        waves = [load_segment(r, sample_rate) for r in records]
        length = min(len(w) for w in waves)
        out[split] = (torch.from_numpy(np.stack([w[:length] for w in waves])).float(),
                      torch.from_numpy(encode_labels(records, task.spec)).long())
    return out


@torch.inference_mode()
def accuracy(model: torch.nn.Module, head: torch.nn.Linear, waves: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    hits = 0
    for start in range(0, len(waves), 32):
        pooled = model(waves[start:start + 32]).hidden_states[-1].mean(1)
        hits += int((head(pooled).argmax(-1) == labels[start:start + 32]).sum())
    model.train()
    return hits / len(waves)


def train(preset: str, data: dict, updates: int, lr: float, batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_backbone(load_config(preset)).train()
    waves, labels = data["train"]
    if isinstance(model, Mert2Model):  # a MERT-v2 layout (tiny-mel): its mel statistics from the training clips
        set_mel_statistics(model, list(waves[:MEL_STATISTICS_CLIPS]))
    head = torch.nn.Linear(model.config.hidden_size, int(labels.max()) + 1)
    params = [*model.parameters(), *head.parameters()]
    optimiser = make_optimiser(params, lr)
    hits: list[float] = []
    start = time.time()
    for update in range(1, updates + 1):
        chosen = torch.randint(len(waves), (batch,), generator=generator)
        logits = head(model(waves[chosen]).hidden_states[-1].mean(1))
        loss = F.cross_entropy(logits, labels[chosen])
        supervised_step(optimiser, params, loss, update, lr)
        hits.append(float((logits.argmax(-1) == labels[chosen]).float().mean()))
        if update % 50 == 0:
            seconds = (time.time() - start) / update
            print(f"{preset:>10} update {update:4d}: train {np.mean(hits[-20:]):.3f}  "
                  f"valid {accuracy(model, head, *data['valid']):.3f}  test {accuracy(model, head, *data['test']):.3f}  "
                  f"{seconds:.2f} s/update", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="a suite folder with an instrument task")
    add_training_options(parser, "tiny-wide; tiny-mel: MERT-v2 layout", updates=300, batch=16, threads=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    presets = args.preset or ["tiny-wide"]
    data = load_split(args.suite, load_config(presets[0]).sample_rate)
    for preset in presets:
        train(preset, data, args.updates, args.lr, args.batch, args.seed)


if __name__ == "__main__":
    main()
