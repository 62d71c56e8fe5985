"""The finite MLU ResNet with two-layer perceptron blocks, in Flax NNX.

With data X (d_in x N) and frozen embeddings W_E (D x d_in), W_U (D x d_out):

    H_0 = W_E X
    P_l = U_l^T H_{l-1} / D                                   (M x N pre-activations)
    H_l = H_{l-1} + alpha / (L M) * V_l sigma(P_l),           l = 1..L
    f   = W_U^T H_L / D                                       (d_out x N)

U_l and V_l are D x M with i.i.d. N(0, D) entries. In unit-variance terms the residual scale
is alpha sqrt(D) / (L M); alpha = 1 is the maximal local feature update (MLU) regime of
Chizat, "The Hidden Width of Deep ResNets" (arXiv 2509.10167). The L blocks are stacked on a
leading depth axis and applied with ``jax.lax.scan``, so compile time does not grow with L.

The same module, with a general metric g in place of 1/D, is the particle simulator of the
Mean ODE limit (see ``resnet_limits.limits``): the stream lives in a space of dimension n with
inner product g <h, h'>, units are drawn N(0, I / g), pre-activations are g u^T h, the readout
is g W_U^T h, and gradient descent uses the raw learning rate eta L M / (alpha^2 g), which is
eta L M D / alpha^2 for the finite network.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "identity": lambda z: z,
}


def activation_function(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the elementwise activation called ``name`` ("tanh" or "identity")."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(_ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; choose one of: {known}") from None


def initial_units(
    key: jax.Array, depth: int, dim: int, width: int, metric: float, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Draw the unit weights U and V (L x D x M each) with i.i.d. N(0, 1 / metric) entries.

    Draws are in float32 so that float32 and float64 models of one seed share their units. The
    standard deviation is a NumPy constant, so the draws are the same inside and outside ``jax.jit``.
    """
    key_u, key_v = jax.random.split(key)
    std = np.sqrt(np.asarray(1.0 / metric, dtype))
    u_LxDxM = std * jax.random.normal(key_u, (depth, dim, width), jnp.float32).astype(dtype)
    v_LxDxM = std * jax.random.normal(key_v, (depth, dim, width), jnp.float32).astype(dtype)
    return u_LxDxM, v_LxDxM


class Embedding(nnx.Variable):
    """A frozen embedding matrix: part of the model, never trained."""


def _residual_block(alpha: float, activation: str, metric: float, depth: int, width: int):
    """Return block(H_{l-1}, (U_l, V_l)) = H_{l-1} + alpha / (L M) V_l sigma(metric U_l^T H_{l-1})."""
    sigma = activation_function(activation)
    branch_scale = alpha / (depth * width)

    def block(h_DxN, weights):
        u_DxM, v_DxM = weights
        p_MxN = metric * (u_DxM.T @ h_DxN)
        return h_DxN + branch_scale * (v_DxM @ sigma(p_MxN))

    return block


def residual_stream(
    u_LxDxM: jax.Array,
    v_LxDxM: jax.Array,
    h0_DxN: jax.Array,
    *,
    alpha: float,
    activation: str,
    metric: float,
) -> jax.Array:
    """Apply the L residual blocks to the stream H_0 and return H_L.

    Block l computes P_l = metric * U_l^T H_{l-1} and H_l = H_{l-1} + alpha / (L M) V_l sigma(P_l).
    """
    depth, _, width = u_LxDxM.shape
    block = _residual_block(alpha, activation, metric, depth, width)
    h_DxN, _ = jax.lax.scan(lambda h, weights: (block(h, weights), None), h0_DxN, (u_LxDxM, v_LxDxM))
    return h_DxN


