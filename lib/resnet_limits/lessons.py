"""Computations behind the teaching notebooks, each returning plain data (dicts, lists, DataFrames).

* ``small_sweep``: a sweep of a few shapes in a directory, at its last step, with fitted slopes;
  ``depth_width_table`` adds the product L M, on which the fixed-D error depends.
* ``span_reduction``: how much of a trained network's stream lies outside the span of its
  embeddings E = [W_E, W_U], of dimension r = d_in + d_out.
* ``limit_gap``: the distance between the fixed-D Mean ODE and the large-D limit, per D.
* ``gaussian_coordinates``: histograms of the coordinates h^d(s = 1) of networks of growing D
  against the Gaussian law of the large-D limit, with their Kolmogorov-Smirnov distances.
* ``budget_table``: the bound's terms along the shapes that it prefers for growing budgets P.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
import pandas as pd

from resnet_limits import bounds, limits, metrics
from resnet_limits.config import ConfigError, LimitSettings, check_positive_int, jax_dtype
from resnet_limits.coordinates import (
    CoordinateHistogram,
    LimitStreams,
    coordinate_histogram,
    task_streams,
    trained_particle_system,
)
from resnet_limits.models import MLUResNet
from resnet_limits.sweeps import ResultStore, SweepSpec, TaskSettings, fits, paths, run_sweep
from resnet_limits.tasks import Task, coupled_embeddings, get_task
from resnet_limits.training import train
from resnet_limits.worker import worker_function

# Limit settings small enough for a notebook cell. With ``limit_tol=None`` the large-D limit is one
# extrapolation at LESSON_LIMIT_START, and the fixed-D Mean ODE one simulation at LESSON_MEAN_ODE.
LESSON_LIMIT_START = LimitSettings(depth_points=16, particles=512)
LESSON_MEAN_ODE = LimitSettings(depth_points=32, particles=2048)

# progress(stage, done, total): the callback that the worker passes to a ``@worker_function``.
Progress = Callable[[str, int, int], None]


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _network(task: Task, L: int, M: int, D: int, seed: int, dtype: str = "float32") -> MLUResNet:
    """Return the MLU network that ``experiment.Comparison`` builds for this shape and seed."""
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, D, jax_dtype(dtype))
    return MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, activation=task.activation)


def _train(model: MLUResNet, task: Task, steps: int):
    return train(model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=task.learning_rate,
                 loss_scale=task.loss_scale)


# -- sweeps ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The last step of every completed run of a sweep, and its per-axis slopes."""

    frame: pd.DataFrame  # one row per (L, M, D, seed): the errors at step K
    slopes: pd.DataFrame  # ``fits.axis_slopes`` of ``column``
    column: str  # the error column the slopes are fitted to


