"""The EnCodec 24 kHz acoustic teacher of MERT-v1 pre-training: encoder + residual VQ only.

MERT-v1 learns to predict, for every masked 75 Hz frame, the codes that EnCodec 24 kHz at
6 kbps gives that frame (8 codebooks x 1024 codes). This module is a native PyTorch
re-implementation of the part of EnCodec that produces those codes: the causal SEANet
encoder (weight-normed convs, residual blocks, a residual LSTM, strides 2·4·5·8 = 320
samples per frame) followed by nearest-code (euclidean) residual vector quantisation.
There is no decoder: labels never need to be turned back into audio.

Parameter names follow transformers' `EncodecModel` (`encoder.layers.N.conv.weight`,
`quantizer.layers.N.codebook.embed`) so a Hugging Face `facebook/encodec_24khz` state dict
maps one to one; the original facebookresearch/encodec `.th` layout is mapped by the
explicit table `ORIGINAL_KEY_RULES`. Weight norm is folded into plain conv weights at load
time (`weight = g * v / ||v||`, norm over every dim but 0), so both weight-norm spellings
(`weight_g`/`weight_v` and `parametrizations.weight.original0/1`) are accepted.

Frame rule: T samples give ceil(T / 320) frames (every strided causal conv pads its input
to a whole number of strides). The 24 kHz model has no input normalisation and no
chunking, so a whole file is encoded in one pass; the LSTM makes codes depend on all the
audio before them, so splitting a file would change its codes.
"""
from __future__ import annotations

import json
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mertkit.models.checkpoint import CheckpointError, read_weight_file, state_dict_mismatches

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Training-time state of the EMA codebooks: present in both checkpoint layouts, never
# needed to encode. `inited` is still checked (a never-initialised codebook is an error).
CODEBOOK_TRAINING_BUFFERS = ("inited", "cluster_size", "embed_avg")
# Original facebookresearch/encodec names -> transformers' names. `conv.conv` is SConv1d ->
# NormConv1d -> nn.Conv1d; `_codebook` is VectorQuantization's EuclideanCodebook.
ORIGINAL_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^encoder\.model\.(\d+)\.conv\.conv\.(.+)$", r"encoder.layers.\1.conv.\2"),
    (r"^encoder\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(.+)$", r"encoder.layers.\1.block.\2.conv.\3"),
    (r"^encoder\.model\.(\d+)\.shortcut\.conv\.conv\.(.+)$", r"encoder.layers.\1.shortcut.conv.\2"),
    (r"^encoder\.model\.(\d+)\.lstm\.(.+)$", r"encoder.layers.\1.lstm.\2"),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(.+)$", r"quantizer.layers.\1.codebook.\2"),
)
# Both layouts store the decoder; the teacher never decodes.
DECODER_PREFIX = "decoder."
WEIGHT_NORM_SPELLINGS = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


class EncodecError(ValueError):
    """Base class of the EnCodec teacher's errors."""


class EncodecCheckpointError(EncodecError):
    """A checkpoint or config that cannot be loaded exactly into the EnCodec encoder."""


class EncodecInputError(EncodecError):
    """A waveform or bandwidth the encoder cannot encode."""


