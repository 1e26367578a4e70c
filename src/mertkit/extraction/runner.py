"""`mert extract` as a library call: files in, per-file safetensors and/or a Parquet store out.

For an input INPUT (a file or a folder, recursed) and an output folder DIR, each audio file
`INPUT/<rel>` becomes `DIR/<rel>.safetensors` holding:

    hidden_states   [layers, frames, width]  (pool none) or [layers, width] (pooled)
    timestamps      [frames] seconds (pool none)
    window_starts, window_ends   [windows] seconds
    window_pooled   [windows, layers, width] (pooled output only)

and string metadata: model (a name), model_source, weights (a fingerprint of the weight
files), sample_rate, frame_rate, layers (JSON list), window, hop, pooling, dtype (the compute
dtype), do_normalize, source (the resolved input path), mertkit_version. Outputs are written
with `mertkit.fileio.atomic_write` (temp file, fsync, rename), so an interrupted run never
leaves a half file, and a rerun skips every output whose provenance and settings match the
request (the weights' fingerprint, not the model's name, identifies the model).

One file never sinks a run: a file that cannot be decoded, gives non-finite features (the
reason names the layer), cannot be written (a full disk, a read-only folder, a name too long),
is a special file (never opened), or changes while a store run reads it, is reported with its
reason; the others finish and are kept. Temp files and spool folders are removed on any error
and on SIGINT/SIGTERM; those a killed run left behind are removed by the next run writing
into the same folder.

Bounded memory: files are decoded as streams (optionally in worker processes, overlapped
with the model) and never held whole. Frame-level output is written as windows finish
(`SafetensorsFrameWriter`: one spool file per layer, assembled into the safetensors file at
the end); pooled output keeps only running sums and the per-window vectors.

Feature store: with `store=STORE_DIR` (pooled output only) every track adds one "track" row
and one row per window to a Parquet store (`mertkit.store.parquet`), keyed by (resolved
absolute path, content hash): two spellings of one file are one track. Tracks already in the
store are skipped; shards are committed atomically, so a run killed at any moment (even with
SIGKILL) is finished by running it again, with no track lost, duplicated or half written; a
run that fails on some tracks, or is interrupted, still commits every track it finished.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mertkit.audio import DEFAULT_MAX_DURATION, discover_audio, display_path
from mertkit.extraction.decode import BLOCK, DEFAULT_BLOCK_SECONDS, DecodeEvent, decode_files
from mertkit.extraction.engine import (
    ExtractError,
    Extractor,
    ExtractOptions,
    Features,
    JobFailure,
    WindowOutput,
)
from mertkit.fileio import (
    TEMP_MARK, atomic_write, make_temp_dir, remove_stale_temps, terminate_raises, writable_dir_problem,
)
from mertkit.models.family import FamilyModel
from mertkit.models.kernels import DTYPE_CHOICES, dtype_name, resolve_dtype

OUTPUT_SUFFIX = ".safetensors"
TEMP_PREFIX = TEMP_MARK
HASH_THREADS = 4  # hashing reads files; blake2b releases the GIL, so threads overlap the reads


@dataclass(frozen=True)
class InputFile:
    path: Path  # as given or discovered: what reports name
    relative: str  # path under its input root; names the output
    key: str = ""  # resolved absolute path (printable): the track's identity in a store

    @property
    def output_name(self) -> str:
        return self.relative + OUTPUT_SUFFIX


@dataclass
class RunReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class StoreOptions:
    """Where and how pooled vectors go into a Parquet feature store."""

    root: str | os.PathLike
    dtype: str = "float16"
    split: str | None = None
    rows_per_shard: int = 1024


@dataclass(frozen=True)
class Provenance:
    """What makes two runs' features comparable (see mertkit.extraction.provenance)."""

    model: str  # a name, for people; never compared when both sides have a fingerprint
    weights: str
    compute_dtype: str
    do_normalize: bool
    source: str  # where the model was loaded from ("" when built in memory)

    @classmethod
    def of(cls, model: FamilyModel, extractor: Extractor) -> Provenance:
        from mertkit.extraction import provenance

        info = getattr(model, "info", None)
        return cls(info.name if info else "unnamed", provenance.weights_fingerprint(model),
                   dtype_name(extractor.compute_dtype), bool(extractor.do_normalize),
                   provenance.model_source(model))


