"""Model speed: mertkit's MertModel vs transformers' HubertModel on MERT-v1-95M shapes.

Both models hold the same random weights (written as an official-layout checkpoint and read
back with `mertkit.load`), see the same 5 s windows at 24 kHz, and run with the same thread
count in one process, interleaved. The official path is HubertModel with eager attention in
fp32 (what MERT's remote code runs). Reported:

- throughput ratio ours fp32 / official fp32, and the max abs difference over all 13 states;
- ours in bf16: its ratio to the official fp32 path and per-state cosine similarity (mean
  over frames) against the official fp32 states;
- each as achieved GFLOP/s (analytic FLOP count) and as a fraction of the matmul peak
  (square torch.matmul, fp32 and bf16) measured in the same run;
- `--dtype auto` on this CPU: which of the two it picks (bf16 only with native bf16), so its
  ratio is that run's;
- optionally the start-up wall time of `import mertkit.cli.app` vs `import transformers`.

The report starts with the CPU class (ISA, native bf16, AMX, any ONEDNN_MAX_CPU_ISA /
ATEN_CPU_CAPABILITY cap): figures from different classes are not comparable. To measure the
AVX2 class on any x86 machine:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_model.py --quick

    python benchmarks/bench_model.py            # batches 1 and 4
    python benchmarks/bench_model.py --quick    # batch 1, fewer repetitions
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import (
    MERT_95M,
    BenchError,
    cpu_line,
    cpu_record,
    run_benchmark,
    interleaved_timings,
    matmul_peak,
    median,
    onednn_linear_peak,
    set_threads,
    startup_seconds,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 24000





# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def official_model(seed: int) -> torch.nn.Module:
    """transformers' HubertModel, eager attention, with random non-trivial weights."""
    try:
        from transformers import HubertConfig, HubertModel
    except ImportError as err:
        raise BenchError("the benchmark compares against transformers: pip install 'mertkit[test]'") from err
    config = HubertConfig(**MERT_95M)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = HubertModel(config)
    _randomise(model)
    return model.eval()


def _randomise(model: torch.nn.Module) -> None:
    """Fan-in scaled weights and noisy norm parameters: activations stay O(1) through every
    layer and no state is near-identity, so parity and cosine numbers mean something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "original0" in name or "weight_g" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 and name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5)


def load_ours(official: torch.nn.Module, directory: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Write `official` as a hub-layout checkpoint and read it with mertkit: (fp32, bf16)."""
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures import write_official_checkpoint

    import mertkit

    checkpoint = write_official_checkpoint(
        official, directory, fmt="safetensors", model_type="mert_model", sample_rate=SAMPLE_RATE
    )
    return mertkit.load(checkpoint), mertkit.load(checkpoint, dtype=torch.bfloat16)


