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

``simulate_transformer_limit`` is one plain Euler simulation, whose error is about
1/L' + sqrt(k / (L' M')). ``estimate_transformer_limit`` extrapolates in depth as
``limits.extrapolation`` does for the ResNet: three levels L', 2 L', 4 L' share one set of heads
and units (a coarser level pools the heads of 2 or 4 neighbouring depth points of the finest),
two independent replicas give the Monte Carlo error, and the result carries an estimate of its
own error. Units are moment-matched per depth point as for the ResNet. Heads are not, because
the softmax makes the drift depend on more than their first two moments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from resnet_limits.config import LimitSettings, jax_dtype
from resnet_limits.limits.extrapolation import (
    LEVEL_FACTOR,
    LEVELS,
    LimitEstimate,
    coupled_level_units,
    estimate_limit,
    estimate_limit_events,
)
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


def coupled_level_heads(
    key: jax.Array, settings: LimitSettings, span_dim: int, key_dim: int, value_dim: int, dtype
) -> list[dict[str, jax.Array]]:
    """Return heads for levels L', 2 L', 4 L' that share one set of L' M' heads.

    The finest level has M' / 4 heads per depth point, and a coarser level pools the heads of 2 or
    4 neighbouring depth points of the finest. Each level's heads are antithetic pairs in W_O.
    """
    finest_depth = settings.depth_points * LEVEL_FACTOR
    half_heads = settings.particles // (2 * LEVEL_FACTOR)
    base = initial_heads(key, finest_depth, span_dim, half_heads, key_dim, value_dim, 1.0, dtype)
    levels = []
    for level in range(LEVELS):
        group = LEVEL_FACTOR // 2**level  # neighbouring finest points pooled per depth point
        depth = finest_depth // group
        # Depth points and heads are adjacent axes, so pooling is a reshape.
        half = {name: array.reshape(depth, group * half_heads, *array.shape[2:]) for name, array in base.items()}
        heads = {name: jnp.concatenate([array, array], axis=1) for name, array in half.items()}
        heads["w_output"] = jnp.concatenate([half["w_output"], -half["w_output"]], axis=1)
        levels.append(heads)
    return levels


def _particle_transformer(problem, weights, *, alpha, activation, dtype) -> MLUTransformer:
    array_dtype = jax_dtype(dtype)
    depth, heads, key_dim, _ = weights["w_query"].shape
    return MLUTransformer(
        jnp.asarray(problem.input_KxDin, array_dtype),
        jnp.asarray(problem.readout_KxDout, array_dtype),
        depth=depth,
        heads=heads,
        width=weights["u"].shape[2],
        key_dim=key_dim,
        value_dim=weights["w_value"].shape[2],
        alpha=alpha,
        activation=activation,
        metric=1.0,
        weights=weights,
    )


def transformer_level_systems(
    problem: SpanProblem,
    settings: LimitSettings,
    *,
    alpha: float,
    activation: str,
    dtype: str,
    key_dim: int,
    value_dim: int,
):
    """Yield (L', particle Transformer) for the three coupled levels of one replica.

    Heads are coupled by ``coupled_level_heads`` and units by ``coupled_level_units``, from
    independent keys derived from ``settings.seed``. Every level has L' M' heads and L' M' units.
    """
    array_dtype = jax_dtype(dtype)
    key_heads, key_units = jax.random.split(jax.random.key(settings.seed))
    heads = coupled_level_heads(key_heads, settings, problem.span_dim, key_dim, value_dim, array_dtype)
    units = coupled_level_units(key_units, settings, problem.span_dim, array_dtype)
    for level, (level_heads, (u, v)) in enumerate(zip(heads, units)):
        weights = dict(level_heads, u=u, v=v)
        yield settings.depth_points * 2**level, _particle_transformer(
            problem, weights, alpha=alpha, activation=activation, dtype=dtype
        )


def estimate_transformer_limit_events(
    problem: SpanProblem, task: Task, settings: LimitSettings = LimitSettings(), *, key_dim: int, value_dim: int,
    **kwargs,
):
    """Yield a LevelEvent per attempt and level, and return the LimitEstimate of the Transformer limit.

    The keyword arguments are those of ``limits.extrapolation.estimate_limit_events``.
    """
    level_systems = functools.partial(transformer_level_systems, key_dim=key_dim, value_dim=value_dim)
    return (yield from estimate_limit_events(problem, task, settings, level_systems=level_systems, **kwargs))


def estimate_transformer_limit(
    problem: SpanProblem, task: Task, settings: LimitSettings = LimitSettings(), *, key_dim: int, value_dim: int,
    **kwargs,
) -> LimitEstimate:
    """Extrapolate the Transformer limit in depth and estimate its error, as ``estimate_limit`` does.

    ``settings`` gives the coarsest L' and the M' heads and units per depth point there; the
    other keyword arguments are those of ``limits.extrapolation.estimate_limit``.
    """
    level_systems = functools.partial(transformer_level_systems, key_dim=key_dim, value_dim=value_dim)
    return estimate_limit(problem, task, settings, level_systems=level_systems, **kwargs)


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
