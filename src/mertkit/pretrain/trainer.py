"""The pre-training loop: plain PyTorch, readable top to bottom (`train` is the whole story).

Launch:
    one process:   mert pretrain --config tiny --audio A --labels L --out RUN
    several:       torchrun --nproc_per_node N -m mertkit.pretrain.trainer RUN/config.json A L RUN
                   (or the `mert pretrain` command itself under torchrun; NCCL on GPUs, gloo on CPU)

Per optimiser update: `grad_accum` micro-batches per process are read, their span masks drawn
(one generator per clip, see `data`), the number of masked and valid frames summed over all
micro-batches and processes, and each micro-batch's loss divided by those global counts, so
that the update equals one step on the combined batch whatever the process count. Adam
(decoupled weight decay, as fairseq's), linear warmup then polynomial decay, gradient
clipping, bf16 autocast or fp16 autocast with a GradScaler.

Checkpoints (`RUN/checkpoints/checkpoint_last.pt` plus numbered ones, written atomically)
hold the config, model, optimiser, scaler, update count, data position and every process's
RNG states; `resume=True` continues bit-exactly where the last checkpoint was written (log
lines written after it are dropped). Logs: `RUN/log.jsonl` (and TensorBoard when asked).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mertkit.fileio import TaggedFileError, atomic_write, read_tagged_torch
from mertkit.models.kernels import resolve_dtype
from mertkit.progress import Progress
from mertkit.pretrain.pretrain_config import PretrainConfig
from mertkit.pretrain.diagnostics import save_snapshot
from mertkit.pretrain.data import Batch, PretrainDataError, PretrainDataset, clip_seed, iterate_batches
from mertkit.pretrain.masking import span_mask
from mertkit.pretrain.mlm_model import Counts, LossSums, MertPretrainModel, set_mel_statistics

CHECKPOINT_FORMAT = "mertkit-pretrain-1"
LAST_CHECKPOINT = "checkpoint_last.pt"
# Crops a MERT-v2 backbone's mel statistics are measured on (64 x 5 s: every band well covered)
MEL_STATISTICS_CLIPS = 64
# Settings a resumed run may change; everything else must match the checkpoint.
RESUME_MUTABLE = frozenset({"total_updates", "log_interval", "ckpt_interval", "keep_checkpoints", "num_workers", "tensorboard",
                            "snapshot_fractions"})


class PretrainError(ValueError):
    """A run that cannot start or resume (bad checkpoint, mismatched config, ...)."""


@dataclass
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Position:
    update: int = 0  # optimiser updates done
    epoch: int = 0  # data position of the next batch to read
    batch: int = 0


# =======================================================================================
# The loop
# =======================================================================================
def train(
    cfg: PretrainConfig,
    audio_dir: str | os.PathLike,
    label_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    device: str | None = None,
    stop_after: int | None = None,
) -> Path:
    """Run (or resume) pre-training; returns the run directory. `stop_after` ends early (tests)."""
    env = init_distributed(device)
    out = Path(out_dir)
    checkpoint = load_checkpoint(out) if resume else None
    if not resume and (out / "checkpoints" / LAST_CHECKPOINT).exists():
        raise PretrainError(f"{out} already holds a run's checkpoints: resume it, or start in a new folder")
    if checkpoint is not None:
        cfg = config_for_resume(cfg, checkpoint, env)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save_json(out / "config.json")

    dataset = PretrainDataset(audio_dir, label_dir if cfg.objective == "mlm" else None, cfg)

    # ---- model, optimiser, precision ---------------------------------------------------
    model = initial_model(cfg)
    if cfg.init_from and checkpoint is None:
        load_initial_weights(model, cfg.init_from)
    elif cfg.is_mert2 and checkpoint is None:
        set_mel_statistics(model.backbone, mel_statistics_clips(dataset))
    model = model.to(env.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    precision = compute_precision(cfg, env)  # logged with every record: "auto" depends on the machine
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    position = Position()
    seed_everything(cfg.seed + env.rank)  # dropout / layerdrop streams differ per process
    if checkpoint is not None:
        position = restore(checkpoint, model, optimizer, scaler, env)
    wrapped = wrap_ddp(model, cfg, env)

    # ---- data and logs -------------------------------------------------------------------
    batches = iterate_batches(dataset, position.epoch, position.batch, env.rank, env.world_size, cfg.num_workers)
    logger = RunLogger(out, cfg, keep_until=position.update) if env.is_main else None
    last = stop_after if stop_after is not None else cfg.total_updates
    # loss, steps/s and ETA on stderr, rank 0 only (silenced by --quiet / set_quiet)
    bar = Progress(min(last, cfg.total_updates), "pretrain", unit="step", initial=position.update,
                   enabled=None if env.is_main else False)

    # ---- updates -------------------------------------------------------------------------
    snapshots = cfg.snapshot_updates() if env.is_main else set()
    if position.update == 0 and 0 in snapshots:
        save_snapshot(out, model, cfg, 0)
    model.train()
    while position.update < min(last, cfg.total_updates):
        started = time.perf_counter()
        micro = []
        for _ in range(cfg.grad_accum):
            epoch, index, batch = next(batches)
            micro.append((epoch, index, batch.to(env.device)))
        position.epoch, position.batch = epoch, index + 1
        lr = lr_at(cfg, position.update + 1)
        stats = train_step(model, wrapped, optimizer, scaler, micro, cfg, env, lr, precision)
        position.update += 1
        model.after_update(position.update)
        stats.update(update=position.update, epoch=position.epoch, lr=lr, precision=precision,
                     seconds=time.perf_counter() - started)
        bar.update(1, loss=stats["loss"])
        if logger is not None:
            logger.record(stats)
        if position.update % cfg.ckpt_interval == 0 or position.update == cfg.total_updates:
            save_checkpoint(out, model, optimizer, scaler, position, cfg, env)
        if position.update in snapshots:
            save_snapshot(out, model, cfg, position.update)
    bar.close()
    if logger is not None:
        logger.close()
    return out


def train_step(
    model: MertPretrainModel,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro: list[tuple[int, int, Batch]],
    cfg: PretrainConfig,
    env: DistEnv,
    lr: float,
    precision: str,
) -> dict:
    """One optimiser update over this process's micro-batches; returns what to log."""
    masks = [batch_mask(model, batch, cfg) for _, _, batch in micro]
    valid_frames = [int(frame_lengths(model, batch.lengths).sum()) for _, _, batch in micro]
    clips = sum(batch.wave.shape[0] for _, _, batch in micro)
    counts = Counts(*all_reduce_ints([sum(int(m.sum()) for m in masks), sum(valid_frames), clips], env))
    audio_samples = all_reduce_ints([sum(int(b.lengths.sum()) for _, _, b in micro)], env)[0]
    totals: dict[str, Tensor] = {}
    for i, ((epoch, index, batch), mask) in enumerate(zip(micro, masks)):
        mixture = torch.Generator().manual_seed(clip_seed(cfg.seed, epoch, index * env.world_size + env.rank, stream=2))
        syncing = env.world_size == 1 or i == len(micro) - 1
        with (contextlib.nullcontext() if syncing else wrapped.no_sync()), autocast(precision, env):
            out: LossSums = wrapped(batch.wave, batch.lengths, batch.labels, mask, mixture_generator=mixture)
            # DDP averages gradients over processes; the counts are already global, so undo it.
            loss = model.total_loss(out, counts) * env.world_size
        scaler.scale(loss).backward()
        accumulate(totals, out)

    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm if cfg.clip_norm > 0 else math.inf))
    for group in optimizer.param_groups:
        group["lr"] = lr
    # The scaler itself skips the step when fp16 gradients overflowed; in fp32 / bf16 a
    # non-finite gradient skips the update too (logged as skipped) rather than poison Adam.
    skipped = not math.isfinite(grad_norm)
    if scaler.is_enabled() or not skipped:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    totals = all_reduce_sums(totals, env)
    correct = totals.pop("correct", None)
    return {
        "loss": float(model.total_loss(LossSums(totals, correct, counts.masked_frames, counts.valid_frames), counts)),
        **model.metrics(totals, correct, counts),
        "grad_norm": grad_norm,
        "skipped": skipped,
        "loss_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        "masked_fraction": counts.masked_frames / max(counts.valid_frames, 1),
        "audio_seconds": audio_samples / cfg.sample_rate,
        "frames": counts.valid_frames,
    }


