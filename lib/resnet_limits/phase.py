"""Diagnostics of training under any rule, the regimes they define, and the phase diagram.

Every run of ``diagnose`` trains a network of shape (L, M, D) under a rule of
``resnet_limits.parametrization`` for K steps of gradient descent, and trains two linear
models from the same initialisation by the same gradient descent:

* the linearised model, the first-order Taylor expansion of the network in all its weights
  around initialisation, f(U_0, V_0) + J (U - U_0, V - V_0), built with ``jax.linearize``;
* the block-linear model, in which every block is linear in its own weights around (U_0, V_0)
  while the stream between blocks stays that of the model itself:
  H_l = H_{l-1} + m_res (V_l sigma(P0_l) + V0_l (sigma'(P0_l) * m_in (U_l - U0_l)^T H_{l-1}))
  with P0_l = m_in U0_l^T H_{l-1}. This is the linearly parametrised ("lazy") ODE that
  Chizat (arXiv 2509.10167) obtains as alpha -> infinity.

It records:

* ``unit_movement``: how far the hidden units move: the RMS over l, j, n of
  m_in (U_l(K) - U_l(0))^T H_{l-1}(0), the change of what unit j computes from its own
  weights on the initial stream, relative to the RMS of P_l(0). It is gauge-free. The whole
  change of P_l also contains the change of the stream H_{l-1}, which is O(1) whenever the
  output moves, so it is not used.
* ``output_movement``: RMS of f(K) - f(0), how far training moves the output.
* ``linear_distance`` and ``block_linear_distance``: RMS of f(K) minus the output of each
  linear model at step K, and ``relative_*`` the same divided by ``output_movement``.
* ``initial_fluctuation``: RMS of H_L(0) - H_0 relative to the RMS of H_0, the size of the
  random contribution of the residual branches at initialisation.

As alpha grows under MLU (raw rate L M D / alpha^2) the block-linear model is approached and
the Taylor linearisation is not, because the O(1) change of the stream reaches later blocks
through their O(1) weight updates. At L = 16, M = 1024, D = 16 on paper-tanh after 5 steps,
for alpha = 2, 4, 8, 16, the relative block-linear distance was 5.4e-3, 1.6e-3, 5.3e-4,
2.0e-4 (slope -1.58), the unit movement fell with slope -0.98, and the relative Taylor
distance was 0.028 to 0.039 (slope +0.16); ``tests/test_phase.py`` checks these slopes.

Regimes. Along a scaling path L = n^p_L, M = n^p_M, D = n^p_D, a setting (a rule and a base
learning rate) is run at a few sizes n, and the slope of log quantity against log n is fitted
for each diagnostic (its exponent). With the band b = EXPONENT_BAND (0.25), the first rule
that applies gives the regime:

1. unstable: a run diverged at some size (the loss left the floating-point range or grew a
   millionfold, as in ``training.DivergenceCheck``), or the output or unit movement grows
   (exponent > b);
2. noise-dominated: the initial fluctuation grows (exponent > b), so the random
   initialisation, not training, dominates the stream of large networks;
3. degenerate: the output movement shrinks (exponent < -b), so large networks do not learn
   in K steps;
4. lazy: the relative distance to the block-linear model shrinks (exponent < -b), so large
   networks train as their linearly parametrised ODE;
5. maximal local updates: none of the above. Units and output move by O(1) and the network
   stays a distance O(1) from its block-linear model.

The phase diagram is a grid over two exponents on the path: the residual scale alpha = n^gamma
(branches n^gamma / (L M) on units of variance D, as in the MLU model) and the raw learning
rate eta n^lambda L M D of both U and V. MLU is (0, 0), MLU with alpha = n^gamma and rate
L M D / alpha^2 is the line lambda = -2 gamma, and every rule of ``parametrization.RULES`` is
placed at its ``phase_point`` and run itself, so that a rule off the plane (the standard rule,
with its larger readout) shows its own measured regime.

All runs of one shape are trained together, mapped with ``jax.vmap`` over their settings, so
a diagram compiles one function per size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from resnet_limits.config import ConfigError, check_positive_float, check_positive_int, check_seed, jax_dtype
from resnet_limits.models import activation_function
from resnet_limits.parametrization import RULES, Parametrization, Scaling, forward_streams, get_rule
from resnet_limits.sweeps.fits import fit_slope
from resnet_limits.tasks import Task, coupled_embeddings, get_task
from resnet_limits.training import DIVERGENCE_FACTOR, mean_squared_loss
from resnet_limits.worker import worker_function

REGIMES = ("maximal local updates", "lazy", "noise-dominated", "unstable", "degenerate")

# Half-width of the band of exponents that count as "stays of order one" in the regime criteria.
EXPONENT_BAND = 0.25

DIAGNOSTIC_COLUMNS = (
    "unit_movement",
    "output_movement",
    "linear_distance",
    "relative_linear_distance",
    "block_linear_distance",
    "relative_block_linear_distance",
    "initial_fluctuation",
)

DEFAULT_PATH = (1.0, 1.0, 1.0)
DEFAULT_SCALES = (12, 24, 48)
DEFAULT_RESIDUAL_EXPONENTS = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_RATE_EXPONENTS = (-1.5, -1.0, -0.5, 0.0, 0.5)
DEFAULT_STEPS = 5
# Seeds whose diagnostics are averaged per size. One seed is not enough at n = 8 or 16: the
# output movement of MLU at step 5 on paper-tanh was 0.16 for seed 0 and 0.72 to 1.04 for
# seeds 1 to 3 at L = M = D = 8, against 0.40 to 0.50 for every seed at n = 128.
DEFAULT_SEEDS = (0, 1, 2)

ProgressCallback = Callable[[str, int, int], None]


# -- running a batch of settings at one shape ------------------------------------------------------


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _block_linear_output(units, units0, w_embed, w_unembed, x, scales, activation):
    """Return f of the network whose every block is linear in its own weights around (U_0, V_0).

    Block l computes H_l = H_{l-1} + m_res (V_l sigma(P0) + V0_l (sigma'(P0) * m_in dU_l^T H_{l-1})),
    with P0 = m_in U0_l^T H_{l-1} on the stream H_{l-1} of this model itself.
    """
    sigma = activation_function(activation)
    m_in, m_res, m_out = scales

    def block(h_DxN, weights):
        u_DxM, v_DxM, u0_DxM, v0_DxM = weights
        p0_MxN = m_in * (u0_DxM.T @ h_DxN)
        dp_MxN = m_in * ((u_DxM - u0_DxM).T @ h_DxN)
        activity_MxN, tangent_MxN = jax.jvp(sigma, (p0_MxN,), (dp_MxN,))
        return h_DxN + m_res * (v_DxM @ activity_MxN + v0_DxM @ tangent_MxN), None

    h_DxN, _ = jax.lax.scan(block, w_embed @ x, (*units, *units0))
    return m_out * (w_unembed.T @ h_DxN)


@partial(jax.jit, static_argnames=("activation", "steps", "linearised"))
def _train_batch(z_u, z_v, w_embed, w_unembed, x, y, loss_scale, settings_Bx7, *, activation, steps, linearised):
    """Train every setting (one row of ``settings_Bx7``) from the standard draws (z_u, z_v).

    Returns a dict of arrays with a leading batch axis: the loss at every step 0..K and, when
    ``linearised``, the losses of the two linear models, and the diagnostics of the module docstring.
    """

    def run(setting):
        m_in, m_res, m_out, sd_u, sd_v, rate_u, rate_v = setting
        scales = (m_in, m_res, m_out)
        units0 = (sd_u * z_u, sd_v * z_v)

        def forward(units):
            return forward_streams(*units, w_embed, w_unembed, x, scales, activation)

        def descend(output_fn):
            """Run K gradient steps of the loss of ``output_fn``; return the losses 0..K and the last units."""

            def loss_fn(units):
                return mean_squared_loss(output_fn(units), y, loss_scale)

            def step(units, _):
                loss, (grad_u, grad_v) = jax.value_and_grad(loss_fn)(units)
                return (units[0] - rate_u * grad_u, units[1] - rate_v * grad_v), loss

            units, losses = jax.lax.scan(step, units0, None, length=steps)
            return jnp.concatenate([losses, loss_fn(units)[None]]), units

        f0, h0_SxDxN, p0_LxMxN = forward(units0)
        losses, units = descend(lambda units: forward(units)[0])
        f = forward(units)[0]
        # The change of every unit's pre-activation from its own weights, on the initial stream.
        dp_LxMxN = m_in * jnp.einsum("ldm,ldn->lmn", units[0] - units0[0], h0_SxDxN[:-1])
        stream_input = h0_SxDxN[0]
        result = {
            "losses": losses,
            "unit_movement": _rms(dp_LxMxN) / _rms(p0_LxMxN),
            "output_movement": _rms(f - f0),
            "initial_fluctuation": _rms(h0_SxDxN[-1] - stream_input) / _rms(stream_input),
        }
        if linearised:
            f_init, jvp = jax.linearize(lambda units: forward(units)[0], units0)

            def taylor_output(units):
                return f_init + jvp(jax.tree.map(jnp.subtract, units, units0))

            def block_output(units):
                return _block_linear_output(units, units0, w_embed, w_unembed, x, scales, activation)

            result["linear_losses"], linear_units = descend(taylor_output)
            result["linear_distance"] = _rms(f - taylor_output(linear_units))
            result["block_linear_losses"], block_units = descend(block_output)
            result["block_linear_distance"] = _rms(f - block_output(block_units))
        return result

    return jax.vmap(run)(settings_Bx7)


def rule_settings(rule: Parametrization, L: int, M: int, D: int, learning_rate: float) -> list[float]:
    """Return one row of the batched trainer: the three multipliers, the two standard deviations, the two raw rates."""
    values = rule.values(L, M, D)
    return [
        values["input_multiplier"],
        values["residual_multiplier"],
        values["output_multiplier"],
        math.sqrt(values["u_variance"]),
        math.sqrt(values["v_variance"]),
        learning_rate * values["u_learning_rate"],
        learning_rate * values["v_learning_rate"],
    ]


def _diverged_at(losses: np.ndarray, zero_output_loss: float) -> int | None:
    """Return the first step whose loss is not finite or exceeds the level of ``training.DivergenceCheck``."""
    level = DIVERGENCE_FACTOR * max(zero_output_loss, np.finfo(np.float32).tiny)
    for step, loss in enumerate(losses):
        if not np.isfinite(loss) or loss > level:
            return step
        if step == 0:
            level = max(level, DIVERGENCE_FACTOR * float(loss))
    return None


def diagnose(
    runs: Sequence[tuple[Parametrization, float]],
    task: Task | str,
    L: int,
    M: int,
    D: int,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    dtype: str = "float32",
    linearised: bool = True,
) -> list[dict]:
    """Train every (rule, learning rate) of ``runs`` at shape (L, M, D) and return one dict of diagnostics per run.

    The embeddings and the standard Gaussian unit draws are those of ``experiment.Comparison``
    for the same seed, scaled per rule. A dict contains the rule's name, the shape, the learning
    rate, ``loss_initial`` and ``loss_final`` (steps 0 and K) and ``diverged_at`` (the first
    step that diverged, or None). It also contains the same for each linear model
    (``linear_diverged_at``, ``block_linear_diverged_at``) and the diagnostics of the module
    docstring, which are NaN for a run that diverged. With ``linearised`` False the two linear models are not trained
    and their distances are NaN.
    """
    task = get_task(task) if isinstance(task, str) else task
    if task.num_tokens is not None:
        raise ConfigError(f"task {task.name!r} is a sequence task; the diagnostics train ResNets on "
                          "paper-tanh or paper-linear")
    check_positive_int("steps", steps, "steps")
    for name, value in (("L", L), ("M", M), ("D", D)):
        check_positive_int(name, value, name)
    if not runs:
        raise ConfigError("diagnose needs at least one (rule, learning rate) pair")
    array_dtype = jax_dtype(dtype)
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, D, array_dtype)
    key_u, key_v = jax.random.split(key_units)
    z_u = jax.random.normal(key_u, (L, D, M), jnp.float32).astype(array_dtype)
    z_v = jax.random.normal(key_v, (L, D, M), jnp.float32).astype(array_dtype)
    settings = np.array([rule_settings(rule, L, M, D, rate) for rule, rate in runs], np.float64)
    x = jnp.asarray(task.x_DinxN, array_dtype)
    y = jnp.asarray(task.y_DoutxN, array_dtype)
    loss_scale = jnp.asarray(task.loss_scale, array_dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        outputs = _train_batch(
            z_u, z_v, w_embed, w_unembed, x, y, loss_scale, jnp.asarray(settings, array_dtype),
            activation=task.activation, steps=steps, linearised=linearised,
        )
    outputs = {name: np.asarray(value, np.float64) for name, value in outputs.items()}
    zero_output_loss = float(mean_squared_loss(np.zeros_like(task.y_DoutxN), task.y_DoutxN, task.loss_scale))

    rows = []
    for index, (rule, rate) in enumerate(runs):
        losses = outputs["losses"][index]
        diverged_at = _diverged_at(losses, zero_output_loss)
        row = {
            "rule": rule.name,
            "L": int(L),
            "M": int(M),
            "D": int(D),
            "learning_rate": float(rate),
            "loss_initial": float(losses[0]),
            "loss_final": float(losses[-1]) if diverged_at is None else math.nan,
            "diverged_at": diverged_at,
        }
        for name in ("unit_movement", "output_movement", "initial_fluctuation"):
            row[name] = float(outputs[name][index])
        for model in ("linear", "block_linear"):
            if linearised:
                row[f"{model}_distance"] = float(outputs[f"{model}_distance"][index])
                row[f"{model}_diverged_at"] = _diverged_at(outputs[f"{model}_losses"][index], zero_output_loss)
            else:
                row[f"{model}_distance"] = math.nan
                row[f"{model}_diverged_at"] = None
            with np.errstate(divide="ignore", invalid="ignore"):
                row[f"relative_{model}_distance"] = float(
                    np.float64(row[f"{model}_distance"]) / row["output_movement"]
                )
        if diverged_at is not None:
            for name in DIAGNOSTIC_COLUMNS:
                row[name] = math.nan
        rows.append(row)
    return rows


# -- regimes --------------------------------------------------------------------------------------


def path_scale(L: int, M: int, D: int, path: Sequence[float]) -> float:
    """Return n with L M D = n^(p_L + p_M + p_D): the scale of a shape on the path."""
    return float((L * M * D) ** (1.0 / sum(path)))


def path_shape(n: int, path: Sequence[float]) -> tuple[int, int, int]:
    """Return (L, M, D) = (n^p_L, n^p_M, n^p_D), each rounded to the nearest integer and at least 1."""
    return tuple(max(1, round(n**p)) for p in path)


def fitted_exponents(rows: Sequence[dict], path: Sequence[float]) -> dict[str, float]:
    """Return the slope of log diagnostic against log n for each column of DIAGNOSTIC_COLUMNS.

    Rows of the same shape (several seeds) are averaged first. A column gets NaN unless at
    least two sizes have a finite positive mean.
    """
    exponents = {}
    for column in DIAGNOSTIC_COLUMNS:
        values_by_scale: dict[float, list[float]] = {}
        for row in rows:
            values_by_scale.setdefault(path_scale(row["L"], row["M"], row["D"], path), []).append(row[column])
        points = [(n, float(np.mean(values))) for n, values in sorted(values_by_scale.items())]
        points = [(n, value) for n, value in points if math.isfinite(value) and value > 0]
        if len(points) < 2:
            exponents[column] = math.nan
        else:
            exponents[column] = fit_slope([n for n, _ in points], [value for _, value in points]).slope
    return exponents


def classify(rows: Sequence[dict], path: Sequence[float], band: float = EXPONENT_BAND) -> tuple[str, str, dict]:
    """Return the regime of one setting run at several sizes, the criterion that decided it, and the exponents.

    ``rows`` are ``diagnose`` rows of the same setting at different sizes on ``path``, with any
    number of seeds per size. The criteria are those of the module docstring, checked in order.
    """
    exponents = fitted_exponents(rows, path)
    diverged = {(row["L"], row["M"], row["D"]) for row in rows if row["diverged_at"] is not None}
    if diverged:
        sizes = ", ".join(f"L={L} M={M} D={D}" for L, M, D in sorted(diverged))
        return "unstable", f"diverged at {sizes}", exponents
    for column in ("output_movement", "unit_movement"):
        if exponents[column] > band:
            return "unstable", f"{column} grows as n^{exponents[column]:.2f}", exponents
    if exponents["initial_fluctuation"] > band:
        return "noise-dominated", f"initial_fluctuation grows as n^{exponents['initial_fluctuation']:.2f}", exponents
    if exponents["output_movement"] < -band:
        return "degenerate", f"output_movement shrinks as n^{exponents['output_movement']:.2f}", exponents
    if exponents["relative_block_linear_distance"] < -band:
        rate = exponents["relative_block_linear_distance"]
        return "lazy", f"relative_block_linear_distance shrinks as n^{rate:.2f}", exponents
    return "maximal local updates", f"all exponents within +-{band:g}", exponents


# -- the phase diagram ----------------------------------------------------------------------------


def phase_cell_rule(residual_exponent: float, rate_exponent: float, path: Sequence[float] = DEFAULT_PATH) -> Parametrization:
    """Return the rule of one cell: MLU units with alpha = n^gamma and raw rate n^lambda L M D on ``path``.

    n^e is written as (L M D)^(e / (p_L + p_M + p_D)), which equals n^e on the path.
    """
    weight = 1.0 / sum(path)
    gamma = residual_exponent * weight
    lam = rate_exponent * weight
    rate = Scaling(1.0, L=1.0 + lam, M=1.0 + lam, D=1.0 + lam)
    return Parametrization(
        name=f"gamma={residual_exponent:g}, lambda={rate_exponent:g}",
        description="a cell of the phase diagram: MLU units, residual scale n^gamma, raw rate eta n^lambda L M D",
        input_multiplier=Scaling(1.0, D=-1.0),
        residual_multiplier=Scaling(1.0, L=gamma - 1.0, M=gamma - 1.0, D=gamma),
        output_multiplier=Scaling(1.0, D=-1.0),
        u_variance=Scaling(1.0, D=1.0),
        v_variance=Scaling(1.0, D=1.0),
        u_learning_rate=rate,
        v_learning_rate=rate,
    )


def _check_path(path: Sequence[float]) -> tuple[float, float, float]:
    if len(path) != 3:
        raise ConfigError(f"path must be three exponents (p_L, p_M, p_D), got {list(path)!r}")
    values = tuple(float(p) for p in path)
    if any(p < 0 or not math.isfinite(p) for p in values) or sum(values) <= 0:
        raise ConfigError(f"path exponents must be finite, non-negative and not all 0, got {list(path)!r}")
    return values


def _check_scales(scales: Sequence[int]) -> list[int]:
    values = sorted({check_positive_int("scale", n, "the sizes n") for n in scales})
    if len(values) < 2:
        raise ConfigError(f"fitting exponents needs at least two distinct sizes n, got {list(scales)!r}")
    return values


def _check_exponents(name: str, values: Sequence[float]) -> list[float]:
    result = [float(value) for value in values]
    if not result or not all(math.isfinite(value) for value in result):
        raise ConfigError(f"{name} must be a non-empty list of finite numbers, got {list(values)!r}")
    return sorted(set(result))


@worker_function
def phase_diagram(
    *,
    task: str = "paper-tanh",
    scales: Sequence[int] = DEFAULT_SCALES,
    path: Sequence[float] = DEFAULT_PATH,
    residual_exponents: Sequence[float] = DEFAULT_RESIDUAL_EXPONENTS,
    rate_exponents: Sequence[float] = DEFAULT_RATE_EXPONENTS,
    rules: Sequence[str] = tuple(RULES),
    steps: int = DEFAULT_STEPS,
    learning_rate: float | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    dtype: str = "float32",
    band: float = EXPONENT_BAND,
    progress: ProgressCallback | None = None,
) -> dict:
    """Measure the regime of every cell of the (residual exponent, rate exponent) grid and of every rule.

    Every cell and every rule in ``rules`` is trained at the shapes ``path_shape(n, path)`` for n
    in ``scales`` and every seed in ``seeds``, with base learning rate ``learning_rate`` (the task's eta by default). Returns
    a dict of plain values:

    * ``cells``: a DataFrame with one row per cell: ``residual_exponent``, ``rate_exponent``,
      ``regime``, ``reason`` and the fitted exponent of every diagnostic (``*_exponent``);
    * ``points``: the same per rule, with the rule's ``phase_point`` on the path;
    * ``runs``: every run's ``diagnose`` row, with ``setting`` (a cell's or a rule's name), n and
      the seed;
    * ``criteria``: the regime criteria as text, and ``band``, ``path`` and ``scales``.

    ``progress(stage, done, total)`` is called after every size and seed.
    """
    path = _check_path(path)
    scales = _check_scales(scales)
    residual_exponents = _check_exponents("residual_exponents", residual_exponents)
    rate_exponents = _check_exponents("rate_exponents", rate_exponents)
    check_positive_int("steps", steps, "steps")
    seeds = sorted({check_seed(seed, "seeds") for seed in seeds})
    if not seeds:
        raise ConfigError("seeds must contain at least one seed, such as [0, 1, 2]")
    task_data = get_task(task)
    learning_rate = task_data.learning_rate if learning_rate is None else learning_rate
    check_positive_float("learning_rate", learning_rate, "the learning rate", example=1.0)
    check_positive_float("band", band, "the exponent band", example=EXPONENT_BAND)
    rule_objects = [get_rule(name) for name in dict.fromkeys(rules)]
    cells = [(gamma, lam) for gamma in residual_exponents for lam in rate_exponents]
    settings = [(f"cell {gamma:g} {lam:g}", phase_cell_rule(gamma, lam, path)) for gamma, lam in cells]
    settings += [(rule.name, rule) for rule in rule_objects]

    runs = []
    total = len(scales) * len(seeds)
    for index, (n, seed) in enumerate((n, seed) for n in scales for seed in seeds):
        L, M, D = path_shape(n, path)
        rows = diagnose([(rule, learning_rate) for _, rule in settings], task_data, L, M, D,
                        steps=steps, seed=seed, dtype=dtype)
        for (setting, _), row in zip(settings, rows):
            runs.append({"setting": setting, "n": n, "seed": seed, **row})
        if progress is not None:
            progress("training", index + 1, total)

    by_setting: dict[str, list[dict]] = {}
    for row in runs:
        by_setting.setdefault(row["setting"], []).append(row)

    def summary(setting: str) -> dict:
        regime, reason, exponents = classify(by_setting[setting], path, band)
        return {"regime": regime, "reason": reason, **{f"{name}_exponent": value for name, value in exponents.items()}}

    cell_rows = [
        {"residual_exponent": gamma, "rate_exponent": lam, **summary(setting)}
        for (gamma, lam), (setting, _) in zip(cells, settings)
    ]
    point_rows = [{**rule.phase_point(path), **summary(rule.name)} for rule in rule_objects]
    return {
        "cells": pd.DataFrame(cell_rows),
        "points": pd.DataFrame(point_rows),
        "runs": pd.DataFrame(runs),
        "criteria": regime_criteria(band),
        "band": band,
        "path": list(path),
        "scales": scales,
        "seeds": seeds,
        "learning_rate": learning_rate,
        "steps": steps,
    }


def regime_criteria(band: float = EXPONENT_BAND) -> list[str]:
    """Return the regime criteria of the module docstring as sentences, in the order they are checked."""
    return [
        f"unstable: a run diverged, or the output or unit movement grows faster than n^{band:g}",
        f"noise-dominated: the initial fluctuation of the stream grows faster than n^{band:g}",
        f"degenerate: the output movement shrinks faster than n^-{band:g}, so large networks do not learn",
        f"lazy: the distance to the block-linear model, relative to the output movement, shrinks faster than n^-{band:g}",
        "maximal local updates: none of the above; units and output move by O(1)",
    ]
