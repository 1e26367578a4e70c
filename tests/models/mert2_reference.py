"""A plain eager reading of MERT-v2's published forward, on a raw state dict.

What the official remote code does, written independently from mertkit's model: functional
torch ops, channel-first convs, the mel front end through torch.stft's own centring, rotary
embedding in the rotate_half form, attention through SDPA without a mask, and a batch encoded by
groups of equal length (as the official code does with an attention mask). Used by the tests
(in float64, as the exactness reference) and by benchmarks/bench_mert2.py (as the baseline).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_log_mel(w: dict[str, Tensor], cfg, wave: Tensor) -> Tensor:
    """[B, N] -> [B, N // hop, M] normalised log-mel, computed in float32 (float64 stays)."""
    dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    fe = "feature_extractor."
    spec = torch.stft(wave.to(dtype), cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                      window=w[fe + "spectrogram.window"].to(dtype), center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)
    power = spec.abs() ** 2  # [B, F, T + 1]
    mel = torch.einsum("bft,fm->btm", power, w[fe + "mel_scale.fb"].to(dtype))
    db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))[:, :-1]
    return (db - w[fe + "mel_mean"].to(dtype)) / torch.clamp(w[fe + "mel_std"].to(dtype), min=1e-5)


def _grn(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    gx = torch.norm(x, p=2, dim=1, keepdim=True)  # over time
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    return gamma * (x * nx) + beta + x


def _subsampling(w: dict[str, Tensor], cfg, x: Tensor) -> Tensor:
    eps = cfg.subsampling_layer_norm_eps
    for s, depth in enumerate(cfg.subsampling_depths):
        p = f"subsampling_module.{s}."
        if p + "resampling_layer.0.weight" in w:
            x = F.layer_norm(x, x.shape[-1:], w[p + "resampling_layer.0.weight"], w[p + "resampling_layer.0.bias"], eps)
            x = F.conv1d(x.transpose(1, 2), w[p + "resampling_layer.2.weight"], w[p + "resampling_layer.2.bias"],
                         stride=2).transpose(1, 2)
        for j in range(depth):
            q = f"{p}convnext_layers.{j}."
            y = F.conv1d(x.transpose(1, 2), w[q + "depthwise_block.1.weight"], w[q + "depthwise_block.1.bias"],
                         padding=3, groups=x.shape[-1]).transpose(1, 2)
            y = F.layer_norm(y, y.shape[-1:], w[q + "pointwise_block.0.weight"], w[q + "pointwise_block.0.bias"], eps)
            y = F.gelu(F.linear(y, w[q + "pointwise_block.1.weight"], w[q + "pointwise_block.1.bias"]))
            y = _grn(y, w[q + "pointwise_block.3.weight"], w[q + "pointwise_block.3.bias"])
            x = x + F.linear(y, w[q + "pointwise_block.4.weight"], w[q + "pointwise_block.4.bias"])
    return x


def _rotate(x: Tensor, base: float) -> Tensor:
    """Rotary embedding as published: x cos + rotate_half(x) sin, angles [theta, theta] from a
    float32 inv_freq, tables cast to the activation dtype (the remote code's arithmetic)."""
    frames, dim = x.shape[-2:]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(frames, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


def _ln(x: Tensor, w: dict[str, Tensor], name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps)


def _ffn(x: Tensor, w: dict[str, Tensor], p: str) -> Tensor:
    return F.linear(F.gelu(F.linear(x, w[p + "w_1.weight"], w[p + "w_1.bias"])), w[p + "w_2.weight"], w[p + "w_2.bias"])


def _conformer(w: dict[str, Tensor], cfg, x: Tensor, i: int) -> Tensor:
    p, eps = f"layers.{i}.", cfg.layer_norm_eps
    batch, frames, hidden = x.shape
    heads = cfg.num_attention_heads
    x = x + 0.5 * _ffn(_ln(x, w, p + "ffn1_layer_norm", eps), w, p + "ffn1.")
    h = _ln(x, w, p + "attn_layer_norm", eps)
    q, k, v = (F.linear(h, w[f"{p}attn.{n}_proj.weight"], w[f"{p}attn.{n}_proj.bias"])
               .view(batch, frames, heads, -1).transpose(1, 2) for n in ("query", "key", "value"))
    q, k = _rotate(q, cfg.rotary_embedding_base), _rotate(k, cfg.rotary_embedding_base)
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, frames, hidden)
    x = x + F.linear(a, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"])
    c = _ln(x, w, p + "conv_module.layer_norm", eps).transpose(1, 2)
    c = F.glu(F.conv1d(c, w[p + "conv_module.conv_block.1.weight"]), dim=1)
    kernel = cfg.conv_depthwise_kernel_size
    c = F.conv1d(c, w[p + "conv_module.conv_block.3.weight"], padding=kernel // 2, groups=hidden)
    c = F.gelu(_ln(c.transpose(1, 2), w, p + "conv_module.conv_block.4.1", eps)).transpose(1, 2)
    x = x + F.conv1d(c, w[p + "conv_module.conv_block.6.weight"]).transpose(1, 2)
    x = x + 0.5 * _ffn(_ln(x, w, p + "ffn2_layer_norm", eps), w, p + "ffn2.")
    return _ln(x, w, p + "final_layer_norm", eps)


@torch.no_grad()
def reference_forward(w: dict[str, Tensor], cfg, wave: Tensor) -> list[Tensor]:
    """Equal-length batch [B, N] -> the num_hidden_layers block outputs [B, N // (4 hop), H],
    computed in the weights' dtype after a float32 (or float64) front end."""
    dtype = w["layers.0.final_layer_norm.weight"].dtype
    x = _subsampling(w, cfg, reference_log_mel(w, cfg, wave).to(dtype))
    states = []
    for i in range(cfg.num_hidden_layers):
        x = _conformer(w, cfg, x, i)
        states.append(x)
    return states


def reference_batch(w: dict[str, Tensor], cfg, waves: list[Tensor]) -> list[list[Tensor]]:
    """Items of any lengths: encoded by groups of equal length, as the official code does.
    Returns, per item, its block outputs [F_i, H]."""
    out: list[list[Tensor] | None] = [None] * len(waves)
    by_length: dict[int, list[int]] = {}
    for i, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(i)
    for members in by_length.values():
        states = reference_forward(w, cfg, torch.stack([waves[i] for i in members]))
        for row, i in enumerate(members):
            out[i] = [s[row] for s in states]
    return out