# =======================================================================================
# Pieces of the loop
# =======================================================================================
def build_model(cfg: PretrainConfig) -> MertPretrainModel:
    if cfg.objective == "data2vec":
        from mertkit.pretrain.data2vec import Data2VecPretrainModel

        return Data2VecPretrainModel(cfg)
    return MertPretrainModel(cfg)


def initial_model(cfg: PretrainConfig) -> MertPretrainModel:
    """The run's initial weights, a function of `cfg.seed` alone: identical on every process,
    and rebuildable from a saved config (update 0 of a probe curve, after the run is gone).
    A MERT-v2 layout's mel statistics are the exception: `train` measures them on the corpus
    (`set_mel_statistics`), so its update-0 snapshot or its export holds them."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg)


def mel_statistics_clips(dataset: PretrainDataset, clips: int = MEL_STATISTICS_CLIPS) -> list[Tensor]:
    """The first `clips` crops of epoch 0 (the same on every process): the audio a MERT-v2
    backbone's mel normalisation is measured on before its first update."""
    order = dataset.epoch_order(0)
    return [torch.from_numpy(dataset.clip(0, position, order)[0])
            for position in range(min(clips, len(dataset)))]


def frame_lengths(model: MertPretrainModel, lengths: Tensor) -> Tensor:
    return torch.tensor([model.frame_count(int(n)) for n in lengths], dtype=torch.long)


