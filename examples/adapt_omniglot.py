"""Adapt a meta-trained learner to a new task: classify drawings of Omniglot characters it never saw.

    python examples/adapt_omniglot.py --ckpt outputs/<run>/checkpoints/last.ckpt [--root data] [--shots 1]

The checkpoint comes from `python train.py` on Omniglot. The new task is assembled by hand from meta-test
characters (held out of meta-training and validation): `--shots` drawings of each character form the support
set, `--queries` other drawings are to be classified. `learner.adapt` fine-tunes a copy of the meta-weights on
the support set with the evaluation settings and returns a predictor; the meta-weights stay untouched.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lightning_meta.build import load_learner
from lightning_meta.config import instantiate
from lightning_meta.data.omniglot import load_omniglot

HOW_TO = """no checkpoint given. Meta-train one first, e.g.
    python train.py output_dir=outputs/omniglot
then adapt it to new characters:
    python examples/adapt_omniglot.py --ckpt outputs/omniglot/checkpoints/last.ckpt"""


def new_task(data_config: dict, root: str, shots: int, queries: int, seed: int):
    """Support and query drawings of `ways` meta-test characters, labelled 0..ways-1 in the order drawn.

    Shapes:
        -> support_x (N*K, 1, S, S), support_y (N*K,), query_x (N*Q, 1, S, S), query_y (N*Q,),
        characters (N,).
    """
    datamodule = instantiate({**data_config, "root": root, "download": False})  # the run's character split
    data = load_omniglot(datamodule.folder, datamodule.image_size, download=False)
    unseen = datamodule.character_split()["test"]
    generator = torch.Generator().manual_seed(seed)
    characters = unseen[torch.randperm(len(unseen), generator=generator)[: datamodule.ways]]
    support, query = [], []
    for character in characters:
        ids = (data["character"] == character).nonzero()[:, 0]
        ids = ids[torch.randperm(len(ids), generator=generator)[: shots + queries]]
        drawings = data["images"][ids].float().div(255.0).unsqueeze(1)  # (K+Q, 1, S, S), ink = 1
        support.append(drawings[:shots])
        query.append(drawings[shots:])
    label = lambda per_class: torch.arange(len(characters)).repeat_interleave(per_class)
    return torch.cat(support), label(shots), torch.cat(query), label(queries), characters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a checkpoint written by train.py on Omniglot")
    parser.add_argument("--root", default="data", help="data root holding omniglot/ (as data.root)")
    parser.add_argument("--shots", type=int, default=1, help="drawings per character to adapt on")
    parser.add_argument("--queries", type=int, default=2, help="drawings per character to classify")
    parser.add_argument("--seed", type=int, default=0, help="which characters and drawings")
    args = parser.parse_args(argv)
    if not args.ckpt:
        print(f"adapt_omniglot: {HOW_TO}", file=sys.stderr)
        return 2

    learner = load_learner(args.ckpt)
    support_x, support_y, query_x, query_y, characters = new_task(
        learner.hparams["config"]["data"], args.root, args.shots, args.queries, args.seed
    )
    predictor = learner.adapt(support_x, support_y)  # a copy of the meta-weights, adapted
    predicted = predictor.classify(query_x)

    print(f"{len(characters)} unseen characters (ids {characters.tolist()}), {args.shots} drawing(s) each")
    for i, (p, t) in enumerate(zip(predicted.tolist(), query_y.tolist(), strict=True)):
        print(f"query {i:2d}: predicted {p}, true {t}  {'ok' if p == t else 'wrong'}")
    accuracy = (predicted == query_y).float().mean().item()
    print(f"accuracy {accuracy:.0%} on {len(query_y)} drawings (chance {1 / len(characters):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
