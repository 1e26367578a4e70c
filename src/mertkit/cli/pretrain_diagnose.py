"""`mert pretrain-diagnose`: is a pre-training run learning music? (see `mertkit.pretrain.diagnostics`)

    mert pretrain-diagnose RUN_DIR --suite SUITE [--audio A --labels L] [--tasks T,..] [--updates N,..] [-o OUT]

Writes OUT/diagnostics.json (default OUT: RUN_DIR/diagnostics) with the label statistics
per codebook (with --labels), each loss term's gradient share at every snapshot (with
--audio and --labels) and the probe curve over the snapshots (with --suite), with the last
snapshot's change from the first per task (paired 95 % bootstrap interval over the test clips:
rises / falls / within noise), plus OUT/probe_curve.png.
"""
from __future__ import annotations

from pathlib import Path

import click

from mertkit.cli.options import CommaList, Names, PositiveInt, examples, out_option, quiet, verbosity

__all__ = ["pretrain_diagnose"]


@click.command("pretrain-diagnose", epilog=examples(
    "mert pretrain-diagnose run/ --suite suite/ --audio corpus/ --labels labels/",
    "mert pretrain-diagnose run/ --suite suite_big/ --tasks pitch --updates 0,10000 -o diag_big/"))
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--suite", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Benchmark suite folder (`mert bench-suite`) for the probe curve.")
@click.option("--audio", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The run's audio folder (gradient shares are measured on its first batches).")
@click.option("--labels", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The run's label folder.")
@click.option("--batches", type=PositiveInt, default=2, show_default=True, help="Batches for the gradient shares.")
@click.option("--tasks", type=Names, default=None,
              help="Comma-separated probe-curve tasks: pitch, pitch_class, instrument, key [every one the suite has].")
@click.option("--updates", type=CommaList(click.IntRange(min=0)), default=None,
              help="Comma-separated updates whose snapshots to use [all of them]; the curve's verdict compares "
                   "the first with the last.")
@out_option("Output folder [RUN_DIR/diagnostics].", required=False, path_type=Path)
@verbosity
def pretrain_diagnose(run_dir: Path, suite: Path | None, audio: Path | None, labels: Path | None, batches: int,
                      tasks: tuple[str, ...] | None, updates: tuple[int, ...] | None, out: Path | None) -> None:
    """Label quality, gradient shares and probe curves of a pre-training run."""
    from mertkit.pretrain.data import PretrainDataError
    from mertkit.pretrain.diagnostics import DiagnosticsError, run_diagnostics
    from mertkit.pretrain.labels import LabelsError

    if (audio is None) != (labels is None) and audio is not None:
        raise click.UsageError("gradient shares need both --audio and --labels")
    if tasks is not None and suite is None:
        raise click.UsageError("--tasks chooses the probe curve's tasks: give --suite too")
    if suite is None and labels is None:
        raise click.UsageError("nothing to do: give --suite and/or --labels (and --audio)")
    out = out or run_dir / "diagnostics"
    silent = quiet()
    log = None if silent else (lambda message: click.echo(message, err=True))
    try:
        run_diagnostics(run_dir, out, suite_dir=suite, audio_dir=audio, label_dir=labels, batches=batches, log=log,
                        tasks=tasks, updates=updates)
    except (DiagnosticsError, LabelsError, PretrainDataError) as error:
        raise click.ClickException(str(error)) from None
    if not silent:
        click.echo(f"diagnostics -> {out / 'diagnostics.json'}" + (f", {out / 'probe_curve.png'}" if suite else ""))
