"""Registry entries for MERT-v2 agree with the family contract; `mert models` lists them all."""
from __future__ import annotations

from click.testing import CliRunner
from mert2_fixtures import tiny2_config

from mertkit.cli.app import main
from mertkit.models.family import FAMILIES
from mertkit.models.mert2.model import Mert2Model
from mertkit.models.registry import PRETRAINED, lookup


def test_mert2_cards_match_the_contract_of_their_variant():
    for name, variant in (("MERT-v2-30s", "30s"), ("MERT-v2-FullSong", "fs")):
        card = lookup(f"m-a-p/{name}")
        assert card is not None and card.family == "mert2" and card.license == "CC-BY-NC-4.0"
        contract = FAMILIES["mert2"].contract(Mert2Model(tiny2_config(variant=variant)).config, None, None)
        assert (card.context_seconds, card.do_normalize) == (contract.context_seconds, contract.do_normalize)
        assert card.whole_file_default == (contract.default_window_seconds == 0)
        assert (card.sample_rate, card.frame_rate, card.num_hidden_states) == (24000, 25.0, 24)


def test_mert_models_lists_every_card_with_contract_and_layer_guide():
    result = CliRunner().invoke(main, ["models"], catch_exceptions=False)
    assert result.exit_code == 0
    for card in PRETRAINED.values():
        assert f"{card.name}  ({card.hub_id or 'ships with mertkit'}, family {card.family}" in result.output
    assert "key L4, instrument L14, genre L23" in result.output
    assert "default extraction window whole file" in result.output
    assert "models" in CliRunner().invoke(main, ["--help"]).output
