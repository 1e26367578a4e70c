"""The decoding half of catalog-scale extraction: audio files in, streams of resampled blocks out.

Every file becomes a job (its index in the input list). Decoding yields `DecodeEvent`s:

    block   job, samples   one block of mono float32 audio at the model rate (in order per job)
    end     job            the job's audio is complete
    failed  job, reason    the file cannot be decoded (the reason names it); no more events for it

`decode_files(..., workers=0)` decodes in the calling process, one file after the other.
`workers=N` starts N worker processes (the "spawn" start method: torch and fork do not mix)
that decode and resample files in parallel while the caller runs the model. Their blocks
travel through a bounded queue, so memory stays bounded however far decoding runs ahead:
at most `prefetch` blocks wait, and at most `2 * workers` files are open at a time. Events of
different jobs interleave; each job's own events arrive in order.

This module must not import torch: the worker processes import it, and stay light.
"""
from __future__ import annotations

import multiprocessing
import queue as queue_module
import signal
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mertkit.audio import DEFAULT_MAX_DURATION, AudioError, stream_audio

__all__ = ["DecodeEvent", "DecoderCrashed", "decode_files", "decode_waveforms"]

BLOCK = "block"
END = "end"
FAILED = "failed"
_CRASHED = "crashed"  # worker-internal: an unexpected exception, re-raised in the parent
_EXIT = "exit"

# Seconds of input audio per decoded block: large enough that per-block overhead (queue
# pickling, resampler calls) is negligible, small enough to keep memory low.
DEFAULT_BLOCK_SECONDS = 10.0
# How long the parent waits for a worker event before checking that the workers are alive.
_POLL_SECONDS = 1.0


class DecoderCrashed(RuntimeError):
    """A decode worker died or hit an unexpected error (a bug, not a bad file)."""


@dataclass(frozen=True)
class DecodeEvent:
    kind: str  # BLOCK, END or FAILED
    job: int
    samples: np.ndarray | None = None
    reason: str = ""


def decode_waveforms(waves: Iterable[np.ndarray]) -> Iterator[DecodeEvent]:
    """Events for waveforms already in memory: one block and an end per job."""
    for job, wave in enumerate(waves):
        yield DecodeEvent(BLOCK, job, wave)
        yield DecodeEvent(END, job)


def decode_files(
    paths: Sequence[str],
    sample_rate: int,
    *,
    workers: int = 0,
    block_seconds: float = DEFAULT_BLOCK_SECONDS,
    prefetch: int | None = None,
    max_duration: float | None = DEFAULT_MAX_DURATION,
) -> Iterator[DecodeEvent]:
    """Decode and resample every file (job i = paths[i]) to mono float32 at `sample_rate`.
    A file longer than `max_duration` seconds (None: no limit) fails."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    limits = (block_seconds, max_duration)
    if workers == 0 or not paths:
        return _decode_inline(paths, sample_rate, limits)
    return _decode_in_workers(paths, sample_rate, workers, limits, prefetch or 4 * workers)


# ---------------------------------------------------------------------------------------
# In the calling process
# ---------------------------------------------------------------------------------------
def _decode_inline(paths: Sequence[str], sample_rate: int, limits: tuple) -> Iterator[DecodeEvent]:
    for job, path in enumerate(paths):
        for kind, payload in _decode_one(path, sample_rate, limits):
            if kind == BLOCK:
                yield DecodeEvent(BLOCK, job, payload)
            elif kind == FAILED:
                yield DecodeEvent(FAILED, job, reason=payload)
            else:
                yield DecodeEvent(END, job)


def _decode_one(path: str, sample_rate: int, limits: tuple) -> Iterator[tuple[str, object]]:
    """(BLOCK, samples)... then (END, None), or (FAILED, reason) once the file turns out bad.
    `limits` is (block_seconds, max_duration)."""
    block_seconds, max_duration = limits
    try:
        for block in stream_audio(path, sample_rate, block_seconds=block_seconds, max_duration=max_duration):
            if block.size:
                yield BLOCK, block
    except AudioError as err:
        yield FAILED, str(err)
        return
    except (OSError, UnicodeError) as err:  # this file's problem (unreadable, an unencodable name), not the run's
        yield FAILED, f"{path}: cannot read ({getattr(err, 'strerror', None) or err})"
        return
    yield END, None


# ---------------------------------------------------------------------------------------
# In worker processes
# ---------------------------------------------------------------------------------------
def _worker_main(tasks, results, sample_rate: int, limits: tuple) -> None:
    """Decode (job, path) tasks until the None sentinel; every event goes to `results`."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        task = tasks.get()
        if task is None:
            results.put((_EXIT, -1, None))
            return
        job, path = task
        try:
            for kind, payload in _decode_one(path, sample_rate, limits):
                results.put((kind, job, payload))
        except Exception:  # noqa: BLE001 - a bug in a worker must reach the parent, not vanish
            results.put((_CRASHED, job, f"decoding {path}:\n{traceback.format_exc()}"))
            return


