"""Features from waveforms: windows, exact batching, layer choice, pooling.

Windows. A file of N samples is cut into windows of `window` seconds every `hop` seconds
(hop defaults to window; `window=0` means the whole file in one pass):

    samples  |0 ........................................................ N|
    window 0 |[=========== W ===========]                                 |
    window 1 |        [=========== W ===========]                         |   (hop < W: overlap)
    last     |                                   [====== rest ======]     |   (run at its own length)

The last window holds whatever is left (it is run at its own length, never padded into the
model); a remainder shorter than one frame (400 samples) is dropped, except when it is the
whole file, which is then an error. With overlap, each frame is kept from one window only:
windows hand over at the middle of their overlap.

Frame timestamps. Frame j of a window starting at sample s sees samples
[s + 320 j, s + 320 j + 400): its timestamp is the centre of that span, (s + 320 j + 200) / sr.

Batching. Windows of several files share batches; items of different lengths are padded and
their true lengths passed to the model, whose statistics ignore padding, so a batch gives the
same numbers as running each window alone.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mertkit.model import MertModel

POOLINGS = ("none", "mean", "max")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExtractError(ValueError):
    """An input that cannot be turned into features (too short, bad options)."""


@dataclass(frozen=True)
class ExtractOptions:
    layers: tuple[int, ...] | None = None  # hidden-state indices; None = all
    pool: str = "none"
    window: float | None = None  # seconds; 0 = whole file; None = the model's pre-training context
    hop: float | None = None  # seconds; None = window (no overlap)
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.pool not in POOLINGS:
            raise ExtractError(f"pool must be one of {POOLINGS}, got {self.pool!r}")
        if self.dtype not in DTYPES:
            raise ExtractError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
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


@dataclass
class _Window:
    job: _Job
    index: int
    start: int
    end: int


@dataclass
class _Job:
    key: object
    wave: np.ndarray
    plan: list[tuple[int, int]]
    results: dict[int, np.ndarray] = field(default_factory=dict)  # window -> [layers, frames, width]


def window_plan(num_samples: int, sample_rate: int, window: float, hop: float | None, min_samples: int) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering the file; see the module docstring."""
    if num_samples < min_samples:
        raise ExtractError(
            f"audio of {num_samples} samples ({num_samples / sample_rate:.4f} s) is shorter than one frame "
            f"({min_samples} samples at {sample_rate} Hz)"
        )
    if not window:
        return [(0, num_samples)]
    size = max(int(round(window * sample_rate)), min_samples)
    step = int(round((hop or window) * sample_rate))
    plan = []
    start = 0
    while True:
        end = min(start + size, num_samples)
        if end - start >= min_samples or not plan:
            plan.append((start, end))
        if end >= num_samples:
            return plan
        start += step


