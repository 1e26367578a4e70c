"""`mert extract` end to end on synthesised audio of several formats, rates and channel counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from audio_fixtures import truncate, write_array, write_m4a, write_mp3, write_text, write_tone
from mertkit.models.checkpoint import save_pretrained
from mertkit.cli.app import main
from mertkit.models.hubert.model import MertModel
from mertkit.extraction.runner import load_features
from model_fixtures import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("ckpt") / "tiny", do_normalize=False)


@pytest.fixture
def audio_dir(tmp_path):
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    write_tone(d / "a.wav", seconds=1.2, sample_rate=44100, channels=2)
    write_tone(d / "sub" / "b.flac", seconds=0.7, sample_rate=48000, channels=1, subtype="PCM_24")
    write_tone(d / "c.ogg", seconds=1.0, sample_rate=22050, channels=2, subtype="VORBIS")
    write_mp3(d / "d.mp3", seconds=1.0, sample_rate=44100, channels=2)
    write_m4a(d / "e.m4a", seconds=1.0, sample_rate=48000, channels=2)
    write_tone(d / "f.wav", seconds=0.5, sample_rate=16000, channels=8, subtype="FLOAT")
    return d


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_extract_folder_all_formats(ckpt, audio_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("extract", audio_dir, "--model", ckpt, "--out", out, "--window", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert "6 extracted" in result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert files == ["a.wav.safetensors", "c.ogg.safetensors", "d.mp3.safetensors", "e.m4a.safetensors",
                     "f.wav.safetensors", "sub/b.flac.safetensors"]
    tensors, meta = load_features(out / "a.wav.safetensors")
    # 1 s window: (24000-400)//320+1 = 74 frames; the next starts 74 * 320 = 23 680 samples in:
    # (28800-23680-400)//320+1 = 15, the 89 frames of one pass over the whole 1.2 s
    assert tensors["hidden_states"].shape == (4, 74 + 15, 32)
    np.testing.assert_allclose(np.diff(tensors["timestamps"]), 320 / 24000, rtol=1e-5)  # no gap at the seam
    assert meta["sample_rate"] == "24000" and json.loads(meta["layers"]) == [0, 1, 2, 3]
    assert meta["pooling"] == "none" and meta["window"] == "1.0" and meta["source"].endswith("a.wav")
    assert len(tensors["timestamps"]) == tensors["hidden_states"].shape[1]
    assert all(np.isfinite(load_features(out / f)[0]["hidden_states"]).all() for f in files)


def test_pooled_layers_and_rerun_skips(ckpt, audio_dir, tmp_path):
    out = tmp_path / "out"
    args = ("extract", audio_dir / "a.wav", audio_dir / "f.wav", "--model", ckpt, "--out", out,
            "--layers", "0,3", "--pool", "mean", "--quiet")
    assert _run(*args).exit_code == 0
    tensors, meta = load_features(out / "a.wav.safetensors")
    assert tensors["hidden_states"].shape == (2, 32) and meta["pooling"] == "mean"
    stamp = (out / "a.wav.safetensors").stat().st_mtime_ns
    again = _run(*args)
    assert "0 extracted, 2 already done" in again.output
    assert (out / "a.wav.safetensors").stat().st_mtime_ns == stamp
    # a different request recomputes
    assert "2 extracted" in _run(*args[:-2], "max", "--quiet").output


def test_bad_files_are_reported_and_others_finish(ckpt, audio_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    write_text(bad / "notaudio.mp3")
    write_tone(bad / "full.flac", seconds=1.0, sample_rate=44100, channels=1)
    truncate(bad / "full.flac", bad / "truncated.flac", keep_bytes=60)
    write_array(bad / "short.wav", np.zeros(100), 24000)  # 100 samples < one frame
    nan = np.zeros(24000)
    nan[100] = np.nan
    write_array(bad / "nan.wav", nan, 24000, subtype="FLOAT")
    write_tone(bad / "ok.wav", seconds=0.5, sample_rate=24000, channels=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(bad), "--model", str(ckpt), "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    for name in ("empty.wav", "notaudio.mp3", "truncated.flac", "short.wav", "nan.wav"):
        assert f"FAILED {bad / name}" in result.output, result.output
    assert "2 extracted" in result.output  # ok.wav and full.flac
    assert (out / "ok.wav.safetensors").is_file() and (out / "full.flac.safetensors").is_file()
    assert not list(out.rglob(".tmp-*"))
    assert "Traceback" not in result.output


def test_missing_model_is_a_clean_error(tmp_path, audio_dir):
    result = CliRunner().invoke(main, ["extract", str(audio_dir), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "neither a local directory" in result.output


def test_help_lists_commands():
    result = _run("--help")
    assert "extract" in result.output and "demo" in result.output
