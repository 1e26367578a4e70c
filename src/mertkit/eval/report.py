"""Probe results as JSON, a Markdown table (task x model/layer) and a per-layer score plot."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mertkit.eval.probes import ProbeResult


def results_to_json(results: Sequence[ProbeResult], path: str | Path, model: str = "") -> Path:
    """Write ``{"model": ..., "results": [ProbeResult.to_dict(), ...]}``."""
    path = Path(path)
    payload = {"model": model, "results": [result.to_dict() for result in results]}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


def markdown_table(results: Sequence[ProbeResult], model: str = "") -> str:
    """One row per task and layer setting (sweeps add a row per layer): mean ± std x 100."""
    header = "| task | model | probe | layer | metric | test (mean ± std, ×100) | valid | best lr |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        lines.append(_row(result, model, _layer_label(result)))
        for layer_result in result.per_layer:
            lines.append(_row(layer_result, model, f"{layer_result.layer}"))
    return "\n".join(lines) + "\n"


def write_markdown(results: Sequence[ProbeResult], path: str | Path, model: str = "") -> Path:
    path = Path(path)
    path.write_text(markdown_table(results, model))
    return path


def plot_layers(results: Sequence[ProbeResult], path: str | Path, model: str = "") -> Path:
    """PNG of test score per layer, one line per task (layer sweeps), with std as a band.

    Non-sweep results are drawn as horizontal dashed lines labelled with their layer setting.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'mertkit[eval]'") from error
    figure, axes = plt.subplots(figsize=(7, 4))
    for result in results:
        if result.per_layer:
            layers = [int(r.layer) for r in result.per_layer]
            means = [100 * r.score for r in result.per_layer]
            stds = [100 * r.test_std[r.metric] for r in result.per_layer]
            axes.plot(layers, means, marker="o", label=f"{result.task} ({result.metric})")
            axes.fill_between(layers, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)
        else:
            axes.axhline(100 * result.score, linestyle="--", label=f"{result.task} ({_layer_label(result)})")
    axes.set_xlabel("hidden state (0 = before the first transformer layer)")
    axes.set_ylabel("test score ×100")
    axes.set_title(f"probe score per layer{f' — {model}' if model else ''}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(results: Sequence[ProbeResult], out_dir: str | Path, model: str = "") -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``layers.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": results_to_json(results, out_dir / "results.json", model),
        "markdown": write_markdown(results, out_dir / "results.md", model),
        "plot": plot_layers(results, out_dir / "layers.png", model),
    }


def _row(result: ProbeResult, model: str, layer: str) -> str:
    mean = 100 * result.score
    std = 100 * result.test_std[result.metric]
    cells: list[Any] = [result.task, model or "-", result.probe, layer, result.metric, f"{mean:.1f} ± {std:.1f}",
                        f"{100 * result.valid_mean:.1f}", f"{result.best_lr:g}"]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _layer_label(result: ProbeResult) -> str:
    if result.best_layer is not None:
        return f"all (best {result.best_layer})"
    if result.layer_weights is not None:
        top = max(range(len(result.layer_weights)), key=lambda k: result.layer_weights[k])
        return f"{result.layer} (top {top})"
    return str(result.layer)
