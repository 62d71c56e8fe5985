"""resnet-limits: MLU ResNets in JAX and Flax NNX, their Mean ODE limits, errors and bounds."""

__version__ = "0.1.0"
