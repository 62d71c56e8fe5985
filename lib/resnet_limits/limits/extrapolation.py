"""Richardson extrapolation of the particle simulator in depth, with an error estimate.

The particle system with L' depth points is an Euler scheme in s, so a quantity X computed with
it has a bias c_1 / L' + c_2 / L'^2 + O(1/L'^3). From three levels L', 2 L' and 4 L':

    R_1 = 2 X(2 L') - X(L'),   R_2 = 2 X(4 L') - X(2 L')

both cancel the 1/L' term, and R_2 - R_1 is about 3 times the 1/L'^2 error of R_2. The result
is R_3 = R_2 + (R_2 - R_1) / 3 = (8 X(4 L') - 6 X(2 L') + X(L')) / 3, which cancels that term
too. Its depth error is estimated by |R_2 - R_1| / 3, the error of R_2, an overestimate by the
factor by which R_3 improves on R_2.

The three levels share one set of L' M' particles: level 4 L' draws M'/4 particles per depth
point, and the coarser levels pool those of 2 or 4 neighbouring points (each pool is then
moment-matched on its own). Their Monte Carlo errors are then strongly correlated, so the
weights 8, -6 and 1 do not amplify them. Two independent replicas, each with its own particles,
give the Monte Carlo error: half the difference of their R_3 values is the standard error of
their mean, which is the returned result.

The reported error is the root sum of squares of the depth and Monte Carlo estimates, as an RMS
over the entries of f_k, at the worst step k. With the identity activation the moment-matched
particles make the drift exact, so only the depth error remains. With tanh the Monte Carlo part
dominates once L' is moderate. ``estimate_limit`` meets a tolerance by growing L' when the
depth error dominates and M' when the Monte Carlo error does, each by the power of two (at most 4)
that the error's rate predicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_limits.config import ConfigError, LimitSettings, jax_dtype
from resnet_limits.limits.mean_ode import SpanProblem, match_moments, particle_system
from resnet_limits.tasks import Task
from resnet_limits.training import Trajectory, mean_squared_loss, train

# Levels L', 2 L', 4 L' of one extrapolation.
LEVELS = 3
LEVEL_FACTOR = 2 ** (LEVELS - 1)

# Largest L' and M' that the tolerance search tries before it gives up.
MAX_DEPTH_POINTS = 8192
MAX_PARTICLES = 2**20


class ToleranceNotReached(RuntimeError):
    """The error estimate stayed above the tolerance up to the largest L' and M' allowed."""

    def __init__(self, message: str, best: LimitEstimate):
        super().__init__(message)
        self.best = best


@dataclasses.dataclass(frozen=True)
class LimitEstimate:
    """An extrapolated limit trajectory and the estimate of its error.

    ``error_estimate`` is an estimate of the RMS error of f_k over its d_out x N entries, at the
    worst step k, and ``relative_error_estimate`` divides it by the RMS of the targets y.
    ``depth_error`` and ``monte_carlo_error`` are its two parts.
    """

    trajectory: Trajectory
    error_estimate: float
    relative_error_estimate: float
    depth_error: float
    monte_carlo_error: float
    depth_points: tuple[int, ...]  # L' of the levels, coarsest first
    particles: int  # M' per depth point at the coarsest level of each replica


def coupled_level_units(key: jax.Array, settings: LimitSettings, span_dim: int, dtype):
    """Return units for levels L', 2 L', 4 L' that share one set of L' M' particles.

    Each level's units are antithetic pairs, moment-matched at every depth point of that level.
    """
    finest_depth = settings.depth_points * LEVEL_FACTOR
    half_width = settings.particles // (2 * LEVEL_FACTOR)
    key_u, key_v = jax.random.split(key)
    shape = (finest_depth, span_dim, half_width)
    u_base = jax.random.normal(key_u, shape, jnp.float32).astype(dtype)
    v_base = jax.random.normal(key_v, shape, jnp.float32).astype(dtype)

    units = []
    for level in range(LEVELS):
        group = LEVEL_FACTOR // 2**level  # neighbouring finest points pooled per depth point
        depth = finest_depth // group

        def pool(z):
            z = z.reshape(depth, group, span_dim, half_width).transpose(0, 2, 1, 3)
            return match_moments(z.reshape(depth, span_dim, group * half_width))

        u_half, v_half = pool(u_base), pool(v_base)
        units.append((jnp.concatenate([u_half, u_half], axis=2), jnp.concatenate([v_half, -v_half], axis=2)))
    return units


def check_particles(settings: LimitSettings, span_dim: int) -> None:
    """Raise ConfigError unless the particle count splits into the coupled levels of an estimate.

    The count must be a multiple of 2 LEVEL_FACTOR, for antithetic pairs at every level, and leave
    more than ``span_dim`` pairs at the finest level, for moment matching. The message names the
    smallest count that meets both.
    """
    step = 2 * LEVEL_FACTOR
    smallest = step * (span_dim + 1)
    particles = settings.particles
    if particles >= smallest and particles % step == 0:
        return
    suggestion = max(smallest, -(-particles // step) * step)
    raise ConfigError(
        f"particles must be a multiple of {step} and at least {smallest} ({LEVELS} coupled levels of "
        f"antithetic pairs, moments matched in dimension k = {span_dim}), got {particles}; "
        f"set --limit-particles to {suggestion} or another multiple of {step} above it"
    )


def resnet_level_systems(problem: SpanProblem, settings: LimitSettings, *, alpha: float, activation: str, dtype: str):
    """Yield (L', particle ResNet) for the levels L', 2 L', 4 L' of one replica, coupled as ``coupled_level_units``."""
    units = coupled_level_units(jax.random.key(settings.seed), settings, problem.span_dim, jax_dtype(dtype))
    for level, level_units in enumerate(units):
        depth = settings.depth_points * 2**level
        level_settings = dataclasses.replace(settings, depth_points=depth, particles=level_units[0].shape[2])
        yield depth, particle_system(
            problem, level_settings, alpha=alpha, activation=activation, dtype=dtype, units=level_units
        )


# A function (problem, settings, alpha=, activation=, dtype=) that yields (L', particle system) for
# the three coupled levels of one replica; ``resnet_level_systems`` is the one of a ResNet.
LevelSystems = Callable[..., Iterator[tuple[int, object]]]


def _replica_levels(problem, task, settings: LimitSettings, *, dtype, level_systems: LevelSystems, **kwargs):
    """Simulate the three coupled levels of one replica, yielding (L', trajectory) for each."""
    systems = level_systems(problem, settings, alpha=kwargs["alpha"], activation=kwargs["activation"], dtype=dtype)
    for depth, system in systems:
        trajectory = train(
            system, task.x_DinxN, task.y_DoutxN, steps=kwargs["steps"],
            learning_rate=kwargs["learning_rate"], loss_scale=task.loss_scale,
        )
        yield depth, trajectory


def _common_steps(trajectories: list[Trajectory]) -> int:
    return min(len(t.loss_K) for t in trajectories)


def _richardson(trajectories: list[Trajectory], steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return R_3 of f and of a(1), and the depth correction (R_2 - R_1) / 3 of f."""
    f1, f2, f4 = (t.f_KxDoutxN[:steps] for t in trajectories)
    a1, a2, a4 = (t.h_KxDxN[:steps] for t in trajectories)
    f_correction = ((2 * f4 - f2) - (2 * f2 - f1)) / 3
    f_best = (8 * f4 - 6 * f2 + f1) / 3
    a_best = (8 * a4 - 6 * a2 + a1) / 3
    return f_best, a_best, f_correction


def _rms_per_step(values_TxDoutxN: np.ndarray) -> np.ndarray:
    """Return the RMS over all entries of each step, tokens included for a sequence task."""
    return np.sqrt(np.mean(np.square(values_TxDoutxN), axis=tuple(range(1, values_TxDoutxN.ndim))))


def _estimate(replicas: list[list[Trajectory]], task: Task, settings: LimitSettings) -> LimitEstimate:
    steps = min(_common_steps(levels) for levels in replicas)
    (f_a, a_a, correction_a), (f_b, a_b, correction_b) = (_richardson(levels, steps) for levels in replicas)
    f_best, a_best = (f_a + f_b) / 2, (a_a + a_b) / 2
    depth_error = _rms_per_step((correction_a + correction_b) / 2)
    monte_carlo_error = _rms_per_step((f_a - f_b) / 2)
    total = np.sqrt(depth_error**2 + monte_carlo_error**2)
    worst = int(np.argmax(total))

    y_DoutxN = np.asarray(task.y_DoutxN, np.float64)
    diverged = [t.diverged_at for levels in replicas for t in levels if t.diverged_at is not None]
    trajectory = Trajectory(
        loss_K=np.array([float(mean_squared_loss(f, y_DoutxN, task.loss_scale)) for f in f_best]),
        f_KxDoutxN=f_best,
        h_KxDxN=a_best,
        diverged_at=min(diverged) if diverged else None,
    )
    y_scale = float(np.sqrt(np.mean(np.square(y_DoutxN))))
    return LimitEstimate(
        trajectory=trajectory,
        error_estimate=float(total[worst]),
        relative_error_estimate=float(total[worst]) / y_scale,
        depth_error=float(depth_error[worst]),
        monte_carlo_error=float(monte_carlo_error[worst]),
        depth_points=tuple(settings.depth_points * 2**level for level in range(LEVELS)),
        particles=settings.particles,
    )


def _power_of_two_at_least(ratio: float) -> int:
    """Return the least power of two >= ``ratio``, from 2 to 4.

    The cap keeps one noisy estimate from multiplying the cost by more than four.
    """
    return min(4, max(2, 2 ** math.ceil(math.log2(max(ratio, 1.0)))))


@dataclasses.dataclass(frozen=True)
class LevelEvent:
    """Progress of an estimate: an attempt starts (``trajectory`` None) or one level finished."""

    attempt: int
    settings: LimitSettings  # coarsest L' and M' of the attempt
    depth_points: int | None = None  # L' of the finished level
    trajectory: Trajectory | None = None


def estimate_limit_events(
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
    max_particles: int = MAX_PARTICLES,
    memory_check: Callable[[LimitSettings], None] | None = None,
    level_systems: LevelSystems = resnet_level_systems,
) -> Generator[LevelEvent, None, LimitEstimate]:
    """Yield a LevelEvent as work proceeds and return the LimitEstimate; see ``estimate_limit``.

    ``level_systems`` builds the particle systems of the levels: ResNets by default, or the
    Transformers of ``limits.transformer.transformer_level_systems``.
    """
    settings.validate()
    check_particles(settings, problem.span_dim)
    kwargs = dict(steps=steps, learning_rate=learning_rate, alpha=alpha, activation=activation)

    attempt = 0
    while True:
        yield LevelEvent(attempt, settings)
        replicas = []
        for replica in range(2):
            replica_settings = dataclasses.replace(settings, seed=(settings.seed + 2**31 * replica) % 2**32)
            levels = []
            replica_levels = _replica_levels(
                problem, task, replica_settings, dtype=dtype, level_systems=level_systems, **kwargs
            )
            for depth, trajectory in replica_levels:
                levels.append(trajectory)
                yield LevelEvent(attempt, settings, depth, trajectory)
            replicas.append(levels)
        estimate = _estimate(replicas, task, settings)
        if tol is None or estimate.error_estimate <= tol:
            return estimate
        if estimate.trajectory.diverged_at is not None:
            # A finer simulation diverges as well: the limit itself leaves the stable regime.
            return estimate

        # The Monte Carlo error falls as 1/sqrt(M') and the depth error of R_2 as 1/L'^2, so the
        # power of two that brings the larger part to 80 % of the tolerance is predictable.
        if estimate.monte_carlo_error > estimate.depth_error:
            factor = _power_of_two_at_least((estimate.monte_carlo_error / (0.8 * tol)) ** 2)
            settings = dataclasses.replace(settings, particles=factor * settings.particles)
        else:
            factor = _power_of_two_at_least((estimate.depth_error / (0.8 * tol)) ** 0.5)
            settings = dataclasses.replace(settings, depth_points=factor * settings.depth_points)
        if settings.depth_points * LEVEL_FACTOR > max_depth_points or settings.particles > max_particles:
            raise ToleranceNotReached(
                f"error estimate {estimate.error_estimate:.3g} is above the tolerance {tol:.3g} at "
                f"L' = {estimate.depth_points[0]} and M' = {estimate.particles} (depth part "
                f"{estimate.depth_error:.3g}, Monte Carlo part {estimate.monte_carlo_error:.3g}); raise the "
                f"tolerance or the largest L' ({max_depth_points}) and M' ({max_particles}), "
                "or compute in float64",
                estimate,
            )
        if memory_check is not None:
            try:
                memory_check(settings)
            except ConfigError as error:
                raise ToleranceNotReached(
                    f"error estimate {estimate.error_estimate:.3g} is above the tolerance {tol:.3g} at "
                    f"L' = {estimate.depth_points[0]} and M' = {estimate.particles}, and the next attempt "
                    f"does not fit: {error}",
                    estimate,
                ) from None
        attempt += 1


def estimate_limit(
    problem: SpanProblem,
    task: Task,
    settings: LimitSettings = LimitSettings(),
    *,
    on_level: Callable[[int, LimitSettings], None] | None = None,
    on_level_done: Callable[[int, Trajectory], None] | None = None,
    **kwargs,
) -> LimitEstimate:
    """Simulate the limit at L', 2 L', 4 L' in two replicas and extrapolate in depth.

    ``settings`` gives the coarsest L' and its M' particles per depth point. Without ``tol`` one
    extrapolation runs. With ``tol`` the search grows L' or M', whichever error part is larger,
    by a power of two, until the estimate meets it; it stops at the first attempt in which a
    simulation diverged, whose estimate carries the step in ``trajectory.diverged_at``. Keyword
    arguments ``tol``, ``steps``, ``learning_rate``, ``alpha``, ``activation``, ``dtype``,
    ``max_depth_points``, ``max_particles``, ``memory_check`` and ``level_systems`` are those of
    ``estimate_limit_events``: ``memory_check(settings)``, if given, runs before each grown
    attempt, and a ConfigError from it ends the search with ToleranceNotReached.
    ``on_level(attempt, settings)`` is called before each attempt and
    ``on_level_done(depth_points, trajectory)`` after each level, so a caller keeps finished work. Raises ToleranceNotReached, carrying the best estimate, when
    L' or M' would pass ``max_depth_points`` or ``max_particles``.
    """
    events = estimate_limit_events(problem, task, settings, **kwargs)
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            return finished.value
        if event.trajectory is None:
            if on_level is not None:
                on_level(event.attempt, event.settings)
        elif on_level_done is not None:
            on_level_done(event.depth_points, event.trajectory)
