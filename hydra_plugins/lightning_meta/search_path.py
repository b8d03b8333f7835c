"""lightning_meta's configs/ on Hydra's search path, whatever the primary config: a run's saved config
(--config-path outputs/<run>/.hydra) still finds the groups, the sweepers and the launchers' settings."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class LightningMetaSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from lightning_meta.config import CONFIG_DIR

        search_path.append("lightning_meta", f"file://{CONFIG_DIR}")
