"""The shape optimiser app: the bound over every shape of a parameter budget, and the optimal shapes.

For a budget P the shapes with L M D = P form a plane, drawn as a heatmap over (L, M) on log
axes with D = P / (L M). The colour is the bound of the chosen error law with every constant 1
(the theorem's single constant C). The marked shapes are ``bounds.optimal_shape`` of both laws,
and measured runs of a sweep result directory (``resnet_limits.sweeps.ResultStore``) whose P lies
within a factor ``MEASURED_BUDGET_FACTOR`` of the budget appear as points. Nothing is trained, so
the app updates when the slider is released.
"""

from __future__ import annotations

import html
import logging
import math
import os

import altair as alt
import ipywidgets as widgets
import numpy as np
import pandas as pd

from resnet_limits import bounds
from resnet_limits.config import ConfigError
from resnet_limits.sweeps import ResultStore
from resnet_limits.sweeps.fits import select_step

from resnet_limits_widgets import url_state
from resnet_limits_widgets.charts import chart_widget
from resnet_limits_widgets.explorer import DESCRIPTION_STYLE, message_html
from resnet_limits_widgets.export import ChartDownloads
from resnet_limits_widgets.page_cookie import xsrf_cookie

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LAWS = {"embedding": bounds.EMBEDDING_LAW, "output": bounds.OUTPUT_LAW}
LAW_COLORS = {"embedding": "#d62728", "output": "#ff7f0e"}
MIN_BUDGET = 1e4
MAX_BUDGET = 1e9
DEFAULT_BUDGET = 1e6
GRID_CELLS = 40  # cells per axis of the heatmap: at most 1,600 rows, below Vega-Lite's 5,000
MEASURED_BUDGET_FACTOR = 3.0

# The query parameters of the shape app, as in ?P=1e7&law=output.
URL_FIELDS = {
    "P": url_state.PositiveFloatField(MIN_BUDGET, MAX_BUDGET),
    "law": url_state.ChoiceField(tuple(LAWS)),
}


def unit_bound(law: bounds.ErrorLaw, L, M, D):
    """Return the sum of the law's terms with every constant 1, elementwise."""
    return sum(term.value(L, M, D) for term in law.terms)


def landscape_frame(budget: float, law: bounds.ErrorLaw, cells: int = GRID_CELLS) -> pd.DataFrame:
    """Return the heatmap cells over (L, M) with D = budget / (L M) >= 1, with the bound at each centre.

    The cells split log L and log M from 1 to ``budget`` into ``cells`` equal parts; a cell is
    kept when its centre has D >= 1. Sizes are real numbers, not rounded to integers.
    """
    edges = np.linspace(0.0, math.log10(budget), cells + 1)
    low, high = edges[:-1], edges[1:]
    centre = (low + high) / 2
    log_L, log_M = np.meshgrid(centre, centre, indexing="ij")
    index_L, index_M = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    log_D = math.log10(budget) - log_L - log_M
    keep = log_D >= 0
    L, M, D = 10 ** log_L[keep], 10 ** log_M[keep], 10 ** log_D[keep]
    bound = unit_bound(law, L, M, D)
    return pd.DataFrame(
        {
            "L_low": 10 ** low[index_L[keep]],
            "L_high": 10 ** high[index_L[keep]],
            "M_low": 10 ** low[index_M[keep]],
            "M_high": 10 ** high[index_M[keep]],
            "L": L,
            "M": M,
            "D": D,
            "bound": bound,
            "log10_bound": np.log10(bound),
        }
    )


def optimal_frame(budget: float) -> pd.DataFrame:
    """Return one row per law with its optimal shape for ``budget`` and the unit-constant bound there."""
    records = []
    for name, law in LAWS.items():
        shape = bounds.optimal_shape(budget, law)
        records.append(
            {
                "law": name,
                "label": f"optimal for {name} error",
                "L": shape.L,
                "M": shape.M,
                "D": shape.D,
                "P": shape.num_parameters,
                "bound": float(unit_bound(law, shape.L, shape.M, shape.D)),
            }
        )
    return pd.DataFrame.from_records(records)


