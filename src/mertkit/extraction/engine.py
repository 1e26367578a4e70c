"""Features from waveforms: windows, streaming, exact batching, layer choice, pooling.

Windows. A file of N samples is cut into windows of `window` seconds every `hop` seconds
(hop defaults to `seamless_hop`: the window, less the samples after its last whole frame (320
for 5 s at 24 kHz with a conv front end, none with a log-mel one), so frame-level output has no
gap at a seam; `window=0` means the whole file in one pass):

    samples  |0 ........................................................ N|
    window 0 |[=========== W ===========]                                 |
    window 1 |        [=========== W ===========]                         |   (hop < W: overlap)
    last     |                                   [====== rest ======]     |   (run at its own length)

The last window holds whatever is left (it is run at its own length, never padded into the
model); a remainder shorter than one frame (400 samples) is dropped, except when it is the
whole file, which is then an error. With overlap, each frame is kept from one window only:
windows hand over at the middle of their overlap (the stitching rule).

Frame timestamps. Frame j of a window starting at sample s sees samples
[s + 320 j, s + 320 j + 400): its timestamp is the centre of that span, (s + 320 j + 200) / sr.
(320 and 400 are the hop and receptive field at 24 kHz; other configs use their own.)

Streaming. A track is never needed whole. `Windower` cuts the windows of `window_plan` out of
a stream of audio blocks as soon as each is certain (enough audio follows it to know whether
another window comes after it), and each finished window goes straight to a per-track sink:
running sums and maxima for pooled output, the kept frames for frame-level output (which a
sink may write to disk as they come). Peak memory is then a few windows and batches,
whatever the track length. `window=0` (one pass over the whole file) needs it whole.

Batching. Windows of any tracks share batches. They are bucketed by length: a bucket that
reaches `batch_size` runs as one equal-length batch, the fast path with no masks. Leftovers
(last windows of tracks, of various lengths) run together, longest first, padded, with their
true lengths passed to the model, whose statistics ignore padding. Either way a batch gives
the same numbers (to float rounding, <= 1e-5) as running each window alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

import numpy as np
import torch

from mertkit.audio import AudioError, check_waveform, normalize_waveform
from mertkit.extraction import budget
from mertkit.extraction.allocator import keep_freed_memory
from mertkit.models.family import FamilyModel, InputContract, contract_of
from mertkit.models.kernels import (  # noqa: F401 - DTYPES re-exported
    DTYPE_CHOICES, DTYPES, cpu_capabilities, dtype_name, resolve_dtype,
)
from mertkit.extraction.decode import BLOCK, END, FAILED, DecodeEvent

POOLINGS = ("none", "mean", "max")


class ExtractError(ValueError):
    """An input that cannot be turned into features (too short, bad options)."""


@dataclass(frozen=True)
class ExtractOptions:
    layers: tuple[int, ...] | None = None  # hidden-state indices; None = all
    pool: str = "none"
    window: float | None = None  # seconds; 0 = whole file; None = the model's pre-training context
    hop: float | None = None  # seconds; None = the seam-free hop (`seamless_hop`)
    batch_size: int = 8
    dtype: str = "float32"  # or "bfloat16", "float16", "auto" (see mertkit.models.kernels.resolve_dtype)

    def __post_init__(self) -> None:
        if self.pool not in POOLINGS:
            raise ExtractError(f"pool must be one of {POOLINGS}, got {self.pool!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise ExtractError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        if self.window is not None and self.window < 0:
            raise ExtractError(f"window must be >= 0 seconds, got {self.window}")
        if self.hop is not None and self.hop <= 0:
            raise ExtractError(f"hop must be > 0 seconds, got {self.hop}")
        if self.window and self.hop and self.hop > self.window:
            raise ExtractError(f"hop ({self.hop} s) longer than window ({self.window} s) would skip audio")
        if self.batch_size < 1:
            raise ExtractError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass
class Features:
    """What one input yields. `hidden_states` is [layers, frames, width] or pooled [layers, width]."""

    hidden_states: np.ndarray
    layers: tuple[int, ...]
    timestamps: np.ndarray | None  # [frames] seconds, unpooled output only
    window_starts: np.ndarray  # [windows] seconds
    window_ends: np.ndarray
    window_pooled: np.ndarray | None  # [windows, layers, width], pooled output only
    duration: float | None = None  # seconds of audio (at the model rate) the features cover


@dataclass(frozen=True)
class JobFailure:
    """Why one input produced nothing (its other inputs are unaffected)."""

    reason: str


# ---------------------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One model input cut from a track. Frames whose centre (in samples) lies in
    [keep_from, keep_until) belong to the stitched output; the rest belong to a neighbour."""

    index: int
    start: int
    end: int
    samples: np.ndarray
    keep_from: float
    keep_until: float


