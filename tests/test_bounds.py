"""Bound terms, the optimal shape exponents and the balanced shapes."""

import math

import numpy as np
import pytest

from resnet_limits.bounds import (
    DEPTH_TERM,
    EMBEDDING_LAW,
    EMBEDDING_TERM,
    OUTPUT_LAW,
    WIDTH_TERM,
    BoundTerm,
    ErrorLaw,
    balanced_shape,
    bound_terms,
    optimal_exponents,
    optimal_shape,
)

LAWS = [EMBEDDING_LAW, OUTPUT_LAW]


def test_bound_terms_literal():
    terms = bound_terms(4, 25, 100)
    assert terms["depth"] == pytest.approx(0.25, rel=1e-12)
    assert terms["width"] == pytest.approx(1.0, rel=1e-12)
    assert terms["embedding"] == pytest.approx(0.1, rel=1e-12)


def test_bound_terms_second_shape():
    terms = bound_terms(10, 8, 5)
    assert terms["depth"] == pytest.approx(0.1, rel=1e-12)
    assert terms["width"] == pytest.approx(0.25, rel=1e-12)
    assert terms["embedding"] == pytest.approx(1 / math.sqrt(5), rel=1e-12)


def test_output_law_terms_literal():
    terms = OUTPUT_LAW.term_values(4, 25, 100)
    assert terms["depth"] == pytest.approx(0.25, rel=1e-12)
    assert terms["width"] == pytest.approx(1.0, rel=1e-12)
    assert OUTPUT_LAW.term_values(4, 25, 50)["width"] == pytest.approx(0.5, rel=1e-12)


def test_law_bound_and_prediction_literal():
    # Constants (0.14, 0.8, 2.5) times the terms (0.25, 1.0, 0.1).
    assert EMBEDDING_LAW.bound(4, 25, 100) == pytest.approx(0.035 + 0.8 + 0.25, rel=1e-12)
    expected = math.sqrt(0.035**2 + 0.8**2 + 0.25**2)
    assert EMBEDDING_LAW.predict(4, 25, 100) == pytest.approx(expected, rel=1e-12)


def assert_exponents(result, depth, width, dim, rate):
    # The solutions deviate by about 1e-12, the rate slack of the second program, so 1e-9 leaves room.
    assert result.depth == pytest.approx(depth, abs=1e-9)
    assert result.width == pytest.approx(width, abs=1e-9)
    assert result.dim == pytest.approx(dim, abs=1e-9)
    assert result.rate == pytest.approx(rate, abs=1e-9)


def test_optimal_exponents_embedding_law():
    assert_exponents(optimal_exponents(EMBEDDING_LAW.terms), 1 / 6, 1 / 2, 1 / 3, 1 / 6)


def test_optimal_exponents_output_law():
    assert_exponents(optimal_exponents(OUTPUT_LAW.terms), 1 / 5, 2 / 5, 2 / 5, 1 / 5)


def test_optimal_exponents_unique_optimum():
    """Terms 1/L, D/M and 1/D^2 decay at rates a, b - c and 2c. All equal gives (1/3, 1/2, 1/6), rate 1/3."""
    terms = (
        DEPTH_TERM,
        BoundTerm("width", "D/M", (0.0, -1.0, 1.0)),
        BoundTerm("embedding", "1/D^2", (0.0, 0.0, -2.0)),
    )
    assert_exponents(optimal_exponents(terms), 1 / 3, 1 / 2, 1 / 6, 1 / 3)


def test_optimal_exponents_least_depth():
    """Terms 1/L^2, sqrt(D/(L M)) and 1/sqrt(D) decay at rates 2a, (1 - 2c)/2 and c/2.

    The last two are equal at c = 1/3, rate 1/6, and any a >= 1/12 reaches that rate, so the least
    depth exponent is a = 1/12 with b = 1 - a - c = 7/12.
    """
    terms = (BoundTerm("depth", "1/L^2", (-2.0, 0.0, 0.0)), WIDTH_TERM, EMBEDDING_TERM)
    assert_exponents(optimal_exponents(terms), 1 / 12, 7 / 12, 1 / 3, 1 / 6)


def test_optimal_exponents_sum_to_one():
    for law in LAWS:
        result = optimal_exponents(law.terms)
        assert result.depth + result.width + result.dim == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.name)
@pytest.mark.parametrize("budget", [1.0, 1e3, 1e6, 1e9, 1e12])
def test_balanced_shape_budget_and_terms(law, budget):
    L, M, D = balanced_shape(budget, law)
    assert L * M * D == pytest.approx(budget, rel=1e-9)
    weighted = [c * term.value(L, M, D) for c, term in zip(law.constants, law.terms)]
    assert weighted[1] == pytest.approx(weighted[0], rel=1e-9)
    assert weighted[2] == pytest.approx(weighted[0], rel=1e-9)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.name)
