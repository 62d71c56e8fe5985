"""Fits of sweep results: the constants of an error law, and per-axis slopes in log-log.

``fit_error_law`` fits error^2 = sum_i c_i^2 t_i(L, M, D)^2 with non-negative constants c_i, where
the t_i are the terms of a ``bounds.ErrorLaw``. For the embedding law without its depth term this
is error^2 = a^2 D / (L M) + b^2 / D, and ``include_depth=True`` adds c^2 / L^2. The residuals are
log(predicted) - log(measured), so every point weighs by its relative error whatever its size.
Every row counts as one point, so seeds are replicates.

Confidence intervals of the constants come from the Jacobian of the residuals at the optimum:
covariance s^2 (J^T J)^{-1} with s^2 the residual variance, and a Student t quantile with n - p
degrees of freedom. They are asymptotic intervals, which assume that the law is exact and that the scatter of log
errors is independent across points. A constant fitted at its bound 0 gets no interval.

``axis_slopes`` regresses log error on log size along one axis with the others fixed, with a
95 % interval from the ordinary least-squares standard error.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import optimize, stats

from resnet_limits import bounds
from resnet_limits.config import ConfigError

AXES = ("L", "M", "D")
CONFIDENCE = 0.95

# Columns that identify a run's task settings in a sweep frame.
SETTINGS_COLUMNS = ("task", "K", "learning_rate", "alpha", "activation", "dtype")


def error_column(kind: str, reference: str) -> str:
    """Return the frame column of ``kind`` ("embedding" or "output") against ``reference``
    ("limit" for the large-D limit, "mean_ode" for the fixed-D Mean ODE)."""
    if kind not in ("embedding", "output"):
        raise ConfigError(f"unknown error kind {kind!r}; choose embedding or output")
    if reference not in ("limit", "mean_ode"):
        raise ConfigError(f"unknown reference {reference!r}; choose limit or mean_ode")
    return f"{kind}_error_{reference}"


def law_named(name: str) -> bounds.ErrorLaw:
    """Return ``bounds.EMBEDDING_LAW`` or ``bounds.OUTPUT_LAW`` by name."""
    laws = {"embedding": bounds.EMBEDDING_LAW, "output": bounds.OUTPUT_LAW}
    if name not in laws:
        raise ConfigError(f"unknown error law {name!r}; choose embedding or output")
    return laws[name]


def select_step(frame: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Return the rows of one step of every configuration that reached it.

    ``step`` None takes each configuration's last step K, and keeps completed runs only, since a
    diverged run's last recorded step comes before K. Failed configurations have no steps.
    """
    rows = frame[frame["step"].notna()]
    if step is None:
        rows = rows[(rows["status"] == "completed") & (rows["step"] == rows["K"])]
    else:
        rows = rows[rows["step"] == step]
    return rows.reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class LawFit:
    """Fitted constants of an error law with their confidence intervals."""

    law: str
    terms: tuple[bounds.BoundTerm, ...]
    constants: tuple[float, ...]
    ci_low: tuple[float, ...]  # NaN where no interval could be computed
    ci_high: tuple[float, ...]
    residual_std: float  # standard deviation of log(predicted / measured)
    num_points: int

    def to_error_law(self) -> bounds.ErrorLaw:
        """Return the fitted law, whose ``bound`` and ``predict`` use the fitted constants."""
        return bounds.ErrorLaw(f"{self.law} (fitted)", self.terms, self.constants)

    def to_dict(self) -> dict:
        return {
            "law": self.law,
            "num_points": self.num_points,
            "residual_std_log": self.residual_std,
            "confidence": CONFIDENCE,
            "constants": [
                {"term": term.name, "formula": term.formula, "value": value,
                 "ci_low": _json_float(low), "ci_high": _json_float(high)}
                for term, value, low, high in zip(self.terms, self.constants, self.ci_low, self.ci_high)
            ],
        }


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _clean(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    for name in (*AXES, column):
        if name not in frame.columns:
            raise ConfigError(f"the frame has no column {name!r}; it needs L, M, D and {column}")
    values = frame[[*AXES, column]].astype(float)
    return values[np.isfinite(values[column]) & (values[column] > 0)]


def fit_error_law(
    frame: pd.DataFrame,
    column: str,
    law: bounds.ErrorLaw = bounds.EMBEDDING_LAW,
    *,
    include_depth: bool = False,
) -> LawFit:
    """Fit error^2 = sum c_i^2 t_i^2 over the terms of ``law`` to ``frame[column]``; see the module.

    Without ``include_depth`` the law's depth term 1/L is left out. Raises ConfigError when there
    are no more points than constants.
    """
    terms = tuple(term for term in law.terms if include_depth or term.name != "depth")
    data = _clean(frame, column)
    num_points, num_constants = len(data), len(terms)
    if num_points <= num_constants:
        raise ConfigError(
            f"fitting {num_constants} constants needs more than {num_constants} points with a positive "
            f"{column}, got {num_points}; sweep more shapes or seeds"
        )
    L, M, D = (data[axis].to_numpy() for axis in AXES)
    error = data[column].to_numpy()
    squares_NxT = np.stack([term.value(L, M, D) ** 2 for term in terms], axis=1)

    # Start from the linear fit of the squared constants to error^2, each point relative to its own
    # size, then refine in log error.
    start_squares, _ = optimize.nnls(squares_NxT / error[:, None] ** 2, np.ones(num_points))
    start = np.sqrt(np.maximum(start_squares, 1e-12))

    def residuals(constants):
        return 0.5 * np.log(squares_NxT @ constants**2) - np.log(error)

    def jacobian(constants):
        return squares_NxT * constants / (squares_NxT @ constants**2)[:, None]

    result = optimize.least_squares(residuals, start, jac=jacobian, bounds=(0, np.inf), method="trf",
                                    x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    # A constant at its bound 0 has a vanishing derivative, so it is set to 0 and gets no interval.
    at_bound = (result.active_mask != 0) | (result.x < 1e-6 * max(float(result.x.max()), 1e-300))
    constants = np.where(at_bound, 0.0, result.x)
    degrees_of_freedom = num_points - num_constants
    variance = float(np.sum(result.fun**2) / degrees_of_freedom)
    jac_NxT = jacobian(constants)
    information = jac_NxT.T @ jac_NxT
    quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, degrees_of_freedom)
    low, high = np.full(num_constants, np.nan), np.full(num_constants, np.nan)
    free = ~at_bound
    covariance = np.full((num_constants, num_constants), np.nan)
    try:
        covariance[np.ix_(free, free)] = variance * np.linalg.inv(information[np.ix_(free, free)])
    except np.linalg.LinAlgError:
        pass
    for index in range(num_constants):
        if not at_bound[index] and covariance[index, index] >= 0:
            half_width = quantile * math.sqrt(covariance[index, index])
            low[index] = max(0.0, constants[index] - half_width)
            high[index] = constants[index] + half_width
    return LawFit(
        law=law.name,
        terms=terms,
        constants=tuple(float(c) for c in constants),
        ci_low=tuple(float(v) for v in low),
        ci_high=tuple(float(v) for v in high),
        residual_std=math.sqrt(variance),
        num_points=num_points,
    )


@dataclasses.dataclass(frozen=True)
class Slope:
    """A fitted slope of log error against log size, with its 95 % interval."""

    slope: float
    ci_low: float
    ci_high: float
    num_points: int


def fit_slope(sizes, errors) -> Slope:
    """Regress log ``errors`` on log ``sizes`` by ordinary least squares; NaN interval below 3 points."""
    x = np.log(np.asarray(sizes, float))
    y = np.log(np.asarray(errors, float))
    result = stats.linregress(x, y)
    if len(x) < 3:
        return Slope(float(result.slope), math.nan, math.nan, len(x))
    half_width = stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 2) * result.stderr
    return Slope(float(result.slope), float(result.slope - half_width), float(result.slope + half_width), len(x))


