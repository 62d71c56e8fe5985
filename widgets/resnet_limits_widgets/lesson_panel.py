"""The building blocks of the course panels: a panel with a Run button, input parsing and charts.

A ``LessonPanel`` calls one library function and only draws its result. The function runs in a
worker process (``resnet_limits.worker``) that every panel of a kernel shares, so the kernel
stays free for widget messages, a progress bar follows the computation, and Cancel stops it
within a second. An invalid setting or a failed computation shows a message in the page in
place of a traceback, and a failure is also logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
import math
import time
import urllib.parse
import weakref
from collections.abc import Callable

import altair as alt
import ipywidgets as widgets
import pandas as pd

from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits.config import ConfigError, estimate_training_bytes
from resnet_limits.sweeps import fits
from resnet_limits.worker import CallFailed, ComparisonWorker

from resnet_limits_widgets import tables
from resnet_limits_widgets.background import BackgroundRun
from resnet_limits_widgets import url_state
from resnet_limits_widgets.charts import chart_widget
from resnet_limits_widgets.explorer import APP_MEMORY_BUDGET_BYTES, MESSAGE_STYLES, message_html
from resnet_limits_widgets.page_cookie import xsrf_cookie

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DESCRIPTION_STYLE = {"description_width": "160px"}
CONTROL_LAYOUT = widgets.Layout(width="460px")


def parse_integers(text: str, name: str) -> list[int]:
    """Return the positive integers in a comma-separated ``text``; raise ConfigError when invalid."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"{name} must be integers separated by commas, such as 4, 16, 64; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{name} must contain at least one integer of 1 or more; got {text!r}")
    return sorted(set(values))


def check_shapes_fit(shapes, steps: int, num_samples: int = 10) -> None:
    """Raise ConfigError when training any shape (L, M, D) is estimated above the apps' memory budget."""
    for L, M, D in shapes:
        estimate = estimate_training_bytes(L, M, D, num_samples, steps, "float32")
        if estimate > APP_MEMORY_BUDGET_BYTES:
            raise ConfigError(
                f"shape L={L}, M={M}, D={D} needs about {estimate / 2**30:.2f} GiB, over the budget of "
                f"{APP_MEMORY_BUDGET_BYTES / 2**30:.2f} GiB; reduce L, M or D"
            )


def _empty_chart(text: str) -> alt.Chart:
    return alt.Chart().mark_text(text=text, fontSize=14, color="#555555").properties(width=500, height=40)


NO_INTERVAL = "none (under 3 points)"
NO_INTERVAL_NOTE = ("none (under 3 points): a fit through 2 points has no residual, so it has no "
                    "95 % interval; add a size to get one.")
AXIS_NAMES = {"L": "L (depth)", "M": "M (width)", "D": "D (embedding dim.)"}


def slope_text(slope: fits.Slope) -> str:
    """Return a fitted slope with its 95 % interval as [low, high], or alone when it has no interval."""
    if slope.num_points < 3 or not (math.isfinite(slope.ci_low) and math.isfinite(slope.ci_high)):
        return f"{slope.slope:.3f} (no interval: fewer than 3 points)"
    return f"{slope.slope:.3f}, 95 % interval [{slope.ci_low:.3f}, {slope.ci_high:.3f}]"


def _fixed_sizes(row: pd.Series) -> str:
    names = [name for name in ("L", "M", "D") if name != row["axis"] and name in row.index
             and not tables.is_missing(row[name])]
    return ", ".join(f"{name} = {int(row[name])}" for name in names)


def slope_table(slopes: pd.DataFrame, caption: str) -> str:
    """Return the per-axis slopes of ``fits.axis_slopes`` as a table, or a note when there are none.

    Each row names the axis, the sizes held fixed, the slope of log error against log size, its
    95 % interval and the number of points.
    """
    if slopes.empty:
        return f"<p>{html.escape(caption)} none: no axis has two sizes at fixed other axes.</p>"
    shown = slopes.assign(against=slopes["axis"].map(AXIS_NAMES),
                          fixed=slopes.apply(_fixed_sizes, axis=1))
    columns = [
        tables.Column("against", "slope against", tables.text),
        tables.Column("fixed", "sizes held fixed", tables.text),
        tables.Column("slope", "fitted slope", tables.significant(3)),
        tables.Column(("ci_low", "ci_high"), "95 % interval", tables.significant(3), missing=NO_INTERVAL),
        tables.Column("num_points", "points", tables.integer),
    ]
    return tables.readable_table(shown, columns, caption, NO_INTERVAL_NOTE)


