"""Probes on frozen features, MARBLE-style.

A probe is a layer aggregator followed by a head:

* aggregator (``ProbeConfig.layer``): one hidden state ``k``; ``"all"``: a sweep, one probe per
  layer; ``"weighted"``: a softmax-weighted sum of all layers (learnable weights, initialised
  equal); ``"conv1d"``: the MERT card's ``Conv1d(L -> 1, kernel 1)`` over the layer axis.
* head (``ProbeConfig.kind``): ``"linear"``; ``"mlp"`` = Linear(D, 512) -> ReLU ->
  Dropout(0.2) -> Linear(512, C). With ``ProbeConfig.context`` = c > 0 (frame-level tasks) the
  first layer sees the c frames either side too: a Conv1d over time, kernel 2c + 1, zero
  padded, i.e. a linear map of the stacked frames, the same for every representation.

Training: Adam over a learning-rate grid; full batch (``batch_size=None``) or mini-batches
shuffled by a seeded generator; early stopping on the task's validation metric with patience;
the best-validation weights are scored on test. Every lr runs every seed; the lr with the best
mean validation score is kept and its test scores are reported as mean and std over seeds.

Losses: cross-entropy (multiclass, frame; padded frames ignored), BCE (multilabel), MSE on
targets standardised with the training split's mean and std (regression), and for beats a
per-frame BCE on a 0/1 "beat here" target. Beat decoding is deliberately simple: a frame is a
beat when its probability is a local maximum (>= both neighbours) and above
``beat_threshold``; beat times are frame / frame_rate. MARBLE decodes with madmom's DBN
instead, so beat scores here are not directly comparable to published MARBLE numbers.

Uncertainty: besides the spread over seeds, every result carries a 95 % percentile bootstrap
interval over the test items (1000 resamples of the test clips, each scored with the seeds'
predictions and averaged over seeds; 200 for multilabel, whose macro ROC-AUC is costly), so a
small test set shows as a wide interval. Multiclass results also keep the test confusion
matrix (rows: true class, columns: predicted, counts summed over seeds).

Runs are deterministic for a given seed on CPU: ``torch.manual_seed`` before each model is
built, a seeded generator for shuffling, and ``torch.use_deterministic_algorithms(True)``
while training (restored afterwards).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mertkit.eval import metrics
from mertkit.eval.datasets import TaskSpec
from mertkit.eval.features import FeatureSplits, SplitData

__all__ = [
    "ProbeConfig", "ProbeResult", "SeedRun", "TaskSpec", "TrainedProbe", "FeatureSplits", "run_probe", "count_fits",
    "pool_results", "ProbeError", "peak_picking_result",
]

LayerChoice = int | Literal["all", "weighted", "conv1d"]


# Thresholds :func:`peak_picking_result` chooses from (the activation peaks at 1 in each clip).
PEAK_THRESHOLDS = tuple(round(0.05 * step, 2) for step in range(1, 20))


class ProbeError(ValueError):
    """A probe configuration or feature set that cannot be trained."""


@dataclass(frozen=True)
class ProbeConfig:
    kind: Literal["linear", "mlp"] = "linear"
    layer: LayerChoice = "weighted"
    lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    max_epochs: int = 100
    patience: int = 10
    batch_size: int | None = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    weight_decay: float = 0.0
    hidden_size: int = 512
    dropout: float = 0.2
    context: int = 0  # frame-level tasks: frames either side the head's first layer sees
    beat_threshold: float = 0.5
    beat_tolerance: float = metrics.MARBLE_BEAT_TOLERANCE_S
    beat_trim: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ProbeError(f"probe kind must be 'linear' or 'mlp', got {self.kind!r}")
        if not (isinstance(self.layer, int) or self.layer in ("all", "weighted", "conv1d")):
            raise ProbeError(f"layer must be an int, 'all', 'weighted' or 'conv1d', got {self.layer!r}")
        if not self.lrs or not self.seeds:
            raise ProbeError("need at least one learning rate and one seed")
        bad_lrs = [lr for lr in self.lrs if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0)]
        if bad_lrs:
            raise ProbeError(f"learning rates must be positive finite numbers, got {bad_lrs}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ProbeError("max_epochs and patience must be positive")
        if self.batch_size is not None and self.batch_size < 1:
            raise ProbeError("batch_size must be positive or None (full batch)")
        if not (isinstance(self.context, int) and self.context >= 0):
            raise ProbeError(f"context must be 0 or more frames, got {self.context!r}")


@dataclass
class TrainedProbe:
    """Weights of one trained probe and, for regression, the training targets' mean and std:
    what `mertkit.eval.saved_probe` writes to disk. Never part of the JSON results."""

    state: dict[str, torch.Tensor]
    target_mean: list[float] | None = None
    target_std: list[float] | None = None


@dataclass
class SeedRun:
    seed: int
    lr: float
    valid_score: float
    test_scores: dict[str, float]
    epochs: int
    layer_weights: list[float] | None = None
    trained: TrainedProbe | None = field(default=None, repr=False, compare=False)


@dataclass
class ProbeResult:
    """Scores of one probe setting; for ``layer="all"`` the best layer, plus every layer."""

    task: str
    metric: str
    probe: str
    layer: int | str
    best_lr: float
    valid_mean: float
    test_mean: dict[str, float]
    test_std: dict[str, float]
    runs: list[SeedRun]
    valid_by_lr: dict[str, float]
    layer_weights: list[float] | None = None
    best_layer: int | None = None
    per_layer: list[ProbeResult] = field(default_factory=list)
    # The best-validation seed of the best learning rate (for "all": of the best layer).
    trained: TrainedProbe | None = field(default=None, repr=False, compare=False)
    # 95 % bootstrap interval of the primary metric over test items (None: fewer than 2 items
    # or the metric is undefined on most resamples; ``ci_note`` says which).
    test_ci: list[float] | None = None
    ci_note: str = ""
    n_test: int = 0
    ci_resamples: int = 0
    confusion: list[list[int]] | None = None  # multiclass: [true][predicted] test counts, summed over seeds
    # The seeds' test predictions, to re-estimate the interval when results are pooled; not in to_dict.
    _items: list[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def score(self) -> float:
        """Mean test score on the task's primary metric."""
        return self.test_mean[self.metric]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, _items=None, per_layer=[]), dict_factory=_without_weights)
        data["per_layer"] = [result.to_dict() for result in self.per_layer]
        return data


