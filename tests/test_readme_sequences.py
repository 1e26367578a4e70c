"""The README's ```bash blocks run as written, in order, in one folder per block.

Each block's lines run one after another as `bash` subprocesses in a temp folder, so a later
line sees what an earlier one wrote; each must exit 0 with no traceback. Only three kinds of
change are made, each listed below with its reason, and each entry must match some README
line (a stale entry fails the test, so nothing is ever changed silently):

- SKIP: lines that need what cannot exist offline or in a test (make, servers, datasets,
  EnCodec weights, a Ray cluster);
- SUBSTITUTIONS: hub model names -> tiny random checkpoints in the official layout, written by
  the test; sizes -> tiny values;
- placeholders the README leaves to the user (songs/, a.mp3, catalog/, m.csv, ...) are
  filled with short synthesised audio before the block runs (`_placeholders`).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from audio_fixtures import write_m4a, write_mp3, write_tone
from model_fixtures import tiny_config
from models.mert2_fixtures import write_checkpoint as write_mert2_checkpoint
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel

ROOT = Path(__file__).resolve().parent.parent

# Lines not run, by a regular expression on the line, with the reason.
SKIP: dict[str, str] = {
    r"^make ": "builds .venv / runs the whole suite: the environment this test already runs in",
    r"^mert serve ": "a web server that runs until stopped (tests/serve/ drive it)",
    r"--engine ray": "starts a local Ray cluster (tens of seconds; tests/test_ray_engine.py covers it)",
    r"^mert manifest --dataset gtzan data/GTZAN/": "needs the GTZAN dataset on disk "
                                                   "(tests/eval/test_manifest_cli.py uses a fake layout)",
    r"--manifest gtzan\.csv": "reads the GTZAN manifest of the skipped line before it",
}

# (pattern, replacement, reason), applied in this order to every line that runs.
# {NAME} in a replacement is the tiny checkpoint folder written for NAME.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"(?:/path/to/|m-a-p/)?\b(MERT-v1-95M|MERT-v1-330M|MERT-v0|MERT-v2-FullSong)(?![\w-])", r"{\1}",
     "hub checkpoints -> tiny random ones in the official layout (no network here)"),
    (r"--teacher encodec --weights ENCODEC_DIR", "--teacher bestrq",
     "EnCodec weights cannot be downloaded here: the offline bestrq teacher writes labels/ instead"),
    (r"--hours 20", "--clips 4 --clip-seconds 4", "a 16-second corpus (4 clips: one global batch of 2 x 2 under torchrun) instead of 20 hours"),
    (r"^(mert pretrain --config tiny .*?)(\s+#.*)?$",
     r"\1 --set total_updates=2 --set warmup_updates=1 --set ckpt_interval=1 --set batch_size=2\2",
     "two updates of the tiny preset; the torchrun and --resume lines read run/config.json"),
    (r"^(mert pretrain --out run/ .*--resume)", r"\1 --set total_updates=3",
     "one more update than the first run, so the resume has something to do"),
    (r"^(mert bench-suite synth -o suite/)", r"\1 --task key --clips 40",
     "one task (key, which the probe line reads) of 40 clips (what eval --quick asks for) instead of 2172"),
    (r"^(mert bench-suite chorales -o suite/)", r"\1 --limit 3 --seconds 2",
     "three chorales of 2 s (12 clips) instead of every chorale in music21's corpus (about 1200 clips)"),
    (r"^(mert eval .*?)(\s+#.*)?$",
     r"\1 --tasks key --quick --random-init 0 --baselines none --epochs 2\2",
     "the key task only, one seed, two epochs, no floors"),
    (r"^(mert probe .*?)(\s+#.*)?$", r"\1 --seeds 0 --lrs 1e-3 --epochs 2\2", "one seed, one rate, two epochs"),
]

# The README's user files, filled before the block that names them runs.
AUDIO = {"a.mp3": write_mp3, "b.m4a": write_m4a, "song.flac": write_tone, "query.mp3": write_mp3}
FOLDERS = ("songs", "catalog")


def _blocks() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]


def _skip_reason(line: str) -> str | None:
    return next((reason for pattern, reason in SKIP.items() if re.search(pattern, line)), None)


def _substitute(line: str, checkpoints: dict[str, Path]) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line)
    return re.sub(r"\{([\w-]+)\}", lambda m: str(checkpoints[m.group(1)]), line)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints with as many hidden states as the real ones (the README's
    `--layers 0,12,24` and `--layers 7` must exist)."""
    root = tmp_path_factory.mktemp("hub")
    return {
        "MERT-v1-95M": save_pretrained(MertModel(tiny_config("post_ln", num_hidden_layers=12)),
                                       root / "MERT-v1-95M", formats=("safetensors",), do_normalize=False),
        "MERT-v1-330M": save_pretrained(MertModel(tiny_config("pre_ln", num_hidden_layers=24)),
                                        root / "MERT-v1-330M", formats=("safetensors",), do_normalize=False),
        "MERT-v0": save_pretrained(MertModel(tiny_config("post_ln", sample_rate=16000, num_hidden_layers=12)),
                                   root / "MERT-v0", formats=("bin",), do_normalize=True),
        "MERT-v2-FullSong": write_mert2_checkpoint(root / "MERT-v2-FullSong"),
    }


def _placeholders(lines: list[str], folder: Path) -> None:
    text = "\n".join(lines)
    for name, writer in AUDIO.items():
        if re.search(rf"(?<![\w/]){re.escape(name)}", text):
            writer(folder / name, seconds=1.5)
    for name in FOLDERS:
        if f"{name}/" in text:
            for i in range(6):
                (folder / name).mkdir(exist_ok=True)
                write_tone(folder / name / f"track{i}.wav", seconds=1.5, freq=220.0 * (1 + i))
    if "--manifest m.csv" in text:  # the user's labelled manifest of songs/ (paths relative to it): two genres
        rows = [f"track{i}.wav,{split},{genre}" for i, (split, genre) in enumerate(
            [("train", "blues"), ("train", "rock"), ("valid", "blues"), ("valid", "rock"),
             ("test", "blues"), ("test", "rock")])]
        (folder / "m.csv").write_text("path,split,label\n" + "\n".join(rows) + "\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(line: str, folder: Path) -> None:
    # PATH: `mert` and `torchrun` from this interpreter's environment. OMP_NUM_THREADS=1: the
    # tiny models gain nothing from threads on a shared CI machine. PET_MASTER_PORT: torchrun's
    # --master_port (default 29500), free, so that concurrent runs of this test cannot collide.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "PET_MASTER_PORT": str(_free_port())}
    result = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, f"{line}\n-> exit {result.returncode}\n{output[-3000:]}"


@pytest.mark.parametrize("index", range(len(_blocks())), ids=lambda i: f"block{i}")
def test_readme_block_runs_in_order(index, checkpoints, tmp_path):
    lines = _blocks()[index]
    _placeholders(lines, tmp_path)
    ran = 0
    for line in lines:
        if _skip_reason(line) is None:
            _run(_substitute(line, checkpoints), tmp_path)
            ran += 1
    if not any(line.startswith("make ") for line in lines):
        assert ran > 0, f"every line of block {index} is skipped"


def test_every_skip_and_substitution_matches_a_readme_line():
    lines = [line for block in _blocks() for line in block]
    for pattern in SKIP:
        assert any(re.search(pattern, line) for line in lines), f"stale SKIP entry {pattern!r}"
    for pattern, _, _ in SUBSTITUTIONS:
        assert any(re.search(pattern, line) for line in lines), f"stale substitution {pattern!r}"
