"""A pre-training checkpoint to the official Hugging Face layout that `mertkit.load` reads.

Only the backbone is exported (the `backbone.*` tensors of the training model; the heads, the
label embeddings, a MERT-v2 backbone's mask embedding and a data2vec EMA teacher stay
behind), through
`mertkit.models.checkpoint.save_pretrained`: `config.json` with official field names,
`preprocessor_config.json`, `pytorch_model.bin` (legacy `weight_g`/`weight_v` names) and
`model.safetensors`. Weights are written as float32 exactly as trained, so the exported model
gives bit-identical hidden states.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mertkit.models.hubert.model import MertModel
from mertkit.models.mert2.config import Mert2Config
from mertkit.models.mert2.model import Mert2Model
from mertkit.pretrain.pretrain_config import PretrainConfig

BACKBONE_PREFIX = "backbone."


class ExportError(ValueError):
    """A training checkpoint that cannot be exported."""


def backbone_from_checkpoint(checkpoint_path: str | os.PathLike) -> MertModel | Mert2Model:
    """The inference model held by a training checkpoint or a snapshot (`RUN/snapshots/`, a
    point of the probe curve) in eval mode, float32, CPU."""
    from mertkit.fileio import TaggedFileError, read_tagged_torch
    from mertkit.models.checkpoint import load_state_dict_strict
    from mertkit.pretrain.diagnostics import SNAPSHOT_FORMAT
    from mertkit.pretrain.trainer import CHECKPOINT_FORMAT

    checkpoint_path = resolve_checkpoint(checkpoint_path)
    try:
        payload = read_tagged_torch(checkpoint_path, (CHECKPOINT_FORMAT, SNAPSHOT_FORMAT),
                                    "pre-training checkpoint or snapshot")
    except TaggedFileError as err:
        raise ExportError(str(err)) from err
    cfg = PretrainConfig.from_dict(payload["config"], source=f"{checkpoint_path} config")
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in payload["model"].items() if k.startswith(BACKBONE_PREFIX)}
    if not state:
        raise ExportError(f"{checkpoint_path}: no backbone tensors ('{BACKBONE_PREFIX}*') in the checkpoint")
    config = cfg.mert_config()
    model = Mert2Model(config) if isinstance(config, Mert2Config) else MertModel(config)
    load_state_dict_strict(model, state, source=str(checkpoint_path))
    return model.eval()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (its checkpoints/checkpoint_last.pt)."""
    from mertkit.pretrain.trainer import LAST_CHECKPOINT

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / LAST_CHECKPOINT
    if not path.is_file():
        raise ExportError(f"{path}: no such training checkpoint")
    return path


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    formats: tuple[str, ...] = ("bin", "safetensors"),
    do_normalize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the official layout; `do_normalize` False because MERT-v1 and v2 train on raw waveforms.
    config.json names the model after `out_dir` (`_name_or_path`, as the hub's files do), so a
    folder that moves keeps its name (and its registry card, when that is a registry name)."""
    model = backbone_from_checkpoint(checkpoint_path)
    from mertkit.models.checkpoint import save_pretrained

    model.config.extra["_name_or_path"] = Path(out_dir).name

    return save_pretrained(model, out_dir, formats=formats, do_normalize=do_normalize, dtype=dtype)
