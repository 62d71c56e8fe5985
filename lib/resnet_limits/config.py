"""Run settings, their validation and memory estimates, shared by the command line and the apps."""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from resnet_limits.tasks import ACTIVATIONS, TASKS, get_task

DTYPES = ("float32", "float64")

# Network architectures: "resnet" (MLUResNet, tasks of single vectors) and "transformer"
# (MLUTransformer, sequence tasks).
ARCHITECTURES = ("resnet", "transformer")

# Default cap on the estimated memory of one run. It keeps a run inside a small Binder session.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 2**30


class ConfigError(ValueError):
    """An invalid run setting; the message names the value and how to fix it."""


class MemoryBudgetError(ConfigError):
    """A run whose memory estimate exceeds the budget."""


@dataclasses.dataclass(frozen=True)
class LimitSettings:
    """Discretisation of the Mean ODE particle simulator."""

    depth_points: int = 64  # L', depth points in s in [0, 1]
    particles: int = 4096  # M', particles per depth point (an even number: antithetic pairs)
    seed: int = 0  # seed of the particles, independent of the network's seed

    def validate(self) -> LimitSettings:
        check_seed(self.seed, "LimitSettings.seed")
        check_positive_int("depth_points", self.depth_points, "--limit-depth")
        check_positive_int("particles", self.particles, "--limit-particles")
        if self.particles % 2:
            raise ConfigError(
                f"particles must be even (antithetic pairs), got {self.particles}; "
                f"set --limit-particles to {self.particles + 1}"
            )
        return self


# Limit settings of a Transformer's comparison when none are given. A particle head does more
# work per token than a unit (queries, keys, values and T x T attention weights), so the ResNet's
# defaults would make the six simulations of an estimate take minutes. On seq-tanh (K = 5,
# float64) these settings gave an error estimate of 0.0019 in 7 s on a shared 2-core CPU.
TRANSFORMER_LIMIT_SETTINGS = LimitSettings(depth_points=8, particles=1024)


def default_limit_settings(arch: str) -> LimitSettings:
    """Return the limit settings used when a caller gives none: ``TRANSFORMER_LIMIT_SETTINGS`` for a Transformer."""
    return TRANSFORMER_LIMIT_SETTINGS if arch == "transformer" else LimitSettings()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: the task, the shape (L, M, D), K steps and the training settings.

    Fields left as None take the task's default.
    """

    task: str = "paper-tanh"
    L: int = 16  # depth: number of residual blocks
    M: int = 64  # hidden width: units per block
    D: int = 64  # embedding dimension of the residual stream
    K: int | None = None  # gradient steps
    learning_rate: float | None = None  # eta; the raw step is eta L M D / alpha^2
    alpha: float | None = None  # residual scale; 1 is the MLU regime
    activation: str | None = None  # "tanh" or "identity"
    seed: int = 0  # draws the embeddings and the unit weights
    dtype: str = "float32"
    arch: str = "resnet"  # "resnet" or "transformer"
    H: int = 8  # attention heads per layer (transformer only)
    key_dim: int = 2  # d_k, key-query dimension of every head (transformer only)
    value_dim: int = 2  # d_v, value dimension of every head (transformer only)

    def resolved(self) -> RunConfig:
        """Return a copy with the task defaults filled in, after validating every field."""
        if self.task not in TASKS:
            known = ", ".join(sorted(TASKS))
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {known}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown arch {self.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
        task = get_task(self.task)
        check_task_fits_arch(task, self.arch)
        config = dataclasses.replace(
            self,
            K=task.steps if self.K is None else self.K,
            learning_rate=task.learning_rate if self.learning_rate is None else self.learning_rate,
            alpha=task.alpha if self.alpha is None else self.alpha,
            activation=task.activation if self.activation is None else self.activation,
        )
        config._validate()
        # NumPy scalars pass validation; plain Python numbers keep results JSON-ready.
        return dataclasses.replace(
            config,
            L=int(config.L),
            M=int(config.M),
            D=int(config.D),
            K=int(config.K),
            learning_rate=float(config.learning_rate),
            alpha=float(config.alpha),
            seed=int(config.seed),
            H=int(config.H),
            key_dim=int(config.key_dim),
            value_dim=int(config.value_dim),
        )

    def _validate(self) -> None:
        check_positive_int("L", self.L, "--depth")
        check_positive_int("M", self.M, "--width")
        check_positive_int("D", self.D, "--dim")
        check_positive_int("H", self.H, "--heads")
        check_positive_int("key_dim", self.key_dim, "--key-dim")
        check_positive_int("value_dim", self.value_dim, "--value-dim")
        check_positive_int("K", self.K, "--steps")
        check_positive_float("learning_rate", self.learning_rate, "--lr")
        check_positive_float("alpha", self.alpha, "--alpha")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        check_seed(self.seed, "--seed")

    @property
    def num_parameters(self) -> int:
        """P = L M D for a ResNet, the parameter count that the bound is stated in.

        For a Transformer P = L D (M + H (d_k + d_v)) (``bounds.transformer_num_parameters``).
        """
        if self.arch == "transformer":
            from resnet_limits.bounds import transformer_num_parameters

            return transformer_num_parameters(self.L, self.H, self.M, self.D, self.key_dim, self.value_dim)
        return self.L * self.M * self.D


def check_task_fits_arch(task, arch: str) -> None:
    """Raise ConfigError unless ``arch`` takes the inputs of ``task``: sequences exactly for "transformer"."""
    sequence_tasks = ", ".join(sorted(name for name in TASKS if get_task(name).num_tokens is not None))
    if arch == "transformer" and task.num_tokens is None:
        raise ConfigError(
            f"task {task.name!r} has no token axis, which arch 'transformer' needs; "
            f"choose a sequence task: {sequence_tasks}"
        )
    if arch == "resnet" and task.num_tokens is not None:
        raise ConfigError(
            f"task {task.name!r} is a sequence task, which arch 'resnet' does not take; "
            "set --arch transformer on the train or limit command, or choose another task"
        )


# jax.random.key takes seeds below 2^32 without folding distinct seeds onto one key.
MAX_SEED = 2**32 - 1


def check_seed(value, option: str) -> int:
    """Raise ConfigError unless ``value`` is an integer seed from 0 to 2^32 - 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}, got {value!r}; set {option} in that range")
    return int(value)


