"""Coordinate views: per-depth streams of networks and limits, histograms, and their charts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits import coordinates, limits
from resnet_limits.config import LimitSettings, RunConfig
from resnet_limits.experiment import Comparison
from resnet_limits.models import MLUResNet, residual_stream, residual_streams
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import mean_squared_loss, train
from resnet_limits_widgets import coordinate_charts

VEGA_LITE_ROW_CAP = 5000


def small_model(task, *, L=8, M=16, D=12, dtype=jnp.float64, seed=0):
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, D, dtype)
    return MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, activation=task.activation)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


# -- per-depth streams ------------------------------------------------------------------------------


def test_forward_streams_end_at_model_output(x64):
    task = get_task("paper-tanh")
    model = small_model(task)
    f, h_L = model(jnp.asarray(task.x_DinxN))
    streams = coordinates.task_streams(model, task)

    assert streams.forward_SxDxN.shape == (9, 12, task.num_samples)
    np.testing.assert_array_equal(streams.forward_SxDxN[-1], np.asarray(h_L))
    np.testing.assert_array_equal(streams.forward_SxDxN[0], np.asarray(model.w_embed[...] @ task.x_DinxN))
    np.testing.assert_allclose(streams.f_DoutxN, np.asarray(f), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(streams.depth_s, np.arange(9) / 8)


def test_residual_streams_match_residual_stream(x64):
    task = get_task("paper-tanh")
    model = small_model(task)
    h0 = model.w_embed[...] @ jnp.asarray(task.x_DinxN)
    options = dict(alpha=1.0, activation="tanh", metric=model.metric)
    last = residual_stream(model.u[...], model.v[...], h0, **options)
    every = residual_streams(model.u[...], model.v[...], h0, **options)
    np.testing.assert_array_equal(np.asarray(every[-1]), np.asarray(last))


def explicit_backward(model, streams):
    """B_{l-1} = B_l + alpha / (L M) U_l (sigma'(P_l) * Q_l), Q_l = metric V_l^T B_l, in NumPy."""
    u = np.asarray(model.u[...])
    v = np.asarray(model.v[...])
    depth, _, width = u.shape
    metric = model.metric
    backward = [streams.backward_SxDxN[-1]]
    for layer in range(depth, 0, -1):
        b = backward[-1]
        p = metric * u[layer - 1].T @ streams.forward_SxDxN[layer - 1]
        q = metric * v[layer - 1].T @ b
        backward.append(b + model.alpha / (depth * width) * u[layer - 1] @ ((1 - np.tanh(p) ** 2) * q))
    return np.array(backward[::-1])


def test_backward_stream_top_and_recursion(x64):
    task = get_task("paper-tanh")
    model = small_model(task)
    streams = coordinates.task_streams(model, task)

    def loss_of_top(h_DxN):
        f = model.metric * (model.w_unembed[...].T @ h_DxN)
        return mean_squared_loss(f, jnp.asarray(task.y_DoutxN), task.loss_scale)

    top = 12 * np.asarray(jax.grad(loss_of_top)(jnp.asarray(streams.forward_SxDxN[-1])))
    np.testing.assert_allclose(streams.backward_SxDxN[-1], top, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(streams.backward_SxDxN, explicit_backward(model, streams), rtol=1e-10, atol=1e-14)


def test_particle_streams_repeat_limit_simulation(x64):
    task = get_task("paper-tanh")
    problem = limits.large_dim_problem(task)
    settings = LimitSettings(depth_points=8, particles=64)
    options = dict(learning_rate=1.0, alpha=1.0, activation="tanh", dtype="float64")
    trajectory = limits.simulate_limit(problem, task, settings, steps=3, **options)
    system = coordinates.trained_particle_system(problem, task, settings, steps=3, **options)
    streams = coordinates.task_streams(system, task)

    np.testing.assert_allclose(streams.forward_SxDxN[-1], trajectory.h_KxDxN[3], rtol=1e-12, atol=1e-14)
    # The particle system has metric 1, so its backward stream is dJ/da: readout g at s = 1.
    g = task.loss_scale / task.num_samples * (streams.f_DoutxN - task.y_DoutxN)
    np.testing.assert_allclose(streams.backward_SxDxN[-1], problem.readout_KxDout @ g, rtol=1e-12, atol=1e-14)


# -- the comparison keeps its network ---------------------------------------------------------------


def test_comparison_keeps_model_at_step():
    config = RunConfig(L=4, M=8, D=8, K=3)
    settings = LimitSettings(depth_points=4, particles=96)
    comparison = Comparison(config, settings, cache=None)
    events = comparison.events()
    for event in events:
        if event.row is not None and event.row["step"] == 1:
            events.close()
            break
    assert comparison.model_step == 1
    assert set(comparison.span_problems) == {limits.FIXED_DIM, limits.LARGE_DIM}

    task = get_task("paper-tanh")
    key_embed, key_units = jax.random.split(jax.random.key(0))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, 8)
    fresh = MLUResNet(w_embed, w_unembed, depth=4, width=8, key=key_units)
    trajectory = train(fresh, task.x_DinxN, task.y_DoutxN, steps=1, learning_rate=1.0, loss_scale=task.loss_scale)
    streams = coordinates.task_streams(comparison.model, task)
    np.testing.assert_allclose(streams.forward_SxDxN[-1], trajectory.h_KxDxN[1], rtol=1e-5, atol=1e-6)

    comparison.run()  # a fresh events() pass trains to the end
    assert comparison.model_step == 3


# -- network against limit --------------------------------------------------------------------------


def relative_gap(network, limit):
    return float(np.sqrt(np.mean((network - limit) ** 2) / np.mean(limit**2)))


@pytest.fixture(scope="module")
def snapshots():
    """Step-3 snapshots of L = 64, D = 32 networks with M = 64 and M = 1024 (float32)."""
    settings = LimitSettings(depth_points=64, particles=4096)
    result = {}
    for width in (64, 1024):
        comparison = Comparison(RunConfig(L=64, M=width, D=32, K=3), settings, cache=None).run()
        result[width] = coordinates.snapshot_from_comparison(comparison)
    return result


def test_trajectories_approach_mean_ode(snapshots):
    # Relative RMS gap over all D = 32 coordinates of sample 0 and all depths. The depth-width
    # term sqrt(D / (L M)) is 0.088 at M = 64 and 0.022 at M = 1024; the network and the
    # simulator share the Euler step 1/64, so the 1/L term mostly cancels. Over seeds 0-2 the
    # gaps measured 0.041-0.058 at M = 64 and 0.011-0.015 at M = 1024, forward and backward.
    gaps = {}
    for width, snapshot in snapshots.items():
        assert snapshot.step == 3
        trajectories = coordinates.coordinate_trajectories(
            snapshot.network, snapshot.limits[limits.FIXED_DIM], range(32), sample=0
        )
        gaps[width] = (
            relative_gap(trajectories.network_forward_CxS, trajectories.limit_forward_CxS),
            relative_gap(trajectories.network_backward_CxS, trajectories.limit_backward_CxS),
        )
    forward_small, backward_small = gaps[64]
    forward_large, backward_large = gaps[1024]
    assert forward_large < 0.03, gaps
    assert backward_large < 0.03, gaps
    assert forward_large < 0.5 * forward_small, gaps
    assert backward_large < 0.5 * backward_small, gaps


def test_trajectory_records_are_plain(snapshots):
    snapshot = snapshots[64]
    trajectories = coordinates.coordinate_trajectories(
        snapshot.network, snapshot.limits[limits.LARGE_DIM], [0, 5], sample=2
    )
    records = trajectories.records()
    assert len(records) == 2 * 2 * (65 + 65)
    assert set(records[0]) == {"source", "stream", "coordinate", "s", "value"}
    assert {r["source"] for r in records} == {coordinates.NETWORK, limits.LARGE_DIM}
    with pytest.raises(ValueError, match="outside"):
        coordinates.coordinate_trajectories(snapshot.network, snapshot.limits[limits.LARGE_DIM], [32])


# -- histograms -------------------------------------------------------------------------------------


def test_histogram_at_input_is_gaussian():
    # At s = 0 the coordinates are W_E x with Gaussian rows, exactly N(0, s_E^2 ||x||^2). With
    # D = 4096 values the KS statistic stays below 0.03 with probability above 0.999.
    comparison = Comparison(RunConfig(L=4, M=8, D=4096, K=1), LimitSettings(depth_points=4, particles=96), cache=None)
    comparison.run()
    snapshot = coordinates.snapshot_from_comparison(comparison)
    task = comparison.task
    limit = snapshot.limits[limits.LARGE_DIM]
    for sample in (0, 3):
        histogram = coordinates.coordinate_histogram(snapshot.network, limit, 0.0, sample=sample)
        expected_std = task.embedding_std * np.linalg.norm(task.x_DinxN[:, sample])
        assert histogram.law_std_N[0] == pytest.approx(expected_std, rel=1e-6)
        assert histogram.ks_statistic() < 0.03
        assert np.std(histogram.values) == pytest.approx(expected_std, rel=0.05)
        assert histogram.counts.sum() == 4096
        widths = np.diff(histogram.bin_edges)
        assert np.sum(histogram.density * widths) == pytest.approx(1.0, rel=1e-12)
        grid_step = histogram.grid[1] - histogram.grid[0]
        assert np.sum(histogram.law_density) * grid_step == pytest.approx(1.0, abs=1e-3)


def test_histogram_after_training_follows_law():
    # At s = 1 after 3 steps the coordinates of a D = 1024 network follow the large-D law up to
    # the O(1/sqrt(D)) gap. Over seeds 0-2 the pooled KS statistic measured 0.012-0.017 (bound
    # 0.05) and the second moment 1.05-1.10 times the law's variance (bound 1.15).
    settings = LimitSettings(depth_points=16, particles=4096)
    comparison = Comparison(RunConfig(L=16, M=256, D=1024, K=3), settings, cache=None).run()
    snapshot = coordinates.snapshot_from_comparison(comparison)
    histogram = coordinates.coordinate_histogram(snapshot.network, snapshot.limits[limits.LARGE_DIM], 1.0)
    assert histogram.s == 1.0
    assert histogram.values.shape == (1024 * 10,)
    assert histogram.ks_statistic() < 0.05
    variance = np.mean(histogram.law_std_N**2)
    assert np.mean(histogram.values**2) == pytest.approx(variance, rel=0.15)


# -- charts -----------------------------------------------------------------------------------------


def dataset_rows(chart_dict):
    return [len(values) for values in chart_dict["datasets"].values()]


def test_trajectory_chart_is_valid_vega_lite(snapshots):
    snapshot = snapshots[64]
    trajectories = coordinates.coordinate_trajectories(
        snapshot.network, snapshot.limits[limits.FIXED_DIM], [0, 1, 2, 3], sample=0
    )
    spec = coordinate_charts.trajectory_chart(trajectories, "Coordinates").to_dict()
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    assert len(spec["hconcat"]) == 2
    rows = dataset_rows(spec)
    assert sum(rows) <= VEGA_LITE_ROW_CAP
    assert max(rows) > 0


def test_trajectory_frame_thins_deep_series():
    depth = 1000
    trajectories = coordinates.CoordinateTrajectories(
        coordinates=tuple(range(10)),
        sample=0,
        network_s=np.linspace(0, 1, depth + 1),
        network_forward_CxS=np.zeros((10, depth + 1)),
        network_backward_CxS=np.zeros((10, depth + 1)),
        limit_kind=limits.FIXED_DIM,
        limit_s=np.linspace(0, 1, depth + 1),
        limit_forward_CxS=np.ones((10, depth + 1)),
        limit_backward_CxS=np.ones((10, depth + 1)),
    )
    frame = coordinate_charts.trajectory_frame(trajectories)
    assert len(frame) <= VEGA_LITE_ROW_CAP
    assert set(frame["s"]) >= {0.0, 1.0}
    spec = coordinate_charts.trajectory_chart(trajectories, "Deep").to_dict()
    assert sum(dataset_rows(spec)) <= VEGA_LITE_ROW_CAP


def test_histogram_chart_is_valid_vega_lite(snapshots):
    snapshot = snapshots[64]
    histograms = [
        coordinates.coordinate_histogram(snapshot.network, snapshot.limits[limits.LARGE_DIM], s) for s in (0.0, 1.0)
    ]
    spec = coordinate_charts.histogram_chart(histograms, "Histograms").to_dict()
    assert len(spec["hconcat"]) == 2
    rows = dataset_rows(spec)
    assert sum(rows) <= VEGA_LITE_ROW_CAP
    assert sorted(rows) == [30, 30, 121, 121]


# -- the app and its notebook -----------------------------------------------------------------------


def test_coordinate_view_runs_and_redraws():
    from resnet_limits_widgets import CoordinateView

    view = CoordinateView(
        L=4, M=8, D=16, step=2, limit_settings=LimitSettings(depth_points=8, particles=96), cache=None,
        compilation_cache=False, use_worker=False,
    )
    snapshot = view.run()
    assert snapshot.step == 2
    assert "Step 2" in view.status.value
    assert view.message.value == ""
    plotted = {r["coordinate"] for values in view.trajectory_chart.spec["datasets"].values() for r in values if "coordinate" in r}
    assert plotted == {"d = 0", "d = 1", "d = 2", "d = 3"}

    view.coordinates.value = "3, 40"
    assert "outside 0..15" in view.message.value
    view.coordinates.value = "7"
    view.limit_kind.value = limits.LARGE_DIM
    assert view.message.value == ""
    records = [r for values in view.trajectory_chart.spec["datasets"].values() for r in values if "source" in r]
    assert {r["source"] for r in records} == {coordinates.NETWORK, limits.LARGE_DIM}
    assert {r["coordinate"] for r in records} == {"d = 7"}

    view.step.value = 0
    assert view.run().step == 0


def test_coordinates_notebook_executes():
    import pathlib

    import nbformat
    from nbclient import NotebookClient

    path = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "coordinates.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            'outcome = await view.wait()\n'
            'print("snapshot step", outcome, view.snapshot.step, view.status.value.startswith("Step"))\n'
            "view.close()"
        )
    )
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "snapshot step completed 15 True" in printed
