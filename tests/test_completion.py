"""The shell completion the README documents: the scripts are produced, and completing
`mert ex` offers `extract`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MERT = str(Path(sys.executable).parent / "mert")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_produced(shell):
    env = {**os.environ, "_MERT_COMPLETE": f"{shell}_source"}
    out = subprocess.run([MERT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "_MERT_COMPLETE" in out.stdout


def test_completing_a_sub_command_name():
    env = {**os.environ, "_MERT_COMPLETE": "bash_complete", "COMP_WORDS": "mert ex", "COMP_CWORD": "1"}
    out = subprocess.run([MERT], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,extract" in out.stdout.split()  # click's bash protocol: type,value per line
