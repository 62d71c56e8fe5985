"""The exact linear limit against closed forms, the particle simulator and finite networks."""

import dataclasses

import jax
import numpy as np
import pytest

from resnet_limits import limits, metrics
from resnet_limits.config import LimitSettings, jax_dtype
from resnet_limits.limits import linear
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import coupled_embeddings, paper_linear, paper_tanh
from resnet_limits.training import train


def _noise_task():
    """Return the paper-tanh data (10 samples, d_in = d_out = 5) with identity units and eta = 0.5."""
    return dataclasses.replace(paper_tanh(), activation="identity", learning_rate=0.5)


def _fixed_dim(task, dim, seed=0):
    """Return the fixed-D problem, basis and float64 embeddings of dimension ``dim``."""
    w_embed, w_unembed = coupled_embeddings(jax.random.key(seed), task, dim, jax_dtype("float64"))
    problem, basis_DxK = limits.fixed_dim_problem(w_embed, w_unembed)
    return problem, basis_DxK, w_embed, w_unembed


def _exact(problem, task, **kwargs):
    return linear.exact_linear_limit(
        problem, task, steps=task.steps, learning_rate=task.learning_rate, alpha=1.0, **kwargs
    )


def _particles(problem, task, depth_points, particles):
    return limits.simulate_limit(
        problem,
        task,
        LimitSettings(depth_points, particles),
        steps=task.steps,
        learning_rate=task.learning_rate,
        alpha=1.0,
        activation="identity",
        dtype="float64",
    )


def _max_gap(trajectory, reference):
    """Return the largest RMS difference of a(1) over the steps 0..K."""
    return max(metrics.rms(h - h_ref) for h, h_ref in zip(trajectory.h_KxDxN, reference.h_KxDxN))


def test_integration_matrix_is_spectral():
    weights_SxS = linear.integration_matrix(16)
    s_S = linear.chebyshev_lobatto_points(16)

    np.testing.assert_allclose(weights_SxS @ np.exp(2 * s_S), (np.exp(2 * s_S) - 1) / 2, atol=1e-14)
    np.testing.assert_allclose(weights_SxS[0], 0.0, atol=1e-15)


def test_large_dim_first_step_closed_form():
    # In the large-D limit C_0 = 0 and C_1 = 2 eta [[0, 0], [y x^T, 0]], so f_1 = 2 eta ||x||^2 y.
    task = paper_linear()
    trajectory = _exact(limits.large_dim_problem(task), task).trajectory
    x, y = task.x_DinxN, task.y_DoutxN
    expected = 2 * task.learning_rate * float(np.sum(x**2)) * y

    np.testing.assert_allclose(trajectory.f_KxDoutxN[0], 0.0, atol=1e-15)
    assert np.linalg.norm(trajectory.f_KxDoutxN[1] - expected) / np.linalg.norm(expected) < 1e-12
    # ||x||^2 = 0.64 + 8.5e-9 for the rounded inputs of the task, so f_1 = 0.128 y only to 1.3e-8.
    assert np.linalg.norm(trajectory.f_KxDoutxN[1] - 0.128 * y) / np.linalg.norm(0.128 * y) < 2e-8


def test_large_dim_output_stays_along_y():
    # With one sample, x and y span the dynamics: f_k = c_k y at every step.
    task = paper_linear()
    trajectory = _exact(limits.large_dim_problem(task), task).trajectory
    ratios_KxDout = trajectory.f_KxDoutxN[:, :, 0] / task.y_DoutxN[:, 0]

    np.testing.assert_allclose(ratios_KxDout, ratios_KxDout[:, :1] * np.ones(3), atol=1e-12)
    assert np.all(np.diff(trajectory.loss_K) < 0)


@pytest.mark.parametrize("case", ["paper-linear large-D", "noise fixed-D D=4"])
def test_agrees_with_particle_simulator(case):
    # Expected particle error: about 1/L' + sqrt(k / (L' M')), which is 4.8e-2 (k = 6) and
    # 4.7e-2 (k = 4 < r = 10) at L' = 32, M' = 512. Measured gaps: 1.7e-3 (paper-linear) and
    # 2.2e-2 (noise task, whose Euler bias is about 0.7 / L').
    if case == "paper-linear large-D":
        task = paper_linear()
        problem = limits.large_dim_problem(task)
    else:
        task = _noise_task()
        problem = _fixed_dim(task, 4)[0]
    depth_points, particles = 32, 512
    exact = _exact(problem, task)
    simulated = _particles(problem, task, depth_points, particles)

    tolerance = 1.0 / depth_points + np.sqrt(problem.span_dim / (depth_points * particles))
    assert simulated.diverged_at is None
    assert _max_gap(simulated, exact.trajectory) < tolerance


def test_particle_gap_is_euler_bias():
    # The particles match the first and second moments of N(0, I_k) at every depth point, and
    # with sigma = identity the dynamics depend on no other moment, so the gap to the exact
    # limit is the Euler bias in s: about 0.053 / L' (measured 0.052 to 0.053), slope -0.99.
    task = paper_linear()
    problem = limits.large_dim_problem(task)
    exact = _exact(problem, task).trajectory
    depth_points = np.array([8, 16, 32])
    gaps = np.array([_max_gap(_particles(problem, task, int(n), 64), exact) for n in depth_points])

    slope = np.polyfit(np.log(depth_points), np.log(gaps), 1)[0]
    assert -1.1 < slope < -0.9
    assert np.all((0.04 < gaps * depth_points) & (gaps * depth_points < 0.07))


