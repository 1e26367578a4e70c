"""Musically structured multi-instrument audio rendered from MIDI: the pre-training corpus.

Every clip is a piece of `seconds` seconds in a random key and mode (major, minor, dorian,
mixolydian), meter (4/4, 3/4, 6/8, 5/4) and tempo (60-180 BPM), made of sections of 4 or 8
bars. Each section draws its own chord progression (random inversions and register) on a
comping instrument, an optional sustained pad, a bass line (roots, root-fifth or walking),
a stepwise melody from chord and scale tones, and a drum groove for the meter; every
section has its own dynamic level with a crescendo or diminuendo across it, and the
instrumentation changes between sections (programs are drawn from General MIDI groups that
suit each role). The MIDI is rendered offline with :mod:`mertkit.synth.render` (the
SoundFont bundled with pretty_midi) and written as 16-bit mono WAV.

Everything derives from ``numpy.random.default_rng([seed, CORPUS_STREAM, clip_index])``, so
a corpus is identical byte for byte for the same arguments, clip i does not depend on how
many clips are asked for, and no clip shares its random stream with the benchmark suite
(:mod:`mertkit.synth.suite` draws from ``[seed, task_index, clip_index]`` with task indices
0-3). Rendering is resumable and parallel-safe: each clip and its metadata are written
atomically (`mertkit.fileio.atomic_write`), a finished clip is skipped on a rerun, and
two processes rendering the same clip write the same bytes. ``corpus.json`` records the
settings that decide the audio (seed, texture, clip length, rate, SoundFont); a rerun with other
settings into the same folder is refused rather than mixing two corpora.

The music-theory helpers here (keys, progressions, voicings, grooves) are shared with the
benchmark suite.

Layout written by :func:`render_corpus`::

    out_dir/clips/000000.wav ...       the audio
    out_dir/clips/000000.json ...      its metadata (key, mode, meter, tempo, programs)
    out_dir/manifest.csv               path,num_samples,sample_rate,key,meter,tempo_bpm,programs
    out_dir/corpus.json                the settings the clips were rendered with
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.fileio import atomic_write, write_json
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
    "render_clip",
    "corpus_rng",
    "write_wav",
]

PITCH_CLASS_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
CORPUS_MODES = ("major", "minor", "dorian", "mixolydian")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10),
          "dorian": (0, 2, 3, 5, 7, 9, 10), "mixolydian": (0, 2, 4, 5, 7, 9, 10)}
# The corpus's own random stream: the suite uses [seed, task_index (0..3), clip_index].
CORPUS_STREAM = 1000
# Meters as (beats per bar, beat unit): 6/8 is felt in two dotted-quarter beats of 3 eighths.
METERS = {"4/4": (4, 4), "3/4": (3, 4), "6/8": (6, 8), "5/4": (5, 4)}
CHORD_INTERVALS = {"maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "dom7": (0, 4, 7, 10)}

# General MIDI programs (0-based) per musical role.
COMP_PROGRAMS = (0, 1, 2, 4, 5, 16, 17, 19, 24, 25, 26, 27, 48, 49, 50, 52, 61, 88, 89, 90, 91, 94)
BASS_PROGRAMS = tuple(range(32, 40))
LEAD_PROGRAMS = (0, 8, 11, 12, 24, 40, 41, 56, 57, 64, 65, 66, 68, 71, 73, 75, 80, 81, 85)
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)
PAD_PROGRAMS = (48, 49, 50, 51, 52, 88, 89, 90, 91, 92, 94, 95, 19, 20)


@dataclass(frozen=True)
class Palette:
    """The GM programs each pitched role draws from."""

    comp: tuple[int, ...]
    pad: tuple[int, ...]
    bass: tuple[int, ...]
    lead: tuple[int, ...]


# "classic": the pools above (the corpus of sessions 1-7): 12 of the 15 pitched GM families, some
# through one program. "gm": any pitched GM program can lead (0-119: all but sound effects), the
# comping parts add the chromatic percussion, harp and plucked ethnic programs, the pads the
# synth effects; so every GM family is heard, each through all of its programs.
PALETTES = {
    "classic": Palette(COMP_PROGRAMS, PAD_PROGRAMS, BASS_PROGRAMS, LEAD_PROGRAMS),
    "gm": Palette(
        comp=COMP_PROGRAMS + tuple(range(8, 16)) + (46, 104, 105, 106, 107, 108, 114),
        pad=PAD_PROGRAMS + tuple(range(96, 104)),
        bass=BASS_PROGRAMS,
        lead=tuple(range(120)),
    ),
}
# Settings a corpus.json written before the setting existed was rendered with.
SETTING_DEFAULTS = {"palette": "classic"}
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
    # modal progressions avoid the leading tone: the flat seventh / major IV carry the mode
    "dorian": ((_i, Chord(5, "maj"), _i, _VII), (_i, _iv, _VII, _i), (_i, Chord(5, "maj"), _III, _i)),
    "mixolydian": ((_I, Chord(10, "maj"), _IV, _I), (_I, _IV, Chord(10, "maj"), _I), (_I, _vi, Chord(10, "maj"), _I)),
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


def add_pad(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, tonic: int, chords: Sequence[Chord],
    times: Sequence[float], end: float,
) -> None:
    """Sustained root-position triads an octave below the comping register."""
    bounds = list(times[1:]) + [end]
    velocity = int(rng.integers(40, 75))
    for chord, start, stop in zip(chords, times, bounds):
        root = 48 + (tonic + chord.root - 48) % 12
        for step in CHORD_INTERVALS[chord.quality][:3]:
            inst.notes.append(_note(pretty_midi, root + step, start, stop, velocity))


def add_bass_line(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, tonic: int, mode: str, chords: Sequence[Chord],
    times: Sequence[float], end: float, beat: float, style: str,
) -> None:
    """Bass per beat: "roots", "root_fifth" (alternating) or "walking" (scale steps to the next root)."""
    if style == "roots":
        add_bass(pretty_midi, inst, rng, tonic, chords, times, end, beat)
        return
    scale = [(tonic + step) % 12 for step in SCALES[mode]]
    bounds = list(times[1:]) + [end]
    for chord, start, stop in zip(chords, times, bounds):
        root = 28 + (tonic + chord.root - 28) % 12
        onset, step = start, 0
        while onset < stop - 1e-6:
            if style == "root_fifth":
                pitch = root + (7 if step % 2 else 0)
            else:  # walking: root on the chord's first beat, then nearby scale tones
                candidates = [p for p in range(root - 2, root + 8) if p % 12 in scale]
                pitch = root if step == 0 else int(rng.choice(candidates))
            inst.notes.append(_note(pretty_midi, pitch, onset, min(onset + 0.9 * beat, stop), int(rng.integers(70, 105))))
            onset, step = onset + beat, step + 1


# Per meter: drums on each beat of the bar (kick, snare or None); hats on every beat.
_METER_DRUMS = {
    "4/4": (KICK, SNARE, KICK, SNARE),
    "3/4": (KICK, SNARE, SNARE),
    "6/8": (KICK, None, None, SNARE, None, None),
    "5/4": (KICK, None, SNARE, KICK, SNARE),
}


def add_meter_groove(
    pretty_midi: Any, inst: Any, rng: np.random.Generator, meter: str, start: float, end: float, beat: float,
) -> None:
    """A groove for `meter` from `start` to `end`: kick / snare pattern, hats, optional subdivisions."""
    pattern = _METER_DRUMS[meter]
    hat = RIDE if rng.random() < 0.25 else CLOSED_HAT
    subdivide = meter != "6/8" and rng.random() < 0.6
    for index, time in enumerate(np.arange(start, end - 1e-6, beat)):
        drum = pattern[index % len(pattern)]
        accent = 1.0 if index % len(pattern) == 0 else 0.85
        if drum is not None:
            inst.notes.append(_note(pretty_midi, drum, time, time + 0.1, int(rng.integers(90, 120) * accent)))
        inst.notes.append(_note(pretty_midi, hat, time, time + 0.05, int(rng.integers(55, 85) * accent)))
        if subdivide and time + beat / 2 < end:
            inst.notes.append(_note(pretty_midi, hat, time + beat / 2, time + beat / 2 + 0.05, int(rng.integers(40, 70))))


def shape_dynamics(notes: list[Any], start: float, stop: float, level_from: float, level_to: float) -> None:
    """Scale the velocities of `notes` by a linear ramp from `level_from` at `start` to `level_to` at `stop`."""
    span = max(stop - start, 1e-6)
    for note in notes:
        level = level_from + (level_to - level_from) * min(max((note.start - start) / span, 0.0), 1.0)
        note.velocity = int(np.clip(round(note.velocity * level), 1, 127))


def corpus_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of corpus clip `index` (disjoint from the suite's, see the docstring)."""
    return np.random.default_rng([seed, CORPUS_STREAM, index])


