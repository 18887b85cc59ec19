"""Config-driven experiments: :mod:`.radio` (FRI/FRII radio galaxies with the (equivariant) LeNets)."""
from .radio import ConfigError, RadioConfig, load_config, parse_config, run_config, run_sweep

__all__ = ["ConfigError", "RadioConfig", "load_config", "parse_config", "run_config", "run_sweep"]