def test_particle_gap_independent_of_particles():
    # Moment matching leaves no Monte Carlo error in the linear case: the particle count changes
    # the gap only by rounding (measured below 1e-14).
    task = paper_linear()
    problem = limits.large_dim_problem(task)
    exact = _exact(problem, task).trajectory
    few = _max_gap(_particles(problem, task, 16, 64), exact)
    many = _max_gap(_particles(problem, task, 16, 2048), exact)

    assert abs(few - many) < 1e-10


def test_fixed_dim_network_gap_shrinks():
    # At fixed D the network differs from its Mean ODE by about 1/L + sqrt(D / (L M)). With
    # L = M both terms scale as (L M)^(-1/2). Measured with these seeds (D = 16, N = 10):
    # mean gaps 0.37, 0.18, 0.14, 0.044 at L = M = 16, 32, 64, 128, fitted slope -0.48 in L M.
    task = _noise_task()
    problem, basis_DxK, w_embed, w_unembed = _fixed_dim(task, 16)
    exact = _exact(problem, task)
    reference_h = limits.to_stream(exact.trajectory.h_KxDxN, basis_DxK)
    sizes = np.array([16, 32, 64, 128])
    gaps = []
    for size in sizes:
        per_seed = []
        for seed in range(3):
            network = MLUResNet(
                w_embed, w_unembed, depth=int(size), width=int(size),
                key=jax.random.key(10 + seed), activation="identity",
            )
            trajectory = train(
                network, task.x_DinxN, task.y_DoutxN,
                steps=task.steps, learning_rate=task.learning_rate, loss_scale=task.loss_scale,
            )
            assert trajectory.diverged_at is None
            per_seed.append(
                max(
                    metrics.embedding_error(h, h_ref)
                    for h, h_ref in zip(trajectory.h_KxDxN, reference_h)
                )
            )
        gaps.append(np.mean(per_seed))
    gaps = np.array(gaps)

    slope = np.polyfit(np.log(sizes**2), np.log(gaps), 1)[0]
    assert -0.65 < slope < -0.35
    assert gaps[0] / gaps[-1] > 4  # 8 for an exact (L M)^(-1/2) law
    assert gaps[-1] < 0.07


@pytest.mark.parametrize("case", ["paper-linear large-D", "noise fixed-D D=16"])
def test_node_self_convergence(case):
    # Spectral convergence: the solutions on n and 2n nodes agree to rounding (measured 1e-15).
    if case == "paper-linear large-D":
        task, nodes = paper_linear(), 16
        problem = limits.large_dim_problem(task)
    else:
        task, nodes = _noise_task(), 32
        problem = _fixed_dim(task, 16)[0]
    coarse = _exact(problem, task, nodes=nodes).trajectory
    fine = _exact(problem, task, nodes=2 * nodes).trajectory

    assert np.max(np.abs(coarse.h_KxDxN - fine.h_KxDxN)) < 1e-10
    assert np.max(np.abs(coarse.f_KxDoutxN - fine.f_KxDoutxN)) < 1e-10


def test_error_estimate_bounds_error():
    # On 4 and 8 nodes the fixed-D noise problem is far from converged, so the errors are well
    # above rounding. Measured errors 1.5e-3 and 3.4e-8, estimates 0.50 and 1.5e-3.
    task = _noise_task()
    problem = _fixed_dim(task, 16)[0]
    reference = _exact(problem, task, nodes=64).trajectory
    for nodes in (4, 8):
        solution = _exact(problem, task, nodes=nodes)
        error = max(
            np.max(np.abs(solution.trajectory.h_KxDxN - reference.h_KxDxN)),
            np.max(np.abs(solution.trajectory.f_KxDoutxN - reference.f_KxDoutxN)),
        )
        assert error > 1e-12, nodes
        assert error <= solution.error_estimate, nodes


def test_adaptive_nodes_reach_tolerance():
    task = _noise_task()
    problem = _fixed_dim(task, 16)[0]
    solution = _exact(problem, task)
    scale = max(
        np.max(np.abs(solution.trajectory.h_KxDxN)),
        np.max(np.abs(solution.trajectory.f_KxDoutxN)),
    )

    assert solution.nodes in (16, 32, 64, 128, 256)
    assert solution.error_estimate <= 1e-11 * scale


def test_adaptive_nodes_warn_when_not_converged(monkeypatch):
    monkeypatch.setattr(linear, "_MAX_NODES", 16)
    task = _noise_task()
    problem = _fixed_dim(task, 4)[0]

    with pytest.warns(RuntimeWarning, match="not converged on 16 nodes"):
        solution = _exact(problem, task)
    assert solution.nodes == 16


@pytest.mark.parametrize("kwargs", [dict(nodes=3), dict(steps=-1), dict(alpha=0.0)])
def test_rejects_invalid_settings(kwargs):
    task = paper_linear()
    settings = dict(steps=2, learning_rate=0.1, alpha=1.0) | kwargs

    with pytest.raises(ValueError):
        linear.exact_linear_limit(limits.large_dim_problem(task), task, **settings)
