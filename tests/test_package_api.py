"""What `import mertkit` offers: lazy sub-packages and names, and the shipped model by name."""
from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import mertkit
from mertkit.cli.app import main
from mertkit.models.shipped import EXAMPLE_AUDIO, asset
from mertkit.extraction.runner import load_features
from mertkit.models.registry import SHIPPED_MODEL, asset_dir, lookup


def test_store_and_search_are_reachable_after_import_mertkit():
    code = ("import mertkit, sys; assert 'mertkit.store' not in sys.modules; "
            "print(mertkit.store.open.__module__, mertkit.search.__module__, mertkit.embed_file.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["mertkit.store.parquet", "mertkit.store.search", "embed_file"]


def test_api_names_are_discoverable():
    names = dir(mertkit)
    for name in ("load", "load_audio", "embed_file", "Extractor", "ExtractOptions", "run_extract", "store", "search",
                 "hear", "PRETRAINED"):
        assert name in names and getattr(mertkit, name) is not None
    assert "no_such_thing" not in names


def test_the_shipped_model_loads_by_its_registry_name():
    card = lookup(SHIPPED_MODEL)
    model = mertkit.load("mertkit-tiny-mel")
    assert model.info.name == "mertkit-tiny-mel" and model.info.path == str(asset_dir(card))
    assert (model.info.sample_rate, model.info.frame_rate, model.info.num_hidden_states) == (
        card.sample_rate, card.frame_rate, card.num_hidden_states)
    assert model.info.do_normalize is card.do_normalize
    # a store or a feature file records this name, and it loads back anywhere
    assert mertkit.load(model.info.name).info.path == model.info.path


def test_extract_takes_the_shipped_model_by_name(tmp_path):
    result = CliRunner().invoke(main, ["extract", str(asset(EXAMPLE_AUDIO)), "--model", "mertkit-tiny-mel",
                                       "-o", str(tmp_path), "--pool", "mean", "--layers", "0,3", "-q"])
    assert result.exit_code == 0, result.output
    tensors, meta = load_features(tmp_path / f"{EXAMPLE_AUDIO}.safetensors")
    assert meta["model"] == "mertkit-tiny-mel" and tuple(tensors["hidden_states"].shape) == (2, 256)
