"""Shared pieces of the hostile output tests: a tiny checkpoint, synthetic audio, a model
patched to give non-finite features for loud inputs, and a temp-file census."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import mertkit
from audio_fixtures import write_tone
from model_fixtures import tiny_config

SR = 24000
LOUD = 0.9  # write_tone peaks below this; poisoned inputs are scaled above it


def tiny_model(seed: int = 0):
    from mertkit.models.hubert.model import MertModel

    torch.manual_seed(seed)
    return MertModel(tiny_config("post_ln")).eval()


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    from mertkit.models.checkpoint import save_pretrained

    return save_pretrained(tiny_model(seed), directory, do_normalize=False)


def audio_folder(root: Path, names=("a.wav", "b.wav", "c.wav"), seconds: float = 1.3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_tone(root / name, seconds=seconds, sample_rate=SR, channels=1, freq=220.0 + 110 * i)
    return root


def write_loud(path: Path, seconds: float = 1.3) -> Path:
    """A tone the poisoned model turns into non-finite features (peak above LOUD)."""
    import soundfile as sf

    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.99 * np.sign(np.sin(2 * np.pi * 150 * t)), SR, subtype="FLOAT")
    return path


def poison_layer(model, layer: int, value: float = float("nan")):
    """Make hidden state `layer` non-finite for every batch item whose input peaks above LOUD
    (the other items of the batch stay untouched); returns the hook handles to remove."""
    seen: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        seen["wave"] = args[0]

    def poison(module, args, kwargs, output):
        loud = seen["wave"].abs().amax(dim=1) > LOUD
        states = list(output.hidden_states)
        states[layer] = torch.where(loud[:, None, None], torch.full_like(states[layer], value), states[layer])
        return replace(output, hidden_states=tuple(states))

    return [model.register_forward_pre_hook(remember, with_kwargs=True),
            model.register_forward_hook(poison, with_kwargs=True)]


def temps_under(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")] if root.exists() else []


def mertkit_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(mertkit.__file__).resolve().parents[1])
    tests = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, tests, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_mert(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`mert ARGS` in a fresh process (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "mertkit.cli.app", *args], env=mertkit_env(),
                          capture_output=True, text=True, timeout=timeout)
