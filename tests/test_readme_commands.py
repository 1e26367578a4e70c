"""Every `mert ...` line of the README is a valid command line (read, not run), and every
extra named by an install hint is declared in pyproject.toml."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from mertkit.cli.app import main
from mertkit.cli.options import EXTRAS

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("mert ")]


def _make_paths(args: list[str]) -> None:
    """The folders and files a README line names, so that the command line is read to the end."""
    for arg in args:
        if arg.startswith("-") or arg.startswith("/"):
            continue
        if arg.endswith("/") or re.fullmatch(r"[A-Z_]+", arg):
            Path(arg).mkdir(parents=True, exist_ok=True)
        elif re.search(r"\.(mp3|m4a|wav|flac|csv|jsonl?|pt)$", arg):
            Path(arg).touch()


@pytest.mark.parametrize("line", _readme_commands())
def test_readme_command_line_parses(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(line, comments=True)[1:]
    _make_paths(args)
    command: click.Command = main
    with click.Context(main) as ctx:
        while isinstance(command, click.Group):
            command, args = command.get_command(ctx, args[0]), args[1:]
            assert command is not None, line
    try:
        command.make_context(command.name, list(args))
    except click.UsageError as error:  # an unknown option, an extra argument, a bad value
        pytest.fail(f"{line}: {error.format_message()}")


def test_readme_has_command_lines():
    assert len(_readme_commands()) >= 10


def test_every_install_hint_names_a_declared_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distribution = {"sklearn": "scikit-learn", "faiss": "faiss-cpu"}
    for module, extra in EXTRAS.items():
        wanted = distribution.get(module, module).replace("_", "-")
        names = [re.split(r"[\[<>=!~ ]", spec)[0].replace("_", "-") for spec in extras[extra]]
        assert wanted in names, (module, extra, extras[extra])