def batch_mask(model: MertPretrainModel, batch: Batch, cfg: PretrainConfig) -> Tensor:
    """[B, F] span mask drawn from each clip's own seed."""
    frames = model.frame_count(batch.wave.shape[1])
    generators = [torch.Generator().manual_seed(seed) for seed in batch.seeds]
    mask = span_mask(
        frames, frame_lengths(model, batch.lengths), mask_prob=cfg.mask_prob, mask_length=cfg.mask_length,
        min_masks=cfg.mask_min_masks, generators=generators,
    )
    return mask.to(batch.wave.device)


def lr_at(cfg: PretrainConfig, update: int) -> float:
    """Learning rate of update number `update` (1-based).

    Linear warmup (update k <= warmup uses lr * k / warmup, so the first update is never at
    zero), then polynomial decay from lr towards end_lr over the remaining updates, computed
    from the updates already done (as fairseq's schedule, updated after every step).
    """
    if update <= cfg.warmup_updates:
        return cfg.lr * update / cfg.warmup_updates
    done = update - 1
    remaining = 1.0 - (done - cfg.warmup_updates) / max(cfg.total_updates - cfg.warmup_updates, 1)
    remaining = min(max(remaining, 0.0), 1.0)
    return cfg.end_lr + (cfg.lr - cfg.end_lr) * remaining**cfg.lr_decay_power


# precision names of the config -> dtype names of `resolve_dtype`
_PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "auto"}


def compute_precision(cfg: PretrainConfig, env: DistEnv) -> str:
    """The precision this process trains in: "auto" is bf16 where the device has native bf16
    (CUDA with bf16; CPUs with AVX512-BF16, AMX or ARM BF16), fp32 elsewhere. bf16 autocast
    on a CPU without native bf16 is far slower than fp32 (the shipped recipe: 0.05 against
    0.85 updates/s on a 2-core AVX2 EPYC), so asking for it there warns once."""
    dtype = resolve_dtype(_PRECISION_DTYPES[cfg.precision], env.device)
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(precision: str, env: DistEnv):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=env.device.type, dtype=dtype)


def accumulate(totals: dict[str, Tensor], out: LossSums) -> None:
    for name, value in out.sums.items():
        totals[name] = totals.get(name, 0) + value.detach().float()
    if out.correct is not None:
        totals["correct"] = totals.get("correct", 0) + out.correct.float()


def all_reduce_ints(values: list[int], env: DistEnv) -> list[int]:
    if env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def all_reduce_sums(totals: dict[str, Tensor], env: DistEnv) -> dict[str, Tensor]:
    if env.world_size == 1:
        return {k: v.cpu() for k, v in totals.items()}
    reduced = {}
    for name in sorted(totals):
        value = totals[name].to(env.device, torch.float64).clone()
        dist.all_reduce(value)
        reduced[name] = value.cpu()
    return reduced


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_initial_weights(model: MertPretrainModel, name_or_path: str) -> None:
    """Continued pre-training (`init_from`): a mertkit pre-training run folder gives every
    weight of its last checkpoint; anything else names a released checkpoint's backbone."""
    run = Path(name_or_path)
    if (run / "checkpoints" / LAST_CHECKPOINT).is_file():
        load_run_weights(model, run)
    else:
        load_released_backbone(model, name_or_path)


