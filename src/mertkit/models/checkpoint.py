"""Strict import of official checkpoints: a local directory, a hub id, or a registry name.

Reads `config.json`, optional `preprocessor_config.json`, and the weights from
`model.safetensors` (single or sharded) or `pytorch_model.bin` (single or sharded, loaded
with `torch.load(weights_only=True)`: no pickle code ever runs). Never runs code from a
checkpoint or the hub. Loading is strict: every missing, unexpected or mis-shaped tensor is
named in the error.
"""
from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mertkit.fileio import atomic_write, write_json
from mertkit.models.family import FamilyModel, read_config
from mertkit.models.hubert.config import ConfigError, MertConfig, read_json_object
from mertkit.models.hubert.model import MertModel
from mertkit.models.registry import RETIRED, ModelCard, asset_dir, lookup

# Weight-norm tensors of the positional conv: newer torch/transformers save the
# parametrisation's names, the hub files the legacy ones. Both map to ours.
_RENAMES = {
    "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.weight_g",
    "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.weight_v",
}
# Prefixes under which a base model's tensors appear in wrapper checkpoints.
_BASE_PREFIXES = ("hubert.", "data2vec_audio.", "mert_model.", "music_hubert.")

_WEIGHT_FILES = (
    ("model.safetensors.index.json", "safetensors-sharded"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin-sharded"),
    ("pytorch_model.bin", "bin"),
)
_HUB_PATTERNS = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json",
                 "pytorch_model*.bin", "pytorch_model.bin.index.json"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, or mapped exactly onto the model."""


@dataclass(frozen=True)
class LoadedInfo:
    """Where a model came from and the input contract it carries."""

    name: str
    path: str
    revision: str | None
    sample_rate: int
    frame_rate: float
    num_hidden_states: int
    do_normalize: bool


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------
def load(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> FamilyModel:
    """Load a model of any family (`mertkit.models.family`, dispatched on config.json's
    `model_type`) in eval mode; `model.info` says what it is and expects."""
    directory, card, revision = resolve(name_or_path, revision, cache_dir=cache_dir, local_files_only=local_files_only)
    config_path = directory / "config.json"
    family, config = read_config(read_json_object(config_path, ConfigError), source=str(config_path))
    info = _info(directory, config, card, revision, family.contract(config, None, None).do_normalize)
    # The family's importer checks config and weights against each other before it builds the
    # model, so a config that disagrees with its weights never costs the memory it describes.
    model = family.import_checkpoint(config, read_state_dict(directory), str(directory), dtype)
    model.info = info
    return model.to(device=device).eval()


def resolve(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> tuple[Path, ModelCard | None, str | None]:
    """A local directory, or a hub snapshot (from the cache or downloaded) for a name / hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path, lookup(_config_name(path) or path.name), revision
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + weights), got a file")
    name = str(name_or_path)
    card = lookup(name)
    if card is not None and card.asset is not None:
        return _shipped(card), card, None
    hub_id = card.hub_id if card else name
    if card is None and name.lower() in RETIRED:
        raise CheckpointError(f"{name!r} is no longer shipped: {RETIRED[name.lower()]}")
    if card is None and name.count("/") != 1:
        raise CheckpointError(
            f"{name!r} is neither a local directory, a hub id ('owner/name') nor a known model "
            f"({', '.join(_known_names())})"
        )
    if revision is None and card is not None:
        revision = card.revision
    return _snapshot(hub_id, revision, cache_dir, local_files_only), card, revision


def _shipped(card: ModelCard) -> Path:
    """The directory of a model that ships inside the package."""
    directory = asset_dir(card)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{card.name}: the shipped model is missing from this installation ({directory})")
    return directory


def _known_names() -> list[str]:
    from mertkit.models.registry import PRETRAINED

    return list(PRETRAINED)


def _snapshot(hub_id: str, revision: str | None, cache_dir, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                hub_id, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS,
                local_files_only=local_files_only,
            )
        )
    except (LocalEntryNotFoundError, OSError, HfHubHTTPError) as err:
        rev = f" at revision {revision}" if revision else ""
        raise CheckpointError(
            f"could not get {hub_id}{rev} from the hub and no cached copy was found ({type(err).__name__}). "
            f"Offline? Download it where the hub is reachable (`hf download {hub_id} --local-dir DIR`) and "
            f"pass DIR to mertkit.load / --model, or point HF_HUB_CACHE (or cache_dir=) at a cache that has it."
        ) from err


def _config_name(directory: Path) -> str | None:
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # MertConfig.from_json reports the real problem right after
    name = data.get("_name_or_path") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def _info(directory: Path, config, card: ModelCard | None, revision: str | None, family_normalize: bool) -> LoadedInfo:
    do_normalize = card.do_normalize if card else family_normalize
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        data = read_json_object(pre, CheckpointError)
        do_normalize = data.get("do_normalize", do_normalize)
        if not isinstance(do_normalize, bool):
            raise CheckpointError(f"{pre}: do_normalize must be true or false, got {do_normalize!r}")
        rate = data.get("sampling_rate")
        if rate is not None and rate != config.sample_rate:
            raise CheckpointError(f"{pre}: sampling_rate {rate} disagrees with config.json sample_rate {config.sample_rate}")
    return LoadedInfo(
        name=card.name if card else (_config_name(directory) or directory.name),
        path=str(directory),
        revision=revision,
        sample_rate=config.sample_rate,
        frame_rate=config.frame_rate,
        num_hidden_states=config.num_hidden_states,
        do_normalize=do_normalize,
    )


