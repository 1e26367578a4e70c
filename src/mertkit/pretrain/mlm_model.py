"""`MertPretrainModel`: the inference `MertModel` plus MERT-v1's pre-training heads.

One training forward, in order:

1. CQT targets of the *clean* waveform (no grad), cropped to the model's frame count;
2. the in-batch noise mixture (no grad; see `mixture`), then the input degradation (see
   `degrade`), each when a generator is given and its probability is above 0;
3. the conv front-end; its gradient scaled by `feature_grad_mult` (the front-end learns
   slower, as in fairseq's HuBERT), and the feature penalty = mean of the squared features;
4. feature projection; masked frames replaced by `masked_spec_embed`; transformer encoder
   (a MERT-v2-layout backbone, `model_type` mert2: mel front end and subsampling in step 3,
   masked frames replaced by `mask_emb`, Conformer blocks);
5. `final_proj` Linear(H, final_dim * K) split per codebook; logits = cosine(projection,
   every code's embedding in `label_embs_concat`) / logit_temp; cross-entropy on masked
   frames only, per codebook; CQT head Linear(H, cqt_bins), MSE on masked frames. With
   `unmasked_weight` > 0 (HuBERT's `pred_nomask_weight`; MERT uses 0) both terms are also
   taken on the unmasked frames, weighted by it. The CQT head can also predict targets derived
   from the same CQT, each its own term with its own weight (`PretrainConfig.head_targets`):
   the onset flux of each octave (`onset_flux`, `flux_weight`), the chroma (`chroma`,
   `chroma_weight`) and the cepstrum of the log CQT (`cepstrum`, `timbre_weight`); and one
   target from a full-band log-mel spectrogram of the clean waveform: the local statistics of
   its cepstrum (`texture`, `texture_weight`).

Every loss term is returned as a *sum* (over masked frames, or over valid frames for the
penalty) with its count, so the trainer can divide by counts summed over all micro-batches
and processes: a DDP run and a gradient-accumulated run then optimise exactly the loss of one
big batch. Per masked frame the loss is sum_k CE_k + penalty_weight * penalty + cqt_weight * MSE
(+ each derived target's weight * its MSE).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mertkit.dsp import dct_ii_orthonormal
from mertkit.models.hubert.model import MertModel, frame_mask
from mertkit.models.mert2.config import Mert2Config
from mertkit.models.mert2.model import Mert2Model
from mertkit.pretrain.kmeans import mel_filterbank
from mertkit.pretrain.pretrain_config import TEXTURE_FFT, TEXTURE_MELS, PretrainConfig
from mertkit.pretrain.degrade import DegradeSettings, degrade_batch
from mertkit.pretrain.mixture import MixtureSettings, mix_batch


HEAD_TARGET_NAMES = ("cqt", "flux", "chroma", "timbre", "texture")  # `PretrainConfig.head_targets`'s names


class PretrainInputError(ValueError):
    """A batch whose shapes do not fit the model (labels too short, wrong codebook count...)."""


class GradMultiply(torch.autograd.Function):
    """Identity forward; gradient multiplied by `scale` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


@dataclass
class LossSums:
    """Un-normalised loss terms of one micro-batch (see the module docstring)."""

    sums: dict[str, Tensor]  # name -> summed term (a scalar, or [K] per codebook)
    correct: Tensor | None  # [K] masked frames whose code was predicted right (no grad)
    masked_frames: int
    valid_frames: int


@dataclass(frozen=True)
class Counts:
    """Normalisers of one optimiser update, summed over micro-batches and processes."""

    masked_frames: int
    valid_frames: int
    clips: int = 0  # batch items (crops): the normaliser of the per-crop terms

    @property
    def unmasked_frames(self) -> int:
        return self.valid_frames - self.masked_frames


def degrade_settings(cfg: PretrainConfig) -> DegradeSettings:
    return DegradeSettings(
        prob=cfg.degrade_prob, snr_min_db=cfg.degrade_snr_min_db, snr_max_db=cfg.degrade_snr_max_db,
        lowpass_min_hz=cfg.degrade_lowpass_min_hz, sample_rate=cfg.sample_rate,
    )


