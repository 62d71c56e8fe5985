"""Coordinate views: the forward and backward streams of a network and of its limits at every depth.

For a network of depth L and a step k, the forward stream is H_l (D x N) and the backward stream
is B_l = (1 / metric) dJ/dH_l for l = 0..L, at depth time s = l / L. For the finite network
(metric 1/D) this is B = D dJ/dH. For a particle system of the limit (metric 1, stream a in
R^k) it is beta = dJ/da, the backward coefficients. Both limits map to R^D with their basis
B_basis: h = B_basis a and b = B_basis beta. The backward map is right because
b(1) = W_U g = B_basis (B_basis^T W_U / D) g = B_basis dJ/da(1), where g = dJ/df, and both
backward recursions have the same form B_{l-1} = B_l + alpha / (L M) U_l (sigma'(P_l) * Q_l)
with Q_l = metric V_l^T B_l.

The coordinates h^d(s, x) of the large-D limit are Gaussian across d: the rows of its basis
E diag(s_E, .., s_U, ..)^{-1} are i.i.d. N(0, I), so h^d(s, x) ~ N(0, ||a(s, x)||^2). In the
Gram-form coefficients of h = E a' this variance reads sum_i s_i^2 a'_i^2. For the fixed-D Mean
ODE, whose basis satisfies B^T B / D = I, ||a||^2 is exactly the mean of (h^d)^2 over d.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from resnet_limits import limits
from resnet_limits.config import LimitSettings
from resnet_limits.models import MLUResNet, residual_streams
from resnet_limits.tasks import Task
from resnet_limits.training import mean_squared_loss, training_steps

NETWORK = "network"
FORWARD = "forward"
BACKWARD = "backward"


@dataclasses.dataclass(frozen=True)
class Streams:
    """The forward and backward streams of one network at every depth l = 0..L.

    ``forward_SxDxN[l]`` is H_l and ``backward_SxDxN[l]`` is B_l = dJ/dH_l / metric. For a
    particle system of the limit the streams are the coefficients a(s) and beta(s) (k x N).
    """

    depth_s: np.ndarray  # s = l / L, shape (L + 1,)
    forward_SxDxN: np.ndarray
    backward_SxDxN: np.ndarray
    f_DoutxN: np.ndarray
    loss: float

    @property
    def depth(self) -> int:
        return len(self.depth_s) - 1

    def depth_index(self, s: float) -> int:
        """Return the depth index l closest to depth time ``s`` in [0, 1]."""
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"depth time s must lie in [0, 1], got {s}")
        return int(round(s * self.depth))


@partial(jax.jit, static_argnames=("alpha", "activation", "metric"))
def _streams_and_gradients(u, v, w_embed, w_unembed, x, y, loss_scale, *, alpha, activation, metric):
    """Return J, f, every H_l and every dJ/dH_l (the gradient at zero offsets after each block)."""
    h0 = w_embed @ x
    depth = u.shape[0]

    def loss_of(h0_DxN, offsets_LxDxN):
        h_SxDxN = residual_streams(
            u, v, h0_DxN, alpha=alpha, activation=activation, metric=metric, offsets_LxDxN=offsets_LxDxN
        )
        f = metric * (w_unembed.T @ h_SxDxN[-1])
        return mean_squared_loss(f, y, loss_scale), (f, h_SxDxN)

    offsets = jnp.zeros((depth, *h0.shape), h0.dtype)
    (loss, (f, h_SxDxN)), (grad_h0, grad_offsets) = jax.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True
    )(h0, offsets)
    grad_SxDxN = jnp.concatenate([grad_h0[None], grad_offsets], axis=0)
    return loss, f, h_SxDxN, grad_SxDxN


def compute_streams(model: MLUResNet, x_DinxN, y_DoutxN, *, loss_scale: float) -> Streams:
    """Return the forward and backward streams of ``model`` at its current parameters.

    The backward stream is the gradient of the loss with respect to each intermediate stream,
    taken by autodiff and divided by the model's metric.
    """
    dtype = model.u.dtype
    loss, f, h_SxDxN, grad_SxDxN = _streams_and_gradients(
        model.u[...],
        model.v[...],
        model.w_embed[...],
        model.w_unembed[...],
        jnp.asarray(x_DinxN, dtype),
        jnp.asarray(y_DoutxN, dtype),
        jnp.asarray(loss_scale, dtype),
        alpha=model.alpha,
        activation=model.activation,
        metric=model.metric,
    )
    depth = model.shape[0]
    return Streams(
        depth_s=np.arange(depth + 1) / depth,
        forward_SxDxN=np.asarray(h_SxDxN),
        backward_SxDxN=np.asarray(grad_SxDxN) / model.metric,
        f_DoutxN=np.asarray(f),
        loss=float(loss),
    )


def task_streams(model: MLUResNet, task: Task) -> Streams:
    """Return the streams of ``model`` on the data and loss of ``task``."""
    return compute_streams(model, task.x_DinxN, task.y_DoutxN, loss_scale=task.loss_scale)


def trained_particle_system(
    problem: limits.SpanProblem,
    task: Task,
    settings: LimitSettings,
    *,
    steps: int,
    learning_rate: float,
    alpha: float,
    activation: str,
    dtype: str = "float32",
) -> MLUResNet:
    """Build the particle system of ``problem`` and train it for ``steps`` gradient steps.

    With the same settings the system reproduces ``limits.limit_steps`` step by step. Raises
    ValueError when the simulation diverges before ``steps``.
    """
    system = limits.particle_system(problem, settings, alpha=alpha, activation=activation, dtype=dtype)
    for record in training_steps(
        system,
        task.x_DinxN,
        task.y_DoutxN,
        steps=steps,
        learning_rate=learning_rate,
        loss_scale=task.loss_scale,
    ):
        if record.diverged:
            raise ValueError(
                f"the {problem.kind} limit diverged at step {record.step} of {steps}; "
                "lower the learning rate or alpha"
            )
    return system


@dataclasses.dataclass(frozen=True)
class LimitStreams:
    """The coefficient streams of one limit and the basis (D x k) that maps them to R^D."""

    kind: str  # limits.FIXED_DIM or limits.LARGE_DIM
    streams: Streams
    basis_DxK: np.ndarray

    def forward(self, depth_index: int, coordinates=slice(None)) -> np.ndarray:
        """Return h = B a at one depth for the chosen coordinates (len(coordinates) x N)."""
        return self.basis_DxK[coordinates] @ self.streams.forward_SxDxN[depth_index]


@dataclasses.dataclass(frozen=True)
class CoordinateSnapshot:
    """A network and its two limits at the same gradient step, as per-depth streams."""

    step: int
    network: Streams
    limits: dict[str, LimitStreams]  # keyed by limits.FIXED_DIM and limits.LARGE_DIM


def snapshot_from_comparison(comparison) -> CoordinateSnapshot:
    """Return the streams of a comparison's network and of both limits at the network's step.

    ``comparison`` is a ``resnet_limits.experiment.Comparison`` whose events ran at least to step 0.
    The network is the comparison's own model. The particle systems are rebuilt with the
    comparison's limit settings and trained to the same step, so they repeat the limits'
    simulation up to that step. Raises ValueError when the network diverged or never trained.
    """
    if comparison.model is None or comparison.model_step is None:
        raise ValueError("the comparison has not trained its network yet; iterate its events first")
    if comparison.diverged_at is not None:
        raise ValueError(f"the network diverged at step {comparison.diverged_at}; its streams are not finite")
    config, task = comparison.config, comparison.task
    step = comparison.model_step
    limit_streams = {}
    for kind, (problem, basis_DxK) in comparison.span_problems.items():
        system = trained_particle_system(
            problem,
            task,
            comparison.limit_settings,
            steps=step,
            learning_rate=config.learning_rate,
            alpha=config.alpha,
            activation=config.activation,
            dtype=config.dtype,
        )
        limit_streams[kind] = LimitStreams(kind, task_streams(system, task), np.asarray(basis_DxK))
    return CoordinateSnapshot(step, task_streams(comparison.model, task), limit_streams)


# -- trajectories of chosen coordinates ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoordinateTrajectories:
    """h^d(s) and b^d(s) of chosen coordinates d for one sample, for the network and a limit.

    Arrays are indexed (coordinate, depth). The network has L + 1 depths, the limit L' + 1.
    """

    coordinates: tuple[int, ...]
    sample: int
    network_s: np.ndarray
    network_forward_CxS: np.ndarray
    network_backward_CxS: np.ndarray
    limit_kind: str
    limit_s: np.ndarray
    limit_forward_CxS: np.ndarray
    limit_backward_CxS: np.ndarray

    def records(self) -> list[dict]:
        """Return one plain dict per (source, stream, coordinate, depth) with keys s and value."""
        records = []
        series = (
            (NETWORK, FORWARD, self.network_s, self.network_forward_CxS),
            (NETWORK, BACKWARD, self.network_s, self.network_backward_CxS),
            (self.limit_kind, FORWARD, self.limit_s, self.limit_forward_CxS),
            (self.limit_kind, BACKWARD, self.limit_s, self.limit_backward_CxS),
        )
        for source, stream, depth_s, values_CxS in series:
            for row, coordinate in enumerate(self.coordinates):
                for s, value in zip(depth_s, values_CxS[row]):
                    records.append(
                        {
                            "source": source,
                            "stream": stream,
                            "coordinate": coordinate,
                            "s": float(s),
                            "value": float(value),
                        }
                    )
        return records


def _check_indices(coordinates: Sequence[int], sample: int, dim: int, num_samples: int) -> tuple[int, ...]:
    coordinates = tuple(int(d) for d in coordinates)
    if not coordinates:
        raise ValueError("choose at least one coordinate d")
    for d in coordinates:
        if not 0 <= d < dim:
            raise ValueError(f"coordinate {d} is outside 0..{dim - 1} (D = {dim})")
    if not 0 <= sample < num_samples:
        raise ValueError(f"sample {sample} is outside 0..{num_samples - 1} (N = {num_samples})")
    return coordinates


def coordinate_trajectories(
    network: Streams, limit: LimitStreams, coordinates: Sequence[int], sample: int = 0
) -> CoordinateTrajectories:
    """Return h^d(s) and b^d(s) of the network and of the limit mapped to R^D by its basis."""
    _, dim, num_samples = network.forward_SxDxN.shape
    coordinates = _check_indices(coordinates, sample, dim, num_samples)
    rows_CxK = limit.basis_DxK[list(coordinates)]
    a_SxK = limit.streams.forward_SxDxN[:, :, sample]
    beta_SxK = limit.streams.backward_SxDxN[:, :, sample]
    return CoordinateTrajectories(
        coordinates=coordinates,
        sample=sample,
        network_s=network.depth_s,
        network_forward_CxS=network.forward_SxDxN[:, list(coordinates), sample].T,
        network_backward_CxS=network.backward_SxDxN[:, list(coordinates), sample].T,
        limit_kind=limit.kind,
        limit_s=limit.streams.depth_s,
        limit_forward_CxS=rows_CxK @ a_SxK.T,
        limit_backward_CxS=rows_CxK @ beta_SxK.T,
    )


# -- histogram of coordinates against the Gaussian law ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoordinateHistogram:
    """The coordinates h^d(s) of the network at one depth against the limit's Gaussian law.

    ``density`` is the histogram normalised to unit area. ``law_density`` is the density of the
    limit's law on ``grid``: N(0, ||a_n(s)||^2) for one sample, or the equal-weight mixture of
    these over samples when all samples are pooled.
    """

    s: float
    limit_kind: str
    sample: int | None  # None: pooled over all samples
    bin_edges: np.ndarray
    counts: np.ndarray
    density: np.ndarray
    grid: np.ndarray
    law_density: np.ndarray
    law_std_N: np.ndarray  # ||a_n(s)|| of the samples included
    values: np.ndarray  # the network's coordinates that were counted

    def law_cdf(self, points: np.ndarray) -> np.ndarray:
        """Return the cumulative distribution function of the limit's law at ``points``."""
        points = np.asarray(points, np.float64)
        z = points[..., None] / self.law_std_N
        return np.mean(0.5 * (1.0 + special.erf(z / math.sqrt(2.0))), axis=-1)

    def ks_statistic(self) -> float:
        """Return the Kolmogorov-Smirnov distance between the counted values and the law."""
        values = np.sort(self.values.astype(np.float64))
        cdf = self.law_cdf(values)
        n = len(values)
        upper = np.arange(1, n + 1) / n - cdf
        lower = cdf - np.arange(n) / n
        return float(max(upper.max(), lower.max()))


