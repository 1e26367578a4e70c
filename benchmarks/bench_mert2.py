"""MERT-v2 speed and memory: mertkit's Mert2Model vs a plain eager PyTorch forward.

The baseline (tests/models/mert2_reference.py) reads the published forward the way the remote
code runs it: functional ops, channel-first convs, SDPA, no fusion, equal lengths grouped.
Both hold the same random FULL-SIZE weights (632M, stored bf16 like the release and imported
with mertkit's strict importer), see the same input, with the same threads, interleaved in
one process. Reported:

- fp32: ours / baseline throughput, max abs difference over the 24 states;
- bf16 (weights bf16, front end float32): ours / baseline-bf16 and ours / baseline-fp32, and
  per-layer cosine (mean over frames) of ours-bf16 and baseline-bf16 against baseline-fp32;
- peak memory (RSS) of one whole-song pass (default 360 s, bf16) in a fresh process, over
  the RSS after loading, with a shorter pass for scale: growth must be ~linear in length.

    python benchmarks/bench_mert2.py                      # 10 s input, 3 reps, 360 s memory pass
    python benchmarks/bench_mert2.py --seconds 20 --memory-seconds 0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import BenchError, interleaved_timings, median, run_benchmark, set_threads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "models"))
SAMPLE_RATE = 24000


def full_size_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random full-size weights as released: bf16 tensors, float32 front-end buffers."""
    from mert2_fixtures import official_state, random_state

    from mertkit.models.mert2.config import Mert2Config

    return official_state(random_state(Mert2Config(), seed))


def _input(seconds: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(1, int(seconds * SAMPLE_RATE), generator=gen)


def _cosines(states: list[torch.Tensor], ref: list[torch.Tensor]) -> list[float]:
    return [float(F.cosine_similarity(a.float()[0], b.float()[0], dim=-1).mean()) for a, b in zip(states, ref)]


def run_speed(args) -> dict:
    from mert2_reference import reference_forward

    from mertkit.models.mert2.config import Mert2Config
    from mertkit.models.mert2.importer import import_mert2

    config = Mert2Config()
    stored = full_size_state()
    wave = _input(args.seconds)
    w32 = {k: v.float() for k, v in stored.items()}
    w16 = dict(stored)  # bf16 weights, float32 front-end buffers, as stored
    ours32 = import_mert2(config, stored, source="random", dtype=torch.float32)
    ours16 = import_mert2(config, stored, source="random", dtype=torch.bfloat16)

    def ours(model):
        with torch.inference_mode():
            return list(model(wave).hidden_states)

    contenders = {
        "baseline_fp32": lambda: reference_forward(w32, config, wave),
        "ours_fp32": lambda: ours(ours32),
        "baseline_bf16": lambda: reference_forward(w16, config, wave),
        "ours_bf16": lambda: ours(ours16),
    }
    times = interleaved_timings(contenders, reps=args.reps, warmup=1)
    med = {name: median(values) for name, values in times.items()}
    ref32 = reference_forward(w32, config, wave)
    got32, got16, base16 = ours(ours32), ours(ours16), reference_forward(w16, config, wave)
    return {
        "seconds": args.seconds, "frames": ref32[0].shape[1], "threads": torch.get_num_threads(),
        "median_s": med,
        "ratio_fp32": med["baseline_fp32"] / med["ours_fp32"],
        "ratio_bf16_vs_baseline_bf16": med["baseline_bf16"] / med["ours_bf16"],
        "ratio_bf16_vs_baseline_fp32": med["baseline_fp32"] / med["ours_bf16"],
        "fp32_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(got32, ref32)),
        "cosine_ours_bf16": _cosines(got16, ref32),
        "cosine_baseline_bf16": _cosines(base16, ref32),
    }


def _proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} in /proc/self/status")


def _release_and_reset_peak() -> None:
    """Hand freed heap back to the kernel (the float32 copies made while building the random
    weights) and restart the peak-RSS counter, so the peak measures the forward alone."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def memory_child(seconds: float) -> None:
    """Fresh process: load bf16 weights, one whole pass of `seconds`, print the peak RSS of the
    forward and the RSS before it."""
    from mertkit.models.mert2.config import Mert2Config
    from mertkit.models.mert2.importer import import_mert2

    model = import_mert2(Mert2Config(), full_size_state(), source="random", dtype=torch.bfloat16)
    wave = _input(seconds)
    _release_and_reset_peak()
    base = _proc_status_mb("VmRSS")
    with torch.inference_mode():
        out = model(wave)
    frames = out.hidden_states[0].shape[1]
    peak = _proc_status_mb("VmHWM")
    print(json.dumps({"seconds": seconds, "frames": frames, "base_rss_mb": base, "peak_rss_mb": peak}))


def run_memory(seconds: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(seconds), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # recorded, so the speed figures of the same run are not lost
        return {"seconds": seconds, "error": (done.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="input length for the speed ratio")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-seconds", type=float, default=360.0, help="whole-song pass; 0 skips it")
    parser.add_argument("--memory-scale-seconds", type=float, default=60.0, help="shorter pass for scale")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def run(args) -> dict:
    threads = set_threads(args.threads)
    record: dict = {"threads": threads, "torch": torch.__version__}
    if not args.skip_speed:
        record["speed"] = run_speed(args)
        print(json.dumps(record["speed"]), flush=True)  # early, in case the memory passes are cut short
    if args.memory_seconds > 0:
        record["memory"] = [run_memory(s, threads) for s in (args.memory_scale_seconds, args.memory_seconds) if s > 0]
    return record


def print_report(record: dict) -> None:
    speed = record.get("speed")
    if speed:
        print(f"MERT-v2 full size, {speed['seconds']:g} s input ({speed['frames']} frames), {speed['threads']} threads")
        for name, value in speed["median_s"].items():
            print(f"  {name:14s} {value:8.2f} s")
        print(f"  fp32 ours/baseline      {speed['ratio_fp32']:.2f}x   max |diff| {speed['fp32_max_abs_diff']:.2e}")
        print(f"  bf16 ours/baseline bf16 {speed['ratio_bf16_vs_baseline_bf16']:.2f}x   "
              f"vs baseline fp32 {speed['ratio_bf16_vs_baseline_fp32']:.2f}x")
        print("  per-layer cosine vs baseline fp32 (ours bf16 | baseline bf16):")
        for i, (a, b) in enumerate(zip(speed["cosine_ours_bf16"], speed["cosine_baseline_bf16"])):
            print(f"    state {i:2d}: {a:.5f} | {b:.5f}")
    for m in record.get("memory", []):
        if "error" in m:
            print(f"  whole pass {m['seconds']:g} s failed: {m['error']}")
            continue
        print(f"  whole pass {m['seconds']:g} s ({m['frames']} frames, bf16): peak RSS {m['peak_rss_mb']:.0f} MB, "
              f"{m['peak_rss_mb'] - m['base_rss_mb']:.0f} MB over the loaded model")
    print(json.dumps(record))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        set_threads(args.threads)
        memory_child(args.memory_child)
        return 0
    return run_benchmark("bench_mert2", argv, parse_args, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