def measured_frame(sweep: pd.DataFrame, budget: float, factor: float = MEASURED_BUDGET_FACTOR) -> pd.DataFrame:
    """Return the completed shapes of a sweep frame with P within ``factor`` of ``budget``.

    One row per shape: the mean embedding and output errors against the large-D limit at the
    last step over the seeds, and the number of seeds.
    """
    columns = ["L", "M", "D", "P", "seeds", "embedding_error", "output_error"]
    last = select_step(sweep) if len(sweep) else sweep
    if not len(last):
        return pd.DataFrame(columns=columns)
    near = last[(last["P"] >= budget / factor) & (last["P"] <= budget * factor)]
    if not len(near):
        return pd.DataFrame(columns=columns)
    grouped = near.groupby(["L", "M", "D", "P"], as_index=False).agg(
        seeds=("seed", "nunique"),
        embedding_error=("embedding_error_limit", "mean"),
        output_error=("output_error_limit", "mean"),
    )
    return grouped[columns]


def landscape_chart(
    landscape: pd.DataFrame, optimal: pd.DataFrame, measured: pd.DataFrame, title: str, law_name: str
) -> alt.LayerChart:
    """Return the heatmap of the bound over (L, M), with the optimal shapes and measured runs on top."""
    budget_low, budget_high = float(landscape["L_low"].min()), float(landscape["L_high"].max())
    axis = dict(type="log", domain=[budget_low, budget_high])
    heatmap = (
        alt.Chart(landscape)
        .mark_rect()
        .encode(
            x=alt.X("L_low:Q", title="L (depth), log scale", scale=alt.Scale(**axis)),
            x2="L_high:Q",
            y=alt.Y("M_low:Q", title="M (width), log scale", scale=alt.Scale(**axis)),
            y2="M_high:Q",
            color=alt.Color(
                "log10_bound:Q",
                title=f"log10 bound ({law_name})",
                scale=alt.Scale(scheme="viridis", reverse=True),
            ),
            tooltip=[
                alt.Tooltip("L:Q", format=".3g"),
                alt.Tooltip("M:Q", format=".3g"),
                alt.Tooltip("D:Q", format=".3g", title="D = P/(L M)"),
                alt.Tooltip("bound:Q", format=".3g"),
            ],
        )
    )
    optimal_points = (
        alt.Chart(optimal)
        .mark_point(filled=True, size=160, shape="diamond", stroke="white", strokeWidth=1.5)
        .encode(
            x="L:Q",
            y="M:Q",
            color=alt.Color(
                "label:N",
                title="marked shapes",
                scale=alt.Scale(
                    domain=[f"optimal for {name} error" for name in LAW_COLORS], range=list(LAW_COLORS.values())
                ),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=["label:N", "L:Q", "M:Q", "D:Q", alt.Tooltip("P:Q", format=","), alt.Tooltip("bound:Q", format=".3g")],
        )
    )
    layers = [heatmap, optimal_points]
    if len(measured):
        layers.append(
            alt.Chart(measured)
            .mark_point(shape="circle", size=90, color="black", strokeWidth=2)
            .encode(
                x="L:Q",
                y="M:Q",
                tooltip=[
                    "L:Q",
                    "M:Q",
                    "D:Q",
                    alt.Tooltip("P:Q", format=","),
                    "seeds:Q",
                    alt.Tooltip("embedding_error:Q", format=".3g", title="measured embedding error"),
                    alt.Tooltip("output_error:Q", format=".3g", title="measured output error"),
                ],
            )
        )
    return (
        alt.layer(*layers)
        .resolve_scale(color="independent")
        .properties(width=420, height=380, title=alt.TitleParams(title, fontSize=14))
    )


def load_sweep(sweep_dir: str | os.PathLike | None) -> tuple[pd.DataFrame | None, str]:
    """Return the frame of a sweep result directory and a sentence about it; the frame is None when absent."""
    if sweep_dir is None:
        return None, "No sweep directory given, so no measured runs are shown."
    if not os.path.isdir(sweep_dir):
        return None, f"No sweep results at {sweep_dir}, so no measured runs are shown."
    try:
        frame = ResultStore(sweep_dir).load()
    except (OSError, ValueError, ConfigError) as error:  # pyarrow raises ArrowInvalid, a ValueError
        logger.warning("loading sweep %s failed: %s: %s", sweep_dir, type(error).__name__, error)
        return None, f"The sweep at {sweep_dir} could not be read ({error}), so no measured runs are shown."
    shapes = frame[["L", "M", "D"]].drop_duplicates() if len(frame) else frame
    return frame, f"Sweep {sweep_dir}: {len(shapes)} shapes."


class ShapeApp:
    """The shape optimiser for one parameter budget, shown by displaying it in a notebook or a Voila page.

    ``budget`` is the initial P and ``law`` the initial law of the heatmap ("embedding" or
    "output"). ``sweep_dir`` is a sweep result directory whose runs near the budget are drawn.
    ``query_string`` (see ``URL_FIELDS``) overrides ``budget`` and ``law``.
    """

    def __init__(
        self,
        *,
        budget: float = DEFAULT_BUDGET,
        law: str = "embedding",
        sweep_dir: str | os.PathLike | None = None,
        query_string: str | None = None,
    ):
        alt.JupyterChart.enable_offline()
        self.url_settings = url = url_state.parse_query(query_string, URL_FIELDS)
        self.sweep, self.sweep_text = load_sweep(sweep_dir)

        self.budget = widgets.FloatLogSlider(
            description="budget P = L M D",
            value=url.get("P", budget),
            base=10,
            min=math.log10(MIN_BUDGET),
            max=math.log10(MAX_BUDGET),
            step=0.05,
            readout_format=".3g",
            continuous_update=False,
            style=DESCRIPTION_STYLE,
            layout=widgets.Layout(width="520px"),
        )
        self.law = widgets.Dropdown(
            description="heatmap of the bound for",
            options=[(f"{name} error", name) for name in LAWS],
            value=url.get("law", law),
            style=DESCRIPTION_STYLE,
        )
        self.message = widgets.HTML(value="")
        self.message.add_class("shapes-message")
        self.readout = widgets.HTML(value="")
        self.readout.add_class("shapes-readout")
        self.chart = chart_widget(alt.Chart().mark_point())
        self.chart.add_class("shapes-chart")
        self.downloads = ChartDownloads("shape-landscape")
        self.link = widgets.HTML(value="")

        self.measured = pd.DataFrame()
        self.update()
        self.message.value = message_html(url.message_text(), "warning")
        for control in (self.budget, self.law):
            control.observe(self._on_control_change, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.budget, self.law]),
                self.message,
                self.readout,
                self.chart,
                self.downloads.widget,
                self.link,
                xsrf_cookie(),
            ]
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def query_string(self) -> str:
        """Return the query string (leading "?") that opens the app with the current budget and law."""
        return url_state.format_query({"P": self.budget.value, "law": self.law.value}, URL_FIELDS)

    def _on_control_change(self, _change) -> None:
        # The link's adjustments describe the settings the page opened with, not the new ones.
        self.message.value = ""
        self.update()

    def update(self) -> None:
        """Recompute the heatmap, the optimal shapes and the measured points for the current controls."""
        budget = float(self.budget.value)
        law_name = self.law.value
        landscape = landscape_frame(budget, LAWS[law_name])
        optimal = optimal_frame(budget)
        self.measured = measured_frame(self.sweep, budget) if self.sweep is not None else pd.DataFrame()
        title = f"Bound over shapes of P = {budget:.3g} parameters ({law_name} error, constants 1)"
        self.chart.chart = landscape_chart(landscape, optimal, self.measured, title, law_name)
        self.readout.value = self._readout_html(budget, optimal)
        self.link.value = url_state.link_html(self.query_string(), "shapes-link")
        self.downloads.update(self.chart.chart)  # vl-convert took about 0.2 s per file on a 2-core CPU

    def _readout_html(self, budget: float, optimal: pd.DataFrame) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(row.law)}</td><td>{row.L}</td><td>{row.M}</td><td>{row.D}</td>"
            f"<td>{row.P:,}</td><td>{row.bound:.3g}</td></tr>"
            for row in optimal.itertuples()
        )
        if self.sweep is None:
            measured = self.sweep_text
        else:
            measured = (
                f"{self.sweep_text} {len(self.measured)} of them have P within a factor "
                f"{MEASURED_BUDGET_FACTOR:g} of the budget and are drawn as black circles."
            )
        return (
            f"<b>Optimal shapes for P = {budget:.3g}</b> (least depth at the fastest decay of the bound in P)"
            '<table class="shapes-optimal" style="border-collapse:collapse">'
            "<tr><th>error</th><th>L</th><th>M</th><th>D</th><th>P</th><th>bound (constants 1)</th></tr>"
            f"{rows}</table>"
            f"<p>{html.escape(measured)}</p>"
        )
