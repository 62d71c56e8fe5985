"""Errors of a finite network against a limit, per step.

The embedding error at step k is the RMS over the D coordinates and N samples of H_L(finite)
minus H_L(reference), both built on the network's own W_E and W_U. The output error is the RMS
over the d_out x N entries of f(finite) minus f(reference).
"""

from __future__ import annotations

import numpy as np


def rms(values: np.ndarray) -> float:
    """Return the root mean square of all entries."""
    return float(np.sqrt(np.mean(np.square(values))))


def embedding_error(h_DxN: np.ndarray, h_reference_DxN: np.ndarray) -> float:
    return rms(np.asarray(h_DxN, np.float64) - np.asarray(h_reference_DxN, np.float64))


def output_error(f_DoutxN: np.ndarray, f_reference_DoutxN: np.ndarray) -> float:
    return rms(np.asarray(f_DoutxN, np.float64) - np.asarray(f_reference_DoutxN, np.float64))
