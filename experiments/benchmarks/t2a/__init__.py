"""Benchmarks of the text-to-audio component and its CRPO stage (the CLAP reward model first)."""
