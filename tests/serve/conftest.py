"""Fixtures of the `mert serve` tests: one real catalog per session, a server per module."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

pytest.importorskip("pyarrow")

from serve_fixtures import BuiltCatalog, build_catalog  # noqa: E402


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltCatalog:
    return build_catalog(tmp_path_factory.mktemp("serve-catalog"))


@pytest.fixture(scope="module")
def served(built: BuiltCatalog) -> Iterator[object]:
    """A running server over the built catalog (with its probe); yields the server."""
    from mertkit import store as store_module
    from mertkit.eval.saved_probe import load_probe
    from mertkit.serve.catalog import Catalog
    from mertkit.serve.server import make_server

    catalog = Catalog(store_module.open(built.store), probe=load_probe(built.probe))
    server = make_server(catalog, 0, max_upload_bytes=1 << 20)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()
