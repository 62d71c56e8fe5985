"""Panels of the teaching notebooks: a few controls, a Run button, a chart and a table per panel.

Every panel calls one ``@worker_function`` of ``resnet_limits.lessons`` in the worker process and
only draws its result, so every number it shows comes from tested library code. The panel itself,
its input parsing and its chart builders are in ``lesson_panel``.
"""

from __future__ import annotations

import dataclasses
import tempfile

import altair as alt
import ipywidgets as widgets
import numpy as np
import pandas as pd

from resnet_limits import lessons
from resnet_limits.coordinates import CoordinateHistogram
from resnet_limits import parametrization as pz
from resnet_limits.config import ConfigError
from resnet_limits.sweeps import fits, paths
from resnet_limits.tasks import get_task

from resnet_limits_widgets import coordinate_charts
from resnet_limits_widgets.lesson_panel import (
    CONTROL_LAYOUT,
    DESCRIPTION_STYLE,
    LessonPanel,
    WorkerCall,
    check_shapes_fit,
    read_course_query,
    enable_cache,
    int_control,
    loglog_chart,
    parse_integers,
    slope_table,
    slope_text,
    text_control,
)
from resnet_limits_widgets.tables import Column
from resnet_limits_widgets import tables

__all__ = [
    "COURSE_PANELS",
    "LessonPanel",
    "open_course_page",
    "budget_panel",
    "coordinate_check_panel",
    "depth_width_panel",
    "enable_cache",
    "gaussian_panel",
    "limit_gap_panel",
    "rule_table_panel",
    "shape_sweep_panel",
    "span_panel",
    "training_panel",
]


# The columns of a shape, shown in every table that lists runs.
SHAPE_COLUMNS = (
    Column("L", "L (depth)", tables.integer),
    Column("M", "M (width)", tables.integer),
    Column("D", "D (embedding dim.)", tables.integer),
)


# The query parameters of the course pages: a panel's name and the names of its controls, written
# ``?training.L=8&training.K=5``, and ``auto_run=0``, which opens a page without running its panels.
COURSE_PANELS = {
    "training": ("rule", "L", "M", "D", "K"),
    "coordinates": ("n", "K", "quantity"),
    "depth_width": ("L", "M", "D", "axis"),
    "span": ("n", "D"),
    "gap": ("D",),
    "gaussian": ("D",),
    "budget": ("law",),
    "shape_sweep": ("L", "M", "D"),
}


def open_course_page(query_string: str | None = None) -> widgets.HTML:
    """Prepare a course page: the compilation cache and the settings of the page's query string.

    Returns the widget that lists the query parameters that were ignored or changed; display it
    above the panels.
    """
    enable_cache()
    query = read_course_query(query_string, COURSE_PANELS)
    query.message.add_class("course-url-message")
    return query.message


def _call(name: str, **kwargs) -> WorkerCall:
    """Return the call of the ``@worker_function`` ``resnet_limits.lessons.<name>``."""
    return WorkerCall(f"resnet_limits.lessons:{name}", kwargs)


def _sweep_result(value: dict) -> lessons.SweepResult:
    return lessons.SweepResult(frame=value["frame"], slopes=value["slopes"], column=value["column"])


def _histogram(fields: dict) -> CoordinateHistogram:
    """Rebuild a ``CoordinateHistogram`` from the fields that ``lessons.gaussian_histograms`` returns."""
    names = {field.name for field in dataclasses.fields(CoordinateHistogram)}
    arrays = {name: np.asarray(value, np.float64) if isinstance(value, list) else value
              for name, value in fields.items() if name in names}
    return CoordinateHistogram(**arrays)


# -- part 1: the model and coordinate checks ------------------------------------------------------


def rule_table_panel() -> widgets.HTML:
    """Return the table of parametrisation rules as HTML."""
    frame = pd.DataFrame(pz.rule_table())
    columns = [Column(name, header, tables.text) for name, header in
               (("rule", "parametrisation"), ("quantity", "quantity"), ("formula", "formula"),
                ("description", "description"))]
    return widgets.HTML(tables.readable_table(frame, columns))


