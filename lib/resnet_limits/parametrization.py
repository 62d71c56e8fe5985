"""Parametrisations as data: how multipliers, initial variances and learning rates scale with L, M, D.

A parametrisation fixes, for a ResNet of depth L, width M and embedding dimension D,

    P_l = m_in U_l^T H_{l-1}                       U_l entries N(0, var_U)
    H_l = H_{l-1} + m_res V_l sigma(P_l)           V_l entries N(0, var_V)
    f   = m_out W_U^T H_L
    U <- U - eta lr_U dJ/dU,   V <- V - eta lr_V dJ/dV

with every quantity m_in, m_res, m_out, var_U, var_V, lr_U, lr_V of the form c L^e_L M^e_M D^e_D
(a ``Scaling``). The frozen embeddings W_E and W_U are those of the task (``tasks``) under every
rule, so two rules differ only in the seven scalings. ``RULES`` is the table of named rules:

* ``mlu``: the maximal local feature update model of ``resnet_limits.models`` (Chizat, arXiv
  2509.10167): m_in = m_out = 1/D, var = D, m_res = alpha / (L M), lr = L M D / alpha^2.
* ``general-alpha``: the same model with residual scale alpha = GENERAL_ALPHA (4) in place of 1
  (``mlu(alpha)`` for any alpha), as in section 1 of the model's definition: m_res = alpha / (L M)
  and lr = L M D / alpha^2, so the function moves by O(1) per step while the units move by
  O(1/alpha). alpha -> infinity is the lazy limit, in which each block is linear in its own
  weights around their initial values (``phase`` measures the distance to that model).
* ``completep``: CompleteP (Dey et al. 2025, arXiv 2505.01618) with muP in width (Yang and Hu
  2021, arXiv 2011.14522): fan-in variances var_U = 1/D, var_V = 1/M, no input multiplier, a
  1/L branch multiplier, the muP readout m_out = 1/D, and lr_U = lr_V = L.
* ``depth-mup``: depth-muP (Yang et al. 2023, arXiv 2310.02244; Bordelon et al. 2023, arXiv
  2309.16620): as CompleteP but with 1/sqrt(L) branches and lr_U = lr_V = 1.
* ``standard``: fan-in initialisation with no multipliers: var_U = 1/D, var_V = 1/M, m_res = 1,
  m_out = 1/sqrt(D), and one learning rate for every size. Variance 1/fan-in is that of LeCun
  normal, the default kernel initialiser of ``nnx.Linear`` in flax 0.12.8.

Converting the published rules to this model. muP treats U (D -> M) and V (M -> D) as hidden
weights, both widths D and M grow, and the embeddings W_E and W_U are frozen here. Under
gradient descent muP gives hidden weights the fan-in variance and a learning rate that does
not depend on the width, and the readout the variance 1/fan-in^2, which is m_out = 1/D on the
O(1) entries of W_U. (For Adam the hidden learning rate is 1/fan-in instead, because Adam's
update of an entry is about the learning rate whatever the gradient's size.) CompleteP and
depth-muP scale the branch as L^-a, with a = 1 and a = 1/2, and are stated for Adam. An Adam
learning rate of L^(a-1) for the block weights makes each weight entry move by L^(a-1) per
step. Gradient descent reaches the same movement with a raw rate of L^(2a-1), because the
gradient of a block weight carries the branch multiplier L^-a. That gives lr = L for CompleteP
and lr = 1 for depth-muP. Each block's output then moves by O(1/L) per step and the stream by
O(1), and under depth-muP the weights of a block move by only L^-1/2.

Gauge and MLU coordinates. Scaling a weight by theta (var -> var theta^2, m -> m / theta,
lr -> lr theta^2) changes neither the function nor its gradient-descent trajectory, so only
the products m_in^2 var_U, m_res^2 var_V, m_in^2 lr_U and m_res^2 lr_V matter, with m_out.
``Parametrization.mlu_coordinates`` writes every rule in the gauge of the MLU model (m_in =
1/D, var_U = D u_variance, var_V = D) and returns, as Scalings:

    residual_scale = L M (m_res^2 var_V / D)^(1/2)      the alpha of the rule (1 for MLU)
    u_rate = m_in^2 lr_U D / (L M)                       lr_U in that gauge over L M D
    v_rate = m_res^2 lr_V L M / (D residual_scale^2)     lr_V in that gauge over L M D
    u_variance = m_in^2 var_U D                          1 for fan-in initialisation of U
    output = m_out D                                     1 for the MLU readout

MLU with residual scale alpha has residual_scale = alpha and u_rate = v_rate = 1 / alpha^2.
On the path L = M = D = n, CompleteP has all five equal to 1 (it is MLU there), depth-muP has
residual_scale = n^(1/2) and rates n^-1 (MLU with alpha = sqrt(n)), and the standard rule has
residual_scale = n, rates n^-1 and output = n^(1/2). ``in_mlu_gauge`` builds the converted
rule, which trains exactly as the original.

A rule that has the exact MLU form builds an ``MLUResNet`` and trains with ``training.train``
(``Parametrization.mlu_alpha``). Every rule also runs through ``general_training``, a plain JAX
implementation of the equations above, which ``coordinate_check`` uses to record, per size and
step, the RMS of the stream, of its per-step update, of the pre-activations and of the weight
updates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from resnet_limits.config import ConfigError, check_positive_float, check_positive_int, jax_dtype
from resnet_limits.models import MLUResNet, activation_function
from resnet_limits.sweeps.fits import Slope, fit_slope
from resnet_limits.tasks import Task, coupled_embeddings, get_task
from resnet_limits.training import Trajectory, mean_squared_loss, train

# Relative tolerance under which a learning-rate constant counts as 1 / alpha^2.
_MLU_CONSTANT_RTOL = 1e-12


@dataclasses.dataclass(frozen=True)
class Scaling:
    """A quantity c L^e_L M^e_M D^e_D."""

    constant: float = 1.0
    L: float = 0.0  # exponent of the depth
    M: float = 0.0  # exponent of the width
    D: float = 0.0  # exponent of the embedding dimension

    def value(self, L: int, M: int, D: int) -> float:
        return float(self.constant * float(L) ** self.L * float(M) ** self.M * float(D) ** self.D)

    def exponents(self) -> tuple[float, float, float]:
        return (self.L, self.M, self.D)

    def __mul__(self, other: Scaling) -> Scaling:
        return Scaling(self.constant * other.constant, self.L + other.L, self.M + other.M, self.D + other.D)

    def __pow__(self, power: float) -> Scaling:
        return Scaling(self.constant**power, self.L * power, self.M * power, self.D * power)

    def path_exponent(self, path: Sequence[float]) -> float:
        """Return e such that the value grows as n^e on the path L = n^p_L, M = n^p_M, D = n^p_D."""
        p_L, p_M, p_D = path
        return float(self.L * p_L + self.M * p_M + self.D * p_D)

    def formula(self) -> str:
        """Return the scaling as text, e.g. "L^-1 M^-1" or "1"."""
        factors = [] if self.constant == 1 else [f"{self.constant:g}"]
        for name, exponent in (("L", self.L), ("M", self.M), ("D", self.D)):
            if exponent == 1:
                factors.append(name)
            elif exponent != 0:
                factors.append(f"{name}^{exponent:g}")
        return " ".join(factors) or "1"


# The seven scalings of a rule, in table order, with a short description of each.
SCALING_FIELDS = {
    "input_multiplier": "m_in: P = m_in U^T H",
    "residual_multiplier": "m_res: H += m_res V sigma(P)",
    "output_multiplier": "m_out: f = m_out W_U^T H",
    "u_variance": "var_U: variance of the entries of U at initialisation",
    "v_variance": "var_V: variance of the entries of V at initialisation",
    "u_learning_rate": "lr_U: raw step of U is eta lr_U",
    "v_learning_rate": "lr_V: raw step of V is eta lr_V",
}


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """A parametrisation rule: the seven scalings of the module docstring, and a name."""

    name: str
    description: str
    input_multiplier: Scaling
    residual_multiplier: Scaling
    output_multiplier: Scaling
    u_variance: Scaling
    v_variance: Scaling
    u_learning_rate: Scaling
    v_learning_rate: Scaling

    def values(self, L: int, M: int, D: int) -> dict[str, float]:
        """Return the value of every scaling at the shape (L, M, D), keyed by field name."""
        for name, value, option in (("L", L, "L"), ("M", M, "M"), ("D", D, "D")):
            check_positive_int(name, value, option)
        return {field: getattr(self, field).value(L, M, D) for field in SCALING_FIELDS}

    def table(self) -> list[dict]:
        """Return one plain row per scaling: field, description, constant and the three exponents."""
        rows = []
        for field, description in SCALING_FIELDS.items():
            scaling = getattr(self, field)
            rows.append(
                {
                    "rule": self.name,
                    "quantity": field,
                    "description": description,
                    "formula": scaling.formula(),
                    "constant": scaling.constant,
                    "exponent_L": scaling.L,
                    "exponent_M": scaling.M,
                    "exponent_D": scaling.D,
                }
            )
        return rows

    def mlu_alpha(self) -> float | None:
        """Return alpha when this rule is exactly the MLU model with residual scale alpha, else None.

        The MLU form is m_in = m_out = 1/D, var_U = var_V = D, m_res = alpha / (L M) and
        lr_U = lr_V = L M D / alpha^2. Exponents are compared exactly, and the learning-rate
        constant to a relative 1e-12.
        """
        metric = Scaling(1.0, D=-1.0)
        variance = Scaling(1.0, D=1.0)
        residual = self.residual_multiplier
        alpha = residual.constant
        if alpha <= 0 or residual.exponents() != (-1.0, -1.0, 0.0):
            return None
        if self.input_multiplier != metric or self.output_multiplier != metric:
            return None
        if self.u_variance != variance or self.v_variance != variance:
            return None
        for rate in (self.u_learning_rate, self.v_learning_rate):
            if rate.exponents() != (1.0, 1.0, 1.0):
                return None
            if not math.isclose(rate.constant * alpha**2, 1.0, rel_tol=_MLU_CONSTANT_RTOL):
                return None
        return alpha

    def mlu_coordinates(self) -> dict[str, Scaling]:
        """Return the gauge-free quantities of the module docstring: residual scale, rates, U variance, output.

        Each is a Scaling relative to the MLU model at alpha = 1, where all five are 1.
        """
        residual_scale = (self.residual_multiplier**2 * self.v_variance * Scaling(1.0, D=-1.0)) ** 0.5
        residual_scale = residual_scale * Scaling(1.0, L=1.0, M=1.0)
        u_rate = self.input_multiplier**2 * self.u_learning_rate * Scaling(1.0, L=-1.0, M=-1.0, D=1.0)
        v_rate = (
            self.residual_multiplier**2 * self.v_learning_rate * Scaling(1.0, L=1.0, M=1.0, D=-1.0)
            * residual_scale**-2
        )
        return {
            "residual_scale": residual_scale,
            "u_rate": u_rate,
            "v_rate": v_rate,
            "u_variance": self.input_multiplier**2 * self.u_variance * Scaling(1.0, D=1.0),
            "output": self.output_multiplier * Scaling(1.0, D=1.0),
        }

    def in_mlu_gauge(self) -> Parametrization:
        """Return the equivalent rule with m_in = 1/D and var_V = D, which trains exactly as this one."""
        coordinates = self.mlu_coordinates()
        lmd = Scaling(1.0, L=1.0, M=1.0, D=1.0)
        return dataclasses.replace(
            self,
            name=f"{self.name} (MLU gauge)",
            input_multiplier=Scaling(1.0, D=-1.0),
            residual_multiplier=coordinates["residual_scale"] * Scaling(1.0, L=-1.0, M=-1.0),
            u_variance=coordinates["u_variance"] * Scaling(1.0, D=1.0),
            v_variance=Scaling(1.0, D=1.0),
            u_learning_rate=coordinates["u_rate"] * lmd,
            v_learning_rate=coordinates["v_rate"] * lmd,
        )

    def phase_point(self, path: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
        """Return where the rule sits in the phase diagram of ``resnet_limits.phase`` on a scaling path.

        ``path`` is (p_L, p_M, p_D) for L = n^p_L, M = n^p_M, D = n^p_D. The point is the exponent
        of the residual scale (``residual_exponent``) and of the learning rate in the MLU gauge over
        L M D (``rate_exponent``, the mean of the U and V exponents). ``on_plane`` is False, with
        the reasons in ``off_plane``, when the rule differs from the diagram's family by more than
        constants: U not of fan-in variance, another readout exponent, or U and V rates that
        scale differently.
        """
        coordinates = self.mlu_coordinates()
        exponent = {name: scaling.path_exponent(path) for name, scaling in coordinates.items()}
        reasons = []
        if abs(exponent["u_variance"]) > 1e-12:
            reasons.append(f"U variance grows as n^{exponent['u_variance']:g} relative to fan-in")
        if abs(exponent["output"]) > 1e-12:
            reasons.append(f"readout m_out D grows as n^{exponent['output']:g}")
        if abs(exponent["u_rate"] - exponent["v_rate"]) > 1e-12:
            reasons.append(f"U rate n^{exponent['u_rate']:g} but V rate n^{exponent['v_rate']:g}")
        return {
            "rule": self.name,
            "residual_exponent": exponent["residual_scale"],
            "rate_exponent": (exponent["u_rate"] + exponent["v_rate"]) / 2,
            "u_rate_exponent": exponent["u_rate"],
            "v_rate_exponent": exponent["v_rate"],
            "output_exponent": exponent["output"],
            "on_plane": not reasons,
            "off_plane": "; ".join(reasons),
        }


def mlu(alpha: float = 1.0) -> Parametrization:
    """Return the MLU rule with residual scale ``alpha``; alpha = 1 is this project's default model."""
    check_positive_float("alpha", alpha, "alpha", example=1.0)
    rate = Scaling(1.0 / alpha**2, L=1.0, M=1.0, D=1.0)
    return Parametrization(
        name="mlu" if alpha == 1.0 else f"mlu-alpha-{alpha:g}",
        description=(
            "maximal local feature update: 1/D multipliers on unit weights of variance D, residual "
            "scale alpha/(L M), raw learning rate eta L M D / alpha^2"
        ),
        input_multiplier=Scaling(1.0, D=-1.0),
        residual_multiplier=Scaling(alpha, L=-1.0, M=-1.0),
        output_multiplier=Scaling(1.0, D=-1.0),
        u_variance=Scaling(1.0, D=1.0),
        v_variance=Scaling(1.0, D=1.0),
        u_learning_rate=rate,
        v_learning_rate=rate,
    )


