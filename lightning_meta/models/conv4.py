"""The 4-layer convolutional backbone of the MAML, Reptile and iMAML papers."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_meta.errors import ConfigError


class Conv4(nn.Module):
    """4 x [conv3x3 -> BatchNorm -> ReLU (-> 2x2 max-pool)] -> linear head.

    Omniglot (the default): 64 filters, stride-2 convolutions on 28x28 grey images. Mini-ImageNet: 32 filters,
    stride 1 with 2x2 max-pooling on 84x84 RGB images (`in_channels=3, hidden=32, image_size=84, max_pool=True`).
    BatchNorm keeps no running statistics: every forward normalises by its own batch (the papers' transductive
    setting), so the functional inner loop has no buffers to carry.

    Shapes:
        x (B, in_channels, image_size, image_size) -> logits (B, out_features).
    """

    def __init__(
        self,
        out_features: int = 5,
        in_channels: int = 1,
        hidden: int = 64,
        image_size: int = 28,
        max_pool: bool = False,
    ) -> None:
        super().__init__()
        for name, value in dict(out_features=out_features, in_channels=in_channels, hidden=hidden,
                                image_size=image_size).items():  # fmt: skip
            if value < 1:
                raise ConfigError(f"model.{name}={value}; it must be at least 1")
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for _ in range(4):
            stride = 1 if max_pool else 2
            layers += [
                nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
            ]
            size = (size - 1) // stride + 1
            if max_pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = hidden
        if size < 1:
            raise ConfigError(f"model.image_size={image_size} is too small for 4 down-sampling layers")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(hidden * size * size, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
