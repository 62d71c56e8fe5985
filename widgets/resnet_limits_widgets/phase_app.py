"""The phase-diagram app: the measured regime over residual-scale and learning-rate exponents.

The app calls ``resnet_limits.phase.phase_diagram`` in the worker process and draws every cell
of the (gamma, lambda) grid coloured by its measured regime, the line of MLU with alpha = n^gamma
(lambda = -2 gamma), and the rules of ``parametrization.RULES`` as labelled points. A table lists
each rule's scalings, its place on the path and its own measured regime, and a list states the
criteria. Every control starts a new run when it is released.
"""

from __future__ import annotations

import html

import altair as alt
import ipywidgets as widgets
import numpy as np
import pandas as pd

from resnet_limits import phase
from resnet_limits import parametrization as pz
from resnet_limits.config import ConfigError

from resnet_limits_widgets import url_state
from resnet_limits_widgets.charts import chart_widget
from resnet_limits_widgets.explorer import CONTROL_LAYOUT, DESCRIPTION_STYLE, message_html
from resnet_limits_widgets.export import ChartDownloads
from resnet_limits_widgets.function_app import FunctionApp
from resnet_limits_widgets.lesson_panel import parse_integers
from resnet_limits_widgets.tables import Column, fraction, readable_table, text

# Scaling paths (p_L, p_M, p_D) that the app offers, by the name a link uses.
PATHS = {
    "diagonal": ("L = M = D = n", (1.0, 1.0, 1.0)),
    "shallow": ("L = n^(1/2), M = D = n", (0.5, 1.0, 1.0)),
    "narrow": ("L = D = n, M = n^(1/2)", (1.0, 0.5, 1.0)),
}
TASKS = ("paper-tanh", "paper-linear")
RULE_COLUMNS = (
    Column("rule", "rule", text),
    *(Column(field, description.split(":")[0], text) for field, description in pz.SCALING_FIELDS.items()),
    Column("gamma", "gamma", fraction),
    Column("lambda", "lambda", fraction),
    Column("on_plane", "on the plane", text),
    Column("measured regime", "measured regime", text),
    Column("because", "because", text),
)
# The largest n of a link or a text box. The default grid at n = 12, 24, 48 took 24 to 33 s on
# 2 cores; every doubling of n multiplies the cost of its size by about 8.
MAX_SCALE = 64
REGIME_COLORS = {
    "maximal local updates": "#2ca02c",
    "lazy": "#1f77b4",
    "noise-dominated": "#9467bd",
    "unstable": "#d62728",
    "degenerate": "#bdbdbd",
}
RESIDUAL_RANGE = (-1.0, 1.5, 0.25)  # minimum, maximum and step of gamma
RATE_RANGE = (-3.0, 1.5, 0.5)  # minimum, maximum and step of lambda

URL_FIELDS = {
    "task": url_state.ChoiceField(TASKS),
    "path": url_state.ChoiceField(tuple(PATHS)),
    "n": url_state.IntListField(2, MAX_SCALE),
    "gamma_min": url_state.FloatField(*RESIDUAL_RANGE[:2]),
    "gamma_max": url_state.FloatField(*RESIDUAL_RANGE[:2]),
    "lambda_min": url_state.FloatField(*RATE_RANGE[:2]),
    "lambda_max": url_state.FloatField(*RATE_RANGE[:2]),
    "K": url_state.IntField(1, 20),
    "eta": url_state.PositiveFloatField(0.01, 10.0),
    "seeds": url_state.IntField(1, 5),
    "auto_run": url_state.BoolField(),
}


def parse_sizes(text: str) -> list[int]:
    """Return the sizes n written in ``text``; raise ConfigError for invalid ones or any above MAX_SCALE."""
    scales = parse_integers(text, "sizes n")
    if max(scales) > MAX_SCALE:
        raise ConfigError(f"sizes n must be at most {MAX_SCALE} in the app, got {max(scales)}; use the library for larger n")
    return scales


