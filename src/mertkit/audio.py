"""Audio input: find audio files, decode any of them (or bytes) to a mono float32 waveform at the
model rate, check and normalise waveforms. The one place for each of these jobs.

Decoding is a dispatch between two back ends, decided by what libsndfile says when it opens
the input:

* soundfile (libsndfile) reads the formats it has a reader for: wav, flac, ogg/vorbis/opus,
  aiff, ... Integer PCM comes back as float32 in [-1, 1).
* PyAV (ffmpeg) reads the rest, and mp3: m4a/aac, webm, matroska, wma, video containers with
  an audio stream, ... Every ffmpeg sample format is converted to float32 with the same scaling.

libsndfile refusing to *open* the input (other than for a file it says is malformed) means it
has no reader for that content, so PyAV gets it. When PyAV fails too, the error names the
input and both reasons. Failures after a back end accepted the input are reported as they
are; the other back end is not asked to paper over a broken file.

Every problem with one input is an `AudioError` whose message is one line naming the input:
missing, unreadable (permission denied), not a regular file (FIFOs, devices and sockets are
refused from `os.stat` and never opened), empty, not audio, corrupt, truncated (fewer samples
decoded than the container declares: "truncated: 1.6 of 4.0 s decoded"), longer than the
duration limit (refused from the header, before decoding), or an absurd sample rate. Files are
opened by Python and handed to the back ends as file objects, so any file name the OS accepts
works (libsndfile encodes path strings strictly).

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
import stat
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import av
import numpy as np
import soundfile as sf
import soxr

from mertkit import audio_headers as headers
from mertkit.fileio import raise_pending_signal

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_MAX_DURATION",
    "AudioDiscovery",
    "AudioError",
    "AudioFile",
    "AudioInfo",
    "audio_info",
    "check_waveform",
    "discover_audio",
    "display_path",
    "load_audio",
    "normalize_waveform",
    "parse_max_duration",
    "resample",
    "stream_audio",
]

AudioSource = Union[str, os.PathLike, bytes]

# What a folder is searched for (case-insensitive). Files named directly are always tried.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".wma", ".aiff", ".aif",
    ".webm", ".mka",
})
BYTES_NAME = "<bytes>"
RESAMPLE_QUALITY = "HQ"
# Wav2Vec2FeatureExtractor's epsilon in zero_mean_unit_var_norm.
NORMALIZE_EPS = 1e-7
# Frames read per block when loading a whole file: bounds the multichannel copy before downmix.
LOAD_BLOCK_SECONDS = 30.0
# Samples (frames x channels) per decoded block at most: 64 MB of float32, whatever the rate
# and channel count a header claims.
BLOCK_SAMPLE_LIMIT = 1 << 24
# Default longest input, in seconds. Four hours is longer than any album, concert or DJ set a
# catalogue holds, and bounds what one file can cost: load_audio at 24 kHz holds 1.4 GB, and a
# tiny file whose header claims a day at 1 Hz is refused before it is resampled.
DEFAULT_MAX_DURATION = 4 * 3600.0
# Source sample rates accepted. 1 kHz is far below any audio recording (telephony is 8 kHz);
# 768 kHz is the highest rate audio interfaces ship. Outside: a broken or hostile header.
MIN_SOURCE_RATE = 1_000
MAX_SOURCE_RATE = 768_000
# How far a lossy stream may decode short of its declared length without being called
# truncated: codec delay and padding, at most a couple of the longest frames (Opus 120 ms,
# AAC at 8 kHz 128 ms). Lossless formats declare exact sample counts and get no slack.
LOSSY_LENGTH_SLACK_SECONDS = 0.25

# libsndfile's open error for a file it recognised but found malformed: its own failure, not
# a format it has no reader for.
_SF_ERR_MALFORMED_FILE = 3
# Formats libsndfile opens that PyAV decodes: libsndfile's MPEG reader returns wrong samples
# when a file is read in blocks (up to 0.6 off on a plain tone, libsndfile 1.2), and its Ogg
# reader fills pages lost to corruption silently, where ffmpeg checks each page's CRC and
# drops a bad one, so the loss shows against the declared length.
_SOUNDFILE_HANDS_OVER = {"MP3": "mp3 is read by PyAV", "OGG": "ogg is read by PyAV"}
# ffmpeg demuxers whose duration is read from the file's header or index (never estimated
# from the bit rate): only these durations count as a declared length.
_PYAV_DECLARING_FORMATS = frozenset({"mov", "mp4", "m4a", "matroska", "webm", "asf"})

# ffmpeg integer sample formats (packed names) -> (offset, full scale), so that
# float = (int - offset) / scale lands in [-1, 1) exactly like libsndfile's conversion.
_PYAV_INTEGER_FORMATS = {
    "u8": (128.0, 128.0),
    "s16": (0.0, 2.0**15),
    "s32": (0.0, 2.0**31),
    "s64": (0.0, 2.0**63),
}
_PYAV_FLOAT_FORMATS = frozenset({"flt", "dbl"})
# numpy integer PCM -> (offset, full scale), the same convention for arrays handed to us.
_NUMPY_INTEGER_SCALES = {
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int8): (0.0, 2.0**7),
    np.dtype(np.int16): (0.0, 2.0**15),
    np.dtype(np.int32): (0.0, 2.0**31),
    np.dtype(np.int64): (0.0, 2.0**63),
}
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


class AudioError(ValueError):
    """One input that cannot be used; the one-line message names it (or "<bytes>")."""


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
# Public API: decoding
# --------------------------------------------------------------------------------------------


def load_audio(
    source: AudioSource, sample_rate: int, *, normalize: bool = False,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> np.ndarray:
    """Decode any audio file (or in-memory bytes) to a mono float32 1-D array at `sample_rate`.

    With `normalize=True` the result is also zero-mean, unit-variance per clip, as the
    checkpoints' preprocessor (`do_normalize`) does. Inputs longer than `max_duration` seconds
    (None: no limit) are refused, from the header when it says.
    """
    name = _source_name(source)
    _check_target_rate(sample_rate, name)
    rate = None
    pieces = []
    for block_rate, block in _decoded_blocks(source, name, LOAD_BLOCK_SECONDS, max_duration):
        rate = block_rate
        pieces.append(_downmix(block))
    mono = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    _check_samples(mono, name)
    _check_has_samples(mono.size, name)
    out = resample(mono, rate, sample_rate)
    return normalize_waveform(out) if normalize else out


def stream_audio(
    source: AudioSource, sample_rate: int, *, block_seconds: float = 30.0,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> Iterator[np.ndarray]:
    """Decode, downmix and resample in blocks of about `block_seconds` of input.

    The blocks concatenate to what `load_audio` returns (the same soxr filter, run as a
    stream). Missing, special or empty files raise here; decoding errors, truncation and the
    duration limit raise while iterating (a consumer must discard what it got for the input).
    """
    name = _source_name(source)
    _check_target_rate(sample_rate, name)
    if not (isinstance(block_seconds, numbers.Real) and block_seconds > 0):
        raise AudioError(f"{name}: block_seconds must be a positive number, got {block_seconds!r}")
    _check_max_duration(max_duration)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        _regular_file_stat(os.fspath(source), name)
    return _stream_resampled(source, name, sample_rate, float(block_seconds), max_duration)


def audio_info(source: AudioSource) -> AudioInfo:
    """Read rate, channel count, length and duration from the header of an audio input."""
    name = _source_name(source)
    with ExitStack() as stack:
        opened = _open_input(source, name, stack)
        exact = opened.sound is not None
        return AudioInfo(
            path=name, sample_rate=opened.rate, channels=opened.channels,
            frames=int(opened.sound.frames) if exact else None,
            duration=opened.sound.frames / opened.rate if exact else opened.header_seconds,
        )


def parse_max_duration(text: str | float | None) -> float | None:
    """A --max-duration value: seconds > 0, or 0 / "none" for no limit (None)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "none"):
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"expected seconds or 'none', got {text!r}") from None
    if seconds == 0:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a positive number of seconds or 'none', got {text!r}")
    return seconds


