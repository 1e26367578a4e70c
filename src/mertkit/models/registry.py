"""The five published checkpoints and the input contract each one carries.

Like open_clip's pretrained table: a name resolves to where the weights live (hub id and,
where known, a pinned revision) and to what the model expects (sample rate, frame rate,
hidden states, whether inputs are normalised) so callers never guess.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    name: str
    hub_id: str | None
    revision: str | None
    sample_rate: int
    frame_rate: float
    num_hidden_states: int
    do_normalize: bool  # default when the checkpoint has no preprocessor_config.json
    context_seconds: float  # pre-training crop length: the natural extraction window
    license: str = "CC-BY-NC-4.0"


PRETRAINED: dict[str, ModelCard] = {
    card.name: card
    for card in (
        # The model card pins this revision; MERT-v1-330M's preprocessor most likely does not
        # normalise (training used raw waveforms).
        ModelCard("MERT-v1-330M", "m-a-p/MERT-v1-330M", "7bab7bb5d8b52448eff4873a980dc17f0015a09c", 24000, 75.0, 25, False, 5.0),
        ModelCard("MERT-v1-95M", "m-a-p/MERT-v1-95M", None, 24000, 75.0, 13, True, 5.0),
        ModelCard("MERT-v0-public", "m-a-p/MERT-v0-public", None, 16000, 50.0, 13, True, 5.0),
        ModelCard("MERT-v0", "m-a-p/MERT-v0", None, 16000, 50.0, 13, True, 5.0),
        ModelCard("music2vec-v1", "m-a-p/music2vec-v1", None, 16000, 50.0, 13, True, 30.0),
    )
}


def lookup(name: str) -> ModelCard | None:
    """A registry entry by short name ("MERT-v1-95M") or hub id ("m-a-p/MERT-v1-95M"), any case."""
    key = name.lower()
    for card in PRETRAINED.values():
        if key in (card.name.lower(), (card.hub_id or "").lower()):
            return card
    return None
