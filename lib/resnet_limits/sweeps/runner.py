"""Run a sweep: train each group of seeds, compare with both limits, and store one part per run.

The work of a group is ``compute_group``: one call of the group trainer for all its seeds, the
fixed-D Mean ODE of each seed, and the per-step errors against both limits, returned as plain
rows (lists of dicts). ``run_sweep`` runs the groups in this process, several at a time in
threads, or submits them to a Dask cluster when given a scheduler address or a
``distributed.Client``. In both cases this process writes each configuration's part as soon as
its rows arrive, so a killed sweep loses only the groups in flight, and a rerun skips every
configuration whose part exists.

Groups run in threads because JAX releases the GIL while XLA compiles and computes. On the 2-core
machine of benchmarks/README.md, two groups of 5 seeds at a time took 1.7 times less time than one
at a time at L = 50, M = D = 100, 1.3 times less at M = D = 400 and the same time at
M = D = 1000, where one group already uses the memory bandwidth. Over the first 300 runs of the
paper's grid the gain was 13 %. The rows do not depend on the number of threads.

NOTE: Dask serialises the submitted call (``compute_group``, the group, the large-D limit and the
trainer) with its own protocol, which falls back to pickle. The results it returns are plain
lists of dicts, and the store itself contains only Parquet, JSON and NumPy archives.

References:

* Large-D limit: the Richardson-extrapolated estimate of ``limits.extrapolation.estimate_limit``
  with the spec's tolerance. It depends on the task settings alone, so it is computed once per
  task settings in this process, stored in the result directory, and sent to the workers.
* Fixed-D Mean ODE: one ``limits.simulate_limit`` run with the spec's ``mean_ode`` settings (the
  ``LimitSettings`` defaults unless changed). It depends on D and the seed through the
  embeddings, and is cached per process, so groups of other L and M on the same worker reuse it.

For a sequence task the networks are Transformers with H = M (``sweeps.grid``), the large-D limit
is ``limits.transformer.estimate_transformer_limit`` and the fixed-D Mean ODE one
``limits.simulate_transformer_limit`` run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from resnet_limits import group_training, limits
from resnet_limits.config import DEFAULT_MEMORY_BUDGET_BYTES, ConfigError, RunConfig, check_memory, jax_dtype
from resnet_limits.experiment import ERROR_COLUMNS, LimitCache, build_network, error_row
from resnet_limits.limits.extrapolation import ToleranceNotReached, estimate_limit
from resnet_limits.limits.transformer import estimate_transformer_limit
from resnet_limits.sweeps.grid import Configuration, Group, SweepSpec, TaskSettings
from resnet_limits.sweeps.store import ResultStore, rows_to_frame
from resnet_limits.tasks import Task, coupled_embeddings, get_task
from resnet_limits.training import StepRecord, Trajectory, train

logger = logging.getLogger(__name__)

STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"

# Name prefix of the threads that compute groups in this process.
SWEEP_THREAD_PREFIX = "resnet-limits-sweep"

# A group trainer: (task, resolved config, seeds) -> one Trajectory per seed, in seed order.
# The config's own seed is ignored.
GroupTrainer = Callable[[Task, RunConfig, Sequence[int]], "list[Trajectory]"]


def train_group(task: Task, config: RunConfig, seeds: Sequence[int]) -> list[Trajectory]:
    """Train one network per seed, each built exactly as ``experiment.Comparison.events`` builds it.

    The seed's key splits into an embedding key (coupled embeddings: any D reads the first D rows
    of one root matrix) and a unit key.
    """
    dtype = jax_dtype(config.dtype)
    trajectories = []
    for seed in seeds:
        key_embed, key_units = jax.random.split(jax.random.key(seed))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, dtype)
        model = build_network(config, w_embed, w_unembed, key_units)
        trajectories.append(
            train(
                model,
                task.x_DinxN,
                task.y_DoutxN,
                steps=config.K,
                learning_rate=config.learning_rate,
                loss_scale=task.loss_scale,
            )
        )
    return trajectories


# The trainer that ``run_sweep`` uses unless given another one. For a ResNet it trains all K steps
# of every seed in one compiled call, with factored weight updates (``resnet_limits.group_training``),
# which equals ``train_group`` above up to rounding and is several times faster on large shapes.
# A Transformer's seeds are trained one by one with ``train_group``.
def default_trainer(
    task: Task, config: RunConfig, seeds: Sequence[int], *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
) -> list[Trajectory]:
    if config.arch == "transformer":
        return train_group(task, config, seeds)
    return group_training.train_group(task, config, seeds, memory_budget_bytes=memory_budget_bytes)


DEFAULT_TRAINER = default_trainer

# Fixed-D Mean ODE trajectories of this process, keyed by task settings, D, seed and LimitSettings.
_MEAN_ODE_CACHE = LimitCache(max_entries=256)


@dataclasses.dataclass(frozen=True)
class LargeLimit:
    """The large-D limit of one task settings: coefficients a(1) (K x r x N), outputs and loss."""

    loss_K: np.ndarray
    f_KxDoutxN: np.ndarray
    a_KxRxN: np.ndarray
    error_estimate: float

    def trajectory(self) -> Trajectory:
        return Trajectory(self.loss_K, self.f_KxDoutxN, self.a_KxRxN)


class _LimitDiverged(Exception):
    """A level of the large-D extrapolation diverged; args are its L' and the step."""


