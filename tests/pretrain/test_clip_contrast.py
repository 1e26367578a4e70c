"""The clip contrast (`contrast_weight`): pairs of crops of one file in every batch, and an
InfoNCE over their mean-pooled last states, checked against a direct loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mertkit.pretrain.data import PretrainDataset
from mertkit.pretrain.mlm_model import Counts, MertPretrainModel
from mertkit.pretrain.pretrain_config import PretrainConfigError
from mertkit.pretrain.trainer import train
from pretrain_fixtures import SR, tiny_config, write_labelled_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(tmp_path_factory.mktemp("corpus"), 8, seconds=(2.5, 3.5), seed=7)


def _start(full: np.ndarray, crop: np.ndarray) -> int:
    for start in range(0, full.shape[0] - crop.shape[0] + 1, 320):
        if np.array_equal(full[start : start + crop.shape[0]], crop):
            return start
    raise AssertionError("crop not found in its file")


def test_a_contrast_batch_holds_pairs_of_crops_of_one_file(corpus):
    audio, labels = corpus
    single = PretrainDataset(audio, labels, tiny_config(batch_size=3))
    paired = PretrainDataset(audio, labels, tiny_config(batch_size=3, contrast_weight=1.0))
    one, two = single.batch(0, 0, 0, 1), paired.batch(0, 0, 0, 1)
    assert two.wave.shape[0] == 6 and two.paths[0::2] == two.paths[1::2] == one.paths
    # the first crop of each pair is the crop a run without the contrast takes
    assert torch.equal(two.wave[0::2], one.wave) and two.seeds[0::2] == one.seeds
    starts = []
    for i in range(0, 6, 2):
        full, _ = sf.read(audio / two.paths[i], dtype="float32")
        starts.append((_start(full, two.wave[i].numpy()), _start(full, two.wave[i + 1].numpy())))
        assert two.seeds[i] != two.seeds[i + 1]  # the partners are masked differently
        codes = torch.from_numpy(paired.labels.labels_for(two.paths[i]).astype(np.int64))
        second = starts[-1][1] // 320  # the partner's labels follow its own crop
        assert torch.equal(two.labels[i + 1, :, :5], codes[:, second : second + 5])
    assert any(a != b for a, b in starts)  # placed independently


def _reference_contrast(model: MertPretrainModel, last: torch.Tensor, valid: torch.Tensor, temperature: float) -> float:
    """Item by item: -log softmax of the partner's cosine among all other items."""
    pooled = [last[i][valid[i]].mean(0) for i in range(len(last))]
    z = [torch.nn.functional.normalize(model.contrast_head(p).float(), dim=0) for p in pooled]
    total = 0.0
    for i in range(len(z)):
        scores = {j: float(z[i] @ z[j]) / temperature for j in range(len(z)) if j != i}
        partner = i + 1 if i % 2 == 0 else i - 1
        total -= scores[partner] - math.log(sum(math.exp(s) for s in scores.values()))
    return total


def test_the_contrast_is_infonce_over_partners(corpus):
    torch.manual_seed(0)
    model = MertPretrainModel(tiny_config(contrast_weight=1.0, contrast_temperature=0.5)).eval()
    last = torch.randn(6, 9, 64)
    valid = torch.ones(6, 9, dtype=torch.bool)
    valid[2, 6:] = valid[5, 4:] = False  # padded frames are left out of the pooling
    with torch.no_grad():
        got = float(model.clip_contrast(last, valid))
        assert got == pytest.approx(_reference_contrast(model, last, valid, 0.5), rel=1e-5)
        # identical partners score lower than partners drawn at random
        twins = last.clone()
        twins[1::2] = twins[0::2]
        same = torch.ones(6, 9, dtype=torch.bool)
        assert float(model.clip_contrast(twins, same)) < float(model.clip_contrast(last, same))


def test_the_contrast_term_is_weighted_and_normalised_per_crop(corpus):
    audio, labels = corpus
    cfg = tiny_config(batch_size=2, contrast_weight=3.0)
    model = MertPretrainModel(cfg)
    batch = PretrainDataset(audio, labels, cfg).batch(0, 0, 0, 1)
    frames = model.frame_count(batch.wave.shape[1])
    mask = torch.zeros(4, frames, dtype=torch.bool)
    mask[:, 3:8] = True
    with torch.no_grad():
        out = model(batch.wave, batch.lengths, batch.labels, mask)
        terms = model.loss_terms(out, Counts(int(out.masked_frames), int(out.valid_frames), 4))
    assert float(terms["contrast"]) == pytest.approx(3.0 * float(out.sums["contrast"]) / 4)
    assert model.metrics(out.sums, out.correct, Counts(1, 1, 4))["contrast"] == pytest.approx(float(out.sums["contrast"]) / 4)


def test_a_run_with_the_contrast_logs_it(corpus, tmp_path):
    import json

    audio, labels = corpus
    train(tiny_config(batch_size=2, contrast_weight=1.0, total_updates=2, warmup_updates=1), audio, labels,
          tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # at initialisation the partner is about as likely as any of the 3 other crops
    assert len(rows) == 2 and 0.3 < rows[0]["contrast"] < 2 * math.log(3)


@pytest.mark.parametrize("changes, message", [
    ({"contrast_weight": 1.0, "batch_size": 1}, "batch_size >= 2"),
    ({"contrast_weight": -1.0}, "contrast_weight must be >= 0"),
    ({"contrast_weight": 1.0, "contrast_temperature": 0.0}, "contrast_temperature > 0"),
])
def test_contrast_settings_are_checked(changes, message):
    with pytest.raises(PretrainConfigError, match=message):
        tiny_config(**changes)
