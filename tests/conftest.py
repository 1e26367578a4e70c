"""Shared fixtures: tiny model configs and official-layout checkpoints built on the fly."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_factory():
    from model_fixtures import tiny_config

    return tiny_config
