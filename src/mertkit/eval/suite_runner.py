"""``mert eval --suite synth`` as a library call: build the suite, extract and cache, probe, report.

Steps, each cached so that a rerun redoes only what is missing:

1. Suite. ``suite_dir/<task>/`` (clips, ``manifest.csv``, ``task.json``) is rendered by
   :mod:`mertkit.synth.suite` when its ``task.json`` is absent; same seed, same bytes. An
   existing task built with another seed or clip count is an error, not silently reused.
2. Model features. ``out_dir/features/<model key>/<folder key>/<path>.safetensors``: every
   hidden state, mean-pooled over the whole clip (``window=0`` by default: the clips are
   1.5-8 s, and MARBLE probes whole clips). ``<model key>`` is the model name plus a hash of
   its config and weight files, ``<folder key>`` the suite folder's name plus a hash of its
   files, so a cache is never reused for another checkpoint or other audio. The beat task
   needs frames: its folder is extracted unpooled (``<folder key>-frames``), and the tempo
   regression time-averages those frames (the same vector as mean pooling), so that audio
   runs once. ``run_extract`` skips files already done.
3. Baseline features. ``out_dir/features/baseline-<name>/<folder key>/``: MFCC and chroma
   statistics (:mod:`mertkit.eval.baselines`), computed only for files missing or unreadable.
4. Probes (:func:`mertkit.eval.probes.run_probe`) on every task: for the model each layer
   setting asked for (default: the sweep ``"all"``, reported at its best-validation layer, and
   ``"weighted"``); for each baseline its single "layer". A majority-class (or train-mean)
   predictor is scored too, as the floor.
5. Report: ``results.json`` (everything), ``results.md`` (a task x source summary, then the
   per-layer detail tables of :mod:`mertkit.eval.report`) and ``layers.png`` (score per layer
   per task, with the weighted probe, the baselines and the floor as horizontal lines).

Synthetic task folders -> probe tasks:

* ``pitch``, ``instrument``, ``key``: multiclass, accuracy.
* ``tempo`` (from the ``tempo`` folder): the BPM as a one-target regression on pooled
  features, R².
* ``beat`` (from the ``tempo`` folder): per-frame beat activation on unpooled features, beat
  F-measure at the suite's 70 ms tolerance with the probes' peak-picking decoder (not
  madmom's DBN). Model only: the baselines are clip statistics with no time axis.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.eval.datasets import DatasetError, Record, TaskSpec, encode_labels, read_manifest
from mertkit.eval.features import FeatureError, FeatureSplits, from_safetensors_dir, read_feature_file
from mertkit.eval.metrics import MetricError
from mertkit.eval.probes import ProbeConfig, ProbeError, ProbeResult, run_probe

__all__ = [
    "BASELINE_TITLES",
    "DEFAULT_TASKS",
    "PROBE_TASKS",
    "ModelInfo",
    "ProbeEntry",
    "ProbeSettings",
    "SuiteRun",
    "SuiteRunError",
    "SuiteTask",
    "load_suite_tasks",
    "run_suite",
]

# Probe task -> the suite folder it reads.
PROBE_TASKS: dict[str, str] = {"pitch": "pitch", "instrument": "instrument", "key": "key", "tempo": "tempo", "beat": "tempo"}
DEFAULT_TASKS = ("pitch", "instrument", "key", "tempo", "beat")
BEAT_NOT_RUN = "beat tracking not run (not among the tasks); tempo is scored as BPM regression only"
BASELINE_TITLES = {"mfcc": "MFCC stats", "chroma": "chroma stats"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
PLOT_FLOOR = -100.0  # lowest score ×100 drawn (R² can be far below 0)
Log = Callable[[str], None]


class SuiteRunError(ValueError):
    """A suite folder, model or setting that the evaluation cannot run with."""


@dataclass(frozen=True)
class ProbeSettings:
    """How every probe of the run is trained (see :class:`mertkit.eval.probes.ProbeConfig`)."""

    kind: str = "mlp"
    layers: tuple[int | str, ...] = ("all", "weighted")
    seeds: tuple[int, ...] = (0, 1, 2)
    lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    max_epochs: int = 100
    patience: int = 10
    batch_size: int | None = 64
    # Frame-level beat probes see every frame (~110k training frames at the default suite
    # size): an MLP there costs ~8 s per epoch per layer, hours for the sweep on CPU, so the
    # beat task trains a linear probe on a shorter schedule by default.
    beat_kind: str = "linear"
    beat_max_epochs: int = 30
    beat_patience: int = 5

    def config(self, layer: int | str, *, frame_level: bool = False) -> ProbeConfig:
        if frame_level:
            return ProbeConfig(kind=self.beat_kind, layer=layer, lrs=self.lrs, seeds=self.seeds,
                               max_epochs=min(self.max_epochs, self.beat_max_epochs),
                               patience=min(self.patience, self.beat_patience), batch_size=self.batch_size)
        return ProbeConfig(kind=self.kind, layer=layer, lrs=self.lrs, seeds=self.seeds, max_epochs=self.max_epochs,
                           patience=self.patience, batch_size=self.batch_size)


@dataclass(frozen=True)
class ModelInfo:
    """Which model was evaluated and where it came from (stated in every report)."""

    name: str
    path: str
    origin: str
    random_weights: bool
    fingerprint: str
    num_hidden_states: int
    sample_rate: int

    @property
    def cache_key(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', self.name)}-{self.fingerprint[:12]}"


@dataclass(frozen=True)
class SuiteTask:
    """One probe task: its records, its TaskSpec, and the suite folder the audio lives in.

    ``fingerprint`` hashes that folder's files, so a cache never outlives the audio it was
    computed from (another seed or a re-render with other bytes gets a fresh cache).
    """

    name: str
    folder: Path
    spec: TaskSpec
    records: list[Record]
    fingerprint: str = ""

    @property
    def frame_level(self) -> bool:
        return self.spec.kind == "beat"

    @property
    def cache_name(self) -> str:
        return f"{self.folder.name}-{self.fingerprint[:12]}" if self.fingerprint else self.folder.name


@dataclass
class ProbeEntry:
    """One probe result: ``source`` is "model" or a baseline name; ``setting`` the layer choice."""

    task: str
    source: str
    setting: str
    result: ProbeResult

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "setting": self.setting, **self.result.to_dict()}


@dataclass
class SuiteRun:
    """What :func:`run_suite` produced."""

    model: ModelInfo
    entries: list[ProbeEntry]
    floors: dict[str, float]
    table: str
    paths: dict[str, Path]
    seconds: float
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- entry point


def run_suite(
    model_name_or_dir: str | Path | None,
    suite_dir: str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    probe: str = "mlp",
    beat_probe: str = "linear",
    layers: int | str | Sequence[int | str] = ("all", "weighted"),
    seeds: Sequence[int] = (0, 1, 2),
    lrs: Sequence[float] = (1e-4, 1e-3, 1e-2),
    max_epochs: int = 100,
    patience: int = 10,
    baselines: Sequence[str] = ("mfcc", "chroma"),
    seed: int = 0,
    clips_per_task: int | None = None,
    window: float | None = 0.0,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    progress: bool = True,
    log: Log | None = None,
) -> SuiteRun:
    """Evaluate a model (None: the offline demo model) on the synthetic suite; see the module docstring."""
    started = time.perf_counter()
    log = log or (lambda message: None)
    # Every setting is checked before anything slow runs.
    settings = _probe_settings(probe, layers, seeds, lrs, max_epochs, patience, beat_probe)
    options = _extract_options(window, batch_size, dtype)
    _check_baselines(baselines)
    wanted = _check_tasks(tasks)
    out_dir = Path(out_dir)
    model, info = load_model(model_name_or_dir, device)
    _check_layer_indices(settings, info)
    log(f"model: {info.name} ({info.origin})")
    folders = ensure_suite(suite_dir, sorted({PROBE_TASKS[name] for name in wanted}), seed, clips_per_task, log)
    suite_tasks = [task for task in load_suite_tasks(folders) if task.name in wanted]
    feature_dirs = extract_model_features(model, info, suite_tasks, out_dir, options, progress, log)
    del model  # the probes do not need it; free its memory
    baseline_dirs = {name: write_baselines(suite_tasks, out_dir, name, log) for name in baselines}
    entries = run_probes(suite_tasks, feature_dirs, baseline_dirs, settings, log)
    floors = {task.name: floor_score(task) for task in suite_tasks}
    notes = _notes(info, suite_tasks, wanted, settings)
    seconds = time.perf_counter() - started
    context = _report_context(info, suite_tasks, wanted, settings, baselines, window, seed, seconds, notes)
    paths, table = write_suite_report(entries, floors, context, out_dir)
    return SuiteRun(info, entries, floors, table, paths, seconds, notes)


def _probe_settings(
    probe: str, layers: int | str | Sequence[int | str], seeds: Sequence[int], lrs: Sequence[float], max_epochs: int,
    patience: int, beat_probe: str = "linear",
) -> ProbeSettings:
    chosen = (layers,) if isinstance(layers, (int, str)) else tuple(layers)
    if not chosen:
        raise SuiteRunError("no layer setting given (use 'all', 'weighted', 'conv1d' or a layer index)")
    settings = ProbeSettings(probe, chosen, tuple(seeds), tuple(lrs), max_epochs, patience, beat_kind=beat_probe)
    try:
        for layer in chosen:
            settings.config(layer)
            settings.config(layer, frame_level=True)
    except ProbeError as error:
        raise SuiteRunError(f"probe settings: {error}") from error
    return settings


def _extract_options(window: float | None, batch_size: int, dtype: str) -> Any:
    from mertkit.extraction.engine import ExtractError, ExtractOptions

    try:
        return ExtractOptions(layers=None, pool="mean", window=window, batch_size=batch_size, dtype=dtype)
    except ExtractError as error:
        raise SuiteRunError(f"extraction settings: {error}") from error


def _check_layer_indices(settings: ProbeSettings, info: ModelInfo) -> None:
    bad = [k for k in settings.layers if isinstance(k, int) and not 0 <= k < info.num_hidden_states]
    if bad:
        raise SuiteRunError(f"layers {bad} out of range: {info.name} has hidden states 0..{info.num_hidden_states - 1}")


def _check_baselines(baselines: Sequence[str]) -> None:
    unknown = [name for name in baselines if name not in BASELINE_TITLES]
    if unknown:
        raise SuiteRunError(f"unknown baselines {unknown}; choose from {sorted(BASELINE_TITLES)}")


def _check_tasks(tasks: Sequence[str] | None) -> list[str]:
    chosen = list(DEFAULT_TASKS) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [name for name in chosen if name not in PROBE_TASKS]
    if unknown or not chosen:
        raise SuiteRunError(f"unknown or no tasks {chosen}; choose from {list(PROBE_TASKS)}")
    return chosen


# ----------------------------------------------------------------------------- suite


def ensure_suite(
    suite_dir: str | Path, folders: Sequence[str], seed: int, clips_per_task: int | None, log: Log
) -> dict[str, Path]:
    """{suite task: folder}, rendering the tasks whose ``task.json`` is missing."""
    from mertkit.synth.render import RenderError
    from mertkit.synth.suite import DEFAULT_CLIPS_PER_TASK, SuiteError, build_task

    suite_dir = Path(suite_dir)
    found = {}
    for name in folders:
        folder = suite_dir / name
        if (folder / "task.json").is_file():
            _check_existing_task(folder, seed, clips_per_task)
        else:
            clips = clips_per_task or DEFAULT_CLIPS_PER_TASK
            log(f"rendering suite task {name!r}: {clips} clips, seed {seed} -> {folder}")
            # No task.json means an interrupted render (it is written last): start that folder over.
            try:
                build_task(suite_dir, name, seed=seed, num_clips=clips, overwrite=True)
            except (SuiteError, RenderError) as error:
                raise SuiteRunError(f"{folder}: cannot render the suite task ({error})") from error
        found[name] = folder
    return found


def _check_existing_task(folder: Path, seed: int, clips_per_task: int | None) -> None:
    info = _read_task_json(folder)
    if info.get("seed") != seed or (clips_per_task is not None and info.get("num_clips") != clips_per_task):
        raise SuiteRunError(
            f"{folder}: was built with seed {info.get('seed')} and {info.get('num_clips')} clips, this run asks for "
            f"seed {seed} and {clips_per_task or 'the existing number of'} clips; use another suite folder"
        )


def _read_task_json(folder: Path) -> dict[str, Any]:
    path = folder / "task.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SuiteRunError(f"{path}: not a readable task description ({error})") from error
    if not isinstance(data, dict) or "labels" not in data:
        raise SuiteRunError(f"{path}: expected a JSON object with 'labels'")
    return data


def load_suite_tasks(folders: dict[str, Path]) -> list[SuiteTask]:
    """The probe tasks of the given suite folders, in :data:`PROBE_TASKS` order."""
    tasks = []
    fingerprints = {name: folder_fingerprint(folder) for name, folder in folders.items()}
    for name, folder_name in PROBE_TASKS.items():
        folder = folders.get(folder_name)
        if folder is None:
            continue
        try:
            task = _suite_task(name, folder)
        except DatasetError as error:
            raise SuiteRunError(f"{folder}: {error}") from error
        tasks.append(dataclasses.replace(task, fingerprint=fingerprints[folder_name]))
    return tasks


def folder_fingerprint(folder: Path) -> str:
    """blake2b of every file under ``folder`` (relative names and bytes), in a stable order."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _hash_files(files, folder)