def load_run_weights(model: MertPretrainModel, run: Path) -> None:
    """Every weight (backbone with its mel statistics, heads, code embeddings) of `run`'s last
    checkpoint, strictly; its optimiser state and position stay behind (a new schedule starts)."""
    from mertkit.models.checkpoint import CheckpointError, check_weights

    saved = load_checkpoint(run)
    source = f"init_from {run}"
    try:
        check_weights({name: tuple(t.shape) for name, t in model.state_dict().items()}, saved["model"], source=source)
    except CheckpointError as err:
        raise PretrainError(f"{err} (the run's config differs in architecture, heads or codebooks)") from err
    model.load_state_dict(saved["model"], strict=True)


def load_released_backbone(model: MertPretrainModel, name_or_path: str) -> None:
    """Continued pre-training: copy a released checkpoint's weights strictly into the backbone."""
    from mertkit.models.checkpoint import load, load_state_dict_strict
    from mertkit.models.family import family_of

    released = load(name_or_path)
    family = family_of(released).name
    if family != "hubert":
        raise PretrainError(f"init_from {name_or_path}: a {family} checkpoint; the MERT-v1 recipe continues "
                            f"HuBERT-family checkpoints (MERT-v0/v1, music2vec) only")
    if model.config.is_mert2:
        raise PretrainError(f"init_from {name_or_path}: continued pre-training needs a MERT-v1-layout config; "
                            f"this one is MERT-v2 (model_type mert2)")
    ours, theirs = model.backbone.config, released.config
    architecture = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "conv_dim", "conv_kernel", "conv_stride", "do_stable_layer_norm", "feat_extract_norm",
                    "num_conv_pos_embeddings", "sample_rate")
    different = [f"{k}: config {getattr(ours, k)} vs checkpoint {getattr(theirs, k)}"
                 for k in architecture if getattr(ours, k) != getattr(theirs, k)]
    if different:
        raise PretrainError(f"init_from {name_or_path}: architecture differs from the config ({'; '.join(different)})")
    load_state_dict_strict(model.backbone, released.state_dict(), source=str(name_or_path))


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------
def init_distributed(device: str | None) -> DistEnv:
    """One process, or (under torchrun: WORLD_SIZE > 1) a process group: NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if world_size == 1:
        return DistEnv(0, 1, torch.device(device or ("cuda" if use_cuda else "cpu")))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistEnv(rank, world_size, chosen)


def wrap_ddp(model: nn.Module, cfg: PretrainConfig, env: DistEnv) -> nn.Module:
    if env.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # Layerdrop skips whole layers at random, so their parameters get no gradient on that step.
    unused = getattr(cfg.mert_config(), "layerdrop", 0.0) > 0
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(value):
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(
    out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    position: Position, cfg: PretrainConfig, env: DistEnv,
) -> None:
    """Atomically write checkpoint_<update>.pt and checkpoint_last.pt (rank 0), keeping the newest few."""
    states = [None] * env.world_size
    if env.world_size > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if env.is_main:
        _write_checkpoint(out, model, optimizer, scaler, position, cfg, env, states)
    if env.world_size > 1:
        # No process runs ahead, or exits and tears down the process group, while rank 0
        # is still writing the checkpoint.
        dist.barrier()


def _write_checkpoint(
    out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    position: Position, cfg: PretrainConfig, env: DistEnv, states: list,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": {"update": position.update},
        "position": {"update": position.update, "epoch": position.epoch, "batch": position.batch},
        "world_size": env.world_size,
        "rng": states,
    }
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    numbered = folder / f"checkpoint_{position.update:08d}.pt"
    _atomic_save(payload, numbered)
    tmp = folder / f".{LAST_CHECKPOINT}.tmp"
    tmp.unlink(missing_ok=True)
    os.link(numbered, tmp)
    os.replace(tmp, folder / LAST_CHECKPOINT)
    for old in sorted(folder.glob("checkpoint_[0-9]*.pt"))[: -cfg.keep_checkpoints]:
        old.unlink()


def _atomic_save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint (loaded with weights_only=True: no pickled code runs)."""
    try:
        return read_tagged_torch(path, CHECKPOINT_FORMAT, "pre-training checkpoint")
    except TaggedFileError as err:
        raise PretrainError(str(err)) from err


