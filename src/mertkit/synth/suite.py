"""A synthetic benchmark suite rendered from MIDI: pitch, instrument, key and tempo/beat.

The suite is a license-free, offline stand-in for MARBLE-style probing (NSynth pitch and
instrument, GiantSteps key, GTZAN beat/tempo). Every clip is generated from
``numpy.random.default_rng([seed, task_index, clip_index])`` and rendered with
:mod:`mertkit.synth.render`, so the same seed gives the same bytes.

Layout (paths in manifests are relative to the task folder)::

    out_dir/<task>/clips/000000.wav          16-bit mono WAV at ``sample_rate``
    out_dir/<task>/clips/000000.beats.txt    tempo task only: one beat time (s) per line
    out_dir/<task>/manifest.csv              path,label,split[,beats]
    out_dir/<task>/task.json                 name, kind, labels, metric, clip_seconds, soundfont, ...

Tasks:

* ``pitch`` (multiclass, 61 labels "36".."96" = MIDI note, C2..C7): one note held 1 s in a
  1.5 s clip, random pitched GM program (families 0-13: the percussive and sound-effect
  families are left out) and velocity. A draw is rejected and redrawn when the SoundFont
  renders that program/pitch silently or with its lowest strong partial off the note's
  harmonic series. 61 classes need more clips than the other tasks to be learnable: the
  default is 12 per class (732 clips: 8 train, 2 valid, 2 test per class).
* ``pitch_class`` (multiclass, 12 labels "C".."B"): the same kind of note at a random octave
  in C2..C7, so the class is the chroma, not the height; 360 clips (30 per class).
* ``instrument`` (multiclass, 15 GM families): a random melody in a range suited to the
  family, 3 s. The 16th GM family, sound effects (programs 120-127: fret noise, seashore,
  helicopter...), is excluded because it is not a musical instrument class.
* ``key`` (multiclass, 24 labels "C major".."B minor"): a chord progression that opens on
  the tonic and closes with a V-I cadence (harmonic-minor dominant in minor keys), random
  inversions, register, instrument and tempo, with a bass line, 6 s.
* ``tempo`` (kind "beat"): a drum groove and bass line at a uniform random tempo in
  [70, 180] BPM with a random phase, 8 s. ``label`` is the tempo in BPM (regression) and
  ``beats`` names the per-clip beat file. Beat F-measure uses a 70 ms tolerance (the MARBLE
  code's value).

Labels are dealt in shuffled rounds so that classes are balanced; splits are 70/15/15 and
stratified: the first occurrences of every class go to train before later ones fill valid
and test.
"""
from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.synth.corpus import (
    BASS_PROGRAMS,
    COMP_PROGRAMS,
    DRUM_KITS,
    MODES,
    add_bass,
    add_chords,
    add_groove,
    beat_grid,
    chord_schedule,
    key_name,
    write_wav,
)
from mertkit.synth.render import peak_normalise, render_midi, render_notes, require_synth_deps, soundfont_identity

__all__ = ["SuiteError", "TaskInfo", "TASKS", "GM_FAMILIES", "PITCH_CLASSES", "build_suite", "build_task", "default_clips",
           "key_labels", "lowest_strong_partial"]

# Order matters: a task's audio is drawn from rng([seed, TASKS.index(task), clip]), so new
# tasks are appended and older tasks keep their bytes.
TASKS = ("pitch", "instrument", "key", "tempo", "pitch_class")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
GM_FAMILIES = (
    "piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic", "percussive",
)  # GM family f holds programs 8f..8f+7; "sound_effects" (120-127) is excluded
PITCH_PROGRAMS = tuple(range(0, 14 * 8))
PITCH_RANGE = (36, 96)  # C2..C7: every pitched GM program family renders cleanly here
TEMPO_RANGE = (70.0, 180.0)
BEAT_TOLERANCE_S = 0.07
SPLITS = (("train", 0.70), ("valid", 0.15), ("test", 0.15))
DEFAULT_CLIPS_PER_TASK = 360
# Tasks with many classes get more clips by default (a class needs a few training clips).
DEFAULT_CLIPS: dict[str, int] = {"pitch": 12 * (PITCH_RANGE[1] - PITCH_RANGE[0] + 1)}


def key_labels() -> list[str]:
    """The 24 key labels of the key tasks ("C major".."B minor"), in output order."""
    return [key_name(tonic, mode) for mode in MODES for tonic in range(12)]


def default_clips(task: str) -> int:
    """Clips rendered for ``task`` when no count is given."""
    return DEFAULT_CLIPS.get(task, DEFAULT_CLIPS_PER_TASK)
