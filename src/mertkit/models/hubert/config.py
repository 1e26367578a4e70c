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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUBERT_TYPES = ("mert_model", "music_hubert", "hubert")
DATA2VEC_TYPES = ("data2vec-audio",)
SUPPORTED_MODEL_TYPES = HUBERT_TYPES + DATA2VEC_TYPES

# HuBERT and data2vec were released at 16 kHz; MERT-v1 configs state their 24 kHz explicitly.
DEFAULT_SAMPLE_RATE = 16000

# Bounds of the integer fields. The maxima are far above every released model (the largest,
# MERT-v1-330M, has 24 layers of width 1024): they exist so that a broken or hostile config is
# refused before any memory is spent on the model it describes.
_INT_RANGES = {
    "hidden_size": (1, 16384),
    "num_hidden_layers": (1, 512),
    "num_attention_heads": (1, 1024),
    "intermediate_size": (1, 65536),
    "num_conv_pos_embeddings": (1, 1024),
    "num_conv_pos_embedding_groups": (1, 16384),
    "conv_pos_kernel_size": (1, 1024),
    "sample_rate": (1000, 768000),
    "mask_time_length": (1, 100000),
    "mask_time_min_masks": (0, 100000),
}
_CONV_RANGES = {"conv_dim": (1, 16384), "conv_kernel": (1, 4096), "conv_stride": (1, 4096)}
_MAX_CONV_LAYERS = 32
_PROBABILITIES = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop",
                  "mask_time_prob")
_BOOLS = ("conv_bias", "feat_proj_layer_norm", "do_stable_layer_norm")
# 10 billion parameters: 30 times MERT-v1-330M, 40 GB in float32.
MAX_PARAMETERS = 10_000_000_000


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

    # The names MERT-v2's config uses for the same two numbers, so code that handles both
    # families (pre-training) reads one interface.
    @property
    def samples_per_frame(self) -> int:
        return self.hop_length

    @property
    def min_input_samples(self) -> int:
        return self.receptive_field

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv front-end yields for `num_samples` (floor((L - k) / s) + 1 per layer)."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    def num_parameters(self) -> int:
        """Parameters of the model this config describes, counted from its weight shapes."""
        return sum(math.prod(shape) for shape in weight_shapes(self).values())

    # ---- validation ------------------------------------------------------------------
    def validate(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not a MERT-family type; "
                f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        self._validate_types_and_ranges()
        self._validate_architecture()
        if self.num_parameters() > MAX_PARAMETERS:
            raise ConfigError(
                f"describes a model of {self.num_parameters():,} parameters, more than the {MAX_PARAMETERS:,} "
                "mertkit accepts (MERT-v1-330M has 330 million)"
            )

    def _validate_types_and_ranges(self) -> None:
        """Every number the architecture depends on: the right JSON type, inside its bounds."""
        for name, (low, high) in _INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high)
        for name, (low, high) in _CONV_RANGES.items():
            values = getattr(self, name)
            if not isinstance(values, tuple) or not 1 <= len(values) <= _MAX_CONV_LAYERS:
                raise ConfigError(f"{name} must be a list of 1 to {_MAX_CONV_LAYERS} integers, got {values!r}")
            for value in values:
                _check_int(name, value, low, high)
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if not _is_number(self.layer_norm_eps) or not 0.0 < self.layer_norm_eps < 1.0:
            raise ConfigError(f"layer_norm_eps must be a number in (0, 1), got {self.layer_norm_eps!r}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        mask_feature_prob = self.extra.get("mask_feature_prob", 0)
        if not _is_number(mask_feature_prob) or not 0.0 <= mask_feature_prob <= 1.0:
            raise ConfigError(f"mask_feature_prob must be a number in [0, 1], got {mask_feature_prob!r}")

    def _validate_architecture(self) -> None:
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
        except (ConfigError, TypeError) as err:  # TypeError: a field of the wrong JSON type
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def weight_shapes(config: MertConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model of `config` loads, in mertkit's names.

    Computed from the config alone, so that a checkpoint's weight files can be checked against
    it before any model is built (`checkpoint.check_weights`). tests/test_checkpoint.py checks
    it against `MertModel(config).state_dict()` for every layout.
    """
    hidden, conv_out = config.hidden_size, config.conv_dim[-1]
    shapes: dict[str, tuple[int, ...]] = {}
    in_dim = 1
    for i, (dim, kernel) in enumerate(zip(config.conv_dim, config.conv_kernel)):
        prefix = f"feature_extractor.conv_layers.{i}."
        shapes[prefix + "conv.weight"] = (dim, in_dim, kernel)
        if config.conv_bias:
            shapes[prefix + "conv.bias"] = (dim,)
        if config.feat_extract_norm == "layer" or i == 0:
            shapes[prefix + "layer_norm.weight"] = shapes[prefix + "layer_norm.bias"] = (dim,)
        in_dim = dim
    if config.feat_proj_layer_norm:
        shapes["feature_projection.layer_norm.weight"] = shapes["feature_projection.layer_norm.bias"] = (conv_out,)
    shapes["feature_projection.projection.weight"] = (hidden, conv_out)
    shapes["feature_projection.projection.bias"] = (hidden,)
    if config.mask_time_prob > 0 or config.extra.get("mask_feature_prob", 0) > 0:
        shapes["masked_spec_embed"] = (hidden,)
    group_width = hidden // config.num_conv_pos_embedding_groups
    if config.is_data2vec:
        for j in range(config.num_conv_pos_embeddings):
            shapes[f"encoder.pos_conv_embed.layers.{j}.conv.weight"] = (hidden, group_width, config.conv_pos_kernel_size)
            shapes[f"encoder.pos_conv_embed.layers.{j}.conv.bias"] = (hidden,)
    else:
        kernel = config.num_conv_pos_embeddings
        shapes["encoder.pos_conv_embed.conv.weight_g"] = (1, 1, kernel)
        shapes["encoder.pos_conv_embed.conv.weight_v"] = (hidden, group_width, kernel)
        shapes["encoder.pos_conv_embed.conv.bias"] = (hidden,)
    shapes["encoder.layer_norm.weight"] = shapes["encoder.layer_norm.bias"] = (hidden,)
    for layer in range(config.num_hidden_layers):
        shapes.update(_layer_shapes(f"encoder.layers.{layer}.", hidden, config.intermediate_size))
    return shapes


def _layer_shapes(prefix: str, hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{prefix}attention.{proj}.weight"] = (hidden, hidden)
        shapes[f"{prefix}attention.{proj}.bias"] = (hidden,)
    for norm in ("layer_norm", "final_layer_norm"):
        shapes[f"{prefix}{norm}.weight"] = shapes[f"{prefix}{norm}.bias"] = (hidden,)
    shapes[f"{prefix}feed_forward.intermediate_dense.weight"] = (intermediate, hidden)
    shapes[f"{prefix}feed_forward.intermediate_dense.bias"] = (intermediate,)
    shapes[f"{prefix}feed_forward.output_dense.weight"] = (hidden, intermediate)
    shapes[f"{prefix}feed_forward.output_dense.bias"] = (hidden,)
    return shapes


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