def coordinate_histogram(
    network: Streams,
    limit: LimitStreams,
    s: float,
    *,
    sample: int | None = None,
    bins: int = 30,
    grid_points: int = 121,
) -> CoordinateHistogram:
    """Return the histogram of the network's coordinates h^d(s) and the limit's Gaussian density.

    The histogram counts all D coordinates of one sample, or of all N samples when ``sample`` is
    None. The law is that of the large-D limit, N(0, ||a(s, x)||^2) per sample, where a is the
    limit's coefficient vector at the nearest depth point. The range covers the values and
    4 standard deviations of the law.
    """
    network_l = network.depth_index(s)
    limit_l = limit.streams.depth_index(s)
    _, dim, num_samples = network.forward_SxDxN.shape
    if sample is None:
        samples = list(range(num_samples))
    else:
        _check_indices([0], sample, dim, num_samples)
        samples = [sample]
    values = network.forward_SxDxN[network_l][:, samples].reshape(-1)
    a_KxN = limit.streams.forward_SxDxN[limit_l][:, samples]
    law_std_N = np.sqrt(np.sum(np.asarray(a_KxN, np.float64) ** 2, axis=0))

    reach = max(float(np.max(np.abs(values))), 4.0 * float(np.max(law_std_N)), 1e-12)
    counts, bin_edges = np.histogram(values, bins=bins, range=(-reach, reach))
    widths = np.diff(bin_edges)
    density = counts / (counts.sum() * widths)
    grid = np.linspace(-reach, reach, grid_points)
    law_density = np.mean(
        np.exp(-0.5 * (grid[:, None] / law_std_N) ** 2) / (math.sqrt(2 * math.pi) * law_std_N), axis=1
    )
    return CoordinateHistogram(
        s=float(network.depth_s[network_l]),
        limit_kind=limit.kind,
        sample=sample,
        bin_edges=bin_edges,
        counts=counts,
        density=density,
        grid=grid,
        law_density=law_density,
        law_std_N=law_std_N,
        values=values,
    )


