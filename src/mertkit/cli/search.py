"""`mert search`: find the tracks in a feature store that sound most like a query.

The query audio is embedded with the model the store was written with (the checkpoint
directory the store recorded, else its registry name, or `--model`; the weights must match the
store's fingerprint), with the store's layers, pooling, window, compute dtype and
normalisation, so query and stored vectors are comparable. ``--query-vector`` takes a
precomputed [width] or [L, width] ``.npy`` instead (no model needed).
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from mertkit.cli.options import device_option, examples, install_hint, model_option, verbosity

__all__ = ["search"]


def _load_query_vector(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"{path}: not a readable .npy array: {error}") from error


def _embed_query(store: object, audio: Path, model: str | None, device: str) -> np.ndarray:
    from mertkit.extraction.provenance import embed_like_store, model_for_store

    meta = store.meta  # type: ignore[attr-defined]
    return embed_like_store(model_for_store(meta, model, device=device), meta, audio)


@click.command("search", epilog=examples(
    "mert search --store feats.parquet/ query.mp3 -k 10 --layers 7",
    "mert search --store feats.parquet/ query.mp3 --json",
))
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
@click.option("--layers", "layer", type=int, default=None,
              help="The hidden-state index to compare [default: the last stored].")
@click.option("--layer", "layer_alias", type=int, default=None, hidden=True)  # the old spelling, deprecated
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "chunked", "faiss"]),
    default="auto",
    show_default=True,
    help="Search back-end (faiss needs mertkit[search]).",
)
@click.option("--split", default=None, help="Only search tracks of this split.")
@model_option(required=False, help="Model to embed QUERY_AUDIO with [default: the one the store records]; its "
                                    "weights must be the store's.")
@device_option("Where QUERY_AUDIO is embedded.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@verbosity
def search(
    store_dir: Path,
    query_audio: Path | None,
    query_vector: Path | None,
    k: int,
    layer: int | None,
    layer_alias: int | None,
    method: str,
    split: str | None,
    model: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Print the K stored tracks most similar to QUERY_AUDIO: rank, cosine score, path."""
    import mertkit.store.search as search_module
    from mertkit import store as store_module
    from mertkit.audio import AudioError
    from mertkit.extraction.engine import ExtractError

    if (query_audio is None) == (query_vector is None):
        raise click.UsageError("give exactly one of QUERY_AUDIO or --query-vector")
    if layer_alias is not None:
        click.echo("--layer is deprecated: use --layers", err=True)
        layer = layer if layer is not None else layer_alias
    try:
        store = store_module.open(store_dir)
        chosen_layer = store.meta.layers[-1] if layer is None else layer
        query = (_load_query_vector(query_vector) if query_vector
                 else _embed_query(store, query_audio, model, device))
        results = search_module.search(
            store, query, layer=chosen_layer, k=k, method=method, split=split
        )
    except (store_module.StoreError, search_module.SearchError, ExtractError, AudioError) as error:
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    if as_json:
        hits = [{"rank": rank, "score": score, "path": path} for rank, (path, score) in enumerate(results, 1)]
        click.echo(json.dumps({"store": str(store_dir), "layer": chosen_layer, "hits": hits}, indent=1))
        return
    if not results:
        click.echo("no tracks in the store", err=True)
        return
    click.echo(search_module.format_results(results, header=True))
