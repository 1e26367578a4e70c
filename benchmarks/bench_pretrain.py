"""Pre-training throughput: MERT-v1 updates per second for the `tiny` and `95m` presets.

Each preset is loaded with `load_config`, its model built with the trainer's `build_model`,
and updates are run with the trainer's own `train_step` (mask drawing, in-batch mixture,
CQT targets, MLM + CQT losses, backward, gradient clipping, AdamW) on synthetic in-memory
batches: random 5 s clips at the preset's sample rate (24 kHz) and random codebook labels.
Reading and decoding audio is therefore *not* timed: this is the model-side ceiling.

Per preset: a few warm-up updates, then N timed updates. Reported:

- audio seconds per second, frames per second, seconds per update (mean and median);
- model FLOP utilisation (MFU): training FLOPs per update (3 x the analytic forward FLOPs of
  backbone + pre-training heads) / seconds per update / the fp32 torch.matmul peak measured
  in the same run (best of the measurements before and after the presets). Layerdrop is
  counted at its expected rate (each layer runs with probability 1 - layerdrop); the heads
  are counted on the masked frames the updates actually drew;
- the CQT target transform (no gradient, fp32, one strided conv) as its own FLOP count,
  and the utilisation with it included;
- with `--precision bf16` (autocast, as the trainer does), the fraction of the bf16 matmul
  peak as well. fp32 is the default whatever the preset says (95m's preset says fp16, which
  is a GPU setting).

    python benchmarks/bench_pretrain.py                        # tiny (10 updates), 95m (3)
    python benchmarks/bench_pretrain.py --quick --presets tiny  # half the updates
    python benchmarks/bench_pretrain.py --precision bf16 --batch 2
    python benchmarks/bench_pretrain.py --device cuda --precision bf16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from _common import BenchError, matmul_peak, median, run_benchmark, set_threads

from mertkit.pretrain.pretrain_config import PretrainConfig, PretrainConfigError, load_config
from mertkit.pretrain.data import Batch
from mertkit.pretrain.trainer import DistEnv, build_model, lr_at, train_step

DEFAULT_UPDATES = {"tiny": 10, "95m": 3}  # anything else: 2
DEFAULT_WARMUP = 2




# ---------------------------------------------------------------------------------------
# FLOPs (multiply-adds count 2), from the config's shapes alone
# ---------------------------------------------------------------------------------------
def forward_flops(cfg: PretrainConfig, num_samples: int, masked_fraction: float) -> dict[str, float]:
    """Forward FLOPs of one clip through backbone and pre-training heads, by part.

    Generalises bench_model.model_flops (MERT-v1-95M only) to any `PretrainConfig`: conv
    front-end, feature projection, positional conv (HuBERT's single conv or data2vec's
    stack), transformer linears and attention (times the expected share of layers that
    layerdrop keeps), and the heads on `masked_fraction` of the frames.
    """
    m = cfg.mert_config()
    hidden, ffn, layers = m.hidden_size, m.intermediate_size, m.num_hidden_layers
    length, in_dim, conv = num_samples, 1, 0.0
    for dim, kernel, stride in zip(m.conv_dim, m.conv_kernel, m.conv_stride):
        length = (length - kernel) // stride + 1
        conv += 2.0 * length * dim * in_dim * kernel
        in_dim = dim
    frames = length
    if frames != m.num_frames(num_samples):
        raise AssertionError("frame count disagrees with MertConfig.num_frames")
    group_width = hidden // m.num_conv_pos_embedding_groups
    if m.is_data2vec:  # a stack of num_conv_pos_embeddings convs of width conv_pos_kernel_size
        positional = m.num_conv_pos_embeddings * 2.0 * frames * hidden * group_width * m.conv_pos_kernel_size
    else:  # one conv of width num_conv_pos_embeddings
        positional = 2.0 * frames * hidden * group_width * m.num_conv_pos_embeddings
    kept_layers = layers * (1.0 - m.layerdrop)
    masked = masked_fraction * frames
    heads = {
        "final_proj": 2.0 * masked * hidden * cfg.final_dim * cfg.n_codebooks,
        "code_logits": 2.0 * masked * cfg.n_codebooks * cfg.codebook_size * cfg.final_dim,
        "cqt_head": 2.0 * masked * hidden * cfg.cqt_bins if cfg.cqt else 0.0,
    }
    return {
        "conv_front_end": conv,
        "projection": 2.0 * frames * in_dim * hidden,
        "positional_conv": positional,
        "transformer_linear": kept_layers * 2.0 * frames * (4 * hidden * hidden + 2 * hidden * ffn),
        "attention": kept_layers * 2.0 * 2 * frames * frames * hidden,  # q k^T and (softmax) v
        "heads": sum(heads.values()),
    }


def cqt_flops(model: torch.nn.Module, num_samples: int) -> float:
    """FLOPs of the CQT targets of one clip: one strided conv per group of kernel buffers."""
    cqt = getattr(model, "cqt", None)
    if cqt is None:
        return 0.0
    frames = cqt.num_frames(num_samples)
    return sum(2.0 * buf.shape[0] * buf.shape[-1] * frames for name, buf in cqt.named_buffers() if name.startswith("kernels_"))


# ---------------------------------------------------------------------------------------
# Peaks
# ---------------------------------------------------------------------------------------
def device_matmul_peak(dtype: torch.dtype, device: torch.device, *, size: int = 4096, reps: int = 10) -> float:
    """Best GFLOP/s of a square matmul on `device` (the CPU path is _common.matmul_peak)."""
    if device.type == "cpu":
        return matmul_peak(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device).to(dtype)
    b = torch.randn(size, size, generator=gen, device=device).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        torch.matmul(a, b)
        for _ in range(reps):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure_peaks(device: torch.device, precision: str) -> dict[str, float]:
    peaks = {"matmul_fp32": device_matmul_peak(torch.float32, device)}
    if precision != "fp32":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        peaks[f"matmul_{precision}"] = device_matmul_peak(dtype, device)
    return peaks


# ---------------------------------------------------------------------------------------
# One preset
# ---------------------------------------------------------------------------------------
@dataclass
class PresetRun:
    name: str
    cfg: PretrainConfig
    parameters: int
    update_seconds: list[float]
    stats: list[dict]
    num_samples: int
    cqt_gflop_per_clip: float
    cuda_peak_memory_gib: float | None


def preset_config(name: str, args: argparse.Namespace) -> PretrainConfig:
    try:
        cfg = load_config(name)
    except PretrainConfigError as err:
        raise BenchError(str(err)) from err
    overrides = [f"precision={args.precision}", f"crop_seconds={args.seconds}",
                 f"min_crop_seconds={min(cfg.min_crop_seconds, args.seconds)}"]
    if args.batch is not None:
        overrides.append(f"batch_size={args.batch}")
    try:
        return cfg.with_overrides(overrides)
    except PretrainConfigError as err:
        raise BenchError(f"preset {name}: {err}") from err


def synthetic_batches(model, cfg: PretrainConfig, count: int, device: torch.device, seed: int) -> list[list[tuple[int, int, Batch]]]:
    """`count` updates' worth of micro-batches (grad_accum each): full-length random clips."""
    gen = torch.Generator().manual_seed(seed)
    samples, batch = cfg.crop_samples, cfg.batch_size
    frames = model.frame_count(samples)
    updates = []
    for u in range(count):
        micro = []
        for i in range(cfg.grad_accum):
            wave = 0.1 * torch.randn(batch, samples, generator=gen)
            labels = torch.randint(0, cfg.codebook_size, (batch, cfg.n_codebooks, frames), generator=gen, dtype=torch.int64)
            lengths = torch.full((batch,), samples, dtype=torch.long)
            seeds = [int(s) for s in torch.randint(0, 2**62, (batch,), generator=gen)]
            paths = [f"synthetic/{u}/{i}/{b}" for b in range(batch)]
            micro.append((0, u * cfg.grad_accum + i, Batch(wave, lengths, labels, seeds, paths).to(device)))
        updates.append(micro)
    return updates