def check_positive_int(name: str, value, option: str) -> int:
    """Raise ConfigError unless ``value`` is a positive integer; ``option`` names the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; set {option} to 1 or more")
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}; set {option} to 1 or more")
    return value


def check_positive_float(name: str, value, option: str, example: float = 0.1) -> float:
    """Raise ConfigError unless ``value`` is a positive finite number; ``example`` is suggested."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a positive number, got {value!r}; set {option}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{name} must be positive and finite, got {value}; set {option} to a value such as {example}"
        )
    return float(value)


def format_gib(num_bytes: float) -> str:
    """Return a size in GiB with two decimals, or two significant digits below 0.01 GiB."""
    gib = num_bytes / 2**30
    return f"{gib:.2f} GiB" if gib >= 0.01 else f"{gib:.2g} GiB"


def bytes_per_float(dtype: str) -> int:
    return 8 if dtype == "float64" else 4


def estimate_training_bytes(L: int, M: int, D: int, N: int, K: int, dtype: str) -> int:
    """Estimate the peak memory of training, in bytes.

    Counts six L D M arrays: U and V, their gradients and their updated copies. Adds the
    per-block activations that the backward pass keeps (H, P and sigma(P) for N samples) and the
    stored trajectory of H_L over K + 1 steps. XLA's workspace and the Python process come on top.
    """
    floats = 6 * L * D * M + 2 * L * N * (D + 2 * M) + (K + 1) * D * N
    return bytes_per_float(dtype) * floats


def estimate_transformer_bytes(
    L: int, H: int, M: int, D: int, N: int, T: int, key_dim: int, value_dim: int, K: int, dtype: str
) -> int:
    """Estimate the peak memory of training an MLUTransformer, in bytes.

    Counts six copies of the weights, as ``estimate_training_bytes`` does, and per layer the
    activations of N T tokens: the stream, the perceptron pre-activations, and per head the
    queries, keys, values, outputs and the T x T logits and attention weights. Adds the stored
    trajectory of H_L over K + 1 steps.
    """
    weights = L * D * (2 * M + H * (2 * key_dim + 2 * value_dim))
    per_layer = N * T * (2 * D + 2 * M + H * (2 * key_dim + 2 * value_dim + 2 * T))
    floats = 6 * weights + L * per_layer + (K + 1) * D * N * T
    return bytes_per_float(dtype) * floats


def check_memory(
    config: RunConfig,
    num_samples: int,
    limit: LimitSettings,
    span_dim: int,
    budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    num_tokens: int | None = None,
) -> int:
    """Return the memory estimate of a run with its limits; raise MemoryBudgetError above the budget.

    ``num_tokens`` is the T of a sequence task, which a Transformer run needs.
    """
    if config.arch == "transformer":
        tokens = 1 if num_tokens is None else num_tokens
        shape = dict(N=num_samples, T=tokens, key_dim=config.key_dim, value_dim=config.value_dim, K=config.K,
                     dtype=config.dtype)
        training = estimate_transformer_bytes(config.L, config.H, config.M, config.D, **shape)
        simulator = estimate_transformer_bytes(
            limit.depth_points, limit.particles, limit.particles, span_dim, **shape
        )
    else:
        training = estimate_training_bytes(
            config.L, config.M, config.D, num_samples, config.K, config.dtype
        )
        simulator = estimate_training_bytes(
            limit.depth_points, limit.particles, span_dim, num_samples, config.K, config.dtype
        )
    estimate = max(training, simulator)
    if estimate > budget_bytes:
        raise MemoryBudgetError(
            f"shape L={config.L}, M={config.M}, D={config.D} needs about "
            f"{format_gib(estimate)}, over the memory budget of {format_gib(budget_bytes)}; "
            "reduce L, M or D, or raise the budget (--memory-budget on the command line)"
        )
    return estimate


def jax_dtype(name: str):
    """Return the JAX dtype called ``name``, enabling 64-bit mode for "float64".

    JAX computes in float32 unless x64 is on; turning it on is global, and this library passes
    dtypes explicitly everywhere, so float32 runs are unaffected.
    """
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name == "float64":
        if not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        return jnp.float64
    return jnp.float32
