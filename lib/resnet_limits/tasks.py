"""Synthetic tasks and coupled embeddings.

Two tasks reproduce the settings of Chaintron, Chizat and Maass, "ResNets of All Shapes and
Sizes" (arXiv 2603.18168):

* ``paper-tanh``: d_in = d_out = 5, N = 10 samples, inputs and targets i.i.d. standard Gaussian
  (pure-noise targets), s_E^2 = 1/d_in, s_U^2 = d_out, tanh units, loss scale c = 1/d_out,
  learning rate 1, K = 15 steps.
* ``paper-linear``: d_in = d_out = 3, one sample with fixed x and y, s_E = s_U = 1, identity
  units, c = 1, learning rate 0.1, K = 15 steps.

One sequence task, for ``MLUTransformer``, carries the same scales over to tokens:

* ``seq-tanh``: d_in = d_out = 3, N = 4 samples of T = 4 tokens, inputs and targets i.i.d.
  standard Gaussian per token, s_E^2 = 1/d_in, s_U^2 = d_out, tanh units, c = 1/d_out,
  learning rate 0.1, K = 10 steps. The value path of a head has no saturating nonlinearity,
  and at learning rate 1 training diverged within two steps at L = 8, D = 16 for 8, 64 and
  512 heads and units, so the default is 0.1.

Inputs and targets of a sequence task have a token axis after the sample axis (d x N x T).

Embeddings are coupled across sizes: one pair of root matrices is drawn per seed, and a model of
dimension D takes their first D rows. Rows are drawn in blocks keyed by the block index, so the
root matrices need no maximum size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("tanh", "identity")

# Rows of the root embedding matrices drawn per key; any D reads the first D rows.
_ROOT_BLOCK_ROWS = 64


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A regression task and the training settings that go with it."""

    name: str
    x_DinxN: np.ndarray  # inputs, one column per sample (d_in x N x T for a sequence task)
    y_DoutxN: np.ndarray  # targets, one column per sample (d_out x N x T for a sequence task)
    embedding_std: float  # s_E, the standard deviation of the entries of W_E
    unembedding_std: float  # s_U, the standard deviation of the entries of W_U
    loss_scale: float  # c in J = c / (2 N) sum_n ||f_n - y_n||^2
    activation: str  # default activation of the hidden units
    learning_rate: float  # default eta
    steps: int  # default number of gradient steps K
    alpha: float = 1.0  # default residual scale; 1 is the MLU regime

    @property
    def d_in(self) -> int:
        return self.x_DinxN.shape[0]

    @property
    def d_out(self) -> int:
        return self.y_DoutxN.shape[0]

    @property
    def num_samples(self) -> int:
        return self.x_DinxN.shape[1]

    @property
    def num_tokens(self) -> int | None:
        """T, the tokens per sample of a sequence task; None for a task of single vectors."""
        return self.x_DinxN.shape[2] if self.x_DinxN.ndim == 3 else None

    @property
    def span_dim(self) -> int:
        """r = d_in + d_out, the dimension of the span of the embeddings."""
        return self.d_in + self.d_out


def paper_tanh(data_seed: int = 0) -> Task:
    """Return the nonlinear pure-noise task: 10 Gaussian samples, 5 inputs, 5 outputs."""
    d_in, d_out, num_samples = 5, 5, 10
    rng = np.random.default_rng(data_seed)
    return Task(
        name="paper-tanh",
        x_DinxN=rng.standard_normal((d_in, num_samples)),
        y_DoutxN=rng.standard_normal((d_out, num_samples)),
        embedding_std=float(np.sqrt(1.0 / d_in)),
        unembedding_std=float(np.sqrt(d_out)),
        loss_scale=1.0 / d_out,
        activation="tanh",
        learning_rate=1.0,
        steps=15,
    )


def paper_linear(data_seed: int = 0) -> Task:
    """Return the linear one-sample task; its large-D limit output is f_k = c_k y exactly.

    ``data_seed`` is accepted for a uniform signature; the data of this task are fixed.
    """
    del data_seed
    x = np.array([[0.48000164], [-0.13361224], [0.62589632]])
    y = np.array([[0.62789524], [0.26597976], [-0.05539644]])
    return Task(
        name="paper-linear",
        x_DinxN=x,
        y_DoutxN=y,
        embedding_std=1.0,
        unembedding_std=1.0,
        loss_scale=1.0,
        activation="identity",
        learning_rate=0.1,
        steps=15,
    )


def seq_tanh(data_seed: int = 0) -> Task:
    """Return the sequence pure-noise task: 4 samples of 4 Gaussian tokens, 3 inputs, 3 outputs."""
    d_in, d_out, num_samples, num_tokens = 3, 3, 4, 4
    rng = np.random.default_rng(data_seed)
    return Task(
        name="seq-tanh",
        x_DinxN=rng.standard_normal((d_in, num_samples, num_tokens)),
        y_DoutxN=rng.standard_normal((d_out, num_samples, num_tokens)),
        embedding_std=float(np.sqrt(1.0 / d_in)),
        unembedding_std=float(np.sqrt(d_out)),
        loss_scale=1.0 / d_out,
        activation="tanh",
        learning_rate=0.1,
        steps=10,
    )


TASKS = {"paper-tanh": paper_tanh, "paper-linear": paper_linear, "seq-tanh": seq_tanh}


def get_task(name: str, data_seed: int = 0) -> Task:
    """Return the task called ``name``; raises ValueError naming the known tasks."""
    try:
        make_task = TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task {name!r}; choose one of: {known}") from None
    return make_task(data_seed)


def root_embedding_rows(key: jax.Array, num_rows: int, span_dim: int) -> jax.Array:
    """Return the first ``num_rows`` rows of a standard Gaussian root matrix with ``span_dim`` columns.

    The rows do not depend on ``num_rows``: row i is the same for every request that includes it.
    Draws are in float32 so that float32 and float64 models share the same embeddings.
    """
    num_blocks = -(-num_rows // _ROOT_BLOCK_ROWS)
    blocks = [
        jax.random.normal(jax.random.fold_in(key, block), (_ROOT_BLOCK_ROWS, span_dim), jnp.float32)
        for block in range(num_blocks)
    ]
    return jnp.concatenate(blocks, axis=0)[:num_rows]


def coupled_embeddings(
    key: jax.Array, task: Task, dim: int, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Return the frozen embeddings (W_E, W_U) of a model of dimension D = ``dim``.

    W_E is D x d_in with entries N(0, s_E^2) and W_U is D x d_out with entries N(0, s_U^2). Models
    of different D built from the same key share their leading rows.
    """
    rows_DxR = root_embedding_rows(key, dim, task.span_dim).astype(dtype)
    w_embed_DxDin = task.embedding_std * rows_DxR[:, : task.d_in]
    w_unembed_DxDout = task.unembedding_std * rows_DxR[:, task.d_in :]
    return w_embed_DxDin, w_unembed_DxDout
