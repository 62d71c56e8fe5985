"""Train a finite network and compare it, step by step, with the fixed-D Mean ODE and the large-D limit.

``Comparison`` is the one entry point of the command line and the apps. Its ``events`` iterator
computes the two limits (from a cache when they were computed before), then trains the network,
and yields a ``Progress`` after every simulated level and every training step, so a caller can
report progress, stay responsive and stop early. Rows computed before a stop are kept in ``rows``.

Each limit is the Richardson-extrapolated estimate of ``limits.estimate_limit`` (three coupled
levels L', 2 L', 4 L' in two replicas, with ``limit_settings`` giving the coarsest L' and M'), so
every comparison carries an estimate of its references' own error in ``limit_estimates``.

With ``RunConfig.arch == "transformer"`` the network is an ``MLUTransformer`` and each limit is
the extrapolated estimate of ``limits.transformer.estimate_transformer_limit`` (levels of L'
layers of M' heads and units), cached in the same way.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import pathlib
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

from resnet_limits import bounds, limits, metrics
from resnet_limits.compilation_cache import default_cache_dir
from resnet_limits.config import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    LimitSettings,
    RunConfig,
    check_memory,
    default_limit_settings,
    jax_dtype,
)
from resnet_limits.files import write_atomically
from resnet_limits.limits.extrapolation import LEVELS, LimitEstimate, check_particles, estimate_limit_events
from resnet_limits.limits.transformer import estimate_transformer_limit_events
from resnet_limits.models import MLUResNet, MLUTransformer
from resnet_limits.tasks import Task, coupled_embeddings, get_task
from resnet_limits.training import StepRecord, Trajectory, training_steps

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

STAGE_LIMIT = "large-D limit"
STAGE_MEAN_ODE = "fixed-D Mean ODE"
STAGE_TRAINING = "training"

ERROR_COLUMNS = (
    "embedding_error_mean_ode",
    "embedding_error_limit",
    "output_error_mean_ode",
    "output_error_limit",
)

# Simulated trajectories per limit: three levels in each of two replicas.
LIMIT_UNITS = 2 * LEVELS


def _save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a NumPy archive at exactly ``path`` (np.savez would add ".npz" to a name)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


class LimitCache:
    """Least-recently-used store of limit estimates, keyed by everything they depend on.

    With a ``directory``, every estimate is also written there as a NumPy ``.npz`` file (no
    pickle), named by a hash of its key, and read back when it is not in memory. A process that
    restarts, or another process that shares the directory, then finds the limits computed before.
    """

    def __init__(self, max_entries: int = 32, directory: str | os.PathLike | None = None):
        self.max_entries = max_entries
        self.directory = pathlib.Path(directory) if directory is not None else None
        self._entries: collections.OrderedDict[tuple, LimitEstimate] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> LimitEstimate | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        estimate = self._read(key)
        if estimate is not None:
            self._remember(key, estimate)
        return estimate

    def put(self, key: tuple, estimate: LimitEstimate) -> None:
        self._remember(key, estimate)
        self._write(key, estimate)

    def _remember(self, key: tuple, estimate: LimitEstimate) -> None:
        with self._lock:
            self._entries[key] = estimate
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    # -- on disk ------------------------------------------------------------------------------

    def path(self, key: tuple) -> pathlib.Path | None:
        """Return the file of ``key`` in the directory, or None without a directory."""
        if self.directory is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return self.directory / f"limit-{digest}.npz"

    def _write(self, key: tuple, estimate: LimitEstimate) -> None:
        path = self.path(key)
        if path is None:
            return
        trajectory = estimate.trajectory
        arrays = {
            "key": np.array(repr(key)),
            "loss_K": trajectory.loss_K,
            "f_KxDoutxN": trajectory.f_KxDoutxN,
            "h_KxDxN": trajectory.h_KxDxN,
            "diverged_at": np.array(-1 if trajectory.diverged_at is None else trajectory.diverged_at),
            "errors": np.array(
                [
                    estimate.error_estimate,
                    estimate.relative_error_estimate,
                    estimate.depth_error,
                    estimate.monte_carlo_error,
                ]
            ),
            "depth_points": np.array(estimate.depth_points),
            "particles": np.array(estimate.particles),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda temporary: _save_arrays(temporary, arrays))
        except OSError as error:
            logger.warning("limit not stored in %s: %s", path, error)

    def _read(self, key: tuple) -> LimitEstimate | None:
        path = self.path(key)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != repr(key):  # a hash collision
                    return None
                diverged_at = int(data["diverged_at"])
                errors = [float(value) for value in data["errors"]]
                return LimitEstimate(
                    trajectory=Trajectory(
                        loss_K=data["loss_K"],
                        f_KxDoutxN=data["f_KxDoutxN"],
                        h_KxDxN=data["h_KxDxN"],
                        diverged_at=None if diverged_at < 0 else diverged_at,
                    ),
                    error_estimate=errors[0],
                    relative_error_estimate=errors[1],
                    depth_error=errors[2],
                    monte_carlo_error=errors[3],
                    depth_points=tuple(int(depth) for depth in data["depth_points"]),
                    particles=int(data["particles"]),
                )
        except (OSError, ValueError, KeyError) as error:
            logger.warning("ignoring unreadable limit file %s: %s", path, error)
            return None


def default_limit_cache_dir() -> pathlib.Path:
    """Return $XDG_CACHE_HOME/resnet-limits/limits, with ~/.cache in place of an unset XDG_CACHE_HOME."""
    return default_cache_dir().parent / "limits"


DEFAULT_CACHE = LimitCache()


@dataclasses.dataclass(frozen=True)
class Progress:
    """One unit of work done: a simulated level of a limit or a training step.

    ``row`` is set on training steps: the step's loss and its four errors.
    """

    stage: str
    done: int  # units finished in the whole comparison
    total: int
    row: dict | None = None

    def within_stage(self) -> tuple[int, int, str]:
        """Return the units done in this stage, the stage's total and their name (simulations or steps).

        Training counts gradient steps: its first event, the evaluation at step 0, is 0 of K.
        """
        if self.stage == STAGE_TRAINING:
            return self.done - 2 * LIMIT_UNITS - 1, self.total - 2 * LIMIT_UNITS - 1, "steps"
        offset = 0 if self.stage == STAGE_LIMIT else LIMIT_UNITS
        return self.done - offset, LIMIT_UNITS, "simulations"

    @property
    def fraction(self) -> float:
        return self.done / self.total


class Comparison:
    """A training run of ``config`` and its errors against both limits at every step."""

    def __init__(
        self,
        config: RunConfig,
        limit_settings: LimitSettings | None = None,
        *,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
        cache: LimitCache | None = DEFAULT_CACHE,
    ):
        self.config = config.resolved()
        self.limit_settings = (limit_settings or default_limit_settings(self.config.arch)).validate()
        self.task: Task = get_task(self.config.task)
        self.memory_estimate_bytes = check_memory(
            self.config,
            self.task.num_samples,
            self.limit_settings,
            self.task.span_dim,
            memory_budget_bytes,
            num_tokens=self.task.num_tokens,
        )
        check_particles(self.limit_settings, self.task.span_dim)
        self.cache = cache
        self.rows: list[dict] = []
        self.diverged_at: int | None = None  # step at which the network's training diverged
        self.limit_diverged_at: dict[str, int] = {}  # per limit kind, when its simulation diverged
        self.limit_estimates: dict[str, LimitEstimate] = {}  # per limit kind, with its error estimate
        self.completed = False
        # The network, set when training starts. Between two events its parameters are those of
        # step ``model_step``.
        self.model: MLUResNet | MLUTransformer | None = None
        self.model_step: int | None = None
        # Per limit kind, the span problem and the basis (D x k) that maps its coefficients to R^D.
        self.span_problems: dict[str, tuple[limits.SpanProblem, np.ndarray]] = {}

    # -- the work -----------------------------------------------------------------------------

    def events(self) -> Iterator[Progress]:
        """Compute the limits, then train, yielding after every simulated level and training step."""
        config, task = self.config, self.task
        steps = config.K
        total = 2 * LIMIT_UNITS + steps + 1
        done = 0

        dtype = jax_dtype(config.dtype)
        key_embed, key_units = jax.random.split(jax.random.key(config.seed))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, dtype)

        large_problem = limits.large_dim_problem(task)
        large_basis = limits.large_dim_basis(task, w_embed, w_unembed)
        fixed_problem, fixed_basis = limits.fixed_dim_problem(w_embed, w_unembed)
        self.span_problems = {
            large_problem.kind: (large_problem, large_basis),
            fixed_problem.kind: (fixed_problem, fixed_basis),
        }

        references = {}
        for stage, problem in ((STAGE_LIMIT, large_problem), (STAGE_MEAN_ODE, fixed_problem)):
            estimate = None
            for item in self._limit_estimate(problem):
                if isinstance(item, LimitEstimate):
                    estimate = item
                else:
                    done += 1
                    yield Progress(stage, done, total)
            trajectory = references[stage] = estimate.trajectory
            self.limit_estimates[problem.kind] = estimate
            done = len(references) * LIMIT_UNITS
            if trajectory.diverged_at is not None:
                self.limit_diverged_at[problem.kind] = trajectory.diverged_at

        limit_h = limits.to_stream(references[STAGE_LIMIT].h_KxDxN, large_basis)
        mean_ode_h = limits.to_stream(references[STAGE_MEAN_ODE].h_KxDxN, fixed_basis)
        limit_f = references[STAGE_LIMIT].f_KxDoutxN
        mean_ode_f = references[STAGE_MEAN_ODE].f_KxDoutxN

        model = build_network(config, w_embed, w_unembed, key_units)
        self.model = model
        for record in training_steps(
            model,
            task.x_DinxN,
            task.y_DoutxN,
            steps=steps,
            learning_rate=config.learning_rate,
            loss_scale=task.loss_scale,
        ):
            done += 1
            self.model_step = record.step
            if record.diverged:
                self.diverged_at = record.step
                yield Progress(STAGE_TRAINING, done, total)
                return
            row = error_row(record, limit_h, limit_f, mean_ode_h, mean_ode_f)
            self.rows.append(row)
            yield Progress(STAGE_TRAINING, done, total, row)
        self.completed = True

    def run(self, on_progress: Callable[[Progress], None] | None = None) -> Comparison:
        """Run all events to the end; ``on_progress`` receives each one."""
        for progress in self.events():
            if on_progress is not None:
                on_progress(progress)
        return self

    def _limit_estimate(self, problem: limits.SpanProblem):
        """Yield a marker per simulated level, then the estimate (cached by its inputs)."""
        config = self.config
        key = (
            problem.cache_key(),
            self.task.name,
            config.K,
            config.learning_rate,
            config.alpha,
            config.activation,
            config.dtype,
            self.limit_settings,
        )
        kwargs = dict(
            steps=config.K,
            learning_rate=config.learning_rate,
            alpha=config.alpha,
            activation=config.activation,
            dtype=config.dtype,
        )
        if config.arch == "transformer":
            key += ("transformer", config.key_dim, config.value_dim)
            events = estimate_transformer_limit_events(
                problem, self.task, self.limit_settings, key_dim=config.key_dim, value_dim=config.value_dim, **kwargs
            )
        else:
            events = estimate_limit_events(problem, self.task, self.limit_settings, **kwargs)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            events.close()
            yield cached
            return
        while True:
            try:
                event = next(events)
            except StopIteration as finished:
                estimate = finished.value
                break
            if event.trajectory is not None:
                yield event.depth_points
        if self.cache is not None:
            self.cache.put(key, estimate)
        yield estimate

    # -- results ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.diverged_at is not None:
            return "diverged"
        return "completed" if self.completed else "interrupted"

    def bound_terms(self) -> dict[str, float]:
        """Return the embedding bound's terms for this shape; a Transformer's include "attention", sqrt(D/(L H))."""
        config = self.config
        if config.arch == "transformer":
            return bounds.transformer_bound_terms(config.L, config.H, config.M, config.D)
        return bounds.bound_terms(config.L, config.M, config.D)

    def predicted_errors(self) -> dict[str, float]:
        """Return the error laws' predictions (fitted constants) for this shape."""
        L, M, D = self.config.L, self.config.M, self.config.D
        if self.config.arch == "transformer":
            H = self.config.H
            return {
                "embedding": bounds.transformer_predict(bounds.EMBEDDING_LAW, L, H, M, D),
                "output": bounds.transformer_predict(bounds.OUTPUT_LAW, L, H, M, D),
            }
        return {
            "embedding": float(bounds.EMBEDDING_LAW.predict(L, M, D)),
            "output": float(bounds.OUTPUT_LAW.predict(L, M, D)),
        }

    def limit_error_summaries(self) -> dict[str, dict]:
        """Return ``limit_error_summary`` of each limit that did not diverge.

        The levels of a diverged limit stop at different steps, so their differences do not
        measure its error. Such a limit gets no estimate.
        """
        return {
            kind: limit_error_summary(estimate)
            for kind, estimate in self.limit_estimates.items()
            if kind not in self.limit_diverged_at
        }

    def to_dict(self) -> dict:
        """Return the run as plain JSON-ready data."""
        config = self.config
        shape = {"L": config.L, "M": config.M, "D": config.D}
        extra = {}
        if config.arch == "transformer":
            shape.update(H=config.H, key_dim=config.key_dim, value_dim=config.value_dim)
            extra["optimal_shape"] = {
                law.name: dataclasses.asdict(
                    bounds.transformer_optimal_shape(
                        config.num_parameters, law, key_dim=config.key_dim, value_dim=config.value_dim
                    )
                )
                for law in (bounds.EMBEDDING_LAW, bounds.OUTPUT_LAW)
            }
        return {
            "shape": shape,
            "arch": config.arch,
            "task": config.task,
            "settings": {
                "K": config.K,
                "learning_rate": config.learning_rate,
                "alpha": config.alpha,
                "activation": config.activation,
                "seed": config.seed,
                "dtype": config.dtype,
                "limit_depth_points": self.limit_settings.depth_points,
                "limit_particles": self.limit_settings.particles,
            },
            "num_parameters": config.num_parameters,
            "bound": self.bound_terms(),
            "predicted_error": self.predicted_errors(),
            **extra,
            "status": self.status,
            "diverged_at_step": self.diverged_at,
            "limit_diverged_at_step": dict(self.limit_diverged_at),
            "limit_error_estimate": self.limit_error_summaries(),
            "steps": list(self.rows),
        }


