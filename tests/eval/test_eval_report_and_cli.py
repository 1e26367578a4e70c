"""Report files and the `mert probe` command on a tiny safetensors feature folder."""
import csv
import dataclasses
import functools
import json

import numpy as np
import pytest
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


@functools.lru_cache(maxsize=None)  # deterministic; tests only read it (dataclasses.replace makes copies)
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

    again = CliRunner().invoke(probe, args)
    assert again.exit_code == 1 and "already holds a report" in again.output  # never overwritten silently
    other_task = json.dumps({"name": "genre", "kind": "multiclass", "labels": ["rock", "jazz"]})
    bad = CliRunner().invoke(probe, args[:5] + [other_task] + args[6:] + ["--overwrite"])
    assert bad.exit_code == 1
    assert "m.csv: row 'train/1.wav': label 'pop' is not in the task's label set" in bad.output
    assert isinstance(bad.exception, SystemExit)  # a clean click error, not a traceback

    # baselines read the manifest's audio: none here, so a one-line error naming the file
    no_audio = CliRunner().invoke(probe, args + ["--overwrite", "--baselines", "mfcc"])
    assert no_audio.exit_code == 1 and "row 'train/0.wav': audio file" in no_audio.output
    assert "Traceback" not in no_audio.output
    unknown = CliRunner().invoke(probe, args + ["--overwrite", "--baselines", "mfcc,zcr"])
    assert unknown.exit_code == 2 and "unknown baselines ['zcr']" in unknown.output


def test_scores_say_n1_for_one_seed_and_show_the_interval():
    from mertkit.eval.report import format_score

    two = toy_result(3 - 2)  # layer 1, seeds (0, 1)
    assert "±" in format_score(two) and "(n=1)" not in format_score(two)
    one = dataclasses.replace(two, runs=two.runs[:1])
    text = format_score(one)
    assert "(n=1)" in text and "±" not in text
    low, high = two.test_ci
    assert low <= two.score <= high and text.endswith(f"[{100 * low:.1f}, {100 * high:.1f}]")
    assert two.n_test == 15 and two.ci_resamples == 1000


def test_bootstrap_interval_is_reproducible_and_sized_by_the_test_set():
    from mertkit.eval.metrics import bootstrap_ci

    rng = np.random.default_rng(1)
    small, large = rng.random(20) < 0.5, rng.random(2000) < 0.5
    a = bootstrap_ci(lambda index: float(small[index].mean()), len(small))
    assert a == bootstrap_ci(lambda index: float(small[index].mean()), len(small))
    b = bootstrap_ci(lambda index: float(large[index].mean()), len(large))
    assert a[0] <= small.mean() <= a[1] and b[0] <= large.mean() <= b[1]
    # the width shrinks like 1/sqrt(n): about 0.44 for 20 clips, 0.044 for 2000
    assert 0.3 < a[1] - a[0] < 0.6 and 0.03 < b[1] - b[0] < 0.06
    assert bootstrap_ci(lambda index: 1.0, 1) is None


def test_confusion_matrix_counts_every_seed_and_is_written(tmp_path):
    result = toy_result(1)
    confusion = np.array(result.confusion)
    assert confusion.shape == (2, 2) and confusion.sum() == 15 * 2  # test clips x seeds
    accuracy = np.trace(confusion) / confusion.sum()
    assert accuracy == pytest.approx(result.score)
    paths = write_report([result], tmp_path, model="m", labels={"toy": ("no", "yes")})
    payload = json.loads(paths["confusion-toy-1"].with_suffix(".json").read_text())
    assert payload["labels"] == ["no", "yes"] and payload["counts"] == result.confusion
    assert paths["confusion-toy-1"].read_bytes()[:4] == b"\x89PNG"


def test_pooled_results_average_the_repeats():
    from mertkit.eval.probes import pool_results

    first, second = toy_result("all"), toy_result("all")
    second = dataclasses.replace(second, test_mean={"accuracy": second.score - 0.2})
    pooled = pool_results([first, second])
    assert pooled.score == pytest.approx(first.score - 0.1) and pooled.test_std["accuracy"] == pytest.approx(0.1)
    assert len(pooled.runs) == 4 and len(pooled.per_layer) == 3 and pooled.best_layer == first.best_layer
    assert np.sum(pooled.confusion) == 2 * np.sum(first.confusion) and len(pooled.test_ci) == 2


def test_json_is_strict_with_reasons_for_nulls():
    from mertkit.eval.report import json_text

    text = json_text({"floors": {"beat": float("nan"), "key": 0.1}, "x": [float("inf")]}, {"floors.beat": "no floor"})
    payload = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert payload["floors"] == {"beat": None, "key": 0.1} and payload["x"] == [None]
    assert payload["null_reasons"]["floors.beat"] == "no floor" and "not a finite number" in payload["null_reasons"]["x[0]"]


