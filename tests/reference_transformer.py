"""A literal NumPy float64 implementation of the MLU Transformer's forward pass.

Written from the equations with Python loops over layers, samples, query tokens and heads, with
no JAX and no einsum. For head j of layer l, sample n and query token s:

    q = W_Q h_s / D,  k_t = W_K h_t / D,  v_t = W_V h_t / D
    a_t = exp(q . k_t / d_k) / sum_t' exp(q . k_t' / d_k)
    h_s <- h_s + alpha / (L H) sum_j W_O,j sum_t a_t v_t           (all query tokens at once)
    h_s <- h_s + alpha / (L M) V_l tanh(U_l^T h_s / D)             (every token alone)

and f_s = W_U^T h_s / D after the last layer. Weights are stacked by layer as in the model.
"""

from __future__ import annotations

import numpy as np

import reference


def attention_block(h_DxNxT, w_query_HxKxD, w_key_HxKxD, w_value_HxVxD, w_output_HxDxV, *, depth, alpha):
    """Return the stream after one attention block; every query token reads the old stream."""
    heads, key_dim, dim = w_query_HxKxD.shape
    _, num_samples, tokens = h_DxNxT.shape
    h_new = h_DxNxT.copy()
    for n in range(num_samples):
        for s in range(tokens):
            update = np.zeros(dim)
            for j in range(heads):
                query = w_query_HxKxD[j] @ h_DxNxT[:, n, s] / dim
                logits = np.array(
                    [query @ (w_key_HxKxD[j] @ h_DxNxT[:, n, t] / dim) / key_dim for t in range(tokens)]
                )
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                mixed_value = sum(weights[t] * (w_value_HxVxD[j] @ h_DxNxT[:, n, t] / dim) for t in range(tokens))
                update += w_output_HxDxV[j] @ mixed_value
            h_new[:, n, s] += alpha / (depth * heads) * update
    return h_new


def perceptron_block(h_DxNxT, u_DxM, v_DxM, *, depth, alpha, activation):
    dim, width = u_DxM.shape
    _, num_samples, tokens = h_DxNxT.shape
    h_new = h_DxNxT.copy()
    for n in range(num_samples):
        for t in range(tokens):
            p_M = u_DxM.T @ h_DxNxT[:, n, t] / dim
            h_new[:, n, t] += alpha / (depth * width) * (v_DxM @ reference.sigma(p_M, activation))
    return h_new


def forward(weights, w_embed_DxDin, w_unembed_DxDout, x_DinxNxT, *, alpha, activation):
    """Return the output f (d_out x N x T) and the streams [H_0, .., H_L] of ``weights`` (a dict by name)."""
    depth, _, _, dim = weights["w_query"].shape
    _, num_samples, tokens = x_DinxNxT.shape
    h = np.zeros((dim, num_samples, tokens))
    for n in range(num_samples):
        for t in range(tokens):
            h[:, n, t] = w_embed_DxDin @ x_DinxNxT[:, n, t]
    streams = [h]
    for layer in range(depth):
        h = attention_block(
            h,
            weights["w_query"][layer],
            weights["w_key"][layer],
            weights["w_value"][layer],
            weights["w_output"][layer],
            depth=depth,
            alpha=alpha,
        )
        h = perceptron_block(h, weights["u"][layer], weights["v"][layer], depth=depth, alpha=alpha, activation=activation)
        streams.append(h)
    f = np.zeros((w_unembed_DxDout.shape[1], num_samples, tokens))
    for n in range(num_samples):
        for t in range(tokens):
            f[:, n, t] = w_unembed_DxDout.T @ h[:, n, t] / dim
    return f, streams
