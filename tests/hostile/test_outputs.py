"""Hostile outputs: every per-file output problem is that file's `FAILED` line, the others
finish and are kept, nothing half-written or temporary stays behind."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mertkit.cli.app import main
from mertkit.extraction import runner
from mertkit.extraction.engine import ExtractError, ExtractOptions
from mertkit.extraction.runner import load_features, run_extract
from outputs_fixtures import audio_folder, poison_layer, run_mert, temps_under, tiny_checkpoint, tiny_model, write_loud

OPTIONS = {"none": ExtractOptions(window=0.5, batch_size=2),
           "mean": ExtractOptions(window=0.5, batch_size=2, pool="mean")}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("pool", ["none", "mean"])
@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_features_fail_that_file_naming_the_layer(model, tmp_path, pool, value, kind):
    audio = audio_folder(tmp_path / "audio")
    write_loud(audio / "loud.wav")
    hooks = poison_layer(model, layer=2, value=value)
    try:
        report = run_extract(model, [audio], tmp_path / "out", OPTIONS[pool], progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert report.failed == [(str(audio / "loud.wav"), f"non-finite features in layer 2 ({kind})")]
    assert sorted(report.done) == sorted(str(audio / n) for n in ("a.wav", "b.wav", "c.wav"))
    assert not (tmp_path / "out" / "loud.wav.safetensors").exists()
    for name in ("a.wav", "b.wav", "c.wav"):
        tensors, _ = load_features(tmp_path / "out" / f"{name}.safetensors")
        assert np.isfinite(tensors["hidden_states"]).all()
    assert not temps_under(tmp_path / "out")


@pytest.mark.parametrize("pool", ["none", "mean"])
def test_a_full_disk_fails_only_the_file_being_written(model, tmp_path, monkeypatch, pool):
    audio = audio_folder(tmp_path / "audio")
    real = runner.atomic_write
    temps_seen = []

    def fill_disk(target, write, **kwargs):
        if Path(target).name != "b.wav.safetensors":
            return real(target, write, **kwargs)

        def partly(handle):  # half a file reaches the disk, then it is full
            handle.write(b"\0" * 100)
            temps_seen.extend(temps_under(Path(target).parent))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(target, partly, **kwargs)

    monkeypatch.setattr(runner, "atomic_write", fill_disk)
    report = run_extract(model, [audio], tmp_path / "out", OPTIONS[pool], progress=False)
    assert [path for path, _ in report.failed] == [str(audio / "b.wav")]
    assert "No space left on device" in report.failed[0][1] and "\n" not in report.failed[0][1]
    assert sorted(report.done) == [str(audio / "a.wav"), str(audio / "c.wav")]
    assert temps_seen, "the failing write went through a temp file"
    assert not temps_under(tmp_path / "out") and not (tmp_path / "out" / "b.wav.safetensors").exists()


def test_a_name_too_long_for_the_file_system_fails_alone(model, tmp_path):
    audio = audio_folder(tmp_path / "audio", names=("a.wav",))
    long_name = "x" * (255 - len(".wav")) + ".wav"  # fits; with ".safetensors" appended it does not
    write_loud(audio / long_name)
    report = run_extract(model, [audio], tmp_path / "out", OPTIONS["mean"], progress=False)
    assert report.done == [str(audio / "a.wav")]
    ((path, reason),) = report.failed
    assert path == str(audio / long_name) and reason.startswith("output name too long for the file system")
    assert not temps_under(tmp_path / "out")


def test_unusable_output_folders_are_one_line_errors_up_front(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExtractError, match="cannot create the output folder"):
        run_extract(model, [tmp_path], blocker / "out", OPTIONS["mean"], progress=False)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    for flag in ("--out", "--store"):
        result = CliRunner().invoke(main, ["extract", str(tmp_path), "--model", str(checkpoint), flag,
                                           str(blocker / "x"), "--pool", "mean", "--quiet"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
        assert len(result.output.strip().splitlines()) == 1 and "file/x" in result.output, result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_up_front(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ExtractError, match="not writable"):
            run_extract(model, [tmp_path], out, OPTIONS["mean"], progress=False)
    finally:
        out.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_honour_the_umask(model, tmp_path, mask):
    audio = audio_folder(tmp_path / "audio", names=("a.wav",))
    previous = os.umask(mask)
    try:
        for pool in ("none", "mean"):
            report = run_extract(model, [audio], tmp_path / pool, OPTIONS[pool], progress=False,
                                 store=runner.StoreOptions(tmp_path / "store") if pool == "mean" else None)
            assert report.ok, report.failed
    finally:
        os.umask(previous)
    written = [tmp_path / "none" / "a.wav.safetensors", tmp_path / "mean" / "a.wav.safetensors",
               tmp_path / "store" / "store.json", *(tmp_path / "store").glob("part-*.parquet")]
    assert len(written) == 4
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_a_fifo_in_a_store_run_is_skipped_with_a_message_never_opened(tmp_path):
    audio = audio_folder(tmp_path / "audio", names=("a.wav",))
    os.mkfifo(audio / "pipe.wav")  # opening it for reading would block forever
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    result = run_mert("extract", str(audio), "--model", str(checkpoint), "--out", str(tmp_path / "out"),
                      "--store", str(tmp_path / "store"), "--pool", "mean", "--quiet", timeout=120)
    assert result.returncode == 1, result.stderr
    # Discovery refuses it from stat alone: hashing it for the store would block too.
    assert f"FAILED {audio / 'pipe.wav'}: not a regular file (a FIFO)" in result.stderr
    assert "1 extracted" in result.stdout and (tmp_path / "out" / "a.wav.safetensors").is_file()
