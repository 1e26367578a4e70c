"""MERT-v2 downstream, like any other model: the feature store, `mert search` with an audio
query, `mert probe` on its cached features, and the HEAR API."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mert2_fixtures import TINY2, write_checkpoint

import mertkit
from audio_fixtures import write_array
from mertkit.cli.app import main

SR = TINY2["sampling_rate"]


@pytest.fixture(scope="module")
def thirty(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mert2") / "30s", {"variant": "30s"}, seed=3)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Six clips: two timbres (noise / tones), three of each."""
    root = tmp_path_factory.mktemp("catalog")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    for i in range(3):
        write_array(root / f"noise{i}.wav", 0.3 * rng.standard_normal(t.size), SR, "PCM_16")
        write_array(root / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 40 * i) * t), SR, "PCM_16")
    return root


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_store_and_search_with_an_audio_query(thirty, catalog, tmp_path):
    store = tmp_path / "feats.parquet"
    _run(["extract", str(catalog), "--model", str(thirty), "--store", str(store), "--pool", "mean", "-q"])
    opened = mertkit.store.open(store)
    vectors, paths = opened.load(layer=TINY2["num_hidden_layers"] - 1)
    assert len(paths) == 6 and vectors.shape[1] == TINY2["hidden_size"]
    hits = json.loads(_run(["search", "--store", str(store), str(catalog / "tone1.wav"), "-k", "3", "--json", "-q"]))
    assert hits["hits"][0]["path"].endswith("tone1.wav") and hits["hits"][0]["score"] > 0.999


def test_probe_on_cached_mert2_features(thirty, catalog, tmp_path):
    feats = tmp_path / "feats"
    _run(["extract", str(catalog), "--model", str(thirty), "-o", str(feats), "-q"])
    rows = ["path,split,label"] + [f"{kind}{i}.wav,{split},{kind}" for kind in ("noise", "tone")
                                   for i, split in enumerate(("train", "valid", "test"))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    task = json.dumps({"name": "timbre", "kind": "multiclass", "labels": ["noise", "tone"]})
    _run(["probe", "--features", str(feats), "--manifest", str(tmp_path / "m.csv"), "--task", task, "--layers", "1",
          "--probe", "linear", "--seeds", "0", "--lrs", "0.01", "--epochs", "5", "--batch-size", "0",
          "-o", str(tmp_path / "out"), "-q"])
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    (result,) = payload["results"]
    assert result["layer"] == 1 and 0.0 <= result["test_mean"]["accuracy"] <= 1.0


def test_hear_api_takes_a_mert2_checkpoint(thirty):
    model = mertkit.hear.load_model(str(thirty))
    audio = torch.from_numpy(0.1 * np.random.default_rng(1).standard_normal((2, model.sample_rate))).float()
    scene = mertkit.hear.get_scene_embeddings(audio, model)
    stamps_emb, stamps = mertkit.hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, model.scene_embedding_size)
    assert stamps_emb.shape[:2] == stamps.shape and stamps_emb.shape[-1] == model.timestamp_embedding_size
    assert torch.all(stamps[:, 1:] > stamps[:, :-1])
