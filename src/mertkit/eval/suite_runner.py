"""``mert eval --suite synth`` as a library call: build the suite, extract and cache, probe, report.

Several models can be evaluated in one run (one report, overlaid); each also gets a
random-initialisation row: the same architecture (its config), PyTorch's default initial
weights, ``random_init`` seeds, features extracted and probed like the model's; init seed i is
probed with probe seed ``seeds[i % len(seeds)]`` so the row costs about one model's probes, and
its score is the mean over init seeds (the spread shown is over init seeds).

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
3. Baseline features (:mod:`mertkit.eval.baselines`), computed only for files missing or
   unreadable: MFCC, chroma and log-mel statistics of every clip task in
   ``out_dir/features/baseline-<name>/<folder key>/``; onset strength of the beat task, unpooled
   at the frame rate of the first model's beat features (the grid its beat targets use), in
   ``out_dir/features/baseline-onset-<rate>hz/<folder key>/``.
4. Probes (:func:`mertkit.eval.probes.run_probe`) on every task: for the model each layer
   setting asked for (default: the sweep ``"all"``, reported at its best-validation layer, and
   ``"weighted"``); for each baseline its single "layer", with the probe settings of the task
   (beat: the beat probe). The onset baseline also gets a probe-free row: peaks picked straight
   from its envelope (:func:`mertkit.eval.probes.peak_picking_result`). A majority-class (or
   train-mean) predictor is scored too, as the floor.
5. Report, in a new run folder ``out_dir/<YYYYmmdd-HHMMSS>/`` (an existing folder is never
   overwritten unless ``overwrite``): see :mod:`mertkit.eval.suite_report`.

Synthetic task folders -> probe tasks:

* ``pitch``, ``pitch_class``, ``instrument``, ``key``: multiclass, accuracy.
* ``chorale_key`` (not a default task; ``mert bench-suite chorales`` renders it, see
  :mod:`mertkit.synth.chorales`): the key of Bach chorale openings, multiclass, accuracy.
* ``tempo`` (from the ``tempo`` folder): the BPM as a one-target regression on pooled
  features, R².
* ``beat`` (from the ``tempo`` folder): per-frame beat activation on unpooled features, beat
  F-measure at the suite's 70 ms tolerance with the probes' peak-picking decoder (not
  madmom's DBN). Its baseline is onset strength; the clip statistics have no time axis.
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

from mertkit.eval.baselines import BASELINE_SCOPE, BASELINE_TITLES, DEFAULT_BASELINES, FEATURE_VERSION, ONSET
from mertkit.eval.datasets import DatasetError, Record, TaskSpec, encode_labels, read_manifest
from mertkit.eval.features import FeatureError, FeatureSplits, from_safetensors_dir, read_feature_file
from mertkit.eval.metrics import MetricError
from mertkit.eval.probes import ProbeConfig, ProbeError, ProbeResult, run_probe

__all__ = [
    "BASELINE_TITLES",
    "DEFAULT_BASELINES",
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
PROBE_TASKS: dict[str, str] = {"pitch": "pitch", "pitch_class": "pitch_class", "instrument": "instrument", "key": "key",
                               "tempo": "tempo", "beat": "tempo", "chorale_key": "chorale_key"}
DEFAULT_TASKS = ("pitch", "pitch_class", "instrument", "key", "tempo", "beat")
DEFAULT_RANDOM_INIT = 3
BEAT_NOT_RUN = "beat tracking not run (not among the tasks); tempo is scored as BPM regression only"
ONSET_PEAKS = "onset peaks"  # the onset baseline's probe-free row
# Report column titles of every baseline row.
ROW_TITLES = {**BASELINE_TITLES, "onset": "onset strength (probe)", ONSET_PEAKS: "onset peaks (no probe)"}
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
    # A beat is a change: every representation's beat probe sees the 4 frames either side
    # (53 ms at 75 Hz), as the onset baseline's envelope rise needs them.
    beat_context: int = 4

    def config(self, layer: int | str, *, frame_level: bool = False) -> ProbeConfig:
        if frame_level:
            return ProbeConfig(kind=self.beat_kind, layer=layer, lrs=self.lrs, seeds=self.seeds,
                               max_epochs=min(self.max_epochs, self.beat_max_epochs),
                               patience=min(self.patience, self.beat_patience), batch_size=self.batch_size,
                               context=self.beat_context)
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
    """One probe result. ``source``: the row's name (a model's name, "<model> random init" or a
    baseline name); ``kind``: "model", "random_init" or "baseline"; ``setting``: the layer choice."""

    task: str
    source: str
    setting: str
    result: ProbeResult
    kind: str = "model"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "kind": self.kind, "setting": self.setting,
                **self.result.to_dict()}


@dataclass
class SuiteRun:
    """What :func:`run_suite` produced (``model``: the first model; ``models``: all of them)."""

    model: ModelInfo
    entries: list[ProbeEntry]
    floors: dict[str, float]
    table: str
    paths: dict[str, Path]
    seconds: float
    notes: list[str] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    paired: str = ""  # the report's paired section (markdown): each model's best layer against its floors


# ----------------------------------------------------------------------------- entry point


def run_suite(
    model_name_or_dir: str | Path | None | Sequence[str | Path | None],
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
    baselines: Sequence[str] = DEFAULT_BASELINES,
    seed: int | None = None,
    clips_per_task: int | None = None,
    window: float | None = 0.0,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    random_init: int = DEFAULT_RANDOM_INIT,
    run_name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Log | None = None,
) -> SuiteRun:
    """Evaluate one or several models (None: the offline demo model) on the synthetic suite;
    see the module docstring. ``seed`` None: the existing suite's seed, else 0."""
    from mertkit.eval.suite_report import write_suite_report

    started = time.perf_counter()
    log = log or (lambda message: None)
    # Every setting is checked before anything slow runs.
    settings = _probe_settings(probe, layers, seeds, lrs, max_epochs, patience, beat_probe)
    options = _extract_options(window, batch_size, dtype)
    _check_baselines(baselines)
    wanted = _check_tasks(tasks)
    if random_init < 0:
        raise SuiteRunError(f"random_init must be 0 or more seeds, got {random_init}")
    out_dir = Path(out_dir)
    run_dir = _run_folder(out_dir, run_name, overwrite)
    requested = list(model_name_or_dir) if isinstance(model_name_or_dir, (list, tuple)) else [model_name_or_dir]
    loaded = [load_model(name, device) for name in requested]
    for _, info in loaded:
        _check_layer_indices(settings, info)
        log(f"model: {info.name} ({info.origin})")
    _check_distinct(loaded)
    stages = 3
    log(f"stage 1/{stages}: suite and features")
    folders = ensure_suite(suite_dir, sorted({PROBE_TASKS[name] for name in wanted}), seed, clips_per_task, log)
    suite_tasks = [task for task in load_suite_tasks(folders) if task.name in wanted]
    sources: list[tuple[str, str, dict[str, Path], int]] = []  # (name, kind, feature dirs, probe seed or -1)
    for model, info in loaded:
        sources.append((info.name, "model", extract_model_features(model, info, suite_tasks, out_dir, options, progress, log), -1))
        for init_seed in range(random_init):
            twin, twin_info = random_init_model(model, info, init_seed)
            dirs = extract_model_features(twin, twin_info, suite_tasks, out_dir, options, progress, log)
            sources.append((f"{info.name} random init", "random_init", dirs, settings.seeds[init_seed % len(settings.seeds)]))
        del model  # the probes do not need it; free its memory
    loaded = [(None, info) for _, info in loaded]
    log(f"stage 2/{stages}: baselines ({time.perf_counter() - started:.0f} s so far)")
    frame_rate = beat_frame_rate(suite_tasks, sources[0][2]) if ONSET in baselines else None
    baseline_dirs = {name: write_baselines(suite_tasks, out_dir, name, log, progress, frame_rate) for name in baselines}
    log(f"stage 3/{stages}: probes ({time.perf_counter() - started:.0f} s so far)")
    entries = run_probes(suite_tasks, sources, baseline_dirs, settings, log, progress, loaded[0][1].num_hidden_states)
    floors = {task.name: floor_score(task) for task in suite_tasks}
    infos = [info for _, info in loaded]
    notes = _notes(infos, suite_tasks, wanted, settings, random_init, baselines, frame_rate)
    seconds = time.perf_counter() - started
    context = _report_context(infos, suite_tasks, wanted, settings, baselines, window, seconds, notes, random_init)
    paths, table, paired = write_suite_report(entries, floors, context, run_dir)
    return SuiteRun(infos[0], entries, floors, table, paths, seconds, notes, infos, paired)


