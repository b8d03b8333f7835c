"""Packages of the distribution; everything else (metadata, dependencies, package data) is in setup.cfg.

setup.cfg cannot list packages that `find:` does not see, so they are gathered here: the `lightning_meta` packages,
the repository's top-level `configs/` shipped as `lightning_meta.configs` (package_dir in setup.cfg maps it), and
Hydra's plugin namespace `hydra_plugins` (no `__init__.py`: Hydra scans the namespace) with `lightning_meta` in it.
"""

from setuptools import find_namespace_packages, find_packages, setup

setup(
    packages=[
        *find_packages(include=["lightning_meta", "lightning_meta.*"]),
        "lightning_meta.configs",
        *find_namespace_packages(
            include=["hydra_plugins", "hydra_plugins.lightning_meta", "hydra_plugins.lightning_meta.*"],
            exclude=["*.__pycache__"],
        ),
    ],
)
