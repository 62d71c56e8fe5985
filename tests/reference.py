"""A literal NumPy float64 implementation of the MLU ResNet and its gradient descent.

Written from the equations, one block at a time in a Python loop, with no JAX and no autodiff:

    H_0 = W_E X
    P_l = U_l^T H_{l-1} / D
    H_l = H_{l-1} + alpha / (L M) V_l sigma(P_l)
    f   = W_U^T H_L / D
    J   = c / (2 N) sum_n ||f_n - y_n||^2

The backward stream is B = D dJ/dH. It starts at B_L = W_U g with g = dJ/df = c / N (f - Y) and
runs B_{l-1} = B_l + alpha / (L M) U_l (sigma'(P_l) * Q_l) with Q_l = V_l^T B_l / D. Every unit
j of block l then moves by

    u_j <- u_j - (eta / alpha) sum_n h_n sigma'(p_jn) q_jn,    h = H_{l-1}
    v_j <- v_j - (eta / alpha) sum_n b_n sigma(p_jn),           b = B_l

with all blocks updated from the same forward and backward pass. Unit weights are stored as
L arrays of shape D x M, stacked as L x D x M.
"""

from __future__ import annotations

import numpy as np


def sigma(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(z)
    if activation == "identity":
        return z.copy()
    raise ValueError(f"unknown activation {activation!r}")


def sigma_prime(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if activation == "identity":
        return np.ones_like(z)
    raise ValueError(f"unknown activation {activation!r}")


def forward(u_LxDxM, v_LxDxM, w_embed_DxDin, w_unembed_DxDout, x_DinxN, *, alpha, activation):
    """Return the output f (d_out x N), the streams [H_0, .., H_L] and the pre-activations [P_1, .., P_L]."""
    depth, dim, width = u_LxDxM.shape
    streams = [w_embed_DxDin @ x_DinxN]
    preactivations = []
    for layer in range(depth):
        h_previous = streams[-1]
        p_MxN = u_LxDxM[layer].T @ h_previous / dim
        h_next = h_previous + alpha / (depth * width) * (v_LxDxM[layer] @ sigma(p_MxN, activation))
        preactivations.append(p_MxN)
        streams.append(h_next)
    f_DoutxN = w_unembed_DxDout.T @ streams[-1] / dim
    return f_DoutxN, streams, preactivations


def loss(f_DoutxN, y_DoutxN, loss_scale) -> float:
    num_samples = y_DoutxN.shape[1]
    return float(loss_scale / (2 * num_samples) * np.sum((f_DoutxN - y_DoutxN) ** 2))


def backward(u_LxDxM, v_LxDxM, w_unembed_DxDout, preactivations, f_DoutxN, y_DoutxN, *, loss_scale, alpha, activation):
    """Return the backward streams [B_1, .., B_L] (B = D dJ/dH) and [Q_1, .., Q_L]."""
    depth, dim, width = u_LxDxM.shape
    num_samples = y_DoutxN.shape[1]
    g_DoutxN = loss_scale / num_samples * (f_DoutxN - y_DoutxN)
    b_DxN = w_unembed_DxDout @ g_DoutxN
    backward_streams = [None] * depth
    q_list = [None] * depth
    for layer in reversed(range(depth)):
        backward_streams[layer] = b_DxN
        q_MxN = v_LxDxM[layer].T @ b_DxN / dim
        q_list[layer] = q_MxN
        sigma_prime_MxN = sigma_prime(preactivations[layer], activation)
        b_DxN = b_DxN + alpha / (depth * width) * (u_LxDxM[layer] @ (sigma_prime_MxN * q_MxN))
    return backward_streams, q_list


def update(u_LxDxM, v_LxDxM, streams, preactivations, backward_streams, q_list, *, learning_rate, alpha, activation):
    """Return U and V after one step of the per-unit updates."""
    depth, _, width = u_LxDxM.shape
    step = learning_rate / alpha
    u_new = u_LxDxM.copy()
    v_new = v_LxDxM.copy()
    for layer in range(depth):
        h_DxN = streams[layer]  # H_{l-1} for block l = layer + 1
        b_DxN = backward_streams[layer]  # B_l
        p_MxN = preactivations[layer]
        q_MxN = q_list[layer]
        for unit in range(width):
            u_grad = h_DxN @ (sigma_prime(p_MxN[unit], activation) * q_MxN[unit])
            v_grad = b_DxN @ sigma(p_MxN[unit], activation)
            u_new[layer, :, unit] -= step * u_grad
            v_new[layer, :, unit] -= step * v_grad
    return u_new, v_new


def train(u_LxDxM, v_LxDxM, w_embed_DxDin, w_unembed_DxDout, x_DinxN, y_DoutxN, *,
          steps, learning_rate, loss_scale, alpha, activation):
    """Run ``steps`` updates and return the losses, outputs f and last streams H_L of steps 0..K,
    with the unit weights after the last update."""
    u = np.array(u_LxDxM, np.float64)
    v = np.array(v_LxDxM, np.float64)
    w_embed = np.asarray(w_embed_DxDin, np.float64)
    w_unembed = np.asarray(w_unembed_DxDout, np.float64)
    x = np.asarray(x_DinxN, np.float64)
    y = np.asarray(y_DoutxN, np.float64)

    losses, outputs, last_streams = [], [], []
    for step in range(steps + 1):
        f, streams, preactivations = forward(u, v, w_embed, w_unembed, x, alpha=alpha, activation=activation)
        losses.append(loss(f, y, loss_scale))
        outputs.append(f)
        last_streams.append(streams[-1])
        if step == steps:
            break
        backward_streams, q_list = backward(
            u, v, w_unembed, preactivations, f, y, loss_scale=loss_scale, alpha=alpha, activation=activation
        )
        u, v = update(
            u, v, streams, preactivations, backward_streams, q_list,
            learning_rate=learning_rate, alpha=alpha, activation=activation,
        )
    return np.array(losses), np.array(outputs), np.array(last_streams), (u, v)
