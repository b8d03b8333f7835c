"""Plain backbones (no Lightning): the algorithms take one as an argument."""

from lightning_meta.models.conv4 import Conv4
from lightning_meta.models.mlp import MLP

__all__ = ["Conv4", "MLP"]
