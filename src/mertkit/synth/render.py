"""Offline, deterministic rendering of MIDI to mono audio with a General MIDI SoundFont.

The renderer drives TinySoundFont (``tinysoundfont``) directly from a ``pretty_midi.PrettyMIDI``:

* timing: pretty_midi has already turned ticks into seconds through the file's tempo map, so
  every event is placed at ``round(seconds * sample_rate)``; rendering is sample-accurate and
  bit-for-bit repeatable (TinySoundFont has no randomness and no threads);
* instruments: each ``pretty_midi.Instrument`` gets its own MIDI channel with its GM program
  (a program change inside a MIDI track already becomes a separate Instrument in pretty_midi);
  drum instruments play on channel 10 (index 9) with the drum kit given by their program;
  more than 15 melodic instruments or more than one drum instrument are rendered in several
  synthesiser passes and summed (voices of different channels do not interact);
* controllers and pitch bends are forwarded, except bank select (CC 0/32: the program is
  fixed per instrument) and the reverb/chorus sends (CC 91/93): the render is dry;
  TinySoundFont implements no reverb or chorus effect in any case;
* speed: parsing a SoundFont costs far more than rendering a short clip with it (FluidR3 GM,
  148 MB: about 0.4 s), so each thread keeps the synthesiser it last used (and with it the
  parsed bank, about three times the file's size in memory) and, after every pass, silences
  it and returns its channels to their defaults (sounds off, controllers reset, pitch wheel
  centred, the quick release run out): the next clip renders exactly as it would on a
  freshly loaded one;
* output: float32 mono (the mean of the synthesiser's stereo channels), not clipped or
  normalised, so dense music can exceed [-1, 1]; writers should normalise
  (:func:`peak_normalise`).

The default SoundFont is ``TimGM6mb.sf2``, bundled with pretty_midi (a small GM bank).
Optional dependencies: ``pip install pretty_midi`` and ``pip install --no-deps tinysoundfont``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pretty_midi

__all__ = [
    "RenderError",
    "DRUM_CHANNEL",
    "default_soundfont",
    "soundfont_identity",
    "render_midi",
    "render_notes",
    "peak_normalise",
    "require_synth_deps",
]

DRUM_CHANNEL = 9
_MELODIC_CHANNELS = tuple(c for c in range(16) if c != DRUM_CHANNEL)
# Controllers that are not forwarded: bank select MSB/LSB, reverb send, chorus send.
_DROPPED_CONTROLLERS = frozenset({0, 32, 91, 93})
# Long enough for TinySoundFont's quick release (10 ms) of voices cut by "all sounds off".
_SILENCE_SECONDS = 0.1
_INSTALL_HINT = "install pretty_midi and tinysoundfont (pip install pretty_midi; pip install --no-deps tinysoundfont)"

# Event kinds in the order they are applied when they fall on the same sample: controllers
# and bends first so that a note starts with the right settings, note-offs before note-ons
# so that a repeated note is re-struck rather than cut.
_CONTROL, _BEND, _NOTE_OFF, _NOTE_ON = range(4)


class RenderError(ValueError):
    """A MIDI rendering request that cannot be honoured (bad SoundFont, bad arguments)."""


def require_synth_deps() -> tuple[Any, Any]:
    """Import and return (pretty_midi, tinysoundfont), with an install hint if missing."""
    try:
        import pretty_midi
        import tinysoundfont
    except ImportError as error:
        raise ImportError(f"MIDI rendering needs pretty_midi and tinysoundfont: {_INSTALL_HINT}") from error
    return pretty_midi, tinysoundfont


def default_soundfont() -> str:
    """Path of the General MIDI SoundFont bundled with pretty_midi (TimGM6mb.sf2)."""
    pretty_midi, _ = require_synth_deps()
    path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
    if not os.path.isfile(path):
        raise RenderError(f"{path}: pretty_midi's bundled SoundFont is missing; pass soundfont=...")
    return path


@functools.lru_cache(maxsize=4)
def _soundfont_bytes(path: str) -> bytes:
    # Parsing from memory avoids re-reading the file for every clip of a suite.
    if not os.path.isfile(path):
        raise RenderError(f"{path}: SoundFont file not found")
    with open(path, "rb") as handle:
        return handle.read()


@functools.lru_cache(maxsize=4)
def _soundfont_sha256(path: str) -> str:
    return hashlib.sha256(_soundfont_bytes(path)).hexdigest()


def soundfont_identity(path: str | None = None) -> dict[str, str]:
    """What a rendered artifact records of its SoundFont (None: the bundled one): the file's
    name and the sha256 of its bytes, so audio rendered with different banks never passes
    for the same suite, whatever the files are called."""
    path = default_soundfont() if path is None else path
    return {"file": os.path.basename(path), "sha256": _soundfont_sha256(path)}


@dataclass(frozen=True)
class _Event:
    sample: int
    kind: int
    channel: int
    a: int
    b: int = 0


def _instrument_events(instrument: Any, channel: int, sample_rate: int) -> list[_Event]:
    def at(seconds: float) -> int:
        return int(round(seconds * sample_rate))

    events = [
        _Event(at(cc.time), _CONTROL, channel, cc.number, cc.value)
        for cc in instrument.control_changes
        if cc.number not in _DROPPED_CONTROLLERS
    ]
    events += [_Event(at(bend.time), _BEND, channel, bend.pitch + 8192) for bend in instrument.pitch_bends]
    for note in instrument.notes:
        if note.end <= note.start:  # zero-length notes carry no sound
            continue
        events.append(_Event(at(note.start), _NOTE_ON, channel, note.pitch, note.velocity))
        events.append(_Event(at(note.end), _NOTE_OFF, channel, note.pitch))
    return events


def _passes(instruments: Sequence[Any]) -> list[list[tuple[Any, int]]]:
    """Split instruments into synthesiser passes of (instrument, channel) pairs."""
    melodic = [inst for inst in instruments if not inst.is_drum]
    drums = [inst for inst in instruments if inst.is_drum]
    count = max(1, -(-len(melodic) // len(_MELODIC_CHANNELS)), len(drums))
    passes: list[list[tuple[Any, int]]] = [[] for _ in range(count)]
    for index, inst in enumerate(melodic):
        passes[index // len(_MELODIC_CHANNELS)].append((inst, _MELODIC_CHANNELS[index % len(_MELODIC_CHANNELS)]))
    for index, inst in enumerate(drums):
        passes[index].append((inst, DRUM_CHANNEL))
    return passes


def _apply(synth: Any, event: _Event) -> None:
    if event.kind == _NOTE_ON:
        synth.noteon(event.channel, event.a, event.b)
    elif event.kind == _NOTE_OFF:
        synth.noteoff(event.channel, event.a)
    elif event.kind == _CONTROL:
        synth.control_change(event.channel, event.a, event.b)
    else:
        synth.pitchbend(event.channel, event.a)


def _select_programs(synth: Any, sfid: int, assignment: Iterable[tuple[Any, int]], soundfont: str) -> None:
    for inst, channel in assignment:
        try:
            synth.program_select(channel, sfid, 0, inst.program, is_drums=inst.is_drum)
        except RuntimeError as error:
            what = "drum kit" if inst.is_drum else "program"
            raise RenderError(f"{soundfont}: has no {what} {inst.program} (instrument {inst.name!r})") from error


_held = threading.local()


def _loaded_synth(soundfont: str, sample_rate: int, gain: float) -> tuple[Any, int]:
    """The thread's synthesiser with ``soundfont`` loaded (parsed once, then reused), and the
    SoundFont's id in it."""
    key = (soundfont, sample_rate, gain)
    held = getattr(_held, "synth", None)
    if held is not None and held[0] == key:
        return held[1], held[2]
    _held.synth = None  # let the previous bank go before parsing the next
    _, tinysoundfont = require_synth_deps()
    synth = tinysoundfont.Synth(gain=gain, samplerate=sample_rate)
    try:
        sfid = synth.sfload(_soundfont_bytes(soundfont))
    except (tinysoundfont.SoundFontException, RuntimeError) as error:
        raise RenderError(f"{soundfont}: not a readable SoundFont ({error})") from error
    _held.synth = (key, synth, sfid)
    return synth, sfid


