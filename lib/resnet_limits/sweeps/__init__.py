"""Sweeps over shapes, seeds and task settings, their resumable result store and the error-law fits.

Modules: ``grid`` (the configurations of a sweep), ``store`` (the Parquet directory of its
results), ``runner`` (computing the runs here or on a Dask cluster), ``fits`` (error-law and slope
fits) and ``paths`` (the shapes along parameter budgets that the bound prefers).
"""

from resnet_limits.sweeps.grid import (
    Configuration,
    Group,
    SweepSpec,
    TaskSettings,
    log_integers,
    parse_axis,
)
from resnet_limits.sweeps.runner import (
    DEFAULT_TRAINER,
    SweepProgress,
    SweepStopped,
    SweepSummary,
    compute_group,
    default_jobs,
    run_sweep,
    train_group,
)
from resnet_limits.sweeps.store import ResultStore, StoreBusyError, StoreMismatchError

__all__ = [
    "DEFAULT_TRAINER",
    "Configuration",
    "Group",
    "ResultStore",
    "StoreBusyError",
    "StoreMismatchError",
    "SweepProgress",
    "SweepSpec",
    "SweepStopped",
    "SweepSummary",
    "TaskSettings",
    "compute_group",
    "default_jobs",
    "log_integers",
    "parse_axis",
    "run_sweep",
    "train_group",
]
