"""The extract progress bar counts seconds of audio (with rate and ETA), not files."""
from __future__ import annotations

import numpy as np

from audio_fixtures import write_array, write_tone
from mertkit.extraction.engine import ExtractOptions
from mertkit.extraction.runner import AudioProgress, run_extract
from model_fixtures import tiny_config


def _model():
    import torch

    from mertkit.models.hubert.model import MertModel

    torch.manual_seed(0)
    return MertModel(tiny_config("post_ln")).eval()


def test_bar_counts_audio_seconds_of_every_file(tmp_path, capsys):
    write_tone(tmp_path / "a.wav", seconds=6.0, sample_rate=24000, channels=1)
    write_tone(tmp_path / "b.flac", seconds=3.0, sample_rate=44100, channels=2)
    write_array(tmp_path / "short.wav", np.zeros(80), 24000)  # fails: shorter than one frame
    report = run_extract(_model(), [tmp_path], tmp_path / "out", ExtractOptions(pool="mean", window=1.0),
                         progress=True, block_seconds=0.5)
    assert len(report.done) == 2 and len(report.failed) == 1
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in final and "9/9 s of audio" in final and "3/3 files" in final, final
    assert "s/s" in final  # the rate, in audio seconds per second


def test_quiet_prints_nothing(tmp_path, capsys):
    write_tone(tmp_path / "a.wav", seconds=1.0, sample_rate=24000, channels=1)
    assert run_extract(_model(), [tmp_path], tmp_path / "out", ExtractOptions(pool="mean"), progress=False).ok
    assert capsys.readouterr().err == ""


def test_an_understated_length_grows_the_total(tmp_path, capsys):
    bar = AudioProgress([tmp_path / "missing.wav"], enabled=True)  # declares nothing: 0 s
    bar.advance(0, 2.5)
    bar.file_finished(0)
    assert bar.bar.n == bar.bar.total == 2.5
    bar.close()