def residual_streams(
    u_LxDxM: jax.Array,
    v_LxDxM: jax.Array,
    h0_DxN: jax.Array,
    *,
    alpha: float,
    activation: str,
    metric: float,
    offsets_LxDxN: jax.Array | None = None,
) -> jax.Array:
    """Apply the L residual blocks to H_0 and return every stream H_0, ..., H_L ((L+1) x D x N).

    ``offsets_LxDxN``, when given, is added to H_l after block l. Its gradient is dJ/dH_l, so
    differentiating at zero offsets gives the gradient with respect to every intermediate stream.
    """
    depth, _, width = u_LxDxM.shape
    block = _residual_block(alpha, activation, metric, depth, width)
    if offsets_LxDxN is None:
        offsets_LxDxN = jnp.zeros((depth, *h0_DxN.shape), h0_DxN.dtype)

    def step(h_DxN, inputs):
        u_DxM, v_DxM, offset_DxN = inputs
        h_DxN = block(h_DxN, (u_DxM, v_DxM)) + offset_DxN
        return h_DxN, h_DxN

    _, h_LxDxN = jax.lax.scan(step, h0_DxN, (u_LxDxM, v_LxDxM, offsets_LxDxN))
    return jnp.concatenate([h0_DxN[None], h_LxDxN], axis=0)


class MLUResNet(nnx.Module):
    """A ResNet of L two-layer perceptron blocks of M units on a residual stream of dimension D.

    Trainable parameters are ``u`` and ``v`` (L x D x M); ``w_embed`` and ``w_unembed`` are frozen.
    ``metric`` defaults to 1/D, the finite network; the limit simulators pass 1. Units are drawn
    from ``key`` unless ``units`` gives them as a pair of L x D x M arrays.
    """

    def __init__(
        self,
        w_embed_DxDin: jax.Array,
        w_unembed_DxDout: jax.Array,
        *,
        depth: int,
        width: int,
        key: jax.Array | None = None,
        alpha: float = 1.0,
        activation: str = "tanh",
        metric: float | None = None,
        units: tuple[jax.Array, jax.Array] | None = None,
    ):
        activation_function(activation)  # rejects unknown names before any array is built
        dim = w_embed_DxDin.shape[0]
        dtype = w_embed_DxDin.dtype
        self.metric = 1.0 / dim if metric is None else float(metric)
        if units is None:
            if key is None:
                raise ValueError("MLUResNet needs either key or units; pass key=jax.random.key(seed)")
            u_LxDxM, v_LxDxM = initial_units(key, depth, dim, width, self.metric, dtype)
        else:
            u_LxDxM, v_LxDxM = units
            expected = (depth, dim, width)
            if u_LxDxM.shape != expected or v_LxDxM.shape != expected:
                raise ValueError(
                    f"units have shapes {u_LxDxM.shape} and {v_LxDxM.shape}; expected {expected} "
                    "(depth, dim, width)"
                )
        self.u = nnx.Param(u_LxDxM.astype(dtype))
        self.v = nnx.Param(v_LxDxM.astype(dtype))
        self.w_embed = Embedding(w_embed_DxDin)
        self.w_unembed = Embedding(w_unembed_DxDout)
        self.alpha = float(alpha)
        self.activation = activation

    @property
    def shape(self) -> tuple[int, int, int]:
        """(L, D, M): depth, stream dimension and hidden width."""
        return tuple(self.u.shape)

    def learning_rate_multiplier(self) -> float:
        """Return L M / (alpha^2 metric), the factor from eta to the raw gradient-descent step."""
        depth, _, width = self.shape
        return depth * width / (self.alpha**2 * self.metric)

    def __call__(self, x_DinxN: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return the output f (d_out x N) and the last hidden stream H_L (D x N)."""
        h0_DxN = self.w_embed[...] @ x_DinxN
        h_DxN = residual_stream(
            self.u[...],
            self.v[...],
            h0_DxN,
            alpha=self.alpha,
            activation=self.activation,
            metric=self.metric,
        )
        f_DoutxN = self.metric * (self.w_unembed[...].T @ h_DxN)
        return f_DoutxN, h_DxN
