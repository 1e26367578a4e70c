"""mertkit: the m-a-p MERT / music2vec family in native PyTorch.

    import mertkit
    model = mertkit.load("MERT-v1-95M")            # or "mertkit-tiny-mel", a hub id, a folder
    feats = mertkit.embed(model, "song.mp3")       # exactly what `mert extract` gives (any options)
    vectors = mertkit.embed_file(model, "song.mp3")  # pooled: what `mert extract --pool mean` gives
    store = mertkit.store.open("feats.parquet/")   # a feature store written by `mert extract --store`
    hits = mertkit.search(store, vectors, layer=12, k=10)

The top-level names and sub-packages are imported lazily so that `mert --help` and small
scripts do not pay for torch's import unless they need a model.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    "MertConfig": "mertkit.models.hubert.config",
    "MertModel": "mertkit.models.hubert.model",
    "MertOutput": "mertkit.models.hubert.model",
    "Mert2Config": "mertkit.models.mert2.config",
    "Mert2Model": "mertkit.models.mert2.model",
    "contract_of": "mertkit.models.family",
    "load": "mertkit.models.checkpoint",
    "load_audio": "mertkit.audio",
    "PRETRAINED": "mertkit.models.registry",
    "embed": "mertkit.extraction.api",
    "weighted_layer_average": "mertkit.extraction.api",
    "stack_pooled": "mertkit.extraction.api",
    "embed_file": "mertkit.extraction.api",
    "Extractor": "mertkit.extraction.engine",
    "ExtractOptions": "mertkit.extraction.engine",
    "run_extract": "mertkit.extraction.runner",
    "load_features": "mertkit.extraction.runner",
    "search": "mertkit.store.search",
}
# sub-packages reachable as attributes after `import mertkit` (e.g. mertkit.store.open)
_SUBMODULES = ("audio", "eval", "extraction", "hear", "models", "pretrain", "store", "synth")

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mertkit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mertkit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
