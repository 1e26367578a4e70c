"""`mert demo`: extraction on the shipped example audio, offline."""
from __future__ import annotations

import time

import click


@click.command()
@click.option("--out", "-o", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
def demo(out_dir: str) -> None:
    """Extract features from the shipped example audio with the offline default model."""
    from mertkit.models.checkpoint import load
    from mertkit.cli.demo_assets import EXAMPLE_AUDIO, asset, demo_model_dir
    from mertkit.extraction.engine import ExtractOptions
    from mertkit.extraction.runner import load_features, run_extract

    model_dir, is_random = demo_model_dir()
    if is_random:
        click.echo("NOTE: no model ships with this version yet; using a small MERT-v1-layout model with RANDOM "
                   f"weights built on the fly at {model_dir} (the pipeline is real, the numbers are not).")
    model = load(model_dir)
    audio = asset(EXAMPLE_AUDIO)
    for pool in ("none", "mean"):
        start = time.perf_counter()
        report = run_extract(model, [audio], f"{out_dir}/{pool}", ExtractOptions(pool=pool), progress=False)
        if not report.ok:
            raise click.ClickException(f"extraction failed: {report.failed}")
        tensors, meta = load_features(f"{out_dir}/{pool}/{audio.name}.safetensors")
        seconds = time.perf_counter() - start
        click.echo(f"pool={pool}: hidden_states {list(tensors['hidden_states'].shape)} "
                   f"(layers, {'frames, ' if pool == 'none' else ''}width) in {seconds:.2f} s -> {out_dir}/{pool}/")
    click.echo(f"model={meta['model']} sample_rate={meta['sample_rate']} frame_rate={meta['frame_rate']} "
               f"window={meta['window']} s layers={meta['layers']}")
