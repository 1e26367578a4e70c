"""The report of ``mert eval --suite synth``, written into the run folder.

* ``results.json``: the run's context (models, suite, probe settings, seeds) and every result
  (strict JSON: nulls with ``null_reasons``).
* ``results.md``: a task x row summary (each model's best layer and other settings, its
  random-init row, the baselines where they apply (MFCC, chroma, log-mel on clip tasks; onset
  strength, probed and peak-picked, on beat), the no-audio floor): mean ± std over seeds (``n=1`` for one
  seed), the 95 % bootstrap interval over test clips in brackets, the chosen layer; then each
  model's best layer against its random init, each baseline and each model listed after it,
  paired on the same test clips
  (the difference, its 95 % paired bootstrap interval and a verdict: ahead, behind or within
  noise; also under ``paired`` in ``results.json``); then, for each clip classification task,
  each class's test recall in every row (where a gap between two rows comes from; also under
  ``per_class`` in ``results.json``); then the per-layer tables.
* ``layers.png``: per task, each model's score per layer with its interval band and its chosen
  layer starred; random init, the baselines and the floor as horizontal lines.
* ``heatmap.png``: task x layer, one panel per model (and its random init), colour scaled
  within each task, the chosen layer boxed.
* ``weights.png``: the weighted probe's learned layer weights per task (when it ran).
* ``confusion/<task>.png`` and ``.json``: the test confusion matrix of each clip task (the
  first model's chosen layer, counts over seeds).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mertkit.eval.probes import ProbeResult
from mertkit.eval.report import (
    BASELINE_COLOURS,
    BASELINE_STYLES,
    PLOT_FLOOR,
    _pyplot,
    draw_hline,
    draw_layer_curve,
    finish_grid,
    format_score,
    json_text,
    markdown_table,
    paired_row,
    paired_table,
    panel_grid,
    plot_confusion,
    plot_layer_weights,
)

from mertkit.eval.suite_runner import ROW_TITLES

FLOOR_REASONS = {"beat": "no audio-free predictor exists for beat tracking"}
# Keys that are NaN only in rows with no trained probe (the onset envelope's peak picking).
NO_PROBE_REASONS = {"best_lr": "no probe trained (peak picking)", "lr": "no probe trained (peak picking)"}


def write_suite_report(entries: Sequence[Any], floors: dict[str, float], context: dict[str, Any],
                       out_dir: Path) -> tuple[dict[str, Path], str, str]:
    """Write the report files (see the module docstring) into ``out_dir``; (paths, summary
    table, paired section)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reasons = {**NO_PROBE_REASONS, **{f"floors.{task}": reason for task, reason in FLOOR_REASONS.items()}}
    paired = paired_rows(entries)
    per_class = per_class_recall(entries, context.get("suite", {}).get("labels", {}))
    payload = {**context, "floors": floors, "results": [entry.to_dict() for entry in entries], "paired": paired,
               "per_class": per_class}
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json_text(payload, reasons))
    table = summary_table(entries, floors, context)
    details = [f"### {title}\n\n" + markdown_table([e.result for e in entries if _title(e) == title], title)
               for title in dict.fromkeys(_title(e) for e in entries)]
    paired_text = paired_table(paired)
    paths["markdown"].write_text(table + paired_text + per_class_table(per_class)
                                 + "\n## Detail (every layer)\n\n" + "\n".join(details))
    paths["plot"] = plot_suite(entries, floors, context, out_dir / "layers.png")
    heat = plot_heatmap(entries, out_dir / "heatmap.png")
    if heat is not None:
        paths["heatmap"] = heat
    weights = {e.task: e.result.layer_weights for e in entries
               if e.kind == "model" and e.setting == "weighted" and e.result.layer_weights and e.source == _first_model(entries)}
    if weights:
        paths["weights"] = plot_layer_weights(weights, out_dir / "weights.png",
                                              f"{_first_model(entries)}: learned layer weights of the weighted probe")
    paths.update(write_confusions(entries, context, out_dir / "confusion"))
    return paths, table, paired_text


