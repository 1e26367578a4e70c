"""Can a backbone *learn* frame-wise pitch quickly? A supervised check of the front-end.

Pre-training on a 2-core CPU gets a few thousand updates at most. This script asks the
simplest question first: trained with a plain linear head on the labels we want the
representation to carry (the MIDI pitch of every 75 Hz frame of synthetic harmonic notes,
61 classes, MIDI 36-96), how far does each preset's backbone get in a fixed number of
updates? A front-end that cannot learn pitch under direct supervision in that budget will
not learn it from a self-supervised signal either.

    python scripts/small_model/frontend_pitch.py --preset tiny --preset tiny-wide --updates 100

Prints, per preset, the training accuracy over the last 10 updates every 10 updates, and the
seconds per update (one thread; chance is 1/61 = 1.6 %).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from mertkit.models.hubert.model import MertModel
from mertkit.pretrain.pretrain_config import load_config

SAMPLE_RATE = 24000
LOWEST, HIGHEST = 36, 96  # MIDI range of the notes (and of the synth suite's pitch task)


def harmonic_note(rng: np.random.Generator, midi: int, samples: int) -> np.ndarray:
    """A decaying note with 8 random-weight harmonics (below Nyquist) and random phases."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(samples) / SAMPLE_RATE
    weights = rng.uniform(0, 1, 8) / np.arange(1, 9) ** rng.uniform(0.5, 2.0)
    note = np.zeros(samples)
    for k, weight in enumerate(weights, start=1):
        if f0 * k < SAMPLE_RATE / 2:
            note += weight * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
    return note * np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(0.2, 3.0))


def note_sequence(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back notes of 0.2-1 s: (waveform [N], per-sample class = MIDI - LOWEST)."""
    total = int(seconds * SAMPLE_RATE)
    wave, classes, start = np.zeros(total), np.zeros(total, dtype=np.int64), 0
    while start < total:
        midi = int(rng.integers(LOWEST, HIGHEST + 1))
        length = min(int(rng.uniform(0.2, 1.0) * SAMPLE_RATE), total - start)
        wave[start:start + length] = harmonic_note(rng, midi, length)
        classes[start:start + length] = midi - LOWEST
        start += length
    peak = np.abs(wave).max() + 1e-9
    return (wave / peak * rng.uniform(0.1, 0.9)).astype(np.float32), classes


def frame_centres(model: MertModel, frames: int) -> torch.Tensor:
    """Sample index at the centre of each frame's receptive field (the front-end has no padding)."""
    field, jump = 1, 1
    for kernel, stride in zip(model.config.conv_kernel, model.config.conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return torch.arange(frames) * jump + field // 2


def make_optimiser(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The pre-training recipe's AdamW (betas, eps, weight decay)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)


def supervised_step(optimiser: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor,
                    update: int, lr: float) -> None:
    """One update: linear warm-up over 20 updates, gradient clipped at norm 10 as in pre-training."""
    for group in optimiser.param_groups:
        group["lr"] = lr * min(1.0, update / 20)
    optimiser.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    optimiser.step()


def train(preset: str, updates: int, lr: float, batch: int, seconds: float, seed: int) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MertModel(load_config(preset).mert_config()).train()
    classes = HIGHEST - LOWEST + 1
    head = torch.nn.Linear(model.config.hidden_size, classes)
    params = [*model.parameters(), *head.parameters()]
    optimiser = make_optimiser(params, lr)
    hits: list[float] = []
    start = time.time()
    for update in range(1, updates + 1):
        pairs = [note_sequence(rng, seconds) for _ in range(batch)]
        wave = torch.from_numpy(np.stack([p[0] for p in pairs]))
        states = model(wave).hidden_states[-1]
        target = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, frame_centres(model, states.shape[1])]
        logits = head(states)
        loss = F.cross_entropy(logits.reshape(-1, classes), target.reshape(-1))
        supervised_step(optimiser, params, loss, update, lr)
        hits.append(float((logits.argmax(-1) == target).float().mean()))
        if update % 10 == 0:
            print(f"{preset:>10} update {update:4d}: accuracy {np.mean(hits[-10:]):.3f}  "
                  f"loss {loss.item():.3f}  {(time.time() - start) / update:.2f} s/update", flush=True)


def add_training_options(parser: argparse.ArgumentParser, presets: str, *, updates: int, batch: int,
                         threads: int) -> None:
    """The options both supervised checks of this folder share (`presets`: the default's help)."""
    parser.add_argument("--preset", action="append", help=f"Pre-training preset (repeatable) [{presets}].")
    parser.add_argument("--updates", type=int, default=updates)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_options(parser, "tiny, tiny-wide", updates=100, batch=8, threads=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.preset or ["tiny", "tiny-wide"]:
        train(preset, args.updates, args.lr, args.batch, args.seconds, args.seed)


if __name__ == "__main__":
    main()
