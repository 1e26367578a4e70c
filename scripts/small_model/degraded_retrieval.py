"""Find each clip again from a degraded copy: top-1 retrieval by cosine similarity of clip
features, for a model, its random initialisations and the classic clip statistics.

Issue 9's first measurement included "retrieval of degraded real recordings (top-1)", where
chroma statistics scored 1.00, MFCC 0.90 and the retired model 0.59 against its random
initialisation's 0.48. This is the same question on rendered music, so that any model can be
put beside its floors here:

    python scripts/small_model/degraded_retrieval.py mertkit-tiny-mel suite/key suite/tempo

Every clip of the given suite folders is a piece; its query is the same audio degraded, one
degradation at a time (``DEGRADATIONS``, seeded per clip). Features are standardised with the
clean gallery's mean and spread per dimension (so no dimension's scale decides), then each
query's nearest clean clip by cosine is its answer. The pieces are split in two halves at
random: the layer of a model is chosen on the first half (gallery and queries of that half)
and scored on the second, whose queries also give the 95 % bootstrap interval and the paired
difference of the model against each other row.
"""
from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mertkit.audio import load_audio, resample
from mertkit.eval.baselines import BASELINES, SpectralConfig
from mertkit.eval.metrics import bootstrap_ci
from mertkit.eval.suite_runner import load_model, random_init_model
from mertkit.pretrain.diagnostics import pooled_states_of_waves


def _band(wave: np.ndarray, rate: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(wave)
    freqs = np.fft.rfftfreq(wave.size, 1.0 / rate)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    return np.fft.irfft(spectrum, wave.size)


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave**2)) + 1e-9)


def noise(wave: np.ndarray, rate: int, rng: np.random.Generator, snr_db: float = 10.0) -> np.ndarray:
    """White noise at ``snr_db`` below the clip's RMS."""
    return wave + rng.standard_normal(wave.size) * _rms(wave) * 10 ** (-snr_db / 20)


