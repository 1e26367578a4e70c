"""Learning diagnostics for a pre-training run: is the model learning music, and if not, why?

Three instruments, each usable on any run:

* **Label quality** (`codebook_stats`, `code_information`): per codebook, how many codes are
  used, the perplexity 2^H of the code distribution, and how much the codes say about pitch,
  pitch class, instrument and key of the synthetic benchmark suite's clips: mutual
  information I(code; label) in bits per frame (beside the same quantity with the labels
  shuffled between clips, the estimator's bias on that many clips) and the test accuracy of a
  logistic regression on each clip's code histogram.
* **Gradient shares** (`gradient_shares`): each loss term's gradient norm with respect to the
  shared backbone parameters (everything under `model.backbone`), measured separately on a
  few batches, with the cosine between the MLM and CQT gradients. A term whose share is tiny
  does not shape the representation, whatever its loss curve says.
* **Probe curve** (`probe_curve`): the run's snapshots (`RUN/snapshots/`, written by the
  trainer at `snapshot_fractions` of the run, update 0 = the random initialisation) probed
  with logistic regression on mean-pooled hidden states of every layer, layer chosen on the
  suite's validation split, accuracy on its test split. Rising curves mean pre-training adds
  information; falling ones mean it destroys what the random network already exposed. The
  last snapshot is compared with the first on the same test clips (`curve_change`: paired
  bootstrap interval), so "rises" and "falls" are claims the test split can carry.

`run_diagnostics` does all three and writes `OUT/diagnostics.json` and `OUT/probe_curve.png`.
"""
from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mertkit.fileio import TaggedFileError, read_tagged_torch, write_json

SNAPSHOT_FORMAT = "mertkit-snapshot-1"
SNAPSHOT_DIR = "snapshots"
PROBE_TASKS = ("pitch", "pitch_class", "instrument", "key")
# 88 pitch classes over a few hundred clips is no task for a code histogram: its pitch class is
CODE_TASKS = ("pitch_class", "instrument", "key")


class DiagnosticsError(ValueError):
    """A run, suite or label folder the diagnostics cannot use."""


# =======================================================================================
# Label quality
# =======================================================================================
@dataclass(frozen=True)
class CodebookStats:
    codebook: int
    size: int
    frames: int
    used: int  # distinct codes seen
    usage: float  # used / size
    entropy_bits: float
    perplexity: float  # 2 ** entropy: the number of equally likely codes it is worth
    top_share: float  # fraction of frames carrying the most frequent code


def codebook_stats(codes: Sequence[np.ndarray], codebook_size: int) -> list[CodebookStats]:
    """Stats per codebook over label arrays `[K, frames]` (all arrays share K)."""
    if not codes:
        raise DiagnosticsError("no label arrays to summarise")
    joined = np.concatenate([np.asarray(c) for c in codes], axis=1)
    out = []
    for k, row in enumerate(joined):
        counts = np.bincount(row.astype(np.int64), minlength=codebook_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        out.append(CodebookStats(k, codebook_size, int(row.size), int((counts > 0).sum()), float((counts > 0).mean()),
                                 entropy, float(2.0**entropy), float(p.max())))
    return out


def label_health_problems(stats: Sequence[CodebookStats], *, min_usage: float, min_perplexity: float) -> list[str]:
    """One message per degenerate codebook: too few codes used, or a too peaked distribution.

    Usage counts against min(codebook size, frames), so a short corpus is not refused for
    having fewer frames than codes.
    """
    problems = []
    for s in stats:
        usable = min(s.size, s.frames)
        if s.used < min_usage * usable or s.perplexity < min_perplexity:
            problems.append(f"codebook {s.codebook} uses {s.used}/{s.size} codes, perplexity {s.perplexity:.1f} "
                            f"(need >= {min_usage:.0%} of {usable} and >= {min_perplexity:g})")
    return problems


def label_dir_stats(label_dir: str | Path) -> list[CodebookStats]:
    """`codebook_stats` of every "ok" label file of a label directory."""
    from mertkit.pretrain.labels import LabelReader

    reader = LabelReader(label_dir)
    if not len(reader):
        raise DiagnosticsError(f"{label_dir}: no labelled files")
    return codebook_stats([reader.labels_for(rel) for rel in reader], int(reader.settings["codebook_size"]))


def mutual_information_bits(codes: np.ndarray, labels: np.ndarray) -> float:
    """Plug-in I(code; label) in bits from paired integer arrays."""
    _, c = np.unique(codes, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    joint = np.zeros((c.max() + 1, y.max() + 1))
    np.add.at(joint, (c, y), 1.0)
    joint /= joint.sum()
    pc, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pc @ py)[nz])).sum())


