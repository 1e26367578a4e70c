"""Manifests and MARBLE dataset adapters on tiny fixture trees laid out like the real datasets."""
import hashlib
import json

import numpy as np
import pytest

from mertkit.eval import datasets
from mertkit.eval.datasets import DatasetError, TaskSpec


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ----------------------------------------------------------------------------- manifests

TAGS = TaskSpec("tags", "multilabel", 3, labels=("rock", "piano", "male"))


def test_csv_and_jsonl_manifests_agree(tmp_path):
    for split in ("train", "valid", "test"):
        touch(tmp_path / "audio" / f"{split}.wav")
    (tmp_path / "m.csv").write_text(
        "path,split,labels,start,end\n"
        "audio/train.wav,train,rock;piano,,\n"
        "audio/valid.wav,valid,,1.5,3\n"
        "audio/test.wav,test,male,,\n"
    )
    rows = [
        {"path": "audio/train.wav", "split": "train", "labels": ["rock", "piano"]},
        {"path": "audio/valid.wav", "split": "valid", "labels": [], "start": 1.5, "end": 3},
        {"path": "audio/test.wav", "split": "test", "labels": ["male"]},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_csv = datasets.read_manifest(tmp_path / "m.csv", TAGS)
    from_jsonl = datasets.read_manifest(tmp_path / "m.jsonl", TAGS)
    assert from_csv == from_jsonl
    assert from_csv[0].label == ("rock", "piano") and from_csv[1].start == 1.5
    np.testing.assert_array_equal(datasets.encode_labels(from_csv, TAGS), [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    # Round trip through write_manifest.
    datasets.write_manifest(from_csv, tmp_path / "again.csv", TAGS)
    assert datasets.read_manifest(tmp_path / "again.csv", TAGS) == from_csv


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.wav,train,jazz\nb.wav,valid,rock\nc.wav,test,rock\n", "'jazz' is not in the task's label set"),
        ("a.wav,train,rock\nb.wav,valid,rock\n", "split 'test' is empty"),
        ("a.wav,train,rock\nb.wav,valid,rock\nc.wav,dev,rock\n", "line 4: split must be one of"),
        ("a.wav,train,rock,extra\nb.wav,valid,rock\nc.wav,test,rock\n", "line 2: wrong number of columns"),
        ("a.wav,train,rock\nb.wav,valid,rock\nmissing.wav,test,rock\n", "missing.wav not found"),
    ],
)
def test_manifest_errors_name_file_and_row(tmp_path, body, message):
    for name in ("a.wav", "b.wav", "c.wav"):
        touch(tmp_path / name)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split,label\n" + body)
    task = TaskSpec("genre", "multiclass", 2, labels=("rock", "pop"))
    with pytest.raises(DatasetError, match="m.csv") as info:
        datasets.read_manifest(manifest, task)
    assert message in str(info.value)


def test_beat_manifest_and_beat_file(tmp_path):
    task = TaskSpec("beat", "beat", 1)
    lines = []
    for split in ("train", "valid", "test"):
        touch(tmp_path / f"{split}.wav")
        (tmp_path / f"{split}.beats").write_text("0.5 1\n1.0\t2\n\n1.5 3\n")
        lines.append(f"{split}.wav,{split},{split}.beats")
    (tmp_path / "m.csv").write_text("path,split,beats\n" + "\n".join(lines) + "\n")
    records = datasets.read_manifest(tmp_path / "m.csv", task)
    np.testing.assert_allclose(datasets.load_beat_times(records[0].beats_path), [0.5, 1.0, 1.5])
    (tmp_path / "bad.beats").write_text("0.5\nabc\n")
    with pytest.raises(DatasetError, match="bad.beats: line 2"):
        datasets.load_beat_times(tmp_path / "bad.beats")


def test_task_spec_validation():
    with pytest.raises(DatasetError, match="metric"):
        TaskSpec("x", "multiclass", 2, metric="r2")
    spec = TaskSpec.from_dict({"name": "x", "kind": "multilabel", "labels": ["a", "b"]})
    assert spec.num_outputs == 2 and spec.metric == "roc_auc"
    assert TaskSpec.from_dict(spec.to_dict()) == spec


# ----------------------------------------------------------------------------- adapters


def test_gtzan(tmp_path):
    for split, names in (("train", ["blues/blues.00000.wav", "rock/rock.00011.wav"]),
                         ("valid", ["jazz/jazz.00002.wav"]), ("test", ["pop/pop.00003.wav"])):
        (tmp_path / f"{split}_filtered.txt").write_text("\n".join(names) + "\n")
        for name in names:
            touch(tmp_path / "genres_original" / name)
    records, task = datasets.gtzan(tmp_path)
    assert task.num_outputs == 10
    assert [(r.path, r.split, r.label) for r in records][:2] == [
        ("blues/blues.00000.wav", "train", "blues"), ("rock/rock.00011.wav", "train", "rock")]
    (tmp_path / "genres_original" / "pop/pop.00003.wav").unlink()
    with pytest.raises(DatasetError, match="pop.00003.wav not found"):
        datasets.gtzan(tmp_path)


def test_magnatagatune(tmp_path):
    tags = np.array(["guitar", "classical", "slow"])
    np.save(tmp_path / "tags.npy", tags)
    np.save(tmp_path / "binary_label.npy", np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]))
    rows = {"train": ["0\t0/a.mp3", "3\tb/d.mp3"], "valid": ["1\tc/b.mp3"], "test": ["2\td/c.mp3"]}
    for split, lines in rows.items():
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        for line in lines:
            touch(tmp_path / "mp3" / line.split("\t")[1])
    records, task = datasets.magnatagatune(tmp_path)
    assert task.labels == ("guitar", "classical", "slow") and task.kind == "multilabel"
    assert records[0].label == ("guitar", "slow") and records[1].label == ("guitar", "classical", "slow")
    assert records[3].label == ()
    (tmp_path / "test.tsv").write_text("9\td/c.mp3\n")
    with pytest.raises(DatasetError, match="test.tsv: line 1"):
        datasets.magnatagatune(tmp_path)


