"""Milliseconds per meta-iteration of lightning_meta's whole training loop against reference implementations.

Usage: python -m benchmarks.speed [--algorithms reptile,fomaml,maml,imaml] [--repeats N] [--queries 1,15] [--quick]
       [--warmup N] [--threads N] [--root data] [--rows a,b,c,d,higher,learn2learn] [--floor-chunk N]
       [--device cpu|cuda] [--set KEY=VALUE] [--no-memory] [--json PATH]

Each algorithm runs at its paper preset (`configs/experiment/<algorithm>_omniglot_5w1s.yaml`: Omniglot 5-way 1-shot,
Conv4-64), on the same tasks in every row: meta-batches 0, 1, 2, ... of the preset's training stream (seed 0), the
ones `python train.py` trains on first. Rows:

(a) lightning_meta: the whole `train.py` loop (`lightning_meta.run.train`, the function behind `python train.py`,
    in a child process) with only `experiment=`, `data.*` and `trainer.*` overrides: no validation
    (`data.val_episodes=0`), no meta-test (`trainer.limit_test_batches=0`), logging and progress bar as train.py
    has them. A callback records the time of every `on_train_batch_end`; one interval is one whole loop iteration
    (episode sampling, the training step, the outer update, logging, callbacks). The figure is the median interval
    after `--warmup` steps (the mean is kept in `--json`; it also holds the every-50-step TensorBoard write).
(b) plain loop: one task at a time, as reference code is written. MAML/FOMAML: hand-written functional Conv4
    forward, `torch.autograd.grad` inner steps (MAML with `create_graph=True`), `backward` of the query loss.
    Reptile: one fast model loaded with theta per task, stepped by `torch.optim.Adam(betas=(0, 0.999))`: a fresh
    one per task, or with the preset's `inner_state=carried` one Adam whose moments run on from task to task and
    meta-iteration to meta-iteration, as supervised-reptile's (`batched`: every task from the same state, which
    then moves to the tasks' mean). The query set is not scored (lightning_meta scores it for the training log,
    on the steps whose log is written).
    iMAML (aravindr93/imaml_dev style): fast model with `torch.optim.SGD` on the proximal objective, then per-task
    conjugate gradient on flat vectors whose Hessian-vector products recompute the support loss and take a double
    backward each call. Same meta-gradient as lightning_meta's ((I + H/lam) v = g_query for iMAML).
(c) minimal torch.func: `functional_call` + `grad` per task, `vmap` over the meta-batch, no framework (a carried
    Reptile state runs the tasks in order instead: it is sequential by definition).
(d) compute floor proxy: the same images through the same primitives as one shared-weight batch: per inner step
    one forward+backward of the meta-batch's support (mini-)batches stacked (T x images per step), plus one of all
    query images (not Reptile, whose queries only feed a log) and, for iMAML, one more support pass per CG step.
    First-order passes only: no second-order terms, no per-task weights. One huge batch is not always the fastest
    way through a CPU's caches (at 15 queries per class the query batch is T x 75 images): `--floor-chunk C` runs
    it C tasks at a time.
higher / learn2learn: optional peer rows (FOMAML and MAML), each library's documented MAML loop
    (`higher.innerloop_ctx`; `learn2learn.algorithms.MAML.clone/adapt`), run when the package imports, skipped
    otherwise; neither is a dependency of lightning_meta (`pip install higher --no-deps` works with torch 2.13;
    learn2learn 0.2.0 builds from its sdist with fresh Cython output, but its import needs torchvision, gym, scipy).

(b), (c), (d) and the peers run in this process on meta-batches sampled before timing; each timed iteration includes
the outer optimizer step. Time: median over `--repeats` iterations after `--warmup` ones. Memory: peak tensor memory
allocated during one extra iteration (for (a): one extra training step), above what was live when it started, as
recorded by `torch.profiler(profile_memory=True)` (tensors from torch's CPU allocator; not RSS, not allocator
caches; frees of tensors older than the window are not seen, so a reading can only overstate; torch says so once,
"Memory block of unknown size was allocated before the profiling started"). Episode sampling: meta-batches drawn
as the training loader draws them, episodes/s against what (a) consumes (meta-batch size / (a)'s time per step).

Inner-loop settings come from the composed preset through `presets.preset_settings`, which reads them off the
learner the config builds (a preset's YAML may list only what differs from the class defaults): `inner.lr`,
`inner.steps`, ... (iMAML's `inner.lam`).

Ratios in the table: (b)/(a) and "fastest of (b)+peers/(a)" above 1 mean lightning_meta is faster; (a)/(c) and
(a)/(d) above 1 mean it is slower than the minimal torch.func loop and the floor proxy.
Final numbers: a quiet machine, the threads a user gets (torch's default), e.g.
    python -m benchmarks.speed --json speed.json
On a GPU, `--device cuda` runs every row there ((a) with `trainer.accelerator=gpu`); each timed iteration ends
with `torch.cuda.synchronize()`, and memory is the CUDA caching allocator's peak above the level at the start.
`--set KEY=VALUE` adds a train.py override to every row's preset (e.g. `--set data.num_workers=4` for (a));
`--rows ""` measures episode sampling alone.

Modules: `cli` (the command line), `presets` (a preset's `Setting`), `reference` ((b), (c), (d)), `peers` (higher,
learn2learn), `measure` (timing, memory, the train.py child), `report` (the tables).
"""
