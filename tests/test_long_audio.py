"""Long tracks in bounded memory: the incremental safetensors writer and flat peak RSS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import mertkit
from audio_fixtures import write_tone
from mertkit.audio import load_audio
from mertkit.models.checkpoint import save_pretrained
from mertkit.extraction.engine import Extractor, ExtractOptions, WindowOutput
from mertkit.models.hubert.model import MertModel
from mertkit.extraction.runner import SafetensorsFrameWriter, output_metadata, run_extract
from model_fixtures import tiny_config

SR = 24000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MertModel(tiny_config("pre_ln")).eval()


def test_frame_level_file_equals_in_memory_features(model, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "song.flac"
    write_tone(path, seconds=7.3, sample_rate=44100, channels=2)
    options = ExtractOptions(window=2.0, hop=1.5, batch_size=3)
    report = run_extract(model, [path], tmp_path / "out", options, progress=False, block_seconds=0.7)
    assert report.done == [str(path)]
    reference = Extractor(model, options).extract(load_audio(path, SR))
    target = tmp_path / "out" / "song.flac.safetensors"
    with safe_open(str(target), framework="numpy") as f:
        assert set(f.keys()) == {"hidden_states", "timestamps", "window_starts", "window_ends"}
        np.testing.assert_allclose(f.get_tensor("hidden_states"), reference.hidden_states, atol=1e-5)
        np.testing.assert_array_equal(f.get_tensor("timestamps"), reference.timestamps)
        np.testing.assert_array_equal(f.get_tensor("window_starts"), reference.window_starts)
        np.testing.assert_array_equal(f.get_tensor("window_ends"), reference.window_ends)
        assert f.metadata()["window"] == "2.0" and json.loads(f.metadata()["layers"]) == [0, 1, 2, 3]
        assert f.get_tensor("hidden_states").dtype == np.float32
    header_length = int.from_bytes(target.read_bytes()[:8], "little")
    assert header_length % 8 == 0
    # the stitching rule: every frame once, in time order, one frame hop apart within windows
    assert np.all(np.diff(reference.timestamps) > 0)
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_writer_abort_leaves_nothing(model, tmp_path):
    extractor = Extractor(model)
    writer = SafetensorsFrameWriter(tmp_path / "x.safetensors", output_metadata(model, extractor, "x"), SR)
    frames = np.ones((2, 5, 3), np.float32)
    writer.add(WindowOutput(0, 0, 2000, np.arange(5.0), frames=frames))
    assert list(tmp_path.glob(".tmp-*"))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- peak memory

RSS_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from mertkit.audio import load_audio
    from mertkit.models.checkpoint import load
    from mertkit.extraction.engine import Extractor, ExtractOptions
    from mertkit.extraction.runner import run_extract

    def peak_kib():
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0])

    mode, ckpt, audio, out = sys.argv[1:5]
    model = load(ckpt)
    options = ExtractOptions(window=1.0, batch_size=8)
    with open("/proc/self/clear_refs", "w") as handle:  # resets the peak (VmHWM) to the current RSS
        handle.write("5")
    before = peak_kib()
    if mode == "stream":
        report = run_extract(model, [audio], out, options, progress=False)
        assert report.ok, report.failed
    else:
        Extractor(model, options).extract(load_audio(audio, 24000))
    print(before, peak_kib())
    """
)


def _write_long_tone(path: Path, seconds: int, rate: int = 48000) -> None:
    """A long tone written a second at a time, so the test itself stays small."""
    t = np.arange(rate) / rate
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as handle:
        for second in range(seconds):
            handle.write(0.3 * np.sin(2 * np.pi * (220 + second % 50) * t))


def _peak_rss_mib(mode: str, ckpt: Path, audio: Path, out: Path) -> float:
    """Peak resident memory (MiB) of a fresh process while it extracts, above its RSS before."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(mertkit.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", RSS_CHILD, mode, str(ckpt), str(audio), str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    before, peak = (int(v) for v in result.stdout.split()[-2:])
    return (peak - before) / 1024


@pytest.mark.slow  # three fresh processes (each imports torch): ~10 s idle, more on a busy machine
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_does_not_grow_with_track_length(tmp_path):
    torch.manual_seed(0)
    ckpt = save_pretrained(MertModel(tiny_config("post_ln")), tmp_path / "ckpt", formats=("safetensors",))
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _write_long_tone(short, 60)
    _write_long_tone(long, 240)
    stream_short = _peak_rss_mib("stream", ckpt, short, tmp_path / "o1")
    stream_long = _peak_rss_mib("stream", ckpt, long, tmp_path / "o2")
    whole_long = _peak_rss_mib("whole", ckpt, long, tmp_path / "o3")
    # 180 s more audio: decoding it whole holds > 50 MiB more (48 kHz and 24 kHz float32 copies
    # plus all frames), which the measurement must see; streaming holds the same few windows.
    assert whole_long - stream_long > 40, (stream_short, stream_long, whole_long)
    assert stream_long - stream_short < 8, (stream_short, stream_long, whole_long)
    assert (tmp_path / "o2" / "long.wav.safetensors").stat().st_size > 4 * 240 * 75 * 32 * 4
