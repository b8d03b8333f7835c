"""Meta-train and meta-test: `python train.py [group=name ...] [dotted.key=value ...]` (see configs/train.yaml)."""

import sys

from lightning_meta.run import main

if __name__ == "__main__":
    sys.exit(main())
