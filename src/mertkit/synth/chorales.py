"""A key task on real music: the openings of Bach's four-part chorales, rendered from MIDI.

The synthetic ``key`` task (:mod:`mertkit.synth.suite`) plays the progressions its own
generator writes; a model can learn that generator rather than key. This task takes composed
music instead: every four-part Bach chorale in music21's corpus (BSD-licensed, from PyPI;
``pip install 'mertkit[chorales]'``) whose key signature agrees with music21's key analysis
(so major and relative minor are told apart by the analysis, and no chorale with an
ambiguous label is kept), its first ``seconds`` at a tempo drawn in [60, 96] BPM, played by
all four voices on one sustaining General MIDI program, in ``transpositions`` different
keys (shifts in -5..+6 semitones, the label shifted with them). Splits are by chorale, so
no transposition of a test chorale is seen in training.

Layout (read by ``mert eval --suite-dir DIR --tasks chorale_key`` and ``mert probe``)::

    out_dir/chorale_key/clips/000000.wav     16-bit mono WAV
    out_dir/chorale_key/manifest.csv         path,label,split,chorale,transpose
    out_dir/chorale_key/task.json            a suite TaskInfo (labels: the 24 keys), written last

The same seed, music21 version and SoundFont give the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.synth.corpus import MODES, key_name, write_wav
from mertkit.synth.render import peak_normalise, render_midi, require_synth_deps, soundfont_identity
from mertkit.synth.suite import SuiteError, TaskInfo, _prepare_folder, _write_manifest, key_labels, split_counts

__all__ = ["CHORALE_TASK", "CHORALE_PROGRAMS", "Chorale", "build_chorale_task", "load_chorales"]

CHORALE_TASK = "chorale_key"
# Sustaining GM programs that can carry a chorale: organs, bowed strings, choir, brass, reeds, flutes.
CHORALE_PROGRAMS = (16, 19, 20, 40, 41, 42, 48, 49, 52, 53, 56, 57, 58, 60, 61, 64, 65, 68, 69, 70, 71, 73)
TEMPO_RANGE = (60.0, 96.0)
SHIFTS = tuple(range(-5, 7))  # every key once: a tritone up and down are the same key
_VOICES = 4
_SEED_STREAM = 7  # the task's random stream: rng([seed, _SEED_STREAM, ...])


@dataclass(frozen=True)
class Chorale:
    """One chorale's opening as MIDI notes: (start, end) in quarter notes, MIDI pitch."""

    name: str  # the corpus file's stem, e.g. "bwv26.6"
    tonic: int  # pitch class of the analysed key
    mode: str  # "major" | "minor"
    notes: tuple[tuple[float, float, int], ...]


def _require_music21() -> Any:
    try:
        import music21
    except ImportError as error:
        raise ImportError("the chorale task needs music21: pip install 'mertkit[chorales]'", name="music21") from error
    return music21


def load_chorales(limit: int | None = None, max_quarters: float = 16.0, progress: Any = None) -> list[Chorale]:
    """The four-part chorales of music21's Bach corpus whose key signature matches music21's
    key analysis, in file-name order; each keeps its notes that start in the first
    ``max_quarters`` quarter notes. ``limit``: stop after that many kept chorales."""
    music21 = _require_music21()
    kept = []
    for path in sorted(music21.corpus.getComposer("bach"), key=lambda p: Path(p).name):
        if limit is not None and len(kept) >= limit:
            break
        chorale = _read_chorale(music21, Path(path), max_quarters)
        if progress is not None:
            progress.update(1, chorales=len(kept) + (chorale is not None))
        if chorale is not None:
            kept.append(chorale)
    return kept


def _read_chorale(music21: Any, path: Path, max_quarters: float) -> Chorale | None:
    score = music21.corpus.parse(str(path))
    if len(score.parts) != _VOICES:
        return None
    signatures = list(score.parts[0].recurse().getElementsByClass("KeySignature"))
    analysed = score.analyze("key")
    if not signatures or signatures[0].sharps != analysed.sharps or analysed.mode not in MODES:
        return None  # the analysis disagrees with the notation: the label would be a guess
    notes = []
    for part in score.parts:
        for element in part.stripTies().flatten().notes:
            start = float(element.offset)
            if start >= max_quarters:
                break
            end = start + float(element.quarterLength)
            notes.extend((start, end, int(pitch.midi)) for pitch in element.pitches)
    name = path.name.removesuffix(".mxl").removesuffix(".xml").removesuffix(".krn")
    return Chorale(name, analysed.tonic.pitchClass, analysed.mode, tuple(sorted(notes)))