# --------------------------------------------------------------------------------------------
# Public API: waveforms in memory
# --------------------------------------------------------------------------------------------


def check_waveform(
    wave: np.ndarray, name: str = "waveform", *, ndim: int = 1, min_samples: int = 1
) -> np.ndarray:
    """A waveform as float32 in the [-1, 1] scale, or an AudioError naming `name`.

    `ndim` 1 is one mono clip [samples]; 2 is a batch of clips [n, samples]. Integer PCM
    (uint8, int8, int16, int32, int64) is scaled by its full range like a decoder does; float64
    is narrowed. Refused: another number of dimensions, non-numeric or complex data, fewer
    than `min_samples` samples per clip, NaN or Inf.
    """
    array = np.asarray(wave)
    if array.ndim != ndim:
        shape = "mono waveform [samples]" if ndim == 1 else "batch of mono waveforms [clips, samples]"
        raise AudioError(f"{name}: expected a {shape}, got shape {array.shape}")
    out = _as_float32(array, name)
    if array.shape[-1] < min_samples and (ndim == 1 or array.shape[0]):
        raise AudioError(f"{name}: {array.shape[-1]} samples, fewer than the {min_samples} needed")
    if not np.isfinite(out).all():
        raise AudioError(f"{name}: waveform contains NaN or Inf samples")
    return out


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


