"""The MERT / music2vec inference model, built from small components.

Module and parameter names follow Hugging Face's `HubertModel` / `Data2VecAudioModel`, so an
official state dict maps one-to-one (see `mertkit.models.checkpoint`). The data path:

    waveform [B, T]
      -> feature_extractor   7 strided convs           -> [B, C, F]   F = frames (75 Hz at 24 kHz)
      -> feature_projection  LayerNorm + Linear        -> [B, F, H]
      -> encoder             + positional conv, L transformer layers
      -> hidden_states       L + 1 tensors [B, F, H]

Batches may mix lengths: pass `lengths` (valid samples per item) and every statistic is taken
over each item's own samples (a masked group norm in the front-end, zeroed padding before each
positional conv, a key mask in attention), so a padded batch equals running each item alone.

Speed (see "Kernels" below): activations of the conv front-end are kept time-major
([B, T, C] in memory) and, when autograd records nothing (`torch.inference_mode()` /
`torch.no_grad()`), every matmul and conv goes through oneDNN's fused CPU ops with bias and
GELU fused in, where this CPU runs them for the dtype (`mertkit.models.kernels.cpu_capabilities`:
bf16 needs native bf16). Training, CUDA and other CPUs take the standard ops; the two agree to
float rounding (about 1e-6 on the parity fixtures).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mertkit.models.hubert.config import MertConfig
from mertkit.models.kernels import (
    _gelu_attr, bf16_cpu_attention, conv1d_time_major, linear, use_bf16_attention, use_onednn,
)


@dataclass
class MertOutput:
    """All hidden states, plus what pre-training needs from the front-end."""

    hidden_states: tuple[Tensor, ...]  # each [B, F, H]; index 0 = encoder input
    frame_lengths: Tensor | None  # [B] valid frames per item; None when no lengths were given
    extract_features: Tensor  # conv front-end output [B, F, C], before the projection

    @property
    def last_hidden_state(self) -> Tensor:
        return self.hidden_states[-1]


def frame_mask(frame_lengths: Tensor, num_frames: int) -> Tensor:
    """[B, F] bool, True on each item's valid frames."""
    steps = torch.arange(num_frames, device=frame_lengths.device)
    return steps[None, :] < frame_lengths[:, None]