def official_states(model: torch.nn.Module, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = model(wave, output_hidden_states=True)
    return (*out.hidden_states[:-1], out.last_hidden_state)


def our_states(model: torch.nn.Module, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return model(wave).hidden_states


# ---------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------
def model_flops(num_samples: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one window, by part, from the shapes alone."""
    c = MERT_95M
    hidden, ffn, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    length, in_dim, conv = num_samples, 1, 0.0
    for dim, kernel, stride in zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"]):
        length = (length - kernel) // stride + 1
        conv += 2.0 * length * dim * in_dim * kernel
        in_dim = dim
    frames = length
    groups, pos_kernel = c["num_conv_pos_embedding_groups"], c["num_conv_pos_embeddings"]
    per_layer_linear = 2.0 * frames * (4 * hidden * hidden + 2 * hidden * ffn)
    per_layer_attention = 2.0 * 2 * frames * frames * hidden  # q k^T and (softmax) v
    return {
        "conv_front_end": conv,
        "projection": 2.0 * frames * in_dim * hidden,
        "positional_conv": 2.0 * frames * hidden * (hidden // groups) * pos_kernel,
        "transformer_linear": layers * per_layer_linear,
        "attention": layers * per_layer_attention,
    }


# ---------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------
def max_abs_diff(ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> float:
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, ref, strict=True))


def cosine_per_state(ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> list[float]:
    """Cosine similarity of every frame's vector, averaged over frames and batch, per state."""
    return [float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean()) for a, b in zip(ours, ref, strict=True)]


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    batch: int
    seconds: dict[str, float]  # median wall seconds per forward
    max_abs_diff_fp32: float
    cosine_bf16: list[float] | None


def bench_batch(official, ours, ours_bf16, batch: int, seconds: float, reps: int, seed: int) -> BatchResult:
    gen = torch.Generator().manual_seed(seed + batch)
    wave = 0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=gen)
    wave_bf16 = wave.to(torch.bfloat16)
    with torch.inference_mode():
        ref = official_states(official, wave)
        max_diff = max_abs_diff(our_states(ours, wave), ref)
        cosine = None if ours_bf16 is None else cosine_per_state(our_states(ours_bf16, wave_bf16), ref)
        contenders = {
            "official_fp32": lambda: official_states(official, wave),
            "ours_fp32": lambda: our_states(ours, wave),
        }
        if ours_bf16 is not None:
            contenders["ours_bf16"] = lambda: our_states(ours_bf16, wave_bf16)
        times = interleaved_timings(contenders, reps=reps, warmup=1)
    return BatchResult(batch, {name: median(t) for name, t in times.items()}, max_diff, cosine)


def startup_times() -> dict[str, float] | None:
    """Fresh-interpreter import times; None when mertkit has no CLI module yet."""
    if importlib.util.find_spec("mertkit.cli.app") is None:
        return None
    return {
        "import mertkit.cli.app": startup_seconds("import mertkit.cli.app"),
        "import torch": startup_seconds("import torch"),
        "import transformers.HubertModel": startup_seconds("from transformers import HubertModel"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default 1,4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="window length in seconds (default 5)")
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per contender and batch (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every available core)")
    parser.add_argument("--no-bf16", action="store_true", help="skip our bf16 run")
    parser.add_argument("--no-startup", action="store_true", help="skip the import-time measurement")
    parser.add_argument("--quick", action="store_true", help="batch 1, 3 repetitions")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
    except ValueError as err:
        raise BenchError(f"--batch must be comma-separated integers, got {args.batch!r}") from err
    if args.quick:
        args.batches, args.reps = [1], 3
    if args.reps < 1 or min(args.batches) < 1 or args.seconds * SAMPLE_RATE < 400:
        raise BenchError("--reps and --batch must be positive and --seconds long enough for one frame")
    return args


def run(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    from mertkit.extraction.allocator import keep_freed_memory
    from mertkit.models.kernels import HAS_ONEDNN_OPS

    # Process-wide, so the official model gets it too (MERTKIT_KEEP_FREED_MEMORY=0 turns it off).
    kept = keep_freed_memory()

    peaks = measure_peaks()
    official = official_model(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_bf16 = load_ours(official, Path(tmp) / "mert-95m-random")
    if args.no_bf16:
        ours_bf16 = None
    num_samples = int(args.seconds * SAMPLE_RATE)
    flops = model_flops(num_samples)
    results = [bench_batch(official, ours, ours_bf16, b, args.seconds, args.reps, args.seed) for b in args.batches]
    # Measured again after the models: a busy moment at either end must not set the peak.
    peaks = {name: _max_or_none(value, later) for (name, value), later in zip(peaks.items(), measure_peaks().values())}
    record = {
        "cpu": cpu_record(),
        "torch": torch.__version__,
        "threads": threads,
        "onednn_kernels": HAS_ONEDNN_OPS,
        "keep_freed_memory": kept,
        "window_seconds": args.seconds,
        "reps": args.reps,
        "gflop_per_window": sum(flops.values()) / 1e9,
        "gflop_by_part": {k: v / 1e9 for k, v in flops.items()},
        "peak_gflops": peaks,
        "batches": [_batch_record(r, sum(flops.values()), peaks) for r in results],
    }
    auto = "ours_fp32" if record["cpu"]["auto_dtype"] == "float32" else "ours_bf16"
    for rec in record["batches"]:
        rec["auto"] = auto  # --dtype auto runs exactly that contender's model on this CPU
    if not args.no_startup:
        record["startup_seconds"] = startup_times()
    return record


def measure_peaks() -> dict[str, float | None]:
    from mertkit.models.kernels import cpu_capabilities

    # Without native bf16 a 2048^3 bf16 matmul takes minutes (oneDNN converts): no peak to reach.
    native = cpu_capabilities().bf16_native
    return {
        "matmul_fp32": matmul_peak(torch.float32),
        "matmul_bf16": matmul_peak(torch.bfloat16) if native else None,
        "onednn_fp32": onednn_linear_peak(torch.float32),
    }


def _max_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


def _batch_record(result: BatchResult, flops_per_window: float, peaks: dict) -> dict:
    official = result.seconds["official_fp32"]
    rec: dict = {"batch": result.batch, "seconds_per_forward": result.seconds}
    rec["gflops"] = {name: result.batch * flops_per_window / t / 1e9 for name, t in result.seconds.items()}
    rec["speedup_vs_official_fp32"] = {name: official / t for name, t in result.seconds.items()}
    rec["fraction_of_matmul_peak"] = {
        name: rec["gflops"][name] / peak if (peak := peaks["matmul_bf16" if name.endswith("bf16") else "matmul_fp32"])
        else None
        for name in result.seconds
    }
    if peaks["onednn_fp32"] is not None:
        # torch.matmul fp32 is MKL, which may run AVX2 code on AMD; oneDNN's fp32 matmul is
        # the highest fp32 rate this torch reaches, so it is the honest ceiling for fp32 runs.
        rec["fraction_of_onednn_fp32_peak"] = {
            name: rec["gflops"][name] / peaks["onednn_fp32"] for name in result.seconds if name.endswith("fp32")
        }
    rec["max_abs_diff_fp32"] = result.max_abs_diff_fp32
    if result.cosine_bf16 is not None:
        rec["cosine_bf16_per_state"] = result.cosine_bf16
        rec["cosine_bf16_min"] = min(result.cosine_bf16)
    return rec


def print_report(record: dict) -> None:
    peaks = record["peak_gflops"]
    onednn = f", oneDNN fp32 linear {peaks['onednn_fp32']:.0f}" if peaks["onednn_fp32"] else ""
    print(cpu_line(record["cpu"]))
    print(f"torch {record['torch']}, {record['threads']} threads, oneDNN fused kernels: {record['onednn_kernels']}, "
          f"malloc keeps freed memory (both models): {record['keep_freed_memory']}")
    bf16_peak = f"{peaks['matmul_bf16']:.0f}" if peaks["matmul_bf16"] else "- (no native bf16)"
    print(f"matmul peak GFLOP/s: fp32 {peaks['matmul_fp32']:.0f}, bf16 {bf16_peak}{onednn}")
    print(f"{record['window_seconds']:g} s window = {record['gflop_per_window']:.1f} GFLOP "
          + "(" + ", ".join(f"{k} {v:.1f}" for k, v in record["gflop_by_part"].items()) + ")")
    print()
    print("% matmul peak: of torch.matmul in the run's dtype; % oneDNN: of oneDNN's fp32 matmul (fp32 runs)")
    print(f"{'batch':>5} {'model':<14} {'s/forward':>10} {'GFLOP/s':>8} {'% matmul':>9} {'% oneDNN':>9} "
          f"{'x official':>10}")
    for rec in record["batches"]:
        for name, t in rec["seconds_per_forward"].items():
            onednn_fraction = rec.get("fraction_of_onednn_fp32_peak", {}).get(name)
            onednn_cell = f"{100 * onednn_fraction:>8.0f}%" if onednn_fraction is not None else f"{'-':>9}"
            fraction = rec["fraction_of_matmul_peak"][name]
            matmul_cell = f"{100 * fraction:>8.0f}%" if fraction is not None else f"{'-':>9}"
            print(f"{rec['batch']:>5} {name:<14} {t:>10.3f} {rec['gflops'][name]:>8.0f} "
                  f"{matmul_cell} {onednn_cell} "
                  f"{rec['speedup_vs_official_fp32'][name]:>9.2f}x")
        auto = rec["auto"]
        if auto in rec["speedup_vs_official_fp32"]:
            print(f"{rec['batch']:>5} {'ours_auto':<14} = {auto}: {rec['speedup_vs_official_fp32'][auto]:.2f}x official")
        line = f"      fp32 max abs diff vs official: {rec['max_abs_diff_fp32']:.2e}"
        if "cosine_bf16_per_state" in rec:
            line += f"; bf16 cosine min {rec['cosine_bf16_min']:.5f} per state: " + " ".join(
                f"{c:.4f}" for c in rec["cosine_bf16_per_state"])
        print(line)
    startup = record.get("startup_seconds")
    if startup:
        print()
        print("start-up (fresh interpreter, best of 3): " + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))
    print()
    print("JSON " + json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("bench_model", argv, parse_args, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
