"""Hostile feature-store runs: one failing track never discards the others' work, rows of
other settings never mix in, a damaged cache never blocks, two spellings are one track."""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from mertkit.extraction import runner
from mertkit.extraction.engine import ExtractOptions
from mertkit.extraction.runner import StoreOptions, run_extract
from mertkit.store import parquet
from mertkit.store.parquet import FeatureStore, StoreError, StoreMismatchError, hash_file
from outputs_fixtures import audio_folder, poison_layer, temps_under, tiny_model, write_loud

OPTIONS = ExtractOptions(window=0.5, batch_size=2, pool="mean")
NAMES = ("a.wav", "b.wav", "c.wav", "d.wav")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def stored_paths(root: Path) -> list[str]:
    return sorted(path for path, _ in FeatureStore(root).keys())


def test_a_non_finite_track_fails_alone_and_the_others_are_committed(model, tmp_path):
    audio = audio_folder(tmp_path / "audio", NAMES)
    write_loud(audio / "loud.wav")
    hooks = poison_layer(model, layer=1)
    try:
        report = run_extract(model, [audio], None, OPTIONS, progress=False,
                             store=StoreOptions(tmp_path / "s", rows_per_shard=3))
    finally:
        for hook in hooks:
            hook.remove()
    assert report.failed == [(str(audio / "loud.wav"), "non-finite features in layer 1 (NaN)")]
    assert stored_paths(tmp_path / "s") == sorted(str((audio / n).resolve()) for n in NAMES)


def test_a_file_changed_since_it_was_stored_fails_alone(model, tmp_path):
    audio = audio_folder(tmp_path / "audio", NAMES[:2])
    store = StoreOptions(tmp_path / "s")
    assert run_extract(model, [audio], None, OPTIONS, progress=False, store=store).ok
    audio_folder(audio, ("a.wav",), seconds=0.9)  # a new version under the same name
    audio_folder(audio, ("new.wav",))
    report = run_extract(model, [audio], None, OPTIONS, progress=False, store=store)
    ((path, reason),) = report.failed
    assert path == str(audio / "a.wav") and "changed since it was stored" in reason
    assert report.done == [str(audio / "new.wav")] and report.skipped == [str(audio / "b.wav")]
    assert stored_paths(tmp_path / "s") == sorted(str((audio / n).resolve()) for n in ("a.wav", "b.wav", "new.wav"))


def test_a_file_changed_during_the_run_fails_alone(model, tmp_path, monkeypatch):
    audio = audio_folder(tmp_path / "audio", NAMES)
    real = runner.hash_inputs

    def hash_then_touch(files):
        hashes, failures = real(files)
        changed = audio / "b.wav"
        os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
        return hashes, failures

    monkeypatch.setattr(runner, "hash_inputs", hash_then_touch)
    report = run_extract(model, [audio], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "s"))
    ((path, reason),) = report.failed
    assert path == str(audio / "b.wav") and "changed while being extracted" in reason
    assert stored_paths(tmp_path / "s") == sorted(str((audio / n).resolve()) for n in ("a.wav", "c.wav", "d.wav"))


def test_a_shard_that_cannot_be_written_fails_its_tracks_only(model, tmp_path, monkeypatch):
    audio = audio_folder(tmp_path / "audio", NAMES)
    real = parquet.atomic_write
    shards = []

    def first_shard_full(target, write, **kwargs):
        if Path(target).name.startswith("part-"):
            shards.append(Path(target).name)
            if len(shards) == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(target, write, **kwargs)

    monkeypatch.setattr(parquet, "atomic_write", first_shard_full)
    # a track is 4 rows (3 windows + the track): a shard fills every second track
    report = run_extract(model, [audio], None, OPTIONS, progress=False,
                         store=StoreOptions(tmp_path / "s", rows_per_shard=8))
    failed = dict(report.failed)
    assert sorted(failed) == [str(audio / "a.wav"), str(audio / "b.wav")]
    assert all("No space left on device" in reason for reason in failed.values())
    assert sorted(report.done) == [str(audio / "c.wav"), str(audio / "d.wav")]
    assert stored_paths(tmp_path / "s") == sorted(str((audio / n).resolve()) for n in ("c.wav", "d.wav"))
    assert not temps_under(tmp_path / "s")
    monkeypatch.setattr(parquet, "atomic_write", real)
    rerun = run_extract(model, [audio], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "s"))
    assert sorted(rerun.done) == sorted(failed) and len(stored_paths(tmp_path / "s")) == 4


