"""LUISE (Seed-ASR) / BEST-RQ self-supervised pretraining: masking, targets, masked-prediction loss, probes."""
