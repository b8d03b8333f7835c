"""lightning_meta's Hydra plugins: its configs on every search path, the checked basic sweeper and the Optuna
sweeper. Hydra imports every module under `hydra_plugins` at start, so these modules import only Hydra."""