def load_for_extraction(name_or_path: str | os.PathLike, revision: str | None = None, *, device: str = "cpu",
                        dtype: str = "float32") -> FamilyModel:
    """The model as extraction runs it, for every engine: half precision loads half-precision
    weights, which the fused CPU kernels and GPUs run natively (no autocast)."""
    from mertkit.models.checkpoint import load

    if dtype not in DTYPE_CHOICES:
        raise ExtractError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    return load(name_or_path, revision, device=device, dtype=resolve_dtype(dtype, device))


def input_key(path: Path) -> str:
    """A track's identity: its resolved absolute path (printable), so `audio/x.wav` and its
    absolute spelling are one track."""
    return display_path(path.resolve())


def discover_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """(files to extract, inputs refused unread as (path, reason)); the rules are
    `mertkit.audio.discover_audio`'s, shared with `mert labels`. The same file reached twice
    (two spellings) is one input."""
    discovery = discover_audio(inputs)
    unique: dict[str, InputFile] = {}
    names: set[str] = set()
    for found in discovery.files:
        f = InputFile(found.path, found.relative, input_key(found.path))
        if f.key in unique:
            continue
        if f.relative in names:
            raise ExtractError(f"two inputs would write the same output {f.output_name!r}; extract them separately")
        unique[f.key] = f
        names.add(f.relative)
    return list(unique.values()), discovery.rejected


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create the output folder; one-line ExtractError when it cannot be created or written."""
    problem = writable_dir_problem(out_dir, "output folder")
    if problem:
        raise ExtractError(problem)
    return Path(out_dir)


def output_metadata(model: FamilyModel, extractor: Extractor, source: str,
                    provenance: Provenance | None = None) -> dict[str, str]:
    from mertkit import __version__

    provenance = provenance or Provenance.of(model, extractor)
    config = extractor.config
    return {
        "model": provenance.model,
        "model_source": provenance.source,
        "weights": provenance.weights,
        "sample_rate": str(config.sample_rate),
        "frame_rate": repr(config.frame_rate),
        "layers": json.dumps(list(extractor.layers)),
        "window": repr(float(extractor.window)),
        "hop": repr(float(extractor.hop)),
        "pooling": extractor.options.pool,
        "dtype": provenance.compute_dtype,
        "do_normalize": str(provenance.do_normalize).lower(),
        "dtype_requested": extractor.options.dtype,
        "source": source,
        "mertkit_version": __version__,
    }


# Metadata that must match for an existing output to count as already done: the weights'
# fingerprint, not the model's name (two checkpoints may share a folder name).
_REQUEST_KEYS = ("weights", "sample_rate", "layers", "window", "hop", "pooling", "dtype", "do_normalize")


def store_meta(model: FamilyModel, extractor: Extractor, dtype: str, provenance: Provenance | None = None):
    """The StoreMeta every row written by this extractor obeys."""
    from mertkit.store.parquet import StoreMeta

    prov = provenance or Provenance.of(model, extractor)
    config = model.config
    whole = not extractor.window
    return StoreMeta(
        model=prov.model, sample_rate=config.sample_rate, frame_rate=config.frame_rate,
        hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, layers=extractor.layers, dtype=dtype,
        window=None if whole else float(extractor.window), hop=None if whole else float(extractor.hop),
        pooling=extractor.options.pool, weights=prov.weights, compute_dtype=prov.compute_dtype,
        do_normalize=prov.do_normalize, model_source=prov.source,
    )


def nonfinite_reason(values: np.ndarray, layers: tuple[int, ...]) -> str | None:
    """None when `values` ([layers, ...]) are all finite, else which layer first is not."""
    flat = np.asarray(values).reshape(len(layers), -1)
    finite = np.isfinite(flat).all(axis=1)
    if finite.all():
        return None
    position = int(np.argmin(finite))
    kinds = [name for name, bad in (("NaN", np.isnan(flat[position]).any()),
                                    ("Inf", np.isinf(flat[position]).any())) if bad]
    return f"non-finite features in layer {layers[position]} ({' and '.join(kinds)})"


def write_failure(err: OSError, target: Path) -> str:
    """The reason a write failed, in one line."""
    if err.errno == errno.ENAMETOOLONG:
        return f"output name too long for the file system ({len(os.fsencode(target.name))} bytes): {target.name}"
    return f"cannot write {display_path(target)}: {err.strerror or err}"


@dataclass(frozen=True)
class _Hashed:
    digest: str
    signature: tuple[int, int]  # (size, mtime_ns) when hashed


def _signature(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def hash_inputs(files: list[InputFile]) -> tuple[dict[str, _Hashed], list[tuple[InputFile, str]]]:
    """Content hashes by input key, and (file, reason) for the files that cannot be read."""
    from mertkit.store.parquet import hash_file

    def digest(f: InputFile) -> tuple[InputFile, _Hashed | str]:
        try:
            signature = _signature(f.path)
            return f, _Hashed(hash_file(f.path), signature)
        except OSError as err:  # missing or unreadable: this file's failure alone
            return f, f"cannot read ({err.strerror or err})"

    hashes, failures = {}, []
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for f, result in pool.map(digest, files):
            if isinstance(result, str):
                failures.append((f, result))
            else:
                hashes[f.key] = result
    return hashes, failures


def changed_reason(f: InputFile, hashed: _Hashed) -> str | None:
    """Why the file no longer is the version that was hashed, or None."""
    try:
        now = _signature(f.path)
    except OSError as err:
        return f"removed or unreadable while being extracted ({err.strerror or err})"
    if now != hashed.signature:
        return "the file changed while being extracted; run again to extract the new version"
    return None


def stored_conflict(writer, f: InputFile, digest: str) -> str | None:
    """Why the store refuses this file: it holds another version of the same path."""
    stored = writer.stored_hash(f.key)
    if stored is None or stored == digest:
        return None
    return (f"changed since it was stored (content hash {stored}, now {digest}); write the new "
            "version into a fresh store")


def fail_uncommitted(writer, err: OSError, by_key: dict[str, InputFile],
                     report: RunReport) -> list[tuple[InputFile, str]]:
    """After a shard could not be committed (a full disk): its buffered tracks are dropped and
    reported failed (moved out of `report.done`); the tracks committed before stay."""
    reason = f"cannot commit to the store {display_path(writer.root)}: {err.strerror or err}"
    failed = []
    for key in writer.discard_pending():
        f = by_key[key]
        if str(f.path) in report.done:
            report.done.remove(str(f.path))
        report.failed.append((str(f.path), reason))
        failed.append((f, reason))
    return failed


def declared_seconds(path: Path) -> float:
    """The duration the container declares (0 when it does not say or cannot be read)."""
    from mertkit.audio import audio_info

    try:
        return float(audio_info(str(path)).duration or 0.0)
    except (OSError, ValueError):  # ValueError includes AudioError: decoding reports it properly
        return 0.0


class AudioProgress:
    """Progress in seconds of audio (rate and ETA in audio seconds per second), fed as audio
    is decoded; a finished file moves it to the file's declared duration. A bar on a terminal,
    a log line every 30 s elsewhere (:class:`mertkit.progress.Progress`)."""

    def __init__(self, paths: list[Path], *, enabled: bool, tty: bool | None = None):
        from mertkit.progress import Progress

        self.expected = [declared_seconds(p) for p in paths] if enabled else [0.0] * len(paths)
        self.counted = [0.0] * len(paths)
        self.files, self.finished = len(paths), 0
        self.bar = Progress(sum(self.expected), "extract", unit="s", enabled=enabled, tty=tty)
        self.bar.update(0, files=self._files())

    def advance(self, job: int, seconds: float) -> None:
        self.counted[job] += seconds
        self._update(seconds)

    def file_finished(self, job: int) -> None:
        self.finished += 1
        self._update(max(self.expected[job] - self.counted[job], 0.0), files=self._files())

    def close(self) -> None:
        self.bar.close()

    def _update(self, seconds: float, **postfix: str) -> None:
        if self.bar.count + seconds > self.bar.total:  # a container that understated its length
            self.bar.set_total(self.bar.count + seconds)
        self.bar.update(seconds, **postfix)

    def _files(self) -> str:
        return f"{self.finished}/{self.files}"


def run_extract(
    model: FamilyModel,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike | None,
    options: ExtractOptions = ExtractOptions(),
    *,
    progress: bool = True,
    on_event: Callable[[str, str, str], None] | None = None,
    workers: int = 0,
    store: StoreOptions | None = None,
    compile: bool = False,
    block_seconds: float = DEFAULT_BLOCK_SECONDS,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> RunReport:
    """Extract every input into `out_dir` (per-file safetensors) and/or a feature store;
    never stops on a bad file. `workers` > 0 decodes in that many worker processes; files longer
    than `max_duration` seconds (None: no limit) fail.

    Within the call SIGTERM/SIGHUP raise `mertkit.fileio.Terminated` (and SIGINT
    KeyboardInterrupt), so an interrupted run removes its temp files and commits the tracks it
    finished to the store before it ends."""
    if out_dir is None and store is None:
        raise ExtractError("nowhere to write: give an output folder, a feature store, or both")
    if store is not None and options.pool == "none":
        raise ExtractError("the feature store keeps pooled vectors: choose --pool mean or max "
                           "(frame-level features go to per-file safetensors with --out)")
    out = check_output_dir(out_dir) if out_dir is not None else None
    extractor = Extractor(model, options, compile=compile)
    provenance = Provenance.of(model, extractor)
    run = _Run(provenance, extractor, out, store, on_event)
    files, rejected = discover_inputs(inputs)
    run.reject(rejected)
    limits = (block_seconds, max_duration)
    with terminate_raises():
        if store is None:
            run.execute(files, progress, workers, limits)
            return run.report
        from mertkit.store.parquet import FeatureStoreWriter

        with FeatureStoreWriter(store.root, store_meta(model, extractor, store.dtype, provenance),
                                rows_per_shard=store.rows_per_shard) as writer:
            run.writer = writer
            try:
                run.execute(files, progress, workers, limits)
            finally:
                run.commit()  # also when interrupted: finished tracks are complete and kept
    return run.report


_REPORTED = "reported with the other tracks of its shard"


class _CheckedSink:
    """Wraps a track's sink: features that are not finite, or a write that fails (a full disk,
    a read-only folder, a name too long), become this track's failure instead of the run's."""

    def __init__(self, inner, layers: tuple[int, ...], target: Path | None):
        self.inner, self.layers, self.target = inner, layers, target
        self.failure: str | None = None

    def add(self, output: WindowOutput) -> None:
        if self.failure is not None:
            return
        self.failure = _window_nonfinite(output, self.layers)
        if self.failure is None:
            try:
                self.inner.add(output)
                return
            except OSError as err:
                self.failure = write_failure(err, self.target)
        self.inner.abort()

    def finish(self, num_samples: int) -> object:
        if self.failure is not None:
            return JobFailure(self.failure)
        try:
            return self.inner.finish(num_samples)
        except OSError as err:
            self.inner.abort()
            return JobFailure(write_failure(err, self.target))

    def abort(self) -> None:
        self.inner.abort()


def _window_nonfinite(output: WindowOutput, layers: tuple[int, ...]) -> str | None:
    # kept_sum covers every kept frame (for max pooling too); pooled covers the whole window.
    for values in (output.frames, output.pooled, output.kept_sum):
        if values is not None:
            reason = nonfinite_reason(values, layers)
            if reason is not None:
                return reason
    return None


class _Run:
    """One run_extract call: what to skip, what each finished track writes, the report."""

    def __init__(self, provenance: Provenance, extractor: Extractor, out: Path | None, store: StoreOptions | None,
                 on_event: Callable[[str, str, str], None] | None):
        self.provenance, self.extractor, self.out, self.store, self.on_event = (
            provenance, extractor, out, store, on_event)
        self.writer = None  # FeatureStoreWriter when storing
        self.report = RunReport()
        self.hashes: dict[str, _Hashed] = {}
        self.by_key: dict[str, InputFile] = {}
        self.open_sinks: dict[int, _CheckedSink] = {}

    def reject(self, rejected: list[tuple[str, str]]) -> None:
        """Inputs refused by discovery (special files, unlistable folders): failed, never read."""
        for path, reason in rejected:
            reason = _reason(reason, Path(path))
            self.report.failed.append((path, reason))
            if self.on_event:
                self.on_event("failed", path, reason)

    def execute(self, files: list[InputFile], progress: bool, workers: int, limits: tuple) -> None:
        """`limits` is (block_seconds, max_duration) for the decoder."""
        todo = self._todo(files)
        if not todo:
            return
        bar = AudioProgress([f.path for f in todo], enabled=progress)
        rate = self.extractor.config.sample_rate
        block_seconds, max_duration = limits
        events = decode_files([str(f.path) for f in todo], rate, workers=workers, block_seconds=block_seconds,
                              max_duration=max_duration)
        results = self.extractor.run(_counted(events, bar, rate), lambda job: self._sink(job, todo[job]))
        try:
            for job, outcome in results:
                self.open_sinks.pop(job, None)
                self._finished(todo[job], outcome)
                bar.file_finished(job)
        finally:
            results.close()
            events.close()
            for sink in self.open_sinks.values():  # interrupted: drop the spools of unfinished tracks
                sink.abort()
            self.open_sinks.clear()
            bar.close()

    def commit(self) -> None:
        """Commit the store's buffered tracks; if that write fails they are this run's failures."""
        try:
            self.writer.flush()
        except OSError as err:
            self._store_write_failed(err)

    def _todo(self, files: list[InputFile]) -> list[InputFile]:
        self.by_key = {f.key: f for f in files}
        if self.writer is not None:
            self.hashes, unreadable = hash_inputs(files)
            for f, reason in unreadable:
                self._fail(f, reason)
        if self.out is not None:
            for folder in {self._target(f).parent for f in files}:
                remove_stale_temps(folder)  # debris of a run that was killed writing here
        todo = []
        for f in files:
            if self.writer is not None and f.key not in self.hashes:
                continue  # unreadable: already reported
            conflict = stored_conflict(self.writer, f, self.hashes[f.key].digest) if self.writer else None
            if conflict:
                self._fail(f, conflict)
            elif self._needs_work(f):
                todo.append(f)
            else:
                self.report.skipped.append(str(f.path))
                self._event("skipped", f, "")
        return todo

    def _needs_work(self, f: InputFile) -> bool:
        file_missing = self.out is not None and not _is_done(self._target(f), self._metadata(f))
        store_missing = self.writer is not None and not self.writer.is_done(f.key, self.hashes[f.key].digest)
        return file_missing or store_missing

    def _target(self, f: InputFile) -> Path:
        return self.out / f.output_name

    def _metadata(self, f: InputFile) -> dict[str, str]:
        return output_metadata(self.extractor.model, self.extractor, f.key, self.provenance)

    def _sink(self, job: int, f: InputFile) -> _CheckedSink:
        if self.extractor.options.pool == "none":
            inner = SafetensorsFrameWriter(self._target(f), self._metadata(f), self.extractor.config.sample_rate)
        else:
            inner = self.extractor.feature_sink()
        sink = self.open_sinks[job] = _CheckedSink(inner, self.extractor.layers,
                                                   self._target(f) if self.out is not None else None)
        return sink

    def _finished(self, f: InputFile, outcome: object) -> None:
        if isinstance(outcome, JobFailure):
            self._fail(f, _reason(outcome.reason, f.path))
            return
        if isinstance(outcome, Features):
            reason = nonfinite_reason(outcome.hidden_states, self.extractor.layers) or self._write_pooled(f, outcome)
            if reason is _REPORTED:
                return
            if reason:
                self._fail(f, reason)
                return
        self.report.done.append(str(f.path))
        self._event("done", f, "")

    def _write_pooled(self, f: InputFile, features: Features) -> str | None:
        """Write one finished pooled track; the reason when that fails."""
        if self.out is not None:
            try:
                save_features(self._target(f), features, self._metadata(f))
            except OSError as err:
                return write_failure(err, self._target(f))
        if self.writer is None or self.writer.is_done(f.key, self.hashes[f.key].digest):
            return None
        changed = changed_reason(f, self.hashes[f.key])
        if changed:
            return changed
        return self._add_to_store(f, features)

    def _add_to_store(self, f: InputFile, features: Features) -> str | None:
        from mertkit.store.parquet import StoreInputError

        windows = [(float(s), float(e), v) for s, e, v in
                   zip(features.window_starts, features.window_ends, features.window_pooled)]
        try:
            self.writer.add_track(f.key, self.hashes[f.key].digest, vectors=features.hidden_states,
                                  window_rows=windows, split=self.store.split, duration=features.duration)
        except StoreInputError as err:
            return str(err)
        except OSError as err:  # committing a full shard failed: its tracks (this one too) failed
            self._store_write_failed(err)
            return _REPORTED
        return None

    def _store_write_failed(self, err: OSError) -> None:
        for f, reason in fail_uncommitted(self.writer, err, self.by_key, self.report):
            self._event("failed", f, reason)

    def _fail(self, f: InputFile, reason: str) -> None:
        self.report.failed.append((str(f.path), reason))
        self._event("failed", f, reason)

    def _event(self, kind: str, f: InputFile, detail: str) -> None:
        if self.on_event:
            self.on_event(kind, str(f.path), detail)


def _counted(events: Iterable[DecodeEvent], bar: AudioProgress, rate: int) -> Iterator[DecodeEvent]:
    for event in events:
        if event.kind == BLOCK:
            bar.advance(event.job, len(event.samples) / rate)
        yield event


def _reason(text: str, path: Path) -> str:
    """A per-file reason without the file's name in front (the report line names the file)."""
    for spelling in (str(path), display_path(path), str(path.resolve())):
        if text.startswith(spelling + ": "):
            return text[len(spelling) + 2:]
    return text


