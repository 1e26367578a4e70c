"""The shipped offline model and example audio: the README's main job runs fully offline.

The model is the one the package ships (registry name `mertkit-tiny-mel`, files in
`mertkit/assets/model`) when present. Without it a small MERT-v1-layout checkpoint with
RANDOM weights is built on the fly in the official file layout (cached under
~/.cache/mertkit): the pipeline is real, the numbers mean nothing.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from mertkit.models.registry import PRETRAINED, SHIPPED_MODEL as SHIPPED_MODEL_NAME, asset_dir

EXAMPLE_AUDIO = "example.flac"
SHIPPED_MODEL = PRETRAINED[SHIPPED_MODEL_NAME].asset


def asset(name: str) -> Path:
    return Path(str(resources.files("mertkit") / "assets" / name))


def cache_dir() -> Path:
    root = os.environ.get("MERTKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mertkit")
    return Path(root)


def demo_model_dir() -> tuple[Path, bool]:
    """(checkpoint directory, is_random)."""
    shipped = asset_dir(PRETRAINED[SHIPPED_MODEL_NAME])
    if (shipped / "config.json").is_file():
        return shipped, False
    target = cache_dir() / "demo-random-mert-v1-small"
    if not (target / "config.json").is_file():
        build_random_checkpoint(target)
    return target, True


def build_random_checkpoint(target: Path, seed: int = 0) -> Path:
    """A small MERT-v1-layout model (24 kHz, post-LN) with random weights, official layout."""
    import torch

    from mertkit.models.checkpoint import save_pretrained
    from mertkit.models.hubert.config import MertConfig
    from mertkit.models.hubert.model import MertModel

    torch.manual_seed(seed)
    config = MertConfig(
        model_type="mert_model", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, conv_dim=(256,) * 7, sample_rate=24000,
        extra={"_name_or_path": "demo-random-mert-v1-small"},
    )
    tmp = target.with_name(target.name + ".tmp")
    save_pretrained(MertModel(config), tmp, formats=("safetensors",), do_normalize=True)
    tmp.replace(target)
    return target