# The residual scale of the ``general-alpha`` rule: a fixed alpha above 1, towards the lazy regime.
GENERAL_ALPHA = 4.0


def general_alpha(alpha: float = GENERAL_ALPHA) -> Parametrization:
    """Return the MLU rule with residual scale ``alpha``, under the name "general-alpha"."""
    rule = mlu(alpha)
    return dataclasses.replace(
        rule,
        name="general-alpha",
        description=(
            f"MLU with residual scale alpha = {alpha:g}: branches alpha/(L M), raw learning rate "
            "eta L M D / alpha^2; alpha -> infinity is the lazy limit"
        ),
    )


COMPLETEP = Parametrization(
    name="completep",
    description=(
        "CompleteP (Dey et al. 2025) with muP in width, for gradient descent: fan-in initialisation, "
        "1/L branches, readout 1/D, raw learning rate eta L"
    ),
    input_multiplier=Scaling(),
    residual_multiplier=Scaling(1.0, L=-1.0),
    output_multiplier=Scaling(1.0, D=-1.0),
    u_variance=Scaling(1.0, D=-1.0),
    v_variance=Scaling(1.0, M=-1.0),
    u_learning_rate=Scaling(1.0, L=1.0),
    v_learning_rate=Scaling(1.0, L=1.0),
)