_MAX_DRAWS = 50
_SILENCE_RMS = 1e-3
# Comfortable melody range (MIDI notes) per GM family index.
_FAMILY_RANGES = {0: (48, 84), 1: (60, 96), 4: (28, 52), 9: (60, 91), 14: (48, 72)}
_DEFAULT_RANGE = (52, 84)


class SuiteError(ValueError):
    """A benchmark-suite request that cannot be built (bad task, size or folder)."""


@dataclass(frozen=True)
class TaskInfo:
    """What ``task.json`` says about a task."""

    name: str
    kind: str  # "multiclass" | "beat"
    labels: list[str]
    metric: str
    clip_seconds: float
    sample_rate: int
    seed: int
    num_clips: int
    label_kind: str = "class"  # "class" | "regression"
    extra: dict[str, Any] = field(default_factory=dict)
    # {"file", "sha256"} of the SoundFont the clips were rendered with (render.soundfont_identity)
    soundfont: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Clip:
    audio: np.ndarray
    label: str
    beats: np.ndarray | None = None


def lowest_strong_partial(audio: np.ndarray, sample_rate: int, floor_db: float = 20.0) -> float:
    """Frequency (Hz) of the lowest spectral peak within ``floor_db`` of the strongest one."""
    size = 1 << 18
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=size))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    inner = spectrum[1:-1]
    peaks = (inner > spectrum.max() * 10 ** (-floor_db / 20)) & (inner >= spectrum[:-2]) & (inner >= spectrum[2:])
    return float(freqs[1:-1][peaks][0]) if peaks.any() else 0.0


def _on_harmonic_series(audio: np.ndarray, sample_rate: int, pitch: int) -> bool:
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    ratio = lowest_strong_partial(audio, sample_rate) / f0
    return any(abs(ratio - h) < 0.03 * h for h in (1, 2, 3, 4))


def _is_audible(audio: np.ndarray) -> bool:
    return bool(np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > _SILENCE_RMS)


def _pitch_clip(rng: np.random.Generator, label: str, sample_rate: int, soundfont: str | None) -> _Clip:
    pitch = int(label)
    for _ in range(_MAX_DRAWS):
        program, velocity = int(rng.choice(PITCH_PROGRAMS)), int(rng.integers(40, 128))
        audio = render_notes(pitch, program=program, velocity=velocity, note_seconds=1.0, clip_seconds=1.5,
                             sample_rate=sample_rate, soundfont=soundfont)
        held = audio[: sample_rate]  # the sustained part decides the pitch check
        if _is_audible(held) and _on_harmonic_series(held, sample_rate, pitch):
            return _Clip(peak_normalise(audio), label)
    raise SuiteError(f"no program in {_MAX_DRAWS} draws renders MIDI note {pitch} cleanly with this SoundFont")


def _pitch_class_clip(rng: np.random.Generator, label: str, sample_rate: int, soundfont: str | None) -> _Clip:
    low, high = PITCH_RANGE
    chroma = PITCH_CLASSES.index(label)
    octaves = [p for p in range(low, high + 1) if p % 12 == chroma]
    clip = _pitch_clip(rng, str(int(rng.choice(octaves))), sample_rate, soundfont)
    return _Clip(clip.audio, label)


def _melody(pretty_midi: Any, inst: Any, rng: np.random.Generator, low: int, high: int, seconds: float) -> None:
    beat = 60.0 / float(rng.uniform(80.0, 160.0))
    onset, pitch = 0.0, int(rng.integers(low, high + 1))
    while onset < seconds - 0.1:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        pitch = int(np.clip(pitch + rng.integers(-4, 5), low, high))
        end = min(onset + 0.9 * length, seconds)
        inst.notes.append(pretty_midi.Note(velocity=int(rng.integers(60, 120)), pitch=pitch, start=onset, end=end))
        onset += length


def _instrument_clip(rng: np.random.Generator, label: str, sample_rate: int, soundfont: str | None) -> _Clip:
    pretty_midi, _ = require_synth_deps()
    family = GM_FAMILIES.index(label)
    low, high = _FAMILY_RANGES.get(family, _DEFAULT_RANGE)
    for _ in range(_MAX_DRAWS):
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=8 * family + int(rng.integers(8)))
        _melody(pretty_midi, inst, rng, low, high, 3.0)
        pm.instruments.append(inst)
        audio = render_midi(pm, sample_rate, soundfont=soundfont, duration=3.0)
        if _is_audible(audio):
            return _Clip(peak_normalise(audio), label)
    raise SuiteError(f"no program of GM family {label!r} renders audibly with this SoundFont")