def axis_slopes(frame: pd.DataFrame, column: str, axes=AXES) -> pd.DataFrame:
    """Return the slope of log ``column`` against log of each axis, per fixed value of the others.

    The frame has one row per axis and per combination of the other axes and task settings that
    has at least two sizes on the axis. Its columns are the axis, the fixed values, the slope, its
    95 % interval, and the numbers of points and of sizes.
    """
    settings = [name for name in SETTINGS_COLUMNS if name in frame.columns]
    rows = []
    for axis in axes:
        others = [name for name in AXES if name != axis]
        for keys, part in frame.groupby([*settings, *others], sort=True):
            part = part[np.isfinite(part[column].astype(float)) & (part[column] > 0)]
            if part[axis].nunique() < 2:
                continue
            slope = fit_slope(part[axis], part[column])
            fixed = dict(zip([*settings, *others], keys if isinstance(keys, tuple) else (keys,)))
            rows.append({
                "axis": axis,
                **{name: fixed[name] for name in others},
                **{name: fixed[name] for name in settings},
                "slope": slope.slope,
                "ci_low": slope.ci_low,
                "ci_high": slope.ci_high,
                "num_points": slope.num_points,
                "num_sizes": int(part[axis].nunique()),
            })
    return pd.DataFrame(rows)