DEPTH_MUP = Parametrization(
    name="depth-mup",
    description=(
        "depth-muP (Yang et al. 2023, Bordelon et al. 2023) with muP in width, for gradient descent: "
        "fan-in initialisation, 1/sqrt(L) branches, readout 1/D, raw learning rate eta"
    ),
    input_multiplier=Scaling(),
    residual_multiplier=Scaling(1.0, L=-0.5),
    output_multiplier=Scaling(1.0, D=-1.0),
    u_variance=Scaling(1.0, D=-1.0),
    v_variance=Scaling(1.0, M=-1.0),
    u_learning_rate=Scaling(),
    v_learning_rate=Scaling(),
)

STANDARD = Parametrization(
    name="standard",
    description=(
        "standard parametrisation: fan-in initialisation (variance 1/D for U, 1/M for V), no "
        "residual multiplier, readout 1/sqrt(D), one learning rate eta for every size"
    ),
    input_multiplier=Scaling(),
    residual_multiplier=Scaling(),
    output_multiplier=Scaling(1.0, D=-0.5),
    u_variance=Scaling(1.0, D=-1.0),
    v_variance=Scaling(1.0, M=-1.0),
    u_learning_rate=Scaling(),
    v_learning_rate=Scaling(),
)

# The named rules, in the order the apps list them.
RULES: dict[str, Parametrization] = {
    "mlu": mlu(),
    "general-alpha": general_alpha(),
    "completep": COMPLETEP,
    "depth-mup": DEPTH_MUP,
    "standard": STANDARD,
}