def loglog_chart(frame: pd.DataFrame, x: str, y: str, color: str | None, title: str,
                 x_title: str, y_title: str, reference: str | None = None) -> alt.LayerChart:
    """Return points joined by lines on log-log axes, with an optional dashed reference column."""
    encoding = dict(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(type="log")),
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(type="log")),
        tooltip=list(frame.columns),
    )
    if color is not None:
        encoding["color"] = alt.Color(f"{color}:N", legend=alt.Legend(orient="bottom"))
    layers = [alt.Chart(frame).mark_line(point=True).encode(**encoding)]
    if reference is not None:
        layers.append(
            alt.Chart(frame).mark_line(strokeDash=[6, 4], color="#7f7f7f").encode(
                x=encoding["x"], y=alt.Y(f"{reference}:Q", scale=alt.Scale(type="log"))
            )
        )
    return alt.layer(*layers).properties(width=420, height=260, title=title)


@dataclasses.dataclass
class CourseQuery:
    """The settings that a course page reads from its query string.

    ``auto_run`` is False for ``auto_run=0``. ``values`` maps a panel's name to the texts of its
    controls, from parameters written ``panel.control=value`` (``training.L=8``). ``message`` is
    the page's widget for the parameters that were ignored or changed.
    """

    auto_run: bool = True
    values: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    messages: list[str] = dataclasses.field(default_factory=list)
    message: widgets.HTML = dataclasses.field(default_factory=lambda: widgets.HTML(""))

    def add_message(self, text: str) -> None:
        self.messages.append(text)
        self.message.value = message_html("The link's settings were adjusted: " + "; ".join(self.messages) + ".",
                                          "warning")

    def clear_message(self, _change=None) -> None:
        """Remove the message, which describes the settings the page opened with, once a control changes."""
        self.message.value = ""


# The query of the page being built: ``read_course_query`` sets it, and every panel made after
# that reads its controls' initial values from it. A kernel serves one page, so one is enough.
_COURSE_QUERY = CourseQuery()


def read_course_query(query_string: str | None, panels: dict[str, tuple[str, ...]]) -> CourseQuery:
    """Parse a course page's query string for the panels ``panels`` (name -> control names).

    Unknown parameters and an invalid ``auto_run`` are ignored with a message in
    ``CourseQuery.message``. Values of controls are checked when their panel is built.
    """
    global _COURSE_QUERY
    query = CourseQuery()
    for name, text in urllib.parse.parse_qsl((query_string or "").lstrip("?"), keep_blank_values=True):
        if name == "auto_run":
            try:
                query.auto_run = url_state.BoolField().convert(name, text)[0]
            except ValueError as error:
                query.add_message(str(error))
            continue
        panel, _, control = name.partition(".")
        if control not in panels.get(panel, ()):
            known = ", ".join(f"{key}.{value}" for key, values in panels.items() for value in values)
            query.add_message(f"{name} is unknown and was ignored (known: auto_run, {known})")
            continue
        query.values.setdefault(panel, {})[control] = text
    _COURSE_QUERY = query
    return query


def set_control_from_text(control: widgets.Widget, name: str, text: str) -> str | None:
    """Set ``control`` to the value written ``text``; return a message when the value was changed.

    Raises ValueError, naming the parameter ``name``, when ``text`` is not a valid value.
    """
    if isinstance(control, widgets.Dropdown):
        # Options are either values or (label, value) pairs.
        values = [option[1] if isinstance(option, tuple) else option for option in control.options]
        choices = [str(value) for value in values]
        if text not in choices:
            raise ValueError(f"{name}={text!r} is invalid: choose one of {', '.join(choices)}")
        control.value = values[choices.index(text)]
        return None
    if isinstance(control, widgets.BoundedIntText):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is invalid: it must be an integer") from None
        clamped = min(max(value, control.min), control.max)
        control.value = clamped
        if clamped != value:
            return f"{name}={value} is outside {control.min}..{control.max}; using {name}={clamped}"
        return None
    control.value = text
    return None