def _silence(synth: Any, sample_rate: int) -> None:
    """Put a used synthesiser back in the state of a freshly loaded one."""
    for channel in range(16):
        synth.control_change(channel, 120, 0)  # all sounds off (a 10 ms release)
        synth.control_change(channel, 121, 0)  # reset controllers (volume, pan, expression, RPN)
        synth.pitchbend(channel, 8192)  # the controller reset leaves the wheel where it was
    synth.generate_simple(int(round(_SILENCE_SECONDS * sample_rate)))


def _render_pass(
    assignment: list[tuple[Any, int]], num_samples: int, sample_rate: int, soundfont: str, gain: float
) -> np.ndarray:
    synth, sfid = _loaded_synth(soundfont, sample_rate, gain)
    try:
        _select_programs(synth, sfid, assignment, soundfont)
        events = sorted(
            (e for inst, ch in assignment for e in _instrument_events(inst, ch, sample_rate)),
            key=lambda e: (e.sample, e.kind),
        )
        stereo = np.zeros((num_samples, 2), dtype=np.float32)
        position = 0
        for event in events:
            if event.sample >= num_samples:
                break
            position = _generate(synth, stereo, position, event.sample)
            _apply(synth, event)
        _generate(synth, stereo, position, num_samples)
    finally:
        _silence(synth, sample_rate)
    return stereo.mean(axis=1, dtype=np.float32)