def test_probe_reads_a_bench_suite_task_folder(tmp_path):
    pytest.importorskip("pretty_midi")
    pytest.importorskip("tinysoundfont")
    from mertkit.synth.suite import build_task

    folder = build_task(tmp_path / "suite", "pitch_class", num_clips=24, seed=2)
    labels = json.loads((folder / "task.json").read_text())["labels"]
    rng = np.random.default_rng(0)
    with (folder / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # features that carry the class in layer 1, as `mert extract --pool mean` writes them
        hidden = rng.normal(size=(3, 12)).astype(np.float32)
        hidden[1, labels.index(row["label"])] += 8
        target = tmp_path / "feats" / f"{row['path']}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({"hidden_states": hidden}, str(target), metadata={"model": "toy"})
    args = ["--features", str(tmp_path / "feats"), "--task", str(folder), "--layers", "all", "--probe", "linear",
            "--seeds", "0", "--lrs", "0.05", "--epochs", "60", "-o", str(tmp_path / "out"), "-q"]
    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    assert "pitch_class: accuracy ×100 = " in result.output and "(n=1)" in result.output and "layer 1 chosen" in result.output
    assert (tmp_path / "out" / "confusion-pitch_class-all.png").is_file()
    by_json = CliRunner().invoke(probe, args[:3] + [str(folder / "task.json")] + args[4:-3] + ["-o", str(tmp_path / "o2")])
    assert by_json.exit_code == 0, by_json.output
    inline = '{"name": "x", "kind": "multiclass", "labels": ["a"]}'
    bare = CliRunner().invoke(probe, args[:3] + [inline] + args[4:-3] + ["-o", str(tmp_path / "o3")])
    assert bare.exit_code == 2 and "--manifest is required" in bare.output


def test_probe_puts_the_classic_baselines_beside_the_model(tmp_path):
    pytest.importorskip("pretty_midi")
    pytest.importorskip("tinysoundfont")
    from mertkit.eval.baselines import baseline_feature_splits
    from mertkit.eval.datasets import read_manifest
    from mertkit.synth.suite import build_task

    folder = build_task(tmp_path / "suite", "pitch_class", num_clips=24, seed=3)
    rng = np.random.default_rng(0)
    with (folder / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # features that know nothing: noise
        target = tmp_path / "feats" / f"{row['path']}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({"hidden_states": rng.normal(size=(2, 8)).astype(np.float32)}, str(target), metadata={"model": "noise"})
    args = ["--features", str(tmp_path / "feats"), "--task", str(folder), "--layers", "all", "--probe", "linear",
            "--seeds", "0", "--lrs", "0.05", "--epochs", "40", "--baselines", "chroma,mfcc", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(probe, args)
    assert result.exit_code == 0, result.output
    assert "  chroma stats: " in result.output and "  MFCC stats: " in result.output
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["model"] == "noise" and sorted(payload["baselines"]) == ["MFCC stats", "chroma stats"]
    chroma_row = payload["baselines"]["chroma stats"][0]
    assert chroma_row["task"] == "pitch_class" and chroma_row["layer"] == 0

    # the row is the same probe run on the baseline's own features, computed independently here
    task = TaskSpec.from_dict(json.loads((folder / "task.json").read_text()))
    splits = baseline_feature_splits(read_manifest(folder / "manifest.csv", task), task, "chroma")
    direct = run_probe(task, splits, ProbeConfig(kind="linear", layer=0, lrs=(0.05,), seeds=(0,), max_epochs=40))
    assert chroma_row["test_mean"]["accuracy"] == pytest.approx(direct.score)
    table = (tmp_path / "out" / "results.md").read_text()
    assert f"| pitch_class | chroma stats | linear | stats | accuracy | {100 * direct.score:.1f}" in table
    # the model row paired with each baseline on the same test clips
    model_score = payload["results"][0]["test_mean"]["accuracy"]
    paired = {row["against"]: row for row in payload["paired"]}
    assert sorted(paired) == ["MFCC stats", "chroma stats"]
    chroma_pair = paired["chroma stats"]
    assert chroma_pair["difference"] == pytest.approx(model_score - direct.score)
    low, high = chroma_pair["interval"]
    assert chroma_pair["verdict"] == ("ahead" if low > 0 else "behind" if high < 0 else "within noise")
    assert f"| pitch_class | noise, layer all (best " in table and f"| chroma stats | {100 * chroma_pair['difference']:+.1f} |" in table

    beat = json.dumps({"name": "beat", "kind": "beat", "labels": []})
    frame_level = CliRunner().invoke(probe, args[:3] + [beat, "--manifest", str(folder / "manifest.csv")] + args[4:-2]
                                     + ["-o", str(tmp_path / "o2")])
    assert frame_level.exit_code == 2 and "task 'beat' is beat-level" in frame_level.output


def test_bench_suite_task_json_is_a_task_spec():
    from mertkit.eval.datasets import TaskSpec

    tempo = {"name": "tempo", "kind": "beat", "labels": [], "metric": "beat_f_measure", "clip_seconds": 8.0,
             "sample_rate": 24000, "seed": 0, "num_clips": 10, "label_kind": "regression", "extra": {}}
    assert TaskSpec.from_dict(tempo) == TaskSpec("tempo", "beat", 1, "beat_f")
