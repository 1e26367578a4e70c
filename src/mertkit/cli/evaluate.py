"""``mert eval --model M [--model M2] --suite synth``: render (or reuse) the synthetic suite,
extract and cache features, probe every task for each model, its random initialisation and the
classic-feature baselines (MFCC / chroma / log-mel statistics on clip tasks, onset strength on
beat), and write a report into a new run folder OUT/<timestamp>/
(:mod:`mertkit.eval.suite_report`). The Markdown summary is printed at the end.

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
    BatchSize, FiniteFloat, LearningRates, Names, PositiveInt, Seeds, device_option, examples, install_hint,
    parse_baselines, quiet, verbosity,
)
from mertkit.eval.baselines import BASELINE_SCOPE, DEFAULT_BASELINES
from mertkit.synth.suite import DEFAULT_CLIPS_PER_TASK, default_clips

QUICK = {"clips": 40, "seeds": (0,), "lrs": (1e-3,), "epochs": 30, "random_init": 1}


def _parse_layers(value: str) -> tuple[int | str, ...]:
    layers = tuple(int(part) if part.isdigit() else part for part in Names.convert(value, None, None))
    bad = [layer for layer in layers if isinstance(layer, str) and layer not in ("all", "weighted", "conv1d")]
    if bad:
        raise click.BadParameter(f"expected layer indices, 'all', 'weighted' or 'conv1d', got {value!r}", param_hint="--layers")
    return layers


@click.command("eval", epilog=examples(
    "mert eval --quick",
    "mert bench-suite synth -o suite/ && mert eval --suite-dir suite/ -m MERT-v1-95M",
    "mert eval -m MERT-v1-95M -m MERT-v0 --tasks pitch,key -o runs/compare",
    "mert eval --model mertkit-tiny-mel --tasks pitch,key --layers all --seeds 0 -q",
))
@click.option("--model", "-m", "model_names", multiple=True,
              help="Registry name, hub id or checkpoint directory; repeat to compare models in one report. "
                   "Default: the shipped model (mertkit-tiny-mel).")
@click.option("--suite", type=click.Choice(["synth"]), default="synth", show_default=True, help="Benchmark suite.")
@click.option("--suite-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A suite rendered by `mert bench-suite synth -o DIR` (used as it is, with its seed; missing tasks "
                   "are rendered there). Default: OUT/suite/synth-seed<S>-clips<N>.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/eval"),
              show_default=True, help="Folder for the feature cache (OUT/features) and the run folders (OUT/<run>).")
@click.option("--run-name", default=None, help="Run folder name under OUT [default: the UTC start time, YYYYmmdd-HHMMSS].")
@click.option("--overwrite", is_flag=True, help="Replace the report of an existing run folder of the same name.")
@click.option("--tasks", type=Names, default="pitch,pitch_class,instrument,key,tempo,beat", show_default=True,
              help="Comma-separated: pitch, pitch_class, instrument, key, tempo, beat; chorale_key after `mert bench-suite chorales`.")
@click.option("--probe", "probe_kind", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True,
              help="Probe for the clip-level tasks.")
@click.option("--beat-probe", type=click.Choice(["linear", "mlp"]), default="linear", show_default=True,
              help="Probe for the frame-level beat task (at most 30 epochs, patience 5; an MLP there takes hours on CPU).")
@click.option("--layers", default="all,weighted", show_default=True,
              help="Model layer settings: 'all' (sweep, best layer), 'weighted', 'conv1d', or indices.")
@click.option("--seeds", type=Seeds, default="0,1,2", show_default=True, help="Probe seeds (mean ± std over them).")
@click.option("--random-init", type=click.IntRange(min=0), default=3, show_default=True,
              help="Random-initialisation seeds of each model's architecture, probed as a floor (0: none).")
@click.option("--lrs", type=LearningRates, default="1e-4,1e-3,1e-2", show_default=True, help="Probe learning-rate grid.")
@click.option("--epochs", type=PositiveInt, default=100, show_default=True, help="Maximum probe epochs.")
@click.option("--patience", type=PositiveInt, default=10, show_default=True, help="Early-stopping patience.")
@click.option("--baselines", default=",".join(DEFAULT_BASELINES), show_default=True,
              help=f"Baselines to probe too, or 'none'. Each serves its tasks only: {BASELINE_SCOPE}.")
@click.option("--clips", type=click.IntRange(min=10), default=None,
              help=f"Clips per suite task [default: {DEFAULT_CLIPS_PER_TASK}, pitch {default_clips('pitch')}; "
                   f"--quick: {QUICK['clips']}].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Suite seed (the same seed renders the same audio) [default: the --suite-dir suite's, else 0].")
@click.option("--window", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Extraction window in seconds; 0 = the whole clip in one pass.")
@click.option("--batch-size", type=BatchSize, default=8, show_default=True, help="Extraction batch size.")
@device_option("Where the model runs for extraction.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "auto"]), default="float32", show_default=True)
@click.option("--quick", is_flag=True,
              help=f"Smoke run: {QUICK['clips']} clips per task, seed 0 only, lr 1e-3, {QUICK['epochs']} epochs, "
                   f"{QUICK['random_init']} random init (explicit options win).")
@verbosity
@click.pass_context
def evaluate(ctx: click.Context, model_names: tuple[str, ...], suite: str, suite_dir: Path | None, out_dir: Path,
             run_name: str | None, overwrite: bool, tasks: tuple[str, ...], probe_kind: str, beat_probe: str, layers: str,
             seeds: tuple[int, ...], random_init: int, lrs: tuple[float, ...], epochs: int, patience: int, baselines: str,
             clips: int | None, seed: int | None, window: float, batch_size: int, device: str, dtype: str,
             quick: bool) -> None:
    """Extract, cache and probe models on a benchmark suite, beside their random initialisation
    and hand-crafted baselines; the report goes into a new run folder."""
    from mertkit.eval.suite_runner import SuiteRunError, run_suite
    from mertkit.models.hubert.config import ConfigError

    if quick:
        seeds, lrs, epochs, random_init = (_quick(ctx, name, value) for name, value in
                                           (("seeds", seeds), ("lrs", lrs), ("epochs", epochs), ("random_init", random_init)))
        # A rendered suite given with --suite-dir is used as it is: --quick does not resize it.
        clips = clips or (None if suite_dir is not None else QUICK["clips"])
    suite_dir = suite_dir or out_dir / "suite" / f"{suite}-seed{seed or 0}-clips{clips or 'default'}"
    log = logging.getLogger("mertkit.eval").info  # -q silences it
    started = time.perf_counter()
    try:
        run = run_suite(
            list(model_names) or [None], suite_dir, out_dir, tasks=tasks, probe=probe_kind, beat_probe=beat_probe,
            layers=_parse_layers(layers), seeds=seeds, lrs=lrs, max_epochs=epochs, patience=patience,
            baselines=parse_baselines(baselines), seed=seed, clips_per_task=clips, window=window, batch_size=batch_size,
            dtype=dtype, device=device, random_init=random_init, run_name=run_name, overwrite=overwrite,
            progress=not quiet(), log=log,
        )
    except (SuiteRunError, ConfigError) as error:  # ConfigError: a --model whose config.json is refused
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    for info in run.models:
        if info.random_weights:
            click.echo(f"NOTE: {info.name} has RANDOM weights; its numbers are a floor, not a result.", err=True)
    for kind, path in run.paths.items():
        click.echo(f"{kind}: {path}", err=True)
    click.echo(f"done in {time.perf_counter() - started:.0f} s", err=True)
    click.echo(run.table + run.paired)


def _quick(ctx: click.Context, name: str, value: object) -> object:
    """The --quick value of an option the user did not set explicitly."""
    explicit = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    return value if explicit else QUICK[name]
