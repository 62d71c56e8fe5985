"""Error-law and slope fits of sweep results, and the shapes along parameter budgets."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from resnet_limits import bounds
from resnet_limits.config import ConfigError, LimitSettings
from resnet_limits.sweeps import ResultStore, SweepSpec, fits, log_integers, paths, run_sweep


def synthetic_frame(law, constants, *, noise=0.0, seeds=1, depths=(50,)):
    """Errors sqrt(sum c_i^2 t_i^2) of ``law``'s terms on a grid, times log-normal noise."""
    rng = np.random.default_rng(0)
    rows = []
    for L, M, D, seed in itertools.product(depths, log_integers(1, 2000, 8), log_integers(1, 2000, 8), range(seeds)):
        error = math.sqrt(sum((c * float(term.value(L, M, D))) ** 2 for c, term in zip(constants, law.terms)))
        rows.append({"L": L, "M": M, "D": D, "seed": seed, "error": error * math.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_fit_recovers_embedding_constants():
    law = bounds.ErrorLaw("embedding", bounds.EMBEDDING_LAW.terms[1:], (0.8, 2.5))
    fit = fits.fit_error_law(synthetic_frame(law, (0.8, 2.5)), "error", bounds.EMBEDDING_LAW)
    assert [term.name for term in fit.terms] == ["width", "embedding"]
    assert fit.constants == pytest.approx((0.8, 2.5), rel=1e-6)
    assert fit.residual_std < 1e-6


def test_fit_recovers_output_constants_with_depth():
    frame = synthetic_frame(bounds.OUTPUT_LAW, (0.1, 0.15, 0.9), depths=(1, 4, 16, 64))
    fit = fits.fit_error_law(frame, "error", bounds.OUTPUT_LAW, include_depth=True)
    assert fit.constants == pytest.approx((0.1, 0.15, 0.9), rel=1e-6)


def test_fit_intervals_cover_truth_under_noise():
    law = bounds.ErrorLaw("embedding", bounds.EMBEDDING_LAW.terms[1:], (0.8, 2.5))
    fit = fits.fit_error_law(synthetic_frame(law, (0.8, 2.5), noise=0.1, seeds=5), "error", bounds.EMBEDDING_LAW)
    for truth, low, value, high in zip((0.8, 2.5), fit.ci_low, fit.constants, fit.ci_high):
        assert low < truth < high
        assert low < value < high
        assert high - low < 0.2 * truth  # 320 points with 10 % scatter pin each constant to a few percent
    assert fit.residual_std == pytest.approx(0.1, rel=0.15)


def test_fit_keeps_constants_non_negative():
    """Errors that fall with D have no positive sqrt(D/(L M)) part: its constant stays at 0."""
    frame = pd.DataFrame({"L": 50, "M": 10, "D": [1, 4, 16, 64, 256], "error": [1.0, 0.5, 0.25, 0.125, 0.0625]})
    fit = fits.fit_error_law(frame, "error", bounds.EMBEDDING_LAW)
    assert fit.constants[0] == pytest.approx(0.0, abs=1e-6)
    assert fit.constants[1] == pytest.approx(1.0, rel=1e-6)
    assert math.isnan(fit.ci_low[0])


def test_fit_too_few_points():
    frame = pd.DataFrame({"L": [50, 50], "M": [1, 2], "D": [1, 2], "error": [1.0, 0.5]})
    with pytest.raises(ConfigError, match="more than 2 points"):
        fits.fit_error_law(frame, "error", bounds.EMBEDDING_LAW)


def test_fitted_law_predicts():
    law = bounds.ErrorLaw("embedding", bounds.EMBEDDING_LAW.terms[1:], (0.8, 2.5))
    fitted = fits.fit_error_law(synthetic_frame(law, (0.8, 2.5)), "error", bounds.EMBEDDING_LAW).to_error_law()
    assert isinstance(fitted, bounds.ErrorLaw)
    # At L = 50, M = 200, D = 100 both terms sqrt(D/(L M)) and 1/sqrt(D) are 0.1.
    assert fitted.predict(50, 200, 100) == pytest.approx(math.sqrt(0.64 * 0.01 + 6.25 * 0.01), rel=1e-6)
    assert fitted.bound(50, 200, 100) == pytest.approx(0.8 * 0.1 + 2.5 * 0.1, rel=1e-6)


def test_fit_slope_literal():
    widths = np.array([1, 4, 16, 64])
    slope = fits.fit_slope(widths, 3.0 * widths**-0.5)
    assert slope.slope == pytest.approx(-0.5, abs=1e-12)
    assert slope.ci_low == pytest.approx(-0.5, abs=1e-9)
    assert slope.ci_high == pytest.approx(-0.5, abs=1e-9)


def test_axis_slopes_per_fixed_shape():
    law = bounds.ErrorLaw("width only", (bounds.WIDTH_TERM,), (0.8,))
    frame = synthetic_frame(law, (0.8,))
    slopes = fits.axis_slopes(frame, "error")
    by_axis = {axis: part for axis, part in slopes.groupby("axis")}
    assert set(by_axis) == {"M", "D"}  # one depth only, so no L slope
    assert len(by_axis["M"]) == 8  # one per D
    np.testing.assert_allclose(by_axis["M"]["slope"], -0.5, atol=1e-9)
    np.testing.assert_allclose(by_axis["D"]["slope"], 0.5, atol=1e-9)


def test_error_column_names():
    assert fits.error_column("output", "mean_ode") == "output_error_mean_ode"
    with pytest.raises(ConfigError, match="unknown reference"):
        fits.error_column("output", "finite")


@pytest.mark.slow
def test_real_sweep_width_slope(tmp_path):
    """The embedding error against the fixed-D Mean ODE falls as M^(-1/2) (measured -0.51).

    The Mean ODE has L' = L = 32 depth points, so the network and its reference share their Euler
    bias in depth and the width term sqrt(D / (L M)) is what is left.
    """
    spec = SweepSpec.product([32], [16, 64, 256], [16], seeds=[0, 1, 2], limit_tol=None,
                             limit_start=LimitSettings(4, 256), mean_ode=LimitSettings(32, 4096))
    run_sweep(spec, tmp_path)
    frame = fits.select_step(ResultStore(tmp_path).load())
    assert len(frame) == 9
    slopes = fits.axis_slopes(frame, "embedding_error_mean_ode")
    assert list(slopes["axis"]) == ["M"]
    assert -0.6 < slopes["slope"].iloc[0] < -0.4
    assert slopes["ci_low"].iloc[0] < -0.5 < slopes["ci_high"].iloc[0]


# -- shapes along budgets -----------------------------------------------------------------------


@pytest.mark.parametrize("dim, slope", [(1 / 4, -1 / 8), (1 / 3, -1 / 6), (5 / 12, -1 / 12), (1 / 2, 0.0)])
def test_path_predicted_slopes(dim, slope):
    assert paths.predicted_path_slope(dim) == pytest.approx(slope, abs=1e-9)


def test_path_bound_slope_matches_prediction():
    """The bound's own values along a path's real shapes fall at the predicted rate in log P."""
    for dim in paths.PATH_DIM_EXPONENTS:
        exponents = paths.path_exponents(dim)
        values = [
            bounds.ErrorLaw("unit", bounds.EMBEDDING_LAW.terms, (1.0, 1.0, 1.0)).bound(
                budget**exponents.depth, budget**exponents.width, budget**exponents.dim
            )
            for budget in (1e20, 1e40)
        ]
        measured = math.log(values[1] / values[0]) / math.log(1e40 / 1e20)
        assert measured == pytest.approx(paths.predicted_path_slope(dim), abs=1e-3), dim


def test_path_shapes_literal():
    # D = P^(1/3) is the optimal path: L = 10, D = 100, M = 1e6 / 1000 at P = 1e6.
    (shape,) = paths.path_shapes(1 / 3, [1e6])
    assert (shape.L, shape.M, shape.D) == (10, 1000, 100)
    # D = P^(1/4): L = round(1e8^(1/8)) = 10, D = 100, M = 1e8 / 1000.
    (shape,) = paths.path_shapes(1 / 4, [1e8])
    assert (shape.L, shape.M, shape.D) == (10, 100000, 100)
    # D = P^(1/2): rate 0 for every split; the depth floor sqrt(D) gives L = M = 1e6^(1/4).
    (shape,) = paths.path_shapes(1 / 2, [1e6])
    assert (shape.L, shape.M, shape.D) == (32, 31, 1000)
    # D = P^(5/12): the width term sets the rate 1/12, and the floor raises L to P^(5/24).
    exponents = paths.path_exponents(5 / 12)
    assert (exponents.depth, exponents.width) == pytest.approx((5 / 24, 3 / 8), abs=1e-9)


def test_optimal_shapes_literal():
    embedding = paths.optimal_shapes([1e6, 1e9])
    assert [(s.L, s.M, s.D) for s in embedding] == [(10, 1000, 100), (32, 31250, 1000)]
    assert embedding[0].bound == pytest.approx(0.14 / 10 + 0.8 * 0.1 + 2.5 * 0.1, rel=1e-12)
    (output,) = paths.optimal_shapes([1e5], bounds.OUTPUT_LAW)
    assert (output.L, output.M, output.D) == (10, 100, 100)
    assert output.bound == pytest.approx(0.10 / 10 + 0.15 * 0.1 + 0.9 / 10, rel=1e-12)


def test_path_spec_shapes():
    spec = paths.path_spec(1 / 3, [1e3, 1e6], seeds=[0])
    assert spec.shapes == ((3, 33, 10), (10, 1000, 100))


def test_log_budgets():
    assert paths.log_budgets(1e4, 1e9, 6) == pytest.approx([1e4, 1e5, 1e6, 1e7, 1e8, 1e9], rel=1e-12)
