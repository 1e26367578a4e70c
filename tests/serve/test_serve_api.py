"""The JSON endpoints and file serving of `mert serve`, over a real store (tiny random model,
synthetic audio) and a probe trained on it."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner

from mertkit import store as store_module
from mertkit.cli.app import main
from mertkit.eval.saved_probe import load_probe
from mertkit.serve.catalog import Catalog
from mertkit.serve.server import make_server
from mertkit.store.parquet import FeatureStoreWriter, hash_file
from serve_fixtures import TRACKS


def request(server, path: str, *, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request; the Host header is the server's own unless given."""
    host, port = server.server_address
    connection = http.client.HTTPConnection(host, port, timeout=60)
    connection.request(method, path, body=body, headers={"Host": f"{host}:{port}", **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), payload


def get_json(server, path: str, status: int = 200, **kwargs) -> dict:
    code, headers, body = request(server, path, **kwargs)
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert code == status, payload
    return payload


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def stored(built, layer: int) -> np.ndarray:
    """Track vectors of one layer in catalog (track id) order, read straight from the store."""
    vectors, paths = store_module.open(built.store).load(layer=layer)
    order = {str(path): i for i, path in enumerate(map(str, built.audio))}
    out = np.empty_like(vectors)
    out[[order[p] for p in paths]] = vectors
    return out


def test_info_and_tracks(served, built):
    info = get_json(served, "/api/info")
    assert info["tracks"] == TRACKS and info["layers"] == [0, 1, 2, 3] and info["default_layer"] == 3
    assert info["model"] == built.checkpoint.name and info["pooling"] == "mean" and info["window"] == 1.0
    assert info["splits"] == ["test", "train", "valid"]
    assert info["probe"]["task"] == "sound" and info["probe"]["labels"] == ["low", "high", "noise"]
    assert info["probe"]["layer"] == "layer 3"
    tracks = get_json(served, "/api/tracks")["tracks"]
    assert [t["path"] for t in tracks] == [str(p) for p in built.audio]
    assert [t["split"] for t in tracks] == built.splits
    assert tracks[5]["name"] == built.audio[5].name and tracks[5]["duration"] > 1.0


@pytest.mark.parametrize("layer", [0, 3])
def test_neighbours_are_the_cosine_ranking_without_the_track_itself(served, built, layer):
    vectors = unit(stored(built, layer))
    for track in (0, 7):
        result = get_json(served, f"/api/neighbours?track={track}&layer={layer}&k=5")
        scores = vectors @ vectors[track]
        scores[track] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:5]
        assert [hit["id"] for hit in result["neighbours"]] == expected.tolist()
        np.testing.assert_allclose([hit["score"] for hit in result["neighbours"]], scores[expected], atol=1e-5)
        assert result["layer"] == layer and result["query"] == {"kind": "track", "id": track, "name": built.audio[track].name}
    everything = get_json(served, "/api/neighbours?track=2&k=200")["neighbours"]
    assert len(everything) == TRACKS - 1  # all the others, never itself


def test_map_is_the_pca_of_the_unit_vectors(served, built):
    result = get_json(served, "/api/map?layer=2")
    points = np.array(result["points"])
    centred = unit(stored(built, 2)) - unit(stored(built, 2)).mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ axes[:2].T
    assert points.shape == (TRACKS, 2)
    for axis in range(2):  # an axis's sign is a convention: compare up to it
        sign = np.sign(points[:, axis] @ reference[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * reference[:, axis], atol=1e-4)
    variance = singular**2
    np.testing.assert_allclose(result["explained"], variance[:2] / variance.sum(), atol=1e-4)
    # The selected track's own position comes with its neighbours, on the same axes.
    position = get_json(served, "/api/neighbours?track=4&layer=2&k=1")["position"]
    np.testing.assert_allclose(position, points[4], atol=1e-4)


def test_predictions_are_the_saved_probe_outputs(served, built):
    probe = load_probe(built.probe)
    for track in (1, 2, 6):
        result = get_json(served, f"/api/predict?track={track}")
        expected = probe.predict(stored(built, 3)[track][None], [3])
        by_label = {row["label"]: row["value"] for row in result["outputs"]}
        np.testing.assert_allclose([by_label[name] for name in ("low", "high", "noise")], expected, atol=1e-5)
        values = [row["value"] for row in result["outputs"]]
        assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1.0, abs=1e-4)


