"""`mert models`: the registry's models, each with its input contract and, where the model
card gives one, its per-task layer guide. Reads the registry only: no download, no torch."""
from __future__ import annotations

import click

from mertkit.cli.options import examples, verbosity

__all__ = ["models"]


def _describe(card) -> list[str]:
    window = "whole file" if card.whole_file_default else f"{card.context_seconds:g} s"
    lines = [
        f"{card.name}  ({card.hub_id or 'ships with mertkit'}, family {card.family}, licence {card.license})",
        f"  {card.sample_rate / 1000:g} kHz in, {card.frame_rate:g} Hz out, {card.num_hidden_states} hidden states, "
        f"input normalisation {'on' if card.do_normalize else 'off'}",
        f"  context {card.context_seconds:g} s (pre-training), default extraction window {window}",
    ]
    if card.family == "mert2":
        lines.append("  hidden_states[i] is the output of Conformer block i + 1 (no input-embedding state); "
                     "windowed extraction only approximates a whole-file pass")
        if card.layer_guide:
            guide = ", ".join(f"{task} L{layer}" for task, layer in card.layer_guide)
            lines.append(f"  layer guide (model card, best probing layer per task): {guide}")
        else:
            lines.append("  layer guide: not recorded in mertkit; see the model card")
    return lines


@click.command("models", epilog=examples("mert models"))
@verbosity
def models() -> None:
    """List the known models with their input contracts."""
    from mertkit.models.registry import PRETRAINED

    for i, card in enumerate(PRETRAINED.values()):
        if i:
            click.echo("")
        click.echo("\n".join(_describe(card)))
