"""Streaming windows, decode workers, length-bucketed exact batching, the CUDA path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_fixtures import write_array, write_text, write_tone
from mertkit.audio import load_audio
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions, Windower, window_plan
from mertkit.models.hubert.model import MertModel
from mertkit.extraction.decode import BLOCK, END, FAILED, decode_files
from mertkit.extraction.runner import load_features, run_extract
from model_fixtures import tiny_config

SR = 24000
MIN = 400


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


def _split(wave: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    cuts = np.sort(rng.integers(0, len(wave) + 1, size=rng.integers(0, 6)))
    return np.split(wave, cuts)


@pytest.mark.parametrize("window,hop", [(1.0, None), (1.0, 0.5), (0.5, 0.37), (1.0, 0.999), (0, None)])
def test_windower_cuts_exactly_the_window_plan(window, hop):
    rng = np.random.default_rng(0)
    for n in [400, 401, 12000, SR - 1, SR, SR + 1, SR + 399, SR + 400, 2 * SR + 7, 3 * SR + 12345]:
        wave = rng.standard_normal(n).astype(np.float32)
        windower = Windower(SR, window, hop, MIN)
        got = [w for block in _split(wave, rng) for w in windower.push(block)] + windower.finish()
        plan = window_plan(n, SR, window, hop, MIN)
        assert [(w.start, w.end) for w in got] == plan, n
        assert [w.index for w in got] == list(range(len(plan)))
        for w in got:
            np.testing.assert_array_equal(w.samples, wave[w.start : w.end])
        # Handover at the middle of each overlap (or gap), computed from the plan itself.
        cuts = [(plan[i][1] + plan[i + 1][0]) / 2 for i in range(len(plan) - 1)]
        assert [w.keep_from for w in got] == [-np.inf, *cuts]
        assert [w.keep_until for w in got] == [*cuts, np.inf]


def test_windower_emits_windows_before_the_stream_ends_and_forgets_audio():
    windower = Windower(SR, 1.0, None, MIN)
    emitted = []
    for _ in range(10):
        emitted += windower.push(np.zeros(SR // 2, np.float32))
        held = sum(len(p) for p in windower._pieces)
        assert held <= 2 * SR  # never more than a window and a block
    assert len(emitted) >= 3  # most windows came out while streaming
    assert len(emitted) + len(windower.finish()) == 5


def test_windower_too_short_and_bad_blocks():
    windower = Windower(SR, 1.0, None, MIN)
    windower.push(np.zeros(100, np.float32))
    with pytest.raises(ExtractError, match="shorter than one frame"):
        windower.finish()
    with pytest.raises(ExtractError, match="NaN"):
        Windower(SR, 1.0, None, MIN).push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ExtractError, match="mono"):
        Windower(SR, 1.0, None, MIN).push(np.zeros((2, 10), np.float32))


def _events_by_job(events):
    blocks, ends, failures = {}, set(), {}
    for e in events:
        if e.kind == BLOCK:
            assert e.job not in ends
            blocks.setdefault(e.job, []).append(e.samples)
        elif e.kind == END:
            ends.add(e.job)
        else:
            assert e.kind == FAILED
            failures[e.job] = e.reason
    return {j: np.concatenate(b) for j, b in blocks.items() if j in ends}, ends, failures


def test_decode_workers_match_inline_decoding(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"t{i}.wav"
        write_tone(p, seconds=1.0 + 0.7 * i, sample_rate=44100, channels=2, freq=300 + 100 * i)
        paths.append(str(p))
    write_text(tmp_path / "bad.mp3")
    paths.insert(2, str(tmp_path / "bad.mp3"))
    inline, inline_ends, inline_fail = _events_by_job(decode_files(paths, SR, block_seconds=0.3))
    pooled, pooled_ends, pooled_fail = _events_by_job(decode_files(paths, SR, workers=2, block_seconds=0.3))
    assert inline_ends == pooled_ends == {0, 1, 3, 4}
    assert set(inline_fail) == set(pooled_fail) == {2} and "bad.mp3" in pooled_fail[2]
    for job, wave in inline.items():
        np.testing.assert_array_equal(pooled[job], wave)
        # and the stream is exactly what load_audio gives
        np.testing.assert_array_equal(wave, load_audio(paths[job], SR))


def test_run_extract_with_workers_equals_sequential(model, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(3):
        write_tone(audio / f"t{i}.flac", seconds=1.3 + 0.9 * i, sample_rate=48000, channels=1, freq=250 + 90 * i)
    write_array(audio / "short.wav", np.zeros(50), 24000)
    options = ExtractOptions(window=1.0, hop=0.7, batch_size=3)
    for workers in (0, 2):
        report = run_extract(model, [audio], tmp_path / f"out{workers}", options, progress=False,
                             workers=workers, block_seconds=0.4)
        assert len(report.done) == 3 and [p for p, _ in report.failed] == [str(audio / "short.wav")]
        assert "shorter than one frame" in report.failed[0][1]
    for i in range(3):
        seq, _ = load_features(tmp_path / "out0" / f"t{i}.flac.safetensors")
        par, _ = load_features(tmp_path / "out2" / f"t{i}.flac.safetensors")
        assert seq.keys() == par.keys() == {"hidden_states", "timestamps", "window_starts", "window_ends"}
        for key in seq:
            np.testing.assert_allclose(par[key], seq[key], atol=1e-5, rtol=0)


def test_streamed_file_equals_whole_waveform(model, tmp_path):
    path = tmp_path / "song.wav"
    write_tone(path, seconds=2.6, sample_rate=44100, channels=2)
    wave = load_audio(path, SR)
    for pool in ("none", "mean"):
        extractor = Extractor(model, ExtractOptions(window=1.0, hop=0.6, pool=pool, batch_size=2))
        streamed = extractor.extract_file(path, block_seconds=0.25)
        whole = extractor.extract(wave)
        np.testing.assert_allclose(streamed.hidden_states, whole.hidden_states, atol=1e-5)
        np.testing.assert_array_equal(streamed.window_starts, whole.window_starts)
        assert streamed.duration == pytest.approx(len(wave) / SR)


def _single(model, wave, pool="none"):
    return Extractor(model, ExtractOptions(window=1.0, pool=pool, batch_size=1)).extract(wave)


@pytest.mark.parametrize("layout", ["post_ln", "pre_ln", "data2vec"])
def test_bucketed_batches_equal_single_runs_and_mostly_skip_masks(layout, monkeypatch):
    torch.manual_seed(1)
    model = MertModel(tiny_config(layout)).eval()
    rng = np.random.default_rng(3)
    lengths = [3 * SR + 5000, SR + 900, 2 * SR + 24, 4 * SR + 11111, 700]
    waves = [rng.standard_normal(n).astype(np.float32) * (i + 1) for i, n in enumerate(lengths)]
    calls = []
    forward = model.forward

    def spy(batch, lengths=None, **kw):
        calls.append(lengths is None)
        return forward(batch, lengths, **kw)

    monkeypatch.setattr(model, "forward", spy)
    extractor = Extractor(model, ExtractOptions(window=1.0, batch_size=4))
    batched = dict(extractor.extract_many(enumerate(waves)))
    # 10 full 1 s windows -> two equal-length batches of 4 without masks; the rest is leftovers.
    assert calls.count(True) >= 2
    monkeypatch.setattr(model, "forward", forward)
    for i, wave in enumerate(waves):
        alone = _single(model, wave)
        np.testing.assert_allclose(batched[i].hidden_states, alone.hidden_states, atol=1e-5)
        np.testing.assert_array_equal(batched[i].timestamps, alone.timestamps)


def test_extract_many_keeps_input_order_when_tails_wait(model):
    rng = np.random.default_rng(4)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (SR + 5000, SR, SR, SR, SR + 3000)]
    keys = [k for k, _ in Extractor(model, ExtractOptions(window=1.0, batch_size=2)).extract_many(
        zip("abcde", waves))]
    assert keys == list("abcde")


def test_pooled_output_is_pooled_over_stitched_frames(model):
    wave = np.random.default_rng(5).standard_normal(int(2.3 * SR)).astype(np.float32)
    options = dict(window=1.0, hop=0.4, batch_size=3)
    frames = Extractor(model, ExtractOptions(**options)).extract(wave)
    mean = Extractor(model, ExtractOptions(pool="mean", **options)).extract(wave)
    top = Extractor(model, ExtractOptions(pool="max", **options)).extract(wave)
    np.testing.assert_allclose(mean.hidden_states, frames.hidden_states.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(top.hidden_states, frames.hidden_states.max(axis=1), atol=1e-6)
    # per-window vectors pool every frame of the window, overlap included
    first = _single(model, wave[:SR]).hidden_states
    np.testing.assert_allclose(mean.window_pooled[0], first.mean(axis=1), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-4), ("bfloat16", 0.1)])
def test_cuda_path_matches_cpu(model, dtype, tolerance):
    wave = np.random.default_rng(6).standard_normal(int(2.5 * SR)).astype(np.float32)
    cpu = Extractor(model, ExtractOptions(window=1.0, pool="mean")).extract(wave)
    gpu_model = MertModel(model.config).eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu = Extractor(gpu_model.cuda(), ExtractOptions(window=1.0, pool="mean", dtype=dtype)).extract(wave)
    np.testing.assert_allclose(gpu.hidden_states, cpu.hidden_states, atol=tolerance, rtol=tolerance)


def test_compile_on_cpu_is_refused(model):
    with pytest.raises(ExtractError, match="needs a CUDA device"):
        Extractor(model, ExtractOptions(window=1.0), compile=True)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_model_matches_eager_on_cuda(model):
    wave = np.random.default_rng(7).standard_normal(int(2.5 * SR)).astype(np.float32)
    gpu_model = MertModel(model.config).eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu_model = gpu_model.cuda()
    eager = Extractor(gpu_model, ExtractOptions(window=1.0)).extract(wave)
    compiled = Extractor(gpu_model, ExtractOptions(window=1.0), compile=True).extract(wave)
    np.testing.assert_allclose(compiled.hidden_states, eager.hidden_states, atol=1e-4)
