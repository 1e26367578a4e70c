"""`PretrainConfig`: everything that describes a pre-training run, in one flat dataclass.

In the spirit of nanoGPT's config: plain fields with the MERT-v1 recipe as defaults (numbers
from MODELS.md section 5), presets as JSON files (`mertkit/presets/{tiny,95m,330m}.json`),
command-line overrides as `key=value` strings, and the whole thing saved as a dict inside
every checkpoint so a run can always be resumed or exported without the original files.

`model` holds the backbone's config as a dict with the official `config.json` field names
(`model_type` "mert2" picks the MERT-v2 layout, anything else the MERT-v1 one), so what is
trained is exactly what `mert export` writes and `mertkit.load` reads.
Unknown keys are refused everywhere (a typo in a preset or an override is an error, not a
silently ignored setting).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mertkit.fileio import write_json
from mertkit.models.hubert.config import ConfigError, MertConfig, read_json_object
from mertkit.models.mert2.config import MODEL_TYPE as MERT2_MODEL_TYPE, Mert2Config

PRESET_NAMES = ("tiny", "tiny-wide", "tiny-mel", "95m", "330m")
OBJECTIVES = ("mlm", "data2vec")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CQT_TARGETS = ("magnitude", "log_standardised")
# The texture target's log-mel spectrogram: 1024-sample Hann frames (43 ms at 24 kHz), 64 HTK
# mel bands from 0 Hz to Nyquist: the k-means teacher's spectrogram (`pretrain.kmeans`)
TEXTURE_FFT = 1024
TEXTURE_MELS = 64


class PretrainConfigError(ValueError):
    """A pre-training config, preset or override that cannot be used."""


@dataclass
class PretrainConfig:
    # ---- the backbone (official config.json field names) --------------------------------
    model: dict[str, Any] = field(default_factory=lambda: MertConfig().to_dict())
    objective: str = "mlm"  # "mlm" (MERT) or "data2vec" (music2vec)
    # ---- targets --------------------------------------------------------------------------
    label_rate: int = 75  # label frames per second; must equal the model's frame rate
    n_codebooks: int = 8
    codebook_size: int = 1024
    final_dim: int = 64
    logit_temp: float = 0.1
    cqt: bool = True
    cqt_bins: int = 336
    cqt_fmin: float = 32.7
    cqt_bins_per_octave: int = 48
    # "magnitude": the recipe's raw CQT magnitude; "log_standardised": log(magnitude + 1e-3),
    # standardised over each clip's valid frames and bins (loudness-free pitch patterns whose
    # scale a freshly initialised head already matches: for short CPU budgets)
    cqt_target: str = "magnitude"
    # ---- masking (span starts with probability mask_prob, HuBERT-style) -------------------
    mask_prob: float = 0.8
    mask_length: int = 5
    mask_min_masks: int = 2
    # ---- in-batch noise mixture -----------------------------------------------------------
    mixture_prob: float = 0.5
    mixture_min_segments: int = 1
    mixture_max_segments: int = 3
    mixture_min_samples: int = 12000  # 0.5 s at 24 kHz
    mixture_max_samples: int = 24000  # 1.0 s (95M); 36000 = 1.5 s for 330M
    mixture_volume: float = 1.0
    # ---- input degradation (not in MERT's recipe; see mertkit.pretrain.degrade) ------------
    # each clip's input, after mixing, with this probability: white noise or a low-pass cut
    degrade_prob: float = 0.0
    degrade_snr_min_db: float = 10.0
    degrade_snr_max_db: float = 40.0
    degrade_lowpass_min_hz: float = 3000.0
    # ---- loss weights ---------------------------------------------------------------------
    ce_weight: float = 1.0
    penalty_weight: float = 10.0
    cqt_weight: float = 1.0
    # > 0: the CQT head also regresses the onset flux (each octave's rise in log CQT magnitude
    # from the previous frame, scaled to mean 1 per clip), its MSE times this beside the CQT's:
    # a target that needs time resolution (beats), where the CQT's favours long windows (pitch)
    flux_weight: float = 0.0
    # > 0: the CQT head also regresses the chroma (the CQT folded into 12 pitch classes, log,
    # standardised per clip), its MSE times this: pitch class and key, octave-free
    chroma_weight: float = 0.0
    # > 0: the CQT head also regresses the first `timbre_coefficients` cepstral coefficients
    # of the log-standardised CQT (its spectral envelope), its MSE times this: instruments
    timbre_weight: float = 0.0
    timbre_coefficients: int = 20
    # > 0: the CQT head also regresses the *texture* of the full band (the CQT stops at ~4 kHz):
    # over +-`texture_window_seconds` around each frame, the mean, std and std of the
    # frame-to-frame change of the first `timbre_coefficients` cepstral coefficients of a
    # log-mel spectrogram up to Nyquist, its MSE times this: how an instrument's envelope
    # sounds and moves (attack, decay, vibrato), what MFCC statistics capture
    texture_weight: float = 0.0
    texture_window_seconds: float = 0.5
    # > 0: the texture target once more at the scale a clip probe reads it: the head's texture
    # predictions averaged over each crop's valid frames (masked or not) against the targets'
    # average, MSE per crop times this. The head is linear, so this asks the mean-pooled last
    # state itself to carry the crop's texture, which the per-frame term leaves to chance
    texture_clip_weight: float = 0.0
    # > 0: clip-level contrast (COLA-style, not in the MERT-v1 recipe): every batch item is a
    # pair of crops of one file; the last hidden state, mean-pooled over each crop's valid
    # frames and passed through `contrast_head`, must pick its partner among the batch's other
    # crops (InfoNCE at `contrast_temperature`), times this: what stays constant over a piece
    # (its instruments, key, tempo) rather than what changes from note to note
    contrast_weight: float = 0.0
    contrast_temperature: float = 0.1
    # CE and CQT also on the unmasked frames, times this (HuBERT's pred_nomask_weight; MERT: 0)
    unmasked_weight: float = 0.0
    # ---- data2vec objective (music2vec) ---------------------------------------------------
    d2v_top_k: int = 8
    d2v_ema_decay: float = 0.999
    d2v_ema_end_decay: float = 0.9999
    d2v_ema_anneal_updates: int = 30000
    # ---- optimisation ---------------------------------------------------------------------
    lr: float = 5e-4
    end_lr: float = 0.0
    warmup_updates: int = 32000
    total_updates: int = 400000
    lr_decay_power: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 10.0  # 0 disables clipping (the norm is still logged)
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler) | auto (bf16 where native, else fp32)
    feature_grad_mult: float = 0.1
    # ---- data -----------------------------------------------------------------------------
    crop_seconds: float = 5.0
    min_crop_seconds: float = 3.0
    batch_size: int = 8  # clips per process per micro-batch
    num_workers: int = 0
    seed: int = 1
    # ---- bookkeeping ----------------------------------------------------------------------
    log_interval: int = 10
    ckpt_interval: int = 1000
    keep_checkpoints: int = 2
    # weights-only snapshots at these fractions of total_updates (0 = the initialisation),
    # kept for the probe curve of `mert pretrain-diagnose`; [] writes none
    snapshot_fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0])
    tensorboard: bool = False
    # continued pre-training: a released checkpoint (dir / name; its backbone) or a mertkit
    # pre-training run folder (every weight of its last checkpoint, heads included); either way
    # a new optimiser and schedule start at update 0
    init_from: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived --------------------------------------------------------------------------
    def mert_config(self) -> MertConfig | Mert2Config:
        """The backbone's config: MERT-v1 layout (`MertConfig`) or MERT-v2 (`Mert2Config`)."""
        try:
            return _backbone_config_class(self.model).from_dict(self.model, source="PretrainConfig.model")
        except ConfigError as err:
            raise PretrainConfigError(str(err)) from err

    @property
    def is_mert2(self) -> bool:
        return isinstance(self.mert_config(), Mert2Config)

    @property
    def sample_rate(self) -> int:
        return self.mert_config().sample_rate

    @property
    def flux_bands(self) -> int:
        """Onset-flux targets the CQT head regresses beside the CQT: one an octave, 0 when off."""
        return self.cqt_bins // self.cqt_bins_per_octave if self.flux_weight > 0 else 0

    @property
    def head_targets(self) -> list[tuple[str, int, float]]:
        """(name, width, weight) of what the CQT head regresses, in the order of its outputs:
        the CQT, then each derived target switched on by a weight > 0; [] without the CQT."""
        if not self.cqt:
            return []
        derived = [("flux", self.flux_bands, self.flux_weight), ("chroma", 12, self.chroma_weight),
                   ("timbre", self.timbre_coefficients, self.timbre_weight),
                   ("texture", 3 * self.timbre_coefficients, self.texture_weight)]
        return [("cqt", self.cqt_bins, self.cqt_weight)] + [t for t in derived if t[2] > 0]

    @property
    def crops_per_clip(self) -> int:
        """Crops the data cuts from each chosen file: a pair for the clip contrast, else one."""
        return 2 if self.contrast_weight > 0 else 1

    @property
    def crop_samples(self) -> int:
        return round(self.crop_seconds * self.sample_rate)

    @property
    def min_crop_samples(self) -> int:
        return round(self.min_crop_seconds * self.sample_rate)

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        mert = self.mert_config()
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (abs(mert.frame_rate - self.label_rate) < 1e-9,
             f"label_rate {self.label_rate} Hz differs from the model's frame rate {mert.frame_rate} Hz"),
            (isinstance(mert, Mert2Config) or mert.mask_time_prob > 0,
             "model.mask_time_prob must be > 0 so the model has masked_spec_embed"),
            (not isinstance(mert, Mert2Config) or self.objective == "mlm",
             "the MERT-v2 layout (model_type mert2) trains with objective mlm only"),
            (0 < self.mask_prob <= 1 and self.mask_length >= 1 and self.mask_min_masks >= 0,
             "mask_prob must be in (0, 1], mask_length >= 1, mask_min_masks >= 0"),
            (0 <= self.mixture_prob <= 1, f"mixture_prob must be in [0, 1], got {self.mixture_prob}"),
            (1 <= self.mixture_min_segments <= self.mixture_max_segments,
             "need 1 <= mixture_min_segments <= mixture_max_segments"),
            (1 <= self.mixture_min_samples <= self.mixture_max_samples,
             "need 1 <= mixture_min_samples <= mixture_max_samples"),
            (0 <= self.degrade_prob <= 1, f"degrade_prob must be in [0, 1], got {self.degrade_prob}"),
            (self.degrade_snr_min_db <= self.degrade_snr_max_db,
             "need degrade_snr_min_db <= degrade_snr_max_db"),
            (0 < self.degrade_lowpass_min_hz < self.sample_rate / 2,
             f"degrade_lowpass_min_hz must be in (0, {self.sample_rate / 2:g}) Hz, got {self.degrade_lowpass_min_hz}"),
            (self.n_codebooks >= 1 and self.codebook_size >= 2 and self.final_dim >= 1, "bad target sizes"),
            (self.logit_temp > 0, "logit_temp must be > 0"),
            (self.cqt_target in CQT_TARGETS, f"cqt_target must be one of {CQT_TARGETS}, got {self.cqt_target!r}"),
            (self.unmasked_weight >= 0, f"unmasked_weight must be >= 0, got {self.unmasked_weight}"),
            (self.flux_weight >= 0, f"flux_weight must be >= 0, got {self.flux_weight}"),
            (self.flux_weight == 0 or (self.cqt and self.cqt_bins % self.cqt_bins_per_octave == 0),
             "flux_weight > 0 needs cqt=true and cqt_bins a whole number of octaves (cqt_bins_per_octave)"),
            (self.chroma_weight >= 0 and self.timbre_weight >= 0,
             f"chroma_weight and timbre_weight must be >= 0, got {self.chroma_weight}, {self.timbre_weight}"),
            (self.chroma_weight == 0 or (self.cqt and self.cqt_bins % self.cqt_bins_per_octave == 0
                                         and self.cqt_bins_per_octave % 12 == 0),
             "chroma_weight > 0 needs cqt=true, cqt_bins a whole number of octaves and cqt_bins_per_octave "
             "a multiple of 12"),
            (self.timbre_weight == 0 or (self.cqt and 1 <= self.timbre_coefficients <= self.cqt_bins),
             "timbre_weight > 0 needs cqt=true and 1 <= timbre_coefficients <= cqt_bins"),
            (self.texture_weight >= 0 and self.texture_window_seconds > 0,
             f"texture_weight must be >= 0 and texture_window_seconds > 0, got {self.texture_weight}, "
             f"{self.texture_window_seconds}"),
            (self.texture_weight == 0 or (self.cqt and 1 <= self.timbre_coefficients <= TEXTURE_MELS),
             f"texture_weight > 0 needs cqt=true (the CQT head) and 1 <= timbre_coefficients <= {TEXTURE_MELS}"),
            (self.texture_clip_weight >= 0, f"texture_clip_weight must be >= 0, got {self.texture_clip_weight}"),
            (self.texture_clip_weight == 0 or self.texture_weight > 0,
             "texture_clip_weight > 0 needs texture_weight > 0 (the head's texture outputs)"),
            (self.grad_accum >= 1 and self.batch_size >= 1, "grad_accum and batch_size must be >= 1"),
            (self.contrast_weight >= 0 and self.contrast_temperature > 0,
             f"contrast_weight must be >= 0 and contrast_temperature > 0, got {self.contrast_weight}, "
             f"{self.contrast_temperature}"),
            (self.contrast_weight == 0 or (self.objective == "mlm" and self.batch_size >= 2),
             "contrast_weight > 0 needs objective mlm and batch_size >= 2 (pairs: a partner and negatives)"),
            (0 <= self.warmup_updates <= self.total_updates and self.total_updates >= 1,
             "need 0 <= warmup_updates <= total_updates and total_updates >= 1"),
            (0 < self.min_crop_seconds <= self.crop_seconds, "need 0 < min_crop_seconds <= crop_seconds"),
            (self.min_crop_samples >= mert.min_input_samples,
             f"min_crop_seconds gives fewer samples than one frame ({mert.min_input_samples})"),
            (self.objective != "data2vec" or 1 <= self.d2v_top_k <= mert.num_hidden_layers,
             "d2v_top_k must be in 1..num_hidden_layers"),
            (isinstance(self.snapshot_fractions, list)
             and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1
                     for f in self.snapshot_fractions),
             f"snapshot_fractions must be a list of numbers in [0, 1], got {self.snapshot_fractions!r}"),
            (self.log_interval >= 1 and self.ckpt_interval >= 1 and self.keep_checkpoints >= 1,
             "log_interval, ckpt_interval and keep_checkpoints must be >= 1"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise PretrainConfigError("invalid pre-training config: " + "; ".join(problems))

    def snapshot_updates(self) -> set[int]:
        """Update counts after which the trainer writes a snapshot (0: before the first)."""
        return {round(f * self.total_updates) for f in self.snapshot_fractions}

    # ---- dict / JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> PretrainConfig:
        if not isinstance(data, dict):
            raise PretrainConfigError(f"{source}: expected a JSON object")
        unknown = sorted(set(data) - _field_names())
        if unknown:
            raise PretrainConfigError(f"{source}: unknown pre-training settings {unknown}")
        values = {name: _coerce(name, value, source) for name, value in data.items()}
        if "model" in values:
            values["model"] = _full_model_dict(values["model"], source)
        try:
            return cls(**values)
        except PretrainConfigError as err:
            raise PretrainConfigError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> PretrainConfig:
        return cls.from_dict(read_json_object(path, PretrainConfigError), source=str(path))

    def save_json(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def with_overrides(self, overrides: list[str]) -> PretrainConfig:
        """Apply `key=value` strings; `model.hidden_size=256` reaches into the backbone config.

        Values are parsed as JSON when they are valid JSON (numbers, true/false, null, lists)
        and taken as plain strings otherwise.
        """
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise PretrainConfigError(f"override {item!r} is not of the form key=value")
            value = _parse_value(raw)
            if key.startswith("model."):
                data["model"][key[len("model."):]] = value
            elif key in _field_names():
                data[key] = value
            else:
                raise PretrainConfigError(f"override {item!r}: unknown setting {key!r}")
        return PretrainConfig.from_dict(data, source="overrides")


def load_config(name_or_path: str | os.PathLike) -> PretrainConfig:
    """A preset by name (`tiny`, `tiny-wide`, `tiny-mel`, `95m`, `330m`) or a JSON file."""
    if str(name_or_path) in PRESET_NAMES:
        text = resources.files("mertkit").joinpath("presets", f"{name_or_path}.json").read_text()
        return PretrainConfig.from_dict(json.loads(text), source=f"preset {name_or_path}")
    path = Path(name_or_path)
    if not path.is_file():
        raise PretrainConfigError(f"{name_or_path}: neither a preset ({', '.join(PRESET_NAMES)}) nor a JSON file")
    return PretrainConfig.from_json(path)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(PretrainConfig)}


def _backbone_config_class(model: dict[str, Any]) -> type[MertConfig] | type[Mert2Config]:
    return Mert2Config if model.get("model_type") == MERT2_MODEL_TYPE else MertConfig


def _full_model_dict(model: Any, source: str) -> dict[str, Any]:
    """A partial backbone dict (a preset lists only what differs) completed with the defaults
    of its layout (`model_type` mert2: MERT-v2; otherwise MERT-v1)."""
    if not isinstance(model, dict):
        raise PretrainConfigError(f"{source}: 'model' must be an object of config.json fields")
    config_class = _backbone_config_class(model)
    full = config_class().to_dict()
    if config_class is Mert2Config and "subsampling_channels" not in model:
        full.pop("subsampling_channels")  # its default follows num_mel_bins and hidden_size
    full.update(model)
    try:
        return config_class.from_dict(full, source=f"{source} model").to_dict()
    except ConfigError as err:
        raise PretrainConfigError(str(err)) from err


_FLOAT_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig) if f.type == "float"}
_INT_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig) if f.type == "int"}
_BOOL_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig) if f.type == "bool"}
_STR_FIELDS = {f.name for f in dataclasses.fields(PretrainConfig) if f.type in ("str", "str | None")}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a JSON value against the field's type (ints are accepted for float fields)."""
    ok = True
    if name in _FLOAT_FIELDS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif name in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in _BOOL_FIELDS:
        ok = isinstance(value, bool)
    elif name in _STR_FIELDS:
        ok = isinstance(value, str) or (value is None and name == "init_from")
    if not ok:
        raise PretrainConfigError(f"{source}: {name} has the wrong type ({value!r})")
    return value


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
