"""CPU inference kernels shared by the model families.

Why: on CPU, F.linear calls MKL's sgemm, which runs an AVX2 path on AMD CPUs, while
oneDNN's inference ops use AVX-512 (and AVX512-BF16 for bf16) there, fuse bias and
GELU, and take time-major conv inputs without transposes: about 2x the fp32 matmul
throughput. They have no autograd formula, so they run only when nothing is recorded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _has_onednn_ops() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return all(hasattr(ops, name) for name in ("_linear_pointwise", "_convolution_pointwise"))


HAS_ONEDNN_OPS = _has_onednn_ops()


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device argument
        return torch.is_autocast_cpu_enabled()


def use_onednn(x: Tensor, weight: Tensor) -> bool:
    """True when the fused oneDNN inference kernels apply to x @ weight."""
    return (
        HAS_ONEDNN_OPS
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype in _ONEDNN_DTYPES
        and weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not _autocast_on()
    )


def _gelu_attr(gelu: bool) -> tuple[str, list, str]:
    # oneDNN's "gelu" with algorithm "none" is the exact erf form, as F.gelu's default.
    return ("gelu", [], "none") if gelu else ("none", [], "")


def linear(x: Tensor, layer: nn.Linear, *, gelu: bool = False) -> Tensor:
    """layer(x), optionally followed by exact GELU, fused on CPU inference.

    Modules that are not a plain nn.Linear, or that carry hooks, are called as they are.
    """
    plain = type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
    if plain and use_onednn(x, layer.weight):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, *_gelu_attr(gelu))
    y = layer(x)
    return F.gelu(y) if gelu else y


def conv1d_time_major(
    x: Tensor, weight: Tensor, bias: Tensor | None, *, stride: int = 1, padding: int = 0, groups: int = 1,
    gelu: bool = False,
) -> Tensor:
    """conv1d on time-major activations: x [B, T, Cin] -> [B, T', Cout] (time-major in memory).

    The conv runs as a 2-D conv of height 1 in channels-last layout, which is the [B, T, C]
    memory of x: no transposes, and oneDNN's channels-last kernels are the fast ones.
    """
    x4 = x[:, None].permute(0, 3, 1, 2)  # [B, Cin, 1, T] view, channels-last strides
    w4 = weight[:, :, None, :]
    if use_onednn(x, weight):
        y4 = torch.ops.mkldnn._convolution_pointwise(
            x4, w4, bias, [0, padding], [1, stride], [1, 1], groups, *_gelu_attr(gelu)
        )
    else:
        y4 = F.conv2d(x4, w4, bias, stride=(1, stride), padding=(0, padding), groups=groups)
        if gelu:
            y4 = F.gelu(y4)
    return y4[:, :, 0].transpose(1, 2)


# Scores are computed per batch item and group of heads, in blocks of at most this many bytes,
# so long windows never hold a [B, H, F, F] tensor.
_SCORE_BLOCK_BYTES = 16 * 1024 * 1024


def bf16_cpu_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for bf16 inference on CPU: [B, H, F, D] in, [B, F, H*D] out.

    Why not SDPA: torch's CPU SDPA kernel runs bf16 at about 135 GFLOP/s on AVX512-BF16
    machines without AMX, while oneDNN's bf16 matmul reaches about 700; this path is 2.4x
    faster per layer (benchmarks/bench_model.py measures the whole model).

    The scores come out of the matmul rounded to bf16, with an error proportional to their
    magnitude. Keys share a large common component in trained transformers, and subtracting
    the keys' mean over frames shifts every score of a query row by the same q.mean(k), which
    softmax ignores; the centred scores are smaller, so the rounding error is too.
    """
    batch, heads, frames, dim = q.shape
    scale = dim**-0.5  # a power of two for MERT's head size 64: exact in bf16
    step = max(1, _SCORE_BLOCK_BYTES // (frames * frames * q.element_size()))
    out = q.new_empty(batch, frames, heads, dim)
    for b in range(batch):
        valid = None if key_mask is None else key_mask[b, 0, 0]  # [F]
        for h in range(0, heads, step):
            keys = k[b, h : h + step].float()
            # Any constant works; the valid keys' mean gives a padded item the same scores as alone.
            centre = (keys if valid is None else keys[:, valid]).mean(dim=-2, keepdim=True)
            keys = (keys - centre).to(q.dtype)
            scores = torch.matmul(q[b, h : h + step] * scale, keys.transpose(-1, -2))
            if valid is not None:
                scores.masked_fill_(~valid, float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # accumulates in fp32, returns bf16
            out[b, :, h : h + step] = torch.matmul(probs, v[b, h : h + step]).transpose(0, 1)
    return out.view(batch, frames, heads * dim)
