"""The explorer app in this process and with a worker process, and its notebook executed in a real kernel."""

import asyncio
import math
import os
import pathlib
import signal
import time

import nbformat
import pytest
from nbclient import NotebookClient

from resnet_limits import bounds
from resnet_limits.compilation_cache import default_cache_dir
from resnet_limits.experiment import ERROR_COLUMNS, Comparison
from resnet_limits_widgets import ExplorerApp, charts
from resnet_limits_widgets.summary import shape_summary, shape_summary_html

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
EXPLORER = REPOSITORY / "notebooks" / "explorer.ipynb"

# Few steps keep every in-process run under about a second once the default shape is compiled.
STEPS = 4


@pytest.fixture
def app():
    """An explorer that runs in this process only when asked, with few steps and no persistent cache."""
    explorer = ExplorerApp(auto_run=False, compilation_cache=False, use_worker=False)
    explorer.steps.value = STEPS
    return explorer


@pytest.fixture
def worker_app():
    """An explorer that runs its comparisons in a worker process."""
    explorer = ExplorerApp(auto_run=False, compilation_cache=False)
    explorer.steps.value = STEPS
    yield explorer
    explorer.close()


def chart_records(chart, required_field):
    """Return the records of the chart's inline data set whose records have ``required_field``."""
    records = []
    for values in chart.spec["datasets"].values():
        records.extend(value for value in values if required_field in value)
    return records


def law_points(app):
    return chart_records(app.law_chart, "kind")


# -- the app in-process ---------------------------------------------------------------------------


def test_run_blocking_fills_rows_and_charts(app):
    outcome = app.run_blocking()

    assert outcome.status == "completed"
    rows = app.comparison.rows
    assert [row["step"] for row in rows] == list(range(STEPS + 1))
    for row in rows:
        for column in ERROR_COLUMNS:
            assert math.isfinite(row[column]), (row["step"], column)
            assert row[column] > 0, (row["step"], column)

    # Four error series of STEPS + 1 points, and the law's prediction drawn at two steps per kind.
    plotted = chart_records(app.error_chart, "error")
    assert len(plotted) == 4 * (STEPS + 1) + 2 * 2
    predictions = {r["kind"]: r["error"] for r in plotted if r["reference"] == charts.REFERENCE_LAW}
    assert predictions["embedding"] == pytest.approx(float(bounds.EMBEDDING_LAW.predict(16, 64, 64)), rel=1e-12)
    assert predictions["output"] == pytest.approx(float(bounds.OUTPUT_LAW.predict(16, 64, 64)), rel=1e-12)

    points = law_points(app)
    assert sorted(point["kind"] for point in points) == ["embedding", "output"]
    last = rows[-1]
    measured = {point["kind"]: point["measured"] for point in points}
    assert measured["embedding"] == pytest.approx(last["embedding_error_limit"], rel=1e-12)
    assert measured["output"] == pytest.approx(last["output_error_limit"], rel=1e-12)

    assert "completed 4 steps" in app.last_run.value
    assert app.message.value == ""
    assert app.progress.value == 1.0


def test_rerun_same_settings_keeps_one_point_pair(app):
    app.run_blocking()
    app.run_blocking()
    assert len(law_points(app)) == 2

    app.seed.value = 1
    app.run_blocking()
    assert len(law_points(app)) == 4

    app.clear_runs()
    assert law_points(app) == []


def test_cancel_keeps_partial_rows(app):
    app.steps.value = 10

    async def start_then_cancel():
        task = app.start_run()
        assert task is not None
        # The run yields to the loop after every event, so this coroutine observes each new row.
        while app.comparison is None or len(app.comparison.rows) < 3:
            assert not task.done(), "the run ended before it could be cancelled"
            await asyncio.sleep(0)
        app.cancel()
        return await app.wait()

    outcome = asyncio.run(start_then_cancel())

    assert outcome.status == "cancelled"
    kept = len(app.comparison.rows)
    assert 3 <= kept < 11
    assert len(chart_records(app.error_chart, "error")) == 4 * kept + 2 * 2
    assert law_points(app) == []
    assert f"cancelled at step {kept - 1} of 10; steps 0 to {kept - 1} are plotted" in app.last_run.value
    assert app.cancel_button.disabled