def get_rule(name: str) -> Parametrization:
    """Return the rule called ``name`` in ``RULES``; raise ConfigError naming the known rules."""
    try:
        return RULES[name]
    except KeyError:
        known = ", ".join(sorted(RULES))
        raise ConfigError(f"unknown parametrisation {name!r}; choose one of: {known}") from None


def rule_table(rules: Sequence[Parametrization] | None = None) -> list[dict]:
    """Return the rows of ``Parametrization.table`` for every rule (default: all of ``RULES``)."""
    rules = list(RULES.values()) if rules is None else list(rules)
    return [row for rule in rules for row in rule.table()]


def rule_overview(path: Sequence[float] = (1.0, 1.0, 1.0), rules: Sequence[Parametrization] | None = None) -> list[dict]:
    """Return one row per rule: its seven scalings as formulas and its ``phase_point`` on ``path``."""
    rules = list(RULES.values()) if rules is None else list(rules)
    rows = []
    for rule in rules:
        point = rule.phase_point(path)
        rows.append({
            "rule": rule.name,
            **{field: getattr(rule, field).formula() for field in SCALING_FIELDS},
            "gamma": point["residual_exponent"],
            "lambda": point["rate_exponent"],
            "on_plane": point["on_plane"],
            "off_plane": point["off_plane"],
        })
    return rows


