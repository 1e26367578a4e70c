"""Learning diagnostics: label statistics, gradient shares, snapshots and probe curves."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from mertkit.cli.pretrain_diagnose import pretrain_diagnose
from mertkit.pretrain.diagnostics import (
    PROBE_MAX_ITER, code_information, codebook_stats, curve_change, gradient_shares, load_snapshot, logistic_accuracy,
    mutual_information_bits, snapshot_paths,
)
from mertkit.pretrain.trainer import train
from pretrain_fixtures import SR, tiny_config, write_labelled_corpus


def test_codebook_stats_match_hand_counts():
    codes = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])
    first, second = codebook_stats([codes[:, :2], codes[:, 2:]], 4)
    assert (first.used, first.frames, first.perplexity, first.top_share) == (2, 4, pytest.approx(2.0), 0.5)
    assert (second.used, second.entropy_bits, second.perplexity) == (1, 0.0, 1.0)


def test_logistic_probe_reports_a_fit_that_hit_the_iteration_cap_without_warning(recwarn, monkeypatch):
    from mertkit.pretrain import diagnostics

    rng = np.random.default_rng(0)
    splits = {"train": np.arange(0, 60), "valid": np.arange(60, 80), "test": np.arange(80, 100)}
    y = np.repeat([0, 1, 2, 3], 25)[rng.permutation(100)]
    x = np.concatenate([np.eye(4)[y] * 3.0, rng.normal(0, 1, (100, 20))], axis=1) + rng.normal(0, 0.3, (100, 24))
    valid, test, converged, correct = logistic_accuracy(x, y, splits)
    assert converged and valid > 0.9 and test > 0.9 and PROBE_MAX_ITER == 200
    assert correct.shape == (20,) and correct.mean() == test
    monkeypatch.setattr(diagnostics, "PROBE_MAX_ITER", 2)  # no lbfgs fit of this data converges in 2
    converged = logistic_accuracy(x, y, splits).converged
    assert not converged
    assert not [w for w in recwarn if type(w.message).__name__ == "ConvergenceWarning"]


def test_a_curve_rises_or_falls_only_when_the_paired_interval_excludes_zero():
    def point(correct):
        return {"test_correct": list(correct)}

    half = np.array([1, 0] * 50)
    better = half.copy()
    better[1:60:2] = 1  # 30 more of the 100 test clips right, none lost
    rise = curve_change(point(half), point(better))
    assert rise["verdict"] == "rises" and rise["difference"] == pytest.approx(0.3) and rise["interval"][0] > 0
    assert curve_change(point(better), point(half))["verdict"] == "falls"
    # the same accuracy on other clips: no change, however different the clips
    swapped = curve_change(point(half), point(1 - half))
    assert swapped["difference"] == 0.0 and swapped["verdict"] == "within noise"
    # two clips gained of 100: a point-by-point reading would call it a rise
    two = half.copy()
    two[[1, 3]] = 1
    assert curve_change(point(half), point(two))["verdict"] == "within noise"


def test_mutual_information_bounds():
    labels = np.repeat(np.arange(4), 100)
    assert mutual_information_bits(labels, labels) == pytest.approx(2.0)
    assert mutual_information_bits(np.zeros(400, dtype=int), labels) == pytest.approx(0.0)


def _tone_suite(root, per_class=6):
    """A fake suite: 'pitch' clips are pure tones (MIDI 60..63), 'key' clips are louder/softer noise."""
    rng = np.random.default_rng(0)
    for task, labels in (("pitch", ["60", "61", "62", "63"]), ("key", ["A major", "B minor"])):
        folder = root / task / "clips"
        folder.mkdir(parents=True)
        rows = []
        for i in range(per_class * len(labels)):
            label = labels[i % len(labels)]
            split = ("train", "train", "train", "train", "valid", "test")[i // len(labels)]
            t = np.arange(int(0.5 * SR)) / SR
            if task == "pitch":
                wave = 0.5 * np.sin(2 * np.pi * 440 * 2 ** ((int(label) - 69) / 12) * t)
            else:
                wave = (0.5 if "major" in label else 0.05) * rng.standard_normal(t.size)
            sf.write(folder / f"{i:03d}.wav", wave.astype(np.float32), SR)
            rows.append({"path": f"clips/{i:03d}.wav", "label": label, "split": split})
        with open(root / task / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def test_code_information_sees_pitch_in_pitch_codes(tmp_path):
    suite = _tone_suite(tmp_path / "suite")

    def codes_of(path):  # codebook 0 = the clip's pitch (from the file's tone), codebook 1 = constant
        wave, _ = sf.read(path)
        peak = int(np.abs(np.fft.rfft(wave)).argmax())
        frames = len(wave) // 320
        return np.stack([np.full(frames, peak % 7), np.zeros(frames, dtype=int)])

    report = code_information(codes_of, suite, 8, tasks=["pitch"])
    informative, constant = report["pitch"]["codebooks"]
    assert informative["mi_bits"] == pytest.approx(2.0) and informative["mi_bits_shuffled"] < 1.0
    assert constant["mi_bits"] == pytest.approx(0.0)
    assert informative["probe_converged"] is True


@pytest.fixture
def tiny_run(tmp_path):
    audio, labels = write_labelled_corpus(tmp_path, 8)
    cfg = tiny_config(total_updates=4, warmup_updates=1, snapshot_fractions=[0.0, 0.5, 1.0])
    train(cfg, audio, labels, tmp_path / "run")
    return tmp_path, cfg


def test_snapshots_at_fractions_and_gradient_shares(tiny_run):
    root, cfg = tiny_run
    assert [u for u, _ in snapshot_paths(root / "run")] == [0, 2, 4]
    _, model, update = load_snapshot(snapshot_paths(root / "run")[-1][1])
    assert update == 4
    from mertkit.pretrain.data import PretrainDataset

    batch = PretrainDataset(root / "audio", root / "labels", cfg).batch(0, 0, 0, 1)
    shares = gradient_shares(model.train(), [batch], cfg)
    terms = shares["terms"]
    assert set(terms) == {"ce_0", "ce_1", "penalty", "cqt"}
    assert sum(t["share"] for t in terms.values()) == pytest.approx(1.0)
    assert terms["penalty"]["encoder_grad_norm"] == 0.0  # the penalty only reaches the conv front-end
    assert all(t["grad_norm"] > 0 for t in terms.values())
    assert -1.0 <= shares["cos_mlm_cqt"] <= 1.0


def test_pretrain_diagnose_command(tiny_run):
    root, _ = tiny_run
    suite = _tone_suite(root / "suite")
    args = [str(root / "run"), "--suite", str(suite), "--audio", str(root / "audio"), "--labels", str(root / "labels"),
            "--batches", "1", "-o", str(root / "diag")]
    result = CliRunner().invoke(pretrain_diagnose, args)
    assert result.exit_code == 0, result.output
    report = json.loads((root / "diag" / "diagnostics.json").read_text())
    points = report["probe_curve"]["points"]
    assert [p["update"] for p in points] == [0, 2, 4]
    assert set(report["probe_curve"]["tasks"]) == {"pitch", "pitch_class", "key"}
    assert all(0.0 <= p["key"]["test_accuracy"] <= 1.0 for p in points)
    assert set(report["gradient_shares"]) == {"0", "2", "4"} and len(report["labels"]) == 2
    assert (root / "diag" / "probe_curve.png").stat().st_size > 1000
    change = report["probe_curve"]["change"]
    assert set(change) == set(report["probe_curve"]["tasks"])
    for task, moved in change.items():
        assert (moved["from_update"], moved["to_update"]) == (0, 4)
        assert moved["difference"] == pytest.approx(points[-1][task]["test_accuracy"] - points[0][task]["test_accuracy"])
        assert moved["verdict"] in ("rises", "falls", "within noise")
    assert "update 0 -> 4: pitch " in result.output


def test_pretrain_diagnose_on_chosen_snapshots_and_tasks(tiny_run):
    root, _ = tiny_run
    suite = _tone_suite(root / "suite")
    common = [str(root / "run"), "--suite", str(suite), "-o", str(root / "diag")]
    result = CliRunner().invoke(pretrain_diagnose, [*common, "--tasks", "pitch", "--updates", "0,4",
                                                    "--audio", str(root / "audio"), "--labels", str(root / "labels")])
    assert result.exit_code == 0, result.output
    report = json.loads((root / "diag" / "diagnostics.json").read_text())
    assert [p["update"] for p in report["probe_curve"]["points"]] == [0, 4]
    assert report["probe_curve"]["tasks"] == ["pitch"] and set(report["probe_curve"]["points"][1]) == {"update", "fraction", "pitch"}
    assert set(report["gradient_shares"]) == {"0", "4"}
    assert "update 0 -> 4: pitch " in result.output and "pitch_class" not in result.output

    for extra, message in ((["--updates", "0,3"], "no snapshot at update 3 (it has 0, 2, 4)"),
                           (["--tasks", "tempo"], "unknown task tempo; the probe curve has pitch, pitch_class"),
                           (["--tasks", "instrument"], "no instrument task (render it with `mert bench-suite`)")):
        result = CliRunner().invoke(pretrain_diagnose, [*common, *extra])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(pretrain_diagnose, [str(root / "run"), "--labels", str(root / "labels"), "--tasks", "pitch"])
    assert result.exit_code == 2 and "give --suite too" in result.output


def test_pretrain_diagnose_without_snapshots_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(pretrain_diagnose, [str(tmp_path / "run"), "--suite", str(tmp_path)])
    assert result.exit_code == 1 and "no snapshots" in result.output and "Traceback" not in result.output


def test_a_snapshot_exports_like_a_checkpoint(tiny_run, tmp_path):
    """Any point of the probe curve can be exported and loaded: the snapshot's backbone, exactly."""
    import mertkit
    from mertkit.pretrain.export import ExportError, export_checkpoint

    root, _ = tiny_run
    update, path = snapshot_paths(root / "run")[1]
    _, model, _ = load_snapshot(path)
    loaded = mertkit.load(export_checkpoint(path, tmp_path / f"at-{update}", formats=("safetensors",)))
    wave = torch.randn(1, 16000)
    with torch.no_grad():
        expected, got = model.backbone(wave).hidden_states, loaded(wave).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    torch.save({"format": "something-else", "model": {}}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="other.pt: not a mertkit pre-training checkpoint or snapshot"):
        export_checkpoint(tmp_path / "other.pt", tmp_path / "x")


