"""Altair charts of coordinate views: h^d(s) and b^d(s) along depth, and histograms of h^d.

The builders take the results of ``resnet_limits.coordinates`` and return Altair charts that an
offline ``alt.JupyterChart`` can show. Every series is thinned to at most
``MAX_POINTS_PER_SERIES`` depth points, so that 10 coordinates of the network and of a limit,
forward and backward, take at most 4,840 rows, under Vega-Lite's 5,000-row default.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from resnet_limits.coordinates import (
    BACKWARD,
    FORWARD,
    NETWORK,
    CoordinateHistogram,
    CoordinateTrajectories,
)

MAX_POINTS_PER_SERIES = 121

STREAM_TITLES = {
    FORWARD: "Forward stream h^d(s)",
    BACKWARD: "Backward stream b^d(s) = D dJ/dh^d",
}
LIMIT_TITLES = {"fixed-D": "fixed-D Mean ODE", "large-D": "large-D limit"}
TRAJECTORY_COLUMNS = ["source", "stream", "coordinate", "s", "value"]

NETWORK_COLOR = "#4c78a8"
LAW_COLOR = "#d62728"


def _thinned_indices(length: int, max_points: int) -> np.ndarray:
    """Return at most ``max_points`` evenly spaced indices of 0..length-1, both ends included."""
    if length <= max_points:
        return np.arange(length)
    return np.unique(np.round(np.linspace(0, length - 1, max_points)).astype(int))


def trajectory_frame(
    trajectories: CoordinateTrajectories, max_points_per_series: int = MAX_POINTS_PER_SERIES
) -> pd.DataFrame:
    """Return the long table behind the trajectory chart, one row per (source, stream, d, s)."""
    records = []
    series = (
        (NETWORK, trajectories.network_s, trajectories.network_forward_CxS, trajectories.network_backward_CxS),
        (
            trajectories.limit_kind,
            trajectories.limit_s,
            trajectories.limit_forward_CxS,
            trajectories.limit_backward_CxS,
        ),
    )
    for source, depth_s, forward_CxS, backward_CxS in series:
        kept_indices = _thinned_indices(len(depth_s), max_points_per_series)
        for stream, values_CxS in ((FORWARD, forward_CxS), (BACKWARD, backward_CxS)):
            for row, coordinate in enumerate(trajectories.coordinates):
                for index in kept_indices:
                    records.append(
                        {
                            "source": source,
                            "stream": stream,
                            "coordinate": f"d = {coordinate}",
                            "s": float(depth_s[index]),
                            "value": float(values_CxS[row, index]),
                        }
                    )
    return pd.DataFrame.from_records(records, columns=TRAJECTORY_COLUMNS)


def _stream_panel(frame: pd.DataFrame, stream: str, limit_kind: str, coordinates: list[str]) -> alt.LayerChart:
    data = frame[frame["stream"] == stream]
    color = alt.Color(
        "coordinate:N",
        title="coordinate",
        scale=alt.Scale(domain=coordinates, scheme="category10"),
        legend=alt.Legend(orient="bottom"),
    )
    x = alt.X("s:Q", title="depth s = l / L", scale=alt.Scale(domain=[0, 1]))
    y = alt.Y("value:Q", title=STREAM_TITLES[stream])
    tooltip = [
        alt.Tooltip("source:N"),
        alt.Tooltip("coordinate:N"),
        alt.Tooltip("s:Q", format=".3f"),
        alt.Tooltip("value:Q", format=".4g"),
    ]
    network = (
        alt.Chart(data[data["source"] == NETWORK])
        .mark_line(strokeWidth=0.8, opacity=0.7, point=alt.OverlayMarkDef(size=14, opacity=0.8))
        .encode(x=x, y=y, color=color, tooltip=tooltip)
    )
    limit = (
        alt.Chart(data[data["source"] == limit_kind])
        .mark_line(strokeWidth=2.5, opacity=0.9)
        .encode(x=x, y=y, color=color, tooltip=tooltip)
    )
    return alt.layer(network, limit).properties(width=300, height=230, title=STREAM_TITLES[stream])


def trajectory_chart(trajectories: CoordinateTrajectories, title: str) -> alt.HConcatChart:
    """Return the forward and backward trajectories of the chosen coordinates, side by side.

    Points joined by thin lines are the network's blocks, thick lines are the limit, and each
    coordinate has its own colour.
    """
    frame = trajectory_frame(trajectories)
    coordinates = [f"d = {d}" for d in trajectories.coordinates]
    limit_title = LIMIT_TITLES.get(trajectories.limit_kind, trajectories.limit_kind)
    panels = [_stream_panel(frame, stream, trajectories.limit_kind, coordinates) for stream in (FORWARD, BACKWARD)]
    return alt.hconcat(*panels).properties(
        title=alt.TitleParams(
            title,
            subtitle=f"points: network blocks; thick lines: {limit_title} (sample {trajectories.sample})",
            fontSize=14,
        )
    )


def histogram_frames(histogram: CoordinateHistogram) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the bar table (one row per bin) and the law table (one row per grid point)."""
    bars = pd.DataFrame(
        {
            "bin_start": histogram.bin_edges[:-1],
            "bin_end": histogram.bin_edges[1:],
            "count": histogram.counts.astype(int),
            "density": histogram.density,
        }
    )
    law = pd.DataFrame({"h": histogram.grid, "density": histogram.law_density})
    return bars, law


def histogram_panel(histogram: CoordinateHistogram) -> alt.LayerChart:
    """Return one histogram of the network's coordinates with the limit's Gaussian density on top."""
    bars_frame, law_frame = histogram_frames(histogram)
    limit_title = LIMIT_TITLES.get(histogram.limit_kind, histogram.limit_kind)
    samples_label = "all samples" if histogram.sample is None else f"sample {histogram.sample}"
    bars = (
        alt.Chart(bars_frame)
        .mark_rect(color=NETWORK_COLOR, opacity=0.55, stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("bin_start:Q", title=f"coordinate value h^d(s = {histogram.s:g})"),
            x2="bin_end:Q",
            y=alt.Y("density:Q", title="density"),
            y2=alt.datum(0),
            tooltip=[
                alt.Tooltip("bin_start:Q", format=".3g", title="from"),
                alt.Tooltip("bin_end:Q", format=".3g", title="to"),
                alt.Tooltip("count:Q", title="coordinates"),
            ],
        )
    )
    law = (
        alt.Chart(law_frame)
        .mark_line(color=LAW_COLOR, strokeWidth=2)
        .encode(x="h:Q", y="density:Q", tooltip=[alt.Tooltip("density:Q", format=".3g")])
    )
    return alt.layer(bars, law).properties(
        width=300,
        height=220,
        title=alt.TitleParams(
            f"s = {histogram.s:g} ({samples_label})",
            subtitle=f"bars: network, red: Gaussian law of the {limit_title}, KS = {histogram.ks_statistic():.3f}",
        ),
    )


def histogram_chart(histograms: Sequence[CoordinateHistogram], title: str) -> alt.HConcatChart:
    """Return the histograms (usually s = 0 and s = 1) side by side."""
    return alt.hconcat(*(histogram_panel(histogram) for histogram in histograms)).properties(
        title=alt.TitleParams(title, fontSize=14)
    )