def _run_folder(out_dir: Path, run_name: str | None, overwrite: bool) -> Path:
    """``out_dir/<run_name or timestamp>``: refused when it holds a report, unless ``overwrite``."""
    name = run_name or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in ("features", "suite", ".", ".."):
        raise SuiteRunError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (not 'features' or 'suite')")
    folder = out_dir / name
    if (folder / "results.json").exists() and not overwrite:
        raise SuiteRunError(f"{folder}: already holds a report; choose another run name or pass --overwrite")
    return folder


def _check_distinct(loaded: Sequence[tuple[Any, ModelInfo]]) -> None:
    names = [info.name for _, info in loaded]
    if len(set(names)) != len(names):
        raise SuiteRunError(f"models must have distinct names in one report, got {names}")


def random_init_model(model: Any, info: ModelInfo, init_seed: int) -> tuple[Any, ModelInfo]:
    """The same architecture (``model.config``) with PyTorch's default initial weights drawn
    from ``torch.manual_seed(init_seed)``, on the model's device, and what the report says of it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        twin = _same_architecture(model)
    twin.info = dataclasses.replace(model.info, name=f"{info.name}-random-init-{init_seed}")
    device = next(model.parameters()).device
    twin_info = dataclasses.replace(
        info, name=f"{info.name} random init (seed {init_seed})", random_weights=True,
        origin=f"random initialisation (seed {init_seed}) of {info.name}'s architecture",
        fingerprint=hashlib.blake2b(f"{info.fingerprint}:random-init:{init_seed}".encode(), digest_size=16).hexdigest(),
    )
    return twin.to(device).eval(), twin_info


def _same_architecture(model: Any) -> Any:
    """A fresh model of `model`'s config. A MERT-v2 twin keeps the mel front end's buffers
    (window, filterbank, normalisation): they are the fixed signal processing, not learnt weights."""
    from mertkit.models.hubert.model import MertModel
    from mertkit.models.mert2.model import Mert2Model

    if not isinstance(model, Mert2Model):
        return MertModel(model.config)
    twin = Mert2Model(model.config)
    twin.feature_extractor.load_state_dict(model.feature_extractor.state_dict())
    return twin


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
    suite_dir: str | Path, folders: Sequence[str], seed: int | None, clips_per_task: int | None, log: Log
) -> dict[str, Path]:
    """{suite task: folder}: a task folder already rendered there (e.g. by ``mert bench-suite``)
    is used as it is; a missing one is rendered with the suite's seed (``seed``, else the seed
    of the tasks already there, else 0)."""
    from mertkit.synth.render import RenderError
    from mertkit.synth.suite import TASKS as SYNTH_TASKS, SuiteError, build_task, default_clips

    suite_dir = Path(suite_dir)
    existing = {name: _read_task_json(suite_dir / name) for name in folders if (suite_dir / name / "task.json").is_file()}
    seeds = {info.get("seed") for info in existing.values()}
    if seed is None and len(seeds) > 1:
        raise SuiteRunError(f"{suite_dir}: its tasks were rendered with different seeds {sorted(map(str, seeds))}")
    suite_seed = seed if seed is not None else (seeds.pop() if seeds else 0)
    found = {}
    for name in folders:
        folder = suite_dir / name
        if name in existing:
            _check_existing_task(folder, existing[name], suite_seed, clips_per_task)
        elif name not in SYNTH_TASKS:  # not generated here: it has a command of its own
            raise SuiteRunError(f"{folder}: missing; render it with `mert bench-suite chorales -o {suite_dir} "
                                f"--seed {suite_seed}`")
        else:
            clips = clips_per_task or default_clips(name)
            # No task.json means an interrupted render (it is written last): start that folder over.
            try:
                _check_bundled_soundfont(suite_dir, name, existing)
                log(f"rendering suite task {name!r}: {clips} clips, seed {suite_seed} -> {folder}")
                build_task(suite_dir, name, seed=suite_seed, num_clips=clips, overwrite=True)
            except (SuiteError, RenderError) as error:
                raise SuiteRunError(f"{folder}: cannot render the suite task ({error})") from error
        found[name] = folder
    return found


def _check_bundled_soundfont(suite_dir: Path, missing: str, existing: dict[str, dict[str, Any]]) -> None:
    """A missing task is rendered with the bundled SoundFont: refuse where the tasks already
    there were rendered with another, rather than mix two banks in one suite."""
    from mertkit.synth.render import soundfont_identity

    bundled = soundfont_identity()["sha256"]
    others = sorted({info["soundfont"]["file"] for info in existing.values()
                     if isinstance(info.get("soundfont"), dict) and info["soundfont"].get("sha256") not in (None, bundled)})
    if others:
        raise SuiteRunError(
            f"{suite_dir}: its tasks were rendered with {', '.join(others)}, and {missing!r} is missing; render it there "
            f"with `mert bench-suite synth -o {suite_dir} --task {missing} --soundfont ...` (same seed), or use another suite folder"
        )


def suite_soundfonts(tasks: Sequence[SuiteTask]) -> list[str]:
    """The SoundFonts the tasks' clips were rendered with, as "file (sha256:…)" ("not recorded"
    for a task.json written before mertkit recorded it)."""
    found = []
    for task in tasks:
        identity = _read_task_json(task.folder).get("soundfont")
        found.append(f"{identity['file']} (sha256:{identity['sha256'][:12]})" if isinstance(identity, dict) and
                     {"file", "sha256"} <= set(identity) else "not recorded")
    return list(dict.fromkeys(found))


def _check_existing_task(folder: Path, info: dict[str, Any], seed: int, clips_per_task: int | None) -> None:
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
    from mertkit.models.shipped import demo_model_dir

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
    """The weights fingerprint extraction records (config and weight files): the cache key's guarantee."""
    from mertkit.extraction.provenance import directory_fingerprint

    return directory_fingerprint(directory)


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


