"""`mert export CKPT -o OUT_DIR`: a pre-training checkpoint, snapshot or run folder to the official layout.

Writes config.json (official field names), preprocessor_config.json, pytorch_model.bin
(legacy weight_g / weight_v names) and model.safetensors; `mertkit.load(OUT_DIR)` reads it
back bit-exactly (`--dtype float16` stores the weights at half the size; they load as float32).
"""
from __future__ import annotations

from pathlib import Path

import click

from mertkit.cli.options import examples, out_option, verbosity

__all__ = ["export"]


@click.command("export", epilog=examples("mert export run/ -o my-mert/", "mert export run/checkpoints/checkpoint_last.pt -o my-mert/",
                                         "mert export run/snapshots/update_00000800.pt -o my-mert-800/",
                                         "mert export run/ -o my-mert/ --format safetensors --dtype float16"))
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@out_option("Folder for the official layout (config.json, weights).", path_type=Path)
@click.option("--format", "formats", multiple=True, type=click.Choice(["bin", "safetensors"]),
              help="Weight files to write (default: both).")
@click.option("--normalize/--no-normalize", "do_normalize", default=False,
              help="do_normalize in preprocessor_config.json (MERT-v1 trains on raw audio: off).")
@click.option("--dtype", "dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="How the weights are stored (float16 halves the files; loading computes in float32).")
@verbosity
def export(checkpoint: Path, out: Path, formats: tuple[str, ...], do_normalize: bool, dtype: str) -> None:
    """Export CHECKPOINT (a checkpoint or snapshot .pt file, or a run folder) to the official layout in the --out folder."""
    from mertkit.models.checkpoint import STORAGE_DTYPES, CheckpointError
    from mertkit.pretrain.export import ExportError, export_checkpoint
    from mertkit.pretrain.trainer import PretrainError

    try:
        path = export_checkpoint(checkpoint, out, formats=formats or ("bin", "safetensors"),
                                 do_normalize=do_normalize, dtype=STORAGE_DTYPES[dtype])
    except (ExportError, PretrainError, CheckpointError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"exported to {path}")
