"""Hydra entry points (train, eval), configs, MLflow helpers, reports and benchmarks."""
