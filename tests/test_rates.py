"""Convergence rates of finite networks to the fixed-D Mean ODE, fitted from sweeps.

The embedding error of a network against the fixed-D Mean ODE is about 1/L + sqrt(D / (L M)).
To isolate the width term, the reference here is the Mean ODE discretised with the network's own
depth (L' = L depth points, many particles): both then share the Euler bias in s, and what is
left is the fluctuation of the L M finite units around their mean. Seeds are fixed and the
embeddings are coupled across D, so each fitted slope is reproducible.
"""

import functools

import jax
import numpy as np
import pytest

from resnet_limits import limits, metrics
from resnet_limits.config import LimitSettings
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, paper_tanh
from resnet_limits.training import train

pytestmark = pytest.mark.slow

TASK = paper_tanh()
SEEDS = (0, 1, 2)
TOTAL_PARTICLES = 2**19  # L' M' of every reference: Monte Carlo error about sqrt(10 / 2^19) = 0.004


@functools.cache
def _mean_ode_stream(dim: int, depth: int, seed: int) -> np.ndarray:
    """H(1) at the last step of the fixed-D Mean ODE with ``depth`` points, mapped to R^D."""
    w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), TASK, dim)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    settings = LimitSettings(depth, TOTAL_PARTICLES // depth)
    trajectory = limits.simulate_limit(
        problem, TASK, settings, steps=TASK.steps, learning_rate=1.0, alpha=1.0, activation="tanh"
    )
    return limits.to_stream(trajectory.h_KxDxN[-1:], basis_DxK)[0]


def _embedding_error(dim: int, depth: int, width: int) -> float:
    """Mean over seeds of the embedding error at the last step."""
    errors = []
    for seed in SEEDS:
        w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), TASK, dim)
        model = MLUResNet(w_embed, w_unembed, depth=depth, width=width, key=jax.random.key(100 + seed))
        trajectory = train(
            model, TASK.x_DinxN, TASK.y_DoutxN, steps=TASK.steps, learning_rate=1.0, loss_scale=TASK.loss_scale
        )
        errors.append(metrics.embedding_error(trajectory.h_KxDxN[-1], _mean_ode_stream(dim, depth, seed)))
    return float(np.mean(errors))


def _slope(sizes, errors) -> float:
    return float(np.polyfit(np.log(sizes), np.log(errors), 1)[0])


def test_error_slope_in_width():
    # sqrt(D / (L M)) at D = 16, L = 32: measured slope -0.48.
    widths = (16, 64, 256)
    errors = [_embedding_error(16, 32, width) for width in widths]
    assert -0.6 < _slope(widths, errors) < -0.4


def test_error_slope_in_dimension():
    # sqrt(D / (L M)) at L M = 32 x 256: measured slope +0.51.
    dims = (16, 64, 256)
    errors = [_embedding_error(dim, 32, 256) for dim in dims]
    assert 0.4 < _slope(dims, errors) < 0.6


def test_depth_and_width_interchangeable():
    # L M = 8192 at D = 64 split three ways: measured errors 0.063, 0.061 and 0.062.
    errors = [_embedding_error(64, depth, width) for depth, width in ((8, 1024), (32, 256), (128, 64))]
    assert max(errors) / min(errors) < 1.2
