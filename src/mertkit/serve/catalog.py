"""What the `mert serve` page shows, computed without any HTTP: the tracks of a feature store,
their nearest neighbours per layer (through :mod:`mertkit.store.search`), a 2-D PCA map per
layer, a saved probe's predictions, and queries made from uploaded audio.

Every vector comes from the store's track-level rows, loaded one layer at a time on first use
and kept in memory: the page is meant for catalogs that fit in RAM (a 100k-track catalog at
width 768 is 300 MB per layer used).
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.store.parquet import FeatureStore, hash_file
from mertkit.store.search import SearchIndex

__all__ = ["Catalog", "ServeError", "Track", "pca_2d"]

MAX_UPLOADS_KEPT = 32  # queries from uploads stay answerable while the page switches layers
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


class ServeError(ValueError):
    """A request the page cannot answer; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Track:
    id: int
    path: str
    content_hash: str
    split: str | None
    duration: float | None

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "path": self.path, "split": self.split, "duration": self.duration}


@dataclass(frozen=True)
class Upload:
    id: str
    name: str
    vectors: np.ndarray  # [stored layers, width], made like the store's track vectors


@dataclass(frozen=True)
class LayerMap:
    points: np.ndarray  # [tracks, 2]
    mean: np.ndarray  # of the unit vectors
    components: np.ndarray  # [2, width]
    explained: tuple[float, float]  # fraction of the variance along each axis


def pca_2d(vectors: np.ndarray) -> LayerMap:
    """PCA of the unit-normalised rows (the geometry cosine search sees) onto two axes.

    Through the [width, width] covariance, so the cost grows linearly with the track count.
    Each axis's sign is fixed (its largest loading is positive) so maps do not flip between runs.
    """
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0) if len(unit) else np.zeros(vectors.shape[1], np.float32)
    centred = unit - mean
    covariance = centred.T.astype(np.float64) @ centred.astype(np.float64) / max(len(unit), 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigenvalues)[::-1][:2]
    components = eigenvectors[:, order].T
    if components.shape[0] < 2:  # a width-1 store still gets a second (empty) axis
        components = np.vstack([components, np.zeros((2 - components.shape[0], components.shape[1]))])
    largest = np.argmax(np.abs(components), axis=1)
    components *= np.where(components[np.arange(2), largest] < 0, -1.0, 1.0)[:, None]
    total = float(np.clip(eigenvalues, 0, None).sum())
    top = [float(max(eigenvalues[i], 0.0)) for i in order] + [0.0] * (2 - len(order))
    explained = (top[0] / total, top[1] / total) if total > 0 else (0.0, 0.0)
    points = (centred @ components.T).astype(np.float32)
    return LayerMap(points, mean.astype(np.float32), components.astype(np.float32), explained)