@dataclass(frozen=True)
class EncodecConfig:
    """Architecture of an EnCodec encoder + quantiser. Defaults are `facebook/encodec_24khz`.

    Field names follow transformers' `EncodecConfig` except `sample_rate` (`sampling_rate`
    there) and `channels` (`audio_channels`). Only what the 24 kHz family uses is
    implemented; other values are refused by `validate`.
    """

    sample_rate: int = 24000
    channels: int = 1
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    hidden_size: int = 128
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    normalize: bool = False
    chunk_length_s: float | None = None

    def __post_init__(self) -> None:
        if self.codebook_dim is None:  # transformers' rule: the codebooks live in the latent space
            object.__setattr__(self, "codebook_dim", self.hidden_size)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.norm_type != "weight_norm":
            problems.append(f"norm_type {self.norm_type!r} (only 'weight_norm', the 24 kHz model's)")
        if self.channels != 1:
            problems.append(f"channels {self.channels} (only mono)")
        if self.normalize:
            problems.append("normalize=True (the 24 kHz model does not normalise)")
        if self.chunk_length_s is not None:
            problems.append("chunk_length_s (the 24 kHz model encodes whole files)")
        if self.codebook_dim != self.hidden_size:
            problems.append(f"codebook_dim {self.codebook_dim} != hidden_size {self.hidden_size}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            problems.append(f"codebook_size {self.codebook_size} (must be a power of 2)")
        if self.pad_mode not in ("reflect", "constant", "replicate", "circular"):
            problems.append(f"pad_mode {self.pad_mode!r}")
        if not self.target_bandwidths:
            problems.append("target_bandwidths is empty")
        if problems:
            raise EncodecCheckpointError("unsupported EnCodec config: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def bits_per_codebook(self) -> int:
        return int(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        """Codebooks stored in the checkpoint: enough for the highest target bandwidth."""
        bits_per_second = self.frame_rate * self.bits_per_codebook
        return int(1000 * self.target_bandwidths[-1] // bits_per_second)

    def quantizers_for_bandwidth(self, bandwidth: float) -> int:
        """Codebooks used at `bandwidth` kbps (6.0 -> 8 for the 24 kHz model)."""
        if bandwidth not in self.target_bandwidths:
            raise EncodecInputError(
                f"bandwidth {bandwidth} kbps is not one of this model's {list(self.target_bandwidths)}"
            )
        bits_per_second = self.frame_rate * self.bits_per_codebook
        return max(1, math.floor(bandwidth * 1000 / bits_per_second))

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config") -> EncodecConfig:
        """Read the architecture fields of a transformers `config.json` dict."""
        model_type = raw.get("model_type", "encodec")
        if model_type != "encodec":
            raise EncodecCheckpointError(f"{source}: model_type {model_type!r} is not 'encodec'")
        renamed = {"sampling_rate": "sample_rate", "audio_channels": "channels"}
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = renamed.get(key, key)
            if name in known:
                values[name] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**values)
        except EncodecCheckpointError as error:
            raise EncodecCheckpointError(f"{source}: {error}") from None
        except TypeError as error:
            raise EncodecCheckpointError(f"{source}: bad field value ({error})") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> EncodecConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EncodecCheckpointError(f"{path}: cannot read config ({error})") from None
        if not isinstance(raw, dict):
            raise EncodecCheckpointError(f"{path}: config is not a JSON object")
        return cls.from_hf_dict(raw, source=str(path))


# --------------------------------------------------------------------------- modules


def _pad1d(x: Tensor, left: int, right: int, mode: str) -> Tensor:
    """F.pad that also reflect-pads inputs shorter than the padding (as EnCodec does):
    zeros are appended first so the reflection has enough samples, then cut off again."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    length = x.shape[-1]
    widest = max(left, right)
    filler = widest - length + 1 if length <= widest else 0
    if filler:
        x = F.pad(x, (0, filler))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - filler]


class EncodecConv1d(nn.Module):
    """Conv1d with EnCodec's padding: `kernel - stride` samples of (causal: left) padding,
    plus right padding up to a whole number of strides, so T samples give ceil(T/stride)."""

    def __init__(
        self, config: EncodecConfig, in_channels: int, out_channels: int,
        kernel_size: int, stride: int = 1, dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation)
        self.causal = config.use_causal_conv
        self.pad_mode = config.pad_mode
        self.stride = stride
        self.padding_total = (kernel_size - 1) * dilation + 1 - stride

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        to_whole_strides = -(-length // self.stride) * self.stride - length
        if self.causal:
            left, right = self.padding_total, 0
        else:
            right = self.padding_total // 2
            left = self.padding_total - right
        return self.conv(_pad1d(x, left, right + to_whole_strides, self.pad_mode))


class EncodecResnetBlock(nn.Module):
    """SEANet residual block: ELU, conv k=3 (to dim/compress), ELU, conv k=1, plus a 1x1 shortcut."""

    def __init__(self, config: EncodecConfig, dim: int, dilations: tuple[int, int]) -> None:
        super().__init__()
        hidden = dim // config.compress
        kernels = (config.residual_kernel_size, 1)
        widths = ((dim, hidden), (hidden, dim))
        block: list[nn.Module] = []
        for kernel, dilation, (c_in, c_out) in zip(kernels, dilations, widths):
            block += [nn.ELU(), EncodecConv1d(config, c_in, c_out, kernel, dilation=dilation)]
        self.block = nn.ModuleList(block)
        self.shortcut = EncodecConv1d(config, dim, dim, 1) if config.use_conv_shortcut else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x)
        for layer in self.block:
            x = layer(x)
        return residual + x


class EncodecLSTM(nn.Module):
    """Unidirectional LSTM over time with a residual connection, in conv layout [B, C, T]."""

    def __init__(self, config: EncodecConfig, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, config.num_lstm_layers)

    def forward(self, x: Tensor) -> Tensor:
        time_major = x.permute(2, 0, 1)
        out = self.lstm(time_major)[0] + time_major
        return out.permute(1, 2, 0)


class SeanetEncoder(nn.Module):
    """conv k7 -> per ratio (2,4,5,8): resblock, ELU, strided conv doubling width -> LSTM -> ELU -> conv k7."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        width = config.num_filters
        layers: list[nn.Module] = [EncodecConv1d(config, config.channels, width, config.kernel_size)]
        for ratio in reversed(config.upsampling_ratios):
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, width, (config.dilation_growth_rate**j, 1)))
            layers += [nn.ELU(), EncodecConv1d(config, width, width * 2, ratio * 2, stride=ratio)]
            width *= 2
        layers += [
            EncodecLSTM(config, width),
            nn.ELU(),
            EncodecConv1d(config, width, config.hidden_size, config.last_kernel_size),
        ]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class EncodecCodebook(nn.Module):
    """One codebook: index of the nearest (euclidean) code vector."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.embed = nn.Buffer(torch.zeros(config.codebook_size, config.hidden_size))

    def nearest(self, x: Tensor) -> Tensor:
        """x [N, D] -> LongTensor [N]."""
        codes_t = self.embed.t()
        # Same expansion of -||x - e||^2 as the reference, so float rounding (and therefore
        # near-ties) resolve identically.
        neg_dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ codes_t + codes_t.pow(2).sum(0, keepdim=True))
        return neg_dist.max(dim=-1).indices


class EncodecVectorQuantization(nn.Module):
    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.codebook = EncodecCodebook(config)


class EncodecResidualVectorQuantizer(nn.Module):
    """Residual VQ: each codebook quantises what the previous ones left over."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncodecVectorQuantization(config) for _ in range(config.num_quantizers))

    def encode(self, embeddings: Tensor, num_quantizers: int) -> Tensor:
        """embeddings [B, D, T] -> codes [B, n_q, T]."""
        batch, dim, frames = embeddings.shape
        residual = embeddings.transpose(1, 2).reshape(-1, dim)
        all_codes = []
        for vq in self.layers[:num_quantizers]:
            codes = vq.codebook.nearest(residual)
            residual = residual - F.embedding(codes, vq.codebook.embed)
            all_codes.append(codes.view(batch, frames))
        return torch.stack(all_codes, dim=1)


class EncodecEncoder(nn.Module):
    """EnCodec's SEANet encoder and residual vector quantiser (no decoder)."""

    def __init__(self, config: EncodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncodecConfig()
        self.encoder = SeanetEncoder(self.config)
        self.quantizer = EncodecResidualVectorQuantizer(self.config)

    def num_frames(self, num_samples: int) -> int:
        """Code frames for a waveform of `num_samples` samples: ceil(T / hop)."""
        return -(-num_samples // self.config.hop_length)

    @torch.inference_mode()
    def encode_codes(self, wav: Tensor, bandwidth: float = 6.0) -> Tensor:
        """wav [B, T] float at `config.sample_rate` -> LongTensor [B, n_q, ceil(T/hop)]."""
        num_quantizers = self.config.quantizers_for_bandwidth(bandwidth)
        if wav.ndim != 2:
            raise EncodecInputError(f"expected a waveform batch [B, T], got shape {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise EncodecInputError("cannot encode an empty waveform")
        if not wav.is_floating_point():
            raise EncodecInputError(f"expected a float waveform, got {wav.dtype}")
        wav = wav.to(device=self.quantizer.layers[0].codebook.embed.device, dtype=torch.float32)
        # TF32 convolutions on GPU would move codes off the float32 reference.
        exact = torch.backends.cudnn.flags(allow_tf32=False) if wav.is_cuda else nullcontext()
        with exact:
            embeddings = self.encoder(wav.unsqueeze(1))
            return self.quantizer.encode(embeddings, num_quantizers)


def codes_for_waveform(model: EncodecEncoder, wav_24k: np.ndarray | Tensor, *, bandwidth: float = 6.0) -> np.ndarray:
    """Codes of one mono waveform at the model's rate: int16 [n_q, ceil(T/hop)] (8 at 6 kbps)."""
    wav = torch.as_tensor(np.asarray(wav_24k) if isinstance(wav_24k, np.ndarray) else wav_24k)
    if wav.ndim != 1:
        raise EncodecInputError(f"expected a mono waveform [T], got shape {tuple(wav.shape)}")
    if wav.is_floating_point() and not bool(torch.isfinite(wav).all()):
        raise EncodecInputError("waveform contains NaN or infinite samples")
    if model.config.codebook_size > np.iinfo(np.int16).max + 1:
        raise EncodecInputError(f"codebook_size {model.config.codebook_size} does not fit int16 labels")
    codes = model.encode_codes(wav.unsqueeze(0), bandwidth=bandwidth)[0]
    return codes.cpu().numpy().astype(np.int16)


@dataclass
class EncodecTeacher:
    """The EnCodec labeller as `mertkit.pretrain.labels.write_labels` sees it."""

    model: EncodecEncoder
    bandwidth: float = 6.0
    name: str = "encodec_24khz"

    def __post_init__(self) -> None:
        self.model.config.quantizers_for_bandwidth(self.bandwidth)

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.model.config.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.model.config.quantizers_for_bandwidth(self.bandwidth)

    @property
    def codebook_size(self) -> int:
        return self.model.config.codebook_size

    def codes(self, wav: np.ndarray) -> np.ndarray:
        return codes_for_waveform(self.model, wav, bandwidth=self.bandwidth)


# --------------------------------------------------------------------------- loading


def _read_tensor_file(path: Path) -> dict[str, Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a weights-only torch pickle."""
    try:
        return read_weight_file(path)
    except CheckpointError as error:
        raise EncodecCheckpointError(str(error)) from None


def _rename_original_keys(state: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    """facebookresearch/encodec names -> transformers names, by `ORIGINAL_KEY_RULES`."""
    renamed: dict[str, Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key.startswith(DECODER_PREFIX):
            continue
        for pattern, replacement in ORIGINAL_KEY_RULES:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                renamed[new_key] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise EncodecCheckpointError(
            f"{source}: unexpected tensors in original EnCodec checkpoint: {_listing(unknown)}"
        )
    return renamed


def _fold_weight_norm(state: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    """Replace each (g, v) pair by weight = g * v / ||v|| (norm over all dims but 0)."""
    folded = dict(state)
    for g_suffix, v_suffix in WEIGHT_NORM_SPELLINGS:
        for key in [k for k in state if k.endswith(g_suffix)]:
            stem = key[: -len(g_suffix)]
            v_key = stem + v_suffix
            if v_key not in state:
                raise EncodecCheckpointError(f"{source}: {key} has no matching {v_key}")
            g, v = folded.pop(key), folded.pop(v_key)
            norm = v.norm(dim=tuple(range(1, v.ndim)), keepdim=True)
            folded[stem + ".weight"] = g * (v / norm)
        orphans = [k for k in folded if k.endswith(v_suffix)]
        if orphans:
            raise EncodecCheckpointError(f"{source}: weight-norm directions without magnitudes: {_listing(orphans)}")
    return folded


def _drop_training_buffers(state: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    kept = {}
    for key, tensor in state.items():
        if key.startswith(DECODER_PREFIX):
            continue
        buffer_name = key.rsplit(".", 1)[-1]
        if ".codebook." in key and buffer_name in CODEBOOK_TRAINING_BUFFERS:
            if buffer_name == "inited" and not bool(tensor.all()):
                raise EncodecCheckpointError(f"{source}: {key} says this codebook was never initialised")
            continue
        kept[key] = tensor
    return kept


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def load_state_dict_strict(model: EncodecEncoder, state: dict[str, Tensor], source: str | Path) -> None:
    """Load a raw checkpoint dict of either layout; every tensor must match by name and shape."""
    if any(k.startswith(("encoder.model.", "quantizer.vq.")) for k in state):
        state = _rename_original_keys(state, source)
    state = _drop_training_buffers(_fold_weight_norm(state, source), source)
    problems = state_dict_mismatches(model.state_dict(), state, limit=8)
    if problems:
        raise EncodecCheckpointError(f"{source}: does not fit the EnCodec config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def _locate_weights(path: Path) -> tuple[Path, EncodecConfig | None]:
    if not path.exists():
        raise EncodecCheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        return path, None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise EncodecCheckpointError(f"{path}: a Hugging Face EnCodec directory needs config.json")
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name, EncodecConfig.from_json_file(config_file)
    raise EncodecCheckpointError(f"{path}: no weights file (looked for {', '.join(HF_WEIGHT_FILES)})")


def load_encodec(
    path: str | Path, device: str | torch.device = "cpu", *, config: EncodecConfig | None = None
) -> EncodecEncoder:
    """Load an EnCodec encoder + quantiser, in eval mode on `device`.

    `path` is a Hugging Face directory (config.json + model.safetensors or pytorch_model.bin),
    a `.safetensors` file, or a torch file (`.th` original layout or `.bin`/`.pt` in either
    layout, read with `weights_only=True`). A bare file uses `config` or, when none is
    given, the 24 kHz defaults; a directory's config.json wins unless `config` is given.
    """
    path = Path(path)
    weights, dir_config = _locate_weights(path)
    model = EncodecEncoder(config or dir_config or EncodecConfig())
    load_state_dict_strict(model, _read_tensor_file(weights), weights)
    return model.to(device).eval()