def _without_weights(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """asdict's dict_factory: the JSON view leaves out the trained weights and the test predictions."""
    return {key: value for key, value in items if key not in ("trained", "_items")}


def run_probe(task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig, progress: Any = None) -> ProbeResult:
    """Train and evaluate probes as configured (see the module docstring).

    ``progress``: a :class:`mertkit.progress.Progress` counted once per trained probe (layer x
    lr x seed; :func:`count_fits` gives the total)."""
    _check_inputs(task, data, cfg)
    if cfg.layer == "all":
        per_layer = [_run_setting(task, data, replace(cfg, layer=k), progress) for k in range(data.num_layers)]
        best = max(per_layer, key=lambda result: result.valid_mean)
        # The confusion matrix is kept for the chosen layer only (one per layer would bloat the JSON).
        per_layer = [replace(result, confusion=None) for result in per_layer]
        return replace(best, layer="all", best_layer=int(best.layer), per_layer=per_layer)
    return _run_setting(task, data, cfg, progress)


def count_fits(cfg: ProbeConfig, num_layers: int) -> int:
    """Probes :func:`run_probe` trains for ``cfg`` on features with ``num_layers`` hidden states."""
    return (num_layers if cfg.layer == "all" else 1) * len(cfg.lrs) * len(cfg.seeds)


# ----------------------------------------------------------------------------- modules


class LayerAggregator(nn.Module):
    """Maps [B, L, (T,) D] to [B, (T,) D]: softmax-weighted sum or Conv1d(L -> 1, kernel 1)."""

    def __init__(self, mode: Literal["weighted", "conv1d"], num_layers: int) -> None:
        super().__init__()
        self.mode = mode
        if mode == "weighted":
            self.logits = nn.Parameter(torch.zeros(num_layers))  # equal weights at the start
        else:
            self.conv = nn.Conv1d(num_layers, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "weighted":
            weights = torch.softmax(self.logits, dim=0)
            return torch.einsum("bl...,l->b...", x, weights)
        if x.dim() == 3:
            return self.conv(x).squeeze(1)
        batch, layers, frames, width = x.shape
        folded = x.permute(0, 2, 1, 3).reshape(batch * frames, layers, width)
        return self.conv(folded).reshape(batch, frames, width)

    def layer_weights(self) -> list[float]:
        if self.mode == "weighted":
            return torch.softmax(self.logits.detach(), dim=0).tolist()
        return self.conv.weight.detach()[0, :, 0].tolist()


class FrameContext(nn.Module):
    """[B, T, D] -> [B, T, out]: a linear map of each frame with its ``context`` neighbours either
    side (zeros past the ends), as a Conv1d over time."""

    def __init__(self, width: int, outputs: int, context: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, outputs, kernel_size=2 * context + 1, padding=context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class Probe(nn.Module):
    def __init__(self, width: int, outputs: int, cfg: ProbeConfig, aggregator: LayerAggregator | None) -> None:
        super().__init__()
        self.aggregator = aggregator
        first_outputs = outputs if cfg.kind == "linear" else cfg.hidden_size
        first = FrameContext(width, first_outputs, cfg.context) if cfg.context else nn.Linear(width, first_outputs)
        if cfg.kind == "linear":
            self.head: nn.Module = first
        else:
            self.head = nn.Sequential(first, nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_size, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aggregator is not None:
            x = self.aggregator(x)
        return self.head(x)


# ----------------------------------------------------------------------------- training


@dataclass
class _Prepared:
    """Tensors for one split, ready for the model and the loss."""

    x: torch.Tensor
    y: torch.Tensor
    source: SplitData


def _run_setting(task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig, progress: Any = None) -> ProbeResult:
    scaler = _TargetScaler.fit(task, data.train.y)
    splits = {name: _prepare(data.split(name), task, cfg, scaler) for name in ("train", "valid", "test")}
    fitted = {lr: [_train_seed(task, data, splits, cfg, lr, seed, scaler, progress) for seed in cfg.seeds] for lr in cfg.lrs}
    runs_by_lr = {lr: [run for run, _ in pairs] for lr, pairs in fitted.items()}
    valid_by_lr = {lr: float(np.mean([run.valid_score for run in runs])) for lr, runs in runs_by_lr.items()}
    best_lr = max(cfg.lrs, key=lambda lr: valid_by_lr[lr])  # ties: the first lr in the grid
    runs = runs_by_lr[best_lr]
    trained = max(runs, key=lambda run: run.valid_score).trained  # ties: the first seed
    for run in (run for lr_runs in runs_by_lr.values() for run in lr_runs):
        run.trained = None  # keep one set of weights per setting, not one per run
    items = [item for _, item in fitted[best_lr]]
    names = runs[0].test_scores.keys()
    weights = [run.layer_weights for run in runs if run.layer_weights is not None]
    return _with_uncertainty(task, items, ProbeResult(
        task=task.name,
        metric=task.metric,
        probe=cfg.kind,
        layer=cfg.layer,
        best_lr=best_lr,
        valid_mean=valid_by_lr[best_lr],
        test_mean={n: float(np.mean([r.test_scores[n] for r in runs])) for n in names},
        test_std={n: float(np.std([r.test_scores[n] for r in runs])) for n in names},
        runs=runs,
        valid_by_lr={repr(lr): score for lr, score in valid_by_lr.items()},
        layer_weights=np.mean(weights, axis=0).tolist() if weights else None,
        trained=trained,
    ))


def _with_uncertainty(task: TaskSpec, items: list[_TestItems], result: ProbeResult) -> ProbeResult:
    """``result`` with its bootstrap interval over test items and (multiclass) confusion matrix."""
    count = items[0].count
    resamples = 200 if task.kind == "multilabel" else metrics.BOOTSTRAP_RESAMPLES
    interval = metrics.bootstrap_ci(lambda index: _mean_score(items, index), count,
                                    resamples=resamples)
    note = "" if interval is not None else (
        "fewer than 2 test items" if count < 2 else "metric undefined on most bootstrap resamples")
    confusion = None
    if task.kind == "multiclass":
        matrix = np.zeros((task.num_outputs, task.num_outputs), dtype=np.int64)
        for item in items:
            np.add.at(matrix, (item.truth, item.predicted), 1)
        confusion = matrix.tolist()
    return replace(result, test_ci=None if interval is None else list(interval), ci_note=note, n_test=count,
                   ci_resamples=resamples, confusion=confusion, _items=items)


def pool_results(results: list[ProbeResult]) -> ProbeResult:
    """One result from independent repeats of a setting on different features (e.g. several
    random initialisations of a network): the test mean over repeats, the std over repeats'
    means, every seed run kept, the interval re-estimated from all repeats' test predictions,
    confusion counts summed; a sweep is pooled layer by layer, its best layer the most frequent."""
    first = results[0]
    if len(results) == 1:
        return first
    names = first.test_mean.keys()
    items = [item for result in results for item in (result._items or [])]
    weights = [result.layer_weights for result in results if result.layer_weights is not None]
    layers = [result.best_layer for result in results if result.best_layer is not None]
    confusions = [np.array(result.confusion) for result in results if result.confusion is not None]
    pooled = replace(
        first,
        valid_mean=float(np.mean([result.valid_mean for result in results])),
        test_mean={n: float(np.mean([result.test_mean[n] for result in results])) for n in names},
        test_std={n: float(np.std([result.test_mean[n] for result in results])) for n in names},
        runs=[run for result in results for run in result.runs],
        layer_weights=np.mean(weights, axis=0).tolist() if weights else None,
        best_layer=max(set(layers), key=layers.count) if layers else None,
        per_layer=[pool_results([result.per_layer[k] for result in results]) for k in range(len(first.per_layer))],
        confusion=np.sum(confusions, axis=0).tolist() if confusions else None,
    )
    if not items:
        return pooled
    interval = metrics.bootstrap_ci(lambda index: _mean_score(items, index),
                                    items[0].count, resamples=first.ci_resamples or metrics.BOOTSTRAP_RESAMPLES)
    return replace(pooled, test_ci=None if interval is None else list(interval), _items=items,
                   ci_note="" if interval is not None else first.ci_note or "metric undefined on most bootstrap resamples")


@dataclass(frozen=True)
class PairedDifference:
    """How far one result is ahead of another on the same test clips (×1, the task's primary
    metric): the difference of their test scores (each averaged over its seeds) and its 95 %
    paired bootstrap interval: every resample scores both on the same clips, so what the two
    get right or wrong together cancels, and the interval is the one a claim "A beats B" needs.
    """

    difference: float
    interval: tuple[float, float] | None
    n_test: int

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return "no interval"
        low, high = self.interval
        return "ahead" if low > 0 else "behind" if high < 0 else "within noise"


def paired_difference(a: ProbeResult, b: ProbeResult) -> PairedDifference:
    """``a`` minus ``b`` (see :class:`PairedDifference`); both must hold their test predictions
    (results of this process, not read back from JSON) on the same test clips."""
    if not a._items or not b._items:
        raise ProbeError("a paired difference needs both results' test predictions (results of this run)")
    if a._items[0].ids != b._items[0].ids:
        raise ProbeError(f"task {a.task!r}: the two results were tested on different clips; no paired difference")
    count = a._items[0].count

    def gap(index: np.ndarray) -> float:
        return _mean_score(a._items, index) - _mean_score(b._items, index)

    interval = metrics.bootstrap_ci(gap, count, resamples=a.ci_resamples or metrics.BOOTSTRAP_RESAMPLES)
    return PairedDifference(gap(np.arange(count)), interval, count)


def _mean_score(items: Sequence["_TestItems"], index: np.ndarray) -> float:
    """The test score on the clips ``index`` (resampled or all), averaged over the seeds' items."""
    return float(np.mean([item.score(index) for item in items]))


@dataclass
class _TestItems:
    """What a trained probe predicted on the test split, to score any subset of the items."""

    count: int
    score: Callable[[np.ndarray], float]
    truth: np.ndarray | None = None
    predicted: np.ndarray | None = None
    ids: tuple[str, ...] = ()  # the test clips, in order: pairs are compared only on the same ones


@torch.no_grad()
def _test_items(model: Probe, split: _Prepared, task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig,
                scaler: _TargetScaler) -> _TestItems:
    model.eval()
    outputs = model(split.x)
    truth = split.source.y
    count, ids = len(truth), tuple(split.source.ids)
    if task.kind == "multiclass":
        predicted = outputs.argmax(-1).numpy()
        correct = (predicted == truth).astype(np.float64)
        return _TestItems(count, lambda index: float(correct[index].mean()), truth, predicted, ids=ids)
    if task.kind == "frame":
        predicted = outputs.argmax(-1).numpy()
        return _TestItems(count, lambda index: metrics.frame_accuracy(truth[index], predicted[index]), ids=ids)
    if task.kind == "multilabel":
        scores = torch.sigmoid(outputs).numpy()
        return _TestItems(count, lambda index: metrics.roc_auc_macro(truth[index], scores[index], ignore_degenerate=True),
                          ids=ids)
    if task.kind == "regression":
        predicted = scaler.inverse(outputs.numpy())
        return _TestItems(count, lambda index: metrics.r2_mean(truth[index], predicted[index]), ids=ids)
    per_track = np.array(_beat_scores(torch.sigmoid(outputs.squeeze(-1)).numpy(), split.source, data, cfg))
    return _TestItems(count, lambda index: float(per_track[index].mean()), ids=ids)


def _train_seed(
    task: TaskSpec,
    data: FeatureSplits,
    splits: dict[str, _Prepared],
    cfg: ProbeConfig,
    lr: float,
    seed: int,
    scaler: _TargetScaler,
    progress: Any = None,
) -> tuple[SeedRun, _TestItems]:
    with _deterministic():
        torch.manual_seed(seed)
        model = _build_model(task, data, cfg)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best_score, best_state, best_epoch, epoch = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
        for epoch in range(1, cfg.max_epochs + 1):
            _train_epoch(model, optimiser, splits["train"], task, cfg, generator)
            score = _evaluate(model, splits["valid"], task, data, cfg, scaler)[task.metric]
            if score > best_score:
                best_score, best_state, best_epoch = score, copy.deepcopy(model.state_dict()), epoch
            elif epoch - best_epoch >= cfg.patience:
                break
        model.load_state_dict(best_state)
        test_scores = _evaluate(model, splits["test"], task, data, cfg, scaler)
        items = _test_items(model, splits["test"], task, data, cfg, scaler)
    weights = model.aggregator.layer_weights() if model.aggregator is not None else None
    trained = TrainedProbe(
        best_state,
        None if scaler.mean is None else scaler.mean.tolist(),
        None if scaler.std is None else scaler.std.tolist(),
    )
    if progress is not None:
        progress.update(1, task=task.name, layer=cfg.layer)
    return SeedRun(seed, lr, float(best_score), test_scores, epoch, weights, trained), items


def _build_model(task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig) -> Probe:
    aggregator = None if isinstance(cfg.layer, int) else LayerAggregator(cfg.layer, data.num_layers)
    return Probe(data.width, task.num_outputs, cfg, aggregator)


def _train_epoch(
    model: Probe, optimiser: torch.optim.Optimizer, train: _Prepared, task: TaskSpec, cfg: ProbeConfig, generator: torch.Generator
) -> None:
    model.train()
    count = train.x.shape[0]
    order = torch.randperm(count, generator=generator)
    step = count if cfg.batch_size is None else cfg.batch_size
    for begin in range(0, count, step):
        index = order[begin : begin + step]
        optimiser.zero_grad()
        loss = _loss(model(train.x[index]), train.y[index], task)
        loss.backward()
        optimiser.step()


def _loss(outputs: torch.Tensor, targets: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    if task.kind == "multiclass":
        return nn.functional.cross_entropy(outputs, targets)
    if task.kind == "frame":
        return nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=metrics.IGNORE_INDEX
        )
    if task.kind == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits(outputs, targets)
    if task.kind == "regression":
        return nn.functional.mse_loss(outputs, targets)
    keep = targets != metrics.IGNORE_INDEX
    return nn.functional.binary_cross_entropy_with_logits(outputs.squeeze(-1)[keep], targets[keep])


@torch.no_grad()
def _evaluate(
    model: Probe, split: _Prepared, task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig, scaler: _TargetScaler
) -> dict[str, float]:
    model.eval()
    outputs = model(split.x)
    truth = split.source.y
    if task.kind == "multiclass":
        return {"accuracy": metrics.accuracy(truth, outputs.argmax(-1).numpy())}
    if task.kind == "frame":
        return {"frame_accuracy": metrics.frame_accuracy(truth, outputs.argmax(-1).numpy())}
    if task.kind == "multilabel":
        scores = torch.sigmoid(outputs).numpy()
        return {
            "roc_auc": metrics.roc_auc_macro(truth, scores, ignore_degenerate=True),
            "average_precision": metrics.average_precision_macro(truth, scores, ignore_degenerate=True),
        }
    if task.kind == "regression":
        predicted = scaler.inverse(outputs.numpy())
        per_target = metrics.r2_per_target(truth, predicted)
        names = task.labels or tuple(str(i) for i in range(task.num_outputs))
        return {"r2": float(per_target.mean()), **{f"r2_{n}": float(v) for n, v in zip(names, per_target)}}
    return {"beat_f": _beat_score(torch.sigmoid(outputs.squeeze(-1)).numpy(), split.source, data, cfg)}


def _beat_score(probabilities: np.ndarray, split: SplitData, data: FeatureSplits, cfg: ProbeConfig) -> float:
    return float(np.mean(_beat_scores(probabilities, split, data, cfg)))


def _beat_scores(probabilities: np.ndarray, split: SplitData, data: FeatureSplits, cfg: ProbeConfig) -> list[float]:
    """Beat F-measure of each track (their mean is the split's score, mir_eval's convention)."""
    if data.frame_rate is None:
        raise ProbeError("beat tasks need FeatureSplits.frame_rate")
    references, estimates = [], []
    for row in range(probabilities.shape[0]):
        valid = split.y[row] != metrics.IGNORE_INDEX
        estimates.append(pick_peaks(probabilities[row][valid], cfg.beat_threshold) / data.frame_rate)
        if split.beat_times is not None:
            references.append(split.beat_times[row])
        else:
            references.append(np.flatnonzero(split.y[row][valid] == 1) / data.frame_rate)
    if not references:
        raise metrics.MetricError("beat_f_measure: no tracks to score")
    return [metrics.beat_f_measure(r, e, cfg.beat_tolerance, cfg.beat_trim) for r, e in zip(references, estimates)]


def peak_picking_result(task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig,
                        thresholds: Sequence[float] = PEAK_THRESHOLDS) -> ProbeResult:
    """A beat score with no probe: the beat decoder run straight on feature column 0 of the one
    layer (e.g. an onset-strength envelope) scaled to [0, 1] within each clip, at the threshold
    with the best validation F-measure (ties: the lowest), scored on test like a probe's output."""
    if task.kind != "beat":
        raise ProbeError(f"peak picking scores beat tasks; task {task.name!r} is {task.kind}")
    if not thresholds:
        raise ProbeError("peak picking needs at least one threshold")
    _check_inputs(task, data, replace(cfg, layer=0))
    activation = {name: _unit_range(data.split(name)) for name in ("valid", "test")}
    valid = {t: _beat_score(activation["valid"], data.valid, data, replace(cfg, beat_threshold=t)) for t in thresholds}
    best = max(thresholds, key=lambda t: valid[t])
    per_track = np.array(_beat_scores(activation["test"], data.test, data, replace(cfg, beat_threshold=best)))
    test = {task.metric: float(per_track.mean())}
    result = ProbeResult(
        task=task.name, metric=task.metric, probe=f"peak picking (threshold {best:g}, chosen on valid)", layer=0,
        best_lr=math.nan, valid_mean=valid[best], test_mean=test, test_std={task.metric: 0.0},
        runs=[SeedRun(seed=0, lr=math.nan, valid_score=valid[best], test_scores=test, epochs=0)],
        valid_by_lr={},
    )
    items = _TestItems(len(per_track), lambda index: float(per_track[index].mean()), ids=tuple(data.test.ids))
    return _with_uncertainty(task, [items], result)


def _unit_range(split: SplitData) -> np.ndarray:
    """Feature column 0 of layer 0, min-max scaled over each clip's frames (padding excluded)."""
    activation = split.x[:, 0, :, 0].astype(np.float64)
    for row, values in enumerate(activation):
        valid = split.y[row] != metrics.IGNORE_INDEX
        low, high = values[valid].min(), values[valid].max()
        values[:] = (values - low) / (high - low) if high > low else 0.0
    return activation


def pick_peaks(activation: np.ndarray, threshold: float) -> np.ndarray:
    """Frame indices that are local maxima (>= both neighbours, first of a plateau) above threshold."""
    padded = np.r_[-np.inf, activation, -np.inf]
    centre = padded[1:-1]
    is_peak = (centre > padded[:-2]) & (centre >= padded[2:]) & (centre >= threshold)
    return np.flatnonzero(is_peak).astype(np.float64)


# ----------------------------------------------------------------------------- data


@dataclass
class _TargetScaler:
    """Standardises regression targets with training-split statistics; identity otherwise."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, task: TaskSpec, train_y: np.ndarray) -> _TargetScaler:
        if task.kind != "regression":
            return cls()
        y = np.asarray(train_y, dtype=np.float64).reshape(len(train_y), -1)
        std = y.std(axis=0)
        if np.any(std == 0):
            raise ProbeError(f"task {task.name!r}: a regression target is constant on the training split")
        return cls(y.mean(axis=0), std)

    def transform(self, y: np.ndarray) -> np.ndarray:
        return y if self.mean is None else (y.reshape(len(y), -1) - self.mean) / self.std

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return y if self.mean is None else y * self.std + self.mean


def _prepare(split: SplitData, task: TaskSpec, cfg: ProbeConfig, scaler: _TargetScaler) -> _Prepared:
    x = split.x[:, cfg.layer] if isinstance(cfg.layer, int) else split.x
    x_tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if task.kind in ("multiclass", "frame"):
        y_tensor = torch.from_numpy(np.asarray(split.y, dtype=np.int64))
    else:
        y_tensor = torch.from_numpy(np.asarray(scaler.transform(split.y), dtype=np.float32))
    return _Prepared(x_tensor, y_tensor, split)


def _check_inputs(task: TaskSpec, data: FeatureSplits, cfg: ProbeConfig) -> None:
    frame_level = task.kind in ("frame", "beat")
    expected = 4 if frame_level else 3
    for name in ("train", "valid", "test"):
        split = data.split(name)
        if split.x.ndim != expected:
            shape = "[N, L, T, D]" if frame_level else "[N, L, D]"
            raise ProbeError(f"{task.kind} task {task.name!r}: {name} features must be {shape}, got {split.x.shape}")
        if split.x.shape[1:2] != data.train.x.shape[1:2] or split.x.shape[-1] != data.width:
            raise ProbeError(f"{name} features {split.x.shape} do not match train {data.train.x.shape}")
        _check_finite(split, name, data.meta.get("source"))
    if isinstance(cfg.layer, int) and not 0 <= cfg.layer < data.num_layers:
        raise ProbeError(f"layer {cfg.layer} is out of range for {data.num_layers} hidden states")
    if cfg.context and not frame_level:
        raise ProbeError(f"{task.kind} task {task.name!r}: context frames apply to frame-level tasks only")
    if task.kind == "multiclass":
        _check_class_ids(data, task)


def _check_finite(split: SplitData, name: str, source: object) -> None:
    """A NaN or Inf feature would train a probe that still reports a score: refuse it, naming
    the examples (the manifest paths whose feature files hold them)."""
    rows = ~np.isfinite(split.x.reshape(len(split.x), -1)).all(axis=1)
    if rows.any():
        bad = [split.ids[i] for i in np.flatnonzero(rows)]
        where = f" in {source}" if source else ""
        more = f" ... ({len(bad)} in all)" if len(bad) > 5 else ""
        raise ProbeError(f"non-finite (NaN or Inf) features{where} for {name} example(s): {', '.join(bad[:5])}{more}")


def _check_class_ids(data: FeatureSplits, task: TaskSpec) -> None:
    for name in ("train", "valid", "test"):
        y = data.split(name).y
        if y.ndim != 1 or y.min() < 0 or y.max() >= task.num_outputs:
            raise ProbeError(f"{name} targets must be class ids in [0, {task.num_outputs}), got shape {y.shape}")


@contextmanager
def _deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