# -- networks under a rule ------------------------------------------------------------------------


def _embeddings_and_key(task: Task, D: int, seed: int, dtype):
    """Return (W_E, W_U, unit key) of a seed, split exactly as ``experiment.Comparison`` splits it."""
    key_embed, key_units = jax.random.split(jax.random.key(seed))
    w_embed, w_unembed = coupled_embeddings(key_embed, task, D, dtype)
    return w_embed, w_unembed, key_units


def build_mlu_model(rule: Parametrization, task: Task, L: int, M: int, D: int, *, seed: int = 0,
                    dtype: str = "float32") -> MLUResNet:
    """Build the ``MLUResNet`` of a rule that has the MLU form; raise ConfigError for any other rule.

    The model is the one ``experiment.Comparison`` builds for the same seed: same embeddings,
    same unit draws.
    """
    alpha = rule.mlu_alpha()
    if alpha is None:
        raise ConfigError(
            f"parametrisation {rule.name!r} is not of the MLU form; train it with general_training"
        )
    w_embed, w_unembed, key_units = _embeddings_and_key(task, D, seed, jax_dtype(dtype))
    return MLUResNet(w_embed, w_unembed, depth=L, width=M, key=key_units, alpha=alpha, activation=task.activation)


def initial_units(rule: Parametrization, key: jax.Array, L: int, M: int, D: int, dtype) -> tuple[jax.Array, jax.Array]:
    """Draw U and V (L x D x M each) with the rule's variances.

    The standard Gaussian draws are those of ``MLUResNet`` for the same key, in float32, so two
    rules on one seed differ only by the scale of their units.
    """
    values = rule.values(L, M, D)
    key_u, key_v = jax.random.split(key)
    u_LxDxM = jax.random.normal(key_u, (L, D, M), jnp.float32).astype(dtype)
    v_LxDxM = jax.random.normal(key_v, (L, D, M), jnp.float32).astype(dtype)
    return math.sqrt(values["u_variance"]) * u_LxDxM, math.sqrt(values["v_variance"]) * v_LxDxM


