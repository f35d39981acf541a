"""Server strategies, one per module; each registers itself in `STRATEGIES`."""
from fedmm.fl.strategy.base import STRATEGIES, Strategy  # noqa: F401
from fedmm.fl.strategy import fedavg as _fedavg  # noqa: E402,F401
