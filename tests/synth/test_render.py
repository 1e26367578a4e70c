"""Tests for MIDI rendering with TinySoundFont and for the random pre-training corpus."""
from __future__ import annotations

import builtins
import csv
import hashlib
import threading

import numpy as np
import pytest

pretty_midi = pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")
soundfile = pytest.importorskip("soundfile")

from mertkit.synth.corpus import render_corpus  # noqa: E402
from mertkit.synth.render import (  # noqa: E402
    RenderError,
    default_soundfont,
    peak_normalise,
    render_midi,
    render_notes,
    require_synth_deps,
)

SR = 24000


def _spectrum_peak_near(audio: np.ndarray, freq: float, sample_rate: int = SR) -> float:
    """Frequency of the largest spectral peak within a semitone of ``freq``."""
    size = 1 << 18
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=size))
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    band = (freqs > freq * 2 ** (-1 / 12)) & (freqs < freq * 2 ** (1 / 12))
    return float(freqs[band][np.argmax(spectrum[band])])


def _lowest_strong_partial(audio: np.ndarray, floor_db: float = 20.0) -> float:
    size = 1 << 18
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=size))
    freqs = np.fft.rfftfreq(size, 1 / SR)
    inner = spectrum[1:-1]
    peaks = (inner > spectrum.max() * 10 ** (-floor_db / 20)) & (inner >= spectrum[:-2]) & (inner >= spectrum[2:])
    return float(freqs[1:-1][peaks][0])


def _midi_hz(pitch: int) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


@pytest.mark.parametrize("pitch", [33, 45, 57, 69, 81, 93])
def test_piano_note_has_its_fundamental(pitch: int) -> None:
    audio = render_notes(pitch, program=0, note_seconds=1.0, clip_seconds=1.5)
    assert audio.dtype == np.float32 and audio.shape == (36000,)
    assert np.isfinite(audio).all()
    held = audio[1200:SR]
    # The lowest partial within 20 dB of the strongest one is the fundamental (an octave
    # error or a wrong note would put it elsewhere) and it sits within 1 % of the note.
    assert _lowest_strong_partial(held) == pytest.approx(_midi_hz(pitch), rel=0.01)


def test_sine_like_program_is_in_tune() -> None:
    # GM 80 (square lead) has a strong fundamental; the measured peak is within 5 cents.
    audio = render_notes(69, program=80, note_seconds=1.0)
    peak = _spectrum_peak_near(audio[1200:SR], 440.0)
    assert abs(1200 * np.log2(peak / 440.0)) < 5


def test_note_sounds_while_held_and_decays_after_release() -> None:
    audio = render_notes(60, program=0, note_seconds=0.5, clip_seconds=3.0)
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert audio[: SR // 10].any(), "the note starts at time 0"
    assert rms(audio[: SR // 2]) > 1e-2
    assert rms(audio[int(2.5 * SR):]) < rms(audio[: SR // 2]) / 30


def test_render_is_deterministic_and_length_follows_duration() -> None:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=90, pitch=p, start=0.25 * i, end=0.25 * i + 0.5) for i, p in enumerate([60, 64, 67])]
    pm.instruments.append(piano)
    a = render_midi(pm, SR, duration=2.0)
    b = render_midi(pm, SR, duration=2.0)
    assert a.shape == (48000,) and np.array_equal(a, b)
    default = render_midi(pm, 16000)
    assert default.shape == (int(round((pm.get_end_time() + 1.0) * 16000)),)


def test_events_land_at_their_sample() -> None:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=100, pitch=60, start=0.5, end=1.0)]
    pm.instruments.append(piano)
    audio = render_midi(pm, SR, duration=1.5)
    first = int(np.flatnonzero(np.abs(audio) > 1e-6)[0])
    assert 12000 <= first < 12000 + 24  # within 1 ms after the onset


def test_drums_play_on_channel_10_and_mix_with_melodic_parts() -> None:
    pm = pretty_midi.PrettyMIDI()
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(velocity=110, pitch=38, start=0.0, end=0.2)]
    bass = pretty_midi.Instrument(program=33)
    bass.notes = [pretty_midi.Note(velocity=100, pitch=40, start=0.0, end=0.5)]
    pm.instruments = [drums]
    drum_only = render_midi(pm, SR, duration=1.0)
    assert np.abs(drum_only).max() > 0.05
    pm.instruments = [bass]
    bass_only = render_midi(pm, SR, duration=1.0)
    pm.instruments = [drums, bass]
    both = render_midi(pm, SR, duration=1.0)
    # Channels are independent voices: the mix is the sum of the parts.
    np.testing.assert_allclose(both, drum_only + bass_only, atol=1e-5)


