"""Limit simulators: the fixed-D Mean ODE and the large-D limit."""

from resnet_limits.limits.linear import LinearLimitSolution, exact_linear_limit
from resnet_limits.limits.mean_ode import (
    FIXED_DIM,
    LARGE_DIM,
    SpanProblem,
    fixed_dim_problem,
    large_dim_basis,
    large_dim_problem,
    limit_steps,
    particle_system,
    simulate_limit,
    to_stream,
)
from resnet_limits.limits.transformer import (
    antithetic_heads,
    estimate_transformer_limit,
    simulate_transformer_limit,
    transformer_particle_system,
)

__all__ = [
    "FIXED_DIM",
    "LARGE_DIM",
    "LinearLimitSolution",
    "SpanProblem",
    "antithetic_heads",
    "estimate_transformer_limit",
    "exact_linear_limit",
    "fixed_dim_problem",
    "large_dim_basis",
    "large_dim_problem",
    "limit_steps",
    "particle_system",
    "simulate_limit",
    "simulate_transformer_limit",
    "to_stream",
    "transformer_particle_system",
]
