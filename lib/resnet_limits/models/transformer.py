"""The finite MLU Transformer: multi-head attention and two-layer perceptron blocks, in Flax NNX.

A sample is a sequence of T tokens, so the residual stream of N samples is H (D x N x T). With
data X (d_in x N x T) and the frozen embeddings W_E (D x d_in), W_U (D x d_out) of ``MLUResNet``,
layer l = 1..L applies an attention block of H heads and then a perceptron block of M units:

    H_0 = W_E X                                                       (token by token)
    Q_j = W_Q,j H / D,  K_j = W_K,j H / D,  V_j = W_V,j H / D         (d_k, d_k, d_v x N x T)
    A_j[n, s, t] = softmax_t( Q_j[:, n, s] . K_j[:, n, t] / d_k )     (N x T x T, no mask)
    O_j[:, n, s] = sum_t A_j[n, s, t] V_j[:, n, t]                    (d_v x N x T)
    H <- H + alpha / (L H) * sum_j W_O,j O_j                          attention block
    H <- H + alpha / (L M) * V_l sigma(U_l^T H / D)                   perceptron block, per token
    f = W_U^T H_L / D                                                 (d_out x N x T)

Head j has inner weights W_Q,j, W_K,j (d_k x D) and W_V,j (d_v x D) and the outer weight W_O,j
(D x d_v). All entries are i.i.d. N(0, D), as the units U and V of the perceptron block.

Why this is the MLU scaling of a block of depth two. A head is a unit whose inner map reads the
stream through d_k + d_k + d_v projections w^T h / D and whose outer map writes one vector
W_O,j O_j back, just as a perceptron unit reads u^T h / D and writes v sigma(p):

* Inner weights: each row w of W_Q, W_K, W_V has N(0, D) entries and meets h (O(1) entries)
  through the metric 1/D, so every entry of Q, K and V is O(1) at any D, like p = u^T h / D.
* Softmax temperature 1/d_k: Q . K is a sum of d_k products of O(1) numbers, so the logits are
  O(1) for any D and H at initialisation (about 1/sqrt(d_k) there) and stay O(1) after training
  aligns Q and K, when Q . K grows like d_k. The key-query dimension d_k is bounded and set by
  the user, so the temperature is a fixed constant and the head stays a nonlinearity of O(1)
  arguments, as sigma is.
* Outer weights and branch scale: W_O,j O_j has O(sqrt(D)) entries, as v sigma(p) has, and the
  branch is scaled by alpha / (L H), as the perceptron branch by alpha / (L M). Each head thus
  contributes O(1 / (L H)) to every projection w^T h / D that later blocks read, and the H
  heads of a block average like units. In unit-variance terms the residual scale is
  alpha sqrt(D) / (L H), as alpha sqrt(D) / (L M) for the perceptron block.
* Learning rate: the raw step of every attention weight is eta L H D / alpha^2 and that of every
  perceptron weight eta L M D / alpha^2. A head's gradient carries the factor alpha / (L H D)
  (branch scale times the metric), so its update is (eta / alpha) times O(1) sums over tokens
  and samples, and the update of every head is O(1) as L, H and D grow.

With these choices a head is a depth-two block in the sense of the Mean ODE argument, so the
limit L, H, M -> infinity is the same attention and perceptron blocks acting on coefficients in
the span of the embeddings with infinitely many heads and units (see ``limits.transformer``).
As for ``MLUResNet``, the metric 1/D can be replaced by a general ``metric``; the limit
simulators pass 1. Layers are stacked on a leading depth axis and applied with ``jax.lax.scan``.
The attention has no causal mask and the tokens carry no positional embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resnet_limits.models.resnet import Embedding, _residual_block, activation_function

# Names of the trainable weights, in the order of ``TransformerWeights``.
ATTENTION_WEIGHTS = ("w_query", "w_key", "w_value", "w_output")
PERCEPTRON_WEIGHTS = ("u", "v")


def initial_heads(
    key: jax.Array,
    depth: int,
    dim: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    metric: float,
    dtype=jnp.float32,
) -> dict[str, jax.Array]:
    """Draw W_Q, W_K (L x H x d_k x D), W_V (L x H x d_v x D) and W_O (L x H x D x d_v).

    Entries are i.i.d. N(0, 1 / metric), drawn in float32 as ``initial_units`` draws.
    """
    shapes = {
        "w_query": (depth, heads, key_dim, dim),
        "w_key": (depth, heads, key_dim, dim),
        "w_value": (depth, heads, value_dim, dim),
        "w_output": (depth, heads, dim, value_dim),
    }
    std = np.sqrt(np.asarray(1.0 / metric, dtype))
    keys = jax.random.split(key, len(shapes))
    return {
        name: std * jax.random.normal(subkey, shape, jnp.float32).astype(dtype)
        for subkey, (name, shape) in zip(keys, shapes.items())
    }


def _attention_block(alpha: float, metric: float, depth: int, heads: int, key_dim: int):
    """Return block(H, (W_Q, W_K, W_V, W_O)) for one layer's H heads acting on H (D x N x T)."""
    branch_scale = alpha / (depth * heads)
    temperature = 1.0 / key_dim

    def block(h_DxNxT, weights):
        w_query_HxKxD, w_key_HxKxD, w_value_HxVxD, w_output_HxDxV = weights
        q_HxKxNxT = metric * jnp.einsum("hkd,dnt->hknt", w_query_HxKxD, h_DxNxT)
        k_HxKxNxT = metric * jnp.einsum("hkd,dnt->hknt", w_key_HxKxD, h_DxNxT)
        v_HxVxNxT = metric * jnp.einsum("hvd,dnt->hvnt", w_value_HxVxD, h_DxNxT)
        logits_HxNxTxT = temperature * jnp.einsum("hkns,hknt->hnst", q_HxKxNxT, k_HxKxNxT)
        attention_HxNxTxT = jax.nn.softmax(logits_HxNxTxT, axis=-1)
        o_HxVxNxT = jnp.einsum("hnst,hvnt->hvns", attention_HxNxTxT, v_HxVxNxT)
        return h_DxNxT + branch_scale * jnp.einsum("hdv,hvnt->dnt", w_output_HxDxV, o_HxVxNxT)

    return block


