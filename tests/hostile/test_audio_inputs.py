"""Hostile audio inputs, one test per class: each bad file is one `FAILED <file>: <reason>` line
with a one-line reason, the other files of the same batch are extracted, nothing hangs.

Inputs are generated here. Runs go through the real `mert extract` command (CliRunner, or a
subprocess with a timeout where a regression would hang the test session).
"""
from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from audio_fixtures import corrupt, tones, truncate, write_m4a, write_mp3, write_pyav, write_text, write_tone
from mertkit import audio
from mertkit.audio import AudioError, check_waveform, discover_audio, load_audio, normalize_waveform
from mertkit.cli.app import main
from mertkit.extraction.runner import discover_inputs
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel
from mertkit.pretrain.labels import find_audio_files
from model_fixtures import tiny_config

SR = 24000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def batch(tmp_path):
    """A folder holding one good file; each test adds its hostile ones."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_tone(folder / "good.wav", seconds=0.5, sample_rate=SR, channels=1)
    return folder


def _extract(ckpt, folder, out, *extra):
    args = ["extract", str(folder), "--model", str(ckpt), "--out", str(out), "--pool", "mean", "--quiet", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def _failed_lines(output: str) -> dict[str, str]:
    """{file: reason} of the FAILED lines."""
    lines = [line for line in output.splitlines() if line.startswith("FAILED ")]
    return dict(line[len("FAILED "):].split(": ", 1) for line in lines)


def _assert_batch(result, out: Path, failed: dict[str, str], extracted: int) -> None:
    """Exit status 1, exactly these files failed with these phrases, the rest were extracted."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 1, result.output
    lines = _failed_lines(result.output)
    assert sorted(lines) == sorted(failed), result.output
    for path, phrase in failed.items():
        assert phrase in lines[path], (phrase, lines[path])
        assert "\n" not in lines[path]
    assert f"{extracted} extracted" in result.output
    assert (out / "good.wav.safetensors").is_file()
    assert not list(out.rglob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# Truncated and corrupt files: decoded length against what the container declares
# --------------------------------------------------------------------------------------------


def _cut(folder: Path, name: str, keep: float) -> Path:
    full = folder.parent / f"full-{name}"
    stem_ext = Path(name).suffix
    if stem_ext == ".mp3":
        write_mp3(full, seconds=4.0, sample_rate=44100, channels=2)
    elif stem_ext == ".ogg":
        write_tone(full, seconds=4.0, sample_rate=44100, channels=2, subtype="VORBIS")
    else:
        write_tone(full, seconds=4.0, sample_rate=44100, channels=2)
    path = folder / name
    truncate(full, path, int(full.stat().st_size * keep))
    return path


@pytest.mark.parametrize("name, phrase", [
    ("cut.wav", "truncated: 1.6 of 4.0 s decoded"),
    ("cut.aiff", "truncated: 1.6 of 4.0 s decoded"),
    ("cut.mp3", "truncated or corrupt: 1.5 of 4.0 s decoded"),
    ("cut.ogg", "ends without its end-of-stream mark"),
    ("cut.flac", "corrupt audio data"),
])
def test_truncated_file_fails_with_decoded_and_declared_length(ckpt, batch, tmp_path, name, phrase):
    path = _cut(batch, name, keep=0.4)
    result = _extract(ckpt, batch, tmp_path / "out")
    _assert_batch(result, tmp_path / "out", {str(path): phrase}, extracted=1)


def test_corrupt_ogg_pages_are_not_filled_in_silently(ckpt, batch, tmp_path):
    full = tmp_path / "full.ogg"
    write_tone(full, seconds=4.0, sample_rate=44100, channels=2, subtype="VORBIS")
    path = batch / "corrupt.ogg"
    corrupt(full, path, start=full.stat().st_size // 2, length=600)
    result = _extract(ckpt, batch, tmp_path / "out")
    _assert_batch(result, tmp_path / "out", {str(path): "truncated or corrupt: "}, extracted=1)


def test_intact_files_are_not_called_truncated(tmp_path):
    for name in ("a.wav", "a.aiff", "a.flac"):
        write_tone(tmp_path / name, seconds=1.0, sample_rate=44100, channels=2)
    write_tone(tmp_path / "a.ogg", seconds=1.0, sample_rate=44100, channels=2, subtype="VORBIS")
    write_mp3(tmp_path / "a.mp3", seconds=1.0, sample_rate=44100, channels=2)
    # Raw ADTS AAC has no declared length (ffmpeg's duration is a guess from the bit rate, here
    # longer than the audio): it must not count as a declaration.
    write_pyav(tmp_path / "a.aac", tones(1.0, 44100, 2), 44100, codec="aac", container="adts")
    write_pyav(tmp_path / "a.webm", tones(1.0, 48000, 2), 48000, codec="libopus", container="webm")
    write_m4a(tmp_path / "a.m4a", seconds=1.0, sample_rate=44100, channels=2)
    for path in sorted(tmp_path.iterdir()):
        assert abs(len(load_audio(path, SR)) - SR) < 0.05 * SR, path


# --------------------------------------------------------------------------------------------
# Per-file problems: names, permissions, special files, empty and non-audio files
# --------------------------------------------------------------------------------------------


def test_non_utf8_file_name_is_extracted(ckpt, batch, tmp_path):
    """Decoding opens the file itself (libsndfile would refuse to encode the name). Frame-level
    output: the pooled writer goes through safetensors' own file writer, which the runner
    must still be taught to use with such names."""
    raw_dir = os.fsencode(batch)
    os.rename(os.fsencode(batch / "good.wav"), raw_dir + b"/caf\xe9.wav")
    write_tone(batch / "good.wav", seconds=0.5, sample_rate=SR, channels=1)
    out = tmp_path / "out"
    args = ["extract", batch, "--model", ckpt, "--out", out, "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "2 extracted" in result.output
    assert b"caf\xe9.wav.safetensors" in os.listdir(os.fsencode(out))


def test_unreadable_file_says_permission_denied(ckpt, batch, tmp_path, monkeypatch):
    """We run as root in CI, where chmod 000 does not stop a read: the refusal is simulated
    at os.open for that one file (the check `test_chmod_000_file` does it for real as a user)."""
    locked = batch / "locked.wav"
    write_tone(locked, seconds=0.5, sample_rate=SR, channels=1)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.fsencode(path) == os.fsencode(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(audio.os, "open", refusing_open)
    result = _extract(ckpt, batch, tmp_path / "out")
    _assert_batch(result, tmp_path / "out", {str(locked): "cannot read (permission denied)"}, extracted=1)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod-000 files")
def test_chmod_000_file(tmp_path):
    path = tmp_path / "locked.wav"
    write_tone(path, seconds=0.5, sample_rate=SR, channels=1)
    path.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        load_audio(path, SR)


@pytest.mark.parametrize("store", [False, True])
def test_fifo_is_skipped_unread_and_does_not_hang(ckpt, batch, tmp_path, store):
    """A FIFO named like audio (a writer never comes): reported, never opened. In a subprocess
    with a timeout, since a regression blocks forever."""
    fifo = batch / "pipe.wav"
    os.mkfifo(fifo)
    target = ["--store", tmp_path / "store"] if store else ["--out", tmp_path / "out"]
    code = "from mertkit.cli.app import main; main()"
    args = ["extract", batch, "--model", ckpt, *target, "--pool", "mean", "--quiet"]
    run = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         timeout=240)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert _failed_lines(output)[str(fifo)].endswith("not a regular file (a FIFO); skipped without reading")
    assert "1 extracted" in output and "Traceback" not in output


@pytest.mark.parametrize("name, make, phrase", [
    ("empty.wav", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("notes.mp3", write_text, "not a readable audio file"),
])
def test_empty_and_non_audio_files(ckpt, batch, tmp_path, name, make, phrase):
    make(batch / name)
    result = _extract(ckpt, batch, tmp_path / "out")
    _assert_batch(result, tmp_path / "out", {str(batch / name): phrase}, extracted=1)


# --------------------------------------------------------------------------------------------
# Bounded work: duration limit and sample rates, refused from the header
# --------------------------------------------------------------------------------------------


def _write_wav_header_only_rate(path: Path, rate: int, frames: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.zeros(frames, np.int16).tobytes())


def test_one_hertz_file_is_refused_before_resampling(ckpt, batch, tmp_path, monkeypatch):
    slow = batch / "slow.wav"
    _write_wav_header_only_rate(slow, rate=1, frames=100_000)  # 195 kB; 27.8 h at 24 kHz
    monkeypatch.setattr(audio, "resample", lambda *a: pytest.fail("resampled a refused file"))
    result = _extract(ckpt, batch, tmp_path / "out")
    _assert_batch(result, tmp_path / "out",
                  {str(slow): "declares 100000 s at 1 Hz, over the 14400 s limit (--max-duration)"}, extracted=1)
    # Without the limit, the rate itself is refused.
    result = _extract(ckpt, batch, tmp_path / "out2", "--max-duration", "none")
    _assert_batch(result, tmp_path / "out2",
                  {str(slow): "sample rate 1 Hz is outside the supported 1000..768000 Hz"}, extracted=1)


def test_max_duration_option(ckpt, batch, tmp_path):
    write_tone(batch / "long.flac", seconds=3.0, sample_rate=SR, channels=1)
    result = _extract(ckpt, batch, tmp_path / "out", "--max-duration", "2")
    _assert_batch(result, tmp_path / "out", {str(batch / "long.flac"): "declares 3 s at 24000 Hz, over the 2 s limit"},
                  extracted=1)
    assert "2 extracted" in _extract(ckpt, batch, tmp_path / "out3", "--max-duration", "0").output
    bad = _extract(ckpt, batch, tmp_path / "out4", "--max-duration", "-3")
    assert bad.exit_code == 2 and "--max-duration" in bad.output and "Traceback" not in bad.output


def test_absurd_sample_rate_is_refused(tmp_path):
    path = tmp_path / "fast.wav"
    _write_wav_header_only_rate(path, rate=4_000_000, frames=1000)
    with pytest.raises(AudioError, match="sample rate 4000000 Hz is outside"):
        load_audio(path, SR)


# --------------------------------------------------------------------------------------------
# One discovery, one normalisation, one waveform check
# --------------------------------------------------------------------------------------------


def test_extract_and_labels_discover_the_same_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for name in ("b.oga", "a.WAV", "sub/c.flac", ".dotfile.wav", "._a.wav", ".hidden/d.wav", "notes.txt"):
        (root / name).write_bytes(b"x")
    os.mkfifo(root / "pipe.mp3")
    found = discover_audio([root])
    assert [f.relative for f in found.files] == ["a.WAV", "b.oga", "sub/c.flac"]
    assert [reason.split(": ", 1)[1] for _, reason in found.rejected] == [
        "not a regular file (a FIFO); skipped without reading"]
    files, rejected = discover_inputs([root])
    assert [f.relative for f in files] == [f.relative for f in found.files] and rejected == found.rejected
    assert find_audio_files(root) == [f.relative for f in found.files]


def test_one_normalisation_matches_the_official_processor():
    from transformers import Wav2Vec2FeatureExtractor

    wave = np.random.default_rng(0).normal(0.1, 0.3, 24000).astype(np.float32)
    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True)
    official = processor(wave, sampling_rate=SR, return_tensors="np").input_values[0]
    np.testing.assert_allclose(normalize_waveform(wave), official, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype, full_scale, offset", [
    (np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.uint8, 128, 128), (np.float64, 1, 0)])
def test_integer_and_float64_arrays_are_scaled_to_float32(dtype, full_scale, offset):
    reference = np.sin(np.linspace(0, 20, 4000)) * 0.5
    raw = (reference * full_scale + offset).astype(dtype) if dtype != np.float64 else reference
    out = check_waveform(raw)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.0
    np.testing.assert_allclose(out, reference, atol=2.0 / full_scale + 1e-7 if dtype != np.float64 else 1e-7)


def test_extractor_accepts_int16_like_float(tmp_path):
    from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions

    torch.manual_seed(0)
    extractor = Extractor(MertModel(tiny_config("post_ln")).eval(), ExtractOptions(pool="mean"))
    ints = (np.sin(np.linspace(0, 200, SR)) * 20000).astype(np.int16)
    from_ints = extractor.extract(ints).hidden_states
    from_floats = extractor.extract(ints.astype(np.float32) / 2**15).hidden_states
    np.testing.assert_array_equal(from_ints, from_floats)
    for bad, phrase in ((np.zeros((2, 2, SR)), "mono waveform"), (np.array(["a"] * SR), "dtype"),
                        (np.full(SR, np.inf), "NaN or Inf")):
        with pytest.raises(ExtractError, match=phrase):
            extractor.extract(bad)


class _FakeTeacher:
    """The LabelTeacher protocol with deterministic, non-degenerate codes (no model needed)."""

    name, bandwidth, sample_rate, hop_length, num_codebooks, codebook_size = "fake", 6.0, 24000, 320, 2, 16

    def codes(self, wav: np.ndarray) -> np.ndarray:
        frames = -(-len(wav) // self.hop_length)
        return (np.arange(self.num_codebooks * frames) % self.codebook_size).reshape(2, frames).astype(np.int16)


def test_labels_share_discovery_and_limits(tmp_path):
    from mertkit.pretrain.labels import read_manifest, write_labels

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_tone(corpus / "a.oga", seconds=0.5, sample_rate=SR, channels=1, subtype="VORBIS", format="OGG")
    write_tone(corpus / "long.wav", seconds=3.0, sample_rate=SR, channels=1)
    os.mkfifo(corpus / "pipe.flac")
    summary = write_labels(corpus, tmp_path / "labels", _FakeTeacher(), max_duration=2.0)
    failed = dict(summary.failed)
    assert summary.written == 1 and sorted(failed) == ["long.wav", "pipe.flac"]
    assert "over the 2 s limit" in failed["long.wav"]
    assert "skipped without reading" in failed["pipe.flac"]
    assert read_manifest(tmp_path / "labels")["a.oga"].status == "ok"