def student_input(wave: Tensor, lengths: Tensor | None, cfg: PretrainConfig,
                  generator: torch.Generator | None) -> Tensor:
    """What the student hears: the clean batch mixed (in-batch mixture), then degraded, each
    when its probability is above 0 and a generator is given; targets come from the clean batch."""
    if generator is not None and cfg.mixture_prob > 0:
        wave, _ = mix_batch(wave, lengths, mixture_settings(cfg), generator)
    if generator is not None and cfg.degrade_prob > 0:
        wave, _ = degrade_batch(wave, lengths, degrade_settings(cfg), generator)
    return wave


def mixture_settings(cfg: PretrainConfig) -> MixtureSettings:
    return MixtureSettings(
        prob=cfg.mixture_prob, min_segments=cfg.mixture_min_segments, max_segments=cfg.mixture_max_segments,
        min_samples=cfg.mixture_min_samples, max_samples=cfg.mixture_max_samples, volume=cfg.mixture_volume,
    )


def log_standardised(magnitude: Tensor, valid: Tensor, eps: float = 1e-3) -> Tensor:
    """log(magnitude + eps) [B, F, bins], standardised per clip over its valid frames and all bins."""
    logs = torch.log(magnitude + eps)
    weight = valid[:, :, None].to(logs.dtype).expand_as(logs)
    count = weight.sum((1, 2), keepdim=True).clamp_min(1)
    mean = (logs * weight).sum((1, 2), keepdim=True) / count
    std = (((logs - mean) ** 2 * weight).sum((1, 2), keepdim=True) / count).sqrt().clamp_min(1e-5)
    return (logs - mean) / std


def onset_flux(magnitude: Tensor, valid: Tensor, bins_per_band: int, eps: float = 1e-3) -> Tensor:
    """[B, F, bins] CQT magnitude -> [B, F, bands]: the half-wave rectified rise of log(magnitude
    + eps) from the previous frame (0 on the first), averaged over each band of `bins_per_band`
    bins, divided by its mean over the clip's valid frames (so every band and clip has mean 1)."""
    logs = torch.log(magnitude + eps)
    rise = F.pad((logs[:, 1:] - logs[:, :-1]).clamp_min(0), (0, 0, 1, 0))
    bands = rise.unflatten(-1, (-1, bins_per_band)).mean(-1)
    weight = valid[:, :, None].to(bands.dtype)
    mean = (bands * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)
    return bands / mean.clamp_min(1e-6)


