"""Lesson computations behind the notebooks, and the panels that draw them."""

import math

import pytest

from resnet_limits import bounds, lessons
from resnet_limits.config import ConfigError
from resnet_limits_widgets import lesson_panel
from resnet_limits_widgets import lessons as panels


@pytest.mark.slow
def test_small_sweep_depth_width_table(tmp_path):
    result = lessons.small_sweep([2, 8], [4], [8], [0], tmp_path / "sweep")
    frame, slope = lessons.depth_width_table(result)

    assert list(zip(frame["L"], frame["M"], frame["D"])) == [(2, 4, 8), (8, 4, 8)]
    assert list(frame["LM"]) == [8, 32]
    assert (frame[result.column] > 0).all()
    assert slope.slope < 0  # more units, smaller error
    assert list(result.slopes["axis"]) == ["L"]


def test_span_reduction_shrinks_with_units():
    frame = lessons.span_reduction([(4, 4, 32), (32, 32, 32)], steps=2)

    assert list(frame["r"]) == [10, 10]
    small, large = frame["outside_fraction"]
    assert 0 < large < small < 1
    assert frame["width_term"].tolist() == pytest.approx([math.sqrt(2), math.sqrt(1 / 32)])


def test_span_reduction_small_dim_has_rank_d():
    frame = lessons.span_reduction([(4, 4, 6)], steps=1)

    assert frame["r"].iloc[0] == 6  # E has 10 columns in 6 dimensions
    assert frame["outside_fraction"].iloc[0] < 1e-5


def test_limit_gap_follows_inverse_sqrt_dim():
    frame, slope = lessons.limit_gap([16, 64, 256, 1024])

    assert list(frame["D"]) == [16, 64, 256, 1024]
    assert frame["embedding_gap"].is_monotonic_decreasing
    assert -0.75 < slope.slope < -0.3, slope


def test_gaussian_coordinates_ks_falls_with_dim():
    histograms = lessons.gaussian_coordinates([8, 512], steps=2)

    small, large = (histogram.ks_statistic() for histogram in histograms)
    assert large < small
    assert large < 0.05
    assert histograms[1].values.size == 512 * 10


def test_budget_table_balances_terms():
    frame = lessons.budget_table([1e6])

    row = frame.iloc[0]
    assert (row["L"], row["M"], row["D"]) == (10, 1000, 100)
    for name in ("depth", "width", "embedding"):
        assert row[name] == pytest.approx(0.1, rel=1e-12)
    assert row["bound_sum"] == pytest.approx(0.3, rel=1e-12)


def test_optimal_rates_are_derived():
    frame = lessons.optimal_rates().set_index("law")

    assert frame.loc["embedding"].tolist() == pytest.approx([1 / 6, 1 / 2, 1 / 3, 1 / 6], abs=1e-9)
    assert frame.loc["output"].tolist() == pytest.approx([1 / 5, 2 / 5, 2 / 5, 1 / 5], abs=1e-9)


def test_path_rates_match_paths_module():
    frame = lessons.path_rates(bounds.EMBEDDING_LAW)

    assert frame["predicted slope"].tolist() == pytest.approx([-1 / 8, -1 / 6, -1 / 12, 0.0], abs=1e-9)


# -- panels ----------------------------------------------------------------------------------------


def test_parse_integers():
    assert lesson_panel.parse_integers(" 16, 4,4 ", "D values") == [4, 16]
    with pytest.raises(ConfigError, match="D values must be integers separated by commas"):
        lesson_panel.parse_integers("4, x", "D values")
    with pytest.raises(ConfigError, match="at least one integer of 1 or more"):
        lesson_panel.parse_integers("0", "D values")


def test_panel_shows_invalid_setting_as_message():
    panel = panels.limit_gap_panel(run_at_start=False)
    panel.widget.children[1].value = "4, oops"

    assert panel.run() is None
    assert "Cannot run these settings: D values must be integers" in panel.message.value
    assert "Traceback" not in panel.message.value
    assert panel.status.value == "Not run: invalid settings."


