"""`mert extract INPUT... --model M --out DIR`."""
from __future__ import annotations

import sys

import click


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--model", "-m", "model_name", required=True, help="Registry name (e.g. MERT-v1-95M), hub id, or checkpoint directory.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder.")
@click.option("--layers", default="all", show_default=True, help="'all' or comma-separated hidden-state indices, e.g. 0,6,12.")
@click.option("--pool", type=click.Choice(["none", "mean", "max"]), default="none", show_default=True)
@click.option("--window", type=float, default=None, help="Window seconds; 0 = whole file in one pass. Default: the model's pre-training context (5 s).")
@click.option("--hop", type=float, default=None, help="Hop between windows in seconds (default: the window, no overlap).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--revision", default=None, help="Hub revision (a pinned one is used for registry names where known).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(inputs, model_name, out_dir, layers, pool, window, hop, batch_size, device, dtype, revision, quiet) -> None:
    """Extract hidden states from audio files or folders (recursed) into DIR/<file>.safetensors."""
    from mertkit.checkpoint import CheckpointError, load
    from mertkit.config import ConfigError
    from mertkit.extract import ExtractError, ExtractOptions, parse_layers
    from mertkit.runner import run_extract

    try:
        options = ExtractOptions(layers=parse_layers(layers), pool=pool, window=window, hop=hop,
                                 batch_size=batch_size, dtype=dtype)
        model = load(model_name, revision, device=_device(device))
        report = run_extract(model, inputs, out_dir, options, progress=not quiet)
    except (CheckpointError, ConfigError, ExtractError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"{len(report.done)} extracted, {len(report.skipped)} already done, {len(report.failed)} failed -> {out_dir}")
    for path, reason in report.failed:
        click.echo(f"FAILED {path}: {reason}", err=True)
    if not report.ok:
        sys.exit(1)


def _device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {name}: CUDA is not available on this machine")
    return name
