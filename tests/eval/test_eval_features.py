"""Loading `mert extract`-style safetensors folders into FeatureSplits."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from mertkit.eval import features
from mertkit.eval.datasets import Record, TaskSpec
from mertkit.eval.features import FeatureError

GENRE = TaskSpec("genre", "multiclass", 2, labels=("rock", "pop"))


def write(root, rel, hidden, frame_rate="75.0", pooling="none"):
    path = root / f"{rel}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": "toy", "sample_rate": "24000", "frame_rate": frame_rate, "layers": str(hidden.shape[0]),
            "pooling": pooling, "source": rel}
    save_file({"hidden_states": np.ascontiguousarray(hidden, dtype=np.float32)}, str(path), metadata=meta)


def records(tmp_path, **extra):
    rows = [("a/x.wav", "train", "rock"), ("a/y.wav", "train", "pop"), ("b/z.wav", "valid", "pop"), ("c.wav", "test", "rock")]
    return [Record(p, s, label, tmp_path / p, **extra) for p, s, label in rows]


def test_pooled_and_unpooled_files(tmp_path):
    rng = np.random.default_rng(0)
    stored = {}
    for i, record in enumerate(records(tmp_path)):
        hidden = rng.normal(size=(3, 10, 4)) if i % 2 else rng.normal(size=(3, 4))
        stored[record.path] = hidden
        write(tmp_path / "feats", record.path, hidden)
    data = features.from_safetensors_dir(tmp_path / "feats", records(tmp_path), GENRE)
    assert data.train.x.shape == (2, 3, 4) and data.num_layers == 3
    np.testing.assert_allclose(data.train.x[0], stored["a/x.wav"], rtol=1e-6)
    np.testing.assert_allclose(data.train.x[1], stored["a/y.wav"].mean(axis=1), rtol=1e-6)  # time mean
    np.testing.assert_array_equal(data.train.y, [0, 1])
    assert data.test.ids == ["c.wav"] and data.meta["model"] == "toy"


def test_segment_is_cut_by_frame_rate(tmp_path):
    hidden = np.arange(2 * 20 * 1, dtype=np.float32).reshape(2, 20, 1)
    for record in records(tmp_path):
        write(tmp_path / "feats", record.path, hidden, frame_rate="10")
    data = features.from_safetensors_dir(tmp_path / "feats", records(tmp_path, start=0.5, end=1.0), GENRE)
    np.testing.assert_allclose(data.train.x[0, :, 0], hidden[:, 5:10, 0].mean(axis=1))


def test_errors_name_the_file(tmp_path):
    recs = records(tmp_path)
    for record in recs[:-1]:
        write(tmp_path / "feats", record.path, np.zeros((3, 4)))
    with pytest.raises(FeatureError, match=r"c\.wav\.safetensors: feature file not found"):
        features.from_safetensors_dir(tmp_path / "feats", recs, GENRE)
    (tmp_path / "feats" / "c.wav.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FeatureError, match="c.wav.safetensors: not a readable"):
        features.from_safetensors_dir(tmp_path / "feats", recs, GENRE)
    write(tmp_path / "feats", "c.wav", np.zeros((3, 5)))
    with pytest.raises(FeatureError, match="c.wav: test features have 3 layers x 5 width"):
        features.from_safetensors_dir(tmp_path / "feats", recs, GENRE)
    write(tmp_path / "feats", "c.wav", np.zeros((3, 4)))
    with pytest.raises(FeatureError, match="pooled over the whole file"):
        features.from_safetensors_dir(tmp_path / "feats", records(tmp_path, start=1.0), GENRE)


def test_beat_splits_pad_and_mark_beats(tmp_path):
    task = TaskSpec("beat", "beat", 1)
    recs = []
    for split, frames in (("train", 30), ("train", 20), ("valid", 20), ("test", 20)):
        rel = f"{split}{frames}.wav"
        beats = tmp_path / f"{rel}.beats"
        beats.write_text("0.5\n1.0\n1.5\n2.9\n")
        write(tmp_path / "feats", rel, np.ones((2, frames, 3)), frame_rate="10")
        recs.append(Record(rel, split, None, tmp_path / rel, beats_path=beats))
    data = features.from_safetensors_dir(tmp_path / "feats", recs, task)
    assert data.frame_rate == 10.0
    assert data.train.x.shape == (2, 2, 30, 3)
    np.testing.assert_array_equal(np.flatnonzero(data.train.y[0] == 1), [5, 10, 15, 29])
    np.testing.assert_array_equal(np.flatnonzero(data.train.y[1] == 1), [5, 10, 15])  # 2.9 s is past 20 frames
    assert (data.train.y[1, 20:] == -1).all() and (data.train.x[1, :, 20:] == 0).all()
    np.testing.assert_allclose(data.train.beat_times[1], [0.5, 1.0, 1.5])