def test_panel_shows_failure_as_message():
    def render(result):
        raise RuntimeError("simulated failure")

    call = lesson_panel.WorkerCall("resnet_limits.lessons:optimal_rates", {})
    panel = lesson_panel.LessonPanel("test", [], lambda: call, render, run_at_start=False)

    assert panel.run_blocking() is None
    assert "The computation failed: RuntimeError: simulated failure" in panel.message.value
    assert panel.status.value == "Failed."
    assert panel.outcome == "failed"


def test_panel_shows_worker_config_error_as_invalid():
    call = lesson_panel.WorkerCall("resnet_limits.lessons:budget_terms", {"law": "depth", "budgets": [1e6]})
    panel = lesson_panel.LessonPanel("test", [], lambda: call, lambda result: (None, ""), run_at_start=False)

    assert panel.run_blocking() is None
    assert "Cannot run these settings: unknown error law &#x27;depth&#x27;; choose embedding or output" in panel.message.value
    assert "ConfigError" not in panel.message.value
    assert panel.status.value == "Not run: invalid settings."


def test_panels_share_one_worker():
    first, second = panels.budget_panel(run_at_start=False), panels.limit_gap_panel(run_at_start=False)

    assert first.worker is second.worker
    assert first.worker is lesson_panel.lesson_worker()


@pytest.mark.parametrize("name", ["training_run", "coordinate_checks", "depth_width_sweep", "span_table",
                                  "limit_gap_table", "gaussian_histograms", "budget_terms", "shape_sweep"])
def test_panel_functions_are_worker_functions(name):
    from resnet_limits.worker import resolve_function

    assert resolve_function(f"resnet_limits.lessons:{name}") is getattr(lessons, name)


def test_panel_cancel_stops_within_a_second():
    import asyncio
    import time

    panel = panels.span_panel(run_at_start=False)
    sizes, dim = panel.widget.children[1:3]
    sizes.value, dim.value = "64, 96, 128, 160", 512

    async def run_and_cancel():
        task = panel.run()
        while "Computing" not in panel.status.value:  # the worker has started the call
            assert not task.done(), panel.message.value
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        panel.cancel()
        await panel.wait()
        return time.monotonic() - started

    seconds = asyncio.run(run_and_cancel())

    assert seconds < 1.0
    assert panel.outcome == "cancelled"
    assert panel.status.value == "Cancelled."
    assert panel.cancel_button.disabled
    assert panel.result is None


def test_budget_panel_shows_derived_rates():
    panel = panels.budget_panel(run_at_start=False)

    assert panel.run_blocking() is not None
    assert "0.167 = 1/6" in panel.details.value
    assert "NaN" not in panel.details.value
    assert panel.message.value == ""


def test_training_panel_rejects_shape_over_budget():
    panel = panels.training_panel(run_at_start=False)
    _, depth, width, dim, _ = panel.widget.children[1:6]
    depth.value, width.value, dim.value = 256, 1024, 1024

    assert panel.run_blocking() is None
    assert "over the budget of 1.00 GiB; reduce L, M or D" in panel.message.value


def test_coordinate_panel_redraws_without_training():
    panel = panels.coordinate_check_panel(run_at_start=False)
    scales, steps, column = panel.widget.children[1:4]
    scales.value = "4, 8"
    steps.value = 1

    result = panel.run_blocking()
    column.value = "stream_rms"

    assert set(result) == {"mlu", "standard"}
    assert panel.result is result
    assert "at step 0" in str(panel.chart.chart.to_dict()["title"])
    assert "fitted slope in log n" in panel.details.value


def test_training_panel_standard_rule():
    panel = panels.training_panel(run_at_start=False)
    rule, depth, width, dim, steps = panel.widget.children[1:6]
    rule.value = "standard"
    depth.value, width.value, dim.value, steps.value = 4, 8, 8, 2

    trajectory = panel.run_blocking()

    assert trajectory is not None
    assert len(trajectory["loss"]) == 3
    assert panel.message.value == ""


