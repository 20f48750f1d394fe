"""Audio-conditioned LLM (Seed-ASR's AcLLM, SLAM-LLM, NeMo SALM): speech encoder -> converter -> causal LM."""
