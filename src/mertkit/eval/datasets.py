"""Task definitions, a generic manifest format, and adapters for MARBLE datasets on local disk.

Generic manifest (CSV with a header row, or JSONL with one object per line). Columns:

* ``path``   audio file, relative to the manifest's folder (or absolute). It is also the key
  that matches a row to its cached feature file ``<features>/<path>.safetensors``.
* ``audio``  (optional) the audio file when it is not ``path`` (relative to the manifest's
  folder, or absolute); ``mert manifest`` writes it, keeping ``path`` as the dataset's own
  relative name so that features extracted from the dataset's audio folder match.
* ``split``  one of ``train``, ``valid``, ``test``.
* ``label``  multiclass: one label name.
* ``labels`` multilabel: label names, ``;``-separated in CSV, a list in JSONL (may be empty).
* ``targets`` regression: numbers, ``;``-separated in CSV, a list in JSONL, one per target.
* ``beats``  beat tasks: a text file of beat times in seconds (first number of each line),
  relative to the manifest's folder.
* ``start``, ``end`` (optional) segment bounds in seconds.

Every adapter reads a dataset's standard layout and split files, as MARBLE does, and returns
``(records, task)``. Where MARBLE's preprocessing differs from what we read, the adapter's
docstring says so.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SPLITS = ("train", "valid", "test")
TaskKind = Literal["multiclass", "multilabel", "regression", "frame", "beat"]
DEFAULT_METRIC: dict[str, str] = {
    "multiclass": "accuracy",
    "multilabel": "roc_auc",
    "regression": "r2",
    "frame": "frame_accuracy",
    "beat": "beat_f",
}
MetricNames = {
    "multiclass": ("accuracy",),
    "multilabel": ("roc_auc", "average_precision"),
    "regression": ("r2",),
    "frame": ("frame_accuracy",),
    "beat": ("beat_f",),
}


# Fields that mark a task.json written by `mert bench-suite` (mertkit.synth.suite.TaskInfo).
SUITE_TASK_FIELDS = frozenset({"name", "kind", "labels", "clip_seconds", "sample_rate", "seed", "num_clips"})


class DatasetError(ValueError):
    """A manifest, split file or dataset tree that cannot be read as a task."""


@dataclass(frozen=True)
class TaskSpec:
    """What a probe predicts and how it is scored.

    ``num_outputs``: classes (multiclass, frame), tags (multilabel), targets (regression),
    1 (beat). ``labels``: the class / tag / target names, in output order.
    """

    name: str
    kind: TaskKind
    num_outputs: int
    metric: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_METRIC:
            raise DatasetError(f"task {self.name!r}: unknown kind {self.kind!r}")
        if not self.metric:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.kind])
        if self.metric not in MetricNames[self.kind]:
            raise DatasetError(
                f"task {self.name!r}: metric {self.metric!r} does not fit kind {self.kind!r} "
                f"(choose from {MetricNames[self.kind]})"
            )
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.labels and len(self.labels) != self.num_outputs:
            raise DatasetError(
                f"task {self.name!r}: {len(self.labels)} label names for {self.num_outputs} outputs"
            )
        if self.num_outputs < 1:
            raise DatasetError(f"task {self.name!r}: num_outputs must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """A task from its JSON form; ``mert bench-suite``'s task.json is read as well (its
        description fields are ignored, its ``beat_f_measure`` metric read as ``beat_f``)."""
        if SUITE_TASK_FIELDS <= set(data):
            data = {key: value for key, value in data.items() if key in ("name", "kind", "labels", "metric")}
            data["metric"] = {"beat_f_measure": "beat_f"}.get(data.get("metric", ""), data.get("metric", ""))
        known = {"name", "kind", "num_outputs", "metric", "labels"}
        unknown = set(data) - known
        if unknown or not {"name", "kind"} <= set(data):
            raise DatasetError(
                f"task JSON needs name and kind (and may have {sorted(known)}); got {sorted(data)}"
            )
        labels = tuple(data.get("labels", ()))
        num_outputs = int(data.get("num_outputs", len(labels) or (1 if data["kind"] == "beat" else 0)))
        return cls(data["name"], data["kind"], num_outputs, data.get("metric", ""), labels)


Label = str | tuple[str, ...] | tuple[float, ...] | None


@dataclass(frozen=True)
class Record:
    """One example: ``path`` is the feature-matching key, ``audio_path`` the resolved file."""

    path: str
    split: str
    label: Label
    audio_path: Path
    start: float | None = None
    end: float | None = None
    beats_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# ----------------------------------------------------------------------------- manifests


def read_manifest(
    manifest: str | Path, task: TaskSpec, check_files: bool = True
) -> list[Record]:
    """Read a CSV or JSONL manifest (see the module docstring) and validate it against ``task``."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest not found")
    rows = _read_rows(manifest)
    records = [_row_to_record(row, where, manifest.parent, task) for where, row in rows]
    validate_records(records, task, str(manifest), check_files)
    return records


