"""The learning-rate transfer app: the loss after K steps against eta for several sizes, per rule.

The app calls ``resnet_limits.transfer.learning_rate_sweep`` in the worker process. One chart
per rule draws the loss at step K against the base learning rate eta, one line per size n,
with each size's optimum marked. A second chart draws the optimum against n. Under MLU the
optimum stays put; under the standard parametrisation it drifts. Every control starts a new
run when it is released.
"""

from __future__ import annotations

import altair as alt
import ipywidgets as widgets
import numpy as np
import pandas as pd

from resnet_limits import parametrization as pz
from resnet_limits import transfer
from resnet_limits.config import ConfigError

from resnet_limits_widgets import url_state
from resnet_limits_widgets.charts import chart_widget
from resnet_limits_widgets.explorer import CONTROL_LAYOUT, DESCRIPTION_STYLE, message_html
from resnet_limits_widgets.export import ChartDownloads
from resnet_limits_widgets.function_app import FunctionApp
from resnet_limits_widgets.lesson_panel import parse_integers
from resnet_limits_widgets.tables import Column, integer, readable_table, significant, text
from resnet_limits_widgets.phase_app import MAX_SCALE, PATHS, TASKS, parse_sizes

LOG2_RATE_RANGE = (-16.0, 6.0)  # log2 of the smallest and largest base learning rate a control offers
DEFAULT_LOG2_RATES = (-12.0, 4.0)

DRIFT_COLUMNS = (
    Column("rule", "rule", text),
    Column("drift", "largest / smallest optimum"),
    Column("drift_exponent", "slope of log optimum against log n"),
    Column("optima_at_edge", "optima on the grid's edge", integer),
)
OPTIMA_COLUMNS = (
    Column("rule", "rule", text),
    Column("n", "n", integer),
    Column("learning_rate", "optimal eta"),
    Column("grid_learning_rate", "best grid eta"),
    Column("loss", "loss after K steps", significant(4)),
    Column("at_edge", "on the grid's edge", text),
)

URL_FIELDS = {
    "task": url_state.ChoiceField(TASKS),
    "rules": url_state.ChoiceListField(tuple(pz.RULES)),
    "path": url_state.ChoiceField(tuple(PATHS)),
    "n": url_state.IntListField(2, MAX_SCALE),
    "log2_eta_min": url_state.FloatField(*LOG2_RATE_RANGE),
    "log2_eta_max": url_state.FloatField(*LOG2_RATE_RANGE),
    "per_octave": url_state.IntField(1, 4),
    "K": url_state.IntField(1, 30),
    "seeds": url_state.IntField(1, 5),
    "auto_run": url_state.BoolField(),
}


