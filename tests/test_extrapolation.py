"""Richardson extrapolation of the particle simulator against the exact linear limit."""

import numpy as np
import pytest

from resnet_limits.config import LimitSettings
from resnet_limits.limits import exact_linear_limit, large_dim_problem
from resnet_limits.limits.extrapolation import ToleranceNotReached, estimate_limit
from resnet_limits.tasks import paper_linear, paper_tanh

LINEAR_SETTINGS = dict(steps=15, learning_rate=0.1, alpha=1.0)


def _exact_linear(task):
    return exact_linear_limit(large_dim_problem(task), task, **LINEAR_SETTINGS).trajectory


def _max_relative_error(estimate_f, exact_f, y):
    scale = np.sqrt(np.mean(np.square(y)))
    return np.max(np.sqrt(np.mean(np.square(estimate_f - exact_f), axis=(1, 2)))) / scale


def test_linear_extrapolation_within_1e4():
    # Levels 16, 32, 64 with 64 particles each: measured 1.2e-6 relative to the RMS of y.
    task = paper_linear()
    estimate = estimate_limit(
        large_dim_problem(task), task, LimitSettings(16, 64), activation="identity", **LINEAR_SETTINGS
    )
    exact = _exact_linear(task)
    assert _max_relative_error(estimate.trajectory.f_KxDoutxN, exact.f_KxDoutxN, task.y_DoutxN) < 1e-4


def test_linear_error_estimate_covers_error():
    task = paper_linear()
    exact = _exact_linear(task)
    for depth_points in (8, 16, 32):
        estimate = estimate_limit(
            large_dim_problem(task), task, LimitSettings(depth_points, 64), activation="identity", **LINEAR_SETTINGS
        )
        actual = _max_relative_error(estimate.trajectory.f_KxDoutxN, exact.f_KxDoutxN, task.y_DoutxN)
        assert actual <= estimate.relative_error_estimate, depth_points
        # The estimate is the error of the second-order result, which the returned third-order
        # result improves on by a factor of about L' (measured: 12, 23 and 45).
        assert estimate.relative_error_estimate < 4 * depth_points * actual, depth_points


def test_extrapolation_order_three():
    # After cancelling the 1/L' and 1/L'^2 terms the error falls as 1/L'^3: measured slope -2.9.
    task = paper_linear()
    exact = _exact_linear(task)
    depths = (8, 16, 32)
    errors = []
    for depth_points in depths:
        estimate = estimate_limit(
            large_dim_problem(task), task, LimitSettings(depth_points, 64), activation="identity", **LINEAR_SETTINGS
        )
        errors.append(_max_relative_error(estimate.trajectory.f_KxDoutxN, exact.f_KxDoutxN, task.y_DoutxN))
    slope = np.polyfit(np.log(depths), np.log(errors), 1)[0]
    assert -3.4 < slope < -2.5


def test_tolerance_doubles_depth():
    # The linear drift is exact, so only the depth error is left and the search doubles L'.
    task = paper_linear()
    estimate = estimate_limit(
        large_dim_problem(task), task, LimitSettings(4, 64), tol=1e-6, activation="identity", **LINEAR_SETTINGS
    )
    assert estimate.error_estimate <= 1e-6
    assert estimate.depth_points[0] > 4
    assert estimate.depth_points[1] == 2 * estimate.depth_points[0]
    assert estimate.particles == 64
    assert estimate.monte_carlo_error < 1e-12


def test_tolerance_not_reached_keeps_estimate():
    task = paper_tanh()
    with pytest.raises(ToleranceNotReached, match="above the tolerance") as raised:
        estimate_limit(
            large_dim_problem(task),
            task,
            LimitSettings(4, 96),
            tol=1e-9,
            steps=2,
            learning_rate=1.0,
            alpha=1.0,
            activation="tanh",
            max_depth_points=16,
            max_particles=96,
        )
    assert raised.value.best.depth_points == (4, 8, 16)
    assert raised.value.best.particles == 96
    assert np.all(np.isfinite(raised.value.best.trajectory.f_KxDoutxN))


def test_tolerance_doubles_particles_for_noise():
    # With tanh units the Monte Carlo part dominates at L' = 16, so the search doubles M'.
    task = paper_tanh()
    kwargs = dict(steps=3, learning_rate=1.0, alpha=1.0, activation="tanh", dtype="float32")
    first = estimate_limit(large_dim_problem(task), task, LimitSettings(16, 256), **kwargs)
    assert first.monte_carlo_error > first.depth_error
    refined = estimate_limit(
        large_dim_problem(task), task, LimitSettings(16, 256), tol=first.error_estimate / 2, **kwargs
    )
    assert refined.particles > 256
    assert refined.error_estimate <= first.error_estimate / 2


def test_particles_multiple_of_eight():
    task = paper_linear()
    with pytest.raises(ValueError, match="multiple of 8"):
        estimate_limit(large_dim_problem(task), task, LimitSettings(4, 100), activation="identity", **LINEAR_SETTINGS)


def test_tolerance_search_stops_when_the_limit_diverges():
    task = paper_tanh()
    estimate = estimate_limit(
        large_dim_problem(task), task, LimitSettings(4, 96), tol=1e-9,
        steps=6, learning_rate=1e4, alpha=1.0, activation="tanh", dtype="float32",
    )
    assert estimate.depth_points == (4, 8, 16)  # the first attempt, not grown
    assert estimate.trajectory.diverged_at is not None
    assert len(estimate.trajectory.loss_K) <= estimate.trajectory.diverged_at
