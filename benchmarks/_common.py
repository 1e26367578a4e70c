"""Helpers shared by the benchmarks: thread setup, interleaved timing, matmul peak, start-up time.

Other processes may share the machine, so every comparison is taken in one run with the
contenders interleaved (their order rotating every round) and reported as medians; peaks are
the best of several repetitions, the closest a busy machine gets to its physical limit.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the whole machine)."""
    return len(os.sched_getaffinity(0))


def set_threads(num_threads: int | None) -> int:
    """Use `num_threads` intra-op threads (default: every available core); returns the count."""
    count = available_cores() if num_threads is None else num_threads
    if count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    return torch.get_num_threads()


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_timings(
    contenders: dict[str, Callable[[], object]], *, reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of every contender, `reps` times each, interleaved in rotating order.

    Rotation cancels slow drift (another process starting, clocks changing) that would favour
    whoever runs first or last in a block.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_call(contenders[name]))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_peak(dtype: torch.dtype, *, size: int = 2048, reps: int = 10) -> float:
    """Best GFLOP/s of a square torch.matmul (what F.linear's kernels reach at best)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    return _best_gflops(lambda: torch.matmul(a, b), 2 * size**3, reps)


def onednn_linear_peak(dtype: torch.dtype, *, size: int = 2048, reps: int = 10) -> float | None:
    """Best GFLOP/s of a square matmul through oneDNN's linear op; None where it does not run here."""
    from mertkit.models.kernels import cpu_capabilities

    if not cpu_capabilities().fused(dtype):
        return None
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    op = torch.ops.mkldnn._linear_pointwise
    return _best_gflops(lambda: op(a, b, None, "none", [], ""), 2 * size**3, reps)


def _best_gflops(fn: Callable[[], object], flops: float, reps: int) -> float:
    with torch.inference_mode():
        fn()
        best = min(time_call(fn) for _ in range(reps))
    return flops / best / 1e9


def cpu_record() -> dict:
    """The CPU class a run measured: what mertkit's kernel dispatch saw, and what 'auto' means here.

    Figures from different classes (AVX2 vs AVX512-BF16 vs AMX, or a run capped with
    ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY) are not comparable; every report starts with this.
    """
    import dataclasses

    from mertkit.models.kernels import cpu_capabilities, dtype_name, resolve_dtype

    caps = cpu_capabilities()
    return {**dataclasses.asdict(caps), "summary": caps.summary(), "auto_dtype": dtype_name(resolve_dtype("auto", "cpu"))}


def cpu_line(record: dict) -> str:
    """'CPU: x86_64 AVX2, bf16 native: no, ... ; --dtype auto = float32'."""
    return f"CPU: {record['summary']}; --dtype auto = {record['auto_dtype']}"


def startup_seconds(code: str, *, reps: int = 3, env: dict[str, str] | None = None) -> float:
    """Best wall seconds of a fresh `python -c code` (interpreter start included)."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


# MERT-v1-95M's architecture (HubertConfig names, as in its config.json), dropout off for inference.
MERT_95M = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
    do_stable_layer_norm=False, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, layerdrop=0.0,
)


class BenchError(ValueError):
    """The benchmark cannot run as asked (missing package, bad option)."""


def run_benchmark(name: str, argv, parse_args, run, print_report) -> int:
    """The shared `main`: parse, run, print the report and its JSON line (and file, if asked)."""
    import json
    import time

    try:
        args = parse_args(argv)
        record = run(args)
    except BenchError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print_report(record)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    return 0
