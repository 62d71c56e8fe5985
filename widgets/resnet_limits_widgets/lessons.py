"""Panels of the teaching notebooks: a few controls, a Run button, a chart and a table per panel.

Every panel calls one function of ``resnet_limits.parametrization`` or ``resnet_limits.lessons``
and only draws its result, so every number it shows comes from tested library code. A run
blocks the kernel until it ends (the defaults take seconds). An invalid setting or a failed
computation shows a message in the page in place of a traceback; the failure is also logged.
"""

from __future__ import annotations

import html
import logging
import tempfile
import time
from collections.abc import Callable

import altair as alt
import ipywidgets as widgets
import pandas as pd

from resnet_limits import bounds, lessons
from resnet_limits import parametrization as pz
from resnet_limits.compilation_cache import enable_compilation_cache
from resnet_limits.config import ConfigError, estimate_training_bytes
from resnet_limits.sweeps import fits, paths
from resnet_limits.tasks import get_task

from resnet_limits_widgets import coordinate_charts
from resnet_limits_widgets.explorer import APP_MEMORY_BUDGET_BYTES, MESSAGE_STYLES

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


def _table_html(frame: pd.DataFrame, caption: str = "") -> str:
    table = frame.to_html(index=False, float_format=lambda value: f"{value:.4g}", border=0)
    caption_html = f"<p style='color:#555'>{html.escape(caption)}</p>" if caption else ""
    return f"<div style='font-size:13px'>{caption_html}{table}</div>"


def _slope_text(slope: fits.Slope) -> str:
    if slope.num_points < 3:
        return f"{slope.slope:.3f}"
    return f"{slope.slope:.3f} (95 % interval {slope.ci_low:.3f} to {slope.ci_high:.3f})"


def _slope_table(slopes: pd.DataFrame, caption: str) -> str:
    """Return the columns of ``fits.axis_slopes`` that a notebook shows, as HTML, or a note when it is empty.

    ``axis_slopes`` has a column for an axis only when some row holds that axis fixed, so
    missing columns are left out.
    """
    if slopes.empty:
        return f"<p>{html.escape(caption)} none: no axis has two sizes at fixed other axes.</p>"
    columns = [name for name in ("axis", "L", "M", "D", "slope", "ci_low", "ci_high") if name in slopes.columns]
    return _table_html(slopes[columns], caption)


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


class LessonPanel:
    """Controls, a Run button, a status line, a message area, a chart and an HTML block.

    ``compute`` reads the controls and returns a result; ``render`` turns it into a chart (or
    None) and HTML. ConfigError and ValueError are shown as invalid settings, any other
    exception as a failure with its type and message.
    """

    def __init__(self, title: str, controls: list[widgets.Widget], compute: Callable[[], object],
                 render: Callable[[object], tuple[alt.TopLevelMixin | None, str]], *, run_at_start: bool = True):
        alt.JupyterChart.enable_offline()
        self.compute_result = compute
        self.render_result = render
        self.result = None
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.status = widgets.HTML("Not run yet. Press Run.")
        self.message = widgets.HTML("")
        self.chart = alt.JupyterChart(_empty_chart("Press Run."))
        self.details = widgets.HTML("")
        for widget, name in ((self.status, "lesson-status"), (self.message, "lesson-message"),
                             (self.chart, "lesson-chart")):
            widget.add_class(name)  # selectors for browser tests
        header = widgets.HTML(f"<b>{html.escape(title)}</b>")
        self.widget = widgets.VBox([header, *controls, self.run_button, self.status, self.message,
                                    self.chart, self.details])
        if run_at_start:
            self.run()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _show_message(self, text: str) -> None:
        self.message.value = (
            f'<div style="{MESSAGE_STYLES["error"]}; padding:6px 10px; border-radius:4px; max-width:900px">'
            f"{html.escape(text)}</div>" if text else ""
        )

    def run(self):
        """Compute with the current controls and redraw; return the result, or None after a message."""
        started = time.monotonic()
        self.status.value = "Computing..."
        try:
            result = self.compute_result()
            chart, details = self.render_result(result)
        except (ConfigError, ValueError) as error:
            self._show_message(f"Cannot run these settings: {error}")
            self.status.value = "Not run: invalid settings."
            return None
        except Exception as error:  # noqa: BLE001 - the page shows the failure instead of a traceback
            logger.exception("lesson panel computation failed")
            self._show_message(f"The computation failed: {type(error).__name__}: {error}")
            self.status.value = "Failed."
            return None
        self._show_message("")
        self.result = result
        if chart is not None:
            self.chart.chart = chart
        self.details.value = details
        self.status.value = f"Computed in {time.monotonic() - started:.1f} s."
        return result


