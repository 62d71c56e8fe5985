"""Flax NNX models in the MLU parametrisation."""

from resnet_limits.models.resnet import (
    MLUResNet,
    activation_function,
    initial_units,
    residual_stream,
    residual_streams,
)
from resnet_limits.models.transformer import MLUTransformer, initial_heads, transformer_stream

__all__ = [
    "MLUResNet",
    "MLUTransformer",
    "activation_function",
    "initial_heads",
    "initial_units",
    "residual_stream",
    "residual_streams",
    "transformer_stream",
]
