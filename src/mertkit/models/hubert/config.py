"""The architecture of a MERT-family checkpoint, read from its official `config.json`.

One frozen dataclass covers the four `model_type`s the family was published under:
`mert_model` (MERT-v1 remote code), `music_hubert` (MERT-v0-public's first release),
`hubert` (MERT-v0's first release) and `data2vec-audio` (music2vec-v1). Every number that
shapes inference comes from the file; fields that only matter for training are kept so a
pre-training run can use them, and fields that would change inference in a way we do not
implement are refused with a clear error instead of being ignored.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUBERT_TYPES = ("mert_model", "music_hubert", "hubert")
DATA2VEC_TYPES = ("data2vec-audio",)
SUPPORTED_MODEL_TYPES = HUBERT_TYPES + DATA2VEC_TYPES

# HuBERT and data2vec were released at 16 kHz; MERT-v1 configs state their 24 kHz explicitly.
DEFAULT_SAMPLE_RATE = 16000


class ConfigError(ValueError):
    """A config.json that is malformed or asks for something mertkit does not implement."""


@dataclass(frozen=True)
class MertConfig:
    model_type: str = "mert_model"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    # conv feature encoder
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_proj_layer_norm: bool = True
    # positional convolution: HuBERT = one weight-normed conv of kernel `num_conv_pos_embeddings`;
    # data2vec = a stack of `num_conv_pos_embeddings` convs of kernel `conv_pos_kernel_size`.
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_kernel_size: int = 19
    do_stable_layer_norm: bool = False
    sample_rate: int = 24000
    # training-only knobs (inference runs in eval mode and ignores them)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.0
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    # fields kept verbatim from the source file, written back on export
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived numbers -------------------------------------------------------------
    @property
    def is_data2vec(self) -> bool:
        return self.model_type in DATA2VEC_TYPES

    @property
    def num_hidden_states(self) -> int:
        """Hidden states the model returns: the encoder input plus one per layer."""
        return self.num_hidden_layers + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def hop_length(self) -> int:
        """Input samples per output frame (the product of the conv strides)."""
        hop = 1
        for stride in self.conv_stride:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples the first frame sees; shorter inputs give no frame at all."""
        field_ = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            field_ = (field_ - 1) * stride + kernel
        return field_

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv front-end yields for `num_samples` (floor((L - k) / s) + 1 per layer)."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not a MERT-family type; "
                f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)):
            raise ConfigError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.is_data2vec and self.feat_extract_norm != "layer":
            raise ConfigError("data2vec-audio checkpoints use feat_extract_norm='layer'")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError("hidden_size must be divisible by num_conv_pos_embedding_groups")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) != "gelu":
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported (every release uses 'gelu')")

    # ---- reading and writing official files -----------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> MertConfig:
        _refuse_unsupported(data, source)
        model_type = data.get("model_type")
        if model_type is None:
            raise ConfigError(f"{source}: no 'model_type' field")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for name in known:
            if name in data:
                value = data[name]
                values[name] = tuple(value) if isinstance(value, list) else value
        if "sample_rate" not in data:
            values["sample_rate"] = DEFAULT_SAMPLE_RATE
        if model_type in DATA2VEC_TYPES:
            # data2vec's config has no feat_proj_layer_norm: its projection always normalises.
            values.setdefault("feat_proj_layer_norm", True)
            values.setdefault("num_conv_pos_embeddings", 5)
            values.setdefault("feat_extract_norm", "layer")  # every data2vec conv is layer-normed
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**values)
        except TypeError as err:  # a field of the wrong JSON type
            raise ConfigError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MertConfig:
        return cls.from_dict(read_json_object(path, ConfigError), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Official field names (plus whatever the source file carried), ready for config.json."""
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.is_data2vec:
            out.pop("feat_proj_layer_norm", None)
        out["num_feat_extract_layers"] = len(self.conv_dim)
        return out

    def replace(self, **changes: Any) -> MertConfig:
        return dataclasses.replace(self, **changes)


# Fields that appear in official configs and would change inference if set: we accept the
# value every release uses and refuse the other one.
_MUST_BE = {
    "feature_extractor_cqt": False,
    "deepnorm": False,
    "conv_pos_batch_norm": False,
}


def _refuse_unsupported(data: dict[str, Any], source: str) -> None:
    for name, allowed in _MUST_BE.items():
        if name in data and bool(data[name]) != allowed:
            raise ConfigError(
                f"{source}: {name}={data[name]!r} changes inference and is not supported by mertkit "
                f"(every released checkpoint has {name}={allowed})"
            )
    if data.get("model_type") in DATA2VEC_TYPES and data.get("do_stable_layer_norm"):
        raise ConfigError(f"{source}: data2vec-audio with do_stable_layer_norm=true is not a released layout")


def read_json_object(path: str | os.PathLike, error: type[Exception]) -> dict[str, Any]:
    """A config file's JSON object; a missing file, bad JSON or another JSON type raises `error`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise error(f"{path}: no such config file") from err
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data
