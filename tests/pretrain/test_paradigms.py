"""MERT-v0 k-means labels and music2vec-style data2vec pre-training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from mertkit.pretrain.labels import LabelReader
from mertkit.pretrain.data2vec import Data2VecPretrainModel, ema_decay_at
from mertkit.pretrain.kmeans import KMeansLabeller, fit_kmeans, mel_filterbank, write_kmeans_labels
from mertkit.pretrain.trainer import train
from pretrain_fixtures import SR, tiny_config, write_corpus


def _two_tone_file(path, seconds=2.0, switch=0.25):
    """Alternating 220 Hz (A3) / 1568 Hz (G6) tones.

    Returns per 320-sample frame the tone (True = high) and whether the frame's 1024-sample
    analysis window straddles a switch (such frames hold a click and both tones).
    """
    t = np.arange(int(seconds * SR)) / SR
    high = (t // switch).astype(int) % 2 == 1
    wave = 0.5 * np.sin(2 * np.pi * np.where(high, 1568.0, 220.0) * t)
    sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
    starts = np.arange(0, t.size, 320)
    ends = np.minimum(starts + 1023, t.size - 1)
    return high[starts], high[starts] != high[ends]


def _purity(codes: np.ndarray, truth: np.ndarray) -> float:
    """Share of frames whose cluster's majority tone is their own tone."""
    right = sum(max(np.sum(truth[codes == c]), np.sum(~truth[codes == c])) for c in np.unique(codes))
    return right / codes.size


def test_mel_filters_peak_at_their_centres():
    bank = mel_filterbank(SR, 1024, n_mels=16)
    assert bank.shape == (16, 513) and np.all(bank.max(1) > 0.5)
    assert np.all(np.diff(bank.argmax(1)) > 0)  # centres rise with the band index


@pytest.mark.parametrize("features", ["mfcc", "logmel_chroma"])
def test_kmeans_labels_separate_two_timbres_and_feed_training(tmp_path, features):
    audio = tmp_path / "audio"
    audio.mkdir()
    tones = [_two_tone_file(audio / f"t{i}.wav") for i in range(4)]
    labeller = fit_kmeans(audio, n_clusters=3, features=features, seed=0)
    summary = write_kmeans_labels(audio, tmp_path / "labels", labeller)
    assert summary.written == 4 and not summary.failed
    reader = LabelReader(tmp_path / "labels")
    codes = np.concatenate([reader.labels_for(f"t{i}.wav")[0] for i in range(4)])
    high = np.concatenate([tone for tone, _ in tones])
    clean = ~np.concatenate([ambiguous for _, ambiguous in tones])
    assert _purity(codes[clean], high[clean]) > 0.97
    assert reader.settings["codebooks"] == 1 and reader.settings["codebook_size"] == 3
    labeller.save(tmp_path / "km.npz")
    again = KMeansLabeller.load(tmp_path / "km.npz")
    wav, _ = sf.read(audio / "t0.wav", dtype="float32")
    assert np.array_equal(again.codes(wav), labeller.codes(wav))
    cfg = tiny_config(n_codebooks=1, codebook_size=3, total_updates=2, warmup_updates=1, batch_size=2)
    train(cfg, audio, tmp_path / "labels", tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and len(log[0]["ce"]) == 1 and np.isfinite(log[-1]["loss"])


# ---------------------------------------------------------------------------------------
def _d2v_config(**changes):
    return tiny_config(objective="data2vec", d2v_top_k=2, **changes)


def test_data2vec_targets_are_instance_normed_top_layers_with_exact_padding():
    torch.manual_seed(0)
    model = Data2VecPretrainModel(_d2v_config()).eval()
    wave = torch.randn(2, 9000)
    lengths = torch.tensor([9000, 6000])
    batched = model.targets(wave, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model.teacher(wave[i : i + 1, :n])
        top = alone.hidden_states[-2:]
        ref = sum(F.instance_norm(h.transpose(1, 2)).transpose(1, 2) for h in top) / 2
        frames = ref.shape[1]
        assert torch.allclose(batched[i, :frames], ref[0], atol=1e-4)


def test_data2vec_ema_moves_the_teacher_towards_the_student():
    torch.manual_seed(0)
    cfg = _d2v_config(d2v_ema_decay=0.9, d2v_ema_end_decay=0.99, d2v_ema_anneal_updates=10)
    model = Data2VecPretrainModel(cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    model.after_update(5)
    decay = ema_decay_at(cfg, 5)
    assert decay == pytest.approx(0.945)
    student = dict(model.backbone.named_parameters())
    for name, p in model.teacher.named_parameters():
        assert torch.allclose(p, decay * before[name] + (1 - decay) * student[name])
    assert ema_decay_at(cfg, 50) == 0.99
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_data2vec_trains_without_labels_and_exports_the_student(tmp_path):
    audio = tmp_path / "audio"
    write_corpus(audio, 4, seed=2)
    cfg = _d2v_config(total_updates=3, warmup_updates=1, batch_size=2, penalty_weight=0.0)
    train(cfg, audio, None, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log] == [1, 2, 3] and all(np.isfinite(r["regression"]) for r in log)
    from mertkit.pretrain.export import export_checkpoint

    import mertkit

    loaded = mertkit.load(export_checkpoint(tmp_path / "run", tmp_path / "hf"))
    assert loaded.config.hidden_size == 64