@pytest.mark.slow
def test_depth_width_panel_switches_axis():
    panel = panels.depth_width_panel(run_at_start=False)
    depths, widths, dim, axis = panel.widget.children[1:5]
    depths.value, widths.value, dim.value = "2, 8", "4", 8

    assert panel.run_blocking() is not None
    axis.value = "M"

    spec = panel.chart.chart.to_dict()
    assert spec["layer"][0]["encoding"]["x"]["field"] == "M"
    assert "one line per L" in str(spec["title"])
    assert "Slope of the error against L M" in panel.details.value


def test_slope_table_names_fixed_sizes_and_intervals():
    import pandas as pd

    slopes = pd.DataFrame([
        {"axis": "L", "M": 4, "D": 8, "slope": -0.4, "ci_low": float("nan"), "ci_high": float("nan"), "num_points": 2},
        {"axis": "M", "L": 2, "D": 8, "slope": -0.52, "ci_low": -0.61, "ci_high": -0.43, "num_points": 3},
    ])

    text = lesson_panel.slope_table(slopes, "Slopes:")
    empty = lesson_panel.slope_table(pd.DataFrame(), "Slopes:")

    assert "M = 4, D = 8" in text
    assert "L = 2, D = 8" in text
    assert "[-0.61, -0.43]" in text
    assert "none (under 3 points)" in text
    assert "has no 95 % interval" in text  # the note that explains the missing interval
    assert "NaN" not in text
    assert "ci_low" not in text
    assert "no axis has two sizes" in empty


def test_readable_table_formats_cells():
    import pandas as pd

    from resnet_limits_widgets import tables

    frame = pd.DataFrame({"P": [1_000_000], "rate": [1 / 6], "error": [0.0123456], "low": [None], "high": [0.2]})
    columns = [tables.Column("P", "P = L M D", tables.integer),
               tables.Column("rate", "rate", tables.fraction),
               tables.Column("error", "error (RMS)"),
               tables.Column(("low", "high"), "interval", missing="unknown")]

    text = tables.readable_table(frame, columns, missing_note="unknown: no interval")
    complete = tables.readable_table(frame.assign(low=0.1), columns, missing_note="unknown: no interval")

    assert "1,000,000" in text
    assert "0.167 = 1/6" in text
    assert "0.0123" in text
    assert "0.0123456" not in text
    assert ">unknown<" in text
    assert "unknown: no interval" in text
    assert "[0.1, 0.2]" in complete
    assert "unknown: no interval" not in complete


def test_course_query_sets_panel_controls():
    message = panels.open_course_page("?auto_run=0&training.L=8&training.K=500&training.rule=standard")

    panel = panels.training_panel()
    rule, depth, width, dim, steps = panel.widget.children[1:6]

    assert panel.outcome is None  # auto_run=0: not run
    assert (rule.value, depth.value, width.value, steps.value) == ("standard", 8, 64, 60)
    assert "training.K=500 is outside 1..60; using training.K=60" in message.value
    depth.value = 4  # a student's change clears the message about the link
    assert message.value == ""
    panels.open_course_page(None)


def test_course_query_rejects_unknown_and_invalid():
    message = panels.open_course_page("auto_run=maybe&training.X=1&budget.law=depth&gap.D=4,16")

    budget, gap = panels.budget_panel(run_at_start=False), panels.limit_gap_panel(run_at_start=False)

    assert budget.widget.children[1].value == "embedding"
    assert gap.widget.children[1].value == "4,16"
    assert "auto_run=&#x27;maybe&#x27; is invalid: write 1 or 0" in message.value
    assert "training.X is unknown and was ignored" in message.value
    assert "budget.law=&#x27;depth&#x27; is invalid: choose one of embedding, output; the default is kept" in message.value
    panels.open_course_page(None)
