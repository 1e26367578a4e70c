"""A small residual-VQ audio codec that mertkit trains itself: the offline acoustic teacher.

MERT-v1's acoustic teacher is EnCodec, whose weights are non-commercial and cannot always be
downloaded; this codec has the same output contract (8 codebooks x 1024 codes at 24 kHz /
320 = 75 Hz, one code per label frame) and is trained on the user's own corpus:

    codec = train_codec(corpus_dir, CodecConfig(), steps=2000, seed=0)
    codec.save("teacher.pt"); CodecTeacher.load("teacher.pt").codes(wave)  # int16 [8, ceil(N/320)]

* Encoder: a 7-tap conv, then per stride s in (2, 4, 5, 8) a residual block (two convs of
  width 3, ELU) and a conv with kernel = stride = s (non-overlapping, so a waveform padded to a
  multiple of 320 samples gives exactly ceil(N / 320) frames), then a conv to `dim`.
  Decoder: the mirror image with transposed convs.
* RVQ: `codebooks` stages of `codebook_size` vectors; each stage quantises the residual of
  the previous ones. Codebooks are EMA cluster means (decay `ema_decay`, not trained by the
  optimiser), initialised from encoder outputs, and every code whose EMA count falls below
  `dead_threshold` is restarted at a random residual of the current batch, so usage stays
  healthy. Straight-through gradients; commitment loss weight `commitment`. After training,
  a few Lloyd iterations refit every stage on the final encoder's outputs (`refresh_codebooks`).
* Loss: L1 on the waveform + multi-scale STFT loss (L1 of log magnitudes + spectral
  convergence) at FFT sizes `stft_sizes`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "mertkit-codec-1"
STRIDES = (2, 4, 5, 8)  # product 320: 24 kHz -> 75 Hz


class CodecError(ValueError):
    """A codec file, setting or corpus that cannot be used."""


@dataclass
class CodecConfig:
    sample_rate: int = 24000
    channels: int = 32  # width after the first conv; doubles (capped at 256) per downsampling
    dim: int = 64
    codebooks: int = 8
    codebook_size: int = 1024
    ema_decay: float = 0.9
    dead_threshold: float = 0.3  # a code whose EMA count is below this fraction of the mean restarts
    commitment: float = 0.25
    stft_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])

    @property
    def hop_length(self) -> int:
        return int(np.prod(STRIDES))


def _widths(cfg: CodecConfig) -> list[int]:
    return [min(cfg.channels * 2**i, 256) for i in range(len(STRIDES) + 1)]


class ResidualUnit(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.block = nn.Sequential(nn.ELU(), nn.Conv1d(width, width, 3, padding=1), nn.ELU(), nn.Conv1d(width, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [nn.Conv1d(1, w[0], 7, padding=3)]
        for i, stride in enumerate(STRIDES):
            layers += [ResidualUnit(w[i]), nn.ELU(), nn.Conv1d(w[i], w[i + 1], stride, stride=stride)]
        layers += [nn.ELU(), nn.Conv1d(w[-1], cfg.dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, wave: Tensor) -> Tensor:  # [B, T] (T multiple of 320) -> [B, dim, T / 320]
        return self.net(wave[:, None])


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        w = _widths(cfg)
        layers: list[nn.Module] = [nn.Conv1d(cfg.dim, w[-1], 3, padding=1)]
        for i, stride in reversed(list(enumerate(STRIDES))):
            layers += [nn.ELU(), nn.ConvTranspose1d(w[i + 1], w[i], stride, stride=stride), ResidualUnit(w[i])]
        layers += [nn.ELU(), nn.Conv1d(w[0], 1, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)[:, 0]


class ResidualVQ(nn.Module):
    """EMA residual vector quantiser with dead-code restarts (see the module docstring)."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        shape = (cfg.codebooks, cfg.codebook_size, cfg.dim)
        self.register_buffer("embed", torch.zeros(shape))
        self.register_buffer("embed_sum", torch.zeros(shape))
        self.register_buffer("counts", torch.zeros(cfg.codebooks, cfg.codebook_size))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, dim, F] -> (quantised z (straight-through), codes [B, K, F], commitment loss)."""
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        if self.training and not bool(self.initialised):
            self._initialise(flat.detach(), generator)
        residual, quantised, codes = flat, torch.zeros_like(flat), []
        for k in range(self.cfg.codebooks):
            index = self.nearest(residual.detach(), k)
            chosen = self.embed[k][index]
            if self.training:
                self._ema_update(k, residual.detach(), index, generator)
            quantised = quantised + chosen
            residual = residual - chosen
            codes.append(index)
        commitment = F.mse_loss(flat, quantised.detach())
        out = flat + (quantised - flat).detach()
        batch, frames = z.shape[0], z.shape[2]
        return (out.view(batch, frames, -1).transpose(1, 2), torch.stack(codes, 1).view(batch, frames, -1).transpose(1, 2),
                commitment)

    def nearest(self, x: Tensor, k: int) -> Tensor:
        embed = self.embed[k]
        distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None]
        return distances.argmin(1)

    @torch.no_grad()
    def _initialise(self, flat: Tensor, generator: torch.Generator | None) -> None:
        residual = flat
        for k in range(self.cfg.codebooks):
            pick = torch.randint(0, residual.shape[0], (self.cfg.codebook_size,), generator=generator)
            self.embed[k] = residual[pick] + 1e-4 * torch.randn(self.embed[k].shape, generator=generator)
            self.counts[k] = flat.shape[0] / self.cfg.codebook_size  # the steady-state mean count
            self.embed_sum[k] = self.embed[k] * self.counts[k][:, None]
            residual = residual - self.embed[k][self.nearest(residual, k)]
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, k: int, x: Tensor, index: Tensor, generator: torch.Generator | None) -> None:
        decay = self.cfg.ema_decay
        onehot = F.one_hot(index, self.cfg.codebook_size).type(x.dtype)
        self.counts[k].mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        self.embed_sum[k].mul_(decay).add_(onehot.t() @ x, alpha=1 - decay)
        self.embed[k] = self.embed_sum[k] / self.counts[k].clamp(min=1e-5)[:, None]
        mean = self.counts[k].mean()
        dead = self.counts[k] < self.cfg.dead_threshold * mean
        if bool(dead.any()):
            # a dead code restarts at a random vector of this batch with the mean count, so it
            # lives a while; without restarts most codes of the later stages go unused
            pick = torch.randint(0, x.shape[0], (int(dead.sum()),), generator=generator)
            self.embed[k][dead] = x[pick]
            self.counts[k][dead] = mean
            self.embed_sum[k][dead] = x[pick] * mean


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.quantizer, self.decoder = Encoder(cfg), ResidualVQ(cfg), Decoder(cfg)

    def pad(self, wave: Tensor) -> Tensor:
        hop = self.cfg.hop_length
        return F.pad(wave, (0, (-wave.shape[-1]) % hop))

    def forward(self, wave: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """wave [B, T] -> (reconstruction [B, T], codes [B, K, ceil(T / 320)], commitment loss)."""
        z = self.encoder(self.pad(wave))
        quantised, codes, commitment = self.quantizer(z, generator)
        return self.decoder(quantised)[:, : wave.shape[1]], codes, commitment


def multiscale_stft_loss(predicted: Tensor, target: Tensor, sizes: list[int]) -> Tensor:
    """Sum over FFT sizes of L1(log magnitudes) + spectral convergence."""
    loss = predicted.new_zeros(())
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=predicted.device)
        spec = [torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs() for x in (predicted, target)]
        loss = loss + F.l1_loss(torch.log(spec[0] + 1e-5), torch.log(spec[1] + 1e-5))
        loss = loss + (spec[1] - spec[0]).norm() / (spec[1].norm() + 1e-8)
    return loss


def codec_loss(codec: Codec, wave: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    recon, _, commitment = codec(wave, generator)
    l1 = F.l1_loss(recon, wave)
    stft = multiscale_stft_loss(recon, wave, codec.cfg.stft_sizes)
    total = l1 + stft + codec.cfg.commitment * commitment
    stats = {"loss": total.item(), "l1": l1.item(), "stft": stft.item(), "commitment": commitment.item()}
    return total, stats


# ---------------------------------------------------------------------------------------
# training on a corpus
# ---------------------------------------------------------------------------------------
def _load_corpus(audio_dir: Path, sample_rate: int, max_files: int) -> list[np.ndarray]:
    from mertkit.audio import load_audio
    from mertkit.pretrain.labels import find_audio_files

    files = find_audio_files(audio_dir)
    if not files:
        raise CodecError(f"{audio_dir}: no audio files to train the codec on")
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int)]
    return [load_audio(audio_dir / rel, sample_rate) for rel in dict.fromkeys(chosen)]


def random_crops(waves: list[np.ndarray], batch: int, samples: int, rng: np.random.Generator) -> Tensor:
    out = np.zeros((batch, samples), dtype=np.float32)
    for i in range(batch):
        w = waves[int(rng.integers(len(waves)))]
        start = int(rng.integers(0, max(w.shape[0] - samples, 0) + 1))
        piece = w[start : start + samples]
        out[i, : piece.shape[0]] = piece
    return torch.from_numpy(out)


def train_codec(
    audio: str | os.PathLike | list[np.ndarray], cfg: CodecConfig | None = None, *, steps: int = 2000,
    batch: int = 8, crop_seconds: float = 1.0, lr: float = 1e-3, seed: int = 0, max_files: int = 2000,
    log=None, log_every: int = 50, refresh_crops: int = 200,
) -> tuple[Codec, list[dict[str, float]]]:
    """Train a codec on random crops of a corpus (a folder, or waveforms); returns it and its log.

    The codebooks are refitted at the end on `refresh_crops` crops of one second (`refresh_codebooks`).
    """
    cfg = cfg or CodecConfig()
    waves = audio if isinstance(audio, list) else _load_corpus(Path(audio), cfg.sample_rate, max_files)
    torch.manual_seed(seed)
    codec = Codec(cfg).train()
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 0x636F64])
    optimiser = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=lr, betas=(0.8, 0.99))
    history = []
    for step in range(1, steps + 1):
        loss, stats = codec_loss(codec, random_crops(waves, batch, round(crop_seconds * cfg.sample_rate), rng), generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        optimiser.step()
        history.append({"step": step, **stats})
        if log is not None and (step % log_every == 0 or step == steps):
            log(f"codec step {step}/{steps}: loss {stats['loss']:.4f} (l1 {stats['l1']:.4f}, stft {stats['stft']:.4f})")
    refresh_codebooks(codec.eval(), random_crops(waves, refresh_crops, cfg.sample_rate, rng), generator)
    return codec, history


@torch.no_grad()
def refresh_codebooks(codec: Codec, crops: Tensor, generator: torch.Generator, iterations: int = 8) -> None:
    """Lloyd iterations of every RVQ stage on the final encoder's outputs.

    During training the encoder moves under the codebooks, so codes restarted early go stale
    and at the end a few codes can take most frames. The teacher only needs the codes to
    partition the final encoder's outputs well: each stage is refitted in turn (dead
    centroids re-seeded at random frames), then the next stage sees the new residuals.
    """
    flat = torch.cat([codec.encoder(codec.pad(chunk)).transpose(1, 2).reshape(-1, codec.cfg.dim)
                      for chunk in crops.split(16)])
    rvq = codec.quantizer
    residual = flat
    for k in range(codec.cfg.codebooks):
        embed = rvq.embed[k]
        for _ in range(iterations):
            index = rvq.nearest(residual, k)
            counts = torch.bincount(index, minlength=codec.cfg.codebook_size).float()
            sums = torch.zeros_like(embed).index_add_(0, index, residual)
            alive = counts > 0
            embed[alive] = sums[alive] / counts[alive, None]
            dead = int((~alive).sum())
            if dead:
                embed[~alive] = residual[torch.randint(0, residual.shape[0], (dead,), generator=generator)]
        residual = residual - embed[rvq.nearest(residual, k)]


# ---------------------------------------------------------------------------------------
# the label teacher
# ---------------------------------------------------------------------------------------
class CodecTeacher:
    """A `mertkit.pretrain.labels.LabelTeacher` over a trained `Codec`."""

    bandwidth = 0.0

    def __init__(self, codec: Codec):
        self.codec = codec.eval()
        self.cfg = codec.cfg

    name = property(lambda self: f"codec-{self.cfg.codebooks}x{self.cfg.codebook_size}")
    sample_rate = property(lambda self: self.cfg.sample_rate)
    hop_length = property(lambda self: self.cfg.hop_length)
    num_codebooks = property(lambda self: self.cfg.codebooks)
    codebook_size = property(lambda self: self.cfg.codebook_size)

    @torch.inference_mode()
    def codes(self, wav: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        _, codes, _ = self.codec(wave)
        return codes[0].numpy().astype(np.int16)

    def save(self, path: str | os.PathLike) -> None:
        from mertkit.fileio import atomic_write

        payload = {"format": FORMAT, "config": asdict(self.cfg), "state": self.codec.state_dict()}
        atomic_write(path, lambda handle: torch.save(payload, handle))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CodecTeacher:
        from mertkit.fileio import TaggedFileError, read_tagged_torch

        try:
            payload = read_tagged_torch(path, FORMAT, "codec file")
        except TaggedFileError as err:
            raise CodecError(str(err)) from None
        codec = Codec(CodecConfig(**payload["config"]))
        codec.load_state_dict(payload["state"])
        return cls(codec)
