"""The coordinate view app: single coordinates of a network's streams against its limits.

A run trains the network of the chosen shape to step k with ``Comparison`` and trains both
limit simulators to the same step. The charts are built once and updated in place. Changing
the coordinates, the sample or the limit redraws them from the stored snapshot, and only the
Run button trains again. The run blocks the kernel until it ends, so keep the shape small.
"""

from __future__ import annotations

import html
import logging
import time

import altair as alt
import ipywidgets as widgets

from resnet_limits import limits
from resnet_limits.config import ConfigError, LimitSettings, RunConfig
from resnet_limits.coordinates import (
    CoordinateSnapshot,
    coordinate_histogram,
    coordinate_trajectories,
    snapshot_from_comparison,
)
from resnet_limits.experiment import DEFAULT_CACHE, Comparison, LimitCache
from resnet_limits.tasks import get_task

from resnet_limits_widgets import coordinate_charts
from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits_widgets.explorer import (
    APP_MEMORY_BUDGET_BYTES,
    CONTROL_LAYOUT,
    DEPTH_OPTIONS,
    DESCRIPTION_STYLE,
    DIM_OPTIONS,
    MESSAGE_STYLES,
    WIDTH_OPTIONS,
)

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LIMIT_OPTIONS = (("fixed-D Mean ODE", limits.FIXED_DIM), ("large-D limit", limits.LARGE_DIM))
DEFAULT_COORDINATES = "0, 1, 2, 3"
MAX_COORDINATES = 10  # the colour scheme has 10 distinct colours
HISTOGRAM_DEPTHS = (0.0, 1.0)


