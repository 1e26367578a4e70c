"""The offline teachers of `mert labels`: BEST-RQ, k-means on log-mel, and mertkit's own codec."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mertkit.cli.labels import labels as labels_command
from mertkit.pretrain.diagnostics import codebook_stats, label_health_problems
from mertkit.pretrain.labels import LabelReader, frames_for_samples, write_labels
from mertkit.pretrain.teachers.bestrq import BestRQError, BestRQTeacher, fit_bestrq
from mertkit.pretrain.teachers.codec import Codec, CodecConfig, CodecTeacher, codec_loss, train_codec
from pretrain_fixtures import SR, note_sequence, write_corpus


@pytest.fixture
def corpus(tmp_path):
    write_corpus(tmp_path / "audio", 3, seed=1)
    return tmp_path / "audio"


@pytest.mark.parametrize("samples", [320 * 50, 320 * 50 + 1, 7777])
def test_bestrq_codes_are_frame_aligned_and_deterministic(corpus, tmp_path, samples):
    teacher = fit_bestrq(corpus, num_codebooks=4, codebook_size=64, seed=5)
    wave = note_sequence(samples / SR + 0.01, np.random.default_rng(0))[:samples]
    codes = teacher.codes(wave)
    assert codes.shape == (4, frames_for_samples(samples, 320)) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < 64
    assert np.array_equal(fit_bestrq(corpus, num_codebooks=4, codebook_size=64, seed=5).codes(wave), codes)
    assert not np.array_equal(fit_bestrq(corpus, num_codebooks=4, codebook_size=64, seed=6).codes(wave), codes)
    teacher.save(tmp_path / "t.npz")
    assert np.array_equal(BestRQTeacher.load(tmp_path / "t.npz").codes(wave), codes)


def test_bestrq_codes_follow_the_audio(corpus):
    """A frame's code depends on its own audio: changing the second half keeps the first half's codes."""
    teacher = fit_bestrq(corpus, num_codebooks=2, codebook_size=64, seed=0)
    rng = np.random.default_rng(3)
    a, b = note_sequence(1.0, rng), note_sequence(1.0, rng)
    mixed = np.concatenate([a[:12000], b[12000:]])
    ca, cm = teacher.codes(a), teacher.codes(mixed)
    assert np.array_equal(ca[:, :30], cm[:, :30])  # frames whose context lies in the shared half
    assert (ca[:, 40:] != cm[:, 40:]).mean() > 0.3
    assert len(np.unique(ca[0])) > 5


def test_bestrq_refuses_a_foreign_file(tmp_path):
    np.savez(tmp_path / "x.npz", something=np.zeros(3))
    with pytest.raises(BestRQError, match="x.npz"):
        BestRQTeacher.load(tmp_path / "x.npz")


def test_codec_frames_and_determinism():
    codec = Codec(CodecConfig(codebooks=3, codebook_size=32, channels=8, dim=16)).eval()
    codec.quantizer.embed.normal_()  # an untrained codec has no codebooks yet
    teacher = CodecTeacher(codec)
    for samples in (320 * 20, 320 * 20 + 5, 1000):
        wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
        codes = teacher.codes(wave)
        assert codes.shape == (3, frames_for_samples(samples, 320)) and codes.dtype == np.int16
        assert np.array_equal(teacher.codes(wave), codes)


def test_codec_training_lowers_its_loss_and_keeps_codes_alive(tmp_path):
    rng = np.random.default_rng(0)
    waves = [note_sequence(1.0, rng) for _ in range(4)]
    cfg = CodecConfig(codebooks=2, codebook_size=16, channels=8, dim=8, stft_sizes=[256, 512])
    codec, history = train_codec(waves, cfg, steps=20, batch=2, crop_seconds=0.25, lr=3e-3, seed=0,
                                 refresh_crops=8)
    first, last = np.mean([h["loss"] for h in history[:3]]), np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.9 * first, (first, last)
    teacher = CodecTeacher(codec)
    codes = np.concatenate([teacher.codes(w) for w in waves], axis=1)
    stats = codebook_stats([codes], 16)
    assert all(s.used >= 4 for s in stats), stats  # dead-code restarts keep codebooks in use
    teacher.save(tmp_path / "c.pt")
    assert np.array_equal(CodecTeacher.load(tmp_path / "c.pt").codes(waves[0]), teacher.codes(waves[0]))
    torch.manual_seed(0)
    loss, stats = codec_loss(codec.train(), torch.from_numpy(waves[0][None, :4800]))
    assert np.isfinite(stats["loss"]) and loss.requires_grad


def test_health_check_flags_degenerate_codebooks():
    rng = np.random.default_rng(0)
    healthy = rng.integers(0, 64, size=(1, 5000))
    collapsed = np.where(rng.random((1, 5000)) < 0.99, 3, rng.integers(0, 64, size=(1, 5000)))
    stats = codebook_stats([np.concatenate([healthy, collapsed])], 64)
    assert stats[0].used == 64 and stats[0].perplexity > 50
    problems = label_health_problems(stats, min_usage=0.05, min_perplexity=4.0)
    assert len(problems) == 1 and problems[0].startswith("codebook 1 ")
    # usage counts against the frames there are: 10 frames can use at most 10 codes
    short = codebook_stats([np.arange(10)[None]], 1024)
    assert label_health_problems(short, min_usage=0.5, min_perplexity=4.0) == []


@pytest.mark.parametrize("teacher,extra,codebooks", [
    ("bestrq", ["--codebooks", "3", "--codebook-size", "32"], 3),
    ("kmeans", ["--codebook-size", "8", "--features", "logmel"], 1),
])
def test_labels_command_fits_and_reuses_offline_teachers(corpus, tmp_path, teacher, extra, codebooks):
    out = tmp_path / "labels"
    args = [str(corpus), "-o", str(out), "--teacher", teacher, *extra]
    result = CliRunner().invoke(labels_command, args)
    assert result.exit_code == 0, result.output
    reader = LabelReader(out)
    assert len(reader) == 3 and reader.settings["codebooks"] == codebooks
    report = json.loads((out / "label_report.json").read_text())
    assert len(report["codebooks"]) == codebooks and report["codebooks"][0]["used"] > 1
    first = reader.labels_for("clip_000.wav")
    (out / "codes" / "clip_000.wav.npy").unlink()  # relabel one file: the saved teacher is reused
    result = CliRunner().invoke(labels_command, args)
    assert result.exit_code == 0 and "1 written, 2 already done" in result.output
    assert np.array_equal(LabelReader(out).labels_for("clip_000.wav"), first)


def test_labels_command_refuses_degenerate_labels(corpus, tmp_path):
    args = [str(corpus), "-o", str(tmp_path / "l"), "--teacher", "bestrq", "--codebooks", "2",
            "--codebook-size", "16", "--min-perplexity", "1000"]
    result = CliRunner().invoke(labels_command, args)
    assert result.exit_code == 1 and "degenerate labels: codebook 0 " in result.output
    assert "Traceback" not in result.output


def test_labels_command_codec_needs_a_teacher(corpus, tmp_path):
    result = CliRunner().invoke(labels_command, [str(corpus), "-o", str(tmp_path / "l"), "--teacher", "codec"])
    assert result.exit_code == 2 and "--train-teacher" in result.output
