"""The scripts in examples/ run as written, on tiny models and a few seconds of synthetic audio."""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_fixtures import write_array, write_tone
from mertkit.eval.saved_probe import load_probe
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel
from model_fixtures import tiny_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str):
    """The script's main(argv), loaded the way `python examples/NAME.py` runs it (minus the call)."""
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("model") / "tiny",
                           do_normalize=False)


def write_clips(folder: Path, count: int) -> list[tuple[Path, str]]:
    """Low tones, high tones and noise, in turn: (path, class)."""
    clips = []
    for index in range(count):
        kind = ("low", "high", "noise")[index % 3]
        path = folder / kind / f"{kind}{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "noise":
            write_array(path, np.random.default_rng(index).standard_normal(24000) * 0.2, 24000)
        else:
            freq = (150.0 if kind == "low" else 2400.0) * (1 + 0.04 * index)
            write_tone(path, seconds=1.0, sample_rate=24000, channels=1, freq=freq)
        clips.append((path, kind))
    return clips


def test_catalog_search(checkpoint, tmp_path, capsys):
    clips = write_clips(tmp_path / "audio", 6)
    run = example("catalog_search.py")
    args = [str(tmp_path / "audio"), str(tmp_path / "store"), "--model", str(checkpoint), "--window", "0", "-k", "3"]
    hits = run([*args, "--query", str(clips[4][0])])
    assert len(hits) == 3 and hits[0][0] == str(clips[4][0]) and hits[0][1] == pytest.approx(1.0, abs=1e-3)
    assert "6 tracks embedded" in capsys.readouterr().out
    run(args)  # a rerun reuses the store
    assert "0 tracks embedded, 6 already stored" in capsys.readouterr().out


def test_probe_dataset(checkpoint, tmp_path, capsys):
    clips = write_clips(tmp_path / "data", 18)
    splits = ("train", "train", "train", "train", "valid", "test")
    rows = ["path,split,label"] + [
        f"{path.relative_to(tmp_path / 'data').as_posix()},{splits[(i // 3) % len(splits)]},{kind}"
        for i, (path, kind) in enumerate(clips)
    ]
    (tmp_path / "data" / "manifest.csv").write_text("\n".join(rows) + "\n")
    task = '{"name": "sound", "kind": "multiclass", "labels": ["low", "high", "noise"]}'
    result = example("probe_dataset.py")([
        str(tmp_path / "data" / "manifest.csv"), "--task", task, "--cache", str(tmp_path / "cache"),
        "--out", str(tmp_path / "out"), "--model", str(checkpoint), "--epochs", "15", "--seeds", "0", "--lrs", "0.05",
    ])
    assert len(result.per_layer) == 4 and result.best_layer is not None  # the tiny model has 4 hidden states
    assert (tmp_path / "cache" / "low" / "low0.wav.safetensors").is_file()
    saved = load_probe(tmp_path / "out")
    assert saved.task.labels == ("low", "high", "noise") and saved.needed_hidden_states == (result.best_layer,)
    assert "best layer (by validation)" in capsys.readouterr().out


@pytest.mark.parametrize("with_labels", [True, False], ids=["mlm", "data2vec"])
def test_pretrain_folder(tmp_path, capsys, with_labels):
    from pretrain.pretrain_fixtures import tiny_config as tiny_pretrain_config
    from pretrain.pretrain_fixtures import write_labelled_corpus

    audio, labels = write_labelled_corpus(tmp_path, 3, seconds=(1.0, 1.4), seed=1)
    tiny_pretrain_config(batch_size=2, d2v_top_k=2).save_json(tmp_path / "tiny.json")
    args = [str(audio), str(tmp_path / "run"), "--config", str(tmp_path / "tiny.json"), "--steps", "2"]
    exported = example("pretrain_folder.py")([*args, *(["--labels", str(labels)] if with_labels else [])])
    out = capsys.readouterr().out
    assert ("mlm pre-training" if with_labels else "data2vec pre-training") in out
    assert "at update 2" in out and "pooled features [3, 64]" in out  # 2 layers + input state, width 64
    assert (exported / "config.json").is_file()
