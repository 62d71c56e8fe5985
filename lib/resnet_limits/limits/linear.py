"""The exact Mean ODE limit of a linear MLU ResNet (sigma = identity), solved spectrally in s.

The limit is a ``SpanProblem``: coefficients a(s, x) in R^k of the stream, units u, v ~ N(0, I_k)
i.i.d. at every depth s in [0, 1], pre-activations p = u^T a and q = v^T beta, and

    a_k(0, x) = input_KxDin @ x,             d a_k / ds = alpha E[v_k sigma(p_k)]
    beta_k(1, x) = readout_KxDout @ g_k(x),  -d beta_k / ds = alpha E[u_k sigma'(p_k) q_k]
    u_{k+1} = u_k - (eta / alpha) sum_x a_k(s, x) sigma'(p_k) q_k
    v_{k+1} = v_k - (eta / alpha) sum_x beta_k(s, x) sigma(p_k)

with f_k = readout_KxDout^T a_k(1) and g_k = dJ/df = c / N (f_k - y). With sigma = identity the
units stay linear in their initial values, u_k = P_k u_0 + Q_k v_0 and v_k = R_k u_0 + T_k v_0,
with deterministic k x k matrices P, Q, R, T at every s (P_0 = T_0 = I, Q_0 = R_0 = 0). The
expectation over units is then the correlation C_k(s) = E[v_k u_k^T] = R_k P_k^T + T_k Q_k^T and

    d a_k / ds = alpha C_k(s) a_k,           -d beta_k / ds = alpha C_k(s)^T beta_k.

With S_k(s) = sum_x a_k(s, x) beta_k(s, x)^T the updates u_{k+1} = u_k - (eta / alpha) S_k v_k
and v_{k+1} = v_k - (eta / alpha) S_k^T u_k give

    P_{k+1} = P_k - (eta / alpha) S_k R_k,      Q_{k+1} = Q_k - (eta / alpha) S_k T_k,
    R_{k+1} = R_k - (eta / alpha) S_k^T P_k,    T_{k+1} = T_k - (eta / alpha) S_k^T Q_k.

Everything except the two linear ODEs is pointwise in s. Their coefficients are entire functions
of s, so Chebyshev collocation converges faster than any power of the number of nodes n. Both
ODEs are solved in integral form on the n Chebyshev-Lobatto points s_i: a(s_i) = a(0) +
sum_j W_ij alpha C(s_j) a(s_j), where W is the spectral integration matrix, which is one dense
linear system of size n k with the N samples as right-hand sides.

Array suffixes: S is the number n of nodes in s, K the span dimension k, N the number of samples.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from numpy.polynomial import chebyshev

from resnet_limits.limits.mean_ode import SpanProblem
from resnet_limits.tasks import Task
from resnet_limits.training import DIVERGENCE_FACTOR, StepRecord, Trajectory

# Node counts tried when ``nodes`` is None: 16, 32, ... up to this maximum.
_FIRST_NODES = 16
_MAX_NODES = 256


@dataclasses.dataclass(frozen=True)
class LinearLimitSolution:
    """The exact linear limit on ``nodes`` Chebyshev nodes in s, and an estimate of its error.

    ``trajectory`` has the same layout as the particle simulator's: ``h_KxDxN`` contains the
    coefficients a(1) (k x N) of each step. ``error_estimate`` is the largest absolute difference
    of any entry of f or a(1), over all recorded steps, between this solution and the solution on
    ``nodes // 2`` nodes. Because the error decays faster than any power of n, that difference is
    an upper estimate of the error of this solution. It is infinite when the two solutions
    diverge at different steps.
    """

    trajectory: Trajectory
    nodes: int
    error_estimate: float


def chebyshev_lobatto_points(nodes: int) -> np.ndarray:
    """Return the ``nodes`` Chebyshev-Lobatto points (1 - cos(pi i / (n - 1))) / 2 on [0, 1]."""
    return (1.0 - np.cos(np.pi * np.arange(nodes) / (nodes - 1))) / 2.0


def integration_matrix(nodes: int) -> np.ndarray:
    """Return W (n x n) with sum_j W_ij y(s_j) = integral of y from 0 to s_i on the Lobatto points.

    The integral is exact for polynomials y of degree below n: W maps nodal values to Chebyshev
    coefficients, integrates those and evaluates the result at the nodes.
    """
    x_S = 2.0 * chebyshev_lobatto_points(nodes) - 1.0
    values_to_coefficients = np.linalg.inv(chebyshev.chebvander(x_S, nodes - 1))
    integrate = chebyshev.chebint(np.eye(nodes), lbnd=-1.0, axis=0)  # (n + 1) x n
    # ds = dx / 2 on the map x = 2 s - 1 from [0, 1] to [-1, 1].
    return 0.5 * chebyshev.chebvander(x_S, nodes) @ integrate @ values_to_coefficients


def solve_linear_ode(
    weights_SxS: np.ndarray, drift_SxKxK: np.ndarray, start_KxN: np.ndarray
) -> np.ndarray:
    """Solve y(s_i) = y_start + sum_j weights_ij drift(s_j) y(s_j) for y at the nodes (S x K x N).

    With the forward integration matrix W this is dy/ds = drift(s) y, y(0) = y_start. With
    W[-1] - W it is -dy/ds = drift(s) y, y(1) = y_start.
    """
    nodes, span_dim, _ = drift_SxKxK.shape
    size = nodes * span_dim
    system = np.eye(size) - np.einsum("ij,jpq->ipjq", weights_SxS, drift_SxKxK).reshape(size, size)
    rhs = np.tile(start_KxN, (nodes, 1))
    return np.linalg.solve(system, rhs).reshape(nodes, span_dim, -1)


def _linear_limit_on_nodes(
    problem: SpanProblem, task: Task, *, steps: int, learning_rate: float, alpha: float, nodes: int
) -> Trajectory:
    """Run the recursion of the module docstring for P, Q, R, T on ``nodes`` points in s."""
    x_DinxN = np.asarray(task.x_DinxN, np.float64)
    y_DoutxN = np.asarray(task.y_DoutxN, np.float64)
    input_KxDin = np.asarray(problem.input_KxDin, np.float64)
    readout_KxDout = np.asarray(problem.readout_KxDout, np.float64)
    span_dim = problem.span_dim
    num_samples = x_DinxN.shape[1]
    unit_rate = learning_rate / alpha

    forward_SxS = integration_matrix(nodes)
    backward_SxS = forward_SxS[-1][None, :] - forward_SxS  # integral from s_i to 1
    identity_SxKxK = np.broadcast_to(np.eye(span_dim), (nodes, span_dim, span_dim))
    p_SxKxK = identity_SxKxK.copy()
    q_SxKxK = np.zeros_like(p_SxKxK)
    r_SxKxK = np.zeros_like(p_SxKxK)
    t_SxKxK = identity_SxKxK.copy()
    a0_KxN = input_KxDin @ x_DinxN

    records = []
    divergence_level = None
    for step in range(steps + 1):
        # C_k = E[v_k u_k^T] = R_k P_k^T + T_k Q_k^T at every node.
        c_SxKxK = r_SxKxK @ p_SxKxK.transpose(0, 2, 1) + t_SxKxK @ q_SxKxK.transpose(0, 2, 1)
        with np.errstate(all="ignore"):
            a_SxKxN = solve_linear_ode(forward_SxS, alpha * c_SxKxK, a0_KxN)
            f_DoutxN = readout_KxDout.T @ a_SxKxN[-1]
            loss = float(task.loss_scale / (2 * num_samples) * np.sum((f_DoutxN - y_DoutxN) ** 2))
        if divergence_level is None:
            divergence_level = DIVERGENCE_FACTOR * max(loss, np.finfo(np.float32).tiny)
        diverged = not (np.isfinite(loss) and np.all(np.isfinite(a_SxKxN))) or loss > divergence_level
        last = StepRecord(step, loss, f_DoutxN, a_SxKxN[-1], diverged)
        if diverged:
            break
        records.append(last)
        if step == steps:
            break

        g_DoutxN = task.loss_scale / num_samples * (f_DoutxN - y_DoutxN)
        beta1_KxN = readout_KxDout @ g_DoutxN
        beta_SxKxN = solve_linear_ode(backward_SxS, alpha * c_SxKxK.transpose(0, 2, 1), beta1_KxN)
        # S_k(s) = sum_x a_k(s, x) beta_k(s, x)^T. All four updates use the step-k matrices.
        s_SxKxK = a_SxKxN @ beta_SxKxN.transpose(0, 2, 1)
        s_transposed_SxKxK = s_SxKxK.transpose(0, 2, 1)
        p_SxKxK, q_SxKxK, r_SxKxK, t_SxKxK = (
            p_SxKxK - unit_rate * s_SxKxK @ r_SxKxK,
            q_SxKxK - unit_rate * s_SxKxK @ t_SxKxK,
            r_SxKxK - unit_rate * s_transposed_SxKxK @ p_SxKxK,
            t_SxKxK - unit_rate * s_transposed_SxKxK @ q_SxKxK,
        )
    return Trajectory.from_records(records, last=last)


def _trajectory_difference(coarse: Trajectory, fine: Trajectory) -> float:
    """Return the largest absolute difference of f and a(1) over the steps of both trajectories."""
    if coarse.diverged_at != fine.diverged_at or len(coarse.loss_K) != len(fine.loss_K):
        return float("inf")
    if len(fine.loss_K) == 0:
        return 0.0
    return float(
        max(
            np.max(np.abs(coarse.f_KxDoutxN - fine.f_KxDoutxN)),
            np.max(np.abs(coarse.h_KxDxN - fine.h_KxDxN)),
        )
    )


def _trajectory_scale(trajectory: Trajectory) -> float:
    """Return the largest absolute entry of f and a(1), at least 1e-300."""
    if len(trajectory.loss_K) == 0:
        return 1e-300
    largest = max(np.max(np.abs(trajectory.f_KxDoutxN)), np.max(np.abs(trajectory.h_KxDxN)))
    return float(max(largest, 1e-300))


def exact_linear_limit(
    problem: SpanProblem,
    task: Task,
    *,
    steps: int,
    learning_rate: float,
    alpha: float,
    nodes: int | None = None,
    tolerance: float = 1e-11,
) -> LinearLimitSolution:
    """Solve the limit of ``problem`` with sigma = identity, for steps 0..K, in float64.

    ``problem`` is a large-D or fixed-D ``SpanProblem``, and the result matches what
    ``simulate_limit`` with activation "identity" approximates with particles. With ``nodes``
    given, the solution uses that many Chebyshev nodes (at least 4). With ``nodes`` None, n runs
    through 16, 32, ... up to 256 until ``error_estimate`` is at most ``tolerance`` times the
    largest absolute entry of f and a(1). A RuntimeWarning is issued when 256 nodes do not reach it.
    Divergence follows the rule of ``training.training_steps``.
    """
    if steps < 0:
        raise ValueError(f"steps must be at least 0, got {steps}")
    if alpha == 0:
        raise ValueError("alpha must be nonzero: the unit updates scale with eta / alpha")
    if nodes is not None and nodes < 4:
        raise ValueError(f"nodes must be at least 4, got {nodes}")

    def solve(count: int) -> Trajectory:
        return _linear_limit_on_nodes(
            problem, task, steps=steps, learning_rate=learning_rate, alpha=alpha, nodes=count
        )

    if nodes is not None:
        fine = solve(nodes)
        estimate = _trajectory_difference(solve(nodes // 2), fine)
        return LinearLimitSolution(trajectory=fine, nodes=nodes, error_estimate=estimate)

    count = _FIRST_NODES
    coarse, fine = solve(count // 2), solve(count)
    estimate = _trajectory_difference(coarse, fine)
    while estimate > tolerance * _trajectory_scale(fine) and count < _MAX_NODES:
        count *= 2
        coarse, fine = fine, solve(count)
        estimate = _trajectory_difference(coarse, fine)
    if estimate > tolerance * _trajectory_scale(fine):
        warnings.warn(
            f"exact linear limit not converged on {count} nodes: estimated error {estimate:.3g} "
            f"exceeds the tolerance {tolerance:.3g} relative to the largest entry of f and a(1). "
            "Pass a larger nodes value.",
            RuntimeWarning,
            stacklevel=2,
        )
    return LinearLimitSolution(trajectory=fine, nodes=count, error_estimate=estimate)
