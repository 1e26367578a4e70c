"""Hand-crafted baselines: MFCC against nnAudio's librosa-compatible MFCC, chroma on pure tones."""
import numpy as np
import pytest
import soundfile
import torch

from mertkit.eval import baselines
from mertkit.eval.datasets import Record, TaskSpec
from mertkit.eval.probes import ProbeConfig, run_probe

torch.set_num_threads(1)
CFG = baselines.SpectralConfig(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=40)


def tone(midi, seconds=0.5, sr=16000, harmonics=(1.0,), rng=None):
    t = np.arange(int(seconds * sr)) / sr
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    wave = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(harmonics))
    if rng is not None:
        wave = wave + 0.05 * rng.normal(size=t.size)
    return wave.astype(np.float32)


def test_mfcc_matches_nnaudio():
    nnaudio = pytest.importorskip("nnAudio.features")
    rng = np.random.default_rng(0)
    wave = tone(57, seconds=1.0, rng=rng)
    reference = nnaudio.MFCC(sr=16000, n_mfcc=20, n_fft=1024, hop_length=256, n_mels=40, verbose=False)(
        torch.from_numpy(wave)[None]
    ).numpy()[0]
    ours = baselines.mfcc(wave, CFG)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_dct_matrix_matches_scipy():
    from scipy.fft import dct

    x = np.random.default_rng(1).normal(size=16)
    np.testing.assert_allclose(baselines.dct_ii_orthonormal(16, 16) @ x, dct(x, type=2, norm="ortho"), atol=1e-12)


def test_mfcc_stats_shape_and_deltas():
    stats = baselines.mfcc_stats(tone(60), CFG)
    assert stats.shape == (1, 80)
    ramp = np.tile(np.arange(10.0), (2, 1))
    np.testing.assert_allclose(baselines.deltas(ramp)[:, 2:-2], 1.0)  # slope 1 in the interior


@pytest.mark.parametrize("midi", [40, 45, 48, 55, 61, 66, 70, 75, 90])
def test_chroma_peaks_at_pitch_class(midi):
    pitch_classes = baselines.chroma(tone(midi), CFG)
    assert int(pitch_classes.mean(axis=1).argmax()) == midi % 12


def test_linear_probe_on_chroma_stats_recovers_pitch_class():
    rng = np.random.default_rng(2)
    notes = {split: rng.integers(48, 84, size=count) for split, count in (("train", 72), ("valid", 24), ("test", 24))}

    def features(midis):
        # Random harmonic mixes and octaves make raw spectra differ; pitch class stays the label.
        return np.stack([baselines.chroma_stats(tone(m, 0.3, harmonics=(1.0, rng.random(), rng.random() * 0.5), rng=rng), CFG) for m in midis])

    from mertkit.eval.features import from_arrays

    data = from_arrays(*[(features(notes[s]), notes[s] % 12) for s in ("train", "valid", "test")])
    result = run_probe(TaskSpec("pc", "multiclass", 12), data,
                       ProbeConfig(layer=0, lrs=(1e-2,), max_epochs=300, patience=50, batch_size=None, seeds=(0,)))
    assert result.score > 0.8  # chance is 1/12


def test_baseline_feature_splits_from_audio_files(tmp_path):
    task = TaskSpec("pc", "multiclass", 2, labels=("C", "G"))
    records = []
    for split in ("train", "valid", "test"):
        for name, midi in (("C", 60), ("G", 67)):
            path = tmp_path / f"{split}_{name}.wav"
            soundfile.write(path, tone(midi, 0.3, sr=22050), 22050)  # resampled to 16 kHz on load
            records.append(Record(path.name, split, name, path, start=0.05, end=0.25))
    data = baselines.baseline_feature_splits(records, task, "chroma", CFG)
    assert data.train.x.shape == (2, 1, 24)
    assert int(data.test.x[1, 0, :12].argmax()) == 7  # G
    written = baselines.write_baseline_features(records[:1], tmp_path / "feats", "mfcc", CFG)
    from mertkit.eval.features import read_feature_file

    hidden, meta = read_feature_file(written[0])
    assert hidden.shape == (1, 80) and meta["model"] == "mfcc"
