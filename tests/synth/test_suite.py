"""Tests for the synthetic MIDI benchmark suite and its `mert bench-suite synth` command."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pretty_midi")
pytest.importorskip("tinysoundfont")
soundfile = pytest.importorskip("soundfile")

from mertkit.synth.render import RenderError  # noqa: E402
from mertkit.synth.suite import TASKS, SuiteError, build_suite, build_task, default_clips, split_counts  # noqa: E402
from mertkit.pretrain.teachers.cqt import CQT, CQTConfig  # noqa: E402

torch.set_num_threads(2)
CLIPS = 8
CLIP_SECONDS = {"pitch": 1.5, "instrument": 3.0, "key": 6.0, "tempo": 8.0, "pitch_class": 1.5}
# Krumhansl-Kessler key profiles (probe-tone ratings), an independent key finder.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@pytest.fixture(scope="module")
def suites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suites")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_suite(root / name, seed=seed, clips_per_task=CLIPS)
    return {name: root / name for name in "abc"}


@pytest.fixture(scope="module")
def chroma_cqt() -> CQT:
    # C2 (65.4 Hz) upwards, one bin per semitone: bin k has pitch class k % 12.
    return CQT(CQTConfig(fmin=65.41, n_bins=72, bins_per_octave=12))


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _chroma(cqt: CQT, audio: np.ndarray) -> np.ndarray:
    energy = cqt(torch.from_numpy(audio)).mean(-1).numpy()
    chroma = np.zeros(12)
    np.add.at(chroma, np.arange(len(energy)) % 12, energy)
    return chroma


@pytest.mark.parametrize("task", TASKS)
def test_manifest_is_complete_with_valid_labels_and_splits(suites: dict[str, Path], task: str) -> None:
    folder = suites["a"] / task
    info = json.loads((folder / "task.json").read_text())
    rows = _rows(folder)
    assert info["name"] == task and info["num_clips"] == CLIPS == len(rows)
    assert info["clip_seconds"] == CLIP_SECONDS[task] and info["sample_rate"] == 24000
    assert {row["split"] for row in rows} == {"train", "valid", "test"}
    assert sorted(p.name for p in (folder / "clips").glob("*.wav")) == sorted(Path(r["path"]).name for r in rows)
    for row in rows:
        audio, rate = soundfile.read(folder / row["path"], dtype="float32")
        assert rate == 24000 and audio.shape == (int(CLIP_SECONDS[task] * 24000),)
        assert np.isfinite(audio).all() and np.sqrt(np.mean(audio**2)) > 1e-3
        if info["kind"] == "multiclass":
            assert row["label"] in info["labels"]
        else:
            assert 70.0 <= float(row["label"]) <= 180.0
    assert info["kind"] == ("beat" if task == "tempo" else "multiclass")
    assert len(info["labels"]) == {"pitch": 61, "instrument": 15, "key": 24, "tempo": 0, "pitch_class": 12}[task]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(suites: dict[str, Path]) -> None:
    for task in TASKS:
        same, other = _digest(suites["a"] / task), _digest(suites["b"] / task)
        assert same == other, task
        different = _digest(suites["c"] / task)
        assert same.keys() == different.keys()
        assert same["clips/000000.wav"] != different["clips/000000.wav"], task


def test_beat_files_follow_the_tempo_and_the_audio(suites: dict[str, Path]) -> None:
    folder = suites["a"] / "tempo"
    for row in _rows(folder):
        beats = np.loadtxt(folder / row["beats"], ndmin=1)
        period = 60.0 / float(row["label"])
        assert 0.0 <= beats[0] < period + 1e-6 and beats[-1] < 8.0 <= beats[-1] + period + 1e-6
        np.testing.assert_allclose(np.diff(beats), period, atol=2e-6)
        # A drum hit starts at every beat: the 25 ms after it are louder than the 25 ms before.
        audio, rate = soundfile.read(folder / row["path"], dtype="float64")
        window = int(0.025 * rate)
        onsets = [int(round(t * rate)) for t in beats if t * rate > window]
        louder = [np.sum(audio[s:s + window] ** 2) > 2 * np.sum(audio[s - window:s] ** 2) for s in onsets]
        assert np.mean(louder) > 0.9


@pytest.mark.parametrize("task", ["pitch", "pitch_class"])
def test_pitch_labels_match_the_audio_pitch_class(suites: dict[str, Path], chroma_cqt: CQT, task: str) -> None:
    folder = suites["a"] / task
    names = json.loads((folder / "task.json").read_text())["labels"]
    hits = []
    for row in _rows(folder):
        audio, _ = soundfile.read(folder / row["path"], dtype="float32")
        chroma = int(row["label"]) % 12 if task == "pitch" else names.index(row["label"])
        hits.append(int(np.argmax(_chroma(chroma_cqt, audio))) == chroma)
    assert len(hits) == CLIPS and np.mean(hits) >= 0.75


def test_default_sizes_give_pitch_enough_clips_per_class() -> None:
    # 61 pitch classes x 12 clips: 8 train, 2 valid, 2 test per class once stratified
    assert default_clips("pitch") == 732 and default_clips("pitch_class") == default_clips("key") == 360
    assert split_counts(732) == {"train": 512, "valid": 110, "test": 110}


def test_key_labels_agree_with_a_krumhansl_key_finder(tmp_path: Path, chroma_cqt: CQT) -> None:
    folder = build_task(tmp_path, "key", seed=3, num_clips=24)
    rows = _rows(folder)
    assert sorted(row["label"] for row in rows) == sorted(json.loads((folder / "task.json").read_text())["labels"])
    ranks = []
    for row in rows:
        audio, _ = soundfile.read(folder / row["path"], dtype="float32")
        chroma = np.log1p(10 * _chroma(chroma_cqt, audio))
        scores = {
            f"{NOTE_NAMES[tonic]} {mode}": np.corrcoef(chroma, np.roll(profile, tonic))[0, 1]
            for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE))
            for tonic in range(12)
        }
        ranks.append(sorted(scores, key=scores.get, reverse=True).index(row["label"]))
    ranks = np.array(ranks)
    # Chance is 1 in 24 for the top key; the finder's near misses are related keys.
    assert np.sum(ranks == 0) >= 10 and np.sum(ranks < 3) >= 18, sorted(ranks)


def test_labels_are_balanced_and_splits_stratified(tmp_path: Path) -> None:
    folder = build_task(tmp_path, "instrument", seed=0, num_clips=45)
    rows = _rows(folder)
    counts = {label: sum(r["label"] == label for r in rows) for label in {r["label"] for r in rows}}
    assert len(counts) == 15 and set(counts.values()) == {3}
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (31, 7, 7)
    assert {r["label"] for r in rows if r["split"] == "train"} == set(counts)  # every class is trained on


def test_split_counts() -> None:
    assert split_counts(360) == {"train": 252, "valid": 54, "test": 54}
    assert split_counts(3) == {"train": 1, "valid": 1, "test": 1}
    with pytest.raises(SuiteError, match="at least 3"):
        split_counts(2)


def test_bad_requests_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="unknown"):
        build_suite(tmp_path, tasks=("genre",))
    with pytest.raises(SuiteError, match="at least 3"):
        build_suite(tmp_path, clips_per_task=2, tasks=("tempo",))
    build_suite(tmp_path, clips_per_task=3, tasks=("tempo",))
    with pytest.raises(SuiteError, match="not empty"):
        build_suite(tmp_path, clips_per_task=3, tasks=("tempo",))
    build_suite(tmp_path, clips_per_task=4, tasks=("tempo",), overwrite=True)
    assert len(list((tmp_path / "tempo" / "clips").glob("*.wav"))) == 4


def test_cli_builds_a_suite(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mertkit.cli.bench_suite import bench_suite

    result = CliRunner().invoke(bench_suite, ["synth", "-o", str(tmp_path / "out"), "--clips", "3", "--task", "tempo", "--seed", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "out" / "tempo")) == 3
    assert not (tmp_path / "out" / "pitch").exists()
    again = CliRunner().invoke(bench_suite, ["synth", "--out", str(tmp_path / "out"), "--clips", "3", "--task", "tempo"])
    assert again.exit_code != 0 and "not empty" in again.output


def test_task_json_records_the_soundfont_by_name_and_content(suites: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from mertkit.synth.render import default_soundfont

    bundled = Path(default_soundfont())
    recorded = json.loads((suites["a"] / "pitch" / "task.json").read_text())["soundfont"]
    assert recorded == {"file": "TimGM6mb.sf2", "sha256": hashlib.sha256(bundled.read_bytes()).hexdigest()}
    copy = tmp_path / "Renamed.sf2"
    shutil.copyfile(bundled, copy)
    build_task(tmp_path / "suite", "pitch_class", num_clips=3, soundfont=str(copy))
    renamed = json.loads((tmp_path / "suite" / "pitch_class" / "task.json").read_text())["soundfont"]
    assert renamed == {"file": "Renamed.sf2", "sha256": recorded["sha256"]}
    with pytest.raises(RenderError, match="missing.sf2: SoundFont file not found"):
        build_task(tmp_path / "other", "pitch", num_clips=3, soundfont=str(tmp_path / "missing.sf2"))
    assert not (tmp_path / "other").exists()
