"""Divergence and interruption in training and in the comparison runner."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits.config import LimitSettings, RunConfig, jax_dtype
from resnet_limits.experiment import (
    ERROR_COLUMNS,
    STAGE_LIMIT,
    STAGE_MEAN_ODE,
    STAGE_TRAINING,
    Comparison,
    LimitCache,
)
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import DIVERGENCE_FACTOR, StepRecord, Trajectory, train, training_steps

# A small limit simulator: these tests check bookkeeping, not the accuracy of the limits.
SMALL_LIMIT = LimitSettings(depth_points=4, particles=96)


def make_model(activation, L=4, M=8, D=8):
    task = get_task("paper-tanh")
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, D, jnp.float32)
    model = MLUResNet(w_embed, w_unembed, depth=L, width=M, key=jax.random.key(1), activation=activation)
    return task, model


# (activation, eta, step of divergence, how). The steps were read off these float32 runs. At
# each diverged step the loss is non-finite or at least 20 times the threshold, and at the step
# before it is at most 1/5 of the threshold, so rounding differences do not move the step.
DIVERGING_RUNS = [
    ("identity", 1e6, 1, "not finite"),
    ("identity", 10.0, 2, "not finite"),
    ("identity", 3.0, 3, "above factor"),
    ("tanh", 1e6, 1, "above factor"),
    ("tanh", 100.0, 3, "above factor"),
]


@pytest.mark.parametrize(("activation", "learning_rate", "step", "how"), DIVERGING_RUNS)
def test_train_stops_at_divergence(activation, learning_rate, step, how):
    task, model = make_model(activation)
    trajectory = train(
        model, task.x_DinxN, task.y_DoutxN, steps=10, learning_rate=learning_rate, loss_scale=task.loss_scale
    )
    assert trajectory.diverged_at == step
    assert trajectory.loss_K.shape == (step,)
    assert trajectory.f_KxDoutxN.shape == (step, task.d_out, task.num_samples)
    assert trajectory.h_KxDxN.shape == (step, 8, task.num_samples)
    assert trajectory.num_steps == step - 1
    assert np.all(np.isfinite(trajectory.loss_K))
    assert np.all(np.isfinite(trajectory.f_KxDoutxN))
    assert np.all(np.isfinite(trajectory.h_KxDxN))
    assert np.all(trajectory.loss_K <= DIVERGENCE_FACTOR * trajectory.loss_K[0])


@pytest.mark.parametrize(("activation", "learning_rate", "step", "how"), DIVERGING_RUNS)
def test_steps_end_with_diverged_record(activation, learning_rate, step, how):
    task, model = make_model(activation)
    records = list(
        training_steps(
            model, task.x_DinxN, task.y_DoutxN, steps=10, learning_rate=learning_rate, loss_scale=task.loss_scale
        )
    )
    last = records[-1]
    assert [r.step for r in records] == list(range(step + 1))
    assert [r.diverged for r in records] == [False] * step + [True]
    if how == "not finite":
        assert not math.isfinite(last.loss)
    else:
        assert math.isfinite(last.loss)
        assert last.loss > DIVERGENCE_FACTOR * records[0].loss


def test_train_without_divergence():
    task, model = make_model("tanh")
    trajectory = train(model, task.x_DinxN, task.y_DoutxN, steps=5, learning_rate=0.5, loss_scale=task.loss_scale)
    assert trajectory.diverged_at is None
    assert trajectory.num_steps == 5
    assert trajectory.loss_K.shape == (6,)


def test_trajectory_diverged_at_start():
    """A run whose first forward pass is not finite keeps no steps, with empty arrays of the right shape."""
    last = StepRecord(0, math.nan, np.full((3, 2), np.nan), np.full((5, 2), np.nan), diverged=True)
    trajectory = Trajectory.from_records([], last)
    assert trajectory.diverged_at == 0
    assert trajectory.loss_K.shape == (0,)
    assert trajectory.f_KxDoutxN.shape == (0, 3, 2)
    assert trajectory.h_KxDxN.shape == (0, 5, 2)


def assert_rows_finite(rows):
    for row in rows:
        for column in ("loss", *ERROR_COLUMNS):
            value = row[column]
            assert value is None or math.isfinite(value), (row["step"], column, value)


def test_comparison_diverged():
    config = RunConfig(task="paper-tanh", L=4, M=8, D=8, K=3, learning_rate=1e6)
    comparison = Comparison(config, SMALL_LIMIT, cache=LimitCache())
    events = list(comparison.events())

    assert comparison.status == "diverged"
    assert comparison.diverged_at == 1
    assert comparison.completed is False
    assert [row["step"] for row in comparison.rows] == [0]
    assert_rows_finite(comparison.rows)
    assert events[-1].stage == STAGE_TRAINING
    assert events[-1].row is None

    result = comparison.to_dict()
    assert result["status"] == "diverged"
    assert result["diverged_at_step"] == 1
    assert len(result["steps"]) == 1


def test_comparison_interrupted():
    config = RunConfig(task="paper-tanh", L=4, M=8, D=8, K=6)
    comparison = Comparison(config, SMALL_LIMIT, cache=LimitCache())
    training_events = 0
    for event in comparison.events():
        if event.stage == STAGE_TRAINING:
            training_events += 1
        if training_events == 3:
            break

    assert comparison.status == "interrupted"
    assert comparison.diverged_at is None
    assert [row["step"] for row in comparison.rows] == [0, 1, 2]
    assert_rows_finite(comparison.rows)
    assert comparison.to_dict()["status"] == "interrupted"
    assert len(comparison.to_dict()["steps"]) == 3


def test_comparison_completed():
    config = RunConfig(task="paper-tanh", L=4, M=8, D=8, K=3)
    cache = LimitCache()
    comparison = Comparison(config, SMALL_LIMIT, cache=cache)
    events = list(comparison.events())

    assert comparison.status == "completed"
    assert [row["step"] for row in comparison.rows] == [0, 1, 2, 3]
    assert all(isinstance(row[column], float) for row in comparison.rows for column in ERROR_COLUMNS)
    assert_rows_finite(comparison.rows)
    # Two limits of six simulated levels each (three levels in two replicas), and K + 1 steps.
    assert [event.stage for event in events] == [STAGE_LIMIT] * 6 + [STAGE_MEAN_ODE] * 6 + [STAGE_TRAINING] * 4
    assert [event.done for event in events] == list(range(1, 17))
    assert events[-1].total == 16
    assert len(cache) == 2
    assert set(comparison.limit_estimates) == {"large-D", "fixed-D"}
    for estimate in comparison.limit_estimates.values():
        assert estimate.depth_points == (4, 8, 16)
        assert estimate.error_estimate > 0


def test_comparison_reuses_cached_limits():
    """A second run with the same settings reads both limits from the cache and gives the same rows."""
    config = RunConfig(task="paper-tanh", L=4, M=8, D=8, K=2)
    cache = LimitCache()
    first = Comparison(config, SMALL_LIMIT, cache=cache).run()
    second = Comparison(config, SMALL_LIMIT, cache=cache)
    events = list(second.events())
    assert [event.stage for event in events] == [STAGE_TRAINING] * 3
    assert second.rows == first.rows


def test_huge_alpha_diverges_at_start():
    # alpha = 1e9 starts with a loss near 1e15, far above 1e6 times the loss of the zero output.
    comparison = Comparison(RunConfig(L=4, M=8, D=8, K=3, alpha=1e9), LimitSettings(8, 96)).run()
    assert comparison.status == "diverged"
    assert comparison.diverged_at == 0
    assert comparison.rows == []


def test_float64_shares_units_with_float32():
    task = get_task("paper-tanh")
    losses = []
    for dtype in (jax_dtype("float32"), jax_dtype("float64")):
        w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, 16, dtype)
        model = MLUResNet(w_embed, w_unembed, depth=4, width=8, key=jax.random.key(1))
        record = next(training_steps(model, task.x_DinxN, task.y_DoutxN, steps=0, learning_rate=1.0,
                                     loss_scale=task.loss_scale))
        losses.append(record.loss)
    # Same draws, so the two losses differ only by float32 rounding.
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
