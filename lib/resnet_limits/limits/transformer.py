"""The embedding-span limit of the MLU Transformer: infinitely many heads and units per layer.

An attention head is a block of depth two: inner weights W_Q, W_K, W_V read the stream through
projections w^T h / D, and the outer weight W_O writes a combination of its columns back. The
argument of ``limits.mean_ode`` therefore carries over unchanged. Every forward vector h(s, x_t)
and backward vector b(s, x_t) stays in the span of E = [W_E, W_U], a head acts only through the
Gaussian projections of its rows on that span, and the limit L, H, M -> infinity is the same
Transformer acting on coefficients a in R^k (k = rank(E) <= r = d_in + d_out) with metric 1,
heads and units drawn N(0, I_k) row by row.

The problems (``SpanProblem``, fixed-D or large-D) and the maps back to R^D are those of
``limits.mean_ode``. The expectation over heads and units is a Monte Carlo average: each of L'
depth points has M' heads and M' perceptron units. They are trained by the same gradient
descent as the finite network, with the raw step eta L' M' / alpha^2 for both groups. Heads come
in antithetic pairs (W_Q, W_K, W_V, W_O) and (W_Q, W_K, W_V, -W_O), and units as in
``antithetic_units``, so the drift at initialisation is exactly zero.

NOTE: the simulation is a plain Euler scheme in depth with one particle set. Unlike the
perceptron limit of ``limits.extrapolation`` it has no Richardson extrapolation in L' and no
estimate of its own error; its error is about 1/L' + sqrt(k / (L' M')).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from resnet_limits.config import LimitSettings, jax_dtype
from resnet_limits.limits.mean_ode import SpanProblem, antithetic_units
from resnet_limits.models.transformer import MLUTransformer, initial_heads
from resnet_limits.tasks import Task
from resnet_limits.training import Trajectory, train


def antithetic_heads(
    key: jax.Array, settings: LimitSettings, span_dim: int, key_dim: int, value_dim: int, dtype
) -> dict[str, jax.Array]:
    """Draw M' heads with N(0, 1) entries at L' depth points, as M'/2 pairs differing in the sign of W_O."""
    half_heads = settings.particles // 2
    half = initial_heads(key, settings.depth_points, span_dim, half_heads, key_dim, value_dim, 1.0, dtype)
    heads = {name: jnp.concatenate([array, array], axis=1) for name, array in half.items()}
    heads["w_output"] = jnp.concatenate([half["w_output"], -half["w_output"]], axis=1)
    return heads


def transformer_particle_system(
    problem: SpanProblem,
    settings: LimitSettings,
    *,
    alpha: float,
    activation: str,
    key_dim: int,
    value_dim: int,
    dtype: str = "float32",
) -> MLUTransformer:
    """Build the particle Transformer (metric 1, k-dimensional stream) that simulates ``problem``.

    It has L' layers of M' heads and M' perceptron units, with key-query dimension d_k and value
    dimension d_v as the finite network.
    """
    settings.validate()
    array_dtype = jax_dtype(dtype)
    key_heads, key_units = jax.random.split(jax.random.key(settings.seed))
    weights = antithetic_heads(key_heads, settings, problem.span_dim, key_dim, value_dim, array_dtype)
    weights["u"], weights["v"] = antithetic_units(key_units, settings, problem.span_dim, array_dtype)
    return MLUTransformer(
        jnp.asarray(problem.input_KxDin, array_dtype),
        jnp.asarray(problem.readout_KxDout, array_dtype),
        depth=settings.depth_points,
        heads=settings.particles,
        width=settings.particles,
        key_dim=key_dim,
        value_dim=value_dim,
        alpha=alpha,
        activation=activation,
        metric=1.0,
        weights=weights,
    )


def simulate_transformer_limit(
    problem: SpanProblem,
    task: Task,
    settings: LimitSettings,
    *,
    steps: int,
    learning_rate: float,
    alpha: float,
    activation: str,
    key_dim: int,
    value_dim: int,
    dtype: str = "float32",
) -> Trajectory:
    """Return the limit's trajectory: loss, f and the coefficients a(1) (k x N x T, in ``h_KxDxN``) per step."""
    system = transformer_particle_system(
        problem,
        settings,
        alpha=alpha,
        activation=activation,
        key_dim=key_dim,
        value_dim=value_dim,
        dtype=dtype,
    )
    return train(
        system,
        task.x_DinxN,
        task.y_DoutxN,
        steps=steps,
        learning_rate=learning_rate,
        loss_scale=task.loss_scale,
    )