def write_manifest(records: Sequence[Record], out: str | Path, task: TaskSpec, *, audio_column: bool = False) -> Path:
    """Write records as a manifest (``.csv`` or ``.jsonl`` by suffix), paths as given;
    ``audio_column``: also each record's audio file, relative to the manifest's folder."""
    out = Path(out)
    rows = [_record_to_row(record, task) for record in records]
    if audio_column:
        for row, record in zip(rows, records):
            row["audio"] = os.path.relpath(Path(record.audio_path).resolve(), out.resolve().parent)
    if out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return out
    if out.suffix != ".csv":
        raise DatasetError(f"{out}: manifest must end in .csv or .jsonl")
    columns = sorted({key for row in rows for key in row}, key=_column_order)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()})
    return out


def validate_records(records: Sequence[Record], task: TaskSpec, source: str, check_files: bool) -> None:
    """Every split non-empty, every label known, every file present (when ``check_files``)."""
    for split in SPLITS:
        if not any(record.split == split for record in records):
            raise DatasetError(f"{source}: split {split!r} is empty")
    for record in records:
        _check_label(record, task, source)
        if check_files and not record.audio_path.is_file():
            raise DatasetError(f"{source}: row {record.path!r}: audio file {record.audio_path} not found")
        # Beat files are labels, needed even when audio is not, so they are always checked.
        if record.beats_path is not None and not record.beats_path.is_file():
            raise DatasetError(f"{source}: row {record.path!r}: beats file {record.beats_path} not found")


def encode_labels(records: Sequence[Record], task: TaskSpec) -> np.ndarray:
    """Targets as arrays: class ids [N], multi-hot [N, C] or float targets [N, K]."""
    if task.kind == "multiclass":
        index = {name: i for i, name in enumerate(task.labels)}
        return np.array([index[record.label] for record in records], dtype=np.int64)
    if task.kind == "multilabel":
        index = {name: i for i, name in enumerate(task.labels)}
        hot = np.zeros((len(records), task.num_outputs), dtype=np.float32)
        for row, record in enumerate(records):
            hot[row, [index[name] for name in record.label]] = 1.0
        return hot
    if task.kind == "regression":
        return np.array([record.label for record in records], dtype=np.float32).reshape(len(records), -1)
    raise DatasetError(f"task {task.name!r}: {task.kind} targets are per frame; build them from features")


