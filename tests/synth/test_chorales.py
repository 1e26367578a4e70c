"""The chorale key task: Bach chorale openings from music21's corpus, transposed, split by chorale."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("music21")
pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")
soundfile = pytest.importorskip("soundfile")

from model_fixtures import tiny_config  # noqa: E402

from mertkit.cli.bench_suite import bench_suite  # noqa: E402
from mertkit.eval.suite_runner import SuiteRunError, ensure_suite, folder_fingerprint, load_suite_tasks, run_suite  # noqa: E402
from mertkit.models.checkpoint import save_pretrained  # noqa: E402
from mertkit.models.hubert.model import MertModel  # noqa: E402
from mertkit.synth.chorales import CHORALE_PROGRAMS  # noqa: E402
from mertkit.synth.suite import key_labels  # noqa: E402

SR = 16000
ARGS = ["--limit", "3", "--transpositions", "3", "--seconds", "2", "--sample-rate", str(SR), "-q"]


def _build(out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(bench_suite, ["chorales", "-o", str(out), *ARGS, *extra])
    assert result.exit_code == 0, result.output
    return out / "chorale_key"


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("chorales") / "suite")


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_transposition_of_a_chorale_carries_its_shifted_key_and_its_split(task):
    rows = _rows(task)
    assert len(rows) == 9 and len({r["chorale"] for r in rows}) == 3
    names = key_labels()
    for chorale in {r["chorale"] for r in rows}:
        mine = [r for r in rows if r["chorale"] == chorale]
        assert len({r["split"] for r in mine}) == 1  # no transposition of a test chorale in training
        assert len({int(r["transpose"]) for r in mine}) == 3
        modes = {r["label"].split(" ")[1] for r in mine}
        assert len(modes) == 1
        # the tonic moves with the transposition: label index - shift is the same key for all
        untransposed = {(names.index(r["label"]) - int(r["transpose"])) % 12 for r in mine}
        assert len(untransposed) == 1
    assert sorted(r["split"] for r in rows) == ["test"] * 3 + ["train"] * 3 + ["valid"] * 3
    info = json.loads((task / "task.json").read_text())
    assert (info["name"], info["kind"], info["labels"], info["num_clips"]) == ("chorale_key", "multiclass", names, 9)
    assert info["extra"]["chorales"] == 3 and info["extra"]["split"] == "by chorale"
    assert info["soundfont"]["sha256"]


def test_clips_are_audible_and_as_long_as_asked(task):
    for row in _rows(task):
        audio, rate = soundfile.read(task / row["path"])
        assert rate == SR and len(audio) == 2 * SR
        assert np.sqrt(np.mean(audio**2)) > 0.02, row


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_clips(task, tmp_path):
    assert folder_fingerprint(_build(tmp_path / "again")) == folder_fingerprint(task)
    other = _rows(_build(tmp_path / "other", "--seed", "1"))
    assert [r["chorale"] for r in other] == [r["chorale"] for r in _rows(task)]  # the corpus order is fixed
    assert [r["transpose"] for r in other] != [r["transpose"] for r in _rows(task)]
    assert len(CHORALE_PROGRAMS) == 22


def test_eval_reads_the_task_and_names_the_command_when_it_is_missing(task, tmp_path):
    folders = ensure_suite(task.parent, ["chorale_key"], None, None, lambda message: None)
    (loaded,) = load_suite_tasks(folders)
    assert loaded.name == "chorale_key" and loaded.spec.labels == tuple(key_labels())
    assert len(loaded.records) == 9
    with pytest.raises(SuiteRunError, match=r"mert bench-suite chorales -o .* --seed 0"):
        ensure_suite(tmp_path / "empty", ["chorale_key"], None, None, lambda message: None)


def test_a_model_and_chroma_are_probed_on_it(task, tmp_path):
    torch.manual_seed(0)
    model_dir = save_pretrained(MertModel(tiny_config()), tmp_path / "tiny", formats=("safetensors",))
    run_suite(model_dir, task.parent, tmp_path / "out", tasks=("chorale_key",), random_init=0, baselines=("chroma",),
              run_name="run", seeds=(0,), lrs=(1e-2,), max_epochs=2, patience=1, progress=False)
    results = json.loads((tmp_path / "out" / "run" / "results.json").read_text())["results"]
    found = {(r["task"], r["kind"], r["source"] if r["kind"] == "baseline" else r["setting"]) for r in results}
    assert {("chorale_key", "model", "all"), ("chorale_key", "baseline", "chroma")} <= found
    assert {r["task"] for r in results} == {"chorale_key"}
    for entry in results:  # 3 test clips: each score is a multiple of 1/3
        accuracy = entry["test_mean"]["accuracy"]
        assert 0.0 <= accuracy <= 1.0 and abs(accuracy * 3 - round(accuracy * 3)) < 1e-6


def test_without_music21_the_command_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_music21(name, *args, **kwargs):
        if name.split(".")[0] == "music21":
            raise ImportError("No module named 'music21'", name="music21")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_music21)
    result = CliRunner().invoke(bench_suite, ["chorales", "-o", str(tmp_path / "s"), *ARGS])
    assert result.exit_code != 0
    assert "pip install 'mertkit[chorales]'" in result.output and "Traceback" not in result.output
