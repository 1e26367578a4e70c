"""`mert search`: find the tracks in a feature store that sound most like a query.

The query is embedded with the model and pooling recorded in the store's metadata, so query
and stored vectors are comparable; ``--query-vector`` takes a precomputed [width] or
[L, width] ``.npy`` instead (no model needed).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

__all__ = ["search"]


def _load_query_vector(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"{path}: not a readable .npy array: {error}") from error


def _embed_query(store: object, audio: Path) -> np.ndarray:
    """Embed ``audio`` with the store's model, layers, pooling and window, so that the query is
    made exactly like the stored track vectors."""
    import mertkit
    from mertkit.extraction.engine import embed_file

    meta = store.meta  # type: ignore[attr-defined]
    model = mertkit.load(meta.model)
    vectors = embed_file(model, audio, layers=tuple(meta.layers), pool=meta.pooling, window=meta.window)
    return np.asarray(vectors)


@click.command("search")
@click.option(
    "--store",
    "store_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Feature store directory (written by the extraction).",
)
@click.argument(
    "query_audio",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--query-vector",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Precomputed query: .npy of shape [width] or [layers, width]; replaces QUERY_AUDIO.",
)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Hits to show.")
@click.option("--layer", type=int, default=None, help="Hidden-state index to compare [default: last stored].")
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "chunked", "faiss"]),
    default="auto",
    show_default=True,
    help="Search back-end (faiss needs mertkit[search]).",
)
@click.option("--split", default=None, help="Only search tracks of this split.")
def search(
    store_dir: Path,
    query_audio: Path | None,
    query_vector: Path | None,
    k: int,
    layer: int | None,
    method: str,
    split: str | None,
) -> None:
    """Print the K stored tracks most similar to QUERY_AUDIO: rank, cosine score, path."""
    import mertkit.store.search as search_module
    from mertkit import store as store_module

    if (query_audio is None) == (query_vector is None):
        raise click.UsageError("give exactly one of QUERY_AUDIO or --query-vector")
    try:
        store = store_module.open(store_dir)
        query = _load_query_vector(query_vector) if query_vector else _embed_query(store, query_audio)
        chosen_layer = store.meta.layers[-1] if layer is None else layer
        results = search_module.search(
            store, query, layer=chosen_layer, k=k, method=method, split=split
        )
    except (store_module.StoreError, search_module.SearchError, ImportError) as error:
        raise click.ClickException(str(error)) from error
    if not results:
        click.echo("no tracks in the store", err=True)
        return
    click.echo(search_module.format_results(results))
