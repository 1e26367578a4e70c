"""CPU inference kernels shared by the model families, chosen by what the CPU can do.

Why: on CPU, F.linear calls MKL's sgemm, which runs an AVX2 path on AMD CPUs, while
oneDNN's inference ops use AVX-512 (and AVX512-BF16 for bf16) there, fuse bias and
GELU, and take time-major conv inputs without transposes: about 2x the fp32 matmul
throughput. They have no autograd formula, so they run only when nothing is recorded.

Which path runs is decided once per process from what the machine offers, never assumed:
`cpu_capabilities()` reads the instruction sets (and the ONEDNN_MAX_CPU_ISA /
ATEN_CPU_CAPABILITY caps) and *probes* each fused op on tiny inputs per dtype, comparing
against the standard op. A fused op that fails or disagrees on this machine (e.g. bf16 on
an AVX2-only CPU: "could not create a primitive descriptor") is never taken; the standard
ops (F.linear, conv, SDPA) run instead, with the same numbers up to float rounding.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = (*DTYPES, "auto")  # "auto": see resolve_dtype

_log = logging.getLogger("mertkit")


def _has_onednn_ops() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return all(hasattr(ops, name) for name in ("_linear_pointwise", "_convolution_pointwise"))


HAS_ONEDNN_OPS = _has_onednn_ops()


# ---------------------------------------------------------------------------------------
# What the CPU offers
# ---------------------------------------------------------------------------------------
# oneDNN's ISA names in increasing order (ONEDNN_MAX_CPU_ISA caps oneDNN at one of them).
_ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16",
    "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
)
_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@dataclass(frozen=True)
class CpuCapabilities:
    """What this process's CPU kernels can use (after any caps set in the environment)."""

    arch: str  # platform.machine(): x86_64, aarch64, ...
    isa: str  # ATen's vector ISA: AVX512, AVX2, DEFAULT, SVE256, ...
    bf16_native: bool  # bf16 dot-product instructions oneDNN may use (AVX512-BF16, AMX, ARM BF16)
    amx: bool  # Intel AMX tiles, usable by oneDNN
    fused_fp32: bool  # the fused oneDNN ops ran and agreed with the standard ops in float32
    fused_bf16: bool  # ... in bfloat16
    caps: tuple[str, ...] = ()  # "NAME=value" of the cap variables set

    def fused(self, dtype: torch.dtype) -> bool:
        return {torch.float32: self.fused_fp32, torch.bfloat16: self.fused_bf16}.get(dtype, False)

    def summary(self) -> str:
        """One line, e.g. 'x86_64 AVX2, bf16 native: no, AMX: no, fused oneDNN: fp32 yes, bf16 no'."""
        yes = {True: "yes", False: "no"}
        caps = f" (caps: {' '.join(self.caps)})" if self.caps else ""
        return (f"{self.arch} {self.isa}, bf16 native: {yes[self.bf16_native]}, AMX: {yes[self.amx]}, "
                f"fused oneDNN: fp32 {yes[self.fused_fp32]}, bf16 {yes[self.fused_bf16]}{caps}")


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """Detected once per process; the fused ops are probed, not assumed."""
    flags = _cpu_flags()
    arch = platform.machine().lower()
    x86 = arch in ("x86_64", "amd64", "i686", "x86")
    bf16_ops = HAS_ONEDNN_OPS and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # honours ONEDNN_MAX_CPU_ISA
    if x86:
        # oneDNN "supports" bf16 from AVX512_CORE on by converting to fp32: slower than fp32.
        # Native means the bf16 dot-product instructions, and oneDNN allowed to use them.
        bf16_native = bf16_ops and (
            ("avx512_bf16" in flags and _onednn_allows("AVX512_CORE_BF16"))
            or ("amx_bf16" in flags and _onednn_allows("AVX10_1_512_AMX"))
        )
        amx = "amx_tile" in flags and "amx_bf16" in flags and _onednn_allows("AVX10_1_512_AMX")
    else:
        bf16_native, amx = bool(bf16_ops and ("bf16" in flags or "sve_bf16" in flags)), False
    return CpuCapabilities(
        arch=arch, isa=torch.backends.cpu.get_cpu_capability(), bf16_native=bool(bf16_native), amx=amx,
        fused_fp32=_fused_ops_work(torch.float32), fused_bf16=_fused_ops_work(torch.bfloat16),
        caps=tuple(f"{name}={os.environ[name]}" for name in _CAP_VARIABLES if os.environ.get(name)),
    )


