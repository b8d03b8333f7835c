"""The sine-regression network of the MAML paper: 1-40-40-1 with ReLU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network.

    Shapes:
        x (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