def test_the_initial_weights_are_rebuilt_from_the_config_alone(tiny_run):
    """Update 0 of a probe curve survives its run: `initial_model(cfg)` is snapshot 0, exactly."""
    from mertkit.pretrain.trainer import initial_model

    root, _ = tiny_run
    cfg, snapshot, _ = load_snapshot(snapshot_paths(root / "run")[0][1])
    torch.manual_seed(12345)  # whatever the global stream was, the rebuild does not depend on it
    rebuilt = initial_model(cfg).state_dict()
    assert rebuilt.keys() == snapshot.state_dict().keys()
    assert all(torch.equal(rebuilt[k], v) for k, v in snapshot.state_dict().items())
    _, later, _ = load_snapshot(snapshot_paths(root / "run")[-1][1])
    assert not all(torch.equal(rebuilt[k], v) for k, v in later.state_dict().items())


def test_pooled_states_in_batches_equal_one_clip_at_a_time():
    """Equal-length runs of waves are batched (no padding): each clip's pooled states are the
    ones it gets alone, in input order, whatever the mix of lengths."""
    from mertkit.pretrain.diagnostics import pooled_states_of_waves
    from mertkit.pretrain.trainer import initial_model

    backbone = initial_model(tiny_config()).backbone.eval()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (SR, SR, SR, SR // 2, SR, SR)]
    with torch.no_grad():
        alone = pooled_states_of_waves(backbone, waves, batch_size=1)
        batched = pooled_states_of_waves(backbone, waves, batch_size=2)
    assert batched.shape == alone.shape and batched.shape[0] == len(waves)
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone[0], alone[1])  # different clips, different states: order is checked
