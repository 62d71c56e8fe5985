"""Interactive apps of resnet-limits: ipywidgets controls and Altair charts over the library."""

from resnet_limits_widgets.coordinates import CoordinateView
from resnet_limits_widgets.explorer import ExplorerApp
from resnet_limits_widgets.shapes import ShapeApp
from resnet_limits_widgets.transformer import TransformerExplorerApp

__all__ = ["CoordinateView", "ExplorerApp", "ShapeApp", "TransformerExplorerApp"]
