"""Meta-learning algorithms as LightningModules sharing one `MetaLearner` base."""

from lightning_meta.algorithms.base import MetaLearner
from lightning_meta.algorithms.fomaml import FOMAML
from lightning_meta.algorithms.gradient_combination import GradientCombination
from lightning_meta.algorithms.imaml import IMAML, ProximalLoop
from lightning_meta.algorithms.inner import InnerLoop
from lightning_meta.algorithms.maml import MAML
from lightning_meta.algorithms.metasgd import MetaSGD
from lightning_meta.algorithms.predictor import Predictor
from lightning_meta.algorithms.reptile import Reptile

__all__ = [
    "FOMAML", "GradientCombination", "IMAML", "MAML", "InnerLoop", "MetaLearner", "MetaSGD", "Predictor",
    "ProximalLoop", "Reptile",
]  # fmt: skip