def forward_streams(u_LxDxM, v_LxDxM, w_embed, w_unembed, x_DinxN, scales, activation: str):
    """Return f, every stream H_0..H_L ((L+1) x D x N) and every pre-activation P_1..P_L (L x M x N)."""
    sigma = activation_function(activation)
    input_multiplier, residual_multiplier, output_multiplier = scales
    h0_DxN = w_embed @ x_DinxN

    def block(h_DxN, weights):
        u_DxM, v_DxM = weights
        p_MxN = input_multiplier * (u_DxM.T @ h_DxN)
        h_DxN = h_DxN + residual_multiplier * (v_DxM @ sigma(p_MxN))
        return h_DxN, (h_DxN, p_MxN)

    h_DxN, (h_LxDxN, p_LxMxN) = jax.lax.scan(block, h0_DxN, (u_LxDxM, v_LxDxM))
    f_DoutxN = output_multiplier * (w_unembed.T @ h_DxN)
    h_SxDxN = jnp.concatenate([h0_DxN[None], h_LxDxN], axis=0)
    return f_DoutxN, h_SxDxN, p_LxMxN


@partial(jax.jit, static_argnames=("activation",))
def _general_step(u, v, w_embed, w_unembed, x, y, loss_scale, scales, rates, *, activation):
    """Return the loss, f, every H_l and P_l at (u, v), and (u, v) after one gradient step."""

    def loss_fn(units):
        f, h_SxDxN, p_LxMxN = forward_streams(*units, w_embed, w_unembed, x, scales, activation)
        return mean_squared_loss(f, y, loss_scale), (f, h_SxDxN, p_LxMxN)

    (loss, (f, h_SxDxN, p_LxMxN)), (grad_u, grad_v) = jax.value_and_grad(loss_fn, has_aux=True)((u, v))
    rate_u, rate_v = rates
    return loss, f, h_SxDxN, p_LxMxN, u - rate_u * grad_u, v - rate_v * grad_v


@dataclasses.dataclass(frozen=True)
class GeneralStep:
    """The forward pass of a network under a rule at step k, and its unit weights then."""

    step: int
    loss: float
    f_DoutxN: np.ndarray
    h_SxDxN: np.ndarray  # H_0..H_L
    p_LxMxN: np.ndarray  # P_1..P_L
    u_LxDxM: np.ndarray
    v_LxDxM: np.ndarray


