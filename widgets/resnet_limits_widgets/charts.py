"""Altair chart builders for the explorer: errors against steps, and measured against predicted error.

The builders take plain rows (the dicts that ``Comparison`` yields) and return Altair charts. They
compute nothing themselves: every number comes from ``resnet_limits``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import altair as alt
import pandas as pd

ERROR_KINDS = ("embedding", "output")
KIND_TITLES = {"embedding": "Embedding error (last stream H_L)", "output": "Output error (f)"}

REFERENCE_MEAN_ODE = "vs fixed-D Mean ODE"
REFERENCE_LIMIT = "vs large-D limit"
REFERENCE_LAW = "error law prediction"
REFERENCES = (REFERENCE_MEAN_ODE, REFERENCE_LIMIT, REFERENCE_LAW)
REFERENCE_COLORS = ("#1f77b4", "#d62728", "#7f7f7f")
REFERENCE_DASHES = ([1, 0], [1, 0], [6, 4])

# Row columns of each (error kind, reference) series.
ROW_COLUMNS = {
    ("embedding", REFERENCE_MEAN_ODE): "embedding_error_mean_ode",
    ("embedding", REFERENCE_LIMIT): "embedding_error_limit",
    ("output", REFERENCE_MEAN_ODE): "output_error_mean_ode",
    ("output", REFERENCE_LIMIT): "output_error_limit",
}

LAW_COLORS = {"embedding": "#1f77b4", "output": "#ff7f0e"}


# Actions of the charts' menu: the PNG and SVG exports only. "Open in Vega Editor" sends the
# chart to vega.github.io, which an offline classroom cannot reach.
EMBED_OPTIONS = {"actions": {"export": True, "source": False, "compiled": False, "editor": False}}


def chart_widget(chart: alt.TopLevelMixin) -> alt.JupyterChart:
    """Return a JupyterChart of ``chart`` whose menu offers the exports only."""
    return alt.JupyterChart(chart, embed_options=EMBED_OPTIONS)


def _is_plottable(value) -> bool:
    """Return True for a finite positive number, the only values a log axis can show."""
    return value is not None and math.isfinite(value) and value > 0


def error_frame(rows: Iterable[Mapping], predicted: Mapping[str, float] | None, steps: int) -> pd.DataFrame:
    """Return the long table behind the error chart: one line per (kind, reference, step).

    Missing errors (a limit that diverged) and non-positive values are left out, so no NaN
    reaches the chart. ``predicted`` maps each error kind to the error law's prediction, drawn
    as a flat line from step 0 to ``steps``.
    """
    records = []
    for row in rows:
        for (kind, reference), column in ROW_COLUMNS.items():
            value = row.get(column)
            if _is_plottable(value):
                records.append({"step": row["step"], "error": float(value), "kind": kind, "reference": reference})
    for kind, value in (predicted or {}).items():
        if _is_plottable(value):
            for step in (0, steps):
                records.append({"step": step, "error": float(value), "kind": kind, "reference": REFERENCE_LAW})
    return pd.DataFrame.from_records(records, columns=["step", "error", "kind", "reference"])


def error_chart(frame: pd.DataFrame, title: str, steps: int) -> alt.FacetChart:
    """Return the error-against-step chart, one panel per error kind, log error axis."""
    lines = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=25))
        .encode(
            x=alt.X("step:Q", title="gradient step k", scale=alt.Scale(domain=[0, max(steps, 1)])),
            y=alt.Y("error:Q", title="RMS error", scale=alt.Scale(type="log")),
            color=alt.Color(
                "reference:N",
                title="compared with",
                scale=alt.Scale(domain=list(REFERENCES), range=list(REFERENCE_COLORS)),
                legend=alt.Legend(orient="bottom"),
            ),
            strokeDash=alt.StrokeDash(
                "reference:N",
                title="compared with",
                scale=alt.Scale(domain=list(REFERENCES), range=list(REFERENCE_DASHES)),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=[
                alt.Tooltip("kind:N", title="error"),
                alt.Tooltip("reference:N", title="compared with"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("error:Q", format=".4g"),
            ],
        )
        .properties(width=260, height=220)
    )
    return (
        lines.facet(
            column=alt.Column(
                "kind:N",
                title=None,
                sort=list(ERROR_KINDS),
                header=alt.Header(labelExpr=_label_expression(KIND_TITLES), labelFontSize=13),
            )
        )
        .resolve_scale(y="independent")
        .properties(title=alt.TitleParams(title, fontSize=14))
    )


def _label_expression(titles: Mapping[str, str]) -> str:
    """Return a Vega expression that maps each key of ``titles`` to its title."""
    expression = "datum.value"
    for key, text in titles.items():
        expression = f"datum.value === '{key}' ? '{text}' : ({expression})"
    return expression


def law_frame(points: Iterable[Mapping]) -> pd.DataFrame:
    """Return the table behind the law chart: one row per completed run and error kind."""
    columns = ["kind", "predicted", "measured", "L", "M", "D", "P", "seed"]
    records = [
        {column: point[column] for column in columns}
        for point in points
        if _is_plottable(point["predicted"]) and _is_plottable(point["measured"])
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def law_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Return the log-log chart of measured error (last step, vs large-D limit) against the prediction.

    The y = x diagonal spans the data with a margin of a factor 2 each way, or 0.01 to 1 when
    there are no runs yet.
    """
    values = list(frame["predicted"]) + list(frame["measured"])
    low, high = (min(values) / 2, max(values) * 2) if values else (0.01, 1.0)
    diagonal = pd.DataFrame({"predicted": [low, high], "measured": [low, high]})
    axis_scale = alt.Scale(type="log", domain=[low, high])

    diagonal_line = (
        alt.Chart(diagonal)
        .mark_line(color="#7f7f7f", strokeDash=[4, 4])
        .encode(x=alt.X("predicted:Q", scale=axis_scale), y=alt.Y("measured:Q", scale=axis_scale))
    )
    runs = (
        alt.Chart(frame)
        .mark_point(filled=True, size=70, opacity=0.8)
        .encode(
            x=alt.X("predicted:Q", title="predicted error (error law)", scale=axis_scale),
            y=alt.Y("measured:Q", title="measured error at the last step, vs large-D limit", scale=axis_scale),
            color=alt.Color(
                "kind:N",
                title="error",
                scale=alt.Scale(domain=list(LAW_COLORS), range=list(LAW_COLORS.values())),
                legend=alt.Legend(orient="bottom"),
            ),
            shape=alt.Shape(
                "kind:N", title="error", scale=alt.Scale(domain=list(ERROR_KINDS)), legend=alt.Legend(orient="bottom")
            ),
            tooltip=[
                alt.Tooltip("kind:N", title="error"),
                "L:Q",
                "M:Q",
                "D:Q",
                alt.Tooltip("P:Q", title="P = L M D", format=","),
                "seed:Q",
                alt.Tooltip("predicted:Q", format=".4g"),
                alt.Tooltip("measured:Q", format=".4g"),
            ],
        )
    )
    return alt.layer(diagonal_line, runs).properties(
        width=340,
        height=300,
        title=alt.TitleParams(
            "Every completed run: measured against predicted error",
            subtitle="points on the dashed line y = x follow the error law",
            fontSize=14,
        ),
    )
