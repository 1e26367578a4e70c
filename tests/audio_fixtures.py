"""Synthetic audio for tests: tones written in many formats, plus the signals to compare with.

Every writer returns the float64 array (frames, channels) that a *lossless* decoder must give
back exactly: integer formats are quantised here, by this module, so the expectation does not
depend on how a library scales floats on the way in. For lossy codecs the returned array is
the source signal; compare with `aligned_correlation` or `peak_frequency`.

Import from tests with `from audio_fixtures import write_tone, ...` (tests/ is on sys.path).
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import soundfile as sf

# ffmpeg layout names by channel count (PyAV wants a name, not a count).
PYAV_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 6: "5.1", 8: "7.1"}

FADE_SECONDS = 0.01


def sine(
    seconds: float = 1.0,
    sample_rate: int = 44100,
    freq: float = 440.0,
    amplitude: float = 0.5,
    fade_seconds: float = FADE_SECONDS,
) -> np.ndarray:
    """A mono float64 sine with raised-cosine fades: abrupt ends make lossy codecs ring."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return sine_at(t, seconds, freq, amplitude, fade_seconds)


def sine_at(
    t: np.ndarray,
    seconds: float,
    freq: float = 440.0,
    amplitude: float = 0.5,
    fade_seconds: float = FADE_SECONDS,
) -> np.ndarray:
    """The same faded sine evaluated at arbitrary times `t` (seconds): the analytic reference
    for a resampled tone."""
    envelope = np.ones_like(t)
    if fade_seconds > 0:
        rise = np.clip(t / fade_seconds, 0.0, 1.0)
        fall = np.clip((seconds - t) / fade_seconds, 0.0, 1.0)
        envelope = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    return amplitude * envelope * np.sin(2 * np.pi * freq * t)


def channel_freqs(channels: int, freq: float = 440.0) -> list[float]:
    """Distinct, harmonically unrelated frequencies, so every channel has its own content."""
    return [freq * (1.0 + 0.37 * c) for c in range(channels)]


def tones(
    seconds: float = 1.0, sample_rate: int = 44100, channels: int = 2, freq: float = 440.0
) -> np.ndarray:
    """(frames, channels) float64: channel c is a sine at channel_freqs()[c], amplitude
    0.5 / (1 + c), so the channel mean differs from every single channel."""
    columns = [
        sine(seconds, sample_rate, f, amplitude=0.5 / (1 + c))
        for c, f in enumerate(channel_freqs(channels, freq))
    ]
    return np.stack(columns, axis=1)


def quantize(x: np.ndarray, sample_format: str) -> tuple[np.ndarray, np.ndarray]:
    """Float signal -> (array to hand to the writer, float64 array a decoder must return).

    `sample_format` is a soundfile subtype (PCM_16, PCM_24, PCM_32, PCM_U8, FLOAT, DOUBLE) or
    an ffmpeg packed sample format (s16, s32, s24-in-s32 as "s32_24", u8, flt, dbl).
    Integer decoders scale by 2**(bits-1) (libsndfile and ffmpeg's convention).
    """
    if sample_format in ("PCM_16", "s16"):
        ints = np.round(x * 32767).astype(np.int16)
        return ints, ints / 2.0**15
    if sample_format in ("PCM_24", "s32_24"):
        # 24-bit data carried in int32: the low byte must be zero to survive the round trip.
        ints = (np.round(x * (2**23 - 1)).astype(np.int32)) * 256
        return ints, ints / 2.0**31
    if sample_format in ("PCM_32", "s32"):
        ints = np.round(x * (2**31 - 1)).astype(np.int32)
        return ints, ints / 2.0**31
    if sample_format == "PCM_U8":
        # soundfile writes no uint8 arrays: int16 with a zero low byte maps to 8 bits exactly.
        steps = np.round(x * 127)
        return (steps * 256).astype(np.int16), steps / 128
    if sample_format == "u8":
        ints = (np.round(x * 127) + 128).astype(np.uint8)
        return ints, (ints.astype(np.float64) - 128) / 128
    if sample_format in ("FLOAT", "flt"):
        floats = x.astype(np.float32)
        return floats, floats.astype(np.float64)
    if sample_format in ("DOUBLE", "dbl"):
        return x.astype(np.float64), x.astype(np.float64)
    raise ValueError(f"no quantisation rule for {sample_format!r}")


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

_LOSSY_SOUNDFILE = {("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")}


def write_tone(
    path: str | os.PathLike,
    seconds: float = 1.0,
    sample_rate: int = 44100,
    channels: int = 2,
    subtype: str = "PCM_16",
    freq: float = 440.0,
    format: str | None = None,
) -> np.ndarray:
    """Write `tones(...)` with soundfile; returns (frames, channels) float64 to compare with.

    `format` defaults to what the extension says (WAV, FLAC, OGG, MP3, ...).
    """
    fmt = format or Path(path).suffix.lstrip(".").upper()
    data = tones(seconds, sample_rate, channels, freq)
    return write_array(path, data, sample_rate, subtype, fmt)


def write_array(
    path: str | os.PathLike,
    data: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_16",
    format: str | None = None,
) -> np.ndarray:
    """Write a float (frames, channels) or (frames,) array with soundfile; returns the float64
    (frames, channels) array a lossless decode must give back (the source for lossy subtypes)."""
    fmt = format or Path(path).suffix.lstrip(".").upper()
    data = data[:, None] if data.ndim == 1 else data
    if (fmt, subtype) in _LOSSY_SOUNDFILE:
        sf.write(path, data.astype(np.float32), sample_rate, subtype=subtype, format=fmt)
        return data.astype(np.float64)
    payload, expected = quantize(data, subtype)
    sf.write(path, payload, sample_rate, subtype=subtype, format=fmt)
    return expected


