"""How a meta-batch runs: one `vmap` over the task dimension (optionally in chunks), one task at a time, or `auto`,
which picks one of the two per call from the per-task batch sizes.

Why `auto` decides by size: once the inner step has given every task its own weights, vmap runs each convolution
as one grouped convolution over the tasks. With a few images per task that beats the per-task loop by a wide
margin; with 15 queries per class (75 query images per task) the grouped convolution is slower than the loop
(`python -m benchmarks.batching`; figures in docs/performance.md). The rule is deterministic (a pure function of
the batch's shapes and device), so a resumed run takes the same path as the uninterrupted one and stays
bit-identical without saving the choice. The size it decides by is the learner's `vmap_examples(batch)`: the
larger of the support and query sets, except for iMAML, whose inner steps and conjugate-gradient products all run
on the support set, and Reptile, whose inner steps pass mini-batches and whose queries only feed the log. Where the
support sets are small and the query sets large, FOMAML, MAML and iMAML take "split" (`splits_inner()`): the inner
loops in one vmap, the query gradients one task at a time. A per-task function without a split path (evaluation)
takes what the sizes say without it. On accelerators `auto` takes vmap (one launch instead of one per task), and
under mixed precision the loop.

Every path computes what the per-task loop computes, for any subclass: vmap and the loop run the same per-task
function, and a split path is taken only for a learner whose hooks it honours (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable

from torch.func import vmap
from torch.utils._pytree import tree_map

from lightning_meta.data.episode import Episode

PATHS = ("vmap", "loop", "auto")

# `auto` on CPU runs vmap while the largest per-task batch that passes through per-task weights (support or
# query images of one task) is at most this many examples; the loop beyond it. At Conv4-64 / 28x28 vmap still wins
# at 15 query images and the loop at 25 (`python -m benchmarks.batching fomaml maml --set data.queries=3`, and =5;
# docs/performance.md).
AUTO_VMAP_MAX_EXAMPLES = 20


def task_count(batch: Episode) -> int:
    return batch.support_x.shape[0]


def per_task_examples(batch: Episode) -> int:
    """The largest per-task batch that passes through per-task weights: the support or the query set of a task."""
    return max(batch.support_x.shape[1], batch.query_x.shape[1])


def resolve(
    batching: str, batch: Episode, low_precision: bool = False, examples: int | None = None, split: bool = False
) -> str:
    """The path that `batching` takes for this meta-batch: "vmap", "loop", or, for `auto` with `split` (a learner
    whose `task_gradients` implements it: FOMAML, MAML, iMAML), "split" where the support sets are small and the
    query sets large: the inner loops vmapped over the tasks' support sets, the query gradients one task at a time.
    `auto` under mixed precision takes the loop (vmap with batch norm fails under autocast, algorithms/scaling.py).
    `examples`: the per-task batch size that decides between vmap and the loop on CPU (default
    `per_task_examples(batch)`; a learner whose passes are nearly all on the support set, iMAML, passes the
    support size: `MetaLearner.vmap_examples`)."""
    if batching != "auto":
        return batching
    if low_precision:
        return "loop"
    if batch.support_x.device.type != "cpu":
        return "vmap"
    small_support = batch.support_x.shape[1] <= AUTO_VMAP_MAX_EXAMPLES
    if split and small_support and batch.query_x.shape[1] > AUTO_VMAP_MAX_EXAMPLES:
        return "split"
    examples = per_task_examples(batch) if examples is None else examples
    return "vmap" if examples <= AUTO_VMAP_MAX_EXAMPLES else "loop"


def map_tasks(
    fn: Callable, params, batch: Episode, path: str, chunk_size: int | None = None, per_task_params: bool = False
):
    """`fn(params, task)` over the leading task dimension of `batch`, outputs stacked on dim 0; with
    `per_task_params` the params have that leading dimension too and task t gets its own slice (the "split"
    paths' fast weights).

    "vmap" takes every per-task function, outer gradient included, inside the vmap (exact with batch norm, see
    docs/architecture.md); "loop" runs the tasks one at a time and writes each output into a preallocated
    stack (no list of per-task outputs next to the stacked copy).
    """
    if path == "vmap":
        return vmap(fn, in_dims=(0 if per_task_params else None, 0), chunk_size=chunk_size)(params, batch)
    task = lambda t: (tree_map(lambda p: p[t], params) if per_task_params else params, Episode(*(f[t] for f in batch)))
    first = fn(*task(0))
    stacked = tree_map(lambda x: x.new_empty((task_count(batch), *x.shape)), first)
    _write(stacked, first, 0)
    del first
    for t in range(1, task_count(batch)):
        _write(stacked, fn(*task(t)), t)
    return stacked


def _write(stacked, out, t: int) -> None:
    tree_map(lambda dst, src: dst[t].copy_(src), stacked, out)
