"""Server strategies, one per module; each registers itself in `STRATEGIES`."""
from fedmm.fl.strategy.base import STRATEGIES, Strategy, StrategyContext  # noqa: F401
from fedmm.fl.strategy import (  # noqa: E402,F401
    fedadagrad, fedadam, fedavg, fedavgm, fedmap, fedprox, fedyogi, lora, median, modality_avg, trimmed_mean,
)
