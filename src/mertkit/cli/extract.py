"""`mert extract INPUT... --model M --out DIR [--store STORE]`."""
from __future__ import annotations

import sys

import click

from mertkit.cli.options import (
    BatchSize, FiniteFloat, PositiveInt, device_option, examples, max_duration_value, quiet, verbosity,
)


@click.command(epilog=examples(
    "mert extract songs/ --model MERT-v1-95M -o feats/",
    "mert extract a.mp3 --model mertkit-tiny-mel -o feats/ --layers 0,3 --pool mean",
    "mert extract catalog/ --model MERT-v1-95M --store feats.parquet/ --pool mean",
))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", "model_name", required=True, help="Registry name (e.g. MERT-v1-95M), hub id, or checkpoint directory.")
@click.option("--out", "-o", "out_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Output folder for per-file safetensors.")
@click.option("--store", "store_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Parquet feature store to add pooled vectors to (one track row + one row per window). "
                   "Needs --pool mean|max and pyarrow (mertkit[store]).")
@click.option("--store-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage dtype of the vectors in --store.")
@click.option("--split", default=None, help="Value of the store's split column for these tracks (e.g. train).")
@click.option("--shard-rows", type=PositiveInt, default=1024, show_default=True, help="Rows per committed store shard.")
@click.option("--layers", default="all", show_default=True, help="'all' or comma-separated hidden-state indices, e.g. 0,6,12.")
@click.option("--pool", type=click.Choice(["none", "mean", "max"]), default="none", show_default=True)
@click.option("--window", type=FiniteFloat(min=0), default=None, help="Window seconds; 0 = whole file in one pass. Default: the model's pre-training context (5 s).")
@click.option("--hop", type=FiniteFloat(min=0, min_open=True), default=None, help="Hop between windows in seconds (default: the window less the samples after its last whole frame, so frames form an even grid across windows).")
@click.option("--batch-size", type=BatchSize, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--workers", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Processes decoding and resampling audio while the model runs (0 = in the main process). "
                   "Worth it when the model runs on a GPU or on fewer threads than there are cores; on a CPU "
                   "whose cores all run the model, inline decoding is faster.")
@device_option()
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "auto"]), default="float32",
              show_default=True,
              help="Compute dtype. float32 is exact; auto: bfloat16 where this device runs it natively (per-layer "
                   "cosine >= 0.999 to float32), else float32. The one used is recorded in the outputs.")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model (CUDA only; worth it for long runs).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine; ray: actors on a Ray cluster (needs --store and mertkit[ray]).")
@click.option("--address", default=None, help="Ray cluster address (--engine ray); default: start a local one.")
@click.option("--actors", type=PositiveInt, default=None,
              help="Model actors (--engine ray). Default: one per GPU, else one per 4 CPU cores.")
@click.option("--revision", default=None, help="Hub revision (a pinned one is used for registry names where known).")
@click.option("--max-duration", default=None, callback=lambda c, p, v: max_duration_value(v),
              help="Longest input in seconds, checked from the file's header before decoding "
                   "(default: 14400, 4 h); 0 or 'none': no limit.")
@verbosity
def extract(inputs, model_name, out_dir, store_dir, store_dtype, split, shard_rows, layers, pool, window, hop,
            batch_size, workers, device, dtype, use_compile, engine, address, actors, revision,
            max_duration) -> None:
    """Extract hidden states from audio files or folders (recursed) into DIR/<file>.safetensors
    and/or pooled vectors into a Parquet feature store."""
    from mertkit.models.checkpoint import CheckpointError
    from mertkit.models.hubert.config import ConfigError
    from mertkit.extraction.engine import ExtractError, ExtractOptions, parse_layers
    from mertkit.store.parquet import StoreError

    if out_dir is None and store_dir is None:
        raise click.UsageError("give --out DIR, --store DIR, or both")
    try:
        options = ExtractOptions(layers=parse_layers(layers), pool=pool, window=window, hop=hop,
                                 batch_size=batch_size, dtype=dtype)
        if engine == "ray":
            report = _run_ray(model_name, inputs, out_dir, store_dir, options, address, actors, device, revision,
                              split, store_dtype, max_duration)
        else:
            report = _run_local(model_name, inputs, out_dir, options, store_dir, store_dtype, split, shard_rows,
                               workers, device, use_compile, revision, max_duration)
    except (CheckpointError, ConfigError, ExtractError, StoreError) as err:
        raise click.ClickException(str(err)) from err
    targets = " and ".join(t for t in (out_dir, store_dir) if t)
    click.echo(f"{len(report.done)} extracted, {len(report.skipped)} already done, {len(report.failed)} failed -> {targets}")
    for path, reason in report.failed:
        click.echo(f"FAILED {path}: {reason}", err=True)
    if not report.ok:
        sys.exit(1)


def _run_local(model_name, inputs, out_dir, options, store_dir, store_dtype, split, shard_rows, workers, device,
               use_compile, revision, max_duration):
    from mertkit.extraction.runner import StoreOptions, check_output_dir, load_for_extraction, run_extract
    from mertkit.store.parquet import check_writable

    store = None
    if store_dir is not None:
        _require_pyarrow()
        store = StoreOptions(store_dir, dtype=store_dtype, split=split, rows_per_shard=shard_rows)
        check_writable(store_dir)
    if out_dir is not None:
        check_output_dir(out_dir)  # before the model loads: a read-only or bad folder is one line
    # Half precision runs the weights natively (the fused CPU kernels need no autocast).
    model = load_for_extraction(model_name, revision, device=device, dtype=options.dtype)
    return run_extract(model, inputs, out_dir, options, progress=not quiet(), workers=workers, store=store,
                       compile=use_compile, max_duration=max_duration)


def _run_ray(model_name, inputs, out_dir, store_dir, options, address, actors, device, revision, split, store_dtype,
             max_duration):
    if store_dir is None:
        raise click.UsageError("--engine ray writes to a feature store: give --store DIR")
    if out_dir is not None:
        raise click.UsageError("--engine ray writes only the feature store; drop --out")
    try:
        import ray  # noqa: F401 - only checks that the extra is installed
        from mertkit.extraction.ray_engine import run_ray_extract
    except ImportError as err:
        raise click.ClickException(f"--engine ray needs ray: pip install 'mertkit[ray]' ({err})") from err
    return run_ray_extract(model_name, list(inputs), store_dir, options, address=address, num_actors=actors,
                           device=device, revision=revision, split=split, store_dtype=store_dtype,
                           max_duration=max_duration, progress=not quiet())


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401 - only checks that the extra is installed
    except ImportError as err:
        raise click.ClickException("--store needs pyarrow: pip install 'mertkit[store]'") from err