def test_control_change_restarts_run(app):
    app.auto_run.value = True

    async def change_depth_twice():
        app.start_run()
        app.depth.value = 8  # cancels the run at L=16 and starts one at L=8
        return await app.wait()

    outcome = asyncio.run(change_depth_twice())

    assert outcome.status == "completed"
    assert app.comparison.config.L == 8
    assert [(point["L"], point["kind"]) for point in law_points(app)] == [(8, "embedding"), (8, "output")]
    assert "P = L M D = 32,768" in app.summary.value


def test_invalid_learning_rate_shows_message(app):
    app.learning_rate.value = -1.0

    assert app.run_blocking() is None
    assert app.comparison is None
    assert "learning_rate must be positive and finite, got -1.0" in app.message.value
    assert "set the learning rate to a value such as 0.1" in app.message.value
    assert "--lr" not in app.message.value
    assert "Traceback" not in app.message.value
    assert "invalid settings" in app.status.value


def test_memory_budget_shows_message(app):
    app.depth.value = 256
    app.width.value = 1024
    app.dim.value = 1024

    assert app.start_run() is None
    assert "over the memory budget" in app.message.value
    assert app.message.value.endswith("reduce L, M or D</div>")
    assert "--memory-budget" not in app.message.value
    assert app.comparison is None


def test_message_cleared_by_valid_run(app):
    app.learning_rate.value = 0.0
    app.prepare()
    assert app.message.value != ""

    app.learning_rate.value = 1.0
    app.run_blocking()
    assert app.message.value == ""


def test_divergence_reported_not_plotted(app):
    # At learning rate 200 the default shape's loss grows a millionfold within a few steps.
    app.learning_rate.value = 200.0

    outcome = app.run_blocking()

    assert outcome.status == "diverged"
    step = app.comparison.diverged_at
    assert step is not None
    assert 0 < step <= STEPS
    assert f"diverged at step {step}" in app.last_run.value
    assert f"Training diverged at step {step}" in app.message.value
    for record in chart_records(app.error_chart, "error"):
        assert math.isfinite(record["error"])
        assert record["error"] > 0
    assert law_points(app) == []


def test_error_frame_drops_missing_and_nonfinite():
    rows = [
        {"step": 0, "embedding_error_mean_ode": 0.1, "embedding_error_limit": None,
         "output_error_mean_ode": float("nan"), "output_error_limit": 0.0},
        {"step": 1, "embedding_error_mean_ode": 0.2, "embedding_error_limit": 0.3,
         "output_error_mean_ode": float("inf"), "output_error_limit": 0.05},
    ]
    frame = charts.error_frame(rows, {"embedding": 0.4, "output": float("nan")}, steps=1)

    assert len(frame) == 4 + 2
    assert frame["error"].map(math.isfinite).all()
    assert (frame["error"] > 0).all()


def test_shape_summary_matches_bounds():
    summary = shape_summary(16, 64, 64)

    assert summary["P"] == 16 * 64 * 64
    assert summary["terms"] == bounds.bound_terms(16, 64, 64)
    for kind, law in (("embedding", bounds.EMBEDDING_LAW), ("output", bounds.OUTPUT_LAW)):
        assert summary["laws"][kind]["optimal_shape"] == bounds.optimal_shape(16 * 64 * 64, law)
        assert summary["laws"][kind]["predicted"] == pytest.approx(float(law.predict(16, 64, 64)), rel=1e-12)
        assert summary["laws"][kind]["bound"] == pytest.approx(float(law.bound(16, 64, 64)), rel=1e-12)


def test_shape_summary_compares_bounds_with_unit_constants():
    # At P = 65,536 the embedding law's optimal shape is L=6, M=273, D=40, whose bound with
    # constants 1 (0.481) is above that of L=16, M=64, D=64 (1/16 + 1/4 + 1/8 = 0.4375).
    summary = shape_summary(16, 64, 64)
    embedding = summary["laws"]["embedding"]
    optimal = embedding["optimal_shape"]

    assert embedding["unit_bound"] == pytest.approx(0.4375, rel=1e-12)
    assert embedding["optimal_unit_bound"] == pytest.approx(
        1 / optimal.L + math.sqrt(optimal.D / (optimal.L * optimal.M)) + 1 / math.sqrt(optimal.D), rel=1e-12)
    assert embedding["optimal_unit_bound"] > embedding["unit_bound"]

    text = shape_summary_html(16, 64, 64)
    assert "with every constant 1" in text
    assert "Here the current shape has the smaller bound (embedding" in text
    assert "Here the current shape" not in shape_summary_html(optimal.L, optimal.M, optimal.D)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "resnet-limits" / "jax"


# -- the app with a worker process ----------------------------------------------------------------


