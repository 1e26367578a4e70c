"""Scale-out extraction on Ray Data (`mert extract --engine ray`): the same Parquet store as
the local path, filled by a cluster.

The dataflow, one file per row:

    driver      discover_inputs -> hash_file -> drop tracks the store already holds
    CPU tasks   decode + resample (mertkit.audio.load_audio); a bad file becomes an error row
    actors      a fixed pool (ActorPoolStrategy), each loads the model once and runs Extractor
                over a few files at a time (their windows share batches); one GPU per actor
                with device="cuda", else `threads_per_actor` CPU threads each
    driver      iterates the results and writes them with FeatureStoreWriter (it holds the
                store's lock: there is exactly one writer, as the store requires)

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
from mertkit.extraction.engine import Extractor, ExtractOptions, JobFailure
from mertkit.extraction.runner import InputFile, RunReport, discover_inputs, store_meta

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
# Ray reads this when it is imported: false makes it resolve the node address to loopback.
_RAY_CLUSTER_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayEngineError(ValueError):
    """Options or a cluster that the Ray engine cannot work with."""


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

    `num_actors` model replicas (default: one per GPU with device="cuda", else 2). Tracks
    already in the store are skipped; a file that cannot be decoded or is too short is
    reported in `RunReport.failed` and the others still finish; so is a file longer than
    `max_duration` seconds (None: no limit).
    """
    from mertkit.models.checkpoint import load
    from mertkit.store.parquet import FeatureStoreWriter

    _check_request(options, device, num_actors, threads_per_actor, files_per_batch)
    # The driver loads the model once, on the CPU, only to fix the store's settings exactly as
    # the actors will see them (name, window default, layers), with the local path's own
    # runner.store_meta so that both engines write interchangeable stores; it is freed here.
    model = load(model_name, revision)
    meta = store_meta(model, Extractor(model, options), store_dtype)
    sample_rate = model.config.sample_rate
    del model
    report = RunReport()
    with FeatureStoreWriter(store_dir, meta) as writer:
        files, rejected = discover_inputs(inputs)
        report.failed.extend(rejected)
        todo = _pending_files(files, writer, report)
        if not todo:
            return report
        with _ray_session(address, num_actors, threads_per_actor, device) as (ray, actors, threads):
            job = _Job(_absolute_if_local(model_name), revision, _actor_device(device), options, threads, sample_rate,
                       max_duration)
            rows = _result_rows(ray, todo, job, actors, files_per_batch)
            _write_rows(rows, writer, report, split, total=len(todo), progress=progress)
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
    max_duration: float | None


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
        raise RayEngineError(f"num_actors must be >= 1, got {num_actors}")
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


def _pending_files(files: list[InputFile], writer: Any, report: RunReport) -> list[tuple[InputFile, str]]:
    """(file, content hash) of the files the store does not hold yet; unreadable ones fail."""
    todo = []
    for f in files:
        try:
            digest = _content_hash(f.path)
        except OSError as err:
            report.failed.append((str(f.path), f"{f.path}: cannot read: {err.strerror or err}"))
            continue
        if writer.is_done(str(f.path), digest):
            report.skipped.append(str(f.path))
        else:
            todo.append((f, digest))
    return todo


def _content_hash(path: Path) -> str:
    from mertkit.store.parquet import hash_file

    return hash_file(path)


def _result_rows(ray: Any, todo: list[tuple[InputFile, str]], job: _Job, actors: int,
                 files_per_batch: int) -> Iterator[dict[str, Any]]:
    # "path" is the store key, spelled as the local runner spells it; "source" is what a worker
    # opens, absolute because workers need not share the driver's working directory.
    items = [{"path": str(f.path), "source": str(f.path.resolve()), "content_hash": digest} for f, digest in todo]
    gpus = 1 if job.device == "cuda" else 0
    dataset = ray.data.from_items(items)
    dataset = dataset.map(_decode_row, fn_kwargs={"sample_rate": job.sample_rate, "max_duration": job.max_duration}, num_cpus=DECODE_TASK_CPUS)
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
                *, total: int, progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=total, unit="file", disable=not progress, dynamic_ncols=True) as bar:
        for row in rows:
            path = str(row["path"])
            if row["error"]:
                report.failed.append((path, str(row["error"])))
            else:
                windows = zip(row["window_starts"], row["window_ends"], row["window_pooled"])
                writer.add_track(path, str(row["content_hash"]), vectors=row["vectors"],
                                 window_rows=list(windows), split=split, duration=float(row["duration"]))
                report.done.append(path)
            bar.update(1)


# ---------------------------------------------------------------------------------------
# Worker side (runs on the cluster)
# ---------------------------------------------------------------------------------------
def _decode_row(row: dict[str, Any], *, sample_rate: int, max_duration: float | None) -> dict[str, Any]:
    """Decode one file at the model rate; failure is data (an error row), never a task error."""
    from mertkit.audio import AudioError, load_audio

    try:
        wave = load_audio(row["source"], sample_rate, max_duration=max_duration)
        error = ""
    except AudioError as err:
        wave = np.zeros(0, dtype=np.float32)
        error = str(err)
    return {**row, "wave": wave, "error": error}


class _ModelActor:
    """One model replica: loads the checkpoint once, then extracts batches of decoded files."""

    def __init__(self, job: _Job):
        import torch

        from mertkit.models.checkpoint import load

        if job.threads:
            torch.set_num_threads(job.threads)
        self.job = job
        self.extractor = Extractor(load(job.model_name, job.revision, device=job.device), job.options)
        self.shape = (len(self.extractor.layers), self.extractor.config.hidden_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        # Extractor.run reports an unusable file (e.g. shorter than one frame) as a JobFailure
        # for that file alone; its windows still share batches with the other files' windows.
        outcomes = dict(self.extractor.run(_decode_events(rows), self.extractor.feature_sink))
        return _columns([self._output(row, outcomes[i]) for i, row in enumerate(rows)])

    def _output(self, row: dict[str, Any], outcome: Any) -> dict[str, Any]:
        out = {"path": row["path"], "content_hash": row["content_hash"], "error": ""}
        if isinstance(outcome, JobFailure):
            out["error"] = _naming(row["path"], outcome.reason)
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


def _naming(path: str, reason: str) -> str:
    return reason if str(path) in reason else f"{path}: {reason}"


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


# ---------------------------------------------------------------------------------------
# Cluster session
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _ray_session(address: str | None, num_actors: int | None, threads_per_actor: int | None,
                 device: str) -> Iterator[tuple[Any, int, int | None]]:
    """Yield (ray, actors, threads per CPU actor) on a connected cluster; leave it as found."""
    gpus = device.startswith("cuda")
    actors = num_actors or (0 if gpus else 2)  # 0: one per GPU, counted once connected
    threads = None if gpus else (threads_per_actor or _default_threads(address, actors))
    ray = _import_ray(local=address is None)
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, address, actors, threads)
    try:
        actors = _check_capacity(ray, actors, threads, gpus)
        _quiet_ray_data(ray)
        yield ray, actors, threads
    finally:
        if owned:
            ray.shutdown()


def _default_threads(address: str | None, actors: int) -> int:
    # A local cluster shares this machine's cores among the actors; on a remote cluster the
    # node sizes are unknown here, so each actor takes one core unless told otherwise.
    if address is not None:
        return 1
    return max(1, (os.cpu_count() or 1) // max(actors, 1))


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
        with _environment(_ray_env(local=False)):
            ray.init(address=address, log_to_driver=False)
        return
    cpus = actors * (threads or 1) + DECODE_CPUS
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
    need = actors * (threads or 1)
    have = resources.get("CPU", 0)
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
