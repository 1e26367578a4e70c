"""MERT-v2's architecture, read from its official `config.json` (`model_type` "mert2").

Defaults are the released values; the validation rules are the official config's own, each a
one-line ConfigError. `auto_map` (the hub's remote-code pointer) is kept verbatim in `extra` and
never used: mertkit runs its own implementation, never code from a checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from mertkit.models.hubert.config import ConfigError, read_json_object

MODEL_TYPE = "mert2"
VARIANTS = {"30s": 30.0, "fs": 360.0}  # variant -> default context_seconds
# The three ConvNeXt-V2 stages subsample time by these strides (4x in all: 100 Hz mel -> 25 Hz).
SUBSAMPLING_STRIDES = (1, 2, 2)
RESAMPLING_KERNEL = 2


@dataclass(frozen=True)
class Mert2Config:
    model_type: str = MODEL_TYPE
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_mel_bins: int = 128
    sampling_rate: int = 24000
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 240
    subsampling_channels: tuple[int, ...] | None = None  # None -> (num_mel_bins, 512, hidden_size)
    subsampling_depths: tuple[int, ...] = (3, 4, 5)
    conv_depthwise_kernel_size: int = 31
    rotary_embedding_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    subsampling_layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    variant: str = "30s"
    context_seconds: float | None = None  # None -> 360 for "fs", else 30
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.subsampling_channels is None:
            object.__setattr__(self, "subsampling_channels", (self.num_mel_bins, 512, self.hidden_size))
        if self.context_seconds is None and self.variant in VARIANTS:
            object.__setattr__(self, "context_seconds", VARIANTS[self.variant])
        self.validate()

    # ---- derived numbers -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.sampling_rate

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_hidden_states(self) -> int:
        """One state per Conformer block; there is no input-embedding state."""
        return self.num_hidden_layers

    @property
    def samples_per_frame(self) -> int:
        subsampling = 1
        for stride in SUBSAMPLING_STRIDES:
            subsampling *= stride
        return self.hop_length * subsampling

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.samples_per_frame

    @property
    def min_input_samples(self) -> int:
        """The centred STFT reflects n_fft/2 samples at each end, so it needs more than that
        (1025 as released); a smaller config needs at least one output frame's samples."""
        return max(self.n_fft // 2 + 1, self.samples_per_frame)

    @property
    def first_frame_centre(self) -> float:
        """Centre (in samples) of the mel frames behind output frame 0: the stride-2 convs of
        kernel 2 make frame j read mel frames 4j..4j+3, and mel frame m is centred at hop * m."""
        subsampling = self.samples_per_frame // self.hop_length
        return self.hop_length * (subsampling - 1) / 2

    def num_frames(self, num_samples: int) -> int:
        """Output frames for `num_samples` (N // hop mel frames, then each stage's conv)."""
        if num_samples < self.min_input_samples:
            return 0
        length = num_samples // self.hop_length
        for stride in SUBSAMPLING_STRIDES[1:]:
            length = (length - RESAMPLING_KERNEL) // stride + 1 if length >= RESAMPLING_KERNEL else 0
        return max(length, 0)

    # ---- validation (the official config's rules) -----------------------------------
    def validate(self) -> None:
        if self.model_type != MODEL_TYPE:
            raise ConfigError(f"model_type {self.model_type!r} is not {MODEL_TYPE!r}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_mel_bins", "sampling_rate", "n_fft", "win_length", "hop_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dimension {self.head_dim} must be even for the rotary embedding")
        self._validate_subsampling()
        if self.n_fft % 2 or self.n_fft < self.win_length:
            raise ConfigError(f"n_fft {self.n_fft} must be even and >= win_length {self.win_length}")
        kernel = self.conv_depthwise_kernel_size
        if not isinstance(kernel, int) or kernel <= 0 or kernel % 2 == 0:
            raise ConfigError(f"conv_depthwise_kernel_size must be a positive odd integer, got {kernel!r}")
        for name in ("rotary_embedding_base", "layer_norm_eps", "subsampling_layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant {self.variant!r} is unknown; expected one of {', '.join(VARIANTS)}")
        if not isinstance(self.context_seconds, (int, float)) or self.context_seconds <= 0:
            raise ConfigError(f"context_seconds must be positive, got {self.context_seconds!r}")

    def _validate_subsampling(self) -> None:
        channels, depths = self.subsampling_channels, self.subsampling_depths
        for name, values in (("subsampling_channels", channels), ("subsampling_depths", depths)):
            if len(values) != len(SUBSAMPLING_STRIDES):
                raise ConfigError(f"{name} must have {len(SUBSAMPLING_STRIDES)} entries, got {list(values)}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ConfigError(f"{name} must hold positive integers, got {list(values)}")
        if channels[0] != self.num_mel_bins:
            raise ConfigError(f"subsampling_channels must start at num_mel_bins {self.num_mel_bins}, got {list(channels)}")
        if channels[-1] != self.hidden_size:
            raise ConfigError(f"subsampling_channels must end at hidden_size {self.hidden_size}, got {list(channels)}")

    # ---- reading and writing official files -----------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Mert2Config:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from err
        except TypeError as err:  # a field of the wrong JSON type
            raise ConfigError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Mert2Config:
        return cls.from_dict(read_json_object(path, ConfigError), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> Mert2Config:
        return dataclasses.replace(self, **changes)
