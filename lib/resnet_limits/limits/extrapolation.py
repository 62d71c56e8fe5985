"""Richardson extrapolation of the particle simulator in depth, with an error estimate.

The particle system with L' depth points is an Euler scheme in s, so a quantity X computed with
it has a bias c_1 / L' + c_2 / L'^2 + O(1/L'^3). From three levels L', 2 L' and 4 L':

    R_1 = 2 X(2 L') - X(L'),   R_2 = 2 X(4 L') - X(2 L')

both cancel the 1/L' term, and R_2 - R_1 is about 3 times the 1/L'^2 error of R_2. The result
is R_3 = R_2 + (R_2 - R_1) / 3, which cancels that term too, and |R_2 - R_1| / 3, the error
of R_2, is reported as the estimate of its error: an overestimate by the factor by which R_3
improves on R_2. The estimate also contains the Monte Carlo noise of the levels, which is what a
tanh simulation has left once the depth bias is gone. With the identity activation the
moment-matched particles make the drift exact, so only the depth bias remains.

``estimate_limit`` doubles L' until the estimate falls below a requested tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from resnet_limits.config import LimitSettings
from resnet_limits.limits.mean_ode import SpanProblem, simulate_limit
from resnet_limits.tasks import Task
from resnet_limits.training import Trajectory, mean_squared_loss

# Largest L' that the tolerance search tries before it gives up.
MAX_DEPTH_POINTS = 8192


class ToleranceNotReached(RuntimeError):
    """The error estimate stayed above the tolerance up to the largest depth allowed."""

    def __init__(self, message: str, best: LimitEstimate):
        super().__init__(message)
        self.best = best


@dataclasses.dataclass(frozen=True)
class LimitEstimate:
    """An extrapolated limit trajectory and the estimate of its error.

    ``error_estimate`` bounds, as an estimate, the RMS error of f_k over its d_out x N entries,
    at the worst step k. ``relative_error_estimate`` divides it by the RMS of the targets y.
    """

    trajectory: Trajectory
    error_estimate: float
    relative_error_estimate: float
    depth_points: tuple[int, ...]  # L' of the levels used, coarsest first
    particles: int  # M' per depth point at every level


def _extrapolate(coarse: Trajectory, fine: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Return 2 X(fine) - X(coarse) for f and a(1), over the steps both levels finished."""
    steps = min(len(coarse.loss_K), len(fine.loss_K))
    f = 2 * fine.f_KxDoutxN[:steps] - coarse.f_KxDoutxN[:steps]
    a = 2 * fine.h_KxDxN[:steps] - coarse.h_KxDxN[:steps]
    return f, a


def _rms_per_step(difference_TxDoutxN: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(difference_TxDoutxN), axis=(1, 2)))


def extrapolate_levels(levels: list[Trajectory], task: Task) -> tuple[Trajectory, float]:
    """Return R_3 from the last three levels (L', 2 L', 4 L') and the estimate of its error."""
    first, second, third = levels[-3:]
    f_rough, a_rough = _extrapolate(first, second)
    f_fine, a_fine = _extrapolate(second, third)
    steps = min(len(f_rough), len(f_fine))
    f_correction = (f_fine[:steps] - f_rough[:steps]) / 3
    a_correction = (a_fine[:steps] - a_rough[:steps]) / 3
    error = float(np.max(_rms_per_step(f_correction)))
    f_best = f_fine[:steps] + f_correction
    a_best = a_fine[:steps] + a_correction

    y_DoutxN = np.asarray(task.y_DoutxN, np.float64)
    loss = np.array([float(mean_squared_loss(f, y_DoutxN, task.loss_scale)) for f in f_best])
    diverged = [t.diverged_at for t in levels[-3:] if t.diverged_at is not None]
    trajectory = Trajectory(
        loss_K=loss,
        f_KxDoutxN=f_best,
        h_KxDxN=a_best,
        diverged_at=min(diverged) if diverged else None,
    )
    return trajectory, error


def estimate_limit(
    problem: SpanProblem,
    task: Task,
    settings: LimitSettings = LimitSettings(),
    *,
    tol: float | None = None,
    steps: int,
    learning_rate: float,
    alpha: float,
    activation: str,
    dtype: str = "float64",
    max_depth_points: int = MAX_DEPTH_POINTS,
    on_level: Callable[[int, int], None] | None = None,
    on_level_done: Callable[[int, Trajectory], None] | None = None,
) -> LimitEstimate:
    """Simulate the limit at L', 2 L', 4 L' (and further doublings until ``tol`` is met).

    ``settings.depth_points`` is the coarsest L'; every level uses ``settings.particles``
    particles per depth point and its own seed. Without ``tol`` exactly three levels run.
    ``on_level(level_index, depth_points)`` is called before each level and
    ``on_level_done(depth_points, trajectory)`` after it, so a caller keeps finished levels. Raises
    ToleranceNotReached, carrying the best estimate, when L' would exceed ``max_depth_points``.
    """
    settings.validate()
    kwargs = dict(steps=steps, learning_rate=learning_rate, alpha=alpha, activation=activation, dtype=dtype)
    y_scale = float(np.sqrt(np.mean(np.square(task.y_DoutxN))))

    levels: list[Trajectory] = []
    depths: list[int] = []
    depth = settings.depth_points
    while True:
        if on_level is not None:
            on_level(len(levels), depth)
        level_settings = dataclasses.replace(settings, depth_points=depth, seed=settings.seed + len(levels))
        levels.append(simulate_limit(problem, task, level_settings, **kwargs))
        depths.append(depth)
        if on_level_done is not None:
            on_level_done(depth, levels[-1])
        depth *= 2
        if len(levels) < 3:
            continue

        trajectory, error = extrapolate_levels(levels, task)
        estimate = LimitEstimate(
            trajectory=trajectory,
            error_estimate=error,
            relative_error_estimate=error / y_scale,
            depth_points=tuple(depths[-3:]),
            particles=settings.particles,
        )
        if tol is None or error <= tol:
            return estimate
        if depth > max_depth_points:
            raise ToleranceNotReached(
                f"error estimate {error:.3g} is above the tolerance {tol:.3g} at L' = {depths[-1]}; "
                f"raise the tolerance, the particles per depth point ({settings.particles}) "
                f"or the largest depth ({max_depth_points}), or compute in float64",
                estimate,
            )
