"""The Transformer explorer: the explorer app with an MLU Transformer in place of the ResNet.

The width slider sets the heads per layer H and the perceptron width M together (M = H), so the
three sliders are L, H and D. Everything else (runs, cancelling, charts, the worker process) is
the explorer's. Each limit is the extrapolated estimate of ``limits.transformer`` at the app's
limit settings, with an estimate of its own error. The summary beside the sliders shows the
Transformer's bound, with the attention term sqrt(D / (L H)), its parameter count and optimal
shapes (``bounds.transformer_*``).

NOTE: the predicted errors use the constants fitted for ResNets of perceptron blocks, with the
width constant for the attention term; no law has been fitted for Transformers.
"""

from __future__ import annotations

import dataclasses

from resnet_limits.config import LimitSettings, RunConfig

from resnet_limits_widgets.explorer import ExplorerApp
from resnet_limits_widgets.summary import transformer_shape_summary_html

# L' = 16 depth points with M' = 1024 heads and units each. The default run, both limits included,
# took 15 s in-process on a shared 2-core CPU, and the estimated Monte Carlo error of the limits,
# sqrt(k / (L' M')) = 0.02 for seq-tanh, is below the gaps of the default network (about 0.3).
TRANSFORMER_LIMIT_SETTINGS = LimitSettings(depth_points=16, particles=1024)


class TransformerExplorerApp(ExplorerApp):
    """The explorer for ``MLUTransformer`` on a sequence task, with sliders for L, H (= M) and D.

    ``key_dim`` and ``value_dim`` set d_k and d_v of every head; the other arguments are the
    explorer's.
    """

    def __init__(
        self,
        task: str = "seq-tanh",
        *,
        L: int = 4,
        H: int = 16,
        D: int = 16,
        key_dim: int = 2,
        value_dim: int = 2,
        limit_settings: LimitSettings | None = None,
        **kwargs,
    ):
        self.key_dim = key_dim
        self.value_dim = value_dim
        super().__init__(task, L=L, M=H, D=D, limit_settings=limit_settings or TRANSFORMER_LIMIT_SETTINGS, **kwargs)
        self.width.description = "H (heads = units)"

    def _update_summary(self) -> None:
        self.summary.value = transformer_shape_summary_html(
            self.depth.value, self.width.value, self.dim.value, self.key_dim, self.value_dim
        )

    def config(self) -> RunConfig:
        """Return the run settings that the controls show, for a Transformer with M = H."""
        return dataclasses.replace(
            super().config(),
            arch="transformer",
            H=self.width.value,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
        )
