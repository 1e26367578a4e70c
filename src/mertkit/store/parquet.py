"""A crash-safe Parquet feature store for pooled MERT features.

Layout of a store directory::

    store.json            model and extraction settings (StoreMeta); every row obeys them
    part-00000.parquet    committed shards, each written whole then renamed into place
    part-00001.parquet
    manifest.json         a cache of which (path, content_hash) keys each shard holds
    .lock                 held (flock) by the one writer allowed at a time

One row per track ("track" level: window 0 .. duration, the track's pooled vector) or per
window ("window" level). Vectors are stored as one column per stored hidden-state index,
``layer_<k>: fixed_size_list<float16|float32>[width]``. Parquet is columnar, so "layer k for all
rows" reads only that column's pages from each shard; a single [layers*width] column would make
every such read pull all layers.

Crash safety: the truth is the set of committed shard files. A shard is written with
``mertkit.fileio.atomic_write`` (a temporary name in the same directory, fsynced, renamed, the
directory fsynced), so a shard name on disk always refers to a complete file. All rows of one
track are in the same shard, so a track is either fully present or absent. Each shard's footer lists the keys it holds; ``manifest.json``
only caches those lists and is checked against the shard files (name and size) on every open,
so a kill between the rename and the manifest update loses nothing; an unreadable manifest is
ignored (with a warning) and rebuilt from the shard footers. Temporary files left by a
killed writer are never read and are removed by the next writer.

pyarrow is an optional dependency: ``pip install 'mertkit[store]'``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.fileio import TEMP_MARK, atomic_write, writable_dir_problem, write_json

__all__ = [
    "FeatureStore",
    "FeatureStoreWriter",
    "StoreCorruptError",
    "StoreError",
    "StoreInputError",
    "StoreMeta",
    "StoreMismatchError",
    "check_writable",
    "hash_file",
    "open",
]

META_FILE = "store.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
TEMP_PREFIX = TEMP_MARK
KEYS_METADATA = b"mertkit.keys"
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
LEVELS = ("track", "window")
STORAGE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Fields that may differ between runs without making the stored rows incomparable.
INFORMATIONAL_FIELDS = ("mertkit_version", "model_source")

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """Base class of every error the feature store raises on bad input or bad state."""


class StoreMismatchError(StoreError):
    """The store was written with a different model or different extraction settings."""


class StoreCorruptError(StoreError):
    """A committed file of the store cannot be read or contradicts the rest of the store."""


class StoreInputError(StoreError):
    """Vectors or row fields handed to the writer are malformed."""


def _require_pyarrow() -> tuple[Any, Any]:
    """Import pyarrow lazily, so ``import mertkit.store.parquet`` works without the extra installed."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as error:
        raise ImportError(
            "the feature store needs pyarrow: pip install 'mertkit[store]'"
        ) from error
    major = int(pyarrow.__version__.split(".")[0])
    if major < 15:  # Parquet's float16 logical type arrived in pyarrow 15.
        raise ImportError(
            f"the feature store needs pyarrow>=15 (found {pyarrow.__version__}): "
            "pip install -U 'mertkit[store]'"
        )
    return pyarrow, pyarrow.parquet


def _mertkit_version() -> str:
    from mertkit import __version__

    return __version__


