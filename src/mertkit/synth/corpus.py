"""Random multi-instrument music rendered from MIDI: a small pre-training corpus.

Every clip is a short piece in a random key and tempo: a chord progression (random
inversions and register) on a comping instrument, a bass line on the chord roots, a melody
built from chord and scale tones, and a drum groove; programs are drawn from General MIDI
groups that suit each role. The MIDI is rendered offline with :mod:`mertkit.synth.render`
and written as 16-bit mono WAV. Everything derives from ``numpy.random.default_rng([seed,
clip_index])``, so a corpus is identical byte for byte for the same arguments, and clip i
does not depend on how many clips are asked for.

The music-theory helpers here (keys, progressions, voicings, grooves) are shared with the
benchmark suite (:mod:`mertkit.synth.suite`).

Layout written by :func:`render_corpus`::

    out_dir/clips/000000.wav ...
    out_dir/manifest.csv     path,num_samples,sample_rate,key,tempo_bpm,programs
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.synth.render import RenderError, peak_normalise, render_midi, require_synth_deps

__all__ = [
    "Chord",
    "PITCH_CLASS_NAMES",
    "MODES",
    "key_name",
    "draw_progression",
    "voice_chord",
    "beat_grid",
    "render_corpus",
    "write_wav",
]

PITCH_CLASS_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
CHORD_INTERVALS = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "dom7": (0, 4, 7, 10)}

# General MIDI programs (0-based) per musical role.
COMP_PROGRAMS = (0, 1, 2, 4, 5, 16, 17, 19, 24, 25, 26, 27, 48, 49, 50, 52, 61, 88, 89, 90, 91, 94)
BASS_PROGRAMS = tuple(range(32, 40))
LEAD_PROGRAMS = (0, 8, 11, 12, 24, 40, 41, 56, 57, 64, 65, 66, 68, 71, 73, 75, 80, 81, 85)
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)
KICK, SNARE, CLOSED_HAT, OPEN_HAT, RIDE = 36, 38, 42, 46, 51


@dataclass(frozen=True)
class Chord:
    """A chord as its root (semitones above the key's tonic) and quality."""

    root: int
    quality: str

    def pitch_classes(self, tonic: int) -> tuple[int, ...]:
        return tuple((tonic + self.root + step) % 12 for step in CHORD_INTERVALS[self.quality])


_I, _ii, _iii, _IV, _V, _V7, _vi = (
    Chord(0, "maj"), Chord(2, "min"), Chord(4, "min"), Chord(5, "maj"), Chord(7, "maj"), Chord(7, "dom7"), Chord(9, "min"),
)
_i, _iidim, _III, _iv, _VI, _VII = (
    Chord(0, "min"), Chord(2, "dim"), Chord(3, "maj"), Chord(5, "min"), Chord(8, "maj"), Chord(10, "maj"),
)
# Every progression opens on the tonic and closes with a dominant-tonic cadence, so the key
# is audible; minor keys use the harmonic-minor dominant (raised leading tone), which sets
# them apart from their relative major.
PROGRESSIONS = {
    "major": (
        (_I, _IV, _V, _I), (_I, _vi, _IV, _V, _I), (_I, _ii, _V7, _I), (_I, _V, _vi, _IV, _V, _I),
        (_I, _IV, _I, _V7, _I), (_I, _iii, _IV, _V, _I),
    ),
    "minor": (
        (_i, _iv, _V, _i), (_i, _VI, _iv, _V, _i), (_i, _iv, _V7, _i), (_i, _iidim, _V, _i),
        (_i, _VI, _III, _iv, _V, _i), (_i, _VII, _VI, _V7, _i),
    ),
}


def key_name(tonic: int, mode: str) -> str:
    """Label of a key, e.g. ``key_name(3, "minor") == "Eb minor"``."""
    return f"{PITCH_CLASS_NAMES[tonic % 12]} {mode}"


def draw_progression(rng: np.random.Generator, mode: str) -> tuple[Chord, ...]:
    options = PROGRESSIONS[mode]
    return options[int(rng.integers(len(options)))]


def voice_chord(rng: np.random.Generator, tonic: int, chord: Chord, low: int) -> list[int]:
    """Close-position voicing with a random inversion, its lowest note in [low, low + 12)."""
    classes = list(chord.pitch_classes(tonic))
    inversion = int(rng.integers(len(classes)))
    classes = classes[inversion:] + classes[:inversion]
    notes = [low + (classes[0] - low) % 12]
    for pitch_class in classes[1:]:
        notes.append(notes[-1] + (pitch_class - notes[-1]) % 12)
    if rng.random() < 0.4:  # occasionally double the lowest note an octave up
        notes.append(notes[0] + 12)
    return notes


def beat_grid(tempo_bpm: float, first_beat: float, seconds: float) -> np.ndarray:
    """Beat times in seconds: ``first_beat + k * 60 / tempo`` inside ``[0, seconds)``."""
    period = 60.0 / tempo_bpm
    count = int(np.floor((seconds - first_beat) / period - 1e-9)) + 1
    return first_beat + period * np.arange(max(count, 0))


def _note(pretty_midi: Any, pitch: int, start: float, end: float, velocity: int) -> Any:
    return pretty_midi.Note(velocity=int(np.clip(velocity, 1, 127)), pitch=int(pitch), start=float(start), end=float(end))


def add_chords(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, tonic: int, chords: Sequence[Chord],
    times: Sequence[float], end: float, low: int = 52,
) -> None:
    """Chord ``chords[i]`` from ``times[i]`` to the next time (the last one to ``end``)."""
    bounds = list(times[1:]) + [end]
    for chord, start, stop in zip(chords, times, bounds):
        velocity = int(rng.integers(55, 95))
        for pitch in voice_chord(rng, tonic, chord, low):
            inst.notes.append(_note(pretty_midi, pitch, start, stop, velocity))


def add_bass(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, tonic: int, chords: Sequence[Chord],
    times: Sequence[float], end: float, beat: float,
) -> None:
    """Chord roots in the bass register, struck on every beat of each chord."""
    bounds = list(times[1:]) + [end]
    for chord, start, stop in zip(chords, times, bounds):
        root = 28 + (tonic + chord.root - 28) % 12
        onset = start
        while onset < stop - 1e-6:
            octave = 12 if rng.random() < 0.15 else 0
            inst.notes.append(_note(pretty_midi, root + octave, onset, min(onset + 0.9 * beat, stop), int(rng.integers(70, 105))))
            onset += beat


def add_melody(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, tonic: int, mode: str, chords: Sequence[Chord],
    times: Sequence[float], end: float, beat: float,
) -> None:
    """A stepwise melody: chord tones on chord onsets, scale tones in between."""
    scale = [(tonic + step) % 12 for step in SCALES[mode]]
    bounds = list(times[1:]) + [end]
    pitch = 67 + (tonic - 67) % 12
    for chord, start, stop in zip(chords, times, bounds):
        onset = start
        while onset < stop - 1e-6:
            length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
            allowed = chord.pitch_classes(tonic) if onset == start else scale
            candidates = [p for p in range(pitch - 5, pitch + 6) if p % 12 in allowed and 60 <= p <= 84]
            pitch = int(rng.choice(candidates)) if candidates else pitch
            if rng.random() < 0.85:  # leave some rests
                inst.notes.append(_note(pretty_midi, pitch, onset, min(onset + 0.95 * length, stop), int(rng.integers(70, 115))))
            onset += length


def add_groove(pretty_midi: Any, inst: Any, rng: np.random.Generator, beats: np.ndarray, period: float) -> None:
    """A 4/4 rock/pop groove on the beat grid: kick on 1 and 3, snare on 2 and 4, hats."""
    hat = RIDE if rng.random() < 0.2 else CLOSED_HAT
    eighth_hats = rng.random() < 0.7
    pickup_kick = rng.random() < 0.5
    for index, time in enumerate(beats):
        position = index % 4
        drum = KICK if position in (0, 2) else SNARE
        inst.notes.append(_note(pretty_midi, drum, time, time + 0.1, int(rng.integers(90, 120))))
        inst.notes.append(_note(pretty_midi, hat, time, time + 0.05, int(rng.integers(60, 90))))
        if eighth_hats:
            offbeat = OPEN_HAT if position == 3 and rng.random() < 0.3 else hat
            inst.notes.append(_note(pretty_midi, offbeat, time + period / 2, time + period / 2 + 0.05, int(rng.integers(45, 75))))
        if pickup_kick and position == 1:
            inst.notes.append(_note(pretty_midi, KICK, time + period / 2, time + period / 2 + 0.1, int(rng.integers(70, 100))))


def chord_schedule(
    rng: np.random.Generator, mode: str, start: float, seconds: float, chord_seconds: float
) -> tuple[list[Chord], list[float]]:
    """Repeat a random progression to cover ``[start, seconds)`` with one chord per slot."""
    progression = draw_progression(rng, mode)
    times = list(np.arange(start, seconds - 1e-6, chord_seconds))
    chords = [progression[i % len(progression)] for i in range(len(times))]
    return chords, [float(t) for t in times]


def _random_piece(seed: int, index: int, seconds: float) -> tuple[Any, dict[str, Any]]:
    pretty_midi, _ = require_synth_deps()
    rng = np.random.default_rng([seed, index])
    tonic, mode = int(rng.integers(12)), MODES[int(rng.integers(2))]
    tempo = float(rng.uniform(70.0, 160.0))
    beat = 60.0 / tempo
    chords, times = chord_schedule(rng, mode, 0.0, seconds, beat * float(rng.choice([2, 4])))
    programs = {
        "comp": int(rng.choice(COMP_PROGRAMS)), "bass": int(rng.choice(BASS_PROGRAMS)),
        "lead": int(rng.choice(LEAD_PROGRAMS)), "drums": int(rng.choice(DRUM_KITS)),
    }
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    parts = {role: pretty_midi.Instrument(program=program, is_drum=role == "drums", name=role) for role, program in programs.items()}
    add_chords(pretty_midi, parts["comp"], rng, tonic, chords, times, seconds)
    add_bass(pretty_midi, parts["bass"], rng, tonic, chords, times, seconds, beat)
    if rng.random() < 0.8:
        add_melody(pretty_midi, parts["lead"], rng, tonic, mode, chords, times, seconds, beat)
    if rng.random() < 0.85:
        add_groove(pretty_midi, parts["drums"], rng, beat_grid(tempo, 0.0, seconds), beat)
    pm.instruments.extend(inst for inst in parts.values() if inst.notes)
    meta = {"key": key_name(tonic, mode), "tempo_bpm": round(tempo, 2), "programs": programs, "level": float(rng.uniform(0.5, 0.95))}
    return pm, meta


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio as 16-bit PCM mono WAV (deterministic bytes)."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16", format="WAV")


def render_corpus(
    out_dir: str | Path,
    *,
    n_clips: int,
    seconds: float = 6.0,
    seed: int = 0,
    sample_rate: int = 24000,
    soundfont: str | None = None,
) -> list[Path]:
    """Render ``n_clips`` random pieces of ``seconds`` seconds to ``out_dir``; returns the WAV paths."""
    if n_clips <= 0 or seconds <= 0:
        raise RenderError(f"n_clips and seconds must be positive, got {n_clips}, {seconds}")
    out = Path(out_dir)
    paths, rows = [], []
    for index in range(n_clips):
        pm, meta = _random_piece(seed, index, seconds)
        audio = render_midi(pm, sample_rate, soundfont=soundfont, duration=seconds)
        relative = f"clips/{index:06d}.wav"
        write_wav(out / relative, peak_normalise(audio, meta["level"]), sample_rate)
        paths.append(out / relative)
        programs = " ".join(f"{role}={program}" for role, program in meta["programs"].items())
        rows.append([relative, len(audio), sample_rate, meta["key"], f"{meta['tempo_bpm']:.2f}", programs])
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "num_samples", "sample_rate", "key", "tempo_bpm", "programs"])
        writer.writerows(rows)
    return paths
