"""Reinforcement stages: MWER for the LLM recognizer (CRPO later)."""
