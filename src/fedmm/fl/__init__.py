"""The federated core: the round contract (`instructions`), client updates, compression, strategies, client
sampling and the server's round loop.

Nothing here imports a runtime (Flower, NVFlare), the assembly layer or the CLI (tests/test_layers.py checks it):
runtimes only move the bytes these modules produce.
"""
