"""mertkit.extraction.allocator: glibc malloc keeps freed activation memory, once, with an opt-out."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate and free a 64 MiB block 20 times; count the minor page faults it costs. With the
# defaults each round is mmapped afresh and faulted in again; with the setting, the heap
# keeps it and only the first round faults.
_PROBE = """
import resource, sys
import numpy as np
from mertkit.extraction.allocator import keep_freed_memory
applied = keep_freed_memory()
np.ones(8 * 1024 * 1024)  # first touch, untimed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(8 * 1024 * 1024)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "MERTKIT_KEEP_FREED_MEMORY"}
    if setting is not None:
        env["MERTKIT_KEEP_FREED_MEMORY"] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not GLIBC, reason="the setting exists only for glibc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = _probe(None)
    off, faults_off = _probe("0")
    assert applied and not off
    # The default: every round faults the block in again (fewer faults than pages where
    # transparent huge pages map 2 MiB at a time). Kept: the rounds reuse the first block.
    assert faults_off >= 20
    assert faults * 10 < faults_off, (faults, faults_off)


def test_extractor_on_cpu_applies_it(monkeypatch):
    from mertkit.extraction import engine as extract
    from mertkit.models.hubert.model import MertModel
    from model_fixtures import tiny_config

    calls = []
    monkeypatch.setattr(extract, "keep_freed_memory", lambda: calls.append(1) or True)
    extract.Extractor(MertModel(tiny_config("post_ln")).eval())
    assert calls == [1]