def mild_noise(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """White noise 30 dB under the clip."""
    return noise(wave, rate, rng, snr_db=30.0)


def lowpass(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Nothing above 8 kHz (the bandwidth of a low-bitrate MP3)."""
    return _band(wave, rate, 0.0, 8000.0)


def telephone(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The 300-3400 Hz band only."""
    return _band(wave, rate, 300.0, 3400.0)


def reverb(wave: np.ndarray, rate: int, rng: np.random.Generator, rt60: float = 1.2) -> np.ndarray:
    """Half dry, half a decaying-noise room (RT60 ``rt60`` s), at the clip's loudness."""
    t = np.arange(int(rt60 * rate)) / rate
    response = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    size = wave.size + response.size
    wet = np.fft.irfft(np.fft.rfft(wave, size) * np.fft.rfft(response, size), size)[: wave.size]
    mixed = 0.5 * wave / _rms(wave) + 0.5 * wet / _rms(wet)
    return mixed * _rms(wave) / _rms(mixed)


def tilt(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """An equaliser tilt: +6 dB at 50 Hz falling to -12 dB at Nyquist (log frequency)."""
    spectrum = np.fft.rfft(wave)
    freqs = np.maximum(np.fft.rfftfreq(wave.size, 1.0 / rate), 50.0)
    gain_db = 6.0 - 18.0 * np.log(freqs / 50.0) / np.log(rate / 2 / 50.0)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), wave.size)


def crop(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The clip without its first second (a query that starts elsewhere than the gallery's)."""
    return wave[rate:]


def combined(wave: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """crop, tilt, reverb, telephone band, then noise at 15 dB."""
    out = crop(wave, rate, rng)
    for step in (tilt, reverb, telephone):
        out = step(out, rate, rng)
    return noise(out, rate, rng, snr_db=15.0)


DEGRADATIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "noise 10 dB": noise, "telephone": telephone, "reverb": reverb, "tilt EQ": tilt, "crop 1 s": crop,
    "all at once": combined, "noise 30 dB": mild_noise, "low-pass 8 kHz": lowpass,
}


def suite_waves(folders: Sequence[Path], rate: int) -> list[np.ndarray]:
    waves = []
    for folder in folders:
        with (folder / "manifest.csv").open(newline="", encoding="utf-8") as handle:
            waves += [load_audio(folder / row["path"], rate) for row in csv.DictReader(handle)]
    return waves


def degraded(waves: Sequence[np.ndarray], rate: int, name: str) -> list[np.ndarray]:
    step = DEGRADATIONS[name]
    index = list(DEGRADATIONS).index(name)
    out = [step(w.astype(np.float64), rate, np.random.default_rng([index, i])).astype(np.float32)
           for i, w in enumerate(waves)]
    return [w / max(1.0, float(np.abs(w).max())) for w in out]


def top1_hits(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """[queries] bool: whether each query's nearest gallery row (cosine, standardised by the
    gallery) is its own clip (same row index)."""
    centre, spread = gallery.mean(0), gallery.std(0) + 1e-6
    g, q = (gallery - centre) / spread, (queries - centre) / spread
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-9
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-9
    return np.argmax(q @ g.T, axis=1) == np.arange(len(q))


def layer_scores(clean: np.ndarray, query: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> tuple[int, np.ndarray]:
    """[clips, layers, dims] features -> (layer chosen on the first half, its hits on the second)."""
    choose, score = halves
    layers = clean.shape[1]
    best = int(np.argmax([top1_hits(clean[choose, k], query[choose, k]).mean() for k in range(layers)]))
    return best, top1_hits(clean[score, best], query[score, best])


def model_rows(name: str, random_inits: int) -> list[tuple[str, Callable[[list[np.ndarray]], np.ndarray], int]]:
    model, info = load_model(name)
    rows = [(info.name, model, info.sample_rate)]
    for seed in range(random_inits):
        twin, twin_info = random_init_model(model, info, seed)
        rows.append((twin_info.name, twin, info.sample_rate))
    return [(title, (lambda waves, m=m: pooled_states_of_waves(m, waves)), rate) for title, m, rate in rows]


def baseline_rows(names: Sequence[str]) -> list[tuple[str, Callable[[list[np.ndarray]], np.ndarray], int]]:
    cfg = SpectralConfig()
    return [(f"{name} stats", (lambda waves, n=name: np.stack([BASELINES[n](w, cfg) for w in waves])), cfg.sample_rate)
            for name in names]


def paired(a: np.ndarray, b: np.ndarray) -> str:
    interval = bootstrap_ci(lambda idx: float(a[idx].mean() - b[idx].mean()), len(a))
    low, high = interval if interval is not None else (float("nan"), float("nan"))
    verdict = "ahead" if low > 0 else "behind" if high < 0 else "within noise"
    return f"{100 * (a.mean() - b.mean()):+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] {verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name or model folder")
    parser.add_argument("folders", type=Path, nargs="+", help="suite task folders (each with manifest.csv)")
    parser.add_argument("--random-init", type=int, default=3, help="random-initialisation seeds [default: 3]")
    parser.add_argument("--baselines", default="mfcc,chroma,logmel")
    parser.add_argument("--degradations", default=",".join(DEGRADATIONS),
                        help=f"comma-separated, of: {', '.join(DEGRADATIONS)} [default: all]")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.degradations.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in DEGRADATIONS]
    if unknown:
        parser.error(f"unknown degradation {unknown[0]!r}; choose from {', '.join(DEGRADATIONS)}")
    torch.set_grad_enabled(False)
    rows = model_rows(args.model, args.random_init) + baseline_rows([b for b in args.baselines.split(",") if b])
    base_rate = rows[0][2]
    clean = suite_waves(args.folders, base_rate)
    order = np.random.default_rng(0).permutation(len(clean))
    halves = (np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:]))
    print(f"{len(clean)} pieces; layer chosen on {len(halves[0])}, scored on {len(halves[1])} "
          f"(gallery of {len(halves[1])}); top-1 x100, 95 % bootstrap interval over queries", flush=True)

    def features_of(extract: Callable[[list[np.ndarray]], np.ndarray], rate: int, waves: list[np.ndarray]) -> np.ndarray:
        """[clips, layers, dims] of waves at the base rate, resampled to the row's rate."""
        found = extract(waves if rate == base_rate else [resample(w, base_rate, rate) for w in waves])
        return found[:, None] if found.ndim == 2 else found

    features = {title: {"clean": features_of(extract, rate, clean)} for title, extract, rate in rows}
    for degradation in chosen:
        queries = degraded(clean, base_rate, degradation)
        hits = {}
        for title, extract, rate in rows:
            query = features_of(extract, rate, queries)
            layer, hits[title] = layer_scores(features[title]["clean"], query, halves)
            interval = bootstrap_ci(lambda idx, h=hits[title]: float(h[idx].mean()), len(hits[title]))
            where = f" (L{layer})" if features[title]["clean"].shape[1] > 1 else ""
            print(f"{degradation}: {title}{where} {100 * hits[title].mean():.1f} "
                  f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]", flush=True)
        first = rows[0][0]
        inits = [title for title, _, _ in rows[1: 1 + args.random_init]]
        if inits:
            init_hits = np.mean([hits[t] for t in inits], axis=0)
            print(f"{degradation}: {first} minus random init (mean of {len(inits)}): {paired(hits[first], init_hits)}")
        for title, _, _ in rows[1 + args.random_init:]:
            print(f"{degradation}: {first} minus {title}: {paired(hits[first], hits[title])}", flush=True)


if __name__ == "__main__":
    main()
