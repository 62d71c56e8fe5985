"""Learning-rate transfer: the loss after K steps against the learning rate, for sizes along a path.

For every rule and every size n on the path L = n^p_L, M = n^p_M, D = n^p_D, ``learning_rate_sweep``
trains one network per base learning rate eta (the rule's raw rates are eta times its
learning-rate scalings) and records the loss at step K. The optimal eta of a size is the grid
point of least loss, refined by the vertex of the parabola through it and its two neighbours
in log eta. An optimum on the edge of the grid is flagged. A rule transfers its learning rate
when the optimum stays put as n grows: ``drift`` is the ratio of the largest to the smallest
optimum over the sizes, and ``drift_exponent`` the slope of log optimum against log n.

Under MLU the network converges to a limit as n grows, so its loss curve, and the optimum,
converge too. Under the standard parametrisation the raw rate does not scale with the size,
while the step that the output takes grows with it, so the optimal eta falls as n grows.
All learning rates of a size train together in one batch (``phase.diagnose`` without the
linearised model), one compiled function per size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from resnet_limits.config import ConfigError, check_positive_int, check_seed
from resnet_limits.parametrization import get_rule
from resnet_limits.phase import (
    DEFAULT_PATH,
    ProgressCallback,
    _check_path,
    _check_scales,
    diagnose,
    path_shape,
)
from resnet_limits.sweeps.fits import fit_slope
from resnet_limits.tasks import get_task
from resnet_limits.worker import worker_function

DEFAULT_RULES = ("mlu", "standard")
DEFAULT_SCALES = (4, 8, 16, 32, 64)
DEFAULT_STEPS = 10
# Seeds whose losses are averaged per learning rate. Near the largest stable learning rate the
# loss after K steps of one seed jumps up and down between neighbouring grid points.
DEFAULT_SEEDS = (0, 1, 2)


def default_learning_rates(low: float = 2.0**-12, high: float = 2.0**4, per_octave: int = 2) -> list[float]:
    """Return the log-spaced grid from ``low`` to ``high`` with ``per_octave`` points per factor 2."""
    count = round(math.log2(high / low) * per_octave) + 1
    return [float(value) for value in np.geomspace(low, high, count)]


def optimal_learning_rate(learning_rates: Sequence[float], losses: Sequence[float]) -> dict:
    """Return the learning rate of least loss, refined in log eta by a parabola through three grid points.

    Diverged runs have a NaN loss and are skipped. The result has ``learning_rate``,
    ``grid_learning_rate`` (the best grid point), ``loss`` and ``at_edge``, True when the best
    grid point is the smallest or largest of the grid, so that the optimum may lie outside it.
    A best point next to a diverged run is kept as it is, because the loss has no finite value
    beyond it. Every value is NaN (and ``at_edge`` True) when no run is finite.
    """
    grid = sorted(float(rate) for rate in learning_rates)
    pairs = sorted((float(rate), float(loss)) for rate, loss in zip(learning_rates, losses) if math.isfinite(loss))
    if not pairs:
        return {"learning_rate": math.nan, "grid_learning_rate": math.nan, "loss": math.nan, "at_edge": True}
    index = min(range(len(pairs)), key=lambda i: pairs[i][1])
    best_rate, best_loss = pairs[index]
    refined = best_rate
    if 0 < index < len(pairs) - 1:
        x = np.log([pairs[index - 1][0], best_rate, pairs[index + 1][0]])
        y = np.array([pairs[index - 1][1], best_loss, pairs[index + 1][1]])
        curvature, slope, _ = np.polyfit(x, y, 2)
        if curvature > 0:
            vertex = -slope / (2 * curvature)
            refined = float(np.exp(np.clip(vertex, x[0], x[2])))
    return {
        "learning_rate": refined,
        "grid_learning_rate": best_rate,
        "loss": best_loss,
        "at_edge": best_rate in (grid[0], grid[-1]),
    }


@worker_function
def learning_rate_sweep(
    *,
    task: str = "paper-tanh",
    rules: Sequence[str] = DEFAULT_RULES,
    scales: Sequence[int] = DEFAULT_SCALES,
    path: Sequence[float] = DEFAULT_PATH,
    learning_rates: Sequence[float] | None = None,
    steps: int = DEFAULT_STEPS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    dtype: str = "float32",
    progress: ProgressCallback | None = None,
) -> dict:
    """Train every rule at every size and base learning rate; return the loss curves and their optima.

    ``learning_rates`` defaults to ``default_learning_rates()``, 2^-12 to 2^4 in steps of
    sqrt(2). Returns a dict of plain values:

    * ``curves``: a DataFrame with one row per rule, size and learning rate: ``rule``, ``n``,
      ``L``, ``M``, ``D``, ``learning_rate``, ``loss`` (at step K, the mean over ``seeds``, NaN
      when any seed diverged), ``loss_initial`` and ``diverged_seeds``;
    * ``optima``: one row per rule and size with the ``optimal_learning_rate`` fields;
    * ``drift``: one row per rule: ``drift`` (largest over smallest optimum), ``drift_exponent``
      (slope of log optimum against log n) and ``optima_at_edge`` (how many optima are on the
      grid's edge, which makes the drift a lower bound);
    * ``steps``, ``path``, ``scales`` and ``learning_rates``.

    ``progress(stage, done, total)`` is called after every size and seed.
    """
    path = _check_path(path)
    scales = _check_scales(scales)
    check_positive_int("steps", steps, "steps")
    seeds = sorted({check_seed(seed, "seeds") for seed in seeds})
    if not seeds:
        raise ConfigError("seeds must contain at least one seed, such as [0, 1, 2]")
    task_data = get_task(task)
    rule_objects = [get_rule(name) for name in dict.fromkeys(rules)]
    if not rule_objects:
        raise ConfigError("rules must name at least one parametrisation, such as ['mlu', 'standard']")
    rates = default_learning_rates() if learning_rates is None else sorted({float(rate) for rate in learning_rates})
    if len(rates) < 3 or not all(math.isfinite(rate) and rate > 0 for rate in rates):
        raise ConfigError(f"learning_rates must contain at least 3 positive finite values, got {list(rates)!r}")

    runs = []
    total = len(scales) * len(seeds)
    for index, (n, seed) in enumerate((n, seed) for n in scales for seed in seeds):
        L, M, D = path_shape(n, path)
        settings = [(rule, rate) for rule in rule_objects for rate in rates]
        for row in diagnose(settings, task_data, L, M, D, steps=steps, seed=seed, dtype=dtype, linearised=False):
            runs.append({
                "rule": row["rule"],
                "n": n,
                "L": L,
                "M": M,
                "D": D,
                "learning_rate": row["learning_rate"],
                "seed": seed,
                "loss": row["loss_final"],
                "loss_initial": row["loss_initial"],
                "diverged": row["diverged_at"] is not None,
            })
        if progress is not None:
            progress("training", index + 1, total)
    # The mean over seeds is NaN when any seed diverged, so such a learning rate is never optimal.
    curves = (
        pd.DataFrame(runs)
        .groupby(["rule", "n", "L", "M", "D", "learning_rate"], sort=False, as_index=False)
        .agg(loss=("loss", lambda values: float(np.mean(values))), loss_initial=("loss_initial", "mean"),
             diverged_seeds=("diverged", "sum"))
    )

    optima = []
    for (rule, n), part in curves.groupby(["rule", "n"], sort=False):
        optima.append({"rule": rule, "n": n, **optimal_learning_rate(part["learning_rate"], part["loss"])})
    optima = pd.DataFrame(optima)
    return {
        "curves": curves,
        "optima": optima,
        "drift": drift_table(optima),
        "steps": steps,
        "path": list(path),
        "scales": scales,
        "seeds": seeds,
        "learning_rates": rates,
    }


def drift_table(optima: pd.DataFrame) -> pd.DataFrame:
    """Return, per rule, how far the optimal learning rate moves over the sizes of ``optima``."""
    rows = []
    for rule, part in optima.groupby("rule", sort=False):
        finite = part[np.isfinite(part["learning_rate"])]
        if len(finite) < 2:
            rows.append({"rule": rule, "drift": math.nan, "drift_exponent": math.nan,
                         "optima_at_edge": int(part["at_edge"].sum())})
            continue
        rows.append({
            "rule": rule,
            "drift": float(finite["learning_rate"].max() / finite["learning_rate"].min()),
            "drift_exponent": fit_slope(finite["n"], finite["learning_rate"]).slope,
            "optima_at_edge": int(part["at_edge"].sum()),
        })
    return pd.DataFrame(rows)
