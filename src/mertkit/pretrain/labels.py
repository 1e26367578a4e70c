"""Frame-aligned teacher labels for a corpus: written once, offline, read by pre-training.

Layout of a label directory `OUT/`:

* `OUT/codes/<relative audio path>.npy`: one file per audio file, int16 `[n_codebooks,
  frames]` (8 x ceil(samples / 320) for EnCodec 24 kHz at 6 kbps). The audio file's own
  extension stays in the name (`a/song.flac` -> `codes/a/song.flac.npy`) so `song.wav` and
  `song.flac` never collide. One file per track (rather than shards) keeps resuming,
  re-labelling one track and random access by path trivial; `.npy` loads with numpy alone.
* `OUT/manifest.jsonl`: one JSON object per audio file found in the input directory:
  `audio` (path relative to the input directory, `/`-separated), `status` ("ok" or
  "failed"), `error` (the reason when failed), `num_samples` (at the teacher's rate),
  `num_frames`, `labels` (path relative to OUT), `teacher`, `bandwidth`, `codebooks`,
  `codebook_size`, `sample_rate`, `hop_length`, and `audio_bytes` / `audio_mtime_ns` of the
  source file when it was labelled.

Frame rule: frame i covers samples [320 i, 320 (i+1)); a file of N samples has ceil(N/320)
frames, the last one possibly partial (EnCodec pads it). MERT's conv front-end gives
floor((N - 400)/320) + 1 frames, one fewer for most lengths: crop labels to the model's count.

Runs are resumable: a file whose manifest record is "ok", made by the same teacher settings,
from an unchanged source file (same size and mtime) and whose label file still has the
recorded shape is skipped. Failed files are retried. Label files are written with
`mertkit.fileio.atomic_write` (temporary name, fsync, rename); each finished file appends its
manifest line (flushed to disk) so a killed run loses at most the file in flight, and the manifest is
rewritten atomically, one line per audio file, at the start and end of every run.

Every label array is validated before it is written (shape, dtype, code range, frame count)
and a file whose frames all carry the same code in every codebook is refused: it is the
known failure of the recipe ("all labels collapsing to one token"). (Digital silence does not
trip it on its own: EnCodec's LSTM keeps moving for a while, so codes still change.)

Audio files are found by `mertkit.audio.discover_audio`, the rules `mert extract` uses too
(extensions, recursion, sorting; hidden files and folders are passed over; special files are
reported as failed, never read).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mertkit.audio import DEFAULT_MAX_DURATION
from mertkit.fileio import atomic_write

MANIFEST_NAME = "manifest.jsonl"
LABELS_SUBDIR = "codes"
LABEL_DTYPE = np.dtype(np.int16)
STATUS_OK = "ok"
STATUS_FAILED = "failed"
# The settings that make two label files comparable; mixing them in one directory is refused.
IDENTITY_FIELDS = ("teacher", "bandwidth", "codebooks", "codebook_size", "sample_rate", "hop_length")


class LabelsError(ValueError):
    """A label directory, manifest or label file that cannot be used."""


class LabelValidationError(LabelsError):
    """Label files that break the frame-alignment / range / non-degeneracy contract."""


class LabelTeacher(Protocol):
    """What `write_labels` needs from a teacher (see `mertkit.pretrain.teachers.encodec.EncodecTeacher`)."""

    name: str
    bandwidth: float

    @property
    def sample_rate(self) -> int: ...

    @property
    def hop_length(self) -> int: ...

    @property
    def num_codebooks(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    def codes(self, wav: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LabelRecord:
    """One manifest line."""

    audio: str
    status: str
    teacher: str
    bandwidth: float
    codebooks: int
    codebook_size: int
    sample_rate: int
    hop_length: int
    audio_bytes: int
    audio_mtime_ns: int
    num_samples: int | None = None
    num_frames: int | None = None
    labels: str | None = None
    error: str | None = None

    def identity(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in IDENTITY_FIELDS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str, where: str) -> LabelRecord:
        try:
            raw = json.loads(line)
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as error:
            raise LabelsError(f"{where}: not a manifest record ({error})") from None


@dataclass
class WriteSummary:
    """What a `write_labels` run did."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.written + self.skipped + len(self.failed)


@dataclass(frozen=True)
class ValidationSummary:
    files_ok: int
    files_failed: int
    total_frames: int