def _first_model(entries: Sequence[Any]) -> str:
    return next((e.source for e in entries if e.kind == "model"), "")


def _title(entry: Any) -> str:
    return ROW_TITLES.get(entry.source, entry.source) if entry.kind == "baseline" else entry.source


def summary_table(entries: Sequence[Any], floors: dict[str, float], context: dict[str, Any]) -> str:
    """Markdown: the run's header lines, then one row per task, one column per row source/setting."""
    models = context.get("models") or [context["model"]]
    probe = context["probe"]
    columns = list(dict.fromkeys((e.source, e.kind, e.setting) for e in entries))
    seeds = list(probe["seeds"])
    seed_text = f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"one seed ({seeds[0]}): no spread, marked n=1"
    lines = [
        f"# mert eval --suite synth: {', '.join(m['name'] for m in models)}",
        "",
        *[f"- model: **{m['name']}**, {m['origin']} (fingerprint {m['fingerprint'][:12]})" for m in models],
        f"- suite: synth, seed {context['suite']['seed']}, "
        f"SoundFont {', '.join(context['suite'].get('soundfonts', ['not recorded']))}, splits (train/valid/test) "
        + ", ".join(f"{t} {s['train']}/{s['valid']}/{s['test']}" for t, s in context["suite"]["split_sizes"].items()),
        f"- probe: {probe['kind']}, lrs {list(probe['lrs'])}, seeds {seeds}, up to {probe['max_epochs']} epochs "
        f"(patience {probe['patience']}); random-init seeds {context.get('random_init_seeds', [])}",
        f"- cells: test score ×100, {seed_text}; [95 % bootstrap interval over test clips, 1000 resamples]; "
        "(Lk) = the layer chosen on validation",
        f"- wall time: {context['wall_seconds']:.0f} s",
        *[f"- note: {note}" for note in context["notes"]],
        "",
        "| task | metric | " + " | ".join(_column_title(c) for c in columns) + " | floor |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " | --- |",
    ]
    for task in dict.fromkeys(e.task for e in entries):
        by_column = {(e.source, e.kind, e.setting): e.result for e in entries if e.task == task}
        metric = next(e.result.metric for e in entries if e.task == task)
        cells = [_cell(by_column.get(column)) for column in columns]
        floor = floors.get(task, float("nan"))
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + f" | {'-' if np.isnan(floor) else f'{100 * floor:.1f}'} |")
    for task, metric in context.get("not_run", {}).items():
        lines.append(f"| {task} | {metric} | " + " | ".join("not run (see note)" for _ in columns) + " | - |")
    return "\n".join(lines) + "\n"


def paired_rows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """Each model's best-layer row against its own random init's best layer, every baseline row
    of the same task and the best layer of each model listed after it (two runs compared on the
    same clips), paired on the same test clips (:func:`mertkit.eval.report.paired_row`)."""
    rows = []
    models = [e for e in entries if e.kind == "model" and e.setting == "all"]
    for position, model in enumerate(models):
        for other in entries:
            if other.task != model.task or other.kind == "model":
                continue
            if other.kind == "random_init" and (other.source != f"{model.source} random init" or other.setting != "all"):
                continue
            rows.append(paired_row(model.source, model.result, _title(other), other.result))
        for other in models[position + 1:]:
            if other.task == model.task:
                rows.append(paired_row(model.source, model.result, _title(other), other.result))
    return rows


