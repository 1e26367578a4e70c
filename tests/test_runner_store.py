"""`run_extract` / `mert extract` into the Parquet feature store: rows, skipping, SIGKILL resume, ray dispatch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mertkit
from audio_fixtures import write_array, write_tone
from mertkit.audio import load_audio
from mertkit.models.checkpoint import save_pretrained
from mertkit.cli.app import main
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions
from mertkit.models.hubert.model import MertModel
from mertkit.extraction.runner import StoreOptions, load_features, run_extract
from mertkit.store.parquet import FeatureStore, hash_file
from model_fixtures import tiny_config

pytest.importorskip("pyarrow")
SR = 24000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("ckpt") / "tiny",
                           do_normalize=False)


@pytest.fixture
def audio(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    write_tone(folder / "a.wav", seconds=2.3, sample_rate=44100, channels=2)
    write_tone(folder / "b.flac", seconds=1.2, sample_rate=24000, channels=1, freq=330)
    write_array(folder / "short.wav", np.zeros(80), 24000)
    return folder


OPTIONS = ExtractOptions(window=1.0, pool="mean", layers=(0, 2, 3), batch_size=4)


def test_store_rows_equal_the_per_file_output(model, audio, tmp_path):
    store = StoreOptions(tmp_path / "store", dtype="float32", split="train", rows_per_shard=2)
    report = run_extract(model, [audio], tmp_path / "out", OPTIONS, progress=False, store=store)
    assert sorted(report.done) == [str(audio / "a.wav"), str(audio / "b.flac")]
    assert [p for p, _ in report.failed] == [str(audio / "short.wav")]
    opened = mertkit.store.parquet.open(tmp_path / "store")
    assert sorted(opened.keys()) == sorted((str(audio / n), hash_file(audio / n)) for n in ("a.wav", "b.flac"))
    for layer_position, layer in enumerate(OPTIONS.layers):
        vectors, paths = opened.load(layer=layer, split="train")
        for vector, path in zip(vectors, paths):
            tensors, _ = load_features(tmp_path / "out" / (Path(path).name + ".safetensors"))
            np.testing.assert_array_equal(vector, tensors["hidden_states"][layer_position])
            # and independently of the runner: the in-memory extractor on the decoded file
            ref = Extractor(model, OPTIONS).extract(load_audio(path, SR)).hidden_states
            np.testing.assert_allclose(vector, ref[layer_position], atol=1e-5)
    rows = opened.rows(columns=["path", "level", "window_start", "window_end", "split"]).to_pylist()
    a_windows = [(r["window_start"], r["window_end"]) for r in rows if r["path"].endswith("a.wav") and r["level"] == "window"]
    samples = len(load_audio(audio / "a.wav", SR))
    hop = 74 * 320  # samples: the seam-free default, the 74 whole frames of a 1 s window
    assert a_windows == [(0.0, 1.0), (hop / SR, (hop + SR) / SR), (2 * hop / SR, samples / SR)]
    track = [r for r in rows if r["path"].endswith("a.wav") and r["level"] == "track"]
    assert len(track) == 1 and track[0]["window_end"] == pytest.approx(samples / SR)
    assert {r["split"] for r in rows} == {"train"}
    window_vectors, window_paths = opened.load(layer=2, level="window")
    tensors, _ = load_features(tmp_path / "out" / "a.wav.safetensors")
    a_rows = [i for i, p in enumerate(window_paths) if p.endswith("a.wav")]
    np.testing.assert_array_equal(window_vectors[a_rows], tensors["window_pooled"][:, 1])


def test_rerun_skips_done_work_and_fills_what_is_missing(model, audio, tmp_path):
    store = StoreOptions(tmp_path / "store", dtype="float16")
    run_extract(model, [audio / "a.wav", audio / "b.flac"], tmp_path / "out", OPTIONS, progress=False, store=store)
    again = run_extract(model, [audio / "a.wav", audio / "b.flac"], tmp_path / "out", OPTIONS, progress=False,
                        store=store)
    assert again.done == [] and len(again.skipped) == 2
    # the per-file output lost: only that file is redone, and the store keeps one row for it
    (tmp_path / "out" / "b.flac.safetensors").unlink()
    third = run_extract(model, [audio / "a.wav", audio / "b.flac"], tmp_path / "out", OPTIONS, progress=False,
                        store=store)
    assert third.done == [str(audio / "b.flac")] and (tmp_path / "out" / "b.flac.safetensors").is_file()
    assert len(FeatureStore(tmp_path / "store")) == 2
    # a new store next to complete per-file outputs is filled
    fresh = run_extract(model, [audio / "a.wav"], tmp_path / "out", OPTIONS, progress=False,
                        store=StoreOptions(tmp_path / "store2"))
    assert fresh.done == [str(audio / "a.wav")] and len(FeatureStore(tmp_path / "store2")) == 1
    # store only, no per-file output
    only = run_extract(model, [audio / "b.flac"], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "s3"))
    assert only.done == [str(audio / "b.flac")]
    half = FeatureStore(tmp_path / "s3").load(layer=0)[0]
    full = FeatureStore(tmp_path / "store").load(layer=0)
    np.testing.assert_allclose(half[0], full[0][full[1].index(str(audio / "b.flac"))], atol=1e-3)


def test_store_refuses_frame_level_and_missing_targets(model, audio, tmp_path):
    with pytest.raises(ExtractError, match="pooled"):
        run_extract(model, [audio], None, ExtractOptions(pool="none"), store=StoreOptions(tmp_path / "s"))
    with pytest.raises(ExtractError, match="nowhere to write"):
        run_extract(model, [audio], None, OPTIONS)
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", "x"])
    assert result.exit_code != 0 and "--out DIR, --store DIR" in result.output


def test_missing_file_is_reported_in_store_mode(model, audio, tmp_path):
    report = run_extract(model, [audio / "a.wav", audio / "gone.wav"], None, OPTIONS, progress=False,
                         store=StoreOptions(tmp_path / "s"))
    assert report.done == [str(audio / "a.wav")]
    assert report.failed[0][0] == str(audio / "gone.wav") and report.failed[0][1] == "file not found"


# ----------------------------------------------------------------------------- SIGKILL resume

TRACKS = 24


def _cli_process(ckpt: Path, audio: Path, store: Path) -> subprocess.Popen:
    env = dict(os.environ)
    src = str(Path(mertkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    args = ["extract", str(audio), "--model", str(ckpt), "--store", str(store), "--pool", "mean", "--window", "0.1",
            "--store-dtype", "float32", "--shard-rows", "11", "--batch-size", "4", "--quiet"]
    return subprocess.Popen([sys.executable, "-m", "mertkit.cli.app", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, store: Path, shards: int) -> None:
    deadline = time.monotonic() + 120
    while len(list(store.glob("part-*.parquet"))) < shards:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard was committed in time"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    process.stderr.close()


def _check_store(store: Path) -> dict[str, np.ndarray]:
    """Each track at most once, with all its window rows; path -> track vector of layer 3."""
    opened = FeatureStore(store)
    vectors, paths = opened.load(layer=3)
    assert len(paths) == len(set(paths))
    window_paths = opened.paths(level="window")
    # 1 s in 0.1 s windows of 7 frames, one every 7 * 320 samples: 11 windows
    assert sorted(window_paths) == sorted(p for p in paths for _ in range(11))
    return dict(zip(paths, vectors))


@pytest.mark.slow  # three `mert` processes (each imports torch): ~13 s idle, more on a busy machine
def test_sigkilled_cli_run_is_finished_by_a_rerun(ckpt, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(TRACKS):
        write_tone(audio / f"{i:02d}.wav", seconds=1.0, sample_rate=24000, channels=1, freq=200 + 37 * i)
    reference = tmp_path / "reference"
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", str(ckpt), "--store", str(reference),
                                       "--pool", "mean", "--window", "0.1", "--store-dtype", "float32", "--quiet"])
    assert result.exit_code == 0, result.output
    expected = _check_store(reference)
    assert len(expected) == TRACKS

    store = tmp_path / "store"
    _kill_when(_cli_process(ckpt, audio, store), store, shards=1)
    first = _check_store(store)
    _kill_when(_cli_process(ckpt, audio, store), store, shards=len(list(store.glob("part-*.parquet"))) + 2)
    second = _check_store(store)
    assert len(first) <= len(second) < TRACKS, "the kills must interrupt the job"
    finish = _cli_process(ckpt, audio, store)
    assert finish.wait(timeout=120) == 0, finish.stderr.read().decode()
    finish.stderr.close()
    final = _check_store(store)
    assert sorted(final) == sorted(expected)
    for path, vector in final.items():
        np.testing.assert_allclose(vector, expected[path], atol=1e-5)
    assert not list(store.glob(".tmp-*"))


# ----------------------------------------------------------------------------- --engine ray

def test_engine_ray_dispatches_to_the_ray_engine(ckpt, audio, tmp_path, monkeypatch):
    calls = []

    def fake_run(model_name, inputs, store_dir, options, *, address, num_actors, device, revision, split, store_dtype,
                 max_duration, progress):
        from mertkit.extraction.runner import RunReport

        calls.append((model_name, inputs, store_dir, options, address, num_actors, device, revision, split, store_dtype,
                      max_duration))
        return RunReport(done=list(inputs))

    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    monkeypatch.setitem(sys.modules, "mertkit.extraction.ray_engine", types.SimpleNamespace(run_ray_extract=fake_run))
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", str(ckpt), "--store", str(tmp_path / "s"),
                                       "--pool", "max", "--engine", "ray", "--address", "auto", "--actors", "3",
                                       "--split", "train", "--store-dtype", "float32", "--max-duration", "60"])
    assert result.exit_code == 0, result.output
    ((name, inputs, store_dir, options, address, actors, device, revision, split, store_dtype, limit),) = calls
    assert (split, store_dtype, limit) == ("train", "float32", 60.0)
    assert (name, inputs, store_dir) == (str(ckpt), [str(audio)], str(tmp_path / "s"))
    assert options.pool == "max" and (address, actors, device, revision) == ("auto", 3, "cpu", None)


def test_engine_ray_without_ray_is_a_clean_error(ckpt, audio, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", str(ckpt), "--store", str(tmp_path / "s"),
                                       "--pool", "mean", "--engine", "ray"])
    assert result.exit_code != 0 and "pip install 'mertkit[ray]'" in result.output
    assert "Traceback" not in result.output
    no_store = CliRunner().invoke(main, ["extract", str(audio), "--model", str(ckpt), "--out", str(tmp_path / "o"),
                                         "--engine", "ray"])
    assert no_store.exit_code != 0 and "--store" in no_store.output


def test_cli_with_workers_writes_files_and_store(ckpt, audio, tmp_path):
    result = CliRunner().invoke(main, ["extract", str(audio / "a.wav"), str(audio / "b.flac"), "--model", str(ckpt),
                                       "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s"),
                                       "--pool", "mean", "--window", "1", "--workers", "1", "--split", "test",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 extracted" in result.output
    vectors, paths = FeatureStore(tmp_path / "s").load(layer=1, split="test")
    for vector, path in zip(vectors, paths):
        tensors, _ = load_features(tmp_path / "out" / (Path(path).name + ".safetensors"))
        np.testing.assert_allclose(vector, tensors["hidden_states"][1], atol=2e-3, rtol=2e-3)  # float16 store
