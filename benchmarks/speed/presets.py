"""What the reference rows need of a paper preset: its inner loop (`Inner`) and algorithm settings (`Setting`), read
off the learner the composed config builds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lightning_meta.config import instantiate

ALGORITHMS = ("reptile", "fomaml", "maml", "imaml")


@dataclass(frozen=True)
class Inner:
    steps: int
    lr: float
    batch_size: int | None
    optimizer: str  # "sgd" or "adam" (beta1 = 0)


@dataclass(frozen=True)
class Setting:
    """What (b), (c), (d) and the peers need of a preset's algorithm."""

    algorithm: str  # reptile, fomaml, maml, imaml
    inner: Inner
    lr: float  # outer learning rate
    optimizer: str  # outer optimizer, "adam" or "sgd"
    lam: float = 2.0  # iMAML
    cg_steps: int = 5  # iMAML
    cg_damping: float = 0.0  # iMAML
    inner_state: str = "fresh"  # Reptile's inner Adam state: fresh per task, carried from task to task, or batched


def _get(node, key: str, default=None):
    """node[key] of a DictConfig or dict, node.key of any other object; `default` when absent."""
    if isinstance(node, Mapping):
        return node[key] if key in node else default
    return getattr(node, key, default)


def inner_settings(node) -> Inner:
    """The meta-training inner loop `node.inner` (`inner.steps`, `inner.lr`, `inner.batch_size`, `inner.optimizer`)
    of an algorithm config node, or the `InnerLoop` value of a learner."""
    inner = _get(node, "inner")
    steps, lr, batch = _get(inner, "steps"), _get(inner, "lr"), _get(inner, "batch_size")
    if steps is None or lr is None:
        raise ValueError(f"no inner.steps/inner.lr in {node!r}")
    if not isinstance(lr, (int, float)):
        raise ValueError(f"inner.lr={lr!r}: the reference rows take one scalar inner step size")
    optimizer = str(_get(inner, "optimizer", "sgd")).lower()
    return Inner(int(steps), float(lr), None if batch is None else int(batch), optimizer)


def preset_settings(cfg) -> Setting:
    """`Setting` of a composed config (`lightning_meta.config.load_config`). The values are read off the learner
    the config builds, since a preset's YAML may list only what differs from the algorithm class's defaults."""
    learner = instantiate(cfg.algorithm, backbone=instantiate(cfg.model), task="classification")
    algorithm = str(_get(_get(cfg, "selection", {}), "algorithm") or type(learner).__name__).lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"benchmarks.speed knows {', '.join(ALGORITHMS)}, not {algorithm}")
    if algorithm != "reptile" and _get(learner, "transductive", True) is False:
        raise ValueError(f"{algorithm} with transductive=false: the reference rows predict queries as one batch")
    inner = _get(learner, "inner")
    if _get(inner, "solver", "gd") != "gd":
        raise ValueError(f"inner.solver={_get(inner, 'solver')}: the reference rows implement solver=gd only")
    return Setting(
        algorithm=algorithm,
        inner=inner_settings(learner),
        lr=float(learner.outer.lr),
        optimizer=str(learner.outer.optimizer).lower(),
        lam=float(_get(inner, "lam", 2.0)),
        cg_steps=int(_get(learner, "cg_steps", 5)),
        cg_damping=float(_get(learner, "cg_damping", 0.0)),
        inner_state=str(_get(learner, "inner_state", "fresh")) if algorithm == "reptile" else "fresh",
    )


def describe(s: Setting, cfg, batch_size: int) -> str:
    """The work of one meta-iteration, for the table's first column."""
    d = cfg.data
    shots = d.train_shots if d.train_shots is not None else d.shots
    queries = d.train_queries if d.train_queries is not None else d.queries
    per_step = s.inner.batch_size or d.ways * shots
    text = f"{batch_size} tasks × {s.inner.steps} {s.inner.optimizer.upper()} steps × {per_step} images"
    if s.inner.optimizer == "adam" and s.algorithm == "reptile":
        text += f", {s.inner_state} state"
    if s.algorithm == "imaml":
        text += f", {s.cg_steps} CG"
    return f"{text}, {queries} q/class"
