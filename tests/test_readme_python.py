"""The README's Python snippet runs as written (on a tiny checkpoint and a rendered file) and
gives what `mert extract` writes; `mertkit.embed` takes arrays of any numeric dtype."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

import mertkit
from audio_fixtures import write_mp3, write_tone
from model_fixtures import tiny_config
from mertkit.cli.app import main
from mertkit.models.checkpoint import save_pretrained
from mertkit.models.hubert.model import MertModel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def normalising_checkpoint(tmp_path_factory) -> Path:
    # do_normalize=True: the case where calling the model directly and `mert extract` differ.
    return save_pretrained(MertModel(tiny_config("post_ln", num_hidden_layers=12)),
                           tmp_path_factory.mktemp("ckpt") / "tiny", do_normalize=True)


def _readme_snippet() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return block


def test_readme_snippet_runs_as_written_and_matches_mert_extract(normalising_checkpoint, tmp_path):
    song = tmp_path / "song.mp3"
    write_mp3(song, seconds=3.0, sample_rate=44100, channels=2)
    code = _readme_snippet().replace('"MERT-v1-95M"', repr(str(normalising_checkpoint))).replace(
        '"song.mp3"', repr(str(song)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own snippet

    out = tmp_path / "feats"
    result = CliRunner().invoke(main, ["extract", str(song), "--model", str(normalising_checkpoint), "-o", str(out),
                                       "-q"])
    assert result.exit_code == 0, result.output
    written = load_file(str(out / "song.mp3.safetensors"))
    np.testing.assert_array_equal(namespace["states"], written["hidden_states"])
    np.testing.assert_array_equal(namespace["feats"].timestamps, written["timestamps"])
    assert namespace["pooled"].shape == (3, written["hidden_states"].shape[-1])
    expected_mix = 0.2 * namespace["pooled"][0] + 0.5 * namespace["pooled"][1] + 0.3 * namespace["pooled"][2]
    np.testing.assert_allclose(namespace["mix"], expected_mix, rtol=1e-5, atol=1e-6)


def test_embed_takes_integer_and_multichannel_arrays_like_a_decoded_file(normalising_checkpoint, tmp_path):
    model = mertkit.load(str(normalising_checkpoint))
    wav = tmp_path / "tone.wav"
    write_tone(wav, seconds=2.0, sample_rate=24000, channels=2, subtype="PCM_16")
    import soundfile as sf

    pcm, rate = sf.read(str(wav), dtype="int16")  # [frames, channels]
    from_file = mertkit.embed(model, wav, pool="mean").hidden_states
    from_array = mertkit.embed(model, pcm.T, sample_rate=rate, pool="mean").hidden_states
    np.testing.assert_allclose(from_array, from_file, rtol=1e-5, atol=1e-6)


def test_embed_refuses_an_array_without_its_rate_and_unequal_layer_weights(normalising_checkpoint):
    model = mertkit.load(str(normalising_checkpoint))
    with pytest.raises(ValueError, match="sample_rate"):
        mertkit.embed(model, np.zeros(24000, dtype=np.float32))
    with pytest.raises(ValueError, match="2 weights for 3 layers"):
        mertkit.weighted_layer_average(np.zeros((3, 4)), [1.0, 2.0])


def test_stack_pooled_gives_inputs_by_layers_by_width(normalising_checkpoint):
    model = mertkit.load(str(normalising_checkpoint))
    clips = [np.sin(np.arange(24000) * f / 24000 * 2 * np.pi).astype(np.float32) for f in (220, 440)]
    feats = [mertkit.embed(model, clip, sample_rate=24000, pool="mean", layers=[1, 2]) for clip in clips]
    stacked = mertkit.stack_pooled(feats)
    assert stacked.shape == (2, 2, model.config.hidden_size)
    assert not np.allclose(stacked[0], stacked[1])
