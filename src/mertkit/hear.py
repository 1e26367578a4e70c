"""The HEAR 2021 API (hear-eval-kit) for MERT-family models.

    import mertkit.hear as module
    model = module.load_model("MERT-v1-95M")                # a checkpoint dir or registry name; "" = demo
    scene = module.get_scene_embeddings(audio, model)        # [n_sounds, D]
    emb, ts = module.get_timestamp_embeddings(audio, model)  # [n_sounds, T, D], [n_sounds, T] in ms

`audio` is a float tensor [n_sounds, n_samples] at `model.sample_rate`, as hear-eval-kit hands
it over. HEAR admits only 16, 22.05, 32, 44.1 and 48 kHz (the 2021 validator: 16, 22.05, 44.1,
48), so `model.sample_rate` is a HEAR rate and the audio is resampled inside to the model's own
rate (soxr HQ, `mertkit.audio.resample`): 16 kHz models (MERT-v0, music2vec) take 16 kHz as is;
24 kHz models (MERT-v1, the shipped default) declare 48 kHz, an exact 2:1 ratio that keeps the
whole band the model sees (22.05 kHz would cut it at 11 kHz, below the model's 12 kHz Nyquist).
`load_model(..., sample_rate=R)` picks another HEAR rate.

Which embedding. HEAR wants one vector per frame and per clip, while MERT has L + 1 hidden
states. `layer="mean"` (the default) averages all of them: MERT's information is spread over
the layers (MARBLE finds middle layers best for most tasks, the last one rarely), and the
average is a layer-agnostic summary of the same width. `layer=k` takes hidden state k alone
(and stops the encoder there). D = hidden_size either way (768 for MERT-v1-95M, 1024 for 330M).

Timestamp embeddings are the model's frames (75 Hz for MERT-v1, 50 Hz for v0 and music2vec,
25 Hz for MERT-v2), computed in windows of the model's default extraction window (its
pre-training context: 5 s, 30 s for music2vec and MERT-v2-30s; the whole sound for
MERT-v2-FullSong) stitched at mid-overlap, each stamped with the centre of the samples it
sees, in milliseconds. Each window starts a whole number of frames after the last (the
extraction default, `mertkit.extraction.engine.seamless_hop`: 5 s windows at 24 kHz hop 374
frames, 4.9867 s), so the frames form one even grid across window seams; `hop=` overrides it.
Frame j of a window starting at sample s is at
1000 * (s + samples_per_frame * j + first_frame_centre) / model_rate (the model's
`InputContract`; see `mertkit.extraction.engine`). Scene embeddings are the time-mean of the timestamp embeddings.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mertkit.audio import AudioError, check_waveform, resample
from mertkit.extraction.engine import ExtractError, Extractor, ExtractOptions
from mertkit.models.family import FamilyModel, contract_of

__all__ = ["HEAR_SAMPLE_RATES", "HearError", "HearModel", "get_scene_embeddings", "get_timestamp_embeddings",
           "hear_sample_rate", "load_model"]

_LOAD_OPTIONS = ("layer", "window", "hop", "device", "dtype", "batch_size", "sample_rate")
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)


class HearError(ValueError):
    """A bad argument to the HEAR API (unknown option, audio of the wrong shape or length)."""


def hear_sample_rate(model_rate: int) -> int:
    """The HEAR rate declared for a model: its own rate when HEAR admits it, else the lowest
    HEAR rate that is a whole multiple of it (24 kHz -> 48 kHz), else the lowest one above it."""
    if model_rate in HEAR_SAMPLE_RATES:
        return model_rate
    multiples = [rate for rate in HEAR_SAMPLE_RATES if rate % model_rate == 0]
    above = [rate for rate in HEAR_SAMPLE_RATES if rate > model_rate]
    if not (multiples or above):
        raise HearError(f"no HEAR sample rate {HEAR_SAMPLE_RATES} is at or above the model's {model_rate} Hz")
    return (multiples or above)[0]


class HearModel(nn.Module):
    """A MERT model with the attributes HEAR asks for and the extraction settings to use."""

    def __init__(self, model: FamilyModel, *, layer: int | str = "mean", window: float | None = None,
                 hop: float | None = None, dtype: str = "float32", batch_size: int = 8, sample_rate: int | None = None):
        super().__init__()
        if sample_rate is not None and sample_rate not in HEAR_SAMPLE_RATES:
            raise HearError(f"sample_rate must be one of HEAR's {HEAR_SAMPLE_RATES}, got {sample_rate!r}")
        num_states = model.config.num_hidden_states
        if layer != "mean" and not (isinstance(layer, int) and 0 <= layer < num_states):
            raise HearError(f"layer must be 'mean' or a hidden-state index 0..{num_states - 1}, got {layer!r}")
        self.model = model.eval()
        self.layer = layer
        self.model_sample_rate = int(model.config.sample_rate)
        self.sample_rate = sample_rate or hear_sample_rate(self.model_sample_rate)
        self.scene_embedding_size = model.config.hidden_size
        self.timestamp_embedding_size = model.config.hidden_size
        layers = None if layer == "mean" else (layer,)
        try:
            self.options = ExtractOptions(layers=layers, window=window, hop=hop, dtype=dtype, batch_size=batch_size)
        except ExtractError as err:
            raise HearError(str(err)) from None

    def extractor(self, pool: str) -> Extractor:
        options = ExtractOptions(layers=self.options.layers, pool=pool, window=self.options.window,
                                 hop=self.options.hop, batch_size=self.options.batch_size, dtype=self.options.dtype)
        return Extractor(self.model, options)

    def reduce_layers(self, states: np.ndarray) -> np.ndarray:
        """[layers, ...] -> [...]: the mean over layers, or the one selected layer."""
        return states.mean(axis=0) if self.layer == "mean" else states[0]


def load_model(model_file_path: str = "", **kwargs) -> HearModel:
    """Load a MERT-family model for HEAR.

    model_file_path: a checkpoint directory, a registry name ("MERT-v1-95M") or hub id, or ""
    for the offline demo model (`mertkit.models.shipped.demo_model_dir()`).
    kwargs: layer ("mean" or a hidden-state index), window (seconds; default the model's
    pre-training context), hop (seconds; default the seam-free hop of `seamless_hop`), device
    (default cuda when available), dtype (autocast:
    float32, bfloat16, float16, or auto: see `mertkit.models.kernels.resolve_dtype`), batch_size,
    sample_rate (the HEAR input rate; default :func:`hear_sample_rate` of the model's rate).
    """
    from mertkit.models.checkpoint import load

    unknown = sorted(set(kwargs) - set(_LOAD_OPTIONS))
    if unknown:
        raise HearError(f"unknown load_model options {unknown}; known: {list(_LOAD_OPTIONS)}")
    device = kwargs.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    path = model_file_path
    if not path:
        from mertkit.models.shipped import demo_model_dir

        path = str(demo_model_dir()[0])
    return HearModel(load(path, device=device), **kwargs)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """([n_sounds, n_frames, D] embeddings, [n_sounds, n_frames] timestamps in milliseconds)."""
    waves = _waveforms(audio, model)
    embeddings, stamps = [], []
    for _, features in model.extractor("none").extract_many(enumerate(waves)):
        embeddings.append(model.reduce_layers(features.hidden_states))
        stamps.append(features.timestamps * 1000.0)
    if not embeddings:
        width = model.timestamp_embedding_size
        return torch.zeros(0, 0, width, device=audio.device), torch.zeros(0, 0, device=audio.device)
    return (torch.from_numpy(np.stack(embeddings)).to(audio.device),
            torch.from_numpy(np.stack(stamps)).float().to(audio.device))


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """[n_sounds, D]: the time-mean of each sound's timestamp embeddings."""
    waves = _waveforms(audio, model)
    vectors = [model.reduce_layers(f.hidden_states) for _, f in model.extractor("mean").extract_many(enumerate(waves))]
    if not vectors:
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    return torch.from_numpy(np.stack(vectors)).to(audio.device)


def _waveforms(audio: Tensor, model: HearModel) -> list[np.ndarray]:
    """The sounds as float32 arrays at the model's own rate."""
    if not isinstance(audio, Tensor):
        raise HearError(f"audio must be a torch.Tensor [n_sounds, n_samples], got {type(audio).__name__}")
    if audio.dim() != 2:
        raise HearError(f"audio must be [n_sounds, n_samples] at {model.sample_rate} Hz, got shape {tuple(audio.shape)}")
    minimum = contract_of(model.model).min_input_samples  # at the model's rate
    needed = -(-minimum * model.sample_rate // model.model_sample_rate)
    if audio.shape[0] and audio.shape[1] < needed:
        raise HearError(f"audio of {audio.shape[1]} samples is shorter than one frame ({needed} samples "
                        f"at {model.sample_rate} Hz)")
    if audio.dtype == torch.bfloat16:  # numpy has no bfloat16
        audio = audio.float()
    try:
        waves = list(check_waveform(audio.detach().cpu().numpy(), "audio", ndim=2))
    except AudioError as err:
        raise HearError(str(err)) from None
    if model.sample_rate != model.model_sample_rate:
        waves = [resample(wave, model.sample_rate, model.model_sample_rate) for wave in waves]
    if waves and len(waves[0]) < minimum:  # resampling can round a borderline length down
        raise HearError(f"audio of {audio.shape[1]} samples is shorter than one frame ({needed} samples "
                        f"at {model.sample_rate} Hz)")
    return waves
