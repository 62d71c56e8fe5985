"""The explorer app: sliders for L, M and D, a training run against both limits, and two charts.

A run is an asyncio task in the kernel's event loop. By default the comparison itself runs in a
worker process (``resnet_limits.worker``) and the task only applies the worker's messages to the
widgets, so the kernel processes widget messages (a Cancel click, a new slider value) while the
limits are computed and the network trains, and Cancel stops a run within a second even during
a compilation. With ``use_worker=False`` the task iterates ``Comparison.events()`` in the kernel
and yields to the loop after every event. Releasing a slider or changing a control cancels the
running comparison and starts a new one, unless "run on change" is off. Cancelling keeps the
rows computed so far.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
import os
import time

import altair as alt
import ipywidgets as widgets

from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits.config import MAX_SEED, ConfigError, LimitSettings, RunConfig
from resnet_limits.experiment import (
    DEFAULT_CACHE,
    STAGE_TRAINING,
    Comparison,
    LimitCache,
    Progress,
    default_limit_cache_dir,
    limit_error_summary,
)
from resnet_limits.limits import LARGE_DIM
from resnet_limits.tasks import ACTIVATIONS, TASKS, get_task
from resnet_limits.worker import ComparisonWorker

from resnet_limits_widgets import charts, url_state
from resnet_limits_widgets.background import BackgroundRun
from resnet_limits_widgets.copy_code import code_html, comparison_code
from resnet_limits_widgets.export import ChartDownloads
from resnet_limits_widgets.page_cookie import xsrf_cookie
from resnet_limits_widgets.summary import shape_summary_html

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEPTH_OPTIONS = tuple(2**i for i in range(9))  # L from 1 to 256
WIDTH_OPTIONS = tuple(2**i for i in range(11))  # M from 1 to 1024
DIM_OPTIONS = tuple(2**i for i in range(11))  # D from 1 to 1024
MAX_STEPS = 60  # the K slider's maximum

# The query parameters that set the explorer's controls, as in ?L=32&M=128&D=64&lr=0.5.
URL_FIELDS = {
    "task": url_state.ChoiceField(tuple(TASKS)),
    "L": url_state.SizeField(DEPTH_OPTIONS),
    "M": url_state.SizeField(WIDTH_OPTIONS),
    "D": url_state.SizeField(DIM_OPTIONS),
    "K": url_state.IntField(1, MAX_STEPS),
    "lr": url_state.PositiveFloatField(),
    "alpha": url_state.PositiveFloatField(),
    "activation": url_state.ChoiceField(tuple(ACTIVATIONS)),
    "seed": url_state.IntField(0, MAX_SEED),
    "auto_run": url_state.BoolField(),
}

# The explorer's cap on the estimated memory of one run. A public Binder session has about 2 GB
# for the kernel, the Jupyter server and JAX itself, so the app keeps half of the library default.
APP_MEMORY_BUDGET_BYTES = 2**30

# The limit simulator's coarsest level in the app. With Richardson extrapolation its error
# estimate is about 1e-3 of the targets on paper-tanh, far below the errors the app shows.
# Both limits of a new task take about 3 s on a 2-core CPU.
APP_LIMIT_SETTINGS = LimitSettings(depth_points=32, particles=2048)

# Marks the default of ``limit_cache_dir``: the user's cache directory.
USER_CACHE = "user cache"

# Minimum seconds between two redraws of the error chart during training. Each redraw sends the
# whole chart to the browser.
CHART_REFRESH_SECONDS = 0.25

DESCRIPTION_STYLE = {"description_width": "150px"}
CONTROL_LAYOUT = widgets.Layout(width="420px")

# Command-line options that the library's ConfigError messages name, and the controls that set them.
CONTROL_NAMES = {
    "--depth": "the L slider",
    "--width": "the M slider",
    "--dim": "the D slider",
    "--steps": "the K slider",
    "--lr": "the learning rate",
    "--alpha": "α",
    ", or raise the budget (--memory-budget on the command line)": "",
}

MESSAGE_STYLES = {
    "error": "background:#fdecea; border:1px solid #d93025; color:#8a1c14",
    "warning": "background:#fff4e5; border:1px solid #e8a33d; color:#6b4200",
    "info": "background:#e8f0fe; border:1px solid #4a7bd0; color:#1a3d7c",
}


def _size_slider(description: str, options: tuple[int, ...], value: int) -> widgets.SelectionSlider:
    return widgets.SelectionSlider(
        description=description,
        options=options,
        value=value,
        continuous_update=False,
        style=DESCRIPTION_STYLE,
        layout=CONTROL_LAYOUT,
    )


def message_html(text: str, kind: str = "error") -> str:
    """Return ``text`` as a coloured box of ``kind`` ("error", "warning" or "info"), or "" for no text."""
    if not text:
        return ""
    return (
        f'<div style="{MESSAGE_STYLES[kind]}; padding:6px 10px; border-radius:4px; max-width:900px">'
        f"{html.escape(text)}</div>"
    )


def with_control_names(message: str) -> str:
    """Return ``message`` with command-line option names replaced by the controls that set them."""
    for option, control in CONTROL_NAMES.items():
        message = message.replace(option, control)
    return message


class RemoteRunError(RuntimeError):
    """A run failed in the worker process; the message is the worker's report."""


