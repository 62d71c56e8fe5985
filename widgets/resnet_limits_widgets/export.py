"""PNG and SVG downloads of Altair charts, as links whose data: URIs vl-convert builds in the kernel.

A Voila page cannot receive a file that a button callback writes on the server, so each chart
gets HTML anchors with the ``download`` attribute. vl-convert renders the chart's current
Vega-Lite specification offline (it bundles Vega), so the files match what the page shows.
"""

from __future__ import annotations

import base64
import html
import logging

import altair as alt
import ipywidgets as widgets
import vl_convert

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# Pixels per Vega-Lite unit in the PNG file: 2 gives a sharp image on high-density screens.
PNG_SCALE = 2

# The Vega-Lite version of Altair's specifications, in vl-convert's spelling ("v6_4" for Altair 6.3).
VEGA_LITE_VERSION = "_".join(alt.SCHEMA_VERSION.split(".")[:2])


def chart_png(chart: alt.TopLevelMixin, scale: float = PNG_SCALE) -> bytes:
    """Return ``chart`` rendered as a PNG image."""
    return vl_convert.vegalite_to_png(chart.to_dict(), vl_version=VEGA_LITE_VERSION, scale=scale)


def chart_svg(chart: alt.TopLevelMixin) -> str:
    """Return ``chart`` rendered as an SVG document."""
    return vl_convert.vegalite_to_svg(chart.to_dict(), vl_version=VEGA_LITE_VERSION)


def data_uri(media_type: str, content: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(content).decode('ascii')}"


class ChartDownloads:
    """Download links (PNG and SVG) for one chart; ``update`` renders the chart's current state.

    ``widget`` is an HTML widget with the CSS class ``chart-downloads``. Its anchors carry the
    file name ``{name}.png`` and ``{name}.svg``.
    """

    def __init__(self, name: str):
        self.name = name
        self.png: bytes | None = None
        self.svg: str | None = None
        self.widget = widgets.HTML(value="")
        self.widget.add_class("chart-downloads")

    def update(self, chart: alt.TopLevelMixin) -> None:
        """Render ``chart`` and point the links at the new files; on a failure, show why."""
        try:
            self.png = chart_png(chart)
            self.svg = chart_svg(chart)
        except Exception as error:  # vl-convert raises ValueError and others; the page shows it
            logger.warning("export of chart %s failed: %s: %s", self.name, type(error).__name__, error)
            self.png = self.svg = None
            self.widget.value = f"<small>Download unavailable: {html.escape(str(error))}</small>"
            return
        name = html.escape(self.name)
        png_uri = data_uri("image/png", self.png)
        svg_uri = data_uri("image/svg+xml", self.svg.encode("utf-8"))
        self.widget.value = (
            f'<small>Download: <a class="download-png" download="{name}.png" href="{png_uri}">PNG</a> '
            f'<a class="download-svg" download="{name}.svg" href="{svg_uri}">SVG</a></small>'
        )
