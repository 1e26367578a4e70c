"""Tests for mertkit.store.search and the `mert search` command."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
from click.testing import CliRunner

import mertkit.store.search as search_module
from mertkit.cli.search import search as search_command
from mertkit.store.search import SearchError, SearchIndex, search
from mertkit.store.parquet import FeatureStore, FeatureStoreWriter

WIDTH = 6
LAYERS = (1, 3)
TRACKS = 23


def meta() -> dict:
    return dict(model="tiny/test-model", sample_rate=16000, frame_rate=50.0, hidden_size=WIDTH,
                num_layers=3, layers=list(LAYERS), pooling="mean", window=2.5, hop=2.5)


def vectors_of(index: int) -> np.ndarray:
    return np.random.default_rng(100 + index).standard_normal((len(LAYERS), WIDTH)).astype(np.float32)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    with FeatureStoreWriter(tmp_path, meta(), rows_per_shard=5, dtype="float32") as writer:
        for i in range(TRACKS):
            writer.add_track(f"t{i:02d}.wav", f"h{i}", vectors=vectors_of(i),
                             split="a" if i < 10 else "b")
    return tmp_path


def brute_force(query: np.ndarray, position: int, k: int, indices=range(TRACKS)) -> list:
    """Cosine similarity one pair at a time, ranked by a full argsort."""
    indices = list(indices)
    scores = np.array([
        float(np.dot(query, vectors_of(i)[position]))
        / (np.linalg.norm(query) * np.linalg.norm(vectors_of(i)[position]))
        for i in indices
    ])
    order = np.argsort(-scores, kind="stable")[:k]
    return [(f"t{indices[j]:02d}.wav", scores[j]) for j in order]


def assert_same_ranking(results: list, expected: list) -> None:
    assert [path for path, _ in results] == [path for path, _ in expected]
    np.testing.assert_allclose([s for _, s in results], [s for _, s in expected], rtol=1e-5)


@pytest.mark.parametrize("method", ["exact", "chunked"])
@pytest.mark.parametrize("k", [1, 4, 7, 50])
def test_top_k_matches_brute_force(store_dir: Path, method: str, k: int) -> None:
    query = np.random.default_rng(7).standard_normal(WIDTH).astype(np.float32)
    results = search(store_dir, query, layer=3, k=k, method=method)
    assert_same_ranking(results, brute_force(query, LAYERS.index(3), min(k, TRACKS)))


@pytest.mark.parametrize("method", ["exact", "chunked"])
def test_stored_track_finds_itself_first(store_dir: Path, method: str) -> None:
    index = SearchIndex(FeatureStore(store_dir), layer=1, method=method)
    for i in (0, 11, TRACKS - 1):
        (path, score), *_ = index.search(vectors_of(i) * 3.5, k=3)  # scale must not matter
        assert path == f"t{i:02d}.wav"
        assert score == pytest.approx(1.0, abs=1e-6)


def test_multi_layer_query_picks_the_requested_layer(store_dir: Path) -> None:
    both = vectors_of(5)  # [stored layers, width]
    assert search(store_dir, both, layer=3, k=1)[0][0] == "t05.wav"
    all_hidden_states = np.zeros((4, WIDTH), np.float32)  # indexed by hidden-state number
    all_hidden_states[1] = vectors_of(8)[0]
    assert search(store_dir, all_hidden_states, layer=1, k=1)[0][0] == "t08.wav"


def test_split_restricts_the_candidates(store_dir: Path) -> None:
    query = np.random.default_rng(3).standard_normal(WIDTH)
    results = search(store_dir, query, layer=1, k=4, split="b")
    assert_same_ranking(results, brute_force(query, 0, 4, indices=range(10, TRACKS)))


@pytest.mark.parametrize(
    ("query", "kwargs", "message"),
    [
        (np.zeros(WIDTH), {}, "all zeros"),
        (np.ones(WIDTH + 1), {}, "shape"),
        (np.ones((3, WIDTH)), {}, "layers"),
        (np.full(WIDTH, np.nan), {}, "NaN"),
        (np.ones(WIDTH), {"layer": 2}, "not stored"),
        (np.ones(WIDTH), {"k": 0}, "k must be positive"),
        (np.ones(WIDTH), {"method": "annoy"}, "method"),
    ],
)
def test_bad_queries_are_refused(store_dir: Path, query, kwargs: dict, message: str) -> None:
    arguments = {"layer": 1, **kwargs}
    with pytest.raises(SearchError, match=message):
        search(store_dir, query, **arguments)


class FakeFlatIP:
    """Stands in for faiss.IndexFlatIP (same add/search contract) to test the glue code."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((0, dim), np.float32)

    def add(self, vectors: np.ndarray) -> None:
        assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
        self.vectors = np.concatenate([self.vectors, vectors])

    def search(self, queries: np.ndarray, k: int):
        scores = queries @ self.vectors.T
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), order