def _hash_files(files: Sequence[Path], root: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _suite_task(name: str, folder: Path) -> SuiteTask:
    manifest = folder / "manifest.csv"
    if name == "beat":
        spec = TaskSpec("beat", "beat", 1)
        return SuiteTask(name, folder, spec, read_manifest(manifest, spec))
    if name == "tempo":
        spec = TaskSpec("tempo", "regression", 1, labels=("bpm",))
        beat_records = read_manifest(manifest, TaskSpec("beat", "beat", 1))
        bpm = _tempo_labels(manifest)
        return SuiteTask(name, folder, spec, [dataclasses.replace(r, label=(bpm[r.path],)) for r in beat_records])
    labels = tuple(_read_task_json(folder)["labels"])
    spec = TaskSpec(name, "multiclass", len(labels), labels=labels)
    return SuiteTask(name, folder, spec, read_manifest(manifest, spec))


def _tempo_labels(manifest: Path) -> dict[str, float]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = {}
    for number, row in enumerate(rows, start=2):
        try:
            labels[row["path"]] = float(row["label"])
        except (KeyError, TypeError, ValueError) as error:
            raise SuiteRunError(f"{manifest}: line {number}: 'label' must be the tempo in BPM, got {row.get('label')!r}") from error
    return labels


# ----------------------------------------------------------------------------- model features


def load_model(model_name_or_dir: str | Path | None, device: str = "cpu") -> tuple[Any, ModelInfo]:
    """The model in eval mode and what the report says about it."""
    from mertkit.models import checkpoint
    from mertkit.cli.demo_assets import demo_model_dir

    demo_dir, demo_random = demo_model_dir() if model_name_or_dir is None else (None, False)
    target = demo_dir if demo_dir is not None else model_name_or_dir
    try:
        model = checkpoint.load(target, device=device)
    except checkpoint.CheckpointError as error:
        raise SuiteRunError(f"cannot load model {str(target)!r}: {error}") from error
    directory = Path(model.info.path)
    info = ModelInfo(
        name=model.info.name, path=str(directory), origin=_origin(model_name_or_dir, directory, demo_random),
        random_weights=demo_random, fingerprint=model_fingerprint(directory),
        num_hidden_states=model.info.num_hidden_states, sample_rate=model.info.sample_rate,
    )
    return model, info


def _origin(requested: str | Path | None, directory: Path, demo_random: bool) -> str:
    if requested is None and demo_random:
        return (f"mertkit's offline demo model with RANDOM weights, built on the fly at {directory}: "
                "its scores are a floor for an untrained network, not a result")
    if requested is None:
        return f"the model shipped with mertkit ({directory})"
    return f"checkpoint {str(requested)!r} loaded from {directory}"


def model_fingerprint(directory: Path) -> str:
    """blake2b of the checkpoint's config and weight files: the cache key's guarantee."""
    files = sorted(p for p in directory.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES)
    return _hash_files(files, directory)


def extract_model_features(
    model: Any, info: ModelInfo, tasks: Sequence[SuiteTask], out_dir: Path, options: Any, progress: bool, log: Log,
) -> dict[str, Path]:
    """{probe task: feature folder}, extracting with ``options`` (an ExtractOptions; its pooling
    is set per folder) what the cache lacks. See the module docstring for the layout."""
    from mertkit.extraction.engine import ExtractError
    from mertkit.extraction.runner import run_extract

    # A clip task whose folder also feeds a frame-level task reads the unpooled cache (time-mean
    # of the frames = the mean-pooled vector with window 0), so that audio is run once.
    frame_folders = {task.folder for task in tasks if task.frame_level}
    dirs: dict[str, Path] = {}
    for task in tasks:
        frames = task.folder in frame_folders
        pool = "none" if frames else "mean"
        cache = out_dir / "features" / info.cache_key / (task.cache_name + ("-frames" if frames else ""))
        if cache in dirs.values():
            dirs[task.name] = cache
            continue  # already extracted for an earlier task from the same folder
        dirs[task.name] = cache
        log(f"features of {task.folder.name!r} ({'frames' if frames else 'mean-pooled'}) -> {cache}")
        try:
            report = run_extract(model, [task.folder], cache, dataclasses.replace(options, pool=pool), progress=progress)
        except ExtractError as error:
            raise SuiteRunError(f"{task.folder}: extraction failed ({error})") from error
        if report.failed:
            first = "; ".join(f"{path}: {reason}" for path, reason in report.failed[:3])
            raise SuiteRunError(f"{task.folder}: {len(report.failed)} clips failed to extract: {first}")
        log(f"  {len(report.done)} extracted, {len(report.skipped)} reused from the cache")
    return dirs


# ----------------------------------------------------------------------------- baselines


def write_baselines(tasks: Sequence[SuiteTask], out_dir: Path, baseline: str, log: Log) -> dict[str, Path]:
    """{clip task: folder of ``<path>.safetensors`` baseline features}, computing only what is missing."""
    from mertkit.eval.baselines import write_baseline_features

    dirs: dict[str, Path] = {}
    for task in tasks:
        if task.frame_level:
            continue
        cache = out_dir / "features" / f"baseline-{baseline}" / task.cache_name
        dirs[task.name] = cache
        todo = [record for record in task.records if not _baseline_cached(cache, record, baseline)]
        if todo:
            log(f"{baseline} features of {task.folder.name!r}: {len(todo)} clips -> {cache}")
            try:
                write_baseline_features(todo, cache, baseline)
            except FeatureError as error:
                raise SuiteRunError(f"{task.folder}: {baseline} baseline failed ({error})") from error
    return dirs


def _baseline_cached(cache: Path, record: Record, baseline: str) -> bool:
    path = cache / f"{record.path}.safetensors"
    if not path.is_file():
        return False
    try:
        _, meta = read_feature_file(path)
    except FeatureError:
        return False  # a file cut short by an interrupted run: recompute it
    # The folder key already pins the audio bytes; the source path may differ (a moved folder).
    return meta.get("model") == baseline


# ----------------------------------------------------------------------------- probes


def run_probes(
    tasks: Sequence[SuiteTask], feature_dirs: dict[str, Path], baseline_dirs: dict[str, dict[str, Path]],
    settings: ProbeSettings, log: Log,
) -> list[ProbeEntry]:
    """Every (task, source, layer setting) probe, in table order."""
    entries = []
    for task in tasks:
        data = _features(feature_dirs[task.name], task)
        for setting in settings.layers:
            entries.append(_probe(task, data, "model", setting, settings, log))
        for baseline, dirs in baseline_dirs.items():
            if task.name in dirs:
                entries.append(_probe(task, _features(dirs[task.name], task), baseline, 0, settings, log))
    return entries


def _features(folder: Path, task: SuiteTask) -> FeatureSplits:
    try:
        return from_safetensors_dir(folder, task.records, task.spec)
    except DatasetError as error:  # FeatureError is a DatasetError
        raise SuiteRunError(f"task {task.name!r}: {error}") from error


def _probe(task: SuiteTask, data: FeatureSplits, source: str, layer: int | str, settings: ProbeSettings, log: Log) -> ProbeEntry:
    started = time.perf_counter()
    try:
        result = run_probe(task.spec, data, settings.config(layer, frame_level=task.frame_level))
    except ProbeError as error:
        raise SuiteRunError(f"task {task.name!r}, {source} layer {layer!r}: {error}") from error
    except MetricError as error:
        sizes = {s: sum(r.split == s for r in task.records) for s in ("train", "valid", "test")}
        raise SuiteRunError(
            f"task {task.name!r} ({task.folder}): cannot score a split of {sizes} ({error}); build the suite with more clips"
        ) from error
    setting = "stats" if source != "model" else str(layer)
    log(f"probe {task.name} / {source} / {setting}: {task.spec.metric} = {100 * result.score:.1f} "
        f"({time.perf_counter() - started:.0f} s)")
    return ProbeEntry(task.name, source, setting, result)


def floor_score(task: SuiteTask) -> float:
    """Test score of a predictor that ignores the audio: the most frequent training class
    (multiclass), the training mean (regression, so R² <= 0), NaN where there is none (beat)."""
    if task.spec.kind == "beat":
        return float("nan")
    train = [r for r in task.records if r.split == "train"]
    test = [r for r in task.records if r.split == "test"]
    y_train, y_test = encode_labels(train, task.spec), encode_labels(test, task.spec)
    if task.spec.kind == "multiclass":
        majority = np.bincount(y_train, minlength=task.spec.num_outputs).argmax()
        return float(np.mean(y_test == majority))
    residual = np.sum((y_test - y_train.mean(axis=0)) ** 2)
    total = np.sum((y_test - y_test.mean(axis=0)) ** 2)
    return float(1.0 - residual / total) if total > 0 else float("nan")


# ----------------------------------------------------------------------------- report


def _notes(info: ModelInfo, tasks: Sequence[SuiteTask], wanted: Sequence[str], settings: ProbeSettings) -> list[str]:
    notes = []
    if "tempo" in wanted and "beat" not in wanted:
        notes.append(BEAT_NOT_RUN)
    if info.random_weights:
        notes.append("The model has RANDOM weights: every model number is a floor for an untrained network, not a result.")
    if any(task.name == "beat" for task in tasks):
        beat = settings.config(0, frame_level=True)
        notes.append(f"beat: per-frame beat activation, {beat.kind} probe (at most {beat.max_epochs} epochs, patience "
                     f"{beat.patience}), peak picking (not madmom's DBN), F-measure at 70 ms tolerance; no baseline "
                     "(MFCC/chroma statistics have no time axis).")
    if any(task.name == "tempo" for task in tasks):
        notes.append("tempo: the clip's BPM regressed from time-pooled features (R²).")
    return notes


def _report_context(
    info: ModelInfo, tasks: Sequence[SuiteTask], wanted: Sequence[str], settings: ProbeSettings, baselines: Sequence[str],
    window: float | None, seed: int, seconds: float, notes: list[str],
) -> dict[str, Any]:
    sizes = {task.name: {s: sum(r.split == s for r in task.records) for s in ("train", "valid", "test")} for task in tasks}
    return {
        "model": dataclasses.asdict(info),
        "suite": {"name": "synth", "seed": seed, "dirs": {t.name: str(t.folder) for t in tasks}, "split_sizes": sizes},
        "probe": {**dataclasses.asdict(settings), "layers": [str(layer) for layer in settings.layers]},
        "baselines": list(baselines),
        "extraction": {"pooling": "mean (beat: none)", "window_s": window, "layers": "all hidden states"},
        "wall_seconds": round(seconds, 1),
        "notes": notes,
        # Rows the table shows as not run, with their metric.
        "not_run": {"beat": "beat_f"} if "tempo" in wanted and "beat" not in wanted else {},
    }


def write_suite_report(
    entries: Sequence[ProbeEntry], floors: dict[str, float], context: dict[str, Any], out_dir: Path
) -> tuple[dict[str, Path], str]:
    """``results.json``, ``results.md`` and ``layers.png`` in ``out_dir``; returns (paths, summary table)."""
    from mertkit.eval.report import markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**context, "floors": floors, "results": [entry.to_dict() for entry in entries]}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=True))
    table = summary_table(entries, floors, context)
    details = [f"### {source}\n\n" + markdown_table([e.result for e in entries if e.source == source], label)
               for source, label in _sources(entries, context["model"]["name"])]
    md_path = out_dir / "results.md"
    md_path.write_text(table + "\n## Detail (every layer)\n\n" + "\n".join(details))
    png_path = plot_suite(entries, floors, context, out_dir / "layers.png")
    return {"json": json_path, "markdown": md_path, "plot": png_path}, table


