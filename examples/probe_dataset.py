"""Probe a labelled dataset from cached features: which layer of the model knows the labels?

    python examples/probe_dataset.py MANIFEST --task TASK_JSON --cache FEATURES_DIR --out OUT_DIR
                                     [--model NAME_OR_DIR] [--epochs 100] [--seeds 0,1,2]

MANIFEST is a CSV or JSONL file (path, split, label) whose paths are relative to its folder
(`mert probe --help` describes the format). The audio under that folder is extracted once
into FEATURES_DIR (mean-pooled, every hidden state; a rerun reads the cache); then one linear
probe per layer is trained and tested. OUT_DIR gets results.json, results.md, layers.png and
probe.safetensors, the best probe, which `mert serve --probe OUT_DIR` shows predictions of.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import mertkit
from mertkit.models.shipped import demo_model_dir
from mertkit.eval.datasets import BUILTIN_TASKS, TaskSpec, read_manifest
from mertkit.eval.features import from_safetensors_dir
from mertkit.eval.probes import ProbeConfig, ProbeResult, run_probe
from mertkit.eval.report import write_report
from mertkit.eval.saved_probe import FILE_NAME, save_probe
from mertkit.extraction.engine import ExtractOptions
from mertkit.extraction.runner import run_extract


def load_task(value: str) -> TaskSpec:
    if value in BUILTIN_TASKS:
        return BUILTIN_TASKS[value]
    text = Path(value).read_text() if Path(value).is_file() else value
    return TaskSpec.from_dict(json.loads(text))


def main(argv: list[str] | None = None) -> ProbeResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--task", required=True, help="task JSON file, inline JSON or a built-in task name")
    parser.add_argument("--cache", required=True, type=Path, help="folder for the cached features")
    parser.add_argument("--out", required=True, type=Path, help="folder for the report and the saved probe")
    parser.add_argument("--model", help="registry name, hub id or checkpoint directory [default: the shipped model]")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="1e-3,1e-2")
    args = parser.parse_args(argv)

    task = load_task(args.task)
    records = read_manifest(args.manifest, task)
    # 1. Cache: <cache>/<path>.safetensors for every audio file under the manifest's folder.
    model = mertkit.load(args.model or demo_model_dir()[0])
    report = run_extract(model, [args.manifest.parent], args.cache, ExtractOptions(pool="mean"), progress=False)
    print(f"features: {len(report.done)} extracted, {len(report.skipped)} cached, {len(report.failed)} failed")

    # 2. Probe every layer from the cache (no model needed from here on).
    data = from_safetensors_dir(args.cache, records, task)
    cfg = ProbeConfig(kind="linear", layer="all", max_epochs=args.epochs, patience=10,
                      seeds=tuple(int(s) for s in args.seeds.split(",")),
                      lrs=tuple(float(lr) for lr in args.lrs.split(",")))
    result = run_probe(task, data, cfg)
    for layer in result.per_layer:
        print(f"layer {layer.layer:2d}: {task.metric} {100 * layer.score:5.1f} ± {100 * layer.test_std[task.metric]:.1f}")
    print(f"best layer (by validation): {result.best_layer}")

    # 3. Report and the best probe, reusable by `mert serve --probe`.
    write_report([result], args.out, str(data.meta.get("model") or "model"))
    save_probe(result, task, data, cfg, args.out / FILE_NAME)
    print(f"report and {FILE_NAME} -> {args.out}")
    return result


if __name__ == "__main__":
    main()
