"""The coordinate view app: single coordinates of a network's streams against its limits.

A run trains the network of the chosen shape to step k with ``Comparison`` and trains both
limit simulators to the same step. The charts are built once and updated in place. Changing
the coordinates, the sample or the limit redraws them from the stored snapshot, and only the
Run button trains again.

The Run button starts an asyncio task in the kernel's event loop. By default the computation
runs in a worker process (``resnet_limits.worker``, a ``snapshot`` request) that streams its
progress and then the snapshot's arrays, so the kernel keeps processing widget messages. Cancel
stops a run within a second: the worker stops at its next event, or is killed.
With ``use_worker=False`` the task iterates the comparison's events in the kernel and yields to
the event loop between them, and the final particle simulations block the kernel. ``run`` computes
in the kernel without an event loop and returns the snapshot.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time

import altair as alt
import ipywidgets as widgets

from resnet_limits import limits
from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits.config import MAX_SEED, ConfigError, LimitSettings, RunConfig
from resnet_limits.coordinates import (
    CoordinateSnapshot,
    coordinate_histogram,
    coordinate_trajectories,
    snapshot_events,
    snapshot_from_comparison,
    snapshot_from_json,
)
from resnet_limits.experiment import DEFAULT_CACHE, STAGE_TRAINING, Comparison, LimitCache, default_limit_cache_dir
from resnet_limits.tasks import TASKS, get_task
from resnet_limits.worker import ComparisonWorker

from resnet_limits_widgets import coordinate_charts, url_state
from resnet_limits_widgets.background import BackgroundRun
from resnet_limits_widgets.charts import chart_widget
from resnet_limits_widgets.copy_code import code_html, snapshot_code
from resnet_limits_widgets.explorer import (
    APP_MEMORY_BUDGET_BYTES,
    CONTROL_LAYOUT,
    DEPTH_OPTIONS,
    DESCRIPTION_STYLE,
    DIM_OPTIONS,
    MAX_STEPS,
    MESSAGE_STYLES,
    USER_CACHE,
    WIDTH_OPTIONS,
    RemoteRunError,
    message_html,
    with_control_names,
)
from resnet_limits_widgets.export import ChartDownloads
from resnet_limits_widgets.page_cookie import xsrf_cookie

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LIMIT_OPTIONS = (("fixed-D Mean ODE", limits.FIXED_DIM), ("large-D limit", limits.LARGE_DIM))
DEFAULT_COORDINATES = "0, 1, 2, 3"
MAX_COORDINATES = 10  # the colour scheme has 10 distinct colours
HISTOGRAM_DEPTHS = (0.0, 1.0)

# Seconds that Cancel waits for the worker to stop before it kills the process. One level of a
# limit simulation can take longer than a second on a loaded 2-core CPU, so the view waits less
# than the explorer does, and a killed worker finds its limits again in ``limit_cache_dir``.
CANCEL_GRACE_SECONDS = 0.4

# The query parameters that set the coordinate view's controls, as in ?L=16&D=64&k=5.
URL_FIELDS = {
    "task": url_state.ChoiceField(tuple(TASKS)),
    "L": url_state.SizeField(DEPTH_OPTIONS),
    "M": url_state.SizeField(WIDTH_OPTIONS),
    "D": url_state.SizeField(DIM_OPTIONS),
    "k": url_state.IntField(0, MAX_STEPS),
    "seed": url_state.IntField(0, MAX_SEED),
    "limit": url_state.ChoiceField(tuple(kind for _, kind in LIMIT_OPTIONS)),
    "auto_run": url_state.BoolField(),
}


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


class CoordinateView(BackgroundRun):
    """Trajectories h^d(s), b^d(s) and histograms of h^d of one network against its limits.

    ``L``, ``M``, ``D`` and ``step`` are the initial control values; ``limit_settings`` sets the
    particle simulators. ``memory_budget_bytes`` caps the estimated memory of a run.
    ``use_worker`` runs ``start_run`` in a worker process, which keeps its limits in
    ``limit_cache_dir``. ``query_string`` (see ``URL_FIELDS``) overrides the task, the initial
    control values and ``auto_run``, which the notebook reads to decide whether to run at once.
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
        use_worker: bool = True,
        limit_cache_dir: str | os.PathLike | None = USER_CACHE,
        auto_run: bool = True,
        query_string: str | None = None,
    ):
        cache_dir = enable_compilation_cache() if compilation_cache else None
        alt.JupyterChart.enable_offline()
        self.url_settings = url = url_state.parse_query(query_string, URL_FIELDS)
        self.task = get_task(url.get("task", task))
        self.limit_settings = limit_settings or LimitSettings()
        self.memory_budget_bytes = memory_budget_bytes
        self.cache = cache
        self.auto_run = url.get("auto_run", auto_run)
        if limit_cache_dir is USER_CACHE:
            limit_cache_dir = default_limit_cache_dir()
        self.worker = (
            ComparisonWorker(compilation_cache_dir=cache_dir, limit_cache_dir=limit_cache_dir)
            if use_worker
            else None
        )
        if self.worker is not None:
            self.worker.start()
        self.snapshot: CoordinateSnapshot | None = None
        self.snapshot_config: RunConfig | None = None
        self.outcome: str | None = None  # "completed", "cancelled" or "failed" for the latest run
        self._task: asyncio.Task | None = None

        self.link = widgets.HTML(value="")
        self.code = widgets.HTML(value="")
        default_step = self.task.steps if step is None else step
        self._build_controls(url.get("L", L), url.get("M", M), url.get("D", D), url.get("k", default_step))
        self.seed.value = url.get("seed", 0)
        self.limit_kind.value = url.get("limit", limits.FIXED_DIM)
        self.message = widgets.HTML(value="")
        self.message.add_class("coordinates-message")
        self.status = widgets.HTML(value="Not run yet. Press Run.")
        self.status.add_class("coordinates-status")
        self.progress = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, description="progress", bar_style="info"
        )
        self.trajectory_chart = chart_widget(_empty_chart("Press Run to train the network and its limits."))
        self.histogram_chart = chart_widget(_empty_chart(""))
        self.trajectory_chart.add_class("coordinates-trajectory-chart")
        self.histogram_chart.add_class("coordinates-histogram-chart")
        self.trajectory_downloads = ChartDownloads("coordinates-trajectories")
        self.histogram_downloads = ChartDownloads("coordinates-histograms")
        # Messages about the link's settings stay while runs replace the message above the charts.
        self.url_message = widgets.HTML(value=message_html(url.message_text(), "warning"))
        self.url_message.add_class("coordinates-url-message")
        self.widget = self._layout()
        self._update_link_and_code()

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
        self.run_button.on_click(lambda _: self.start_run())
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.on_click(lambda _: self.cancel())
        for control in (self.depth, self.width, self.dim, self.step, self.seed):
            control.observe(self._on_link_control_change, names="value")

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
        self.limit_kind.observe(self._on_link_control_change, names="value")

    def _layout(self) -> widgets.Widget:
        run_controls = widgets.VBox(
            [
                widgets.HTML(f"<b>Network</b> (task {html.escape(self.task.name)})"),
                self.depth,
                self.width,
                self.dim,
                self.step,
                self.seed,
                widgets.HBox([self.run_button, self.cancel_button]),
            ]
        )
        view_controls = widgets.VBox(
            [widgets.HTML("<b>View</b>"), self.limit_kind, self.coordinates, self.sample, self.pool_samples]
        )
        top = widgets.HBox([run_controls, view_controls], layout=widgets.Layout(flex_flow="row wrap"))
        return widgets.VBox(
            [
                top,
                widgets.HBox([self.progress, self.status]),
                self.url_message,
                self.message,
                self.trajectory_chart,
                self.trajectory_downloads.widget,
                self.histogram_chart,
                self.histogram_downloads.widget,
                self.link,
                xsrf_cookie(),
                self.code,
            ]
        )

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

    def query_string(self) -> str:
        """Return the query string (leading "?") that opens the view with the current settings."""
        values = {
            "task": self.task.name,
            "L": self.depth.value,
            "M": self.width.value,
            "D": self.dim.value,
            "k": self.step.value,
            "seed": self.seed.value,
            "limit": self.limit_kind.value,
            "auto_run": self.auto_run,
        }
        return url_state.format_query(values, URL_FIELDS)

    def code_text(self) -> str:
        """Return library code that computes the snapshot of the current settings as ``snapshot``."""
        return snapshot_code(self.config(), self.limit_settings, self.step.value)

    def _on_link_control_change(self, _change) -> None:
        # The message describes the settings the page opened with. Building the view sets some
        # controls before the message exists.
        if hasattr(self, "url_message"):
            self.url_message.value = ""
        self._update_link_and_code()

    def _update_link_and_code(self) -> None:
        self.link.value = url_state.link_html(self.query_string(), "coordinates-link")
        self.code.value = code_html(self.code_text(), "coordinates-code")

    def _prepare(self) -> Comparison | None:
        """Return a comparison of the current settings, or None after showing why they are invalid."""
        try:
            comparison = Comparison(
                self.config(), self.limit_settings, memory_budget_bytes=self.memory_budget_bytes, cache=self.cache
            )
        except ConfigError as error:
            self._show_message(f"Cannot run these settings: {with_control_names(str(error))}")
            self.status.value = "Not run: invalid settings."
            return None
        self._show_message("")
        return comparison

    def run(self) -> CoordinateSnapshot | None:
        """Train the network and both limits to step k in this process, store the snapshot and redraw.

        Blocks until the end. Returns the snapshot, or None after showing why the run could not finish.
        """
        comparison = self._prepare()
        if comparison is None:
            return None
        step = self.step.value
        started = time.monotonic()
        self.status.value = f"Training to step {step}..."
        for event in snapshot_events(comparison, step):
            self.progress.value = event.fraction
        try:
            snapshot = snapshot_from_comparison(comparison)
        except ValueError as error:
            self._fail(comparison.config, f"No coordinates to show: {error}.")
            return None
        self._show_snapshot(snapshot, comparison.config, time.monotonic() - started)
        return snapshot

    def start_run(self) -> asyncio.Task | None:
        """Cancel the running computation and start one with the current settings as an asyncio task.

        Returns the task, or None when the settings are invalid. Without a running event loop
        (a plain script), runs to the end with ``run`` and returns None.
        """
        comparison = self._prepare()
        if comparison is None:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.run()
            return None
        step = self.step.value
        return self._start_task(lambda previous: self._run(comparison, step, previous))

    def close(self) -> None:
        """Stop the running computation and the worker process."""
        self.cancel()
        if self.worker is not None:
            self.worker.kill()

    async def _run(self, comparison: Comparison, step: int, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self.outcome = None
        self.cancel_button.disabled = False
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        self.status.value = f"Starting: training to step {step}..."
        started = time.monotonic()
        try:
            if self.worker is None:
                snapshot = await self._snapshot_in_kernel(comparison, step)
            else:
                snapshot = await self._snapshot_in_worker(comparison, step)
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            self.cancel_button.disabled = True
            self.progress.bar_style = "warning"
            self.status.value = "Cancelled."
            raise
        except Exception as error:  # any failure ends up in the page, never as a traceback
            text = str(error) if isinstance(error, RemoteRunError) else f"{type(error).__name__}: {error}"
            self._fail(comparison.config, f"The run failed: {text}")
            return
        self._show_snapshot(snapshot, comparison.config, time.monotonic() - started)

    async def _snapshot_in_kernel(self, comparison: Comparison, step: int) -> CoordinateSnapshot:
        for event in snapshot_events(comparison, step):
            self._on_progress(event.stage, event.fraction, event.row)
            await asyncio.sleep(0)
        return snapshot_from_comparison(comparison)

    async def _snapshot_in_worker(self, comparison: Comparison, step: int) -> CoordinateSnapshot:
        worker = self.worker
        run_id = worker.submit_snapshot(
            comparison.config, comparison.limit_settings, step=step, memory_budget_bytes=self.memory_budget_bytes
        )
        snapshot = None
        try:
            async for message in worker.messages(run_id):
                if message["type"] == "progress":
                    self._on_progress(message["stage"], message["done"] / message["total"], message["row"])
                elif message["type"] == "snapshot":
                    snapshot = snapshot_from_json(message["snapshot"])
                elif message["type"] == "failed":
                    raise RemoteRunError(message["error"])
        except asyncio.CancelledError:
            await worker.stop(run_id, grace=CANCEL_GRACE_SECONDS)
            raise
        if snapshot is None:
            raise RemoteRunError("the worker ended the run without a snapshot")
        return snapshot

    def _on_progress(self, stage: str, fraction: float, row: dict | None) -> None:
        self.progress.value = fraction
        if stage == STAGE_TRAINING:
            step = row["step"] if row is not None else "?"
            if step == self.step.value:
                self.status.value = f"Step {step} reached; computing the streams of both limits..."
            else:
                self.status.value = f"Training: step {step} of {self.step.value}"
        else:
            self.status.value = f"Computing the {stage}..."

    def _fail(self, config: RunConfig, text: str) -> None:
        logger.warning("coordinate view run %s failed: %s", config, text)
        self.outcome = "failed"
        self.cancel_button.disabled = True
        self.progress.bar_style = "danger"
        self.status.value = "Failed."
        self._show_message(text)

    def _show_snapshot(self, snapshot: CoordinateSnapshot, config: RunConfig, seconds: float) -> None:
        self.snapshot = snapshot
        self.snapshot_config = config
        self.outcome = "completed"
        self.cancel_button.disabled = True
        self.progress.value = 1.0
        self.progress.bar_style = "success"
        self.update_charts()
        self.status.value = f"Step {snapshot.step} computed in {seconds:.1f} s."

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
        self.trajectory_downloads.update(self.trajectory_chart.chart)
        self.histogram_downloads.update(self.histogram_chart.chart)
