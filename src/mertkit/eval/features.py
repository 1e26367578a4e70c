"""Cached (frozen) features as probe-ready train / valid / test arrays.

Three sources:

1. :func:`from_safetensors_dir`: the per-file output of ``mert extract``. Each
   ``<features>/<path>.safetensors`` holds ``hidden_states`` shaped [layers, width] (pooled) or
   [layers, frames, width] (unpooled) and string metadata (model, sample_rate, frame_rate,
   layers, pooling, source). Rows are matched to files by the manifest's relative ``path``.
   Clip tasks time-average unpooled features (after cutting ``start``/``end`` when given);
   beat tasks keep frames and turn beat times into per-frame 0/1 targets.
2. :func:`from_store`: the Parquet feature store (``mertkit.store.parquet``): its track-level rows
   (pooled over the whole file, every stored layer), matched to records by ``path``.
3. :func:`from_arrays`: in-memory arrays.

Shapes: clip tasks X [N, L, D]; frame and beat tasks X [N, L, T, D], with targets [N, T]
padded by ``IGNORE_INDEX`` (-1) where a clip is shorter than the longest one.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.eval.datasets import SPLITS, DatasetError, Record, TaskSpec, encode_labels, load_beat_times
from mertkit.eval.metrics import IGNORE_INDEX

FRAME_KINDS = ("frame", "beat")


class FeatureError(DatasetError):
    """A feature file that is missing, malformed, or does not fit its manifest row."""


@dataclass
class SplitData:
    """One split: features ``x``, targets ``y``, example ids, and (beat tasks) reference beats."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str]
    beat_times: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0] or self.x.shape[0] != len(self.ids):
            raise FeatureError(
                f"split has {self.x.shape[0]} feature rows, {self.y.shape[0]} targets, {len(self.ids)} ids"
            )
        if self.x.shape[0] == 0:
            raise FeatureError("a split is empty")


@dataclass
class FeatureSplits:
    """Train / valid / test features for one task, plus where they came from."""

    train: SplitData
    valid: SplitData
    test: SplitData
    frame_rate: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def width(self) -> int:
        return int(self.train.x.shape[-1])

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise FeatureError(f"unknown split {name!r}")
        return getattr(self, name)


def from_arrays(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    frame_rate: float | None = None,
    beat_times: dict[str, list[np.ndarray]] | None = None,
) -> FeatureSplits:
    """Wrap (x, y) arrays per split; ids are generated as ``<split>/<row>``."""
    splits = {}
    for name, (x, y) in zip(SPLITS, (train, valid, test)):
        ids = [f"{name}/{row}" for row in range(len(x))]
        beats = beat_times.get(name) if beat_times else None
        splits[name] = SplitData(np.asarray(x, dtype=np.float32), np.asarray(y), ids, beats)
    return FeatureSplits(**splits, frame_rate=frame_rate)


