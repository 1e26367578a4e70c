"""Input degradation: the student hears a degraded copy, every target describes the clean clip.

A model pre-trained on clean renders alone reads faint broadband noise or a missing top band
as a large change (a normalised log-mel input moves many standard deviations in the bands
where music has little energy), so its clip features stop matching the clean clip's. With
probability `prob` each clip's input gets one degradation, drawn with equal chance:

* ``noise``: white noise at an SNR uniform in [`snr_min_db`, `snr_max_db`] under the clip's
  RMS (over its valid samples);
* ``lowpass``: nothing above a cutoff uniform in [`lowpass_min_hz`, Nyquist].

As with the in-batch mixture (:mod:`mertkit.pretrain.mixture`), the caller computes the
targets before degrading and degrades after mixing; samples past a clip's length stay as they
were (zero padding). Everything is drawn from the caller's generator, so a resumed run repeats
its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("noise", "lowpass")


@dataclass(frozen=True)
class DegradeSettings:
    prob: float = 0.0
    snr_min_db: float = 10.0
    snr_max_db: float = 40.0
    lowpass_min_hz: float = 3000.0
    sample_rate: int = 24000


@dataclass(frozen=True)
class Degradation:
    """What one clip got: ``kind`` and its ``amount`` (SNR in dB, or cutoff in Hz)."""

    clip: int
    kind: str
    amount: float


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def draw_degradations(batch: int, settings: DegradeSettings, generator: torch.Generator) -> list[Degradation]:
    """Decide which clips get which degradation (no audio touched)."""
    chosen = []
    for clip in range(batch):
        if settings.prob <= 0 or float(torch.rand((), generator=generator)) >= settings.prob:
            continue
        kind = KINDS[int(torch.randint(0, len(KINDS), (), generator=generator))]
        if kind == "noise":
            amount = _uniform(settings.snr_min_db, settings.snr_max_db, generator)
        else:
            amount = _uniform(settings.lowpass_min_hz, settings.sample_rate / 2, generator)
        chosen.append(Degradation(clip, kind, amount))
    return chosen


def add_noise(clip: Tensor, snr_db: float, generator: torch.Generator) -> Tensor:
    """[T] clip plus white noise ``snr_db`` under its RMS."""
    rms = clip.float().pow(2).mean().sqrt()
    noise = torch.randn(clip.shape, generator=generator).to(device=clip.device, dtype=torch.float32)
    return (clip.float() + noise * rms * 10 ** (-snr_db / 20)).to(clip.dtype)


def lowpass(clip: Tensor, cutoff_hz: float, sample_rate: int) -> Tensor:
    """[T] clip with every frequency above ``cutoff_hz`` removed (an FFT brick wall)."""
    spectrum = torch.fft.rfft(clip.float())
    freqs = torch.fft.rfftfreq(clip.shape[0], 1.0 / sample_rate).to(clip.device)
    spectrum[freqs > cutoff_hz] = 0
    return torch.fft.irfft(spectrum, clip.shape[0]).to(clip.dtype)


@torch.no_grad()
def degrade_batch(
    wave: Tensor, lengths: Tensor | None, settings: DegradeSettings, generator: torch.Generator
) -> tuple[Tensor, list[Degradation]]:
    """wave [B, T] (valid samples `lengths`) -> (degraded copy, what each chosen clip got)."""
    if wave.dim() != 2:
        raise ValueError(f"wave must be [batch, samples], got shape {tuple(wave.shape)}")
    valid = [wave.shape[1]] * wave.shape[0] if lengths is None else [int(n) for n in lengths]
    chosen = draw_degradations(wave.shape[0], settings, generator)
    out = wave.clone()
    for item in chosen:
        clip = wave[item.clip, : valid[item.clip]]
        if item.kind == "noise":
            out[item.clip, : valid[item.clip]] = add_noise(clip, item.amount, generator)
        else:
            out[item.clip, : valid[item.clip]] = lowpass(clip, item.amount, settings.sample_rate)
    return out, chosen