def small_sweep(
    depths: Sequence[int],
    widths: Sequence[int],
    dims: Sequence[int],
    seeds: Sequence[int],
    out,
    *,
    column: str = "embedding_error_mean_ode",
    task: str = "paper-tanh",
    steps: int | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    """Run the sweep of depths x widths x dims x seeds into the directory ``out`` and fit slopes.

    The limits use LESSON_LIMIT_START (one extrapolation, no tolerance) and LESSON_MEAN_ODE, so a
    grid of a dozen small shapes takes seconds. ``out`` is a result store, so a second call with
    the same grid reads it back. ``column`` names the error of the slopes (``fits.error_column``).
    ``progress("training", done, total)`` is called after every finished configuration. Raises
    ConfigError when no run completed.
    """
    spec = SweepSpec.product(
        depths, widths, dims, seeds, settings=(TaskSettings(task=task, K=steps),),
        limit_tol=None, limit_start=LESSON_LIMIT_START, mean_ode=LESSON_MEAN_ODE,
    )
    on_progress = None if progress is None else (lambda state: progress("training", state.done, state.total))
    run_sweep(spec, out, on_progress=on_progress)
    frame = fits.select_step(ResultStore(out).load())
    if frame.empty:
        raise ConfigError("no run of the sweep completed; lower the learning rate or choose smaller shapes")
    frame = frame.sort_values(["L", "M", "D", "seed"]).reset_index(drop=True)
    return SweepResult(frame=frame, slopes=fits.axis_slopes(frame, column), column=column)


def depth_width_table(result: SweepResult) -> tuple[pd.DataFrame, fits.Slope]:
    """Return the sweep's rows with the column ``LM`` = L M, and the slope of the error against L M."""
    frame = result.frame.assign(LM=result.frame["L"] * result.frame["M"])
    chosen = frame[np.isfinite(frame[result.column]) & (frame[result.column] > 0)]
    if chosen["LM"].nunique() < 2:
        raise ConfigError("the slope against L M needs at least two values of L M; add depths or widths")
    return frame, fits.fit_slope(chosen["LM"], chosen[result.column])


# -- the reduction to r dimensions ------------------------------------------------------------------


def _span_basis(model: MLUResNet) -> np.ndarray:
    """Return an orthonormal basis (D x rank) of the span of E = [W_E, W_U]."""
    _, basis_DxK = limits.fixed_dim_problem(model.w_embed[...], model.w_unembed[...])
    return basis_DxK / math.sqrt(basis_DxK.shape[0])


def span_reduction(
    shapes: Sequence[tuple[int, int, int]],
    *,
    task: str = "paper-tanh",
    steps: int = 5,
    seed: int = 0,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Train one network per shape and measure how much of its streams lies outside span(E).

    Returns one row per shape: L, M, D, r (the rank of E, d_in + d_out when D >= r), and
    ``outside_fraction``, the RMS of the component of H_l orthogonal to span(E) divided by the
    RMS of H_l, over every depth l and sample, after ``steps`` gradient steps. The limit keeps
    every stream in span(E), so this fraction is a finite-size effect.
    """
    task_object = get_task(task)
    rows = []
    for index, (L, M, D) in enumerate(shapes):
        _report(progress, "training", index, len(shapes))
        model = _network(task_object, L, M, D, seed)
        _train(model, task_object, steps)
        streams = task_streams(model, task_object)
        basis_DxK = _span_basis(model)
        h_SxDxN = np.asarray(streams.forward_SxDxN, np.float64)
        inside_SxDxN = np.einsum("dk,ek,sen->sdn", basis_DxK, basis_DxK, h_SxDxN)
        rows.append({
            "L": int(L), "M": int(M), "D": int(D), "r": int(basis_DxK.shape[1]),
            "outside_fraction": metrics.rms(h_SxDxN - inside_SxDxN) / metrics.rms(h_SxDxN),
            "width_term": float(math.sqrt(D / (L * M))),
        })
    _report(progress, "training", len(shapes), len(shapes))
    return pd.DataFrame(rows)


# -- the gap between the two limits ---------------------------------------------------------------


def limit_gap(
    dims: Sequence[int],
    seeds: Sequence[int] = (0,),
    *,
    task: str = "paper-tanh",
    steps: int | None = None,
    settings: LimitSettings = LESSON_MEAN_ODE,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, fits.Slope]:
    """Return the RMS gap between the fixed-D Mean ODE and the large-D limit per D and seed, and its slope.

    Both limits are mapped to R^D with their bases and compared at step K, on the last stream
    (``embedding_gap``) and on the outputs (``output_gap``). With the default ``settings``
    (32 x 2048 particles) the gap of paper-tanh changed by about 1 % when the simulators used
    64 x 8192 particles in place, at D from 1024 to 16384, so the simulation error is small
    against the gap. Each D and seed is one draw of the embeddings, so single gaps scatter.
    The slope is that of log ``embedding_gap`` against log D; the bound's term is 1/sqrt(D), a
    slope of -1/2.
    """
    task_object = get_task(task)
    steps = task_object.steps if steps is None else check_positive_int("steps", steps, "steps")
    options = dict(steps=steps, learning_rate=task_object.learning_rate, alpha=task_object.alpha,
                   activation=task_object.activation)
    total = 1 + len(seeds) * len(dims)
    _report(progress, "large-D limit", 0, total)
    large_problem = limits.large_dim_problem(task_object)
    large = limits.simulate_limit(large_problem, task_object, settings, **options)
    rows = []
    for seed in seeds:
        key_embed, _ = jax.random.split(jax.random.key(seed))
        for D in dims:
            _report(progress, "fixed-D Mean ODE", 1 + len(rows), total)
            w_embed, w_unembed = coupled_embeddings(key_embed, task_object, D)
            fixed_problem, fixed_basis = limits.fixed_dim_problem(w_embed, w_unembed)
            fixed = limits.simulate_limit(fixed_problem, task_object, settings, **options)
            large_basis = limits.large_dim_basis(task_object, w_embed, w_unembed)
            last = min(len(fixed.loss_K), len(large.loss_K)) - 1
            rows.append({
                "D": int(D),
                "seed": int(seed),
                "step": last,
                "embedding_gap": metrics.embedding_error(fixed_basis @ fixed.h_KxDxN[last],
                                                         large_basis @ large.h_KxDxN[last]),
                "output_gap": metrics.output_error(fixed.f_KxDoutxN[last], large.f_KxDoutxN[last]),
                "embedding_term": 1.0 / math.sqrt(D),
            })
    frame = pd.DataFrame(rows)
    return frame, fits.fit_slope(frame["D"], frame["embedding_gap"])


# -- Gaussian coordinates -------------------------------------------------------------------------


def gaussian_coordinates(
    dims: Sequence[int],
    *,
    L: int = 16,
    M: int = 64,
    task: str = "paper-tanh",
    steps: int = 5,
    seed: int = 0,
    settings: LimitSettings = LESSON_MEAN_ODE,
    progress: Progress | None = None,
) -> list[CoordinateHistogram]:
    """Return, per D, the histogram of a trained network's coordinates h^d(s = 1) and the limit's law.

    Each network of shape (L, M, D) trains for ``steps`` steps. Its coordinates, pooled over the
    samples, are compared with the Gaussian law of the large-D limit at the same step
    (``coordinates.coordinate_histogram``), whose ``ks_statistic`` is their Kolmogorov-Smirnov
    distance.
    """
    task_object = get_task(task)
    _report(progress, "large-D limit", 0, 1 + len(dims))
    problem = limits.large_dim_problem(task_object)
    system = trained_particle_system(problem, task_object, settings, steps=steps,
                                     learning_rate=task_object.learning_rate, alpha=task_object.alpha,
                                     activation=task_object.activation)
    limit_streams = task_streams(system, task_object)
    histograms = []
    for index, D in enumerate(dims):
        _report(progress, "training", 1 + index, 1 + len(dims))
        model = _network(task_object, L, M, D, seed)
        _train(model, task_object, steps)
        basis_DxK = limits.large_dim_basis(task_object, model.w_embed[...], model.w_unembed[...])
        limit = LimitStreams(limits.LARGE_DIM, limit_streams, basis_DxK)
        histograms.append(coordinate_histogram(task_streams(model, task_object), limit, 1.0))
    return histograms


# -- budgets and optimal shapes -------------------------------------------------------------------


def budget_table(budgets: Sequence[float], law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> pd.DataFrame:
    """Return, per budget P, the optimal integer shape of ``law`` and the three terms there.

    The terms are those of ``law`` without constants (``ErrorLaw.term_values``), and
    ``bound_sum`` is their sum, the bound with C = 1.
    """
    rows = []
    for shape in paths.optimal_shapes(budgets, law):
        terms = law.term_values(shape.L, shape.M, shape.D)
        rows.append({
            "budget": float(shape.num_parameters),
            "L": shape.L, "M": shape.M, "D": shape.D,
            **{name: float(value) for name, value in terms.items()},
            "bound_sum": float(sum(terms.values())),
        })
    return pd.DataFrame(rows)


@worker_function
def optimal_rates() -> pd.DataFrame:
    """Return the exponents (a, b, c) and the rate of the embedding and output laws' optimal shapes."""
    rows = []
    for law in (bounds.EMBEDDING_LAW, bounds.OUTPUT_LAW):
        exponents = bounds.optimal_exponents(law.terms)
        rows.append({"law": law.name, "L exponent a": exponents.depth, "M exponent b": exponents.width,
                     "D exponent c": exponents.dim, "error ~ P^-rate": exponents.rate})
    return pd.DataFrame(rows)


def path_rates(law: bounds.ErrorLaw = bounds.EMBEDDING_LAW) -> pd.DataFrame:
    """Return the predicted slope of the bound against P on each path D = P^c of ``paths``."""
    return pd.DataFrame([
        {"D exponent c": c, "predicted slope": paths.predicted_path_slope(c, law)}
        for c in paths.PATH_DIM_EXPONENTS
    ])


# -- calls from the course panels -----------------------------------------------------------------
# Each panel of the course calls one of these functions in the worker process
# (``resnet_limits.worker``). Arguments are JSON values and results are JSON values, arrays and
# DataFrames, so every function here wraps one computation above.


def _slope_dict(slope: fits.Slope) -> dict:
    return dataclasses.asdict(slope)


def _sweep_dict(result: SweepResult) -> dict:
    return {"frame": result.frame, "slopes": result.slopes, "column": result.column}


@worker_function
def training_run(*, rule: str, L: int, M: int, D: int, steps: int, progress: Progress | None = None) -> dict:
    """Train the network of shape (L, M, D) on paper-tanh under ``rule``; return its loss per step.

    Returns ``loss`` (steps 0..K, or fewer after a divergence) and ``diverged_at`` (None, or the
    step at which the loss stopped being finite).
    """
    from resnet_limits import parametrization

    task_object = get_task("paper-tanh")
    _report(progress, "training", 0, 1)
    trajectory = parametrization.train_under_rule(parametrization.get_rule(rule), task_object, L, M, D,
                                                  steps=steps, learning_rate=task_object.learning_rate)
    _report(progress, "training", 1, 1)
    return {"loss": np.asarray(trajectory.loss_K, np.float64), "diverged_at": trajectory.diverged_at}


@worker_function
def coordinate_checks(*, sizes: list, steps: int, rules: Sequence[str] = ("mlu", "standard"),
                      progress: Progress | None = None) -> dict:
    """Run ``parametrization.coordinate_check`` for each rule over the shapes ``sizes``; rows per rule.

    Every shape is one call, so progress is reported per rule and shape.
    """
    from resnet_limits import parametrization

    shapes = [tuple(int(size) for size in shape) for shape in sizes]
    total = len(rules) * len(shapes)
    records: dict[str, list[dict]] = {}
    for rule_index, name in enumerate(rules):
        records[name] = []
        for shape_index, shape in enumerate(shapes):
            _report(progress, f"training under {name}", rule_index * len(shapes) + shape_index, total)
            records[name] += parametrization.coordinate_check(name, [shape], steps=steps)
    _report(progress, "training", total, total)
    return records


@worker_function
def depth_width_sweep(*, depths: list[int], widths: list[int], dim: int, out: str, seed: int = 0,
                      progress: Progress | None = None) -> dict:
    """Run ``small_sweep`` over depths x widths at D = ``dim`` against the fixed-D Mean ODE.

    Returns the sweep (``frame``, ``slopes``, ``column``), the frame with the column ``LM`` as
    ``table``, and the slope of the error against L M (``fits.Slope`` fields) as ``slope``.
    """
    result = small_sweep(depths, widths, [dim], [seed], out, progress=progress)
    table, slope = depth_width_table(result)
    return {**_sweep_dict(result), "table": table, "slope": _slope_dict(slope)}


@worker_function
def span_table(*, shapes: list, progress: Progress | None = None) -> pd.DataFrame:
    """Return ``span_reduction`` of the shapes [L, M, D] after 5 steps."""
    return span_reduction([tuple(int(size) for size in shape) for shape in shapes], progress=progress)


@worker_function
def limit_gap_table(*, dims: list[int], progress: Progress | None = None) -> dict:
    """Return ``limit_gap`` of the dimensions ``dims``: its ``frame`` and its ``slope`` in log D."""
    frame, slope = limit_gap(dims, progress=progress)
    return {"frame": frame, "slope": _slope_dict(slope)}


@worker_function
def gaussian_histograms(*, dims: list[int], progress: Progress | None = None) -> list[dict]:
    """Return ``gaussian_coordinates`` of ``dims`` as the fields of each ``CoordinateHistogram``.

    ``CoordinateHistogram(**{name: numpy.asarray(value) ...})`` rebuilds one. Each dict also has
    the network's ``D`` and the ``ks_statistic``.
    """
    histograms = gaussian_coordinates(dims, progress=progress)
    return [{**{field.name: getattr(histogram, field.name) for field in dataclasses.fields(histogram)},
             "D": int(D), "ks_statistic": histogram.ks_statistic()} for D, histogram in zip(dims, histograms)]


@worker_function
def budget_terms(*, law: str, budgets: list[float]) -> dict:
    """Return ``budget_table`` of ``law`` ("embedding" or "output"), ``optimal_rates`` and ``path_rates``."""
    chosen = fits.law_named(law)
    return {"frame": budget_table(budgets, chosen), "rates": optimal_rates(), "paths": path_rates(chosen)}


@worker_function
def shape_sweep(*, depth: int, widths: list[int], dims: list[int], out: str, seed: int = 0,
                progress: Progress | None = None) -> dict:
    """Run ``small_sweep`` over widths x dims at L = ``depth`` against the large-D limit and fit the law.

    Returns the sweep (``frame``, ``slopes``, ``column``) and ``constants``, the fitted constants
    of error^2 = a^2 D/(L M) + b^2/D with their 95 % intervals (``fits.fit_error_law``).
    """
    result = small_sweep([depth], widths, dims, [seed], out, column="embedding_error_limit", progress=progress)
    law_fit = fits.fit_error_law(result.frame, result.column, bounds.EMBEDDING_LAW)
    return {**_sweep_dict(result), "constants": law_fit.to_dict()["constants"]}
