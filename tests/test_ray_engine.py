"""The Ray engine on a private loopback cluster: same store contents as the single-process run."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_fixtures import write_text, write_tone
from model_fixtures import tiny_config
from mertkit.extraction.engine import Extractor, ExtractOptions

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

pytestmark = pytest.mark.ray

OPTIONS = ExtractOptions(pool="mean", window=1.0, batch_size=3, dtype="float32")
SECONDS = {"a.flac": 2.3, "b.wav": 1.0, "c.flac": 3.1, "d.wav": 0.6, "sub/e.flac": 1.7}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from mertkit.models.checkpoint import save_pretrained
    from mertkit.models.hubert.model import MertModel

    torch.manual_seed(0)
    return save_pretrained(MertModel(tiny_config("post_ln")), tmp_path_factory.mktemp("ckpt") / "tiny-mert")


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("music")
    for i, (name, seconds) in enumerate(SECONDS.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_tone(root / name, seconds=seconds, sample_rate=44100, channels=2, freq=220.0 * (1 + i))
    write_text(root / "broken.wav")  # not audio: must fail alone
    write_tone(root / "tiny.wav", seconds=0.005, sample_rate=44100)  # 120 samples at 24 kHz: < 1 frame
    return root


def _reference(checkpoint: Path, paths: list[Path]) -> dict[str, object]:
    """The single-process path: decode each file and run the Extractor in this process."""
    from mertkit.audio import load_audio
    from mertkit.models.checkpoint import load

    model = load(checkpoint)
    extractor = Extractor(model, OPTIONS)
    return {str(p): extractor.extract(load_audio(p, model.config.sample_rate)) for p in paths}


@pytest.mark.slow  # starts a Ray cluster: 20-60 s on a shared 2-core machine
def test_ray_store_equals_single_process_run(checkpoint, music, tmp_path, monkeypatch):
    from mertkit import store
    from mertkit.extraction import ray_engine

    store_dir = tmp_path / "store"
    # Relative model and input paths: the workers must not depend on the driver's directory.
    monkeypatch.chdir(music.parent)
    model_arg = os.path.relpath(checkpoint)
    folder = Path(music.name)
    with ray_engine._ray_session(None, 2, 1, "cpu") as (ray, actors, _threads):
        assert actors == 2
        _assert_ray_listens_on_loopback_only()
        report = ray_engine.run_ray_extract(model_arg, [str(folder)], str(store_dir), OPTIONS,
                                            num_actors=2, threads_per_actor=1, store_dtype="float32",
                                            split="train")
        rerun = ray_engine.run_ray_extract(model_arg, [str(folder)], str(store_dir), OPTIONS,
                                           num_actors=2, threads_per_actor=1, store_dtype="float32")
    assert not ray.is_initialized(), "the session must shut down the cluster it started"

    good = sorted(str(folder / name) for name in SECONDS)
    assert sorted(report.done) == good
    failed = dict(report.failed)
    assert sorted(failed) == sorted([str(folder / "broken.wav"), str(folder / "tiny.wav")])
    reason = failed[str(folder / "broken.wav")]  # the decoder's reason; the FAILED line names the file
    assert reason and "\n" not in reason and not reason.startswith(str(folder))
    assert "shorter than one frame" in failed[str(folder / "tiny.wav")]
    # The rerun skips every stored track and retries only the failures.
    assert sorted(rerun.skipped) == good and not rerun.done and len(rerun.failed) == 2

    # The store keys tracks by resolved path (two spellings of a file are one track).
    reference = _reference(checkpoint, [Path(p) for p in good])
    expected = {str(Path(p).resolve()): features for p, features in reference.items()}
    stored = store.open(store_dir)
    assert stored.meta.dtype == "float32" and stored.meta.pooling == "mean" and stored.meta.window == 1.0
    for k in stored.meta.layers:
        tracks, paths = stored.load(layer=k, split="train")
        assert sorted(paths) == sorted(expected)
        for vector, path in zip(tracks, paths):
            np.testing.assert_allclose(vector, expected[path].hidden_states[k], atol=1e-5)
        windows, window_paths = stored.load(layer=k, level="window")
        for path in expected:
            got = windows[[i for i, p in enumerate(window_paths) if p == path]]
            np.testing.assert_allclose(got, expected[path].window_pooled[:, k], atol=1e-5)
    table = stored.rows(columns=["path", "level", "window_start", "window_end"], level="window")
    starts = [s for p, s in zip(table.column("path").to_pylist(), table.column("window_start").to_pylist())
              if p == str((folder / "c.flac").resolve())]
    hop = 74 * 320 / 24000  # the seam-free default: the 74 whole frames of a 1 s window
    np.testing.assert_allclose(sorted(starts), [0.0, hop, 2 * hop, 3 * hop])


def test_frame_level_output_is_refused_before_any_cluster_work(checkpoint, tmp_path):
    from mertkit.extraction.ray_engine import RayEngineError, run_ray_extract

    with pytest.raises(RayEngineError, match="pooled features"):
        run_ray_extract(str(checkpoint), [], str(tmp_path / "s"), ExtractOptions(pool="none"))
    with pytest.raises(RayEngineError, match="device"):
        run_ray_extract(str(checkpoint), [], str(tmp_path / "s"), OPTIONS, device="tpu")


# ---------------------------------------------------------------------------------------
# Which addresses this process tree listens on, from /proc (no psutil here).
# ---------------------------------------------------------------------------------------
def _assert_ray_listens_on_loopback_only() -> None:
    listening = _listening_addresses(_socket_inodes(_descendants(os.getpid())))
    assert listening, "expected the Ray processes to listen somewhere"
    exposed = [addr for addr in listening if not _is_loopback(addr)]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # the process ended while we looked
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    return inodes


def _listening_addresses(inodes: set[str]) -> list[str]:
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_decode_address(fields[1].split(":")[0], family))
    return found


def _decode_address(hex_address: str, family: int) -> str:
    # /proc prints each 32-bit word of the address in host (little-endian) byte order.
    raw = bytes.fromhex(hex_address)
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, packed)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
