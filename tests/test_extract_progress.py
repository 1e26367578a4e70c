"""The extract progress bar counts seconds of audio (with rate and ETA), not files."""
from __future__ import annotations

import logging
import re

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


def test_progress_counts_audio_seconds_of_every_file(tmp_path, caplog):
    write_tone(tmp_path / "a.wav", seconds=6.0, sample_rate=24000, channels=1)
    write_tone(tmp_path / "b.flac", seconds=3.0, sample_rate=44100, channels=2)
    write_array(tmp_path / "short.wav", np.zeros(80), 24000)  # fails: shorter than one frame
    with caplog.at_level(logging.INFO, logger="mertkit.progress"):
        report = run_extract(_model(), [tmp_path], tmp_path / "out", ExtractOptions(pool="mean", window=1.0),
                             progress=True, block_seconds=0.5)
    assert len(report.done) == 2 and len(report.failed) == 1
    # off a terminal: log lines, never a bar's carriage returns; the last one says where it ended
    final = [r.getMessage() for r in caplog.records if r.name == "mertkit.progress"][-1]
    # 9 s of audio (the flac's resampled length rounds up a little), the rate in audio s/s
    assert re.fullmatch(r"extract: 9(\.\d+)? s in \d+:\d\d, [\d.]+ s/s, files=3/3", final), final


def test_on_a_terminal_it_is_a_bar_in_audio_seconds(tmp_path, capsys):
    write_tone(tmp_path / "a.wav", seconds=2.0, sample_rate=24000, channels=1)
    bar = AudioProgress([tmp_path / "a.wav"], enabled=True, tty=True)
    bar.advance(0, 1.5)
    bar.file_finished(0)
    bar.close()
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in final and "2.00/2.00" in final and "files=1/1" in final, final


def test_quiet_prints_nothing(tmp_path, capsys):
    write_tone(tmp_path / "a.wav", seconds=1.0, sample_rate=24000, channels=1)
    assert run_extract(_model(), [tmp_path], tmp_path / "out", ExtractOptions(pool="mean"), progress=False).ok
    assert capsys.readouterr().err == ""


def test_an_understated_length_grows_the_total(tmp_path, capsys):
    bar = AudioProgress([tmp_path / "missing.wav"], enabled=True)  # declares nothing: 0 s
    bar.advance(0, 2.5)
    bar.file_finished(0)
    assert bar.bar.count == bar.bar.total == 2.5
    bar.close()
