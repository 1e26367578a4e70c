"""Pre-training data: aligned crops, determinism, process sharding and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mertkit.pretrain.data import PretrainDataError, PretrainDataset
from pretrain_fixtures import SR, frame_labels, tiny_config, write_labelled_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(tmp_path_factory.mktemp("corpus"), 8, seconds=(1.3, 2.2))


def test_labels_follow_the_crop(corpus):
    audio, labels = corpus
    data = PretrainDataset(audio, labels, tiny_config())
    order = data.epoch_order(0)
    starts = set()
    for position in range(len(data)):
        wave, codes, _ = data.clip(0, position, order)
        full, _ = sf.read(audio / data.files[int(order[position])], dtype="float32")
        start = _find(full, wave)
        starts.add(start)
        assert start % 320 == 0 and wave.shape[0] == SR  # 1 s crops
        frames = tiny_config().mert_config().num_frames(wave.shape[0])
        assert codes.shape == (2, frames)
        # labels recomputed from the full file at the crop's frame offset
        assert np.array_equal(codes, frame_labels(full)[:, start // 320 : start // 320 + frames])
    assert len(starts) > 1


def _find(full: np.ndarray, crop: np.ndarray) -> int:
    for start in range(0, full.shape[0] - crop.shape[0] + 1):
        if np.array_equal(full[start : start + crop.shape[0]], crop):
            return start
    raise AssertionError("crop not found in its file")


def test_order_and_crops_are_deterministic(corpus):
    audio, labels = corpus
    a, b = PretrainDataset(audio, labels, tiny_config()), PretrainDataset(audio, labels, tiny_config())
    assert np.array_equal(a.epoch_order(3), b.epoch_order(3))
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    x, y = a.batch(1, 0, 0, 1), b.batch(1, 0, 0, 1)
    assert torch.equal(x.wave, y.wave) and x.seeds == y.seeds and x.paths == y.paths


def test_two_processes_split_one_batch(corpus):
    audio, labels = corpus
    whole = PretrainDataset(audio, labels, tiny_config(batch_size=4)).batch(2, 1, 0, 1)
    halves = PretrainDataset(audio, labels, tiny_config(batch_size=2))
    parts = [halves.batch(2, 1, rank, 2) for rank in (0, 1)]
    assert parts[0].paths + parts[1].paths == whole.paths
    assert parts[0].seeds + parts[1].seeds == whole.seeds
    for i, part in enumerate(parts):
        for j in range(2):
            n = int(part.lengths[j])
            assert torch.equal(part.wave[j, :n], whole.wave[2 * i + j, :n])


def test_short_files_are_padded_and_too_short_ones_skipped(tmp_path):
    audio, labels = write_labelled_corpus(tmp_path, 6, seconds=(0.3, 0.9))
    data = PretrainDataset(audio, labels, tiny_config(batch_size=1))
    assert data.skipped and all(n >= 12000 for n in data.num_samples)
    assert len(data) + len(data.skipped) == 6
    batch = data.batch(0, 0, 0, 1)
    assert int(batch.lengths[0]) < SR  # shorter than the 1 s crop: taken whole
    with pytest.raises(PretrainDataError, match="no usable audio"):
        PretrainDataset(audio, labels, tiny_config(min_crop_seconds=0.95))


def test_labels_that_do_not_fit_the_config_are_refused(corpus):
    audio, labels = corpus
    with pytest.raises(PretrainDataError, match="codebooks: labels 2 vs config 8"):
        PretrainDataset(audio, labels, tiny_config(n_codebooks=8))
