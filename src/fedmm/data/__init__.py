"""Data sets, partitioners and modality masks. Nothing here knows about models or federated rounds."""