class Extractor:
    """Runs a model over waveforms (at the model's rate) and assembles per-input features."""

    def __init__(self, model: MertModel, options: ExtractOptions = ExtractOptions(), *, do_normalize: bool | None = None):
        self.model = model
        self.config = model.config
        self.options = options
        info = getattr(model, "info", None)
        self.do_normalize = do_normalize if do_normalize is not None else (info.do_normalize if info else False)
        self.context = _default_window(model)
        self.layers = _check_layers(options.layers, self.config.num_hidden_states)

    @property
    def window(self) -> float:
        return self.context if self.options.window is None else self.options.window

    @property
    def hop(self) -> float:
        return self.options.hop or self.window

    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- public API ------------------------------------------------------------------
    def extract(self, wave: np.ndarray) -> Features:
        """Features of one waveform."""
        ((_, features),) = list(self.extract_many([(None, wave)]))
        return features

    def extract_many(self, items: Iterable[tuple[object, np.ndarray]]) -> Iterator[tuple[object, Features]]:
        """(key, waveform) pairs in, (key, Features) out, in input order; windows share batches.

        A waveform that cannot be processed raises ExtractError before any model work for it.
        """
        pending: list[_Job] = []
        queue: list[_Window] = []
        for key, wave in items:
            job = self._job(key, wave)
            pending.append(job)
            queue.extend(_Window(job, i, s, e) for i, (s, e) in enumerate(job.plan))
            while len(queue) >= self.options.batch_size:
                self._run_batch(queue[: self.options.batch_size])
                del queue[: self.options.batch_size]
                yield from self._finished(pending)
        while queue:
            self._run_batch(queue[: self.options.batch_size])
            del queue[: self.options.batch_size]
        yield from self._finished(pending)

    # ---- internals -------------------------------------------------------------------
    def _job(self, key: object, wave: np.ndarray) -> _Job:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ExtractError(f"{key}: expected a mono waveform [samples], got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise ExtractError(f"{key}: waveform contains NaN or Inf samples")
        plan = window_plan(len(wave), self.config.sample_rate, self.window, self.hop, self.config.receptive_field)
        return _Job(key, wave, plan)

    def _finished(self, pending: list[_Job]) -> Iterator[tuple[object, Features]]:
        while pending and len(pending[0].results) == len(pending[0].plan):
            job = pending.pop(0)
            yield job.key, self._assemble(job)

    @torch.inference_mode()
    def _run_batch(self, windows: Sequence[_Window]) -> None:
        chunks = [w.job.wave[w.start : w.end] for w in windows]
        if self.do_normalize:
            chunks = [_normalize(c) for c in chunks]
        lengths = torch.tensor([len(c) for c in chunks])
        batch = torch.zeros(len(chunks), int(lengths.max()))
        for i, chunk in enumerate(chunks):
            batch[i, : len(chunk)] = torch.from_numpy(chunk)
        device = self.device()
        batch = batch.to(device)
        exact = bool((lengths == lengths[0]).all())
        with _autocast(device, self.options.dtype):
            out = self.model(batch, None if exact else lengths, max_layer=max(self.layers))
        states = torch.stack([out.hidden_states[i] for i in self.layers], dim=1).float()  # [B, layers, F, H]
        for i, w in enumerate(windows):
            frames = self.config.num_frames(w.end - w.start)
            w.job.results[w.index] = states[i, :, :frames].cpu().numpy()

    def _assemble(self, job: _Job) -> Features:
        sr, hop_len = self.config.sample_rate, self.config.hop_length
        centre = self.config.receptive_field / 2
        kept, stamps, pooled = [], [], []
        bounds = _handover_points(job.plan)
        for w, (start, _end) in enumerate(job.plan):
            states = job.results[w]
            t = (start + hop_len * np.arange(states.shape[1]) + centre) / sr
            keep = (t >= bounds[w][0] / sr) & (t < bounds[w][1] / sr)
            kept.append(states[:, keep])
            stamps.append(t[keep])
            if self.options.pool != "none":
                pooled.append(_pool(states, self.options.pool))
        frames = np.concatenate(kept, axis=1)
        starts = np.array([s for s, _ in job.plan], dtype=np.float64) / sr
        ends = np.array([e for _, e in job.plan], dtype=np.float64) / sr
        if self.options.pool == "none":
            return Features(frames, self.layers, np.concatenate(stamps), starts, ends, None)
        return Features(_pool(frames, self.options.pool), self.layers, None, starts, ends, np.stack(pooled))


def _handover_points(plan: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """Per window, the sample range whose frames it owns: windows hand over mid-overlap."""
    cuts = [(plan[i][1] + plan[i + 1][0]) / 2 for i in range(len(plan) - 1)]
    lows = [-math.inf, *cuts]
    highs = [*cuts, math.inf]
    return list(zip(lows, highs))


def _pool(states: np.ndarray, how: str) -> np.ndarray:
    return states.mean(axis=1) if how == "mean" else states.max(axis=1)


def _normalize(chunk: np.ndarray) -> np.ndarray:
    # Wav2Vec2FeatureExtractor's do_normalize, per model input (here: per window).
    return ((chunk - chunk.mean()) / np.sqrt(chunk.var() + 1e-7)).astype(np.float32)


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _default_window(model: MertModel) -> float:
    info = getattr(model, "info", None)
    if info is not None:
        from mertkit.registry import lookup

        card = lookup(info.name)
        if card is not None:
            return card.context_seconds
    return 5.0


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


def embed_file(model: MertModel, path, *, layers: tuple[int, ...] | None = None, pool: str = "mean",
               window: float | None = None) -> np.ndarray:
    """Pooled features [layers, width] of one audio file (decoded and resampled to the model rate)."""
    from mertkit.audio import load_audio

    if pool == "none":
        raise ExtractError("embed_file pools; use Extractor for frame-level features")
    wave = load_audio(path, model.config.sample_rate)
    return Extractor(model, ExtractOptions(layers=layers, pool=pool, window=window)).extract(wave).hidden_states
