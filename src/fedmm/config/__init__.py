"""Configuration: dataclass schemas, Hydra composition, sweep expansion, validation against the registries."""

from fedmm.config.load import Settings, load_settings, expand_sweeps, settings_from_yaml  # noqa: F401