def beat_frame_rate(tasks: Sequence[SuiteTask], model_dirs: dict[str, Path]) -> float | None:
    """The frame rate of the beat task's cached model features (the grid its beat targets are
    built on), read from one file's metadata; None without a beat task."""
    task = next((task for task in tasks if task.name == "beat"), None)
    if task is None:
        return None
    path = model_dirs[task.name] / f"{task.records[0].path}.safetensors"
    try:
        _, meta = read_feature_file(path)
        return float(meta["frame_rate"])
    except (FeatureError, KeyError, ValueError) as error:
        raise SuiteRunError(f"{path}: cannot read the beat features' frame rate ({error!r})") from error


def write_baselines(tasks: Sequence[SuiteTask], out_dir: Path, baseline: str, log: Log,
                    progress: bool | None = None, frame_rate: float | None = None) -> dict[str, Path]:
    """{task: folder of ``<path>.safetensors`` baseline features}, computing only what is missing:
    clip statistics for the clip tasks, onset strength at ``frame_rate`` for the beat task."""
    from mertkit.eval.baselines import write_baseline_features, write_onset_features
    from mertkit.progress import Progress

    onset = baseline == ONSET
    if onset and not any(task.frame_level for task in tasks):
        return {}
    if onset and frame_rate is None:
        raise SuiteRunError("the onset baseline needs the beat features' frame rate")
    folder = f"baseline-{baseline}-{frame_rate:g}hz" if onset else f"baseline-{baseline}"
    dirs: dict[str, Path] = {}
    todo: dict[str, list[Record]] = {}
    for task in tasks:
        if task.frame_level != onset:
            continue
        dirs[task.name] = out_dir / "features" / folder / task.cache_name
        todo[task.name] = [record for record in task.records
                           if not _baseline_cached(dirs[task.name], record, baseline, frame_rate if onset else None)]
    total = sum(len(records) for records in todo.values())
    if not total:
        return dirs
    with Progress(total, f"{baseline} baseline", unit="clip", enabled=progress) as bar:
        for task in tasks:
            if not todo.get(task.name):
                continue
            log(f"{baseline} features of {task.folder.name!r}: {len(todo[task.name])} clips -> {dirs[task.name]}")
            for record in todo[task.name]:
                try:
                    if onset:
                        write_onset_features([record], dirs[task.name], frame_rate)
                    else:
                        write_baseline_features([record], dirs[task.name], baseline)
                except FeatureError as error:
                    raise SuiteRunError(f"{task.folder}: {baseline} baseline failed ({error})") from error
                bar.update(1)
    return dirs


