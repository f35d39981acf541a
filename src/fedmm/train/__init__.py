"""The local training and evaluation loop, shared by federated clients and the centralized baseline."""

SGD_MOMENTUM = 0.9  # optimizer=sgd's momentum; here, without torch, for FedNova's normalising factor
