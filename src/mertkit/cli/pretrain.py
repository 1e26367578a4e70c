"""`mert pretrain`: run (or resume) MERT-v1 pre-training on a folder of audio.

    mert pretrain --config tiny --audio AUDIO --labels LABELS -o RUN
    mert pretrain --config 95m --audio AUDIO --labels LABELS -o RUN --set lr=3e-4 --set batch_size=4
    mert pretrain -o RUN --audio AUDIO --labels LABELS --resume        (config read from RUN)
    mert pretrain --config tiny --audio AUDIO --encodec-weights ENCODEC_DIR -o RUN

Labels are the EnCodec codes `mert labels` writes. Without `--labels`, `--encodec-weights`
(a local EnCodec 24 kHz checkpoint) computes them first into RUN/labels (resumable; already
labelled files are skipped). With `--set objective=data2vec` (music2vec-style) no labels are
needed. Several GPUs / processes: run this same command under `torchrun --nproc_per_node N`.
"""
from __future__ import annotations

from pathlib import Path

import click

from mertkit.cli.options import device_option, examples, out_option, verbosity

__all__ = ["pretrain"]


def _config(config: str | None, out: Path, resume: bool, overrides: tuple[str, ...]):
    from mertkit.pretrain.pretrain_config import PretrainConfigError, load_config

    if config is None:
        if not (resume and (out / "config.json").is_file()):
            raise click.UsageError("--config is required (unless --resume finds RUN/config.json)")
        config = str(out / "config.json")
    try:
        return load_config(config).with_overrides(list(overrides))
    except PretrainConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config/--set") from err


def _encodec_labels(audio: Path, weights: Path, out: Path, device: str) -> Path:
    from mertkit.pretrain.labels import write_labels
    from mertkit.pretrain.teachers.encodec import EncodecTeacher, load_encodec

    label_dir = out / "labels"
    teacher = EncodecTeacher(load_encodec(weights, device=device))
    summary = write_labels(audio, label_dir, teacher)
    click.echo(f"labels: {summary.written} written, {summary.skipped} already there, {len(summary.failed)} failed -> {label_dir}")
    return label_dir


@click.command("pretrain", epilog=examples(
    "mert pretrain --config tiny --audio audio/ --labels labels/ -o run/",
    "mert pretrain -o run/ --audio audio/ --labels labels/ --resume",
))
@click.option("--config", "config", default=None, help="Preset (tiny, tiny-wide, tiny-mel, 95m, 330m) or a JSON file.")
@click.option("--audio", "audio", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of training audio (searched recursively).")
@click.option("--labels", "labels", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Label folder written by `mert labels` (EnCodec codes).")
@click.option("--encodec-weights", "encodec_weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Compute the labels first with this local EnCodec checkpoint (when --labels is not given).")
@out_option("Run folder.", path_type=Path)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting (repeatable); model.* reaches the backbone config.")
@click.option("--resume", is_flag=True, help="Continue from RUN/checkpoints/checkpoint_last.pt.")
@device_option("Where training runs (under torchrun, cuda means each process's local GPU).")
@verbosity
def pretrain(config, audio, labels, encodec_weights, out, overrides, resume, device) -> None:
    """Pre-train a MERT model with the MERT-v1 recipe."""
    from mertkit.pretrain.data import PretrainDataError
    from mertkit.pretrain.trainer import PretrainError, train

    cfg = _config(config, out, resume, overrides)
    if cfg.objective == "mlm" and labels is None:
        if encodec_weights is None:
            raise click.UsageError("give --labels (from `mert labels`) or --encodec-weights to compute them")
        labels = _encodec_labels(audio, encodec_weights, out, device)
    try:
        run = train(cfg, audio, labels, out, resume=resume, device=device)
    except (PretrainError, PretrainDataError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"done: {run} (export with `mert export {run} -o OUT_DIR`)")