def transformer_stream(
    weights: dict[str, jax.Array],
    h0_DxNxT: jax.Array,
    *,
    alpha: float,
    activation: str,
    metric: float,
) -> jax.Array:
    """Apply the L layers (attention block, then perceptron block) to H_0 and return H_L."""
    depth, heads, key_dim, _ = weights["w_query"].shape
    width = weights["u"].shape[2]
    attention = _attention_block(alpha, metric, depth, heads, key_dim)
    perceptron = _residual_block(alpha, activation, metric, depth, width)

    def layer(h_DxNxT, layer_weights):
        query, key, value, output, u_DxM, v_DxM = layer_weights
        h_DxNxT = attention(h_DxNxT, (query, key, value, output))
        dim, num_samples, tokens = h_DxNxT.shape
        # The perceptron block acts on every token alone, so tokens are columns like samples.
        h_DxNT = perceptron(h_DxNxT.reshape(dim, num_samples * tokens), (u_DxM, v_DxM))
        return h_DxNT.reshape(dim, num_samples, tokens), None

    stacked = tuple(weights[name] for name in ATTENTION_WEIGHTS + PERCEPTRON_WEIGHTS)
    h_DxNxT, _ = jax.lax.scan(layer, h0_DxNxT, stacked)
    return h_DxNxT


