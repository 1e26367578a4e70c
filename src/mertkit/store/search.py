"""Cosine-similarity search over the pooled track vectors of a feature store.

Three back-ends, same answers up to float rounding:

- ``exact``: load one layer for all tracks, normalise, one matrix-vector product. For stores
  that fit in memory comfortably (the default up to ``LARGE_STORE_ROWS`` tracks).
- ``faiss``: an exact inner-product index (``faiss.IndexFlatIP``) over the normalised vectors;
  faiss uses multi-threaded BLAS and the built :class:`SearchIndex` can answer many queries.
  Needs ``pip install 'mertkit[search]'``.
- ``chunked``: exact, reading one shard at a time and keeping a running top-k, so memory stays
  at one shard's worth whatever the store's size.

``method="auto"`` picks exact for small stores and faiss (if installed, else chunked) for large.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from mertkit.store.parquet import FeatureStore

__all__ = ["LARGE_STORE_ROWS", "METHODS", "SearchError", "SearchIndex", "format_results", "search"]

LARGE_STORE_ROWS = 100_000
METHODS = ("auto", "exact", "chunked", "faiss")
# A vector shorter than this has no direction; its cosine score is defined as 0.
NORM_EPSILON = 1e-12


class SearchError(ValueError):
    """Bad query, bad parameters, or a store that cannot be searched."""


def _require_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("index search needs faiss: pip install 'mertkit[search]'") from error
    return faiss


def _faiss_available() -> bool:
    try:
        _require_faiss()
    except ImportError:
        return False
    return True


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, NORM_EPSILON)).astype(np.float32)


def _query_for_layer(store: FeatureStore, query: Any, layer: int) -> np.ndarray:
    """Reduce a [width] or [L, width] query to the unit vector of ``layer``.

    An [L, width] query is indexed by position in ``store.meta.layers`` when L matches the
    stored layer count (what an extraction with the store's settings returns), else by
    hidden-state index when L is the model's full hidden-state count.
    """
    meta = store.meta
    if layer not in meta.layers:
        raise SearchError(f"{store.root}: layer {layer} is not stored; stored: {list(meta.layers)}")
    vectors = np.asarray(query, dtype=np.float32)
    if vectors.ndim == 2:
        if vectors.shape[0] == len(meta.layers):
            vectors = vectors[meta.layers.index(layer)]
        elif vectors.shape[0] == meta.num_layers + 1:
            vectors = vectors[layer]
        else:
            raise SearchError(
                f"query has {vectors.shape[0]} layers; expected {len(meta.layers)} (the stored "
                f"layers) or {meta.num_layers + 1} (all hidden states)"
            )
    if vectors.shape != (meta.hidden_size,):
        raise SearchError(
            f"query vector has shape {vectors.shape}, expected [{meta.hidden_size}] or [L, {meta.hidden_size}]"
        )
    if not np.isfinite(vectors).all():
        raise SearchError("query vector contains NaN or infinity")
    norm = float(np.linalg.norm(vectors))
    if norm < NORM_EPSILON:
        raise SearchError("query vector is all zeros: cosine similarity is undefined")
    return vectors / norm


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties broken by lower index."""
    if len(scores) > k:
        # argpartition then a full sort of the kept candidates; keep every tie of the k-th score
        # so that the lower-index tie-break below is exact.
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.arange(len(scores))
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]


class SearchIndex:
    """Track vectors of one layer prepared for repeated cosine queries."""

    def __init__(
        self,
        store: FeatureStore | str | os.PathLike[str],
        *,
        layer: int,
        method: str = "auto",
        split: str | None = None,
    ) -> None:
        if method not in METHODS:
            raise SearchError(f"method must be one of {METHODS}, got {method!r}")
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.layer = layer
        self.split = split
        if layer not in self.store.meta.layers:
            raise SearchError(
                f"{self.store.root}: layer {layer} is not stored; "
                f"stored: {list(self.store.meta.layers)}"
            )
        self.method = self._resolve_method(method)
        self._paths: list[str] = []
        self._vectors: np.ndarray | None = None
        self._faiss_index: Any = None
        if self.method != "chunked":
            self._load()

    def _resolve_method(self, method: str) -> str:
        if method == "faiss":
            _require_faiss()  # raise the install hint now, not after loading everything
            return method
        if method != "auto":
            return method
        if len(self.store) <= LARGE_STORE_ROWS:
            return "exact"
        return "faiss" if _faiss_available() else "chunked"

    def _load(self) -> None:
        vectors, self._paths = self.store.load(layer=self.layer, split=self.split)
        self._vectors = _normalise_rows(vectors)
        if self.method == "faiss":
            faiss = _require_faiss()
            self._faiss_index = faiss.IndexFlatIP(self._vectors.shape[1])
            self._faiss_index.add(self._vectors)

    def search(self, query_vectors: Any, *, k: int = 10) -> list[tuple[str, float]]:
        """The k most similar tracks as (path, cosine score), best first."""
        if k <= 0:
            raise SearchError(f"k must be positive, got {k}")
        query = _query_for_layer(self.store, query_vectors, self.layer)
        if self.method == "chunked":
            return self._search_chunked(query, k)
        if self.method == "faiss":
            return self._search_faiss(query, k)
        scores = self._vectors @ query
        return [(self._paths[i], float(scores[i])) for i in _top_k(scores, k)]

    def _search_faiss(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        k = min(k, len(self._paths))
        if k == 0:
            return []
        scores, indices = self._faiss_index.search(query[None, :].astype(np.float32), k)
        return [(self._paths[int(i)], float(s)) for s, i in zip(scores[0], indices[0]) if i >= 0]

    def _search_chunked(self, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        best_scores = np.zeros(0, np.float32)
        best_paths: list[str] = []
        for vectors, paths in self.store.iter_layer(layer=self.layer, split=self.split):
            scores = np.concatenate([best_scores, _normalise_rows(vectors) @ query])
            merged_paths = [*best_paths, *paths]
            keep = _top_k(scores, k)
            best_scores = scores[keep]
            best_paths = [merged_paths[i] for i in keep]
        return [(path, float(score)) for path, score in zip(best_paths, best_scores)]


def search(
    store: FeatureStore | str | os.PathLike[str],
    query_vectors: Any,
    *,
    layer: int,
    k: int = 10,
    method: str = "auto",
    split: str | None = None,
) -> list[tuple[str, float]]:
    """Cosine top-k over the track-level vectors of ``layer``: [(path, score)], best first.

    ``query_vectors`` is [width] or [L, width] (see :func:`_query_for_layer`). Build a
    :class:`SearchIndex` instead when asking many queries of the same store.
    """
    return SearchIndex(store, layer=layer, method=method, split=split).search(query_vectors, k=k)


def format_results(results: Iterable[tuple[str, float]], *, header: bool = False) -> str:
    """Tab-separated rank, score and path: one line per hit, after a header line if asked."""
    lines = ["rank\tscore\tpath"] if header else []
    lines += [f"{rank}\t{score:.6f}\t{path}" for rank, (path, score) in enumerate(results, 1)]
    return "\n".join(lines)
