"""`mert extract` with a MERT-v2 checkpoint: the block outputs at the model's frame rate, the
whole-file default for FullSong, no input normalisation, and the measured deviation of
windowed extraction from the whole pass (windowing only approximates it for MERT-v2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mert2_fixtures import TINY2, write_checkpoint

import mertkit
from audio_fixtures import write_array
from mertkit.cli.app import main
from mertkit.extraction.engine import Extractor, ExtractOptions
from mertkit.extraction.runner import load_features
from mertkit.models.family import contract_of

SR = TINY2["sampling_rate"]


@pytest.fixture(scope="module")
def fullsong(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("mert2") / "fs", {"variant": "fs"}, seed=8)


def _noise(seconds: float, seed: int) -> np.ndarray:
    return 0.2 * np.random.default_rng(seed).standard_normal(int(seconds * SR))


def test_mert_extract_gives_the_whole_pass_block_outputs(fullsong, tmp_path):
    audio = tmp_path / "song.flac"
    wave = write_array(audio, _noise(2.3, 0), SR, "PCM_24")[:, 0].astype(np.float32)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["extract", str(audio), "--model", str(fullsong), "--out", str(out), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tensors, meta = load_features(out / "song.flac.safetensors")
    model = mertkit.load(fullsong)
    contract = contract_of(model)
    with torch.inference_mode():
        expected = torch.stack(model(torch.from_numpy(wave)[None]).hidden_states)[:, 0].numpy()  # raw samples
    frames = len(wave) // contract.samples_per_frame
    assert tensors["hidden_states"].shape == (TINY2["num_hidden_layers"], frames, TINY2["hidden_size"])
    np.testing.assert_allclose(tensors["hidden_states"], expected, rtol=0, atol=1e-5)
    stamps = (contract.samples_per_frame * np.arange(frames) + contract.first_frame_centre) / SR
    np.testing.assert_allclose(tensors["timestamps"], stamps)
    assert meta["do_normalize"] == "false" and float(meta["frame_rate"]) == contract.frame_rate
    assert float(meta["window"]) == 0.0  # FullSong: one pass over the whole file


def test_windowed_extraction_deviation_from_the_whole_pass_is_measured(fullsong):
    """Windowing changes MERT-v2's numbers (GRN and attention see the whole input): measure it.
    The figure is what the README documents; the test checks it is computed, not its size."""
    model = mertkit.load(fullsong)
    assert contract_of(model).windowing_exact is False
    wave = _noise(4.0, 1).astype(np.float32)
    window = 180 * contract_of(model).samples_per_frame / SR  # whole frames per window, as 30 s at 25 Hz
    whole_features = Extractor(model, ExtractOptions(window=0)).extract(wave)
    windowed_features = Extractor(model, ExtractOptions(window=window)).extract(wave)
    whole, windowed = whole_features.hidden_states, windowed_features.hidden_states
    assert whole.shape == windowed.shape  # frame-aligned windows: same frames, same timestamps
    np.testing.assert_allclose(windowed_features.timestamps, whole_features.timestamps)
    diff = windowed - whole
    relative = np.linalg.norm(diff, axis=(1, 2)) / np.linalg.norm(whole, axis=(1, 2))  # per layer
    cosine = (windowed * whole).sum(-1) / (np.linalg.norm(windowed, axis=-1) * np.linalg.norm(whole, axis=-1))
    print(f"windowed ({window:g} s) vs whole pass (4 s), per layer: relative L2 {np.round(relative, 4).tolist()}, "
          f"mean frame cosine {np.round(cosine.mean(-1), 4).tolist()}")
    assert np.isfinite(relative).all() and (relative > 0).all()


def test_thirty_second_variant_defaults_to_its_context_window(tmp_path):
    model = mertkit.load(write_checkpoint(tmp_path / "30s", {"variant": "30s"}))
    extractor = Extractor(model)
    assert (extractor.window, extractor.do_normalize) == (30.0, False)
    assert Extractor(mertkit.load(write_checkpoint(tmp_path / "fs", {"variant": "fs"}))).window == 0.0


def test_init_from_a_mert2_checkpoint_is_a_clear_error(tmp_path):
    from mertkit.pretrain.trainer import PretrainError, load_released_backbone

    with pytest.raises(PretrainError, match="a mert2 checkpoint; the MERT-v1 recipe continues"):
        load_released_backbone(None, str(write_checkpoint(tmp_path / "fs", {"variant": "fs"})))


def test_bf16_extraction_feeds_float32_samples_to_the_float32_front_end(fullsong):
    model = mertkit.load(fullsong, dtype=torch.bfloat16)
    assert contract_of(model).float32_input
    wave = _noise(1.5, 2).astype(np.float32)
    got = Extractor(model, ExtractOptions(dtype="bfloat16")).extract(wave).hidden_states
    with torch.inference_mode():
        expected = torch.stack(model(torch.from_numpy(wave)[None]).hidden_states)[:, 0].float().numpy()
    np.testing.assert_array_equal(got, expected)
