"""`mert probe`: train MARBLE-style probes on cached features and write JSON, Markdown and plots."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from mertkit.cli.options import (
    LearningRates, PositiveInt, Seeds, examples, out_option, parse_baselines, quiet, verbosity,
)


def _parse_layer(value: str) -> int | str:
    if value in ("all", "weighted", "conv1d"):
        return value
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"expected a layer index, 'all', 'weighted' or 'conv1d', got {value!r}",
                             param_hint="--layers")


def _load_task(value: str):  # type: ignore[no-untyped-def]
    """A built-in name, a task JSON file (also `mert bench-suite`'s task.json), a suite task
    folder holding task.json, or inline JSON."""
    from mertkit.eval.datasets import BUILTIN_TASKS, DatasetError, TaskSpec

    if value in BUILTIN_TASKS:
        return BUILTIN_TASKS[value]
    path = Path(value)
    if path.is_dir():
        path = path / "task.json"
        if not path.is_file():
            raise click.BadParameter(f"{value}: a folder without task.json (expected a `mert bench-suite` task folder)",
                                     param_hint="--task")
    text = path.read_text() if path.is_file() else value
    if not text.lstrip().startswith("{"):
        raise click.BadParameter(
            f"{value!r} is neither a task JSON file, a suite task folder, inline JSON, nor one of {sorted(BUILTIN_TASKS)}",
            param_hint="--task")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"{value}: not valid JSON ({error.msg})", param_hint="--task") from error
    if not isinstance(data, dict):
        raise click.BadParameter(f"{value}: expected a JSON object", param_hint="--task")
    try:
        return TaskSpec.from_dict(data)
    except DatasetError as error:
        raise click.BadParameter(f"{value}: {error}", param_hint="--task") from error


def _default_manifest(task_value: str) -> Path:
    """The manifest beside a suite task's task.json (a task folder or its task.json)."""
    path = Path(task_value)
    folder = path if path.is_dir() else path.parent
    manifest = folder / "manifest.csv"
    if not (path.exists() and manifest.is_file()):
        raise click.UsageError("--manifest is required unless --task is a `mert bench-suite` task folder or its task.json")
    return manifest


@click.command("probe", epilog=examples(
    "mert probe --features feats/ --manifest gtzan.csv --task gtzan --layers all -o results/",
    "mert probe --features feats/ --manifest m.csv --task task.json --probe linear --lrs 1e-3,1e-2 -o results/",
    "mert probe --features feats/key --task suite/key --layers all -o results/key   # a bench-suite task folder",
    "mert probe --features feats/ --manifest beats.csv --task beat.json --probe linear --context 4 -o results/beat",
    "mert probe --features feats/ --manifest m.csv --task genre.json --baselines mfcc,chroma,logmel -o results/",
))
@click.option("--features", "features_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of <path>.safetensors files written by `mert extract`.")
@click.option("--manifest", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV or JSONL manifest: path, split, label/labels/targets/beats "
                   "[default: manifest.csv beside a bench-suite task's task.json].")
@click.option("--task", "task_value", required=True,
              help="Built-in name, task JSON file, `mert bench-suite` task folder (or its task.json), or inline JSON.")
@click.option("--layers", "layer", default="weighted", show_default=True,
              help="Hidden states the probe reads: an index k, all (a sweep: one probe per layer), weighted or conv1d.")
@click.option("--layer", "layer_alias", default=None, hidden=True)  # the old spelling, deprecated
@click.option("--probe", "probe_kind", type=click.Choice(["linear", "mlp"]), default="mlp", show_default=True)
@click.option("--seeds", type=Seeds, default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--lrs", type=LearningRates, default="1e-4,1e-3,1e-2", show_default=True,
              help="Comma-separated learning rates (positive).")
@click.option("--epochs", type=PositiveInt, default=100, show_default=True, help="Maximum epochs per run.")
@click.option("--patience", type=PositiveInt, default=10, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--batch-size", type=click.IntRange(0, 1_000_000), default=64, show_default=True,
              help="Mini-batch size; 0 for full batch.")
@click.option("--context", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Frame and beat tasks: frames either side the probe sees (`mert eval` gives beat 4).")
@click.option("--baselines", default="none", show_default=True,
              help="Classic features probed the same way on the same clips, beside the model: mfcc, chroma, logmel "
                   "(their mean and std over time; clip tasks; read from the manifest's audio), or none.")
@click.option("--model-name", default="", help="Label for the table and plot (default: from the features).")
@out_option("Folder for results.json, results.md, layers.png, the confusion matrices and probe.safetensors "
            "(the best probe).", path_type=Path)
@click.option("--overwrite", is_flag=True, help="Replace a report already in --out.")
@verbosity
def probe(features_dir: Path, manifest: Path | None, task_value: str, layer: str, layer_alias: str | None,
          probe_kind: str, seeds: tuple[int, ...], lrs: tuple[float, ...], epochs: int, patience: int, batch_size: int,
          context: int, baselines: str, model_name: str, out: Path, overwrite: bool) -> None:
    """Train probes on cached features and report test scores."""
    from mertkit.eval.baselines import BASELINE_TITLES, BASELINES, baseline_feature_splits
    from mertkit.eval.datasets import DatasetError, read_manifest
    from mertkit.eval.features import FeatureError, from_safetensors_dir
    from mertkit.eval.probes import ProbeConfig, ProbeError, count_fits, run_probe
    from mertkit.eval.report import format_score, write_report
    from mertkit.eval.saved_probe import FILE_NAME, save_probe
    from mertkit.progress import Progress

    if layer_alias is not None:
        click.echo("--layer is deprecated: use --layers", err=True)
        layer = layer_alias
    if (out / "results.json").exists() and not overwrite:
        raise click.ClickException(f"{out}: already holds a report; choose another --out or pass --overwrite")
    task = _load_task(task_value)
    manifest = manifest or _default_manifest(task_value)
    baseline_names = parse_baselines(baselines)
    unknown = [name for name in baseline_names if name not in BASELINES]
    if unknown:
        raise click.BadParameter(f"unknown baselines {unknown}; choose from {sorted(BASELINES)} or none",
                                 param_hint="--baselines")
    if baseline_names and task.kind in ("frame", "beat"):
        raise click.BadParameter(f"they are clip statistics; task {task.name!r} is {task.kind}-level "
                                 "(`mert eval` probes an onset-strength baseline on beat tasks)", param_hint="--baselines")
    try:
        cfg = ProbeConfig(
            kind=probe_kind, layer=_parse_layer(layer), lrs=lrs, seeds=seeds, max_epochs=epochs, patience=patience,
            batch_size=batch_size or None, context=context,
        )
        # the model's probe needs only features; the baselines compute theirs from the audio
        records = read_manifest(manifest, task, check_files=bool(baseline_names))
        data = from_safetensors_dir(features_dir, records, task)
        baseline_data = {BASELINE_TITLES[name]: baseline_feature_splits(records, task, name) for name in baseline_names}
        baseline_cfg = dataclasses.replace(cfg, layer=0)  # one "layer": the statistics
        fits = count_fits(cfg, data.num_layers) + len(baseline_data) * count_fits(baseline_cfg, 1)
        with Progress(fits, f"probe {task.name}", unit="fit", enabled=not quiet()) as bar:
            result = run_probe(task, data, cfg, bar)
            floors = {title: run_probe(task, splits, baseline_cfg, bar) for title, splits in baseline_data.items()}
    except (DatasetError, FeatureError, ProbeError) as error:
        raise click.ClickException(str(error)) from error
    model = model_name or str(data.meta.get("model") or features_dir.name)
    paths = write_report([result], out, model, labels={task.name: task.labels} if task.labels else None,
                         baselines={title: [floor] for title, floor in floors.items()})
    paths["probe"] = save_probe(result, task, data, cfg, out / FILE_NAME)  # what `mert serve --probe` loads
    layer_text = f" (layer {result.best_layer} chosen on valid)" if result.best_layer is not None else ""
    click.echo(f"{task.name}: {task.metric} ×100 = {format_score(result)}{layer_text}")
    for title, floor in floors.items():
        click.echo(f"  {title}: {format_score(floor)}")
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
