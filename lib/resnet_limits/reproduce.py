"""Figures of arXiv 2603.18168's sweeps, recomputed with this library: data as Parquet, charts as PNG and SVG.

Each figure in ``FIGURES`` plots the embedding and output errors at the last step K, against
the extrapolated large-D limit, as the mean over seeds, against D, M or P = L M D. The
``paper-tanh`` figures come from one sweep at L = 50 with M and D over 20 log-spaced integers
from 1 to 2000 and 5 seeds. The ``paper-linear`` figures come from the same grid on the linear
task. Figures that share a task share its sweep, stored under ``OUT/sweeps/TASK`` and resumed
like any sweep. ``QUICK_GRID`` is a 4 x 4 grid with 2 seeds for a first look.

Charts are hand-written Vega-Lite specs rendered by ``vl_convert`` (vl-convert-python), which is
imported only when a chart is written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from resnet_limits.config import ConfigError, LimitSettings
from resnet_limits.sweeps import ResultStore, SweepSpec, TaskSettings, log_integers, run_sweep
from resnet_limits.sweeps.fits import select_step
from resnet_limits.sweeps.grid import DEFAULT_LIMIT_START, DEFAULT_LIMIT_TOL

VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"

# Series drawn per chart: a few values of the axis that is not on the x axis, so lines stay apart.
MAX_SERIES = 5


@dataclasses.dataclass(frozen=True)
class Grid:
    """The sweep grid behind the figures, shared by both tasks."""

    depth: int
    widths: tuple[int, ...]
    dims: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int | None = None  # K; None takes the task's
    limit_tol: float | None = DEFAULT_LIMIT_TOL
    limit_start: LimitSettings = DEFAULT_LIMIT_START
    mean_ode: LimitSettings = LimitSettings()

    def spec(self, task: str) -> SweepSpec:
        return SweepSpec.product(
            [self.depth], self.widths, self.dims, self.seeds,
            settings=(TaskSettings(task=task, K=self.steps),),
            limit_tol=self.limit_tol, limit_start=self.limit_start, mean_ode=self.mean_ode,
        )


PAPER_GRID = Grid(depth=50, widths=tuple(log_integers(1, 2000, 20)), dims=tuple(log_integers(1, 2000, 20)),
                  seeds=(0, 1, 2, 3, 4))
QUICK_GRID = Grid(depth=50, widths=tuple(log_integers(1, 64, 4)), dims=tuple(log_integers(1, 64, 4)), seeds=(0, 1))


@dataclasses.dataclass(frozen=True)
class Figure:
    """A chart of mean errors against one axis (D, M or P), one line per value of ``series``."""

    name: str
    task: str
    x: str  # "D", "M" or "P"
    series: str | None  # the column whose values are the lines, or None for one cloud of points
    title: str


FIGURES = {
    figure.name: figure
    for figure in (
        Figure("tanh-error-vs-D", "paper-tanh", "D", "M", "paper-tanh, L = 50: error against D"),
        Figure("tanh-error-vs-M", "paper-tanh", "M", "D", "paper-tanh, L = 50: error against M"),
        Figure("tanh-error-vs-P", "paper-tanh", "P", None, "paper-tanh, L = 50: error against P = L M D"),
        Figure("linear-error-vs-D", "paper-linear", "D", "M", "paper-linear, L = 50: error against D"),
        Figure("linear-error-vs-M", "paper-linear", "M", "D", "paper-linear, L = 50: error against M"),
    )
}


def resolve_names(names: list[str]) -> list[str]:
    """Return the figure names, with ``all`` expanded; raises ConfigError on an unknown name."""
    resolved = []
    for name in names:
        if name == "all":
            resolved.extend(FIGURES)
        elif name in FIGURES:
            resolved.append(name)
        else:
            raise ConfigError(f"unknown figure {name!r}; choose all or one of: {', '.join(FIGURES)}")
    return list(dict.fromkeys(resolved))


def figure_data(figure: Figure, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the figure's points: mean and standard deviation over seeds of each error, in long form.

    Columns: L, M, D, P, error ("embedding" or "output"), mean_error, std_error, seeds. Without a
    series column every shape is a point. With one, the lines are at most ``MAX_SERIES`` values of
    it, evenly spread over its sorted values.
    """
    last = select_step(frame)
    long = last.melt(
        id_vars=["L", "M", "D", "P", "seed"],
        value_vars=["embedding_error_limit", "output_error_limit"],
        var_name="error",
        value_name="value",
    )
    long["error"] = long["error"].str.replace("_error_limit", "", regex=False)
    data = (
        long.groupby(["L", "M", "D", "P", "error"], as_index=False)["value"]
        .agg(mean_error="mean", std_error="std", seeds="count")
    )
    if figure.series is not None:
        values = sorted(data[figure.series].unique())
        if len(values) > MAX_SERIES:
            picks = [values[round(i * (len(values) - 1) / (MAX_SERIES - 1))] for i in range(MAX_SERIES)]
            data = data[data[figure.series].isin(picks)]
    return data.reset_index(drop=True)