def _baseline_cached(cache: Path, record: Record, baseline: str, frame_rate: float | None = None) -> bool:
    path = cache / f"{record.path}.safetensors"
    if not path.is_file():
        return False
    try:
        _, meta = read_feature_file(path)
    except FeatureError:
        return False  # a file cut short by an interrupted run: recompute it
    # The folder key already pins the audio bytes; the source path may differ (a moved folder).
    return (meta.get("model") == baseline and meta.get("baseline_version") == FEATURE_VERSION
            and (frame_rate is None or meta.get("frame_rate") == repr(float(frame_rate))))


# ----------------------------------------------------------------------------- probes


def run_probes(
    tasks: Sequence[SuiteTask], sources: Sequence[tuple[str, str, dict[str, Path], int]],
    baseline_dirs: dict[str, dict[str, Path]], settings: ProbeSettings, log: Log, progress: bool | None = None,
    num_hidden_states: int = 1,
) -> list[ProbeEntry]:
    """Every (task, source, layer setting) probe, in table order. ``sources``: (name, kind,
    {task: feature folder}, probe seed or -1 for all seeds); random-init sources of one name are
    pooled into one row (:func:`mertkit.eval.probes.pool_results`)."""
    from mertkit.eval.probes import count_fits, pool_results
    from mertkit.progress import Progress

    total = 0
    for task in tasks:
        for setting in settings.layers:
            for _, _, _, seed in sources:
                fits = count_fits(settings.config(setting, frame_level=task.frame_level), num_hidden_states)
                total += fits if seed < 0 else fits // len(settings.seeds)
        total += sum(len(settings.lrs) * len(settings.seeds) for dirs in baseline_dirs.values() if task.name in dirs)
    entries = []
    with Progress(total, "probes", unit="fit", enabled=progress) as bar:
        for task in tasks:
            for setting in settings.layers:
                pooled: dict[str, list[ProbeResult]] = {}
                for name, kind, dirs, seed in sources:
                    chosen = settings if seed < 0 else dataclasses.replace(settings, seeds=(seed,))
                    entry = _probe(task, _features(dirs[task.name], task), name, kind, setting, chosen, log, bar)
                    if kind == "random_init":
                        pooled.setdefault(name, []).append(entry.result)
                    else:
                        entries.append(entry)
                for name, results in pooled.items():
                    entries.append(ProbeEntry(task.name, name, str(setting), pool_results(results), "random_init"))
            for baseline, dirs in baseline_dirs.items():
                if task.name in dirs:
                    data = _features(dirs[task.name], task)
                    entries.append(_probe(task, data, baseline, "baseline", 0, settings, log, bar))
                    if baseline == ONSET:
                        entries.append(_peak_picking(task, data, settings, log))
    return entries