@dataclasses.dataclass(frozen=True)
class WorkerCall:
    """A call of a ``@worker_function`` of ``resnet_limits``: its "module:name" and keyword arguments."""

    function: str
    kwargs: dict


_WORKER: ComparisonWorker | None = None
_WORKER_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def lesson_worker() -> ComparisonWorker:
    """Return the worker process that every course panel of this kernel shares, created on first use."""
    global _WORKER
    if _WORKER is None:
        _WORKER = ComparisonWorker(compilation_cache_dir=enable_compilation_cache())
    return _WORKER


def _worker_lock() -> asyncio.Lock:
    # The worker runs one request at a time. Panels queue here, in the kernel, so that a queued
    # panel's Cancel never has to wait for, or kill, another panel's computation.
    loop = asyncio.get_running_loop()
    return _WORKER_LOCKS.setdefault(loop, asyncio.Lock())


class LessonPanel(BackgroundRun):
    """Controls, Run and Cancel buttons, a progress bar, a status line, a message area, a chart and HTML.

    ``prepare`` reads the controls and returns the ``WorkerCall`` that computes the result;
    ``render`` turns the call's value into a chart (or None) and HTML. The call runs in the
    worker process (``lesson_worker()`` unless ``worker`` is given) as an asyncio task, so the
    page stays responsive and Cancel stops it within a second. ConfigError and ValueError, in
    ``prepare``, in the worker or in ``render``, are shown as invalid settings, and any other
    exception as a failure with its type and message. ``url_name`` and ``url_controls`` name the
    panel and its controls in the page's query string (``read_course_query``), and
    ``run_at_start=None`` follows the page's ``auto_run``.
    """

    def __init__(self, title: str, controls: list[widgets.Widget], prepare: Callable[[], WorkerCall],
                 render: Callable[[object], tuple[alt.TopLevelMixin | None, str]], *,
                 run_at_start: bool | None = None, worker: ComparisonWorker | None = None,
                 url_name: str | None = None, url_controls: dict[str, widgets.Widget] | None = None):
        alt.JupyterChart.enable_offline()
        self.title = title
        self.prepare_call = prepare
        self.render_result = render
        self.worker = worker if worker is not None else lesson_worker()
        self.worker.start()  # its imports overlap with the page's first render
        self.result = None
        self.outcome: str | None = None  # "completed", "invalid", "failed" or "cancelled"
        self._task = None
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                              layout=widgets.Layout(width="220px"))
        self.status = widgets.HTML("Not run yet. Press Run.")
        self.message = widgets.HTML("")
        self.chart = chart_widget(_empty_chart("Press Run."))
        self.details = widgets.HTML("")
        for widget, name in ((self.status, "lesson-status"), (self.message, "lesson-message"),
                             (self.chart, "lesson-chart"), (self.run_button, "lesson-run"),
                             (self.cancel_button, "lesson-cancel"), (self.progress, "lesson-progress")):
            widget.add_class(name)  # selectors for browser tests
        header = widgets.HTML(f"<b>{html.escape(title)}</b>")
        buttons = widgets.HBox([self.run_button, self.cancel_button, self.progress, self.status])
        self.widget = widgets.VBox([header, *controls, buttons, self.message, self.chart, self.details,
                                    xsrf_cookie()])
        self.widget.add_class("lesson-panel")
        if url_name is not None:
            self._apply_query(url_name, url_controls or {})
        for control in controls:
            control.observe(_COURSE_QUERY.clear_message, names="value")
        if run_at_start is None:
            run_at_start = _COURSE_QUERY.auto_run
        if run_at_start:
            self.run()

    def _apply_query(self, url_name: str, controls: dict[str, widgets.Widget]) -> None:
        """Set the controls named in the page's query string (``url_name.control=value``)."""
        for control_name, text in _COURSE_QUERY.values.get(url_name, {}).items():
            parameter = f"{url_name}.{control_name}"
            try:
                changed = set_control_from_text(controls[control_name], parameter, text)
            except ValueError as error:
                _COURSE_QUERY.add_message(f"{error}; the default is kept")
                continue
            if changed:
                _COURSE_QUERY.add_message(changed)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _show_message(self, text: str) -> None:
        self.message.value = (
            f'<div style="{MESSAGE_STYLES["error"]}; padding:6px 10px; border-radius:4px; max-width:900px">'
            f"{html.escape(text)}</div>" if text else ""
        )

    def _prepare(self) -> WorkerCall | None:
        try:
            return self.prepare_call()
        except (ConfigError, ValueError) as error:
            self._show_invalid(str(error))
            return None

    def _show_invalid(self, text: str) -> None:
        self.outcome = "invalid"
        self._show_message(f"Cannot run these settings: {text}")
        self.status.value = "Not run: invalid settings."

    def run(self) -> asyncio.Task | None:
        """Start a computation with the current controls in place of the running one.

        Returns its asyncio task, or None when the settings are invalid (the page shows why).
        Without a running event loop (a plain script) it runs to the end before returning None.
        """
        call = self._prepare()
        if call is None:
            self.cancel()
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._run(call, None))
            return None
        return self._start_task(lambda previous: self._run(call, previous))

    def run_blocking(self):
        """Compute with the current controls without an event loop; return the result, or None after a message."""
        self.result = None
        self.run()
        return self.result if self.outcome == "completed" else None

    async def _run(self, call: WorkerCall, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self.outcome = None
        self.cancel_button.disabled = False
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        self.status.value = "Waiting for the worker..."
        started = time.monotonic()
        try:
            async with _worker_lock():
                self.status.value = "Starting..."
                value = await self.worker.call(call.function, call.kwargs, on_progress=self._on_progress)
            chart, details = self.render_result(value)
        except asyncio.CancelledError:
            self._finish("cancelled", "Cancelled.")
            raise
        except CallFailed as error:
            if error.kind in INVALID_SETTING_ERRORS:
                self._show_invalid(_without_type_name(str(error)))
                self._finish("invalid", "Not run: invalid settings.")
            else:
                self._fail(str(error))
            return
        except (ConfigError, ValueError) as error:
            self._show_invalid(str(error))
            self._finish("invalid", "Not run: invalid settings.")
            return
        except Exception as error:  # noqa: BLE001 - the page shows the failure instead of a traceback
            self._fail(f"{type(error).__name__}: {error}")
            return
        self._show_message("")
        self.result = value
        if chart is not None:
            self.chart.chart = chart
        self.details.value = details
        self.progress.value = 1.0
        self._finish("completed", f"Computed in {time.monotonic() - started:.1f} s.")

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress.value = done / total if total > 0 else 0.0
        self.status.value = f"Computing: {html.escape(stage)}, {done} of {total} done..."

    def _fail(self, text: str) -> None:
        logger.warning("lesson panel %r: computation failed: %s", self.title, text)
        self._show_message(f"The computation failed: {text}")
        self._finish("failed", "Failed.")

    def _finish(self, outcome: str, status: str) -> None:
        self.outcome = outcome
        self.cancel_button.disabled = True
        self.progress.bar_style = {"completed": "success", "cancelled": "warning"}.get(outcome, "danger")
        self.status.value = status


# Exception types raised in the worker that mean the settings are invalid, not that the code failed.
INVALID_SETTING_ERRORS = ("ConfigError", "ValueError", "MemoryBudgetError")


def _without_type_name(text: str) -> str:
    """Return "message" from a worker's "TypeName: message"."""
    _, separator, message = text.partition(": ")
    return message if separator else text


def text_control(description: str, value: str) -> widgets.Text:
    """Return a text box that commits its value on Enter or on leaving the box."""
    return widgets.Text(description=description, value=value, continuous_update=False,
                        style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)


def int_control(description: str, value: int, low: int, high: int) -> widgets.BoundedIntText:
    """Return an integer box bounded to [low, high]."""
    return widgets.BoundedIntText(description=description, value=value, min=low, max=high,
                                  style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)


def enable_cache() -> None:
    """Turn on JAX's persistent compilation cache in the user's cache directory."""
    enable_compilation_cache()
