"""Signals: SIGTERM and SIGINT mid-run leave no temp files (and a store keeps the tracks that
finished); the temps of a SIGKILLed run are removed by the next run into the same folder."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mertkit.extraction.engine import ExtractOptions
from mertkit.extraction.runner import StoreOptions, load_features, load_for_extraction, run_extract
from mertkit.fileio import remove_stale_temps, temp_prefix, terminate_raises
from outputs_fixtures import audio_folder, mertkit_env, temps_under, tiny_checkpoint

NAMES = ("a.wav", "b.wav", "c.wav", "d.wav", "e.wav")
WINDOW = 0.5
# The child slows each window down, says when it is mid-run, and reports finished tracks.
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    # a child of a background job inherits SIGINT ignored; a user's terminal run has Python's handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from mertkit.extraction import runner
    from mertkit.extraction.engine import ExtractOptions

    checkpoint, audio, out, store, pool = sys.argv[1:6]
    real_add, windows = runner._CheckedSink.add, [0]

    def slow_add(self, output):
        real_add(self, output)
        windows[0] += 1
        if windows[0] == 3:
            print("MID-RUN", flush=True)
        time.sleep(0.2)

    runner._CheckedSink.add = slow_add
    model = runner.load_for_extraction(checkpoint)
    options = ExtractOptions(window=%r, batch_size=1, pool=pool)
    try:
        runner.run_extract(model, [audio], out if out != "-" else None, options, progress=False,
                           store=runner.StoreOptions(store) if store != "-" else None,
                           on_event=lambda kind, path, _: print(kind.upper(), path, flush=True))
    except KeyboardInterrupt:
        sys.exit(130)
    print("FINISHED", flush=True)
    """ % WINDOW
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    return tiny_checkpoint(root / "ckpt"), audio_folder(root / "audio", NAMES, seconds=2.0)


def start(setup, out: Path | None, store: Path | None, pool: str) -> subprocess.Popen:
    checkpoint, audio = setup
    args = [str(checkpoint), str(audio), str(out) if out else "-", str(store) if store else "-", pool]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=mertkit_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(process: subprocess.Popen, word: str, count: int = 1) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if sum(seen.startswith(word) for seen in lines) == count:
            return lines
    raise AssertionError(f"child ended before {word!r}: {process.wait()} {process.stderr.read()}")


def finish(process: subprocess.Popen) -> tuple[int, str]:
    code = process.wait(timeout=120)
    rest = process.stdout.read()
    process.stdout.close()
    process.stderr.close()
    return code, rest


def rerun(setup, out: Path | None, store: Path | None, pool: str):
    checkpoint, audio = setup
    options = ExtractOptions(window=WINDOW, batch_size=1, pool=pool)
    return run_extract(load_for_extraction(checkpoint), [audio], out, options, progress=False,
                       store=StoreOptions(store) if store else None)


def test_sigterm_mid_run_leaves_no_temps_and_a_rerun_finishes(setup, tmp_path):
    out = tmp_path / "out"
    child = start(setup, out, None, "none")
    wait_for(child, "MID-RUN")
    assert temps_under(out), "the child must be caught while spooling a track"
    child.send_signal(signal.SIGTERM)
    code, rest = finish(child)
    assert code == 128 + signal.SIGTERM and "FINISHED" not in rest
    assert not temps_under(out)
    for done in out.glob("*.safetensors"):
        load_features(done)  # whatever was written is complete
    report = rerun(setup, out, None, "none")
    assert report.ok and len(report.done) + len(report.skipped) == len(NAMES)


def test_sigint_mid_store_run_keeps_the_finished_tracks(setup, tmp_path):
    from mertkit.store.parquet import FeatureStore

    store = tmp_path / "store"
    child = start(setup, None, store, "mean")
    lines = wait_for(child, "DONE", count=2)
    child.send_signal(signal.SIGINT)
    code, rest = finish(child)
    assert code == 130 and "FINISHED" not in rest
    finished = [line.split(" ", 1)[1] for line in lines + rest.splitlines() if line.startswith("DONE")]
    stored = [path for path, _ in FeatureStore(store).keys()]
    assert len(finished) >= 2 and sorted(stored) == sorted(str(Path(p).resolve()) for p in finished)
    assert not temps_under(store)
    report = rerun(setup, None, store, "mean")
    assert report.ok and sorted(report.skipped) == sorted(finished)
    assert len(FeatureStore(store)) == len(NAMES)


def test_temps_of_a_killed_run_are_removed_by_the_next_run(setup, tmp_path):
    out = tmp_path / "out"
    child = start(setup, out, None, "none")
    wait_for(child, "MID-RUN")
    child.send_signal(signal.SIGKILL)
    finish(child)
    left = temps_under(out)
    assert left, "SIGKILL cannot clean up: the next run must"
    live = out / f"{temp_prefix()}inflight"  # a temp of a process that still runs (this one)
    live.write_bytes(b"")
    report = rerun(setup, out, None, "none")
    assert report.ok
    assert temps_under(out) == [live]


def test_only_temps_of_ended_processes_are_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    host = temp_prefix().split("-")[1]
    stale_file = tmp_path / f".tmp-{host}-{dead_pid}-abc"
    stale_dir = tmp_path / f".tmp-{host}-{dead_pid}-spool"
    other_host = tmp_path / f".tmp-00000000-{dead_pid}-abc"
    mine = tmp_path / f"{temp_prefix()}x"
    user_file = tmp_path / ".tmp-notes.txt"
    for path in (stale_file, other_host, mine, user_file):
        path.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "layer-0").write_bytes(b"\0")
    assert sorted(remove_stale_temps(tmp_path)) == sorted([stale_file, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (other_host, mine, user_file))


def test_handlers_are_restored_and_ignored_signals_stay_ignored():
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with terminate_raises():
            assert signal.getsignal(signal.SIGTERM) is not before
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(SystemExit) as caught:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this at once
            assert caught.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


class _SignalOnRead(io.FileIO):
    """A file whose n-th read sends this process SIGINT: the handler then runs inside
    soundfile's cffi reader callback, which swallows the KeyboardInterrupt it raises."""

    signal_on, reads = 0, 0

    def readinto(self, buffer):
        type(self).reads += 1
        if type(self).reads == self.signal_on:
            os.kill(os.getpid(), signal.SIGINT)
        return super().readinto(buffer)


@pytest.mark.parametrize("signal_on", [3, 12], ids=["opening", "decoding"])
def test_a_signal_swallowed_by_the_reader_callback_is_raised_again(tmp_path, monkeypatch, signal_on):
    from audio_fixtures import write_tone
    from mertkit import audio

    path = tmp_path / "long.wav"
    write_tone(path, seconds=4.0, sample_rate=24000)
    monkeypatch.setattr(_SignalOnRead, "signal_on", signal_on)
    monkeypatch.setattr(_SignalOnRead, "reads", 0)
    monkeypatch.setattr(audio, "_open_file", lambda name, _: _SignalOnRead(name, "rb"))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), terminate_raises():
            for _ in audio.stream_audio(path, 24000, block_seconds=0.1):
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _SignalOnRead.reads >= signal_on