def _features(folder: Path, task: SuiteTask) -> FeatureSplits:
    try:
        return from_safetensors_dir(folder, task.records, task.spec)
    except DatasetError as error:  # FeatureError is a DatasetError
        raise SuiteRunError(f"task {task.name!r}: {error}") from error


def _probe(task: SuiteTask, data: FeatureSplits, source: str, kind: str, layer: int | str, settings: ProbeSettings,
           log: Log, bar: Any = None) -> ProbeEntry:
    started = time.perf_counter()
    try:
        result = run_probe(task.spec, data, settings.config(layer, frame_level=task.frame_level), bar)
    except ProbeError as error:
        raise SuiteRunError(f"task {task.name!r}, {source} layer {layer!r}: {error}") from error
    except MetricError as error:
        sizes = {s: sum(r.split == s for r in task.records) for s in ("train", "valid", "test")}
        raise SuiteRunError(
            f"task {task.name!r} ({task.folder}): cannot score a split of {sizes} ({error}); build the suite with more clips"
        ) from error
    setting = ("frames" if task.frame_level else "stats") if kind == "baseline" else str(layer)
    log(f"probe {task.name} / {source} / {setting}: {task.spec.metric} = {100 * result.score:.1f} "
        f"({time.perf_counter() - started:.0f} s)")
    return ProbeEntry(task.name, source, setting, result, kind)


