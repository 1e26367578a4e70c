"""Tiny MERT-family configs and official-layout checkpoints (random weights) for tests.

Checkpoints are written the way the hub has them: transformers' own classes save the model,
then the state dict is re-saved with the legacy `weight_g/weight_v` names as
`pytorch_model.bin`, or kept as safetensors with the `parametrizations` spelling.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mertkit.models.hubert.config import MertConfig

TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16, 16, 16, 16, 16, 16),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)

LAYOUTS = ("post_ln", "pre_ln", "data2vec")


def tiny_config(layout: str = "post_ln", sample_rate: int = 24000, **overrides) -> MertConfig:
    values = dict(TINY)
    if layout == "post_ln":
        values.update(model_type="mert_model", feat_extract_norm="group")
    elif layout == "pre_ln":
        values.update(model_type="mert_model", feat_extract_norm="group", do_stable_layer_norm=True)
    elif layout == "data2vec":
        values.update(model_type="data2vec-audio", feat_extract_norm="layer", num_conv_pos_embeddings=3,
                      conv_pos_kernel_size=5)
    else:
        raise ValueError(layout)
    values.update(sample_rate=sample_rate, **overrides)
    return MertConfig(**values)


def hf_model(layout: str, seed: int = 0):
    """A transformers model with random weights matching tiny_config(layout)."""
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, HubertConfig, HubertModel

    torch.manual_seed(seed)
    common = dict(
        hidden_size=TINY["hidden_size"], num_hidden_layers=TINY["num_hidden_layers"],
        num_attention_heads=TINY["num_attention_heads"], intermediate_size=TINY["intermediate_size"],
        conv_dim=TINY["conv_dim"], conv_kernel=TINY["conv_kernel"], conv_stride=TINY["conv_stride"],
        num_conv_pos_embedding_groups=TINY["num_conv_pos_embedding_groups"],
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    if layout == "data2vec":
        cfg = Data2VecAudioConfig(num_conv_pos_embeddings=3, conv_pos_kernel_size=5, **common)
        model = Data2VecAudioModel(cfg)
    else:
        cfg = HubertConfig(
            num_conv_pos_embeddings=TINY["num_conv_pos_embeddings"], feat_extract_norm="group",
            do_stable_layer_norm=(layout == "pre_ln"), **common,
        )
        cfg._attn_implementation = "eager"
        model = HubertModel(cfg)
    _randomise(model)
    return model.eval()


def _randomise(model: torch.nn.Module) -> None:
    """Non-trivial values everywhere (norm weights and biases too) so parity means something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight_g" in name or "original0" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3 / p.shape[-1] ** 0.5 if p.dim() == 2 else 0.2)


def legacy_weight_norm_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with the hub's legacy weight_g / weight_v spelling."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[k] = v.clone()
    return out


def write_official_checkpoint(model, directory: Path, *, fmt: str, model_type: str | None = None,
                              sample_rate: int | None = None, do_normalize: bool | None = None) -> Path:
    """Save a transformers model the way the hub stores MERT: config.json (+ MERT fields) and
    weights as `pytorch_model.bin` (legacy names) or `model.safetensors` (parametrizations)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    if model_type is not None:
        config["model_type"] = model_type
        config.update(feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                      attention_relax=-1.0)
    if sample_rate is not None:
        config["sample_rate"] = sample_rate
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "bin":
        torch.save(legacy_weight_norm_state(model), directory / "pytorch_model.bin")
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    else:
        raise ValueError(fmt)
    if do_normalize is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(
            {"do_normalize": do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
             "sampling_rate": sample_rate or 16000, "feature_size": 1, "padding_value": 0.0}))
    return directory