class MLUTransformer(nnx.Module):
    """A Transformer of L layers, each H attention heads then M perceptron units, on a stream of dimension D.

    Trainable parameters are ``w_query``, ``w_key`` (L x H x d_k x D), ``w_value`` (L x H x d_v x D),
    ``w_output`` (L x H x D x d_v), ``u`` and ``v`` (L x D x M); ``w_embed`` and ``w_unembed`` are
    frozen. ``metric`` defaults to 1/D, the finite network; the limit simulators pass 1. Weights
    are drawn from ``key`` unless ``weights`` gives all six arrays by name.
    """

    def __init__(
        self,
        w_embed_DxDin: jax.Array,
        w_unembed_DxDout: jax.Array,
        *,
        depth: int,
        heads: int,
        width: int,
        key_dim: int = 2,
        value_dim: int = 2,
        key: jax.Array | None = None,
        alpha: float = 1.0,
        activation: str = "tanh",
        metric: float | None = None,
        weights: dict[str, jax.Array] | None = None,
    ):
        activation_function(activation)  # rejects unknown names before any array is built
        dim = w_embed_DxDin.shape[0]
        dtype = w_embed_DxDin.dtype
        self.metric = 1.0 / dim if metric is None else float(metric)
        expected = {
            "w_query": (depth, heads, key_dim, dim),
            "w_key": (depth, heads, key_dim, dim),
            "w_value": (depth, heads, value_dim, dim),
            "w_output": (depth, heads, dim, value_dim),
            "u": (depth, dim, width),
            "v": (depth, dim, width),
        }
        if weights is None:
            if key is None:
                raise ValueError("MLUTransformer needs either key or weights; pass key=jax.random.key(seed)")
            key_heads, key_units = jax.random.split(key)
            weights = initial_heads(key_heads, depth, dim, heads, key_dim, value_dim, self.metric, dtype)
            std = np.sqrt(np.asarray(1.0 / self.metric, dtype))
            key_u, key_v = jax.random.split(key_units)
            weights["u"] = std * jax.random.normal(key_u, expected["u"], jnp.float32).astype(dtype)
            weights["v"] = std * jax.random.normal(key_v, expected["v"], jnp.float32).astype(dtype)
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise ValueError(f"weights are missing {', '.join(missing)}; pass all of {', '.join(expected)}")
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(
                    f"weights[{name!r}] has shape {tuple(weights[name].shape)}; expected {shape} "
                    "from depth, heads, width, key_dim, value_dim and the embedding dimension"
                )
        self.w_query = nnx.Param(jnp.asarray(weights["w_query"], dtype))
        self.w_key = nnx.Param(jnp.asarray(weights["w_key"], dtype))
        self.w_value = nnx.Param(jnp.asarray(weights["w_value"], dtype))
        self.w_output = nnx.Param(jnp.asarray(weights["w_output"], dtype))
        self.u = nnx.Param(jnp.asarray(weights["u"], dtype))
        self.v = nnx.Param(jnp.asarray(weights["v"], dtype))
        self.w_embed = Embedding(w_embed_DxDin)
        self.w_unembed = Embedding(w_unembed_DxDout)
        self.alpha = float(alpha)
        self.activation = activation

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(L, D, H, M): depth, stream dimension, heads per layer and perceptron width."""
        depth, heads, _, dim = self.w_query.shape
        return depth, dim, heads, self.u.shape[2]

    @property
    def key_dim(self) -> int:
        """d_k, the key-query dimension of every head."""
        return self.w_query.shape[2]

    @property
    def value_dim(self) -> int:
        """d_v, the value dimension of every head."""
        return self.w_value.shape[2]

    def learning_rate_multiplier(self) -> dict[str, float]:
        """Return, per trainable weight, the factor from eta to its raw step.

        It is L H / (alpha^2 metric) for the attention weights and L M / (alpha^2 metric) for the
        perceptron weights, so that every head and every unit moves by O(1) per step.
        """
        depth, _, heads, width = self.shape
        attention = depth * heads / (self.alpha**2 * self.metric)
        perceptron = depth * width / (self.alpha**2 * self.metric)
        multipliers = {name: attention for name in ATTENTION_WEIGHTS}
        multipliers.update({name: perceptron for name in PERCEPTRON_WEIGHTS})
        return multipliers

    def weights(self) -> dict[str, jax.Array]:
        """Return the six trainable arrays by name."""
        return {name: getattr(self, name)[...] for name in ATTENTION_WEIGHTS + PERCEPTRON_WEIGHTS}

    def __call__(self, x_DinxNxT: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return the output f (d_out x N x T) and the last hidden stream H_L (D x N x T)."""
        if x_DinxNxT.ndim != 3:
            raise ValueError(
                f"MLUTransformer takes inputs of shape (d_in, N, T), got shape {x_DinxNxT.shape}; "
                "use a sequence task such as seq-tanh"
            )
        h0_DxNxT = jnp.einsum("di,int->dnt", self.w_embed[...], x_DinxNxT)
        h_DxNxT = transformer_stream(
            self.weights(), h0_DxNxT, alpha=self.alpha, activation=self.activation, metric=self.metric
        )
        f_DoutxNxT = self.metric * jnp.einsum("do,dnt->ont", self.w_unembed[...], h_DxNxT)
        return f_DoutxNxT, h_DxNxT
