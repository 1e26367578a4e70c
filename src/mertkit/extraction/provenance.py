"""What made a set of features: the weights (a fingerprint), the compute dtype, do_normalize.

Reuse of finished outputs and the compatibility of a feature store compare these, never the
model's *name*: two checkpoints in folders of the same name are different models, and the same
weights reached by a registry name or by a local path are the same model.

The fingerprint of a checkpoint directory is a sha256 over its config and weight files
(`config.json`, `preprocessor_config.json`, `*.safetensors`, `*.bin` and their shard indexes),
each hashed once: per-file digests are cached by (path, size, mtime, inode) in memory and, for
files of `PERSIST_MIN_BYTES` or more, in `~/.cache/mertkit/sha256.json` (`MERTKIT_CACHE_DIR`
moves it), so a 1.3 GB checkpoint is read once, not on every run. A model built in memory (no
directory) is fingerprinted from its tensors.

`model_for_store(meta)` finds the model a feature store was written with (the directory it
recorded, else its registry name, or one the caller names) and checks its fingerprint;
`embed_like_store` then makes a query vector exactly as the store's vectors were made.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mertkit.models.family import FamilyModel

__all__ = ["directory_fingerprint", "embed_like_store", "model_for_store", "model_source",
           "weights_fingerprint"]

log = logging.getLogger(__name__)

_MODEL_FILE_NAMES = {"config.json", "preprocessor_config.json", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json"}
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin")
PERSIST_MIN_BYTES = 64 << 20
_CHUNK = 8 << 20
_memory_cache: dict[tuple, str] = {}


def weights_fingerprint(model: FamilyModel) -> str:
    """"sha256:<hex>" of the checkpoint directory the model was loaded from, else of its tensors."""
    info = getattr(model, "info", None)
    if info is not None and info.path and Path(info.path).is_dir():
        return directory_fingerprint(info.path)
    return _state_fingerprint(model)


def directory_fingerprint(directory: str | os.PathLike) -> str:
    files = sorted(p for p in Path(directory).iterdir() if _is_model_file(p))
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{_file_sha256(path)}\n".encode())
    return "sha256:" + digest.hexdigest()


def model_source(model: FamilyModel) -> str:
    """The absolute directory the model was loaded from ("" for a model built in memory)."""
    info = getattr(model, "info", None)
    if info is None or not info.path:
        return ""
    return str(Path(info.path).resolve())


def _is_model_file(path: Path) -> bool:
    return path.is_file() and (path.name in _MODEL_FILE_NAMES or path.suffix in _MODEL_FILE_SUFFIXES)


def _state_fingerprint(model: FamilyModel) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(data.tobytes())
    return "sha256-state:" + digest.hexdigest()


def _file_sha256(path: Path) -> str:
    resolved = path.resolve()
    info = resolved.stat()
    key = (str(resolved), info.st_size, info.st_mtime_ns, info.st_ino)
    if key in _memory_cache:
        return _memory_cache[key]
    persisted = _read_persisted() if info.st_size >= PERSIST_MIN_BYTES else {}
    cache_key = "|".join(str(part) for part in key)
    value = persisted.get(cache_key)
    if not isinstance(value, str):
        value = _hash(resolved)
        if info.st_size >= PERSIST_MIN_BYTES:
            _persist(cache_key, value)
    _memory_cache[key] = value
    return value


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_file() -> Path:
    if os.environ.get("MERTKIT_CACHE_DIR"):
        return Path(os.environ["MERTKIT_CACHE_DIR"]) / "sha256.json"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mertkit" / "sha256.json"


def _read_persisted() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: the digest is simply computed again
    return data if isinstance(data, dict) else {}


def _persist(key: str, value: str) -> None:
    from mertkit.fileio import atomic_write

    data = _read_persisted()
    data[key] = value
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: handle.write(json.dumps(data)), mode="w")
    except OSError as err:  # a cache we cannot write only costs the hashing time again
        log.info("could not save the weights digest cache %s: %s", path, err)


def model_for_store(meta: Any, model: str | os.PathLike | None = None, *, device: str = "cpu") -> FamilyModel:
    """The model a store (its StoreMeta) was written with, loaded as extraction loaded it.

    `model` (a registry name, hub id or directory) is used when given; else the directory the
    store recorded, else its model's registry name. The weights must match the store's
    fingerprint. ExtractError (one line) when no candidate loads with the right weights.
    """
    from mertkit.extraction.engine import ExtractError
    from mertkit.extraction.runner import load_for_extraction
    from mertkit.models.checkpoint import CheckpointError
    from mertkit.models.registry import lookup

    candidates = [str(model)] if model is not None else _recorded_candidates(meta, lookup)
    if not candidates:
        raise ExtractError("the store does not record where its model came from (it was written from a model "
                           "built in memory): give --model")
    problems = []
    for candidate in candidates:
        try:
            loaded = load_for_extraction(candidate, device=device, dtype=meta.compute_dtype or "float32")
        except CheckpointError as err:
            problems.append(str(err))
            continue
        found = weights_fingerprint(loaded)
        if not meta.weights or found == meta.weights:
            return loaded
        problems.append(f"{candidate}: other weights than the store's ({found[:19]}... vs {meta.weights[:19]}...)")
    hint = "" if model is not None else "; give --model with the checkpoint the store was written with"
    raise ExtractError(f"cannot load the store's model: {' | '.join(problems)}{hint}")


def _recorded_candidates(meta: Any, lookup: Any) -> list[str]:
    found = []
    if meta.model_source and Path(meta.model_source).is_dir():
        found.append(meta.model_source)
    if lookup(meta.model) is not None:
        found.append(meta.model)
    if not found and meta.model_source:
        found.append(meta.model_source)  # gone: loading it names the missing folder
    return found


def embed_like_store(model: FamilyModel, meta: Any, audio: str | os.PathLike) -> np.ndarray:
    """Pooled [stored layers, width] features of one audio file, made with the store's layers,
    pooling, window, hop, compute dtype and normalisation."""
    from mertkit.extraction.engine import Extractor, ExtractOptions

    whole = meta.window is None
    options = ExtractOptions(layers=tuple(meta.layers), pool=meta.pooling, window=0.0 if whole else meta.window,
                             hop=None if whole else meta.hop, dtype=meta.compute_dtype or "float32")
    extractor = Extractor(model, options, do_normalize=meta.do_normalize)
    return np.asarray(extractor.extract_file(audio).hidden_states)
