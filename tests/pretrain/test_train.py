"""The training loop: accumulation / DDP equal one big batch, exact resume after SIGKILL,
export round trip, learning on synthetic music, and the learning-rate schedule."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mertkit
from mertkit.pretrain.labels import LabelReader
from mertkit.pretrain.diagnostics import load_snapshot
from mertkit.pretrain.export import backbone_from_checkpoint, export_checkpoint
from mertkit.pretrain.trainer import PretrainError, lr_at, read_checkpoint, train
from pretrain_fixtures import tiny_config, write_labelled_corpus

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # some files shorter than the 1 s crop, so batches carry padding
    return write_labelled_corpus(tmp_path_factory.mktemp("corpus"), 12, seconds=(0.6, 1.6), seed=1)


def _state(run: Path) -> dict:
    return read_checkpoint(run / "checkpoints" / "checkpoint_last.pt")["model"]


def _assert_same_update(run_a: Path, run_b: Path) -> None:
    """Same weights after the step (1e-6), and the same gradients in Adam's first moment.

    Adam's first step moves every weight by about lr * sign(grad); for gradients that are
    zero in exact arithmetic (e.g. key biases) it amplifies rounding noise up to lr * |g| / eps,
    so the weights are compared with lr small enough for 1e-6, and the moments, which are
    (1 - beta1) * grad, relative to each tensor's scale.
    """
    a, b = (read_checkpoint(run / "checkpoints" / "checkpoint_last.pt") for run in (run_a, run_b))
    _assert_same_weights(a["model"], b["model"], atol=1e-6)
    for index, state in a["optimizer"]["state"].items():
        m_a, m_b = state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"]
        scale = float(m_a.abs().max())
        if scale > 1e-7:
            assert float((m_a - m_b).abs().max()) <= 1e-4 * scale, index


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=atol), name


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------
def test_gradient_accumulation_equals_one_big_batch(corpus, tmp_path):
    audio, labels = corpus
    common = dict(mixture_prob=0.0, total_updates=1, warmup_updates=0, lr=5e-4)
    train(tiny_config(batch_size=4, **common), audio, labels, tmp_path / "big")
    train(tiny_config(batch_size=2, grad_accum=2, **common), audio, labels, tmp_path / "accum")
    _assert_same_update(tmp_path / "big", tmp_path / "accum")
    big, accum = _log(tmp_path / "big")[0], _log(tmp_path / "accum")[0]
    assert accum["grad_norm"] == pytest.approx(big["grad_norm"], rel=1e-5)
    assert accum["loss"] == pytest.approx(big["loss"], rel=1e-5)
    # and the update really moved the weights
    init = tiny_config(batch_size=4, **common)
    torch.manual_seed(init.seed)
    from mertkit.pretrain.mlm_model import MertPretrainModel

    fresh = MertPretrainModel(init).state_dict()
    moved = max(float((fresh[k] - v).abs().max()) for k, v in _state(tmp_path / "big").items())
    assert moved > 1e-4 and moved < 1e-3  # about lr: one Adam step


def test_two_process_ddp_equals_one_process_with_the_combined_batch(corpus, tmp_path):
    audio, labels = corpus
    common = dict(mixture_prob=0.0, total_updates=1, warmup_updates=0, lr=5e-4)
    tiny_config(batch_size=2, **common).save_json(tmp_path / "ddp.json")
    # --standalone: a rendezvous on a free localhost port chosen by torchrun itself
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mertkit.pretrain.trainer", str(tmp_path / "ddp.json"), str(audio), str(labels), str(tmp_path / "ddp")]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-2000:]
    train(tiny_config(batch_size=4, **common), audio, labels, tmp_path / "single")
    _assert_same_update(tmp_path / "ddp", tmp_path / "single")
    ddp, single = _log(tmp_path / "ddp")[0], _log(tmp_path / "single")[0]
    assert ddp["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert ddp["accuracy"] == single["accuracy"] and ddp["masked_fraction"] == single["masked_fraction"]


# ---------------------------------------------------------------------------------------
def test_resume_after_sigkill_reproduces_the_loss_curve(corpus, tmp_path):
    audio, labels = corpus
    cfg = tiny_config(total_updates=24, ckpt_interval=4, batch_size=2, mixture_prob=0.5,
                      model={**tiny_config().model, "hidden_dropout": 0.1, "layerdrop": 0.2})
    cfg.save_json(tmp_path / "cfg.json")

    def command(run: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mertkit.pretrain.trainer", str(tmp_path / "cfg.json"), str(audio), str(labels),
                str(tmp_path / run), *extra]

    reference = subprocess.run(command("reference"), env=_env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    victim = subprocess.Popen(command("killed"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "checkpoints" / "checkpoint_last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint(last)["position"]["update"]
    assert killed_at < 24

    resumed = subprocess.run(command("killed", "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_log, res_log = _log(tmp_path / "reference"), _log(tmp_path / "killed")
    assert [r["update"] for r in res_log] == list(range(1, 25))
    assert [r["loss"] for r in res_log] == [r["loss"] for r in ref_log]
    assert [r["accuracy"] for r in res_log] == [r["accuracy"] for r in ref_log]
    _assert_same_weights(_state(tmp_path / "killed"), _state(tmp_path / "reference"), atol=0)


def test_resume_refuses_a_changed_config(corpus, tmp_path):
    audio, labels = corpus
    train(tiny_config(total_updates=2, warmup_updates=1, mixture_prob=0.0), audio, labels, tmp_path / "run")
    with pytest.raises(PretrainError, match="changed config: lr changed"):
        train(tiny_config(total_updates=20, warmup_updates=1, mixture_prob=0.0, lr=1e-2), audio, labels, tmp_path / "run", resume=True)
    with pytest.raises(PretrainError, match="nothing to resume"):
        train(tiny_config(), audio, labels, tmp_path / "empty", resume=True)


# ---------------------------------------------------------------------------------------
def test_export_round_trip_is_exact(corpus, tmp_path):
    audio, labels = corpus
    train(tiny_config(total_updates=2, warmup_updates=1), audio, labels, tmp_path / "run")
    exported = export_checkpoint(tmp_path / "run", tmp_path / "hf")
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "preprocessor_config.json", "pytorch_model.bin", "model.safetensors"} <= names
    trained = backbone_from_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt")
    loaded = mertkit.load(exported)
    assert json.loads((exported / "config.json").read_text())["hidden_size"] == 64
    wave = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        a, b = trained(wave, lengths), loaded(wave, lengths)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    # the legacy .bin alone reads back to the same tensors, weight_g / weight_v included
    from mertkit.models.checkpoint import read_weight_file

    legacy = read_weight_file(exported / "pytorch_model.bin")
    assert "encoder.pos_conv_embed.conv.weight_g" in legacy
    _assert_same_weights(legacy, loaded.state_dict(), atol=0)


# ---------------------------------------------------------------------------------------
def test_learning_rate_schedule():
    cfg = tiny_config(lr=1e-3, end_lr=1e-5, warmup_updates=4, total_updates=14, lr_decay_power=2.0)
    assert [lr_at(cfg, k) for k in (1, 2, 4)] == pytest.approx([2.5e-4, 5e-4, 1e-3])
    for k in range(5, 15):
        remaining = 1 - (k - 1 - 4) / 10
        assert lr_at(cfg, k) == pytest.approx(1e-5 + (1e-3 - 1e-5) * remaining**2)
    assert lr_at(cfg, 100) == pytest.approx(1e-5)


@pytest.mark.slow
def test_masked_prediction_learns_on_synthetic_music(tmp_path):
    audio, labels = write_labelled_corpus(tmp_path, 32, seconds=(1.2, 2.0), seed=5)
    cfg = tiny_config(batch_size=8, mixture_prob=0.0, feature_grad_mult=1.0, lr=3e-3, total_updates=200)
    torch.set_num_threads(2)
    train(cfg, audio, labels, tmp_path / "run")
    log = _log(tmp_path / "run")
    reader = LabelReader(labels)
    energy = np.concatenate([reader.labels_for(rel)[1] for rel in reader])
    majority = np.bincount(energy).max() / energy.size  # best label-blind guess
    early = np.mean([r["accuracy"][1] for r in log[:10]])
    late = np.mean([r["accuracy"][1] for r in log[-30:]])
    assert late > majority + 0.1 and late > early + 0.2, (early, late, majority)
    assert np.mean([r["loss"] for r in log[-30:]]) < np.mean([r["loss"] for r in log[:10]]) - 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_updates_run(corpus, tmp_path, precision):
    audio, labels = corpus
    train(tiny_config(precision=precision, total_updates=2, warmup_updates=1, batch_size=2), audio, labels, tmp_path / "run")
    log = _log(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in log)
    assert (log[0]["loss_scale"] is not None) == (precision == "fp16")


@pytest.mark.dispatch
@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16(corpus, tmp_path, monkeypatch, caplog, native):
    # bf16 autocast on an AVX2 CPU ran the shipped recipe 16x slower than fp32: "auto" must
    # not pick it there, and asking for bf16 there must say so
    import dataclasses
    from mertkit.models import kernels
    fake = dataclasses.replace(kernels.cpu_capabilities(), bf16_native=native)
    monkeypatch.setattr(kernels, "cpu_capabilities", lambda: fake)
    monkeypatch.setattr(kernels, "_warned", set())
    audio, labels = corpus
    common = dict(total_updates=1, warmup_updates=1, batch_size=2, log_interval=1)
    train(tiny_config(precision="auto", **common), audio, labels, tmp_path / "auto")
    assert [r["precision"] for r in _log(tmp_path / "auto")] == ["bf16" if native else "fp32"]
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["precision"] == "auto"
    caplog.clear()
    train(tiny_config(precision="bf16", **common), audio, labels, tmp_path / "bf16")
    assert [r["precision"] for r in _log(tmp_path / "bf16")] == ["bf16"]
    slow = [r.getMessage() for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(slow) == (0 if native else 1), slow


def test_loader_workers_give_the_same_run_and_old_runs_are_not_overwritten(corpus, tmp_path):
    audio, labels = corpus
    common = dict(total_updates=3, warmup_updates=1, batch_size=2)
    train(tiny_config(**common), audio, labels, tmp_path / "main")
    train(tiny_config(num_workers=1, **common), audio, labels, tmp_path / "workers")
    assert [r["loss"] for r in _log(tmp_path / "main")] == [r["loss"] for r in _log(tmp_path / "workers")]
    with pytest.raises(PretrainError, match="already holds"):
        train(tiny_config(**common), audio, labels, tmp_path / "main")


def test_init_from_a_run_starts_from_every_weight_of_its_last_checkpoint(corpus, tmp_path):
    audio, labels = corpus
    train(tiny_config(total_updates=2, warmup_updates=1, batch_size=2), audio, labels, tmp_path / "first")
    second = tiny_config(total_updates=1, warmup_updates=0, batch_size=2, snapshot_fractions=[0.0],
                         init_from=str(tmp_path / "first"))
    train(second, audio, labels, tmp_path / "second")
    (snapshot,) = (tmp_path / "second" / "snapshots").glob("*.pt")
    _, start, update = load_snapshot(snapshot)
    assert update == 0
    _assert_same_weights(start.state_dict(), _state(tmp_path / "first"), atol=0)  # heads and code embeddings too
    assert [r["update"] for r in _log(tmp_path / "second")] == [1]  # a new schedule from update 0
    with pytest.raises(PretrainError, match=r"init_from .*first.*label_embs_concat"):
        train(tiny_config(total_updates=1, warmup_updates=0, batch_size=2, final_dim=24,
                          init_from=str(tmp_path / "first")), audio, labels, tmp_path / "third")


def test_init_from_loads_a_released_checkpoint_strictly(tmp_path):
    from mertkit.models.checkpoint import CheckpointError, save_pretrained
    from mertkit.models.hubert.model import MertModel
    from mertkit.pretrain.mlm_model import MertPretrainModel
    from mertkit.pretrain.trainer import load_released_backbone

    cfg = tiny_config()
    released = MertModel(cfg.mert_config())
    save_pretrained(released, tmp_path / "released")
    model = MertPretrainModel(cfg)
    load_released_backbone(model, str(tmp_path / "released"))
    _assert_same_weights(model.backbone.state_dict(), released.state_dict(), atol=0)
    wider = MertPretrainModel(tiny_config(model={**cfg.model, "intermediate_size": 96}))
    with pytest.raises(PretrainError, match="intermediate_size"):
        load_released_backbone(wider, str(tmp_path / "released"))
    (tmp_path / "released" / "model.safetensors").unlink()
    state = torch.load(tmp_path / "released" / "pytorch_model.bin", weights_only=True)
    state.pop("masked_spec_embed")
    torch.save(state, tmp_path / "released" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing tensors: masked_spec_embed"):
        load_released_backbone(model, str(tmp_path / "released"))
