"""The error bound, its terms, and the shapes that minimise it for a parameter budget.

Chaintron, Chizat and Maass, "ResNets of All Shapes and Sizes" (arXiv 2603.18168), bound the
embedding error of a ResNet of depth L, width M and embedding dimension D after a bounded number
of steps by

    err <= C (1/L + sqrt(D / (L M)) + 1/sqrt(D)).

Their experiments observed the output error to follow D / (L M) in place of sqrt(D / (L M)).
Each term is a power law L^e_L M^e_M D^e_D, so along L = P^a, M = P^b, D = P^c with
P = L M D the bound decays as P^(-rate) with rate = min over terms of -(e_L a + e_M b + e_D c).
``optimal_exponents`` maximises that rate by linear programming: it gives (1/6, 1/2, 1/3) and
P^(-1/6) for the embedding error, (1/5, 2/5, 2/5) and P^(-1/5) for the output error.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize


@dataclasses.dataclass(frozen=True)
class BoundTerm:
    """One power-law term L^e_L M^e_M D^e_D of the bound."""

    name: str  # "depth", "width" or "embedding"
    formula: str  # for display, e.g. "sqrt(D/(L M))"
    exponents: tuple[float, float, float]  # (e_L, e_M, e_D)

    def value(self, L, M, D):
        e_L, e_M, e_D = self.exponents
        return np.power(L, e_L, dtype=float) * np.power(M, e_M, dtype=float) * np.power(D, e_D, dtype=float)


DEPTH_TERM = BoundTerm("depth", "1/L", (-1.0, 0.0, 0.0))
WIDTH_TERM = BoundTerm("width", "sqrt(D/(L M))", (-0.5, -0.5, 0.5))
OUTPUT_WIDTH_TERM = BoundTerm("width", "D/(L M)", (-1.0, -1.0, 1.0))
EMBEDDING_TERM = BoundTerm("embedding", "1/sqrt(D)", (0.0, 0.0, -0.5))


@dataclasses.dataclass(frozen=True)
class ErrorLaw:
    """An error model: constants times bound terms.

    ``bound`` sums the terms as the theorem does. ``predict`` combines them as a root sum of
    squares, which is how the fitted constants were obtained.
    """

    name: str
    terms: tuple[BoundTerm, ...]
    constants: tuple[float, ...]

    def term_values(self, L, M, D) -> dict[str, float]:
        """Return each term without its constant, keyed by term name."""
        return {term.name: term.value(L, M, D) for term in self.terms}

    def bound(self, L, M, D):
        return sum(c * term.value(L, M, D) for c, term in zip(self.constants, self.terms))

    def predict(self, L, M, D):
        return np.sqrt(sum((c * term.value(L, M, D)) ** 2 for c, term in zip(self.constants, self.terms)))


# Width and embedding constants are the fits of arXiv 2603.18168 on paper-tanh at L = 50 (embedding
# error about 0.8 sqrt(D/(L M)) and 2.5/sqrt(D); output error about 0.15 D/(L M) and 0.9/sqrt(D)).
# Depth constants are the Euler bias of the large-D limit of paper-tanh measured with this
# library's simulator: err * L at L = 16 (benchmarks/depth_constant.py, results in
# benchmarks/README.md).
EMBEDDING_DEPTH_CONSTANT = 0.14
OUTPUT_DEPTH_CONSTANT = 0.10

EMBEDDING_LAW = ErrorLaw(
    "embedding", (DEPTH_TERM, WIDTH_TERM, EMBEDDING_TERM), (EMBEDDING_DEPTH_CONSTANT, 0.8, 2.5)
)
OUTPUT_LAW = ErrorLaw(
    "output", (DEPTH_TERM, OUTPUT_WIDTH_TERM, EMBEDDING_TERM), (OUTPUT_DEPTH_CONSTANT, 0.15, 0.9)
)


def bound_terms(L, M, D) -> dict[str, float]:
    """Return the embedding bound's terms 1/L, sqrt(D/(L M)) and 1/sqrt(D), without constants."""
    return {name: float(value) for name, value in EMBEDDING_LAW.term_values(L, M, D).items()}


@dataclasses.dataclass(frozen=True)
class ShapeExponents:
    """L = P^depth, M = P^width, D = P^dim; the bound then decays as P^(-rate)."""

    depth: float
    width: float
    dim: float
    rate: float