def _sha1_split(name, ratios):
    return ratios[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(ratios)]


def test_giantsteps_key(tmp_path):
    ratios = ["train"] * 100 + ["valid"] * 16
    # Fixture names chosen for their hash: "xi" lands in valid, the others in train.
    assert _sha1_split("xi", ratios) == "valid"
    assert {_sha1_split(n, ratios) for n in ("alpha", "beta", "gamma", "delta", "mu")} == {"train"}
    mtg = tmp_path / "giantsteps-mtg-key-dataset-fd7b8c5"
    (mtg / "annotations").mkdir(parents=True)
    (mtg / "annotations" / "annotations.txt").write_text(
        "ID\tMANUAL KEY\tC\n1\tC# minor\t2\n2\tA major\t1\n3\tF major / D minor\t2\n"
        "4\tg major\t2\n5\tE minor\t2\n")
    (mtg / "annotations" / "beatport_metadata.txt").write_text(
        "ID\tARTIST\n1\tAlpha\n2\tBeta\n3\tGamma\n4\tDelta, Xi\n5\tDelta\n")
    for track in range(1, 6):
        touch(mtg / "audio" / f"{track}.LOFI.mp3")
    gs = tmp_path / "giantsteps-key-dataset"
    (gs / "annotations" / "key").mkdir(parents=True)
    (gs / "annotations" / "key" / "10.LOFI.key").write_text("Eb minor\n")
    touch(gs / "audio" / "10.LOFI.mp3")
    records, task = datasets.giantsteps_key(tmp_path)
    found = {r.path.split("/")[-1]: (r.split, r.label) for r in records}
    assert found == {
        "1.LOFI.mp3": ("train", "Db minor"),  # sharp tonic spelled with a flat, as MARBLE's classes
        "4.LOFI.mp3": ("valid", "G major"),  # Xi is valid, so its collaborator Delta is too
        "5.LOFI.mp3": ("valid", "E minor"),  # Delta's solo track follows Delta
        "10.LOFI.mp3": ("test", "Eb minor"),
    }  # 2 (confidence 1) and 3 (two keys) are left out
    assert records[0].path == "giantsteps-mtg-key-dataset-fd7b8c5/audio/1.LOFI.mp3"
    assert task.num_outputs == 24


