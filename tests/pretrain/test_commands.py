"""`mert pretrain` and `mert export` as click commands."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

import mertkit
from mertkit.cli.export import export
from mertkit.cli.pretrain import pretrain
from pretrain_fixtures import tiny_config, write_labelled_corpus


def test_pretrain_resume_and_export_from_the_command_line(tmp_path):
    audio, labels = write_labelled_corpus(tmp_path, 4, seed=4)
    tiny_config(batch_size=2).save_json(tmp_path / "cfg.json")
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["--audio", str(audio), "--labels", str(labels), "--out", str(run), "--device", "cpu"]
    result = runner.invoke(pretrain, ["--config", str(tmp_path / "cfg.json"), *args,
                                      "--set", "total_updates=2", "--set", "warmup_updates=1", "--set", "ckpt_interval=1"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["total_updates"] == 2
    # resume reads RUN/config.json; a larger total_updates may be set
    result = runner.invoke(pretrain, [*args, "--resume", "--set", "total_updates=3"])
    assert result.exit_code == 0, result.output
    updates = [json.loads(line)["update"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert updates == [1, 2, 3]

    result = runner.invoke(export, [str(run), "-o", str(tmp_path / "hf"), "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "hf" / "pytorch_model.bin").exists()
    model = mertkit.load(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["do_normalize"] is False
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["_name_or_path"] == "hf"  # named after its folder
    with torch.no_grad():
        assert len(model(torch.randn(1, 8000)).hidden_states) == 3


def test_command_errors_are_messages_not_tracebacks(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    runner = CliRunner()
    base = ["--audio", str(audio), "--out", str(tmp_path / "run")]
    result = runner.invoke(pretrain, ["--config", "tiny", *base])
    assert result.exit_code == 2 and "--labels" in result.output
    result = runner.invoke(pretrain, ["--config", "tiny", *base, "--set", "lr=fast"])
    assert result.exit_code == 2 and "lr has the wrong type" in result.output
    result = runner.invoke(pretrain, base)
    assert result.exit_code == 2 and "--config is required" in result.output
    result = runner.invoke(pretrain, ["--config", "tiny", *base, "--set", "objective=data2vec"])
    assert result.exit_code == 1 and "no usable audio" in result.output
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(export, [str(tmp_path / "bogus.pt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "bogus.pt" in result.output
