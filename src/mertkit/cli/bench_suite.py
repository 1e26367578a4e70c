"""``mert bench-suite``: build benchmark suites.

Usage: ``mert bench-suite synth -o OUT_DIR [--seed 0] [--clips N] [--task NAME ...]`` renders the
synthetic MIDI suite of :mod:`mertkit.synth.suite` (pitch, pitch class, instrument, key,
tempo/beat); ``mert eval --suite-dir OUT_DIR`` then probes on it and ``mert probe --task
OUT_DIR/<task>`` reads its ``task.json``. ``mert bench-suite chorales -o OUT_DIR`` adds the
``chorale_key`` task (:mod:`mertkit.synth.chorales`: Bach chorale openings from music21's corpus).
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


@bench_suite.command(name="chorales", help="Render the chorale key task (Bach chorale openings, music21's corpus) "
                                           "into --out/chorale_key.",
                     epilog=examples("mert bench-suite chorales -o suite/",
                                     "mert eval --suite-dir suite/ --tasks key,chorale_key -m mertkit-tiny-mel"))
@out_option("Suite folder; the task goes to its chorale_key sub-folder.", path_type=Path)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed (programs, tempi, transpositions, splits); use the suite's own to probe beside it.")
@click.option("--transpositions", type=click.IntRange(1, 12), default=4, show_default=True,
              help="Keys each chorale is played in.")
@click.option("--seconds", type=click.FloatRange(min=1.0), default=6.0, show_default=True, help="Length of each opening.")
@click.option("--limit", type=click.IntRange(min=3), default=None, help="Keep only the first N chorales (a quick look).")
@click.option("--sample-rate", type=click.IntRange(min=8000), default=24000, show_default=True)
@click.option("--soundfont", type=click.Path(dir_okay=False, exists=True), default=None,
              help="SoundFont (.sf2); default: pretty_midi's bundled TimGM6mb.sf2.")
@click.option("--overwrite", is_flag=True, help="Rebuild the task folder if it exists.")
@verbosity
def chorales(out: Path, seed: int, transpositions: int, seconds: float, limit: int | None, sample_rate: int,
             soundfont: str | None, overwrite: bool) -> None:
    from mertkit.synth.chorales import build_chorale_task
    from mertkit.synth.render import RenderError
    from mertkit.synth.suite import SuiteError

    started = time.perf_counter()
    try:
        folder = build_chorale_task(out, seed=seed, transpositions=transpositions, seconds=seconds,
                                    sample_rate=sample_rate, soundfont=soundfont, limit=limit, overwrite=overwrite,
                                    progress=not quiet())
    except (SuiteError, RenderError) as error:
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    clips = sum(1 for _ in (folder / "clips").glob("*.wav"))
    click.echo(f"chorale_key: {clips} clips -> {folder}")
    click.echo(f"done in {time.perf_counter() - started:.1f} s")