def _text(description: str, value: str) -> widgets.Text:
    return widgets.Text(description=description, value=value, continuous_update=False,
                        style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)


def _int(description: str, value: int, low: int, high: int) -> widgets.BoundedIntText:
    return widgets.BoundedIntText(description=description, value=value, min=low, max=high,
                                  style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)


# -- part 1: the model and coordinate checks ------------------------------------------------------


def rule_table_panel() -> widgets.HTML:
    """Return the table of parametrisation rules as HTML."""
    frame = pd.DataFrame(pz.rule_table())[["rule", "quantity", "formula", "description"]]
    return widgets.HTML(_table_html(frame))


def training_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that trains one network under a chosen rule and plots its loss per step."""
    depth = _int("L (depth)", 16, 1, 256)
    width = _int("M (width)", 64, 1, 1024)
    dim = _int("D (embedding dim.)", 64, 1, 1024)
    steps = _int("K (gradient steps)", 15, 1, 60)
    rule = widgets.Dropdown(description="parametrisation", options=sorted(pz.RULES), value="mlu",
                            style=DESCRIPTION_STYLE)

    def compute():
        task = get_task("paper-tanh")
        check_shapes_fit([(depth.value, width.value, dim.value)], steps.value, task.num_samples)
        trajectory = pz.train_under_rule(pz.get_rule(rule.value), task, depth.value, width.value, dim.value,
                                         steps=steps.value, learning_rate=task.learning_rate)
        return trajectory

    def render(trajectory):
        frame = pd.DataFrame({"step": range(len(trajectory.loss_K)), "loss": trajectory.loss_K})
        chart = alt.Chart(frame).mark_line(point=True).encode(
            x=alt.X("step:Q", title="gradient step k"), y=alt.Y("loss:Q", title="loss J"),
            tooltip=["step", alt.Tooltip("loss:Q", format=".4g")],
        ).properties(width=420, height=220, title=f"Training loss, L={depth.value}, M={width.value}, D={dim.value}")
        diverged = "" if trajectory.diverged_at is None else f" Diverged at step {trajectory.diverged_at}."
        details = f"<p>Loss {frame['loss'].iloc[0]:.4g} at step 0, {frame['loss'].iloc[-1]:.4g} at step {len(frame) - 1}.{diverged}</p>"
        return chart, details

    return LessonPanel("One training run", [rule, depth, width, dim, steps], compute, render, run_at_start=run_at_start)


COORDINATE_TITLES = {
    "stream_rms": "RMS of the stream H_l",
    "stream_update_rms": "RMS of the update of H_l in one step",
    "preactivation_update_rms": "RMS of the update of P_l in one step",
    "u_update_rms": "RMS of the update of U, relative to U at step 0",
}


def coordinate_check_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that runs ``parametrization.coordinate_check`` for MLU and the standard rule."""
    scales = _text("n (L = M = D = n)", "8, 16, 32, 64, 128")
    steps = _int("K (gradient steps)", 3, 1, 10)
    column = widgets.Dropdown(description="quantity", options=[(title, name) for name, title in COORDINATE_TITLES.items()],
                              value="stream_update_rms", style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
    records: dict[str, list[dict]] = {}

    def compute():
        sizes = pz.scaled_sizes(parse_integers(scales.value, "n"))
        if len(sizes) < 2:
            raise ConfigError("give at least two sizes n to fit a slope")
        check_shapes_fit(sizes, steps.value)
        return {name: pz.coordinate_check(name, sizes, steps=steps.value) for name in ("mlu", "standard")}

    def render(result):
        records.clear()
        records.update(result)
        return _coordinate_view(records, column.value, steps.value)

    panel = LessonPanel("Coordinate check: MLU against the standard parametrisation",
                        [scales, steps, column], compute, render, run_at_start=run_at_start)

    def redraw(_):
        if records:
            chart, details = _coordinate_view(records, column.value, steps.value)
            panel.chart.chart = chart
            panel.details.value = details

    column.observe(redraw, names="value")
    return panel


def _coordinate_view(records: dict[str, list[dict]], column: str, steps: int):
    step = steps if column != "stream_rms" else 0
    rows = [row for rule_rows in records.values() for row in rule_rows
            if row["step"] == step and row[column] is not None and row["finite"]]
    frame = pd.DataFrame(rows)[["rule", "L", "M", "D", "scale", "step", column]]
    chart = loglog_chart(frame, "scale", column, "rule", f"{COORDINATE_TITLES[column]} at step {step}",
                         "n = L = M = D", COORDINATE_TITLES[column])
    slope_rows = []
    for name, rule_rows in records.items():
        try:
            slope = pz.coordinate_slope(rule_rows, column, step=step)
            slope_rows.append({"rule": name, "fitted slope in log n": _slope_text(slope)})
        except ConfigError as error:
            slope_rows.append({"rule": name, "fitted slope in log n": str(error)})
    return chart, _table_html(pd.DataFrame(slope_rows)) + _table_html(frame)


# -- part 2: depth begets width -------------------------------------------------------------------


def depth_width_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that sweeps L and M at fixed D and plots the error against the Mean ODE.

    The horizontal axis is L M, L or M (a dropdown that redraws without training again).
    """
    depths = _text("L values", "2, 8, 32")
    widths = _text("M values", "4, 16")
    dim = _int("D (fixed)", 16, 1, 1024)
    axis = widgets.Dropdown(description="horizontal axis", options=[("L M", "LM"), ("L", "L"), ("M", "M")],
                            value="LM", style=DESCRIPTION_STYLE)
    directory = tempfile.TemporaryDirectory(prefix="resnet-limits-lesson-")
    computed_runs = []

    def compute():
        grid = (parse_integers(depths.value, "L values"), parse_integers(widths.value, "M values"), [dim.value])
        out = f"{directory.name}/L{'-'.join(map(str, grid[0]))}_M{'-'.join(map(str, grid[1]))}_D{dim.value}"
        result = lessons.small_sweep(*grid, [0], out)
        frame, slope = lessons.depth_width_table(result)
        return result, frame, slope

    def render(computed):
        computed_runs[:] = [computed]
        return _depth_width_view(*computed, axis.value)

    panel = LessonPanel("Depth begets width: L and M at fixed D", [depths, widths, dim, axis], compute, render,
                        run_at_start=run_at_start)
    panel.directory = directory  # the store is deleted when the panel is garbage-collected

    def redraw(_):
        if computed_runs:
            panel.chart.chart, panel.details.value = _depth_width_view(*computed_runs[0], axis.value)

    axis.observe(redraw, names="value")
    return panel


def _depth_width_view(result, frame, slope, axis: str):
    shown = frame[["L", "M", "D", "LM", result.column]].copy()
    color = "M" if axis == "L" else "L"
    shown[f"{color} "] = shown[color].astype(str)  # a nominal copy for the colour legend
    titles = {"LM": "L M", "L": "L (depth)", "M": "M (width)"}
    chart = loglog_chart(shown, axis, result.column, f"{color} ",
                         f"Error against the fixed-D Mean ODE, one line per {color}",
                         titles[axis], "embedding error at step K")
    details = (
        f"<p>Slope of the error against L M: <b>{_slope_text(slope)}</b>. "
        "The bound's width term sqrt(D/(L M)) has slope -1/2 against L M, against L and against M.</p>"
        + _slope_table(result.slopes, "Slopes against L (at fixed M) and against M (at fixed L):")
        + _table_html(shown.drop(columns=[f"{color} "]))
    )
    return chart, details


# -- part 3: the large-embedding limit ------------------------------------------------------------


def span_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that measures the part of trained streams outside span(E)."""
    sizes = _text("n (L = M = n)", "4, 16, 32")
    dim = _int("D", 64, 1, 1024)

    def compute():
        shapes = [(n, n, dim.value) for n in parse_integers(sizes.value, "n")]
        check_shapes_fit(shapes, 5)
        return lessons.span_reduction(shapes)

    def render(frame):
        chart = loglog_chart(frame, "width_term", "outside_fraction", None,
                             "Part of the stream outside span(E) after 5 steps",
                             "sqrt(D / (L M))", "RMS outside / RMS of H")
        return chart, _table_html(frame, f"span(E) has dimension r = {int(frame['r'].iloc[0])}.")

    return LessonPanel("The stream lives in r dimensions", [sizes, dim], compute, render, run_at_start=run_at_start)


def limit_gap_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that plots the gap between the fixed-D Mean ODE and the large-D limit against D."""
    dims = _text("D values", "4, 16, 64, 256, 1024")

    def compute():
        return lessons.limit_gap(parse_integers(dims.value, "D values"))

    def render(computed):
        frame, slope = computed
        chart = loglog_chart(frame, "D", "embedding_gap", None, "Fixed-D Mean ODE against the large-D limit",
                             "D", "RMS gap of the last stream", reference="embedding_term")
        details = (f"<p>Fitted slope in log D: <b>{_slope_text(slope)}</b>; the dashed line is 1/sqrt(D), "
                   "slope -1/2.</p>" + _table_html(frame))
        return chart, details

    return LessonPanel("The 1/sqrt(D) term", [dims], compute, render, run_at_start=run_at_start)


def gaussian_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel of histograms of the coordinates h^d(1) for growing D against the limit's Gaussian law."""
    dims = _text("D values", "8, 64, 512")

    def compute():
        values = parse_integers(dims.value, "D values")
        if len(values) > 4:
            raise ConfigError("choose at most 4 values of D, one histogram each")
        check_shapes_fit([(16, 64, D) for D in values], 5)
        return values, lessons.gaussian_coordinates(values)

    def render(computed):
        values, histograms = computed
        panels = [coordinate_charts.histogram_panel(h).properties(width=220, title=f"D = {D}")
                  for D, h in zip(values, histograms)]
        frame = pd.DataFrame({"D": values, "KS distance": [h.ks_statistic() for h in histograms]})
        return alt.hconcat(*panels), _table_html(frame, "Kolmogorov-Smirnov distance to the Gaussian law, L = 16, M = 64, step 5:")

    return LessonPanel("Coordinates become Gaussian", [dims], compute, render, run_at_start=run_at_start)


# -- part 4: all shapes and sizes -----------------------------------------------------------------


def budget_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel of the bound's three terms along the optimal shapes of growing budgets."""
    law = widgets.Dropdown(description="error law", options=[("embedding", "embedding"), ("output", "output")],
                           value="embedding", style=DESCRIPTION_STYLE)

    def compute():
        chosen = fits.law_named(law.value)
        return chosen, lessons.budget_table(paths.log_budgets(1e4, 1e12, 9), chosen)

    def render(computed):
        chosen, frame = computed
        long = frame.melt(id_vars=["budget"], value_vars=[t.name for t in chosen.terms] + ["bound_sum"],
                          var_name="term", value_name="value")
        chart = loglog_chart(long, "budget", "value", "term", f"Terms of the {chosen.name} law on its optimal shapes",
                             "parameters P = L M D", "term value (C = 1)")
        rates = lessons.optimal_rates()
        details = (_table_html(rates, "Optimal exponents L = P^a, M = P^b, D = P^c, derived from the terms:")
                   + _table_html(lessons.path_rates(chosen), "Predicted slope against P on the paths D = P^c:")
                   + _table_html(frame))
        return chart, details

    return LessonPanel("The bound along the optimal shapes", [law], compute, render, run_at_start=run_at_start)


def shape_sweep_panel(run_at_start: bool = True) -> LessonPanel:
    """Build a panel that sweeps M and D at fixed L, fits the error law and plots the error against D."""
    depth = _int("L (fixed)", 8, 1, 256)
    widths = _text("M values", "4, 32")
    dims = _text("D values", "4, 16, 64")
    directory = tempfile.TemporaryDirectory(prefix="resnet-limits-lesson-")

    def compute():
        grid = ([depth.value], parse_integers(widths.value, "M values"), parse_integers(dims.value, "D values"))
        out = f"{directory.name}/L{depth.value}_M{'-'.join(map(str, grid[1]))}_D{'-'.join(map(str, grid[2]))}"
        result = lessons.small_sweep(*grid, [0], out, column="embedding_error_limit")
        law_fit = fits.fit_error_law(result.frame, result.column, bounds.EMBEDDING_LAW)
        return result, law_fit

    def render(computed):
        result, law_fit = computed
        frame = result.frame[["L", "M", "D", result.column]].copy()
        frame["M"] = frame["M"].astype(str)
        chart = loglog_chart(frame, "D", result.column, "M", "Error against the large-D limit, by M",
                             "D", "embedding error at step K")
        constants = pd.DataFrame(law_fit.to_dict()["constants"])
        details = (_table_html(constants, "Fitted error^2 = a^2 D/(L M) + b^2/D:")
                   + _slope_table(result.slopes, "Slopes per axis:")
                   + _table_html(frame))
        return chart, details

    panel = LessonPanel("A sweep over shapes and the fitted error law", [depth, widths, dims], compute, render,
                        run_at_start=run_at_start)
    panel.directory = directory
    return panel


def enable_cache() -> None:
    """Turn on JAX's persistent compilation cache in the user's cache directory."""
    enable_compilation_cache()