def run_preset(name: str, cfg: PretrainConfig, args: argparse.Namespace, device: torch.device) -> PresetRun:
    env = DistEnv(0, 1, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The optimiser and scaler exactly as trainer.train builds them.
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    updates = args.updates if args.updates is not None else DEFAULT_UPDATES.get(name, 2)
    if args.quick:
        updates = max(1, updates // 2)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else DEFAULT_WARMUP)
    batches = synthetic_batches(model, cfg, warmup + updates, device, args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    seconds, stats = [], []
    for step, micro in enumerate(batches, start=1):
        _sync(device)
        start = time.perf_counter()
        out = train_step(model, model, optimizer, scaler, micro, cfg, env, lr_at(cfg, step))
        model.after_update(step)
        _sync(device)
        if step > warmup:
            seconds.append(time.perf_counter() - start)
            stats.append(out)
        print(f"  {name} update {step}/{len(batches)}{' (warm-up)' if step <= warmup else ''}: "
              f"{time.perf_counter() - start:.2f} s, loss {out['loss']:.3f}", file=sys.stderr, flush=True)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return PresetRun(name, cfg, sum(p.numel() for p in trainable), seconds, stats, cfg.crop_samples,
                     cqt_flops(model, cfg.crop_samples) / 1e9, memory)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def preset_record(run: PresetRun, peaks: dict[str, float]) -> dict:
    cfg = run.cfg
    total = sum(run.update_seconds)
    audio = sum(s["audio_seconds"] for s in run.stats)
    frames = sum(s["frames"] for s in run.stats)
    masked_fraction = sum(s["masked_fraction"] for s in run.stats) / len(run.stats)
    clips = cfg.batch_size * cfg.grad_accum
    parts = forward_flops(cfg, run.num_samples, masked_fraction)
    forward = sum(parts.values()) / 1e9 * clips
    training = 3.0 * forward
    cqt = run.cqt_gflop_per_clip * clips
    per_update = total / len(run.update_seconds)
    rec = {
        "preset": run.name,
        "precision": cfg.precision,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "clip_seconds": cfg.crop_seconds,
        "parameters_m": run.parameters / 1e6,
        "layerdrop": cfg.mert_config().layerdrop,
        "timed_updates": len(run.update_seconds),
        "seconds_per_update": per_update,
        "seconds_per_update_median": median(run.update_seconds),
        "update_seconds": run.update_seconds,
        "audio_seconds_per_second": audio / total,
        "frames_per_second": frames / total,
        "masked_fraction": masked_fraction,
        "forward_gflop_per_update": forward,
        "forward_gflop_by_part_per_clip": {k: v / 1e9 for k, v in parts.items()},
        "training_gflop_per_update": training,
        "cqt_gflop_per_update": cqt,
        "training_gflops": training / per_update,
        "mfu_vs_fp32_peak": training / per_update / peaks["matmul_fp32"],
        "mfu_with_cqt_vs_fp32_peak": (training + cqt) / per_update / peaks["matmul_fp32"],
        "final_loss": run.stats[-1]["loss"],
    }
    if f"matmul_{cfg.precision}" in peaks and cfg.precision != "fp32":
        rec[f"mfu_vs_{cfg.precision}_peak"] = training / per_update / peaks[f"matmul_{cfg.precision}"]
    if run.cuda_peak_memory_gib is not None:
        rec["cuda_peak_memory_gib"] = run.cuda_peak_memory_gib
    return rec


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,95m", help="comma-separated presets or config JSON files (default tiny,95m)")
    parser.add_argument("--batch", type=int, default=None, help="clips per micro-batch (default: the preset's batch_size)")
    parser.add_argument("--updates", type=int, default=None, help="timed updates per preset (default: tiny 10, 95m 3, else 2)")
    parser.add_argument("--warmup", type=int, default=None, help=f"warm-up updates per preset (default {DEFAULT_WARMUP}, --quick 1)")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length in seconds (default 5)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="fp32 (default), bf16 autocast, or fp16 autocast + GradScaler (CUDA only)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every available core)")
    parser.add_argument("--quick", action="store_true", help="half the timed updates, one warm-up update")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.preset_names = [p for p in args.presets.split(",") if p]
    if not args.preset_names:
        raise BenchError("--presets names no preset")
    if (args.batch is not None and args.batch < 1) or (args.updates is not None and args.updates < 1):
        raise BenchError("--batch and --updates must be positive")
    if args.warmup is not None and args.warmup < 0:
        raise BenchError("--warmup must be >= 0")
    if args.seconds <= 0:
        raise BenchError("--seconds must be positive")
    try:
        args.torch_device = torch.device(args.device)
    except RuntimeError as err:
        raise BenchError(f"--device {args.device!r}: {err}") from err
    if args.torch_device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda asked but this torch sees no CUDA device")
    if args.torch_device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.precision == "fp16" and args.torch_device.type != "cuda":
        raise BenchError("--precision fp16 (GradScaler) is a GPU setting; use fp32 or bf16 on the CPU")
    return args


def run(args: argparse.Namespace) -> dict:
    threads = set_threads(args.threads)
    device = args.torch_device
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    configs = {name: preset_config(name, args) for name in args.preset_names}  # bad names fail before any work
    peaks = measure_peaks(device, args.precision)
    runs = []
    for name, cfg in configs.items():
        print(f"{name}: building and running ...", file=sys.stderr, flush=True)
        runs.append(run_preset(name, cfg, args, device))
    # Measured again after the presets: a busy moment at either end must not set the peak.
    later = measure_peaks(device, args.precision)
    peaks = {k: max(v, later[k]) for k, v in peaks.items()}
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "precision": args.precision,
        "peak_gflops": peaks,
        "presets": [preset_record(r, peaks) for r in runs],
    }


def print_report(record: dict) -> None:
    peaks = record["peak_gflops"]
    print(f"torch {record['torch']}, device {record['device']}, {record['threads']} threads, precision {record['precision']}")
    print("matmul peak GFLOP/s: " + ", ".join(f"{k[len('matmul_'):]} {v:.0f}" for k, v in peaks.items()))
    print("MFU = 3 x analytic forward FLOPs (backbone + heads) / s per update / fp32 matmul peak; "
          "+CQT adds the no-grad CQT targets")
    low = [p for p in ("bf16", "fp16") if f"matmul_{p}" in peaks]
    extra = f" {'MFU/' + low[0]:>9}" if low else ""
    print()
    print(f"{'preset':<8} {'prec':<5} {'batch':>5} {'params':>7} {'updates':>7} {'s/update':>9} {'median':>8} "
          f"{'audio s/s':>9} {'frames/s':>9} {'GFLOP/upd':>10} {'GFLOP/s':>8} {'MFU':>6} {'MFU+CQT':>8}{extra}")
    for rec in record["presets"]:
        batch = f"{rec['batch_size']}" + (f"x{rec['grad_accum']}" if rec["grad_accum"] > 1 else "")
        line = (f"{rec['preset']:<8} {rec['precision']:<5} {batch:>5} {rec['parameters_m']:>6.1f}M {rec['timed_updates']:>7} "
                f"{rec['seconds_per_update']:>9.3f} {rec['seconds_per_update_median']:>8.3f} "
                f"{rec['audio_seconds_per_second']:>9.2f} {rec['frames_per_second']:>9.1f} "
                f"{rec['training_gflop_per_update']:>10.1f} {rec['training_gflops']:>8.1f} "
                f"{100 * rec['mfu_vs_fp32_peak']:>5.1f}% {100 * rec['mfu_with_cqt_vs_fp32_peak']:>7.1f}%")
        if low:
            key = f"mfu_vs_{low[0]}_peak"
            line += f" {100 * rec[key]:>8.1f}%" if key in rec else f" {'-':>9}"
        print(line)
    print()
    for rec in record["presets"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in rec["forward_gflop_by_part_per_clip"].items())
        print(f"{rec['preset']}: forward GFLOP per {rec['clip_seconds']:g} s clip: {parts}; "
              f"CQT targets {rec['cqt_gflop_per_update'] / (rec['batch_size'] * rec['grad_accum']):.2f}; "
              f"masked fraction {rec['masked_fraction']:.2f}, layerdrop {rec['layerdrop']:g}")
    print()
    print("JSON " + json.dumps(record))


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("bench_pretrain", argv, parse_args, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
