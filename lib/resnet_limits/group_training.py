"""Train several seeds of one shape at once, with all K steps inside one compiled function.

``train_group(task, config, seeds)`` returns, for every seed, the trajectory that
``training.train`` gives for the network that ``Comparison.events`` builds from that seed, equal
up to rounding. It differs from ``training.train`` in how it computes, not in what:

* seeds of one shape are stacked and mapped with ``jax.vmap``, and the K steps run in
  ``jax.lax.scan`` inside one ``jax.jit`` call, which returns the loss, f and H_L of every step;
* the forward and backward passes are written by hand (H forward stream, B = D dJ/dH backward
  stream, P and Q pre-activations, as in ``training``), on streams stored samples-major (N x D),
  the layout in which XLA's CPU matrix products with N = 10 columns ran fastest;
* the unit weights are kept factored. Each gradient-descent update of U_l or V_l is a sum of
  N outer products,

      U_l <- U_l - (eta / alpha) H_{l-1} (sigma'(P_l) * Q_l)^T,   V_l <- V_l - (eta / alpha) B_l sigma(P_l)^T,

  so after k steps U_l = U0_l + A_l^T C_l with A_l (k N x D) and C_l (k N x M). The passes read
  U0 and V0 as read-only matrices and add thin products with the factors, so a step reads each of
  U0 and V0 twice and writes neither. Every ``fold_period`` steps the factors are added into U0
  and V0 and start again from zero, which bounds their memory. The steps between two folds are
  unrolled, so that step k multiplies only the k N factor rows written so far. A fold period of 1
  is the direct update: U and V are updated in place during the backward pass and no factors
  exist.

Divergence follows ``training.DivergenceCheck``: the compiled function runs all K steps, and the
records from the first diverged step on are dropped afterwards, as ``training.train`` drops them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from resnet_limits.config import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    ConfigError,
    MemoryBudgetError,
    RunConfig,
    bytes_per_float,
    check_seed,
    format_gib,
    jax_dtype,
)
from resnet_limits.models import initial_units
from resnet_limits.tasks import Task, coupled_embeddings
from resnet_limits.training import DivergenceCheck, Trajectory

# -- the hand-written passes -----------------------------------------------------------------


class Units(NamedTuple):
    """Unit weights of one network, U = U0 + A_U^T C_U and V = V0 + A_V^T C_V per block.

    The factors have R rows (R = 0 for plain weights). Rows not yet written are zero.
    """

    u0_LxDxM: jax.Array
    v0_LxDxM: jax.Array
    au_LxRxD: jax.Array
    cu_LxRxM: jax.Array
    av_LxRxD: jax.Array
    cv_LxRxM: jax.Array

    @classmethod
    def plain(cls, u_LxDxM: jax.Array, v_LxDxM: jax.Array, rows: int = 0) -> Units:
        """Return the weights U, V with zero factors of ``rows`` rows."""
        depth, dim, width = u_LxDxM.shape
        zeros_LxRxD = jnp.zeros((depth, rows, dim), u_LxDxM.dtype)
        zeros_LxRxM = jnp.zeros((depth, rows, width), u_LxDxM.dtype)
        return cls(u_LxDxM, v_LxDxM, zeros_LxRxD, zeros_LxRxM, zeros_LxRxD, zeros_LxRxM)

    @property
    def rows(self) -> int:
        return self.au_LxRxD.shape[1]

    def dense(self) -> tuple[jax.Array, jax.Array]:
        """Return U and V as L x D x M arrays."""
        u_LxDxM = self.u0_LxDxM + jnp.einsum("lrd,lrm->ldm", self.au_LxRxD, self.cu_LxRxM)
        v_LxDxM = self.v0_LxDxM + jnp.einsum("lrd,lrm->ldm", self.av_LxRxD, self.cv_LxRxM)
        return u_LxDxM, v_LxDxM


class Streams(NamedTuple):
    """Forward-pass arrays that the backward pass uses, per block l = 1..L."""

    h_LxNxD: jax.Array  # H_{l-1}, the input of block l
    p_LxNxM: jax.Array  # P_l
    s_LxNxM: jax.Array  # sigma(P_l)


def _sigma(activation: str):
    if activation == "tanh":
        return jnp.tanh
    if activation == "identity":
        return lambda z: z
    raise ConfigError(f"unknown activation {activation!r}; choose one of: tanh, identity")


def _sigma_prime(p_NxM: jax.Array, s_NxM: jax.Array, activation: str) -> jax.Array:
    """Return sigma'(P) from P and sigma(P)."""
    if activation == "tanh":
        return 1 - s_NxM * s_NxM
    return jnp.ones_like(p_NxM)