def _key_clip(rng: np.random.Generator, label: str, sample_rate: int, soundfont: str | None) -> _Clip:
    pretty_midi, _ = require_synth_deps()
    mode = label.split(" ")[1]
    tonic = [key_name(t, mode) for t in range(12)].index(label)
    seconds, beat = 6.0, 60.0 / float(rng.uniform(70.0, 140.0))
    chords, times = chord_schedule(rng, mode, 0.0, seconds, beat * float(rng.choice([2, 4])))
    pm = pretty_midi.PrettyMIDI()
    comp = pretty_midi.Instrument(program=int(rng.choice(COMP_PROGRAMS)))
    bass = pretty_midi.Instrument(program=int(rng.choice(BASS_PROGRAMS)))
    add_chords(pretty_midi, comp, rng, tonic, chords, times, seconds, low=int(rng.integers(48, 60)))
    add_bass(pretty_midi, bass, rng, tonic, chords, times, seconds, beat)
    pm.instruments.extend([comp, bass])
    audio = render_midi(pm, sample_rate, soundfont=soundfont, duration=seconds)
    return _Clip(peak_normalise(audio), label)


def _tempo_clip(rng: np.random.Generator, label: str, sample_rate: int, soundfont: str | None) -> _Clip:
    pretty_midi, _ = require_synth_deps()
    seconds = 8.0
    tempo = round(float(rng.uniform(*TEMPO_RANGE)), 2)
    period = 60.0 / tempo
    beats = beat_grid(tempo, float(rng.uniform(0.0, period)), seconds)
    tonic, mode = int(rng.integers(12)), MODES[int(rng.integers(2))]
    chords, times = chord_schedule(rng, mode, float(beats[0]), seconds, 4 * period)
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    drums = pretty_midi.Instrument(program=int(rng.choice(DRUM_KITS)), is_drum=True)
    bass = pretty_midi.Instrument(program=int(rng.choice(BASS_PROGRAMS)))
    add_groove(pretty_midi, drums, rng, beats, period)
    add_bass(pretty_midi, bass, rng, tonic, chords, times, seconds, period)
    pm.instruments.extend([drums, bass])
    audio = render_midi(pm, sample_rate, soundfont=soundfont, duration=seconds)
    return _Clip(peak_normalise(audio), f"{tempo:.2f}", beats)


def _task_info(name: str, seed: int, num_clips: int, sample_rate: int, soundfont: str | None) -> TaskInfo:
    common = {"sample_rate": sample_rate, "seed": seed, "num_clips": num_clips, "soundfont": soundfont_identity(soundfont)}
    if name == "pitch":
        labels = [str(p) for p in range(PITCH_RANGE[0], PITCH_RANGE[1] + 1)]
        return TaskInfo(name, "multiclass", labels, "accuracy", 1.5, **common, extra={"label_meaning": "MIDI note number"})
    if name == "pitch_class":
        return TaskInfo(name, "multiclass", list(PITCH_CLASSES), "accuracy", 1.5, **common,
                        extra={"label_meaning": "pitch class of one note, octave random in MIDI "
                                                f"{PITCH_RANGE[0]}..{PITCH_RANGE[1]}"})
    if name == "instrument":
        return TaskInfo(name, "multiclass", list(GM_FAMILIES), "accuracy", 3.0, **common,
                        extra={"label_meaning": "General MIDI family (sound effects excluded)"})
    if name == "key":
        return TaskInfo(name, "multiclass", key_labels(), "accuracy", 6.0, **common, extra={"label_meaning": "tonic and mode"})
    return TaskInfo(name, "beat", [], "beat_f", 8.0, **common, label_kind="regression",
                    extra={"label_meaning": "tempo in BPM", "tempo_range_bpm": list(TEMPO_RANGE),
                           "beat_tolerance_s": BEAT_TOLERANCE_S})


_MAKERS: dict[str, Callable[[np.random.Generator, str, int, str | None], _Clip]] = {
    "pitch": _pitch_clip, "instrument": _instrument_clip, "key": _key_clip, "tempo": _tempo_clip,
    "pitch_class": _pitch_class_clip,
}