def grid_values(low: float, high: float, step: float) -> list[float]:
    """Return low, low + step, ..., high (inclusive), rounded to the step's grid."""
    count = int(round((high - low) / step)) + 1
    return [round(low + index * step, 6) for index in range(count)]


def _cell_edges(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    distinct = np.unique(values)
    half = float(np.min(np.diff(distinct))) / 2 if len(distinct) > 1 else 0.125
    return values - half, values + half


def point_frame(points: pd.DataFrame) -> pd.DataFrame:
    """Return one row per location of the rules, with the names of the rules there joined."""
    rows = []
    for (gamma, lam), part in points.groupby(["residual_exponent", "rate_exponent"], sort=False):
        rows.append({
            "residual_exponent": gamma,
            "rate_exponent": lam,
            "rules": ", ".join(part["rule"]),
            "measured": "; ".join(f"{row.rule}: {row.regime}" for row in part.itertuples()),
            "on_plane": "; ".join(f"{row.rule}: {'yes' if row.on_plane else 'no, ' + row.off_plane}"
                                  for row in part.itertuples()),
        })
    return pd.DataFrame(rows)


def phase_chart(cells: pd.DataFrame, points: pd.DataFrame, title: str) -> alt.LayerChart:
    """Return the regime heatmap over (gamma, lambda) with the lazy line and the rules on top."""
    cells = cells.copy()
    cells["gamma_low"], cells["gamma_high"] = _cell_edges(cells["residual_exponent"])
    cells["lambda_low"], cells["lambda_high"] = _cell_edges(cells["rate_exponent"])
    x_domain = [float(cells["gamma_low"].min()), float(cells["gamma_high"].max())]
    y_domain = [float(cells["lambda_low"].min()), float(cells["lambda_high"].max())]

    x = alt.X("gamma_low:Q", title="gamma: residual scale alpha = n^gamma", scale=alt.Scale(domain=x_domain, nice=False))
    y = alt.Y("lambda_low:Q", title="lambda: raw learning rate eta n^lambda L M D", scale=alt.Scale(domain=y_domain, nice=False))
    heatmap = alt.Chart(cells).mark_rect(stroke="white", strokeWidth=1).encode(
        x=x, x2="gamma_high:Q", y=y, y2="lambda_high:Q",
        color=alt.Color("regime:N", title="measured regime",
                        scale=alt.Scale(domain=list(REGIME_COLORS), range=list(REGIME_COLORS.values())),
                        legend=alt.Legend(orient="right")),
        tooltip=[
            alt.Tooltip("residual_exponent:Q", title="gamma"),
            alt.Tooltip("rate_exponent:Q", title="lambda"),
            "regime:N",
            "reason:N",
            alt.Tooltip("unit_movement_exponent:Q", format=".2f"),
            alt.Tooltip("output_movement_exponent:Q", format=".2f"),
            alt.Tooltip("relative_block_linear_distance_exponent:Q", format=".2f"),
            alt.Tooltip("initial_fluctuation_exponent:Q", format=".2f"),
        ],
    )

    # MLU with alpha = n^gamma and rate L M D / alpha^2: the line lambda = -2 gamma.
    gammas = np.linspace(x_domain[0], x_domain[1], 2)
    line = pd.DataFrame({"gamma": gammas, "lambda": -2 * gammas})
    line = line[(line["lambda"] >= y_domain[0] - 1) & (line["lambda"] <= y_domain[1] + 1)]
    lazy_line = alt.Chart(line).mark_line(strokeDash=[6, 4], color="black", clip=True).encode(
        x=alt.X("gamma:Q", scale=alt.Scale(domain=x_domain, nice=False)),
        y=alt.Y("lambda:Q", scale=alt.Scale(domain=y_domain, nice=False)),
    )

    # The rules that fall inside the grid, as labelled diamonds.
    located = point_frame(points)
    inside = located[
        located["residual_exponent"].between(*x_domain) & located["rate_exponent"].between(*y_domain)
    ]
    marks = alt.Chart(inside).mark_point(shape="diamond", filled=True, size=140, color="black", stroke="white")
    labels = alt.Chart(inside).mark_text(align="left", dx=9, dy=-8, fontSize=12, fontWeight="bold")
    encoding = dict(
        x=alt.X("residual_exponent:Q", scale=alt.Scale(domain=x_domain, nice=False)),
        y=alt.Y("rate_exponent:Q", scale=alt.Scale(domain=y_domain, nice=False)),
        tooltip=["rules:N", "measured:N", alt.Tooltip("on_plane:N", title="on the plane")],
    )

    return (
        alt.layer(heatmap, lazy_line, marks.encode(**encoding), labels.encode(text="rules:N", **encoding))
        .properties(width=460, height=360, title=alt.TitleParams(title, fontSize=14))
    )


def rule_table_frame(points: pd.DataFrame, path) -> pd.DataFrame:
    """Return ``parametrization.rule_overview`` of the measured rules, with each rule's measured regime."""
    measured = points.set_index("rule")
    rows = pz.rule_overview(path, [pz.get_rule(name) for name in points["rule"]])
    for row in rows:
        row["on_plane"] = "yes" if row["on_plane"] else f"no: {row.pop('off_plane')}"
        row.pop("off_plane", None)
        row["measured regime"] = measured.loc[row["rule"], "regime"]
        row["because"] = measured.loc[row["rule"], "reason"]
    return pd.DataFrame(rows)


class PhaseDiagramApp(FunctionApp):
    """The phase diagram of the regimes on a scaling path, shown by displaying it in a notebook or a Voila page.

    ``query_string`` (see ``URL_FIELDS``) sets the initial controls and ``auto_run``, which the
    notebook reads to decide whether to run at once. ``use_worker`` False computes in the kernel,
    and ``show_link`` False hides the link to the current settings.
    """

    function = "resnet_limits.phase:phase_diagram"
    css_prefix = "phase"
    url_fields = URL_FIELDS

    def __init__(self, *, use_worker: bool = True, compilation_cache: bool = True, auto_run: bool = True,
                 show_link: bool = True,
                 query_string: str | None = None):
        alt.JupyterChart.enable_offline()
        self.url_settings = url = url_state.parse_query(query_string, URL_FIELDS)
        self.auto_run = url.get("auto_run", auto_run)
        self._init_runner(use_worker=use_worker, compilation_cache=compilation_cache, show_link=show_link)
        self._build_run_controls()

        def slider_range(description, limits, low, high):
            minimum, maximum, step = limits
            return widgets.FloatRangeSlider(
                description=description, min=minimum, max=maximum, step=step,
                value=(max(minimum, low), min(maximum, max(low, high))), continuous_update=False,
                readout_format=".2f", style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT,
            )

        self.task = widgets.Dropdown(description="task", options=TASKS, value=url.get("task", "paper-tanh"),
                                     style=DESCRIPTION_STYLE)
        self.path = widgets.Dropdown(description="scaling path", options=[(label, name) for name, (label, _) in PATHS.items()],
                                     value=url.get("path", "diagonal"), style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        default_scales = url.get("n", list(phase.DEFAULT_SCALES))
        self.scales = widgets.Text(description="sizes n", value=", ".join(str(n) for n in default_scales),
                                   continuous_update=False, style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        gammas = phase.DEFAULT_RESIDUAL_EXPONENTS
        lambdas = phase.DEFAULT_RATE_EXPONENTS
        self.residual_range = slider_range("gamma range", RESIDUAL_RANGE, url.get("gamma_min", min(gammas)),
                                           url.get("gamma_max", max(gammas)))
        self.rate_range = slider_range("lambda range", RATE_RANGE, url.get("lambda_min", min(lambdas)),
                                       url.get("lambda_max", max(lambdas)))
        self.steps = widgets.IntSlider(description="K (gradient steps)", value=url.get("K", phase.DEFAULT_STEPS),
                                       min=1, max=20, continuous_update=False, style=DESCRIPTION_STYLE,
                                       layout=CONTROL_LAYOUT)
        self.learning_rate = widgets.FloatLogSlider(description="base learning rate eta", value=url.get("eta", 1.0),
                                                    base=10, min=-2, max=1, step=0.1, continuous_update=False,
                                                    readout_format=".3g", style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        self.seeds = widgets.IntSlider(description="seeds per size", value=url.get("seeds", len(phase.DEFAULT_SEEDS)),
                                       min=1, max=5, continuous_update=False, style=DESCRIPTION_STYLE,
                                       layout=CONTROL_LAYOUT)
        self.chart = chart_widget(alt.Chart().mark_text(text="Press Run.", fontSize=14).properties(width=460, height=40))
        self.chart.add_class("phase-chart")
        self.downloads = ChartDownloads("phase-diagram")
        self.table = widgets.HTML(value="")
        self.table.add_class("phase-table")
        self.criteria = widgets.HTML(value=self._criteria_html())
        self.url_message = widgets.HTML(value=message_html(url.message_text(), "warning"))
        controls = (self.task, self.path, self.scales, self.residual_range, self.rate_range, self.steps,
                    self.learning_rate, self.seeds)
        self._build_layout(controls, [self.chart, self.downloads.widget, self.table, self.criteria])

    def arguments(self) -> dict:
        """Return the keyword arguments of ``phase.phase_diagram`` for the current controls."""
        return {
            "task": self.task.value,
            "scales": parse_sizes(self.scales.value),
            "path": list(PATHS[self.path.value][1]),
            "residual_exponents": grid_values(*self.residual_range.value, RESIDUAL_RANGE[2]),
            "rate_exponents": grid_values(*self.rate_range.value, RATE_RANGE[2]),
            "steps": int(self.steps.value),
            "learning_rate": float(self.learning_rate.value),
            "seeds": list(range(self.seeds.value)),
        }

    def query_values(self) -> dict:
        try:
            scales = parse_integers(self.scales.value, "sizes n")
        except ConfigError:
            scales = None
        return {
            "task": self.task.value,
            "path": self.path.value,
            "n": scales,
            "gamma_min": self.residual_range.value[0],
            "gamma_max": self.residual_range.value[1],
            "lambda_min": self.rate_range.value[0],
            "lambda_max": self.rate_range.value[1],
            "K": self.steps.value,
            "eta": self.learning_rate.value,
            "seeds": self.seeds.value,
            "auto_run": self.auto_run,
        }

    def show(self, result: dict) -> None:
        """Draw the cells and rules of a ``phase_diagram`` result, the rule table and the criteria."""
        label = next(label for label, path in PATHS.values() if list(path) == list(result["path"]))
        title = f"Measured regimes on {label}, n = {', '.join(str(n) for n in result['scales'])}, K = {result['steps']}"
        self.chart.chart = phase_chart(result["cells"], result["points"], title)
        self.downloads.update(self.chart.chart)
        self.table.value = readable_table(
            rule_table_frame(result["points"], result["path"]),
            RULE_COLUMNS,
            "The rules: their seven scalings, their point (gamma, lambda) on this path, and the regime measured "
            "by running each rule itself at the base learning rate.",
        )
        self.criteria.value = self._criteria_html(result["band"])

    def _criteria_html(self, band: float = phase.EXPONENT_BAND) -> str:
        items = "".join(f"<li>{html.escape(text)}</li>" for text in phase.regime_criteria(band))
        return (
            "<div style='font-size:13px; max-width:900px'><b>How a regime is decided.</b> Each setting is trained "
            "at every size n and its diagnostics are fitted as powers n^e. The first criterion that applies "
            f"wins:<ol>{items}</ol>The dashed line is MLU with alpha = n^gamma and rate L M D / alpha^2.</div>"
        )