def _as_float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype in _NUMPY_INTEGER_SCALES:
        offset, scale = _NUMPY_INTEGER_SCALES[array.dtype]
        return ((array.astype(np.float64) - offset) / scale).astype(np.float32)
    if array.dtype.kind != "f":
        raise AudioError(f"{name}: expected float or integer PCM samples, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Public API: discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFile:
    """A file to decode: `path` as found, `relative` its `/`-separated name under its root
    (the bare file name for a file named directly)."""

    path: Path
    relative: str


@dataclass
class AudioDiscovery:
    """What `discover_audio` found: files to decode, and inputs refused with a one-line
    reason (special files, unlistable folders, missing inputs), never opened."""

    files: list[AudioFile] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def discover_audio(inputs: Iterable[str | os.PathLike], *, exclude: str | os.PathLike | None = None) -> AudioDiscovery:
    """The audio under `inputs`, by one set of rules for every command.

    A file named directly is always tried (any name). A folder is walked recursively, in
    sorted order, for files with an `AUDIO_EXTENSIONS` suffix; names starting with "." (hidden
    files and folders, editors' and our own temp files, macOS "._" resource forks) and the
    folder `exclude` (an output folder inside the input) are passed over. Directory symlinks
    are not followed. Anything that is not a regular file is rejected after `os.stat` alone.
    """
    found = AudioDiscovery()
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            _walk_folder(path, skip, found)
        else:
            _add_named_file(path, found)
    return found


def display_path(path: str | os.PathLike) -> str:
    """A path as printable text: bytes that are not UTF-8 shown as \\xNN escapes."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


def _add_named_file(path: Path, found: AudioDiscovery) -> None:
    try:
        _regular_file_stat(os.fspath(path), display_path(path))
    except AudioError as err:
        found.rejected.append((os.fspath(path), str(err)))
        return
    found.files.append(AudioFile(path, path.name))


def _walk_folder(root: Path, skip: Path | None, found: AudioDiscovery) -> None:
    def unlistable(err: OSError) -> None:
        where = err.filename if err.filename is not None else root
        found.rejected.append((os.fspath(where), f"{display_path(where)}: cannot list folder ({err.strerror})"))

    files = []
    for folder, dirs, names in os.walk(root, onerror=unlistable):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                files.append(here / name)
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        before = len(found.files)
        _add_named_file(path, found)
        if len(found.files) > before:
            found.files[-1] = AudioFile(path, path.relative_to(root).as_posix())


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _source_name(source: AudioSource) -> str:
    """The input's name for messages: printable even when the file name is not UTF-8."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BYTES_NAME
    if isinstance(source, (str, os.PathLike)):
        return display_path(source)
    raise TypeError(f"audio source must be a path or bytes, got {type(source).__name__}")


def _regular_file_stat(path: str, name: str) -> os.stat_result:
    """os.stat of a non-empty regular file, or the AudioError saying what it is instead."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AudioError(f"{name}: file not found") from None
    except OSError as err:
        raise AudioError(f"{name}: cannot read ({err.strerror or err})") from None
    for is_kind, kind in _FILE_KINDS:
        if is_kind(info.st_mode):
            raise AudioError(f"{name}: not a regular file ({kind}); skipped without reading")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(f"{name}: not a regular file; skipped without reading")
    if info.st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return info


def _open_file(path: str, name: str):
    """Open a regular file for reading; special files are refused before `open`, and
    O_NONBLOCK makes sure a FIFO swapped in after the check cannot block the open."""
    _regular_file_stat(path, name)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise AudioError(f"{name}: cannot read (permission denied)") from None
    except OSError as err:
        raise AudioError(f"{name}: cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AudioError(f"{name}: not a regular file; skipped without reading")
    return os.fdopen(fd, "rb")


def _check_rate_value(rate: int, what: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{what} must be a positive integer, got {rate!r}")


def _check_target_rate(sample_rate: int, name: str) -> None:
    try:
        _check_rate_value(sample_rate, "sample_rate")
    except ValueError as err:
        raise AudioError(f"{name}: {err}") from None


def _check_max_duration(max_duration: float | None) -> None:
    if max_duration is None:
        return
    if not (isinstance(max_duration, numbers.Real) and math.isfinite(max_duration) and max_duration > 0):
        raise ValueError(f"max_duration must be a positive number of seconds or None, got {max_duration!r}")


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


@dataclass
class _Opened:
    """One input opened by a back end, and what its container declares about its length."""

    name: str
    rate: int  # 0 when ffmpeg learns it only from the first decoded frame
    channels: int
    sound: sf.SoundFile | None = None
    container: object = None
    stream: object = None
    declared_frames: int | None = None  # at `rate`; None: the container does not say
    slack_frames: int = 0  # how far a complete decode may fall short of declared_frames
    unfinished: bool = False  # the container stops without its end-of-stream mark
    bytes_missing: bool = False  # the header declares more data than the file holds
    header_seconds: float | None = None  # length from the header (or ffmpeg's estimate)


def _open_input(source: AudioSource, name: str, stack: ExitStack) -> _Opened:
    """Open with soundfile, or with PyAV when libsndfile has no reader for the content.

    Everything opened is registered on `stack` for closing.
    """
    raw, src = _raw_input(source, name, stack)
    try:
        handle = sf.SoundFile(raw)
    except sf.LibsndfileError as sf_err:
        if sf_err.code == _SF_ERR_MALFORMED_FILE:
            raise AudioError(f"{name}: cannot read audio (soundfile: {sf_err.error_string})") from None
        soundfile_reason = sf_err.error_string
    else:
        if handle.format not in _SOUNDFILE_HANDS_OVER:
            return _soundfile_input(stack.enter_context(handle), name, src)
        handle.close()
        soundfile_reason = _SOUNDFILE_HANDS_OVER[handle.format]
    raw.seek(0)
    try:
        container = stack.enter_context(av.open(raw, mode="r", metadata_errors="replace"))
    except av.error.FFmpegError as av_err:
        if _ogg_unfinished(src):
            raise AudioError(f"{name}: truncated: the stream ends without its end-of-stream mark, before "
                             f"any audio could be decoded (PyAV: {_pyav_reason(av_err)})") from None
        raise AudioError(
            f"{name}: not a readable audio file "
            f"(soundfile: {soundfile_reason}; PyAV: {_pyav_reason(av_err)})"
        ) from None
    if not container.streams.audio:
        raise AudioError(f"{name}: the container has no audio stream")
    return _pyav_input(container, container.streams.audio[0], name, src)


def _raw_input(source: AudioSource, name: str, stack: ExitStack):
    """(binary file object, ByteSource) for the input; files are opened here, once, by Python."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise AudioError(f"{name}: empty input (0 bytes)")
        return io.BytesIO(data), headers.ByteSource(data=data)
    handle = stack.enter_context(_open_file(os.fspath(source), name))
    return handle, headers.ByteSource(fd=handle.fileno())


def _soundfile_input(handle: sf.SoundFile, name: str, src: headers.ByteSource) -> _Opened:
    rate, frames = int(handle.samplerate), int(handle.frames)
    opened = _Opened(name, rate, int(handle.channels), sound=handle, declared_frames=frames)
    if handle.format in ("WAV", "WAVEX", "RF64"):
        # libsndfile reports the frames present, not the frames the header declares.
        fraction = headers.wav_declared_fraction(src)
        if fraction is not None and fraction > 1:
            opened.declared_frames = math.ceil(frames * fraction)
            opened.bytes_missing = True
    elif handle.format == "AIFF":
        opened.declared_frames = max(frames, headers.aiff_declared_frames(src) or 0)
        opened.bytes_missing = opened.declared_frames > frames
    elif frames <= 0 or frames >= 2**62:  # a streamed FLAC header states no total
        opened.declared_frames = None
    if opened.declared_frames is not None and rate > 0:
        opened.header_seconds = opened.declared_frames / rate
    return opened


def _ogg_declared(opened: _Opened, src: headers.ByteSource) -> None:
    """An Ogg stream declares its length in the granule position of its last page, marked
    end-of-stream. A file cut short ends without that page (or inside a page)."""
    end = headers.ogg_end(src)
    if end is None:
        return
    opened.unfinished = not (end.complete and end.end_of_stream)
    preskip = headers.opus_preskip(src)
    total = end.granule if preskip is None else round((end.granule - preskip) * opened.rate / 48000)
    opened.declared_frames = total
    opened.slack_frames = round(LOSSY_LENGTH_SLACK_SECONDS * opened.rate)


def _ogg_unfinished(src: headers.ByteSource) -> bool:
    end = headers.ogg_end(src)
    return end is not None and not (end.complete and end.end_of_stream)


def _pyav_input(container, stream, name: str, src: headers.ByteSource) -> _Opened:
    codec = stream.codec_context
    rate = int(codec.sample_rate or 0)
    seconds = _pyav_duration(container, stream)
    opened = _Opened(name, rate, int(len(codec.layout.channels)), container=container, stream=stream,
                     header_seconds=seconds, slack_frames=round(LOSSY_LENGTH_SLACK_SECONDS * rate))
    formats = set(container.format.name.split(","))
    if "ogg" in formats:
        _ogg_declared(opened, src)
        return opened
    declares = bool(formats & _PYAV_DECLARING_FORMATS) or (
        "mp3" in formats and headers.mp3_has_length_header(src)
    )
    if declares and seconds is not None and rate > 0:
        opened.declared_frames = round(seconds * rate)
    return opened


def _pyav_reason(err: av.error.FFmpegError) -> str:
    return err.strerror or str(err)


def _pyav_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


# --------------------------------------------------------------------------------------------
# Bounds and completeness: checked before, during and after decoding
# --------------------------------------------------------------------------------------------


class _DecodeFailure(Exception):
    """A back end's error while decoding (module-internal; becomes an AudioError with the
    position reached)."""


def _check_bounds(opened: _Opened, max_duration: float | None) -> None:
    """Refuse, before any decoding, an input whose header says it is too long or whose
    sample rate is absurd."""
    seconds = opened.header_seconds
    if max_duration is not None and seconds is not None and seconds > max_duration:
        rate = f" at {opened.rate} Hz" if opened.rate else ""
        raise AudioError(f"{opened.name}: declares {seconds:.0f} s{rate}, over the {max_duration:g} s "
                         "limit (--max-duration)")
    if opened.rate:
        _check_source_rate(opened.rate, opened.name)


def _check_source_rate(rate: int, name: str) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is outside the supported "
                         f"{MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz")


