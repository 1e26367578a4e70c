"""Strict import of an official MERT-v2 state dict (876 tensors at full size).

The official keys are the model's own names: loading is one-to-one. Weights keep the dtype
they are stored in (bf16 in the releases) until cast to the requested dtype, so a bf16 model
never takes a float32 detour; the four front-end buffers must be float32 and stay so.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mertkit.models.checkpoint import CheckpointError, check_weights
from mertkit.models.mert2.config import Mert2Config
from mertkit.models.mert2.model import Mert2Model

def import_mert2(config: Mert2Config, state: dict[str, Tensor], *, source: str,
                 dtype: torch.dtype = torch.float32) -> Mert2Model:
    """A Mert2Model in eval mode holding exactly `state`, cast to `dtype` (buffers stay float32)."""
    with torch.device("meta"):
        model = Mert2Model(config)  # shapes only: the checkpoint supplies every tensor
    # Names, shapes and finite values, every offending tensor named, before any memory is used.
    check_weights({name: tuple(t.shape) for name, t in model.state_dict().items()}, state, source=source)
    for name in Mert2Model.float32_tensors:
        if state[name].dtype != torch.float32:
            raise CheckpointError(f"{source}: {name} is {state[name].dtype}; the front-end buffers must be float32")
    bad = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad:
        raise CheckpointError(f"{source}: non-floating tensors: {', '.join(bad[:5])}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype=dtype).eval()
