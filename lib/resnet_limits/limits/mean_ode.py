"""The embedding-span Mean ODE: the L, M -> infinity limit at fixed D, and the large-D limit.

Every forward vector h(s, x) and backward vector b(s, x) of the limit stays in the span of the
columns of E = [W_E, W_U] (D x r, r = d_in + d_out). A unit (u, v) acts only through its
projections on that span, which are Gaussian, so the limit is itself the Mean ODE of a ResNet on
a stream of dimension k = rank(E) <= r with infinitely many units (Chizat, "The Hidden Width of
Deep ResNets", arXiv 2509.10167; Chaintron, Chizat and Maass, arXiv 2603.18168).

This module writes that stream in a basis B of span(E) with B^T B / D = I_k, so that the Gram
matrix of the reduced problem is the identity and the units are N(0, I_k). In the Gram form with
G = E^T E / D and units N(0, G^{-1}) the dynamics are the same up to this change of basis; the
orthonormal basis also covers D < r, where G is singular.

* Fixed-D Mean ODE: B is an orthonormal basis of the network's own span(E), scaled by sqrt(D).
  The stream starts at a(0) = B^T W_E x / D and the output is f = (B^T W_U / D)^T a(1).
* Large-D limit: G is replaced by its expectation diag(s_E^2 I, s_U^2 I), so in the basis
  B = E diag(s)^{-1} the stream starts at (s_E x, 0) and f = s_U a_out(1). A finite network is
  compared with B a(1) built from its own E.

The expectation over units is a Monte Carlo average over M' particles at each of L' depth
points, with antithetic pairs (u, v) and (u, -v) so that the initial drift is exactly zero. The
particle system is an ``MLUResNet`` with metric 1, trained by the same gradient descent, whose
Euler step in depth s = l / L' and finite particle count give an error of about
1/L' + sqrt(k / (L' M')).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_limits.config import LimitSettings, jax_dtype
from resnet_limits.models import MLUResNet
from resnet_limits.tasks import Task
from resnet_limits.training import StepRecord, Trajectory, training_steps

FIXED_DIM = "fixed-D"
LARGE_DIM = "large-D"


@dataclasses.dataclass(frozen=True, eq=False)
class SpanProblem:
    """A Mean ODE on the coefficients a in R^k of the stream h = B a, with B^T B / D = I_k."""

    kind: str  # FIXED_DIM or LARGE_DIM
    input_KxDin: np.ndarray  # a(0, x) = input_KxDin @ x
    readout_KxDout: np.ndarray  # f = readout_KxDout^T a(1)

    @property
    def span_dim(self) -> int:
        return self.input_KxDin.shape[0]

    def cache_key(self) -> tuple:
        """Return a hashable key of everything the limit's trajectory depends on in the problem."""
        return (
            self.kind,
            self.input_KxDin.shape,
            self.readout_KxDout.shape,
            self.input_KxDin.astype(np.float64).tobytes(),
            self.readout_KxDout.astype(np.float64).tobytes(),
        )


def fixed_dim_problem(w_embed_DxDin, w_unembed_DxDout) -> tuple[SpanProblem, np.ndarray]:
    """Return the fixed-D Mean ODE of a network's embeddings and its basis B (D x k).

    B = sqrt(D) times the left singular vectors of E = [W_E, W_U] whose singular values are above
    the rounding level, so k = rank(E).
    """
    w_embed = np.asarray(w_embed_DxDin, np.float64)
    w_unembed = np.asarray(w_unembed_DxDout, np.float64)
    dim = w_embed.shape[0]
    e_DxR = np.concatenate([w_embed, w_unembed], axis=1)
    left_DxR, singular_values, _ = np.linalg.svd(e_DxR, full_matrices=False)
    tolerance = max(e_DxR.shape) * np.finfo(np.float64).eps * singular_values[0]
    rank = int(np.sum(singular_values > tolerance))
    basis_DxK = np.sqrt(dim) * left_DxR[:, :rank]
    problem = SpanProblem(
        kind=FIXED_DIM,
        input_KxDin=basis_DxK.T @ w_embed / dim,
        readout_KxDout=basis_DxK.T @ w_unembed / dim,
    )
    return problem, basis_DxK


def large_dim_problem(task: Task) -> SpanProblem:
    """Return the large-D limit of ``task``: the Mean ODE with G = diag(s_E^2 I, s_U^2 I)."""
    d_in, d_out = task.d_in, task.d_out
    input_KxDin = np.zeros((d_in + d_out, d_in))
    input_KxDin[:d_in] = task.embedding_std * np.eye(d_in)
    readout_KxDout = np.zeros((d_in + d_out, d_out))
    readout_KxDout[d_in:] = task.unembedding_std * np.eye(d_out)
    return SpanProblem(kind=LARGE_DIM, input_KxDin=input_KxDin, readout_KxDout=readout_KxDout)


