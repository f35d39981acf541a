"""The federated core: updates, (de)serialization, strategies, client sampling, the server's round loop.

Nothing here imports a runtime (Flower, NVFlare): runtimes only move the bytes these modules produce.
"""
