"""Report files and the `mert probe` command on a tiny safetensors feature folder."""
import json

import numpy as np
import torch
from click.testing import CliRunner
from safetensors.numpy import save_file

from mertkit.cli.probe import probe
from mertkit.eval.datasets import TaskSpec
from mertkit.eval.features import from_arrays
from mertkit.eval.probes import ProbeConfig, run_probe
from mertkit.eval.report import markdown_table, write_report
from mertkit.eval.saved_probe import load_probe

torch.set_num_threads(1)


def toy_result(layer):
    rng = np.random.default_rng(0)
    splits = []
    for count in (30, 15, 15):
        y = rng.integers(0, 2, size=count)
        x = rng.normal(size=(count, 3, 4)).astype(np.float32)
        x[:, 1, 0] += 6 * y
        splits.append((x, y))
    cfg = ProbeConfig(layer=layer, lrs=(1e-2,), max_epochs=60, patience=20, batch_size=8, seeds=(0, 1))
    return run_probe(TaskSpec("toy", "multiclass", 2), from_arrays(*splits), cfg)


def test_report_files(tmp_path):
    sweep, weighted = toy_result("all"), toy_result("weighted")
    paths = write_report([sweep, weighted], tmp_path, model="MERT-test")
    payload = json.loads(paths["json"].read_text())
    assert payload["model"] == "MERT-test" and len(payload["results"][0]["per_layer"]) == 3
    table = markdown_table([sweep, weighted], "MERT-test").splitlines()
    assert len(table) == 2 + 1 + 3 + 1  # header, separator, sweep, its 3 layers, weighted
    assert f"{100 * sweep.score:.1f}" in table[2] and "all (best 1)" in table[2]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_command(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["path,split,label"]
    for split, count in (("train", 24), ("valid", 8), ("test", 8)):
        for i in range(count):
            label = ["rock", "pop"][i % 2]
            hidden = rng.normal(size=(3, 5, 4))
            hidden[2, :, 1] += 4.0 if label == "pop" else 0.0
            rel = f"{split}/{i}.wav"
            (tmp_path / "feats" / split).mkdir(parents=True, exist_ok=True)
            save_file({"hidden_states": hidden.astype(np.float32)}, str(tmp_path / "feats" / f"{rel}.safetensors"),
                      metadata={"model": "toy-model", "frame_rate": "75", "pooling": "none"})
            lines.append(f"{rel},{split},{label}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    task = json.dumps({"name": "genre", "kind": "multiclass", "labels": ["rock", "pop"]})
    args = ["--features", str(tmp_path / "feats"), "--manifest", str(tmp_path / "m.csv"), "--task", task,
            "--layers", "all", "--probe", "linear", "--seeds", "0", "--lrs", "0.01", "--epochs", "30",
            "--batch-size", "0", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["model"] == "toy-model"
    assert payload["results"][0]["best_layer"] == 2
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "layers.png").is_file()
    saved = load_probe(tmp_path / "out")  # the best probe, for `mert serve --probe`
    assert saved.layer == 2 and saved.task.labels == ("rock", "pop") and saved.model == "toy-model"

    other_task = json.dumps({"name": "genre", "kind": "multiclass", "labels": ["rock", "jazz"]})
    bad = CliRunner().invoke(probe, args[:5] + [other_task] + args[6:])
    assert bad.exit_code == 1
    assert "m.csv: row 'train/1.wav': label 'pop' is not in the task's label set" in bad.output
    assert isinstance(bad.exception, SystemExit)  # a clean click error, not a traceback