def vega_lite_spec(figure: Figure, data: pd.DataFrame) -> dict:
    """Return the Vega-Lite spec of the figure: one panel per error kind, log-log axes."""
    encoding = {
        "x": {"field": figure.x, "type": "quantitative", "scale": {"type": "log"}, "title": figure.x},
        "y": {"field": "mean_error", "type": "quantitative", "scale": {"type": "log"},
              "title": "mean error over seeds (against the large-D limit)"},
        "tooltip": [{"field": name, "type": "quantitative"} for name in ("L", "M", "D", "mean_error", "std_error")],
    }
    if figure.series is not None:
        encoding["color"] = {"field": figure.series, "type": "ordinal", "title": figure.series}
        mark = {"type": "line", "point": True}
    else:
        mark = {"type": "point", "filled": True, "opacity": 0.6}
    return {
        "$schema": VEGA_LITE_SCHEMA,
        "title": figure.title,
        "data": {"values": json.loads(data.to_json(orient="records"))},
        "facet": {"column": {"field": "error", "type": "nominal", "title": "error"}},
        "spec": {"width": 260, "height": 220, "mark": mark, "encoding": encoding},
        "resolve": {"scale": {"y": "independent"}},
    }


def _vl_convert():
    try:
        import vl_convert
    except ImportError:
        raise ConfigError(
            "writing figures needs vl-convert-python; install it with pip install vl-convert-python "
            "(it is part of the app extra: pip install -e '.[app]')"
        ) from None
    return vl_convert


def write_figure(figure: Figure, frame: pd.DataFrame, out: Path) -> list[Path]:
    """Write the figure's data (Parquet), spec (JSON), PNG and SVG into ``out``; return their paths."""
    vl_convert = _vl_convert()
    data = figure_data(figure, frame)
    spec = vega_lite_spec(figure, data)
    paths = {suffix: out / f"{figure.name}.{suffix}" for suffix in ("parquet", "vl.json", "png", "svg")}
    data.to_parquet(paths["parquet"], index=False)
    paths["vl.json"].write_text(json.dumps(spec, indent=1))
    paths["png"].write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    paths["svg"].write_text(vl_convert.vegalite_to_svg(spec))
    return list(paths.values())


def reproduce(
    names: list[str],
    out,
    *,
    grid: Grid = PAPER_GRID,
    scheduler=None,
    on_progress: Callable | None = None,
    memory_budget_bytes: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    jobs: int | None = None,
) -> list[Path]:
    """Run the sweeps behind the named figures (resuming stored runs) and write each figure.

    Returns the paths written. Keyword arguments other than ``grid`` go to ``run_sweep``.
    """
    names = resolve_names(names)
    _vl_convert()  # fail before hours of sweeping, not after
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"scheduler": scheduler, "on_progress": on_progress, "should_stop": should_stop, "jobs": jobs}
    if memory_budget_bytes is not None:
        kwargs["memory_budget_bytes"] = memory_budget_bytes
    frames = {}
    written = []
    for name in names:
        figure = FIGURES[name]
        if figure.task not in frames:
            store_dir = out / "sweeps" / figure.task
            run_sweep(grid.spec(figure.task), store_dir, **kwargs)
            frames[figure.task] = ResultStore(store_dir).load()
        written.extend(write_figure(figure, frames[figure.task], out))
    return written
