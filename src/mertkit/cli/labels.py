"""`mert labels`: compute a corpus's pre-training teacher labels offline.

    mert labels IN_DIR -o OUT_DIR --teacher encodec --weights PATH [--bandwidth 6]
    mert labels IN_DIR -o OUT_DIR --teacher bestrq  [--codebooks 8] [--codebook-size 1024] [--seed 0]
    mert labels IN_DIR -o OUT_DIR --teacher kmeans  [--codebook-size 100] [--features logmel_chroma]
                                                    [--frame-rate 75; 25 for a MERT-v2-layout model]
    mert labels IN_DIR -o OUT_DIR --teacher codec   --train-teacher [--train-steps 2000]
    mert labels IN_DIR -o OUT_DIR --teacher codec   --teacher-file codec.pt

Teachers other than EnCodec are fitted (bestrq: feature statistics; kmeans: centroids; codec:
trained with `--train-teacher`) on IN_DIR and saved as `OUT_DIR/teacher.*`, which a rerun
reuses (so a resumed run labels with the same teacher), or read from `--teacher-file`.

Writes `OUT_DIR/codes/<audio>.npy` and `OUT_DIR/manifest.jsonl` (see `mertkit.pretrain.labels`),
validates the result, then checks every codebook's usage and perplexity
(`OUT_DIR/label_report.json`) and refuses degenerate labels with exit status 1. `--report
SUITE_DIR` adds how much the codes say about pitch / instrument / key of the benchmark suite.
Exits with status 1 when any file failed. Re-running the same command resumes.
"""
from __future__ import annotations

from pathlib import Path

import click

from mertkit.fileio import write_json
from mertkit.cli.options import FiniteFloat, device_option, examples, max_duration_value, out_option, quiet, verbosity

__all__ = ["labels"]

MAX_FAILURES_SHOWN = 20
TEACHERS = ("encodec", "codec", "kmeans", "bestrq")
SAMPLE_RATE = 24000  # every teacher labels 24 kHz audio
DEFAULT_FRAME_RATE = 75  # MERT-v1's label rate; 25 for a MERT-v2-layout model (`--config tiny-mel`)
TEACHER_FILES = {"codec": "teacher.pt", "kmeans": "teacher.npz", "bestrq": "teacher.npz"}


def _encodec(weights: Path | None, device: str, bandwidth: float):
    from mertkit.pretrain.teachers.encodec import EncodecError, EncodecTeacher, load_encodec

    if weights is None:
        raise click.UsageError("--teacher encodec needs --weights")
    try:
        return EncodecTeacher(load_encodec(weights, device=device), bandwidth=bandwidth)
    except EncodecError as error:
        raise click.ClickException(str(error)) from None