def test_faiss_path_matches_exact(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=FakeFlatIP))
    query = np.random.default_rng(11).standard_normal(WIDTH)
    assert_same_ranking(search(store_dir, query, layer=3, k=5, method="faiss"),
                        brute_force(query, 1, 5))


def test_faiss_missing_gives_install_hint(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"mertkit\[search\]"):
        search(store_dir, np.ones(WIDTH), layer=1, method="faiss")


def test_auto_method_uses_chunked_for_large_stores_without_faiss(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert SearchIndex(store_dir, layer=1).method == "exact"
    monkeypatch.setattr(search_module, "LARGE_STORE_ROWS", TRACKS - 1)
    index = SearchIndex(store_dir, layer=1)
    assert index.method == "chunked"
    query = np.random.default_rng(5).standard_normal(WIDTH)
    assert_same_ranking(index.search(query, k=6), brute_force(query, 0, 6))
    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(IndexFlatIP=FakeFlatIP))
    assert SearchIndex(store_dir, layer=1).method == "faiss"


# ----------------------------------------------------------------------------- CLI


def parse_output(text: str) -> list[tuple[str, float]]:
    header, *lines = text.strip().splitlines()
    assert header.split("\t") == ["rank", "score", "path"]
    rows = [line.split("\t") for line in lines]
    assert [int(rank) for rank, _, _ in rows] == list(range(1, len(rows) + 1))
    return [(path, float(score)) for _, score, path in rows]