def load_checkpoint(out: Path) -> dict:
    path = out / "checkpoints" / LAST_CHECKPOINT
    if not path.is_file():
        raise PretrainError(f"{out}: nothing to resume ({path} does not exist)")
    return read_checkpoint(path)


def config_for_resume(cfg: PretrainConfig, checkpoint: dict, env: DistEnv) -> PretrainConfig:
    saved = PretrainConfig.from_dict(checkpoint["config"], source="checkpoint config")
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE and saved.to_dict()[k] != v)
    if changed:
        raise PretrainError(f"cannot resume with a changed config: {', '.join(changed)} changed")
    if checkpoint["world_size"] != env.world_size:
        raise PretrainError(
            f"the checkpoint was written by {checkpoint['world_size']} processes; resume with the same number "
            f"(now {env.world_size}) so the data order continues exactly"
        )
    return cfg


def restore(checkpoint: dict, model: nn.Module, optimizer, scaler, env: DistEnv) -> Position:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"][env.rank])
    return Position(**checkpoint["position"])


# ---------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------
class RunLogger:
    """`log.jsonl` (one JSON object per logged update) and optional TensorBoard scalars."""

    def __init__(self, out: Path, cfg: PretrainConfig, keep_until: int):
        self.path = out / "log.jsonl"
        self.every = cfg.log_interval
        self._drop_after(keep_until)
        self.handle = open(self.path, "a")
        self.writer = _tensorboard(out) if cfg.tensorboard else None
        self.audio = self.frames = self.seconds = 0.0

    def _drop_after(self, update: int) -> None:
        """A resumed run repeats the updates after its checkpoint: drop their old lines."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and _update_of(line) is not None and _update_of(line) <= update]
        self.path.write_text("".join(line + "\n" for line in kept))

    def record(self, stats: dict) -> None:
        self.audio += stats.pop("audio_seconds")
        self.frames += stats.pop("frames")
        self.seconds += stats.pop("seconds")
        if stats["update"] % self.every:
            return
        stats["audio_seconds_per_s"] = self.audio / self.seconds
        stats["frames_per_s"] = self.frames / self.seconds
        self.audio = self.frames = self.seconds = 0.0
        self.handle.write(json.dumps(stats) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for name, value in stats.items():
                for tag, scalar in _scalars(name, value):
                    self.writer.add_scalar(tag, scalar, stats["update"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def _update_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["update"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # a torn last line from a killed run


def _scalars(name: str, value) -> list[tuple[str, float]]:
    if isinstance(value, list):
        return [(f"{name}/{i}", float(v)) for i, v in enumerate(value)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(name, float(value))]
    return []


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise PretrainError("tensorboard=true needs tensorboard: pip install tensorboard") from err
    return SummaryWriter(str(out / "tensorboard"))


# ---------------------------------------------------------------------------------------
# torchrun entry point: python -m mertkit.pretrain.trainer CONFIG AUDIO LABELS|- OUT [--resume]
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    if len(args) != 4:
        raise SystemExit("usage: python -m mertkit.pretrain.trainer CONFIG.json AUDIO_DIR LABEL_DIR|- OUT_DIR [--resume]")
    from mertkit.pretrain.pretrain_config import PretrainConfigError, load_config

    config, audio, labels, out = args
    try:
        train(load_config(config), audio, None if labels == "-" else labels, out, resume=resume)
    except (PretrainConfigError, PretrainError, PretrainDataError) as err:
        # bad input under torchrun: one line per rank, as `mert pretrain` prints it, not a traceback
        raise SystemExit(f"Error: {err}") from err
    if dist.is_initialized():
        # DDP sits in a reference cycle, so its reducer (which holds the group and its gradient
        # buckets) outlives train() until a garbage collection; collect it now, while the
        # interpreter is whole, not during its finalisation, where freeing those tensors can
        # abort a rank (pytorch/pytorch#179291 describes the mechanism).
        gc.collect()
        # gloo's barrier completes only after every earlier collective of the process has, so
        # no asynchronous work (DDP's gradient buckets included) is alive when the group is
        # torn down; work destroyed mid-flight aborted a rank at exit ("terminate called
        # without an active exception") once in CI.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