def compute_large_limit(settings: TaskSettings, spec: SweepSpec) -> LargeLimit:
    """Return the extrapolated large-D limit of ``settings`` at the spec's tolerance.

    When the tolerance is out of reach, logs a warning and returns the best estimate. Every row
    records the estimate's error in the column ``limit_error_estimate``.
    """
    config = settings.run_config(1, 1, 1, 0)
    task = get_task(config.task)
    problem = limits.large_dim_problem(task)
    kwargs = dict(steps=config.K, learning_rate=config.learning_rate, alpha=config.alpha,
                  activation=config.activation, dtype=config.dtype)
    if config.arch == "transformer":
        estimate = functools.partial(estimate_transformer_limit, key_dim=config.key_dim, value_dim=config.value_dim)
    else:
        estimate = estimate_limit

    def stop_if_diverged(depth_points: int, trajectory: Trajectory) -> None:
        if trajectory.diverged_at is not None:
            raise _LimitDiverged(depth_points, trajectory.diverged_at)

    try:
        result = estimate(problem, task, spec.limit_start, tol=spec.limit_tol,
                          on_level_done=stop_if_diverged, **kwargs)
    except ToleranceNotReached as error:
        logger.warning("large-D limit of %s: %s; using the best estimate", settings, error)
        result = error.best
    except _LimitDiverged as diverged:
        # A diverged limit has no finite error estimate, so more depth points or particles
        # cannot meet the tolerance. One extrapolation gives the steps before the divergence.
        depth_points, step = diverged.args
        logger.warning("large-D limit of %s diverged at step %d with L' = %d; its rows stop there",
                       settings, step, depth_points)
        result = estimate(problem, task, spec.limit_start, tol=None, **kwargs)
    trajectory = result.trajectory
    return LargeLimit(trajectory.loss_K, trajectory.f_KxDoutxN, trajectory.h_KxDxN, result.error_estimate)


def _mean_ode(task: Task, config: RunConfig, w_embed, w_unembed, settings) -> tuple[Trajectory, np.ndarray]:
    """Return the fixed-D Mean ODE of the embeddings and its basis, from the process cache if there."""
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    key = (problem.cache_key(), task.name, config.K, config.learning_rate, config.alpha, config.activation,
           config.dtype, settings, config.arch, config.key_dim, config.value_dim)
    trajectory = _MEAN_ODE_CACHE.get(key)
    if trajectory is None:
        kwargs = dict(steps=config.K, learning_rate=config.learning_rate, alpha=config.alpha,
                      activation=config.activation, dtype=config.dtype)
        if config.arch == "transformer":
            trajectory = limits.simulate_transformer_limit(
                problem, task, settings, key_dim=config.key_dim, value_dim=config.value_dim, **kwargs
            )
        else:
            trajectory = limits.simulate_limit(problem, task, settings, **kwargs)
        _MEAN_ODE_CACHE.put(key, trajectory)
    return trajectory, basis_DxK


def _base_row(configuration: Configuration, config: RunConfig) -> dict:
    return {
        "config_id": configuration.config_id,
        **configuration.settings.to_dict(),
        "L": configuration.L,
        "M": configuration.M,
        "D": configuration.D,
        "seed": configuration.seed,
        "P": config.num_parameters,
    }


