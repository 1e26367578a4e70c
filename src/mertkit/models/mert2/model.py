"""MERT-v2: mel front end -> ConvNeXt-V2 subsampling (GRN) -> Conformer blocks with rotary attention.

Module and parameter names are the official state-dict keys (`feature_extractor.*`,
`subsampling_module.*`, `layers.*`), so a checkpoint loads one-to-one and strictly. Slots of
the official nn.Sequential containers that hold no weights (transposes, GELU, GLU) are not
modules here; the weighted ones sit in ModuleDicts under their official index.

    waveform [B, N] 24 kHz, not normalised
      -> mel front end (float32)     [B, N // 240, 128]   100 Hz
      -> 3 ConvNeXt-V2 stages        [B, N // 960, 1024]  25 Hz
      -> 24 Conformer blocks         24 hidden states [B, N // 960, 1024]

Exact padded batching (the official code encodes each length on its own; here one batch
gives the same numbers): each item's STFT reflects at its own end, GRN's time statistic runs
over valid frames only, padding is re-zeroed before every time conv, attention masks padded
keys, and padded output frames are zero as in the official outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mertkit.models.kernels import bf16_cpu_attention, conv1d_time_major, linear, use_onednn
from mertkit.models.mert2.config import RESAMPLING_KERNEL, SUBSAMPLING_STRIDES, Mert2Config

_MEL_FLOOR = 1e-10  # power floor before the dB conversion (reference 1.0, no top-dB clipping)
_STD_FLOOR = 1e-5  # the normalisation divides by max(std, this)
_GRN_EPS = 1e-6
_STFT_BLOCK_FRAMES = 2048  # STFT in blocks of frames: a whole song never holds its full spectrogram
# Above this many frames bf16 attention goes through SDPA (flash kernel, no [F, F] scores) rather
# than the faster matmul path, whose per-head score block grows with the square of the length.
_BF16_MATMUL_ATTENTION_MAX_FRAMES = 2048


@dataclass
class Mert2Output:
    hidden_states: tuple[Tensor, ...]  # one per Conformer block, each [B, F, H]; padded frames are 0
    frame_lengths: Tensor | None  # [B] valid frames per item; None when no lengths were given

    @property
    def last_hidden_state(self) -> Tensor:
        return self.hidden_states[-1]


def frame_mask(frame_lengths: Tensor, num_frames: int) -> Tensor:
    """[B, F] bool, True on each item's valid frames."""
    return torch.arange(num_frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


# ---------------------------------------------------------------------------------------
# Mel front end
# ---------------------------------------------------------------------------------------
class _BufferHolder(nn.Module):
    """`spectrogram` / `mel_scale`: containers that only name a float32 buffer."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer(name, torch.zeros(shape, dtype=torch.float32))

    def _apply(self, fn, recurse: bool = True):
        return _apply_keeping_float32(self, fn)


def _apply_keeping_float32(module: nn.Module, fn) -> nn.Module:
    """Move the module's buffers with `fn` (device changes) but never change their float32 dtype.

    `model.to(torch.bfloat16)` would otherwise round the window and filterbank; casting the
    float32 original to the target device keeps every bit.
    """
    for name, buf in module._buffers.items():
        if buf is not None:
            moved = fn(buf)
            module._buffers[name] = moved if moved.dtype == torch.float32 else buf.to(moved.device)
    for child in module.children():
        child._apply(fn)
    return module


class MelFrontEnd(nn.Module):
    """Log-mel spectrogram, normalised by the checkpoint's statistics, always in float32."""

    def __init__(self, config: Mert2Config):
        super().__init__()
        self.n_fft, self.win_length, self.hop = config.n_fft, config.win_length, config.hop_length
        self.spectrogram = _BufferHolder("window", (config.win_length,))
        self.mel_scale = _BufferHolder("fb", (config.n_fft // 2 + 1, config.num_mel_bins))
        self.register_buffer("mel_mean", torch.zeros(config.num_mel_bins))
        self.register_buffer("mel_std", torch.ones(config.num_mel_bins))

    def _apply(self, fn, recurse: bool = True):
        return _apply_keeping_float32(self, fn)

    def forward(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
        """wave [B, N] -> normalised log-mel [B, N // hop, M] float32 (frames of item b past
        lengths[b] // hop are garbage: the next stage zeroes them)."""
        with torch.autocast(wave.device.type, enabled=False):
            padded = self._reflect_pad(wave.float(), lengths)
            frames = wave.shape[1] // self.hop  # the centred STFT gives one more; the last is dropped
            blocks = [self._log_mel(padded, start, min(start + _STFT_BLOCK_FRAMES, frames))
                      for start in range(0, frames, _STFT_BLOCK_FRAMES)]
            mel = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
            return (mel - self.mel_mean) / self.mel_std.clamp(min=_STD_FLOOR)

    def _reflect_pad(self, wave: Tensor, lengths: Tensor | None) -> Tensor:
        """Centre padding by n_fft/2 with reflection at each item's own ends."""
        pad = self.n_fft // 2
        batch, num = wave.shape
        if lengths is None or bool((lengths == num).all()):
            return F.pad(wave[:, None], (pad, pad), mode="reflect")[:, 0]
        out = wave.new_zeros(batch, num + 2 * pad)
        for b, n in enumerate(lengths.tolist()):
            out[b, : n + 2 * pad] = F.pad(wave[b : b + 1, None, :n], (pad, pad), mode="reflect")[0, 0]
        return out

    def _log_mel(self, padded: Tensor, start: int, stop: int) -> Tensor:
        """Frames start..stop-1 of the centred STFT -> dB mel [B, stop - start, M]."""
        chunk = padded[:, start * self.hop : (stop - 1) * self.hop + self.n_fft]
        spec = torch.stft(chunk, self.n_fft, hop_length=self.hop, win_length=self.win_length,
                          window=self.spectrogram.window, center=False, normalized=False,
                          onesided=True, return_complex=True)  # [B, n_fft/2 + 1, frames]
        power = torch.view_as_real(spec).square().sum(-1)
        mel = torch.matmul(power.transpose(1, 2), self.mel_scale.fb)
        return 10.0 * torch.log10(mel.clamp(min=_MEL_FLOOR))


# ---------------------------------------------------------------------------------------
# ConvNeXt-V2 subsampling
# ---------------------------------------------------------------------------------------
class GRN(nn.Module):
    """Global response normalisation over time: weight * (x * n) + bias + x, where n is each
    channel's L2 norm over the (valid) frames divided by its mean over channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, channels))
        self.bias = nn.Parameter(torch.zeros(1, 1, channels))

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        """x [B, T, C]; keep [B, T, 1] (1 on valid frames) or None."""
        valid = x if keep is None else x * keep
        # The norm accumulates in at least float32 whatever the activation dtype.
        acc = torch.promote_types(x.dtype, torch.float32)
        g = torch.linalg.vector_norm(valid, dim=1, keepdim=True, dtype=acc)  # [B, 1, C]
        n = (g / (g.mean(dim=-1, keepdim=True) + _GRN_EPS)).to(x.dtype)
        return torch.addcmul(self.bias + x, self.weight * n, x)


class ConvNeXtLayer(nn.Module):
    """x + Linear(GRN(GELU(Linear(LayerNorm(DWConv7(x)))))) on time-major [B, T, C]."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.depthwise_block = nn.ModuleDict({"1": nn.Conv1d(channels, channels, 7, padding=3, groups=channels)})
        self.pointwise_block = nn.ModuleDict({
            "0": nn.LayerNorm(channels, eps=eps),
            "1": nn.Linear(channels, 4 * channels),
            "3": GRN(4 * channels),
            "4": nn.Linear(4 * channels, channels),
        })

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        conv = self.depthwise_block["1"]
        y = x if keep is None else x * keep  # an item alone sees zeros past its end
        y = conv1d_time_major(y, conv.weight, conv.bias, padding=3, groups=conv.groups)
        pw = self.pointwise_block
        y = linear(pw["0"](y), pw["1"], gelu=True)
        return x + linear(pw["3"](y, keep), pw["4"])


class SubsamplingStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, depth: int, eps: float):
        super().__init__()
        self.stride = stride
        if in_channels != out_channels or stride > 1:
            self.resampling_layer = nn.ModuleDict({
                "0": nn.LayerNorm(in_channels, eps=eps),
                "2": nn.Conv1d(in_channels, out_channels, RESAMPLING_KERNEL, stride=stride),
            })
        else:
            self.resampling_layer = None
        self.convnext_layers = nn.ModuleList(ConvNeXtLayer(out_channels, eps) for _ in range(depth))

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.resampling_layer is not None:
            conv = self.resampling_layer["2"]
            # Output frame t reads inputs s*t .. s*t+1 only: valid outputs see valid inputs.
            x = conv1d_time_major(self.resampling_layer["0"](x), conv.weight, conv.bias, stride=self.stride)
            if lengths is not None:
                lengths = torch.div(lengths - RESAMPLING_KERNEL, self.stride, rounding_mode="floor") + 1
        keep = None if lengths is None else frame_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)
        for layer in self.convnext_layers:
            x = layer(x, keep)
        return x, lengths


# ---------------------------------------------------------------------------------------
# Conformer
# ---------------------------------------------------------------------------------------
class FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.w_1 = nn.Linear(hidden, intermediate)
        self.w_2 = nn.Linear(intermediate, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return linear(linear(x, self.w_1, gelu=True), self.w_2)


def rotary_tables(frames: int, head_dim: int, base: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos, sin [F, D] (float32) for positions 0..F-1; angles [theta, theta] duplicated to D."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(frames, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x cos + rotate_half(x) sin, rotate_half([a, b]) = [-b, a]; x [B, H, F, D]."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class _LinearCache:
    """An nn.Linear derived from other tensors (concatenated or viewed), rebuilt when they change.

    Used only while autograd records nothing (inference); a plain attribute, so it is neither
    a submodule nor part of the state dict."""

    def __init__(self):
        self._entry: tuple[tuple, nn.Linear] | None = None

    def get(self, sources: list[Tensor], build) -> nn.Linear | None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            return None
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
        if self._entry is None or self._entry[0] != key:
            weight, bias = build()
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            layer.weight = nn.Parameter(weight, requires_grad=False)
            if bias is not None:
                layer.bias = nn.Parameter(bias, requires_grad=False)
            self._entry = (key, layer)
        return self._entry[1]


def _pointwise(x: Tensor, conv: nn.Conv1d, cache: _LinearCache) -> Tensor:
    """A kernel-1 conv over time on time-major x [B, T, C]: a Linear on a view of its weight."""
    layer = cache.get([conv.weight], lambda: (conv.weight[:, :, 0], None))
    if layer is None:
        return conv1d_time_major(x, conv.weight, conv.bias)
    return linear(x, layer)


class RotaryAttention(nn.Module):
    def __init__(self, config: Mert2Config):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query_proj = nn.Linear(hidden, hidden)
        self.key_proj = nn.Linear(hidden, hidden)
        self.value_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self._fused = _LinearCache()  # Q/K/V concatenated: a copy of 3 H^2 weights per layer

    def _qkv_layer(self) -> nn.Linear | None:
        """The three projections as one Linear(H, 3H): one pass over x and one larger GEMM."""
        projs = (self.query_proj, self.key_proj, self.value_proj)
        return self._fused.get([t for p in projs for t in (p.weight, p.bias)],
                               lambda: (torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs])))

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], key_mask: Tensor | None) -> Tensor:
        """x [B, F, H]; key_mask [B, 1, 1, F] bool (True = attend) or None."""
        batch, frames, hidden = x.shape
        fused = self._qkv_layer()
        if fused is None:
            qkv = torch.cat([linear(x, p) for p in (self.query_proj, self.key_proj, self.value_proj)], dim=-1)
        else:
            qkv = linear(x, fused)
        qkv = qkv.view(batch, frames, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, h, F, d]
        cos, sin = (t.to(x.dtype) for t in rotary)
        q, k = apply_rotary(qkv[:2], cos, sin).unbind(0)  # queries and keys turned together
        v = qkv[2]
        if q.dtype == torch.bfloat16 and use_onednn(q, k) and frames <= _BF16_MATMUL_ATTENTION_MAX_FRAMES:
            return linear(bf16_cpu_attention(q, k, v, key_mask), self.out_proj)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return linear(y.transpose(1, 2).reshape(batch, frames, hidden), self.out_proj)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise conv to 2H -> GLU -> depthwise conv -> LayerNorm -> GELU -> pointwise."""

    def __init__(self, config: Mert2Config):
        super().__init__()
        hidden, kernel = config.hidden_size, config.conv_depthwise_kernel_size
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.conv_block = nn.ModuleDict({
            "1": nn.Conv1d(hidden, 2 * hidden, 1, bias=False),
            "3": nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False),
            "4": nn.ModuleDict({"1": nn.LayerNorm(hidden, eps=config.layer_norm_eps)}),
            "6": nn.Conv1d(hidden, hidden, 1, bias=False),
        })
        self._expand, self._project = _LinearCache(), _LinearCache()

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:
        block = self.conv_block
        y = F.glu(_pointwise(self.layer_norm(x), block["1"], self._expand), dim=-1)
        if keep is not None:
            y = y * keep  # zeros past each item's end, as the depthwise conv's padding alone
        depthwise = block["3"]
        y = conv1d_time_major(y, depthwise.weight, None, padding=depthwise.padding[0], groups=depthwise.groups)
        y = F.gelu(block["4"]["1"](y))
        return _pointwise(y, block["6"], self._project)


class ConformerBlock(nn.Module):
    def __init__(self, config: Mert2Config):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.ffn1_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn1 = FeedForward(hidden, config.intermediate_size)
        self.attn_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.attn = RotaryAttention(config)
        self.conv_module = ConvModule(config)
        self.ffn2_layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn2 = FeedForward(hidden, config.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], key_mask: Tensor | None,
                keep: Tensor | None) -> Tensor:
        x = torch.add(x, self.ffn1(self.ffn1_layer_norm(x)), alpha=0.5)
        x = x + self.attn(self.attn_layer_norm(x), rotary, key_mask)
        x = x + self.conv_module(x, keep)
        x = torch.add(x, self.ffn2(self.ffn2_layer_norm(x)), alpha=0.5)
        x = self.final_layer_norm(x)
        return x if keep is None else x * keep


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
class Mert2Model(nn.Module):
    """MERT-v2 backbone returning the output of every Conformer block."""

    # The front end's buffers: float32 in the official files whatever the weights' dtype (a
    # log-mel mean in half precision would shift every band).
    float32_tensors = (
        "feature_extractor.mel_mean",
        "feature_extractor.mel_std",
        "feature_extractor.spectrogram.window",
        "feature_extractor.mel_scale.fb",
    )

    def __init__(self, config: Mert2Config):
        super().__init__()
        self.config = config
        self.feature_extractor = MelFrontEnd(config)
        chain = (config.num_mel_bins, *config.subsampling_channels)
        self.subsampling_module = nn.ModuleList(
            SubsamplingStage(chain[i], chain[i + 1], stride, depth, config.subsampling_layer_norm_eps)
            for i, (stride, depth) in enumerate(zip(SUBSAMPLING_STRIDES, config.subsampling_depths))
        )
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_hidden_layers))

    @property
    def num_hidden_states(self) -> int:
        return self.config.num_hidden_states

    def forward(self, waveform: Tensor, lengths: Tensor | None = None, *, max_layer: int | None = None) -> Mert2Output:
        """waveform [B, N] at 24 kHz (not normalised); lengths [B] valid samples per item.

        max_layer stops early: hidden states 0..max_layer (blocks 1..max_layer+1) are returned.
        """
        lengths = self._check_input(waveform, lengths, max_layer)
        x, frame_lengths = self.embed(waveform, lengths)
        return self.encode(x, frame_lengths, max_layer=max_layer)

    def embed(self, waveform: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Mel front end and subsampling: [B, N] -> ([B, F, H] frame features, [B] valid frames or None).
        Pre-training masks these frames before `encode`."""
        dtype = next(self.layers.parameters()).dtype if len(self.layers) else torch.float32
        x = self.feature_extractor(waveform, lengths).to(dtype)
        frame_lengths = None if lengths is None else torch.div(lengths, self.config.hop_length, rounding_mode="floor")
        for stage in self.subsampling_module:
            x, frame_lengths = stage(x, frame_lengths)
        return x, frame_lengths

    def encode(self, x: Tensor, frame_lengths: Tensor | None, *, max_layer: int | None = None) -> Mert2Output:
        """The Conformer blocks over frame features [B, F, H] (`embed`'s output)."""
        frames = x.shape[1]
        keep = key_mask = None
        if frame_lengths is not None and not bool((frame_lengths == frames).all()):
            valid = frame_mask(frame_lengths, frames)
            keep, key_mask = valid[:, :, None].to(x.dtype), valid[:, None, None, :]
        rotary = rotary_tables(frames, self.config.head_dim, self.config.rotary_embedding_base, x.device)
        stop = len(self.layers) if max_layer is None else max_layer + 1
        states = []
        for layer in self.layers[:stop]:
            x = layer(x, rotary, key_mask, keep)
            states.append(x)
        return Mert2Output(hidden_states=tuple(states), frame_lengths=frame_lengths)

    def _check_input(self, waveform: Tensor, lengths: Tensor | None, max_layer: int | None) -> Tensor | None:
        minimum = self.config.min_input_samples
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be [batch, samples], got shape {tuple(waveform.shape)}")
        if max_layer is not None and not 0 <= max_layer < self.config.num_hidden_states:
            raise ValueError(f"max_layer must be in 0..{self.config.num_hidden_states - 1}, got {max_layer}")
        if waveform.shape[1] < minimum:
            raise ValueError(f"input of {waveform.shape[1]} samples is shorter than the minimum {minimum} "
                             f"(n_fft/2 + 1 at {self.config.sample_rate} Hz)")
        if lengths is not None:
            lengths = lengths.to(waveform.device)
            if bool((lengths < minimum).any()) or bool((lengths > waveform.shape[1]).any()):
                raise ValueError(f"every length must be in {minimum}..{waveform.shape[1]} samples; got {lengths.tolist()}")
        if not bool(torch.isfinite(waveform).all()):
            raise ValueError("waveform holds non-finite samples (NaN or inf)")
        return lengths