def _draw_programs(rng: np.random.Generator, palette: Palette) -> dict[str, int]:
    return {"comp": int(rng.choice(palette.comp)), "pad": int(rng.choice(palette.pad)),
            "bass": int(rng.choice(palette.bass)), "lead": int(rng.choice(palette.lead)),
            "drums": int(rng.choice(DRUM_KITS))}


TEXTURES = ("dense", "varied")
SPARSE_ROLE_SETS = (("lead",), ("comp",), ("bass",), ("lead", "bass"), ("lead", "comp"), ("comp", "bass"))


def _sparse_roles(rng: np.random.Generator, texture: str) -> tuple[str, ...] | None:
    """"varied": half the sections are a solo or duo of pitched parts (exposed notes, no drums);
    None: every role plays with its usual probability ("dense", the original corpus)."""
    if texture == "dense" or rng.random() < 0.5:
        return None
    return SPARSE_ROLE_SETS[int(rng.integers(len(SPARSE_ROLE_SETS)))]


def _plays(rng: np.random.Generator, probability: float, role: str, roles: tuple[str, ...] | None) -> bool:
    return rng.random() < probability if roles is None else role in roles


def _section(pretty_midi: Any, parts: dict, rng: np.random.Generator, piece: dict, start: float, stop: float,
             texture: str = "dense") -> None:
    """One section: its own progression, active roles, bass style and dynamic ramp."""
    tonic, mode, beat, meter = piece["tonic"], piece["mode"], piece["beat"], piece["meter"]
    bar = METERS[meter][0] * beat
    chords, times = chord_schedule(rng, mode, start, stop, bar * float(rng.choice([1, 2])) if meter != "4/4" else bar)
    before = {role: len(inst.notes) for role, inst in parts.items()}
    roles = _sparse_roles(rng, texture)
    if _plays(rng, 0.85, "comp", roles):
        add_chords(pretty_midi, parts["comp"], rng, tonic, chords, times, stop, low=int(rng.integers(48, 60)))
    if _plays(rng, 0.4, "pad", roles):
        add_pad(pretty_midi, parts["pad"], rng, tonic, chords, times, stop)
    if _plays(rng, 0.9, "bass", roles):
        style = str(rng.choice(["roots", "root_fifth", "walking"]))
        add_bass_line(pretty_midi, parts["bass"], rng, tonic, mode, chords, times, stop, beat, style)
    if _plays(rng, 0.75, "lead", roles):
        add_melody(pretty_midi, parts["lead"], rng, tonic, mode, chords, times, stop, beat)
    if _plays(rng, 0.8, "drums", roles):
        add_meter_groove(pretty_midi, parts["drums"], rng, meter, start, stop, beat)
    level = float(rng.uniform(0.55, 1.0))
    target = float(np.clip(level * rng.uniform(0.6, 1.5), 0.35, 1.2))
    for role, inst in parts.items():
        shape_dynamics(inst.notes[before[role]:], start, stop, level, target)


