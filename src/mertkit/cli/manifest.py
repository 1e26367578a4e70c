"""``mert manifest``: a probing manifest (and its task JSON) from a dataset folder on disk.

The dataset adapters of :mod:`mertkit.eval.datasets` read each dataset's standard layout and
split files (as MARBLE does); this command writes what they read as a generic manifest, so
``mert extract`` + ``mert probe`` run on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from mertkit.cli.options import examples, quiet, verbosity

# Command-line name -> adapter name in mertkit.eval.datasets.ADAPTERS
DATASETS = {
    "gtzan": "gtzan",
    "mtt": "magnatagatune",
    "giantsteps": "giantsteps_key",
    "emomusic": "emomusic",
    "nsynth": "nsynth_pitch",
    "vocalset": "vocalset_{target}",
}

@click.command("manifest", epilog=examples(
    "mert manifest --dataset gtzan data/GTZAN/ -o gtzan.csv",
    "mert extract data/GTZAN/genres_original/ -m MERT-v1-95M --pool mean -o feats/gtzan/",
    "mert probe --features feats/gtzan/ --manifest gtzan.csv --task gtzan.task.json -o results/gtzan/",
    "mert manifest --dataset vocalset --target technique data/VocalSet/ -o vocalset.jsonl",
))
@click.option("--dataset", "-d", required=True, type=click.Choice(sorted(DATASETS)), help="Which dataset ROOT holds.")
@click.argument("root", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest to write (.csv or .jsonl); its task JSON goes beside it as <name>.task.json.")
@click.option("--target", type=click.Choice(["singer", "technique"]), default=None,
              help="VocalSet only: classify the singer or the technique.")
@click.option("--check-files/--no-check-files", default=True, show_default=True,
              help="Check that every audio file exists.")
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest.")
@verbosity
def manifest(dataset: str, root: Path, out: Path, target: str | None, check_files: bool, overwrite: bool) -> None:
    """Write a manifest (path, split, label...) for a dataset folder, with the task it defines."""
    from mertkit.eval.datasets import ADAPTERS, SPLITS, DatasetError, write_manifest
    if out.suffix not in (".csv", ".jsonl"):
        raise click.BadParameter(f"{out}: the manifest must end in .csv or .jsonl", param_hint="--out")
    if (dataset == "vocalset") != (target is not None):
        raise click.BadParameter("--target singer|technique is needed for vocalset, and only for it", param_hint="--target")
    task_path = out.with_name(out.stem + ".task.json")
    if not overwrite and (out.exists() or task_path.exists()):
        raise click.ClickException(f"{out}: already exists (pass --overwrite to replace it)")
    adapter = ADAPTERS[DATASETS[dataset].format(target=target)]
    try:
        records, task = adapter(root, check_files=check_files)
    except DatasetError as error:
        raise click.ClickException(str(error)) from error
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, out, task, audio_column=True)
    task_path.write_text(json.dumps(task.to_dict(), indent=2) + "\n")
    if not quiet():
        counts = ", ".join(f"{split} {sum(r.split == split for r in records)}" for split in SPLITS)
        click.echo(f"{out}: {len(records)} rows ({counts}); task {task.name} ({task.kind}, {task.num_outputs} outputs)")
        click.echo(f"task: {task_path}")
