"""The Python entry point that gives exactly what `mert extract` writes for one input.

    import mertkit
    model = mertkit.load("MERT-v1-95M")
    feats = mertkit.embed(model, "song.mp3")                  # a file: decoded, mono, resampled
    feats = mertkit.embed(model, pcm_int16, sample_rate=44100) # or an array of any numeric dtype
    feats.hidden_states                                        # [layers, frames, width]
    mertkit.weighted_layer_average(feats.hidden_states, weights)

The model's input contract is applied here as on the command line: its rate, a mono mix, its
normalisation (`do_normalize` from the checkpoint), its windows. Nothing else computes it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mertkit.audio import check_waveform, resample
from mertkit.extraction.engine import ExtractError, ExtractOptions, Extractor, Features
from mertkit.models.family import FamilyModel


def embed(
    model: FamilyModel,
    audio: str | os.PathLike | np.ndarray,
    *,
    sample_rate: int | None = None,
    layers: Sequence[int] | None = None,
    pool: str = "none",
    window: float | None = None,
    hop: float | None = None,
    dtype: str = "float32",
) -> Features:
    """Features of one file or waveform, equal to `mert extract` with the same options.

    `audio` is a path, or an array ([samples] mono or [channels, samples]; a torch tensor works
    too) with its `sample_rate`. Integer PCM is scaled by its full range, as decoders do.
    """
    options = ExtractOptions(layers=tuple(layers) if layers is not None else None, pool=pool, window=window,
                             hop=hop, dtype=dtype)
    extractor = Extractor(model, options)
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ExtractError("sample_rate is for arrays; a file's rate comes from the file")
        return extractor.extract_file(audio)
    if sample_rate is None:
        raise ExtractError("an array needs its sample_rate (e.g. sample_rate=44100)")
    return extractor.extract(_model_rate_mono(audio, sample_rate, extractor.config.sample_rate))


def _model_rate_mono(audio: object, sample_rate: int, model_rate: int) -> np.ndarray:
    array = audio.detach().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio)
    if array.ndim == 2:  # [channels, samples]: the mono mix every decoder path takes
        array = check_waveform(array, "waveform", ndim=2).mean(axis=0)
    return resample(check_waveform(array, "waveform"), sample_rate, model_rate)


def embed_file(model: FamilyModel, path: str | os.PathLike, *, layers: Sequence[int] | None = None,
               pool: str = "mean", window: float | None = None) -> np.ndarray:
    """Pooled features [layers, width] of one audio file: what `mert extract --pool mean` writes."""
    if pool == "none":
        raise ExtractError("embed_file pools; use mertkit.embed for frame-level features")
    return embed(model, path, layers=layers, pool=pool, window=window).hidden_states


def weighted_layer_average(hidden_states: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Sum over the first axis (layers) of `hidden_states` with `weights` scaled to sum to 1
    (None: the plain mean), e.g. the layer weights a weighted probe learned."""
    states = np.asarray(hidden_states)
    if weights is None:
        return states.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (states.shape[0],):
        raise ValueError(f"{w.size} weights for {states.shape[0]} layers")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("layer weights must be finite, non-negative and not all zero")
    return np.tensordot(w / w.sum(), states, axes=1).astype(states.dtype, copy=False)


def stack_pooled(features: Sequence[Features]) -> np.ndarray:
    """Pooled features of several inputs as one array [inputs, layers, width]."""
    if not features:
        raise ValueError("nothing to stack")
    first = features[0]
    for item in features:
        if item.hidden_states.ndim != 2:
            raise ValueError("stack_pooled takes pooled features (pool='mean' or 'max')")
        if item.layers != first.layers:
            raise ValueError(f"features of layers {item.layers} and {first.layers} cannot be stacked")
    return np.stack([item.hidden_states for item in features])
