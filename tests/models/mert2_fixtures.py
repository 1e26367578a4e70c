"""Tiny MERT-v2 checkpoints in the official layout (random weights), and an independent
numpy reading of the mel front end, for the MERT-v2 tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mertkit.models.mert2.config import Mert2Config
from mertkit.models.mert2.model import Mert2Model

# Every size derived from these; subsampling 4x on a hop of 32 -> 128 samples per frame.
TINY2 = dict(
    model_type="mert2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_mel_bins=16, sampling_rate=24000, n_fft=128, win_length=128, hop_length=32,
    subsampling_channels=[16, 24, 32], subsampling_depths=[1, 2, 1], conv_depthwise_kernel_size=7,
    variant="30s",
)
FRONT_END = ("feature_extractor.mel_mean", "feature_extractor.mel_std",
             "feature_extractor.spectrogram.window", "feature_extractor.mel_scale.fb")
# The hub's remote-code pointer: must be ignored, never imported.
AUTO_MAP = {"AutoConfig": "configuration_mert2.Mert2Config", "AutoModel": "modeling_mert2.Mert2Model"}


def tiny2_config(**overrides) -> Mert2Config:
    return Mert2Config.from_dict({**TINY2, **overrides})


def htk_mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """[n_fft/2 + 1, n_mels] triangular HTK-mel filters from 0 Hz to Nyquist, not normalised."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    points = np.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10.0 ** (points / 2595.0) - 1.0)
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        left, centre, right = hz[m], hz[m + 1], hz[m + 2]
        rising = (freqs - left) / (centre - left)
        falling = (right - freqs) / (right - centre)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return fb


def random_state(config: Mert2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor random (norm weights near 1, GRN non-zero), front-end buffers as released:
    periodic Hann window, HTK filterbank, mel statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        shapes = Mert2Model(config).state_dict()  # shapes only: no full-size float32 model
    for name, value in shapes.items():
        noise = torch.randn(value.shape, generator=gen)
        if name.endswith("norm.weight") or ".pointwise_block.0.weight" in name or "resampling_layer.0.weight" in name \
                or name.endswith("conv_block.4.1.weight"):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith("pointwise_block.3.weight") or name.endswith("pointwise_block.3.bias"):
            state[name] = 0.5 * noise
        else:
            fan_in = value.shape[1:].numel() if value.dim() > 1 else 10
            state[name] = noise / fan_in**0.5
    state["feature_extractor.spectrogram.window"] = torch.hann_window(config.win_length, periodic=True)
    state["feature_extractor.mel_scale.fb"] = torch.from_numpy(
        htk_mel_filterbank(config.n_fft, config.num_mel_bins, config.sampling_rate)).float()
    state["feature_extractor.mel_mean"] = -20.0 + 5.0 * torch.randn(config.num_mel_bins, generator=gen)
    state["feature_extractor.mel_std"] = 10.0 + torch.rand(config.num_mel_bins, generator=gen)
    return state


def official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """As the hub stores it: bf16 weights, float32 front-end buffers."""
    return {k: (v.float() if k in FRONT_END else v.to(torch.bfloat16)).contiguous() for k, v in state.items()}


def write_checkpoint(directory: Path, config_values: dict | None = None, *, seed: int = 0,
                     sharded: bool = False, state: dict | None = None) -> Path:
    """config.json (with auto_map) + bf16 safetensors (one file or two shards + index)."""
    from safetensors.torch import save_file

    values = {**TINY2, **(config_values or {})}
    directory.mkdir(parents=True, exist_ok=True)
    config_json = {**values, "architectures": ["Mert2Model"], "auto_map": AUTO_MAP, "torch_dtype": "bfloat16",
                   "transformers_version": "4.53.2"}
    (directory / "config.json").write_text(json.dumps(config_json, indent=2))
    # The remote code the hub ships: executing it would leave a marker file.
    (directory / "modeling_mert2.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('EXECUTED').write_text('1')\n")
    # A given state is written as it is (already in the stored dtypes).
    tensors = state if state is not None else official_state(random_state(Mert2Config.from_dict(values), seed))
    if not sharded:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def numpy_log_mel(wave: np.ndarray, window: np.ndarray, fb: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  n_fft: int, hop: int) -> np.ndarray:
    """Independent float64 reading of the front end: centred reflect-padded STFT, power, mel,
    dB, last frame dropped, normalised. [T, M] with T = len(wave) // hop."""
    pad = n_fft // 2
    padded = np.pad(wave.astype(np.float64), (pad, pad), mode="reflect")
    full_window = np.zeros(n_fft)
    offset = (n_fft - len(window)) // 2  # a shorter window sits centred in the frame
    full_window[offset : offset + len(window)] = window
    count = 1 + (len(padded) - n_fft) // hop
    frames = np.stack([padded[i * hop : i * hop + n_fft] * full_window for i in range(count)])
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    db = 10.0 * np.log10(np.maximum(power @ fb.astype(np.float64), 1e-10))[:-1]
    return (db - mean) / np.maximum(std, 1e-5)