def test_float32_and_bfloat16_rows_never_mix(tmp_path):
    import torch

    audio = audio_folder(tmp_path / "audio", NAMES[:1])
    store = StoreOptions(tmp_path / "s")
    assert run_extract(tiny_model(), [audio], None, OPTIONS, progress=False, store=store).ok
    with pytest.raises(StoreMismatchError, match="compute_dtype: store has 'float32', got 'bfloat16'"):
        run_extract(tiny_model().to(torch.bfloat16), [audio], None, OPTIONS, progress=False, store=store)
    bf16 = ExtractOptions(window=0.5, batch_size=2, pool="mean", dtype="bfloat16")
    with pytest.raises(StoreMismatchError, match="compute_dtype"):
        run_extract(tiny_model(), [audio], None, bf16, progress=False, store=store)
    with pytest.raises(StoreMismatchError, match="weights"):  # another model entirely
        run_extract(tiny_model(seed=1), [audio], None, OPTIONS, progress=False, store=store)


def test_normalised_and_raw_rows_never_mix(model, tmp_path):
    meta = runner.store_meta(model, runner.Extractor(model, OPTIONS), "float16")
    other = runner.store_meta(model, runner.Extractor(model, OPTIONS, do_normalize=True), "float16")
    assert meta.do_normalize is False and other.do_normalize is True
    assert meta.differences(other) == ["do_normalize: store has False, got True"]


def test_two_spellings_of_one_file_are_one_track(model, tmp_path, monkeypatch):
    audio = audio_folder(tmp_path / "audio", ("x.wav",))
    monkeypatch.chdir(tmp_path)
    store = StoreOptions(tmp_path / "s")
    first = run_extract(model, [Path("audio/x.wav")], None, OPTIONS, progress=False, store=store)
    again = run_extract(model, [audio.resolve() / "x.wav", Path("audio")], None, OPTIONS, progress=False,
                        store=store)
    assert first.done == ["audio/x.wav"] and again.skipped == [str(audio.resolve() / "x.wav")]
    assert FeatureStore(tmp_path / "s").keys() == [(str((audio / "x.wav").resolve()), hash_file(audio / "x.wav"))]


@pytest.mark.parametrize("garbage", [b"\xff\xfe not json", b"[1, 2, 3]", b'{"shards": [1]}', b""])
def test_a_damaged_manifest_is_rebuilt_with_a_warning(model, tmp_path, garbage, caplog):
    audio = audio_folder(tmp_path / "audio", NAMES[:2])
    store = StoreOptions(tmp_path / "s", rows_per_shard=4)
    assert run_extract(model, [audio / "a.wav"], None, OPTIONS, progress=False, store=store).ok
    (tmp_path / "s" / "manifest.json").write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="mertkit.store.parquet"):
        assert len(FeatureStore(tmp_path / "s")) == 1  # reads
        report = run_extract(model, [audio], None, OPTIONS, progress=False, store=store)  # writes
    assert report.done == [str(audio / "b.wav")] and report.skipped == [str(audio / "a.wav")]
    assert "ignoring it" in caplog.text
    assert len(FeatureStore(tmp_path / "s")) == 2
    assert isinstance(parquet._read_json(tmp_path / "s" / "manifest.json")["shards"], dict)  # rewritten


def test_an_unusable_store_location_is_one_line(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the store folder") as caught:
        run_extract(model, [tmp_path], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "file" / "s"))
    assert "\n" not in str(caught.value)


def test_vectors_stored_equal_a_clean_run(model, tmp_path):
    """The failure handling changes nothing for good tracks: the rows equal a run without the bad one."""
    audio = audio_folder(tmp_path / "audio", NAMES[:2])
    clean = run_extract(model, [audio], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "clean",
                                                                                          dtype="float32"))
    write_loud(audio / "loud.wav")
    hooks = poison_layer(model, layer=3)
    try:
        mixed = run_extract(model, [audio], None, OPTIONS, progress=False, store=StoreOptions(tmp_path / "mixed",
                                                                                              dtype="float32"))
    finally:
        for hook in hooks:
            hook.remove()
    assert clean.ok and len(mixed.failed) == 1
    a, paths_a = FeatureStore(tmp_path / "clean").load(layer=3)
    b, paths_b = FeatureStore(tmp_path / "mixed").load(layer=3)
    order = [paths_b.index(p) for p in paths_a]
    np.testing.assert_allclose(a, b[order], atol=1e-5)
