"""Generate the extraction benchmark corpus: synthetic 44.1 kHz stereo "songs" as mp3 and flac.

Each track has its own key, tempo and timbre: a four-chord progression of harmonic tones,
a sine bass, and noise drums (kick, snare, hi-hat) on a beat grid, panned across the stereo
field. A bar of each chord is rendered once and tiled, so generation is fast; encoding
(mp3 through libsndfile/LAME, or PyAV when libsndfile has no mp3 encoder; flac 16-bit)
dominates. Files alternate mp3 / flac.

    python benchmarks/make_tracks.py OUT_DIR [--count 20] [--min-seconds 60] [--max-seconds 240]

A rerun with the same settings reuses the files (a small manifest records the settings).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100
MANIFEST = "tracks.json"
# Semitone offsets of a I-V-vi-IV progression and of a major / minor triad.
PROGRESSION = (0, 7, 9, 5)
TRIADS = {0: (0, 4, 7), 7: (0, 4, 7), 9: (0, 3, 7), 5: (0, 4, 7)}


def make_tracks(out_dir: str | Path, *, count: int = 20, min_seconds: float = 60.0,
                max_seconds: float = 240.0, seed: int = 0) -> list[Path]:
    """Write `count` tracks (durations uniform in [min_seconds, max_seconds]) into out_dir."""
    if count < 1 or not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need count >= 1 and 0 < min_seconds <= max_seconds, got {count}, {min_seconds}, {max_seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"count": count, "min_seconds": min_seconds, "max_seconds": max_seconds, "seed": seed,
                "sample_rate": SAMPLE_RATE}
    rng = np.random.default_rng(seed)
    durations = rng.uniform(min_seconds, max_seconds, size=count)
    paths = [out / f"track_{i:03d}.{'mp3' if i % 2 == 0 else 'flac'}" for i in range(count)]
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == settings and all(p.is_file() for p in paths):
        return paths
    for i, (path, seconds) in enumerate(zip(paths, durations)):
        audio = render_song(float(seconds), np.random.default_rng([seed, i]))
        _write(path, audio)
    manifest.write_text(json.dumps(settings))
    return paths


def render_song(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """(samples, 2) float32 in [-1, 1]: chords + bass + drums, tiled bar by bar."""
    bpm = rng.uniform(84, 140)
    beat = int(round(60 / bpm * SAMPLE_RATE))
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    brightness = rng.uniform(0.3, 0.8)
    bars = {step: _bar(root * 2 ** (step / 12), TRIADS[step], beat, brightness, rng) for step in PROGRESSION}
    total = int(round(seconds * SAMPLE_RATE))
    count = -(-total // (4 * beat))
    song = np.concatenate([bars[PROGRESSION[b % len(PROGRESSION)]] for b in range(count)])[:total]
    fade = np.minimum(1.0, np.minimum(np.arange(total), total - 1 - np.arange(total)) / (0.05 * SAMPLE_RATE))
    song *= fade[:, None]
    return (0.9 * song / max(1e-9, np.abs(song).max())).astype(np.float32)


def _bar(root: float, triad: tuple[int, ...], beat: int, brightness: float, rng: np.random.Generator) -> np.ndarray:
    """One 4/4 bar, stereo."""
    n = 4 * beat
    t = np.arange(n) / SAMPLE_RATE
    beat_phase = (np.arange(n) % beat) / SAMPLE_RATE
    pluck = np.exp(-3.0 * beat_phase)
    chord = sum(_tone(root * 2 * 2 ** (s / 12), t, brightness) for s in triad) * pluck / len(triad)
    bass = np.sin(2 * np.pi * root / 2 * t) * np.exp(-1.5 * (np.arange(n) % (2 * beat)) / SAMPLE_RATE)
    kick, snare, hat = _drums(n, beat, rng)
    left = 0.5 * chord + 0.5 * bass + 0.8 * kick + 0.45 * snare + 0.15 * hat
    right = 0.4 * chord + 0.5 * bass + 0.8 * kick + 0.5 * snare + 0.3 * hat
    return np.stack([left, right], axis=1)


def _tone(freq: float, t: np.ndarray, brightness: float) -> np.ndarray:
    return sum(brightness ** (h - 1) * np.sin(2 * np.pi * freq * h * t) for h in range(1, 6))


def _drums(n: int, beat: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kick, snare, hat = np.zeros(n), np.zeros(n), np.zeros(n)
    hit = np.arange(beat) / SAMPLE_RATE
    kick_hit = np.sin(2 * np.pi * (50 * hit + 60 * (1 - np.exp(-30 * hit)) / 30)) * np.exp(-12 * hit)
    for b in (0, 2):
        kick[b * beat:(b + 1) * beat] += kick_hit
    for b in (1, 3):
        snare[b * beat:(b + 1) * beat] += rng.standard_normal(beat) * np.exp(-25 * hit)
    half = beat // 2
    for e in range(8):
        noise = np.diff(rng.standard_normal(half + 1))  # a first difference: a crude high-pass
        hat[e * half:(e + 1) * half] += noise * np.exp(-60 * hit[:half])
    return kick, snare, hat


def _write(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    if path.suffix == ".flac":
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    elif sf.check_format("MP3", "MPEG_LAYER_III"):
        sf.write(path, audio, SAMPLE_RATE, subtype="MPEG_LAYER_III", format="MP3")
    else:
        _write_mp3_pyav(path, audio)


def _write_mp3_pyav(path: Path, audio: np.ndarray) -> None:
    import av

    with av.open(str(path), mode="w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_tracks(args.out_dir, count=args.count, min_seconds=args.min_seconds,
                        max_seconds=args.max_seconds, seed=args.seed)
    print(f"{len(paths)} tracks in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
