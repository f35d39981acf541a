"""fedmm: federated fine-tuning of multimodal (image + text) models.

The Python API (documented in fedmm.api and the README): `fedmm.run`, `fedmm.centralized`, `fedmm.load_run`,
`fedmm.load_model` (a trained model: `.predict(images, texts)`, `.model`), and
the registries whose `register` decorators add a task, backend, strategy or runtime (`fedmm.TASKS`,
`fedmm.BACKENDS`, `fedmm.STRATEGIES`, `fedmm.RUNTIMES`). They load on first use, so `import fedmm` (and `fedmm
--version`) stays light.
"""

__version__ = "0.1.0"

_API = {
    "run": "fedmm.api",
    "centralized": "fedmm.api",
    "load_run": "fedmm.api",
    "load_model": "fedmm.experiment.trained",
    "Result": "fedmm.api",
    "TASKS": "fedmm.registry",
    "BACKENDS": "fedmm.registry",
    "STRATEGIES": "fedmm.registry",
    "RUNTIMES": "fedmm.registry",
    "FedmmError": "fedmm.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fedmm' has no attribute {name!r}")