def parse_coordinates(text: str, dim: int) -> tuple[int, ...]:
    """Return the coordinate indices in a comma-separated ``text``; raise ValueError when invalid."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("enter at least one coordinate index, such as 0, 1, 2")
    try:
        indices = tuple(dict.fromkeys(int(part) for part in parts))
    except ValueError:
        raise ValueError(f"coordinates must be integers separated by commas, got {text!r}") from None
    if len(indices) > MAX_COORDINATES:
        raise ValueError(f"choose at most {MAX_COORDINATES} coordinates, got {len(indices)}")
    outside = [d for d in indices if not 0 <= d < dim]
    if outside:
        raise ValueError(f"coordinates {outside} are outside 0..{dim - 1} for D = {dim}")
    return indices


def _empty_chart(text: str) -> alt.Chart:
    return alt.Chart().mark_text(text=text, fontSize=14, color="#555555").properties(width=600, height=60)


class CoordinateView:
    """Trajectories h^d(s), b^d(s) and histograms of h^d of one network against its limits.

    ``L``, ``M``, ``D`` and ``step`` are the initial control values; ``limit_settings`` sets the
    particle simulators. ``memory_budget_bytes`` caps the estimated memory of a run.
    """

    def __init__(
        self,
        task: str = "paper-tanh",
        *,
        L: int = 32,
        M: int = 256,
        D: int = 256,
        step: int | None = None,
        limit_settings: LimitSettings | None = None,
        memory_budget_bytes: int = APP_MEMORY_BUDGET_BYTES,
        cache: LimitCache | None = DEFAULT_CACHE,
        compilation_cache: bool = True,
    ):
        if compilation_cache:
            enable_compilation_cache()
        alt.JupyterChart.enable_offline()
        self.task = get_task(task)
        self.limit_settings = limit_settings or LimitSettings()
        self.memory_budget_bytes = memory_budget_bytes
        self.cache = cache
        self.snapshot: CoordinateSnapshot | None = None
        self.snapshot_config: RunConfig | None = None

        self._build_controls(L, M, D, self.task.steps if step is None else step)
        self.message = widgets.HTML(value="")
        self.status = widgets.HTML(value="Not run yet. Press Run.")
        self.trajectory_chart = alt.JupyterChart(_empty_chart("Press Run to train the network and its limits."))
        self.histogram_chart = alt.JupyterChart(_empty_chart(""))
        self.trajectory_chart.add_class("coordinates-trajectory-chart")
        self.histogram_chart.add_class("coordinates-histogram-chart")
        self.widget = self._layout()

    def _build_controls(self, L: int, M: int, D: int, step: int) -> None:
        def size_slider(description, options, value):
            return widgets.SelectionSlider(
                description=description,
                options=options,
                value=value,
                continuous_update=False,
                style=DESCRIPTION_STYLE,
                layout=CONTROL_LAYOUT,
            )

        self.depth = size_slider("L (depth)", DEPTH_OPTIONS, L)
        self.width = size_slider("M (width)", WIDTH_OPTIONS, M)
        self.dim = size_slider("D (embedding dim.)", DIM_OPTIONS, D)
        self.step = widgets.IntSlider(
            description="step k", value=step, min=0, max=60, continuous_update=False,
            style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT,
        )
        self.seed = widgets.IntText(description="seed", value=0, style=DESCRIPTION_STYLE)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.run())

        self.limit_kind = widgets.Dropdown(
            description="limit", options=LIMIT_OPTIONS, value=limits.FIXED_DIM, style=DESCRIPTION_STYLE
        )
        self.coordinates = widgets.Text(
            description="coordinates d", value=DEFAULT_COORDINATES, continuous_update=False,
            style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT,
        )
        self.sample = widgets.Dropdown(
            description="sample n", options=list(range(self.task.num_samples)), value=0, style=DESCRIPTION_STYLE
        )
        self.pool_samples = widgets.Checkbox(description="histogram over all samples", value=True, indent=False)
        for control in (self.limit_kind, self.coordinates, self.sample, self.pool_samples):
            control.observe(lambda _: self.update_charts(), names="value")

    def _layout(self) -> widgets.Widget:
        run_controls = widgets.VBox(
            [
                widgets.HTML(f"<b>Network</b> (task {html.escape(self.task.name)})"),
                self.depth,
                self.width,
                self.dim,
                self.step,
                self.seed,
                self.run_button,
            ]
        )
        view_controls = widgets.VBox(
            [widgets.HTML("<b>View</b>"), self.limit_kind, self.coordinates, self.sample, self.pool_samples]
        )
        top = widgets.HBox([run_controls, view_controls], layout=widgets.Layout(flex_flow="row wrap"))
        return widgets.VBox([top, self.status, self.message, self.trajectory_chart, self.histogram_chart])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _show_message(self, text: str, kind: str = "error") -> None:
        if not text:
            self.message.value = ""
            return
        self.message.value = (
            f'<div style="{MESSAGE_STYLES[kind]}; padding:6px 10px; border-radius:4px; max-width:900px">'
            f"{html.escape(text)}</div>"
        )

    def config(self) -> RunConfig:
        """Return the run settings that the controls show; K is at least 1, as RunConfig requires."""
        return RunConfig(
            task=self.task.name,
            L=self.depth.value,
            M=self.width.value,
            D=self.dim.value,
            K=max(self.step.value, 1),
            seed=self.seed.value,
            dtype="float32",
        )

    def run(self) -> CoordinateSnapshot | None:
        """Train the network and both limits to step k, store the snapshot and redraw the charts.

        Returns the snapshot, or None after showing why the run could not finish.
        """
        step = self.step.value
        started = time.monotonic()
        try:
            comparison = Comparison(
                self.config(), self.limit_settings, memory_budget_bytes=self.memory_budget_bytes, cache=self.cache
            )
        except ConfigError as error:
            self._show_message(f"Cannot run these settings: {error}")
            self.status.value = "Not run: invalid settings."
            return None
        self._show_message("")
        self.status.value = f"Training to step {step}..."
        events = comparison.events()
        for event in events:
            if event.row is not None and event.row["step"] == step:
                events.close()  # the model keeps the parameters of this step
                break
        try:
            snapshot = snapshot_from_comparison(comparison)
        except ValueError as error:
            logger.warning("coordinate view run %s failed: %s", comparison.config, error)
            self._show_message(f"No coordinates to show: {error}.")
            self.status.value = "Failed."
            return None
        self.snapshot = snapshot
        self.snapshot_config = comparison.config
        self.status.value = f"Step {snapshot.step} computed in {time.monotonic() - started:.1f} s."
        self.update_charts()
        return snapshot

    def update_charts(self) -> None:
        """Redraw both charts from the stored snapshot with the current view controls."""
        if self.snapshot is None:
            return
        config = self.snapshot_config
        try:
            chosen = parse_coordinates(self.coordinates.value, config.D)
        except ValueError as error:
            self._show_message(str(error), "warning")
            return
        self._show_message("")
        snapshot = self.snapshot
        shape = f"L={config.L}, M={config.M}, D={config.D}, seed {config.seed}, step {snapshot.step}"
        trajectories = coordinate_trajectories(
            snapshot.network, snapshot.limits[self.limit_kind.value], chosen, self.sample.value
        )
        self.trajectory_chart.chart = coordinate_charts.trajectory_chart(trajectories, f"Coordinates along depth: {shape}")

        sample = None if self.pool_samples.value else self.sample.value
        large_limit = snapshot.limits[limits.LARGE_DIM]
        histograms = [
            coordinate_histogram(snapshot.network, large_limit, s, sample=sample) for s in HISTOGRAM_DEPTHS
        ]
        self.histogram_chart.chart = coordinate_charts.histogram_chart(
            histograms, f"All D coordinates of h at the input and the output: {shape}"
        )