def from_safetensors_dir(features_dir: str | Path, records: Sequence[Record], task: TaskSpec) -> FeatureSplits:
    """Load ``<features_dir>/<record.path>.safetensors`` for every record (see module docstring)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise FeatureError(f"{features_dir}: features folder not found")
    loaded = {split: [] for split in SPLITS}
    metas = []
    for record in records:
        hidden, meta = read_feature_file(features_dir / f"{record.path}.safetensors")
        metas.append(meta)
        loaded[record.split].append((record, hidden, meta))
    frame_rate = _common_frame_rate(metas) if task.kind in FRAME_KINDS else None
    splits = {name: _build_split(items, task, frame_rate) for name, items in loaded.items()}
    _check_splits_agree(splits)
    summary = {key: metas[0].get(key) for key in ("model", "pooling", "layers")} if metas else {}
    return FeatureSplits(**splits, frame_rate=frame_rate, meta={"source": str(features_dir), **summary})


def from_store(store_path: str | Path, records: Sequence[Record], task: TaskSpec) -> FeatureSplits:
    """Clip features from a Parquet feature store: one track-level row per record, matched by path.

    A track-level row is the track's pooled vector for every stored hidden state, so X is
    [N, len(stored layers), D] with layers in the store's order (``meta["layers"]``). Rows are
    matched on the store's ``path`` column, which must equal ``record.path`` (the manifest's
    relative path); the store's own ``split`` column is ignored, the records' splits decide.
    Frame and beat tasks, and records with start/end, need unpooled features: use
    :func:`from_safetensors_dir`.
    """
    if task.kind in FRAME_KINDS:
        raise FeatureError(
            f"{store_path}: task {task.name!r} is {task.kind}-level; the feature store holds pooled "
            "vectors only (extract unpooled safetensors and use from_safetensors_dir)"
        )
    store = _open_store(store_path)
    vectors_by_path = _track_vectors_by_path(store, store_path)
    _check_records_in_store(records, vectors_by_path, store_path)
    loaded = {split: [] for split in SPLITS}
    for record in records:
        loaded[record.split].append((record, vectors_by_path[record.path], {}))
    splits = {name: _build_split(items, task, None) for name, items in loaded.items()}
    _check_splits_agree(splits)
    meta = store.meta
    summary = {"model": meta.model, "pooling": meta.pooling, "layers": json.dumps(list(meta.layers))}
    return FeatureSplits(**splits, frame_rate=None, meta={"source": str(store_path), **summary})


def _open_store(store_path: str | Path) -> Any:
    """``mertkit.store.parquet.open`` with its errors turned into FeatureError (ImportError passes on:
    its message already says which extra to install)."""
    from mertkit import store as store_module

    try:
        return store_module.open(store_path)
    except store_module.StoreError as error:
        raise FeatureError(f"{store_path}: cannot open the feature store ({error})") from error


def _track_vectors_by_path(store: Any, store_path: str | Path) -> dict[str, np.ndarray]:
    """{path: float32 [layers, width]} of the store's track-level rows."""
    from mertkit.store.parquet import StoreError

    try:
        paths = store.paths(level="track")
        vectors = store.load_all_layers(level="track")
    except StoreError as error:
        raise FeatureError(f"{store_path}: cannot read the feature store ({error})") from error
    if len(paths) != len(vectors):
        raise FeatureError(f"{store_path}: {len(paths)} track paths but {len(vectors)} track vectors")
    by_path: dict[str, np.ndarray] = {}
    for path, matrix in zip(paths, vectors):
        if path in by_path:
            # Two versions of one file would make the match ambiguous.
            raise FeatureError(f"{store_path}: path {path!r} has more than one track-level row")
        by_path[path] = matrix
    return by_path


def _check_records_in_store(records: Sequence[Record], vectors_by_path: dict[str, np.ndarray], store_path: str | Path) -> None:
    missing = [record.path for record in records if record.path not in vectors_by_path]
    if missing:
        stored = sorted(vectors_by_path)[:3]
        raise FeatureError(
            f"{store_path}: {len(missing)} of {len(records)} records have no track row in the store, "
            f"e.g. {missing[:3]}; rows are matched on the manifest's relative path (the store has e.g. {stored})"
        )


