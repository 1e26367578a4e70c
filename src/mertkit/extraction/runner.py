"""`mert extract` as a library call: files in, per-file safetensors and/or a Parquet store out.

For an input INPUT (a file or a folder, recursed) and an output folder DIR, each audio file
`INPUT/<rel>` becomes `DIR/<rel>.safetensors` holding:

    hidden_states   [layers, frames, width]  (pool none) or [layers, width] (pooled)
    timestamps      [frames] seconds (pool none)
    window_starts, window_ends   [windows] seconds
    window_pooled   [windows, layers, width] (pooled output only)

and string metadata: model, sample_rate, frame_rate, layers (JSON list), window, hop,
pooling, dtype, source, mertkit_version. Outputs are written atomically (temp file, then
rename), so an interrupted run never leaves a half file, and a rerun skips every output whose
metadata matches the request. A file that fails is reported with its reason; the others
still finish.

Bounded memory: files are decoded as streams (optionally in worker processes, overlapped
with the model) and never held whole. Frame-level output is written as windows finish
(`SafetensorsFrameWriter`: one spool file per layer, assembled into the safetensors file at
the end); pooled output keeps only running sums and the per-window vectors.

Feature store: with `store=STORE_DIR` (pooled output only) every track adds one "track" row
and one row per window to a Parquet store (`mertkit.store.parquet`), keyed by (path as discovered,
content hash). Tracks already in the store are skipped; shards are committed atomically, so a
run killed at any moment (even with SIGKILL) is finished by running it again, with no track
lost, duplicated or half written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mertkit.audio import DEFAULT_MAX_DURATION, discover_audio
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions, Features, JobFailure, WindowOutput
from mertkit.models.hubert.model import MertModel
from mertkit.extraction.decode import DEFAULT_BLOCK_SECONDS, decode_files

OUTPUT_SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
HASH_THREADS = 4  # hashing reads files; blake2b releases the GIL, so threads overlap the reads


@dataclass(frozen=True)
class InputFile:
    path: Path
    relative: str  # path under its input root; names the output

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


def discover_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """(files to extract, inputs refused unread as (path, reason)); the rules are
    `mertkit.audio.discover_audio`'s, shared with `mert labels`."""
    discovery = discover_audio(inputs)
    found = [InputFile(f.path, f.relative) for f in discovery.files]
    seen: set[str] = set()
    for f in found:
        if f.relative in seen:
            raise ExtractError(f"two inputs would write the same output {f.output_name!r}; extract them separately")
        seen.add(f.relative)
    return found, discovery.rejected


def output_metadata(model: MertModel, extractor: Extractor, source: str) -> dict[str, str]:
    from mertkit import __version__

    info = getattr(model, "info", None)
    config = model.config
    return {
        "model": info.name if info else "unnamed",
        "sample_rate": str(config.sample_rate),
        "frame_rate": repr(config.frame_rate),
        "layers": json.dumps(list(extractor.layers)),
        "window": repr(float(extractor.window)),
        "hop": repr(float(extractor.hop)),
        "pooling": extractor.options.pool,
        "dtype": extractor.options.dtype,
        "do_normalize": str(extractor.do_normalize).lower(),
        "source": source,
        "mertkit_version": __version__,
    }


# Metadata that must match for an existing output to count as already done.
_REQUEST_KEYS = ("model", "sample_rate", "layers", "window", "hop", "pooling", "dtype", "do_normalize")


def store_meta(model: MertModel, extractor: Extractor, dtype: str):
    """The StoreMeta every row written by this extractor obeys."""
    from mertkit.store.parquet import StoreMeta

    info = getattr(model, "info", None)
    config = model.config
    whole = not extractor.window
    return StoreMeta(
        model=info.name if info else "unnamed", sample_rate=config.sample_rate, frame_rate=config.frame_rate,
        hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, layers=extractor.layers, dtype=dtype,
        window=None if whole else float(extractor.window), hop=None if whole else float(extractor.hop),
        pooling=extractor.options.pool,
    )