def render_chorale(chorale: Chorale, shift: int, program: int, tempo: float, seconds: float, sample_rate: int,
                   soundfont: str | None, rng: np.random.Generator) -> np.ndarray:
    """The chorale's opening, transposed by ``shift`` semitones, ``seconds`` long."""
    pretty_midi, _ = require_synth_deps()
    beat = 60.0 / tempo
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    inst = pretty_midi.Instrument(program=program)
    velocity = int(rng.integers(70, 110))
    for start, end, pitch in chorale.notes:
        if start * beat >= seconds:
            continue
        # a hair of release between repeated notes, so the synthesiser restarts them
        inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch + shift, start=start * beat,
                                           end=min(end * beat - 0.01, seconds)))
    pm.instruments.append(inst)
    return peak_normalise(render_midi(pm, sample_rate, soundfont=soundfont, duration=seconds))


def build_chorale_task(
    out_dir: str | Path, *, seed: int = 0, transpositions: int = 4, seconds: float = 6.0, sample_rate: int = 24000,
    soundfont: str | None = None, limit: int | None = None, overwrite: bool = False, progress: bool | None = None,
) -> Path:
    """Render the chorale key task into ``out_dir/chorale_key``; returns that folder."""
    from mertkit.progress import Progress

    if not 1 <= transpositions <= len(SHIFTS):
        raise SuiteError(f"transpositions must be 1..{len(SHIFTS)}, got {transpositions}")
    if seconds <= 0:
        raise SuiteError(f"seconds must be positive, got {seconds}")
    require_synth_deps()
    _require_music21()
    folder = Path(out_dir) / CHORALE_TASK
    _prepare_folder(folder, overwrite)
    max_quarters = seconds * TEMPO_RANGE[1] / 60.0  # enough for the fastest tempo
    with Progress(None, "chorales", unit="file", enabled=progress) as bar:
        chorales = load_chorales(limit, max_quarters, bar)
    if len(chorales) < 3:
        raise SuiteError(f"only {len(chorales)} chorales found in music21's corpus; the task needs 3 (one per split)")
    splits = _chorale_splits(np.random.default_rng([seed, _SEED_STREAM]), len(chorales))
    rows = []
    with Progress(len(chorales) * transpositions, "chorale clips", unit="clip", enabled=progress) as bar:
        for index, (chorale, split) in enumerate(zip(chorales, splits)):
            rng = np.random.default_rng([seed, _SEED_STREAM, index])
            for shift in sorted(int(s) for s in rng.choice(SHIFTS, transpositions, replace=False)):
                audio = render_chorale(chorale, shift, int(rng.choice(CHORALE_PROGRAMS)),
                                       float(rng.uniform(*TEMPO_RANGE)), seconds, sample_rate, soundfont, rng)
                relative = f"clips/{len(rows):06d}.wav"
                write_wav(folder / relative, audio, sample_rate)
                rows.append({"path": relative, "label": key_name(chorale.tonic + shift, chorale.mode), "split": split,
                             "chorale": chorale.name, "transpose": str(shift)})
                bar.update(1)
    _write_manifest(folder / "manifest.csv", rows)
    info = _task_info(seed, len(rows), seconds, sample_rate, soundfont, len(chorales), transpositions)
    (folder / "task.json").write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return folder


def _chorale_splits(rng: np.random.Generator, count: int) -> list[str]:
    """70/15/15 of the chorales (not of the clips): every transposition shares its chorale's split."""
    sizes = split_counts(count)
    names = [name for name in ("train", "valid", "test") for _ in range(sizes[name])]
    return [names[i] for i in np.argsort(rng.permutation(count))]


def _task_info(seed: int, num_clips: int, seconds: float, sample_rate: int, soundfont: str | None,
               chorales: int, transpositions: int) -> TaskInfo:
    import music21

    extra = {"label_meaning": "key of a Bach chorale opening (music21's analysis, agreeing with the key signature)",
             "source": f"music21 {music21.__version__} corpus: Bach four-part chorales", "chorales": chorales,
             "transpositions": transpositions, "tempo_range_bpm": list(TEMPO_RANGE), "split": "by chorale"}
    return TaskInfo(CHORALE_TASK, "multiclass", key_labels(), "accuracy", seconds, sample_rate, seed, num_clips, extra=extra,
                    soundfont=soundfont_identity(soundfont))
