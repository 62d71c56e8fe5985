"""Shapes along parameter budgets: the bound's optimal shapes, and paths D = P^c.

For a budget P = L M D, ``optimal_shapes`` gives the shapes of ``bounds.optimal_shape`` (the
embedding law's exponents (1/6, 1/2, 1/3), the output law's (1/5, 2/5, 2/5)). On a path
D = P^c, L and M split the remaining P^(1 - c) as the bound prefers: the least depth exponent
that reaches the best rate (``bounds.optimal_exponents`` with ``dim=c``), raised where needed
so that 1/L decays no slower than 1/sqrt(D) (``path_exponents``). Along such a path the
embedding bound decays as P^(-rate), so its predicted error slope in log P is -rate: -1/8, -1/6,
-1/12 and 0 for c = 1/4, 1/3, 5/12 and 1/2.
"""

from __future__ import annotations

import math

import numpy as np

from resnet_limits import bounds
from resnet_limits.config import ConfigError
from resnet_limits.sweeps.grid import SweepSpec

# The D exponents of the paths of arXiv 2603.18168's budget experiments.
PATH_DIM_EXPONENTS = (1 / 4, 1 / 3, 5 / 12, 1 / 2)


def log_budgets(smallest: float = 1e4, largest: float = 1e9, count: int = 6) -> list[float]:
    """Return ``count`` budgets evenly spaced in log from ``smallest`` to ``largest``."""
    return [float(value) for value in np.geomspace(smallest, largest, count)]


def optimal_shapes(budgets, law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> list[bounds.Shape]:
    """Return ``bounds.optimal_shape`` of each budget."""
    return [bounds.optimal_shape(budget, law) for budget in budgets]


def path_exponents(dim_exponent: float, law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> bounds.ShapeExponents:
    """Return the exponents (a, b, c = ``dim_exponent``) of the path and its rate.

    Among the splits of L M = P^(1 - c) that reach the best rate, the path takes the least depth
    at which the depth term decays no slower than the terms of D alone (1/sqrt(D)), so L grows at
    least as sqrt(D). Where the width term sets the rate, as on c = 5/12 and c = 1/2, the least
    depth alone would let 1/L decay only as fast as the width term, down to L = 1 at c = 1/2,
    whose bound does not decay at all; the depth floor keeps the depth term below the others
    without changing the rate. On c = 1/3 and c = 1/4 it changes nothing.
    """
    if not 0 <= dim_exponent <= 1:
        raise ConfigError(f"D exponent must be from 0 to 1, got {dim_exponent}; D = P^c needs 0 <= c <= 1")
    exponents = bounds.optimal_exponents(law.terms, dim=dim_exponent)
    dim_only_decays = [
        -term.exponents[2] * dim_exponent for term in law.terms if term.exponents[:2] == (0, 0)
    ]
    if not dim_only_decays:
        return exponents
    depth = min(max(exponents.depth, min(dim_only_decays)), 1 - dim_exponent)
    width = 1 - dim_exponent - depth
    rate = min(-(term.exponents[0] * depth + term.exponents[1] * width + term.exponents[2] * dim_exponent)
               for term in law.terms)
    if rate < exponents.rate - 1e-12:
        return exponents
    return bounds.ShapeExponents(depth=depth, width=width, dim=dim_exponent, rate=exponents.rate)


def predicted_path_slope(dim_exponent: float, law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> float:
    """Return the slope of log bound against log P on the path D = P^``dim_exponent``."""
    rate = path_exponents(dim_exponent, law).rate
    # The linear programs leave about 1e-12 of slack in the rate.
    return 0.0 if abs(rate) < 1e-9 else -rate


def path_shapes(dim_exponent: float, budgets, law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> list[bounds.Shape]:
    """Return the integer shapes on D = P^c for each budget.

    L = round(P^a) and D = round(P^c), at least 1, and M = round(P / (L D)), at least 1.
    ``Shape.bound`` is the law's bound with its fitted constants.
    """
    exponents = path_exponents(dim_exponent, law)
    shapes = []
    for budget in budgets:
        if not math.isfinite(budget) or budget < 1:
            raise ConfigError(f"parameter budget must be a finite number >= 1, got {budget}")
        L = max(1, round(budget**exponents.depth))
        D = max(1, round(budget**exponents.dim))
        M = max(1, round(budget / (L * D)))
        shapes.append(bounds.Shape(L, M, D, float(law.bound(L, M, D))))
    return shapes


def path_spec(dim_exponent: float, budgets, seeds, law: bounds.ErrorLaw = bounds.EMBEDDING_LAW, **kwargs) -> SweepSpec:
    """Return the sweep of the path's shapes; keyword arguments go to ``SweepSpec``."""
    shapes = tuple((shape.L, shape.M, shape.D) for shape in path_shapes(dim_exponent, budgets, law))
    return SweepSpec(shapes=shapes, seeds=tuple(seeds), **kwargs).validated()