# ---------------------------------------------------------------------------------------
# Conv feature encoder
# ---------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """conv (no bias in releases) -> optional norm -> GELU, on time-major [B, T, C] activations.

    norm "group": GroupNorm with one group per channel (conv 0 of HuBERT-style models);
    norm "layer": LayerNorm over channels at every frame (every conv of data2vec).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride, self.norm = kernel, stride, norm
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)

    def out_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """x [B, T, Cin] -> [B, T', Cout]; lengths are the valid steps of the output."""
        conv = self.conv
        if self.norm == "group" and conv.in_channels == 1 and use_onednn(x, conv.weight):
            return self._conv_group_norm_folded(x[:, :, 0], lengths)
        y = conv1d_time_major(x, conv.weight, conv.bias, stride=self.stride, gelu=self.norm is None)
        if self.norm == "group":
            return F.gelu(self._group_norm(y, lengths))
        if self.norm == "layer":
            return F.gelu(self.layer_norm(y))
        return y

    def _group_norm(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """Per-channel norm over time of x [B, T, C]."""
        norm = self.layer_norm
        if lengths is None or bool((lengths == x.shape[1]).all()):
            # Channel-first for the stock kernel: its channels-last variant is less accurate.
            return norm(x.transpose(1, 2).contiguous()).transpose(1, 2)
        # Statistics over each item's valid steps only: the official code takes them over the
        # padded waveform, which is why its padded batches differ from single runs.
        valid = frame_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)  # [B, T, 1]
        count = lengths.clamp(min=1).to(x.dtype)[:, None, None]
        mean = (x * valid).sum(1, keepdim=True) / count
        var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + norm.eps)
        return x * norm.weight + norm.bias

    def _conv_group_norm_folded(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
        """conv -> per-channel GroupNorm -> GELU of a mono input in one fused matmul per item.

        The conv is linear in the input windows, so each channel's mean and variance over time
        follow exactly from the windows' mean (k values) and covariance (k x k), computed in
        float64; the norm then folds into the conv weight and bias. This replaces three passes
        over the largest activation of the model ([B, T/5, C]) by one.
        """
        windows = wave.unfold(1, self.kernel, self.stride)  # [B, T', k], a view
        mean_w, cov_w = _window_moments(windows, lengths)  # [B, k], [B, k, k] float64
        weight = self.conv.weight[:, 0, :].double()  # [C, k]
        # A conv bias would shift every step of a channel and its mean alike: it cancels.
        mean = mean_w @ weight.T  # [B, C]
        var = ((weight @ cov_w) * weight).sum(-1)  # [B, C]: w_c^T cov w_c
        norm = self.layer_norm
        scale = norm.weight.double() * torch.rsqrt(var + norm.eps)  # [B, C]
        shift = norm.bias.double() - mean * scale
        outputs = [
            torch.ops.mkldnn._linear_pointwise(
                windows[i], (weight * scale[i, :, None]).to(wave.dtype), shift[i].to(wave.dtype), *_gelu_attr(True)
            )
            for i in range(wave.shape[0])
        ]
        return outputs[0][None] if len(outputs) == 1 else torch.stack(outputs)


def _window_moments(windows: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean [B, k] and covariance [B, k, k] (float64) of each item's valid windows."""
    w64 = windows.double()
    if lengths is None:
        mean = w64.mean(1)
        centred = w64 - mean[:, None]
        return mean, centred.transpose(1, 2) @ centred / windows.shape[1]
    valid = frame_mask(lengths, windows.shape[1])[:, :, None].double()
    count = lengths.clamp(min=1).double()[:, None]
    mean = (w64 * valid).sum(1) / count
    centred = (w64 - mean[:, None]) * valid
    return mean, centred.transpose(1, 2) @ centred / count[:, :, None]


class FeatureEncoder(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        layers = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            if config.feat_extract_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(in_dim, dim, kernel, stride, config.conv_bias, norm))
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveform: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """[B, T] samples -> ([B, C, F] features, [B] valid frames or None).

        The features are a channel-first view of time-major memory: `.transpose(1, 2)` gives
        a contiguous [B, F, C].
        """
        x = waveform[:, :, None]
        for layer in self.conv_layers:
            if lengths is not None:
                lengths = layer.out_lengths(lengths)
            x = layer(x, lengths)
        return x.transpose(1, 2), lengths


class FeatureProjection(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps) if config.feat_proj_layer_norm else None
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.dropout(linear(x, self.projection))


# ---------------------------------------------------------------------------------------
# Positional convolutions
# ---------------------------------------------------------------------------------------
class WeightNormConv1d(nn.Module):
    """Conv1d under weight norm along dim 2 (weight = g * v / ||v||, norm over dims 0 and 1).

    Kept as (weight_g, weight_v) so official tensors load as they are and pre-training
    trains the same parametrisation.
    """

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.groups, self.padding = groups, kernel // 2
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=(2.0 / (kernel * channels)) ** 0.5)
        self._folded: tuple[tuple, Tensor] | None = None

    def weight(self) -> Tensor:
        """The folded weight; cached while autograd records nothing, until g or v change."""
        g, v = self.weight_g, self.weight_v
        if torch.is_grad_enabled() and (g.requires_grad or v.requires_grad):
            return fold_weight_norm(g, v)
        # In-place updates bump _version; .to() and load_state_dict(assign=True) move data.
        key = (g._version, v._version, g.data_ptr(), v.data_ptr(), g.dtype, g.device)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, fold_weight_norm(g, v))
        return self._folded[1]

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, T] -> [B, C, T + 1 - kernel % 2]."""
        if self._bf16_cpu_narrow_groups(x):
            with torch.autocast("cpu", enabled=False):
                out = F.conv1d(x.float(), self.weight().float(), self.bias.float(), padding=self.padding, groups=self.groups)
            return out.to(x.dtype)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)

    def forward_time_major(self, x: Tensor, *, gelu: bool = False) -> Tensor:
        """x [B, T, C] -> [B, T + 1 - kernel % 2, C], optionally followed by GELU."""
        if self._bf16_cpu_narrow_groups(x):
            with torch.autocast("cpu", enabled=False):
                out = conv1d_time_major(x.float(), self.weight().float(), self.bias.float(), padding=self.padding,
                                        groups=self.groups, gelu=gelu)
            return out.to(x.dtype)
        return conv1d_time_major(x, self.weight(), self.bias, padding=self.padding, groups=self.groups, gelu=gelu)

    def _bf16_cpu_narrow_groups(self, x: Tensor) -> bool:
        """bf16 grouped convs with few channels per group come out wrong on AMX CPUs (torch 2.13's
        oneDNN: cosine 0.13 to fp32 at 8 channels per group; 16 and more are exact): run those in
        fp32. The released models have 48 or 64 channels per group and keep the bf16 path."""
        if x.device.type != "cpu" or self.weight_v.shape[1] >= 16:
            return False
        autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return x.dtype == torch.bfloat16 or autocast_bf16


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """weight = g * v / ||v||, the norm over dims 0 and 1 for each index of dim 2."""
    return v * (g / v.norm(dim=(0, 1), keepdim=True))


class PositionalConv(nn.Module):
    """HuBERT/MERT: one grouped conv of even kernel, the last step dropped, then GELU."""

    def __init__(self, config: MertConfig):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        self.conv = WeightNormConv1d(config.hidden_size, kernel, config.num_conv_pos_embedding_groups)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """x [B, F, H] with padded frames already zeroed -> positional term [B, F, H]."""
        y = self.conv.forward_time_major(x, gelu=True)
        return y[:, : y.shape[1] - self.trim]


class Data2VecPositionalLayer(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        kernel = config.conv_pos_kernel_size
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, kernel, padding=kernel // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.trim = 1 if kernel % 2 == 0 else 0
        self.layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, F, H] -> [B, F, H]
        conv = self.conv
        y = conv1d_time_major(x, conv.weight, conv.bias, padding=conv.padding[0], groups=conv.groups)
        return F.gelu(self.layer_norm(y[:, : y.shape[1] - self.trim]))


class Data2VecPositionalConv(nn.Module):
    """music2vec: a stack of convs (kernel 19) each followed by LayerNorm (no affine) and GELU."""

    def __init__(self, config: MertConfig):
        super().__init__()
        self.layers = nn.ModuleList(Data2VecPositionalLayer(config) for _ in range(config.num_conv_pos_embeddings))

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        y = x
        keep = None if valid is None else valid[:, :, None].to(y.dtype)
        for layer in self.layers:
            y = layer(y)
            if keep is not None:
                # Re-zero padding between convs so it cannot reach valid frames of a batch
                # item through the next conv: single runs see zeros there.
                y = y * keep
        return y


# ---------------------------------------------------------------------------------------
# Transformer encoder
# ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def _heads(self, x: Tensor) -> Tensor:
        batch, frames, _ = x.shape
        return x.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """key_mask: [B, 1, 1, F] bool (True = attend) or None when nothing is padded."""
        q, k, v = (self._heads(linear(x, proj)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if use_bf16_attention(q, k, v):  # bf16 CPU inference on a CPU with native bf16
            return linear(bf16_cpu_attention(q, k, v, key_mask), self.out_proj)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
        batch, _, frames, _ = y.shape
        return linear(y.transpose(1, 2).reshape(batch, frames, -1), self.out_proj)


class FeedForward(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(linear(x, self.intermediate_dense, gelu=True))
        return self.output_dropout(linear(x, self.output_dense))


class EncoderLayer(nn.Module):
    """One transformer block; `pre_norm` selects the stable-layer-norm (330M) placement."""

    def __init__(self, config: MertConfig):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.attention = Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.layer_norm(x), key_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, config: MertConfig):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = Data2VecPositionalConv(config) if config.is_data2vec else PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, valid: Tensor | None, max_layer: int | None = None) -> list[Tensor]:
        """x [B, F, H] projected features; valid [B, F] bool or None.

        Returns hidden states 0..max_layer with the official semantics:
        post-LN: [0] = LayerNorm(x + pos), [i] = output of layer i;
        pre-LN:  [0] = x + pos, [1..L-1] = the un-normalised residual stream, [L] = LayerNorm(out).
        """
        num_layers = len(self.layers)
        stop = num_layers if max_layer is None else max_layer
        key_mask = None
        if valid is not None:
            x = x * valid[:, :, None].to(x.dtype)
            if not bool(valid.all()):
                key_mask = valid[:, None, None, :]
        x = x + self.pos_conv_embed(x, valid)
        if not self.pre_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x]
        for i, layer in enumerate(self.layers[:stop]):
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, key_mask)
            if self.pre_norm and i == num_layers - 1:
                x = self.layer_norm(x)
            states.append(x)
        return states


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
class MertModel(nn.Module):
    """MERT-v1 / MERT-v0 / music2vec backbone returning every hidden state."""

    def __init__(self, config: MertConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        if config.mask_time_prob > 0 or config.extra.get("mask_feature_prob", 0) > 0:
            # Only used to mask frames during pre-training; official checkpoints carry it.
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        else:
            self.register_parameter("masked_spec_embed", None)
        self.encoder = Encoder(config)

    @property
    def num_hidden_states(self) -> int:
        return self.config.num_hidden_states

    def forward(
        self,
        input_values: Tensor,
        lengths: Tensor | None = None,
        *,
        max_layer: int | None = None,
        mask_time_indices: Tensor | None = None,
    ) -> MertOutput:
        """input_values [B, T] at `config.sample_rate`; lengths [B] valid samples per item.

        max_layer stops the encoder early: hidden states 0..max_layer are returned.
        mask_time_indices [B, F] bool replaces those frames by `masked_spec_embed`.
        """
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be [batch, samples], got shape {tuple(input_values.shape)}")
        if max_layer is not None and not 0 <= max_layer <= self.config.num_hidden_layers:
            raise ValueError(f"max_layer must be in 0..{self.config.num_hidden_layers}, got {max_layer}")
        if input_values.shape[-1] < self.config.receptive_field:
            raise ValueError(
                f"input of {input_values.shape[-1]} samples is shorter than one frame "
                f"({self.config.receptive_field} samples at {self.config.sample_rate} Hz)"
            )
        if lengths is not None:
            lengths = lengths.to(input_values.device)
            if bool((lengths < self.config.receptive_field).any()):
                raise ValueError(
                    f"every item needs at least {self.config.receptive_field} samples; got lengths {lengths.tolist()}"
                )
        features, frame_lengths = self.feature_extractor(input_values, lengths)
        features = features.transpose(1, 2)
        x = self.feature_projection(features)
        if mask_time_indices is not None:
            x = torch.where(mask_time_indices[:, :, None], self.masked_spec_embed.to(x.dtype), x)
        valid = None if frame_lengths is None else frame_mask(frame_lengths, x.shape[1])
        states = self.encoder(x, valid, max_layer)
        return MertOutput(hidden_states=tuple(states), frame_lengths=frame_lengths, extract_features=features)