def large_dim_basis(task: Task, w_embed_DxDin, w_unembed_DxDout) -> np.ndarray:
    """Return B = E diag(s_E, .., s_U, ..)^{-1}, which maps large-D coefficients to R^D."""
    return np.concatenate(
        [
            np.asarray(w_embed_DxDin, np.float64) / task.embedding_std,
            np.asarray(w_unembed_DxDout, np.float64) / task.unembedding_std,
        ],
        axis=1,
    )


def match_moments(z_LxKxM: jax.Array) -> jax.Array:
    """Center and whiten the particles at each depth point: mean 0, covariance exactly I_k."""
    z_LxKxM = z_LxKxM - jnp.mean(z_LxKxM, axis=2, keepdims=True)
    covariance_LxKxK = jnp.einsum("lkm,ljm->lkj", z_LxKxM, z_LxKxM) / z_LxKxM.shape[2]
    eigenvalues_LxK, eigenvectors_LxKxK = jnp.linalg.eigh(covariance_LxKxK)
    inverse_root_LxKxK = jnp.einsum(
        "lij,lj,lkj->lik", eigenvectors_LxKxK, eigenvalues_LxK**-0.5, eigenvectors_LxKxK
    )
    return jnp.einsum("lij,ljm->lim", inverse_root_LxKxK, z_LxKxM)


def antithetic_units(key: jax.Array, settings: LimitSettings, span_dim: int, dtype):
    """Draw units u, v ~ N(0, I_k) at L' depth points as M'/2 pairs (u, v) and (u, -v).

    The M'/2 draws of u and of v are centred and whitened at each depth point, so the particles
    reproduce the first and second moments of N(0, I_k) exactly, and the pairs make every moment
    odd in v vanish. With the identity activation the drift depends on these moments alone, so
    the only error left is the Euler step in s.
    """
    half_width = settings.particles // 2
    if half_width <= span_dim:
        raise ValueError(
            f"particles must exceed 2 k = {2 * span_dim} to match moments in dimension k = {span_dim}, "
            f"got {settings.particles}; raise the particle count"
        )
    key_u, key_v = jax.random.split(key)
    half = (settings.depth_points, span_dim, half_width)
    # Draws are in float32, as for the networks, and the moments are matched in ``dtype``.
    u_half = match_moments(jax.random.normal(key_u, half, jnp.float32).astype(dtype))
    v_half = match_moments(jax.random.normal(key_v, half, jnp.float32).astype(dtype))
    u_LxKxM = jnp.concatenate([u_half, u_half], axis=2)
    v_LxKxM = jnp.concatenate([v_half, -v_half], axis=2)
    return u_LxKxM, v_LxKxM


def particle_system(
    problem: SpanProblem,
    settings: LimitSettings,
    *,
    alpha: float,
    activation: str,
    dtype: str = "float32",
    units: tuple[jax.Array, jax.Array] | None = None,
) -> MLUResNet:
    """Build the particle ResNet (metric 1, k-dimensional stream) that simulates ``problem``.

    The units are drawn by ``antithetic_units`` unless ``units`` gives them (L' x k x M' each).
    """
    settings.validate()
    array_dtype = jax_dtype(dtype)
    if units is None:
        units = antithetic_units(jax.random.key(settings.seed), settings, problem.span_dim, array_dtype)
    return MLUResNet(
        jnp.asarray(problem.input_KxDin, array_dtype),
        jnp.asarray(problem.readout_KxDout, array_dtype),
        depth=settings.depth_points,
        width=settings.particles,
        alpha=alpha,
        activation=activation,
        metric=1.0,
        units=units,
    )


def limit_steps(
    problem: SpanProblem,
    task: Task,
    settings: LimitSettings,
    *,
    steps: int,
    learning_rate: float,
    alpha: float,
    activation: str,
    dtype: str = "float32",
) -> Iterator[StepRecord]:
    """Simulate the limit and yield each step 0..K; ``h_DxN`` of a record is a(1) (k x N)."""
    system = particle_system(problem, settings, alpha=alpha, activation=activation, dtype=dtype)
    yield from training_steps(
        system,
        task.x_DinxN,
        task.y_DoutxN,
        steps=steps,
        learning_rate=learning_rate,
        loss_scale=task.loss_scale,
    )


def simulate_limit(problem: SpanProblem, task: Task, settings: LimitSettings, **kwargs) -> Trajectory:
    """Return the limit's trajectory: loss, f and the coefficients a(1) (in ``h_KxDxN``) per step."""
    records = []
    for record in limit_steps(problem, task, settings, **kwargs):
        if not record.diverged:
            records.append(record)
    return Trajectory.from_records(records, last=record)


def to_stream(a_TxKxN: np.ndarray, basis_DxK: np.ndarray) -> np.ndarray:
    """Map coefficients a (T steps x k x N) to streams B a (T x D x N).

    Trailing axes after N, such as the tokens of a sequence task, are kept.
    """
    return np.einsum("dk,sk...->sd...", basis_DxK, a_TxKxN)
