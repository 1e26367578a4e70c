"""The one interface every model family implements, and the table that dispatches to them.

A family is: the `model_type`s of its `config.json`, a config reader, a model builder, a strict
importer of an official state dict, and the input contract its models carry. Every model
returned by `mertkit.load` satisfies `FamilyModel`: `model(waveform [B, N], lengths [B] | None)`
returns an output with `hidden_states` (a tuple of [B, F, H]) and `frame_lengths` ([B] or None).
Downstream code (extraction, store, probes, HEAR) asks `contract_of(model)` what a model
expects instead of reading family-specific config fields.

Families today: "hubert" (MERT-v0/v1, music2vec; conv waveform front end, 50/75 Hz) and
"mert2" (MERT-v2; mel + ConvNeXt-V2 + Conformer, 25 Hz).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from mertkit.models.hubert.config import SUPPORTED_MODEL_TYPES, ConfigError


@dataclass(frozen=True)
class InputContract:
    """What a model expects and returns, independent of its architecture."""

    family: str
    sample_rate: int
    samples_per_frame: int  # input samples per output frame
    min_input_samples: int  # shorter inputs give no frame and are an error
    num_hidden_states: int
    do_normalize: bool  # zero-mean / unit-variance inputs (Wav2Vec2FeatureExtractor) or raw
    context_seconds: float  # the natural context: the pre-training crop length
    windowing_exact: bool  # True only if windowed extraction reproduces the whole-input pass
    default_window_seconds: float  # extraction's default window; 0 = the whole file in one pass
    # Centre of frame 0's input span, in samples from the input start: frame j's timestamp is
    # (start + samples_per_frame * j + first_frame_centre) / sample_rate.
    first_frame_centre: float
    # True when the model reads float32 samples whatever its weights' dtype (its front end runs
    # in float32); otherwise inputs are cast to the weights' dtype.
    float32_input: bool
    num_frames: Callable[[int], int] = field(compare=False, repr=False)  # frames for N input samples

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame


class FamilyOutput(Protocol):
    hidden_states: tuple[Tensor, ...]
    frame_lengths: Tensor | None


class FamilyModel(Protocol):
    config: Any

    def __call__(self, waveform: Tensor, lengths: Tensor | None = None, *,
                 max_layer: int | None = None) -> FamilyOutput: ...


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    read_config: Callable[[dict[str, Any], str], Any]  # (config.json object, source) -> config
    # (config, official state dict, source, dtype) -> model in eval mode; strict: a missing,
    # unexpected or mis-shaped tensor is a CheckpointError naming it.
    import_checkpoint: Callable[[Any, dict[str, Tensor], str, torch.dtype], nn.Module]
    # (config, do_normalize or None for the family default, registry context or None) -> contract
    contract: Callable[[Any, bool | None, float | None], InputContract]


# ---------------------------------------------------------------------------------------
# HuBERT-style family (MERT-v0, MERT-v1, music2vec)
# ---------------------------------------------------------------------------------------
_HUBERT_PRETRAIN_CONTEXT = 5.0  # MERT's pre-training crop, when no registry entry says otherwise


def _hubert_config(data: dict[str, Any], source: str):
    from mertkit.models.hubert.config import MertConfig

    return MertConfig.from_dict(data, source=source)


def _hubert_import(config, state: dict[str, Tensor], source: str, dtype: torch.dtype) -> nn.Module:
    from mertkit.models.checkpoint import _as_float32, check_weights, to_mertkit_names
    from mertkit.models.hubert.config import weight_shapes
    from mertkit.models.hubert.model import MertModel

    state = to_mertkit_names(state)
    check_weights(weight_shapes(config), state, source=source)  # before the model is built
    model = MertModel(config)
    model.load_state_dict(_as_float32(state), strict=True)
    return model.to(dtype=dtype).eval()


def _hubert_contract(config, do_normalize: bool | None, context: float | None) -> InputContract:
    context = context if context is not None else _HUBERT_PRETRAIN_CONTEXT
    return InputContract(
        family="hubert", sample_rate=config.sample_rate, samples_per_frame=config.hop_length,
        min_input_samples=config.receptive_field, num_hidden_states=config.num_hidden_states,
        do_normalize=True if do_normalize is None else do_normalize, context_seconds=context,
        # The first conv's group norm and global attention see the whole input.
        windowing_exact=False, default_window_seconds=context,
        first_frame_centre=config.receptive_field / 2, float32_input=False, num_frames=config.num_frames,
    )


# ---------------------------------------------------------------------------------------
# MERT-v2
# ---------------------------------------------------------------------------------------
def _mert2_config(data: dict[str, Any], source: str):
    from mertkit.models.mert2.config import Mert2Config

    return Mert2Config.from_dict(data, source=source)


def _mert2_import(config, state: dict[str, Tensor], source: str, dtype: torch.dtype) -> nn.Module:
    from mertkit.models.mert2.importer import import_mert2

    return import_mert2(config, state, source=source, dtype=dtype)


def _mert2_contract(config, do_normalize: bool | None, context: float | None) -> InputContract:
    return InputContract(
        family="mert2", sample_rate=config.sample_rate, samples_per_frame=config.samples_per_frame,
        min_input_samples=config.min_input_samples, num_hidden_states=config.num_hidden_states,
        # Trained on raw waveforms: the card's processor does not normalise.
        do_normalize=False if do_normalize is None else do_normalize,
        context_seconds=float(config.context_seconds),
        # GRN's whole-sequence statistic and global attention: every frame sees the whole input.
        windowing_exact=False,
        # FullSong is meant for one pass over a whole song; 30s for its 30 s crops.
        default_window_seconds=0.0 if config.variant == "fs" else float(config.context_seconds),
        # Frame j reads mel frames 4j..4j+3, centred at hop * (4j + 1.5) by the centred STFT.
        first_frame_centre=config.first_frame_centre, float32_input=True, num_frames=config.num_frames,
    )


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily("hubert", SUPPORTED_MODEL_TYPES, _hubert_config, _hubert_import, _hubert_contract),
        ModelFamily("mert2", ("mert2",), _mert2_config, _mert2_import, _mert2_contract),
    )
}


def family_for(model_type: Any, *, source: str = "config") -> ModelFamily:
    """The family whose config.json carries this `model_type`."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    if model_type is None:
        raise ConfigError(f"{source}: no 'model_type' field (expected one of {known})")
    raise ConfigError(f"{source}: model_type {model_type!r} is not a supported family (expected one of {known})")


def read_config(data: dict[str, Any], *, source: str = "config") -> tuple[ModelFamily, Any]:
    """(family, config) from a config.json object, dispatched on `model_type`."""
    family = family_for(data.get("model_type"), source=source)
    return family, family.read_config(data, source)


def family_of(model: nn.Module) -> ModelFamily:
    return family_for(getattr(model.config, "model_type", None), source=type(model).__name__)


def contract_of(model: nn.Module) -> InputContract:
    """The input contract of a loaded (or freshly built) model: its config, plus what
    `mertkit.load` recorded in `model.info` (normalisation) and the registry (context)."""
    info = getattr(model, "info", None)
    context = None
    if info is not None:
        from mertkit.models.registry import lookup

        card = lookup(info.name)
        context = card.context_seconds if card is not None else None
    return family_of(model).contract(model.config, info.do_normalize if info is not None else None, context)
