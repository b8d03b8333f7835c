"""Worked examples; importable from the repository root, so a config can name `examples.anil.ANIL`."""