def test_cli_with_query_vector(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    query_file = tmp_path_factory.mktemp("q") / "query.npy"
    query = np.random.default_rng(2).standard_normal(WIDTH).astype(np.float32)
    np.save(query_file, query)
    result = CliRunner().invoke(
        search_command, ["--store", str(store_dir), "--query-vector", str(query_file), "-k", "3"]
    )
    assert result.exit_code == 0, result.output
    # the default layer is the last stored one
    hits = parse_output(result.output)
    assert [p for p, _ in hits] == [p for p, _ in brute_force(query, LAYERS.index(3), 3)]
    np.testing.assert_allclose([s for _, s in hits], [s for _, s in brute_force(query, 1, 3)],
                               atol=1e-6)


def test_cli_embeds_query_audio_with_the_store_model(
    store_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mertkit.extraction import provenance

    audio = tmp_path_factory.mktemp("audio") / "query.wav"
    audio.write_bytes(b"RIFF")  # never decoded: the embedding is replaced below
    calls = []

    def fake_model_for_store(meta, model, *, device):
        calls.append(("load", meta.model, model, device))
        return "model-object"

    def fake_embed(model, meta, path):
        calls.append(("embed", model, Path(path), tuple(meta.layers), meta.pooling, meta.window))
        return vectors_of(4)

    monkeypatch.setattr(provenance, "model_for_store", fake_model_for_store)
    monkeypatch.setattr(provenance, "embed_like_store", fake_embed)
    result = CliRunner().invoke(
        search_command, ["--store", str(store_dir), str(audio), "--layers", "1", "-k", "2", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert calls == [("load", "tiny/test-model", None, "cpu"), ("embed", "model-object", audio, LAYERS, "mean", 2.5)]
    (path, score), _ = parse_output(result.output)
    assert path == "t04.wav" and score == pytest.approx(1.0, abs=1e-5)
    as_json = CliRunner().invoke(
        search_command, ["--store", str(store_dir), str(audio), "--layers", "1", "-k", "2", "--json", "-m", "X"]
    )
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.output)
    assert parsed["layer"] == 1 and [h["rank"] for h in parsed["hits"]] == [1, 2]
    assert parsed["hits"][0]["path"] == "t04.wav" and parsed["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert calls[-2][2] == "X"  # --model reaches the loader


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from mertkit.models.checkpoint import save_pretrained
    from mertkit.models.hubert.model import MertModel
    from model_fixtures import tiny_config

    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("models") / "tiny",
                           do_normalize=True)


@pytest.mark.parametrize("window, hop", [(0.0, None), (1.0, 0.5)], ids=["whole-file", "overlapping-windows"])
def test_query_audio_is_embedded_exactly_like_the_stored_tracks(
    tiny_checkpoint: Path, tmp_path: Path, window: float, hop: float | None
) -> None:
    """No fakes: a real store, a real query path (the one `mert search` and `mert serve` use)."""
    from audio_fixtures import write_tone
    from mertkit.extraction.engine import ExtractOptions
    from mertkit.extraction.provenance import embed_like_store, model_for_store
    from mertkit.extraction.runner import StoreOptions, run_extract
    from mertkit.models.checkpoint import load

    folder = tmp_path / "audio"
    folder.mkdir()
    # Longer than the 5 s default window: a whole-file store must not be queried in 5 s windows.
    write_tone(folder / "a.wav", seconds=6.0, sample_rate=44100, channels=2)
    write_tone(folder / "b.flac", seconds=1.6, sample_rate=24000, channels=1, freq=330)
    options = ExtractOptions(layers=(1, 3), pool="mean", window=window, hop=hop)
    run_extract(load(tiny_checkpoint), [folder], None, options, progress=False,
                store=StoreOptions(tmp_path / "store", dtype="float32"))
    store = FeatureStore(tmp_path / "store")
    model = model_for_store(store.meta)  # from the folder the store recorded
    for position, layer in enumerate(LAYERS):
        stored, paths = store.load(layer=layer)
        for vector, path in zip(stored, paths):
            np.testing.assert_allclose(embed_like_store(model, store.meta, path)[position], vector, rtol=0, atol=1e-6)
    result = CliRunner().invoke(search_command, ["--store", str(tmp_path / "store"), str(folder / "b.flac"), "-k", "2"])
    assert result.exit_code == 0, result.output
    (path, score), _ = parse_output(result.output)
    assert Path(path).name == "b.flac" and score == pytest.approx(1.0, abs=1e-5)


def test_cli_store_without_a_model_record_asks_for_model(store_dir: Path, tmp_path: Path) -> None:
    audio = tmp_path / "q.wav"
    audio.write_bytes(b"RIFF")
    result = CliRunner().invoke(search_command, ["--store", str(store_dir), str(audio)])
    assert result.exit_code == 1 and "--model" in result.output and "Traceback" not in result.output


def test_cli_usage_errors(store_dir: Path) -> None:
    result = CliRunner().invoke(search_command, ["--store", str(store_dir)])
    assert result.exit_code == 2 and "exactly one" in result.output
    bad = store_dir / "bad.npy"
    np.save(bad, np.ones(WIDTH + 2))
    result = CliRunner().invoke(search_command, ["--store", str(store_dir), "--query-vector", str(bad)])
    assert result.exit_code == 1 and "shape" in result.output
    result = CliRunner().invoke(
        search_command, ["--store", str(store_dir / "part-00000.parquet"), "--query-vector", str(bad)]
    )
    assert result.exit_code == 2