def test_balanced_shape_slopes(law):
    """log L, log M and log D are linear in log P with the optimal exponents as slopes."""
    small = np.log(balanced_shape(1e6, law))
    large = np.log(balanced_shape(1e12, law))
    slopes = (large - small) / math.log(1e12 / 1e6)
    expected = optimal_exponents(law.terms)
    assert slopes[0] == pytest.approx(expected.depth, abs=1e-9)
    assert slopes[1] == pytest.approx(expected.width, abs=1e-9)
    assert slopes[2] == pytest.approx(expected.dim, abs=1e-9)


def test_balanced_shape_rate():
    """Along balanced shapes the embedding bound decays as P^(-1/6)."""
    bounds = [EMBEDDING_LAW.bound(*balanced_shape(budget)) for budget in (1e6, 1e12)]
    slope = math.log(bounds[1] / bounds[0]) / math.log(1e12 / 1e6)
    assert slope == pytest.approx(-1 / 6, abs=1e-9)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: law.name)
@pytest.mark.parametrize("budget", [1, 100, 12345, 1e6, 3.3e8])
def test_optimal_shape_integers(law, budget):
    shape = optimal_shape(budget, law)
    assert type(shape.L) is int
    assert type(shape.M) is int
    assert type(shape.D) is int
    assert min(shape.L, shape.M, shape.D) >= 1
    # M = round(P / (L D)), so L M D is within L D / 2 of P unless M was raised to 1.
    if shape.M > 1:
        assert abs(shape.num_parameters - budget) <= shape.L * shape.D / 2
    assert shape.bound == pytest.approx(law.bound(shape.L, shape.M, shape.D), rel=1e-12)


def test_optimal_shape_follows_exponents():
    # With unit constants the shape is (P^(1/6), P^(1/2), P^(1/3)): 31.6, 31623 and 1000 at 1e9.
    shape = optimal_shape(1e9)
    assert shape.L == 32
    assert shape.D == 1000
    assert shape.M == round(1e9 / (32 * 1000))


def test_optimal_shape_output_law():
    # Exponents (1/5, 2/5, 2/5): 15.8, 251 and 251 at P = 1e6.
    shape = optimal_shape(1e6, OUTPUT_LAW)
    assert (shape.L, shape.D) == (16, 251)


def test_optimal_shape_fitted_constants_near_balanced():
    L_real, _, D_real = balanced_shape(1e9)
    shape = optimal_shape(1e9, fitted_constants=True)
    assert abs(shape.L - L_real) <= 0.5
    assert abs(shape.D - D_real) <= 0.5
    assert shape.M == round(1e9 / (shape.L * shape.D))


@pytest.mark.parametrize("budget", [0, 0.5, -10, math.nan, math.inf])
def test_invalid_budget(budget):
    with pytest.raises(ValueError, match="parameter budget must be a finite number >= 1"):
        balanced_shape(budget)
    with pytest.raises(ValueError, match="parameter budget"):
        optimal_shape(budget)


def test_balanced_shape_needs_three_terms():
    law = ErrorLaw("two", (DEPTH_TERM, EMBEDDING_TERM), (1.0, 1.0))
    with pytest.raises(ValueError, match="exactly three terms"):
        balanced_shape(1e6, law)


@pytest.mark.parametrize(
    "dim, depth, rate",
    [(1 / 4, 1 / 8, 1 / 8), (1 / 3, 1 / 6, 1 / 6), (5 / 12, 1 / 12, 1 / 12), (1 / 2, 0.0, 0.0)],
)
def test_optimal_exponents_fixed_dim(dim, depth, rate):
    """On D = P^c the rates are a, (1 - 2c)/2 and c/2; the least depth reaching the best rate is a = rate."""
    assert_exponents(optimal_exponents(EMBEDDING_LAW.terms, dim=dim), depth, 1 - depth - dim, dim, rate)


def test_optimal_exponents_fixed_dim_output_law():
    """Output rates on D = P^(1/3): a, 1 - 2c = 1/3 and c/2 = 1/6, so the rate is 1/6 at a = 1/6."""
    assert_exponents(optimal_exponents(OUTPUT_LAW.terms, dim=1 / 3), 1 / 6, 1 / 2, 1 / 3, 1 / 6)


def test_optimal_exponents_fixed_dim_out_of_range():
    with pytest.raises(ValueError, match="from 0 to 1"):
        optimal_exponents(EMBEDDING_LAW.terms, dim=1.5)
