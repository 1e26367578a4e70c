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


def test_logmel_stats_are_the_mean_and_std_of_the_mfccs_log_mel():
    wave = tone(57, harmonics=(1.0, 0.5))
    stats = baselines.logmel_stats(wave, CFG)
    assert stats.shape == (1, 2 * CFG.n_mels) and stats.dtype == np.float32
    bands = baselines.log_mel(wave, CFG)
    np.testing.assert_allclose(stats[0], np.r_[bands.mean(axis=1), bands.std(axis=1)], rtol=1e-5)
    # the MFCCs are its DCT (so this baseline is the MFCCs before the cepstral truncation)
    np.testing.assert_allclose(baselines.mfcc(wave, CFG), baselines.dct_ii_orthonormal(40, 20) @ bands, atol=1e-9)
    # a tone puts its energy in the mel band of its frequency: higher note, higher loudest band
    low, high = (int(baselines.logmel_stats(tone(m), CFG)[0, :40].argmax()) for m in (45, 81))
    assert low < high


def click_track(clicks, seconds, sr, rng, floor=1e-3):
    """Decaying noise bursts at ``clicks`` (s) over a quiet noise floor."""
    wave = floor * rng.normal(size=int(seconds * sr))
    for time in clicks:
        start = int(round(time * sr))
        wave[start : start + 400] += rng.normal(size=400) * np.exp(-np.arange(400) / 80)
    return wave.astype(np.float32)


@pytest.mark.parametrize("frame_rate", [75.0, 50.0])
def test_onset_envelope_peaks_at_the_clicks_of_a_click_track(frame_rate):
    from mertkit.eval.probes import pick_peaks

    rng = np.random.default_rng(3)
    sample_rate, hop = baselines.onset_grid(frame_rate)
    assert sample_rate == hop * frame_rate and abs(sample_rate - 22050) < frame_rate
    clicks = 0.31 + np.arange(8) * 60 / 123  # 123 BPM, off the frame grid
    wave = click_track(clicks, 4.5, sample_rate, rng)
    features = baselines.onset_features(wave, sample_rate, hop)
    cfg = baselines.OnsetConfig()
    assert features.shape == (1, 1 + wave.size // hop, cfg.width)  # centred frames, frame t at t / frame_rate
    envelope = features[0, :, 0]
    assert envelope.mean() == pytest.approx(0.0, abs=1e-5) and envelope.std() == pytest.approx(1.0, rel=1e-4)
    peaks = pick_peaks((envelope - envelope.min()) / np.ptp(envelope), 0.3)
    assert len(peaks) == len(clicks)
    np.testing.assert_array_less(np.abs(peaks - clicks * frame_rate), 1.0)  # within one frame of each click
    # columns 1.. are the band groups: each standardised, their rises on the clicks too
    bands = features[0, :, 1:]
    np.testing.assert_allclose(bands.mean(axis=0), 0.0, atol=1e-5)
    assert (bands[np.rint(clicks * frame_rate).astype(int)].mean(axis=0) > 1.0).all()


def test_onset_grid_refuses_frame_rates_without_a_whole_hop():
    assert baselines.onset_grid(75.0) == (22050, 294)
    for bad in (0.0, -75.0, float("nan"), 75.3):
        with pytest.raises(baselines.FeatureError, match="onset baseline"):
            baselines.onset_grid(bad)


def test_silence_gives_zero_onset_features():
    features = baselines.onset_features(np.zeros(22050, dtype=np.float32), 22050, 294)
    assert not features.any()


def test_onset_files_peak_pick_to_the_reference_beats(tmp_path):
    """write_onset_features -> the beat task's feature loader -> probe-free peak picking: a click
    track on the beats scores F = 1 on test; the clip statistics refuse the beat task."""
    from mertkit.eval.features import from_safetensors_dir, read_feature_file
    from mertkit.eval.probes import peak_picking_result

    rng = np.random.default_rng(4)
    task = TaskSpec("beat", "beat", 1)
    records = []
    for index, split in enumerate(["train"] * 2 + ["valid"] * 2 + ["test"] * 2):
        period = 60 / (90 + 15 * index)
        beats = 0.2 + np.arange(0, 3.5, period)
        path = tmp_path / f"{index}.wav"
        soundfile.write(path, click_track(beats, 4.0, 24000, rng), 24000)
        (tmp_path / f"{index}.beats.txt").write_text("".join(f"{t:.4f}\n" for t in beats))
        records.append(Record(path.name, split, None, path, beats_path=tmp_path / f"{index}.beats.txt"))
    written = baselines.write_onset_features(records, tmp_path / "feats", 75.0)
    _, meta = read_feature_file(written[0])
    assert meta["frame_rate"] == "75.0" and meta["model"] == "onset" and meta["sample_rate"] == "22050"
    data = from_safetensors_dir(tmp_path / "feats", records, task)
    assert data.frame_rate == 75.0 and data.train.x.shape[1::2] == (1, 9)
    result = peak_picking_result(task, data, ProbeConfig(layer=0))
    assert result.score == 1.0 and result.probe.startswith("peak picking (threshold")
    assert np.isnan(result.best_lr) and result.n_test == 2
    with pytest.raises(baselines.FeatureError, match="clip-level; task 'beat' is beat"):
        baselines.baseline_feature_splits(records, task, "logmel")
    with pytest.raises(baselines.FeatureError, match="frame-level baseline for beat tasks"):
        baselines.write_baseline_features(records, tmp_path / "x", "onset")