def forward_pass(
    units: Units, h0_NxD: jax.Array, *, alpha: float | jax.Array, activation: str, rows: int | None = None
) -> tuple[jax.Array, Streams]:
    """Return H_L (N x D) and the per-block streams, from H_0 given samples-major (N x D).

    Block l computes P_l = U_l^T H_{l-1} / D and H_l = H_{l-1} + alpha / (L M) V_l sigma(P_l),
    with U_l and V_l read through the first ``rows`` rows of their factors (all rows if None).
    """
    depth, dim, width = units.u0_LxDxM.shape
    metric = 1.0 / dim
    branch_scale = alpha / (depth * width)
    sigma = _sigma(activation)

    def block(h_NxD, weights):
        u0_DxM, v0_DxM, *factors = weights
        au_RxD, cu_RxM, av_RxD, cv_RxM = (factor[:rows] for factor in factors)
        p_NxM = metric * (h_NxD @ u0_DxM + (h_NxD @ au_RxD.T) @ cu_RxM)
        s_NxM = sigma(p_NxM)
        branch_NxD = s_NxM @ v0_DxM.T + (s_NxM @ cv_RxM.T) @ av_RxD
        return h_NxD + branch_scale * branch_NxD, (h_NxD, p_NxM, s_NxM)

    h_NxD, (h_LxNxD, p_LxNxM, s_LxNxM) = jax.lax.scan(block, h0_NxD, tuple(units))
    return h_NxD, Streams(h_LxNxD, p_LxNxM, s_LxNxM)