def _random_piece(seed: int, index: int, seconds: float, texture: str = "dense",
                  palette: str = "classic") -> tuple[Any, dict[str, Any]]:
    pretty_midi, _ = require_synth_deps()
    rng = corpus_rng(seed, index)
    tonic = int(rng.integers(12))
    mode = str(rng.choice(CORPUS_MODES, p=[0.35, 0.35, 0.15, 0.15]))
    meter = str(rng.choice(list(METERS), p=[0.45, 0.25, 0.2, 0.1]))
    # tempo in beats of the notated unit per minute; a 6/8 "beat" is an eighth note
    tempo = float(rng.uniform(150.0, 270.0) if meter == "6/8" else rng.uniform(60.0, 180.0))
    piece = {"tonic": tonic, "mode": mode, "meter": meter, "beat": 60.0 / tempo}
    pools = PALETTES[palette]
    programs = _draw_programs(rng, pools)
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    parts = {role: pretty_midi.Instrument(program=program, is_drum=role == "drums", name=role)
             for role, program in programs.items()}
    extra_leads = []
    start, bar = 0.0, METERS[meter][0] * piece["beat"]
    while start < seconds - 1e-6:
        stop = min(start + bar * int(rng.choice([4, 8])), seconds)
        if start > 0 and rng.random() < 0.3:  # a new lead instrument for this section
            extra_leads.append(parts["lead"])
            parts["lead"] = pretty_midi.Instrument(program=int(rng.choice(pools.lead)), name="lead")
        _section(pretty_midi, parts, rng, piece, start, stop, texture)
        start = stop
    instruments = [inst for inst in [*parts.values(), *extra_leads] if inst.notes]
    pm.instruments.extend(instruments)
    meta = {"key": key_name(tonic, mode), "meter": meter, "tempo_bpm": round(tempo, 2),
            "programs": sorted({inst.program for inst in instruments if not inst.is_drum}),
            "drum_kit": programs["drums"] if parts["drums"].notes else None,
            "level": float(rng.uniform(0.5, 0.95))}
    return pm, meta


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio as 16-bit PCM mono WAV (deterministic bytes)."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16", format="WAV")


