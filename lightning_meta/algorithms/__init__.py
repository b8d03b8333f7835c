"""Meta-learning algorithms as LightningModules sharing one `MetaLearner` base."""

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.predictor import Predictor
from lightning_meta.algorithms.reptile import Reptile

__all__ = ["MetaLearner", "Predictor", "Reptile"]
