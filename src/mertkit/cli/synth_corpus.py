"""`mert synth-corpus`: render the structured MIDI pre-training corpus (see `mertkit.synth.corpus`).

    mert synth-corpus -o DIR --hours 20 --seed 0 [--clip-seconds 30] [--workers 2]

Deterministic (same arguments, same bytes) and resumable: rerun the same command after an
interruption and finished clips are skipped.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from mertkit.cli.options import PositiveInt, examples, out_option, quiet, verbosity

__all__ = ["synth_corpus"]


@click.command("synth-corpus", epilog=examples("mert synth-corpus -o corpus/ --hours 20 --seed 0 --workers 2"))
@out_option("Output folder (clips/*.wav + *.json, manifest.csv).", path_type=Path)
@click.option("--hours", type=float, help="Hours of audio to render.")
@click.option("--clips", type=PositiveInt, help="Number of clips to render (instead of --hours).")
@click.option("--clip-seconds", type=float, default=30.0, show_default=True, help="Length of each piece.")
@click.option("--seed", type=int, default=0, show_default=True, help="Corpus seed (clip i depends on seed and i only).")
@click.option("--sample-rate", type=int, default=24000, show_default=True)
@click.option("--workers", type=PositiveInt, default=1, show_default=True, help="Rendering processes.")
@click.option("--soundfont", type=click.Path(exists=True, dir_okay=False), help="SoundFont [pretty_midi's bundled one].")
@click.option("--texture", type=click.Choice(["dense", "varied"]), default="dense", show_default=True,
              help="dense: every part plays in most sections; varied: half the sections are solos or duos.")
@click.option("--palette", type=click.Choice(["classic", "gm"]), default="classic", show_default=True,
              help="GM programs the parts draw from. classic: 12 of the 15 pitched GM families; "
                   "gm: every pitched GM program can lead, so every family is heard.")
@verbosity
def synth_corpus(out: Path, hours: float | None, clips: int | None, clip_seconds: float, seed: int,
                 sample_rate: int, workers: int, soundfont: str | None, texture: str, palette: str) -> None:
    """Render musically structured multi-instrument pieces from MIDI for pre-training."""
    from mertkit.synth.render import RenderError
    from mertkit.synth.corpus import render_corpus

    started, silent, out_dir = time.perf_counter(), quiet(), out

    def progress(done: int, total: int) -> None:
        if not silent:
            click.echo(f"  {done}/{total} clips", err=True)

    try:
        paths = render_corpus(out_dir, n_clips=clips, hours=hours, seconds=clip_seconds, seed=seed,
                              sample_rate=sample_rate, soundfont=soundfont, workers=workers, texture=texture,
                              palette=palette, progress=progress)
    except RenderError as error:
        raise click.ClickException(str(error)) from None
    if not silent:
        audio_hours = len(paths) * clip_seconds / 3600
        click.echo(f"{len(paths)} clips ({audio_hours:.2f} h) in {out_dir} [{time.perf_counter() - started:.0f} s]")
