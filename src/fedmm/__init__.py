"""fedmm: federated fine-tuning of multimodal (image + text) models."""

__version__ = "0.1.0"
