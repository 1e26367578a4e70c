"""Provenance: outputs say which weights, dtype and normalisation made them; reuse and search
go by the weights' fingerprint, never by the model's name; the Ray engine loads weights as the
local one does."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mertkit.cli.app import main
from mertkit.extraction import provenance
from mertkit.extraction.engine import ExtractError, ExtractOptions
from mertkit.extraction.runner import load_features, load_for_extraction, run_extract
from outputs_fixtures import audio_folder, tiny_checkpoint

OPTIONS = ExtractOptions(window=0.5, batch_size=2, pool="mean")


def test_checkpoints_in_folders_of_the_same_name_never_reuse_each_other(tmp_path):
    audio = audio_folder(tmp_path / "audio", ("a.wav",))
    first = load_for_extraction(tiny_checkpoint(tmp_path / "one" / "mert", seed=0))
    second = load_for_extraction(tiny_checkpoint(tmp_path / "two" / "mert", seed=1))
    assert first.info.name == second.info.name  # what the old reuse check compared
    assert run_extract(first, [audio], tmp_path / "out", OPTIONS, progress=False).done
    report = run_extract(second, [audio], tmp_path / "out", OPTIONS, progress=False)
    assert report.done == [str(audio / "a.wav")] and not report.skipped
    _, meta = load_features(tmp_path / "out" / "a.wav.safetensors")
    assert meta["weights"] == provenance.weights_fingerprint(second) != provenance.weights_fingerprint(first)
    # The same weights copied elsewhere are the same model: reused.
    copy = shutil.copytree(tmp_path / "two" / "mert", tmp_path / "elsewhere" / "renamed")
    again = run_extract(load_for_extraction(copy), [audio], tmp_path / "out", OPTIONS, progress=False)
    assert again.skipped == [str(audio / "a.wav")]


def test_outputs_record_weights_compute_dtype_and_normalisation(tmp_path):
    audio = audio_folder(tmp_path / "audio", ("a.wav",))
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    model = load_for_extraction(checkpoint, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    options = ExtractOptions(window=0.5, pool="mean", dtype="bfloat16")
    assert run_extract(model, [audio], tmp_path / "out", options, progress=False).ok
    _, meta = load_features(tmp_path / "out" / "a.wav.safetensors")
    assert meta["weights"] == provenance.directory_fingerprint(checkpoint)
    assert (meta["dtype"], meta["do_normalize"]) == ("bfloat16", "false")
    assert meta["source"] == str((audio / "a.wav").resolve()) and meta["model_source"] == str(checkpoint.resolve())


def test_the_fingerprint_reads_each_file_once(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    reads = []
    real = provenance._hash
    monkeypatch.setattr(provenance, "_hash", lambda path: reads.append(path.name) or real(path))
    monkeypatch.setattr(provenance, "_memory_cache", {})
    first = provenance.directory_fingerprint(checkpoint)
    assert provenance.directory_fingerprint(checkpoint) == first
    assert sorted(reads) == sorted(["config.json", "preprocessor_config.json", "model.safetensors",
                                    "pytorch_model.bin"])
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, checkpoint / "pytorch_model.bin")
    assert provenance.directory_fingerprint(checkpoint) != first  # a changed file is read again


def test_search_embeds_with_the_local_checkpoint_the_store_records(tmp_path):
    pytest.importorskip("pyarrow")
    audio = audio_folder(tmp_path / "audio", ("a.wav", "b.wav", "c.wav"))
    checkpoint = tiny_checkpoint(tmp_path / "ckpt" / "my-model")
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", str(checkpoint), "--store",
                                       str(tmp_path / "s"), "--pool", "mean", "--window", "0.5", "--quiet",
                                       "--store-dtype", "float32"])
    assert result.exit_code == 0, result.output
    search = ["search", "--store", str(tmp_path / "s"), str(audio / "b.wav"), "-k", "2", "--json"]
    result = CliRunner().invoke(main, search)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["hits"]
    assert hits[0]["path"] == str((audio / "b.wav").resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    text = CliRunner().invoke(main, search[:-1])
    assert text.output.splitlines()[0] == "rank\tscore\tpath"
    # Moved away: the error says what to do; --model finds it again; other weights are refused.
    moved = shutil.move(checkpoint, tmp_path / "moved")
    lost = CliRunner().invoke(main, search)
    assert lost.exit_code == 1 and "--model" in lost.output and "Traceback" not in lost.output
    found = CliRunner().invoke(main, [*search, "--model", str(moved)])
    assert found.exit_code == 0 and json.loads(found.output)["hits"][0]["path"] == hits[0]["path"]
    other = tiny_checkpoint(tmp_path / "other", seed=3)
    refused = CliRunner().invoke(main, [*search, "--model", str(other)])
    assert refused.exit_code == 1 and "other weights than the store's" in refused.output


def test_model_for_store_refuses_a_store_without_a_model_record(tmp_path):
    from mertkit.store.parquet import StoreMeta

    meta = StoreMeta(model="unnamed", sample_rate=24000, frame_rate=75.0, hidden_size=32, num_layers=3)
    with pytest.raises(ExtractError, match="give --model"):
        provenance.model_for_store(meta)


def test_ray_actors_load_the_weights_as_the_local_engine_does(tmp_path):
    pytest.importorskip("ray")
    from mertkit.extraction.ray_engine import _decode_row, _Job, _ModelActor

    audio = audio_folder(tmp_path / "audio", ("a.wav",))
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    options = ExtractOptions(window=0.5, pool="mean", dtype="bfloat16")
    actor = _ModelActor(_Job(str(checkpoint), None, "cpu", options, 1, 24000))  # in-process: no cluster
    assert next(actor.extractor.model.parameters()).dtype == torch.bfloat16
    row = _decode_row({"path": "k", "source": bytes(audio / "a.wav"), "content_hash": "h"}, sample_rate=24000)
    out = actor({name: np.array([value], dtype=object) for name, value in row.items()})
    assert run_extract(load_for_extraction(checkpoint, dtype="bfloat16"), [audio], tmp_path / "out", options,
                       progress=False).ok
    local = load_features(tmp_path / "out" / "a.wav.safetensors")[0]["hidden_states"]
    np.testing.assert_array_equal(out["vectors"][0], local)


def test_ray_option_errors_are_one_line(tmp_path):
    pytest.importorskip("ray")
    from mertkit.extraction.ray_engine import RayEngineError, run_ray_extract

    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["extract", str(tmp_path), "--model", str(checkpoint), "--store",
                                       str(tmp_path / "s"), "--pool", "mean", "--engine", "ray", "--actors", "0"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # a usage error, no traceback
    assert "--actors" in result.output and "Traceback" not in result.output
    with pytest.raises(RayEngineError, match=r"^--actors must be >= 1, got 0 \(default: one per GPU"):
        run_ray_extract(str(checkpoint), [], str(tmp_path / "s"), OPTIONS, num_actors=0)


def test_ray_failures_become_one_line(monkeypatch):
    ray = pytest.importorskip("ray")
    from mertkit.extraction import ray_engine

    remote = ray.exceptions.RayError("task failed\nTraceback (most recent call last):\n  File x\n"
                                     "mertkit.models.checkpoint.CheckpointError: /m: no weights found")
    assert ray_engine._one_line(remote) == "mertkit.models.checkpoint.CheckpointError: /m: no weights found"
    assert issubclass(ray_engine.RayEngineError, ExtractError)  # the CLI prints it as one line
