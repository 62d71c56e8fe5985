"""Link sharing, copy as code and chart export of the apps, the coordinate view's worker runs and the shape app."""

import asyncio
import base64
import pathlib
import re
import struct
import time
import xml.etree.ElementTree as ElementTree

import altair as alt
import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from resnet_limits import bounds, limits
from resnet_limits.config import LimitSettings
from resnet_limits.experiment import DEFAULT_CACHE
from resnet_limits_widgets import CoordinateView, ExplorerApp, ShapeApp, charts, shapes
from resnet_limits_widgets.export import chart_png, chart_svg

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
SHAPES_NOTEBOOK = REPOSITORY / "notebooks" / "shapes.ipynb"
SMALL_LIMITS = LimitSettings(depth_points=4, particles=96)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NAMESPACE = "{http://www.w3.org/2000/svg}"


def png_size(content: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG file's IHDR chunk."""
    assert content[12:16] == b"IHDR"
    return struct.unpack(">II", content[16:24])


def svg_root(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(text)


def download_links(widget_html: str) -> dict[str, bytes]:
    """Return the decoded contents of the data: URIs in a downloads widget, keyed by file name."""
    links = re.findall(r'download="([^"]+)" href="data:[^;]+;base64,([^"]+)"', widget_html)
    return {name: base64.b64decode(data) for name, data in links}


@pytest.fixture(autouse=True)
def default_cache_restored():
    """Restore the library's in-memory limit cache, which the executed copy-as-code fills."""
    saved = list(DEFAULT_CACHE._entries.items())
    yield
    DEFAULT_CACHE._entries.clear()
    DEFAULT_CACHE._entries.update(saved)


@pytest.fixture
def explorer():
    app = ExplorerApp(
        query_string="L=4&M=8&D=8&K=3&seed=2&auto_run=0",
        limit_settings=SMALL_LIMITS,
        cache=None,
        compilation_cache=False,
        use_worker=False,
    )
    yield app
    app.close()


# -- the explorer -----------------------------------------------------------------------------------


def test_explorer_applies_query_string(explorer):
    config = explorer.config()
    assert (config.L, config.M, config.D, config.K, config.seed) == (4, 8, 8, 3, 2)
    assert explorer.auto_run.value is False
    assert explorer.url_message.value == ""
    assert "?task=paper-tanh&amp;L=4&amp;M=8&amp;D=8&amp;K=3" in explorer.link.value


def test_explorer_shows_query_messages_not_errors():
    app = ExplorerApp(
        query_string="L=30&K=2&lr=-2&activation=relu",
        limit_settings=SMALL_LIMITS,
        cache=None,
        compilation_cache=False,
        use_worker=False,
        auto_run=False,
    )
    assert app.depth.value == 32
    assert app.learning_rate.value == app.task.learning_rate
    assert app.activation.value == app.task.activation
    assert "using L=32" in app.url_message.value
    assert "lr=&#x27;-2&#x27; is invalid" in app.url_message.value
    assert "activation=&#x27;relu&#x27; is invalid" in app.url_message.value
    app.run_blocking()  # a run's own message leaves the link's message in place
    assert "using L=32" in app.url_message.value
    app.depth.value = 16  # a student's change clears it
    assert app.url_message.value == ""


def test_explorer_task_from_query_sets_defaults():
    app = ExplorerApp(query_string="task=paper-linear", cache=None, compilation_cache=False, use_worker=False, auto_run=False)
    assert app.task.name == "paper-linear"
    assert app.activation.value == "identity"
    assert app.learning_rate.value == app.task.learning_rate


def test_explorer_link_and_code_follow_controls(explorer):
    explorer.width.value = 16
    explorer.learning_rate.value = 0.5
    assert "M=16" in explorer.query_string()
    assert "lr=0.5" in explorer.query_string()
    assert "M=16" in explorer.code.value
    assert "learning_rate=0.5" in explorer.code.value
    assert "M=16" in explorer.code_text()


def test_explorer_code_reproduces_rows(explorer):
    explorer.run_blocking()
    assert explorer.outcome.status == "completed"
    namespace = {}
    exec(explorer.code_text(), namespace)

    result = namespace["result"]
    rows = explorer.comparison.rows
    assert result["status"] == "completed"
    assert [row["step"] for row in result["steps"]] == [row["step"] for row in rows] == [0, 1, 2, 3]
    for copied, shown in zip(result["steps"], rows):
        assert copied.keys() == shown.keys()
        for column, value in shown.items():
            assert copied[column] == pytest.approx(value, rel=1e-6), column


def test_explorer_exports_png_and_svg_of_its_charts(explorer):
    explorer.run_blocking()
    files = download_links(explorer.error_downloads.widget.value)
    assert set(files) == {"explorer-errors.png", "explorer-errors.svg"}

    png = files["explorer-errors.png"]
    assert png.startswith(PNG_SIGNATURE)
    assert png == explorer.error_downloads.png
    svg = files["explorer-errors.svg"].decode("utf-8")
    root = svg_root(svg)
    assert root.tag == f"{SVG_NAMESPACE}svg"
    assert "Errors against both limits: L=4, M=8, D=8, seed 2 (completed)" in svg
    assert svg == chart_svg(explorer.error_chart.chart)
    # The PNG is the same drawing at twice the SVG's size.
    width, height = png_size(png)
    assert (width, height) == (2 * round(float(root.get("width"))), 2 * round(float(root.get("height"))))

    law = download_links(explorer.law_downloads.widget.value)
    assert law["explorer-law.png"].startswith(PNG_SIGNATURE)
    assert "Every completed run" in law["explorer-law.svg"].decode("utf-8")


def test_chart_export_differs_between_charts(explorer):
    explorer.run_blocking()
    assert chart_png(explorer.error_chart.chart) != chart_png(explorer.law_chart.chart)


# -- the coordinate view ----------------------------------------------------------------------------


def small_view(**options):
    return CoordinateView(
        L=4, M=8, D=16, step=2, limit_settings=SMALL_LIMITS, cache=None, compilation_cache=False,
        limit_cache_dir=None, **options,
    )


def test_coordinate_view_applies_query_string():
    view = small_view(use_worker=False, query_string="L=8&M=32&D=64&k=5&seed=3&limit=large-D&auto_run=0&x=1")
    assert (view.depth.value, view.width.value, view.dim.value, view.step.value, view.seed.value) == (8, 32, 64, 5, 3)
    assert view.limit_kind.value == limits.LARGE_DIM
    assert view.auto_run is False
    assert "unknown parameter &#x27;x&#x27; ignored" in view.url_message.value
    assert "?task=paper-tanh&amp;L=8&amp;M=32&amp;D=64&amp;k=5&amp;seed=3&amp;limit=large-D&amp;auto_run=0" in view.link.value
    view.seed.value = 4  # a student's change clears the message about the link
    assert view.url_message.value == ""


def test_coordinate_view_worker_snapshot_matches_code():
    view = small_view()
    try:
        async def run():
            view.start_run()
            return await view.wait()

        assert asyncio.run(run()) == "completed"
    finally:
        view.close()
    assert view.status.value.startswith("Step 2 computed")
    assert view.progress.value == 1.0
    files = download_links(view.trajectory_downloads.widget.value)
    assert files["coordinates-trajectories.png"].startswith(PNG_SIGNATURE)
    assert svg_root(files["coordinates-trajectories.svg"].decode("utf-8")).tag == f"{SVG_NAMESPACE}svg"

    namespace = {}
    exec(view.code_text(), namespace)
    snapshot = namespace["snapshot"]
    assert snapshot.step == view.snapshot.step == 2
    np.testing.assert_allclose(view.snapshot.network.forward_SxDxN, snapshot.network.forward_SxDxN, rtol=1e-5, atol=1e-6)
    for kind, limit in snapshot.limits.items():
        np.testing.assert_allclose(
            view.snapshot.limits[kind].streams.forward_SxDxN, limit.streams.forward_SxDxN, rtol=1e-5, atol=1e-6
        )


def test_coordinate_view_cancel_stops_within_a_second():
    # The limits of 60 steps take several seconds on a 2-core CPU before training starts.
    view = CoordinateView(L=4, M=8, D=16, step=60, compilation_cache=False, limit_cache_dir=None, cache=None)

    async def cancel_during_limits():
        task = view.start_run()
        while not view.status.value.startswith("Computing"):
            assert not task.done(), f"the run ended before it could be cancelled: {view.status.value}"
            await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        view.cancel()
        outcome = await view.wait()
        return outcome, time.monotonic() - cancelled_at

    try:
        outcome, seconds = asyncio.run(cancel_during_limits())
    finally:
        view.close()
    assert outcome == "cancelled"
    assert seconds < 1.0
    assert view.status.value == "Cancelled."
    assert view.snapshot is None


def test_coordinate_view_failure_shown_as_message():
    view = small_view(use_worker=False)
    view.dim.value = 1024
    view.width.value = 1024
    view.depth.value = 256
    assert view.start_run() is None
    assert "Cannot run these settings" in view.message.value
    assert "memory" in view.message.value


# -- the shape app ----------------------------------------------------------------------------------


def test_landscape_cells_have_the_budget():
    budget = 1e6
    frame = shapes.landscape_frame(budget, bounds.EMBEDDING_LAW, cells=20)
    assert len(frame) > 0
    assert (frame["D"] >= 1).all()
    np.testing.assert_allclose(frame["L"] * frame["M"] * frame["D"], budget, rtol=1e-9)
    expected = 1 / frame["L"] + np.sqrt(frame["D"] / (frame["L"] * frame["M"])) + 1 / np.sqrt(frame["D"])
    np.testing.assert_allclose(frame["bound"], expected, rtol=1e-12)
    assert (frame["L_low"] < frame["L"]).all() and (frame["L"] < frame["L_high"]).all()


def test_optimal_frame_matches_bounds():
    frame = shapes.optimal_frame(1e6).set_index("law")
    for name, law in shapes.LAWS.items():
        shape = bounds.optimal_shape(1e6, law)
        assert (frame.loc[name, "L"], frame.loc[name, "M"], frame.loc[name, "D"]) == (shape.L, shape.M, shape.D)
    assert (frame.loc["embedding", "L"], frame.loc["embedding", "M"], frame.loc["embedding", "D"]) == (10, 1000, 100)


def sweep_frame(rows):
    columns = ["L", "M", "D", "P", "seed", "K", "step", "status", "embedding_error_limit", "output_error_limit"]
    return pd.DataFrame.from_records(rows, columns=columns)


def test_measured_frame_keeps_completed_shapes_near_budget():
    frame = sweep_frame(
        [
            (10, 100, 1000, 10**6, 0, 2, 2, "completed", 0.2, 0.1),
            (10, 100, 1000, 10**6, 1, 2, 2, "completed", 0.4, 0.3),
            (10, 100, 1000, 10**6, 0, 2, 1, "completed", 9.0, 9.0),  # not the last step
            (4, 4, 4, 64, 0, 2, 2, "completed", 0.5, 0.5),  # far from the budget
            (20, 100, 1000, 2 * 10**6, 0, 2, 1, "diverged", 0.3, 0.3),
        ]
    )
    measured = shapes.measured_frame(frame, 1e6)
    assert len(measured) == 1
    row = measured.iloc[0]
    assert (row["L"], row["M"], row["D"], row["seeds"]) == (10, 100, 1000, 2)
    assert row["embedding_error"] == pytest.approx(0.3)
    assert row["output_error"] == pytest.approx(0.2)


def test_shape_app_slider_updates_chart_and_link():
    app = ShapeApp(query_string="P=1e5&law=output")
    assert app.budget.value == pytest.approx(1e5)
    assert app.law.value == "output"
    assert "No sweep directory given" in app.readout.value
    first = app.chart.chart.to_dict()

    app.budget.value = 1e8
    second = app.chart.chart.to_dict()
    assert "P = 1e+08" in second["title"]["text"]
    assert first["datasets"] != second["datasets"]
    assert "?P=1e8&amp;law=output" in app.link.value
    optimal = bounds.optimal_shape(1e8, bounds.EMBEDDING_LAW)
    assert f"<td>{optimal.L}</td><td>{optimal.M}</td><td>{optimal.D}</td>" in app.readout.value
    files = download_links(app.downloads.widget.value)
    assert files["shape-landscape.png"].startswith(PNG_SIGNATURE)
    assert "P = 1e+08" in files["shape-landscape.svg"].decode("utf-8")


def test_shape_app_rejects_bad_query_in_page():
    app = ShapeApp(query_string="P=abc&law=depth")
    assert app.budget.value == pytest.approx(shapes.DEFAULT_BUDGET)
    assert "P=&#x27;abc&#x27; is invalid" in app.message.value
    assert "law=&#x27;depth&#x27; is invalid" in app.message.value


def test_shape_app_clears_link_message_on_change():
    app = ShapeApp(query_string="P=1e12")
    assert "adjusted" in app.message.value

    app.budget.value = 1e5

    assert app.message.value == ""
    assert "P = 1e+05" in app.readout.value


def test_shape_app_draws_sweep_runs(tmp_path):
    from resnet_limits.sweeps import ResultStore

    store = ResultStore(tmp_path / "sweep")
    store.parts_dir.mkdir(parents=True)
    rows = [
        {"config_id": "a", "L": 10, "M": 100, "D": 1000, "P": 10**6, "seed": 0, "K": 1, "step": 1,
         "status": "completed", "embedding_error_limit": 0.25, "output_error_limit": 0.125},
    ]
    store.write_part("a", pd.DataFrame.from_records(rows))

    app = ShapeApp(sweep_dir=store.path, budget=1e6)
    assert len(app.measured) == 1
    assert "1 of them have P within a factor 3" in app.readout.value
    spec = app.chart.chart.to_dict()
    measured = [values for values in spec["datasets"].values() if values and "embedding_error" in values[0]]
    assert measured == [[{"L": 10, "M": 100, "D": 1000, "P": 1000000, "seeds": 1,
                          "embedding_error": 0.25, "output_error": 0.125}]]


def test_shape_app_reports_missing_sweep(tmp_path):
    app = ShapeApp(sweep_dir=tmp_path / "absent")
    assert f"No sweep results at {tmp_path / 'absent'}" in app.readout.value


def test_shapes_notebook_executes():
    notebook = nbformat.read(SHAPES_NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    notebook.cells.append(
        nbformat.v4.new_code_cell('app.budget.value = 1e7\nprint("budget", app.chart.chart.to_dict()["title"]["text"])')
    )
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(SHAPES_NOTEBOOK.parent)}}
    ).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "budget Bound over shapes of P = 1e+07" in printed
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []


def test_charts_offer_exports_without_editor():
    """Every app builds its charts with ``chart_widget``, whose menu has no "Open in Vega Editor"."""
    widgets_dir = pathlib.Path(charts.__file__).parent
    raw = [path.name for path in widgets_dir.glob("*.py")
           if path.name != "charts.py" and "alt.JupyterChart(" in path.read_text()]
    assert raw == []
    widget = charts.chart_widget(alt.Chart().mark_point())
    assert widget.embed_options["actions"] == {"export": True, "source": False, "compiled": False, "editor": False}