def chroma(magnitude: Tensor, valid: Tensor, bins_per_octave: int) -> Tensor:
    """[B, F, bins] CQT magnitude (bin 0 on a semitone, whole octaves) -> [B, F, 12]: the
    magnitude summed over octaves and over the bins nearest each semitone (class 0 = the class
    of bin 0), then `log_standardised` per clip (the pattern across classes, loudness-free)."""
    per_semitone = bins_per_octave // 12
    # bins k - per_semitone // 2 ... belong to semitone k / per_semitone: the quarter-tone just
    # below a class's centre is that class, and the top bin wraps to the class of bin 0, which
    # is its pitch class one octave up
    centred = magnitude.roll(per_semitone // 2, dims=-1)
    folded = centred.unflatten(-1, (-1, 12, per_semitone)).sum((-3, -1))
    return log_standardised(folded, valid)


def cepstrum(log_spectrum: Tensor, coefficients: int) -> Tensor:
    """[B, F, bins] -> [B, F, coefficients]: the first coefficients of the orthonormal DCT-II of
    each frame over its bins (the smooth spectral envelope, as MFCCs are for log-mel), scaled by
    sqrt(coefficients / bins): an orthonormal DCT keeps the energy of all `bins` values, most of
    it in these first coefficients, so a standardised input gives values of order 1."""
    bins = log_spectrum.shape[-1]
    basis = torch.as_tensor(dct_ii_orthonormal(bins, coefficients).T, dtype=log_spectrum.dtype, device=log_spectrum.device)
    return log_spectrum @ basis * (coefficients / bins) ** 0.5


def local_statistics(values: Tensor, valid: Tensor, half_width: int) -> Tensor:
    """[B, F, C] -> [B, F, 3C]: over the valid frames within +-`half_width` of each frame, the
    mean and std of `values` and the std of their change from the previous frame (0 on the
    first)."""
    change = F.pad(values[:, 1:] - values[:, :-1], (0, 0, 1, 0))
    weight = valid[:, :, None].to(values.dtype)

    def window_sum(x: Tensor) -> Tensor:  # [B, F, C] summed over the window, edges zero-padded
        kernel = 2 * half_width + 1
        return F.avg_pool1d(x.transpose(1, 2), kernel, stride=1, padding=half_width,
                            count_include_pad=True).transpose(1, 2) * kernel

    count = window_sum(weight).clamp_min(1)

    def mean_and_std(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = window_sum(x * weight) / count
        return mean, (window_sum(x.pow(2) * weight) / count - mean.pow(2)).clamp_min(0).sqrt()

    mean, spread = mean_and_std(values)
    _, movement = mean_and_std(change)
    return torch.cat([mean, spread, movement], dim=-1)


# Gains on the texture target's std and change parts: on the corpus their variances were 0.10 and
# 0.03 against the mean's 0.68, so unscaled they would weigh little in the MSE. Plain stds, not
# their logs: a log spreads near-silent, near-steady frames over a range the probes then chase
# (instrument probe of the pooled target: 48 % plain, 34 % as logs).
# Width of the clip contrast's projection (SimCLR / COLA project to 128 as well)
CONTRAST_DIM = 128
TEXTURE_SPREAD_GAIN = 2.0
TEXTURE_MOVEMENT_GAIN = 4.0


class TextureSpectrogram(nn.Module):
    """Mel power [B, F, TEXTURE_MELS] of a waveform on the model's frame grid: centred Hann
    frames every `hop` samples (frame t centred on sample t * hop, as the CQT's), cropped to
    the model's frame count. Buffers are not persistent: nothing in the state dict."""

    def __init__(self, sample_rate: int, hop: int):
        super().__init__()
        self.hop = hop
        self.register_buffer("window", torch.hann_window(TEXTURE_FFT), persistent=False)
        bank = torch.as_tensor(mel_filterbank(sample_rate, TEXTURE_FFT, TEXTURE_MELS), dtype=torch.float32)
        self.register_buffer("bank", bank, persistent=False)

    def forward(self, wave: Tensor, num_frames: int) -> Tensor:
        spectrum = torch.stft(wave.float(), TEXTURE_FFT, self.hop, window=self.window, center=True,
                              pad_mode="constant", return_complex=True)
        power = spectrum.abs().pow(2)[..., :num_frames]  # [B, bins, F]
        return (self.bank @ power).transpose(1, 2)


def texture(mel_power: Tensor, valid: Tensor, coefficients: int, half_width: int) -> Tensor:
    """[B, F, mels] mel power -> [B, F, 3 * coefficients]: `local_statistics` of the cepstrum
    of the clip's log-standardised log-mel (gain-free, the shape across bands kept), the std
    parts scaled by TEXTURE_SPREAD_GAIN and TEXTURE_MOVEMENT_GAIN."""
    stats = local_statistics(cepstrum(log_standardised(mel_power, valid), coefficients), valid, half_width)
    gains = torch.tensor([1.0, TEXTURE_SPREAD_GAIN, TEXTURE_MOVEMENT_GAIN], dtype=stats.dtype, device=stats.device)
    return (stats.unflatten(-1, (3, coefficients)) * gains[:, None]).flatten(-2)


def head_targets(cfg: PretrainConfig, magnitude: Tensor, valid: Tensor,
                 mel_power: Tensor | None = None) -> dict[str, Tensor]:
    """{name: [B, F, width]} of every target of the CQT head, in `cfg.head_targets` order;
    `mel_power` ([B, F, mels], `TextureSpectrogram`) is needed by the texture target only."""
    logs = log_standardised(magnitude, valid)
    derived = {
        "cqt": lambda: logs if cfg.cqt_target == "log_standardised" else magnitude,
        "flux": lambda: onset_flux(magnitude, valid, cfg.cqt_bins_per_octave),
        "chroma": lambda: chroma(magnitude, valid, cfg.cqt_bins_per_octave),
        "timbre": lambda: cepstrum(logs, cfg.timbre_coefficients),
        "texture": lambda: texture(_required(mel_power), valid, cfg.timbre_coefficients, texture_half_width(cfg)),
    }
    return {name: derived[name]() for name, _, _ in cfg.head_targets}


def texture_half_width(cfg: PretrainConfig) -> int:
    """The texture window's half-width in model frames."""
    return max(1, round(cfg.texture_window_seconds * cfg.label_rate))


def _required(mel_power: Tensor | None) -> Tensor:
    if mel_power is None:
        raise PretrainInputError("the texture target needs the mel spectrogram (TextureSpectrogram)")
    return mel_power


def build_cqt(cfg: PretrainConfig) -> nn.Module:
    from mertkit.pretrain.teachers.cqt import CQT, CQTConfig

    # magnitude sqrt(re^2 + im^2 + 1e-8): the recipe's nnAudio setting (MODELS.md section 5)
    return CQT(CQTConfig(
        sample_rate=cfg.sample_rate, hop_length=cfg.mert_config().samples_per_frame, fmin=cfg.cqt_fmin,
        n_bins=cfg.cqt_bins, bins_per_octave=cfg.cqt_bins_per_octave, magnitude_eps=1e-8,
    ))


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """A freshly initialised inference model of the config's layout. A MERT-v2 model's front-end
    buffers are set as the releases hold them (periodic Hann window, HTK mel filters from 0 Hz
    to Nyquist); its mel statistics start at 0 / 1 until `set_mel_statistics`."""
    config = cfg.mert_config()
    if not isinstance(config, Mert2Config):
        return MertModel(config)
    model = Mert2Model(config)
    front = model.feature_extractor
    front.spectrogram.window.copy_(torch.hann_window(config.win_length, periodic=True))
    bank = mel_filterbank(config.sampling_rate, config.n_fft, config.num_mel_bins)  # [mels, bins]
    front.mel_scale.fb.copy_(torch.as_tensor(bank.T, dtype=torch.float32))
    return model  # mel_mean / mel_std start as MelFrontEnd's 0 / 1


@torch.no_grad()
def set_mel_statistics(model: Mert2Model, clips: list[Tensor]) -> None:
    """Fill a MERT-v2 front end's `mel_mean` / `mel_std`: per band, over every frame of the
    `clips` (1-D waveforms), the normalisation the released models carry, measured on the
    training audio."""
    front = model.feature_extractor
    front.mel_mean.zero_()
    front.mel_std.fill_(1.0)
    log_mel = torch.cat([front(clip.float()[None], None)[0] for clip in clips])  # [frames, mels] in dB
    front.mel_mean.copy_(log_mel.mean(0))
    front.mel_std.copy_(log_mel.std(0))


class Backbone(nn.Module):
    """Runs the inference model step by step so pre-training can act between the steps.

    MERT-v1 layout: conv front end -> projection -> (mask: `masked_spec_embed`) -> transformer.
    MERT-v2 layout: mel front end + subsampling -> (mask: `mask_emb`, a pre-training parameter
    outside the backbone, as the official checkpoints hold no mask embedding) -> Conformer."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.config = cfg
        self.backbone = build_backbone(cfg)
        if isinstance(self.backbone, Mert2Model):
            self.mask_emb = nn.Parameter(torch.empty(self.backbone.config.hidden_size).uniform_())

    def frame_count(self, num_samples: int) -> int:
        return self.backbone.config.num_frames(num_samples)

    def after_update(self, update: int) -> None:
        """Called after every optimiser update (data2vec moves its EMA teacher here)."""

    def encode(self, wave: Tensor, lengths: Tensor | None, mask: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        """-> (hidden states, [B, F] valid-frame mask, [B, F] per-frame mean squared feature)."""
        if isinstance(self.backbone, Mert2Model):
            return self._encode_mert2(wave, lengths, mask)
        mert = self.backbone
        features, frame_lengths = mert.feature_extractor(wave, lengths)
        features = self._scale_feature_grad(features).transpose(1, 2)  # [B, F, C]
        square = features.float().pow(2).mean(-1)
        x = mert.feature_projection(features)
        if mask is not None:
            x = torch.where(mask[:, :, None], mert.masked_spec_embed.to(x.dtype), x)
        valid = self._valid_frames(x, frame_lengths)
        states = mert.encoder(x, None if frame_lengths is None else valid)
        return states, valid, square

    def _encode_mert2(self, wave: Tensor, lengths: Tensor | None, mask: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        x, frame_lengths = self.backbone.embed(wave, lengths)
        x = self._scale_feature_grad(x)
        square = x.float().pow(2).mean(-1)
        if mask is not None:
            x = torch.where(mask[:, :, None], self.mask_emb.to(x.dtype), x)
        valid = self._valid_frames(x, frame_lengths)
        return list(self.backbone.encode(x, frame_lengths).hidden_states), valid, square

    def _scale_feature_grad(self, features: Tensor) -> Tensor:
        if self.config.feature_grad_mult != 1.0:
            return GradMultiply.apply(features, self.config.feature_grad_mult)
        return features

    @staticmethod
    def _valid_frames(x: Tensor, frame_lengths: Tensor | None) -> Tensor:
        batch, frames = x.shape[:2]
        if frame_lengths is None:
            return torch.ones(batch, frames, dtype=torch.bool, device=x.device)
        return frame_mask(frame_lengths, frames)


class MertPretrainModel(Backbone):
    """MERT-v1 masked prediction of K codebooks + CQT reconstruction (see the module docstring)."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        hidden = self.backbone.config.hidden_size
        self.final_proj = nn.Linear(hidden, cfg.final_dim * cfg.n_codebooks)
        self.label_embs_concat = nn.Parameter(torch.empty(cfg.n_codebooks * cfg.codebook_size, cfg.final_dim).uniform_())
        if cfg.cqt:
            self.cqt_head = nn.Linear(hidden, sum(width for _, width, _ in cfg.head_targets))
            self.cqt = build_cqt(cfg)  # buffers are not persistent: nothing in the state dict
        if cfg.texture_weight > 0:
            self.texture_spectrogram = TextureSpectrogram(cfg.sample_rate, cfg.mert_config().samples_per_frame)
        if cfg.contrast_weight > 0:
            self.contrast_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, CONTRAST_DIM))

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self,
        wave: Tensor,
        lengths: Tensor | None,
        labels: Tensor,
        mask: Tensor,
        *,
        mixture_generator: torch.Generator | None = None,
    ) -> LossSums:
        """wave [B, T] clean audio; labels [B, K, >= F] codes; mask [B, F] frames to mask."""
        cfg = self.config
        frames = self.frame_count(wave.shape[1])
        self._check(wave, labels, mask, frames)
        cqt_target = mel_power = None
        if cfg.cqt:
            with torch.no_grad():
                cqt_target = self.cqt(wave.float(), num_frames=frames).transpose(1, 2)  # [B, F, bins]
                if cfg.texture_weight > 0:
                    mel_power = self.texture_spectrogram(wave, frames)
        wave = student_input(wave, lengths, cfg, mixture_generator)
        states, valid, square = self.encode(wave, lengths, mask)
        regression = None
        if cqt_target is not None:  # the head predicts every target side by side
            regression = torch.cat(list(head_targets(cfg, cqt_target, valid, mel_power).values()), dim=-1)
        selected = mask & valid
        targets = labels[:, :, :frames].transpose(1, 2)  # [B, F, K]
        ce, errors, logits = self._frame_terms(states[-1], selected, targets, regression)
        sums = {"ce": ce, "penalty": (square * valid).sum(), **errors}
        if cfg.texture_clip_weight > 0:
            sums["texture_clip"] = self.clip_texture_error(states[-1], valid, regression)
        if cfg.contrast_weight > 0:
            sums["contrast"] = self.clip_contrast(states[-1], valid)
        if cfg.unmasked_weight > 0:
            # HuBERT's pred_nomask_weight: the same targets on the frames the model sees
            ce_kept, errors_kept, _ = self._frame_terms(states[-1], ~mask & valid, targets, regression)
            sums["ce_unmasked"] = ce_kept
            sums.update({f"{name}_unmasked": value for name, value in errors_kept.items()})
        with torch.no_grad():
            correct = (logits.argmax(-1) == targets[selected]).sum(0)
        return LossSums(sums, correct, int(selected.sum()), int(valid.sum()))

    def _frame_terms(
        self, last: Tensor, chosen: Tensor, targets: Tensor, regression: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Summed CE per codebook [K], {head target: its summed per-frame MSE} and the logits,
        on `chosen` frames."""
        hidden = last[chosen]  # [N, H]
        logits = self.code_logits(hidden)  # [N, K, V]
        ce = F.cross_entropy(logits.transpose(1, 2), targets[chosen], reduction="none").sum(0)
        if regression is None:
            return ce, {}, logits
        error = (self.cqt_head(hidden).float() - regression[chosen]).pow(2)
        errors, start = {}, 0
        for name, width, _ in self.config.head_targets:
            errors[name] = error[:, start:start + width].mean(-1).sum()
            start += width
        return ce, errors, logits

    def clip_texture_error(self, last: Tensor, valid: Tensor, regression: Tensor) -> Tensor:
        """Summed over crops: the MSE between the head's texture predictions and the texture
        targets, each averaged over the crop's valid frames (`texture_clip_weight`). The head is
        linear, so the average of its frame predictions is its prediction from the average state."""
        start = 0
        for name, width, _ in self.config.head_targets:
            if name == "texture":
                break
            start += width
        weights = valid[..., None].to(last.dtype)
        frames = weights.sum(1).clamp(min=1)
        predicted = self.cqt_head((last * weights).sum(1) / frames).float()[:, start:start + width]
        target = (regression[..., start:start + width].float() * weights.float()).sum(1) / frames.float()
        return (predicted - target).pow(2).mean(-1).sum()

    def clip_contrast(self, last: Tensor, valid: Tensor) -> Tensor:
        """Summed InfoNCE of the batch's crop pairs (items 2i and 2i + 1 are two crops of one
        file): each crop's mean-pooled, projected, unit-length state against every other crop."""
        if last.shape[0] % 2:
            raise PretrainInputError(f"the clip contrast needs pairs of crops, got a batch of {last.shape[0]}")
        weights = valid[..., None].to(last.dtype)
        pooled = (last * weights).sum(1) / weights.sum(1).clamp(min=1)
        z = F.normalize(self.contrast_head(pooled).float(), dim=-1)
        similarity = (z @ z.T) / self.config.contrast_temperature
        itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
        partner = torch.arange(len(z), device=z.device) ^ 1
        return F.cross_entropy(similarity.masked_fill(itself, float("-inf")), partner, reduction="sum")

    def code_logits(self, hidden: Tensor) -> Tensor:
        """[N, H] -> [N, K, V]: cosine similarity to every code embedding / logit_temp."""
        cfg = self.config
        projected = self.final_proj(hidden).float().view(-1, cfg.n_codebooks, cfg.final_dim)
        embeddings = self.label_embs_concat.float().view(cfg.n_codebooks, cfg.codebook_size, cfg.final_dim)
        cosine = torch.einsum(
            "nkd,kvd->nkv", F.normalize(projected, dim=-1, eps=1e-8), F.normalize(embeddings, dim=-1, eps=1e-8)
        )
        return cosine / cfg.logit_temp

    def _check(self, wave: Tensor, labels: Tensor, mask: Tensor, frames: int) -> None:
        cfg = self.config
        batch = wave.shape[0]
        if labels.dim() != 3 or labels.shape[:2] != (batch, cfg.n_codebooks) or labels.shape[2] < frames:
            raise PretrainInputError(
                f"labels must be [batch={batch}, codebooks={cfg.n_codebooks}, frames>={frames}], "
                f"got {tuple(labels.shape)}"
            )
        if mask.shape != (batch, frames):
            raise PretrainInputError(f"mask must be [{batch}, {frames}], got {tuple(mask.shape)}")

    # ---- loss -----------------------------------------------------------------------------
    def total_loss(self, out: LossSums, counts: Counts) -> Tensor:
        """Weighted sum of the terms, each divided by its global count."""
        return sum(self.loss_terms(out, counts).values())

    def loss_terms(self, out: LossSums, counts: Counts) -> dict[str, Tensor]:
        """The weighted, normalised terms whose sum is the loss (one CE term per codebook)."""
        cfg = self.config
        masked = max(counts.masked_frames, 1)
        kept = max(counts.unmasked_frames, 1)
        terms = {f"ce_{k}": cfg.ce_weight * value / masked for k, value in enumerate(out.sums["ce"])}
        terms["penalty"] = cfg.penalty_weight * out.sums["penalty"] / max(counts.valid_frames, 1)
        if "contrast" in out.sums:
            terms["contrast"] = cfg.contrast_weight * out.sums["contrast"] / max(counts.clips, 1)
        if "texture_clip" in out.sums:
            terms["texture_clip"] = cfg.texture_clip_weight * out.sums["texture_clip"] / max(counts.clips, 1)
        for name, _, weight in cfg.head_targets:
            if name in out.sums:
                terms[name] = weight * out.sums[name] / masked
        if "ce_unmasked" in out.sums:
            terms["ce_unmasked"] = cfg.unmasked_weight * cfg.ce_weight * out.sums["ce_unmasked"].sum() / kept
        for name, _, weight in cfg.head_targets:
            if f"{name}_unmasked" in out.sums:
                terms[f"{name}_unmasked"] = cfg.unmasked_weight * weight * out.sums[f"{name}_unmasked"] / kept
        return terms

    @staticmethod
    def metrics(sums: dict[str, Tensor], correct: Tensor | None, counts: Counts) -> dict[str, object]:
        """Per-term losses and masked accuracy per codebook, for the log."""
        masked = max(counts.masked_frames, 1)
        out: dict[str, object] = {
            "ce": [round(float(v) / masked, 6) for v in sums["ce"]],
            "penalty": float(sums["penalty"]) / max(counts.valid_frames, 1),
        }
        kept = max(counts.unmasked_frames, 1)
        if "contrast" in sums:
            out["contrast"] = float(sums["contrast"]) / max(counts.clips, 1)
        if "texture_clip" in sums:
            out["texture_clip_mse"] = float(sums["texture_clip"]) / max(counts.clips, 1)
        for name in HEAD_TARGET_NAMES:
            if name in sums:
                out[f"{name}_mse"] = float(sums[name]) / masked
        if "ce_unmasked" in sums:
            out["ce_unmasked"] = [round(float(v) / kept, 6) for v in sums["ce_unmasked"]]
        for name in HEAD_TARGET_NAMES:
            if f"{name}_unmasked" in sums:
                out[f"{name}_mse_unmasked"] = float(sums[f"{name}_unmasked"]) / kept
        if correct is not None:
            out["accuracy"] = [round(float(v) / masked, 6) for v in correct]
        return out
