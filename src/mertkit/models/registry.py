"""The published checkpoints, the model mertkit ships, and the input contract each carries.

Like open_clip's pretrained table: a name resolves to where the weights live (hub id and,
where known, a pinned revision, or a folder inside the package) and to what the model expects
(sample rate, frame rate, hidden states, whether inputs are normalised) so callers never guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path


# The model inside the package: the offline default of `mert demo`, `mert eval` and mertkit.hear.
SHIPPED_MODEL = "mertkit-tiny-mel"


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
    asset: str | None = None  # folder under mertkit/assets for a model that ships with the package
    family: str = "hubert"  # mertkit.models.family.FAMILIES key
    whole_file_default: bool = False  # extraction runs the whole file in one pass by default
    # The model card's best layer per probing task, numbered as on the card.
    layer_guide: tuple[tuple[str, int], ...] = ()


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
        # MERT-v2 (September 2026): 24 kHz raw waveforms, 25 Hz, one state per Conformer block.
        # Gated repos; 30s was trained on 30 s crops, FullSong continued on whole songs (30-360 s).
        ModelCard("MERT-v2-30s", "m-a-p/MERT-v2-30s", None, 24000, 25.0, 24, False, 30.0, family="mert2",
                  layer_guide=(("key", 4), ("instrument", 14), ("genre", 23))),
        ModelCard("MERT-v2-FullSong", "m-a-p/MERT-v2-FullSong", None, 24000, 25.0, 24, False, 360.0, family="mert2",
                  whole_file_default=True),
        # Pre-trained by mertkit itself (see README): works offline, not a research model. MERT-v2
        # layout (log-mel input, 25 Hz, one state per block), 5 s crops.
        ModelCard(SHIPPED_MODEL, None, None, 24000, 25.0, 4, False, 5.0, license="Apache-2.0", asset="model",
                  family="mert2"),
    )
}


# Names the package no longer ships, and what took their place (an error says so).
RETIRED: dict[str, str] = {
    "mertkit-tiny-synth": f"mertkit-tiny-music and then {SHIPPED_MODEL} replaced it as the shipped model (it knew "
                          "less than its own random initialisation; see scripts/small_model/README.md)",
    "mertkit-tiny-music": f"{SHIPPED_MODEL} replaced it as the shipped model (it scored 20 points under MFCC "
                          "statistics on instrument; see scripts/small_model/README.md)",
}


def lookup(name: str) -> ModelCard | None:
    """A registry entry by short name ("MERT-v1-95M") or hub id ("m-a-p/MERT-v1-95M"), any case."""
    key = name.lower()
    for card in PRETRAINED.values():
        if key == card.name.lower() or (card.hub_id is not None and key == card.hub_id.lower()):
            return card
    return None


def asset_dir(card: ModelCard) -> Path:
    """Where the files of a model that ships with the package are (`card.asset` is set)."""
    if card.asset is None:
        raise ValueError(f"{card.name} does not ship with mertkit")
    return Path(str(resources.files("mertkit") / "assets" / card.asset))
