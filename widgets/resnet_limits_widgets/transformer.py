"""The Transformer explorer: the explorer app with an MLU Transformer in place of the ResNet.

The width slider sets the heads per layer H and the perceptron width M together (M = H), so the
three sliders are L, H and D, and the query string sets the width with ``H`` (as in
``?L=4&H=64&D=32``) or, without ``H``, with ``M``. Everything else (runs, cancelling, charts, the worker process) is
the explorer's. Each limit is the extrapolated estimate of ``limits.transformer`` at the app's
limit settings, with an estimate of its own error. The summary beside the sliders shows the
Transformer's bound, with the attention term sqrt(D / (L H)), its parameter count and optimal
shapes (``bounds.transformer_*``).

NOTE: no error law has been fitted for Transformers. The predicted errors use the constants
fitted for ResNets of perceptron blocks, and the attention term takes the width term's constant.
"""

from __future__ import annotations

import dataclasses

from resnet_limits.config import LimitSettings, RunConfig

from resnet_limits_widgets.explorer import URL_FIELDS, ExplorerApp
from resnet_limits_widgets.summary import transformer_shape_summary_html

# Coarsest L' = 4 depth points with M' = 128 heads and units each, extrapolated over L' = 4, 8, 16.
# Measured with /usr/bin/time on a 2-core CPU shared with other jobs (load 5), in-process, cold
# compile, both limits included: the default run used 21 s of CPU (user) against 42 s at the
# earlier L' = 16, M' = 1024. The time is mostly compilation of the three levels and the network.
# The limits' error estimates were 0.035 (large-D) and 0.009 (fixed-D) RMS of f, below the
# smallest gap of the default network (output error 0.066 against the fixed-D limit at step 10).
TRANSFORMER_LIMIT_SETTINGS = LimitSettings(depth_points=4, particles=128)


# The explorer's query parameters and H, the heads per layer, which sets the width slider. M, as
# in older links, sets it too when H is absent.
TRANSFORMER_URL_FIELDS = {**URL_FIELDS, "H": URL_FIELDS["M"]}


class TransformerExplorerApp(ExplorerApp):
    """The explorer for ``MLUTransformer`` on a sequence task, with sliders for L, H (= M) and D.

    ``key_dim`` and ``value_dim`` set d_k and d_v of every head; the other arguments are the
    explorer's.
    """

    url_fields = TRANSFORMER_URL_FIELDS
    width_parameter = "H"

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