def test_worker_rows_equal_in_kernel_rows(app, worker_app):
    app.run_blocking()

    outcome = asyncio.run(_run_to_end(worker_app))

    assert outcome.status == "completed"
    # The same code on the same inputs in another process; JSON carries floats exactly.
    assert worker_app.comparison.rows == app.comparison.rows
    assert worker_app.limit_errors == app.limit_errors
    assert set(worker_app.limit_errors) == {"large-D", "fixed-D"}
    for summary in worker_app.limit_errors.values():
        assert 0 < summary["relative_error_estimate"] < 0.01
    assert "own output error is estimated at" in worker_app.last_run.value
    assert law_points(worker_app) != []


async def _run_to_end(app):
    app.start_run()
    return await app.wait()


def test_worker_cancel_stops_within_a_second(worker_app):
    # A shape whose 60 steps take several seconds on a 2-core CPU.
    worker_app.width.value = 1024
    worker_app.dim.value = 512
    worker_app.steps.value = 60

    async def cancel_after_three_rows():
        task = worker_app.start_run()
        while worker_app.comparison is None or len(worker_app.comparison.rows) < 3:
            assert not task.done(), "the run ended before it could be cancelled"
            await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        worker_app.cancel()
        outcome = await worker_app.wait()
        return outcome, time.monotonic() - cancelled_at

    outcome, seconds = asyncio.run(cancel_after_three_rows())

    assert outcome.status == "cancelled"
    assert seconds < 1.0
    kept = len(worker_app.comparison.rows)
    assert 3 <= kept < 61
    assert [row["step"] for row in worker_app.comparison.rows] == list(range(kept))
    assert f"cancelled at step {kept - 1} of 60" in worker_app.last_run.value


def test_worker_death_reported_then_restarted(worker_app):
    worker_app.width.value = 1024  # 60 steps of this shape take several seconds
    worker_app.dim.value = 512
    worker_app.steps.value = 60

    async def kill_during_run():
        worker_app.start_run()
        while worker_app.progress.value == 0:  # the worker has reported its first event
            await asyncio.sleep(0.01)
        os.kill(worker_app.worker.pid, signal.SIGKILL)
        return await worker_app.wait()

    outcome = asyncio.run(kill_during_run())

    assert outcome.status == "failed"
    assert "worker process ended" in worker_app.message.value
    assert "Traceback" not in worker_app.message.value

    worker_app.width.value = 64
    worker_app.dim.value = 64
    worker_app.steps.value = STEPS
    outcome = asyncio.run(_run_to_end(worker_app))
    assert outcome.status == "completed", outcome
    assert worker_app.message.value == ""


def test_worker_failure_shown_in_page(worker_app):
    # Settings that pass the kernel's checks, sent with a budget that the worker rejects.
    worker_app.prepare = lambda: Comparison(worker_app.config(), worker_app.limit_settings)
    worker_app.memory_budget_bytes = 1

    outcome = asyncio.run(_run_to_end(worker_app))

    assert outcome.status == "failed"
    assert "MemoryBudgetError" in worker_app.message.value
    assert "over the memory budget" in worker_app.message.value


# -- the notebook in a kernel ---------------------------------------------------------------------


def test_explorer_stored_without_outputs():
    notebook = nbformat.read(EXPLORER, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None


CHECK_CELLS = [
    # The run that the notebook starts at display.
    """outcome = await app.wait()
assert outcome.status == "completed", outcome
assert len(app.comparison.rows) == app.comparison.config.K + 1
print("first run", app.comparison.config.L, len(app.comparison.rows))""",
    # A slider change, as the browser sends it, restarts the run at the new depth.
    """app.depth.value = 8
outcome = await app.wait()
assert outcome.status == "completed", outcome
assert app.comparison.config.L == 8
assert "L=8" in app.last_run.value
print("slider run", app.comparison.config.L, len(app.comparison.rows))""",
    # The persistent compilation cache lives in the redirected user cache directory.
    """import os, jax
cache = jax.config.jax_compilation_cache_dir
assert cache.startswith(os.environ["XDG_CACHE_HOME"]), cache
print("cache", cache)""",
]


def test_explorer_executes_and_slider_reruns():
    notebook = nbformat.read(EXPLORER, as_version=4)
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in CHECK_CELLS)

    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXPLORER.parent)}},
    )
    client.execute()

    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "first run 16 16" in printed
    assert "slider run 8 16" in printed
    assert f"cache {os.environ['XDG_CACHE_HOME']}" in printed
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