def _wav_complete(path: Path, num_samples: int) -> bool:
    """A finished clip: 16-bit mono PCM WAV of the expected length (44-byte header)."""
    return path.is_file() and path.stat().st_size == 44 + 2 * num_samples and path.with_suffix(".json").is_file()


def render_clip(out: Path, seed: int, index: int, seconds: float, sample_rate: int, soundfont: str | None,
                texture: str = "dense", palette: str = "classic") -> bool:
    """Render corpus clip `index` unless it is already there; True when it was rendered."""
    import soundfile

    wav = out / "clips" / f"{index:06d}.wav"
    num_samples = int(round(seconds * sample_rate))
    if _wav_complete(wav, num_samples):
        return False
    pm, meta = _random_piece(seed, index, seconds, texture, palette)
    audio = peak_normalise(render_midi(pm, sample_rate, soundfont=soundfont, duration=seconds), meta["level"])
    wav.parent.mkdir(parents=True, exist_ok=True)
    meta.update(path=f"clips/{index:06d}.wav", num_samples=len(audio), sample_rate=sample_rate)
    # the audio first, then the metadata that marks the clip finished
    atomic_write(wav, lambda handle: soundfile.write(handle, audio, sample_rate, subtype="PCM_16", format="WAV"))
    atomic_write(wav.with_suffix(".json"), lambda handle: handle.write(json.dumps(meta, sort_keys=True).encode()))
    return True


