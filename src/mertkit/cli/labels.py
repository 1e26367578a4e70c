"""`mert labels`: compute a corpus's pre-training teacher labels (EnCodec codes) offline.

    mert labels --teacher encodec --weights PATH IN_DIR -o OUT_DIR [--device auto] [--bandwidth 6]

Writes `OUT_DIR/codes/<audio>.npy` and `OUT_DIR/manifest.jsonl` (see `mertkit.pretrain.labels`),
validates the result, prints a summary and exits with status 1 when any file failed.
Re-running the same command resumes: finished files are skipped.
"""
from __future__ import annotations

from pathlib import Path

import click

from mertkit.cli.options import FiniteFloat, device_option, examples, max_duration_value, out_option, verbosity

__all__ = ["labels"]

MAX_FAILURES_SHOWN = 20


def _load_teacher(weights: Path, device: str, bandwidth: float):
    from mertkit.pretrain.teachers.encodec import EncodecError, EncodecTeacher, load_encodec

    try:
        return EncodecTeacher(load_encodec(weights, device=device), bandwidth=bandwidth)
    except EncodecError as error:
        raise click.ClickException(str(error)) from None


def _print_failures(failed: list[tuple[str, str]]) -> None:
    for path, reason in failed[:MAX_FAILURES_SHOWN]:
        click.echo(f"  FAILED {path}: {reason}", err=True)
    if len(failed) > MAX_FAILURES_SHOWN:
        click.echo(f"  ... and {len(failed) - MAX_FAILURES_SHOWN} more (see the manifest)", err=True)


@click.command("labels", epilog=examples("mert labels --weights encodec_24khz/ audio/ -o labels/"))
@click.option(
    "--teacher", type=click.Choice(["encodec"]), default="encodec", show_default=True,
    help="Label teacher (MERT-v1: EnCodec 24 kHz codes).",
)
@click.option(
    "--weights", required=True, type=click.Path(exists=True, path_type=Path),
    help="EnCodec weights: a Hugging Face facebook/encodec_24khz directory, a .safetensors file, "
    "or the original encodec_24khz-d7cc33bc.th.",
)
@device_option("Where the teacher runs.")
@click.option(
    "--bandwidth", type=FiniteFloat(min=0, min_open=True), default=6.0, show_default=True,
    help="EnCodec bandwidth in kbps (6 -> 8 codebooks, the MERT-v1 recipe).",
)
@click.option(
    "--max-duration", default=None, callback=lambda c, p, v: max_duration_value(v),
    help="Longest input in seconds, checked from the file's header before decoding (default: 14400, 4 h); "
    "0 or 'none': no limit.",
)
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Label folder (codes/ and manifest.jsonl).", path_type=Path)
@verbosity
def labels(teacher: str, weights: Path, device: str, bandwidth: float, max_duration: float | None,
           in_dir: Path, out: Path) -> None:
    """Write frame-aligned teacher labels for every audio file in IN_DIR to the --out folder."""
    out_dir = out
    from mertkit.pretrain.labels import LabelsError, validate_labels, write_labels

    labeller = _load_teacher(weights, device, bandwidth)
    try:
        summary = write_labels(in_dir, out_dir, labeller, sample_rate=labeller.sample_rate,
                               frame_rate=labeller.sample_rate // labeller.hop_length, max_duration=max_duration)
        check = validate_labels(out_dir)
    except LabelsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"{teacher}: {summary.written} written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; {check.files_ok} files / {check.total_frames} frames "
        f"of labels valid in {out_dir}"
    )
    if summary.failed:
        _print_failures(summary.failed)
        click.get_current_context().exit(1)