def read_feature_file(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """``hidden_states`` as float32 [L, D] or [L, T, D], and the file's string metadata."""
    if not path.is_file():
        raise FeatureError(f"{path}: feature file not found")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if "hidden_states" not in handle.keys():
                raise FeatureError(f"{path}: no 'hidden_states' tensor (found {list(handle.keys())})")
            hidden = handle.get_tensor("hidden_states").float().numpy()
            meta = dict(handle.metadata() or {})
    except SafetensorError as error:
        raise FeatureError(f"{path}: not a readable safetensors file ({error})") from error
    if hidden.ndim not in (2, 3):
        raise FeatureError(f"{path}: hidden_states must be [layers, width] or [layers, frames, width], got {hidden.shape}")
    return hidden, meta


def beat_targets(beats: np.ndarray, num_frames: int, frame_rate: float) -> np.ndarray:
    """0/1 per frame: 1 at the frame nearest each beat time (beats past the end are dropped)."""
    target = np.zeros(num_frames, dtype=np.float32)
    frames = np.rint(np.asarray(beats) * frame_rate).astype(np.int64)
    target[frames[(frames >= 0) & (frames < num_frames)]] = 1.0
    return target


def _build_split(items: list[tuple[Record, np.ndarray, dict[str, str]]], task: TaskSpec, frame_rate: float | None) -> SplitData:
    if not items:
        raise FeatureError(f"task {task.name!r}: a split has no records")
    if task.kind == "beat":
        return _build_beat_split(items, frame_rate)
    if task.kind == "frame":
        raise FeatureError(
            f"task {task.name!r}: frame-level labels are not read from manifests yet; use from_arrays"
        )
    vectors = [_clip_vector(record, hidden, meta) for record, hidden, meta in items]
    _check_same_shape(vectors, items)
    records = [record for record, _, _ in items]
    return SplitData(np.stack(vectors), encode_labels(records, task), [r.path for r in records])


def _build_beat_split(items: list[tuple[Record, np.ndarray, dict[str, str]]], frame_rate: float) -> SplitData:
    sequences, targets, references = [], [], []
    for record, hidden, _ in items:
        if hidden.ndim != 3:
            raise FeatureError(f"{record.path}: beat tasks need unpooled [layers, frames, width] features")
        first, hidden = _cut_frames(record, hidden, frame_rate)
        offset = first / frame_rate
        beats = load_beat_times(record.beats_path) - offset
        beats = beats[(beats >= 0) & (beats < hidden.shape[1] / frame_rate)]
        sequences.append(hidden)
        targets.append(beat_targets(beats, hidden.shape[1], frame_rate))
        references.append(beats)
    longest = max(seq.shape[1] for seq in sequences)
    x = np.zeros((len(sequences), sequences[0].shape[0], longest, sequences[0].shape[2]), dtype=np.float32)
    y = np.full((len(sequences), longest), IGNORE_INDEX, dtype=np.float32)
    for row, (seq, target) in enumerate(zip(sequences, targets)):
        x[row, :, : seq.shape[1]] = seq
        y[row, : target.size] = target
    return SplitData(x, y, [record.path for record, _, _ in items], references)


def _clip_vector(record: Record, hidden: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    segment = record.start is not None or record.end is not None
    if hidden.ndim == 2:
        if segment:
            raise FeatureError(f"{record.path}: row has start/end but its features are pooled over the whole file")
        return hidden
    if segment:
        _, hidden = _cut_frames(record, hidden, _frame_rate(meta, record.path))
    return hidden.mean(axis=1)


def _cut_frames(record: Record, hidden: np.ndarray, frame_rate: float) -> tuple[int, np.ndarray]:
    first = 0 if record.start is None else int(round(record.start * frame_rate))
    last = hidden.shape[1] if record.end is None else int(round(record.end * frame_rate))
    if not 0 <= first < min(last, hidden.shape[1]):
        raise FeatureError(
            f"{record.path}: segment {record.start}-{record.end} s is outside its {hidden.shape[1]} frames"
        )
    return first, hidden[:, first:last]


def _frame_rate(meta: dict[str, str], where: str) -> float:
    try:
        return float(meta["frame_rate"])
    except (KeyError, ValueError) as error:
        raise FeatureError(f"{where}: feature metadata lacks a numeric 'frame_rate'") from error


def _common_frame_rate(metas: list[dict[str, str]]) -> float:
    rates = {_frame_rate(meta, meta.get("source", "feature file")) for meta in metas}
    if len(rates) != 1:
        raise FeatureError(f"feature files disagree on frame_rate: {sorted(rates)}")
    return rates.pop()


def _check_splits_agree(splits: dict[str, SplitData]) -> None:
    train = splits["train"].x.shape
    for name, split in splits.items():
        shape = split.x.shape
        if shape[1] != train[1] or shape[-1] != train[-1]:
            raise FeatureError(
                f"{split.ids[0]}: {name} features have {shape[1]} layers x {shape[-1]} width, "
                f"train has {train[1]} x {train[-1]}"
            )


def _check_same_shape(vectors: list[np.ndarray], items: list[tuple[Record, np.ndarray, dict[str, str]]]) -> None:
    expected = vectors[0].shape
    for vector, (record, _, _) in zip(vectors, items):
        if vector.shape != expected:
            raise FeatureError(f"{record.path}: features shaped {vector.shape}, others {expected}")
