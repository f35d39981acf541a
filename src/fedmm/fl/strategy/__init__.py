"""Server strategies, one per module; each registers itself in `STRATEGIES` (fedmm.registry lists the built-in
modules and imports them on first use)."""

from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy, StrategyContext  # noqa: F401
