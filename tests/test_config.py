"""Validation of run settings and the memory estimate."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits.config import (
    ConfigError,
    LimitSettings,
    MemoryBudgetError,
    RunConfig,
    check_memory,
    estimate_training_bytes,
    jax_dtype,
)
from resnet_limits.tasks import get_task

BAD_INTEGERS = [0, -1, 2.5, True, "3"]


@pytest.mark.parametrize("value", BAD_INTEGERS, ids=repr)
@pytest.mark.parametrize(("field", "option"), [("L", "--depth"), ("M", "--width"), ("D", "--dim"), ("K", "--steps")])
def test_shape_rejects_non_positive_integer(field, option, value):
    config = RunConfig(**{field: value})
    with pytest.raises(ConfigError) as error:
        config.resolved()
    message = str(error.value)
    assert field in message
    assert repr(value) in message or str(value) in message
    assert option in message


@pytest.mark.parametrize("value", [0, -1, 0.0, -0.5, math.nan, math.inf, -math.inf], ids=repr)
def test_learning_rate_rejects_invalid(value):
    with pytest.raises(ConfigError) as error:
        RunConfig(learning_rate=value).resolved()
    message = str(error.value)
    assert "learning_rate" in message
    assert f"got {value}" in message
    assert "--lr" in message


@pytest.mark.parametrize("value", [0, -2.0, math.nan, math.inf], ids=repr)
def test_alpha_rejects_invalid(value):
    with pytest.raises(ConfigError, match="--alpha"):
        RunConfig(alpha=value).resolved()


@pytest.mark.parametrize("value", ["0.1", True], ids=repr)
def test_learning_rate_rejects_non_number(value):
    with pytest.raises(ConfigError, match="--lr"):
        RunConfig(learning_rate=value).resolved()


def test_resolved_fills_task_defaults():
    config = RunConfig(task="paper-linear", L=2, M=3, D=4).resolved()
    assert config.K == 15
    assert config.learning_rate == 0.1
    assert config.alpha == 1.0
    assert config.activation == "identity"
    assert config.num_parameters == 24


def test_resolved_keeps_given_values():
    config = RunConfig(task="paper-tanh", K=3, learning_rate=0.25, alpha=2.0, activation="identity").resolved()
    assert (config.K, config.learning_rate, config.alpha, config.activation) == (3, 0.25, 2.0, "identity")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"task": "mnist"}, "unknown task 'mnist'; choose one of: paper-linear, paper-tanh, seq-tanh"),
        ({"activation": "relu"}, "unknown activation 'relu'; choose one of: tanh, identity"),
        ({"dtype": "float16"}, "unknown dtype 'float16'; choose one of: float32, float64"),
        ({"seed": -1}, "seed must be an integer from 0 to 4294967295, got -1; set --seed in that range"),
        ({"seed": 1.5}, "seed must be an integer from 0 to 4294967295, got 1.5; set --seed in that range"),
        ({"seed": 2**32}, "seed must be an integer from 0 to 4294967295, got 4294967296; set --seed in that range"),
    ],
    ids=["task", "activation", "dtype", "seed-negative", "seed-float", "seed-too-large"],
)
def test_run_config_rejects_invalid_values(changes, expected):
    with pytest.raises(ConfigError) as error:
        RunConfig(**changes).resolved()
    assert str(error.value) == expected


@pytest.mark.parametrize("particles", [1, 7, 4095])
def test_particles_must_be_even(particles):
    with pytest.raises(ConfigError) as error:
        LimitSettings(particles=particles).validate()
    message = str(error.value)
    assert "even" in message
    assert str(particles) in message
    assert "--limit-particles" in message


@pytest.mark.parametrize(
    ("changes", "option"),
    [({"particles": 0}, "--limit-particles"), ({"depth_points": 0}, "--limit-depth"), ({"depth_points": 2.0}, "--limit-depth")],
)
def test_limit_settings_reject_non_positive(changes, option):
    with pytest.raises(ConfigError, match=option):
        LimitSettings(**changes).validate()


def test_limit_settings_accept_even():
    settings = LimitSettings(depth_points=3, particles=2)
    assert settings.validate() is settings


def test_training_estimate_literal():
    # 6 L D M + 2 L N (D + 2 M) + (K + 1) D N = 144 + 200 + 40 floats.
    assert estimate_training_bytes(2, 3, 4, 5, 1, "float64") == 384 * 8
    assert estimate_training_bytes(2, 3, 4, 5, 1, "float32") == 384 * 4


def test_memory_over_budget():
    config = RunConfig(L=64, M=1024, D=1024).resolved()
    task = get_task(config.task)
    settings = LimitSettings()
    estimate = estimate_training_bytes(64, 1024, 1024, task.num_samples, config.K, "float32")
    assert estimate > 2**30  # this shape needs about 1.5 GiB

    with pytest.raises(MemoryBudgetError) as error:
        check_memory(config, task.num_samples, settings, task.span_dim, budget_bytes=2**30)
    message = str(error.value)
    assert f"{estimate / 2**30:.2f} GiB" in message
    assert "1.00 GiB" in message
    assert "--memory-budget" in message
    assert isinstance(error.value, ConfigError)


def test_tiny_budget_shown_with_digits():
    config = RunConfig(L=4, M=8, D=8).resolved()
    task = get_task(config.task)
    with pytest.raises(MemoryBudgetError, match=r"over the memory budget of 9\.3e-10 GiB;"):
        check_memory(config, task.num_samples, LimitSettings(), task.span_dim, budget_bytes=1)


def test_memory_counts_simulator():
    """The limit simulator's particles count against the budget like a network's units."""
    config = RunConfig(L=2, M=2, D=2).resolved()
    task = get_task(config.task)
    settings = LimitSettings(depth_points=512, particles=2**20)
    with pytest.raises(MemoryBudgetError, match="GiB"):
        check_memory(config, task.num_samples, settings, task.span_dim, budget_bytes=2**30)


def test_memory_under_budget_returns_estimate():
    """Below the budget the estimate is the larger of the network's and the simulator's."""
    config = RunConfig(L=4, M=8, D=8, K=2).resolved()
    task = get_task(config.task)
    settings = LimitSettings(depth_points=16, particles=64)
    network = estimate_training_bytes(4, 8, 8, task.num_samples, 2, "float32")
    simulator = estimate_training_bytes(16, 64, task.span_dim, task.num_samples, 2, "float32")
    assert simulator > network
    assert check_memory(config, task.num_samples, settings, task.span_dim) == simulator

    large_config = RunConfig(L=64, M=64, D=64, K=2).resolved()
    network = estimate_training_bytes(64, 64, 64, task.num_samples, 2, "float32")
    assert check_memory(large_config, task.num_samples, settings, task.span_dim) == network


def test_comparison_checks_memory():
    from resnet_limits.experiment import Comparison

    with pytest.raises(MemoryBudgetError, match="GiB"):
        Comparison(RunConfig(L=4, M=8, D=8, K=2), LimitSettings(4, 16), memory_budget_bytes=1000)


def test_jax_dtype():
    assert jax_dtype("float32") == jnp.float32
    assert jax_dtype("float64") == jnp.float64
    with pytest.raises(ConfigError, match="choose one of: float32, float64"):
        jax_dtype("bfloat16")


def test_numpy_scalars_accepted_as_plain_numbers():
    config = RunConfig(L=np.int64(4), M=np.int32(8), D=np.int64(16), learning_rate=np.float32(0.5)).resolved()
    assert type(config.L) is int
    assert type(config.M) is int
    assert type(config.learning_rate) is float
    assert config.learning_rate == 0.5
