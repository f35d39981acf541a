"""Client logic: train on one client's data with one backend and produce an Update. Imports no runtime."""