class Catalog:
    """The tracks of one store plus caches of per-layer vectors, search indexes and maps.

    Thread-safe: the server answers requests on several threads.
    """

    def __init__(
        self,
        store: FeatureStore,
        *,
        model: str | os.PathLike[str] | None = None,
        probe: Any = None,
        audio_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.meta = store.meta
        self.model_spec = model  # None: the model the store records; else a name, hub id or directory
        self.probe = probe
        self.audio_root = Path(audio_root) if audio_root is not None else Path.cwd()
        self.tracks = self._read_tracks()
        self._id_of_path = {track.path: track.id for track in self.tracks}
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._vectors: dict[int, np.ndarray] = {}
        self._indexes: dict[int, SearchIndex] = {}
        self._maps: dict[int, LayerMap] = {}
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._verified: dict[int, tuple[int, int]] = {}  # track id -> (size, mtime_ns) checked
        self._loaded_model: Any = None
        if probe is not None:
            self._check_probe(probe)

    # ------------------------------------------------------------------ catalog

    @property
    def default_layer(self) -> int:
        return self.meta.layers[-1]

    def info(self) -> dict[str, Any]:
        meta = self.meta
        splits = sorted({t.split for t in self.tracks if t.split is not None})
        return {
            "store": str(self.store.root),
            "model": meta.model,
            "query_model": self._query_model_name(),
            "tracks": len(self.tracks),
            "layers": list(meta.layers),
            "default_layer": self.default_layer,
            "width": meta.hidden_size,
            "pooling": meta.pooling,
            "window": meta.window,
            "splits": splits,
            "probe": self._probe_info(),
        }

    def track(self, track_id: Any) -> Track:
        try:
            index = int(track_id)
        except (TypeError, ValueError) as error:
            raise ServeError(f"track id must be an integer, got {track_id!r}") from error
        if not 0 <= index < len(self.tracks):
            raise ServeError(f"no track {index} (the catalog has {len(self.tracks)})", 404)
        return self.tracks[index]

    def layer(self, value: Any) -> int:
        if value is None or value == "":
            return self.default_layer
        try:
            layer = int(value)
        except (TypeError, ValueError) as error:
            raise ServeError(f"layer must be an integer, got {value!r}") from error
        if layer not in self.meta.layers:
            raise ServeError(f"layer {layer} is not stored; stored layers are {list(self.meta.layers)}")
        return layer

    # ------------------------------------------------------------------ neighbours and map

    def neighbours(self, *, layer: int, k: int, track_id: Any = None, upload_id: Any = None) -> dict[str, Any]:
        """The k nearest stored tracks of a stored track (itself left out) or of an upload."""
        if k < 1:
            raise ServeError(f"k must be positive, got {k}")
        index = self._index(layer)
        if (track_id is None) == (upload_id is None):
            raise ServeError("give exactly one of track= or upload=")
        if track_id is not None:
            track = self.track(track_id)
            query = self._layer_vectors(layer)[track.id]
            hits = [hit for hit in index.search(query, k=k + 1) if hit[0] != track.path][:k]
            about = {"kind": "track", "id": track.id, "name": track.name}
        else:
            upload = self.upload(upload_id)
            query = upload.vectors[self.meta.layers.index(layer)]
            hits = index.search(upload.vectors, k=k)
            about = {"kind": "upload", "id": upload.id, "name": upload.name}
        layer_map = self._map(layer)
        unit = query / max(float(np.linalg.norm(query)), 1e-12)
        position = np.round(((unit - layer_map.mean) @ layer_map.components.T).astype(np.float64), 5).tolist()
        neighbours = [
            {"rank": rank, **self.tracks[self._id_of_path[path]].to_dict(), "score": round(score, 6)}
            for rank, (path, score) in enumerate(hits, 1)
        ]
        return {"layer": layer, "k": k, "query": about, "position": position, "neighbours": neighbours}

    def layer_map(self, layer: int) -> dict[str, Any]:
        layer_map = self._map(layer)
        return {
            "layer": layer,
            "explained": [round(value, 4) for value in layer_map.explained],
            "points": np.round(layer_map.points.astype(np.float64), 5).tolist(),
        }

    # ------------------------------------------------------------------ probe

    def predict(self, *, track_id: Any = None, upload_id: Any = None) -> dict[str, Any]:
        """The saved probe's outputs for a stored track or an upload."""
        if self.probe is None:
            raise ServeError("no probe loaded: start `mert serve` with --probe DIR", 404)
        if (track_id is None) == (upload_id is None):
            raise ServeError("give exactly one of track= or upload=")
        needed = self.probe.needed_hidden_states
        if track_id is not None:
            track = self.track(track_id)
            vectors = np.stack([self._layer_vectors(k)[track.id] for k in needed])
        else:
            upload = self.upload(upload_id)
            vectors = upload.vectors[[self.meta.layers.index(k) for k in needed]]
        outputs = self.probe.predict(vectors, needed)
        names = self.probe.label_names
        rows = [{"label": name, "value": round(float(value), 6)} for name, value in zip(names, outputs)]
        kind = self.probe.task.kind
        if kind != "regression":
            rows.sort(key=lambda row: -row["value"])
        return {**self._probe_info(), "outputs": rows}

    # ------------------------------------------------------------------ uploads

    def add_upload(self, name: str, data: bytes) -> Upload:
        """Embed uploaded audio bytes like the store's tracks; the bytes are not kept."""
        if not data:
            raise ServeError(f"{name}: the uploaded file is empty")
        suffix = Path(name).suffix
        suffix = suffix if SAFE_SUFFIX.match(suffix) else ""
        handle, temp_name = tempfile.mkstemp(prefix="mertkit-serve-", suffix=suffix)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            vectors = self._embed(Path(temp_name), name)
        finally:
            Path(temp_name).unlink(missing_ok=True)
        upload = Upload(uuid.uuid4().hex[:12], Path(name).name or "upload", vectors)
        with self._lock:
            self._uploads[upload.id] = upload
            while len(self._uploads) > MAX_UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return upload

    def upload(self, upload_id: Any) -> Upload:
        with self._lock:
            upload = self._uploads.get(str(upload_id))
        if upload is None:
            raise ServeError(f"no upload {upload_id!r} (uploads are kept while the server runs; drop the file again)", 404)
        return upload

    # ------------------------------------------------------------------ audio files

    def audio_file(self, track_id: Any) -> Path:
        """The audio file of a stored track, checked to be the very file that was embedded."""
        track = self.track(track_id)
        path = Path(track.path)
        if not path.is_absolute():
            path = self.audio_root / path
        if not path.is_file():
            raise ServeError(
                f"{path}: audio file not found (relative store paths resolve against --audio-root, here {self.audio_root})",
                404,
            )
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        if self._verified.get(track.id) != signature:
            if hash_file(path) != track.content_hash:
                raise ServeError(f"{path}: the file changed since it was embedded (content hash differs)", 409)
            self._verified[track.id] = signature
        return path

    # ------------------------------------------------------------------ internals

    def _read_tracks(self) -> list[Track]:
        table = self.store.rows(columns=["path", "content_hash", "split", "window_end"], level="track")
        columns = {name: table.column(name).to_pylist() for name in ("path", "content_hash", "split", "window_end")}
        return [
            Track(i, path, digest, split, end)
            for i, (path, digest, split, end) in enumerate(
                zip(columns["path"], columns["content_hash"], columns["split"], columns["window_end"])
            )
        ]

    def _layer_vectors(self, layer: int) -> np.ndarray:
        """Raw track vectors [tracks, width] of one layer, in track-id order."""
        with self._lock:
            vectors = self._vectors.get(layer)
        if vectors is None:
            loaded, paths = self.store.load(layer=layer, level="track")
            order = np.array([self._id_of_path[path] for path in paths], dtype=np.int64)
            vectors = np.empty_like(loaded)
            vectors[order] = loaded
            with self._lock:
                self._vectors[layer] = vectors
        return vectors

    def _index(self, layer: int) -> SearchIndex:
        with self._lock:
            index = self._indexes.get(layer)
        if index is None:
            index = SearchIndex(self.store, layer=layer)
            with self._lock:
                self._indexes[layer] = index
        return index

    def _map(self, layer: int) -> LayerMap:
        with self._lock:
            layer_map = self._maps.get(layer)
        if layer_map is None:
            layer_map = pca_2d(self._layer_vectors(layer))
            with self._lock:
                self._maps[layer] = layer_map
        return layer_map

    def _embed(self, path: Path, name: str) -> np.ndarray:
        from mertkit.audio import AudioError
        from mertkit.extraction.engine import ExtractError
        from mertkit.extraction.provenance import embed_like_store

        # One forward pass at a time: the model is shared and a second would only compete for cores.
        with self._model_lock:
            if self._loaded_model is None:
                self._loaded_model = self._load_model()
            try:
                return embed_like_store(self._loaded_model, self.meta, path)
            except (AudioError, ExtractError) as error:
                raise ServeError(f"{name}: {_without_path(str(error), path)}") from error

    def _load_model(self) -> Any:
        """The store's model (or --model), its weights checked against the store's fingerprint."""
        from mertkit.extraction.engine import ExtractError
        from mertkit.extraction.provenance import model_for_store

        try:
            return model_for_store(self.meta, self.model_spec)
        except ExtractError as error:
            raise ServeError(f"cannot load the model for queries: {error}", 500) from error

    def _query_model_name(self) -> str:
        return self.meta.model if self.model_spec is None else str(self.model_spec)

    def _probe_info(self) -> dict[str, Any] | None:
        probe = self.probe
        if probe is None:
            return None
        hidden = probe.needed_hidden_states
        layer = f"layer {hidden[0]}" if isinstance(probe.layer, int) else f"{probe.layer} over layers {list(hidden)}"
        return {
            "task": probe.task.name,
            "kind": probe.task.kind,
            "labels": list(probe.label_names),
            "layer": layer,
            "metric": probe.scores.get("metric"),
            "test_score": probe.scores.get("test_mean", {}).get(probe.scores.get("metric")),
        }

    def _check_probe(self, probe: Any) -> None:
        """The probe must read features of this store's model, pooling and width."""
        meta = self.meta
        if probe.task.kind not in ("multiclass", "multilabel", "regression"):
            raise ServeError(f"the probe's task {probe.task.name!r} is {probe.task.kind}-level; the store holds track vectors")
        if probe.model != meta.model:
            raise ServeError(f"the probe was trained on features of {probe.model!r}, the store holds {meta.model!r}")
        if probe.width != meta.hidden_size:
            raise ServeError(f"the probe reads width {probe.width}, the store holds width {meta.hidden_size}")
        # Unpooled features are time-averaged for clip tasks: the same as mean pooling.
        pooling = "mean" if probe.pooling == "none" else probe.pooling
        if pooling != meta.pooling:
            raise ServeError(f"the probe was trained on {probe.pooling!r}-pooled features, the store holds {meta.pooling!r}")
        missing = [k for k in probe.needed_hidden_states if k not in meta.layers]
        if missing:
            raise ServeError(f"the probe reads hidden states {missing}, which the store does not keep (it keeps {list(meta.layers)})")


def _without_path(message: str, path: Path) -> str:
    """Error text about the temporary copy of an upload, without the temporary file's name."""
    return message.replace(f"{path}: ", "").replace(str(path), "the file")
