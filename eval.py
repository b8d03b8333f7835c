"""Meta-test a checkpoint: `python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [dotted.key=value ...]`
(see lightning_meta/evaluate.py)."""

import sys

from lightning_meta.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
