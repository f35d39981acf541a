"""Hydra config groups shipped with fedmm (task, model, strategy, partition, runtime)."""
