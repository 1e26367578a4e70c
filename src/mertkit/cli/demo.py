"""`mert demo`: extraction on the shipped example audio, offline."""
from __future__ import annotations

import time

import click

from mertkit.cli.options import device_option, examples, model_option, out_option, verbosity


@click.command(epilog=examples("mert demo", "mert demo -o out/demo --model MERT-v1-95M"))
@out_option("Output folder.", default="out/demo")
@model_option(required=False, help="Model to run [default: the shipped model, mertkit-tiny-mel].")
@device_option()
@verbosity
def demo(out: str, model: str | None, device: str) -> None:
    """Extract features from the shipped example audio with the offline default model."""
    from mertkit.models.shipped import EXAMPLE_AUDIO, asset, demo_model_dir
    from mertkit.extraction.engine import ExtractOptions
    from mertkit.extraction.runner import load_features, run_extract
    from mertkit.models.checkpoint import CheckpointError, ConfigError, load

    if model is None:
        model, is_random = demo_model_dir()
        if is_random:
            click.echo("NOTE: no model ships with this version yet; using a small MERT-v1-layout model with RANDOM "
                       f"weights built on the fly at {model} (the pipeline is real, the numbers are not).")
    try:
        loaded = load(model, device=device)
    except (CheckpointError, ConfigError) as err:
        raise click.ClickException(str(err)) from err
    audio = asset(EXAMPLE_AUDIO)
    for pool in ("none", "mean"):
        start = time.perf_counter()
        report = run_extract(loaded, [audio], f"{out}/{pool}", ExtractOptions(pool=pool), progress=False)
        if not report.ok:
            raise click.ClickException(f"extraction failed: {report.failed}")
        tensors, meta = load_features(f"{out}/{pool}/{audio.name}.safetensors")
        seconds = time.perf_counter() - start
        click.echo(f"pool={pool}: hidden_states {list(tensors['hidden_states'].shape)} "
                   f"(layers, {'frames, ' if pool == 'none' else ''}width) in {seconds:.2f} s -> {out}/{pool}/")
    click.echo(f"model={meta['model']} sample_rate={meta['sample_rate']} frame_rate={meta['frame_rate']} "
               f"window={meta['window']} s layers={meta['layers']}")
