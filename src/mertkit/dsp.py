"""Small signal-processing matrices shared by the stages (the classic baselines of `eval`, the
targets of `pretrain`), so each is defined once."""
from __future__ import annotations

import numpy as np


def dct_ii_orthonormal(n_input: int, n_output: int) -> np.ndarray:
    """[n_output, n_input] orthonormal DCT-II matrix (its first rows: a spectrum's envelope)."""
    k = np.arange(n_output)[:, None]
    n = np.arange(n_input)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_input)) * np.sqrt(2.0 / n_input)
    basis[0] /= np.sqrt(2.0)
    return basis
