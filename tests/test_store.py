"""Tests for mertkit.store.parquet: round trips, resume, settings checks and crash safety."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import mertkit
from mertkit import store as store_module
from mertkit.store.parquet import (
    FeatureStore,
    FeatureStoreWriter,
    StoreCorruptError,
    StoreError,
    StoreInputError,
    StoreMeta,
    StoreMismatchError,
    hash_file,
)

WIDTH = 8
LAYERS = (0, 2, 3)


def make_meta(**overrides: object) -> dict:
    meta = dict(
        model="tiny/test-model",
        sample_rate=24000,
        frame_rate=75.0,
        hidden_size=WIDTH,
        num_layers=3,
        layers=list(LAYERS),
        window=5.0,
        hop=5.0,
        pooling="mean",
    )
    meta.update(overrides)
    return meta


def track_vectors(index: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(index).standard_normal((len(LAYERS), WIDTH)) * scale).astype(
        np.float32
    )


def window_vectors(index: int, window: int) -> np.ndarray:
    return np.random.default_rng([index, window]).standard_normal((len(LAYERS), WIDTH)).astype(
        np.float32
    )


def write_tracks(root: Path, indices, *, dtype: str = "float32", rows_per_shard: int = 4,
                 windows: int = 2) -> None:
    with FeatureStoreWriter(root, make_meta(), rows_per_shard=rows_per_shard, dtype=dtype) as writer:
        for i in indices:
            window_rows = [(5.0 * w, 5.0 * (w + 1), window_vectors(i, w)) for w in range(windows)]
            writer.add_track(
                f"audio/{i:03d}.wav", f"hash{i}", vectors=track_vectors(i),
                window_rows=window_rows, split="train" if i % 2 else "test", duration=10.0,
            )


def test_float32_round_trip_is_exact(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(7))
    store = mertkit.store.open(tmp_path)
    assert len(store) == 7
    assert len(list(tmp_path.glob("part-*.parquet"))) > 1  # the test covers several shards
    for position, layer in enumerate(LAYERS):
        vectors, paths = store.load(layer=layer)
        assert paths == [f"audio/{i:03d}.wav" for i in range(7)]
        expected = np.stack([track_vectors(i)[position] for i in range(7)])
        np.testing.assert_array_equal(vectors, expected)
        assert vectors.dtype == np.float32
    all_layers = store.load_all_layers()
    np.testing.assert_array_equal(all_layers, np.stack([track_vectors(i) for i in range(7)]))


def test_load_as_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    write_tracks(tmp_path, range(3))
    tensor, paths = FeatureStore(tmp_path).load(layer=0, as_torch=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(tensor.numpy(), np.stack([track_vectors(i)[0] for i in range(3)]))
    assert len(paths) == 3


def test_window_rows_split_filter_and_row_columns(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(5), windows=3)
    store = FeatureStore(tmp_path)
    vectors, paths = store.load(layer=2, level="window")
    assert paths == [f"audio/{i:03d}.wav" for i in range(5) for _ in range(3)]
    expected = np.stack([window_vectors(i, w)[1] for i in range(5) for w in range(3)])
    np.testing.assert_array_equal(vectors, expected)
    train, train_paths = store.load(layer=0, split="train")
    assert train_paths == ["audio/001.wav", "audio/003.wav"]
    np.testing.assert_array_equal(train[1], track_vectors(3)[0])
    table = store.rows(level="track")
    assert table.column("window_start").to_pylist() == [0.0] * 5
    assert table.column("window_end").to_pylist() == [10.0] * 5
    assert table.column("layers").to_pylist() == [list(LAYERS)] * 5
    assert set(table.column("model").to_pylist()) == {"tiny/test-model"}
    windows = store.rows(level="window", columns=["window_start", "window_end"])
    assert windows.column("window_start").to_pylist()[:3] == [0.0, 5.0, 10.0]


def test_float16_round_trip_within_half_precision(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(4), dtype="float16")
    vectors, _ = FeatureStore(tmp_path).load(layer=3)
    expected = np.stack([track_vectors(i)[2] for i in range(4)])
    # float16 has an 11-bit significand: relative rounding error at most 2**-11.
    assert np.all(np.abs(vectors - expected) <= np.abs(expected) * 2.0**-11 + 1e-7)
    assert not np.array_equal(vectors, expected)  # it really was stored in half precision
    assert FeatureStore(tmp_path).meta.dtype == "float16"


def test_dict_vectors_equal_array_vectors(tmp_path: Path) -> None:
    matrix = track_vectors(1)
    with FeatureStoreWriter(tmp_path, make_meta(), dtype="float32") as writer:
        writer.add_track("a.wav", "h", vectors={layer: matrix[p] for p, layer in enumerate(LAYERS)})
    np.testing.assert_array_equal(FeatureStore(tmp_path).load_all_layers()[0], matrix)


def test_resume_skips_done_tracks(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(5))
    with FeatureStoreWriter(tmp_path, make_meta(), rows_per_shard=4, dtype="float32") as writer:
        assert all(writer.is_done(f"audio/{i:03d}.wav", f"hash{i}") for i in range(5))
        assert not writer.is_done("audio/005.wav", "hash5")
        assert not writer.is_done("audio/000.wav", "other-hash")
        with pytest.raises(StoreInputError, match="already stored"):
            writer.add_track("audio/000.wav", "hash0", vectors=track_vectors(0))
    write_tracks(tmp_path, range(5, 9))
    store = FeatureStore(tmp_path)
    assert sorted(store.paths()) == [f"audio/{i:03d}.wav" for i in range(9)]
    assert len(store.paths(level="window")) == 2 * 9


def test_changed_file_is_refused(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(2))
    with FeatureStoreWriter(tmp_path, make_meta(), dtype="float32") as writer:
        with pytest.raises(StoreInputError, match="file changed"):
            writer.add_track("audio/001.wav", "new-hash", vectors=track_vectors(1))


@pytest.mark.parametrize(
    "override",
    [{"model": "other/model"}, {"hidden_size": WIDTH * 2}, {"window": 30.0}, {"pooling": "max"},
     {"layers": [0, 1]}],
)
def test_store_refuses_other_settings(tmp_path: Path, override: dict) -> None:
    write_tracks(tmp_path, range(2))
    key = next(iter(override))
    with pytest.raises(StoreMismatchError, match=key):
        FeatureStoreWriter(tmp_path, make_meta(**override), dtype="float32")
    with pytest.raises(StoreMismatchError, match="dtype"):
        FeatureStoreWriter(tmp_path, make_meta(), dtype="float16")
    # the refused writer released its lock: a matching writer still opens
    FeatureStoreWriter(tmp_path, make_meta(), dtype="float32").close()


def test_second_concurrent_writer_is_refused(tmp_path: Path) -> None:
    with FeatureStoreWriter(tmp_path, make_meta()):
        with pytest.raises(StoreError, match="lock"):
            FeatureStoreWriter(tmp_path, make_meta())


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        (np.zeros((2, WIDTH)), "shape"),
        (np.full((3, WIDTH), np.nan), "NaN"),
        (np.full((3, WIDTH), 1e6), "float16 range"),
        ({0: np.zeros(WIDTH), 2: np.zeros(WIDTH)}, "layers"),
    ],
)
def test_bad_vectors_are_refused(tmp_path: Path, vectors: object, message: str) -> None:
    with FeatureStoreWriter(tmp_path, make_meta()) as writer:
        with pytest.raises(StoreInputError, match=message):
            writer.add_track("x.wav", "h", vectors=vectors)
        with pytest.raises(StoreInputError, match="window"):
            writer.add_track("y.wav", "h", vectors=np.zeros((3, WIDTH)),
                             window_rows=[(5.0, 5.0, np.zeros((3, WIDTH)))])
    assert len(FeatureStore(tmp_path)) == 0


def test_meta_validation() -> None:
    with pytest.raises(StoreInputError, match="outside"):
        StoreMeta.from_dict(make_meta(layers=[0, 9]))
    with pytest.raises(StoreInputError, match="unknown"):
        StoreMeta.from_dict(make_meta(colour="red"))
    meta = StoreMeta.from_dict(make_meta(layers=[]))
    assert meta.layers == (0, 1, 2, 3)  # default: every hidden state
    assert meta.mertkit_version == mertkit.__version__


def test_exception_in_with_block_discards_buffer(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(tmp_path, make_meta(), rows_per_shard=100) as writer:
            writer.add_track("a.wav", "h", vectors=track_vectors(0))
            raise RuntimeError("extraction failed")
    assert len(FeatureStore(tmp_path)) == 0


def test_manifest_is_rebuilt_from_shards(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(6))
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "shards": {}}))
    assert len(FeatureStore(tmp_path)) == 6
    (tmp_path / "manifest.json").unlink()
    with FeatureStoreWriter(tmp_path, make_meta(), dtype="float32") as writer:
        assert writer.is_done("audio/005.wav", "hash5")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    keys = [key for entry in manifest["shards"].values() for key in entry["keys"]]
    assert sorted(keys) == sorted([f"audio/{i:03d}.wav", f"hash{i}"] for i in range(6))


def test_temp_files_are_ignored_then_removed(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(2))
    debris = tmp_path / ".tmp-part-00009.parquet.abc"
    debris.write_bytes(b"half a shard")
    assert len(FeatureStore(tmp_path)) == 2
    FeatureStoreWriter(tmp_path, make_meta(), dtype="float32").close()
    assert not debris.exists()


def test_unreadable_shard_names_the_file(tmp_path: Path) -> None:
    write_tracks(tmp_path, range(2))
    (tmp_path / "part-00042.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreCorruptError, match="part-00042.parquet"):
        FeatureStore(tmp_path)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path)


def test_hash_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert hash_file(path, chunk_size=777) == hashlib.blake2b(data, digest_size=16).hexdigest()


def test_missing_pyarrow_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"mertkit\[store\]"):
        FeatureStoreWriter(tmp_path, make_meta())


# ----------------------------------------------------------------------------- crash safety

CRASH_TRACKS = 40
CRASH_WINDOWS = 2
# The worker writes CRASH_TRACKS tracks, skipping done ones. `pause_at` makes os.replace stop
# (announcing it on stdout) just before or just after renaming a file into place, so that the
# test can SIGKILL it at exactly those moments; other runs are killed at random times.
CRASH_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    import test_store as helpers
    from mertkit.store.parquet import FeatureStoreWriter

    root, pause_at = sys.argv[1], sys.argv[2]
    real_replace = os.replace

    def announced_replace(source, target):
        name = os.path.basename(target)
        if pause_at == "before" and name.startswith("part-"):
            print("BEFORE", name, flush=True); time.sleep(60)
        real_replace(source, target)
        if pause_at == "after" and name.startswith("part-"):
            print("AFTER", name, flush=True); time.sleep(60)

    os.replace = announced_replace
    with FeatureStoreWriter(root, helpers.make_meta(), rows_per_shard=5, dtype="float32") as w:
        print("READY", flush=True)
        for i in range(helpers.CRASH_TRACKS):
            if w.is_done(f"audio/{i:03d}.wav", f"hash{i}"):
                continue
            windows = [(5.0 * k, 5.0 * (k + 1), helpers.window_vectors(i, k))
                       for k in range(helpers.CRASH_WINDOWS)]
            w.add_track(f"audio/{i:03d}.wav", f"hash{i}", vectors=helpers.track_vectors(i),
                        window_rows=windows, duration=10.0)
            print("ADDED", i, flush=True)
            time.sleep(0.003)
    print("DONE", flush=True)
    """
)