# ---------------------------------------------------------------------------------------
# Reading weight files
# ---------------------------------------------------------------------------------------
def read_state_dict(directory: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a checkpoint directory, from the first weight layout present."""
    directory = Path(directory)
    for filename, kind in _WEIGHT_FILES:
        path = directory / filename
        if path.is_file():
            if kind.endswith("sharded"):
                return _read_sharded(path, kind)
            return read_weight_file(path)
    raise CheckpointError(
        f"{directory}: no weights found (looked for {', '.join(name for name, _ in _WEIGHT_FILES)})"
    )


def read_weight_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a weights-only torch pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read torch checkpoint: it is corrupt or holds objects other than tensors "
            f"({type(err).__name__}). mertkit loads pickles with weights_only=True and never runs code from them."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a flat state dict of tensors")
    return state


def _read_sharded(index_path: Path, kind: str) -> dict[str, Tensor]:
    weight_map = read_json_object(index_path, CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: not a valid shard index (no 'weight_map' of tensor -> file names)")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        state.update(read_weight_file(shard_path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{index_path}: tensors listed in the index but absent from the shards: {missing[:5]}")
    return state


# ---------------------------------------------------------------------------------------
# Mapping onto the model
# ---------------------------------------------------------------------------------------
def to_mertkit_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official names -> ours: strip a wrapper prefix, unify the weight-norm spelling."""
    keys = list(state)
    for prefix in _BASE_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    return {_RENAMES.get(k, k): v for k, v in state.items()}


def state_dict_mismatches(expected: dict[str, Tensor], state: dict[str, Tensor], limit: int = 20) -> list[str]:
    """What keeps `state` from loading into a model whose state dict is `expected`: missing,
    unexpected and wrongly shaped tensors, each named. Empty when everything fits."""
    return _shape_problems({name: tuple(t.shape) for name, t in expected.items()}, state, limit)


def _shape_problems(expected: Mapping[str, Sequence[int]], state: Mapping[str, Tensor], limit: int) -> list[str]:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    for label, names in (("missing tensors", missing), ("unexpected tensors", unexpected),
                         ("wrongly shaped tensors", wrong_shape)):
        if names:
            more = f" ... ({len(names)} in all)" if len(names) > limit else ""
            problems.append(f"{label}: {', '.join(names[:limit])}{more}")
    return problems


def check_weights(expected: Mapping[str, Sequence[int]], state: Mapping[str, Tensor], *, source: str,
                  limit: int = 20) -> None:
    """Refuse weights that do not fit the expected name -> shape table, or that hold NaN or
    Inf, naming the tensors. Any model family can call it with its own table, before building
    the model (`weight_shapes(config)` for the HuBERT family)."""
    problems = _shape_problems(expected, state, limit)
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the config — " + " | ".join(problems))
    # NaN or Inf weights would give non-finite features for every input, silently.
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        more = f" ... ({len(bad)} in all)" if len(bad) > limit else ""
        raise CheckpointError(f"{source}: non-finite values (NaN or Inf) in tensors: {', '.join(sorted(bad)[:limit])}{more}")


def load_state_dict_strict(model: MertModel, state: dict[str, Tensor], *, source: str) -> None:
    """Copy `state` into `model`, or fail naming every tensor that does not fit or is not finite."""
    state = to_mertkit_names(state)
    check_weights({name: tuple(t.shape) for name, t in model.state_dict().items()}, state, source=source)
    model.load_state_dict(_as_float32(state), strict=True)


def _as_float32(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------
# Writing the official layout
# ---------------------------------------------------------------------------------------
def save_pretrained(
    model: MertModel,
    out_dir: str | os.PathLike,
    *,
    formats: tuple[str, ...] = ("bin", "safetensors"),
    do_normalize: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write config.json, preprocessor_config.json and the weights in the official layout.

    `bin` is `pytorch_model.bin` with the hub's legacy `weight_g/weight_v` names (exactly our
    own names); `safetensors` is `model.safetensors` with the same names. `dtype` is how the
    floating tensors are stored (float16 halves the files; loading always computes in float32).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    info = getattr(model, "info", None)
    normalize = do_normalize if do_normalize is not None else (info.do_normalize if info else True)
    write_json(out / "config.json", config.to_dict())
    write_json(out / "preprocessor_config.json", preprocessor_config(config, normalize))
    state = stored_state(model.state_dict(), dtype, keep_float32=getattr(model, "float32_tensors", ()))
    if "bin" in formats:
        atomic_write(out / "pytorch_model.bin", lambda handle: torch.save(state, handle))
    if "safetensors" in formats:
        from safetensors.torch import save

        blob = save(state, metadata={"format": "pt"})
        atomic_write(out / "model.safetensors", lambda handle: handle.write(blob))
    return out


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def stored_state(state: Mapping[str, Tensor], dtype: torch.dtype, keep_float32: Sequence[str] = ()) -> dict[str, Tensor]:
    """The tensors as written: floating ones in `dtype` but those named in `keep_float32` (a value
    float16 cannot hold is an error, never an inf in the file), the rest as they are."""
    if dtype not in STORAGE_DTYPES.values():
        raise CheckpointError(f"weights can be stored as {', '.join(STORAGE_DTYPES)}, not {dtype}")
    narrowing = dtype != torch.float32
    limit = torch.finfo(dtype).max
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if name in keep_float32:
            tensor = tensor.float()
        elif tensor.is_floating_point():
            if narrowing and bool((tensor.float().abs() > limit).any()):
                raise CheckpointError(f"{name}: values beyond {dtype}'s range ({limit:g}); store as float32")
            tensor = tensor.to(dtype)
        out[name] = tensor.contiguous()
    return out


def preprocessor_config(config: MertConfig, do_normalize: bool) -> dict:
    return {
        "do_normalize": do_normalize,
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
        "sampling_rate": config.sample_rate,
    }


__all__ = ["CheckpointError", "ConfigError", "LoadedInfo", "check_weights", "load", "read_state_dict", "save_pretrained"]
