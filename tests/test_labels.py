"""Label directories: writing, resuming, failure records, validation and reading.

The teacher is a tiny random EnCodec (real strides: 320 samples per frame) saved as a
Hugging Face style directory; the corpus is a few synthetic wav files.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mertkit.audio import load_audio
from mertkit.cli.labels import labels as labels_command
from mertkit.pretrain.labels import (
    MANIFEST_NAME,
    LabelReader,
    LabelsError,
    LabelValidationError,
    label_problems,
    read_manifest,
    validate_labels,
    write_labels,
)
from mertkit.pretrain.teachers.encodec import EncodecConfig, EncodecEncoder, EncodecTeacher, load_encodec

TINY_HF_CONFIG = {
    "model_type": "encodec", "sampling_rate": 24000, "audio_channels": 1, "num_filters": 4,
    "hidden_size": 16, "codebook_size": 1024, "num_lstm_layers": 1, "upsampling_ratios": [8, 5, 4, 2],
    "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0], "use_causal_conv": True, "norm_type": "weight_norm",
}
GOOD_FILES = {"a.wav": (24000, 1.0), "sub/b.flac": (24000, 0.55), "sub/deeper/c.wav": (16000, 0.7)}


def _random_tiny_encodec() -> EncodecEncoder:
    """Random weights; codebooks drawn from the model's own latents so codes vary."""
    gen = torch.Generator().manual_seed(0)
    model = EncodecEncoder(EncodecConfig.from_hf_dict(TINY_HF_CONFIG))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
        train = torch.randn(4, 8000, generator=gen) * torch.linspace(0, 1, 8000)
        residual = model.encoder(train.unsqueeze(1)).transpose(1, 2).reshape(-1, 16)
        for vq in model.quantizer.layers:
            picks = torch.randint(0, residual.shape[0], (1024,), generator=gen)
            vq.codebook.embed.copy_(residual[picks] + 0.01 * torch.randn(1024, 16, generator=gen))
            residual = residual - vq.codebook.embed[vq.codebook.nearest(residual)]
    return model


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("encodec_tiny")
    state = {k: v.contiguous() for k, v in _random_tiny_encodec().state_dict().items()}
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    return directory


@pytest.fixture(scope="module")
def teacher(weights_dir):
    return EncodecTeacher(load_encodec(weights_dir), bandwidth=6.0)


