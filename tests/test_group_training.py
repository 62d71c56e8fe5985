"""train_group against training.train on the networks that Comparison builds, and its parts."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_limits import group_training
from resnet_limits.config import ConfigError, LimitSettings, MemoryBudgetError, RunConfig, jax_dtype
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.group_training import (
    Units,
    backward_pass,
    choose_fold_period,
    forward_pass,
    output_and_loss,
    plan_group,
    train_group,
)
from resnet_limits.models import MLUResNet, residual_stream
from resnet_limits.tasks import coupled_embeddings, get_task
from resnet_limits.training import mean_squared_loss, train

SEEDS = [0, 1, 7]


def load_numpy_baseline():
    path = Path(__file__).parents[1] / "benchmarks" / "numpy_baseline.py"
    spec = importlib.util.spec_from_file_location("numpy_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_trajectory(config: RunConfig, seed: int):
    """Build the network of ``seed`` as Comparison.events does and train it with training.train."""
    config = config.resolved()
    task = get_task(config.task)
    dtype = jax_dtype(config.dtype)
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, dtype)
    model = MLUResNet(w_embed, w_unembed, depth=config.L, width=config.M, key=key_units, alpha=config.alpha,
                      activation=config.activation)
    return train(model, task.x_DinxN, task.y_DoutxN, steps=config.K, learning_rate=config.learning_rate,
                 loss_scale=task.loss_scale)


def relative_error(actual, expected) -> float:
    scale = np.max(np.abs(expected)) if expected.size else 1.0
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected), initial=0.0) / scale)


def assert_same_trajectories(group, references, rtol):
    assert len(group) == len(references)
    for trajectory, reference in zip(group, references):
        assert trajectory.diverged_at == reference.diverged_at
        assert trajectory.loss_K.shape == reference.loss_K.shape
        assert trajectory.f_KxDoutxN.shape == reference.f_KxDoutxN.shape
        assert trajectory.h_KxDxN.shape == reference.h_KxDxN.shape
        assert trajectory.f_KxDoutxN.dtype == reference.f_KxDoutxN.dtype
        assert trajectory.h_KxDxN.dtype == reference.h_KxDxN.dtype
        assert relative_error(trajectory.loss_K, reference.loss_K) < rtol
        assert relative_error(trajectory.f_KxDoutxN, reference.f_KxDoutxN) < rtol
        assert relative_error(trajectory.h_KxDxN, reference.h_KxDxN) < rtol


# (task, L, M, D, K, learning rate); the direct and the factored paths both occur.
SETTINGS = [
    ("paper-tanh", 3, 7, 5, 4, None),
    ("paper-linear", 2, 9, 11, 5, None),
    ("paper-tanh", 4, 40, 30, 6, 0.5),
]


@pytest.mark.parametrize(("task_name", "L", "M", "D", "K", "learning_rate"), SETTINGS)
def test_matches_training_float64(task_name, L, M, D, K, learning_rate):
    config = RunConfig(task=task_name, L=L, M=M, D=D, K=K, learning_rate=learning_rate, dtype="float64")
    group = train_group(get_task(task_name), config, SEEDS)
    assert_same_trajectories(group, [reference_trajectory(config, seed) for seed in SEEDS], rtol=1e-10)


@pytest.mark.parametrize(("task_name", "L", "M", "D", "K", "learning_rate"), SETTINGS)
def test_matches_training_float32(task_name, L, M, D, K, learning_rate):
    # Both trainers round in float32 in different orders; 1e-4 relative to the largest entry is
    # about 100 times the largest difference seen.
    config = RunConfig(task=task_name, L=L, M=M, D=D, K=K, learning_rate=learning_rate, dtype="float32")
    group = train_group(get_task(task_name), config, SEEDS)
    assert_same_trajectories(group, [reference_trajectory(config, seed) for seed in SEEDS], rtol=1e-4)


def test_matches_comparison_losses():
    config = RunConfig(task="paper-tanh", L=4, M=8, D=8, K=3, dtype="float64", seed=5)
    comparison = Comparison(config, LimitSettings(depth_points=4, particles=96), cache=LimitCache()).run()
    (trajectory,) = train_group(get_task("paper-tanh"), config, [5])
    losses = [row["loss"] for row in comparison.rows]
    np.testing.assert_allclose(trajectory.loss_K, losses, rtol=1e-12)


# (activation task, eta, dtype); each diverges before K = 6 with the seeds of SEEDS.
DIVERGING = [
    ("paper-tanh", 100.0, "float64"),
    ("paper-tanh", 1e6, "float32"),
    ("paper-linear", 1e4, "float64"),
    ("paper-linear", 1e4, "float32"),
]


@pytest.mark.parametrize(("task_name", "learning_rate", "dtype"), DIVERGING)
def test_divergence_matches_training(task_name, learning_rate, dtype):
    config = RunConfig(task=task_name, L=4, M=8, D=8, K=6, learning_rate=learning_rate, dtype=dtype)
    group = train_group(get_task(task_name), config, SEEDS)
    references = [reference_trajectory(config, seed) for seed in SEEDS]
    assert all(reference.diverged_at is not None for reference in references)
    assert_same_trajectories(group, references, rtol=1e-10 if dtype == "float64" else 1e-4)


def test_diverged_at_start():
    config = RunConfig(L=3, M=4, D=5, K=3, alpha=1e9)
    (trajectory,) = train_group(get_task("paper-tanh"), config, [0])
    assert trajectory.diverged_at == 0
    assert trajectory.loss_K.shape == (0,)
    assert trajectory.f_KxDoutxN.shape == (0, 5, 10)
    assert trajectory.h_KxDxN.shape == (0, 5, 10)


def random_units(L, M, D, rows, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    shapes = [(L, D, M), (L, D, M), (L, rows, D), (L, rows, M), (L, rows, D), (L, rows, M)]
    scales = [D**0.5, D**0.5, 1.0, 0.1, 1.0, 0.1]
    return Units(*(scale * jax.random.normal(key, shape, dtype) for key, shape, scale in zip(keys, shapes, scales)))


@pytest.mark.parametrize("activation", ["tanh", "identity"])
@pytest.mark.parametrize("rows", [0, 6])
def test_backward_equals_autodiff(activation, rows):
    dtype = jax_dtype("float64")
    L, M, D, N, d_out, alpha = 3, 5, 4, 6, 2, 1.5
    units = random_units(L, M, D, rows, dtype)
    h0_DxN = jax.random.normal(jax.random.key(1), (D, N), dtype)
    w_unembed_DxDout = jax.random.normal(jax.random.key(2), (D, d_out), dtype)
    y_DoutxN = jax.random.normal(jax.random.key(3), (d_out, N), dtype)
    loss_scale = 0.3

    def loss_fn(u_LxDxM, v_LxDxM):
        h_DxN = residual_stream(u_LxDxM, v_LxDxM, h0_DxN, alpha=alpha, activation=activation, metric=1.0 / D)
        return mean_squared_loss(w_unembed_DxDout.T @ h_DxN / D, y_DoutxN, loss_scale)

    u_LxDxM, v_LxDxM = units.dense()
    grad_u, grad_v = jax.grad(loss_fn, argnums=(0, 1))(u_LxDxM, v_LxDxM)

    h_NxD, streams = forward_pass(units, h0_DxN.T, alpha=alpha, activation=activation)
    expected_h = residual_stream(u_LxDxM, v_LxDxM, h0_DxN, alpha=alpha, activation=activation, metric=1.0 / D)
    np.testing.assert_allclose(h_NxD.T, expected_h, rtol=1e-12)
    _, loss, g_NxDout = output_and_loss(h_NxD, w_unembed_DxDout, y_DoutxN.T, loss_scale)
    np.testing.assert_allclose(loss, loss_fn(u_LxDxM, v_LxDxM), rtol=1e-12)
    b_LxNxD, c_LxNxM = backward_pass(units, streams, g_NxDout @ w_unembed_DxDout.T, alpha=alpha,
                                     activation=activation)
    # dJ/dU_l = alpha / (L M D) H_{l-1} (sigma'(P_l) * Q_l)^T and dJ/dV_l = alpha / (L M D) B_l sigma(P_l)^T.
    scale = alpha / (L * M * D)
    np.testing.assert_allclose(scale * jnp.einsum("lnd,lnm->ldm", streams.h_LxNxD, c_LxNxM), grad_u,
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(scale * jnp.einsum("lnd,lnm->ldm", b_LxNxD, streams.s_LxNxM), grad_v,
                               rtol=1e-10, atol=1e-14)


def run_with_fold_period(config: RunConfig, seeds, fold_period: int, monkeypatch):
    monkeypatch.setattr(group_training, "choose_fold_period", lambda *shape: fold_period)
    return train_group(get_task(config.task), config, seeds)


def test_fold_periods_agree(monkeypatch):
    """The direct update (period 1) and factored periods with and without folds give one result."""
    config = RunConfig(task="paper-tanh", L=3, M=6, D=7, K=5, dtype="float64")
    direct = run_with_fold_period(config, SEEDS, 1, monkeypatch)
    for fold_period in (2, 5):
        factored = run_with_fold_period(config, SEEDS, fold_period, monkeypatch)
        assert_same_trajectories(factored, direct, rtol=1e-12)


def test_fold_period_choice():
    assert choose_fold_period(50, 1000, 1000, 10, 15) == 15
    assert choose_fold_period(16, 64, 64, 10, 15) == 1
    assert choose_fold_period(50, 1000, 1000, 10, 1) == 1
    assert 1 < choose_fold_period(50, 2000, 2000, 10, 1000) < 1000
    # Thin products so cheap that a longer period would win: the period stops at the cap.
    assert choose_fold_period(50, 10**5, 10**5, 10, 1000) == group_training.MAX_FOLD_PERIOD


def test_sequential_seeds_match_vmap():
    """A budget that fits one seed at a time gives the same trajectories as all seeds in one vmap."""
    config = RunConfig(L=3, M=5, D=4, K=3, dtype="float64").resolved()
    task = get_task("paper-tanh")
    together = plan_group(config, task.num_samples, task.d_out, len(SEEDS))
    assert together.seeds_per_map == len(SEEDS)
    budget = group_training.estimate_group_bytes(
        config.L, config.M, config.D, task.num_samples, config.K, task.d_out, config.dtype,
        seeds_per_map=1, num_seeds=len(SEEDS), fold_period=together.fold_period,
    )
    one_at_a_time = plan_group(config, task.num_samples, task.d_out, len(SEEDS), budget)
    assert one_at_a_time.seeds_per_map == 1
    first = train_group(task, config, SEEDS)
    second = train_group(task, config, SEEDS, memory_budget_bytes=budget)
    assert_same_trajectories(second, first, rtol=1e-13)


def test_seed_order_and_repeats():
    config = RunConfig(L=3, M=5, D=4, K=2, dtype="float64")
    task = get_task("paper-tanh")
    forward = train_group(task, config, [3, 4])
    backward = train_group(task, config, [4, 3, 4])
    assert_same_trajectories(backward, [forward[1], forward[0], forward[1]], rtol=1e-13)


def test_memory_budget():
    config = RunConfig(L=50, M=1000, D=1000, K=15)
    with pytest.raises(MemoryBudgetError, match="GiB"):
        train_group(get_task("paper-tanh"), config, [0], memory_budget_bytes=2**28)
    plan = plan_group(config.resolved(), 10, 5, num_seeds=4)
    assert plan.seeds_per_map == 1
    assert plan.estimate_bytes > 4 * 50 * 1000 * 1000 * 4


def test_invalid_inputs():
    task = get_task("paper-tanh")
    with pytest.raises(ConfigError, match="config.task"):
        train_group(get_task("paper-linear"), RunConfig(task="paper-tanh"), [0])
    with pytest.raises(ConfigError, match="seed"):
        train_group(task, RunConfig(L=2, M=2, D=2), [0, -1])
    with pytest.raises(ConfigError, match="L"):
        train_group(task, RunConfig(L=0), [0])
    assert train_group(task, RunConfig(L=2, M=2, D=2), []) == []


@pytest.mark.parametrize("task_name", ["paper-tanh", "paper-linear"])
def test_numpy_baseline_matches_library(task_name):
    numpy_baseline = load_numpy_baseline()
    config = RunConfig(task=task_name, L=3, M=6, D=5, K=4, dtype="float64").resolved()
    task = get_task(task_name)
    network = numpy_baseline.initial_network(task, config, seed=2)
    loss_K, f_KxDoutxN, h_KxDxN = numpy_baseline.train(
        network["u"], network["v"], network["w_embed"], network["w_unembed"], task.x_DinxN, task.y_DoutxN,
        steps=config.K, learning_rate=config.learning_rate, alpha=config.alpha, activation=config.activation,
        loss_scale=task.loss_scale,
    )
    reference = reference_trajectory(config, 2)
    (group,) = train_group(task, config, [2])
    np.testing.assert_allclose(loss_K, reference.loss_K, rtol=1e-12)
    np.testing.assert_allclose(f_KxDoutxN, reference.f_KxDoutxN, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(h_KxDxN, group.h_KxDxN, rtol=1e-10, atol=1e-14)


def test_compiled_shapes_are_bounded(monkeypatch):
    monkeypatch.setattr(group_training, "MAX_COMPILED_SHAPES", 2)
    group_training._train_networks.clear_cache()
    task = get_task("paper-tanh")
    first = group_training.train_group(task, RunConfig(L=2, M=3, D=4, K=2), [0])

    sizes = []
    for width in (4, 5, 3):
        group_training.train_group(task, RunConfig(L=2, M=width, D=4, K=2), [0])
        sizes.append(group_training._train_networks._cache_size())
    again = group_training.train_group(task, RunConfig(L=2, M=3, D=4, K=2), [0])

    assert sizes == [2, 1, 2]
    np.testing.assert_array_equal(again[0].loss_K, first[0].loss_K)