def _check_running_length(decoded: int, rate: int, max_duration: float | None, name: str) -> None:
    """For inputs whose header did not say how long they are: stop at the limit."""
    if max_duration is not None and decoded > max_duration * rate:
        raise AudioError(f"{name}: longer than the {max_duration:g} s limit (--max-duration); "
                         f"stopped after decoding {decoded / rate:.0f} s")


def _check_complete(opened: _Opened, decoded: int, rate: int) -> None:
    """A decode that ends short of what the container declares is a truncated file."""
    if opened.unfinished:
        raise AudioError(f"{opened.name}: truncated: {decoded / rate:.1f} s decoded, then the stream "
                         "ends without its end-of-stream mark")
    declared = opened.declared_frames
    if declared is not None and rate == opened.rate and decoded < declared - opened.slack_frames:
        # Without missing bytes to show for it, a short decode is data the decoder dropped.
        what = "truncated" if opened.bytes_missing else "truncated or corrupt"
        raise AudioError(f"{opened.name}: {what}: {_progress(decoded, opened, rate)} decoded")


def _progress(decoded: int, opened: _Opened, rate: int) -> str:
    """"1.6 of 4.0 s" (samples when seconds would print equal; "1.6 s" when nothing is declared)."""
    declared = opened.declared_frames
    if declared is None or rate != opened.rate:
        return f"{decoded / rate:.1f} s"
    if f"{decoded / rate:.1f}" == f"{declared / rate:.1f}":
        return f"{decoded} of {declared} samples"
    return f"{decoded / rate:.1f} of {declared / rate:.1f} s"


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _decoded_blocks(
    source: AudioSource, name: str, block_seconds: float, max_duration: float | None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (sample_rate, float32 (frames, channels) block) over the whole input; raise
    AudioError for a corrupt, truncated or too long input.

    A signal whose exception soundfile's reader callback swallowed (see mertkit.fileio) makes
    a read come back short: it is raised again here, never reported as the file's fault."""
    try:
        yield from _decode(source, name, block_seconds, max_duration)
    except AudioError:
        raise_pending_signal()
        raise


def _decode(
    source: AudioSource, name: str, block_seconds: float, max_duration: float | None
) -> Iterator[tuple[int, np.ndarray]]:
    _check_max_duration(max_duration)
    with ExitStack() as stack:
        opened = _open_input(source, name, stack)
        _check_bounds(opened, max_duration)
        if opened.sound is not None:
            blocks = _soundfile_blocks(opened.sound, block_seconds)
        else:
            blocks = _pyav_blocks(opened.container, opened.stream, name=name, block_seconds=block_seconds)
        decoded, rate = 0, opened.rate
        try:
            for rate, block in blocks:
                raise_pending_signal()  # a swallowed signal may have cut this read short
                if decoded == 0 and not opened.rate:
                    _check_source_rate(rate, name)
                decoded += block.shape[0]
                _check_running_length(decoded, rate, max_duration, name)
                yield rate, block
        except _DecodeFailure as err:
            where = f" after {_progress(decoded, opened, rate)} decoded" if decoded else ""
            raise AudioError(f"{name}: corrupt audio data{where} ({err})") from None
        raise_pending_signal()  # ... or ended the stream early
        if rate:
            _check_complete(opened, decoded, rate)


def _soundfile_blocks(handle: sf.SoundFile, block_seconds: float) -> Iterator[tuple[int, np.ndarray]]:
    rate = int(handle.samplerate)
    block_frames = _block_frames(block_seconds, rate, int(handle.channels))
    try:
        for block in handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
            yield rate, block
    except sf.LibsndfileError as err:
        raise _DecodeFailure(f"soundfile: {err.error_string}") from None


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
            block_frames = _block_frames(block_seconds, rate, samples.shape[1])
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
        raise _DecodeFailure(f"PyAV: {_pyav_reason(err)}") from None


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


# --------------------------------------------------------------------------------------------
# Downmix and streaming resample
# --------------------------------------------------------------------------------------------


def _block_frames(block_seconds: float, rate: int, channels: int) -> int:
    frames = math.ceil(block_seconds * rate)
    return max(1, min(frames, BLOCK_SAMPLE_LIMIT // max(1, channels)))


def _downmix(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by the mean over channels, in float32."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0], dtype=np.float32)
    return block.mean(axis=1, dtype=np.float64).astype(np.float32)


def _stream_resampled(
    source: AudioSource, name: str, sample_rate: int, block_seconds: float, max_duration: float | None
) -> Iterator[np.ndarray]:
    resampler = None
    total = 0
    for rate, block in _decoded_blocks(source, name, block_seconds, max_duration):
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