def load_beat_times(path: str | Path) -> np.ndarray:
    """Beat times in seconds: the first number on each non-empty line (extra columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: beats file not found")
    times = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            times.append(float(fields[0]))
        except ValueError as error:
            raise DatasetError(f"{path}: line {number}: {fields[0]!r} is not a time in seconds") from error
    return np.sort(np.asarray(times, dtype=np.float64))


def _read_rows(manifest: Path) -> list[tuple[str, dict[str, Any]]]:
    if manifest.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{manifest}: line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DatasetError(f"{manifest}: line {number}: expected a JSON object")
            rows.append((f"{manifest}: line {number}", row))
        return rows
    if manifest.suffix != ".csv":
        raise DatasetError(f"{manifest}: manifest must end in .csv or .jsonl")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = []
        for number, row in enumerate(reader, start=2):
            if None in row or None in row.values():
                raise DatasetError(f"{manifest}: line {number}: wrong number of columns")
            rows.append((f"{manifest}: line {number}", row))
        return rows


def _row_to_record(row: dict[str, Any], where: str, root: Path, task: TaskSpec) -> Record:
    if not row.get("path"):
        raise DatasetError(f"{where}: missing 'path'")
    if row.get("split") not in SPLITS:
        raise DatasetError(f"{where}: split must be one of {SPLITS}, got {row.get('split')!r}")
    path = str(row["path"])
    beats = row.get("beats") or None
    if task.kind == "beat" and beats is None:
        raise DatasetError(f"{where}: beat tasks need a 'beats' column")
    return Record(
        path=path,
        split=row["split"],
        label=_parse_label(row, where, task),
        audio_path=_resolve(root, str(row["audio"]) if row.get("audio") else path),
        start=_optional_float(row, "start", where),
        end=_optional_float(row, "end", where),
        beats_path=_resolve(root, str(beats)) if beats else None,
    )


def _parse_label(row: dict[str, Any], where: str, task: TaskSpec) -> Label:
    if task.kind == "multiclass":
        if row.get("label") in (None, ""):
            raise DatasetError(f"{where}: missing 'label'")
        return str(row["label"])
    if task.kind == "multilabel":
        if "labels" not in row:
            raise DatasetError(f"{where}: missing 'labels'")
        return tuple(_split_list(row["labels"]))
    if task.kind == "regression":
        if "targets" not in row:
            raise DatasetError(f"{where}: missing 'targets'")
        try:
            return tuple(float(value) for value in _split_list(row["targets"]))
        except (TypeError, ValueError) as error:
            raise DatasetError(f"{where}: 'targets' must be numbers, got {row['targets']!r}") from error
    return None


def _split_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value).split(";") if part.strip()]


def _optional_float(row: dict[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{where}: {key!r} must be seconds, got {value!r}") from error


def _check_label(record: Record, task: TaskSpec, source: str) -> None:
    where = f"{source}: row {record.path!r}"
    if task.kind == "multiclass" and record.label not in task.labels:
        raise DatasetError(f"{where}: label {record.label!r} is not in the task's label set")
    if task.kind == "multilabel":
        unknown = [name for name in record.label if name not in task.labels]
        if unknown:
            raise DatasetError(f"{where}: labels {unknown} are not in the task's label set")
    if task.kind == "regression" and len(record.label) != task.num_outputs:
        raise DatasetError(f"{where}: {len(record.label)} targets, the task has {task.num_outputs}")
    if record.start is not None and record.end is not None and record.end <= record.start:
        raise DatasetError(f"{where}: end {record.end} is not after start {record.start}")


def _record_to_row(record: Record, task: TaskSpec) -> dict[str, Any]:
    row: dict[str, Any] = {"path": record.path, "split": record.split}
    if task.kind == "multiclass":
        row["label"] = record.label
    elif task.kind == "multilabel":
        row["labels"] = list(record.label)
    elif task.kind == "regression":
        row["targets"] = list(record.label)
    if record.start is not None:
        row["start"] = record.start
    if record.end is not None:
        row["end"] = record.end
    if record.beats_path is not None:
        row["beats"] = str(record.beats_path)
    return row


def _column_order(name: str) -> int:
    order = ["path", "split", "label", "labels", "targets", "start", "end", "beats", "audio"]
    return order.index(name) if name in order else len(order)


def _resolve(root: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


# ----------------------------------------------------------------------------- MARBLE tasks

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
# MARBLE's 24 key classes, tonics spelled with flats.
GS_KEYS = tuple(
    f"{tonic} {mode}"
    for mode in ("major", "minor")
    for tonic in ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
)
_SHARP_TO_FLAT = {"C#": "Db", "D#": "Eb", "F#": "Gb", "G#": "Ab", "A#": "Bb"}
VOCALSET_TECHNIQUES = (
    "belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato", "vocal_fry",
)
VOCALSET_SINGERS = tuple([f"f{i}" for i in range(1, 10)] + [f"m{i}" for i in range(1, 12)])
NSYNTH_PITCH_RANGE = (21, 108)  # 88 piano keys, A0..C8

BUILTIN_TASKS: dict[str, TaskSpec] = {
    "gtzan": TaskSpec("gtzan", "multiclass", len(GTZAN_GENRES), labels=GTZAN_GENRES),
    "giantsteps_key": TaskSpec("giantsteps_key", "multiclass", len(GS_KEYS), labels=GS_KEYS),
    "emomusic": TaskSpec("emomusic", "regression", 2, labels=("arousal", "valence")),
    "nsynth_pitch": TaskSpec(
        "nsynth_pitch", "multiclass", 88, labels=tuple(str(p) for p in range(21, 109))
    ),
    "vocalset_technique": TaskSpec(
        "vocalset_technique", "multiclass", len(VOCALSET_TECHNIQUES), labels=VOCALSET_TECHNIQUES
    ),
    "vocalset_singer": TaskSpec(
        "vocalset_singer", "multiclass", len(VOCALSET_SINGERS), labels=VOCALSET_SINGERS
    ),
}


def gtzan(root: str | Path, audio_subdir: str = "genres_original", check_files: bool = True) -> tuple[list[Record], TaskSpec]:
    """GTZAN genre with the fault-filtered split MARBLE uses.

    ``root`` holds ``train_filtered.txt``, ``valid_filtered.txt``, ``test_filtered.txt`` (one
    ``<genre>/<genre>.000NN.wav`` per line) and ``<audio_subdir>/<genre>/<genre>.000NN.wav``.
    The label is the first path component, as in MARBLE.
    """
    root = Path(root)
    task = BUILTIN_TASKS["gtzan"]
    records = []
    for split in SPLITS:
        split_file = root / f"{split}_filtered.txt"
        for line_number, rel in _read_lines(split_file):
            if "/" not in rel:
                raise DatasetError(f"{split_file}: line {line_number}: expected <genre>/<file>, got {rel!r}")
            records.append(Record(rel, split, rel.split("/")[0], root / audio_subdir / rel))
    validate_records(records, task, str(root), check_files)
    return records, task


def magnatagatune(root: str | Path, audio_subdir: str = "mp3", check_files: bool = True) -> tuple[list[Record], TaskSpec]:
    """MagnaTagATune top-50 tagging in MARBLE's layout.

    ``root`` holds ``tags.npy`` (the 50 tag names), ``binary_label.npy`` ([clips, 50] 0/1, row
    = clip index) and ``train.tsv`` / ``valid.tsv`` / ``test.tsv`` with ``<index>\\t<relative
    mp3 path>`` rows; audio lives under ``<audio_subdir>``. (MARBLE's preprocessing splits by
    the first hex digit of the folder: 0-b train, c valid, d-f test; we read its files.)
    """
    root = Path(root)
    tags = tuple(str(tag) for tag in _load_npy(root / "tags.npy"))
    binary = _load_npy(root / "binary_label.npy")
    if binary.ndim != 2 or binary.shape[1] != len(tags):
        raise DatasetError(f"{root / 'binary_label.npy'}: shape {binary.shape} does not match {len(tags)} tags")
    task = TaskSpec("magnatagatune", "multilabel", len(tags), labels=tags)
    records = []
    for split in SPLITS:
        split_file = root / f"{split}.tsv"
        for line_number, line in _read_lines(split_file):
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) >= binary.shape[0]:
                raise DatasetError(f"{split_file}: line {line_number}: expected <clip index>\\t<path>, got {line!r}")
            row = binary[int(fields[0])]
            labels = tuple(tag for tag, on in zip(tags, row) if on)
            records.append(Record(fields[1], split, labels, root / audio_subdir / fields[1]))
    validate_records(records, task, str(root), check_files)
    return records, task


def giantsteps_key(root: str | Path, check_files: bool = True) -> tuple[list[Record], TaskSpec]:
    """GiantSteps key, trained on GiantSteps-MTG-key and tested on GiantSteps-key (as MARBLE).

    ``root`` holds the two repositories' checkouts ``giantsteps-mtg-key-dataset*/`` and
    ``giantsteps-key-dataset*/``, each with ``annotations/`` and ``audio/<ID>.LOFI.mp3``.
    Train/valid: rows of ``annotations/annotations.txt`` with confidence ``C`` == 2 and a single
    ``MANUAL KEY``, split by artist as jukemir/MARBLE do (sha1 of the lower-cased artist name
    modulo 116: 100 train, 16 valid; collaborators of a valid artist become valid, two hops).
    Test: ``annotations/key/<ID>.LOFI.key``. MARBLE then cuts tracks into 30 s clips; here a
    record is the whole track (pick the window at extraction time).
    """
    root = Path(root)
    task = BUILTIN_TASKS["giantsteps_key"]
    records = _giantsteps_train(_single_dir(root, "giantsteps-mtg-key-dataset"))
    records += _giantsteps_test(_single_dir(root, "giantsteps-key-dataset"))
    records = [
        Record(str(r.audio_path.relative_to(root)), r.split, r.label, r.audio_path) for r in records
    ]
    validate_records(records, task, str(root), check_files)
    return records, task


def emomusic(root: str | Path, check_files: bool = True) -> tuple[list[Record], TaskSpec]:
    """Emomusic static arousal/valence regression with MARBLE's split.

    ``root`` holds ``songs_info.csv``, ``static_annotations.csv`` and
    ``clips_45seconds/<song_id>.mp3``. The MediaEval 2013 'evaluation' set is the test split;
    the rest is split 8:2 train/valid by the sha1 of the cleaned artist name. Targets are the raw
    ``mean_arousal``, ``mean_valence``; the probe standardises them on the training split,
    which is the normalisation MARBLE applies in preprocessing.
    """
    root = Path(root)
    task = BUILTIN_TASKS["emomusic"]
    info = _read_csv_by_id(root / "songs_info.csv")
    static = _read_csv_by_id(root / "static_annotations.csv")
    records = []
    for song_id, row in info.items():
        if song_id not in static:
            raise DatasetError(f"{root / 'static_annotations.csv'}: no row for song_id {song_id}")
        split = "test" if row.get("Mediaeval 2013 set") == "evaluation" else _emomusic_split(row.get("Artist", ""))
        try:
            targets = (float(static[song_id]["mean_arousal"]), float(static[song_id]["mean_valence"]))
        except (KeyError, ValueError) as error:
            raise DatasetError(f"{root / 'static_annotations.csv'}: song_id {song_id}: bad mean_arousal/mean_valence") from error
        rel = f"clips_45seconds/{song_id}.mp3"
        records.append(Record(rel, split, targets, root / rel))
    validate_records(records, task, str(root), check_files)
    return records, task


def nsynth_pitch(root: str | Path, check_files: bool = True) -> tuple[list[Record], TaskSpec]:
    """NSynth pitch: MIDI pitch 21..108 as 88 classes.

    ``root`` holds ``nsynth-{train,valid,test}/examples.json`` and ``.../audio/<note>.wav``.
    Notes outside the piano range are left out, with a warning that counts them (MARBLE keeps
    128 output units instead).
    """
    root = Path(root)
    task = BUILTIN_TASKS["nsynth_pitch"]
    low, high = NSYNTH_PITCH_RANGE
    records, dropped = [], 0
    for split in SPLITS:
        examples_file = root / f"nsynth-{split}" / "examples.json"
        for note, meta in _load_json(examples_file).items():
            pitch = meta.get("pitch") if isinstance(meta, dict) else None
            if not isinstance(pitch, int):
                raise DatasetError(f"{examples_file}: note {note!r} has no integer 'pitch'")
            if not low <= pitch <= high:
                dropped += 1
                continue
            rel = f"nsynth-{split}/audio/{note}.wav"
            records.append(Record(rel, split, str(pitch), root / rel))
    if dropped:
        warnings.warn(f"{root}: left out {dropped} NSynth notes outside MIDI {low}..{high}", stacklevel=2)
    validate_records(records, task, str(root), check_files)
    return records, task


def vocalset(
    root: str | Path, target: Literal["singer", "technique"], audio_subdir: str = "audio", check_files: bool = True
) -> tuple[list[Record], TaskSpec]:
    """VocalSet singer (20 classes) or technique (10 classes) with MARBLE's split files.

    ``root`` holds ``{train,valid,test}_s.txt`` (singer) or ``_t.txt`` (technique), one
    ``<technique>/<singer>_<...>.wav`` per line, audio under ``<audio_subdir>``. The technique
    is the folder, the singer the file-name prefix before the first underscore.
    """
    if target not in ("singer", "technique"):
        raise DatasetError(f"vocalset: target must be 'singer' or 'technique', got {target!r}")
    root = Path(root)
    task = BUILTIN_TASKS[f"vocalset_{target}"]
    records = []
    for split in SPLITS:
        split_file = root / f"{split}_{target[0]}.txt"
        for line_number, rel in _read_lines(split_file):
            parts = rel.split("/")
            if len(parts) != 2 or "_" not in parts[1]:
                raise DatasetError(f"{split_file}: line {line_number}: expected <technique>/<singer>_<name>.wav, got {rel!r}")
            label = parts[0] if target == "technique" else parts[1].split("_")[0]
            records.append(Record(rel, split, label, root / audio_subdir / rel))
    validate_records(records, task, str(root), check_files)
    return records, task


ADAPTERS = {
    "gtzan": gtzan,
    "magnatagatune": magnatagatune,
    "giantsteps_key": giantsteps_key,
    "emomusic": emomusic,
    "nsynth_pitch": nsynth_pitch,
    "vocalset_singer": functools.partial(vocalset, target="singer"),
    "vocalset_technique": functools.partial(vocalset, target="technique"),
}


def _giantsteps_train(dataset: Path) -> list[Record]:
    annotations = _read_tsv_by_id(dataset / "annotations" / "annotations.txt")
    metadata = _read_tsv_by_id(dataset / "annotations" / "beatport_metadata.txt")
    artist_split = _giantsteps_artist_splits(metadata, dataset / "annotations" / "beatport_metadata.txt")
    records = []
    for track_id, row in annotations.items():
        key = row.get("MANUAL KEY", "").strip()
        # Low-confidence and multi-key tracks are skipped, as in Korzeniowski & Widmer 2018.
        if row.get("C", "").strip() != "2" or "/" in key:
            continue
        if track_id not in metadata:
            raise DatasetError(f"{dataset}: track {track_id} has no beatport_metadata row")
        split = artist_split[_artists(metadata[track_id])[0]]
        audio = dataset / "audio" / f"{track_id}.LOFI.mp3"
        records.append(Record("", split, _normalise_key(key, f"{dataset}: track {track_id}"), audio))
    return records


def _giantsteps_artist_splits(metadata: dict[str, dict[str, str]], source: Path) -> dict[str, str]:
    ratios = ["train"] * 100 + ["valid"] * 16
    split = {}
    for row in metadata.values():
        for artist in _artists(row):
            digest = int(hashlib.sha1(artist.lower().encode("utf-8")).hexdigest(), 16)
            split[artist] = ratios[digest % len(ratios)]
    for _ in range(2):  # collaborators of valid artists become valid; two hops
        for row in metadata.values():
            artists = _artists(row)
            if any(split[a] == "valid" for a in artists):
                split.update({a: "valid" for a in artists})
    if not split:
        raise DatasetError(f"{source}: no artists found")
    return split


def _giantsteps_test(dataset: Path) -> list[Record]:
    key_dir = dataset / "annotations" / "key"
    if not key_dir.is_dir():
        raise DatasetError(f"{key_dir}: folder not found")
    records = []
    for key_file in sorted(key_dir.glob("*.LOFI.key")):
        track_id = key_file.name.split(".")[0]
        key = _normalise_key(key_file.read_text().strip(), str(key_file))
        records.append(Record("", "test", key, dataset / "audio" / f"{track_id}.LOFI.mp3"))
    return records


def _artists(row: dict[str, str]) -> list[str]:
    return [artist.strip() for artist in row.get("ARTIST", "").strip().split(",")]


def _normalise_key(text: str, where: str) -> str:
    parts = text.split()
    if len(parts) != 2:
        raise DatasetError(f"{where}: key {text!r} is not '<tonic> <major|minor>'")
    tonic = parts[0][0].upper() + parts[0][1:]
    key = f"{_SHARP_TO_FLAT.get(tonic, tonic)} {parts[1].lower()}"
    if key not in GS_KEYS:
        raise DatasetError(f"{where}: key {text!r} is not one of the 24 major/minor keys")
    return key


def _emomusic_split(artist: str) -> str:
    cleaned = "".join(c for c in artist.lower() if ord(c) < 128 and (c.isalpha() or c.isspace()))
    cleaned = " ".join(cleaned.split())
    ratios = ["train"] * 8 + ["valid"] * 2
    return ratios[int(hashlib.sha1(cleaned.encode("utf-8")).hexdigest(), 16) % len(ratios)]


def _single_dir(root: Path, prefix: str) -> Path:
    # Exact name first, else one folder with a commit-hash suffix (as MARBLE's download has).
    if (root / prefix).is_dir():
        return root / prefix
    matches = [p for p in root.glob(f"{prefix}-*") if p.is_dir()]
    if len(matches) != 1:
        raise DatasetError(f"{root}: expected one folder {prefix}[-<commit>], found {len(matches)}")
    return matches[0]


def _read_lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    return [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


def _read_csv_by_id(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]
    out = {}
    for number, row in enumerate(rows, start=2):
        if not row.get("song_id", "").isdigit():
            raise DatasetError(f"{path}: line {number}: song_id {row.get('song_id')!r} is not a number")
        out[str(int(row["song_id"]))] = row
    return out


def _read_tsv_by_id(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    out = {}
    for number, row in enumerate(rows, start=2):
        track_id = (row.get("ID") or "").strip()
        if not track_id.isdigit():
            raise DatasetError(f"{path}: line {number}: ID {track_id!r} is not a number")
        out[str(int(track_id))] = row
    return out


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    return np.load(path, allow_pickle=False)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error.msg})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object of notes")
    return data