def _fitted(kind: str, in_dir: Path, out_dir: Path, teacher_file: Path | None, opts: dict, log) -> object:
    """Load the teacher file (given, or left by an earlier run), else fit / train and save it."""
    from mertkit.pretrain.kmeans import KMeansLabeller, fit_kmeans
    from mertkit.pretrain.teachers.bestrq import BestRQTeacher, fit_bestrq
    from mertkit.pretrain.teachers.codec import CodecConfig, CodecTeacher, train_codec

    loaders = {"codec": CodecTeacher.load, "kmeans": KMeansLabeller.load, "bestrq": BestRQTeacher.load}
    saved = out_dir / TEACHER_FILES[kind]
    path = teacher_file or (saved if saved.is_file() else None)
    rate = opts["frame_rate"]
    if path is not None:
        log(f"{kind}: teacher from {path}")
        teacher = loaders[kind](path)
        if rate is not None and teacher.sample_rate != rate * teacher.hop_length:
            raise click.UsageError(f"{path}: the teacher labels {teacher.sample_rate // teacher.hop_length} frames "
                                   f"per second, not --frame-rate {rate}")
        return teacher
    size = opts["codebook_size"]
    hop = SAMPLE_RATE // (rate or DEFAULT_FRAME_RATE)
    if kind != "codec" and SAMPLE_RATE % (rate or DEFAULT_FRAME_RATE):
        raise click.UsageError(f"--frame-rate {rate} does not divide {SAMPLE_RATE} Hz into whole samples")
    if kind == "bestrq":
        teacher = fit_bestrq(in_dir, num_codebooks=opts["codebooks"], codebook_size=size or 1024, seed=opts["seed"],
                             hop_length=hop)
    elif kind == "kmeans":
        teacher = fit_kmeans(in_dir, size or 100, features=opts["features"], seed=opts["seed"], hop_length=hop)
    else:
        if rate not in (None, DEFAULT_FRAME_RATE):
            raise click.UsageError(f"--frame-rate: the codec teacher labels {DEFAULT_FRAME_RATE} frames per second")
        if not opts["train_teacher"]:
            raise click.UsageError("--teacher codec needs --teacher-file, or --train-teacher to train one on IN_DIR")
        cfg = CodecConfig(codebooks=opts["codebooks"], codebook_size=size or 1024)
        codec, _ = train_codec(in_dir, cfg, steps=opts["train_steps"], seed=opts["seed"], log=log)
        teacher = CodecTeacher(codec)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher.save(saved)
    log(f"{kind}: teacher fitted on {in_dir}, saved to {saved}")
    return teacher


def _print_failures(failed: list[tuple[str, str]]) -> None:
    for path, reason in failed[:MAX_FAILURES_SHOWN]:
        click.echo(f"  FAILED {path}: {reason}", err=True)
    if len(failed) > MAX_FAILURES_SHOWN:
        click.echo(f"  ... and {len(failed) - MAX_FAILURES_SHOWN} more (see the manifest)", err=True)


def _health_report(labeller, out_dir: Path, suite: Path | None, min_usage: float, min_perplexity: float) -> list[str]:
    """Write OUT_DIR/label_report.json; returns the degenerate-codebook problems."""
    from dataclasses import asdict

    from mertkit.audio import load_audio
    from mertkit.pretrain.diagnostics import code_information, label_dir_stats, label_health_problems

    stats = label_dir_stats(out_dir)
    report: dict = {"teacher": labeller.name, "codebooks": [asdict(s) for s in stats]}
    if suite is not None:
        report["suite"] = code_information(
            lambda path: labeller.codes(load_audio(path, labeller.sample_rate)).astype("int64"), suite,
            labeller.codebook_size,
        )
    write_json(out_dir / "label_report.json", report)
    return label_health_problems(stats, min_usage=min_usage, min_perplexity=min_perplexity)


@click.command("labels", epilog=examples("mert labels --weights encodec_24khz/ audio/ -o labels/",
                                         "mert labels audio/ -o labels/ --teacher bestrq",
                                         "mert labels audio/ -o labels/ --teacher kmeans --frame-rate 25"))
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Label folder (codes/, manifest.jsonl, the fitted teacher, label_report.json).", path_type=Path)
@click.option("--teacher", type=click.Choice(TEACHERS), default="encodec", show_default=True,
              help="encodec: EnCodec 24 kHz codes (MERT-v1); codec: mertkit's own RVQ codec; kmeans: "
              "MERT-v0-style clusters; bestrq: random-projection quantiser on log-mel.")
@click.option("--weights", type=click.Path(exists=True, path_type=Path),
              help="EnCodec weights: a facebook/encodec_24khz directory, a .safetensors file, or encodec_24khz-d7cc33bc.th.")
@click.option("--bandwidth", type=FiniteFloat(min=0, min_open=True), default=6.0, show_default=True,
              help="EnCodec bandwidth in kbps (6 -> 8 codebooks, the MERT-v1 recipe).")
