"""Metrics for MARBLE-style probing, in plain numpy.

Accuracy, macro ROC-AUC and macro average precision (multilabel tagging), R^2 per target,
frame accuracy and beat F-measure. ROC-AUC and AP are computed here rather than through
scikit-learn so that the core needs only numpy; the tests check them against scikit-learn.

Conventions (all scores: higher is better):

* ``roc_auc_macro`` / ``average_precision_macro``: unweighted mean over classes. A class whose
  column holds only one value has no defined ROC-AUC; by default that raises
  :class:`MetricError`. ``ignore_degenerate=True`` drops such classes from the mean instead
  (small validation splits often lack rare tags) and raises only if no class is left.
* ``beat_f_measure``: mir_eval's F-measure with an explicit tolerance window. MARBLE's code
  uses 0.07 s (the paper text says 20 ms), so 0.07 s is the default. mir_eval's *evaluate*
  helper drops beats before 5 s; MARBLE does not, so ``trim=False`` is the default and
  ``trim=True`` reproduces mir_eval's convention.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MARBLE_BEAT_TOLERANCE_S = 0.07
IGNORE_INDEX = -1


class MetricError(ValueError):
    """Inputs a metric cannot score (shape mismatch, empty input, undefined value)."""


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of positions where the integer labels agree."""
    y_true, y_pred = _same_shape(y_true, y_pred, "accuracy")
    return float(np.mean(y_true == y_pred))