def training_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that trains one network under a chosen rule and plots its loss per step."""
    depth = int_control("L (depth)", 16, 1, 256)
    width = int_control("M (width)", 64, 1, 1024)
    dim = int_control("D (embedding dim.)", 64, 1, 1024)
    steps = int_control("K (gradient steps)", 15, 1, 60)
    rule = widgets.Dropdown(description="parametrisation", options=sorted(pz.RULES), value="mlu",
                            style=DESCRIPTION_STYLE)

    def prepare():
        task = get_task("paper-tanh")
        check_shapes_fit([(depth.value, width.value, dim.value)], steps.value, task.num_samples)
        return _call("training_run", rule=rule.value, L=depth.value, M=width.value, D=dim.value, steps=steps.value)

    def render(trajectory):
        frame = pd.DataFrame({"step": range(len(trajectory["loss"])), "loss": trajectory["loss"]})
        chart = alt.Chart(frame).mark_line(point=True).encode(
            x=alt.X("step:Q", title="gradient step k"), y=alt.Y("loss:Q", title="loss J"),
            tooltip=["step", alt.Tooltip("loss:Q", format=".4g")],
        ).properties(width=420, height=220, title=f"Training loss, L={depth.value}, M={width.value}, D={dim.value}")
        diverged_at = trajectory["diverged_at"]
        diverged = "" if diverged_at is None else f" Diverged at step {diverged_at}."
        details = f"<p>Loss {frame['loss'].iloc[0]:.4g} at step 0, {frame['loss'].iloc[-1]:.4g} at step {len(frame) - 1}.{diverged}</p>"
        return chart, details

    return LessonPanel("One training run", [rule, depth, width, dim, steps], prepare, render, run_at_start=run_at_start,
                       url_name="training", url_controls=dict(rule=rule, L=depth, M=width, D=dim, K=steps))


COORDINATE_TITLES = {
    "stream_rms": "RMS of the stream H_l",
    "stream_update_rms": "RMS of the update of H_l in one step",
    "preactivation_update_rms": "RMS of the update of P_l in one step",
    "u_update_rms": "RMS of the update of U, relative to U at step 0",
}


def coordinate_check_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that runs ``parametrization.coordinate_check`` for MLU and the standard rule."""
    scales = text_control("n (L = M = D = n)", "8, 16, 32, 64, 128")
    steps = int_control("K (gradient steps)", 3, 1, 10)
    column = widgets.Dropdown(description="quantity", options=[(title, name) for name, title in COORDINATE_TITLES.items()],
                              value="stream_update_rms", style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
    records: dict[str, list[dict]] = {}

    def prepare():
        sizes = pz.scaled_sizes(parse_integers(scales.value, "n"))
        if len(sizes) < 2:
            raise ConfigError("give at least two sizes n to fit a slope")
        check_shapes_fit(sizes, steps.value)
        return _call("coordinate_checks", sizes=[list(size) for size in sizes], steps=steps.value)

    def render(result):
        records.clear()
        records.update(result)
        return _coordinate_view(records, column.value, steps.value)

    panel = LessonPanel("Coordinate check: MLU against the standard parametrisation",
                        [scales, steps, column], prepare, render, run_at_start=run_at_start,
                        url_name="coordinates", url_controls=dict(n=scales, K=steps, quantity=column))

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
            slope_rows.append({"rule": name, "slope": slope_text(slope)})
        except ConfigError as error:
            slope_rows.append({"rule": name, "slope": f"not fitted: {error}"})
    slope_columns = [Column("rule", "parametrisation", tables.text),
                     Column("slope", "fitted slope in log n", tables.text)]
    value_columns = [
        Column("rule", "parametrisation", tables.text),
        Column("scale", "n = L = M = D", tables.integer),
        Column("step", "step k", tables.integer),
        Column(column, COORDINATE_TITLES[column], tables.significant(3)),
    ]
    return chart, (tables.readable_table(pd.DataFrame(slope_rows), slope_columns)
                   + tables.readable_table(frame, value_columns, "Measured values per size:"))


# -- part 2: depth begets width -------------------------------------------------------------------


def depth_width_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that sweeps L and M at fixed D and plots the error against the Mean ODE.

    The horizontal axis is L M, L or M (a dropdown that redraws without training again).
    """
    depths = text_control("L values", "2, 8, 32")
    widths = text_control("M values", "4, 16")
    dim = int_control("D (fixed)", 16, 1, 1024)
    axis = widgets.Dropdown(description="horizontal axis", options=[("L M", "LM"), ("L", "L"), ("M", "M")],
                            value="LM", style=DESCRIPTION_STYLE)
    directory = tempfile.TemporaryDirectory(prefix="resnet-limits-lesson-")
    computed_runs = []

    def prepare():
        depth_values, width_values = parse_integers(depths.value, "L values"), parse_integers(widths.value, "M values")
        check_shapes_fit([(L, M, dim.value) for L in depth_values for M in width_values], 15)
        out = f"{directory.name}/L{'-'.join(map(str, depth_values))}_M{'-'.join(map(str, width_values))}_D{dim.value}"
        return _call("depth_width_sweep", depths=depth_values, widths=width_values, dim=dim.value, out=out)

    def render(value):
        computed = (_sweep_result(value), value["table"], fits.Slope(**value["slope"]))
        computed_runs[:] = [computed]
        return _depth_width_view(*computed, axis.value)

    panel = LessonPanel("Depth begets width: L and M at fixed D", [depths, widths, dim, axis], prepare, render,
                        run_at_start=run_at_start, url_name="depth_width",
                        url_controls=dict(L=depths, M=widths, D=dim, axis=axis))
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
        f"<p>Slope of the error against L M: <b>{slope_text(slope)}</b>. "
        "The bound's width term sqrt(D/(L M)) has slope -1/2 against L M, against L and against M.</p>"
        + slope_table(result.slopes, "Slopes against L (at fixed M) and against M (at fixed L):")
        + tables.readable_table(shown, [
            *SHAPE_COLUMNS,
            Column("LM", "L M (units in all blocks)", tables.integer),
            Column(result.column, "error against the fixed-D Mean ODE at step K (RMS)", tables.significant(3)),
        ], "One run per shape:")
    )
    return chart, details


# -- part 3: the large-embedding limit ------------------------------------------------------------


def span_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that measures the part of trained streams outside span(E)."""
    sizes = text_control("n (L = M = n)", "4, 16, 32")
    dim = int_control("D", 64, 1, 1024)

    def prepare():
        shapes = [(n, n, dim.value) for n in parse_integers(sizes.value, "n")]
        check_shapes_fit(shapes, 5)
        return _call("span_table", shapes=[list(shape) for shape in shapes])

    def render(frame):
        chart = loglog_chart(frame, "width_term", "outside_fraction", None,
                             "Part of the stream outside span(E) after 5 steps",
                             "sqrt(D / (L M))", "RMS outside / RMS of H")
        columns = [
            *SHAPE_COLUMNS,
            Column("r", "r (dimension of span(E))", tables.integer),
            Column("width_term", "sqrt(D / (L M))", tables.significant(3)),
            Column("outside_fraction", "RMS of H outside span(E) / RMS of H", tables.significant(3)),
        ]
        return chart, tables.readable_table(frame, columns, f"span(E) has dimension r = {int(frame['r'].iloc[0])}.")

    return LessonPanel("The stream lives in r dimensions", [sizes, dim], prepare, render, run_at_start=run_at_start,
                       url_name="span", url_controls=dict(n=sizes, D=dim))


def limit_gap_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that plots the gap between the fixed-D Mean ODE and the large-D limit against D."""
    dims = text_control("D values", "4, 16, 64, 256, 1024")

    def prepare():
        return _call("limit_gap_table", dims=parse_integers(dims.value, "D values"))

    def render(value):
        frame, slope = value["frame"], fits.Slope(**value["slope"])
        chart = loglog_chart(frame, "D", "embedding_gap", None, "Fixed-D Mean ODE against the large-D limit",
                             "D", "RMS gap of the last stream", reference="embedding_term")
        columns = [
            Column("D", "D (embedding dim.)", tables.integer),
            Column("seed", "seed", tables.integer),
            Column("step", "step k", tables.integer),
            Column("embedding_gap", "RMS gap of the last stream H_L", tables.significant(3)),
            Column("output_gap", "RMS gap of the outputs f", tables.significant(3)),
            Column("embedding_term", "1/sqrt(D)", tables.significant(3)),
        ]
        details = (f"<p>Fitted slope in log D: <b>{slope_text(slope)}</b>. The dashed line is 1/sqrt(D), "
                   "slope -1/2.</p>" + tables.readable_table(frame, columns))
        return chart, details

    return LessonPanel("The 1/sqrt(D) term", [dims], prepare, render, run_at_start=run_at_start,
                       url_name="gap", url_controls=dict(D=dims))


def gaussian_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel of histograms of the coordinates h^d(1) for growing D against the limit's Gaussian law."""
    dims = text_control("D values", "8, 64, 512")

    def prepare():
        values = parse_integers(dims.value, "D values")
        if len(values) > 4:
            raise ConfigError("choose at most 4 values of D, one histogram each")
        check_shapes_fit([(16, 64, D) for D in values], 5)
        return _call("gaussian_histograms", dims=values)

    def render(value):
        histograms = [_histogram(fields) for fields in value]
        values = [fields["D"] for fields in value]
        panels = [coordinate_charts.histogram_panel(h).properties(width=220, title=f"D = {D}")
                  for D, h in zip(values, histograms)]
        frame = pd.DataFrame({"D": values, "KS distance": [h.ks_statistic() for h in histograms]})
        columns = [Column("D", "D (embedding dim.)", tables.integer),
                   Column("KS distance", "Kolmogorov-Smirnov distance (0 to 1)", tables.significant(3))]
        return alt.hconcat(*panels), tables.readable_table(
            frame, columns, "Distance between the coordinates and the Gaussian law of the limit, L = 16, M = 64, step 5:")

    return LessonPanel("Coordinates become Gaussian", [dims], prepare, render, run_at_start=run_at_start,
                       url_name="gaussian", url_controls=dict(D=dims))


# -- part 4: all shapes and sizes -----------------------------------------------------------------


def budget_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel of the bound's three terms along the optimal shapes of growing budgets."""
    law = widgets.Dropdown(description="error law", options=[("embedding", "embedding"), ("output", "output")],
                           value="embedding", style=DESCRIPTION_STYLE)

    def prepare():
        return _call("budget_terms", law=law.value, budgets=[float(budget) for budget in paths.log_budgets(1e4, 1e12, 9)])

    def render(value):
        chosen, frame = fits.law_named(law.value), value["frame"]
        long = frame.melt(id_vars=["budget"], value_vars=[t.name for t in chosen.terms] + ["bound_sum"],
                          var_name="term", value_name="value")
        chart = loglog_chart(long, "budget", "value", "term", f"Terms of the {chosen.name} law on its optimal shapes",
                             "parameters P = L M D", "term value (C = 1)")
        rate_columns = [
            Column("law", "error law", tables.text),
            Column("L exponent a", "a in L = P^a", tables.fraction),
            Column("M exponent b", "b in M = P^b", tables.fraction),
            Column("D exponent c", "c in D = P^c", tables.fraction),
            Column("error ~ P^-rate", "rate: error ~ P^-rate", tables.fraction),
        ]
        path_columns = [Column("D exponent c", "c in D = P^c", tables.fraction),
                        Column("predicted slope", "slope of the bound against P", tables.fraction)]
        budget_columns = [
            Column("budget", "P = L M D", tables.integer),
            *SHAPE_COLUMNS,
            *(Column(term.name, f"{term.name} term {term.formula}", tables.significant(3)) for term in chosen.terms),
            Column("bound_sum", "bound, constants 1", tables.significant(3)),
        ]
        details = (
            tables.readable_table(value["rates"], rate_columns,
                                  "Optimal exponents L = P^a, M = P^b, D = P^c, derived from the terms:")
            + tables.readable_table(value["paths"], path_columns,
                                    f"Predicted slope of the {chosen.name} bound against P on the paths D = P^c:")
            + tables.readable_table(frame, budget_columns, "The optimal integer shape of each budget:")
        )
        return chart, details

    return LessonPanel("The bound along the optimal shapes", [law], prepare, render, run_at_start=run_at_start,
                       url_name="budget", url_controls=dict(law=law))


def shape_sweep_panel(run_at_start: bool | None = None) -> LessonPanel:
    """Build a panel that sweeps M and D at fixed L, fits the error law and plots the error against D."""
    depth = int_control("L (fixed)", 8, 1, 256)
    widths = text_control("M values", "4, 32")
    dims = text_control("D values", "4, 16, 64")
    directory = tempfile.TemporaryDirectory(prefix="resnet-limits-lesson-")

    def prepare():
        width_values, dim_values = parse_integers(widths.value, "M values"), parse_integers(dims.value, "D values")
        check_shapes_fit([(depth.value, M, D) for M in width_values for D in dim_values], 15)
        out = f"{directory.name}/L{depth.value}_M{'-'.join(map(str, width_values))}_D{'-'.join(map(str, dim_values))}"
        return _call("shape_sweep", depth=depth.value, widths=width_values, dims=dim_values, out=out)

    def render(value):
        result = _sweep_result(value)
        frame = result.frame[["L", "M", "D", result.column]].copy()
        frame["M"] = frame["M"].astype(str)
        chart = loglog_chart(frame, "D", result.column, "M", "Error against the large-D limit, by M",
                             "D", "embedding error at step K")
        constants = pd.DataFrame(value["constants"])
        constant_columns = [
            Column("term", "term", tables.text),
            Column("formula", "formula", tables.text),
            Column("value", "fitted constant", tables.significant(3)),
            Column(("ci_low", "ci_high"), "95 % interval", tables.significant(3), missing="not determined"),
        ]
        run_columns = [*SHAPE_COLUMNS, Column(result.column, "error against the large-D limit at step K (RMS)",
                                              tables.significant(3))]
        details = (tables.readable_table(constants, constant_columns, "Fitted error^2 = a^2 D/(L M) + b^2/D:",
                                         "not determined: the grid does not separate this term from the "
                                         "other, so its constant has no finite interval; add sizes of M or D.")
                   + slope_table(result.slopes, "Slopes per axis:")
                   + tables.readable_table(result.frame, run_columns, "One run per shape:"))
        return chart, details

    panel = LessonPanel("A sweep over shapes and the fitted error law", [depth, widths, dims], prepare, render,
                        run_at_start=run_at_start, url_name="shape_sweep",
                        url_controls=dict(L=depth, M=widths, D=dims))
    panel.directory = directory
    return panel