# ---------------------------------------------------------------------------------------
# the benchmark suite's clips
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteClip:
    path: Path
    label: str
    split: str


def suite_clips(suite_dir: str | Path, task: str) -> list[SuiteClip]:
    """Clips of one suite task; `pitch_class` is derived from `pitch` (MIDI note mod 12)."""
    source = "pitch" if task == "pitch_class" else task
    manifest = Path(suite_dir) / source / "manifest.csv"
    if not manifest.is_file():
        raise DiagnosticsError(f"{manifest}: missing (render it with `mert bench-suite`)")
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label", "split"} <= set(rows[0]):
        raise DiagnosticsError(f"{manifest}: needs path,label,split columns")
    clips = [SuiteClip(manifest.parent / r["path"], r["label"], r["split"]) for r in rows]
    if task == "pitch_class":
        clips = [SuiteClip(c.path, str(int(c.label) % 12), c.split) for c in clips]
    return clips


def available_tasks(suite_dir: str | Path, wanted: Sequence[str] = PROBE_TASKS) -> list[str]:
    root = Path(suite_dir)
    return [t for t in wanted if (root / ("pitch" if t == "pitch_class" else t) / "manifest.csv").is_file()]


def chosen_tasks(suite_dir: str | Path, tasks: Sequence[str] | None) -> list[str]:
    """The probe curve's tasks: every one the suite has, or those asked (each must be there)."""
    if tasks is None:
        return available_tasks(suite_dir)
    unknown = [t for t in tasks if t not in PROBE_TASKS]
    if unknown:
        raise DiagnosticsError(f"unknown task {', '.join(unknown)}; the probe curve has {', '.join(PROBE_TASKS)}")
    absent = [t for t in tasks if t not in available_tasks(suite_dir, tasks)]
    if absent:
        raise DiagnosticsError(f"{suite_dir}: no {', '.join(absent)} task (render it with `mert bench-suite`)")
    return list(dict.fromkeys(tasks))


def _split_indices(clips: Sequence[SuiteClip]) -> dict[str, np.ndarray]:
    return {s: np.array([i for i, c in enumerate(clips) if c.split == s], dtype=np.int64) for s in ("train", "valid", "test")}


# The probe's iteration cap. Kept at 200 so curves stay comparable with earlier runs; a fit that
# reaches it is reported in the results (`unconverged_layers`, `probe_converged`), not as
# scikit-learn's multi-line warning.
PROBE_MAX_ITER = 200


class LogisticFit(NamedTuple):
    valid: float  # accuracy on the valid split
    test: float  # ... on the test split
    converged: bool  # False when the fit stopped at PROBE_MAX_ITER iterations
    test_correct: np.ndarray  # [test clips] bool: which test clips it got right (paired comparisons)