def _sources(entries: Sequence[ProbeEntry], model_name: str) -> list[tuple[str, str]]:
    sources = list(dict.fromkeys(entry.source for entry in entries))
    return [(source, model_name if source == "model" else BASELINE_TITLES[source]) for source in sources]


def summary_table(entries: Sequence[ProbeEntry], floors: dict[str, float], context: dict[str, Any]) -> str:
    """Markdown: the run's header lines, then one row per task, one column per source/setting."""
    model = context["model"]
    probe = context["probe"]
    columns = list(dict.fromkeys((e.source, e.setting) for e in entries))
    lines = [
        f"# mert eval --suite synth: {model['name']}",
        "",
        f"- model: **{model['name']}**, {model['origin']} (fingerprint {model['fingerprint'][:12]})",
        f"- suite: synth, seed {context['suite']['seed']}, splits (train/valid/test) "
        + ", ".join(f"{t} {s['train']}/{s['valid']}/{s['test']}" for t, s in context["suite"]["split_sizes"].items()),
        f"- probe: {probe['kind']}, lrs {list(probe['lrs'])}, seeds {list(probe['seeds'])}, "
        f"up to {probe['max_epochs']} epochs (patience {probe['patience']}); test score ×100, mean ± std over seeds",
        f"- wall time: {context['wall_seconds']:.0f} s",
        *[f"- note: {note}" for note in context["notes"]],
        "",
        "| task | metric | " + " | ".join(_column_title(c, model["name"]) for c in columns) + " | floor |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- |",
    ]
    for task in dict.fromkeys(e.task for e in entries):
        by_column = {(e.source, e.setting): e.result for e in entries if e.task == task}
        metric = next(e.result.metric for e in entries if e.task == task)
        cells = [_cell(by_column.get(column)) for column in columns]
        floor = floors.get(task, float("nan"))
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + f" | {'-' if np.isnan(floor) else f'{100 * floor:.1f}'} |")
    for task, metric in context.get("not_run", {}).items():
        lines.append(f"| {task} | {metric} | " + " | ".join("not run (see note)" for _ in columns) + " | - |")
    return "\n".join(lines) + "\n"


