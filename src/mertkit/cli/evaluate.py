"""``mert eval --model M --suite synth``: render the synthetic suite, extract and cache features,
probe every task for the model and the MFCC / chroma baselines, and write results.json,
results.md and layers.png. The Markdown summary is printed at the end.

Without ``--model`` the offline demo model is used (the model shipped in
``mertkit/assets/model`` when there is one, else a small checkpoint with RANDOM weights: the
output says so, and its numbers are a floor, not a result).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from mertkit.cli.options import (
    BatchSize, CommaList, FiniteFloat, LearningRates, PositiveInt, Seeds, device_option, examples, install_hint, quiet,
    verbosity,
)
from mertkit.synth.suite import DEFAULT_CLIPS_PER_TASK

QUICK = {"clips": 40, "seeds": (0,), "lrs": (1e-3,), "epochs": 30}
NAMES = CommaList(click.STRING)


def _parse_layers(value: str) -> tuple[int | str, ...]:
    layers = tuple(int(part) if part.isdigit() else part for part in NAMES.convert(value, None, None))
    bad = [layer for layer in layers if isinstance(layer, str) and layer not in ("all", "weighted", "conv1d")]
    if bad:
        raise click.BadParameter(f"expected layer indices, 'all', 'weighted' or 'conv1d', got {value!r}", param_hint="--layers")
    return layers


def _parse_baselines(value: str) -> tuple[str, ...]:
    return () if value.strip().lower() == "none" else NAMES.convert(value, None, None)


@click.command("eval", epilog=examples(
    "mert eval --quick",
    "mert eval --model MERT-v1-95M --suite synth -o runs/eval-95m",
    "mert eval --model mertkit-tiny-synth --tasks pitch,key --layers all --seeds 0 -q",
))
@click.option("--model", "-m", "model_name", default=None,
              help="Registry name, hub id or checkpoint directory. Default: the shipped model (mertkit-tiny-synth).")
@click.option("--suite", type=click.Choice(["synth"]), default="synth", show_default=True, help="Benchmark suite.")
@click.option("--suite-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the suite is (rendered there when missing). Default: OUT/suite/synth-seed<S>-clips<N>.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/eval-synth"),
              show_default=True, help="Folder for the feature cache, results.json, results.md and layers.png.")
@click.option("--tasks", type=NAMES, default="pitch,instrument,key,tempo,beat", show_default=True,
              help="Comma-separated: pitch, instrument, key, tempo, beat.")
@click.option("--probe", "probe_kind", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True,
              help="Probe for the clip-level tasks.")
@click.option("--beat-probe", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True,
              help="Probe for the frame-level beat task (at most 30 epochs, patience 5; an MLP there takes hours on CPU).")
@click.option("--layers", default="all,weighted", show_default=True,
              help="Model layer settings: 'all' (sweep, best layer), 'weighted', 'conv1d', or indices.")
@click.option("--seeds", type=Seeds, default="0,1,2", show_default=True, help="Probe seeds (mean ± std over them).")
@click.option("--lrs", type=LearningRates, default="1e-4,1e-3,1e-2", show_default=True, help="Probe learning-rate grid.")
@click.option("--epochs", type=PositiveInt, default=100, show_default=True, help="Maximum probe epochs.")
@click.option("--patience", type=PositiveInt, default=10, show_default=True, help="Early-stopping patience.")
@click.option("--baselines", default="mfcc,chroma", show_default=True, help="Baselines to probe too, or 'none'.")
@click.option("--clips", type=click.IntRange(min=10), default=None,
              help=f"Clips per suite task [default: {DEFAULT_CLIPS_PER_TASK}; --quick: {QUICK['clips']}].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Suite seed (the same seed renders the same audio).")
@click.option("--window", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Extraction window in seconds; 0 = the whole clip in one pass.")
@click.option("--batch-size", type=BatchSize, default=8, show_default=True, help="Extraction batch size.")
@device_option("Where the model runs for extraction.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "auto"]), default="float32", show_default=True)
@click.option("--quick", is_flag=True,
              help=f"Smoke run: {QUICK['clips']} clips per task, seed 0 only, lr 1e-3, {QUICK['epochs']} epochs "
                   "(explicit options win).")
@verbosity
@click.pass_context
def evaluate(ctx: click.Context, model_name: str | None, suite: str, suite_dir: Path | None, out_dir: Path,
             tasks: tuple[str, ...], probe_kind: str, beat_probe: str, layers: str, seeds: tuple[int, ...],
             lrs: tuple[float, ...], epochs: int, patience: int, baselines: str, clips: int | None, seed: int,
             window: float, batch_size: int, device: str, dtype: str, quick: bool) -> None:
    """Extract, cache and probe a model on a benchmark suite, next to hand-crafted baselines."""
    from mertkit.eval.suite_runner import SuiteRunError, run_suite
    from mertkit.models.hubert.config import ConfigError

    if quick:
        seeds, lrs, epochs = (_quick(ctx, name, value) for name, value in (("seeds", seeds), ("lrs", lrs), ("epochs", epochs)))
    clips = clips or (QUICK["clips"] if quick else DEFAULT_CLIPS_PER_TASK)
    suite_dir = suite_dir or out_dir / "suite" / f"{suite}-seed{seed}-clips{clips}"
    log = logging.getLogger("mertkit.eval").info  # -q silences it
    started = time.perf_counter()
    try:
        run = run_suite(
            model_name, suite_dir, out_dir, tasks=tasks, probe=probe_kind, beat_probe=beat_probe,
            layers=_parse_layers(layers), seeds=seeds, lrs=lrs,
            max_epochs=epochs, patience=patience, baselines=_parse_baselines(baselines), seed=seed,
            clips_per_task=clips, window=window, batch_size=batch_size, dtype=dtype, device=device,
            progress=not quiet(), log=log,
        )
    except (SuiteRunError, ConfigError) as error:  # ConfigError: a --model whose config.json is refused
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    if run.model.random_weights:
        click.echo("NOTE: the model has RANDOM weights; its numbers are a floor, not a result.", err=True)
    for kind, path in run.paths.items():
        click.echo(f"{kind}: {path}", err=True)
    click.echo(f"done in {time.perf_counter() - started:.0f} s", err=True)
    click.echo(run.table)


def _quick(ctx: click.Context, name: str, value: object) -> object:
    """The --quick value of an option the user did not set explicitly."""
    explicit = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    return value if explicit else QUICK[name]