def general_training(
    rule: Parametrization,
    task: Task,
    L: int,
    M: int,
    D: int,
    *,
    steps: int,
    learning_rate: float,
    seed: int = 0,
    dtype: str = "float32",
):
    """Train the network of shape (L, M, D) under ``rule`` and yield a ``GeneralStep`` per step 0..K.

    This is the plain implementation of the module docstring's equations for any rule, with
    the embeddings and unit draws of ``experiment.Comparison`` for the same seed. It yields every
    step, finite or not: a caller decides what to do with a run that diverges.
    """
    check_positive_int("steps", steps, "steps")
    check_positive_float("learning_rate", learning_rate, "the learning rate")
    array_dtype = jax_dtype(dtype)
    values = rule.values(L, M, D)
    w_embed, w_unembed, key_units = _embeddings_and_key(task, D, seed, array_dtype)
    u, v = initial_units(rule, key_units, L, M, D, array_dtype)
    scales = tuple(
        jnp.asarray(values[name], array_dtype)
        for name in ("input_multiplier", "residual_multiplier", "output_multiplier")
    )
    rates = tuple(
        jnp.asarray(learning_rate * values[name], array_dtype) for name in ("u_learning_rate", "v_learning_rate")
    )
    x = jnp.asarray(task.x_DinxN, array_dtype)
    y = jnp.asarray(task.y_DoutxN, array_dtype)
    loss_scale = jnp.asarray(task.loss_scale, array_dtype)
    for step in range(steps + 1):
        loss, f, h_SxDxN, p_LxMxN, new_u, new_v = _general_step(
            u, v, w_embed, w_unembed, x, y, loss_scale, scales, rates, activation=task.activation
        )
        yield GeneralStep(step, float(loss), np.asarray(f), np.asarray(h_SxDxN), np.asarray(p_LxMxN),
                          np.asarray(u), np.asarray(v))
        u, v = new_u, new_v


def train_under_rule(
    rule: Parametrization,
    task: Task,
    L: int,
    M: int,
    D: int,
    *,
    steps: int,
    learning_rate: float,
    seed: int = 0,
    dtype: str = "float32",
) -> Trajectory:
    """Train the network of shape (L, M, D) under ``rule`` and return its trajectory.

    A rule of the MLU form trains the ``MLUResNet`` of ``build_mlu_model`` with ``training.train``,
    so MLU at alpha = 1 gives the default model's losses exactly. Any other rule trains with
    ``general_training`` and stops after its first non-finite step, as ``training.train`` does.
    """
    if rule.mlu_alpha() is not None:
        model = build_mlu_model(rule, task, L, M, D, seed=seed, dtype=dtype)
        return train(model, task.x_DinxN, task.y_DoutxN, steps=steps, learning_rate=learning_rate,
                     loss_scale=task.loss_scale)
    losses, outputs, streams = [], [], []
    diverged_at = None
    for record in general_training(rule, task, L, M, D, steps=steps, learning_rate=learning_rate,
                                   seed=seed, dtype=dtype):
        if not (math.isfinite(record.loss) and np.all(np.isfinite(record.h_SxDxN[-1]))):
            diverged_at = record.step
            break
        losses.append(record.loss)
        outputs.append(record.f_DoutxN)
        streams.append(record.h_SxDxN[-1])
    d_out, num_samples = task.y_DoutxN.shape
    return Trajectory(
        loss_K=np.array(losses),
        f_KxDoutxN=np.array(outputs).reshape(-1, d_out, num_samples),
        h_KxDxN=np.array(streams).reshape(-1, D, num_samples),
        diverged_at=diverged_at,
    )


# -- coordinate checks ----------------------------------------------------------------------------

# Columns of a coordinate check that measure sizes, in the order of ``coordinate_check`` records.
COORDINATE_COLUMNS = (
    "stream_rms",
    "stream_update_rms",
    "preactivation_rms",
    "preactivation_update_rms",
    "u_update_rms",
    "v_update_rms",
)


def _rms(values: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sqrt(np.mean(np.square(np.asarray(values, np.float64)))))


def scaled_sizes(scales: Sequence[int], *, depth: int | None = None, width: int | None = None,
                 dim: int | None = None) -> list[tuple[int, int, int]]:
    """Return the shapes (n, n, n) for every n in ``scales``, with L, M or D held fixed when given."""
    sizes = []
    for n in scales:
        check_positive_int("scale", n, "the size scale")
        sizes.append((depth or int(n), width or int(n), dim or int(n)))
    return sizes


