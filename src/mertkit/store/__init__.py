"""Stage 4: the feature store (a Parquet dataset of per-track and per-window vectors) and
nearest-neighbour search over it. `mertkit.store.open(DIR)` reads a store back."""
from mertkit.store.parquet import (
    FeatureStore,
    FeatureStoreWriter,
    StoreCorruptError,
    StoreError,
    StoreInputError,
    StoreMismatchError,
    StoreMeta,
    hash_file,
    open,
)

__all__ = [
    "FeatureStore", "FeatureStoreWriter", "StoreCorruptError", "StoreError", "StoreInputError",
    "StoreMismatchError", "StoreMeta", "hash_file", "open",
]