def per_class_recall(entries: Sequence[Any], labels: dict[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Per clip classification task: each class's test recall (correct / its test clips, counted
    over seeds) in each summary row that has a confusion matrix: every model's and random init's
    chosen layer and every baseline. A class without test clips has no recall (None)."""
    tasks = []
    for task, names in labels.items():
        rows = [e for e in entries if e.task == task and e.result.confusion is not None
                and (e.kind == "baseline" or e.setting == "all")]
        if not rows:
            continue
        counts = {_column_title((e.source, e.kind, e.setting)): np.asarray(e.result.confusion, dtype=float) for e in rows}
        first = next(iter(counts.values()))
        clips = first.sum(axis=1) / len(rows[0].result.runs)
        recall = {title: [None if total == 0 else float(hit / total) for hit, total in zip(np.diag(c), c.sum(axis=1))]
                  for title, c in counts.items()}
        tasks.append({"task": task, "labels": list(names), "test_clips": clips.tolist(), "recall": recall})
    return tasks


def per_class_table(per_class: list[dict[str, Any]]) -> str:
    """Markdown of :func:`per_class_recall` (recall ×100), one table per task."""
    if not per_class:
        return ""
    lines = ["", "## Per class: test recall ×100 (correct / the class's test clips, over seeds)", ""]
    for task in per_class:
        titles = list(task["recall"])
        lines += [f"### {task['task']}", "", "| class | test clips | " + " | ".join(titles) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in titles) + " |"]
        for row, name in enumerate(task["labels"]):
            cells = " | ".join("-" if task["recall"][title][row] is None else f"{100 * task['recall'][title][row]:.0f}"
                               for title in titles)
            lines.append(f"| {name} | {task['test_clips'][row]:.0f} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def _column_title(column: tuple[str, str, str]) -> str:
    source, kind, setting = column
    if kind == "baseline":
        return ROW_TITLES.get(source, source)
    if setting == "all":
        return f"{source}: best layer"
    return f"{source}: {setting}" if not setting.isdigit() else f"{source}: layer {setting}"


def _cell(result: ProbeResult | None) -> str:
    if result is None:
        return "n/a"
    text = format_score(result)
    if result.best_layer is not None:
        return f"{text} (L{result.best_layer})"
    if result.layer_weights is not None and len(result.layer_weights) > 1:
        return f"{text} (top L{int(np.argmax(result.layer_weights))})"
    return text


def plot_suite(entries: Sequence[Any], floors: dict[str, float], context: dict[str, Any], path: Path) -> Path:
    """One panel per task: each model's per-layer curve (CI band, chosen layer starred), its other
    settings, its random init, the baselines and the floor as horizontal lines."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(e.task for e in entries))
    models = list(dict.fromkeys(e.source for e in entries if e.kind == "model"))
    colour = {name: f"C{index}" for index, name in enumerate(models)}
    baseline_order = list(dict.fromkeys(e.source for e in entries if e.kind == "baseline"))
    figure, axes = panel_grid(plt, len(tasks))
    for axis, task in zip(axes, tasks):
        chosen = [e for e in entries if e.task == task]
        for entry in chosen:
            result = entry.result
            owner = entry.source.removesuffix(" random init")
            if entry.kind == "model" and result.per_layer:
                draw_layer_curve(axis, result, entry.source, colour[owner])
            elif entry.kind == "model":
                draw_hline(axis, 100 * result.score, f"{entry.source}: {entry.setting}", color=colour[owner], linestyle="-.")
            elif entry.kind == "random_init" and entry.setting == "all":
                draw_hline(axis, 100 * result.score, f"{entry.source} (best layer)", color=colour.get(owner, "black"),
                           linestyle=(0, (2, 2)), alpha=0.8)
        for entry in (e for e in chosen if e.kind == "baseline"):
            index = baseline_order.index(entry.source)  # one style per baseline across the panels
            draw_hline(axis, 100 * entry.result.score, ROW_TITLES.get(entry.source, entry.source),
                       color=BASELINE_COLOURS[index % len(BASELINE_COLOURS)], linestyle=BASELINE_STYLES[index % len(BASELINE_STYLES)])
        floor = floors.get(task, float("nan"))
        if not np.isnan(floor):
            draw_hline(axis, 100 * floor, "floor (no audio)", color="silver")
        axis.set_title(f"{task} ({chosen[0].result.metric})", fontsize="medium")
    random = [m["name"] for m in context.get("models", []) if m.get("random_weights")]
    title = "probe test score per layer" + (f" ({', '.join(random)}: RANDOM weights)" if random else "")
    finish_grid(plt, figure, axes, len(tasks), title, path)
    return path


def plot_heatmap(entries: Sequence[Any], path: Path) -> Path | None:
    """Task x layer, one panel per model sweep (models, then their random init); colours scaled
    within each task (metrics differ), the value printed in each cell, the chosen layer boxed."""
    sweeps = [e for e in entries if e.setting == "all" and e.result.per_layer and e.kind in ("model", "random_init")]
    panels = list(dict.fromkeys(e.source for e in sweeps))
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    tasks = list(dict.fromkeys(e.task for e in sweeps))
    layers = max(len(e.result.per_layer) for e in sweeps)
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    width, height = max(5.0, 0.5 * layers + 2.2), 0.42 * len(tasks) + 1.3
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows + 0.6), squeeze=False)
    for axis in axes.ravel()[len(panels):]:
        axis.set_visible(False)
    for axis, source in zip(axes.ravel(), panels):
        grid = np.full((len(tasks), layers), np.nan)
        best: dict[int, int] = {}
        for e in sweeps:
            if e.source == source:
                row = tasks.index(e.task)
                grid[row, : len(e.result.per_layer)] = [100 * r.score for r in e.result.per_layer]
                best[row] = e.result.best_layer
        low, high = np.nanmin(grid, axis=1, keepdims=True), np.nanmax(grid, axis=1, keepdims=True)
        scaled = np.divide(grid - low, high - low, out=np.full_like(grid, 0.5), where=(high - low) > 0)
        axis.imshow(np.ma.masked_invalid(scaled), cmap="viridis", aspect="auto", vmin=0, vmax=1)
        for (row, column), value in np.ndenumerate(grid):
            if np.isfinite(value):
                text = f"{value:.0f}" if value >= PLOT_FLOOR else f"<{PLOT_FLOOR:.0f}"
                axis.text(column, row, text, ha="center", va="center", fontsize=7,
                          color="black" if scaled[row, column] > 0.6 else "white")
        for row, column in best.items():
            axis.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        axis.set_yticks(range(len(tasks)), tasks)
        axis.set_xticks(range(layers))
        axis.set_xlabel("hidden state")
        axis.set_title(source, fontsize="medium")
    figure.suptitle("test score ×100 per layer (colour scaled within each task; red box: layer chosen on valid)",
                    fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_confusions(entries: Sequence[Any], context: dict[str, Any], folder: Path) -> dict[str, Path]:
    """``<task>.png`` and ``<task>.json`` for each clip task: the first model's chosen layer."""
    from mertkit.eval.report import json_text as to_json

    labels = context.get("suite", {}).get("labels", {})
    first = _first_model(entries)
    paths = {}
    for task, names in labels.items():
        entry = _chosen_entry([e for e in entries if e.task == task and e.source == first])
        if entry is None or entry.result.confusion is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        setting = f"layer {entry.result.best_layer}" if entry.result.best_layer is not None else entry.setting
        title = f"{first}, {task}, {setting}: test confusion ({len(entry.result.runs)} seeds)"
        paths[f"confusion-{task}"] = plot_confusion(entry.result.confusion, names, folder / f"{task}.png", title)
        (folder / f"{task}.json").write_text(to_json({
            "task": task, "model": first, "setting": setting, "labels": list(names), "counts": entry.result.confusion,
            "rows": "true class", "columns": "predicted class", "seeds": [run.seed for run in entry.result.runs]}))
    return paths


def _chosen_entry(entries: Sequence[Any]) -> Any:
    """The sweep's entry (its chosen layer) if there is one, else the first setting."""
    return next((e for e in entries if e.setting == "all"), entries[0] if entries else None)