def test_an_uploaded_copy_of_a_track_finds_it_and_gets_its_prediction(served, built):
    source = built.audio[5]
    upload = get_json(served, "/api/upload", method="POST", body=source.read_bytes(),
                      headers={"X-File-Name": quote("my query.flac" if source.suffix == ".flac" else "my query.wav")})
    assert upload["name"].startswith("my query.")
    for layer in (1, 3):
        result = get_json(served, f"/api/neighbours?upload={upload['upload']}&layer={layer}&k=3")
        top = result["neighbours"][0]
        assert top["path"] == str(source) and top["score"] == pytest.approx(1.0, abs=1e-5)
        assert result["query"]["kind"] == "upload"
    mine = get_json(served, f"/api/predict?upload={upload['upload']}")["outputs"]
    theirs = get_json(served, "/api/predict?track=5")["outputs"]
    assert [row["label"] for row in mine] == [row["label"] for row in theirs]
    np.testing.assert_allclose([row["value"] for row in mine], [row["value"] for row in theirs], atol=1e-4)


def test_audio_is_served_whole_or_by_range_with_its_type(served, built):
    for track in (0, 1):
        status, headers, body = request(served, f"/audio/{track}")
        assert status == 200 and body == built.audio[track].read_bytes()
        assert headers["Content-Type"] == ("audio/flac" if built.audio[track].suffix == ".flac" else "audio/wav")
        assert headers["Accept-Ranges"] == "bytes"
    size = built.audio[0].stat().st_size
    status, headers, body = request(served, "/audio/0", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == built.audio[0].read_bytes()[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{size}"
    status, _, body = request(served, "/audio/0", headers={"Range": "bytes=-4"})
    assert status == 206 and body == built.audio[0].read_bytes()[-4:]
    assert request(served, "/audio/0", headers={"Range": f"bytes={size}-"})[0] == 416


def test_only_loopback_names_and_this_origin_are_answered(served, built):
    error = get_json(served, "/api/info", 403, headers={"Host": "attacker.example"})["error"]
    assert "answers only requests to http://127.0.0.1:" in error
    port = served.server_address[1]
    assert get_json(served, "/api/info", headers={"Host": f"localhost:{port}"})["tracks"] == TRACKS
    refused = get_json(served, "/api/upload", 403, method="POST", body=built.audio[0].read_bytes(),
                       headers={"Origin": "http://attacker.example"})
    assert "attacker.example" in refused["error"]
    assert served.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize("path, status, message", [
    ("/api/neighbours?track=0&layer=7", 400, "layer 7 is not stored; stored layers are [0, 1, 2, 3]"),
    ("/api/neighbours?track=99", 404, "no track 99 (the catalog has 12)"),
    ("/api/neighbours?track=abc", 400, "track id must be an integer, got 'abc'"),
    ("/api/neighbours?track=0&k=0", 400, "k must be between 1 and 200, got 0"),
    ("/api/neighbours", 400, "give exactly one of track= or upload="),
    ("/api/predict?upload=ffff", 404, "no upload 'ffff'"),
    ("/audio/..%2F..%2Fetc%2Fpasswd", 400, "track id must be an integer"),
    ("/audio/-1", 404, "no track -1"),
    ("/static/server.py", 404, "no such file: /static/server.py"),
    ("/etc/passwd", 404, "no such page: /etc/passwd"),
])
def test_bad_requests_are_one_line_json_errors(served, path, status, message):
    error = get_json(served, path, status)["error"]
    assert message in error and "\n" not in error


def test_bad_uploads_are_one_line_errors_naming_the_upload(served, tmp_path):
    error = get_json(served, "/api/upload", 400, method="POST", body=b"this is no audio" * 64,
                     headers={"X-File-Name": "notes.wav"})["error"]
    assert error.startswith("notes.wav: ") and "mertkit-serve-" not in error and "\n" not in error
    assert "empty" in get_json(served, "/api/upload", 400, method="POST", body=b"",
                               headers={"X-File-Name": "nothing.wav"})["error"]
    too_big = get_json(served, "/api/upload", 413, method="POST", body=b"\0" * ((1 << 20) + 1))["error"]
    assert "uploads are limited to 1 MB" in too_big


def test_the_page_and_its_files_come_from_the_package(served):
    static = Path(__file__).resolve().parents[2] / "src" / "mertkit" / "serve" / "static"
    status, headers, body = request(served, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert body == (static / "index.html").read_bytes()
    assert b"http://" not in body and b"https://" not in body  # nothing from the network
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = request(served, f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body == (static / name).read_bytes()
        assert b"https://" not in body


def test_no_probe_means_a_clear_answer(built):
    catalog = Catalog(store_module.open(built.store))
    assert catalog.info()["probe"] is None
    with pytest.raises(ValueError, match="no probe loaded: start `mert serve` with --probe DIR"):
        catalog.predict(track_id=0)


def relative_store(tmp_path: Path, built) -> Path:
    """A store whose one track is recorded by a path relative to where it was extracted."""
    (tmp_path / "music").mkdir()
    clip = tmp_path / "music" / "song.wav"
    clip.write_bytes(built.audio[0].read_bytes())
    meta = store_module.open(built.store).meta
    with FeatureStoreWriter(tmp_path / "store", meta) as writer:
        writer.add_track("music/song.wav", hash_file(clip), vectors=np.ones((len(meta.layers), meta.hidden_size)))
    return tmp_path / "store"


def test_relative_paths_resolve_against_the_audio_root_and_changed_files_are_refused(tmp_path, built):
    catalog = Catalog(store_module.open(relative_store(tmp_path, built)), audio_root=tmp_path)
    server = make_server(catalog, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, body = request(server, "/audio/0")
        assert status == 200 and body == built.audio[0].read_bytes()
        with (tmp_path / "music" / "song.wav").open("ab") as handle:
            handle.write(b"\0\0")
        assert "changed since it was embedded" in get_json(server, "/audio/0", 409)["error"]
        (tmp_path / "music" / "song.wav").unlink()
        missing = get_json(server, "/audio/0", 404)["error"]
        assert f"{tmp_path / 'music' / 'song.wav'}: audio file not found" in missing and "--audio-root" in missing
    finally:
        server.shutdown()
        server.server_close()


def test_cli_refuses_bad_stores_and_mismatched_probes(tmp_path, built):
    runner = CliRunner()
    not_a_store = runner.invoke(main, ["serve", "--store", str(tmp_path)])
    assert not_a_store.exit_code == 1 and "not a feature store" in not_a_store.output
    meta = store_module.open(built.store).meta
    other = dict(meta.to_dict(), model="someone/else")
    with FeatureStoreWriter(tmp_path / "other", other) as writer:
        writer.add_track("x.wav", "h", vectors=np.ones((len(meta.layers), meta.hidden_size)))
    mismatch = runner.invoke(main, ["serve", "--store", str(tmp_path / "other"), "--probe", str(built.probe)])
    assert mismatch.exit_code == 1
    assert f"the probe was trained on features of {built.checkpoint.name!r}, the store holds 'someone/else'" in mismatch.output
    assert "Traceback" not in mismatch.output


def test_cli_serves_until_stopped(built):
    command = [sys.executable, "-m", "mertkit.cli.app", "serve", "--store", str(built.store), "--probe", str(built.probe),
               "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {TRACKS} tracks of {built.store}"), (line, process.stderr.read())
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("GET", "/api/info")
        assert json.loads(connection.getresponse().read())["tracks"] == TRACKS
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_unloadable_query_model_says_to_pass_model(built):
    catalog = Catalog(store_module.open(built.store), model="not-a-model-anywhere")
    with pytest.raises(ValueError, match=r"cannot load the model for queries: .*not-a-model-anywhere"):
        catalog.add_upload("q.wav", built.audio[0].read_bytes())
