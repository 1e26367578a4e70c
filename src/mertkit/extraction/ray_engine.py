"""Scale-out extraction on Ray Data (`mert extract --engine ray`): the same Parquet store as
the local path, filled by a cluster.

The dataflow, one file per row:

    driver      discover_inputs (special files refused) -> hash -> drop tracks the store holds
    CPU tasks   decode + resample (mertkit.audio.load_audio); a bad file becomes an error row
    actors      a fixed pool (ActorPoolStrategy), each loads the model once, exactly as the
                local engine does (`runner.load_for_extraction`: bf16 weights for bf16), and
                runs Extractor over a few files at a time (their windows share batches); one GPU
                per actor with device="cuda", else `threads_per_actor` CPU threads each
                (default: one actor per GPU, else one per THREADS_PER_CPU_ACTOR cores)
    driver      iterates the results and writes them with FeatureStoreWriter (it holds the
                store's lock: there is exactly one writer, as the store requires)

Every per-file problem is an error row reported for that file alone (a decode error,
non-finite features, a file changed while the run read it), exactly as in the local runner;
a failure of Ray itself is one line (RayEngineError), not a remote traceback.

Only the driver touches the store, so kill -9 safety is the store's own: a rerun skips every
committed track and redoes the rest.

Cluster. With `address` the driver joins that cluster (mertkit must be importable on its
nodes and the audio paths readable there). Without it a private local cluster is started and
bound to 127.0.0.1 only: nothing it starts listens on another interface, and no usage
statistics are sent. Ray is an optional dependency: pip install 'mertkit[ray]'.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.audio import DEFAULT_MAX_DURATION
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions, JobFailure
from mertkit.extraction.runner import (
    AudioProgress,
    InputFile,
    RunReport,
    _Hashed,
    _reason,
    changed_reason,
    discover_inputs,
    fail_uncommitted,
    hash_inputs,
    load_for_extraction,
    nonfinite_reason,
    store_meta,
    stored_conflict,
)
from mertkit.fileio import terminate_raises

__all__ = ["RayEngineError", "run_ray_extract"]

RAY_HINT = "this needs ray: pip install 'mertkit[ray]'"
LOOPBACK = "127.0.0.1"
# Logical CPUs of the local cluster left for decoding beside the model actors.
DECODE_CPUS = 1
# Each decode task reserves half a CPU. The value also differs from the actors' whole-CPU
# request, and Ray fuses consecutive maps only when their requests match: decoding must stay
# on its own CPU tasks instead of being folded into the model actors.
DECODE_TASK_CPUS = 0.5
LOCAL_OBJECT_STORE_BYTES = 1 << 30
# Default CPU actors: one model replica per this many cores. Fewer, wider replicas keep the
# memory of one model copy per replica down and run as fast per core.
THREADS_PER_CPU_ACTOR = 4
# Ray reads this when it is imported: false makes it resolve the node address to loopback.
_RAY_CLUSTER_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayEngineError(ExtractError):
    """Options or a cluster that the Ray engine cannot work with; a failure of Ray itself."""


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def run_ray_extract(
    model_name: str,
    inputs: list[str],
    store_dir: str,
    options: ExtractOptions,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    device: str = "cpu",
    revision: str | None = None,
    split: str | None = None,
    store_dtype: str = "float16",
    threads_per_actor: int | None = None,
    files_per_batch: int = 4,
    progress: bool = False,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> RunReport:
    """Extract pooled features of every input into the Parquet store at `store_dir` on Ray.

    `num_actors` model replicas (default: one per GPU with device="cuda", else one per
    THREADS_PER_CPU_ACTOR cores). Tracks already in the store are skipped; a file that fails
    is reported in `RunReport.failed` and the others still finish and are committed; so is a
    file longer than `max_duration` seconds (None: no limit).
    """
    from mertkit.store.parquet import FeatureStoreWriter

    _check_request(options, device, num_actors, threads_per_actor, files_per_batch)
    # The driver loads the model once, on the CPU, only to fix the store's settings exactly as
    # the actors will see them (fingerprint, compute dtype, window default, layers), with the
    # local path's own loader and runner.store_meta, so that both engines write
    # interchangeable stores; it is freed here.
    model = load_for_extraction(model_name, revision, dtype=options.dtype)
    meta = store_meta(model, Extractor(model, options), store_dtype)
    sample_rate = model.config.sample_rate
    del model
    report = RunReport()
    with terminate_raises(), FeatureStoreWriter(store_dir, meta) as writer:
        files, rejected = discover_inputs(inputs)
        report.failed.extend((path, _reason(reason, Path(path))) for path, reason in rejected)
        todo = _pending_files(files, writer, report)
        if not todo:
            return report
        try:
            with _ray_session(address, num_actors, threads_per_actor, device) as (ray, actors, threads):
                job = _Job(_absolute_if_local(model_name), revision, _actor_device(device), options, threads,
                           sample_rate, max_duration)
                rows = _result_rows(ray, todo, job, actors, files_per_batch)
                _write_rows(rows, writer, report, split, todo, progress=progress)
        finally:
            _commit(writer, {f.key: f for f in files}, report)
    return report


# ---------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """What every actor needs to build the same Extractor (pickled once per actor)."""

    model_name: str
    revision: str | None
    device: str
    options: ExtractOptions
    threads: int | None
    sample_rate: int
    max_duration: float | None = DEFAULT_MAX_DURATION


def _check_request(options: ExtractOptions, device: str, num_actors: int | None,
                   threads_per_actor: int | None, files_per_batch: int) -> None:
    if options.pool == "none":
        raise RayEngineError(
            "the Ray engine writes the Parquet store, which keeps pooled features: "
            "use pool 'mean' or 'max' (frame-level features go to per-file safetensors)"
        )
    if not (device == "cpu" or device.startswith("cuda")):
        raise RayEngineError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if num_actors is not None and num_actors < 1:
        raise RayEngineError(f"--actors must be >= 1, got {num_actors} (default: one per GPU, or one per "
                             f"{THREADS_PER_CPU_ACTOR} CPU cores)")
    if threads_per_actor is not None and threads_per_actor < 1:
        raise RayEngineError(f"threads_per_actor must be >= 1, got {threads_per_actor}")
    if files_per_batch < 1:
        raise RayEngineError(f"files_per_batch must be >= 1, got {files_per_batch}")


def _absolute_if_local(model_name: str) -> str:
    # Workers need not share the driver's working directory: hand them absolute paths.
    path = Path(model_name).expanduser()
    return str(path.resolve()) if path.is_dir() else model_name


def _actor_device(device: str) -> str:
    # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES: inside, its GPU is always cuda:0.
    return "cuda" if device.startswith("cuda") else "cpu"


def _pending_files(files: list[InputFile], writer: Any, report: RunReport) -> list[tuple[InputFile, _Hashed]]:
    """(file, hash) of the files the store does not hold yet; unreadable and changed files fail
    here, before any cluster work."""
    hashes, unreadable = hash_inputs(files)
    report.failed.extend((str(f.path), reason) for f, reason in unreadable)
    todo = []
    for f in files:
        hashed = hashes.get(f.key)
        if hashed is None:
            continue
        conflict = stored_conflict(writer, f, hashed.digest)
        if conflict:
            report.failed.append((str(f.path), conflict))
        elif writer.is_done(f.key, hashed.digest):
            report.skipped.append(str(f.path))
        else:
            todo.append((f, hashed))
    return todo


def _result_rows(ray: Any, todo: list[tuple[InputFile, _Hashed]], job: _Job, actors: int,
                 files_per_batch: int) -> Iterator[dict[str, Any]]:
    # "path" is the store key (the resolved path, as the local runner keys it); "source" is
    # what a worker opens: absolute, because workers need not share the driver's working
    # directory, and as bytes, because a file name need not be valid UTF-8.
    items = [{"path": f.key, "source": os.fsencode(f.path.resolve()), "content_hash": hashed.digest}
             for f, hashed in todo]
    gpus = 1 if job.device == "cuda" else 0
    dataset = ray.data.from_items(items)
    dataset = dataset.map(_decode_row, fn_kwargs={"sample_rate": job.sample_rate, "max_duration": job.max_duration},
                          num_cpus=DECODE_TASK_CPUS)
    dataset = dataset.map_batches(
        _ModelActor,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=files_per_batch,
        batch_format="numpy",
        num_cpus=1 if gpus else job.threads,
        num_gpus=gpus,
    )
    return dataset.iter_rows()


def _write_rows(rows: Iterator[dict[str, Any]], writer: Any, report: RunReport, split: str | None,
                todo: list[tuple[InputFile, _Hashed]], *, progress: bool) -> None:
    from mertkit.store.parquet import StoreInputError

    index = {f.key: (job, f, hashed) for job, (f, hashed) in enumerate(todo)}
    by_key = {f.key: f for f, _ in todo}
    bar = AudioProgress([f.path for f, _ in todo], enabled=progress)
    try:
        for row in rows:
            job, f, hashed = index[str(row["path"])]
            error = str(row["error"]) or changed_reason(f, hashed)
            if not error:
                windows = zip(row["window_starts"], row["window_ends"], row["window_pooled"])
                try:
                    writer.add_track(f.key, hashed.digest, vectors=row["vectors"], window_rows=list(windows),
                                     split=split, duration=float(row["duration"]))
                except StoreInputError as err:
                    error = str(err)
                except OSError as err:  # committing a full shard failed: its tracks (this one too) failed
                    fail_uncommitted(writer, err, by_key, report)
            if error:
                report.failed.append((str(f.path), _reason(error, f.path)))
            elif writer.is_done(f.key, hashed.digest):
                report.done.append(str(f.path))
            bar.advance(job, float(row["duration"]))
            bar.file_finished(job)
    finally:
        bar.close()


def _commit(writer: Any, by_key: dict[str, InputFile], report: RunReport) -> None:
    try:
        writer.flush()
    except OSError as err:
        fail_uncommitted(writer, err, by_key, report)


# ---------------------------------------------------------------------------------------
# Worker side (runs on the cluster)
# ---------------------------------------------------------------------------------------
def _decode_row(row: dict[str, Any], *, sample_rate: int,
                max_duration: float | None = DEFAULT_MAX_DURATION) -> dict[str, Any]:
    """Decode one file at the model rate; failure is data (an error row), never a task error."""
    from mertkit.audio import AudioError, load_audio

    try:
        wave = load_audio(os.fsdecode(row["source"]), sample_rate, max_duration=max_duration)
        error = ""
    except (AudioError, OSError, UnicodeError) as err:
        wave = np.zeros(0, dtype=np.float32)
        error = str(err)
    return {**row, "wave": wave, "error": error}


class _ModelActor:
    """One model replica: loads the checkpoint once, then extracts batches of decoded files."""

    def __init__(self, job: _Job):
        import torch

        if job.threads:
            torch.set_num_threads(job.threads)
        self.job = job
        model = load_for_extraction(job.model_name, job.revision, device=job.device, dtype=job.options.dtype)
        self.extractor = Extractor(model, job.options)
        self.shape = (len(self.extractor.layers), self.extractor.config.hidden_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        # Extractor.run reports an unusable file (e.g. shorter than one frame) as a JobFailure
        # for that file alone; its windows still share batches with the other files' windows.
        outcomes = dict(self.extractor.run(_decode_events(rows), self.extractor.feature_sink))
        return _columns([self._output(row, outcomes[i]) for i, row in enumerate(rows)])

    def _output(self, row: dict[str, Any], outcome: Any) -> dict[str, Any]:
        out = {"path": row["path"], "content_hash": row["content_hash"], "error": ""}
        if not isinstance(outcome, JobFailure):
            reason = (nonfinite_reason(outcome.hidden_states, self.extractor.layers)
                      or nonfinite_reason(np.moveaxis(outcome.window_pooled, 1, 0), self.extractor.layers))
            outcome = JobFailure(reason) if reason else outcome
        if isinstance(outcome, JobFailure):
            out["error"] = outcome.reason
            layers, width = self.shape
            return {**out, "duration": 0.0, "vectors": np.zeros(self.shape, np.float32),
                    "window_starts": np.zeros(0), "window_ends": np.zeros(0),
                    "window_pooled": np.zeros((0, layers, width), np.float32)}
        return {**out, "duration": len(row["wave"]) / self.job.sample_rate,
                "vectors": outcome.hidden_states.astype(np.float32),
                "window_starts": outcome.window_starts, "window_ends": outcome.window_ends,
                "window_pooled": outcome.window_pooled.astype(np.float32)}


def _decode_events(rows: list[dict[str, Any]]) -> Iterator[Any]:
    """Decoded rows as the Extractor's decode events; job i is rows[i]."""
    from mertkit.extraction.decode import BLOCK, END, FAILED, DecodeEvent

    for job, row in enumerate(rows):
        if row["error"]:
            yield DecodeEvent(FAILED, job, reason=str(row["error"]))
        else:
            yield DecodeEvent(BLOCK, job, np.asarray(row["wave"], dtype=np.float32))
            yield DecodeEvent(END, job)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