def _window_sizes(sample_rate: int, window: float, hop: float | None, min_samples: int) -> tuple[int, int]:
    size = max(int(round(window * sample_rate)), min_samples)
    step = int(round((hop or window) * sample_rate))
    if step < 1:
        raise ExtractError(f"hop of {hop or window} s is shorter than one sample at {sample_rate} Hz")
    return size, step


def window_plan(num_samples: int, sample_rate: int, window: float, hop: float | None, min_samples: int) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering the file; see the module docstring."""
    if num_samples < min_samples:
        raise ExtractError(
            f"audio of {num_samples} samples ({num_samples / sample_rate:.4f} s) is shorter than one frame "
            f"({min_samples} samples at {sample_rate} Hz)"
        )
    if not window:
        return [(0, num_samples)]
    size, step = _window_sizes(sample_rate, window, hop, min_samples)
    plan = []
    start = 0
    while True:
        end = min(start + size, num_samples)
        if end - start >= min_samples or not plan:
            plan.append((start, end))
        if end >= num_samples:
            return plan
        start += step


def seamless_hop(contract: InputContract, window: float) -> float:
    """The hop (seconds) that puts one window's first frame one frame period after the previous
    window's last, so stitched frames form one even grid. A window of W samples has
    num_frames(W) frames; a plain hop of W leaves a gap of a frame at each seam whenever W is
    longer than num_frames(W) frame hops, as it is for every conv front end (5 s at 24 kHz:
    374 frames, 374 * 320 = 119 680 < 120 000 samples; the 375th frame would straddle the
    seam). Hopping num_frames(W) * samples_per_frame instead overlaps the windows by the rest
    (320 samples here), and the stitching rule keeps every frame once:

        window k     [f0 f1 ... f373]
        window k+1                   [f0 f1 ...      (starts 374 * 320 samples after window k)
    """
    size, _ = _window_sizes(contract.sample_rate, window, None, contract.min_input_samples)
    return contract.num_frames(size) * contract.samples_per_frame / contract.sample_rate


class Windower:
    """`window_plan` as a stream: push audio blocks, get each window once it is certain.

    A full window [s, s + size) is certain to be followed by another one once the stream holds
    more than s + size samples and at least s + step + min_samples (so the next window is not a
    dropped short remainder). The rest is decided by `finish`, from the final length. Only the
    audio from the next window's start on is kept.
    """

    def __init__(self, sample_rate: int, window: float, hop: float | None, min_samples: int):
        self.sample_rate, self.window, self.hop, self.min_samples = sample_rate, window, hop, min_samples
        self.size, self.step = _window_sizes(sample_rate, window, hop, min_samples) if window else (0, 0)
        self.total = 0  # samples pushed so far
        self.count = 0  # windows emitted so far
        self._pieces: list[np.ndarray] = []  # the audio from sample self._kept_from on
        self._kept_from = 0
        self._prev_end: int | None = None

    def push(self, block: np.ndarray) -> list[Window]:
        block = _checked_block(block)
        self._pieces.append(block)
        self.total += len(block)
        windows = []
        while self.window and self.total >= self._certain_at(self.count * self.step):
            start = self.count * self.step
            windows.append(self._cut(start, start + self.size, start + self.step))
        if windows:
            self._forget_before(self.count * self.step)
        return windows

    def finish(self) -> list[Window]:
        """The remaining windows, now that the length is known; ExtractError if too short."""
        plan = window_plan(self.total, self.sample_rate, self.window, self.hop, self.min_samples)
        windows = []
        for index in range(self.count, len(plan)):
            start, end = plan[index]
            following = plan[index + 1][0] if index + 1 < len(plan) else None
            windows.append(self._cut(start, end, following))
        self._pieces = []
        return windows

    def _certain_at(self, start: int) -> int:
        return max(start + self.size + 1, start + self.step + self.min_samples)

    def _cut(self, start: int, end: int, following: int | None) -> Window:
        if len(self._pieces) > 1:
            self._pieces = [np.concatenate(self._pieces)]
        samples = self._pieces[0][start - self._kept_from : end - self._kept_from].copy()
        keep_from = -math.inf if self._prev_end is None else (self._prev_end + start) / 2
        keep_until = math.inf if following is None else (end + following) / 2
        window = Window(self.count, start, end, samples, keep_from, keep_until)
        self.count += 1
        self._prev_end = end
        return window

    def _forget_before(self, position: int) -> None:
        buffer = np.concatenate(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
        self._pieces = [buffer[position - self._kept_from :].copy()]
        self._kept_from = position


def _checked_block(block: np.ndarray, name: str = "waveform") -> np.ndarray:
    try:
        return check_waveform(block, name, min_samples=0)
    except AudioError as err:
        raise ExtractError(str(err)) from None


# ---------------------------------------------------------------------------------------
# Per-window results and per-track sinks
# ---------------------------------------------------------------------------------------
@dataclass
class WindowOutput:
    """What the model gave for one window: the kept frames (frame-level output) or, for
    pooled output, the window's pool over all its frames and the sums/maxima of its kept frames."""

    index: int
    start: int
    end: int
    timestamps: np.ndarray  # [kept] seconds
    frames: np.ndarray | None = None  # [layers, kept, width] float32
    pooled: np.ndarray | None = None  # [layers, width]
    kept_sum: np.ndarray | None = None  # [layers, width] float64
    kept_max: np.ndarray | None = None  # [layers, width]


class Sink(Protocol):
    """Receives one track's window outputs in window order."""

    def add(self, output: WindowOutput) -> None: ...

    def finish(self, num_samples: int) -> object: ...

    def abort(self) -> None: ...


class RowBuffer:
    """Rows of one shape appended into one array that doubles when full.

    Why not a list of rows: each window's small pooled vector, kept for the whole track,
    lands in the heap between the large short-lived activations of the next forward, which
    then cannot reuse that space; the heap crept up by ~14 MB per batch on MERT-v1-95M
    (benchmarks/bench_memory.py). A doubling buffer is a handful of allocations per track.
    """

    def __init__(self, initial_rows: int = 64):
        self.rows: np.ndarray | None = None
        self.count = 0
        self.initial_rows = initial_rows

    def append(self, row: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((self.initial_rows, *row.shape), dtype=row.dtype)
        elif self.count == len(self.rows):
            grown = np.empty((2 * len(self.rows), *self.rows.shape[1:]), dtype=self.rows.dtype)
            grown[: self.count] = self.rows
            self.rows = grown
        self.rows[self.count] = row
        self.count += 1

    def array(self) -> np.ndarray:
        """A copy of the rows appended so far, [count, *row shape]."""
        if self.rows is None:
            raise ValueError("no rows were appended")
        return self.rows[: self.count].copy()


class FeatureSink:
    """Assembles one track's `Features` in memory: all kept frames for pool 'none', else only
    running accumulators plus the (tiny) per-window pooled vectors."""

    def __init__(self, layers: tuple[int, ...], pool: str, sample_rate: int):
        self.layers, self.pool, self.sample_rate = layers, pool, sample_rate
        self.frames: list[np.ndarray] = []
        self.stamps: list[np.ndarray] = []
        self.bounds: list[tuple[int, int]] = []
        self.window_pooled = RowBuffer()
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, output: WindowOutput) -> None:
        self.bounds.append((output.start, output.end))
        if self.pool == "none":
            self.frames.append(np.ascontiguousarray(output.frames))  # a copy: frees the batch array
            self.stamps.append(output.timestamps)
            return
        self.window_pooled.append(output.pooled)
        self.count += len(output.timestamps)
        update = output.kept_sum if self.pool == "mean" else output.kept_max
        if self.total is None:
            self.total = np.array(update)  # owned: kept_max is a view of the batch's statistics
        elif self.pool == "mean":
            np.add(self.total, update, out=self.total)  # in place: no allocation per window
        else:
            np.maximum(self.total, update, out=self.total)

    def finish(self, num_samples: int) -> Features:
        duration = num_samples / self.sample_rate
        starts = np.array([s for s, _ in self.bounds], dtype=np.float64) / self.sample_rate
        ends = np.array([e for _, e in self.bounds], dtype=np.float64) / self.sample_rate
        if self.pool == "none":
            frames = np.concatenate(self.frames, axis=1)
            return Features(frames, self.layers, np.concatenate(self.stamps), starts, ends, None, duration)
        track = self.total / self.count if self.pool == "mean" else self.total
        return Features(track.astype(np.float32), self.layers, None, starts, ends, self.window_pooled.array(),
                        duration)

    def abort(self) -> None:
        self.frames.clear()


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One track in flight: its windower, its sink, and outputs that arrived ahead of order."""

    id: int
    windower: Windower
    sink: Sink
    num_windows: int | None = None  # known once its audio ended
    delivered: int = 0
    waiting: dict[int, WindowOutput] = field(default_factory=dict)
    failed: bool = False

    def deliver(self, output: WindowOutput) -> None:
        self.waiting[output.index] = output
        while self.delivered in self.waiting:
            self.sink.add(self.waiting.pop(self.delivered))
            self.delivered += 1

    @property
    def complete(self) -> bool:
        return not self.failed and self.num_windows is not None and self.delivered == self.num_windows


@dataclass
class _Pending:
    job: _Job
    window: Window


class _Batcher:
    """Length buckets: a full bucket is an equal-length batch; too many leftovers, or the end
    of the input, run the rest longest first as padded batches."""

    def __init__(self, batch_size: int, max_pending: int):
        self.batch_size, self.max_pending = batch_size, max_pending
        self.buckets: dict[int, list[_Pending]] = {}
        self.pending = 0

    def add(self, item: _Pending) -> list[list[_Pending]]:
        length = len(item.window.samples)
        bucket = self.buckets.setdefault(length, [])
        bucket.append(item)
        self.pending += 1
        ready = []
        if len(bucket) == self.batch_size:
            ready.append(self.buckets.pop(length))
            self.pending -= self.batch_size
        if self.pending > self.max_pending:
            ready.extend(self.drain())
        return ready

    def drain(self) -> list[list[_Pending]]:
        items = sorted(chain.from_iterable(self.buckets.values()), key=lambda p: -len(p.window.samples))
        self.buckets.clear()
        self.pending = 0
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]


# ---------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------
class Extractor:
    """Runs a model over waveforms (at the model's rate) and assembles per-input features.

    `compile=True` wraps the model in `torch.compile` (dynamic shapes), on CUDA only: it pays
    off on a GPU with long runs (see `mert extract --compile`).
    """

    def __init__(self, model: FamilyModel, options: ExtractOptions = ExtractOptions(), *,
                 do_normalize: bool | None = None, compile: bool = False):
        self.model = model
        self.config = model.config
        self.options = options
        info = getattr(model, "info", None)
        self.do_normalize = do_normalize if do_normalize is not None else (info.do_normalize if info else False)
        # What the model expects (any family): rate, frames, minimum input, default window.
        self.contract = contract_of(model)
        self.context = self.contract.default_window_seconds
        self.layers = _check_layers(options.layers, self.contract.num_hidden_states)
        if compile and self.device().type != "cuda":
            # On CPU the model runs fused oneDNN inference kernels that inductor cannot lower.
            raise ExtractError("compile=True (--compile) needs a CUDA device; on CPU the model already runs "
                               "fused oneDNN kernels, which torch.compile cannot compile")
        self._forward = torch.compile(model, dynamic=True) if compile else model
        self.compute_dtype = self._compute_dtype()
        # Memory is estimated before any work (mertkit.extraction.budget): a batch that cannot
        # fit is shrunk with a message, a window that cannot fit is refused.
        self.memory_budget = budget.available_memory(self.device())
        self.batch_size = self._fitting_batch_size()
        if self.device().type == "cpu":
            keep_freed_memory()  # see mertkit.extraction.allocator: saves re-faulting activations each forward
        # Leftover windows allowed to wait for a same-length partner before running padded.
        self.max_pending = 2 * self.batch_size

    @property
    def window(self) -> float:
        return self.context if self.options.window is None else self.options.window

    @property
    def hop(self) -> float:
        """The hop asked for, else the seam-free one: windows that tile the frame grid, so
        frame-level output has no gap at a seam (`seamless_hop`; the window itself whenever
        the window is a whole number of frames, as for a log-mel front end)."""
        if self.options.hop:
            return self.options.hop
        if not self.window:  # the whole file in one pass: no second window to hop to
            return self.window
        return seamless_hop(self.contract, self.window)

    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _compute_dtype(self) -> torch.dtype:
        """The dtype the forward runs in: a model loaded in half precision runs natively in its
        own dtype; a float32 one in the requested dtype ("auto" resolved for this device)."""
        weights = next(self.model.parameters()).dtype
        requested = self.options.dtype if weights == torch.float32 else dtype_name(weights)
        return resolve_dtype(requested, self.device())

    def _fused(self) -> bool:
        """Whether the forward takes the fused CPU kernels (they hold fewer activation copies)."""
        weights = next(self.model.parameters()).dtype
        return self.device().type == "cpu" and weights == self.compute_dtype and cpu_capabilities().fused(weights)

    def _fitting_batch_size(self) -> int:
        try:
            return budget.fitting_batch_size(self.config, self.window, self.options.batch_size, self.compute_dtype,
                                             fused=self._fused(), budget=self.memory_budget)
        except MemoryError as err:
            raise ExtractError(str(err)) from None

    def _whole_file_refusal(self, windows: list[Window]) -> str | None:
        """Why a whole-file window (--window 0) cannot run in the memory available, if it cannot."""
        if self.window or not windows:
            return None
        samples = max(len(w.samples) for w in windows)
        return budget.whole_file_refusal(self.config, samples, self.compute_dtype, fused=self._fused(),
                                         budget=self.memory_budget)

    # ---- public API ------------------------------------------------------------------
    def extract(self, wave: np.ndarray) -> Features:
        """Features of one waveform."""
        ((_, features),) = list(self.extract_many([(None, wave)]))
        return features

    def extract_many(self, items: Iterable[tuple[object, np.ndarray]]) -> Iterator[tuple[object, Features]]:
        """(key, waveform) pairs in, (key, Features) out, in input order; windows share batches.

        A waveform that cannot be processed raises ExtractError before any model work for it.
        """
        keys: list[object] = []

        def events() -> Iterator[DecodeEvent]:
            for key, wave in items:
                wave = self._validated(key, wave)
                keys.append(key)
                yield DecodeEvent(BLOCK, len(keys) - 1, wave)
                yield DecodeEvent(END, len(keys) - 1)

        done: dict[int, Features] = {}
        next_job = 0
        for job, outcome in self.run(events(), self.feature_sink):
            if isinstance(outcome, JobFailure):
                raise ExtractError(f"{keys[job]}: {outcome.reason}")
            done[job] = outcome
            while next_job in done:
                yield keys[next_job], done.pop(next_job)
                next_job += 1

    def extract_file(self, path, *, block_seconds: float = 10.0) -> Features:
        """Features of one audio file, decoded and resampled as a stream (bounded memory for
        pooled output). Raises AudioError for unreadable files, ExtractError for unusable audio."""
        from mertkit.audio import stream_audio

        blocks = stream_audio(path, self.config.sample_rate, block_seconds=block_seconds)
        events = chain((DecodeEvent(BLOCK, 0, block) for block in blocks), [DecodeEvent(END, 0)])
        ((_, outcome),) = list(self.run(events, self.feature_sink))
        if isinstance(outcome, JobFailure):
            raise ExtractError(f"{path}: {outcome.reason}")
        return outcome

    def feature_sink(self, job: int = 0) -> FeatureSink:
        """The in-memory sink (`make_sink` for `run`)."""
        return FeatureSink(self.layers, self.options.pool, self.config.sample_rate)

    def new_windower(self) -> Windower:
        return Windower(self.contract.sample_rate, self.window, self.hop, self.contract.min_input_samples)

    def run(self, events: Iterable[DecodeEvent], make_sink: Callable[[int], Sink]) -> Iterator[tuple[int, object]]:
        """The engine: decode events of any number of interleaved jobs in, (job, result) out as
        each job completes, where result is `make_sink(job).finish(...)` or a JobFailure."""
        jobs: dict[int, _Job] = {}
        batcher = _Batcher(self.batch_size, self.max_pending)
        for event in events:
            job = jobs.get(event.job)
            if job is None:
                job = jobs[event.job] = _Job(event.job, self.new_windower(), make_sink(event.job))
            if event.kind == FAILED:
                yield self._fail(jobs, job, event.reason)
                continue
            try:
                windows = job.windower.push(event.samples) if event.kind == BLOCK else job.windower.finish()
            except ExtractError as err:
                yield self._fail(jobs, job, str(err))
                continue
            refusal = self._whole_file_refusal(windows)
            if refusal is not None:
                yield self._fail(jobs, job, refusal)
                continue
            if event.kind == END:
                job.num_windows = job.windower.count
            touched = {job.id: job}
            for window in windows:
                for batch in batcher.add(_Pending(job, window)):
                    touched.update((j.id, j) for j in self._run_batch(batch))
            yield from self._completed(jobs, touched.values())
        for batch in batcher.drain():
            yield from self._completed(jobs, self._run_batch(batch))
        if jobs:
            raise RuntimeError(f"decode events ended with jobs {sorted(jobs)} incomplete")

    # ---- internals -------------------------------------------------------------------
    def _validated(self, key: object, wave: np.ndarray) -> np.ndarray:
        wave = _checked_block(wave, str(key))
        try:
            window_plan(len(wave), self.contract.sample_rate, self.window, self.hop, self.contract.min_input_samples)
        except ExtractError as err:
            raise ExtractError(f"{key}: {err}") from None
        return wave

    @staticmethod
    def _fail(jobs: dict[int, _Job], job: _Job, reason: str) -> tuple[int, JobFailure]:
        job.failed = True
        job.sink.abort()
        jobs.pop(job.id, None)
        return job.id, JobFailure(reason)

    @staticmethod
    def _completed(jobs: dict[int, _Job], touched: Iterable[_Job]) -> Iterator[tuple[int, object]]:
        for job in sorted(touched, key=lambda j: j.id):
            if job.complete and jobs.pop(job.id, None) is not None:
                yield job.id, job.sink.finish(job.windower.total)

    @torch.inference_mode()
    def _run_batch(self, items: Sequence[_Pending]) -> list[_Job]:
        items = [p for p in items if not p.job.failed]
        if not items:
            return []
        fits = self._fitting_count(items)
        if fits < len(items):  # whole files of many lengths (--window 0): split what would not fit
            return [job for i in range(0, len(items), fits) for job in self._run_batch(items[i : i + fits])]
        chunks = [p.window.samples for p in items]
        if self.do_normalize:
            # Wav2Vec2FeatureExtractor's do_normalize, per model input (here: per window).
            chunks = [normalize_waveform(c) for c in chunks]
        device = self.device()
        batch, lengths = _input_batch(chunks, device)
        weights = next(self.model.parameters()).dtype
        if not self.contract.float32_input:
            batch = batch.to(weights)  # a model loaded in bf16/fp16 runs natively (fastest on CPU)
        exact = all(n == lengths[0] for n in lengths)
        with _autocast(device, self.compute_dtype, weights):
            out = self._forward(batch, None if exact else torch.tensor(lengths), max_layer=max(self.layers))
        states = torch.stack([out.hidden_states[i] for i in self.layers], dim=1)  # [B, layers, F, H]
        outputs = self._window_outputs(states, [p.window for p in items])
        for item, output in zip(items, outputs):
            item.job.deliver(output)
        return [p.job for p in items]

    def _fitting_count(self, items: Sequence[_Pending]) -> int:
        """How many of `items` (padded to the longest) fit in one forward; at least 1."""
        if self.memory_budget is None:
            return len(items)
        longest = max(len(p.window.samples) for p in items)
        fits = budget.largest_batch(self.config, longest, self.compute_dtype, fused=self._fused(),
                                    budget=self.memory_budget)
        return max(1, fits)

    def _window_outputs(self, states: torch.Tensor, windows: list[Window]) -> list[WindowOutput]:
        """Per window: keep the frames it owns; pool on the model's device so only small
        vectors cross to the host for pooled output."""
        contract = self.contract
        spans, stamps = [], []
        for w in windows:
            steps = np.arange(contract.num_frames(w.end - w.start))
            centres = w.start + contract.samples_per_frame * steps + contract.first_frame_centre
            first, stop = np.searchsorted(centres, [w.keep_from, w.keep_until], side="left")
            spans.append((len(centres), int(first), int(stop)))
            stamps.append(centres[first:stop] / contract.sample_rate)
        if self.options.pool == "none":
            host = states[:, :, : max(stop for _, _, stop in spans)].float().cpu().numpy()
            return [WindowOutput(w.index, w.start, w.end, t, frames=host[i, :, a:b])
                    for i, (w, t, (_, a, b)) in enumerate(zip(windows, stamps, spans))]
        stats = torch.stack([self._pooled_stats(states[i], *span) for i, span in enumerate(spans)]).cpu().numpy()
        return [
            WindowOutput(w.index, w.start, w.end, t, pooled=stats[i, 0], kept_sum=stats[i, 1].astype(np.float64),
                         kept_max=stats[i, 2])
            for i, (w, t) in enumerate(zip(windows, stamps))
        ]

    def _pooled_stats(self, states: torch.Tensor, frames: int, first: int, stop: int) -> torch.Tensor:
        """[3, layers, H]: the window's pool over all its frames, the sum and max of its kept frames."""
        valid = states[:, :frames].float()
        pooled = valid.mean(dim=1) if self.options.pool == "mean" else valid.amax(dim=1)
        kept = valid[:, first:stop]
        if stop > first:
            return torch.stack([pooled, kept.sum(dim=1), kept.amax(dim=1)])
        return torch.stack([pooled, torch.zeros_like(pooled), torch.full_like(pooled, -math.inf)])


def _input_batch(chunks: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Zero-padded [B, T] on `device`; on CUDA via pinned memory and an asynchronous copy."""
    lengths = [len(c) for c in chunks]
    pinned = device.type == "cuda"
    batch = torch.zeros(len(chunks), max(lengths), pin_memory=pinned)
    for i, chunk in enumerate(chunks):
        batch[i, : len(chunk)] = torch.from_numpy(chunk)
    return batch.to(device, non_blocking=pinned), lengths


def _autocast(device: torch.device, dtype: torch.dtype, weights: torch.dtype):
    """Autocast only for an fp32 model asked to run in half precision."""
    if dtype == torch.float32 or weights != torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _check_layers(layers: tuple[int, ...] | None, num_states: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(num_states))
    if not layers:
        raise ExtractError("no layers selected")
    bad = [i for i in layers if not 0 <= i < num_states]
    if bad:
        raise ExtractError(f"layers {bad} out of range: this model has hidden states 0..{num_states - 1}")
    return tuple(layers)


def parse_layers(text: str) -> tuple[int, ...] | None:
    """'all' -> None (every hidden state); '0,6,12' -> (0, 6, 12)."""
    text = text.strip().lower()
    if text == "all":
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ExtractError(f"--layers must be 'all' or comma-separated integers, got {text!r}") from err
