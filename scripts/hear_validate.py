"""Run the HEAR 2021 validator (`hear-validator`, pip package ``hearvalidator``) against
``mertkit.hear`` for every model layout in the registry, on tiny random-weight checkpoints.

Called by ``scripts/hear_validate.sh`` inside the side environment it builds (the validator
pins TensorFlow and imports it even for PyTorch modules). Run by hand as
``python scripts/hear_validate.py [--keep DIR]`` in any environment that has
``hear-validator`` on PATH and mertkit importable.

Layouts (one tiny checkpoint each, same shapes as the real ones in miniature):
MERT-v1-95M (post-LN, 24 kHz), MERT-v1-330M (pre-LN, 24 kHz), MERT-v0 / MERT-v0-public
(post-LN, 16 kHz), music2vec-v1 (data2vec-audio, 16 kHz) and MERT-v2 (mel Conformer, 24 kHz,
bf16 safetensors as released). The shipped default model (``load_model("")``) is validated too.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.config import MertConfig
from mertkit.models.hubert.model import MertModel

# Small but with every part of the real layouts: 7 conv layers, positional conv, 2 encoder layers.
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
LAYOUTS: dict[str, dict] = {
    "MERT-v1-95M (post-LN, 24 kHz)": dict(model_type="mert_model", feat_extract_norm="group", sample_rate=24000),
    "MERT-v1-330M (pre-LN, 24 kHz)": dict(model_type="mert_model", feat_extract_norm="group",
                                          do_stable_layer_norm=True, sample_rate=24000),
    "MERT-v0 / v0-public (post-LN, 16 kHz)": dict(model_type="mert_model", feat_extract_norm="group", sample_rate=16000),
    "music2vec-v1 (data2vec-audio, 16 kHz)": dict(model_type="data2vec-audio", feat_extract_norm="layer",
                                                  num_conv_pos_embeddings=3, conv_pos_kernel_size=5, sample_rate=16000),
}


def write_checkpoints(root: Path) -> dict[str, Path]:
    """{layout title: checkpoint folder} with random weights (seeded)."""
    folders = {}
    for index, (title, fields) in enumerate(LAYOUTS.items()):
        torch.manual_seed(index)
        model = MertModel(MertConfig(**{**_TINY, **fields}))
        folders[title] = save_pretrained(model, root / f"layout{index}", formats=("safetensors",), do_normalize=True)
    return folders


# MERT-v2 in miniature: every block type of the release, far narrower.
_TINY_MERT2 = dict(model_type="mert2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_mel_bins=16, n_fft=128, win_length=128, hop_length=32,
                   subsampling_channels=[16, 24, 32], subsampling_depths=[1, 2, 1], conv_depthwise_kernel_size=7)


def write_mert2_checkpoint(folder: Path) -> Path:
    """config.json + model.safetensors as the hub stores MERT-v2: bf16 weights, float32 front end."""
    import json

    from safetensors.torch import save_file

    from mertkit.models.mert2.config import Mert2Config
    from mertkit.models.mert2.model import Mert2Model

    torch.manual_seed(len(LAYOUTS))
    config = Mert2Config.from_dict(_TINY_MERT2)
    state = Mert2Model(config).state_dict()
    front = "feature_extractor."
    bins = config.n_fft // 2 + 1
    state[front + "spectrogram.window"] = torch.hann_window(config.win_length, periodic=True)
    state[front + "mel_scale.fb"] = torch.rand(bins, config.num_mel_bins) / bins  # a positive stand-in filterbank
    state[front + "mel_mean"] = torch.full((config.num_mel_bins,), -30.0)
    state[front + "mel_std"] = torch.full((config.num_mel_bins,), 10.0)
    tensors = {k: (v.float() if k.startswith(front) else v.to(torch.bfloat16)).contiguous() for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**_TINY_MERT2, "torch_dtype": "bfloat16"}, indent=2))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="Write the checkpoints here and keep them.")
    args = parser.parse_args()
    # The validator's console script sits beside this interpreter in the side venv.
    beside = Path(sys.executable).parent / "hear-validator"
    validator = str(beside) if beside.is_file() else shutil.which("hear-validator")
    if validator is None:
        print("hear-validator is not on PATH: run scripts/hear_validate.sh (it builds the side environment)")
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="mertkit-hear-"))
    try:
        targets = {**write_checkpoints(root), "MERT-v2 (mel Conformer, 24 kHz)": write_mert2_checkpoint(root / "mert2"),
                   "shipped default model": ""}
        failed = []
        for title, folder in targets.items():
            command = [validator, "mertkit.hear", "-d", "cpu"] + (["-m", str(folder)] if folder else [])
            done = subprocess.run(command, capture_output=True, text=True)
            last = (done.stdout.strip().splitlines() or [""])[-1]
            status = "PASS" if done.returncode == 0 and last == "Looks good!" else "FAIL"
            print(f"{status}  {title}: {last}")
            if status == "FAIL":
                failed.append(title)
                print(done.stdout[-2000:] + done.stderr[-2000:])
        print(f"{len(targets) - len(failed)}/{len(targets)} layouts pass hear-validator")
        return 1 if failed else 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