# -- a snapshot from run settings, and as plain data ---------------------------------------------


def snapshot_events(comparison, step: int):
    """Yield the comparison's events until its network reaches ``step``, and leave it there.

    The comparison's K must be at least ``step``. After the last event the model contains the
    parameters of ``step``, unless training diverged before it.
    """
    events = comparison.events()
    try:
        for event in events:
            yield event
            if event.row is not None and event.row["step"] == step:
                return
    finally:
        events.close()


def coordinate_snapshot(config, limit_settings: LimitSettings | None = None, *, step: int, **comparison_options):
    """Return the ``CoordinateSnapshot`` of run ``config`` and both limits at gradient step ``step``.

    ``config.K`` must be at least ``step``. ``comparison_options`` go to ``Comparison`` (for
    example ``cache`` and ``memory_budget_bytes``). Raises ValueError as ``snapshot_from_comparison``.
    """
    from resnet_limits.experiment import Comparison

    comparison = Comparison(config, limit_settings, **comparison_options)
    for _ in snapshot_events(comparison, step):
        pass
    return snapshot_from_comparison(comparison)


def _encode_array(array: np.ndarray) -> dict:
    """Return ``array`` as JSON-ready data: its shape and its float32 bytes in base64."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "float32": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode_array(data: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data["float32"]), dtype="<f4").reshape(data["shape"])


def _encode_streams(streams: Streams) -> dict:
    return {
        "depth_s": _encode_array(streams.depth_s),
        "forward": _encode_array(streams.forward_SxDxN),
        "backward": _encode_array(streams.backward_SxDxN),
        "f": _encode_array(streams.f_DoutxN),
        "loss": streams.loss,
    }


def _decode_streams(data: dict) -> Streams:
    return Streams(
        depth_s=_decode_array(data["depth_s"]),
        forward_SxDxN=_decode_array(data["forward"]),
        backward_SxDxN=_decode_array(data["backward"]),
        f_DoutxN=_decode_array(data["f"]),
        loss=data["loss"],
    )


def snapshot_to_json(snapshot: CoordinateSnapshot) -> dict:
    """Return ``snapshot`` as JSON-ready data, its arrays as base64 float32 (4 bytes per value, no pickle)."""
    return {
        "step": snapshot.step,
        "network": _encode_streams(snapshot.network),
        "limits": {
            kind: {"streams": _encode_streams(limit.streams), "basis": _encode_array(limit.basis_DxK)}
            for kind, limit in snapshot.limits.items()
        },
    }


def snapshot_from_json(data: dict) -> CoordinateSnapshot:
    """Return the snapshot that ``snapshot_to_json`` encoded, with float32 arrays."""
    return CoordinateSnapshot(
        step=data["step"],
        network=_decode_streams(data["network"]),
        limits={
            kind: LimitStreams(kind, _decode_streams(limit["streams"]), _decode_array(limit["basis"]))
            for kind, limit in data["limits"].items()
        },
    )