def _peak_picking(task: SuiteTask, data: FeatureSplits, settings: ProbeSettings, log: Log) -> ProbeEntry:
    """The onset baseline's probe-free row: its envelope (feature column 0) peak-picked directly."""
    from mertkit.eval.probes import peak_picking_result

    try:
        result = peak_picking_result(task.spec, data, settings.config(0, frame_level=True))
    except (ProbeError, MetricError) as error:
        raise SuiteRunError(f"task {task.name!r}, onset peak picking: {error}") from error
    log(f"peak picking {task.name} / onset envelope: {task.spec.metric} = {100 * result.score:.1f} ({result.probe})")
    return ProbeEntry(task.name, ONSET_PEAKS, "peaks", result, "baseline")


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


def _notes(infos: Sequence[ModelInfo], tasks: Sequence[SuiteTask], wanted: Sequence[str], settings: ProbeSettings,
           random_init: int, baselines: Sequence[str] = (), frame_rate: float | None = None) -> list[str]:
    notes = []
    if "tempo" in wanted and "beat" not in wanted:
        notes.append(BEAT_NOT_RUN)
    for info in infos:
        if info.random_weights:
            notes.append(f"{info.name} has RANDOM weights: its numbers are a floor for an untrained network, not a result.")
    if random_init:
        seeds = [settings.seeds[i % len(settings.seeds)] for i in range(random_init)]
        notes.append(f"random init: each model's architecture with PyTorch's default initial weights, init seeds "
                     f"0..{random_init - 1} probed with probe seeds {seeds}; mean over init seeds (± their spread).")
    if any(task.name == "beat" for task in tasks):
        beat = settings.config(0, frame_level=True)
        notes.append(f"beat: per-frame beat activation, {beat.kind} probe over ±{beat.context} frames of context (at most "
                     f"{beat.max_epochs} epochs, patience {beat.patience}), peak picking (not madmom's DBN), F-measure at "
                     "70 ms tolerance.")
    if baselines:
        notes.append(f"baselines apply per task ({BASELINE_SCOPE}); n/a where one does not apply.")
    if ONSET in baselines and frame_rate is not None:
        notes.append(f"onset: log-mel spectral flux (all bands and 8 band groups) at {frame_rate:g} "
                     f"frames/s, the grid of {infos[0].name}'s beat features, probed like the models; 'onset peaks': the "
                     "envelope peak-picked with no probe, threshold chosen on valid.")
    if any(task.name == "tempo" for task in tasks):
        notes.append("tempo: the clip's BPM regressed from time-pooled features (R²).")
    return notes


def _report_context(
    infos: Sequence[ModelInfo], tasks: Sequence[SuiteTask], wanted: Sequence[str], settings: ProbeSettings,
    baselines: Sequence[str], window: float | None, seconds: float, notes: list[str], random_init: int,
) -> dict[str, Any]:
    sizes = {task.name: {s: sum(r.split == s for r in task.records) for s in ("train", "valid", "test")} for task in tasks}
    labels = {task.name: list(task.spec.labels) for task in tasks if task.spec.kind == "multiclass"}
    seeds = {_read_task_json(task.folder).get("seed") for task in tasks}
    return {
        "model": dataclasses.asdict(infos[0]),
        "models": [dataclasses.asdict(info) for info in infos],
        "suite": {"name": "synth", "seed": seeds.pop() if len(seeds) == 1 else sorted(map(str, seeds)),
                  "soundfonts": suite_soundfonts(tasks), "dirs": {t.name: str(t.folder) for t in tasks},
                  "split_sizes": sizes, "labels": labels},
        "probe": {**dataclasses.asdict(settings), "layers": [str(layer) for layer in settings.layers]},
        "random_init_seeds": list(range(random_init)),
        "baselines": list(baselines),
        "extraction": {"pooling": "mean (beat: none)", "window_s": window, "layers": "all hidden states"},
        "wall_seconds": round(seconds, 1),
        "notes": notes,
        # Rows the table shows as not run, with their metric.
        "not_run": {"beat": "beat_f"} if "tempo" in wanted and "beat" not in wanted else {},
    }