def test_program_changes_change_the_timbre() -> None:
    piano = render_notes(57, program=0, note_seconds=1.0)
    flute = render_notes(57, program=73, note_seconds=1.0)
    assert not np.allclose(piano, flute, atol=1e-3)


def test_more_than_fifteen_melodic_instruments_are_all_rendered() -> None:
    pm = pretty_midi.PrettyMIDI()
    for index in range(17):
        inst = pretty_midi.Instrument(program=0)
        inst.notes = [pretty_midi.Note(velocity=100, pitch=60, start=0.1 * index, end=0.1 * index + 0.05)]
        pm.instruments.append(inst)
    audio = render_midi(pm, SR, duration=2.0)
    # The 17th instrument (second synthesiser pass) sounds at 1.6 s.
    assert np.abs(audio[int(1.6 * SR): int(1.62 * SR)]).max() > 1e-3


def test_pitch_bend_shifts_the_pitch() -> None:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=80)
    inst.notes = [pretty_midi.Note(velocity=100, pitch=69, start=0.0, end=1.0)]
    inst.pitch_bends = [pretty_midi.PitchBend(pitch=4096, time=0.0)]  # +1 semitone with a 2-semitone range
    pm.instruments.append(inst)
    audio = render_midi(pm, SR, duration=1.0)
    expected = 440.0 * 2 ** (1 / 12)
    assert abs(1200 * np.log2(_spectrum_peak_near(audio[1200:], expected) / expected)) < 10


def _busy_piece(seed: int) -> pretty_midi.PrettyMIDI:
    """Three parts and drums that leave a synthesiser bent, panned, sustained and ringing."""
    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI()
    for _ in range(3):
        inst = pretty_midi.Instrument(program=int(rng.integers(0, 112)))
        start = 0.0
        for _ in range(8):
            length = float(rng.uniform(0.1, 0.6))
            inst.notes.append(pretty_midi.Note(int(rng.integers(30, 90)), int(rng.integers(48, 96)), start, start + length))
            start += 0.7 * length
        inst.pitch_bends.append(pretty_midi.PitchBend(int(rng.integers(-8000, 8000)), 0.5))
        inst.control_changes += [
            pretty_midi.ControlChange(number, int(rng.integers(0, 128)), time)
            for number, time in ((7, 0.2), (10, 0.3), (64, 0.4), (11, 0.6))
        ]
        pm.instruments.append(inst)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(100, 36 + i, 0.25 * i, 0.25 * i + 0.1) for i in range(10)]
    pm.instruments.append(drums)
    return pm


def _in_new_thread(function):
    result = []
    worker = threading.Thread(target=lambda: result.append(function()))
    worker.start()
    worker.join()
    return result[0]


def test_a_reused_synthesiser_renders_what_a_fresh_one_does(monkeypatch) -> None:
    # Each piece leaves bends, controllers and ringing voices behind; the next must not hear them.
    pieces = [_busy_piece(seed) for seed in range(5)]
    fresh = [_in_new_thread(lambda pm=pm: render_midi(pm, SR, duration=3.0)) for pm in pieces]
    tinysoundfont = require_synth_deps()[1]
    loads = []
    real_sfload = tinysoundfont.Synth.sfload
    monkeypatch.setattr(tinysoundfont.Synth, "sfload", lambda self, *a, **k: loads.append(1) or real_sfload(self, *a, **k))
    reused = _in_new_thread(lambda: [render_midi(pm, SR, duration=3.0) for pm in pieces])
    assert len(loads) == 1  # parsed once for five pieces
    for seed, (expected, got) in enumerate(zip(fresh, reused)):
        assert np.abs(expected).max() > 0.05
        assert np.array_equal(expected, got), f"piece {seed} differs by {np.abs(expected - got).max()}"


def test_bad_requests_raise_clear_errors(tmp_path) -> None:
    with pytest.raises(RenderError, match="pitch"):
        render_notes(128)
    with pytest.raises(RenderError, match="not found"):
        render_notes(60, soundfont=str(tmp_path / "missing.sf2"))
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"not a soundfont")
    with pytest.raises(RenderError, match="bogus.sf2"):
        render_notes(60, soundfont=str(bogus))
    with pytest.raises(RenderError, match="duration"):
        render_midi(pretty_midi.PrettyMIDI(), SR, duration=0.0)
    assert default_soundfont().endswith("TimGM6mb.sf2")