def frame_accuracy(y_true: np.ndarray, y_pred: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Accuracy over frames, skipping frames whose label is ``ignore_index`` (padding)."""
    y_true, y_pred = _same_shape(y_true, y_pred, "frame_accuracy")
    keep = y_true != ignore_index
    if not keep.any():
        raise MetricError("frame_accuracy: every frame is padding; nothing to score")
    return float(np.mean(y_true[keep] == y_pred[keep]))


def r2_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination 1 - SS_res / SS_tot for each column of [N, K] targets."""
    y_true, y_pred = _as_2d_pair(y_true, y_pred, "r2")
    ss_res = np.sum((y_true - y_pred) ** 2, axis=0)
    ss_tot = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    if np.any(ss_tot == 0):
        raise MetricError("r2: a target is constant over the split, so R^2 is undefined")
    return 1.0 - ss_res / ss_tot


def r2_mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of :func:`r2_per_target` (scikit-learn's 'uniform_average')."""
    return float(np.mean(r2_per_target(y_true, y_pred)))


def roc_auc_binary(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of one binary column via the rank-sum (Mann-Whitney U) identity, ties averaged."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError("roc_auc: a class needs both positive and negative examples")
    ranks = _average_ranks(scores)
    u_statistic = ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def average_precision_binary(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision sum_k (R_k - R_{k-1}) P_k over distinct score thresholds.

    This is the step-wise (non-interpolated) definition that scikit-learn uses.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    if n_pos == 0 or n_pos == y_true.size:
        raise MetricError("average_precision: a class needs both positive and negative examples")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_true = scores[order], y_true[order]
    # One operating point per distinct threshold: the last index of each run of equal scores.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_true)[last_of_run]
    predicted_pos = last_of_run + 1
    precision = true_pos / predicted_pos
    recall = true_pos / n_pos
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def roc_auc_macro(y_true: np.ndarray, scores: np.ndarray, ignore_degenerate: bool = False) -> float:
    """Macro (unweighted class mean) ROC-AUC for multilabel [N, C] targets."""
    return _macro(roc_auc_binary, y_true, scores, ignore_degenerate, "roc_auc")


def average_precision_macro(
    y_true: np.ndarray, scores: np.ndarray, ignore_degenerate: bool = False
) -> float:
    """Macro (unweighted class mean) average precision for multilabel [N, C] targets."""
    return _macro(average_precision_binary, y_true, scores, ignore_degenerate, "average_precision")


def beat_f_measure(
    reference_beats: np.ndarray,
    estimated_beats: np.ndarray,
    tolerance: float = MARBLE_BEAT_TOLERANCE_S,
    trim: bool = False,
) -> float:
    """F-measure of estimated against reference beat times (seconds) via mir_eval.

    ``tolerance`` is the half-width of the matching window in seconds. ``trim=True`` first
    drops beats before 5 s, as mir_eval's ``evaluate`` does; MARBLE does not trim.
    """
    beat = _mir_eval_beat()
    reference = np.sort(np.asarray(reference_beats, dtype=np.float64).ravel())
    estimated = np.sort(np.asarray(estimated_beats, dtype=np.float64).ravel())
    if trim:
        reference, estimated = beat.trim_beats(reference), beat.trim_beats(estimated)
    if reference.size == 0 and estimated.size == 0:
        # Nothing to find and nothing found: mir_eval would warn and return 0; count it as perfect.
        return 1.0
    if reference.size == 0 or estimated.size == 0:
        return 0.0  # no possible match; mir_eval returns the same 0 but warns on every call
    return float(beat.f_measure(reference, estimated, f_measure_threshold=tolerance))


def mean_beat_f_measure(
    references: Sequence[np.ndarray],
    estimates: Sequence[np.ndarray],
    tolerance: float = MARBLE_BEAT_TOLERANCE_S,
    trim: bool = False,
) -> float:
    """Mean over tracks of :func:`beat_f_measure` (mir_eval's per-track convention)."""
    if len(references) != len(estimates):
        raise MetricError(
            f"beat_f_measure: {len(references)} reference tracks but {len(estimates)} estimates"
        )
    if not references:
        raise MetricError("beat_f_measure: no tracks to score")
    scores = [beat_f_measure(r, e, tolerance, trim) for r, e in zip(references, estimates)]
    return float(np.mean(scores))


def _mir_eval_beat():  # type: ignore[no-untyped-def]
    try:
        import mir_eval.beat
    except ImportError as error:
        raise ImportError("beat F-measure needs mir_eval: pip install 'mertkit[eval]'") from error
    return mir_eval.beat


def _macro(binary_metric, y_true, scores, ignore_degenerate: bool, name: str) -> float:  # type: ignore[no-untyped-def]
    y_true, scores = _as_2d_pair(y_true, scores, name)
    per_class = []
    for column in range(y_true.shape[1]):
        positives = y_true[:, column].sum()
        if positives in (0, y_true.shape[0]):
            if ignore_degenerate:
                continue
            raise MetricError(
                f"{name}: class {column} has only one label value in this split; "
                "pass ignore_degenerate=True to leave such classes out of the mean"
            )
        per_class.append(binary_metric(y_true[:, column], scores[:, column]))
    if not per_class:
        raise MetricError(f"{name}: no class has both positive and negative examples")
    return float(np.mean(per_class))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    run_starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    run_ends = np.r_[run_starts[1:], values.size]
    mean_rank_per_run = (run_starts + run_ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank_per_run, run_ends - run_starts)
    return ranks


def _same_shape(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise MetricError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        raise MetricError(f"{name}: empty input")
    return a, b


def _as_2d_pair(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _same_shape(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), name)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.ndim != 2:
        raise MetricError(f"{name}: expected [N] or [N, K] arrays, got shape {a.shape}")
    return a, b


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95


def bootstrap_ci(
    score: Callable[[np.ndarray], float], n_items: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL, seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``score(indices)`` over ``n_items`` test items.

    Each resample draws ``n_items`` indices with replacement (a seeded generator, so the
    interval is reproducible) and calls ``score``; the interval is the (1 - level) / 2 and
    (1 + level) / 2 quantiles. Resamples where the metric is undefined (e.g. R² on a resample
    whose targets are all equal) are skipped; None when fewer than half are defined or there
    are fewer than 2 items (no interval can be given).
    """
    if n_items < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        try:
            values.append(score(rng.integers(0, n_items, n_items)))
        except MetricError:
            continue
    values = [v for v in values if np.isfinite(v)]
    if len(values) < resamples / 2:
        return None
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