def _generate(synth: Any, stereo: np.ndarray, start: int, stop: int) -> int:
    if stop > start:
        block = synth.generate_simple(stop - start)
        stereo[start:stop] = np.frombuffer(block, dtype=np.float32).reshape(-1, 2)
    return max(start, stop)


def render_midi(
    pm: pretty_midi.PrettyMIDI,
    sample_rate: int = 24000,
    *,
    soundfont: str | None = None,
    gain: float = 0.0,
    duration: float | None = None,
    release: float = 1.0,
) -> np.ndarray:
    """Render ``pm`` to float32 mono audio.

    ``gain`` is in dB relative to the SoundFont's level. The output has exactly
    ``round(duration * sample_rate)`` samples when ``duration`` is given (later events are
    dropped), else it runs to the end of the last event plus ``release`` seconds of decay.
    """
    require_synth_deps()
    if sample_rate <= 0:
        raise RenderError(f"sample_rate must be positive, got {sample_rate}")
    if duration is not None and duration <= 0:
        raise RenderError(f"duration must be positive, got {duration}")
    if release < 0:
        raise RenderError(f"release must be >= 0, got {release}")
    path = soundfont if soundfont is not None else default_soundfont()
    seconds = duration if duration is not None else pm.get_end_time() + release
    num_samples = int(round(seconds * sample_rate))
    audio = np.zeros(num_samples, dtype=np.float32)
    for assignment in _passes(pm.instruments):
        audio += _render_pass(assignment, num_samples, sample_rate, path, gain)
    return audio


def render_notes(
    pitches: int | Sequence[int],
    *,
    program: int = 0,
    is_drum: bool = False,
    velocity: int = 100,
    note_seconds: float = 1.0,
    clip_seconds: float | None = None,
    sample_rate: int = 24000,
    soundfont: str | None = None,
    gain: float = 0.0,
) -> np.ndarray:
    """Render one note (or a chord) struck at time 0 and held for ``note_seconds``.

    The clip lasts ``clip_seconds`` (default: ``note_seconds + 1`` s of release).
    """
    pretty_midi, _ = require_synth_deps()
    chord = [pitches] if isinstance(pitches, int) else list(pitches)
    for pitch in chord:
        if not 0 <= pitch <= 127:
            raise RenderError(f"MIDI pitch must be in 0..127, got {pitch}")
    if not 1 <= velocity <= 127 or not 0 <= program <= 127:
        raise RenderError(f"velocity must be in 1..127 and program in 0..127, got {velocity}, {program}")
    if note_seconds <= 0:
        raise RenderError(f"note_seconds must be positive, got {note_seconds}")
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
    inst.notes = [pretty_midi.Note(velocity=velocity, pitch=p, start=0.0, end=note_seconds) for p in chord]
    pm.instruments.append(inst)
    seconds = clip_seconds if clip_seconds is not None else note_seconds + 1.0
    return render_midi(pm, sample_rate, soundfont=soundfont, gain=gain, duration=seconds)


def peak_normalise(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale ``audio`` so that its largest magnitude is ``peak`` (silence is returned as is)."""
    largest = float(np.max(np.abs(audio))) if audio.size else 0.0
    if largest == 0.0:
        return audio.astype(np.float32)
    return (audio * (peak / largest)).astype(np.float32)