@click.option("--teacher-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A fitted codec / kmeans / bestrq teacher (default: OUT_DIR's, else fit one on IN_DIR).")
@click.option("--train-teacher", is_flag=True, help="codec: train the codec on IN_DIR first (minutes to hours).")
@click.option("--train-steps", type=int, default=2000, show_default=True, help="codec training updates.")
@click.option("--codebooks", type=int, default=8, show_default=True, help="codec / bestrq codebooks.")
@click.option("--codebook-size", type=int, default=None, help="Codes per codebook [codec, bestrq: 1024; kmeans: 100].")
@click.option("--features", type=click.Choice(["logmel_chroma", "mfcc", "logmel"]), default="logmel_chroma",
              show_default=True, help="kmeans frame features.")
@click.option("--frame-rate", type=click.IntRange(min=1), default=None,
              help="kmeans / bestrq: label frames per second, the model's frame rate [75: MERT-v1 layout; "
              "25: MERT-v2 layout]. A fitted teacher keeps its own.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fitted teacher.")
@device_option("Where the encodec teacher runs.")
@click.option(
    "--max-duration", default=None, callback=lambda c, p, v: max_duration_value(v),
    help="Longest input in seconds, checked from the file's header before decoding (default: 14400, 4 h); "
    "0 or 'none': no limit.",
)
@click.option("--report", "suite", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A benchmark suite folder (`mert bench-suite`): also report what the codes say about its labels.")
@click.option("--min-usage", type=float, default=0.05, show_default=True,
              help="Refuse a codebook using fewer than this fraction of min(codebook size, frames) codes.")
@click.option("--min-perplexity", type=float, default=4.0, show_default=True,
              help="Refuse a codebook whose code perplexity is below this.")
@verbosity
def labels(in_dir: Path, out: Path, teacher: str, weights: Path | None, bandwidth: float, teacher_file: Path | None,
           train_teacher: bool, train_steps: int, codebooks: int, codebook_size: int | None, features: str,
           frame_rate: int | None, seed: int,
           device: str, max_duration: float | None, suite: Path | None, min_usage: float, min_perplexity: float) -> None:
    """Write frame-aligned teacher labels for every audio file in IN_DIR to the --out folder."""
    from mertkit.pretrain.labels import LabelsError, validate_labels, write_labels

    out_dir, silent = out, quiet()
    verbose = bool(click.get_current_context().meta.get("mertkit.verbose"))

    def log(message: str) -> None:
        if not silent:
            click.echo(message, err=True)

    if teacher == "encodec":
        if frame_rate not in (None, DEFAULT_FRAME_RATE):
            raise click.UsageError(f"--frame-rate: EnCodec labels {DEFAULT_FRAME_RATE} frames per second")
        labeller = _encodec(weights, device, bandwidth)
    else:
        opts = {"codebooks": codebooks, "codebook_size": codebook_size, "features": features, "seed": seed,
                "train_teacher": train_teacher, "train_steps": train_steps, "frame_rate": frame_rate}
        try:
            labeller = _fitted(teacher, in_dir, out_dir, teacher_file, opts, log)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    progress = (lambda rel, outcome: click.echo(f"  {outcome} {rel}", err=True)) if verbose else None
    try:
        summary = write_labels(in_dir, out_dir, labeller, sample_rate=labeller.sample_rate,
                               frame_rate=labeller.sample_rate // labeller.hop_length, progress=progress,
                               max_duration=max_duration)
        check = validate_labels(out_dir)
        problems = _health_report(labeller, out_dir, suite, min_usage, min_perplexity) if check.files_ok else []
    except LabelsError as error:
        raise click.ClickException(str(error)) from None
    if not silent:
        click.echo(
            f"{teacher}: {summary.written} written, {summary.skipped} already done, "
            f"{len(summary.failed)} failed; {check.files_ok} files / {check.total_frames} frames "
            f"of labels valid in {out_dir}"
        )
    if summary.failed:
        _print_failures(summary.failed)
    if problems:
        click.echo(f"Error: {out_dir}: degenerate labels: {'; '.join(problems)} (see label_report.json)", err=True)
    if summary.failed or problems:
        click.get_current_context().exit(1)
