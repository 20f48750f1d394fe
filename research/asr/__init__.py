"""Speech recognition baselines."""
