"""Reading probe features from the Parquet feature store (mertkit.eval.features.from_store)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

pytest.importorskip("pyarrow")

from mertkit.eval import features  # noqa: E402
from mertkit.eval.datasets import Record, TaskSpec  # noqa: E402
from mertkit.eval.features import FeatureError  # noqa: E402
from mertkit.store.parquet import FeatureStoreWriter  # noqa: E402

GENRE = TaskSpec("genre", "multiclass", 2, labels=("rock", "pop"))
TEMPO = TaskSpec("tempo", "regression", 1, labels=("bpm",))
LAYERS = (0, 1, 2, 3)
WIDTH = 6
ROWS = [
    ("a/x.wav", "train", "rock", 90.0), ("a/y.wav", "train", "pop", 120.0), ("b/z.wav", "train", "pop", 101.0),
    ("b/w.wav", "valid", "rock", 140.0), ("c.wav", "test", "pop", 75.5), ("d.wav", "test", "rock", 160.0),
]


def genre_records(tmp_path):
    return [Record(path, split, label, tmp_path / path) for path, split, label, _ in ROWS]


def tempo_records(tmp_path):
    return [Record(path, split, (bpm,), tmp_path / path) for path, split, _, bpm in ROWS]


def pooled_vectors():
    rng = np.random.default_rng(7)
    return {path: rng.normal(size=(len(LAYERS), WIDTH)).astype(np.float32) for path, *_ in ROWS}


def store_meta(dtype):
    return dict(model="tiny/test", sample_rate=24000, frame_rate=75.0, hidden_size=WIDTH,
                num_layers=len(LAYERS) - 1, layers=list(LAYERS), dtype=dtype, pooling="mean")


def write_store(root, vectors, dtype="float32", order=None, split_column="bogus"):
    with FeatureStoreWriter(root, store_meta(dtype), rows_per_shard=2) as writer:  # several shards
        for path in order or list(vectors):
            # A window row too: from_store must read only the track-level rows.
            window = (0.0, 1.0, vectors[path] + 100.0)
            writer.add_track(path, f"hash-{path}", vectors=vectors[path], window_rows=[window], split=split_column)
    return root


def write_safetensors_dir(root, vectors):
    for path, hidden in vectors.items():
        target = root / f"{path}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": "tiny/test", "sample_rate": "24000", "frame_rate": "75.0",
                "layers": json.dumps(list(LAYERS)), "pooling": "mean", "source": path}
        save_file({"hidden_states": hidden}, str(target), metadata=meta)
    return root


@pytest.mark.parametrize("task_records", [(GENRE, genre_records), (TEMPO, tempo_records)])
def test_store_equals_safetensors_dir_on_the_same_features(tmp_path, task_records):
    task, make_records = task_records
    vectors = pooled_vectors()
    # Shuffled commit order: matching must go by path, not by position.
    order = [ROWS[i][0] for i in (4, 1, 5, 0, 3, 2)]
    store = write_store(tmp_path / "store", vectors, order=order)
    folder = write_safetensors_dir(tmp_path / "feats", vectors)
    records = make_records(tmp_path)
    from_store = features.from_store(store, records, task)
    from_dir = features.from_safetensors_dir(folder, records, task)
    for split in ("train", "valid", "test"):
        a, b = from_store.split(split), from_dir.split(split)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert a.ids == b.ids
    # And both equal the vectors that were written (independent of either reader).
    expected_train = np.stack([vectors[path] for path, split, *_ in ROWS if split == "train"])
    np.testing.assert_array_equal(from_store.train.x, expected_train)
    assert from_store.meta["model"] == "tiny/test" and json.loads(from_store.meta["layers"]) == list(LAYERS)
    assert from_store.frame_rate is None and from_store.num_layers == len(LAYERS)


def test_float16_store_is_within_half_precision(tmp_path):
    vectors = pooled_vectors()
    store = write_store(tmp_path / "store", vectors, dtype="float16")
    data = features.from_store(store, genre_records(tmp_path), GENRE)
    expected = np.stack([vectors[path] for path, split, *_ in ROWS if split == "test"])
    np.testing.assert_allclose(data.test.x, expected, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(data.test.x, expected)  # it really went through float16


def test_missing_record_names_the_store_and_the_path(tmp_path):
    vectors = pooled_vectors()
    del vectors["d.wav"]
    store = write_store(tmp_path / "store", vectors)
    with pytest.raises(FeatureError, match=r"store: 1 of 6 records have no track row.*'d\.wav'"):
        features.from_store(store, genre_records(tmp_path), GENRE)


def test_beat_tasks_and_segments_are_refused(tmp_path):
    store = write_store(tmp_path / "store", pooled_vectors())
    beat = TaskSpec("beat", "beat", 1)
    with pytest.raises(FeatureError, match="pooled vectors only"):
        features.from_store(store, genre_records(tmp_path), beat)
    segmented = [Record(r.path, r.split, r.label, r.audio_path, start=0.0, end=1.0) for r in genre_records(tmp_path)]
    with pytest.raises(FeatureError, match="pooled over the whole file"):
        features.from_store(store, segmented, GENRE)


def test_not_a_store_is_a_feature_error(tmp_path):
    with pytest.raises(FeatureError, match="nowhere: cannot open the feature store"):
        features.from_store(tmp_path / "nowhere", genre_records(tmp_path), GENRE)
