"""Tests for mertkit.audio on synthesised files (see audio_fixtures)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import (
    aligned_correlation,
    corrupt,
    peak_frequency,
    sine,
    sine_at,
    tones,
    truncate,
    write_array,
    write_m4a,
    write_mp3,
    write_pyav,
    write_text,
    write_tone,
    write_video_only,
)
from mertkit.audio import (
    AudioError,
    AudioInfo,
    audio_info,
    load_audio,
    normalize_waveform,
    resample,
    stream_audio,
)

# float32 output against a float64 expectation: one float32 rounding of values below 1.
FLOAT32_EXACT = 1e-7
SECONDS = 0.5


# --------------------------------------------------------------------------------------------
# Lossless formats decode exactly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, subtype",
    [
        (".wav", "PCM_16"),
        (".wav", "PCM_24"),
        (".wav", "PCM_32"),
        (".wav", "PCM_U8"),
        (".wav", "FLOAT"),
        (".wav", "DOUBLE"),
        (".flac", "PCM_16"),
        (".flac", "PCM_24"),
        (".aiff", "PCM_16"),
    ],
)
def test_soundfile_formats_decode_exactly(tmp_path, suffix, subtype):
    path = tmp_path / f"tone{suffix}"
    expected = write_tone(path, seconds=SECONDS, sample_rate=22050, channels=2, subtype=subtype)
    out = load_audio(path, 22050)
    assert out.dtype == np.float32 and out.ndim == 1
    np.testing.assert_allclose(out, expected.mean(axis=1), rtol=0, atol=FLOAT32_EXACT)


@pytest.mark.parametrize(
    "name, codec, container, sample_format, bits",
    [
        ("s16.mka", "pcm_s16le", "matroska", None, None),  # s16 packed
        ("s32.mka", "pcm_s32le", "matroska", None, None),  # s32 packed
        ("u8.mka", "pcm_u8", "matroska", None, None),  # u8 packed, offset binary
        ("f32.mka", "pcm_f32le", "matroska", None, None),  # flt packed
        ("f64.mov", "pcm_f64le", "mov", None, None),  # dbl packed
        ("alac16.m4a", "alac", "mp4", "s16p", None),  # s16 planar
        ("alac24.m4a", "alac", "mp4", "s32p", 24),  # s32 planar, 24-bit
    ],
)
def test_pyav_sample_formats_decode_exactly(tmp_path, name, codec, container, sample_format, bits):
    """Containers libsndfile cannot open go through PyAV; every ffmpeg sample format, packed or
    planar, must land on the same [-1, 1] scale."""
    path = tmp_path / name
    data = tones(SECONDS, 44100, channels=2)
    expected = write_pyav(path, data, 44100, codec=codec, container=container,
                          sample_format=sample_format, bits=bits)
    out = load_audio(path, 44100)
    np.testing.assert_allclose(out, expected.mean(axis=1), rtol=0, atol=FLOAT32_EXACT)


def test_same_pcm_through_both_backends_is_identical(tmp_path):
    data = tones(SECONDS, 32000, channels=2)
    via_soundfile = load_audio(_write(tmp_path / "a.wav", data, 32000), 32000)
    write_pyav(tmp_path / "a.mka", data, 32000, codec="pcm_s16le", container="matroska")
    via_pyav = load_audio(tmp_path / "a.mka", 32000)
    np.testing.assert_array_equal(via_soundfile, via_pyav)


def _write(path: Path, data: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    write_array(path, data, rate, subtype)
    return path


# --------------------------------------------------------------------------------------------
# Channels -> mono
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 8])
def test_downmix_is_channel_mean(tmp_path, channels):
    path = tmp_path / f"c{channels}.wav"
    expected = write_tone(path, seconds=SECONDS, sample_rate=16000, channels=channels)
    out = load_audio(path, 16000)
    np.testing.assert_allclose(out, expected.mean(axis=1), rtol=0, atol=FLOAT32_EXACT)
    if channels > 1:  # the test only means something if the channels differ
        for c in range(channels):
            assert np.abs(out - expected[:, c]).max() > 0.01


@pytest.mark.parametrize("channels", [2, 8])
def test_downmix_through_pyav(tmp_path, channels):
    path = tmp_path / f"c{channels}.mka"
    expected = write_pyav(path, tones(SECONDS, 16000, channels), 16000, codec="pcm_s16le",
                          container="matroska")
    np.testing.assert_allclose(load_audio(path, 16000), expected.mean(axis=1), rtol=0,
                               atol=FLOAT32_EXACT)


def test_eight_channel_aac(tmp_path):
    """7.1 AAC decodes to planar frames with 8 channels, which PyAV 18 cannot read directly
    (AudioFrame.planes overruns; the process segfaults). audio.py re-packs them first."""
    path = tmp_path / "c8.m4a"
    expected = write_m4a(path, seconds=SECONDS, sample_rate=48000, channels=8)
    corr, _ = aligned_correlation(load_audio(path, 48000), expected.mean(axis=1))
    assert corr > 0.9


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig_rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("target_rate", [24000, 16000])
def test_resampled_tone_matches_analytic_tone(tmp_path, orig_rate, target_rate):
    """soxr HQ must give the tone sampled directly at the target rate: same length (to one
    sample), same 440 Hz peak, same samples away from the edges."""
    seconds = 1.0
    path = _write(tmp_path / "tone.wav", sine(seconds, orig_rate)[:, None], orig_rate, "FLOAT")
    out = load_audio(path, target_rate)
    n_in = round(seconds * orig_rate)
    assert abs(len(out) - round(n_in * target_rate / orig_rate)) <= 1
    assert peak_frequency(out, target_rate) == pytest.approx(440.0, abs=0.5)
    reference = sine_at(np.arange(len(out)) / target_rate, seconds)
    edge = target_rate // 20
    np.testing.assert_allclose(out[edge:-edge], reference[edge:-edge], rtol=0, atol=2e-4)


def test_resample_function():
    x = sine(0.5, 44100).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 44100, 44100), x)
    y = resample(x, 44100, 24000)
    assert y.dtype == np.float32 and len(y) == 12000
    stereo = np.stack([x, -x], axis=1)
    y2 = resample(stereo, 44100, 24000)
    assert y2.shape == (12000, 2)
    np.testing.assert_allclose(y2[:, 0], y, atol=1e-6)
    np.testing.assert_allclose(y2[:, 1], -y, atol=1e-6)
    with pytest.raises(ValueError, match="orig_rate"):
        resample(x, 0, 16000)
    with pytest.raises(ValueError, match="1-D"):
        resample(np.zeros((2, 2, 2)), 16000, 8000)


# --------------------------------------------------------------------------------------------
# Lossy formats
# --------------------------------------------------------------------------------------------


def _lossy_ok(out: np.ndarray, expected: np.ndarray, rate: int) -> None:
    corr, lag = aligned_correlation(out, expected.mean(axis=1))
    assert corr > 0.9, (corr, lag)
    # Both channels' tones are present in the mono mix, at their own frequencies.
    assert peak_frequency(out, rate) == pytest.approx(440.0, abs=2.0)


@pytest.mark.parametrize(
    "name, writer",
    [
        ("tone.ogg", lambda p: write_tone(p, sample_rate=44100, subtype="VORBIS")),
        ("tone.opus", lambda p: write_tone(p, sample_rate=48000, subtype="OPUS", format="OGG")),
        ("tone.mp3", lambda p: write_mp3(p, sample_rate=44100)),
        ("tone.m4a", lambda p: write_m4a(p, sample_rate=44100)),
        ("tone.webm", lambda p: write_pyav(p, tones(1.0, 48000, 2), 48000, codec="libopus",
                                           container="webm")),
        ("video.mp4", lambda p: write_pyav(p, tones(1.0, 44100, 2), 44100, codec="aac",
                                           with_video=True)),
    ],
)
def test_lossy_formats(tmp_path, name, writer):
    path = tmp_path / name
    expected = writer(path)
    rate = sf.info(path).samplerate if name.endswith((".ogg", ".opus", ".mp3")) else None
    rate = rate or audio_info(path).sample_rate
    _lossy_ok(load_audio(path, rate), expected, rate)


def test_m4a_resampled_to_model_rate(tmp_path):
    path = tmp_path / "tone.m4a"
    expected = write_m4a(path, sample_rate=44100, channels=1)
    out = load_audio(path, 24000)
    reference = resample(expected[:, 0].astype(np.float32), 44100, 24000)
    corr, _ = aligned_correlation(out, reference)
    assert corr > 0.9
    assert peak_frequency(out, 24000) == pytest.approx(440.0, abs=2.0)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def test_normalize_waveform_matches_formula():
    x = (0.3 * sine(0.25, 16000) + 0.1).astype(np.float32)
    got = normalize_waveform(x)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert abs(float(got.mean())) < 1e-5 and float(got.std()) == pytest.approx(1.0, abs=1e-4)
    # A constant signal has zero variance: the epsilon keeps it finite (all zeros).
    np.testing.assert_array_equal(normalize_waveform(np.full(10, 0.5, np.float32)), 0.0)
    with pytest.raises(ValueError):
        normalize_waveform(np.zeros((2, 3), np.float32))


def test_normalize_waveform_matches_wav2vec2_feature_extractor():
    transformers = pytest.importorskip("transformers")
    x = (0.3 * sine(0.25, 16000) + 0.05 * np.random.default_rng(0).standard_normal(4000)
         ).astype(np.float32)
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=True,
    )
    reference = extractor(x, sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(normalize_waveform(x), reference, rtol=0, atol=1e-6)


def test_load_audio_normalize_flag(tmp_path):
    path = tmp_path / "tone.wav"
    write_tone(path, seconds=SECONDS, sample_rate=44100)
    np.testing.assert_array_equal(
        load_audio(path, 24000, normalize=True), normalize_waveform(load_audio(path, 24000))
    )


# --------------------------------------------------------------------------------------------
# Bytes input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, writer",
    [
        ("a.wav", lambda p: write_tone(p, seconds=SECONDS)),
        ("a.flac", lambda p: write_tone(p, seconds=SECONDS)),
        ("a.mp3", lambda p: write_mp3(p, seconds=SECONDS)),
        ("a.m4a", lambda p: write_m4a(p, seconds=SECONDS)),
    ],
)
def test_bytes_input_matches_path(tmp_path, name, writer):
    path = tmp_path / name
    writer(path)
    from_bytes = load_audio(path.read_bytes(), 16000)
    np.testing.assert_array_equal(from_bytes, load_audio(path, 16000))
    info = audio_info(path.read_bytes())
    assert info.path == "<bytes>" and info.sample_rate == 44100 and info.channels == 2


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, writer, target",
    [
        ("s.wav", lambda p: write_tone(p, seconds=2.0, sample_rate=44100, channels=3), 24000),
        ("s.flac", lambda p: write_tone(p, seconds=2.0, sample_rate=22050), 16000),
        ("s.m4a", lambda p: write_m4a(p, seconds=2.0, sample_rate=48000), 24000),
        ("same_rate.wav", lambda p: write_tone(p, seconds=2.0, sample_rate=24000), 24000),
    ],
)
def test_stream_matches_load(tmp_path, name, writer, target):
    path = tmp_path / name
    writer(path)
    blocks = list(stream_audio(path, target, block_seconds=0.3))
    assert len(blocks) > 3
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    streamed = np.concatenate(blocks)
    whole = load_audio(path, target)
    assert abs(len(streamed) - len(whole)) <= 1
    n = min(len(streamed), len(whole))
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-4


def test_stream_block_size(tmp_path):
    path = tmp_path / "s.wav"
    write_tone(path, seconds=2.0, sample_rate=16000, channels=1)
    blocks = list(stream_audio(path, 16000, block_seconds=0.5))
    assert [len(b) for b in blocks] == [8000, 8000, 8000, 8000]


# --------------------------------------------------------------------------------------------
# audio_info
# --------------------------------------------------------------------------------------------


def test_audio_info_soundfile(tmp_path):
    path = tmp_path / "i.flac"
    write_tone(path, seconds=1.5, sample_rate=22050, channels=3)
    assert audio_info(path) == AudioInfo(str(path), 22050, 3, 33075, 1.5)


def test_audio_info_pyav(tmp_path):
    path = tmp_path / "i.m4a"
    write_m4a(path, seconds=1.0, sample_rate=48000, channels=2)
    info = audio_info(path)
    assert (info.path, info.sample_rate, info.channels, info.frames) == (str(path), 48000, 2, None)
    assert info.duration == pytest.approx(1.0, abs=0.1)


# --------------------------------------------------------------------------------------------
# Errors: every one is an AudioError naming the input
# --------------------------------------------------------------------------------------------


def _good_files(tmp_path: Path) -> dict[str, Path]:
    files = {"wav": tmp_path / "good.wav", "flac": tmp_path / "good.flac",
             "ogg": tmp_path / "good.ogg", "m4a": tmp_path / "good.m4a"}
    write_tone(files["wav"], seconds=SECONDS)
    write_tone(files["flac"], seconds=SECONDS)
    write_tone(files["ogg"], seconds=SECONDS, subtype="VORBIS")
    write_m4a(files["m4a"], seconds=SECONDS)
    return files


def _broken(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Make one broken input; returns (path, a phrase the message must contain)."""
    good = _good_files(tmp_path)
    path = tmp_path / f"broken_{case}"
    if case == "missing.wav":
        return path, "not found"
    if case == "empty.wav":
        path.write_bytes(b"")
        return path, "empty"
    if case == "directory.wav":
        path.mkdir()
        return path, "not a regular file"
    if case in ("text.wav", "text.mp3", "text.m4a"):
        write_text(path)
        return path, "not a readable audio file"
    if case == "header_only.wav":
        truncate(good["wav"], path, 30)
        return path, "not a readable audio file"
    if case == "truncated.flac":
        truncate(good["flac"], path, good["flac"].stat().st_size // 2)
        return path, "corrupt"
    if case == "truncated.ogg":
        truncate(good["ogg"], path, good["ogg"].stat().st_size // 2)
        return path, "malformed"
    if case == "truncated.m4a":
        truncate(good["m4a"], path, good["m4a"].stat().st_size // 2)
        return path, "not a readable audio file"
    if case == "corrupt.flac":
        corrupt(good["flac"], path, start=2000, length=600)
        return path, "corrupt"
    if case == "no_samples.wav":
        sf.write(path, np.zeros((0, 2), np.float32), 16000, format="WAV")
        return path, "no audio samples"
    if case == "nan.wav":
        data = sine(SECONDS, 16000)
        data[100] = np.nan
        _write(path, data[:, None], 16000, "FLOAT")
        return path, "contains NaN samples"
    if case == "inf.wav":
        data = sine(SECONDS, 16000)
        data[-5] = -np.inf
        _write(path, data[:, None], 16000, "DOUBLE")
        return path, "contains Inf samples"
    if case == "video_only.mp4":
        write_video_only(path)
        return path, "no audio stream"
    raise AssertionError(case)


ERROR_CASES = [
    "missing.wav", "empty.wav", "directory.wav", "text.wav", "text.mp3", "text.m4a",
    "header_only.wav", "truncated.flac", "truncated.ogg", "truncated.m4a", "corrupt.flac",
    "no_samples.wav", "nan.wav", "inf.wav", "video_only.mp4",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_load_audio_errors(tmp_path, case):
    path, phrase = _broken(tmp_path, case)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert str(path) in message
    assert phrase in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", ERROR_CASES)
def test_stream_audio_errors(tmp_path, case):
    path, phrase = _broken(tmp_path, case)
    with pytest.raises(AudioError) as info:
        for _ in stream_audio(path, 16000):
            pass
    assert str(path) in str(info.value) and phrase in str(info.value)


def test_unreadable_format_names_both_backends(tmp_path):
    path = tmp_path / "text.wav"
    write_text(path)
    with pytest.raises(AudioError, match=r"soundfile: .+; PyAV: .+"):
        load_audio(path, 16000)


@pytest.mark.parametrize("case", ["text.wav", "truncated.m4a", "nan.wav", "empty.wav"])
def test_bytes_errors_name_bytes(tmp_path, case):
    path, phrase = _broken(tmp_path, case)
    with pytest.raises(AudioError, match="<bytes>") as info:
        load_audio(path.read_bytes(), 16000)
    assert phrase in str(info.value)


def test_bad_arguments(tmp_path):
    path = tmp_path / "a.wav"
    write_tone(path, seconds=SECONDS)
    for bad_rate in (0, -16000, 16000.0, True):
        with pytest.raises(AudioError, match="sample_rate"):
            load_audio(path, bad_rate)
    with pytest.raises(AudioError, match="block_seconds"):
        stream_audio(path, 16000, block_seconds=0)
    with pytest.raises(TypeError):
        load_audio(12345, 16000)


def test_stream_audio_reports_missing_file_before_iterating(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        stream_audio(tmp_path / "nope.flac", 16000)


def test_module_does_not_import_torch():
    code = "import sys, mertkit.audio; sys.exit('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_mp3_decodes_identically_whole_and_streamed(tmp_path):
    """libsndfile's MPEG reader gives wrong samples when read in blocks; mp3 must not depend
    on the block size (we route it to ffmpeg, whose output matches libsndfile's whole read)."""
    path = tmp_path / "long.mp3"
    write_mp3(path, seconds=30.0, sample_rate=44100, channels=2)
    whole, rate = sf.read(path, dtype="float32", always_2d=True)
    reference = resample(whole.mean(axis=1).astype(np.float32), rate, 24000)
    loaded = load_audio(path, 24000)
    streamed = np.concatenate(list(stream_audio(path, 24000, block_seconds=0.5)))
    assert len(loaded) == len(reference) == len(streamed)
    assert np.abs(loaded - reference).max() < 1e-4
    assert np.abs(streamed - reference).max() < 1e-4