def optimal_exponents(terms: tuple[BoundTerm, ...], *, dim: float | None = None) -> ShapeExponents:
    """Return the exponents (a, b, c), a + b + c = 1, under which the slowest term decays fastest.

    First solves: maximise t subject to -(e_L a + e_M b + e_D c) >= t for every term,
    a + b + c = 1 and a, b, c >= 0. The maximiser is not unique, because L and M enter the width
    term only through L M while L also shrinks the depth term, so a second program takes the
    least depth exponent among the maximisers, as arXiv 2603.18168 does.

    ``dim`` fixes c, for a path D = P^dim on which L and M split the rest of the budget.
    """
    if dim is not None and not 0 <= dim <= 1:
        raise ValueError(f"dim exponent must be from 0 to 1, got {dim}")
    # Variables (a, b, c, t); linprog minimises.
    upper_rows = np.array([[*term.exponents, 1.0] for term in terms])  # e . x + t <= 0
    upper_bounds = np.zeros(len(terms))
    equal_rows, equal_bounds = np.array([[1.0, 1.0, 1.0, 0.0]]), np.array([1.0])
    if dim is not None:
        equal_rows = np.vstack([equal_rows, [0.0, 0.0, 1.0, 0.0]])
        equal_bounds = np.append(equal_bounds, dim)
    variable_bounds = [(0, 1), (0, 1), (0, 1), (None, None)]

    best_rate = _solve_linear_program(
        [0.0, 0.0, 0.0, -1.0], upper_rows, upper_bounds, equal_rows, equal_bounds, variable_bounds
    )[3]
    rate_row = np.array([[0.0, 0.0, 0.0, -1.0]])  # t >= best_rate, less rounding slack
    a, b, c, rate = _solve_linear_program(
        [1.0, 0.0, 0.0, 0.0],
        np.vstack([upper_rows, rate_row]),
        np.append(upper_bounds, -(best_rate - 1e-12)),
        equal_rows,
        equal_bounds,
        variable_bounds,
    )
    return ShapeExponents(depth=float(a), width=float(b), dim=float(c), rate=float(rate))


def _solve_linear_program(objective, upper_rows, upper_bounds, equal_rows, equal_bounds, variable_bounds):
    result = optimize.linprog(
        np.asarray(objective, float),
        A_ub=upper_rows,
        b_ub=upper_bounds,
        A_eq=equal_rows,
        b_eq=equal_bounds,
        bounds=variable_bounds,
        method="highs",
    )
    if not result.success:
        raise RuntimeError(f"linear program for the optimal exponents failed: {result.message}")
    return result.x


@dataclasses.dataclass(frozen=True)
class Shape:
    """An integer shape with its parameter count and the law's bound there."""

    L: int
    M: int
    D: int
    bound: float

    @property
    def num_parameters(self) -> int:
        return self.L * self.M * self.D


def balanced_shape(
    budget: float, law: ErrorLaw = EMBEDDING_LAW, constants: tuple[float, ...] | None = None
) -> tuple[float, float, float]:
    """Return the real shape (L, M, D) with L M D = ``budget`` at which every term of ``law``,
    weighted by ``constants`` (default: the law's own), has the same value.

    In logarithms the conditions log c_i + e_i . (log L, log M, log D) = log t and
    log L + log M + log D = log P are linear, so one solve gives the shape. Its exponents in P are
    those of ``optimal_exponents`` (1/6, 1/2, 1/3 for the embedding law).
    """
    if not math.isfinite(budget) or budget < 1:
        raise ValueError(f"parameter budget must be a finite number >= 1, got {budget}")
    if len(law.terms) != 3:
        raise ValueError(f"a balanced shape needs exactly three terms, law {law.name!r} has {len(law.terms)}")
    constants = law.constants if constants is None else constants
    # Unknowns (log L, log M, log D, log t).
    rows = [[*term.exponents, -1.0] for term in law.terms] + [[1.0, 1.0, 1.0, 0.0]]
    right = [-math.log(c) for c in constants] + [math.log(budget)]
    log_L, log_M, log_D, _ = np.linalg.solve(np.array(rows), np.array(right))
    return math.exp(log_L), math.exp(log_M), math.exp(log_D)


def optimal_shape(budget: float, law: ErrorLaw = EMBEDDING_LAW, *, fitted_constants: bool = False) -> Shape:
    """Return the integer shape of about ``budget`` parameters on the optimal path of ``law``.

    By default every term has the constant 1, as in the theorem's single constant C, so the shape
    is L = P^a, M = P^b, D = P^c with the exponents of ``optimal_exponents``: the least depth that
    reaches the optimal rate. The bound alone is smallest at M = 1 for every budget, because L and M
    enter the width term only through L M and L also shrinks the depth term, so minimising it
    directly gives no useful shape. ``fitted_constants=True`` balances the terms with the law's
    fitted constants instead; the small depth constants then push L towards 1 at moderate budgets.
    L and D are rounded (at least 1) and M = round(budget / (L D)), at least 1. ``Shape.bound`` is
    the law's bound with its fitted constants.
    """
    constants = None if fitted_constants else (1.0,) * len(law.terms)
    L_real, _, D_real = balanced_shape(budget, law, constants)
    L = max(1, round(L_real))
    D = max(1, round(D_real))
    M = max(1, round(budget / (L * D)))
    return Shape(L, M, D, float(law.bound(L, M, D)))


