"""Benchmarks of the RL stages (MWER; CRPO later)."""
