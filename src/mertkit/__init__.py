"""mertkit: the m-a-p MERT / music2vec family in native PyTorch.

The top-level names are imported lazily so that `mert --help` and small scripts do not pay
for torch's import unless they need a model.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "MertConfig": "mertkit.models.hubert.config",
    "MertModel": "mertkit.models.hubert.model",
    "MertOutput": "mertkit.models.hubert.model",
    "load": "mertkit.models.checkpoint",
    "load_audio": "mertkit.audio",
    "PRETRAINED": "mertkit.models.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mertkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