# -- Transformers ---------------------------------------------------------------------------------
#
# In a Transformer the H heads of an attention block average like the M units of a perceptron
# block. Its attention blocks therefore add the width term with H in place of M, which is
# sqrt(D / (L H)) in the embedding bound and D / (L H) in the output law. The bound of a
# Transformer of depth L is then
#
#     err <= C (1/L + sqrt(D / (L H)) + sqrt(D / (L M)) + 1/sqrt(D)).
#
# NOTE: the attention term takes the constant of the width term fitted for ResNets. No law has
# been fitted for Transformers. The fluctuation measured in
# tests/test_transformer.py::test_network_gap_to_limit_shrinks_with_heads (L = 4, D = 8, M = H)
# was 0.85, 0.39, 0.15 at H = 4, 16, 64, where the two terms with the constant 0.8 give 0.80,
# 0.40, 0.20.


def transformer_num_parameters(L: int, H: int, M: int, D: int, key_dim: int, value_dim: int) -> int:
    """Return P = L D (M + H (d_k + d_v)), the parameter count of a Transformer in the units of P = L M D.

    The ResNet's P = L M D counts one D-vector per unit, half of its two weight vectors u and v.
    A head has 2 d_k + 2 d_v weight vectors of length D (rows of W_Q, W_K, W_V and columns of
    W_O), so it counts d_k + d_v in the same units.
    """
    return L * D * (M + H * (key_dim + value_dim))


def transformer_term_values(law: ErrorLaw, L, H, M, D) -> dict[str, float]:
    """Return the terms of ``law`` for a Transformer: the law's own and "attention", its width term at M = H."""
    values = {}
    for term in law.terms:
        values[term.name] = float(term.value(L, M, D))
        if term.name == "width":
            values["attention"] = float(term.value(L, H, D))
    return values


def transformer_constants(law: ErrorLaw) -> dict[str, float]:
    """Return the constant of each term of ``transformer_term_values``; the attention term takes the width's."""
    constants = dict(zip((term.name for term in law.terms), law.constants))
    constants["attention"] = constants["width"]
    return constants


def transformer_bound_terms(L, H, M, D) -> dict[str, float]:
    """Return the Transformer's embedding bound terms 1/L, sqrt(D/(L H)), sqrt(D/(L M)) and 1/sqrt(D)."""
    return transformer_term_values(EMBEDDING_LAW, L, H, M, D)


def transformer_predict(law: ErrorLaw, L, H, M, D) -> float:
    """Return the root sum of squares of the Transformer's terms times their constants, as ``ErrorLaw.predict``."""
    constants = transformer_constants(law)
    values = transformer_term_values(law, L, H, M, D)
    return float(math.sqrt(sum((constants[name] * value) ** 2 for name, value in values.items())))


def transformer_bound(law: ErrorLaw, L, H, M, D) -> float:
    """Return the sum of the Transformer's terms times their constants, as ``ErrorLaw.bound``."""
    constants = transformer_constants(law)
    values = transformer_term_values(law, L, H, M, D)
    return float(sum(constants[name] * value for name, value in values.items()))


@dataclasses.dataclass(frozen=True)
class TransformerShape:
    """An integer Transformer shape with M = H, its parameter count and the law's bound there."""

    L: int
    H: int
    M: int
    D: int
    key_dim: int
    value_dim: int
    bound: float

    @property
    def num_parameters(self) -> int:
        return transformer_num_parameters(self.L, self.H, self.M, self.D, self.key_dim, self.value_dim)


def transformer_optimal_shape(
    budget: float, law: ErrorLaw = EMBEDDING_LAW, *, key_dim: int = 2, value_dim: int = 2
) -> TransformerShape:
    """Return the Transformer shape with M = H of about ``budget`` parameters on the optimal path of ``law``.

    With M = H the attention and width terms are equal, so the bound is that of a ResNet of width
    H whose width term counts twice, and P = (1 + d_k + d_v) L H D. The real shape balances the
    terms with the constants (1, 2, 1): the theorem's single constant C, doubled for the width
    term. The exponents of L, H and D in P are then those of ``optimal_exponents`` for the
    ResNet, (1/6, 1/2, 1/3) for the embedding law. L and D are rounded (at least 1) and H = M the
    rounded rest of the budget, at least 1. ``bound`` is the Transformer bound with the law's
    fitted constants.
    """
    per_unit = 1 + key_dim + value_dim
    if not math.isfinite(budget) or budget < per_unit:
        raise ValueError(
            f"parameter budget must be a finite number >= {per_unit} (1 + d_k + d_v), got {budget}"
        )
    width_position = [term.name for term in law.terms].index("width")
    constants = tuple(2.0 if index == width_position else 1.0 for index in range(len(law.terms)))
    L_real, _, D_real = balanced_shape(budget / per_unit, law, constants)
    L = max(1, round(L_real))
    D = max(1, round(D_real))
    H = max(1, round(budget / (per_unit * L * D)))
    return TransformerShape(L, H, H, D, key_dim, value_dim, transformer_bound(law, L, H, H, D))