def _write_corpus(root, *, broken=False):
    rng = np.random.default_rng(0)
    for name, (rate, seconds) in GOOD_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(rate * seconds)
        sf.write(path, (0.3 * rng.standard_normal(n) * np.linspace(0.2, 1, n)).astype(np.float32), rate)
    (root / ".hidden.wav").write_bytes(b"ignored")
    (root / "notes.txt").write_text("not audio")
    if broken:
        (root / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    return root


@pytest.fixture
def corpus(tmp_path):
    return _write_corpus(tmp_path / "audio")


class CountingTeacher:
    """Delegates to a real teacher and counts how often it is asked for codes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name, self.bandwidth = inner.name, inner.bandwidth
        self.sample_rate, self.hop_length = inner.sample_rate, inner.hop_length
        self.num_codebooks, self.codebook_size = inner.num_codebooks, inner.codebook_size

    def codes(self, wav):
        self.calls += 1
        return self.inner.codes(wav)


def test_write_then_read(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    summary = write_labels(corpus, out, teacher)
    assert (summary.written, summary.skipped, summary.failed) == (3, 0, [])
    reader = LabelReader(out)
    assert sorted(reader) == sorted(GOOD_FILES) and len(reader) == 3
    for name, (rate, seconds) in GOOD_FILES.items():
        wav = load_audio(corpus / name, 24000)
        assert wav.shape[0] == round(seconds * 24000)  # resampled to the teacher's rate
        got = reader.labels_for(name)
        assert got.dtype == np.int64 and got.shape == (8, math.ceil(wav.shape[0] / 320))
        direct = teacher.model.encode_codes(torch.from_numpy(wav)[None])[0].numpy()
        np.testing.assert_array_equal(got, direct)
        assert (out / "codes" / f"{name}.npy").is_file()
    record = read_manifest(out)["sub/deeper/c.wav"]
    assert (record.status, record.num_samples, record.num_frames) == ("ok", 16800, 53)
    assert (record.teacher, record.bandwidth, record.codebooks, record.codebook_size) == ("encodec_24khz", 6.0, 8, 1024)
    assert validate_labels(out, audio_dir=corpus).files_ok == 3


def test_second_run_writes_nothing(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "codes").rglob("*.npy")}
    manifest = (out / MANIFEST_NAME).read_text()
    counting = CountingTeacher(teacher)
    summary = write_labels(corpus, out, counting)
    assert (summary.written, summary.skipped, counting.calls) == (0, 3, 0)
    assert {p: p.stat().st_mtime_ns for p in (out / "codes").rglob("*.npy")} == stamps
    assert (out / MANIFEST_NAME).read_text() == manifest
    assert not list(out.rglob("*.tmp*"))


def test_changed_or_deleted_labels_are_redone(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    sf.write(corpus / "a.wav", np.random.default_rng(9).standard_normal(12345).astype(np.float32) * 0.2, 24000)
    (out / "codes" / "sub" / "b.flac.npy").unlink()
    counting = CountingTeacher(teacher)
    summary = write_labels(corpus, out, counting)
    assert (summary.written, summary.skipped, counting.calls) == (2, 1, 2)
    assert LabelReader(out).labels_for("a.wav").shape == (8, math.ceil(12345 / 320))


class CollapsingTeacher(CountingTeacher):
    """Gives one file ("sub/b.flac", 0.55 s) the recipe's failure: one code everywhere."""

    def codes(self, wav):
        codes = super().codes(wav)
        return np.zeros_like(codes) if wav.shape[0] == 13200 else codes


def test_failures_are_recorded_and_the_rest_finishes(tmp_path, teacher):
    corpus = _write_corpus(tmp_path / "audio", broken=True)
    out = tmp_path / "labels"
    summary = write_labels(corpus, out, CollapsingTeacher(teacher))
    assert summary.written == 2
    failed = dict(summary.failed)
    assert set(failed) == {"broken.wav", "sub/b.flac"}
    assert "broken.wav" in failed["broken.wav"]
    assert "degenerate" in failed["sub/b.flac"]
    records = read_manifest(out)
    assert records["broken.wav"].status == "failed" and records["broken.wav"].error == failed["broken.wav"]
    assert not (out / "codes" / "sub" / "b.flac.npy").exists()
    reader = LabelReader(out)
    with pytest.raises(LabelsError, match="broken.wav: labelling failed"):
        reader.labels_for("broken.wav")
    with pytest.raises(LabelsError, match="nope.wav: not in"):
        reader.labels_for("nope.wav")
    assert validate_labels(out).files_failed == 2


def test_torn_manifest_tail_is_tolerated_on_resume(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    with open(out / MANIFEST_NAME, "a") as manifest:
        manifest.write('{"audio": "a.wav", "stat')  # a run killed mid-append
    with pytest.raises(LabelsError, match=MANIFEST_NAME + ":4"):
        validate_labels(out)
    summary = write_labels(corpus, out, teacher)
    assert (summary.written, summary.skipped) == (0, 3)
    assert len((out / MANIFEST_NAME).read_text().splitlines()) == 3
    validate_labels(out)


def test_other_teacher_settings_are_refused(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    with pytest.raises(LabelsError, match="other teacher settings"):
        write_labels(corpus, out, EncodecTeacher(teacher.model, bandwidth=3.0))


def test_rates_must_match_the_teacher(corpus, tmp_path, teacher):
    with pytest.raises(LabelsError, match="16000 Hz"):
        write_labels(corpus, tmp_path / "l", teacher, sample_rate=16000, frame_rate=50)
    with pytest.raises(LabelsError, match="hop 320"):
        write_labels(corpus, tmp_path / "l", teacher, frame_rate=50)


def _rewrite_label(out, name, change):
    path = out / "codes" / f"{name}.npy"
    np.save(path, change(np.load(path)))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c[:7], r"shape \(7, 75\), expected \(8, 75\)"),
        (lambda c: c[:, :-1], r"shape \(8, 74\), expected \(8, 75\)"),
        (lambda c: c.astype(np.int32), "dtype int32"),
        (lambda c: np.where(np.arange(c.shape[1]) == 3, 1024, c).astype(np.int16), "codes outside 0..1023"),
        (lambda c: np.where(np.arange(c.shape[1]) == 3, -1, c).astype(np.int16), "codes outside 0..1023"),
        (lambda c: np.full_like(c, 17), "degenerate labels"),
    ],
)
def test_validation_catches_bad_label_files(corpus, tmp_path, teacher, change, message):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    _rewrite_label(out, "a.wav", change)
    with pytest.raises(LabelValidationError, match="a.wav: " + message):
        validate_labels(out)


