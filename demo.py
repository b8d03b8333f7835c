"""The interactive few-shot demo: `python demo.py [ckpt_path=<run>/checkpoints/<name>.ckpt] [port=8000]
[dotted.key=value ...]`, then open the printed address (see lightning_meta/demo/server.py)."""

import sys

from lightning_meta.demo.server import main

if __name__ == "__main__":
    sys.exit(main())