def loss_chart(curves: pd.DataFrame, optima: pd.DataFrame, title: str) -> alt.VConcatChart:
    """Return one panel per rule of loss against eta (one line per n, optima as points), and the optima against n."""
    curves = curves[np.isfinite(curves["loss"])]
    optima = optima[np.isfinite(optima["learning_rate"])]
    color = alt.Color("n:O", title="size n", scale=alt.Scale(scheme="viridis"), legend=alt.Legend(orient="right"))
    x = alt.X("learning_rate:Q", title="base learning rate eta", scale=alt.Scale(type="log"))
    lines = alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=x,
        y=alt.Y("loss:Q", title="loss after K steps", scale=alt.Scale(type="log")),
        color=color,
        tooltip=["rule:N", "n:O", "L:Q", "M:Q", "D:Q", alt.Tooltip("learning_rate:Q", format=".3g"),
                 alt.Tooltip("loss:Q", format=".4g")],
    )
    best = alt.Chart(optima).mark_point(shape="triangle-down", size=150, filled=True, stroke="black").encode(
        x=x,
        y=alt.Y("loss:Q", scale=alt.Scale(type="log")),
        color=color,
        tooltip=["rule:N", "n:O", alt.Tooltip("learning_rate:Q", format=".3g", title="optimal eta"),
                 alt.Tooltip("loss:Q", format=".4g"), "at_edge:N"],
    )
    per_rule = []
    for rule in dict.fromkeys(curves["rule"]):
        part = curves[curves["rule"] == rule]
        # Losses far above the initial loss only show a run on its way to diverge, so the axis clips them.
        domain = [float(part["loss"].min()) * 0.8, float(part["loss_initial"].max()) * 3]
        y = alt.Y("loss:Q", title="loss after K steps", scale=alt.Scale(type="log", domain=domain, clamp=True))
        per_rule.append(
            alt.layer(
                lines.encode(y=y).transform_filter(alt.datum.rule == rule),
                best.encode(y=y).transform_filter(alt.datum.rule == rule),
            ).properties(width=300, height=240, title=f"{rule}")
        )
    drift = alt.Chart(optima).mark_line(point=True).encode(
        x=alt.X("n:Q", title="size n", scale=alt.Scale(type="log")),
        y=alt.Y("learning_rate:Q", title="optimal eta", scale=alt.Scale(type="log")),
        color=alt.Color("rule:N", title="rule"),
        tooltip=["rule:N", "n:Q", alt.Tooltip("learning_rate:Q", format=".3g"), "at_edge:N"],
    ).properties(width=300, height=220, title="Optimal learning rate against n")
    return alt.vconcat(alt.hconcat(*per_rule), drift).properties(
        title=alt.TitleParams(title, fontSize=14)
    ).resolve_scale(color="independent")