def coordinate_check(
    rule: Parametrization | str,
    sizes: Sequence[tuple[int, int, int]],
    *,
    task: Task | str = "paper-tanh",
    steps: int = 3,
    learning_rate: float | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> list[dict]:
    """Train one network per shape (L, M, D) under ``rule`` and record how large its coordinates are.

    Returns one plain dict per shape and step k = 0..``steps`` with the rule's name, L, M, D,
    ``scale`` = (L M D)^(1/3), the step, the loss and, as RMS over all entries:

    * ``stream_rms``: the stream H_l, over every depth l = 0..L, coordinate and sample;
    * ``stream_update_rms``: H_l(k) - H_l(k-1), over the same entries;
    * ``preactivation_rms`` and ``preactivation_update_rms``: P_l(k) and P_l(k) - P_l(k-1);
    * ``u_update_rms`` and ``v_update_rms``: the entries of U(k) - U(k-1) and V(k) - V(k-1),
      divided by the RMS of the entries at initialisation.

    Updates are None at step 0. A value is inf or NaN once the run has left the floating-point
    range; ``finite`` is False on such rows. ``learning_rate`` defaults to the task's eta.
    """
    rule = get_rule(rule) if isinstance(rule, str) else rule
    task = get_task(task) if isinstance(task, str) else task
    learning_rate = task.learning_rate if learning_rate is None else learning_rate
    if not sizes:
        raise ConfigError("the coordinate check needs at least one shape (L, M, D)")
    records = []
    for L, M, D in sizes:
        previous = None
        u_scale = v_scale = None
        for record in general_training(rule, task, L, M, D, steps=steps, learning_rate=learning_rate,
                                       seed=seed, dtype=dtype):
            row = {
                "rule": rule.name,
                "L": int(L),
                "M": int(M),
                "D": int(D),
                "scale": float((L * M * D) ** (1.0 / 3.0)),
                "step": record.step,
                "loss": record.loss,
                "stream_rms": _rms(record.h_SxDxN),
                "preactivation_rms": _rms(record.p_LxMxN),
                "stream_update_rms": None,
                "preactivation_update_rms": None,
                "u_update_rms": None,
                "v_update_rms": None,
            }
            if previous is None:
                u_scale, v_scale = _rms(record.u_LxDxM), _rms(record.v_LxDxM)
            else:
                row["stream_update_rms"] = _rms(record.h_SxDxN - previous.h_SxDxN)
                row["preactivation_update_rms"] = _rms(record.p_LxMxN - previous.p_LxMxN)
                row["u_update_rms"] = _rms(record.u_LxDxM - previous.u_LxDxM) / u_scale
                row["v_update_rms"] = _rms(record.v_LxDxM - previous.v_LxDxM) / v_scale
            row["finite"] = all(
                value is None or math.isfinite(value)
                for value in (row["loss"], *(row[column] for column in COORDINATE_COLUMNS))
            )
            records.append(row)
            previous = record
    return records


def coordinate_slope(records: Sequence[dict], column: str, *, step: int, rule: str | None = None) -> Slope:
    """Fit the slope of log ``column`` against log ``scale`` at one step, over finite positive values.

    ``rule`` selects the records of one rule when ``records`` mixes several. Raises ConfigError
    when fewer than two sizes have a finite positive value.
    """
    if column not in COORDINATE_COLUMNS:
        raise ConfigError(f"unknown coordinate column {column!r}; choose one of: {', '.join(COORDINATE_COLUMNS)}")
    chosen = [
        row for row in records
        if row["step"] == step and (rule is None or row["rule"] == rule)
        and row[column] is not None and math.isfinite(row[column]) and row[column] > 0
    ]
    if len({row["scale"] for row in chosen}) < 2:
        raise ConfigError(
            f"fitting a slope of {column} at step {step} needs finite values at two sizes or more, "
            f"got {len(chosen)}"
        )
    return fit_slope([row["scale"] for row in chosen], [row[column] for row in chosen])