# ---------------------------------------------------------------------------------------
# Cluster session
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _ray_session(address: str | None, num_actors: int | None, threads_per_actor: int | None,
                 device: str) -> Iterator[tuple[Any, int, int | None]]:
    """Yield (ray, actors, threads per CPU actor) on a connected cluster; leave it as found.
    A failure of Ray itself (cannot connect, an actor died) is a one-line RayEngineError."""
    gpus = device.startswith("cuda")
    if gpus:
        actors, threads = num_actors or 0, None  # 0: one per GPU, counted once connected
    elif address is None:
        cores = os.cpu_count() or 1
        actors = num_actors or max(1, cores // THREADS_PER_CPU_ACTOR)
        threads = threads_per_actor or max(1, cores // actors)
    else:  # a remote cluster's size is known once connected
        actors, threads = num_actors or 0, threads_per_actor or THREADS_PER_CPU_ACTOR
    ray = _import_ray(local=address is None)
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, address, actors, threads)
    try:
        actors = _check_capacity(ray, actors, threads, gpus)
        _quiet_ray_data(ray)
        yield ray, actors, threads
    except (ray.exceptions.RayError, ray.data.exceptions.SystemException) as err:
        raise RayEngineError(f"Ray failed: {_one_line(err)}") from err
    finally:
        if owned:
            ray.shutdown()


def _one_line(err: BaseException) -> str:
    """The gist of a (possibly remote) error: its root cause's last "Type: message" line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        return _one_line(cause)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    return last if len(lines) > 1 and ": " in last else f"{type(err).__name__}: {lines[0]}"


def _import_ray(*, local: bool) -> Any:
    with _environment(_ray_env(local)):
        try:
            import ray
            import ray.data
        except ImportError as err:
            raise ImportError(RAY_HINT) from err
    return ray


def _ray_env(local: bool) -> dict[str, str]:
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if local:
        env[_RAY_CLUSTER_FLAG] = "0"
    return env


def _connect(ray: Any, address: str | None, actors: int, threads: int | None) -> None:
    if address is not None:
        try:
            with _environment(_ray_env(local=False)):
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            raise RayEngineError(f"cannot connect to the Ray cluster at {address}: {_one_line(err)}") from err
        return
    cpus = max(actors, 1) * (threads or 1) + DECODE_CPUS
    # The cluster's processes inherit this environment: PYTHONPATH makes the workers import
    # this very mertkit, and RAY_ADDRESS must not redirect a private cluster.
    env = {**_ray_env(local=True), "PYTHONPATH": _pythonpath_with_mertkit()}
    with _environment(env, drop=("RAY_ADDRESS",)), _loopback_resolution(ray):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address=LOOPBACK,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RayEngineError(
            f"the local Ray cluster came up on {node_ip}, not {LOOPBACK}: this ray version does not "
            f"honour {_RAY_CLUSTER_FLAG}=0; start a loopback cluster yourself and pass its address"
        )


@contextlib.contextmanager
def _loopback_resolution(ray: Any) -> Iterator[None]:
    """Make ray.init keep 127.0.0.1 as the node address instead of swapping in the machine's
    routable IP. Ray reads the flag from the environment once, when it is first imported;
    when ray was imported before us, its parsed copy is switched for the duration of the init
    (the caller verifies the outcome, so a ray without this switch fails loudly)."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def _check_capacity(ray: Any, actors: int, threads: int | None, gpus: bool) -> int:
    """The actor count to use; a clear error instead of a pool that would wait forever."""
    resources = ray.cluster_resources()
    if gpus:
        have = int(resources.get("GPU", 0))
        actors = actors or have
        if have < 1 or actors > have:
            raise RayEngineError(f"device cuda needs {max(actors, 1)} GPU(s) for its actors; the cluster has {have}")
        return actors
    have = resources.get("CPU", 0)
    actors = actors or max(1, int((have - DECODE_TASK_CPUS) // (threads or 1)))
    need = actors * (threads or 1)
    if need + DECODE_TASK_CPUS > have:
        raise RayEngineError(
            f"{actors} CPU actors x {threads} threads need {need} CPUs plus {DECODE_TASK_CPUS} for decoding; "
            f"the cluster has {have:g}"
        )
    return actors


def _quiet_ray_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False


def _pythonpath_with_mertkit() -> str:
    import mertkit

    package_root = str(Path(mertkit.__file__).resolve().parent.parent)
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([package_root, *(str(Path(p).resolve()) for p in current)])


@contextlib.contextmanager
def _environment(values: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and drop) environment variables for the duration of the block, then restore."""
    saved = {name: os.environ.get(name) for name in [*values, *drop]}
    os.environ.update(values)
    for name in drop:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