def backward_pass(
    units: Units, streams: Streams, b_NxD: jax.Array, *, alpha: float | jax.Array, activation: str,
    rows: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Return B_l (L x N x D) and sigma'(P_l) * Q_l (L x N x M) for l = 1..L, from B_L (N x D).

    B = D dJ/dH runs B_{l-1} = B_l + alpha / (L M) U_l (sigma'(P_l) * Q_l), Q_l = V_l^T B_l / D,
    with U_l and V_l read through the first ``rows`` rows of their factors (all rows if None).
    """
    depth, dim, width = units.u0_LxDxM.shape
    metric = 1.0 / dim
    branch_scale = alpha / (depth * width)

    def block(b_NxD, inputs):
        (u0_DxM, v0_DxM, *factors), (p_NxM, s_NxM) = inputs
        au_RxD, cu_RxM, av_RxD, cv_RxM = (factor[:rows] for factor in factors)
        q_NxM = metric * (b_NxD @ v0_DxM + (b_NxD @ av_RxD.T) @ cv_RxM)
        c_NxM = _sigma_prime(p_NxM, s_NxM, activation) * q_NxM
        branch_NxD = c_NxM @ u0_DxM.T + (c_NxM @ cu_RxM.T) @ au_RxD
        return b_NxD + branch_scale * branch_NxD, (b_NxD, c_NxM)

    inputs = (tuple(units), (streams.p_LxNxM, streams.s_LxNxM))
    _, (b_LxNxD, c_LxNxM) = jax.lax.scan(block, b_NxD, inputs, reverse=True)
    return b_LxNxD, c_LxNxM


def output_and_loss(h_NxD, w_unembed_DxDout, y_NxDout, loss_scale):
    """Return f (N x d_out), J and g = dJ/df (N x d_out)."""
    dim, num_samples = h_NxD.shape[1], h_NxD.shape[0]
    f_NxDout = (1.0 / dim) * (h_NxD @ w_unembed_DxDout)
    residual_NxDout = f_NxDout - y_NxDout
    loss = loss_scale / (2 * num_samples) * jnp.sum(residual_NxDout**2)
    return f_NxDout, loss, (loss_scale / num_samples) * residual_NxDout


def _direct_step(units: Units, streams: Streams, b_NxD, *, step_size, alpha, activation) -> Units:
    """Run the backward pass and update U and V in it, block by block (plain weights only).

    Each block reads U_l and V_l for the backward products and writes the updated copies while
    they are still in cache.
    """
    depth, dim, width = units.u0_LxDxM.shape
    metric = 1.0 / dim
    branch_scale = alpha / (depth * width)

    def block(b_NxD, inputs):
        u_DxM, v_DxM, h_NxD, p_NxM, s_NxM = inputs
        q_NxM = metric * (b_NxD @ v_DxM)
        c_NxM = _sigma_prime(p_NxM, s_NxM, activation) * q_NxM
        b_previous_NxD = b_NxD + branch_scale * (c_NxM @ u_DxM.T)
        u_DxM = u_DxM - step_size * (h_NxD.T @ c_NxM)
        v_DxM = v_DxM - step_size * (b_NxD.T @ s_NxM)
        return b_previous_NxD, (u_DxM, v_DxM)

    inputs = (units.u0_LxDxM, units.v0_LxDxM, *streams)
    _, (u_LxDxM, v_LxDxM) = jax.lax.scan(block, b_NxD, inputs, reverse=True)
    return Units.plain(u_LxDxM, v_LxDxM)


# -- one network, all steps --------------------------------------------------------------------


class _Problem(NamedTuple):
    """The per-seed data and settings that the compiled training loop takes as arrays."""

    h0_NxD: jax.Array
    w_unembed_DxDout: jax.Array
    y_NxDout: jax.Array
    loss_scale: jax.Array
    step_size: jax.Array  # eta / alpha
    alpha: jax.Array


def _step(units: Units, problem: _Problem, row: int | None, activation: str):
    """Run one forward pass and one update; return the new units and the step's loss, f and H_L.

    ``row`` is the number of factor rows written so far, which the passes read and after which
    this step writes its N rows; None selects the direct update.
    """
    h_NxD, streams = forward_pass(units, problem.h0_NxD, alpha=problem.alpha, activation=activation, rows=row)
    f_NxDout, loss, g_NxDout = output_and_loss(h_NxD, problem.w_unembed_DxDout, problem.y_NxDout,
                                               problem.loss_scale)
    b_NxD = g_NxDout @ problem.w_unembed_DxDout.T
    record = (loss, f_NxDout, h_NxD)
    if row is None:
        units = _direct_step(units, streams, b_NxD, step_size=problem.step_size, alpha=problem.alpha,
                             activation=activation)
        return units, record

    b_LxNxD, c_LxNxM = backward_pass(units, streams, b_NxD, alpha=problem.alpha, activation=activation,
                                     rows=row)
    start = (0, row, 0)
    units = units._replace(
        au_LxRxD=jax.lax.dynamic_update_slice(units.au_LxRxD, streams.h_LxNxD, start),
        cu_LxRxM=jax.lax.dynamic_update_slice(units.cu_LxRxM, -problem.step_size * c_LxNxM, start),
        av_LxRxD=jax.lax.dynamic_update_slice(units.av_LxRxD, b_LxNxD, start),
        cv_LxRxM=jax.lax.dynamic_update_slice(units.cv_LxRxM, -problem.step_size * streams.s_LxNxM, start),
    )
    return units, record


def _run_steps(units: Units, problem: _Problem, num_steps: int, factored: bool, activation: str):
    """Run ``num_steps`` steps from factors with no rows written; return units and records.

    The direct update runs the steps in ``jax.lax.scan``. Factored steps are unrolled, so that
    the number of factor rows each step reads is static: step k reads the k N rows written
    before it rather than all of them, which about halves the thin products. Unrolling
    costs compile time in proportion to ``num_steps``.
    """
    if not factored:
        return jax.lax.scan(lambda units, _: _step(units, problem, None, activation), units, None,
                            length=num_steps)
    num_samples = problem.h0_NxD.shape[0]
    records = []
    for index in range(num_steps):
        units, record = _step(units, problem, index * num_samples, activation)
        records.append(record)
    return units, jax.tree.map(lambda *parts: jnp.stack(parts), *records)


def _fold(units: Units) -> Units:
    """Add the factors into U0 and V0 and clear them."""
    u_LxDxM, v_LxDxM = units.dense()
    return Units.plain(u_LxDxM, v_LxDxM, units.rows)


def _train_network(key, w_unembed_DxDout, h0_NxD, y_NxDout, loss_scale, step_size, alpha, *,
                   depth, width, steps, fold_period, activation, dtype):
    """Return the loss (K + 1), f ((K + 1) x N x d_out) and H_L ((K + 1) x N x D) of one seed."""
    num_samples, dim = h0_NxD.shape
    problem = _Problem(h0_NxD, w_unembed_DxDout, y_NxDout, loss_scale, step_size, alpha)
    u_LxDxM, v_LxDxM = initial_units(key, depth, dim, width, 1.0 / dim, dtype)
    factored = fold_period > 1
    units = Units.plain(u_LxDxM, v_LxDxM, fold_period * num_samples if factored else 0)

    # Steps 0..K-1 in chunks of fold_period steps; the factors are folded between chunks.
    num_chunks = -(-steps // fold_period)
    last_chunk = steps - (num_chunks - 1) * fold_period
    records = []
    if num_chunks > 1:

        def chunk(units, _):
            units, chunk_records = _run_steps(units, problem, fold_period, factored, activation)
            return _fold(units) if factored else units, chunk_records

        units, chunked = jax.lax.scan(chunk, units, None, length=num_chunks - 1)
        records.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), chunked))
    units, last = _run_steps(units, problem, last_chunk, factored, activation)
    records.append(last)

    # Step K: a forward pass only.
    h_NxD, _ = forward_pass(units, h0_NxD, alpha=alpha, activation=activation)
    f_NxDout, loss, _ = output_and_loss(h_NxD, w_unembed_DxDout, y_NxDout, loss_scale)
    records.append(jax.tree.map(lambda a: a[None], (loss, f_NxDout, h_NxD)))
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *records)


@jax.jit(static_argnames=("depth", "width", "steps", "fold_period", "activation", "dtype", "seeds_per_map"))
def _train_networks(keys, w_unembed_SxDxDout, h0_SxNxD, y_NxDout, loss_scale, step_size, alpha, *,
                    depth, width, steps, fold_period, activation, dtype, seeds_per_map):
    """``_train_network`` over seeds (leading axis S), ``seeds_per_map`` of them at a time in ``jax.vmap``.

    Groups of seeds run one after another, so memory grows with ``seeds_per_map``, not with S.
    """
    static = dict(depth=depth, width=width, steps=steps, fold_period=fold_period, activation=activation,
                  dtype=dtype)

    def one(inputs):
        key, w_unembed_DxDout, h0_NxD = inputs
        return _train_network(key, w_unembed_DxDout, h0_NxD, y_NxDout, loss_scale, step_size, alpha, **static)

    # With batch_size=1, lax.map would still add a batch axis of size 1, which makes XLA's CPU
    # matrix products several times slower, so one seed at a time is a plain scan.
    batch_size = seeds_per_map if seeds_per_map > 1 else None
    return jax.lax.map(one, (keys, w_unembed_SxDxDout, h0_SxNxD), batch_size=batch_size)


# -- planning: fold period, memory, seeds per map ------------------------------------------------


# Estimated costs per step in units of L D M element reads. The two passes read U and V twice
# (4 units). The thin products cost THIN_COST R (D + M) / (D M) units with R factor rows, a fold
# FOLD_COST units, and the direct update DIRECT_UPDATE_COST units on top of the passes. The
# constants come from timings of the passes, the thin products and a fold at L = 50,
# M = D = 1000, N = 10, float32, on 2 shared CPU cores.
THIN_COST = 5.7
FOLD_COST = 7.0
DIRECT_UPDATE_COST = 5.0

# Maximum fold period: the steps of a period are unrolled, so compile time grows with it.
MAX_FOLD_PERIOD = 32

# Shapes with L D M up to this many weights per matrix train their seeds together in jax.vmap.
# Timed per step and seed on 2 shared CPU cores, 3 to 5 seeds in jax.vmap against one after another:
# 0.04 against 0.09 ms at L = 8, M = D = 16, about equal at L = 16, M = D = 64, and 6.7 against
# 2.9 ms at L = 50, M = D = 100, because XLA's batched CPU matrix products are slower.
MAX_VMAP_WEIGHTS = 2**16


def choose_fold_period(L: int, M: int, D: int, N: int, K: int) -> int:
    """Return the number of steps between folds of the factors; 1 selects the direct update.

    The estimated cost per step of a fold period F, with R = F N factor rows, is
    4 + THIN_COST R (D + M) / (D M) + FOLD_COST / F (no fold term when F >= K). It prices every
    step as if it multiplied all R rows, an upper bound, since step k of a period reads only the
    k N rows written before it. The direct update costs 4 + DIRECT_UPDATE_COST. The period with
    the lowest cost, at most MAX_FOLD_PERIOD, wins. NOTE: the constants were fitted at one shape
    on one machine.
    """
    del L
    thin = THIN_COST * N * (D + M) / (D * M)

    def cost(period: int) -> float:
        fold = 0.0 if period >= K else FOLD_COST / period
        return 4 + thin * period + fold

    best = min(range(2, min(K, MAX_FOLD_PERIOD) + 1), key=cost, default=None)
    if best is None or cost(best) >= 4 + DIRECT_UPDATE_COST:
        return 1
    return best


def estimate_group_bytes(L: int, M: int, D: int, N: int, K: int, d_out: int, dtype: str, *,
                         seeds_per_map: int, num_seeds: int, fold_period: int) -> int:
    """Estimate the peak memory of ``train_group``, in bytes.

    Per seed trained at the same time: 9 L D M floats for drawing and training U and V, the
    factors (2 L R (D + M) floats with R = fold_period N rows, none for the direct update) and
    the streams kept for the backward pass (L N (2 D + 3 M)). Per seed of the group: the records
    of K + 1 steps. The Python process and the compiler come on top.
    """
    rows = fold_period * N if fold_period > 1 else 0
    # NOTE: 9 L D M is the peak measured at L = 50, M = D = 1000 in float32 (jax 0.10.2, CPU).
    # Drawing U and V with JAX's threefry generator alone peaked at about 7 L D M floats.
    per_seed = 9 * L * D * M + 2 * L * rows * (D + M) + L * N * (2 * D + 3 * M)
    records = (K + 1) * N * (D + d_out + 1)
    return bytes_per_float(dtype) * (seeds_per_map * per_seed + num_seeds * records)


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """The update path and seed grouping of one ``train_group`` call."""

    fold_period: int  # steps between folds of the factors; 1 is the direct update
    seeds_per_map: int  # seeds trained together in jax.vmap; groups of them run one after another
    estimate_bytes: int  # memory estimate of the whole group


def plan_group(config: RunConfig, num_samples: int, d_out: int, num_seeds: int,
               memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> GroupPlan:
    """Return the plan for ``num_seeds`` seeds of a resolved ``config``.

    All seeds run in one compiled call. Small shapes (L D M <= MAX_VMAP_WEIGHTS) train as many
    seeds together as the memory budget allows, larger shapes one seed at a time. Raises
    MemoryBudgetError when the group does not fit with one seed at a time.
    """
    L, M, D, K = config.L, config.M, config.D, config.K
    fold_period = choose_fold_period(L, M, D, num_samples, K)

    def estimate(seeds_per_map: int) -> int:
        return estimate_group_bytes(L, M, D, num_samples, K, d_out, config.dtype, seeds_per_map=seeds_per_map,
                                    num_seeds=num_seeds, fold_period=fold_period)

    if estimate(1) > memory_budget_bytes:
        raise MemoryBudgetError(
            f"{num_seeds} seeds of shape L={L}, M={M}, D={D} need about {format_gib(estimate(1))}, "
            f"over the memory budget of {format_gib(memory_budget_bytes)}; reduce L, M or D, "
            "train fewer seeds per group, or raise memory_budget_bytes"
        )
    seeds_per_map = 1
    if L * D * M <= MAX_VMAP_WEIGHTS:
        while seeds_per_map < num_seeds and estimate(seeds_per_map + 1) <= memory_budget_bytes:
            seeds_per_map += 1
    return GroupPlan(fold_period, seeds_per_map, estimate(seeds_per_map))


# -- the entry point ---------------------------------------------------------------------------


# Maximum number of compiled training functions kept. A sweep compiles one per shape and rarely
# needs it again. Each one keeps about 150 memory mappings of the process (measured on CPU with
# jax 0.10.2), so a 400-shape sweep that kept them all reached the kernel's default limit of
# 65530 mappings (vm.max_map_count), and LLVM failed with "Cannot allocate memory".
MAX_COMPILED_SHAPES = 32


def train_group(task: Task, config: RunConfig, seeds: Sequence[int], *,
                memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> list[Trajectory]:
    """Train the network of every seed for K steps; return their trajectories in seed order.

    The network of seed s is the one that ``Comparison.events`` builds from
    ``RunConfig(..., seed=s)``: embeddings from the first half of ``jax.random.split(key(s))``,
    units from the second. ``config.seed`` is not used. ``task`` gives the data and must be the
    task that ``config.task`` names; K, eta, alpha and the activation come from the resolved
    ``config``. Raises ConfigError for invalid settings or seeds and MemoryBudgetError when one
    seed exceeds ``memory_budget_bytes``.
    """
    config = config.resolved()
    if task.name != config.task:
        raise ConfigError(f"task {task.name!r} does not match config.task {config.task!r}; "
                          "pass the task that the config names")
    seeds = [check_seed(seed, "seeds") for seed in seeds]
    if not seeds:
        return []
    dtype = jax_dtype(config.dtype)
    plan = plan_group(config, task.num_samples, task.d_out, len(seeds), memory_budget_bytes)

    x_DinxN = jnp.asarray(task.x_DinxN, dtype)
    y_DoutxN = jnp.asarray(task.y_DoutxN, dtype)
    loss_scale = jnp.asarray(task.loss_scale, dtype)
    scalars = dict(
        y_NxDout=y_DoutxN.T,
        loss_scale=loss_scale,
        step_size=jnp.asarray(config.learning_rate / config.alpha, dtype),
        alpha=jnp.asarray(config.alpha, dtype),
    )
    static = dict(depth=config.L, width=config.M, steps=config.K, fold_period=plan.fold_period,
                  activation=config.activation, dtype=dtype, seeds_per_map=plan.seeds_per_map)

    keys, w_unembeds, h0s = [], [], []
    for seed in seeds:
        key_embed, key_units = jax.random.split(jax.random.key(seed))
        w_embed, w_unembed = coupled_embeddings(key_embed, task, config.D, dtype)
        keys.append(key_units)
        w_unembeds.append(w_unembed)
        h0s.append((w_embed @ x_DinxN).T)
    if _train_networks._cache_size() >= MAX_COMPILED_SHAPES:
        _train_networks.clear_cache()
    loss_SxK, f_SxKxNxDout, h_SxKxNxD = _train_networks(
        jnp.stack(keys), jnp.stack(w_unembeds), jnp.stack(h0s), **scalars, **static
    )
    loss_SxK = np.asarray(loss_SxK)
    f_SxKxDoutxN = np.asarray(f_SxKxNxDout).transpose(0, 1, 3, 2)
    h_SxKxDxN = np.asarray(h_SxKxNxD).transpose(0, 1, 3, 2)
    return [
        _trajectory(loss_SxK[index], f_SxKxDoutxN[index], h_SxKxDxN[index], y_DoutxN, loss_scale)
        for index in range(len(seeds))
    ]


def _trajectory(loss_K, f_KxDoutxN, h_KxDxN, y_DoutxN, loss_scale) -> Trajectory:
    """Keep the steps before the first diverged one, as ``training.train`` does."""
    check_divergence = DivergenceCheck(y_DoutxN, loss_scale)
    num_kept = len(loss_K)
    for step in range(len(loss_K)):
        if check_divergence(step, float(loss_K[step]), h_KxDxN[step]):
            num_kept = step
            break
    return Trajectory(
        loss_K=np.array([float(loss) for loss in loss_K[:num_kept]]),
        f_KxDoutxN=np.ascontiguousarray(f_KxDoutxN[:num_kept]),
        h_KxDxN=np.ascontiguousarray(h_KxDxN[:num_kept]),
        diverged_at=num_kept if num_kept < len(loss_K) else None,
    )
