"""Manifests, preparers, datasets, samplers and the one audio datamodule every component trains on."""
