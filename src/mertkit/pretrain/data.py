"""Pre-training data: random crops of an audio folder with frame-aligned teacher labels.

* Files: every labelled file of the label directory (`mertkit.pretrain.labels` layout) that exists
  in the audio folder and is at least `min_crop_seconds` long (shorter ones are skipped and
  counted in `skipped`). Without a label directory (data2vec), every audio file.
* Order: epoch `e` visits the files in a permutation drawn from (seed, e). A global batch
  is `world_size * batch_size` consecutive files of it; process `rank` takes its slice, so
  one process with batch B*W sees exactly the clips of W processes with batch B. The tail
  that does not fill a global batch is dropped (every process runs the same step count).
* Crops: a file longer than `crop_seconds` is cut at a random start that is a multiple of
  the hop (320 samples), so its labels are cut at the same frame offset; shorter files are
  taken whole and padded in the batch (`lengths` says how much is real).
* Randomness per clip: crop start and mask come from a seed derived from (seed, epoch,
  file position in the epoch), so they do not depend on batching, process count or on how
  far the loader had got before a resume. The data position saved in a checkpoint is just
  (epoch, batch index within the epoch).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mertkit.pretrain.pretrain_config import PretrainConfig


# clip_seed streams (crop start, mask) of a file's first and second crop; stream 2 is the
# in-batch mixture's
CLIP_STREAMS = ((0, 1), (3, 4))


class PretrainDataError(ValueError):
    """An audio / label folder that cannot feed pre-training."""


@dataclass
class Batch:
    wave: Tensor  # [B, T] float32, zero-padded
    lengths: Tensor  # [B] valid samples
    labels: Tensor | None  # [B, K, F_label] int64, zero-padded; None without labels
    seeds: list[int]  # per-clip seed (masks are drawn from it)
    paths: list[str]

    def to(self, device: torch.device) -> Batch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch(self.wave.to(device, non_blocking=True), self.lengths.to(device), labels, self.seeds, self.paths)


def clip_seed(seed: int, epoch: int, position: int, stream: int = 0) -> int:
    """A 63-bit seed for one clip of one epoch (independent streams for crop and mask)."""
    state = np.random.SeedSequence([seed, epoch, position, stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class PretrainDataset:
    """The files of a corpus and how to cut clips from them (see the module docstring)."""

    def __init__(self, audio_dir: str | os.PathLike, label_dir: str | os.PathLike | None, cfg: PretrainConfig):
        self.audio_dir = Path(audio_dir)
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.mert = cfg.mert_config()
        self.hop = self.mert.samples_per_frame
        self.skipped: list[str] = []
        if not self.audio_dir.is_dir():
            raise PretrainDataError(f"{self.audio_dir}: audio folder not found")
        self.labels = None if label_dir is None else self._open_labels(Path(label_dir))
        self.files, self.num_samples = self._usable_files()
        if not self.files:
            raise PretrainDataError(
                f"{self.audio_dir}: no usable audio (need files of at least {cfg.min_crop_seconds} s"
                f"{' with labels in ' + str(label_dir) if label_dir else ''}; skipped {len(self.skipped)})"
            )

    # ---- setup ----------------------------------------------------------------------------
    def _open_labels(self, label_dir: Path):
        from mertkit.pretrain.labels import LabelReader

        reader = LabelReader(label_dir)
        settings = reader.settings
        expected = {"codebooks": self.cfg.n_codebooks, "codebook_size": self.cfg.codebook_size,
                    "sample_rate": self.sample_rate, "hop_length": self.hop}
        wrong = {k: (settings.get(k), v) for k, v in expected.items() if settings and settings.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: labels {a} vs config {b}" for k, (a, b) in wrong.items())
            raise PretrainDataError(f"{label_dir}: labels do not fit the pre-training config ({detail})")
        return reader

    def _usable_files(self) -> tuple[list[str], list[int]]:
        if self.labels is not None:
            candidates = [(rel, self.labels.num_samples(rel)) for rel in self.labels]
        else:
            from mertkit.pretrain.labels import find_audio_files

            candidates = [(rel, self._audio_length(rel)) for rel in find_audio_files(self.audio_dir)]
        files, lengths = [], []
        for rel, samples in candidates:
            if not (self.audio_dir / rel).is_file() or samples < self.cfg.min_crop_samples:
                self.skipped.append(rel)
                continue
            files.append(rel)
            lengths.append(samples)
        return files, lengths

    def _audio_length(self, rel: str) -> int:
        from mertkit.audio import audio_info

        info = audio_info(self.audio_dir / rel)
        if info.frames is not None:
            return round(info.frames * self.sample_rate / info.sample_rate)
        return round((info.duration or 0.0) * self.sample_rate)

    def __len__(self) -> int:
        return len(self.files)

    # ---- order ----------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.files))

    def batches_per_epoch(self, world_size: int) -> int:
        count = len(self.files) // (self.cfg.batch_size * world_size)
        if count == 0:
            raise PretrainDataError(
                f"{self.audio_dir}: {len(self.files)} usable files cannot fill one global batch of "
                f"{self.cfg.batch_size} x {world_size} processes"
            )
        return count

    def positions(self, batch_index: int, rank: int, world_size: int) -> range:
        """Positions in the epoch's order of the clips of one process's batch."""
        size = self.cfg.batch_size
        start = (batch_index * world_size + rank) * size
        return range(start, start + size)

    # ---- clips ----------------------------------------------------------------------------
    def clip(self, epoch: int, position: int, order: np.ndarray, view: int = 0) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(waveform crop, its labels or None, mask seed) of one clip; `view` 1 is the second,
        independently placed crop of the same file (the clip contrast's partner)."""
        from mertkit.audio import load_audio

        rel = self.files[int(order[position])]
        wave = load_audio(self.audio_dir / rel, self.sample_rate)
        labels = None if self.labels is None else self.labels.labels_for(rel)
        crop_stream, mask_stream = CLIP_STREAMS[view]
        rng = np.random.default_rng(clip_seed(self.cfg.seed, epoch, position, stream=crop_stream))
        start_frame = 0
        if wave.shape[0] > self.cfg.crop_samples:
            start_frame = int(rng.integers(0, (wave.shape[0] - self.cfg.crop_samples) // self.hop + 1))
        start = start_frame * self.hop
        wave = wave[start : start + self.cfg.crop_samples]
        if labels is not None:
            labels = self._crop_labels(labels, start_frame, wave.shape[0], rel)
        return wave, labels, clip_seed(self.cfg.seed, epoch, position, stream=mask_stream)

    def _crop_labels(self, labels: np.ndarray, start_frame: int, samples: int, rel: str) -> np.ndarray:
        frames = self.mert.num_frames(samples)
        cropped = labels[:, start_frame : start_frame + frames]
        if cropped.shape[1] < frames:
            raise PretrainDataError(
                f"{rel}: labels have {labels.shape[1]} frames, fewer than the audio needs "
                f"({start_frame} + {frames}); re-run the labelling"
            )
        return cropped

    def batch(self, epoch: int, batch_index: int, rank: int, world_size: int) -> Batch:
        order = self.epoch_order(epoch)
        chosen = [(p, view) for p in self.positions(batch_index, rank, world_size)
                  for view in range(self.cfg.crops_per_clip)]  # a pair's crops side by side
        clips = [self.clip(epoch, p, order, view) for p, view in chosen]
        return collate(clips, [self.files[int(order[p])] for p, _ in chosen])


def collate(clips: list[tuple[np.ndarray, np.ndarray | None, int]], paths: list[str]) -> Batch:
    longest = max(wave.shape[0] for wave, _, _ in clips)
    wave = torch.zeros(len(clips), longest)
    lengths = torch.tensor([w.shape[0] for w, _, _ in clips], dtype=torch.long)
    for i, (w, _, _) in enumerate(clips):
        wave[i, : w.shape[0]] = torch.from_numpy(w)
    labels = None
    if clips[0][1] is not None:
        frames = max(lab.shape[1] for _, lab, _ in clips)
        labels = torch.zeros(len(clips), clips[0][1].shape[0], frames, dtype=torch.long)
        for i, (_, lab, _) in enumerate(clips):
            labels[i, :, : lab.shape[1]] = torch.from_numpy(lab)
    return Batch(wave, lengths, labels, [seed for _, _, seed in clips], paths)


class EpochBatches(torch.utils.data.Dataset):
    """One process's batches of one epoch, indexable so a DataLoader can prefetch them."""

    def __init__(self, dataset: PretrainDataset, epoch: int, rank: int, world_size: int):
        self.dataset, self.epoch, self.rank, self.world_size = dataset, epoch, rank, world_size

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch(self.world_size)

    def __getitem__(self, index: int) -> Batch:
        return self.dataset.batch(self.epoch, index, self.rank, self.world_size)


def _no_collate(batch: Batch) -> Batch:
    return batch


def iterate_batches(dataset: PretrainDataset, epoch: int, start: int, rank: int, world_size: int, workers: int):
    """Yield (epoch, batch index, Batch) from (epoch, start) on, forever, epoch after epoch."""
    while True:
        batches = EpochBatches(dataset, epoch, rank, world_size)
        indices = range(start, len(batches))
        if workers > 0:
            loader = torch.utils.data.DataLoader(
                batches, batch_size=None, sampler=list(indices), num_workers=workers, collate_fn=_no_collate
            )
            for index, batch in zip(indices, loader):
                yield epoch, index, batch
        else:
            for index in indices:
                yield epoch, index, batches[index]
        epoch, start = epoch + 1, 0
