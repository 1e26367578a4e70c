"""``mert bench-suite``: build benchmark suites.

Usage: ``mert bench-suite synth -o OUT_DIR [--seed 0] [--clips N] [--task NAME ...]`` renders the
synthetic MIDI suite of :mod:`mertkit.synth.suite` (pitch, pitch class, instrument, key,
tempo/beat); ``mert eval --suite-dir OUT_DIR`` then probes on it and ``mert probe --task
OUT_DIR/<task>`` reads its ``task.json``.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from mertkit.cli.options import examples, install_hint, out_option, quiet, verbosity
from mertkit.synth.suite import DEFAULT_CLIPS_PER_TASK, TASKS, default_clips

__all__ = ["bench_suite"]


@click.group(name="bench-suite", help="Build benchmark suites for probing.",
             epilog=examples("mert bench-suite synth -o suite/"))
def bench_suite() -> None:
    """Group of suite builders; see the sub-commands."""


@bench_suite.command(name="synth", help="Render the synthetic MIDI benchmark suite into the --out folder.",
                     epilog=examples("mert bench-suite synth -o suite/",
                                     "mert bench-suite synth -o suite/ --task key --clips 20",
                                     "mert eval --suite-dir suite/ -m MERT-v1-95M    # probe on it, no re-render"))
@out_option("Folder for the suite: one sub-folder per task.", path_type=Path)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed; the same seed gives identical files.")
@click.option("--clips", type=click.IntRange(min=3), default=None,
              help=f"Clips per task [default: {DEFAULT_CLIPS_PER_TASK}; pitch {default_clips('pitch')}].")
@click.option("--task", "tasks", type=click.Choice(TASKS), multiple=True,
              help="Task to build (repeatable); default: all.")
@click.option("--sample-rate", type=click.IntRange(min=8000), default=24000, show_default=True)
@click.option("--soundfont", type=click.Path(dir_okay=False, exists=True), default=None,
              help="SoundFont (.sf2); default: pretty_midi's bundled TimGM6mb.sf2.")
@click.option("--overwrite", is_flag=True, help="Rebuild task folders that already exist.")
@verbosity
def synth(
    out: Path, seed: int, clips: int | None, tasks: tuple[str, ...], sample_rate: int, soundfont: str | None,
    overwrite: bool,
) -> None:
    from mertkit.synth.render import RenderError
    from mertkit.synth.suite import SuiteError, build_suite

    started = time.perf_counter()
    try:
        folders = build_suite(out, seed=seed, clips_per_task=clips, sample_rate=sample_rate, tasks=tasks or TASKS,
                              soundfont=soundfont, overwrite=overwrite, progress=not quiet())
    except (SuiteError, RenderError) as error:
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    for name, folder in folders.items():
        click.echo(f"{name}: {clips or default_clips(name)} clips -> {folder}")
    click.echo(f"done in {time.perf_counter() - started:.1f} s")