class _WorkerPool:
    """N decode processes fed from a task queue, answering through one bounded result queue."""

    def __init__(self, workers: int, sample_rate: int, limits: tuple, prefetch: int):
        context = multiprocessing.get_context("spawn")
        self.tasks = context.Queue()
        self.results = context.Queue(maxsize=max(prefetch, workers))
        self.processes = [
            context.Process(target=_worker_main, args=(self.tasks, self.results, sample_rate, limits),
                            name=f"mertkit-decode-{i}", daemon=True)
            for i in range(workers)
        ]
        for process in self.processes:
            process.start()

    def submit(self, job: int, path: str) -> None:
        self.tasks.put((job, path))

    def next_event(self) -> tuple[str, int, object]:
        while True:
            try:
                return self.results.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                dead = [p for p in self.processes if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise DecoderCrashed(
                        f"decode worker {dead[0].name} died (exit code {dead[0].exitcode}). Workers are "
                        "started with 'spawn': a script that uses them must guard its entry point with "
                        "`if __name__ == '__main__':`; otherwise memory may have run out (try fewer workers)"
                    ) from None

    def close(self, *, graceful: bool) -> None:
        if graceful:
            for _ in self.processes:
                self.tasks.put(None)
            exited = 0
            while exited < len(self.processes):  # drain so no worker blocks on a full queue
                kind, _, _ = self.next_event()
                exited += kind == _EXIT
        for process in self.processes:
            if process.is_alive() and not graceful:
                process.terminate()
            process.join(timeout=10)
        self.results.close()
        self.tasks.close()
        self.results.cancel_join_thread()
        self.tasks.cancel_join_thread()


def _decode_in_workers(
    paths: Sequence[str], sample_rate: int, workers: int, limits: tuple, prefetch: int
) -> Iterator[DecodeEvent]:
    pool = _WorkerPool(min(workers, max(1, len(paths))), sample_rate, limits, prefetch)
    graceful = False
    try:
        next_job, open_jobs = 0, 0
        while next_job < len(paths) or open_jobs:
            # Keep two files per worker in flight: one decoding, one queued behind it.
            while next_job < len(paths) and open_jobs < 2 * len(pool.processes):
                pool.submit(next_job, str(paths[next_job]))
                next_job, open_jobs = next_job + 1, open_jobs + 1
            kind, job, payload = pool.next_event()
            if kind == _CRASHED:
                raise DecoderCrashed(str(payload))
            if kind == BLOCK:
                yield DecodeEvent(BLOCK, job, payload)
                continue
            open_jobs -= 1
            yield DecodeEvent(END, job) if kind == END else DecodeEvent(FAILED, job, reason=str(payload))
        graceful = True
    finally:
        pool.close(graceful=graceful)