class TransferApp(FunctionApp):
    """The learning-rate transfer app, shown by displaying it in a notebook or a Voila page.

    ``query_string`` (see ``URL_FIELDS``) sets the initial controls and ``auto_run``, which the
    notebook reads to decide whether to run at once. ``use_worker`` False computes in the kernel,
    and ``show_link`` False hides the link to the current settings.
    """

    function = "resnet_limits.transfer:learning_rate_sweep"
    css_prefix = "transfer"
    url_fields = URL_FIELDS

    def __init__(self, *, use_worker: bool = True, compilation_cache: bool = True, auto_run: bool = True,
                 show_link: bool = True,
                 scales: tuple[int, ...] = (4, 16, 64), query_string: str | None = None):
        alt.JupyterChart.enable_offline()
        self.url_settings = url = url_state.parse_query(query_string, URL_FIELDS)
        self.auto_run = url.get("auto_run", auto_run)
        self._init_runner(use_worker=use_worker, compilation_cache=compilation_cache, show_link=show_link)
        self._build_run_controls()

        self.task = widgets.Dropdown(description="task", options=TASKS, value=url.get("task", "paper-tanh"),
                                     style=DESCRIPTION_STYLE)
        self.rules = widgets.SelectMultiple(description="rules", options=list(pz.RULES),
                                            value=tuple(url.get("rules", list(transfer.DEFAULT_RULES))),
                                            rows=len(pz.RULES), style=DESCRIPTION_STYLE)
        self.path = widgets.Dropdown(description="scaling path", options=[(label, name) for name, (label, _) in PATHS.items()],
                                     value=url.get("path", "diagonal"), style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        self.scales = widgets.Text(description="sizes n", value=", ".join(str(n) for n in url.get("n", list(scales))),
                                   continuous_update=False, style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        low = url.get("log2_eta_min", DEFAULT_LOG2_RATES[0])
        high = max(low, url.get("log2_eta_max", DEFAULT_LOG2_RATES[1]))
        self.rate_range = widgets.FloatRangeSlider(
            description="log2 eta range", min=LOG2_RATE_RANGE[0], max=LOG2_RATE_RANGE[1], step=1.0,
            value=(low, high), continuous_update=False, readout_format=".0f", style=DESCRIPTION_STYLE,
            layout=CONTROL_LAYOUT,
        )
        self.per_octave = widgets.IntSlider(description="points per factor 2", value=url.get("per_octave", 2), min=1,
                                            max=4, continuous_update=False, style=DESCRIPTION_STYLE, layout=CONTROL_LAYOUT)
        self.steps = widgets.IntSlider(description="K (gradient steps)", value=url.get("K", transfer.DEFAULT_STEPS),
                                       min=1, max=30, continuous_update=False, style=DESCRIPTION_STYLE,
                                       layout=CONTROL_LAYOUT)
        self.seeds = widgets.IntSlider(description="seeds per size", value=url.get("seeds", len(transfer.DEFAULT_SEEDS)),
                                       min=1, max=5, continuous_update=False, style=DESCRIPTION_STYLE,
                                       layout=CONTROL_LAYOUT)
        self.chart = chart_widget(alt.Chart().mark_text(text="Press Run.", fontSize=14).properties(width=460, height=40))
        self.chart.add_class("transfer-chart")
        self.downloads = ChartDownloads("learning-rate-transfer")
        self.table = widgets.HTML(value="")
        self.table.add_class("transfer-table")
        self.url_message = widgets.HTML(value=message_html(url.message_text(), "warning"))
        controls = (self.task, self.rules, self.path, self.scales, self.rate_range, self.per_octave, self.steps,
                    self.seeds)
        self._build_layout(controls, [self.chart, self.downloads.widget, self.table])

    def arguments(self) -> dict:
        """Return the keyword arguments of ``transfer.learning_rate_sweep`` for the current controls."""
        scales = parse_sizes(self.scales.value)
        if not self.rules.value:
            raise ConfigError("choose at least one rule in the list")
        low, high = self.rate_range.value
        rates = transfer.default_learning_rates(2.0**low, 2.0**high, self.per_octave.value)
        return {
            "task": self.task.value,
            "rules": list(self.rules.value),
            "scales": scales,
            "path": list(PATHS[self.path.value][1]),
            "learning_rates": rates,
            "steps": int(self.steps.value),
            "seeds": list(range(self.seeds.value)),
        }

    def code_text(self) -> str:
        """Return library code for the current settings, with the learning-rate grid written as a call."""
        arguments = self.arguments()
        low, high = self.rate_range.value
        arguments["learning_rates"] = f"default_learning_rates(2.0**{low:g}, 2.0**{high:g}, {self.per_octave.value})"
        lines = "".join(
            f"    {key}={value if key == 'learning_rates' else repr(value)},\n" for key, value in arguments.items()
        )
        return (
            "from resnet_limits.transfer import default_learning_rates, learning_rate_sweep\n\n"
            f"result = learning_rate_sweep(\n{lines})\n"
        )

    def query_values(self) -> dict:
        try:
            scales = parse_integers(self.scales.value, "sizes n")
        except ConfigError:
            scales = None
        return {
            "task": self.task.value,
            "rules": list(self.rules.value) or None,
            "path": self.path.value,
            "n": scales,
            "log2_eta_min": self.rate_range.value[0],
            "log2_eta_max": self.rate_range.value[1],
            "per_octave": self.per_octave.value,
            "K": self.steps.value,
            "seeds": self.seeds.value,
            "auto_run": self.auto_run,
        }

    def show(self, result: dict) -> None:
        """Draw the loss curves and optima of a ``learning_rate_sweep`` result and its drift table."""
        label = next(label for label, path in PATHS.values() if list(path) == list(result["path"]))
        title = f"Loss after K = {result['steps']} steps on {label}"
        self.chart.chart = loss_chart(result["curves"], result["optima"], title)
        self.downloads.update(self.chart.chart)
        self.table.value = readable_table(
            result["drift"],
            DRIFT_COLUMNS,
            "How far the optimal eta moves over the sizes. An optimum on the grid's edge makes the ratio a lower bound.",
            missing_note="– : fewer than two sizes have a finite optimum.",
        ) + readable_table(
            result["optima"],
            OPTIMA_COLUMNS,
            "The optimum of every size, refined by a parabola in log eta.",
            missing_note="– : every learning rate of this size diverged.",
        )