def run_extract(
    model: MertModel,
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
    than `max_duration` seconds (None: no limit) fail."""
    if out_dir is None and store is None:
        raise ExtractError("nowhere to write: give an output folder, a feature store, or both")
    if store is not None and options.pool == "none":
        raise ExtractError("the feature store keeps pooled vectors: choose --pool mean or max "
                           "(frame-level features go to per-file safetensors with --out)")
    extractor = Extractor(model, options, compile=compile)
    run = _Run(model, extractor, Path(out_dir) if out_dir is not None else None, store, on_event)
    files, rejected = discover_inputs(inputs)
    run.reject(rejected)
    limits = (block_seconds, max_duration)
    if store is None:
        run.execute(files, progress, workers, limits)
        return run.report
    from mertkit.store.parquet import FeatureStoreWriter

    with FeatureStoreWriter(store.root, store_meta(model, extractor, store.dtype),
                            rows_per_shard=store.rows_per_shard) as writer:
        run.writer = writer
        run.execute(files, progress, workers, limits)
    return run.report


class _Run:
    """One run_extract call: what to skip, what each finished track writes, the report."""

    def __init__(self, model: MertModel, extractor: Extractor, out: Path | None, store: StoreOptions | None,
                 on_event: Callable[[str, str, str], None] | None):
        self.model, self.extractor, self.out, self.store, self.on_event = model, extractor, out, store, on_event
        self.writer = None  # FeatureStoreWriter when storing
        self.report = RunReport()
        self.hashes: dict[Path, str] = {}

    def reject(self, rejected: list[tuple[str, str]]) -> None:
        """Inputs refused by discovery (special files, unlistable folders): failed, never read."""
        for path, reason in rejected:
            self.report.failed.append((path, reason))
            if self.on_event:
                self.on_event("failed", path, reason)

    def execute(self, files: list[InputFile], progress: bool, workers: int, limits: tuple) -> None:
        todo = self._todo(files)
        bar = _progress(len(files), initial=len(self.report.skipped) + len(self.report.failed), enabled=progress)
        rate = self.extractor.config.sample_rate
        block_seconds, max_duration = limits
        events = decode_files([str(f.path) for f in todo], rate, workers=workers, block_seconds=block_seconds,
                              max_duration=max_duration)
        try:
            for job, outcome in self.extractor.run(events, lambda job: self._sink(todo[job])):
                self._finished(todo[job], outcome)
                bar.update(1)
        finally:
            events.close()
            bar.close()

    def _todo(self, files: list[InputFile]) -> list[InputFile]:
        if self.writer is not None:
            self._hash_all(files)
        todo = []
        for f in files:
            if f.path in self.hashes or self.writer is None:
                if self._needs_work(f):
                    todo.append(f)
                else:
                    self.report.skipped.append(str(f.path))
                    self._event("skipped", f, "")
        return todo

    def _hash_all(self, files: list[InputFile]) -> None:
        from mertkit.store.parquet import hash_file

        def digest(f: InputFile) -> tuple[InputFile, str | OSError]:
            try:
                return f, hash_file(f.path)
            except OSError as err:  # missing or unreadable: this file's failure alone
                return f, err

        with ThreadPoolExecutor(HASH_THREADS) as pool:
            for f, result in pool.map(digest, files):
                if isinstance(result, OSError):
                    reason = f"{f.path}: cannot read ({result.strerror or result})"
                    self.report.failed.append((str(f.path), reason))
                    self._event("failed", f, reason)
                else:
                    self.hashes[f.path] = result

    def _needs_work(self, f: InputFile) -> bool:
        file_missing = self.out is not None and not _is_done(self._target(f), self._metadata(f))
        store_missing = self.writer is not None and not self.writer.is_done(str(f.path), self.hashes[f.path])
        return file_missing or store_missing

    def _target(self, f: InputFile) -> Path:
        return self.out / f.output_name

    def _metadata(self, f: InputFile) -> dict[str, str]:
        return output_metadata(self.model, self.extractor, str(f.path))

    def _sink(self, f: InputFile):
        if self.extractor.options.pool == "none":
            return SafetensorsFrameWriter(self._target(f), self._metadata(f), self.extractor.config.sample_rate)
        return self.extractor.feature_sink()

    def _finished(self, f: InputFile, outcome: object) -> None:
        if isinstance(outcome, JobFailure):
            reason = _reason(outcome.reason, f.path)
            self.report.failed.append((str(f.path), reason))
            self._event("failed", f, reason)
            return
        if isinstance(outcome, Features):
            self._write_pooled(f, outcome)
        self.report.done.append(str(f.path))
        self._event("done", f, "")

    def _write_pooled(self, f: InputFile, features: Features) -> None:
        if self.out is not None:
            save_features(self._target(f), features, self._metadata(f))
        if self.writer is not None and not self.writer.is_done(str(f.path), self.hashes[f.path]):
            windows = [(float(s), float(e), v) for s, e, v in
                       zip(features.window_starts, features.window_ends, features.window_pooled)]
            self.writer.add_track(str(f.path), self.hashes[f.path], vectors=features.hidden_states,
                                  window_rows=windows, split=self.store.split, duration=features.duration)

    def _event(self, kind: str, f: InputFile, detail: str) -> None:
        if self.on_event:
            self.on_event(kind, str(f.path), detail)


def _reason(text: str, path: Path) -> str:
    return text if str(path) in text else f"{path}: {text}"


def _is_done(target: Path, wanted: dict[str, str]) -> bool:
    if not target.is_file():
        return False
    try:
        meta = read_metadata(target)
    except (OSError, ValueError):
        return False  # unreadable leftovers are simply recomputed
    return all(meta.get(k) == wanted[k] for k in _REQUEST_KEYS)


def _progress(total: int, *, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="file", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------
# safetensors I/O
# ---------------------------------------------------------------------------------------
def save_features(path: str | os.PathLike, features: Features, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

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
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=OUTPUT_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=OUTPUT_SUFFIX, dir=self.target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_safetensors_header(entries, self.metadata))
                _copy_file(self._spool / "timestamps", out)
                for values in small.values():
                    out.write(values.tobytes())
                for layer in range(layers):
                    _copy_file(self._spool / f"layer-{layer}", out)
            os.replace(tmp, self.target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self._remove_spool()
        return self.target

    def abort(self) -> None:
        self._close_spools()
        self._remove_spool()

    def _open(self, layers: int, width: int) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._spool = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.target.parent))
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