def write_mp3(
    path: str | os.PathLike,
    seconds: float = 1.0,
    sample_rate: int = 44100,
    channels: int = 2,
    freq: float = 440.0,
) -> np.ndarray:
    """An mp3 from libsndfile when it has an mp3 encoder, else from PyAV's libmp3lame."""
    data = tones(seconds, sample_rate, channels, freq)
    if sf.check_format("MP3", "MPEG_LAYER_III"):
        return write_array(path, data, sample_rate, "MPEG_LAYER_III", "MP3")
    return write_pyav(path, data, sample_rate, codec="libmp3lame", container="mp3")


def write_m4a(
    path: str | os.PathLike,
    seconds: float = 1.0,
    sample_rate: int = 44100,
    channels: int = 2,
    freq: float = 440.0,
    codec: str = "aac",
) -> np.ndarray:
    """AAC (or e.g. "alac") in an MP4/M4A container through PyAV."""
    data = tones(seconds, sample_rate, channels, freq)
    return write_pyav(path, data, sample_rate, codec=codec, container="mp4")


def write_pyav(
    path: str | os.PathLike,
    data: np.ndarray,
    sample_rate: int,
    codec: str = "aac",
    container: str | None = None,
    sample_format: str | None = None,
    bits: int | None = None,
    bit_rate: int | None = None,
    with_video: bool = False,
) -> np.ndarray:
    """Encode a float (frames, channels) array with PyAV. Returns the float64 array a lossless
    decode must give back (the source signal for lossy codecs).

    `sample_format` picks the encoder input format, an ffmpeg name such as "s16p" (default:
    the encoder's first choice); `bits=24` feeds s32 samples with a zero low byte, for codecs
    that store 24 bits (alac with s32p). `with_video` adds a tiny
    video stream before the audio one, to test picking the audio stream.
    """
    data = data[:, None] if data.ndim == 1 else data
    channels = data.shape[1]
    layout = PYAV_LAYOUTS[channels]
    with av.open(os.fspath(path), mode="w", format=container) as out:
        video = _add_video_stream(out) if with_video else None
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        fmt = av.AudioFormat(sample_format or stream.codec_context.format.name)
        stream.codec_context.format = fmt
        payload, expected = quantize(data, "s32_24" if bits == 24 else fmt.packed.name)
        # Always hand PyAV a packed frame (PyAV converts it to the encoder's planar format):
        # AudioFrame.from_ndarray cannot fill planar frames of 8 or more channels.
        frame = av.AudioFrame.from_ndarray(payload.reshape(1, -1), format=fmt.packed.name,
                                           layout=layout)
        frame.sample_rate = sample_rate
        if video is not None:
            _write_video_frames(out, video, count=2)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return expected


def _add_video_stream(out):
    video = out.add_stream("mpeg4", rate=10)
    video.width = 32
    video.height = 32
    video.pix_fmt = "yuv420p"
    return video


def _write_video_frames(out, video, count: int) -> None:
    for _ in range(count):
        image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in video.encode(image):
            out.mux(packet)
    for packet in video.encode(None):
        out.mux(packet)


def write_video_only(path: str | os.PathLike) -> None:
    """An MP4 with one tiny video stream and no audio stream."""
    with av.open(os.fspath(path), mode="w") as out:
        _write_video_frames(out, _add_video_stream(out), count=3)


def write_text(path: str | os.PathLike) -> None:
    """Plain text, typically saved under an audio extension."""
    Path(path).write_text("this is not audio, just some text\n" * 20)


def truncate(src: str | os.PathLike, dst: str | os.PathLike, keep_bytes: int) -> None:
    """Copy the first `keep_bytes` bytes of `src` to `dst` (negative: drop that many)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:keep_bytes])


def corrupt(src: str | os.PathLike, dst: str | os.PathLike, start: int, length: int,
            seed: int = 0) -> None:
    """Copy `src` to `dst` with `length` bytes from `start` overwritten by random bytes."""
    data = bytearray(Path(src).read_bytes())
    noise = np.random.default_rng(seed).integers(0, 256, size=length, dtype=np.uint8)
    data[start:start + length] = noise.tobytes()
    Path(dst).write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# Comparisons for lossy codecs
# --------------------------------------------------------------------------------------------


def peak_frequency(x: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak of a mono signal, Hann-windowed, refined
    by parabolic interpolation on the log magnitude."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2] + 1e-30)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * sample_rate / len(x)


def aligned_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 4096
                        ) -> tuple[float, int]:
    """Pearson correlation between `decoded` and `reference` after shifting `decoded` by the
    lag in [-max_lag, max_lag] that maximises their cross-correlation (codecs add priming
    delay). Returns (correlation, lag); lag > 0 means `decoded` starts late."""
    size = len(decoded) + len(reference)
    cross = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    values = np.concatenate([cross[:max_lag + 1], cross[size - max_lag:]])
    lag = int(lags[int(np.argmax(values))])
    a = decoded[lag:] if lag >= 0 else decoded
    b = reference if lag >= 0 else reference[-lag:]
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1]), lag