def _cpu_flags() -> set[str]:
    """Instruction-set flags of the hardware (cpuinfo names: avx512_bf16, amx_tile, bf16...)."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if get is not None:
        return {name for name, value in get().items() if value is True}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:  # not Linux: no flags known, so nothing is claimed native
        pass
    return set()


def _onednn_allows(isa: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (if set) lets oneDNN use `isa`."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap in ("ALL", "DEFAULT"):
        return True
    if cap not in _ONEDNN_ISAS:  # a name we do not know: claim nothing native
        return False
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


@functools.cache
def _fused_ops_work(dtype: torch.dtype) -> bool:
    """Run each fused op this module uses on tiny inputs; True if all run and match the standard ops."""
    if not HAS_ONEDNN_OPS or dtype not in _ONEDNN_DTYPES:
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 32, generator=gen).to(dtype)  # [B, T, C]
    weight, bias = (torch.randn(48, 32, generator=gen) / 8).to(dtype), torch.randn(48, generator=gen).to(dtype)
    conv_w = (torch.randn(32, 8, 3, generator=gen) / 4).to(dtype)  # 4 groups, strided and padded below
    conv_args = ([0, 1], [1, 2], [1, 1], 4)  # padding, stride, dilation, groups of the [B, C, 1, T] conv
    x4 = x[:, None].permute(0, 3, 1, 2)
    ops = torch.ops.mkldnn
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        try:
            got = [
                ops._linear_pointwise(x, weight, bias, *_gelu_attr(False)),
                ops._linear_pointwise(x, weight, bias, *_gelu_attr(True)),
                ops._convolution_pointwise(x4, conv_w[:, :, None], bias[:32], *conv_args, *_gelu_attr(True)),
            ]
        except RuntimeError as err:  # e.g. no bf16 primitive on this CPU: the standard ops serve
            _log.debug("fused oneDNN ops unusable in %s: %s", dtype, err)
            return False
        xf, wf, bf, cf = x.float(), weight.float(), bias.float(), conv_w.float()
        want = [
            F.linear(xf, wf, bf),
            F.gelu(F.linear(xf, wf, bf)),
            F.gelu(F.conv1d(xf.transpose(1, 2), cf, bf[:32], stride=2, padding=1, groups=4))[:, :, None],
        ]
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    return all(
        g.shape == w.shape and bool(((g.float() - w).abs() <= tolerance * (1 + w.abs())).all())
        for g, w in zip(got, want)
    )


# ---------------------------------------------------------------------------------------
# Dtype resolution
# ---------------------------------------------------------------------------------------
_warned: set[str] = set()


def resolve_dtype(requested: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for a dtype name ("float32", "bfloat16", "float16" or "auto") on `device`.

    "auto" is the fastest dtype that keeps every hidden state within cosine 0.999 of float32:
    bfloat16 on CUDA GPUs with bf16 and on CPUs with native bf16 instructions, float32
    elsewhere (without them, oneDNN converts bf16 to fp32 and bf16 is the slower of the two). bfloat16 asked for on a CPU without native bf16 still runs (standard
    ops) and says once that it is slower than float32 there.
    """
    device = torch.device(device)
    if requested == "auto":
        return torch.bfloat16 if _bf16_fast(device) else torch.float32
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}")
    dtype = DTYPES[requested]
    if dtype == torch.bfloat16 and device.type == "cpu" and not _bf16_fast(device) and "bf16" not in _warned:
        _warned.add("bf16")
        _log.warning("bfloat16 on this CPU (%s) runs without native bf16 instructions: slower than float32 here "
                     "(dtype 'auto' picks float32)", cpu_capabilities().isa)
    return dtype


def _bf16_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_capabilities().bf16_native
    return False


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the names of DTYPES)."""
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------
def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device argument
        return torch.is_autocast_cpu_enabled()


def _cpu_inference(x: Tensor, *others: Tensor) -> bool:
    """x (and others, same dtype) on CPU, nothing recorded for autograd, no autocast."""
    return (
        x.device.type == "cpu"
        and all(t.dtype == x.dtype for t in others)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))
        and not _autocast_on()
    )


def use_onednn(x: Tensor, weight: Tensor) -> bool:
    """True when the fused oneDNN inference kernels apply to x @ weight (and work on this CPU)."""
    return (
        torch.backends.mkldnn.enabled
        and x.dtype in _ONEDNN_DTYPES
        and _cpu_inference(x, weight)
        and cpu_capabilities().fused(x.dtype)
    )


def use_bf16_attention(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """True when `bf16_cpu_attention` is the faster attention: bf16 CPU inference with native bf16.

    Without native bf16, oneDNN's bf16 matmul converts to fp32 and loses its edge; SDPA serves.
    """
    return (
        q.dtype == torch.bfloat16
        and torch.backends.mkldnn.enabled
        and _cpu_inference(q, k, v)
        and cpu_capabilities().bf16_native
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