def frames_for_samples(num_samples: int, hop_length: int) -> int:
    """Label frames for a waveform: ceil(num_samples / hop_length)."""
    return -(-num_samples // hop_length)


def label_file_name(relative_audio: str) -> str:
    return f"{LABELS_SUBDIR}/{relative_audio}.npy"


def find_audio_files(in_dir: Path, exclude: Path | None = None) -> list[str]:
    """Audio files under `in_dir` (`mertkit.audio.discover_audio`), relative, `/`-separated, sorted."""
    from mertkit.audio import discover_audio

    return [f.relative for f in discover_audio([in_dir], exclude=exclude).files]


def label_problems(
    codes: np.ndarray, *, codebooks: int, codebook_size: int, num_frames: int, name: str
) -> list[str]:
    """Everything wrong with one label array (empty when it is fine)."""
    if codes.dtype != LABEL_DTYPE:
        return [f"{name}: dtype {codes.dtype}, expected {LABEL_DTYPE}"]
    if codes.shape != (codebooks, num_frames):
        return [f"{name}: shape {codes.shape}, expected ({codebooks}, {num_frames}) (codebooks, frames)"]
    problems = []
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        problems.append(f"{name}: codes outside 0..{codebook_size - 1} (min {codes.min()}, max {codes.max()})")
    if num_frames > 1 and bool((codes == codes[:, :1]).all()):
        problems.append(
            f"{name}: degenerate labels, every frame has the same code in every codebook (collapsed teacher?)"
        )
    return problems


# --------------------------------------------------------------------------- manifest


def _parse_manifest_lines(lines: list[str], path: Path, tolerate_torn_tail: bool) -> dict[str, LabelRecord]:
    records: dict[str, LabelRecord] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = LabelRecord.from_json(line, f"{path}:{number}")
        except LabelsError:
            # A run killed mid-append leaves a torn last line; that file is simply redone.
            if tolerate_torn_tail and number == len(lines):
                break
            raise
        records[record.audio] = record  # a later line supersedes an earlier one
    return records


def read_manifest(out_dir: str | Path, *, tolerate_torn_tail: bool = False) -> dict[str, LabelRecord]:
    """Manifest records by relative audio path (the last record of a path wins)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise LabelsError(f"{Path(out_dir)}: no {MANIFEST_NAME} (not a label directory?)")
    return _parse_manifest_lines(path.read_text().splitlines(), path, tolerate_torn_tail)


def _rewrite_manifest(out_dir: Path, records: dict[str, LabelRecord]) -> None:
    text = "".join(records[name].to_json() + "\n" for name in sorted(records))
    atomic_write(out_dir / MANIFEST_NAME, lambda handle: handle.write(text), mode="w")


# --------------------------------------------------------------------------- writing


def _record_identity(teacher: LabelTeacher) -> dict[str, Any]:
    return {
        "teacher": teacher.name,
        "bandwidth": float(teacher.bandwidth),
        "codebooks": int(teacher.num_codebooks),
        "codebook_size": int(teacher.codebook_size),
        "sample_rate": int(teacher.sample_rate),
        "hop_length": int(teacher.hop_length),
    }


def _check_rates(teacher: LabelTeacher, sample_rate: int, frame_rate: int) -> None:
    if teacher.sample_rate != sample_rate:
        raise LabelsError(
            f"teacher {teacher.name} runs at {teacher.sample_rate} Hz, not the requested {sample_rate} Hz"
        )
    if sample_rate % frame_rate or sample_rate // frame_rate != teacher.hop_length:
        raise LabelsError(
            f"teacher {teacher.name} has hop {teacher.hop_length} samples, which is not "
            f"{sample_rate} Hz / {frame_rate} Hz frames"
        )
    if teacher.codebook_size > np.iinfo(LABEL_DTYPE).max + 1:
        raise LabelsError(f"codebook_size {teacher.codebook_size} does not fit {LABEL_DTYPE} labels")


def _check_same_teacher(records: dict[str, LabelRecord], identity: dict[str, Any], out_dir: Path) -> None:
    wanted = tuple(identity[name] for name in IDENTITY_FIELDS)
    for record in records.values():
        if record.status == STATUS_OK and record.identity() != wanted:
            raise LabelsError(
                f"{out_dir}: holds labels from other teacher settings ({record.audio}: "
                f"{dict(zip(IDENTITY_FIELDS, record.identity()))}, now {identity}); use a new output directory"
            )


def _already_done(record: LabelRecord | None, stat: os.stat_result, out_dir: Path) -> bool:
    if record is None or record.status != STATUS_OK or record.labels is None:
        return False
    if (record.audio_bytes, record.audio_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return False
    label_file = out_dir / record.labels
    if not label_file.is_file():
        return False
    try:
        stored = np.load(label_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return stored.dtype == LABEL_DTYPE and stored.shape == (record.codebooks, record.num_frames)


def _label_one(
    audio_path: Path, relative: str, out_dir: Path, teacher: LabelTeacher, identity: dict[str, Any],
    max_duration: float | None,
) -> tuple[int, int]:
    """Compute, check and atomically store one file's labels; returns (samples, frames)."""
    from mertkit.audio import load_audio

    wav = load_audio(audio_path, identity["sample_rate"], max_duration=max_duration)
    codes = teacher.codes(wav)
    num_frames = frames_for_samples(wav.shape[0], identity["hop_length"])
    problems = label_problems(
        np.asarray(codes), codebooks=identity["codebooks"], codebook_size=identity["codebook_size"],
        num_frames=num_frames, name=relative,
    )
    if problems:
        raise LabelValidationError("; ".join(problems))
    destination = out_dir / label_file_name(relative)
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(destination, lambda handle: np.save(handle, codes, allow_pickle=False))
    return wav.shape[0], num_frames


def write_labels(
    in_dir: str | Path,
    out_dir: str | Path,
    teacher: LabelTeacher,
    *,
    sample_rate: int = 24000,
    frame_rate: int = 75,
    progress: Callable[[str, str], None] | None = None,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> WriteSummary:
    """Label every audio file under `in_dir` into `out_dir` (layout in the module docstring).

    A file that cannot be labelled (any `ValueError`: mertkit's audio, teacher and label
    errors all are) is recorded as failed with its reason and the run goes on.
    `progress(relative_path, outcome)` is called once per file with "written", "skipped"
    or "failed". Files longer than `max_duration` seconds (None: no limit) fail; special files
    found are failed without being read (reported, not in the manifest).
    """
    from mertkit.audio import discover_audio

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise LabelsError(f"{in_dir}: input is not a directory")
    _check_rates(teacher, sample_rate, frame_rate)
    identity = _record_identity(teacher)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    previous = read_manifest(out_dir, tolerate_torn_tail=True) if manifest.is_file() else {}
    _check_same_teacher(previous, identity, out_dir)
    _rewrite_manifest(out_dir, previous)

    from mertkit.progress import Progress

    summary = WriteSummary()
    records: dict[str, LabelRecord] = {}
    found = discover_audio([in_dir], exclude=out_dir)
    # Reported like the manifest's records: relative to the input folder.
    summary.failed.extend((Path(os.path.relpath(path, in_dir)).as_posix(), reason) for path, reason in found.rejected)
    with open(manifest, "a") as log, Progress(len(found.files), "labels", unit="file") as bar:
        for relative in (f.relative for f in found.files):
            record, outcome = _process_file(in_dir, out_dir, relative, previous.get(relative), teacher, identity,
                                            max_duration)
            records[relative] = record
            if outcome != "skipped":
                log.write(record.to_json() + "\n")
                log.flush()
                os.fsync(log.fileno())
            _count(summary, record, outcome)
            bar.update(1)
            if progress is not None:
                progress(relative, outcome)
    _rewrite_manifest(out_dir, records)
    return summary


def _process_file(
    in_dir: Path, out_dir: Path, relative: str, previous: LabelRecord | None,
    teacher: LabelTeacher, identity: dict[str, Any], max_duration: float | None,
) -> tuple[LabelRecord, str]:
    audio_path = in_dir / relative
    stat = audio_path.stat()
    if _already_done(previous, stat, out_dir):
        return previous, "skipped"
    source = {"audio": relative, "audio_bytes": stat.st_size, "audio_mtime_ns": stat.st_mtime_ns, **identity}
    try:
        samples, frames = _label_one(audio_path, relative, out_dir, teacher, identity, max_duration)
    except ValueError as error:
        return LabelRecord(status=STATUS_FAILED, error=str(error), **source), "failed"
    record = LabelRecord(
        status=STATUS_OK, num_samples=samples, num_frames=frames, labels=label_file_name(relative), **source
    )
    return record, "written"


def _count(summary: WriteSummary, record: LabelRecord, outcome: str) -> None:
    if outcome == "written":
        summary.written += 1
    elif outcome == "skipped":
        summary.skipped += 1
    else:
        summary.failed.append((record.audio, record.error or "unknown error"))


# --------------------------------------------------------------------------- validation


def _load_label_file(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise LabelsError(f"{name}: label file {path} is missing")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise LabelsError(f"{name}: cannot read label file {path} ({error})") from None


def _record_problems(record: LabelRecord, out_dir: Path, audio_dir: Path | None) -> tuple[list[str], np.ndarray | None]:
    name = record.audio
    if record.labels is None or record.num_samples is None or record.num_frames is None:
        return [f"{name}: 'ok' record without labels / num_samples / num_frames"], None
    problems = []
    expected_frames = frames_for_samples(record.num_samples, record.hop_length)
    if record.num_frames != expected_frames:
        problems.append(
            f"{name}: {record.num_frames} frames recorded for {record.num_samples} samples, expected {expected_frames}"
        )
    if audio_dir is not None:
        problems += _audio_length_problems(record, audio_dir)
    try:
        codes = _load_label_file(out_dir / record.labels, name)
    except LabelsError as error:
        return problems + [str(error)], None
    problems += label_problems(
        codes, codebooks=record.codebooks, codebook_size=record.codebook_size, num_frames=expected_frames, name=name
    )
    return problems, codes


def _audio_length_problems(record: LabelRecord, audio_dir: Path) -> list[str]:
    from mertkit.audio import load_audio

    try:
        samples = load_audio(audio_dir / record.audio, record.sample_rate).shape[0]
    except ValueError as error:
        return [f"{record.audio}: cannot re-read the audio ({error})"]
    if samples != record.num_samples:
        return [
            f"{record.audio}: audio has {samples} samples at {record.sample_rate} Hz, "
            f"manifest says {record.num_samples}"
        ]
    return []


def _collapsed_codebooks(used: list[set[int]], total_frames: int) -> list[str]:
    if total_frames < 2:
        return []
    return [
        f"codebook {k} uses a single code ({next(iter(codes))}) across the whole corpus: collapsed labels"
        for k, codes in enumerate(used)
        if len(codes) == 1
    ]


def validate_labels(out_dir: str | Path, audio_dir: str | Path | None = None) -> ValidationSummary:
    """Check every "ok" label file against its manifest record; raise `LabelValidationError`
    listing every problem. With `audio_dir`, each audio file is decoded again to confirm its
    length. Failed records are counted, not errors (`write_labels` already reported them)."""
    out_dir = Path(out_dir)
    records = read_manifest(out_dir)
    problems: list[str] = []
    identities = {r.identity() for r in records.values() if r.status == STATUS_OK}
    if len(identities) > 1:
        problems.append(f"{out_dir}: labels from {len(identities)} different teacher settings")
    used: list[set[int]] = []
    total_frames = ok = failed = 0
    for record in records.values():
        if record.status != STATUS_OK:
            failed += 1
            continue
        ok += 1
        found, codes = _record_problems(record, out_dir, Path(audio_dir) if audio_dir is not None else None)
        problems += found
        if codes is not None and not found:
            used += [set() for _ in range(len(codes) - len(used))]
            for k, row in enumerate(codes):
                used[k].update(np.unique(row).tolist())
            total_frames += codes.shape[1]
    problems += _collapsed_codebooks(used, total_frames)
    if problems:
        raise LabelValidationError(f"{out_dir}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return ValidationSummary(files_ok=ok, files_failed=failed, total_frames=total_frames)


# --------------------------------------------------------------------------- reading


class LabelReader:
    """Random access to a label directory's labels by relative audio path, for training."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        records = read_manifest(self.out_dir)
        self._ok = {k: r for k, r in records.items() if r.status == STATUS_OK}
        self._failed = {k: r.error for k, r in records.items() if r.status != STATUS_OK}
        identities = {r.identity() for r in self._ok.values()}
        if len(identities) > 1:
            raise LabelsError(f"{self.out_dir}: labels from {len(identities)} different teacher settings")
        self.settings = dict(zip(IDENTITY_FIELDS, identities.pop())) if identities else {}

    def __len__(self) -> int:
        return len(self._ok)

    def __contains__(self, relative_path: object) -> bool:
        return relative_path in self._ok

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._ok))

    def num_samples(self, relative_path: str) -> int:
        return int(self._record(relative_path).num_samples or 0)

    def labels_for(self, relative_path: str) -> np.ndarray:
        """int64 [n_codebooks, frames] labels of one audio file (path relative to the corpus)."""
        record = self._record(relative_path)
        codes = _load_label_file(self.out_dir / str(record.labels), relative_path)
        expected = (record.codebooks, record.num_frames)
        if codes.dtype != LABEL_DTYPE or codes.shape != expected:
            raise LabelsError(
                f"{relative_path}: label file holds {codes.dtype} {codes.shape}, manifest says int16 {expected}"
            )
        return codes.astype(np.int64)

    def _record(self, relative_path: str) -> LabelRecord:
        if relative_path in self._failed:
            raise LabelsError(f"{relative_path}: labelling failed ({self._failed[relative_path]})")
        record = self._ok.get(relative_path)
        if record is None:
            raise LabelsError(f"{relative_path}: not in {self.out_dir / MANIFEST_NAME}")
        return record
