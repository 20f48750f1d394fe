"""One LightningModule per training stage; models arrive already built (Hydra `_target_`)."""
