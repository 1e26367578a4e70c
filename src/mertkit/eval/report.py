"""Probe results as JSON, a Markdown table (task x model/layer) and plots (per-layer score,
confusion matrix, learned layer weights).

Scores read ``mean ± std [low, high]``: mean and std over seeds (``(n=1)`` for one seed: there
is no spread to show), then the 95 % bootstrap interval over test clips. JSON is strict: a value
that is not a number is written as null and its reason listed under ``null_reasons``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.eval.probes import ProbeResult, paired_difference

PLOT_FLOOR = -100.0  # lowest score ×100 drawn (R² can be far below 0)


def format_score(result: ProbeResult) -> str:
    """``61.2 ± 1.3 [57.0, 65.1]`` (×100): mean ± std over seeds, then the bootstrap interval."""
    mean = 100 * result.score
    seeds = len(result.runs)
    text = f"{mean:.1f} ± {100 * result.test_std[result.metric]:.1f}" if seeds > 1 else f"{mean:.1f} (n=1)"
    if result.test_ci is not None:
        text += f" [{100 * result.test_ci[0]:.1f}, {100 * result.test_ci[1]:.1f}]"
    return text


def json_text(payload: Any, reasons: dict[str, str] | None = None) -> str:
    """Strict JSON: NaN and infinities become null, each listed under ``null_reasons`` (by
    path) with the reason given in ``reasons`` (by path or by the last key) or a generic one."""
    reasons = reasons or {}
    found: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {key: clean(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{path}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
            last = path.rsplit(".", 1)[-1]
            found[path] = reasons.get(path) or reasons.get(last) or f"not a finite number ({float(value)})"
            return None
        if isinstance(value, np.generic):
            return value.item()
        return value

    cleaned = clean(payload, "")
    if found and isinstance(cleaned, dict):
        cleaned["null_reasons"] = found
    return json.dumps(cleaned, indent=2, sort_keys=True, allow_nan=False)


Baselines = dict[str, Sequence[ProbeResult]]  # {title: its results}, probed like the model on the same clips


def results_to_json(results: Sequence[ProbeResult], path: str | Path, model: str = "",
                    baselines: Baselines | None = None, paired: Sequence[dict[str, Any]] = ()) -> Path:
    """Write ``{"model": ..., "results": [ProbeResult.to_dict(), ...]}`` (strict JSON), with
    ``"baselines": {title: [...]}`` and ``"paired"`` (:func:`baseline_pairs`) when there are any."""
    path = Path(path)
    payload: dict[str, Any] = {"model": model, "results": [result.to_dict() for result in results]}
    if baselines:
        payload["baselines"] = {title: [result.to_dict() for result in rows] for title, rows in baselines.items()}
        payload["paired"] = list(paired)
    path.write_text(json_text(payload))
    return path


def markdown_table(results: Sequence[ProbeResult], model: str = "", baselines: Baselines | None = None) -> str:
    """One row per task and layer setting (sweeps add a row per layer), then one per baseline:
    mean ± std x 100."""
    header = "| task | model | probe | layer | metric | test ×100: mean ± std over seeds [95 % CI over test clips] | valid | best lr |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        lines.append(_row(result, model, _layer_label(result)))
        for layer_result in result.per_layer:
            lines.append(_row(layer_result, model, f"{layer_result.layer}"))
    for title, rows in (baselines or {}).items():
        lines.extend(_row(result, title, "stats") for result in rows)
    return "\n".join(lines) + "\n"


def paired_row(model: str, result: ProbeResult, against: str, other: ProbeResult) -> dict[str, Any]:
    """``result`` (a row of ``model``) minus ``other`` (the row titled ``against``) on the same
    test clips, with its paired bootstrap interval and verdict (:func:`paired_difference`)."""
    pair = paired_difference(result, other)
    return {"task": result.task, "model": model, "against": against, "metric": result.metric,
            "difference": pair.difference, "interval": None if pair.interval is None else list(pair.interval),
            "n_test": pair.n_test, "verdict": pair.verdict}


def paired_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown section of :func:`paired_row` rows (×100); empty without rows."""
    if not rows:
        return ""
    lines = ["", "## Paired on the same test clips: each model row minus each row it is paired with", "",
             "Difference of test scores ×100 (means over seeds), its 95 % paired bootstrap interval over the "
             "test clips (each resample scores both rows on the same clips); ahead / behind: "
             "the interval excludes 0.", "",
             "| task | model | against | difference | interval | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        interval = "-" if row["interval"] is None else f"[{100 * row['interval'][0]:+.1f}, {100 * row['interval'][1]:+.1f}]"
        lines.append(f"| {row['task']} | {row['model']} | {row['against']} | {100 * row['difference']:+.1f} | "
                     f"{interval} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def write_markdown(results: Sequence[ProbeResult], path: str | Path, model: str = "",
                   baselines: Baselines | None = None, paired: Sequence[dict[str, Any]] = ()) -> Path:
    path = Path(path)
    path.write_text(markdown_table(results, model, baselines) + paired_table(paired))
    return path


def baseline_pairs(results: Sequence[ProbeResult], model: str = "", baselines: Baselines | None = None
                   ) -> list[dict[str, Any]]:
    """Each model row (per layer setting) against each baseline row of its task, paired."""
    return [paired_row(f"{model or 'model'}, layer {_layer_label(result)}", result, title, other)
            for result in results for title, rows in (baselines or {}).items() for other in rows
            if other.task == result.task]


def plot_layers(results: Sequence[ProbeResult], path: str | Path, model: str = "",
                baselines: dict[str, dict[str, float]] | None = None) -> Path:
    """PNG: one panel per task, the score per layer (95 % CI band), the chosen layer starred,
    other layer settings and ``baselines`` ({title: {task: score}}) as horizontal lines."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(result.task for result in results))
    single = len(tasks) == 1
    figure, axes = panel_grid(plt, len(tasks), width=6.5 if single else 4.6, height=4.2 if single else 3.4)
    for axis, task in zip(axes, tasks):
        chosen = [result for result in results if result.task == task]
        for result in chosen:
            if result.per_layer:
                draw_layer_curve(axis, result, model or "model", "C0")
            else:
                draw_hline(axis, 100 * result.score, f"{model or 'model'}: {_layer_label(result)}", color="C0", linestyle="-.")
        for index, (title, scores) in enumerate((baselines or {}).items()):
            if task in scores:
                draw_hline(axis, 100 * scores[task], title, color=BASELINE_COLOURS[index % len(BASELINE_COLOURS)],
                           linestyle=BASELINE_STYLES[index % len(BASELINE_STYLES)])
        axis.set_title(f"{task} ({chosen[0].metric})", fontsize="medium")
    finish_grid(plt, figure, axes, len(tasks), f"probe test score per layer{f': {model}' if model else ''}", path)
    return Path(path)


BASELINE_COLOURS = ("dimgray", "saddlebrown", "darkgreen", "purple", "darkorange")
BASELINE_STYLES = ("--", ":", (0, (5, 2, 1, 2)), (0, (1, 1)), (0, (6, 2)))


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'mertkit[eval]'") from error
    return plt


def panel_grid(plt: Any, count: int, width: float = 4.6, height: float = 3.4) -> tuple[Any, list[Any]]:
    """A grid of ``count`` panels, at most 3 per row, each big enough to read."""
    columns = min(3, count)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.5), squeeze=False)
    return figure, list(axes.ravel())


def finish_grid(plt: Any, figure: Any, axes: list[Any], used: int, title: str, path: str | Path) -> None:
    """Hide unused panels, one legend for the whole figure below the panels (never over data)."""
    from matplotlib.ticker import MaxNLocator

    for axis in axes[used:]:
        axis.set_visible(False)
    handles: dict[str, Any] = {}
    for axis in axes[:used]:
        off_scale = getattr(axis, "_mertkit_off_scale", [])
        if off_scale:  # one box per panel, so the values never overlap
            axis.text(0.98, 0.97, f"below {PLOT_FLOOR:.0f} (drawn at {PLOT_FLOOR:.0f}):\n" + "\n".join(off_scale),
                      transform=axis.transAxes, ha="right", va="top", fontsize="x-small",
                      bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "lightgrey"})
        low, high = axis.get_ylim()
        if high - low < 10:  # flat data: show a readable span, not ±0.04 ticks
            centre = (low + high) / 2
            axis.set_ylim(centre - 5, centre + 5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.set_xlabel("hidden state (0 = input of the first layer)")
        axis.set_ylabel("test score ×100")
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    panel_columns = sum(axis.get_visible() for axis in axes[: min(3, len(axes))])
    columns = max(1, min(len(handles), 2 * panel_columns))
    rows = -(-len(handles) // columns)
    legend_height = 0.25 + 0.22 * rows if handles else 0.0  # inches added below the panels for the legend
    height = figure.get_figheight() + legend_height
    figure.set_figheight(height)
    figure.suptitle(title, fontsize="large")
    figure.tight_layout(rect=(0, legend_height / height, 1, 1 - 0.45 / height))
    if handles:
        figure.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=columns, fontsize="small",
                      frameon=False)
    figure.savefig(Path(path), dpi=110)
    plt.close(figure)


def draw_layer_curve(axis: Any, result: ProbeResult, label: str, colour: str) -> None:
    """Score per layer with its 95 % CI band; the chosen (best-validation) layer starred."""
    layers = [int(r.layer) for r in result.per_layer]
    means = np.maximum([100 * r.score for r in result.per_layer], PLOT_FLOOR)
    axis.plot(layers, means, marker="o", markersize=3.5, color=colour, label=f"{label}, per layer")
    bands = [r.test_ci for r in result.per_layer]
    if all(band is not None for band in bands):
        low = np.maximum([100 * band[0] for band in bands], PLOT_FLOOR)
        high = np.maximum([100 * band[1] for band in bands], PLOT_FLOOR)
        axis.fill_between(layers, low, high, color=colour, alpha=0.15, label="95 % CI over test clips")
    if result.best_layer is not None:
        axis.plot([result.best_layer], [means[layers.index(result.best_layer)]], marker="*", markersize=15, color=colour,
                  markeredgecolor="black", linestyle="none", label="chosen layer (best on valid)")


def draw_hline(axis: Any, value: float, label: str, **style: Any) -> None:
    # A very negative R² would squash every other line: draw it at the edge, its value written
    # in the panel (the label stays the same, so the shared legend lists it once).
    if value < PLOT_FLOOR:
        off_scale = getattr(axis, "_mertkit_off_scale", [])
        axis._mertkit_off_scale = off_scale + [f"{label}: {value:.0f}"]
        value = PLOT_FLOOR
    axis.axhline(value, label=label, linewidth=1.4, **style)


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str) -> Path:
    """PNG of a confusion matrix, each row normalised to the fraction of its true class."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = min(max(5.0, 0.22 * len(labels) + 2.5), 16.0)
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    font = "small" if len(labels) <= 24 else 6
    axis.set_xticks(ticks, labels, rotation=90, fontsize=font)
    axis.set_yticks(ticks, labels, fontsize=font)
    if len(labels) <= 24:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axis.text(column, row, f"{int(value)}", ha="center", va="center", fontsize=7,
                          color="white" if share[row, column] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    figure.savefig(Path(path), dpi=110)
    plt.close(figure)
    return Path(path)


def plot_layer_weights(weights: dict[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """PNG: the weighted probe's learned softmax weight of each layer, one bar group per task."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(8, 3.8))
    count = len(weights)
    width = 0.8 / max(count, 1)
    for index, (name, values) in enumerate(weights.items()):
        layers = np.arange(len(values))
        axis.bar(layers + (index - (count - 1) / 2) * width, values, width=width, label=name)
    axis.axhline(1.0 / len(next(iter(weights.values()))), color="grey", linestyle="--", linewidth=1, label="equal weights")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("hidden state")
    axis.set_ylabel("softmax weight")
    axis.set_title(title, fontsize="medium")
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.tight_layout()
    figure.savefig(Path(path), dpi=110)
    plt.close(figure)
    return Path(path)


def write_report(results: Sequence[ProbeResult], out_dir: str | Path, model: str = "",
                 labels: dict[str, Sequence[str]] | None = None, baselines: Baselines | None = None) -> dict[str, Path]:
    """``results.json``, ``results.md``, ``layers.png`` and, for multiclass results whose class
    names are in ``labels``, ``confusion-<task>.png`` / ``.json`` in ``out_dir``. ``baselines``
    add rows to the JSON and the table and horizontal lines to the plot."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = {title: {result.task: result.score for result in rows} for title, rows in (baselines or {}).items()}
    paired = baseline_pairs(results, model, baselines)
    paths = {
        "json": results_to_json(results, out_dir / "results.json", model, baselines, paired),
        "markdown": write_markdown(results, out_dir / "results.md", model, baselines, paired),
        "plot": plot_layers(results, out_dir / "layers.png", model, lines),
    }
    for result in results:
        names = (labels or {}).get(result.task)
        if result.confusion is not None and names:
            stem = f"confusion-{result.task}-{result.layer}"
            paths[stem] = plot_confusion(result.confusion, names, out_dir / f"{stem}.png",
                                         f"{result.task}, {_layer_label(result)}: test confusion (all seeds)")
            (out_dir / f"{stem}.json").write_text(json_text({"task": result.task, "setting": _layer_label(result),
                                                             "labels": list(names), "counts": result.confusion,
                                                             "rows": "true class", "columns": "predicted class"}))
    return paths


def _row(result: ProbeResult, model: str, layer: str) -> str:
    cells: list[Any] = [result.task, model or "-", result.probe, layer, result.metric, format_score(result),
                        f"{100 * result.valid_mean:.1f}", f"{result.best_lr:g}" if math.isfinite(result.best_lr) else "-"]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _layer_label(result: ProbeResult) -> str:
    if result.best_layer is not None:
        return f"all (best {result.best_layer})"
    if result.layer_weights is not None:
        top = max(range(len(result.layer_weights)), key=lambda k: result.layer_weights[k])
        return f"{result.layer} (top {top})"
    return str(result.layer)
