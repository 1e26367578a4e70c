"""Embed a folder of audio into a feature store, then find the tracks that sound most like a query.

    python examples/catalog_search.py AUDIO_DIR STORE_DIR [--query FILE] [--model NAME_OR_DIR] [-k 5] [--layer K]

The Python side of `mert extract AUDIO_DIR --store STORE_DIR --pool mean` followed by
`mert search`. Without --model it uses the small model mertkit ships (works offline); a rerun
skips the tracks already in the store. Explore the result in a browser with
`mert serve --store STORE_DIR --model NAME_OR_DIR`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mertkit
from mertkit.models.shipped import demo_model_dir
from mertkit.extraction.engine import ExtractOptions
from mertkit.extraction.provenance import embed_like_store
from mertkit.extraction.runner import StoreOptions, run_extract
from mertkit.store import open as open_store
from mertkit.store.search import SearchIndex, format_results


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, help="folder of audio files (searched recursively)")
    parser.add_argument("store", type=Path, help="feature store directory (created or extended)")
    parser.add_argument("--query", type=Path, help="audio file to search with [default: the first stored track]")
    parser.add_argument("--model", help="registry name, hub id or checkpoint directory [default: the shipped model]")
    parser.add_argument("-k", type=int, default=5, help="how many tracks to list")
    parser.add_argument("--layer", type=int, help="hidden state to compare [default: the last one]")
    parser.add_argument("--window", type=float, default=None, help="window seconds (0: whole file) [default: 5 s]")
    args = parser.parse_args(argv)

    model = mertkit.load(args.model or demo_model_dir()[0])
    # One pooled vector per track (and per window) for every hidden state, into the store.
    report = run_extract(model, [args.audio], None, ExtractOptions(pool="mean", window=args.window),
                         progress=False, store=StoreOptions(args.store))
    print(f"{len(report.done)} tracks embedded, {len(report.skipped)} already stored, {len(report.failed)} failed")
    for path, reason in report.failed:
        print(f"  {path}: {reason}")

    store = open_store(args.store)
    layer = store.meta.layers[-1] if args.layer is None else args.layer
    index = SearchIndex(store, layer=layer)  # build once, ask many queries
    query = args.query or Path(store.keys()[0][0])
    # The query is embedded exactly like the stored tracks (same layers, pooling and windows).
    hits = index.search(embed_like_store(model, store.meta, query), k=args.k)
    print(f"tracks nearest to {query.name} (layer {layer}, cosine):")
    print(format_results(hits))
    return hits


if __name__ == "__main__":
    main()