def test_giantsteps_key_split_rule(tmp_path):
    ratios = ["train"] * 100 + ["valid"] * 16
    metadata = {str(i): {"ARTIST": name} for i, name in enumerate(["A", "B", "C, D"])}
    split = datasets._giantsteps_artist_splits(metadata, tmp_path)
    for name in "AB":
        assert split[name] == _sha1_split(name.lower(), ratios)
    collab = {_sha1_split("c", ratios), _sha1_split("d", ratios)}
    assert split["C"] == split["D"] == ("valid" if "valid" in collab else "train")


def test_emomusic(tmp_path):
    ratios = ["train"] * 8 + ["valid"] * 2
    assert (_sha1_split("the band", ratios), _sha1_split("trio", ratios)) == ("train", "valid")
    artists = {1: "The Band!", 2: "Trio", 3: "Other"}  # artist names are cleaned before hashing
    info = ["song_id,Artist,Song title,Mediaeval 2013 set"]
    static = ["song_id, mean_arousal, mean_valence"]
    for sid, artist in artists.items():
        info.append(f"{sid},{artist},t{sid},{'evaluation' if sid == 3 else 'development'}")
        static.append(f"{sid}, {sid * 1.5}, {-sid}")
        touch(tmp_path / "clips_45seconds" / f"{sid}.mp3")
    (tmp_path / "songs_info.csv").write_text("\n".join(info) + "\n")
    (tmp_path / "static_annotations.csv").write_text("\n".join(static) + "\n")
    records, task = datasets.emomusic(tmp_path)
    assert {r.path: r.split for r in records} == {
        "clips_45seconds/1.mp3": "train", "clips_45seconds/2.mp3": "valid", "clips_45seconds/3.mp3": "test"}
    assert records[0].label == (1.5, -1.0) and task.labels == ("arousal", "valence")


def test_nsynth_pitch(tmp_path):
    for split, notes in (("train", {"a": 21, "b": 108, "c": 9}), ("valid", {"d": 60}), ("test", {"e": 72})):
        folder = tmp_path / f"nsynth-{split}"
        folder.mkdir()
        (folder / "examples.json").write_text(json.dumps({k: {"pitch": p, "velocity": 100} for k, p in notes.items()}))
        for name in notes:
            touch(folder / "audio" / f"{name}.wav")
    with pytest.warns(UserWarning, match="left out 1 NSynth notes"):
        records, task = datasets.nsynth_pitch(tmp_path)
    assert task.num_outputs == 88
    np.testing.assert_array_equal(datasets.encode_labels(records, task), [0, 87, 39, 51])
    assert records[0].path == "nsynth-train/audio/a.wav"


@pytest.mark.parametrize("target, expected", [("singer", ["f1", "m3", "f2"]), ("technique", ["belt", "vibrato", "trill"])])
def test_vocalset(tmp_path, target, expected):
    rows = {"train": "belt/f1_arpeggios_belt_a_00.wav", "valid": "vibrato/m3_scales_vibrato_00.wav",
            "test": "trill/f2_row_trill_01.wav"}
    for split, rel in rows.items():
        (tmp_path / f"{split}_{target[0]}.txt").write_text(rel + "\n")
        touch(tmp_path / "audio" / rel)
    records, task = datasets.vocalset(tmp_path, target)
    assert [r.label for r in records] == expected
    assert task.name == f"vocalset_{target}"
