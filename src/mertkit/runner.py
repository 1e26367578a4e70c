"""`mert extract` as a library call: files in, one self-describing safetensors per file out.

For an input INPUT (a file or a folder, recursed) and an output folder DIR, each audio file
`INPUT/<rel>` becomes `DIR/<rel>.safetensors` holding:

    hidden_states   [layers, frames, width]  (pool none) or [layers, width] (pooled)
    timestamps      [frames] seconds (pool none)
    window_starts, window_ends   [windows] seconds
    window_pooled   [windows, layers, width] (pooled output only)

and string metadata: model, sample_rate, frame_rate, layers (JSON list), window, hop,
pooling, dtype, source, mertkit_version. Outputs are written atomically (temp file, then
rename), so an interrupted run never leaves a half file, and a rerun skips every output whose
metadata matches the request. A file that fails is reported with its reason; the others
still finish.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mertkit.audio import AudioError, load_audio
from mertkit.extract import ExtractError, Extractor, ExtractOptions, Features
from mertkit.model import MertModel

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".wma", ".aiff", ".aif", ".webm", ".mka"}
OUTPUT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class InputFile:
    path: Path
    relative: str  # path under its input root; names the output

    @property
    def output_name(self) -> str:
        return self.relative + OUTPUT_SUFFIX


@dataclass
class RunReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def discover_inputs(inputs: Iterable[str | os.PathLike]) -> list[InputFile]:
    """Files as given, folders recursed for audio extensions, in a stable order."""
    found: list[InputFile] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
                found.append(InputFile(sub, sub.relative_to(path).as_posix()))
        else:
            # A named file is always tried (and fails clearly if missing or not audio).
            found.append(InputFile(path, path.name))
    seen: set[str] = set()
    for f in found:
        if f.relative in seen:
            raise ExtractError(f"two inputs would write the same output {f.output_name!r}; extract them separately")
        seen.add(f.relative)
    return found


def output_metadata(model: MertModel, extractor: Extractor, source: str) -> dict[str, str]:
    from mertkit import __version__

    info = getattr(model, "info", None)
    config = model.config
    return {
        "model": info.name if info else "unnamed",
        "sample_rate": str(config.sample_rate),
        "frame_rate": repr(config.frame_rate),
        "layers": json.dumps(list(extractor.layers)),
        "window": repr(float(extractor.window)),
        "hop": repr(float(extractor.hop)),
        "pooling": extractor.options.pool,
        "dtype": extractor.options.dtype,
        "do_normalize": str(extractor.do_normalize).lower(),
        "source": source,
        "mertkit_version": __version__,
    }


# Metadata that must match for an existing output to count as already done.
_REQUEST_KEYS = ("model", "sample_rate", "layers", "window", "hop", "pooling", "dtype", "do_normalize")


def run_extract(
    model: MertModel,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: ExtractOptions = ExtractOptions(),
    *,
    progress: bool = True,
    on_event: Callable[[str, str, str], None] | None = None,
) -> RunReport:
    """Extract every input into `out_dir`; never stops on a bad file."""
    out = Path(out_dir)
    extractor = Extractor(model, options)
    files = discover_inputs(inputs)
    report = RunReport()
    todo = []
    for f in files:
        target = out / f.output_name
        if _is_done(target, output_metadata(model, extractor, str(f.path))):
            report.skipped.append(str(f.path))
        else:
            todo.append(f)
    bar = _progress(len(files), initial=len(report.skipped), enabled=progress)
    for f, result in extractor_results(extractor, todo, report):
        meta = output_metadata(model, extractor, str(f.path))
        save_features(out / f.output_name, result, meta)
        report.done.append(str(f.path))
        bar.update(1)
        if on_event:
            on_event("done", str(f.path), "")
    bar.update(len(report.failed))
    bar.close()
    return report


def extractor_results(extractor: Extractor, files: list[InputFile], report: RunReport) -> Iterator[tuple[InputFile, Features]]:
    """Decode each file and run the model; failures go to the report, the rest flow on."""
    rate = extractor.config.sample_rate

    def decoded() -> Iterator[tuple[InputFile, np.ndarray]]:
        for f in files:
            try:
                wave = load_audio(f.path, rate)
                extractor._job(f, wave)  # validate now so the failure is this file's alone
            except (AudioError, ExtractError) as err:
                report.failed.append((str(f.path), _reason(err, f.path)))
                continue
            yield f, wave

    yield from extractor.extract_many(decoded())


def _reason(err: Exception, path: Path) -> str:
    text = str(err)
    return text if str(path) in text else f"{path}: {text}"


def _is_done(target: Path, wanted: dict[str, str]) -> bool:
    if not target.is_file():
        return False
    try:
        meta = read_metadata(target)
    except (OSError, ValueError):
        return False  # unreadable leftovers are simply recomputed
    return all(meta.get(k) == wanted[k] for k in _REQUEST_KEYS)


def _progress(total: int, *, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="file", disable=not enabled, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------
# safetensors I/O
# ---------------------------------------------------------------------------------------
def save_features(path: str | os.PathLike, features: Features, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tensors = {
        "hidden_states": np.ascontiguousarray(features.hidden_states, dtype=np.float32),
        "window_starts": features.window_starts.astype(np.float64),
        "window_ends": features.window_ends.astype(np.float64),
    }
    if features.timestamps is not None:
        tensors["timestamps"] = features.timestamps.astype(np.float64)
    if features.window_pooled is not None:
        tensors["window_pooled"] = np.ascontiguousarray(features.window_pooled, dtype=np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=OUTPUT_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def load_features(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of one output file."""
    from safetensors.numpy import load_file

    return load_file(str(path)), read_metadata(path)