def test_validation_catches_missing_files_and_wrong_lengths(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    (out / "codes" / "sub" / "b.flac.npy").unlink()
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        if record["audio"] == "a.wav":
            record["num_samples"] += 320  # one frame more than the label file holds
    (out / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(LabelValidationError) as caught:
        validate_labels(out, audio_dir=corpus)
    text = str(caught.value)
    assert "sub/b.flac: label file" in text and "is missing" in text
    assert "a.wav: 75 frames recorded for 24320 samples, expected 76" in text
    assert "a.wav: audio has 24000 samples" in text


def test_validation_catches_a_corpus_wide_collapsed_codebook(corpus, tmp_path, teacher):
    out = tmp_path / "labels"
    write_labels(corpus, out, teacher)
    for name in GOOD_FILES:
        def collapse_first(codes):
            codes = codes.copy()
            codes[0] = 5
            return codes
        _rewrite_label(out, name, collapse_first)
    with pytest.raises(LabelValidationError, match="codebook 0 uses a single code"):
        validate_labels(out)


def test_label_problems_accepts_good_arrays():
    rng = np.random.default_rng(0)
    good = rng.integers(0, 1024, size=(8, 10)).astype(np.int16)
    assert label_problems(good, codebooks=8, codebook_size=1024, num_frames=10, name="x") == []
    one_frame = np.zeros((8, 1), dtype=np.int16)  # a single frame cannot be called collapsed
    assert label_problems(one_frame, codebooks=8, codebook_size=1024, num_frames=1, name="x") == []


def test_labels_command(weights_dir, tmp_path):
    corpus = _write_corpus(tmp_path / "audio")
    runner = CliRunner()
    args = ["--teacher", "encodec", "--weights", str(weights_dir), str(corpus), "-o", str(tmp_path / "out"),
            "--min-perplexity", "1", "--min-usage", "0"]  # a random tiny EnCodec: codes may be few
    result = runner.invoke(labels_command, args)
    assert result.exit_code == 0, result.output
    assert "3 written, 0 already done, 0 failed" in result.output
    result = runner.invoke(labels_command, args)
    assert result.exit_code == 0 and "0 written, 3 already done" in result.output
    (corpus / "broken.wav").write_bytes(b"garbage")
    result = runner.invoke(labels_command, args)
    assert result.exit_code == 1
    assert "1 failed" in result.output and "FAILED broken.wav" in result.output


def test_labels_command_reports_bad_weights(tmp_path):
    corpus = _write_corpus(tmp_path / "audio")
    (tmp_path / "bad.th").write_bytes(b"nope")
    args = ["--weights", str(tmp_path / "bad.th"), str(corpus), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(labels_command, args)
    assert result.exit_code != 0 and "bad.th" in result.output and "Traceback" not in result.output


def test_output_inside_input_is_not_walked(tmp_path, teacher):
    corpus = _write_corpus(tmp_path / "audio")
    out = corpus / "labels_out"
    write_labels(corpus, out, teacher)
    sf.write(out / "stray.wav", np.zeros(100, dtype=np.float32), 24000)
    summary = write_labels(corpus, out, teacher)
    assert summary.total == 3
    assert os.path.isfile(out / MANIFEST_NAME)
