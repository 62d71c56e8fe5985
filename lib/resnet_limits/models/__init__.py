"""Flax NNX models in the MLU parametrisation."""

from resnet_limits.models.resnet import (
    MLUResNet,
    activation_function,
    initial_units,
    residual_stream,
    residual_streams,
)

__all__ = ["MLUResNet", "activation_function", "initial_units", "residual_stream", "residual_streams"]
