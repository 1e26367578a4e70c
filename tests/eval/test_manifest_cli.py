"""`mert manifest`: dataset folder -> manifest + task JSON, read back by read_manifest and mert probe."""
from __future__ import annotations

import json

from click.testing import CliRunner

from mertkit.cli.manifest import manifest
from mertkit.eval.datasets import TaskSpec, read_manifest


def fake_gtzan(root):
    splits = {"train": ["blues/blues.00000.wav", "rock/rock.00001.wav"], "valid": ["jazz/jazz.00002.wav"],
              "test": ["pop/pop.00003.wav"]}
    for split, names in splits.items():
        (root / f"{split}_filtered.txt").write_text("\n".join(names) + "\n")
        for name in names:
            audio = root / "genres_original" / name
            audio.parent.mkdir(parents=True, exist_ok=True)
            audio.write_bytes(b"RIFF")  # the adapter checks that files exist, not their contents
    return splits


def test_gtzan_manifest_round_trips(tmp_path):
    root = tmp_path / "GTZAN"
    root.mkdir()
    splits = fake_gtzan(root)
    out = tmp_path / "lists" / "gtzan.csv"
    result = CliRunner().invoke(manifest, ["--dataset", "gtzan", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 rows (train 2, valid 1, test 1); task gtzan (multiclass, 10 outputs)" in result.output
    task = TaskSpec.from_dict(json.loads((tmp_path / "lists" / "gtzan.task.json").read_text()))
    records = read_manifest(out, task)  # audio files resolved through the 'audio' column, and checked
    assert [r.path for r in records if r.split == "train"] == splits["train"]  # keys = `mert extract` names
    assert records[0].label == "blues" and records[0].audio_path.resolve() == (root / "genres_original" / splits["train"][0]).resolve()
    again = CliRunner().invoke(manifest, ["--dataset", "gtzan", str(root), "-o", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_bad_requests_are_one_line_errors(tmp_path):
    root = tmp_path / "GTZAN"
    root.mkdir()
    missing = CliRunner().invoke(manifest, ["--dataset", "gtzan", str(root), "-o", str(tmp_path / "m.csv")])
    assert missing.exit_code == 1 and "train_filtered.txt: split file not found" in missing.output
    vocal = CliRunner().invoke(manifest, ["--dataset", "vocalset", str(root), "-o", str(tmp_path / "m.csv")])
    assert vocal.exit_code == 2 and "--target" in vocal.output
    suffix = CliRunner().invoke(manifest, ["--dataset", "gtzan", str(root), "-o", str(tmp_path / "m.txt")])
    assert suffix.exit_code == 2 and ".csv or .jsonl" in suffix.output
