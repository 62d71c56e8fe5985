"""The Mean ODE simulators against exact values and against finite networks."""

import jax
import numpy as np
import pytest

from resnet_limits import limits, metrics
from resnet_limits.config import LimitSettings, RunConfig, jax_dtype
from resnet_limits.experiment import Comparison, LimitCache
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, paper_linear, paper_tanh
from resnet_limits.training import train


def _tanh_kwargs(task):
    return dict(steps=task.steps, learning_rate=task.learning_rate, alpha=1.0, activation="tanh")


def _networks(task, w_embed, w_unembed, *, depth, width, count):
    """Train ``count`` networks that share the embeddings and draw independent units."""
    return [
        train(
            MLUResNet(w_embed, w_unembed, depth=depth, width=width, key=jax.random.key(100 + i)),
            task.x_DinxN,
            task.y_DoutxN,
            steps=task.steps,
            learning_rate=task.learning_rate,
            loss_scale=task.loss_scale,
        )
        for i in range(count)
    ]


def _gap_ratio(networks, reference_h, step):
    """Mean error against the reference over the mean gap between independent pairs."""
    to_reference = np.mean([metrics.embedding_error(n.h_KxDxN[step], reference_h[step]) for n in networks])
    between = np.mean(
        [
            metrics.embedding_error(networks[i].h_KxDxN[step], networks[i + 1].h_KxDxN[step])
            for i in range(0, len(networks) - 1, 2)
        ]
    )
    return to_reference / between


def test_large_dim_linear_first_step():
    # In the large-D limit of paper-linear, f_1 = 2 eta ||x||^2 y = 0.128 y exactly.
    task = paper_linear()
    trajectory = limits.simulate_limit(
        limits.large_dim_problem(task),
        task,
        LimitSettings(depth_points=64, particles=32768),
        steps=2,
        learning_rate=0.1,
        alpha=1.0,
        activation="identity",
        dtype="float64",
    )
    expected = 0.128 * task.y_DoutxN
    relative_error = np.linalg.norm(trajectory.f_KxDoutxN[1] - expected) / np.linalg.norm(expected)
    # Monte Carlo error with 2 million particles, measured at about 1e-3.
    assert relative_error < 5e-3


def test_antithetic_pairs_start_at_rest():
    task = paper_linear()
    trajectory = limits.simulate_limit(
        limits.large_dim_problem(task),
        task,
        LimitSettings(depth_points=8, particles=64),
        steps=0,
        learning_rate=0.1,
        alpha=1.0,
        activation="identity",
        dtype="float64",
    )
    # Pairs (u, v) and (u, -v) cancel the drift, so a(1) = a(0) = (x, 0) and f_0 = 0.
    np.testing.assert_allclose(trajectory.f_KxDoutxN[0], 0.0, atol=1e-14)
    np.testing.assert_allclose(trajectory.h_KxDxN[0][:3], task.x_DinxN, atol=1e-14)


def test_fixed_dim_basis_spans_embeddings():
    task = paper_tanh()
    dtype = jax_dtype("float64")
    w_embed, w_unembed = coupled_embeddings(jax.random.key(3), task, 40, dtype)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)

    assert basis_DxK.shape == (40, 10)
    np.testing.assert_allclose(basis_DxK.T @ basis_DxK / 40, np.eye(10), atol=1e-12)
    np.testing.assert_allclose(basis_DxK @ problem.input_KxDin, w_embed, atol=1e-12)
    np.testing.assert_allclose(basis_DxK @ problem.readout_KxDout, w_unembed, atol=1e-12)


def test_fixed_dim_rank_below_span():
    task = paper_tanh()
    w_embed, w_unembed = coupled_embeddings(jax.random.key(3), task, 4, jax_dtype("float64"))
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)

    assert basis_DxK.shape == (4, 4)
    assert problem.span_dim == 4


def test_network_gap_matches_mean_ode():
    # A network is the Mean ODE plus a fluctuation of size sqrt(D / (L M)); two independent
    # networks differ by sqrt(2) times that, so the ratio is about 1/sqrt(2) = 0.707.
    # Measured: 0.70 to 0.72 at steps 0, 5 and 15 with these seeds.
    task = paper_tanh()
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, 100)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    mean_ode = limits.simulate_limit(problem, task, LimitSettings(128, 8192), **_tanh_kwargs(task))
    reference_h = limits.to_stream(mean_ode.h_KxDxN, basis_DxK)
    networks = _networks(task, w_embed, w_unembed, depth=50, width=400, count=6)

    for step in (5, 15):
        assert 0.62 < _gap_ratio(networks, reference_h, step) < 0.80, step


def test_network_gap_below_span_rank():
    # D = 4 < r = 10: the Mean ODE lives on a 4-dimensional span. The simulator uses the
    # network's depth so that both share the Euler bias in s and only the width fluctuation is
    # left. Measured ratios: 0.65 at step 5 and 0.70 at step 15.
    task = paper_tanh()
    w_embed, w_unembed = coupled_embeddings(jax.random.key(0), task, 4)
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    mean_ode = limits.simulate_limit(problem, task, LimitSettings(32, 32768), **_tanh_kwargs(task))
    reference_h = limits.to_stream(mean_ode.h_KxDxN, basis_DxK)
    networks = _networks(task, w_embed, w_unembed, depth=32, width=256, count=6)

    for step in (5, 15):
        assert 0.55 < _gap_ratio(networks, reference_h, step) < 0.85, step


def test_fixed_dim_converges_to_large_dim():
    # The Gram matrix of the embeddings deviates from its mean by O(1/sqrt(D)), and so does the
    # fixed-D Mean ODE from the large-D limit. Fitted slope with these seeds: -0.45.
    task = paper_tanh()
    settings = LimitSettings(64, 8192)
    large = limits.simulate_limit(limits.large_dim_problem(task), task, settings, **_tanh_kwargs(task))
    dims = (16, 64, 256, 1024)
    errors = []
    for dim in dims:
        per_seed = []
        for seed in range(3):
            w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), task, dim)
            problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
            fixed = limits.simulate_limit(problem, task, settings, **_tanh_kwargs(task))
            fixed_h = limits.to_stream(fixed.h_KxDxN[-1:], basis_DxK)[0]
            large_h = limits.to_stream(large.h_KxDxN[-1:], limits.large_dim_basis(task, w_embed, w_unembed))[0]
            per_seed.append(metrics.embedding_error(fixed_h, large_h))
        errors.append(np.mean(per_seed))

    slope = np.polyfit(np.log(dims), np.log(errors), 1)[0]
    assert -0.65 < slope < -0.35


def test_limit_cache_ignores_depth_and_width():
    cache = LimitCache()
    Comparison(RunConfig(L=2, M=4, D=8, K=2), LimitSettings(8, 96), cache=cache).run()
    assert len(cache) == 2
    Comparison(RunConfig(L=4, M=8, D=8, K=2), LimitSettings(8, 96), cache=cache).run()
    assert len(cache) == 2
    Comparison(RunConfig(L=4, M=8, D=16, K=2), LimitSettings(8, 96), cache=cache).run()
    assert len(cache) == 3  # a new D changes only the fixed-D Mean ODE


@pytest.mark.parametrize("particles", [0, 7])
def test_limit_settings_reject_particles(particles):
    with pytest.raises(ValueError, match="particles"):
        LimitSettings(8, particles).validate()
