"""Peak memory of extracting one long track on MERT-v1-95M shapes: pooled and frame-level
output, a 10-minute track vs a 1-minute one (flat = memory independent of track length).

Each measurement runs `mertkit.extraction.runner.run_extract` (the library call behind `mert extract`)
over one synthetic 44.1 kHz stereo mp3 in a fresh subprocess, which reports its peak resident
set (VmHWM from /proc/self/status, the same number as getrusage's ru_maxrss) and its resident
set right after loading the model, so the table separates the fixed cost (interpreter, torch,
95M fp32 weights) from what the track adds. Decoding runs in that process (workers=0), so
one process holds everything; frame-level output is all 13 hidden states, written to
safetensors as the windows finish.

    python benchmarks/bench_memory.py [--quick]      # quick: 2 minutes vs 30 s

A 10-minute track is ~120 windows of 5 s: minutes of CPU time per mode on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

TARGET_GB = 2.5
MODES = ("pooled", "frames")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args: argparse.Namespace) -> int:
    """One measurement: load the model, extract one track, print a JSON line."""
    import torch

    import mertkit
    from mertkit.extraction.engine import ExtractOptions
    from mertkit.extraction.runner import run_extract

    torch.set_num_threads(args.threads)
    model = mertkit.load(args.checkpoint)
    after_load = _status_mb("VmRSS")
    pool = "mean" if args.mode == "pooled" else "none"
    options = ExtractOptions(pool=pool, window=5.0, batch_size=args.batch_size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.out_dir) as out:
        report = run_extract(model, [args.track], out, options, progress=False, workers=0)
        written = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    if report.failed:
        raise RuntimeError(f"extraction failed: {report.failed}")
    print(json.dumps({"mode": args.mode, "track": args.track, "after_load_mb": after_load,
                      "peak_mb": _status_mb("VmHWM"), "seconds": time.perf_counter() - start,
                      "output_mb": written / 2**20}))
    return 0


def measure(mode: str, track: Path, checkpoint: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--mode", mode, "--track", str(track),
               "--checkpoint", str(checkpoint), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--out-dir", str(args.work_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {mode} {track} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    from bench_e2e import build_checkpoint
    from make_tracks import make_tracks

    work = Path(args.work_dir)
    checkpoint = build_checkpoint(work / "mert95m-random")
    tracks = {}
    for seconds in (args.short_seconds, args.long_seconds):
        (tracks[seconds],) = make_tracks(work / f"memory-{seconds:g}s", count=1, min_seconds=seconds,
                                         max_seconds=seconds, seed=1)
    results = []
    # Short and long alternate per mode so that slow periods on the shared machine hit both.
    for mode in MODES:
        for seconds, track in tracks.items():
            print(f"measuring {mode} {seconds:g} s ...", file=sys.stderr)
            results.append({**measure(mode, track, checkpoint, args), "audio_seconds": seconds})
    return {"threads": args.threads, "batch_size": args.batch_size, "results": results}


def print_table(summary: dict) -> None:
    print(f"\npeak RSS, MERT-v1-95M shapes (fp32 weights), threads {summary['threads']}, batch {summary['batch_size']}")
    print(f"{'output':<8}{'audio':>8}{'after load MB':>15}{'peak MB':>10}{'track adds MB':>15}{'wall s':>9}{'file MB':>9}")
    for r in summary["results"]:
        print(f"{r['mode']:<8}{r['audio_seconds']:>7.0f}s{r['after_load_mb']:>15.0f}{r['peak_mb']:>10.0f}"
              f"{r['peak_mb'] - r['after_load_mb']:>15.0f}{r['seconds']:>9.0f}{r['output_mb']:>9.1f}")
    for mode in MODES:
        short, long_ = [r for r in summary["results"] if r["mode"] == mode]
        verdict = "meets" if long_["peak_mb"] / 1024 < TARGET_GB else "MISSES"
        print(f"{mode}: peak {long_['peak_mb'] / 1024:.2f} GB for {long_['audio_seconds']:.0f} s ({verdict} < {TARGET_GB} GB); "
              f"long/short peak ratio {long_['peak_mb'] / short['peak_mb']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 minutes vs 30 s instead of 10 minutes vs 1 minute")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mertkit-bench"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--long-seconds", type=float, default=None)
    parser.add_argument("--short-seconds", type=float, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--track", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    args.long_seconds = args.long_seconds or (120.0 if args.quick else 600.0)
    args.short_seconds = args.short_seconds or (30.0 if args.quick else 60.0)
    summary = run(args)
    print_table(summary)
    print(json.dumps({"benchmark": "memory", **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