def clip_count(hours: float | None, n_clips: int | None, seconds: float) -> int:
    if (hours is None) == (n_clips is None):
        raise RenderError("give exactly one of hours and n_clips")
    count = math.ceil(hours * 3600 / seconds) if hours is not None else int(n_clips)
    if count <= 0 or seconds <= 0:
        raise RenderError(f"need a positive number of clips and seconds, got {count} clips of {seconds} s")
    return count


def _render_range(args: tuple) -> int:
    out, seed, indices, seconds, sample_rate, soundfont, texture, palette = args
    return sum(render_clip(out, seed, i, seconds, sample_rate, soundfont, texture, palette) for i in indices)


def render_corpus(
    out_dir: str | Path,
    *,
    n_clips: int | None = None,
    hours: float | None = None,
    seconds: float = 30.0,
    seed: int = 0,
    sample_rate: int = 24000,
    soundfont: str | None = None,
    workers: int = 1,
    texture: str = "dense",
    palette: str = "classic",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Render ``n_clips`` pieces (or ``hours`` of them) of ``seconds`` seconds to ``out_dir``.

    Finished clips are skipped; ``workers`` > 1 renders in that many processes. Returns the
    WAV paths; ``progress(done, total)`` is called as clips finish. ``texture`` "varied" makes
    half the sections solos or duos of pitched parts (see `_sparse_roles`); ``palette`` names
    the GM programs the parts draw from (see `PALETTES`).
    """
    if texture not in TEXTURES:
        raise RenderError(f"texture must be one of {TEXTURES}, got {texture!r}")
    if palette not in PALETTES:
        raise RenderError(f"palette must be one of {tuple(PALETTES)}, got {palette!r}")
    count = clip_count(hours, n_clips, seconds)
    require_synth_deps()
    out = Path(out_dir)
    settings = {"seed": seed, "texture": texture, "palette": palette, "seconds": seconds, "sample_rate": sample_rate,
                "soundfont": Path(soundfont).name if soundfont else "bundled"}
    check_corpus_settings(out, settings)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    write_json(out / "corpus.json", settings)
    chunks = [range(i, min(i + 16, count)) for i in range(0, count, 16)]
    jobs = [(out, seed, chunk, seconds, sample_rate, soundfont, texture, palette) for chunk in chunks]
    done = 0
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap(_render_range, jobs):
                done = min(done + 16, count)
                if progress is not None:
                    progress(done, count)
    else:
        for job in jobs:
            _render_range(job)
            done = min(done + 16, count)
            if progress is not None:
                progress(done, count)
    return write_manifest(out, count)


def check_corpus_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to add clips to a folder that holds a corpus rendered with other settings."""
    recorded = out / "corpus.json"
    if recorded.is_file():
        stored = json.loads(recorded.read_text())
        recorded_settings = {key: stored.get(key, SETTING_DEFAULTS.get(key)) for key in settings}
        changed = [f"{key} {recorded_settings[key]!r} there, {value!r} asked" for key, value in settings.items()
                   if recorded_settings[key] != value]
        if changed:
            raise RenderError(f"{out}: holds a corpus rendered with other settings ({'; '.join(changed)}); "
                              "render into another folder")
    elif any((out / "clips").glob("*.json")):
        raise RenderError(f"{out}: has clips but no corpus.json saying how they were rendered; "
                          "render into another folder")


def write_manifest(out: Path, count: int) -> list[Path]:
    """manifest.csv from the clips' metadata files (atomically)."""
    rows, paths = [], []
    for index in range(count):
        meta = json.loads((out / "clips" / f"{index:06d}.json").read_text())
        paths.append(out / meta["path"])
        rows.append([meta["path"], meta["num_samples"], meta["sample_rate"], meta["key"], meta["meter"],
                     f"{meta['tempo_bpm']:.2f}", " ".join(str(p) for p in meta["programs"])])
    lines = ["path,num_samples,sample_rate,key,meter,tempo_bpm,programs"]
    lines += [",".join(str(v) for v in row) for row in rows]
    atomic_write(out / "manifest.csv", lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    return paths