def logistic_accuracy(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray]) -> LogisticFit:
    """A standardised logistic regression fitted on the train split, scored on valid and test."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = splits["train"]
    if len(np.unique(y[train])) < 2:
        return LogisticFit(float("nan"), float("nan"), True, np.zeros(len(splits["test"]), dtype=bool))
    regression = LogisticRegression(max_iter=PROBE_MAX_ITER, C=1.0)
    probe = make_pipeline(StandardScaler(), regression)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x[train], y[train])
    valid, test = (probe.predict(x[splits[s]]) == y[splits[s]] for s in ("valid", "test"))
    return LogisticFit(float(valid.mean()), float(test.mean()), bool(np.max(regression.n_iter_) < PROBE_MAX_ITER), test)


def _majority_accuracy(y: np.ndarray, splits: dict[str, np.ndarray]) -> float:
    values, counts = np.unique(y[splits["train"]], return_counts=True)
    return float((y[splits["test"]] == values[counts.argmax()]).mean())


def code_information(
    codes_of: Callable[[Path], np.ndarray], suite_dir: str | Path, codebook_size: int,
    tasks: Sequence[str] | None = None, seed: int = 0, max_clips: int | None = None,
) -> dict[str, Any]:
    """Per task and codebook: MI(code; label) (and with shuffled labels) and a code-histogram probe.

    `codes_of(path)` returns the `[K, frames]` codes of one suite clip (a teacher's `codes`);
    `max_clips` keeps that many clips per task, evenly spaced (a slow teacher's budget).
    """
    tasks = available_tasks(suite_dir, CODE_TASKS) if tasks is None else list(tasks)
    if not tasks:
        raise DiagnosticsError(f"{suite_dir}: no suite task (pitch, instrument, key) found")
    rng = np.random.default_rng(seed)
    cache: dict[Path, np.ndarray] = {}
    report: dict[str, Any] = {}
    for task in tasks:
        clips = _subset(suite_clips(suite_dir, task), max_clips)
        for clip in clips:
            if clip.path not in cache:
                cache[clip.path] = np.asarray(codes_of(clip.path), dtype=np.int64)
        codes = [cache[c.path] for c in clips]
        names, y = np.unique([c.label for c in clips], return_inverse=True)
        splits = _split_indices(clips)
        rows = []
        for k in range(codes[0].shape[0]):
            frame_codes = np.concatenate([c[k] for c in codes])
            frame_labels = np.concatenate([np.full(c.shape[1], y[i]) for i, c in enumerate(codes)])
            # the bias baseline shuffles labels between clips, not frames: frames of one clip
            # share codes, so the plug-in estimate credits clip identity as label information
            shuffled = rng.permutation(y)
            frame_shuffled = np.concatenate([np.full(c.shape[1], shuffled[i]) for i, c in enumerate(codes)])
            histogram = np.stack([np.bincount(c[k], minlength=codebook_size) / c.shape[1] for c in codes])
            _, test, converged, _ = logistic_accuracy(histogram, y, splits)
            rows.append({
                "codebook": k,
                "mi_bits": mutual_information_bits(frame_codes, frame_labels),
                "mi_bits_shuffled": mutual_information_bits(frame_codes, frame_shuffled),
                "probe_test_accuracy": test,
                "probe_converged": converged,
            })
        report[task] = {"classes": len(names), "label_entropy_bits": _entropy_bits(y),
                        "chance_accuracy": _majority_accuracy(y, splits), "codebooks": rows}
    return report


def _subset(clips: list[SuiteClip], count: int | None) -> list[SuiteClip]:
    if count is None or count >= len(clips):
        return clips
    return [clips[i] for i in np.linspace(0, len(clips) - 1, count).round().astype(int)]


def _entropy_bits(y: np.ndarray) -> float:
    p = np.bincount(y) / len(y)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


# =======================================================================================
# Gradient shares
# =======================================================================================
def _flat_grad(term: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_shares(model, batches: Iterable, cfg) -> dict[str, Any]:
    """Mean over batches of each term's gradient norm w.r.t. the backbone, its share and value.

    Also the cosine between the summed-MLM gradient and the CQT gradient, and the norms on
    the transformer alone (the penalty only reaches the conv front-end).
    """
    from mertkit.pretrain.data import clip_seed
    from mertkit.pretrain.mlm_model import Counts
    from mertkit.pretrain.trainer import batch_mask

    params = [p for p in model.backbone.parameters() if p.requires_grad]
    body = model.backbone.layers if hasattr(model.backbone, "layers") else model.backbone.encoder  # MERT-v2: Conformer blocks
    encoder = {id(p) for p in body.parameters()}
    in_encoder = torch.cat([torch.full((p.numel(),), id(p) in encoder, dtype=torch.bool) for p in params])
    sums: dict[str, list[float]] = {}
    for index, batch in enumerate(batches):
        mask = batch_mask(model, batch, cfg)
        mixture = torch.Generator().manual_seed(clip_seed(cfg.seed, 0, index, stream=2))
        out = model(batch.wave, batch.lengths, batch.labels, mask, mixture_generator=mixture)
        counts = Counts(int(out.masked_frames), int(out.valid_frames), batch.wave.shape[0])
        terms = model.loss_terms(out, counts)  # the weighted terms whose sum is the loss
        grads = {name: _flat_grad(term, params) for name, term in terms.items()}
        values = {name: term.item() for name, term in terms.items()}
        mlm = sum(g for name, g in grads.items() if name.startswith("ce_"))
        rows = {f"{name}/norm": float(g.norm()) for name, g in grads.items()}
        rows.update({f"{name}/encoder_norm": float(g[in_encoder].norm()) for name, g in grads.items()})
        rows.update({f"{name}/value": v for name, v in values.items()})
        rows["mlm/norm"] = float(mlm.norm())
        rows["mlm/encoder_norm"] = float(mlm[in_encoder].norm())
        if "cqt" in grads:
            rows["cos_mlm_cqt"] = float(torch.nn.functional.cosine_similarity(mlm, grads["cqt"], dim=0))
        for key, value in rows.items():
            sums.setdefault(key, []).append(value)
        model.zero_grad(set_to_none=True)
    if not sums:
        raise DiagnosticsError("no batches to measure gradients on")
    mean = {key: float(np.mean(v)) for key, v in sums.items()}
    terms = sorted({key.split("/")[0] for key in mean if key.endswith("/norm") and key != "mlm/norm"})
    total = sum(mean[f"{t}/norm"] for t in terms) or 1.0
    total_enc = sum(mean[f"{t}/encoder_norm"] for t in terms) or 1.0
    return {
        "batches": len(sums[next(iter(sums))]),
        "terms": {t: {"value": mean[f"{t}/value"], "grad_norm": mean[f"{t}/norm"], "share": mean[f"{t}/norm"] / total,
                      "encoder_grad_norm": mean[f"{t}/encoder_norm"],
                      "encoder_share": mean[f"{t}/encoder_norm"] / total_enc} for t in terms},
        "mlm_grad_norm": mean["mlm/norm"],
        "mlm_encoder_grad_norm": mean["mlm/encoder_norm"],
        "cos_mlm_cqt": mean.get("cos_mlm_cqt"),
    }


# =======================================================================================
# Snapshots and probe curves
# =======================================================================================
def save_snapshot(out_dir: Path, model: torch.nn.Module, cfg, update: int) -> Path:
    """Write `RUN/snapshots/update_<n>.pt`: the full pre-training model's weights at `update`."""
    from mertkit.fileio import atomic_write

    folder = out_dir / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"update_{update:08d}.pt"
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": SNAPSHOT_FORMAT, "config": cfg.to_dict(), "update": update, "model": state}
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path


def snapshot_paths(run_dir: str | Path, updates: Sequence[int] | None = None) -> list[tuple[int, Path]]:
    """[(update, path)] of the run's snapshots in update order; only those at `updates` if given."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = sorted(folder.glob("update_[0-9]*.pt")) if folder.is_dir() else []
    if not found:
        raise DiagnosticsError(f"{run_dir}: no snapshots in {folder} (the trainer writes them at snapshot_fractions)")
    snapshots = [(int(p.stem.split("_")[1]), p) for p in found]
    if updates is None:
        return snapshots
    have = [update for update, _ in snapshots]
    missing = sorted(set(updates) - set(have))
    if missing:
        raise DiagnosticsError(f"{run_dir}: no snapshot at update {', '.join(map(str, missing))} "
                               f"(it has {', '.join(map(str, have))})")
    wanted = set(updates)
    return [(update, path) for update, path in snapshots if update in wanted]


def load_snapshot(path: Path):
    """-> (PretrainConfig, MertPretrainModel in eval mode, update)."""
    from mertkit.pretrain.pretrain_config import PretrainConfig
    from mertkit.pretrain.trainer import build_model

    try:
        payload = read_tagged_torch(path, SNAPSHOT_FORMAT, "snapshot")
    except TaggedFileError as err:
        raise DiagnosticsError(str(err)) from err
    cfg = PretrainConfig.from_dict(payload["config"], source=str(path))
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    return cfg, model.eval(), int(payload["update"])


@torch.inference_mode()
def pooled_hidden_states(backbone, paths: Sequence[Path], sample_rate: int) -> np.ndarray:
    """[clips, hidden states, width]: every hidden state mean-pooled over each whole clip."""
    from mertkit.audio import load_audio

    return pooled_states_of_waves(backbone, (load_audio(path, sample_rate) for path in paths))


def pooled_states_of_waves(backbone, waves: Iterable[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """[clips, hidden states, width] of mono waves already at the backbone's sample rate; runs
    of equal-length waves go through in batches (no padding, so each clip's states are its own)."""
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            states = backbone(torch.from_numpy(np.stack(batch).astype(np.float32))).hidden_states
            rows.extend(torch.stack([s.mean(1) for s in states], dim=1).float().numpy())
            batch.clear()

    for wave in waves:
        if batch and (wave.shape != batch[0].shape or len(batch) == batch_size):
            flush()
        batch.append(wave)
    flush()
    return np.stack(rows)


def probe_states(pooled: np.ndarray, clips: Sequence[SuiteClip]) -> dict[str, Any]:
    """Best layer by validation accuracy and its test accuracy (plus every layer's)."""
    _, y = np.unique([c.label for c in clips], return_inverse=True)
    splits = _split_indices(clips)
    layers = [logistic_accuracy(pooled[:, i], y, splits) for i in range(pooled.shape[1])]
    best = int(np.nanargmax([fit.valid for fit in layers]))
    return {"best_layer": best, "test_accuracy": layers[best].test, "valid_accuracy": layers[best].valid,
            "test_accuracy_per_layer": [fit.test for fit in layers],
            "unconverged_layers": [i for i, fit in enumerate(layers) if not fit.converged],
            "test_correct": layers[best].test_correct.astype(int).tolist()}


def curve_change(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """How a task's probe moved between two snapshots (``probe_states`` results on the same
    test clips): the accuracy difference and its 95 % paired bootstrap interval over the test
    clips; "rises" or "falls" only when the interval excludes zero. One clip of a 55-clip
    test split is 1.8 points, so a curve read point by point says little on its own."""
    from mertkit.eval.metrics import bootstrap_ci
    from mertkit.eval.probes import PairedDifference

    a, b = np.asarray(first["test_correct"], dtype=float), np.asarray(last["test_correct"], dtype=float)
    interval = bootstrap_ci(lambda index: float(b[index].mean() - a[index].mean()), len(a))
    paired = PairedDifference(float(b.mean() - a.mean()), interval, len(a))
    verdict = {"ahead": "rises", "behind": "falls"}.get(paired.verdict, paired.verdict)
    return {"difference": paired.difference, "interval": None if interval is None else list(interval),
            "verdict": verdict, "test_clips": paired.n_test}


def probe_curve(run_dir: str | Path, suite_dir: str | Path, tasks: Sequence[str] | None = None,
                log: Callable[[str], None] | None = None, updates: Sequence[int] | None = None) -> dict[str, Any]:
    """Probe every snapshot of a run (or those at `updates`) on the suite (see the module docstring)."""
    tasks = chosen_tasks(suite_dir, tasks)
    clips = {t: suite_clips(suite_dir, t) for t in tasks}
    curve = []
    for update, path in snapshot_paths(run_dir, updates):
        cfg, model, _ = load_snapshot(path)
        total = cfg.total_updates
        cache: dict[Path, np.ndarray] = {}
        row: dict[str, Any] = {"update": update, "fraction": update / total}
        for task in tasks:
            missing = [c.path for c in clips[task] if c.path not in cache]
            if missing:
                cache.update(zip(missing, pooled_hidden_states(model.backbone, missing, cfg.sample_rate)))
            row[task] = probe_states(np.stack([cache[c.path] for c in clips[task]]), clips[task])
        if log is not None:
            capped = [f"{t} L{i}" for t in tasks for i in row[t]["unconverged_layers"]]
            note = f" (probes stopped at {PROBE_MAX_ITER} iterations: {', '.join(capped)})" if capped else ""
            log(f"update {update}: " + ", ".join(f"{t} {row[t]['test_accuracy']:.3f}" for t in tasks) + note)
        curve.append(row)
    changes = {}
    if len(curve) > 1:  # the last snapshot against the first (update 0: the random initialisation)
        changes = {t: {"from_update": curve[0]["update"], "to_update": curve[-1]["update"],
                       **curve_change(curve[0][t], curve[-1][t])} for t in tasks}
        if log is not None:
            log(f"update {curve[0]['update']} -> {curve[-1]['update']}: " + ", ".join(
                f"{t} {c['difference']:+.3f} {_interval_text(c['interval'])} {c['verdict']}" for t, c in changes.items()))
    return {"tasks": tasks, "points": curve, "change": changes}


def _interval_text(interval: list[float] | None) -> str:
    return "[no interval]" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def plot_curve(curve: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["update"] for p in curve["points"]]
    for task in curve["tasks"]:
        ax.plot(xs, [p[task]["test_accuracy"] for p in curve["points"]], marker="o", label=task)
    ax.set_xlabel("update (0 = random initialisation)")
    ax.set_ylabel("probe test accuracy (best layer)")
    ax.set_title("linear probes of the run's snapshots")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# =======================================================================================
# Everything for one run
# =======================================================================================
def run_diagnostics(
    run_dir: str | Path, out_dir: str | Path, *, suite_dir: str | Path | None = None,
    audio_dir: str | Path | None = None, label_dir: str | Path | None = None, batches: int = 2,
    log: Callable[[str], None] | None = None, tasks: Sequence[str] | None = None,
    updates: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Label stats, gradient shares at every snapshot (or those at `updates`), and the probe curve
    (on `tasks`, default every probe task the suite has); writes JSON + PNG."""
    snapshot_paths(run_dir, updates)  # a missing snapshot or task is said before any work
    if suite_dir is not None:
        tasks = chosen_tasks(suite_dir, tasks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"run": str(run_dir)}
    if label_dir is not None:
        report["labels"] = [asdict(s) for s in label_dir_stats(label_dir)]
    if audio_dir is not None and label_dir is not None:
        report["gradient_shares"] = {}
        for update, path in snapshot_paths(run_dir, updates):
            cfg, model, _ = load_snapshot(path)
            model.train()
            report["gradient_shares"][str(update)] = gradient_shares(model, _first_batches(cfg, audio_dir, label_dir, batches), cfg)
            if log is not None:
                shares = report["gradient_shares"][str(update)]["terms"]
                log(f"update {update}: encoder grad shares " + ", ".join(f"{t} {v['encoder_share']:.2f}" for t, v in shares.items()))
    if suite_dir is not None:
        report["probe_curve"] = probe_curve(run_dir, suite_dir, tasks, log=log, updates=updates)
        plot_curve(report["probe_curve"], out / "probe_curve.png")
    write_json(out / "diagnostics.json", _finite(report))
    return report


def _first_batches(cfg, audio_dir, label_dir, count: int):
    from mertkit.pretrain.data import PretrainDataset

    dataset = PretrainDataset(audio_dir, label_dir, cfg)
    return [dataset.batch(0, i, 0, 1) for i in range(min(count, dataset.batches_per_epoch(1)))]


def _finite(value: Any) -> Any:
    """JSON has no NaN: a probe that could not be fitted is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
