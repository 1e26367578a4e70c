"""The shared progress helper: log lines off a terminal, a tqdm bar on one, silence when quiet."""
from __future__ import annotations

import logging

import pytest

from mertkit import progress
from mertkit.progress import Progress, format_duration


@pytest.fixture(autouse=True)
def not_quiet():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_lines_off_a_terminal_show_count_rate_and_eta(caplog, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    caplog.set_level(logging.INFO, logger="mertkit.progress")
    with Progress(10, "probes", unit="fit", tty=False, log_every=0.0) as bar:
        clock.now += 8.0
        bar.update(4, loss=0.25)
        assert bar.count == 4 and bar.rate == 0.5 and bar.eta == 12.0
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "probes: 4/10 fit, 0.5 fit/s, ETA 0:12, loss=0.25"
    assert lines[-1] == "probes: 4 fit in 0:08, 0.5 fit/s, loss=0.25"


def test_log_lines_are_throttled(caplog):
    caplog.set_level(logging.INFO, logger="mertkit.progress")
    with Progress(100, "labels", unit="file", tty=False, log_every=3600.0) as bar:
        for _ in range(100):
            bar.update(1)
    assert len(caplog.records) == 1 and "100 file in" in caplog.records[0].getMessage()  # only the closing line


def test_quiet_silences_bar_and_log(caplog, capsys):
    caplog.set_level(logging.INFO, logger="mertkit.progress")
    progress.set_quiet(True)
    with Progress(5, "pretrain", unit="step", tty=True) as bar:
        bar.update(5)
    with Progress(5, "pretrain", unit="step", tty=False, log_every=0.0, enabled=True) as bar:
        bar.update(5)  # set_quiet wins over enabled=True
    assert bar.count == 5 and not caplog.records and capsys.readouterr().err == ""


def test_terminal_bar_goes_to_stderr(capsys):
    with Progress(3, "bench-suite", unit="clip", tty=True) as bar:
        bar.update(3, task="key")
    err = capsys.readouterr().err
    assert "bench-suite" in err and "3/3" in err and "task=key" in err


def test_quiet_flag_of_the_cli_silences_progress():
    from mertkit.cli.options import configure_logging

    configure_logging(quiet=False, verbose=1)
    assert logging.getLogger("mertkit").level == logging.DEBUG and not progress.is_quiet()
    configure_logging(quiet=True)
    assert logging.getLogger("mertkit").level == logging.WARNING and progress.is_quiet()


def test_format_duration():
    assert format_duration(59.4) == "0:59" and format_duration(3725) == "1:02:05" and format_duration(float("nan")) == "?"