def failed_rows(configuration: Configuration, config: RunConfig, message: str, seconds: float) -> list[dict]:
    """Return the single row that records a failed configuration."""
    row = _base_row(configuration, config)
    row.update({"step": None, "loss": None, "status": STATUS_FAILED, "diverged_at": None,
                "wall_seconds": seconds, "limit_error_estimate": None, "message": message})
    for column in ERROR_COLUMNS:
        row[column] = None
    return [row]


def _step_rows(
    configuration: Configuration,
    config: RunConfig,
    task: Task,
    trajectory: Trajectory,
    large: LargeLimit,
    mean_ode_settings,
    training_seconds: float,
) -> list[dict]:
    """Return one row per recorded step of one seed's trajectory, with errors against both limits."""
    start = time.perf_counter()
    key_embed, _ = jax.random.split(jax.random.key(configuration.seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, jax_dtype(config.dtype))
    mean_ode, mean_ode_basis = _mean_ode(task, config, w_embed, w_unembed, mean_ode_settings)
    limit_h = limits.to_stream(large.a_KxRxN, limits.large_dim_basis(task, w_embed, w_unembed))
    mean_ode_h = limits.to_stream(mean_ode.h_KxDxN, mean_ode_basis)

    rows = []
    for step in range(len(trajectory.loss_K)):
        record = StepRecord(step, float(trajectory.loss_K[step]), trajectory.f_KxDoutxN[step], trajectory.h_KxDxN[step])
        rows.append(error_row(record, limit_h, large.f_KxDoutxN, mean_ode_h, mean_ode.f_KxDoutxN))
    seconds = training_seconds + time.perf_counter() - start

    status = STATUS_COMPLETED if trajectory.diverged_at is None else STATUS_DIVERGED
    base = _base_row(configuration, config)
    return [
        {**base, **row, "status": status, "diverged_at": trajectory.diverged_at, "wall_seconds": seconds,
         "limit_error_estimate": large.error_estimate, "message": None}
        for row in rows
    ]


def compute_group(
    group: Group,
    large: LargeLimit,
    mean_ode_settings,
    trainer: GroupTrainer = train_group,
) -> list[tuple[str, list[dict]]]:
    """Train a group and return (config_id, rows) per seed, as plain data.

    Any exception of the trainer marks every seed of the group failed; one of the error
    computation marks its seed failed. The message is the exception's type and text.
    """
    config = group.run_config()
    task = get_task(config.task)
    configurations = group.configurations()
    start = time.perf_counter()
    try:
        trajectories = trainer(task, config, list(group.seeds))
        if len(trajectories) != len(group.seeds):
            raise RuntimeError(f"the group trainer returned {len(trajectories)} trajectories for {len(group.seeds)} seeds")
    except Exception as error:  # noqa: BLE001 - a failed group must not stop the sweep
        seconds = (time.perf_counter() - start) / len(configurations)
        message = f"{type(error).__name__}: {error}"
        logger.warning("group L=%d M=%d D=%d seeds %s failed: %s", group.L, group.M, group.D, group.seeds, message)
        return [(c.config_id, failed_rows(c, config, message, seconds)) for c in configurations]
    training_seconds = (time.perf_counter() - start) / len(configurations)

    results = []
    for configuration, trajectory in zip(configurations, trajectories):
        try:
            rows = _step_rows(configuration, config, task, trajectory, large, mean_ode_settings, training_seconds)
        except Exception as error:  # noqa: BLE001
            message = f"{type(error).__name__}: {error}"
            logger.warning("configuration %s failed: %s", configuration.to_dict(), message)
            rows = failed_rows(configuration, config, message, training_seconds)
        results.append((configuration.config_id, rows))
    return results


@dataclasses.dataclass(frozen=True)
class SweepProgress:
    """Configurations finished of the total, and the rate of those computed in this call."""

    done: int
    total: int
    computed: int  # finished in this call
    elapsed_seconds: float
    stage: str = ""  # what runs before the first configuration, such as a limit simulation

    @property
    def rate(self) -> float:
        """Configurations computed per second in this call."""
        return self.computed / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """Estimated seconds to finish at the current rate; None before the first result."""
        if self.computed == 0:
            return None
        return (self.total - self.done) / self.rate

    def line(self) -> str:
        """Return the progress as one line; with a stage, the stage in place of the rate and time left."""
        counts = f"sweep {self.done}/{self.total} configurations  "
        if self.stage:
            return f"{counts}{self.elapsed_seconds:.0f} s elapsed  {self.stage}"
        left = "-" if self.seconds_left is None else f"{self.seconds_left:.0f} s"
        return f"{counts}{self.rate:.2f}/s  {self.elapsed_seconds:.0f} s elapsed  {left} left"


class SweepStopped(KeyboardInterrupt):
    """Raised by ``run_sweep`` between two groups once its ``should_stop`` returns True."""


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """Counts of configurations of one ``run_sweep`` call, and its duration."""

    total: int
    skipped: int  # configurations whose part existed before the call
    computed: int
    failed: int
    diverged: int
    seconds: float


def _pending_groups(spec: SweepSpec, finished: set[str]) -> list[Group]:
    """Return the groups with unfinished seeds, each restricted to those seeds."""
    pending = []
    for group in spec.groups():
        seeds = tuple(c.seed for c in group.configurations() if c.config_id not in finished)
        if seeds:
            pending.append(dataclasses.replace(group, seeds=seeds))
    return pending


def _large_limit(store: ResultStore, settings: TaskSettings, spec: SweepSpec,
                 before_compute: Callable[[], None] = lambda: None) -> LargeLimit:
    """Return the large-D limit of ``settings``, from the store if a previous run computed it.

    Calls ``before_compute`` when the limit has to be simulated.
    """
    key = {**settings.to_dict(), **spec.limit_dict()}
    stored = store.load_limit(key)
    if stored is not None:
        trajectory, error_estimate = stored
        return LargeLimit(trajectory.loss_K, trajectory.f_KxDoutxN, trajectory.h_KxDxN, error_estimate)
    before_compute()
    large = compute_large_limit(settings, spec)
    store.save_limit(key, large.trajectory(), large.error_estimate)
    return large


def default_jobs() -> int:
    """Return the number of CPU cores this process may run on: the default number of groups at a time."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(
    spec: SweepSpec,
    out,
    *,
    scheduler=None,
    trainer: GroupTrainer | None = None,
    on_progress: Callable[[SweepProgress], None] | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    should_stop: Callable[[], bool] | None = None,
    jobs: int | None = None,
) -> SweepSummary:
    """Run every configuration of ``spec`` that has no part in the store at ``out``, or a failed one.

    ``scheduler`` is None (run here), a scheduler address such as "tcp://127.0.0.1:8786", or a
    ``distributed.Client``. ``trainer`` defaults to ``DEFAULT_TRAINER``. Raises StoreMismatchError
    when ``out`` contains a sweep that ``spec`` does not cover, StoreBusyError when another process
    is writing to it, and MemoryBudgetError, before any work, when a shape's memory estimate is
    over ``memory_budget_bytes``. Configurations recorded as failed are computed again, so a sweep
    rerun with a larger budget completes them.

    In this process up to ``jobs`` groups (default: ``default_jobs()``) run at a time, each in a
    thread, as long as their memory estimates add up to at most ``memory_budget_bytes``.
    ``should_stop`` is asked before each group starts and after
    each result; once it returns True no group starts, and the sweep raises SweepStopped when the
    running ones are written.
    """
    if jobs is None:
        jobs = default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number of 1 or more, got {jobs!r}; set --jobs")
    uses_default_trainer = trainer is None
    if uses_default_trainer:
        trainer = functools.partial(DEFAULT_TRAINER, memory_budget_bytes=memory_budget_bytes)

    def group_bytes(group: Group) -> int:
        """Return the memory estimate of a group; raise MemoryBudgetError over the budget."""
        config = group.run_config()
        task = get_task(config.task)
        estimate = check_memory(config, task.num_samples, spec.mean_ode, task.span_dim, memory_budget_bytes,
                                num_tokens=task.num_tokens)
        if uses_default_trainer and config.arch == "resnet":
            plan = group_training.plan_group(config.resolved(), task.num_samples, task.d_out, len(group.seeds),
                                             memory_budget_bytes)
            estimate = max(estimate, plan.estimate_bytes)
        return estimate

    # Every shape is checked before the store is created, so a rejected sweep leaves no directory.
    for group in _pending_groups(spec, set()):
        group_bytes(group)
    store = ResultStore(out)
    with store.writing():
        spec = store.open(spec)
        return _run_pending(spec, store, scheduler, trainer, on_progress, should_stop,
                            _Threads(jobs, group_bytes, memory_budget_bytes))


@dataclasses.dataclass(frozen=True)
class _Threads:
    """How many groups may run at a time in this process, and the memory they may use together."""

    jobs: int
    group_bytes: Callable[[Group], int]
    budget_bytes: int


def _run_pending(spec, store, scheduler, trainer, on_progress, should_stop, threads: _Threads) -> SweepSummary:
    """Compute and write the configurations of ``spec`` that ``store`` lacks; the caller holds its lock."""
    store.set_aside_unreadable_parts()
    finished = store.finished_ids() - store.failed_ids()
    total = len(spec.configurations())
    pending = _pending_groups(spec, finished)
    skipped = total - sum(len(group.seeds) for group in pending)

    start = time.perf_counter()
    counts = {"computed": 0, "failed": 0, "diverged": 0}

    def report(stage: str = "") -> None:
        if on_progress is not None:
            progress = SweepProgress(skipped + counts["computed"], total, counts["computed"],
                                     time.perf_counter() - start, stage)
            on_progress(progress)

    def write(results: list[tuple[str, list[dict]]]) -> None:
        for config_id, rows in results:
            store.write_part(config_id, rows_to_frame(rows))
            counts["computed"] += 1
            status = rows[0]["status"]
            if status == STATUS_FAILED:
                counts["failed"] += 1
            elif status == STATUS_DIVERGED:
                counts["diverged"] += 1
        report()

    report()
    if pending:
        all_settings = list(dict.fromkeys(group.settings for group in pending))
        large_limits = {}
        for number, settings in enumerate(all_settings, start=1):
            stage = f"large-D limit of {settings.task} ({number} of {len(all_settings)})"
            large_limits[settings] = _large_limit(store, settings, spec, lambda: report(stage))
        if scheduler is None:

            def run_group(group: Group) -> list[tuple[str, list[dict]]]:
                return compute_group(group, large_limits[group.settings], spec.mean_ode, trainer)

            _run_here(pending, run_group, write, should_stop, threads)
        else:
            _run_on_cluster(scheduler, pending, large_limits, spec, trainer, write, should_stop)
    return SweepSummary(total, skipped, counts["computed"], counts["failed"], counts["diverged"],
                        time.perf_counter() - start)


def _run_here(pending: list[Group], run_group, write, should_stop, threads: _Threads) -> None:
    """Run the groups in this process, up to ``threads.jobs`` at a time, and write each result.

    A group starts when fewer than ``jobs`` run and its memory estimate fits in the budget next to
    the running ones. Groups start in the order given. With one job, they run one after another
    in the calling thread.
    """
    if threads.jobs == 1:
        for group in pending:
            _check_stop(should_stop)
            write(run_group(group))
        return
    waiting = collections.deque(pending)
    running: dict[concurrent.futures.Future, int] = {}  # future -> memory estimate of its group
    pool = concurrent.futures.ThreadPoolExecutor(threads.jobs, thread_name_prefix=SWEEP_THREAD_PREFIX)
    try:
        while waiting or running:
            stopping = should_stop is not None and should_stop()
            while waiting and not stopping and len(running) < threads.jobs:
                needed = threads.group_bytes(waiting[0])
                if running and sum(running.values()) + needed > threads.budget_bytes:
                    break
                running[pool.submit(run_group, waiting.popleft())] = needed
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                del running[future]
                write(future.result())
        _check_stop(should_stop)
    finally:
        # After an error or a second Ctrl-C, groups not started are dropped; running ones finish
        # in their threads unless the process exits.
        pool.shutdown(wait=False, cancel_futures=True)


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise SweepStopped("the sweep was asked to stop")


def _run_on_cluster(scheduler, pending, large_limits, spec, trainer, write, should_stop=None) -> None:
    """Submit the groups to a Dask cluster and write each result as it arrives."""
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "running a sweep on a Dask cluster needs dask and distributed; install them with "
            "pip install 'resnet-limits[cluster]'"
        ) from None
    own_client = not isinstance(scheduler, distributed.Client)
    client = distributed.Client(scheduler) if own_client else scheduler
    try:
        futures = [
            client.submit(compute_group, group, large_limits[group.settings], spec.mean_ode, trainer, pure=False)
            for group in pending
        ]
        try:
            for future in distributed.as_completed(futures):
                write(future.result())
                _check_stop(should_stop)
        finally:
            client.cancel(futures)
    finally:
        if own_client:
            client.close()