def build_network(config: RunConfig, w_embed, w_unembed, key_units: jax.Array):
    """Return the untrained network of a resolved ``config``: an MLUResNet, or an MLUTransformer."""
    if config.arch == "transformer":
        return MLUTransformer(
            w_embed,
            w_unembed,
            depth=config.L,
            heads=config.H,
            width=config.M,
            key_dim=config.key_dim,
            value_dim=config.value_dim,
            key=key_units,
            alpha=config.alpha,
            activation=config.activation,
        )
    return MLUResNet(
        w_embed,
        w_unembed,
        depth=config.L,
        width=config.M,
        key=key_units,
        alpha=config.alpha,
        activation=config.activation,
    )


def limit_error_summary(estimate: LimitEstimate) -> dict:
    """Return the error estimate of a limit as plain data: RMS of f_k at the worst step, and its parts."""
    return {
        "error_estimate": estimate.error_estimate,
        "relative_error_estimate": estimate.relative_error_estimate,
        "depth_error": estimate.depth_error,
        "monte_carlo_error": estimate.monte_carlo_error,
        "depth_points": list(estimate.depth_points),
        "particles": estimate.particles,
    }


def error_row(record: StepRecord, limit_h, limit_f, mean_ode_h, mean_ode_f) -> dict:
    """Return the loss and the four errors of one training step; None where a limit diverged first."""
    k = record.step
    row = {"step": k, "loss": record.loss}
    for name, reference_h, reference_f in (
        ("limit", limit_h, limit_f),
        ("mean_ode", mean_ode_h, mean_ode_f),
    ):
        if k < len(reference_h):
            row[f"embedding_error_{name}"] = metrics.embedding_error(record.h_DxN, reference_h[k])
            row[f"output_error_{name}"] = metrics.output_error(record.f_DoutxN, reference_f[k])
        else:
            row[f"embedding_error_{name}"] = None
            row[f"output_error_{name}"] = None
    return {key: row[key] for key in ("step", "loss", *ERROR_COLUMNS)}
