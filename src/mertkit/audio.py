"""Audio input: decode any audio file (or bytes) to a mono float32 waveform at the model rate.

Decoding is a dispatch between two back ends, decided by what libsndfile says when it opens
the input:

* soundfile (libsndfile) reads the formats it has a reader for: wav, flac, ogg/vorbis/opus,
  mp3, aiff, ... Integer PCM comes back as float32 in [-1, 1).
* PyAV (ffmpeg) reads the rest: m4a/aac, webm, matroska, wma, video containers with an audio
  stream, ... Every ffmpeg sample format is converted to float32 with the same scaling.

libsndfile refusing to *open* the input (other than for an OS error or a file it says is
malformed) means it has no reader for that content, so PyAV gets it. When PyAV fails too, the
error names the input and both reasons. Failures after a back end accepted the input (a flac
frame that lost sync, a truncated stream) are reported as they are; the other back end is not
asked to paper over a broken file.

Channels are averaged to mono and the rate is converted with soxr (quality "HQ").
`stream_audio` does the same in blocks with `soxr.ResampleStream`, so long tracks are never
held in memory at the input rate. This module must not import torch: light worker processes
use it.
"""
from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import av
import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "normalize_waveform",
    "resample",
    "stream_audio",
]

AudioSource = Union[str, os.PathLike, bytes]

BYTES_NAME = "<bytes>"
RESAMPLE_QUALITY = "HQ"
# Wav2Vec2FeatureExtractor's epsilon in zero_mean_unit_var_norm.
NORMALIZE_EPS = 1e-7
# Frames read per block when loading a whole file: bounds the multichannel copy before downmix.
LOAD_BLOCK_SECONDS = 30.0

# libsndfile's public open errors that mean "this is a format I read, and it failed":
# an OS error, or a file it recognised but found malformed. Any other open error means it
# has no reader for this content, which is PyAV's job.
_SF_ERR_SYSTEM = 2
_SF_ERR_MALFORMED_FILE = 3
_SOUNDFILE_OWN_FAILURES = frozenset({_SF_ERR_SYSTEM, _SF_ERR_MALFORMED_FILE})
# Formats libsndfile opens but cannot read block by block correctly: decoded by PyAV.
_SOUNDFILE_BLOCK_UNSAFE = frozenset({"MP3"})