@dataclasses.dataclass
class RunOutcome:
    """The end of a run, for the readout: status "completed", "diverged", "cancelled" or "failed"."""

    status: str
    seconds: float
    message: str = ""


class ExplorerApp(BackgroundRun):
    """The interactive explorer of one task, shown by displaying it in a notebook or a Voila page.

    ``L``, ``M`` and ``D`` are the initial slider values. ``limit_settings`` sets the coarsest
    level of the limit simulator and ``memory_budget_bytes`` the largest estimated run that may
    start. ``use_worker`` runs comparisons in a worker process, which keeps its limits in memory
    and in ``limit_cache_dir`` (None: memory only). Without the worker, ``cache`` stores the
    limits in the kernel, shared by all apps there.
    ``compilation_cache`` turns on JAX's persistent compilation cache in the user's cache
    directory. ``query_string`` (a page URL's query string, see ``URL_FIELDS``) overrides the
    task, the initial control values and ``auto_run``. The app shows a message about every
    parameter of it that was adjusted or ignored.
    """

    # The query parameters of the app, and the one among them that sets the width slider.
    url_fields = URL_FIELDS
    width_parameter = "M"

    def __init__(
        self,
        task: str = "paper-tanh",
        *,
        L: int = 16,
        M: int = 64,
        D: int = 64,
        limit_settings: LimitSettings | None = None,
        memory_budget_bytes: int = APP_MEMORY_BUDGET_BYTES,
        cache: LimitCache | None = DEFAULT_CACHE,
        auto_run: bool = True,
        compilation_cache: bool = True,
        use_worker: bool = True,
        limit_cache_dir: str | os.PathLike | None = USER_CACHE,
        query_string: str | None = None,
    ):
        cache_dir = enable_compilation_cache() if compilation_cache else None
        alt.JupyterChart.enable_offline()

        self.url_settings = url_state.parse_query(query_string, self.url_fields)
        self.task = get_task(self.url_settings.get("task", task))
        self.limit_settings = limit_settings or APP_LIMIT_SETTINGS
        self.memory_budget_bytes = memory_budget_bytes
        self.cache = cache
        if limit_cache_dir is USER_CACHE:
            limit_cache_dir = default_limit_cache_dir()
        self.worker = (
            ComparisonWorker(compilation_cache_dir=cache_dir, limit_cache_dir=limit_cache_dir)
            if use_worker
            else None
        )
        if self.worker is not None:
            self.worker.start()  # its imports overlap with the page's first render
        self.limit_errors: dict[str, dict] = {}  # per limit kind, the latest run's error estimate

        self.comparison: Comparison | None = None  # the latest comparison started
        self.outcome: RunOutcome | None = None  # how the latest finished run ended
        self.law_points: dict[RunConfig, list[dict]] = {}  # completed runs, two points each
        self._task: asyncio.Task | None = None
        self._last_chart_update = 0.0

        self._build_controls(L, M, D, auto_run)
        self._build_outputs()
        self.widget = self._layout()
        self._update_summary()
        self._update_link_and_code()

    # -- widgets ------------------------------------------------------------------------------

    def _build_controls(self, L: int, M: int, D: int, auto_run: bool) -> None:
        task = self.task
        url = self.url_settings
        self.depth = _size_slider("L (depth)", DEPTH_OPTIONS, url.get("L", L))
        self.width = _size_slider("M (width)", WIDTH_OPTIONS, url.get(self.width_parameter, url.get("M", M)))
        self.dim = _size_slider("D (embedding dim.)", DIM_OPTIONS, url.get("D", D))
        self.steps = widgets.IntSlider(
            description="K (gradient steps)",
            value=url.get("K", task.steps),
            min=1,
            max=MAX_STEPS,
            continuous_update=False,
            style=DESCRIPTION_STYLE,
            layout=CONTROL_LAYOUT,
        )
        self.learning_rate = widgets.FloatText(
            description="learning rate η", value=url.get("lr", task.learning_rate), style=DESCRIPTION_STYLE
        )
        self.alpha = widgets.FloatText(
            description="α (residual scale)", value=url.get("alpha", task.alpha), style=DESCRIPTION_STYLE
        )
        self.activation = widgets.Dropdown(
            description="activation",
            options=ACTIVATIONS,
            value=url.get("activation", task.activation),
            style=DESCRIPTION_STYLE,
        )
        self.seed = widgets.IntText(description="seed", value=url.get("seed", 0), style=DESCRIPTION_STYLE)
        self.auto_run = widgets.Checkbox(
            description="run when a control changes", value=url.get("auto_run", auto_run), indent=False
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.clear_button = widgets.Button(description="Clear runs", tooltip="Remove every point of the law chart")

        self.run_button.on_click(lambda _: self.start_run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.clear_button.on_click(lambda _: self.clear_runs())
        for control in self.run_controls:
            control.observe(self._on_control_change, names="value")
        self.auto_run.observe(lambda _: self._update_link_and_code(), names="value")

    @property
    def run_controls(self) -> tuple[widgets.ValueWidget, ...]:
        """Every control whose value is a setting of the run."""
        return (
            self.depth,
            self.width,
            self.dim,
            self.steps,
            self.learning_rate,
            self.alpha,
            self.activation,
            self.seed,
        )

    def _build_outputs(self) -> None:
        self.summary = widgets.HTML(layout=widgets.Layout(width="600px", margin="0 0 0 20px"))
        self.progress = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, description="progress", bar_style="info"
        )
        self.status = widgets.HTML(value="Not run yet.")
        self.status.add_class("explorer-status")
        self.message = widgets.HTML(value="")
        self.message.add_class("explorer-message")
        self.last_run = widgets.HTML(value="")
        self.last_run.add_class("explorer-last-run")

        steps = self.task.steps
        self.error_chart = charts.chart_widget(
            charts.error_chart(charts.error_frame([], None, steps), "No run yet", steps)
        )
        self.error_chart.add_class("explorer-error-chart")
        self.law_chart = charts.chart_widget(charts.law_chart(charts.law_frame([])))
        self.law_chart.add_class("explorer-law-chart")
        self.error_downloads = ChartDownloads("explorer-errors")
        self.law_downloads = ChartDownloads("explorer-law")

        self.link = widgets.HTML(value="")
        self.code = widgets.HTML(value="")
        # Messages about the link's settings stay while runs replace the message above the charts.
        self.url_message = widgets.HTML(value=message_html(self.url_settings.message_text(), "warning"))
        self.url_message.add_class("explorer-url-message")

    def _layout(self) -> widgets.Widget:
        controls = widgets.VBox(
            [
                widgets.HTML(
                    f"<b>Shape and training</b> (task {html.escape(self.task.name)}: "
                    f"N={self.task.num_samples} samples, d_in={self.task.d_in}, d_out={self.task.d_out})"
                ),
                *self.run_controls,
                self.auto_run,
                widgets.HBox([self.run_button, self.cancel_button, self.clear_button]),
            ]
        )
        top = widgets.HBox([controls, self.summary], layout=widgets.Layout(flex_flow="row wrap"))
        progress = widgets.HBox([self.progress, self.status])
        chart_row = widgets.HBox(
            [
                widgets.VBox([self.error_chart, self.error_downloads.widget]),
                widgets.VBox([self.law_chart, self.law_downloads.widget]),
            ],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        return widgets.VBox(
            [top, progress, self.url_message, self.message, self.last_run, chart_row, self.link, self.code,
             xsrf_cookie()]
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- settings -----------------------------------------------------------------------------

    def config(self) -> RunConfig:
        """Return the run settings that the controls show (not yet validated)."""
        return RunConfig(
            task=self.task.name,
            L=self.depth.value,
            M=self.width.value,
            D=self.dim.value,
            K=self.steps.value,
            learning_rate=self.learning_rate.value,
            alpha=self.alpha.value,
            activation=self.activation.value,
            seed=self.seed.value,
            dtype="float32",
        )

    def query_string(self) -> str:
        """Return the query string (leading "?") that opens the app with the current settings."""
        config = self.config()
        values = {
            "task": config.task,
            "L": config.L,
            self.width_parameter: self.width.value,
            "D": config.D,
            "K": config.K,
            "lr": config.learning_rate,
            "alpha": config.alpha,
            "activation": config.activation,
            "seed": config.seed,
            "auto_run": self.auto_run.value,
        }
        return url_state.format_query(values, self.url_fields)

    def code_text(self) -> str:
        """Return library code that reproduces a run of the current settings as ``result``."""
        return comparison_code(self.config(), self.limit_settings)

    def _update_link_and_code(self) -> None:
        self.link.value = url_state.link_html(self.query_string(), "explorer-link")
        self.code.value = code_html(self.code_text(), "explorer-code")

    def _on_control_change(self, change) -> None:
        self.url_message.value = ""  # it describes the settings the page opened with
        if change["owner"] in (self.depth, self.width, self.dim):
            self._update_summary()
        self._update_link_and_code()
        if self.auto_run.value:
            self.start_run()

    def _update_summary(self) -> None:
        self.summary.value = shape_summary_html(self.depth.value, self.width.value, self.dim.value)

    def _show_message(self, text: str, kind: str = "error") -> None:
        if not text:
            self.message.value = ""
            return
        self.message.value = (
            f'<div style="{MESSAGE_STYLES[kind]}; padding:6px 10px; border-radius:4px; max-width:900px">'
            f"{html.escape(text)}</div>"
        )

    # -- running ------------------------------------------------------------------------------

    def prepare(self) -> Comparison | None:
        """Return a comparison of the current settings, or None after showing why they are invalid."""
        try:
            comparison = Comparison(
                self.config(),
                self.limit_settings,
                memory_budget_bytes=self.memory_budget_bytes,
                cache=self.cache,
            )
        except ConfigError as error:  # MemoryBudgetError is a ConfigError too
            self._show_message(f"Cannot run these settings: {with_control_names(str(error))}")
            self.status.value = "Not run: invalid settings."
            return None
        self._show_message("")
        return comparison

    def start_run(self) -> asyncio.Task | None:
        """Cancel the running comparison and start one with the current settings.

        Returns the asyncio task, or None when the settings are invalid. Without a running event
        loop (a plain script), runs to the end before returning None.
        """
        comparison = self.prepare()
        if comparison is None:
            self.cancel()
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.run_blocking(comparison)
            return None
        return self._start_task(lambda previous: self._run(comparison, previous))

    async def _run(self, comparison: Comparison, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self._begin(comparison)
        started = time.monotonic()
        try:
            if self.worker is None:
                await self._run_in_kernel(comparison)
            else:
                await self._run_in_worker(comparison)
        except asyncio.CancelledError:
            self._finish(comparison, RunOutcome("cancelled", time.monotonic() - started))
            raise
        except Exception as error:  # any failure ends up in the page, never as a traceback
            logger.warning("explorer run %s failed: %s: %s", comparison.config, type(error).__name__, error)
            message = str(error) if isinstance(error, RemoteRunError) else f"{type(error).__name__}: {error}"
            self._finish(comparison, RunOutcome("failed", time.monotonic() - started, message))
        else:
            self._finish(comparison, RunOutcome(comparison.status, time.monotonic() - started))

    async def _run_in_kernel(self, comparison: Comparison) -> None:
        events = comparison.events()
        try:
            for event in events:
                self._on_event(comparison, event)
                await asyncio.sleep(0)
        finally:
            events.close()

    async def _run_in_worker(self, comparison: Comparison) -> None:
        """Apply the worker's messages about ``comparison`` to it and to the widgets."""
        worker = self.worker
        run_id = worker.submit(
            comparison.config, comparison.limit_settings, memory_budget_bytes=self.memory_budget_bytes
        )
        try:
            async for message in worker.messages(run_id):
                if message["type"] == "progress":
                    event = Progress(message["stage"], message["done"], message["total"], message["row"])
                    if event.row is not None:
                        comparison.rows.append(event.row)
                    self._on_event(comparison, event)
                elif message["type"] == "failed":
                    raise RemoteRunError(message["error"])
                else:
                    self._apply_state(comparison, message["state"])
        except asyncio.CancelledError:
            final = await worker.stop(run_id)
            if final is not None and final.get("state"):
                self._apply_state(comparison, final["state"])
            raise

    def _apply_state(self, comparison: Comparison, state: dict) -> None:
        """Copy the final state that the worker reported onto the kernel's ``comparison``."""
        comparison.diverged_at = state["diverged_at"]
        comparison.limit_diverged_at = dict(state["limit_diverged_at"])
        comparison.completed = state["status"] == "completed"
        self.limit_errors = dict(state["limit_error_estimate"])

    def run_blocking(self, comparison: Comparison | None = None) -> RunOutcome | None:
        """Run ``comparison`` (the current settings if None) to the end without an event loop."""
        if comparison is None:
            comparison = self.prepare()
        if comparison is None:
            return None
        self._begin(comparison)
        started = time.monotonic()
        for event in comparison.events():
            self._on_event(comparison, event)
        self._finish(comparison, RunOutcome(comparison.status, time.monotonic() - started))
        return self.outcome

    def close(self) -> None:
        """Stop the running comparison and the worker process."""
        self.cancel()
        if self.worker is not None:
            self.worker.kill()

    def _begin(self, comparison: Comparison) -> None:
        self.comparison = comparison
        self.outcome = None
        self.limit_errors = {}
        self.cancel_button.disabled = False
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        config = comparison.config
        self.status.value = f"Starting L={config.L}, M={config.M}, D={config.D}, seed {config.seed}..."
        self._update_error_chart(comparison, "running")

    def _on_event(self, comparison: Comparison, event: Progress) -> None:
        self.progress.value = event.fraction
        steps = comparison.config.K
        if event.stage == STAGE_TRAINING:
            step = event.row["step"] if event.row is not None else "?"
            self.status.value = f"Training: step {step} of {steps}"
            now = time.monotonic()
            if now - self._last_chart_update >= CHART_REFRESH_SECONDS:
                self._update_error_chart(comparison, "training")
        else:
            self.status.value = f"Computing the {event.stage}..."

    def _finish(self, comparison: Comparison, outcome: RunOutcome) -> None:
        if comparison.limit_estimates:
            self.limit_errors = {
                kind: limit_error_summary(estimate) for kind, estimate in comparison.limit_estimates.items()
            }
        self.outcome = outcome
        self.cancel_button.disabled = True
        config = comparison.config
        shape = f"L={config.L}, M={config.M}, D={config.D}, seed {config.seed}"
        kept = len(comparison.rows)

        if outcome.status == "completed":
            self.progress.value = 1.0
            self.progress.bar_style = "success"
            self.status.value = f"Done in {outcome.seconds:.1f} s."
            self._add_law_points(comparison)
            text = f"{shape}: completed {config.K} steps. {self._last_errors_text(comparison)}"
            self._show_limit_divergence(comparison)
        elif outcome.status == "diverged":
            self.progress.bar_style = "danger"
            self.status.value = f"Diverged at step {comparison.diverged_at}."
            text = (
                f"{shape}: diverged at step {comparison.diverged_at}; "
                f"steps 0 to {kept - 1} before it are plotted."
                if kept
                else f"{shape}: diverged at step {comparison.diverged_at}; no step is plotted."
            )
            self._show_message(
                f"Training diverged at step {comparison.diverged_at}: the loss became infinite or grew "
                "far above its initial value. Lower the learning rate, or raise α (the raw step is η L M D / α²).",
                "warning",
            )
        elif outcome.status == "cancelled":
            self.progress.bar_style = "warning"
            self.status.value = "Cancelled."
            text = (
                f"{shape}: cancelled at step {kept - 1} of {config.K}; steps 0 to {kept - 1} are plotted."
                if kept
                else f"{shape}: cancelled before training started."
            )
        else:
            self.progress.bar_style = "danger"
            self.status.value = "Failed."
            text = f"{shape}: the run failed."
            self._show_message(f"The run failed: {outcome.message}")
        self.last_run.value = f"<b>Last run:</b> {html.escape(text)}"
        self._update_error_chart(comparison, outcome.status)
        self.error_downloads.update(self.error_chart.chart)

    def _show_limit_divergence(self, comparison: Comparison) -> None:
        if comparison.limit_diverged_at:
            details = ", ".join(
                f"{kind} limit at step {step}" for kind, step in sorted(comparison.limit_diverged_at.items())
            )
            self._show_message(
                f"A limit simulation diverged ({details}); its errors after that step are not plotted.",
                "warning",
            )

    def _last_errors_text(self, comparison: Comparison) -> str:
        last = comparison.rows[-1]
        predicted = comparison.predicted_errors()
        parts = []
        for kind in charts.ERROR_KINDS:
            measured = last[f"{kind}_error_limit"]
            measured_text = "not available" if measured is None else f"{measured:.3g}"
            parts.append(f"{kind} error vs large-D limit {measured_text} (law predicts {predicted[kind]:.3g})")
        text = "; ".join(parts) + "."
        limit_error = self.limit_errors.get(LARGE_DIM)
        if limit_error is not None:
            text += (
                f" The large-D limit's own output error is estimated at "
                f"{limit_error['relative_error_estimate']:.1e} of the targets."
            )
        return text

    # -- charts -------------------------------------------------------------------------------

    def _update_error_chart(self, comparison: Comparison, state: str) -> None:
        config = comparison.config
        frame = charts.error_frame(comparison.rows, comparison.predicted_errors(), config.K)
        title = f"Errors against both limits: L={config.L}, M={config.M}, D={config.D}, seed {config.seed} ({state})"
        self.error_chart.chart = charts.error_chart(frame, title, config.K)
        self._last_chart_update = time.monotonic()

    def _add_law_points(self, comparison: Comparison) -> None:
        last = comparison.rows[-1]
        predicted = comparison.predicted_errors()
        config = comparison.config
        self.law_points[config] = [
            {
                "kind": kind,
                "predicted": predicted[kind],
                "measured": last[f"{kind}_error_limit"],
                "L": config.L,
                "M": config.M,
                "D": config.D,
                "P": config.num_parameters,
                "seed": config.seed,
            }
            for kind in charts.ERROR_KINDS
        ]
        self._update_law_chart()

    def _update_law_chart(self) -> None:
        points = [point for run in self.law_points.values() for point in run]
        self.law_chart.chart = charts.law_chart(charts.law_frame(points))
        self.law_downloads.update(self.law_chart.chart)

    def clear_runs(self) -> None:
        """Remove every completed run from the law chart."""
        self.law_points.clear()
        self._update_law_chart()
