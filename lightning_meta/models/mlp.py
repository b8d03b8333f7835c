"""The sine-regression network of the MAML paper: 1-40-40-1 with ReLU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_meta.errors import ConfigError


class MLP(nn.Module):
    """Fully connected ReLU network.

    Shapes:
        x (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        for name, value in dict(in_features=in_features, out_features=out_features).items():
            if value < 1:
                raise ConfigError(f"model.{name}={value}; it must be at least 1")
        if any(h < 1 for h in hidden):
            raise ConfigError(f"model.hidden={list(hidden)}; every layer needs at least 1 unit (e.g. "
                              "model.hidden=[40,40]), or give model.hidden=[] for a linear model")  # fmt: skip
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