# ffmpeg integer sample formats (packed names) -> (offset, full scale), so that
# float = (int - offset) / scale lands in [-1, 1) exactly like libsndfile's conversion.
_PYAV_INTEGER_FORMATS = {
    "u8": (128.0, 128.0),
    "s16": (0.0, 2.0**15),
    "s32": (0.0, 2.0**31),
    "s64": (0.0, 2.0**63),
}
_PYAV_FLOAT_FORMATS = frozenset({"flt", "dbl"})


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the file (or "<bytes>")."""


@dataclass(frozen=True)
class AudioInfo:
    """What an audio input holds, read from its header without decoding the samples.

    `frames` is the sample count per channel when the format records it exactly (the formats
    libsndfile reads), else None. `duration` is in seconds, None when the container does not say.
    """

    path: str
    sample_rate: int
    channels: int
    frames: int | None
    duration: float | None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_audio(source: AudioSource, sample_rate: int, *, normalize: bool = False) -> np.ndarray:
    """Decode any audio file (or in-memory bytes) to a mono float32 1-D array at `sample_rate`.

    With `normalize=True` the result is also zero-mean, unit-variance per clip, as the
    checkpoints' preprocessor (`do_normalize`) does.
    """
    name = _source_name(source)
    _check_target_rate(sample_rate, name)
    _check_source(source, name)
    rate = None
    pieces = []
    for block_rate, block in _decoded_blocks(source, name, LOAD_BLOCK_SECONDS):
        rate = block_rate
        pieces.append(_downmix(block))
    mono = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    _check_samples(mono, name)
    _check_has_samples(mono.size, name)
    out = resample(mono, rate, sample_rate)
    return normalize_waveform(out) if normalize else out


def stream_audio(
    source: AudioSource, sample_rate: int, *, block_seconds: float = 30.0
) -> Iterator[np.ndarray]:
    """Decode, downmix and resample in blocks of about `block_seconds` of input.

    The blocks concatenate to what `load_audio` returns (the same soxr filter, run as a
    stream). Missing or empty files raise here; decoding errors raise while iterating.
    """
    name = _source_name(source)
    _check_target_rate(sample_rate, name)
    if not (isinstance(block_seconds, numbers.Real) and block_seconds > 0):
        raise AudioError(f"{name}: block_seconds must be a positive number, got {block_seconds!r}")
    _check_source(source, name)
    return _stream_resampled(source, name, sample_rate, float(block_seconds))


def normalize_waveform(x: np.ndarray) -> np.ndarray:
    """Wav2Vec2FeatureExtractor's do_normalize: (x - mean) / sqrt(var + 1e-7), in float32.

    The arithmetic is done in float32 like the reference feature extractor, so the
    checkpoints see exactly the input they were published with.
    """
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"normalize_waveform needs a non-empty 1-D waveform, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    return ((x - x.mean()) / np.sqrt(x.var() + NORMALIZE_EPS)).astype(np.float32, copy=False)


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D waveform (or a (frames, channels) array) with soxr, quality "HQ".

    Returns float32; when the rates are equal the samples are returned unchanged.
    """
    _check_rate_value(orig_rate, "orig_rate")
    _check_rate_value(target_rate, "target_rate")
    x = np.asarray(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"resample needs a 1-D or (frames, channels) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if orig_rate == target_rate:
        return x
    return soxr.resample(x, int(orig_rate), int(target_rate), quality=RESAMPLE_QUALITY)


def audio_info(source: AudioSource) -> AudioInfo:
    """Read rate, channel count, length and duration from the header of an audio input."""
    name = _source_name(source)
    _check_source(source, name)
    with ExitStack() as stack:
        opened = _open_input(source, name, stack)
        if isinstance(opened, sf.SoundFile):
            return AudioInfo(
                path=name,
                sample_rate=int(opened.samplerate),
                channels=int(opened.channels),
                frames=int(opened.frames),
                duration=opened.frames / opened.samplerate,
            )
        container, stream = opened
        return AudioInfo(
            path=name,
            sample_rate=int(stream.codec_context.sample_rate),
            channels=int(len(stream.codec_context.layout.channels)),
            frames=None,
            duration=_pyav_duration(container, stream),
        )


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _source_name(source: AudioSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BYTES_NAME
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    raise TypeError(f"audio source must be a path or bytes, got {type(source).__name__}")


def _check_source(source: AudioSource, name: str) -> None:
    """Reject what neither back end should be asked about: missing, non-regular, empty files."""
    if name == BYTES_NAME:
        if len(source) == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        return
    path = Path(name)
    if not path.exists():
        raise AudioError(f"{name}: file not found")
    if not path.is_file():
        raise AudioError(f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")


def _check_rate_value(rate: int, what: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{what} must be a positive integer, got {rate!r}")


def _check_target_rate(sample_rate: int, name: str) -> None:
    try:
        _check_rate_value(sample_rate, "sample_rate")
    except ValueError as err:
        raise AudioError(f"{name}: {err}") from None


def _check_samples(samples: np.ndarray, name: str) -> None:
    """NaN or Inf would spread through the resampling filter and the model: refuse them."""
    if np.isnan(samples).any():
        raise AudioError(f"{name}: contains NaN samples")
    if np.isinf(samples).any():
        raise AudioError(f"{name}: contains Inf samples")


def _check_has_samples(count: int, name: str) -> None:
    if count == 0:
        raise AudioError(f"{name}: contains no audio samples")


# --------------------------------------------------------------------------------------------
# Back-end dispatch
# --------------------------------------------------------------------------------------------


def _open_input(source: AudioSource, name: str, stack: ExitStack):
    """Open with soundfile, or with PyAV when libsndfile has no reader for the content.

    Returns an open `sf.SoundFile`, or `(container, audio_stream)` from PyAV; both are
    registered on `stack` for closing.
    """
    try:
        handle = sf.SoundFile(_readable(source))
    except sf.LibsndfileError as sf_err:
        if sf_err.code in _SOUNDFILE_OWN_FAILURES:
            reason = sf_err.error_string
            raise AudioError(f"{name}: cannot read audio (soundfile: {reason})") from None
        soundfile_reason = sf_err.error_string
    else:
        if handle.format not in _SOUNDFILE_BLOCK_UNSAFE:
            return stack.enter_context(handle)
        # libsndfile's MPEG reader returns wrong samples when a file is read in blocks (up to
        # 0.6 off on a plain tone, seen with libsndfile 1.2): mp3 goes to ffmpeg instead.
        handle.close()
        soundfile_reason = "mp3 is read by PyAV"
    try:
        container = stack.enter_context(
            av.open(_readable(source), mode="r", metadata_errors="replace")
        )
    except av.error.FFmpegError as av_err:
        raise AudioError(
            f"{name}: not a readable audio file "
            f"(soundfile: {soundfile_reason}; PyAV: {_pyav_reason(av_err)})"
        ) from None
    if not container.streams.audio:
        raise AudioError(f"{name}: the container has no audio stream")
    return container, container.streams.audio[0]


def _readable(source: AudioSource):
    """A fresh handle for one back end: the path itself, or a new in-memory file for bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return os.fspath(source)


def _pyav_reason(err: av.error.FFmpegError) -> str:
    return err.strerror or str(err)


def _decoded_blocks(
    source: AudioSource, name: str, block_seconds: float
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (sample_rate, float32 (frames, channels) block) over the whole input."""
    with ExitStack() as stack:
        opened = _open_input(source, name, stack)
        if isinstance(opened, sf.SoundFile):
            yield from _soundfile_blocks(opened, name, block_seconds)
        else:
            yield from _pyav_blocks(*opened, name=name, block_seconds=block_seconds)


def _soundfile_blocks(
    handle: sf.SoundFile, name: str, block_seconds: float
) -> Iterator[tuple[int, np.ndarray]]:
    rate = int(handle.samplerate)
    block_frames = _block_frames(block_seconds, rate)
    try:
        for block in handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
            yield rate, block
    except sf.LibsndfileError as err:
        raise AudioError(f"{name}: corrupt audio data (soundfile: {err.error_string})") from None


def _pyav_blocks(container, stream, *, name: str, block_seconds: float):
    """Decode one audio stream, gathering ffmpeg's small frames into blocks of about
    `block_seconds`. The block size is fixed from the first frame's rate (ffmpeg may not know
    the rate before decoding)."""
    rate = None
    block_frames = 0
    pending: list[np.ndarray] = []
    pending_frames = 0
    for frame_rate, samples in _pyav_frames(container, stream, name):
        if rate is None:
            rate = frame_rate
            block_frames = _block_frames(block_seconds, rate)
        elif frame_rate != rate:
            raise AudioError(
                f"{name}: sample rate changes mid-stream ({rate} Hz -> {frame_rate} Hz)"
            )
        pending.append(samples)
        pending_frames += samples.shape[0]
        if pending_frames >= block_frames:
            yield rate, _join_blocks(pending)
            pending, pending_frames = [], 0
    if pending:
        yield rate, _join_blocks(pending)


def _pyav_frames(container, stream, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """(sample_rate, float32 (samples, channels)) for every decoded frame, in order."""
    packer = _PlanarToPacked()
    try:
        for frame in container.decode(stream):
            for packed in packer.push(frame):
                yield packed.sample_rate, _packed_frame_to_float32(packed, name)
        for packed in packer.flush():
            yield packed.sample_rate, _packed_frame_to_float32(packed, name)
    except av.error.FFmpegError as err:
        raise AudioError(f"{name}: corrupt audio data (PyAV: {_pyav_reason(err)})") from None


class _PlanarToPacked:
    """Re-lays planar frames out as packed ones with ffmpeg (same rate, layout and sample
    type, so the values are untouched).

    Why not read planar frames directly: PyAV's `AudioFrame.planes` (used by `to_ndarray`)
    counts planes until a NULL pointer, which does not exist from 8 channels on; with PyAV 18
    a 7.1 planar frame (any 7.1 AAC or Vorbis stream) crashes the interpreter. A packed frame
    has exactly one plane.
    """

    def __init__(self) -> None:
        self._resampler = None
        self._signature = None

    def push(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        if not frame.format.is_planar:
            return [*self.flush(), frame]
        signature = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = []
        if signature != self._signature:
            out = self.flush()
            self._signature = signature
            self._resampler = av.AudioResampler(
                format=frame.format.packed, layout=frame.layout, rate=frame.sample_rate
            )
        out.extend(self._resampler.resample(frame))
        return out

    def flush(self) -> list[av.AudioFrame]:
        if self._resampler is None:
            return []
        rest = list(self._resampler.resample(None))
        self._resampler, self._signature = None, None
        return rest


def _join_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    """Concatenate along time; channel counts may differ between ffmpeg frames, so each block
    is downmixed first in that case."""
    channels = {block.shape[1] for block in blocks}
    if len(channels) > 1:
        blocks = [_downmix(block)[:, None] for block in blocks]
    return np.concatenate(blocks, axis=0)


def _packed_frame_to_float32(frame: av.AudioFrame, name: str) -> np.ndarray:
    """One packed ffmpeg frame as float32 (samples, channels) in the [-1, 1] scale.

    `to_ndarray` gives packed frames as (1, samples * channels), interleaved.
    """
    channels = len(frame.layout.channels)
    array = frame.to_ndarray().reshape(-1, channels)
    kind = frame.format.name
    if kind in _PYAV_FLOAT_FORMATS:
        return array.astype(np.float32, copy=False)
    if kind in _PYAV_INTEGER_FORMATS:
        offset, scale = _PYAV_INTEGER_FORMATS[kind]
        wide = array.astype(np.float64)
        return ((wide - offset) / scale).astype(np.float32)
    raise AudioError(f"{name}: unsupported decoded sample format {frame.format.name!r}")


def _pyav_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------------------------
# Downmix and streaming resample
# --------------------------------------------------------------------------------------------


def _block_frames(block_seconds: float, rate: int) -> int:
    return max(1, math.ceil(block_seconds * rate))


def _downmix(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by the mean over channels, in float32."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0], dtype=np.float32)
    return block.mean(axis=1, dtype=np.float64).astype(np.float32)


def _stream_resampled(
    source: AudioSource, name: str, sample_rate: int, block_seconds: float
) -> Iterator[np.ndarray]:
    resampler = None
    total = 0
    for rate, block in _decoded_blocks(source, name, block_seconds):
        mono = _downmix(block)
        _check_samples(mono, name)
        total += mono.size
        if rate == sample_rate:
            yield mono
            continue
        if resampler is None:
            resampler = soxr.ResampleStream(
                rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        out = resampler.resample_chunk(mono)
        if out.size:
            yield out
    _check_has_samples(total, name)
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail
