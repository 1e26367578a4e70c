"""Bad option values: a one-line usage error (exit code 2) before any work, never a traceback;
and the grammar every command shares (an Example in --help, -q/-v, --device auto)."""
from __future__ import annotations

import re
import sys

import pytest
from click.testing import CliRunner

from mertkit.cli.app import COMMANDS, main
from mertkit.cli.options import install_hint

# Commands whose options are owned by other work and do not use cli/options.py yet.
NOT_ON_SHARED_OPTIONS: set[str] = set()


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "a.wav").write_bytes(b"")
    return tmp_path


def _base(command: str, tmp) -> list[str]:
    """The required arguments of each command, so that only the option under test is wrong."""
    return {
        "extract": ["extract", str(tmp / "a.wav"), "--model", "x", "-o", str(tmp / "o")],
        "probe": ["probe", "--features", str(tmp / "in"), "--manifest", str(tmp / "m.csv"), "--task", "gtzan",
                  "-o", str(tmp / "o")],
        "eval": ["eval", "-o", str(tmp / "o")],
        "labels": ["labels", "--weights", str(tmp / "a.wav"), str(tmp / "in"), "-o", str(tmp / "o")],
        "pretrain": ["pretrain", "--audio", str(tmp / "in"), "-o", str(tmp / "o"), "--config", "tiny"],
        "demo": ["demo", "-o", str(tmp / "o")],
        "bench-suite": ["bench-suite", "synth", "-o", str(tmp / "o")],
    }[command]


BAD = [
    ("extract", ["--window", "nan"], "--window"),
    ("extract", ["--window", "inf"], "--window"),
    ("extract", ["--window", "-1"], "--window"),
    ("extract", ["--hop", "nan"], "--hop"),
    ("extract", ["--hop", "0"], "--hop"),
    ("extract", ["--batch-size", "0"], "--batch-size"),
    ("extract", ["--batch-size", str(10**9)], "--batch-size"),
    ("extract", ["--workers", "-1"], "--workers"),
    ("extract", ["--actors", "0"], "--actors"),
    ("extract", ["--shard-rows", "0"], "--shard-rows"),
    ("extract", ["--device", "banana"], "--device"),
    ("extract", ["--device", "gpu"], "--device"),
    ("extract", ["--device", "cuda:99"], "--device"),
    ("probe", ["--lrs", "-1"], "--lrs"),
    ("probe", ["--lrs", "nan"], "--lrs"),
    ("probe", ["--lrs", "1e-3,inf"], "--lrs"),
    ("probe", ["--lrs", ","], "--lrs"),
    ("probe", ["--seeds", "-1"], "--seeds"),
    ("probe", ["--epochs", "0"], "--epochs"),
    ("probe", ["--batch-size", "-1"], "--batch-size"),
    ("eval", ["--lrs", "nan"], "--lrs"),
    ("eval", ["--window", "inf"], "--window"),
    ("eval", ["--batch-size", "0"], "--batch-size"),
    ("eval", ["--device", "gpu"], "--device"),
    ("eval", ["--seeds", "one"], "--seeds"),
    ("labels", ["--bandwidth", "nan"], "--bandwidth"),
    ("labels", ["--device", "banana"], "--device"),
    ("pretrain", ["--device", "banana"], "--device"),
    ("demo", ["--device", "mps:0"], "--device"),
    ("bench-suite", ["--seed", "-1"], "--seed"),
    ("bench-suite", ["--clips", "0"], "--clips"),
    ("extract", ["-q", "-v"], "-q/--quiet or -v/--verbose"),
]


@pytest.mark.parametrize("command,bad,option", BAD, ids=[f"{c} {' '.join(b)}" for c, b, _ in BAD])
def test_bad_option_value_is_a_one_line_usage_error(paths, command, bad, option):
    result = CliRunner().invoke(main, _base(command, paths) + bad)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, TypeError))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.output


def test_unavailable_device_says_so(paths):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(main, _base("extract", paths) + ["--device", "cuda"])
    assert result.exit_code == 2 and "cuda is not available on this machine" in result.output


def test_device_auto_resolves_to_what_the_machine_has():
    import torch

    from mertkit.cli.options import Device

    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert Device().convert("auto", None, None) == expected
    assert Device().convert("CPU", None, None) == "cpu"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_has_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    if command in NOT_ON_SHARED_OPTIONS:
        pytest.skip(f"mert {command} does not use cli/options.py yet")
    assert re.search(rf"Examples?:\n +mert {command}\b", result.output), result.output
    if command == "bench-suite":
        result = CliRunner().invoke(main, [command, "synth", "--help"])
        assert re.search(r"Examples?:\n +mert bench-suite synth ", result.output), result.output
    assert "-q, --quiet" in result.output and "-v, --verbose" in result.output
    if "--device" in result.output:
        assert "[default: auto]" in result.output
    assert "--layer " not in result.output and "--layer\n" not in result.output  # the old spelling stays hidden


def test_group_help_has_an_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and re.search(r"Examples?:\n +mert demo", result.output)


def test_old_layer_spelling_still_works_but_says_so(paths):
    from mertkit.cli.probe import probe

    result = CliRunner().invoke(probe, _base("probe", paths)[1:] + ["--layer", "banana"])
    assert "--layer is deprecated: use --layers" in result.output
    assert result.exit_code == 2 and "'banana'" in result.output


def test_missing_optional_package_names_how_to_install_it(paths, monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)  # import now fails as if not installed
    result = CliRunner().invoke(main, _base("bench-suite", paths) + ["--clips", "3", "--task", "tempo"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pip install --no-deps 'tinysoundfont==0.3.7'" in result.output


@pytest.mark.parametrize("module,extra", [("matplotlib.pyplot", "eval"), ("pyarrow", "store"), ("faiss", "search"),
                                          ("ray.data", "ray"), ("sklearn.cluster", "pretrain")])
def test_install_hint_names_the_extra(module, extra):
    try:
        try:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        except ImportError as inner:
            raise ImportError("plots need it") from inner
    except ImportError as error:
        assert install_hint(error) == f"the {module.split('.')[0]!r} package is missing: pip install 'mertkit[{extra}]'"
    assert install_hint(ImportError("something else")) == "something else"


def test_an_import_error_inside_a_command_is_one_line(paths, monkeypatch):
    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setattr("mertkit.extraction.runner.run_extract", broken)
    result = CliRunner().invoke(main, ["demo", "-o", str(paths / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: the 'pyarrow' package is missing: pip install 'mertkit[store]'" in result.output
