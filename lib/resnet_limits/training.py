"""Full-batch gradient descent on the unit weights U and V, step by step.

The raw learning rate is eta L M / (alpha^2 metric), which is eta L M D / alpha^2 for the finite
network. Under it the per-unit updates are O(1) as L, M and D grow:

    u_j <- u_j - (eta / alpha) sum_n h_n sigma'(p_jn) q_jn,   q = V^T B / D
    v_j <- v_j - (eta / alpha) sum_n b_n sigma(p_jn),          B = D dJ/dH

Step k is the forward pass after k updates; step 0 is the initialisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# A run counts as diverged once its loss exceeds this factor times the larger of its initial loss
# and the loss of the zero output, even while the numbers are still finite. A loss a millionfold
# above both has left the regime that the limits describe, whether it grew there or started there.
DIVERGENCE_FACTOR = 1e6


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """The forward pass at step k: loss, output f (d_out x N) and last stream H_L (D x N).

    ``diverged`` is True when the loss or the stream is not finite. It is also True when the
    loss exceeds DIVERGENCE_FACTOR times the larger of the loss at step 0 and the loss of the
    zero output. Step 0 itself is compared with the loss of the zero output alone.
    """

    step: int
    loss: float
    f_DoutxN: np.ndarray
    h_DxN: np.ndarray
    diverged: bool = False


@dataclasses.dataclass
class Trajectory:
    """Steps 0..k of one training run, and the step at which it diverged, if it did."""

    loss_K: np.ndarray
    f_KxDoutxN: np.ndarray
    h_KxDxN: np.ndarray
    diverged_at: int | None = None

    @classmethod
    def from_records(cls, records: list[StepRecord], last: StepRecord) -> Trajectory:
        """Collect the records before divergence; ``last`` is the final record seen."""
        diverged_at = last.step if last.diverged else None
        return cls(
            loss_K=np.array([r.loss for r in records]),
            f_KxDoutxN=np.array([r.f_DoutxN for r in records]).reshape(-1, *last.f_DoutxN.shape),
            h_KxDxN=np.array([r.h_DxN for r in records]).reshape(-1, *last.h_DxN.shape),
            diverged_at=diverged_at,
        )

    @property
    def num_steps(self) -> int:
        """Number of gradient updates recorded (the last step index)."""
        return len(self.loss_K) - 1


def mean_squared_loss(f_DoutxN: jax.Array, y_DoutxN: jax.Array, loss_scale: float) -> jax.Array:
    """Return J = c / (2 N) sum_n ||f_n - y_n||^2.

    For sequences (d_out x N x T) f_n and y_n contain all T tokens of sample n, so the squared error
    is summed over tokens and averaged over samples.
    """
    num_samples = y_DoutxN.shape[1]
    return loss_scale / (2 * num_samples) * jnp.sum((f_DoutxN - y_DoutxN) ** 2)


class DivergenceCheck:
    """The divergence rule of ``StepRecord``, applied to steps 0, 1, 2, ... in order.

    The loss of the zero output is computed in the dtype of ``y_DoutxN``, as training computes
    its losses.
    """

    def __init__(self, y_DoutxN: jax.Array, loss_scale: jax.Array | float):
        zero_output_loss = float(mean_squared_loss(jnp.zeros_like(y_DoutxN), y_DoutxN, loss_scale))
        self.level = DIVERGENCE_FACTOR * max(zero_output_loss, np.finfo(np.float32).tiny)

    def __call__(self, step: int, loss: float, h_DxN: np.ndarray) -> bool:
        """Return True when the step with this loss and last stream H_L has diverged."""
        diverged = not (np.isfinite(loss) and np.all(np.isfinite(h_DxN))) or loss > self.level
        if step == 0 and not diverged:
            self.level = max(self.level, DIVERGENCE_FACTOR * loss)
        return diverged


def raw_learning_rates(model: nnx.Module, params: nnx.State, learning_rate: float, dtype) -> nnx.State:
    """Return the raw step of every parameter: eta times the model's learning-rate multiplier.

    ``model.learning_rate_multiplier()`` returns one factor for all parameters, or a mapping from
    parameter name to factor when parameter groups scale differently (``MLUTransformer``).
    """
    multiplier = model.learning_rate_multiplier()

    def rate(path, _):
        factor = multiplier[path[0].key] if isinstance(multiplier, Mapping) else multiplier
        return jnp.asarray(learning_rate * factor, dtype)

    return jax.tree_util.tree_map_with_path(rate, params)


@jax.jit(static_argnums=0)
def _gradient_step(graphdef, params, frozen, x_DinxN, y_DoutxN, loss_scale, raw_learning_rate):
    """Return the loss, f and H_L at ``params`` and the parameters after one gradient step.

    ``raw_learning_rate`` contains one scalar step per parameter, in the structure of ``params``.
    """

    def loss_fn(trainable):
        model = nnx.merge(graphdef, trainable, frozen)
        f_DoutxN, h_DxN = model(x_DinxN)
        return mean_squared_loss(f_DoutxN, y_DoutxN, loss_scale), (f_DoutxN, h_DxN)

    (loss, (f_DoutxN, h_DxN)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    new_params = jax.tree.map(lambda p, g, rate: p - rate * g, params, grads, raw_learning_rate)
    return new_params, loss, f_DoutxN, h_DxN


def training_steps(
    model: nnx.Module,
    x_DinxN,
    y_DoutxN,
    *,
    steps: int,
    learning_rate: float,
    loss_scale: float,
) -> Iterator[StepRecord]:
    """Train ``model`` in place for ``steps`` updates and yield the forward pass of each step 0..K.

    ``model`` is any NNX module whose call maps the inputs to (f, H_L) and that has a
    ``learning_rate_multiplier`` method, such as ``MLUResNet`` and ``MLUTransformer``. Inputs and
    targets may carry a token axis after the sample axis (d x N x T).

    The iterator stops after the first diverged step, so a caller sees a diverged run as a last
    record with ``diverged`` True. The model then has the parameters of that step.
    """
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    dtype = jax.tree.leaves(params)[0].dtype
    x_DinxN = jnp.asarray(x_DinxN, dtype)
    y_DoutxN = jnp.asarray(y_DoutxN, dtype)
    raw_learning_rate = raw_learning_rates(model, params, learning_rate, dtype)
    loss_scale = jnp.asarray(loss_scale, dtype)

    check_divergence = DivergenceCheck(y_DoutxN, loss_scale)
    for step in range(steps + 1):
        new_params, loss, f_DoutxN, h_DxN = _gradient_step(
            graphdef, params, frozen, x_DinxN, y_DoutxN, loss_scale, raw_learning_rate
        )
        loss = float(loss)
        h_DxN = np.asarray(h_DxN)
        diverged = check_divergence(step, loss, h_DxN)
        record = StepRecord(step, loss, np.asarray(f_DoutxN), h_DxN, diverged)
        yield record
        if diverged or step == steps:
            break
        params = new_params
        nnx.update(model, params)


def train(model: nnx.Module, x_DinxN, y_DoutxN, **kwargs) -> Trajectory:
    """Train ``model`` and return its trajectory; keyword arguments as for ``training_steps``."""
    records = []
    for record in training_steps(model, x_DinxN, y_DoutxN, **kwargs):
        if not record.diverged:
            records.append(record)
    return Trajectory.from_records(records, last=record)
