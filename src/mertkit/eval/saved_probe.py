"""A trained probe saved for reuse: ``probe.safetensors`` beside ``mert probe``'s report.

The file holds the weights of the best probe (the best-validation seed of the best learning
rate; for a layer sweep, of the best layer) and, in its metadata under ``mertkit.probe``, what
is needed to apply it to new features: the task (kind, label names), the head (linear or mlp,
hidden size), the layer setting, the input (feature width, the hidden-state index of each
feature layer, model, pooling) and, for regression, the training targets' mean and std.

``load_probe(path).predict(vectors, layers)`` gives class probabilities (multiclass), tag
probabilities (multilabel) or target values (regression) for clip features.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertkit.eval.datasets import DatasetError, TaskSpec
from mertkit.eval.features import FeatureSplits
from mertkit.eval.probes import LayerAggregator, Probe, ProbeConfig, ProbeResult

__all__ = ["FILE_NAME", "SavedProbe", "SavedProbeError", "load_probe", "save_probe"]

FILE_NAME = "probe.safetensors"
FORMAT = "mertkit-probe/1"
METADATA_KEY = "mertkit.probe"
CLIP_KINDS = ("multiclass", "multilabel", "regression")


class SavedProbeError(ValueError):
    """A saved probe that cannot be written, read, or applied to the given features."""


@dataclass(frozen=True)
class SavedProbe:
    """A trained probe with what it predicts and which features it takes."""

    task: TaskSpec
    layer: int | str  # a position on the input's layer axis, or "weighted" / "conv1d"
    hidden_states: tuple[int, ...] | None  # hidden-state index of each input layer
    width: int
    model: str
    pooling: str
    module: Probe
    target_mean: np.ndarray | None
    target_std: np.ndarray | None
    scores: dict[str, Any]

    @property
    def needed_hidden_states(self) -> tuple[int, ...]:
        """The hidden states the probe reads, in the order it reads them."""
        if self.hidden_states is None:
            raise SavedProbeError(
                "the probe does not record which hidden states its features held (they came "
                "from arrays without metadata); it cannot be applied to stored features"
            )
        if isinstance(self.layer, int):
            return (self.hidden_states[self.layer],)
        return self.hidden_states

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.task.labels or tuple(str(i) for i in range(self.task.num_outputs))

    def predict(self, vectors: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        """Outputs [num_outputs] for one clip's pooled ``vectors`` [len(layers), width], whose
        rows are the hidden states ``layers``."""
        if self.task.kind not in CLIP_KINDS:
            raise SavedProbeError(f"task {self.task.name!r} is {self.task.kind}-level; only clip probes predict from pooled vectors")
        vectors = np.asarray(vectors, dtype=np.float32)
        layers = [int(k) for k in layers]
        if vectors.shape != (len(layers), self.width):
            raise SavedProbeError(f"features shaped {vectors.shape}, expected [{len(layers)}, {self.width}]")
        missing = [k for k in self.needed_hidden_states if k not in layers]
        if missing:
            raise SavedProbeError(f"the probe reads hidden states {missing}, which these features lack (they hold {layers})")
        rows = [layers.index(k) for k in self.needed_hidden_states]
        x = torch.from_numpy(vectors[rows] if not isinstance(self.layer, int) else vectors[rows[0]])
        with torch.no_grad():
            outputs = self.module(x[None])[0]
        if self.task.kind == "multiclass":
            return torch.softmax(outputs, dim=-1).numpy()
        if self.task.kind == "multilabel":
            return torch.sigmoid(outputs).numpy()
        return outputs.numpy() * self.target_std + self.target_mean


def save_probe(
    result: ProbeResult, task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig, path: str | os.PathLike[str]
) -> Path:
    """Write ``result``'s trained probe to ``path`` (safetensors, atomically, with the user's umask)."""
    from safetensors.torch import save

    from mertkit.fileio import atomic_write

    if result.trained is None:
        raise SavedProbeError(f"task {task.name!r}: the probe result holds no trained weights")
    layer = result.best_layer if result.best_layer is not None else result.layer
    spec = {
        "format": FORMAT,
        "task": task.to_dict(),
        "probe": {"kind": cfg.kind, "layer": layer, "hidden_size": cfg.hidden_size, "dropout": cfg.dropout,
                  "context": cfg.context},
        "input": {
            "num_layers": data.num_layers,
            "width": data.width,
            "hidden_states": _hidden_states(data),
            "model": str(data.meta.get("model") or ""),
            "pooling": str(data.meta.get("pooling") or ""),
        },
        "target_mean": result.trained.target_mean,
        "target_std": result.trained.target_std,
        "scores": {"metric": result.metric, "test_mean": result.test_mean, "valid_mean": result.valid_mean},
    }
    tensors = {name: value.detach().contiguous() for name, value in result.trained.state.items()}
    payload = save(tensors, metadata={METADATA_KEY: json.dumps(spec)})
    return atomic_write(path, lambda handle: handle.write(payload))


def load_probe(path: str | os.PathLike[str]) -> SavedProbe:
    """Read a probe written by :func:`save_probe` (a file, or a folder holding ``probe.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise SavedProbeError(f"{path}: no saved probe (`mert probe` writes {FILE_NAME} into its output folder)")
    spec, state = _read(path)
    try:
        task = TaskSpec.from_dict(spec["task"])
        probe, source = spec["probe"], spec["input"]
        layer = probe["layer"]
        cfg = ProbeConfig(kind=probe["kind"], layer=layer, hidden_size=int(probe["hidden_size"]),
                          dropout=float(probe["dropout"]), context=int(probe.get("context", 0)))  # older files: none
        num_layers, width = int(source["num_layers"]), int(source["width"])
        hidden_states = None if source["hidden_states"] is None else tuple(int(k) for k in source["hidden_states"])
        target_mean, target_std = spec["target_mean"], spec["target_std"]
        model, pooling, scores = str(source["model"]), str(source["pooling"]), dict(spec["scores"])
    except (KeyError, TypeError, ValueError, DatasetError) as error:
        raise SavedProbeError(f"{path}: malformed probe metadata ({error})") from error
    if hidden_states is not None and len(hidden_states) != num_layers:
        raise SavedProbeError(f"{path}: {len(hidden_states)} hidden-state indices for {num_layers} input layers")
    if task.kind == "regression" and (target_mean is None or target_std is None):
        raise SavedProbeError(f"{path}: a regression probe needs the training targets' mean and std")
    aggregator = None if isinstance(layer, int) else LayerAggregator(layer, num_layers)
    module = Probe(width, task.num_outputs, cfg, aggregator)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SavedProbeError(f"{path}: weights do not fit the recorded probe ({error})") from error
    return SavedProbe(
        task=task, layer=layer, hidden_states=hidden_states, width=width, model=model, pooling=pooling,
        module=module.eval(),
        target_mean=None if target_mean is None else np.asarray(target_mean, np.float32),
        target_std=None if target_std is None else np.asarray(target_std, np.float32),
        scores=scores,
    )


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise SavedProbeError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        spec = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as error:
        raise SavedProbeError(f"{path}: no valid {METADATA_KEY} metadata; not a saved mertkit probe") from error
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise SavedProbeError(f"{path}: unknown probe format {spec.get('format') if isinstance(spec, dict) else spec!r} (expected {FORMAT})")
    return spec, state


def _hidden_states(data: FeatureSplits) -> list[int] | None:
    """The hidden-state index of each feature layer, from the features' metadata (a JSON list)."""
    recorded = data.meta.get("layers")
    if recorded is None:
        return None
    layers = json.loads(recorded) if isinstance(recorded, str) else list(recorded)
    if len(layers) != data.num_layers:
        raise SavedProbeError(f"feature metadata lists {len(layers)} layers, the features have {data.num_layers}")
    return [int(k) for k in layers]