def start_worker(root: Path, pause_at: str) -> subprocess.Popen:
    env = dict(os.environ)
    src = str(Path(store_module.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", CRASH_WORKER, str(root), pause_at, str(Path(__file__).parent)],
        stdout=subprocess.PIPE, text=True, env=env,
    )


def wait_for_line(process: subprocess.Popen, prefix: str, count: int = 1) -> str:
    seen = 0
    for line in process.stdout:
        if line.startswith(prefix):
            seen += 1
            if seen == count:
                return line
    raise AssertionError(f"worker exited before printing {prefix!r} {count} times")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close()


def assert_consistent(root: Path) -> int:
    """Every stored track appears once with all its rows and the right vectors."""
    store = FeatureStore(root)
    vectors, paths = store.load(layer=3)
    assert len(paths) == len(set(paths))
    indices = [int(Path(p).stem) for p in paths]
    np.testing.assert_array_equal(vectors, np.stack([track_vectors(i)[2] for i in indices])
                                  if indices else np.zeros((0, WIDTH)))
    window_paths = store.paths(level="window")
    assert sorted(window_paths) == sorted(p for p in paths for _ in range(CRASH_WINDOWS))
    return len(paths)


def test_sigkill_at_any_moment_then_rerun_completes(tmp_path: Path) -> None:
    # 1. killed with a complete temp shard not yet renamed: the reader must ignore it.
    worker = start_worker(tmp_path, "before")
    wait_for_line(worker, "BEFORE", 1)
    kill(worker)
    assert list(tmp_path.glob(".tmp-*"))
    assert assert_consistent(tmp_path) == 0
    # 2. killed after a shard was renamed but before the manifest knew about it.
    worker = start_worker(tmp_path, "after")
    wait_for_line(worker, "AFTER", 1)
    kill(worker)
    assert not list(tmp_path.glob(".tmp-*"))  # the second writer cleaned up the debris
    assert assert_consistent(tmp_path) > 0
    # 3. killed at random moments (possibly mid-write of a shard or of the manifest): after a
    #    random number of tracks (a shard is committed inside every second add_track), plus
    #    a random fraction of the time one track takes.
    rng = random.Random(1234)
    stored = assert_consistent(tmp_path)
    for _ in range(4):
        worker = start_worker(tmp_path, "none")
        wait_for_line(worker, "ADDED", rng.randint(1, 7))
        time.sleep(rng.uniform(0.0, 0.01))
        kill(worker)
        now_stored = assert_consistent(tmp_path)
        assert now_stored >= stored  # committed tracks are never lost
        stored = now_stored
    assert stored < CRASH_TRACKS  # the kills really interrupted the job
    # 4. an uninterrupted rerun finishes the job.
    worker = start_worker(tmp_path, "none")
    wait_for_line(worker, "DONE")
    assert worker.wait(timeout=20) == 0
    worker.stdout.close()
    assert assert_consistent(tmp_path) == CRASH_TRACKS
    assert not list(tmp_path.glob(".tmp-*"))