def _dealt_labels(rng: np.random.Generator, labels: Sequence[str], count: int) -> list[str]:
    """Labels in shuffled rounds, so every class appears floor or ceil(count / classes) times."""
    rounds = -(-count // len(labels))
    return [labels[i] for _ in range(rounds) for i in rng.permutation(len(labels))][:count]


def split_counts(count: int) -> dict[str, int]:
    """70/15/15 split sizes, each split holding at least one clip."""
    if count < len(SPLITS):
        raise SuiteError(f"a task needs at least {len(SPLITS)} clips for non-empty splits, got {count}")
    valid = max(1, round(count * SPLITS[1][1]))
    test = max(1, round(count * SPLITS[2][1]))
    return {"train": count - valid - test, "valid": valid, "test": test}


def _assign_splits(rng: np.random.Generator, groups: Sequence[str]) -> list[str]:
    """Stratified split: clips ranked by occurrence within their group, ties broken at random."""
    seen: dict[str, int] = {}
    rank = []
    for group in groups:
        rank.append(seen.get(group, 0))
        seen[group] = rank[-1] + 1
    order = np.lexsort((rng.permutation(len(groups)), np.array(rank)))
    counts = split_counts(len(groups))
    names = [name for name, _ in SPLITS for _ in range(counts[name])]
    splits = [""] * len(groups)
    for position, clip in enumerate(order):
        splits[int(clip)] = names[position]
    return splits


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise SuiteError(f"{folder}: already exists and is not empty (pass overwrite=True to rebuild it)")
        for owned in ("clips", "manifest.csv", "task.json"):
            target = folder / owned
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (folder / "clips").mkdir(parents=True, exist_ok=True)


def build_task(
    out_dir: str | Path, name: str, *, seed: int = 0, num_clips: int | None = None,
    sample_rate: int = 24000, soundfont: str | None = None, overwrite: bool = False,
    progress: Any = None,
) -> Path:
    """Build one task folder ``out_dir/name`` (``num_clips`` None: :func:`default_clips`);
    returns its path. ``progress``: a :class:`mertkit.progress.Progress` told of each clip."""
    if name not in TASKS:
        raise SuiteError(f"unknown task {name!r}; choose from {TASKS}")
    num_clips = default_clips(name) if num_clips is None else num_clips
    folder = Path(out_dir) / name
    info = _task_info(name, seed, num_clips, sample_rate, soundfont)
    split_counts(num_clips)
    _prepare_folder(folder, overwrite)
    task_index = TASKS.index(name)
    label_rng = np.random.default_rng([seed, task_index])
    labels = _dealt_labels(label_rng, info.labels, num_clips) if info.labels else [""] * num_clips
    rows = []
    for index, label in enumerate(labels):
        clip = _MAKERS[name](np.random.default_rng([seed, task_index, index]), label, sample_rate, soundfont)
        relative = f"clips/{index:06d}.wav"
        write_wav(folder / relative, clip.audio, sample_rate)
        row = {"path": relative, "label": clip.label}
        if clip.beats is not None:
            row["beats"] = f"clips/{index:06d}.beats.txt"
            (folder / row["beats"]).write_text("".join(f"{t:.6f}\n" for t in clip.beats), encoding="utf-8")
        rows.append(row)
        if progress is not None:
            progress.update(1, task=name)
    groups = [row["label"] if info.labels else str(i) for i, row in enumerate(rows)]
    for row, split in zip(rows, _assign_splits(label_rng, groups)):
        row["split"] = split
    _write_manifest(folder / "manifest.csv", rows)
    (folder / "task.json").write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return folder


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    columns = ["path", "label", "split"] + [name for name in rows[0] if name not in ("path", "label", "split")]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_suite(
    out_dir: str | Path,
    *,
    seed: int = 0,
    clips_per_task: int | None = None,
    sample_rate: int = 24000,
    tasks: Sequence[str] = TASKS,
    soundfont: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Path]:
    """Render the benchmark suite under ``out_dir``; returns {task name: task folder}.

    ``clips_per_task`` None: each task's :func:`default_clips`. ``progress``: a bar (or log
    lines) over all clips; False silences it, None follows :func:`mertkit.progress.set_quiet`."""
    from mertkit.progress import Progress

    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks:
        raise SuiteError(f"unknown or no tasks {list(tasks)!r}; choose from {TASKS}")
    require_synth_deps()
    total = sum(default_clips(name) if clips_per_task is None else clips_per_task for name in tasks)
    with Progress(total, "bench-suite", unit="clip", enabled=progress) as bar:
        return {
            name: build_task(out_dir, name, seed=seed, num_clips=clips_per_task, sample_rate=sample_rate,
                             soundfont=soundfont, overwrite=overwrite, progress=bar)
            for name in tasks
        }