def test_missing_dependencies_give_an_install_hint(monkeypatch) -> None:
    real_import = builtins.__import__

    def refuse_tinysoundfont(name, *args, **kwargs):
        if name == "tinysoundfont":
            raise ImportError("No module named 'tinysoundfont'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_tinysoundfont)
    with pytest.raises(ImportError, match="pip install --no-deps tinysoundfont"):
        require_synth_deps()


def test_peak_normalise() -> None:
    audio = np.array([0.0, -2.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(peak_normalise(audio, 0.5), [0.0, -0.5, 0.25])
    assert not peak_normalise(np.zeros(4, dtype=np.float32)).any()


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_is_musical_deterministic_and_seed_dependent(tmp_path) -> None:
    paths = render_corpus(tmp_path / "a", n_clips=3, seconds=2.0, seed=5)
    render_corpus(tmp_path / "b", n_clips=3, seconds=2.0, seed=5)
    render_corpus(tmp_path / "c", n_clips=3, seconds=2.0, seed=6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv", encoding="utf-8")))
    assert [row["path"] for row in rows] == [f"clips/{i:06d}.wav" for i in range(3)]
    for path, row in zip(paths, rows):
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == SR and audio.shape == (2 * SR,) == (int(row["num_samples"]),)
        assert np.isfinite(audio).all() and np.sqrt(np.mean(audio**2)) > 1e-2
        assert np.abs(audio).max() <= 0.951
        assert 60 <= float(row["tempo_bpm"]) <= 270 and row["meter"] in ("4/4", "3/4", "6/8", "5/4")
    # Clip i does not depend on how many clips are rendered.
    render_corpus(tmp_path / "d", n_clips=1, seconds=2.0, seed=5)
    assert (tmp_path / "d" / "clips" / "000000.wav").read_bytes() == paths[0].read_bytes()


def test_corpus_resumes_and_skips_finished_clips(tmp_path) -> None:
    from mertkit.synth.corpus import render_clip

    paths = render_corpus(tmp_path / "a", n_clips=2, seconds=1.0, seed=1)
    before = _digest(tmp_path / "a")
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # a torn clip from a killed run
    assert render_clip(tmp_path / "a", 1, 0, 1.0, SR, None) is False  # finished: skipped
    render_corpus(tmp_path / "a", n_clips=2, seconds=1.0, seed=1)
    assert _digest(tmp_path / "a") == before
    assert not list((tmp_path / "a").rglob(".tmp-*"))


def test_corpus_refuses_to_mix_settings_in_one_folder(tmp_path) -> None:
    folder = tmp_path / "a"
    render_corpus(folder, n_clips=1, seconds=1.0, seed=1)
    before = _digest(folder)
    with pytest.raises(RenderError, match=r"a: holds a corpus rendered with other settings \(seed 1 there, 2 asked\)"):
        render_corpus(folder, n_clips=2, seconds=1.0, seed=2)
    with pytest.raises(RenderError, match="texture 'dense' there, 'varied' asked"):
        render_corpus(folder, n_clips=2, seconds=1.0, seed=1, texture="varied")
    assert _digest(folder) == before  # nothing was added or rewritten
    (folder / "corpus.json").unlink()  # clips from an unknown render
    with pytest.raises(RenderError, match="has clips but no corpus.json"):
        render_corpus(folder, n_clips=1, seconds=1.0, seed=1)


def test_corpus_hours_and_bad_arguments(tmp_path) -> None:
    from mertkit.synth.corpus import clip_count

    assert clip_count(20.0, None, 30.0) == 2400 and clip_count(None, 7, 30.0) == 7
    with pytest.raises(RenderError, match="exactly one"):
        clip_count(1.0, 3, 30.0)
    with pytest.raises(RenderError):
        render_corpus(tmp_path, n_clips=0)


def test_corpus_streams_are_disjoint_from_the_benchmark_suite() -> None:
    """Corpus clip i draws from [seed, CORPUS_STREAM, i]; suite clips from [seed, task, i], task < len(TASKS)."""
    from mertkit.synth.corpus import CORPUS_STREAM, corpus_rng
    from mertkit.synth.suite import TASKS

    assert CORPUS_STREAM >= len(TASKS)
    corpus_draws = {tuple(corpus_rng(seed, i).integers(0, 2**62, 2)) for seed in range(3) for i in range(50)}
    suite_draws = {tuple(np.random.default_rng([seed, task, i]).integers(0, 2**62, 2))
                   for seed in range(3) for task in range(len(TASKS)) for i in range(50)}
    assert len(corpus_draws) == 150 and not corpus_draws & suite_draws


def test_corpus_pieces_cover_modes_meters_and_programs() -> None:
    from mertkit.synth.corpus import _random_piece

    metas = [_random_piece(0, i, 20.0)[1] for i in range(60)]
    assert {m["meter"] for m in metas} == {"4/4", "3/4", "6/8", "5/4"}
    assert {m["key"].split()[1] for m in metas} == {"major", "minor", "dorian", "mixolydian"}
    assert len({p for m in metas for p in m["programs"]}) > 30


def _sounding_parts(pm, start: float, stop: float) -> set[str]:
    return {inst.name for inst in pm.instruments if any(start <= n.start < stop for n in inst.notes)}


def test_varied_texture_has_solo_and_duo_sections_and_dense_is_unchanged() -> None:
    from mertkit.synth.corpus import _random_piece

    # "dense" (the original corpus) is the default
    dense = [_random_piece(0, i, 20.0) for i in range(12)]
    assert [m for _, m in dense] == [_random_piece(0, i, 20.0, "dense")[1] for i in range(12)]
    sparse_sections = 0
    for i in range(12):
        pm, _ = _random_piece(0, i, 20.0, "varied")
        # a solo/duo section has no drums and at most two pitched parts in its first seconds
        parts = _sounding_parts(pm, 0.0, 2.0)
        sparse_sections += "drums" not in parts and 1 <= len(parts) <= 2
    assert 2 <= sparse_sections <= 10
    dense_sparse = sum("drums" not in _sounding_parts(pm, 0.0, 2.0) and len(_sounding_parts(pm, 0.0, 2.0)) <= 2
                       for pm, _ in dense)
    assert dense_sparse < sparse_sections


def test_unknown_texture_is_refused(tmp_path) -> None:
    with pytest.raises(RenderError, match="texture must be one of"):
        render_corpus(tmp_path, n_clips=1, seconds=1.0, texture="sparse")


def test_gm_palette_reaches_every_pitched_gm_family_and_classic_is_unchanged() -> None:
    from mertkit.synth.corpus import PALETTES, _random_piece

    classic = [_random_piece(0, i, 20.0)[1] for i in range(40)]
    assert classic == [_random_piece(0, i, 20.0, "dense", "classic")[1] for i in range(40)]
    classic_families = {p // 8 for m in classic for p in m["programs"]}
    assert not classic_families & {12, 13, 14}  # synth effects, ethnic, percussive: never heard
    gm = [_random_piece(0, i, 20.0, "varied", "gm")[1] for i in range(150)]
    assert {p // 8 for m in gm for p in m["programs"]} == set(range(15))  # every pitched family
    assert all(0 <= p < 120 for m in gm for p in m["programs"])  # no sound effects
    assert set(range(120)) == set(PALETTES["gm"].lead)


def test_corpus_palette_is_a_recorded_setting(tmp_path) -> None:
    import json

    folder = tmp_path / "a"
    render_corpus(folder, n_clips=1, seconds=1.0, seed=1, palette="gm")
    assert json.loads((folder / "corpus.json").read_text())["palette"] == "gm"
    with pytest.raises(RenderError, match="palette 'gm' there, 'classic' asked"):
        render_corpus(folder, n_clips=1, seconds=1.0, seed=1)
    # a corpus.json from before the setting existed was rendered with the classic palette
    old = tmp_path / "old"
    render_corpus(old, n_clips=1, seconds=1.0, seed=1)
    settings = json.loads((old / "corpus.json").read_text())
    del settings["palette"]
    (old / "corpus.json").write_text(json.dumps(settings))
    render_corpus(old, n_clips=2, seconds=1.0, seed=1)
    with pytest.raises(RenderError, match="palette 'classic' there, 'gm' asked"):
        render_corpus(old, n_clips=2, seconds=1.0, seed=1, palette="gm")
    with pytest.raises(RenderError, match="palette must be one of"):
        render_corpus(tmp_path / "b", n_clips=1, seconds=1.0, palette="everything")
