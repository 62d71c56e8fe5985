"""A plain NumPy trainer of the MLU ResNet, the baseline that the speed benchmarks compare with.

It trains the way straightforward research code does: the L blocks in a Python loop, forward
and backward passes written by hand with one matrix product per block and direction, and each
block updated in place once the backward pass has used its weights, all in the dtype of the
inputs:

    H_0 = W_E X,  P_l = U_l^T H_{l-1} / D,  H_l = H_{l-1} + alpha / (L M) V_l sigma(P_l),
    f = W_U^T H_L / D,  J = c / (2 N) sum_n ||f_n - y_n||^2,
    B_L = W_U g with g = c / N (f - Y),  Q_l = V_l^T B_l / D,
    B_{l-1} = B_l + alpha / (L M) U_l (sigma'(P_l) * Q_l),
    U_l -= (eta / alpha) H_{l-1} (sigma'(P_l) * Q_l)^T,  V_l -= (eta / alpha) B_l sigma(P_l)^T.

``initial_network`` draws the weights of a seed with JAX exactly as ``Comparison.events`` does,
so both trainers start from the same network.
"""

from __future__ import annotations

import jax
import numpy as np

from resnet_limits.config import RunConfig, jax_dtype
from resnet_limits.models import initial_units
from resnet_limits.tasks import Task, coupled_embeddings


def initial_network(task: Task, config: RunConfig, seed: int) -> dict[str, np.ndarray]:
    """Return U, V (L x D x M), W_E and W_U of ``seed`` as NumPy arrays of ``config.dtype``."""
    config = config.resolved()
    dtype = jax_dtype(config.dtype)
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, dtype)
    u, v = initial_units(key_units, config.L, config.D, config.M, 1.0 / config.D, dtype)
    return {"u": np.asarray(u), "v": np.asarray(v), "w_embed": np.asarray(w_embed),
            "w_unembed": np.asarray(w_unembed)}


def train(u_LxDxM, v_LxDxM, w_embed_DxDin, w_unembed_DxDout, x_DinxN, y_DoutxN, *, steps: int,
          learning_rate: float, alpha: float, activation: str, loss_scale: float):
    """Run ``steps`` updates; return the losses (K + 1), f ((K + 1) x d_out x N) and H_L ((K + 1) x D x N).

    ``u_LxDxM`` and ``v_LxDxM`` are copied, not changed. No divergence check: a diverging run
    continues with infinite or NaN values.
    """
    dtype = u_LxDxM.dtype
    u = u_LxDxM.copy()
    v = v_LxDxM.copy()
    x = np.asarray(x_DinxN, dtype)
    y = np.asarray(y_DoutxN, dtype)
    depth, dim, width = u.shape
    num_samples = x.shape[1]
    branch_scale = dtype.type(alpha / (depth * width))
    step_size = dtype.type(learning_rate / alpha)
    if activation == "tanh":
        sigma = np.tanh
    elif activation == "identity":
        sigma = np.asarray
    else:
        raise ValueError(f"unknown activation {activation!r}; choose one of: tanh, identity")

    losses, outputs, last_streams = [], [], []
    for step in range(steps + 1):
        # Forward pass, keeping H_{l-1} and sigma(P_l) of every block.
        h = w_embed_DxDin @ x
        inputs, activations = [], []
        for layer in range(depth):
            s = sigma(u[layer].T @ h / dim)
            inputs.append(h)
            activations.append(s)
            h = h + branch_scale * (v[layer] @ s)
        f = w_unembed_DxDout.T @ h / dim
        losses.append(float(loss_scale / (2 * num_samples) * np.sum((f - y) ** 2)))
        outputs.append(f)
        last_streams.append(h)
        if step == steps:
            break

        # Backward pass, then the update of every block.
        b = w_unembed_DxDout @ (dtype.type(loss_scale / num_samples) * (f - y))
        for layer in reversed(range(depth)):
            s = activations[layer]
            derivative = 1 - s * s if activation == "tanh" else np.ones_like(s)
            c = derivative * (v[layer].T @ b / dim)
            b_previous = b + branch_scale * (u[layer] @ c)
            u[layer] -= step_size * (inputs[layer] @ c.T)
            v[layer] -= step_size * (b @ s.T)
            b = b_previous
    return np.array(losses), np.array(outputs), np.array(last_streams)
