"""A real, small catalog for the `mert serve` tests: a tiny random MERT checkpoint, synthetic
audio in three sound classes, a feature store written with FeatureStoreWriter from the
extractor's own pooled vectors, and a probe trained on the store and saved as `mert probe` does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

import mertkit
from audio_fixtures import write_array, write_tone
from mertkit.eval.datasets import Record, TaskSpec
from mertkit.eval.features import from_store
from mertkit.eval.probes import ProbeConfig, run_probe
from mertkit.eval.saved_probe import FILE_NAME, save_probe
from mertkit.extraction.engine import Extractor, ExtractOptions
from mertkit.extraction.runner import store_meta
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel
from mertkit.store.parquet import FeatureStoreWriter, hash_file
from model_fixtures import tiny_config

CLASSES = ("low", "high", "noise")
SPLITS = ("train", "train", "valid", "test")  # by track index, cycled
TRACKS = 12
OPTIONS = ExtractOptions(layers=(0, 1, 2, 3), pool="mean", window=1.0, hop=0.5)


@dataclasses.dataclass(frozen=True)
class BuiltCatalog:
    root: Path
    checkpoint: Path
    audio: list[Path]
    labels: list[str]
    splits: list[str]
    store: Path
    probe: Path  # a `mert probe`-style output folder holding probe.safetensors
    task: TaskSpec


def write_clip(path: Path, label: str, index: int) -> None:
    seconds = 1.0 + 0.15 * (index % 4)
    if label == "noise":
        noise = np.random.default_rng(index).standard_normal(round(seconds * 24000)) * 0.2
        write_array(path, noise, 24000)
    else:
        base = 150.0 if label == "low" else 2400.0
        write_tone(path, seconds=seconds, sample_rate=44100 if index % 2 else 24000, channels=1,
                   freq=base * (1.0 + 0.05 * index))


def build_catalog(root: Path) -> BuiltCatalog:
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checkpoint = save_pretrained(MertModel(tiny_config("post_ln")), root / "tiny-mert", do_normalize=False)
    model = mertkit.load(checkpoint)
    extractor = Extractor(model, OPTIONS)
    meta = store_meta(model, extractor, "float32")  # records the checkpoint folder the model came from
    audio, labels, splits = [], [], []
    (root / "audio").mkdir(exist_ok=True)
    store = root / "store"
    with FeatureStoreWriter(store, meta, rows_per_shard=7) as writer:
        for index in range(TRACKS):
            label = CLASSES[index % len(CLASSES)]
            suffix = ".flac" if index % 3 == 1 else ".wav"
            path = root / "audio" / f"{label}-{index:02d}{suffix}"
            write_clip(path, label, index)
            features = extractor.extract_file(path)
            split = SPLITS[index % len(SPLITS)]
            writer.add_track(str(path), hash_file(path), vectors=features.hidden_states, split=split,
                             duration=features.duration)
            audio.append(path)
            labels.append(label)
            splits.append(split)
    task = TaskSpec("sound", "multiclass", len(CLASSES), labels=CLASSES)
    records = [Record(str(p), s, label, p) for p, s, label in zip(audio, splits, labels)]
    data = from_store(store, records, task)
    cfg = ProbeConfig(kind="linear", layer=3, lrs=(0.1,), seeds=(0,), max_epochs=40, patience=40, batch_size=None)
    result = run_probe(task, data, cfg)
    probe_dir = root / "probe"
    probe_dir.mkdir()
    save_probe(result, task, data, cfg, probe_dir / FILE_NAME)
    return BuiltCatalog(root, checkpoint, audio, labels, splits, store, probe_dir, task)