def hash_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Return the hex blake2b-128 digest of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """Model and extraction settings shared by every row of a store.

    ``num_layers`` counts transformer layers; hidden-state indices run 0..num_layers (0 is the
    CNN/projection output). ``layers`` lists the stored hidden-state indices (default: all).
    ``dtype`` is the storage dtype of the vectors. ``window``/``hop`` are seconds (None: whole
    track). Provenance: ``weights`` fingerprints the model's weight files
    (``mertkit.extraction.provenance``), ``compute_dtype`` is the dtype of the forward pass and
    ``do_normalize`` whether inputs were normalised; rows of another model, dtype or
    normalisation never mix into a store. ``model`` (the name) is compared only when a side has
    no fingerprint. ``model_source`` (where the model was loaded from, so ``mert search`` can
    embed a query with it) and ``mertkit_version`` are recorded but not compared.
    """

    model: str
    sample_rate: int
    frame_rate: float
    hidden_size: int
    num_layers: int
    layers: tuple[int, ...] = ()
    dtype: str = "float16"
    window: float | None = None
    hop: float | None = None
    pooling: str = "mean"
    weights: str = ""
    compute_dtype: str = ""
    do_normalize: bool | None = None
    model_source: str = ""
    mertkit_version: str = ""

    def __post_init__(self) -> None:
        layers = tuple(int(k) for k in self.layers) or tuple(range(self.num_layers + 1))
        object.__setattr__(self, "layers", layers)
        if not self.mertkit_version:
            object.__setattr__(self, "mertkit_version", _mertkit_version())
        self._validate()

    def _validate(self) -> None:
        if not self.model:
            raise StoreInputError("StoreMeta.model must name the model (e.g. 'm-a-p/MERT-v1-95M')")
        if self.hidden_size <= 0 or self.num_layers <= 0 or self.sample_rate <= 0:
            raise StoreInputError(f"StoreMeta sizes must be positive, got {self}")
        if self.dtype not in STORAGE_DTYPES:
            raise StoreInputError(f"StoreMeta.dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}")
        if len(set(self.layers)) != len(self.layers):
            raise StoreInputError(f"StoreMeta.layers has duplicates: {self.layers}")
        bad = [k for k in self.layers if not 0 <= k <= self.num_layers]
        if bad:
            raise StoreInputError(
                f"StoreMeta.layers {bad} are outside the hidden states 0..{self.num_layers}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "meta") -> StoreMeta:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreInputError(f"{source}: unknown store metadata fields {unknown}")
        try:
            return cls(**dict(data))
        except TypeError as error:
            raise StoreInputError(f"{source}: incomplete store metadata: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        return data

    def differences(self, other: StoreMeta) -> list[str]:
        """Names and values of the comparable fields in which ``other`` differs from self."""
        mine, theirs = self.to_dict(), other.to_dict()
        skipped = set(INFORMATIONAL_FIELDS)
        if self.weights and other.weights:
            skipped.add("model")  # the fingerprint says whether the models are the same
        found = [
            f"{name}: store has {mine[name]!r}, got {theirs[name]!r}"
            for name in mine
            if name not in skipped and mine[name] != theirs[name]
        ]
        if found and not self.weights and other.weights:
            found.append("the store was written without a weights fingerprint (an older mertkit)")
        return found


# ----------------------------------------------------------------------------- file helpers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bad UTF-8
        raise StoreCorruptError(f"{path}: cannot read JSON: {error}") from error


def _shard_files(root: Path) -> list[Path]:
    """Committed shards, in commit order. Temp files never match the pattern."""
    shards = [p for p in root.iterdir() if SHARD_PATTERN.match(p.name)]
    return sorted(shards, key=lambda p: int(SHARD_PATTERN.match(p.name).group(1)))


def _read_meta(root: Path) -> StoreMeta:
    path = root / META_FILE
    if not path.is_file():
        raise StoreError(f"{root}: not a feature store (no {META_FILE})")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise StoreCorruptError(f"{path}: expected a JSON object")
    return StoreMeta.from_dict(data, source=str(path))


def _shard_keys_from_footer(shard: Path) -> list[tuple[str, str]]:
    """The (path, content_hash) keys a shard holds, from its Parquet footer."""
    _, pq = _require_pyarrow()
    try:
        metadata = pq.read_schema(shard).metadata or {}
    except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError)
        raise StoreCorruptError(f"{shard}: not a readable Parquet shard: {error}") from error
    if KEYS_METADATA not in metadata:
        raise StoreCorruptError(f"{shard}: shard footer has no key list ({KEYS_METADATA.decode()})")
    return [(str(p), str(h)) for p, h in json.loads(metadata[KEYS_METADATA])]


def _scan_shards(root: Path) -> dict[str, dict[str, Any]]:
    """Map each committed shard to its size and keys, trusting the manifest cache only where
    the shard's name and size still match."""
    cached = _read_manifest(root / MANIFEST_FILE)
    shards: dict[str, dict[str, Any]] = {}
    for shard in _shard_files(root):
        stat = shard.stat()
        signature = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = cached.get(shard.name)
        if _cache_entry_matches(entry, signature):
            keys = [(str(p), str(h)) for p, h in entry["keys"]]
        else:
            keys = _shard_keys_from_footer(shard)
        shards[shard.name] = {**signature, "keys": keys}
    return shards


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's shard entries; a missing one is empty, a damaged one is ignored with a
    warning (it is only a cache: the shard footers hold the truth, and the writer rewrites it)."""
    if not path.is_file():
        return {}
    try:
        data = _read_json(path)
    except StoreCorruptError as error:
        log.warning("%s; ignoring it (a cache), reading the keys from the shards", error)
        return {}
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, dict):
        log.warning("%s: not a manifest (no 'shards' object); ignoring it (a cache), reading the keys "
                    "from the shards", path)
        return {}
    return shards


def _cache_entry_matches(entry: Any, signature: Mapping[str, int]) -> bool:
    """A manifest entry describes this very file (same size and mtime) and is well formed."""
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in signature.items()):
        return False
    keys = entry.get("keys")
    return isinstance(keys, list) and all(isinstance(k, list) and len(k) == 2 for k in keys)


def _done_keys(root: Path, shards: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """Key -> shard name; a key in two shards means someone else wrote into the store."""
    done: dict[tuple[str, str], str] = {}
    for name, entry in shards.items():
        for key in entry["keys"]:
            key = tuple(key)
            if key in done:
                raise StoreCorruptError(
                    f"{root}: track {key[0]!r} ({key[1]}) is in both {done[key]} and {name}"
                )
            done[key] = name
    return done


# ----------------------------------------------------------------------------- vectors


def _as_layer_matrix(
    vectors: np.ndarray | Mapping[int, np.ndarray], meta: StoreMeta, what: str
) -> np.ndarray:
    """Check one row's vectors and return them as float32 [len(meta.layers), width]."""
    if isinstance(vectors, Mapping):
        given = sorted(int(k) for k in vectors)
        if given != sorted(meta.layers):
            raise StoreInputError(f"{what}: got layers {given}, the store keeps {list(meta.layers)}")
        rows = [np.asarray(vectors[k], dtype=np.float32) for k in meta.layers]
        if any(row.ndim != 1 for row in rows):
            raise StoreInputError(f"{what}: each layer's vector must be 1-D [width]")
        matrix = np.stack(rows)
    else:
        matrix = np.asarray(vectors, dtype=np.float32)
    expected = (len(meta.layers), meta.hidden_size)
    if matrix.shape != expected:
        raise StoreInputError(
            f"{what}: vectors have shape {matrix.shape}, expected [layers, width] = {expected}"
            f" (layers {list(meta.layers)})"
        )
    if not np.isfinite(matrix).all():
        raise StoreInputError(f"{what}: vectors contain NaN or infinity")
    if meta.dtype == "float16" and np.abs(matrix).max(initial=0.0) > FLOAT16_MAX:
        raise StoreInputError(
            f"{what}: values exceed the float16 range ({FLOAT16_MAX}); store with dtype='float32'"
        )
    return matrix


def _check_window(start: float, end: float, what: str) -> tuple[float, float]:
    start, end = float(start), float(end)
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise StoreInputError(f"{what}: window ({start}, {end}) must satisfy 0 <= start < end")
    return start, end


@dataclasses.dataclass
class _PendingRow:
    level: str
    start: float | None
    end: float | None
    matrix: np.ndarray


@dataclasses.dataclass
class _PendingTrack:
    path: str
    content_hash: str
    split: str | None
    rows: list[_PendingRow]


# ----------------------------------------------------------------------------- writer


class FeatureStoreWriter:
    """Append pooled features to a store; resumable after a crash at any moment.

    Use as a context manager. ``add_track`` buffers one track's rows (its track-level row plus
    any window rows); ``flush`` commits all buffered tracks as one shard. Leaving the ``with``
    block normally flushes; leaving it by an exception discards the uncommitted buffer, so a
    rerun redoes those tracks.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        meta: StoreMeta | Mapping[str, Any],
        *,
        rows_per_shard: int = 1024,
        dtype: str | None = None,
    ) -> None:
        _require_pyarrow()
        if rows_per_shard <= 0:
            raise StoreInputError(f"rows_per_shard must be positive, got {rows_per_shard}")
        self.root = Path(root)
        self.meta = self._resolve_meta(meta, dtype)
        self.rows_per_shard = rows_per_shard
        check_writable(self.root)
        self._lock_handle = self._acquire_lock()
        try:
            self._check_or_write_meta()
            self._remove_temp_files()
            self._shards = _scan_shards(self.root)
            self._done = _done_keys(self.root, self._shards)
            self._write_manifest()
        except BaseException:
            self._release_lock()
            raise
        self._stored_hash_of_path = {path: digest for path, digest in self._done}
        self._pending: list[_PendingTrack] = []
        self._pending_keys: set[tuple[str, str]] = set()
        self._closed = False

    # -- setup

    @staticmethod
    def _resolve_meta(meta: StoreMeta | Mapping[str, Any], dtype: str | None) -> StoreMeta:
        if isinstance(meta, StoreMeta):
            resolved = meta
        elif isinstance(meta, Mapping):
            data = dict(meta)
            if dtype is not None:
                data.setdefault("dtype", dtype)
            resolved = StoreMeta.from_dict(data)
        else:
            raise StoreInputError(f"meta must be a StoreMeta or a dict, got {type(meta).__name__}")
        if dtype is not None and dtype != resolved.dtype:
            raise StoreInputError(f"dtype={dtype!r} contradicts meta dtype {resolved.dtype!r}")
        return resolved

    def _acquire_lock(self) -> Any:
        try:
            handle = (self.root / LOCK_FILE).open("a")
        except OSError as error:
            raise StoreError(f"{self.root}: cannot write to the store ({error.strerror or error})") from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.close()
            raise StoreError(f"{self.root}: another writer holds this store's lock") from error
        return handle

    def _release_lock(self) -> None:
        fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
        self._lock_handle.close()

    def _check_or_write_meta(self) -> None:
        if (self.root / META_FILE).is_file():
            existing = _read_meta(self.root)
            differences = existing.differences(self.meta)
            if differences:
                raise StoreMismatchError(
                    f"{self.root}: this store holds features from different settings; "
                    "use a new store directory. " + "; ".join(differences)
                )
            self.meta = dataclasses.replace(existing, mertkit_version=self.meta.mertkit_version)
            return
        if _shard_files(self.root):
            raise StoreCorruptError(f"{self.root}: shards exist but {META_FILE} is missing")
        write_json(self.root / META_FILE, self.meta.to_dict())

    def _remove_temp_files(self) -> None:
        """Temp files are only ever written under the lock we now hold: any left are debris."""
        for leftover in self.root.glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        shards = {
            name: {**entry, "keys": [list(key) for key in entry["keys"]]}
            for name, entry in self._shards.items()
        }
        try:
            write_json(self.root / MANIFEST_FILE, {"version": 1, "shards": shards})
        except OSError as error:  # only a cache: the next open reads the shard footers instead
            log.warning("%s: could not update %s (%s)", self.root, MANIFEST_FILE, error.strerror or error)

    # -- public API

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is not None:
            self._pending.clear()
            self._pending_keys.clear()
        self.close()

    def stored_hash(self, path: str) -> str | None:
        """The content hash under which ``path`` is committed or buffered, if it is."""
        pending = [t.content_hash for t in self._pending if t.path == str(path)]
        return pending[0] if pending else self._stored_hash_of_path.get(str(path))

    def discard_pending(self) -> list[str]:
        """Drop the buffered (uncommitted) tracks, e.g. after a flush failed; their paths."""
        paths = [track.path for track in self._pending]
        self._pending.clear()
        self._pending_keys.clear()
        return paths

    def is_done(self, path: str, content_hash: str) -> bool:
        """True when this exact file version is committed or buffered in this writer."""
        key = (str(path), str(content_hash))
        return key in self._done or key in self._pending_keys

    def add_track(
        self,
        path: str,
        content_hash: str,
        *,
        vectors: np.ndarray | Mapping[int, np.ndarray],
        window_rows: Sequence[tuple[float, float, np.ndarray | Mapping[int, np.ndarray]]] = (),
        split: str | None = None,
        duration: float | None = None,
    ) -> None:
        """Buffer one track: its pooled ``vectors`` [layers, width] (or {layer: [width]}) and
        optional ``(start, end, vectors)`` windows (seconds). The track row spans 0 ..
        ``duration`` (null when not given). Commits a shard once enough rows wait."""
        self._check_open()
        key = (str(path), str(content_hash))
        what = f"track {key[0]!r}"
        self._check_new_key(key, what)
        track_end = None
        if duration is not None:
            track_end = _check_window(0.0, duration, f"{what} duration")[1]
        rows = [_PendingRow("track", 0.0, track_end, _as_layer_matrix(vectors, self.meta, what))]
        for index, (start, end, window_vectors) in enumerate(window_rows):
            window_what = f"{what} window {index}"
            start, end = _check_window(start, end, window_what)
            matrix = _as_layer_matrix(window_vectors, self.meta, window_what)
            rows.append(_PendingRow("window", start, end, matrix))
        self._pending.append(_PendingTrack(key[0], key[1], split, rows))
        self._pending_keys.add(key)
        if sum(len(track.rows) for track in self._pending) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        """Commit every buffered track as one new shard (atomically); no-op when empty. On
        OSError (a full disk) nothing is committed and the tracks stay buffered."""
        self._check_open()
        if not self._pending:
            return
        name = self._next_shard_name()
        table = self._pending_table()
        _, pq = _require_pyarrow()
        atomic_write(self.root / name, lambda handle: pq.write_table(table, handle))
        keys = [(track.path, track.content_hash) for track in self._pending]
        stat = (self.root / name).stat()
        self._shards[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "keys": keys}
        for key in keys:
            self._done[key] = name
            self._stored_hash_of_path[key[0]] = key[1]
        self._pending.clear()
        self._pending_keys.clear()
        self._write_manifest()

    def close(self) -> None:
        """Flush what is buffered and release the store's lock. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._release_lock()

    # -- internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.root}: writer is closed")

    def _check_new_key(self, key: tuple[str, str], what: str) -> None:
        if self.is_done(*key):
            raise StoreInputError(f"{what} ({key[1]}) is already stored; check is_done() first")
        pending_hashes = {t.content_hash for t in self._pending if t.path == key[0]}
        stored = self._stored_hash_of_path.get(key[0])
        other = stored if stored is not None else next(iter(pending_hashes), None)
        if other is not None:
            raise StoreInputError(
                f"{what} is already stored with content hash {other}, now {key[1]}: the file "
                "changed since extraction; write the new version into a fresh store"
            )

    def _next_shard_name(self) -> str:
        numbers = [int(SHARD_PATTERN.match(name).group(1)) for name in self._shards]
        return f"part-{max(numbers, default=-1) + 1:05d}.parquet"

    def _pending_table(self) -> Any:
        pa, _ = _require_pyarrow()
        rows = [(track, row) for track in self._pending for row in track.rows]
        stacked = np.stack([row.matrix for _, row in rows])  # [rows, layers, width]
        storage = np.float16 if self.meta.dtype == "float16" else np.float32
        columns: dict[str, Any] = {
            "path": pa.array([track.path for track, _ in rows], pa.string()),
            "content_hash": pa.array([track.content_hash for track, _ in rows], pa.string()),
            "split": pa.array([track.split for track, _ in rows], pa.string()),
            "model": pa.array([self.meta.model] * len(rows), pa.string()),
            "weights": pa.array([self.meta.weights] * len(rows), pa.string()),
            "level": pa.array([row.level for _, row in rows], pa.string()),
            "layers": pa.array([list(self.meta.layers)] * len(rows), pa.list_(pa.int16())),
            "window_start": pa.array([row.start for _, row in rows], pa.float64()),
            "window_end": pa.array([row.end for _, row in rows], pa.float64()),
        }
        for position, layer in enumerate(self.meta.layers):
            flat = np.ascontiguousarray(stacked[:, position, :].astype(storage)).reshape(-1)
            columns[f"layer_{layer}"] = pa.FixedSizeListArray.from_arrays(
                pa.array(flat), self.meta.hidden_size
            )
        keys = [[track.path, track.content_hash] for track in self._pending]
        table = pa.table(columns)
        return table.replace_schema_metadata({KEYS_METADATA: json.dumps(keys).encode()})


def check_writable(root: str | os.PathLike[str]) -> None:
    """One line, before any work, for a store folder that cannot be created or written."""
    problem = writable_dir_problem(root, "store folder")
    if problem:
        raise StoreError(problem)


# ----------------------------------------------------------------------------- reader


class FeatureStore:
    """Read-only view of the shards committed when it was opened.

    ``len(store)`` is the number of tracks. Vectors come back as float32 in commit order.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        _require_pyarrow()
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such store directory")
        self.meta = _read_meta(self.root)
        shards = _scan_shards(self.root)
        self._keys = list(_done_keys(self.root, shards))
        self._shard_paths = [self.root / name for name in shards]

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, model={self.meta.model!r}, tracks={len(self)})"

    def keys(self) -> list[tuple[str, str]]:
        """(path, content_hash) of every stored track."""
        return list(self._keys)

    def paths(self, level: str = "track") -> list[str]:
        """Paths of the rows of one level (a track's path repeats once per window)."""
        table = self.rows(columns=["path"], level=level)
        return table.column("path").to_pylist()

    def rows(
        self,
        *,
        columns: Sequence[str] | None = None,
        level: str | None = None,
        split: str | None = None,
    ) -> Any:
        """The rows as one pyarrow.Table (optionally only some columns, one level, one split)."""
        pa, _ = _require_pyarrow()
        tables = [table for _, table in self._iter_shard_tables(columns, level, split)]
        if not tables:
            return self._empty_table(columns)
        return pa.concat_tables(tables)

    def load(
        self,
        *,
        layer: int,
        level: str = "track",
        split: str | None = None,
        as_torch: bool = False,
    ) -> tuple[Any, list[str]]:
        """Vectors of one stored hidden-state ``layer``: (float32 [N, width], paths)."""
        chunks = list(self.iter_layer(layer=layer, level=level, split=split))
        if chunks:
            vectors = np.concatenate([vectors for vectors, _ in chunks])
        else:
            vectors = np.zeros((0, self.meta.hidden_size), np.float32)
        paths = [path for _, chunk_paths in chunks for path in chunk_paths]
        if as_torch:
            import torch

            return torch.from_numpy(vectors), paths
        return vectors, paths

    def iter_layer(
        self, *, layer: int, level: str = "track", split: str | None = None
    ) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Yield (float32 [n, width], paths) one shard at a time, for stores too big for RAM."""
        column = self._layer_column(layer)
        for _, table in self._iter_shard_tables(["path", column], level, split):
            if table.num_rows:
                yield self._column_to_numpy(table.column(column)), table.column("path").to_pylist()

    def load_all_layers(self, *, level: str = "track", split: str | None = None) -> np.ndarray:
        """Every stored layer: float32 [N, len(meta.layers), width], layers in meta.layers order."""
        columns = [self._layer_column(k) for k in self.meta.layers]
        table = self.rows(columns=columns, level=level, split=split)
        if table.num_rows == 0:
            return np.zeros((0, len(columns), self.meta.hidden_size), np.float32)
        return np.stack([self._column_to_numpy(table.column(c)) for c in columns], axis=1)

    # -- internals

    def _layer_column(self, layer: int) -> str:
        if layer not in self.meta.layers:
            raise StoreError(
                f"{self.root}: layer {layer} is not stored; stored layers are {list(self.meta.layers)}"
            )
        return f"layer_{layer}"

    def _iter_shard_tables(
        self, columns: Sequence[str] | None, level: str | None, split: str | None
    ) -> Iterator[tuple[Path, Any]]:
        import pyarrow.compute as pc

        if level is not None and level not in LEVELS:
            raise StoreError(f"level must be one of {LEVELS}, got {level!r}")
        _, pq = _require_pyarrow()
        filter_columns = [c for c, used in (("level", level), ("split", split)) if used is not None]
        wanted = None if columns is None else list(dict.fromkeys([*columns, *filter_columns]))
        for shard in self._shard_paths:
            try:
                table = pq.read_table(shard, columns=wanted)
            except (OSError, ValueError) as error:
                raise StoreCorruptError(f"{shard}: cannot read shard: {error}") from error
            if level is not None:
                table = table.filter(pc.equal(table.column("level"), level))
            if split is not None:
                table = table.filter(pc.equal(table.column("split"), split))
            if columns is not None:
                table = table.select(list(columns))
            yield shard, table

    def _column_to_numpy(self, column: Any) -> np.ndarray:
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32).reshape(-1, self.meta.hidden_size)

    def _empty_table(self, columns: Sequence[str] | None) -> Any:
        pa, _ = _require_pyarrow()
        names = list(columns) if columns is not None else ["path"]
        return pa.table({name: pa.array([], pa.null()) for name in names})


def open(root: str | os.PathLike[str]) -> FeatureStore:  # noqa: A001 - mirrors the brief's API
    """Open a feature store for reading."""
    return FeatureStore(root)
