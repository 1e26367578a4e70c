"""`mert serve`: a local web page over a feature store (127.0.0.1 only, works offline)."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from mertkit.cli.options import examples, install_hint, model_option, verbosity

LOG = logging.getLogger("mertkit.serve")


@click.command("serve", epilog=examples(
    "mert serve --store feats/",
    "mert serve --store feats/ --probe probe-out/ --model MERT-v1-95M --port 8000",
))
@click.option("--store", "store_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Feature store directory (written by `mert extract --store`).")
@model_option(required=False, help="Model that embeds dropped audio files: registry name, hub id or checkpoint "
                                   "folder [default: the model recorded in the store].")
@click.option("--probe", "probe_path", default=None, type=click.Path(exists=True, path_type=Path),
              help="A `mert probe` output folder (or its probe.safetensors): show its predictions.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--audio-root", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder that relative track paths in the store resolve against [default: the current folder].")
@click.option("--max-upload-mb", default=200, show_default=True, type=click.IntRange(min=1),
              help="Largest audio file the page accepts.")
@verbosity
def serve(store_dir: Path, model: str | None, probe_path: Path | None, port: int, audio_root: Path | None,
          max_upload_mb: int) -> None:
    """Explore a feature store in the browser: pick or drop a track, hear it and its nearest
    neighbours, see the catalog on a 2-D map and a saved probe's predictions (-v logs requests)."""
    from mertkit import store as store_module
    from mertkit.eval.saved_probe import SavedProbeError, load_probe
    from mertkit.serve.catalog import Catalog, ServeError
    from mertkit.serve.server import make_server

    try:
        store = store_module.open(store_dir)
        probe = load_probe(probe_path) if probe_path is not None else None
        catalog = Catalog(store, model=model, probe=probe, audio_root=audio_root)
        if not catalog.tracks:
            raise ServeError(f"{store_dir}: the store holds no tracks")
        LOG.info("loading layer %d of %d tracks ...", catalog.default_layer, len(catalog.tracks))
        catalog.layer_map(catalog.default_layer)  # first page load is then instant; bad shards show now
        server = make_server(catalog, port, max_upload_bytes=max_upload_mb << 20)
    except (store_module.StoreError, SavedProbeError, ServeError) as error:
        raise click.ClickException(str(error)) from error
    except ImportError as error:
        raise click.ClickException(install_hint(error)) from error
    except OSError as error:  # the port is taken, or not ours to bind
        raise click.ClickException(f"cannot listen on {port}: {error.strerror}; choose another --port (0: any free one)") from error
    click.echo(f"serving {len(catalog.tracks)} tracks of {store_dir} ({store.meta.model}) at {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        LOG.info("stopped")
    finally:
        server.server_close()
