"""End-to-end extraction benchmark: a folder of songs -> pooled features, mertkit vs a
MARBLE-v1-style baseline, on the same random MERT-v1-95M-shaped weights, in one run.

What each side does per track:

    baseline (MARBLE-v1 style, one file at a time, nothing overlapped):
        soundfile.read (libsndfile decodes mp3 and flac) -> channel mean -> soxr.resample
        (quality "HQ", 44.1 -> 24 kHz) -> 5 s windows, one window per forward call ->
        per-window zero-mean/unit-variance normalisation (Wav2Vec2FeatureExtractor's
        do_normalize) -> transformers HubertModel, eager attention, fp32,
        output_hidden_states -> time-mean of all 13 hidden states over the track's frames.
        (MARBLE v1 extracts with torchaudio load/resample, which is not installed here; soxr is
        used so that the feature difference measures the models and the pipeline, not two
        resamplers. A tail shorter than one frame (400 samples) is dropped, as mertkit does.)
    mertkit (the library pipeline `mert extract` runs):
        mertkit.extraction.decode.decode_files (decoding + resampling streamed in a worker process,
        overlapped with the model) -> Extractor.run: 5 s windows batched across tracks,
        equal-length windows together -> MertModel -> per-track mean pooled [13, 768];
        fp32 ("exact mode") and bf16 autocast.

Also measured in the same run, with the same threads:
    forward-only   the same windows pre-decoded in memory through the same Extractor, so
                   pipeline efficiency = e2e throughput / forward-only throughput;
    FLOP/s         analytic forward FLOPs of every window / forward-only time, as a fraction
                   of the GEMM peak (a large square product through torch.matmul and through
                   oneDNN as a 1x1 conv, the faster of the two; fp32 and bf16).
Other processes share this machine's cores, so every measurement is interleaved chunk by
chunk (rotating the order) and ratios come from the same run; the matmul peak is measured
right before and after each forward-only step and each step is compared with the mean of
those two. torch is imported inside the functions: the decode workers are started with
"spawn", which re-imports this script, and they must stay light.

    python benchmarks/bench_e2e.py [--quick] [--tracks DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

from _common import MERT_95M, cpu_line, cpu_record  # noqa: E402
from make_tracks import make_tracks  # noqa: E402

SAMPLE_RATE = 24000
WINDOW_SECONDS = 5.0
NORMALIZE_EPS = 1e-7


# ---------------------------------------------------------------------------------------
# The shared checkpoint
# ---------------------------------------------------------------------------------------
def build_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Random MERT-v1-95M-shaped weights in the hub layout: config.json (mert_model, 24 kHz),
    pytorch_model.bin with the legacy weight_g/weight_v names, preprocessor_config.json."""
    import torch
    from transformers import HubertConfig, HubertModel

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "pytorch_model.bin").is_file():
        return directory
    torch.manual_seed(seed)
    model = HubertModel(HubertConfig(**MERT_95M))
    config = model.config.to_dict()
    config.update(model_type="mert_model", sample_rate=SAMPLE_RATE, feature_extractor_cqt=False,
                  feature_extractor_cqt_bins=336, deepnorm=False, attention_relax=-1.0)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1, "padding_value": 0.0, "sampling_rate": SAMPLE_RATE}))
    state = {_legacy_name(k): v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _legacy_name(name: str) -> str:
    return (name.replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v"))


def _current_name(name: str) -> str:
    return (name.replace("weight_g", "parametrizations.weight.original0")
                .replace("weight_v", "parametrizations.weight.original1"))


def load_baseline(directory: Path):
    """transformers HubertModel (eager attention, fp32) with every tensor of the checkpoint,
    loaded strictly so that no weight is silently left at its random init."""
    import torch
    from transformers import HubertConfig, HubertModel

    data = json.loads((directory / "config.json").read_text())
    data.pop("model_type")
    config = HubertConfig(**data)
    config._attn_implementation = "eager"
    model = HubertModel(config)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    model.load_state_dict({_current_name(k): v for k, v in state.items()}, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------
# The two extraction paths
# ---------------------------------------------------------------------------------------
def baseline_track(model, path: Path) -> np.ndarray:
    """MARBLE-v1-style pooled features [13, 768] of one file (see the module docstring)."""
    import soundfile as sf
    import soxr
    import torch

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = soxr.resample(audio.mean(axis=1), rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    size = int(WINDOW_SECONDS * SAMPLE_RATE)
    total, frames = None, 0
    for start in range(0, len(wave), size):
        chunk = wave[start:start + size]
        if len(chunk) < 400:
            continue
        chunk = (chunk - chunk.mean()) / np.sqrt(chunk.var() + NORMALIZE_EPS)
        with torch.inference_mode():
            states = model(torch.from_numpy(chunk)[None], output_hidden_states=True).hidden_states
        sums = torch.stack([s[0].sum(dim=0) for s in states]).double()
        total = sums if total is None else total + sums
        frames += states[0].shape[1]
    return (total / frames).float().numpy()


def mertkit_tracks(extractor, paths: list[Path], workers: int) -> dict[int, np.ndarray]:
    """The library pipeline: decoding in `workers` processes, batched windows, pooled output."""
    from mertkit.extraction.decode import decode_files

    events = decode_files([str(p) for p in paths], SAMPLE_RATE, workers=workers)
    return _collect(extractor.run(events, extractor.feature_sink))


def forward_only(extractor, waves: list[np.ndarray]) -> dict[int, np.ndarray]:
    """The same Extractor over waveforms already decoded and resampled in memory."""
    from mertkit.extraction.decode import decode_waveforms

    return _collect(extractor.run(decode_waveforms(waves), extractor.feature_sink))


def _collect(outcomes) -> dict[int, np.ndarray]:
    out = {}
    for job, outcome in outcomes:
        if not hasattr(outcome, "hidden_states"):
            raise RuntimeError(f"track {job} failed: {outcome}")
        out[job] = outcome.hidden_states
    return out


# ---------------------------------------------------------------------------------------
# FLOPs and the matmul peak
# ---------------------------------------------------------------------------------------
def forward_flops(config, num_samples: int) -> float:
    """Multiply-adds x 2 of one forward pass over `num_samples` (all layers)."""
    flops, length, channels = 0.0, num_samples, 1
    for width, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
        flops += 2.0 * length * width * channels * kernel
        channels = width
    frames, hidden = length, config.hidden_size
    flops += 2.0 * frames * channels * hidden  # feature projection
    flops += 2.0 * frames * hidden * (hidden // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
    per_layer = (8.0 * frames * hidden * hidden  # q, k, v, out projections
                 + 4.0 * frames * hidden * config.intermediate_size  # FFN
                 + 4.0 * frames * frames * hidden)  # scores and weighted sum
    return flops + config.num_hidden_layers * per_layer


def matmul_peak(dtype_name: str, size: int = 2048, reps: int = 3) -> float:
    """The machine's GEMM peak: the faster of torch.matmul (the BLAS torch was built with) and
    the same product as a 1x1 conv1d (oneDNN), each the median of `reps` timed calls of a
    square product of this size. On AMD CPUs the two back ends differ by up to 1.4x in fp32,
    and the model's convolutions run on oneDNN, so torch.matmul alone would understate it."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    as_conv_input, as_conv_weight = a.t().contiguous()[None], b.t().contiguous()[:, :, None]
    with torch.inference_mode():
        best = max(_median_seconds(lambda: torch.matmul(a, b), reps) ** -1,
                   _median_seconds(lambda: F.conv1d(as_conv_input, as_conv_weight), reps) ** -1)
    return 2.0 * size**3 * best


def _median_seconds(call, reps: int) -> float:
    call()  # untimed: first-call set-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    import torch

    import mertkit
    from mertkit.audio import load_audio
    from mertkit.extraction.engine import Extractor, ExtractOptions, window_plan

    torch.set_num_threads(args.threads)
    from mertkit.extraction.allocator import keep_freed_memory

    # Process-wide: the baseline gets it too (MERTKIT_KEEP_FREED_MEMORY=0 turns it off).
    kept = keep_freed_memory()
    work = Path(args.work_dir)
    paths = make_tracks(work / "tracks", count=args.count, min_seconds=args.min_seconds,
                        max_seconds=args.max_seconds)
    checkpoint = build_checkpoint(work / "mert95m-random")
    baseline = load_baseline(checkpoint)
    # As `mert extract --dtype bfloat16` does: the bf16 path loads bf16 weights and runs them natively.
    models = {"float32": mertkit.load(checkpoint), "bfloat16": mertkit.load(checkpoint, dtype=torch.bfloat16)}
    extractors = {dtype: Extractor(models[dtype], ExtractOptions(pool="mean", window=WINDOW_SECONDS,
                                                                 batch_size=args.batch_size, dtype=dtype))
                  for dtype in ("float32", "bfloat16")}
    _warm_up(baseline, extractors)

    chunks = [paths[i:i + args.chunk] for i in range(0, len(paths), args.chunk)]
    times = {name: 0.0 for name in ("baseline", "e2e_float32", "e2e_bfloat16", "fwd_float32", "fwd_bfloat16")}
    peaks = {"float32": [], "bfloat16": []}  # every matmul measurement
    peak_seconds = {"float32": 0.0, "bfloat16": 0.0}  # sum of forward time x adjacent peak
    features = {name: [] for name in ("baseline", "float32", "bfloat16")}
    audio_seconds, flops = 0.0, 0.0
    for index, chunk in enumerate(chunks):
        waves = [load_audio(p, SAMPLE_RATE) for p in chunk]  # untimed: forward-only input
        audio_seconds += sum(len(w) for w in waves) / SAMPLE_RATE
        flops += sum(forward_flops(models["float32"].config, e - s) for w in waves
                     for s, e in window_plan(len(w), SAMPLE_RATE, WINDOW_SECONDS, None, models["float32"].config.receptive_field))
        steps: list[tuple[str, Callable[[], object]]] = [
            ("baseline", lambda: features["baseline"].extend(baseline_track(baseline, p) for p in chunk)),
            ("e2e_float32", lambda: features["float32"].extend(_ordered(mertkit_tracks(extractors["float32"], chunk, args.workers)))),
            ("e2e_bfloat16", lambda: features["bfloat16"].extend(_ordered(mertkit_tracks(extractors["bfloat16"], chunk, args.workers)))),
            ("fwd_float32", lambda: forward_only(extractors["float32"], waves)),
            ("fwd_bfloat16", lambda: forward_only(extractors["bfloat16"], waves)),
        ]
        shift = index % len(steps)
        for name, step in steps[shift:] + steps[:shift]:
            dtype = name.removeprefix("fwd_") if name.startswith("fwd_") else None
            before = matmul_peak(dtype) if dtype else 0.0
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            times[name] += elapsed
            if dtype:
                after = matmul_peak(dtype)
                peaks[dtype] += [before, after]
                peak_seconds[dtype] += elapsed * (before + after) / 2
        print(f"chunk {index + 1}/{len(chunks)} done ({audio_seconds:.0f} s of audio so far)", file=sys.stderr)
    return {**_summary(args, paths, audio_seconds, flops, times, peaks, peak_seconds, features),
            "keep_freed_memory": kept, "cpu": cpu_record()}


def _ordered(results: dict[int, np.ndarray]) -> list[np.ndarray]:
    return [results[i] for i in sorted(results)]


def _warm_up(baseline, extractors) -> None:
    import torch

    wave = np.random.default_rng(0).standard_normal(int(WINDOW_SECONDS * SAMPLE_RATE)).astype(np.float32)
    with torch.inference_mode():
        baseline(torch.from_numpy(wave)[None], output_hidden_states=True)
    for extractor in extractors.values():
        forward_only(extractor, [wave, wave[: len(wave) // 2]])


def _summary(args, paths, audio_seconds, flops, times, peaks, peak_seconds, features) -> dict:
    base = np.stack(features["baseline"])
    fp32, bf16 = np.stack(features["float32"]), np.stack(features["bfloat16"])
    throughput = {name: audio_seconds / t for name, t in times.items()}
    return {
        "tracks": len(paths), "audio_seconds": audio_seconds, "threads": args.threads,
        "batch_size": args.batch_size, "decode_workers": args.workers, "chunk": args.chunk,
        "seconds": times, "throughput_audio_s_per_s": throughput,
        "ratio_fp32_vs_baseline": throughput["e2e_float32"] / throughput["baseline"],
        "ratio_bf16_vs_baseline": throughput["e2e_bfloat16"] / throughput["baseline"],
        "max_abs_diff_fp32_vs_baseline": float(np.abs(fp32 - base).max()),
        "min_cosine_bf16_vs_baseline": float(_cosine(bf16, base).min()),
        "forward_gflop": flops / 1e9,
        "matmul_peak_gflops": {d: float(np.median(v)) / 1e9 for d, v in peaks.items()},
        "matmul_peak_gflops_max": {d: max(v) / 1e9 for d, v in peaks.items()},
        "forward_gflops": {d: flops / times[f"fwd_{d}"] / 1e9 for d in peaks},
        "fraction_of_peak": {d: flops / peak_seconds[d] for d in peaks},
        "baseline_fraction_of_fp32_peak": flops / times["baseline"] / float(np.median(peaks["float32"])),
        "pipeline_efficiency": {d: throughput[f"e2e_{d}"] / throughput[f"fwd_{d}"] for d in peaks},
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per (track, layer) of [tracks, layers, width] arrays."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def print_table(r: dict) -> None:
    t = r["throughput_audio_s_per_s"]
    print(f"\n{cpu_line(r['cpu'])}")
    print(f"{r['tracks']} tracks, {r['audio_seconds']:.0f} s of audio; threads {r['threads']}, "
          f"batch {r['batch_size']}, decode workers {r['decode_workers']}, "
          f"malloc keeps freed memory (all paths): {r['keep_freed_memory']}")
    print(f"{'path':<34}{'wall s':>9}{'audio s / s':>13}{'vs baseline':>13}")
    rows = [("baseline (HF eager fp32, per file)", "baseline"), ("mertkit fp32 (exact)", "e2e_float32"),
            ("mertkit bf16", "e2e_bfloat16"), ("forward-only fp32", "fwd_float32"),
            ("forward-only bf16", "fwd_bfloat16")]
    for label, key in rows:
        print(f"{label:<34}{r['seconds'][key]:>9.1f}{t[key]:>13.2f}{t[key] / t['baseline']:>12.2f}x")
    print(f"max |mertkit fp32 - baseline| of pooled features: {r['max_abs_diff_fp32_vs_baseline']:.2e}")
    print(f"min cosine (track x layer) mertkit bf16 vs baseline: {r['min_cosine_bf16_vs_baseline']:.5f}")
    for d in ("float32", "bfloat16"):
        print(f"{d}: forward {r['forward_gflops'][d]:.0f} GFLOP/s = {100 * r['fraction_of_peak'][d]:.0f} % of the "
              f"adjacent matmul peak (median {r['matmul_peak_gflops'][d]:.0f}, max "
              f"{r['matmul_peak_gflops_max'][d]:.0f} GFLOP/s); pipeline efficiency {r['pipeline_efficiency'][d]:.2f}")
    print(f"baseline: {100 * r['baseline_fraction_of_fp32_peak']:.0f} % of the fp32 matmul peak")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 tracks of 20-40 s instead of 20 of 1-4 min")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mertkit-bench"),
                        help="where the corpus and the checkpoint are generated (reused across runs)")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0,
                        help="decode worker processes for mertkit (default 0, as `mert extract`: on a CPU whose "
                             "cores all run the model, a decoder process steals them; measured 0.86 vs 0.94 "
                             "pipeline efficiency in bf16 on 2 cores)")
    parser.add_argument("--chunk", type=int, default=None, help="tracks per interleaved measurement chunk")
    args = parser.parse_args(argv)
    defaults = (6, 20.0, 40.0, 2) if args.quick else (20, 60.0, 240.0, 4)
    for name, value in zip(("count", "min_seconds", "max_seconds", "chunk"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    result = run(args)
    print_table(result)
    print(json.dumps({"benchmark": "e2e", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
