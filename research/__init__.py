"""Pure PyTorch models, losses, quantizers, decoding and metrics (no Lightning, Hydra or MLflow)."""