def _is_done(target: Path, wanted: dict[str, str]) -> bool:
    try:
        if not target.is_file():
            return False
        meta = read_metadata(target)
    except (OSError, ValueError):
        return False  # unreadable leftovers (or a name the file system refuses) are recomputed
    return all(meta.get(k) == wanted[k] for k in _REQUEST_KEYS)


# ---------------------------------------------------------------------------------------
# safetensors I/O
# ---------------------------------------------------------------------------------------
def save_features(path: str | os.PathLike, features: Features, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save

    tensors = {
        "hidden_states": np.ascontiguousarray(features.hidden_states, dtype=np.float32),
        "window_starts": features.window_starts.astype(np.float64),
        "window_ends": features.window_ends.astype(np.float64),
    }
    if features.timestamps is not None:
        tensors["timestamps"] = features.timestamps.astype(np.float64)
    if features.window_pooled is not None:
        tensors["window_pooled"] = np.ascontiguousarray(features.window_pooled, dtype=np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


class SafetensorsFrameWriter:
    """A `Sink` writing one track's frame-level output as its windows finish.

    safetensors stores [layers, frames, width] layer-major, and the frame count is only known
    at the end, so each layer's frames are appended to their own spool file (in a temp folder
    beside the target) and `finish` writes the file: the 8-byte little-endian header length,
    the JSON header ({name: {dtype, shape, data_offsets}, "__metadata__": {...}}, padded with
    spaces to 8 bytes), then the data (float64 tensors first, then hidden_states copied from
    the spools layer by layer), under a temp name renamed into place. Memory never holds more
    than one window's frames.
    """

    def __init__(self, target: str | os.PathLike, metadata: dict[str, str], sample_rate: int):
        self.target = Path(target)
        self.metadata = dict(metadata)
        self.sample_rate = sample_rate
        self._spool: Path | None = None
        self._layer_files: list = []
        self._stamp_file = None
        self._frames = 0
        self._shape: tuple[int, int] | None = None  # (layers, width)
        self._bounds: list[tuple[int, int]] = []

    def add(self, output: WindowOutput) -> None:
        frames = output.frames
        if self._spool is None:
            self._open(frames.shape[0], frames.shape[2])
        for layer, handle in enumerate(self._layer_files):
            handle.write(np.ascontiguousarray(frames[layer], dtype="<f4").tobytes())
        self._stamp_file.write(np.ascontiguousarray(output.timestamps, dtype="<f8").tobytes())
        self._frames += frames.shape[1]
        self._bounds.append((output.start, output.end))

    def finish(self, num_samples: int) -> Path:
        self._close_spools()
        layers, width = self._shape
        bounds = np.asarray(self._bounds, dtype="<f8") / self.sample_rate
        small = {"window_starts": np.ascontiguousarray(bounds[:, 0]), "window_ends": np.ascontiguousarray(bounds[:, 1])}
        entries = [("timestamps", "F64", [self._frames], self._frames * 8)]
        entries += [(name, "F64", [len(values)], values.nbytes) for name, values in small.items()]
        entries.append(("hidden_states", "F32", [layers, self._frames, width], layers * self._frames * width * 4))

        def write(out) -> None:
            out.write(_safetensors_header(entries, self.metadata))
            _copy_file(self._spool / "timestamps", out)
            for values in small.values():
                out.write(values.tobytes())
            for layer in range(layers):
                _copy_file(self._spool / f"layer-{layer}", out)

        try:
            atomic_write(self.target, write)
        finally:
            self._remove_spool()
        return self.target

    def abort(self) -> None:
        self._close_spools()
        self._remove_spool()

    def _open(self, layers: int, width: int) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._spool = make_temp_dir(self.target.parent)
        self._shape = (layers, width)
        self._layer_files = [open(self._spool / f"layer-{k}", "wb") for k in range(layers)]  # noqa: SIM115
        self._stamp_file = open(self._spool / "timestamps", "wb")  # noqa: SIM115

    def _close_spools(self) -> None:
        for handle in [*self._layer_files, self._stamp_file]:
            if handle is not None:
                handle.close()

    def _remove_spool(self) -> None:
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None


def _safetensors_header(entries: list[tuple[str, str, list[int], int]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keeps the data 8-byte aligned, as safetensors' writer does
    return len(text).to_bytes(8, "little") + text


def _copy_file(path: Path, out) -> None:
    with open(path, "rb") as handle:
        shutil.copyfileobj(handle, out, length=1 << 20)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def load_features(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of one output file."""
    from safetensors.numpy import load_file

    return load_file(str(path)), read_metadata(path)