def _column_title(column: tuple[str, str], model_name: str) -> str:
    source, setting = column
    if source != "model":
        return BASELINE_TITLES[source]
    if setting == "all":
        return f"{model_name}: best layer"
    return f"{model_name}: {setting}" if not setting.isdigit() else f"{model_name}: layer {setting}"


def _cell(result: ProbeResult | None) -> str:
    if result is None:
        return "n/a"
    text = f"{100 * result.score:.1f} ± {100 * result.test_std[result.metric]:.1f}"
    if result.best_layer is not None:
        return f"{text} (L{result.best_layer})"
    if result.layer_weights is not None and len(result.layer_weights) > 1:
        return f"{text} (top L{int(np.argmax(result.layer_weights))})"
    return text


def plot_suite(entries: Sequence[ProbeEntry], floors: dict[str, float], context: dict[str, Any], path: Path) -> Path:
    """One panel per task: the model's per-layer test score (± std band) and, as horizontal
    lines, its other layer settings, the baselines and the floor."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'mertkit[eval]'") from error
    tasks = list(dict.fromkeys(e.task for e in entries))
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        _plot_task(axis, [e for e in entries if e.task == task], floors.get(task, float("nan")))
    title = context["model"]["name"] + (" (RANDOM weights: a floor, not a result)" if context["model"]["random_weights"] else "")
    figure.suptitle(f"probe test score per layer: {title}", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _plot_task(axis: Any, entries: Sequence[ProbeEntry], floor: float) -> None:
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 3))])
    for entry in entries:
        result = entry.result
        if result.per_layer:
            layers = [int(r.layer) for r in result.per_layer]
            means = np.array([100 * r.score for r in result.per_layer])
            stds = np.array([100 * r.test_std[r.metric] for r in result.per_layer])
            axis.plot(layers, np.maximum(means, PLOT_FLOOR), marker="o", label="model, per layer")
            axis.fill_between(layers, np.maximum(means - stds, PLOT_FLOOR), np.maximum(means + stds, PLOT_FLOOR), alpha=0.2)
            axis.set_xticks(layers)
        else:
            label = f"model, {entry.setting}" if entry.source == "model" else BASELINE_TITLES[entry.source]
            _hline(axis, 100 * result.score, label, linestyle=next(styles), color=f"C{len(axis.lines) % 10}")
    if not np.isnan(floor):
        _hline(axis, 100 * floor, "floor (no audio)", color="grey", linewidth=0.8)
    axis.set_title(f"{entries[0].task} ({entries[0].result.metric})", fontsize="medium")
    axis.set_xlabel("hidden state")
    axis.set_ylabel("test ×100")
    axis.legend(fontsize="x-small")


def _hline(axis: Any, value: float, label: str, **style: Any) -> None:
    # A very negative R² would squash every other line: draw it at the edge and print its value.
    if value < PLOT_FLOOR:
        label, value = f"{label} ({value:.0f}, off scale)", PLOT_FLOOR
    axis.axhline(value, label=label, **style)
