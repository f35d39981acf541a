"""The local training and evaluation loop, shared by federated clients and the centralized baseline."""
